//! `chorus-bench log`: raw log-append throughput and latency on a local
//! three-node cluster of real `chorusd` processes (durable: every acked entry is
//! fsynced on a majority), and the time from a leader SIGKILL to the next
//! successful write.
//!
//! ```text
//! chorus-bench log [--writers 1,16,256] [--secs 10] [--nodes 3] [--bytes 200]
//! ```
//! Each writer is closed-loop: it sends one `MessagePosted` to the leader over the
//! node-to-node `Propose` RPC, waits for the commit, and sends the next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use node::procs::ProcCluster;
use node::rpc::{propose_at, ProposeReply};
use proto::v1::raft_client::RaftClient;
use raft_store::chat::Event;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Benchmark to run (only `log` for now).
    mode: String,
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    writers: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 200)]
    bytes: usize,
    /// Skip the leader-kill measurement.
    #[arg(long)]
    no_failover: bool,
    /// The nodes' Raft heartbeat interval (chorusd --heartbeat-ms; same default).
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// The nodes' election timeout floor (chorusd --election-ms; same default).
    #[arg(long, default_value_t = 200)]
    election_ms: u64,
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

async fn run_load(
    leader_addr: &str,
    cluster_id: &str,
    writers: usize,
    secs: u64,
    bytes: usize,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    // Several HTTP/2 connections, as many clients would open.
    let conns = clients(leader_addr, writers.clamp(1, 8)).await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let cluster_id: Arc<str> = cluster_id.into();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = conns[w % conns.len()].clone();
        let cluster_id = cluster_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let ev = message(w, i, bytes);
                let t = Instant::now();
                match propose_at(&mut client, &cluster_id, None, &ev, Duration::from_secs(5)).await {
                    Ok(ProposeReply::Committed { .. }) => lat.push(t.elapsed()),
                    Ok(other) => return Err(anyhow::anyhow!("write refused: {other:?}")),
                    Err(s) => return Err(anyhow::anyhow!("write failed: {s}")),
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
    if args.mode != "log" {
        bail!("unknown benchmark {:?}; try `log`", args.mode);
    }
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

    println!("chorus-bench log: {} nodes, {}-byte messages, {} s per step, fsync on every commit", args.nodes, args.bytes, args.secs);
    println!("{:>8} {:>12} {:>10} {:>10} {:>10}", "writers", "entries/s", "p50 ms", "p99 ms", "max ms");
    for &w in &args.writers {
        let (n, lat) = run_load(&leader_addr, &cluster_id, w, args.secs, args.bytes).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2}",
            w,
            n as f64 / args.secs as f64,
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
        );
    }

    if !args.no_failover {
        // Kill the leader and time the first write that any node commits after it.
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
        let probe_cluster = cluster_id.clone();
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
        println!("leader SIGKILL → next committed write: {:.0} ms", elapsed.as_secs_f64() * 1000.0);
    }
    Ok(())
}
