//! What the bench measures besides latency: CPU time (the nodes', its own, the
//! machine's), a node's RSS, and the nodes' Raft log fsyncs from their
//! `chorus_log_sync_seconds` histograms.

use anyhow::Context;

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`
/// (`self` for this one); `None` where that is not readable.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime are fields 14 and 15; the command name before them is
    // parenthesised and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ on Linux
}

/// The machine's (busy, total) CPU time so far in ticks, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // user nice system idle iowait irq softirq steal; the guest columns after
    // them are already counted in user and nice.
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|t| t.parse().ok()).collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// CPU used by the nodes, this process and the machine over a phase, per unit
/// of work: on a machine the nodes and the load generator share, this is the
/// figure that tells how near the cores are to full.
struct CpuMeter {
    pids: Vec<u32>,
    nodes: Option<f64>,
    me: Option<f64>,
    machine: Option<(u64, u64)>,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> Self {
        CpuMeter { pids: pids.to_vec(), nodes: Self::nodes(pids), me: cpu_secs("self"), machine: machine_ticks() }
    }

    fn nodes(pids: &[u32]) -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_secs(&p.to_string())).sum()
    }

    /// "nodes 8.1 µs, load generator 4.2 µs per delivery; machine 97 % busy".
    fn report(&self, units: u64, unit: &str) -> String {
        let per = |before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(b), Some(n)) if units > 0 => format!("{:.1} µs", (n - b) * 1e6 / units as f64),
            _ => "n/a".to_string(),
        };
        let busy = match (self.machine, machine_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => format!("{:.0} %", (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64),
            _ => "n/a".to_string(),
        };
        format!(
            "nodes {}, load generator {} per {unit}; machine {busy} busy",
            per(self.nodes, Self::nodes(&self.pids)),
            per(self.me, cpu_secs("self"))
        )
    }
}

/// A process's resident set size in KiB, from `/proc/PID/status`.
pub(super) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
}

/// One node's `chorus_log_sync_seconds` buckets: (upper bound in seconds,
/// cumulative count), in the order of the exposition.
type SyncBuckets = Vec<(f64, u64)>;

/// Scrapes each node's log-sync histogram; `None` for a node that did not answer.
async fn sync_buckets(http: &reqwest::Client, urls: &[String]) -> Vec<Option<SyncBuckets>> {
    let mut all = Vec::with_capacity(urls.len());
    for url in urls {
        let text = match http.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        };
        let buckets: Option<SyncBuckets> = text.map(|t| {
            t.lines()
                .filter_map(|l| {
                    let (le, count) = l.strip_prefix("chorus_log_sync_seconds_bucket{le=\"")?.split_once("\"} ")?;
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                    Some((le, count.trim().parse().ok()?))
                })
                .collect()
        });
        all.push(buckets.filter(|b| !b.is_empty()));
    }
    all
}

/// Per node, the log syncs between two scrapes: how many, how many over
/// 25.6 ms, and the smallest bucket bound that holds them all.
fn sync_report(before: &[Option<SyncBuckets>], after: &[Option<SyncBuckets>]) -> String {
    const SLOW: f64 = 0.0256;
    let nodes: Vec<String> = before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, pair)| {
            let (Some(b), Some(a)) = pair else { return format!("node {}: not scraped", i + 1) };
            // Cumulative counts in the window, by bucket bound.
            let window: Vec<(f64, u64)> = a.iter().zip(b).map(|((le, n), (_, m))| (*le, n.saturating_sub(*m))).collect();
            let total = window.last().map_or(0, |(_, n)| *n);
            if total == 0 {
                return format!("node {}: none", i + 1);
            }
            let fast = window.iter().find(|(le, _)| *le >= SLOW).map_or(0, |(_, n)| *n);
            let worst = window.iter().find(|(_, n)| *n == total).map_or(f64::INFINITY, |(le, _)| *le);
            let top = window.iter().rev().map(|(le, _)| *le).find(|le| le.is_finite()).unwrap_or(0.0);
            let worst = if worst.is_finite() { format!("≤ {:.1} ms", worst * 1000.0) } else { format!("over {:.0} ms", top * 1000.0) };
            format!("node {}: {total}, {} over 25.6 ms, slowest {worst}", i + 1, total - fast)
        })
        .collect();
    nodes.join("; ")
}

/// The meters of a measured window (acks or fan-out), started together as it
/// opens: the CPU meter, then a scrape of every node's log-sync histogram.
pub(super) struct Meters {
    cpu: CpuMeter,
    syncs: Vec<Option<SyncBuckets>>,
}

impl Meters {
    pub(super) async fn start(http: &reqwest::Client, urls: &[String], pids: &[u32]) -> Self {
        let cpu = CpuMeter::start(pids);
        let syncs = sync_buckets(http, urls).await;
        Meters { cpu, syncs }
    }

    /// The window's `CPU` figure per `unit` (`units` of them done) and its
    /// `log syncs` figure, from a second scrape.
    pub(super) async fn stop(&self, http: &reqwest::Client, urls: &[String], units: u64, unit: &str) -> (String, String) {
        let cpu = self.cpu.report(units, unit);
        let syncs = sync_report(&self.syncs, &sync_buckets(http, urls).await);
        (cpu, syncs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_report_counts_the_window_s_slow_syncs_and_bounds_the_slowest() {
        let buckets = |counts: [u64; 4]| Some(vec![(0.0128, counts[0]), (0.0256, counts[1]), (0.0512, counts[2]), (f64::INFINITY, counts[3])]);
        let before = [buckets([10, 10, 10, 10]), buckets([5, 5, 5, 5]), buckets([0, 0, 0, 0]), None];
        let after = [buckets([20, 21, 23, 23]), buckets([5, 5, 5, 6]), buckets([0, 0, 0, 0]), buckets([1, 1, 1, 1])];
        assert_eq!(
            sync_report(&before, &after),
            "node 1: 13, 2 over 25.6 ms, slowest ≤ 51.2 ms; node 2: 1, 1 over 25.6 ms, slowest over 51 ms; node 3: none; node 4: not scraped"
        );
    }
}
