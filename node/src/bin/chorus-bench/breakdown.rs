//! `chorus-bench breakdown`: where one write's time goes, stage by stage.
//!
//! Starts a cluster of real `chorusd` processes (as `log` does, with the rate
//! limit off), then runs `chorusctl bench --breakdown` against it with
//! `--writers` closed-loop WebSocket senders (default one) whose first goes
//! to the leader (`--via leader`) or to a follower (`--via follower`, which
//! adds the forwarding hop). The table comes from every node's
//! `chorus_write_stage_seconds` (`raft_store::stages`): per node, each stage's
//! mean and how often it ran per acked message.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use node::procs::{bin, ProcCluster};

use crate::Args;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (hb, el) = (args.heartbeat_ms.to_string(), args.election_ms.to_string());
    let c = ProcCluster::start(tmp.path(), args.nodes, &["--heartbeat-ms", &hb, "--election-ms", &el, "--rate-limit", "0"])?;
    let leader = wait_leader(&c)?;
    let first = match args.via.as_str() {
        "leader" => leader,
        "follower" => c.procs.iter().map(|p| p.id).find(|id| *id != leader).context("no follower")?,
        other => bail!("unknown --via {other:?}; try leader or follower"),
    };
    // The first URL gets the first sender; the others follow in id order.
    let mut order: Vec<_> = c.procs.iter().collect();
    order.sort_by_key(|p| (p.id != first, p.id));
    let urls: Vec<String> = order.iter().map(|p| format!("http://{}", p.client_addr)).collect();
    let pids: Vec<String> = order.iter().filter_map(|p| p.child.as_ref().map(|ch| ch.id().to_string())).collect();
    println!("chorus-bench breakdown: leader is node {leader}; the first sender writes to node {first}; nodes in the table: {}",
        order.iter().map(|p| p.id.to_string()).collect::<Vec<_>>().join(", "));
    let status = Command::new(bin("chorusctl")?)
        .args(["bench", "--breakdown", "--urls", &urls.join(","), "--pids", &pids.join(",")])
        .args(["--senders", &args.writers.first().copied().unwrap_or(1).to_string()])
        .args(["--secs", &args.secs.to_string(), "--bytes", &args.bytes.to_string()])
        .status()
        .context("cannot run chorusctl bench")?;
    if !status.success() {
        bail!("chorusctl bench failed: {status}");
    }
    Ok(())
}

/// The leader, once one is known (at most 10 s after forming).
pub fn wait_leader(c: &ProcCluster) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = c.leader() {
            return Ok(l);
        }
        if Instant::now() > deadline {
            bail!("no leader within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
