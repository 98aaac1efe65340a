//! Benchmarks on a local cluster of real `chorusd` processes (durable: every
//! acked entry is fsynced on a majority).
//!
//! ```text
//! chorus-bench log [--writers 1,16,256] [--secs 10] [--nodes 3] [--bytes 200] [--client unary|gathered|both] [--kills 1]
//! chorus-bench breakdown [--writers 1] [--secs 10] [--via leader|follower]
//! chorus-bench failover [--kills 20]
//! chorus-bench recovery [--messages 1000000]
//! chorus-bench search [--messages 1000000] [--queries 200]
//! ```
//!
//! `breakdown` ([`breakdown`]): one write's path over WebSocket, stage by
//! stage, per node. `failover`: `--kills` times, SIGKILL the leader and time
//! the first write committed after it, then restart the node; prints p50, p99
//! and max. `recovery` ([`recovery`]): restart and join times of a cluster
//! holding `--messages` messages. `search` ([`search`]): full-text search
//! latency over a cluster holding `--messages` messages. `log`: raw log-append throughput and latency, then one failover.
//!
//! In `log`:
//! Each writer is closed-loop: it sends one `MessagePosted` to the leader over the
//! node-to-node `Propose` RPC, waits for its commit, and sends the next. Every
//! event is its own proposal with its own answer. Two clients are measured
//! (`--client`):
//!
//! - `unary`: one `Propose` RPC per write, over up to 8 connections.
//! - `gathered`: one connection; writes that are waiting at the same moment
//!   travel together in one `Propose` RPC, the way a follower forwards its
//!   clients' writes ([`node::gather`]). The events inside are still proposed
//!   and answered one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use node::procs::ProcCluster;
use node::gather;
use node::rpc::{propose_at, propose_batch_at, ProposeReply};
use proto::v1::raft_client::RaftClient;
use raft_store::chat::Event;
use tonic::transport::Channel;

mod breakdown;
mod recovery;
mod search;

#[derive(Parser)]
struct Args {
    /// Benchmark to run: log, breakdown, failover, recovery or search.
    mode: String,
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    writers: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 200)]
    bytes: usize,
    /// Which client to measure: unary, gathered or both.
    #[arg(long, default_value = "both")]
    client: String,
    /// Skip the leader-kill measurement.
    #[arg(long)]
    no_failover: bool,
    /// Leader kills to time (`failover`; `log` does one).
    #[arg(long)]
    kills: Option<usize>,
    /// `recovery`, `search`: messages to load first.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// `search`: searches of each kind to time.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// `breakdown`: where the first sender writes, leader or follower.
    #[arg(long, default_value = "leader")]
    via: String,
    /// The nodes' Raft heartbeat interval (chorusd --heartbeat-ms; same default).
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// The nodes' election timeout floor (chorusd --election-ms; same default).
    #[arg(long, default_value_t = 100)]
    election_ms: u64,
}

/// CPU time (user + system) the node processes have used so far, from
/// `/proc/PID/stat`; `None` where that is not readable.
fn nodes_cpu(c: &ProcCluster) -> Option<Duration> {
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for p in &c.procs {
        let pid = p.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_sec))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn clients(addr: &str, n: usize) -> anyhow::Result<Vec<RaftClient<Channel>>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(RaftClient::connect(format!("http://{addr}")).await?);
    }
    Ok(out)
}

fn message(writer: usize, i: u64, bytes: usize) -> Event {
    Event::MessagePosted {
        room: "bench".into(),
        from: "bench".into(),
        client_id: format!("{writer}-{i}-{}", rand_suffix()),
        text: "x".repeat(bytes),
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A write waiting in a gathering client, and where its answer goes.
type Waiting = (Event, tokio::sync::oneshot::Sender<Result<ProposeReply, String>>);

/// A client that sends the writes queued at the same moment in one RPC.
fn gathering_client(client: RaftClient<Channel>, cluster_id: Arc<str>) -> tokio::sync::mpsc::Sender<Waiting> {
    let (tx, mut gatherer) = gather::channel::<Waiting>();
    tokio::spawn(async move {
        while let Some((slot, batch)) = gatherer.next_batch().await {
            let (mut client, cluster_id) = (client.clone(), cluster_id.clone());
            tokio::spawn(async move {
                let (events, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match propose_batch_at(&mut client, &cluster_id, None, &events, Duration::from_secs(5)).await {
                    Ok(answers) => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Err(s) => {
                        for reply in replies {
                            let _ = reply.send(Err(s.to_string()));
                        }
                    }
                }
                drop(slot);
            });
        }
    });
    tx
}

/// One write through either client.
enum Writer {
    Unary(RaftClient<Channel>),
    Gathered(tokio::sync::mpsc::Sender<Waiting>),
}

impl Writer {
    async fn write(&mut self, cluster_id: &str, ev: Event) -> anyhow::Result<ProposeReply> {
        match self {
            Writer::Unary(client) => Ok(propose_at(client, cluster_id, None, &ev, Duration::from_secs(5)).await?),
            Writer::Gathered(tx) => {
                let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                tx.send((ev, reply_tx)).await.map_err(|_| anyhow::anyhow!("gathering client stopped"))?;
                reply_rx.await?.map_err(|s| anyhow::anyhow!(s))
            }
        }
    }
}

async fn run_load(
    leader_addr: &str,
    cluster_id: &str,
    gathered: bool,
    writers: usize,
    secs: u64,
    bytes: usize,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    // Unary writers spread over several HTTP/2 connections, as many clients
    // would open. The gathering client uses one, as a follower forwards all of
    // its clients' writes over its one channel to the leader.
    let n_conns = if gathered { 1 } else { writers.clamp(1, 8) };
    let conns = clients(leader_addr, n_conns).await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let cluster_id: Arc<str> = cluster_id.into();
    let gatherers: Vec<_> = if gathered { conns.iter().map(|c| gathering_client(c.clone(), cluster_id.clone())).collect() } else { Vec::new() };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut writer = match gathered {
            true => Writer::Gathered(gatherers[w % gatherers.len()].clone()),
            false => Writer::Unary(conns[w % conns.len()].clone()),
        };
        let cluster_id = cluster_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let ev = message(w, i, bytes);
                let t = Instant::now();
                match writer.write(&cluster_id, ev).await {
                    Ok(ProposeReply::Committed { .. }) => lat.push(t.elapsed()),
                    Ok(other) => return Err(anyhow::anyhow!("write refused: {other:?}")),
                    Err(e) => return Err(anyhow::anyhow!("write failed: {e}")),
                }
                i += 1;
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok((all.len() as u64, all))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.mode.as_str() {
        "log" => log(&args).await,
        "breakdown" => breakdown::run(&args).await,
        "failover" => failover_only(&args).await,
        "recovery" => recovery::run(&args).await,
        "search" => search::run(&args).await,
        other => bail!("unknown benchmark {other:?}; try log, breakdown, failover, recovery or search"),
    }
}

/// `failover`: a cluster that only takes the leader kills.
async fn failover_only(args: &Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (hb, el) = (args.heartbeat_ms.to_string(), args.election_ms.to_string());
    let mut c = ProcCluster::start(tmp.path(), args.nodes, &["--heartbeat-ms", &hb, "--election-ms", &el])?;
    breakdown::wait_leader(&c)?;
    let status = c.status(&c.procs[0].raft_addr)?;
    let cluster_id = status["cluster_id"].as_str().context("no cluster id")?.to_string();
    failovers(args, &mut c, &cluster_id, args.kills.unwrap_or(20)).await
}

async fn log(args: &Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (hb, el) = (args.heartbeat_ms.to_string(), args.election_ms.to_string());
    let mut c = ProcCluster::start(tmp.path(), args.nodes, &["--heartbeat-ms", &hb, "--election-ms", &el])?;
    let leader = c.leader().context("no leader")?;
    let status = c.status(&c.procs[0].raft_addr)?;
    let cluster_id = status["cluster_id"].as_str().context("no cluster id")?.to_string();
    let leader_addr = c.proc(leader).raft_addr.clone();
    let mut client = RaftClient::connect(format!("http://{leader_addr}")).await?;
    let join = Event::RoomJoined { room: "bench".into(), user: "bench".into() };
    propose_at(&mut client, &cluster_id, None, &join, Duration::from_secs(5)).await?;

    let modes: &[(&str, bool)] = match args.client.as_str() {
        "unary" => &[("unary", false)],
        "gathered" => &[("gathered", true)],
        "both" => &[("unary", false), ("gathered", true)],
        other => bail!("unknown client {other:?}; try unary, gathered or both"),
    };
    load_steps(args, &c, modes, &leader_addr, &cluster_id).await?;
    if !args.no_failover {
        failovers(args, &mut c, &cluster_id, args.kills.unwrap_or(1)).await?;
    }
    Ok(())
}

/// Each client mode at each writer count, one step of `--secs` each: one row
/// of entries/s, latency and node CPU per step.
async fn load_steps(args: &Args, c: &ProcCluster, modes: &[(&str, bool)], leader_addr: &str, cluster_id: &str) -> anyhow::Result<()> {
    println!("chorus-bench log: {} nodes, {}-byte messages, {} s per step, fsync on every commit", args.nodes, args.bytes, args.secs);
    println!("{:>9} {:>8} {:>12} {:>10} {:>10} {:>10} {:>14}", "client", "writers", "entries/s", "p50 ms", "p99 ms", "max ms", "node CPU µs/e");
    for &(name, gathered) in modes {
        for &w in &args.writers {
            let cpu_before = nodes_cpu(c);
            let (n, lat) = run_load(leader_addr, cluster_id, gathered, w, args.secs, args.bytes).await?;
            // All three nodes' CPU per committed entry: steadier than the rate.
            let cpu = match (cpu_before, nodes_cpu(c)) {
                (Some(a), Some(b)) if n > 0 => format!("{:.0}", (b - a).as_secs_f64() * 1e6 / n as f64),
                _ => "-".to_string(),
            };
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:>9} {:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>14}",
                name,
                w,
                n as f64 / args.secs as f64,
                ms(percentile(&lat, 0.50)),
                ms(percentile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or_default()),
                cpu,
            );
        }
    }
    Ok(())
}

/// `kills` times: kills the leader, times the first write committed after it,
/// restarts the node and waits until the cluster has a leader again. Prints
/// each time and, over several, p50, p99 and max.
async fn failovers(args: &Args, c: &mut ProcCluster, cluster_id: &str, kills: usize) -> anyhow::Result<()> {
    let mut times = Vec::with_capacity(kills);
    for k in 0..kills {
        let leader = breakdown::wait_leader(c)?;
        let took = failover(args, c, leader, cluster_id).await?;
        println!("kill {}: node {leader}, SIGKILL → next committed write {:.0} ms", k + 1, took.as_secs_f64() * 1000.0);
        times.push(took);
        c.proc(leader).start()?;
        // The restarted node catches up before the next kill, so each kill
        // finds the same three-node cluster.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "leader SIGKILL → next committed write over {kills} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default())
    );
    Ok(())
}

/// Kills the leader and times the first write that any node commits after it.
async fn failover(args: &Args, c: &mut ProcCluster, leader: u64, cluster_id: &str) -> anyhow::Result<Duration> {
    let others: Vec<String> = c.procs.iter().filter(|p| p.id != leader).map(|p| p.raft_addr.clone()).collect();
    let mut conns = Vec::new();
    for a in &others {
        conns.push(RaftClient::connect(format!("http://{a}")).await?);
    }
    // Clients that retry: every 10 ms a fresh write goes to every surviving
    // node, each attempt with its own deadline, so the figure is the
    // cluster's unavailability window and not the spacing of one client's
    // timeouts.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    c.proc(leader).kill();
    let killed = Instant::now();
    let bytes = args.bytes;
    let probe_cluster = cluster_id.to_string();
    let probes = tokio::spawn(async move {
        let mut i = 0u64;
        loop {
            for client in &conns {
                let (mut client, cluster_id, done) = (client.clone(), probe_cluster.clone(), done_tx.clone());
                let ev = message(9999, i, bytes);
                i += 1;
                tokio::spawn(async move {
                    if let Ok(ProposeReply::Committed { .. }) = propose_at(&mut client, &cluster_id, None, &ev, Duration::from_secs(2)).await {
                        let _ = done.try_send(());
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await;
    let elapsed = killed.elapsed();
    probes.abort();
    if first.is_err() {
        bail!("no write succeeded within 30 s of the leader kill");
    }
    Ok(elapsed)
}
