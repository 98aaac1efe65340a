//! Three-node clusters in one process: replication, failover, restart,
//! snapshot catch-up and membership changes.

mod common;

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use common::TestCluster;
use raft_store::ChatRead;
use proto::v1::{AddRequest, Empty, IdRequest};
use raft_store::chat::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_any_node_commit_on_all() {
    let c = TestCluster::start(3).await;
    let mut last = 0;
    for i in 0..30u64 {
        let via = i % 3 + 1;
        let committed = c.post(via, "general", &format!("u{via}"), &format!("m{i}")).await;
        assert!(matches!(committed.outcome, Outcome::Posted { duplicate: false, .. }), "{committed:?}");
        last = committed.index;
    }
    c.assert_converged(last).await;
    for n in c.running() {
        let page = n.handle.as_ref().unwrap().node.reader.history("general", None, None, 100).unwrap();
        assert_eq!(page.head, 30, "node {}", n.id);
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    }
    // The formation was recorded with one signing key, the same everywhere.
    let keys: Vec<_> = c.running().map(|n| n.handle.as_ref().unwrap().node.reader.cluster().unwrap().unwrap()).collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]));
    c.shutdown().await;
}

/// The peer link on the raft port (`node::link`): a member's hello
/// is accepted and its appends answered by Raft; a hello from another
/// cluster is refused; gRPC on the same port still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_raft_port_answers_appends_on_the_link_and_grpc_beside_it() {
    use node::link::{CallError, Hello, Link};
    use node::rpc::ProposeReply;
    use raft_store::chat::Event;
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    use raft_store::codec::{decode, encode};
    use raft_store::types::Vote;
    if common::tls::get().is_some() {
        // Under TLS the raft port is tonic's alone; tls.rs checks the link is refused.
        return;
    }
    let c = TestCluster::start(3).await;
    let committed = c.post(1, "general", "u1", "m1").await;
    c.assert_converged(committed.index).await;
    let node = &c.handle(2).node;
    let addr = c.node(2).raft_addr.to_string();
    let cluster = node.peers.identity.cluster_id();
    assert!(cluster.is_some());
    let t = Duration::from_secs(5);

    let stranger = Link::connect(&addr, None, None, &Hello { cluster_id: Some("another".into()), secret: None }, t).await;
    assert!(matches!(&stranger, Err(CallError::Refused(why)) if why.contains("another")), "{:?}", stranger.err());

    // An append from a long-gone leader: the follower's Raft answers with its
    // own, higher vote and appends nothing.
    let mut link = Link::connect(&addr, None, None, &Hello { cluster_id: cluster, secret: None }, t).await.expect("a member's hello");
    let stale = AppendEntriesRequest::<raft_store::TypeConfig> { vote: Vote::new(0, 9), prev_log_id: None, leader_commit: None, entries: vec![] };
    for _ in 0..2 {
        let answer = link.call(node::link::APPEND, &encode(&stale).unwrap(), t).await.expect("an answer");
        let answer: Result<AppendEntriesResponse<raft_store::TypeConfig>, String> = decode(&answer).unwrap();
        assert!(matches!(answer, Ok(AppendEntriesResponse::HigherVote(_))), "{answer:?}");
    }

    // Proposals forwarded to a node that is not the leader: each answered
    // "not the leader", nothing proposed. An event only the leader may
    // propose is refused whole, as over gRPC; so is a kind this build does
    // not know.
    let leader = c.wait_leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let mut to_follower = Link::connect(&c.node(follower).raft_addr.to_string(), None, None, &Hello { cluster_id: node.peers.identity.cluster_id(), secret: None }, t)
        .await
        .expect("a member's hello");
    let post = Event::MessagePosted { room: "general".into(), from: "u1".into(), client_id: "via-link".into(), text: "hi".into() };
    let answer = to_follower.call(node::link::PROPOSE, &encode(&vec![post.clone(), post]).unwrap(), t).await.expect("an answer");
    let answer: Result<Vec<ProposeReply>, String> = decode(&answer).unwrap();
    assert!(matches!(&answer, Ok(a) if a.len() == 2 && a.iter().all(|r| matches!(r, ProposeReply::NotLeader))), "{answer:?}");
    let raise = Event::FeatureLevelRaised { level: 1 };
    let answer = link.call(node::link::PROPOSE, &encode(&vec![raise]).unwrap(), t).await.expect("an answer");
    let answer: Result<Vec<ProposeReply>, String> = decode(&answer).unwrap();
    assert!(matches!(&answer, Err(why) if why.contains("may forward client events")), "{answer:?}");
    let answer = link.call(99, b"", t).await.expect("an answer");
    let answer: Result<(), String> = decode(&answer).unwrap();
    assert!(matches!(&answer, Err(why) if why.contains("unknown request kind 99")), "{answer:?}");

    let after = c.post(2, "general", "u2", "m2").await;
    c.assert_converged(after.index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_takes_over_when_the_leader_stops() {
    let mut c = TestCluster::start(3).await;
    let old = c.wait_leader().await;
    c.post(old, "r", "a", "before").await;
    c.stop(old).await;
    let new = c.wait_leader().await;
    assert_ne!(new, old);
    let survivor = c.running().map(|n| n.id).find(|id| *id != new).unwrap();
    let committed = c.post(survivor, "r", "a", "after").await;
    assert!(matches!(committed.outcome, Outcome::Posted { seq: 2, duplicate: false, .. }), "{committed:?}");
    c.assert_converged(committed.index).await;

    // The old leader comes back as a follower and catches up.
    c.restart(old).await;
    c.assert_converged(committed.index).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_follower_catches_up_and_keeps_its_data() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.running().map(|n| n.id).find(|id| *id != leader).unwrap();
    c.post(leader, "r", "a", "1").await;
    c.stop(follower).await;
    let mut last = 0;
    for i in 2..=20 {
        last = c.post(leader, "r", "a", &i.to_string()).await.index;
    }
    c.restart(follower).await;
    c.assert_converged(last).await;
    let page = c.handle(follower).node.reader.history("r", None, None, 100).unwrap();
    assert_eq!(page.head, 20);
    // A retried id is answered from the replicated dedup table, on any node.
    let again = c.post(follower, "r", "a", "7").await;
    assert!(matches!(again.outcome, Outcome::Posted { seq: 7, duplicate: true, .. }), "{again:?}");
    c.shutdown().await;
}

fn small_snapshots(c: &mut node::Config) {
    c.snapshot_every = 40;
    c.snapshot_ratio = 0.0;
    c.snapshot_keep = 5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_added_after_compaction_catches_up_through_a_snapshot() {
    let mut c = TestCluster::start_with(3, small_snapshots).await;
    let mut last = 0;
    for i in 0..150 {
        last = c.post((i % 3) + 1, "big", "a", &format!("{i}")).await.index;
    }
    c.assert_converged(last).await;
    // Make sure the leader's log really was compacted past the start.
    let leader = c.wait_leader().await;
    c.admin(leader).await.snapshot(Empty {}).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let purged = c.handle(leader).node.raft.metrics().borrow_watched().purged;
        if purged.is_some_and(|p| p.index > 10) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "log not compacted: {purged:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.spawn(4).await;
    c.add(2, 4, false).await;
    c.assert_converged(last).await;
    let m = c.handle(4).node.raft.metrics().borrow_watched().clone();
    assert!(m.snapshot.is_some(), "node 4 should have installed a snapshot");
    assert!(m.membership_config.membership().voter_ids().any(|v| v == 4));
    assert_eq!(c.handle(4).node.reader.history("big", None, None, 1000).unwrap().messages.len(), 150);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_and_re_add_a_member() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let victim = c.running().map(|n| n.id).find(|id| *id != leader).unwrap();
    c.post(leader, "r", "a", "1").await;

    let status = c.remove(leader, victim).await.unwrap();
    assert_eq!(status.members.len(), 2);
    assert!(status.members.iter().all(|m| m.id != victim));
    let committed = c.post(leader, "r", "a", "2").await;

    // Same node, same data, added back: it catches up and votes again.
    c.add(leader, victim, false).await;
    c.assert_converged(committed.index).await;
    let status = c.status(victim).await;
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);

    // Removing the leader hands leadership over first.
    let status = c.remove(victim, leader).await.unwrap();
    assert_eq!(status.members.len(), 2);
    assert_ne!(status.leader, leader);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_refuses_bad_requests_clearly() {
    let mut c = TestCluster::start(1).await;
    let mut admin = c.admin(1).await;

    let e = admin.remove(IdRequest { id: 1 }).await.unwrap_err();
    assert!(e.message().contains("last voter"), "{e:?}");
    let e = admin.remove(IdRequest { id: 42 }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin.transfer_leader(IdRequest { id: 42 }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin.add(AddRequest { raft_addr: "127.0.0.1:1".into(), learner: false }).await.unwrap_err();
    assert!(e.message().contains("cannot reach"), "{e:?}");

    // A node that formed its own cluster is refused.
    let other_dir = c.tmp.path().join("other");
    let mut cfg = common::config(9, other_dir, |_| {});
    cfg.no_bootstrap = false;
    let listeners = node::Listeners {
        client: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        raft: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let other = node::start(cfg, listeners).await.unwrap();
    let e = admin.add(AddRequest { raft_addr: other.raft_addr.to_string(), learner: false }).await.unwrap_err();
    assert!(e.message().contains("another cluster"), "{e:?}");
    other.shutdown().await;

    c.spawn(2).await;
    let e = c.admin(2).await.status(Empty {}).await.unwrap().into_inner();
    assert!(e.members.is_empty(), "an unformed node has no members");
    c.stop(2).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.shutdown().await;
}

fn growing_snapshots(c: &mut node::Config) {
    c.snapshot_every = 40;
    c.snapshot_ratio = 2.0;
    c.snapshot_keep = 5;
}

/// The index of the leader's latest snapshot once it has not moved for 1.5 s
/// (the policy looks every 0.5 s).
async fn settled_snapshot(c: &TestCluster, id: u64) -> u64 {
    let index = || c.handle(id).node.snapshot_index();
    let mut last = index();
    let mut still_since = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while still_since.elapsed() < Duration::from_millis(1500) {
        assert!(std::time::Instant::now() < deadline, "the snapshot index kept moving");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = index();
        if now != last {
            (last, still_since) = (now, std::time::Instant::now());
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_intervals_grow_with_the_log() {
    let c = TestCluster::start_with(3, growing_snapshots).await;
    let leader = c.wait_leader().await;
    let mut last = 0;
    while last < 60 {
        last = c.post(leader, "grow", "a", &format!("a{last}")).await.index;
    }
    // 40 entries is the floor, and the first snapshot only needs that.
    let first = settled_snapshot(&c, leader).await;
    assert!(first >= 40, "no first snapshot: {first}");
    // Another 40 entries reach the floor but not twice the first snapshot's index.
    let target = last + 40;
    while last < target {
        last = c.post(leader, "grow", "a", &format!("b{last}")).await.index;
    }
    assert!(last - first < 2 * first, "test arithmetic: {last} {first}");
    assert_eq!(settled_snapshot(&c, leader).await, first, "snapshot taken before the interval grew");
    // Past twice the first snapshot's index, the next one comes.
    while last < first * 3 + 1 {
        last = c.post(leader, "grow", "a", &format!("c{last}")).await.index;
    }
    let second = settled_snapshot(&c, leader).await;
    assert!(second >= first * 3, "no second snapshot: first {first}, second {second}, applied {last}");
    c.shutdown().await;
}
