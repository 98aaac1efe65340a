//! Membership an operator can trust, with real binaries: a removed node comes
//! back on a fresh data dir, a member restarted on another address rejoins
//! from there, and `cluster status` without a quorum says what to do.

use std::time::{Duration, Instant};

use anyhow::ensure;
use node::procs::{chorusctl, ctl, Proc, ProcCluster};

const FAST: [&str; 4] = ["--heartbeat-ms", "50", "--election-ms", "300"];

/// Waits until every member is a reachable voter whose applied index matches
/// the leader's, as `raft` reports it; returns that status.
fn whole(c: &ProcCluster, raft: &str, n: usize) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status(raft)?;
        let members = s["members"].as_array().cloned().unwrap_or_default();
        let caught_up = members.len() == n
            && members.iter().all(|m| m["voter"] == true && m["reachable"] == true)
            && members.windows(2).all(|w| w[0]["applied_index"] == w[1]["applied_index"]);
        if caught_up {
            return Ok(s);
        }
        ensure!(Instant::now() < deadline, "the cluster is not whole: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Member `id`'s row of a `cluster status --json`.
fn member(status: &serde_json::Value, id: u64) -> serde_json::Value {
    status["members"].as_array().and_then(|m| m.iter().find(|m| m["id"] == id).cloned()).unwrap_or_default()
}

#[test]
fn a_removed_node_comes_back_on_a_fresh_data_dir() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut c = ProcCluster::start(tmp.path(), 3, &FAST)?;
    let raft1 = c.procs[0].raft_addr.clone();
    whole(&c, &raft1, 3)?;
    ctl(&raft1, &["cluster", "remove", "3"])?;
    c.proc(3).kill();
    std::fs::remove_dir_all(&c.proc(3).dir)?;
    // The same id on an empty data dir, on whatever ports the OS gives it.
    let dir = c.proc(3).dir.clone();
    *c.proc(3) = Proc::new(3, dir, &FAST);
    c.proc(3).start()?;
    let new_addr = c.proc(3).raft_addr.clone();
    ctl(&raft1, &["cluster", "add", &new_addr])?;
    let s = whole(&c, &raft1, 3)?;
    assert_eq!(member(&s, 3)["raft_addr"], new_addr.as_str(), "{s}");
    Ok(())
}

#[test]
fn a_member_restarted_on_another_address_rejoins_from_there() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut c = ProcCluster::start(tmp.path(), 3, &FAST)?;
    let raft1 = c.procs[0].raft_addr.clone();
    whole(&c, &raft1, 3)?;
    let old_addr = c.proc(3).raft_addr.clone();
    // The same data dir, new ports: peers still know the old address.
    c.proc(3).kill();
    c.proc(3).raft_addr = "127.0.0.1:0".into();
    c.proc(3).client_addr = "127.0.0.1:0".into();
    c.proc(3).start()?;
    let new_addr = c.proc(3).raft_addr.clone();
    assert_ne!(new_addr, old_addr);
    let out = ctl(&raft1, &["cluster", "add", &new_addr])?;
    assert!(out.contains("added as voter"), "{out}");
    let s = whole(&c, &raft1, 3)?;
    assert_eq!(member(&s, 3)["raft_addr"], new_addr.as_str(), "{s}");

    // While it still answers at its old address, a move is refused.
    let tmp2 = tempfile::tempdir()?;
    let copy = tmp2.path().join("copy");
    let status = std::process::Command::new("cp").arg("-a").arg(&c.proc(2).dir).arg(&copy).status()?;
    ensure!(status.success(), "cp failed");
    let mut twin = Proc::new(2, copy, &FAST);
    twin.start()?;
    let out = chorusctl(&["--node", &raft1, "--timeout", "20", "cluster", "add", &twin.raft_addr])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("still answers at"), "{err}");
    twin.kill();
    Ok(())
}

#[test]
fn status_without_a_quorum_says_what_to_do() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut c = ProcCluster::start(tmp.path(), 3, &FAST)?;
    let raft1 = c.procs[0].raft_addr.clone();
    whole(&c, &raft1, 3)?;
    c.proc(2).kill();
    c.proc(3).kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(&raft1, &["cluster", "status"])?;
        if out.contains("no quorum: 1 of 3 voters answer and 2 are needed") {
            assert!(out.contains("Start the unreachable voters 2 (") && out.contains("3 ("), "{out}");
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no hint in: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
