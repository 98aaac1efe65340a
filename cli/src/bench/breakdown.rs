//! `--breakdown`: where an acked message's time went, stage by stage, on each
//! node, from the nodes' `chorus_write_stage_seconds` histograms (see
//! `raft_store::stages`) and `chorus_ack_latency_seconds`, scraped as the acks
//! window opens and again as it closes.
//!
//! Each cell is the mean of that stage on that node in the window and how many
//! times it ran per acked message: at one sender every write runs each stage
//! once on the node that has it (the leader's `propose` … `reply`, a
//! follower's `follower_append`), so the leader's column adds up to its
//! `total`; under load, batches make the counts fall below one.

use std::collections::HashMap;

/// The stages in the order a write goes through them, as labelled on `/metrics`,
/// with the API's own ack latency first.
const ROWS: [&str; 13] = [
    "ack",
    "total",
    "propose",
    "append",
    "sync",
    "fsync",
    "replicate",
    "follower_append",
    "commit",
    "apply",
    "reply",
    "forward",
    "catch_up",
];

/// One node's (sum of seconds, count) per row.
type Sums = HashMap<&'static str, (f64, u64)>;

/// Reads the rows' sums and counts from one node's `/metrics` text.
fn parse(text: &str) -> Sums {
    let mut out = Sums::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let (row, field) = if let Some(rest) = name.strip_prefix("chorus_write_stage_seconds_") {
            let Some((field, label)) = rest.split_once("{stage=\"") else { continue };
            let Some(stage) = label.strip_suffix("\"}") else { continue };
            match ROWS.iter().find(|r| **r == stage) {
                Some(row) => (*row, field),
                None => continue,
            }
        } else if let Some(field) = name.strip_prefix("chorus_ack_latency_seconds_") {
            ("ack", field)
        } else {
            continue;
        };
        let entry = out.entry(row).or_insert((0.0, 0));
        match field {
            "sum" => entry.0 = value.trim().parse().unwrap_or(0.0),
            "count" => entry.1 = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    out
}

/// Scrapes every node; an empty map for one that did not answer.
pub(super) async fn scrape(http: &reqwest::Client, urls: &[String]) -> Vec<Sums> {
    let mut all = Vec::with_capacity(urls.len());
    for url in urls {
        let text = match http.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        all.push(parse(&text));
    }
    all
}

/// The table of the window between two scrapes, for `acks` acked messages.
pub(super) fn report(before: &[Sums], after: &[Sums], acks: u64) -> String {
    let mut out = String::from("  breakdown        mean ms (runs per acked message), per node\n");
    out.push_str(&format!("  {:<16}", "stage"));
    for i in 0..after.len() {
        out.push_str(&format!(" {:>18}", format!("node {}", i + 1)));
    }
    out.push('\n');
    for row in ROWS {
        out.push_str(&format!("  {row:<16}"));
        for (b, a) in before.iter().zip(after) {
            let (s0, n0) = b.get(row).copied().unwrap_or_default();
            let (s1, n1) = a.get(row).copied().unwrap_or_default();
            let n = n1.saturating_sub(n0);
            let cell = if n == 0 || acks == 0 {
                "-".to_string()
            } else {
                format!("{:.3} ({:.2})", (s1 - s0) * 1000.0 / n as f64, n as f64 / acks as f64)
            };
            out.push_str(&format!(" {cell:>18}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "chorus_write_stage_seconds_sum{stage=\"append\"} 0.001\n\
        chorus_write_stage_seconds_count{stage=\"append\"} 10\n\
        chorus_write_stage_seconds_bucket{stage=\"append\",le=\"0.00001\"} 3\n\
        chorus_ack_latency_seconds_sum 0.02\nchorus_ack_latency_seconds_count 10\n";
    const AFTER: &str = "chorus_write_stage_seconds_sum{stage=\"append\"} 0.003\n\
        chorus_write_stage_seconds_count{stage=\"append\"} 20\n\
        chorus_write_stage_seconds_sum{stage=\"bogus\"} 5\n\
        chorus_ack_latency_seconds_sum 0.04\nchorus_ack_latency_seconds_count 20\n";

    #[test]
    fn the_window_s_means_and_counts_per_acked_message() {
        let table = report(&[parse(BEFORE), Sums::new()], &[parse(AFTER), Sums::new()], 10);
        let line = |stage: &str| table.lines().find(|l| l.trim_start().starts_with(stage)).unwrap().to_string();
        assert!(line("append").contains("0.200 (1.00)"), "{table}");
        assert!(line("ack").contains("2.000 (1.00)"), "{table}");
        assert!(line("commit").split_whitespace().skip(1).all(|c| c == "-"), "{table}");
        assert!(!table.contains("bogus"));
    }
}
