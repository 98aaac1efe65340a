//! The harness's faults do what they claim: an isolated leader is replaced by
//! the rest, the cluster comes back whole after healing, and nothing a run
//! creates (processes, namespaces) outlives it. Runs real binaries, so it needs
//! `cargo build --workspace --bins` first (scripts/test.sh does that).

use std::time::{Duration, Instant};

use jepsen_like_tests::cluster::Cluster;
use jepsen_like_tests::{nemesis, netns};

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn leader_seen_by(c: &Cluster, id: u64) -> Option<u64> {
    c.status_of(id)?["leader"].as_u64().filter(|l| *l > 0)
}

/// Isolates the leader both ways, checks the majority elects another, heals,
/// checks every node follows one leader again; returns the run's namespaces.
fn isolate_the_leader(namespaces: bool) -> Vec<String> {
    let logs = tempfile::tempdir().expect("tempdir");
    let layout = Cluster::layout(3, namespaces).expect("layout");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let c = rt.block_on(Cluster::start(3, layout, logs.path())).expect("cluster");
    let old = wait_for("a leader", 20, || c.leader());
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != old).collect();
    for &o in &others {
        c.cut(old, o).expect("cut");
        c.cut(o, old).expect("cut");
    }
    let new = wait_for("a new leader among the majority", 20, || {
        let l = leader_seen_by(&c, others[0])?;
        (l != old && leader_seen_by(&c, others[1]) == Some(l)).then_some(l)
    });
    assert!(others.contains(&new));

    c.heal_network().expect("heal");
    // The old leader learns the new term and follows.
    wait_for("every node to follow one leader", 20, || {
        let l = leader_seen_by(&c, old)?;
        c.ids().iter().all(|id| leader_seen_by(&c, *id) == Some(l)).then_some(())
    });
    let names = c.namespaces();
    c.shutdown();
    drop(c);
    rt.shutdown_timeout(Duration::from_secs(1));
    names
}

#[test]
fn proxy_layout_isolates_a_leader() {
    let names = isolate_the_leader(false);
    assert!(names.is_empty());
}

#[test]
fn namespace_layout_isolates_a_leader_and_leaves_nothing_behind() {
    if !netns::available() {
        // Only root can create namespaces; scripts/test.sh runs as root in CI.
        eprintln!("skipped: not root, or ip/iptables missing");
        return;
    }
    let names = isolate_the_leader(true);
    assert_eq!(names.len(), 4);
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let listed = String::from_utf8_lossy(&out.stdout);
    for n in &names {
        assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some(n)), "namespace {n} was left behind");
    }
}

/// A fault that cannot take hold is a failure of the run, not a line on stderr:
/// with every process gone, a scheduled pause has nothing to stop.
#[test]
fn a_fault_that_cannot_take_effect_is_reported() {
    let logs = tempfile::tempdir().expect("tempdir");
    let layout = Cluster::layout(3, false).expect("layout");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let c = rt.block_on(Cluster::start(3, layout, logs.path())).expect("cluster");
    for n in c.nodes().iter_mut() {
        assert!(n.kill(), "node {} was running", n.id);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(nemesis::MIN_SECS);
    let schedule = rt.block_on(nemesis::run(c.clone(), vec!["pause".into()], 0.0, 7, start, deadline));
    let f = &schedule.failures;
    assert!(f.first().is_some_and(|f| f.starts_with("pause") && f.contains("no node is running")), "{f:?}");
    assert!(f.last().is_some_and(|f| f.contains("injected no fault")), "{f:?}");
    c.shutdown();
}
