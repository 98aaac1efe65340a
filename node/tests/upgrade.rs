//! Data written before feature levels existed opens and serves on today's
//! binaries, and the cluster is raised to the current level in place.
//!
//! The fixture (`fixtures/level1-cluster.tar.gz`, made by
//! `scripts/make-level1-fixture.sh` with binaries from commit 0272548) is the
//! data directory of a one-node cluster at level 1: 82 users, three rooms (one
//! a DM), a snapshot behind a compacted log and entries after it, and the
//! history that node served for each room. Its membership records the raft address 127.77.0.1:9080, so
//! this test binds that address: two runs of it at once on one machine would
//! collide, unlike the tests that bind port 0.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context};
use node::procs::{chorusctl, ctl, Proc};
use serde_json::Value;
use wire::http::{Credentials, HistoryPage, PostMessage, Posted, Session};

const FIXTURE_RAFT: &str = "127.77.0.1:9080";
const ROOMS: [&str; 3] = ["lobby", "dev", "dm:ann:bob"];

fn status(raft: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&ctl(raft, &["--json", "cluster", "status"])?)?)
}

async fn login(http: &reqwest::Client, client: &str, user: &str) -> anyhow::Result<String> {
    let creds = Credentials { name: user.into(), password: format!("fixture-password-{user}") };
    let r = http.post(format!("http://{client}/v1/sessions")).json(&creds).send().await?;
    ensure!(r.status().is_success(), "login of {user} on {client}: {}", r.status());
    Ok(r.json::<Session>().await?.token)
}

/// A room's whole history as `client` serves it from its own state.
async fn history(http: &reqwest::Client, client: &str, token: &str, room: &str) -> anyhow::Result<Value> {
    let url = format!("http://{client}/v1/rooms/{room}/messages?limit=1000&consistency=local");
    let r = http.get(url).bearer_auth(token).send().await?;
    ensure!(r.status().is_success(), "history of {room} on {client}: {}", r.status());
    Ok(r.json().await?)
}

/// Posts to `lobby` through `client`.
async fn post(http: &reqwest::Client, client: &str, token: &str, id: &str, text: &str) -> anyhow::Result<Posted> {
    let body = PostMessage { id: id.into(), text: text.into(), reply_to: None };
    let r = http.post(format!("http://{client}/v1/rooms/lobby/messages")).bearer_auth(token).json(&body).send().await?;
    Ok(r.error_for_status()?.json().await?)
}

/// The level-1 node's answers, as the fixture recorded them.
fn recorded(root: &Path, room: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(root.join(format!("{room}.json"))).with_context(|| format!("fixture's {room}.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Waits until `client` serves `room` with `want` (a node that just joined
/// may still be applying).
async fn converges(http: &reqwest::Client, client: &str, token: &str, room: &str, want: &Value) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = history(http, client, token, room).await?;
        if &got == want {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "{room} on {client} is {got} instead of {want}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The snapshot file in a node's snapshot directory.
fn snapshot_in(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .with_context(|| format!("no snapshot in {}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_1_cluster_opens_serves_and_is_upgraded() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/level1-cluster.tar.gz");
    let untar = Command::new("tar").arg("-C").arg(root).arg("-xzf").arg(&fixture).status()?;
    ensure!(untar.success(), "cannot unpack {}", fixture.display());
    let http = reqwest::Client::new();

    // Today's chorusd on the old data: the same history, the same accounts.
    let mut one = Proc::new(1, root.join("node-1"), &["--rate-limit", "0"]);
    one.raft_addr = FIXTURE_RAFT.into();
    one.start()?;
    let s = status(FIXTURE_RAFT)?;
    assert_eq!(s["feature_level"], 1, "{s}");
    assert_eq!(s["members"][0]["max_feature_level"], raft_store::format::CURRENT, "{s}");
    let ann = login(&http, &one.client_addr, "ann").await?;
    for room in ROOMS {
        let want = recorded(root, room)?;
        assert!(want["messages"].as_array().is_some_and(|m| !m.is_empty()), "the fixture's {room} is empty");
        assert_eq!(history(&http, &one.client_addr, &ann, room).await?, want, "{room}");
    }
    // Written at level 1, so an old binary could still read it.
    let posted = post(&http, &one.client_addr, &ann, "after-open", "written by today's binary at level 1").await?;
    assert_eq!(posted.seq, 51);

    // A new member: the old log is compacted, so it installs the level-1 snapshot
    // and replays the level-1 entries after it.
    let mut two = Proc::new(2, root.join("node-2"), &["--rate-limit", "0"]);
    two.start()?;
    ctl(FIXTURE_RAFT, &["cluster", "add", &two.raft_addr])?;
    let installed = snapshot_in(&root.join("node-2/snapshots"))?;
    assert!(std::fs::read(&installed)?.starts_with(b"CHORUSSNAP1\n"), "node 2 installed {}", installed.display());
    let bob = login(&http, &two.client_addr, "bob").await?;
    let mut lobby = history(&http, &one.client_addr, &ann, "lobby").await?;
    converges(&http, &two.client_addr, &bob, "lobby", &lobby).await?;
    for room in ["dev", "dm:ann:bob"] {
        converges(&http, &two.client_addr, &ann, room, &recorded(root, room)?).await?;
    }

    // Credential events need level 3: refused, with what to do, until the upgrade.
    let e = ctl(FIXTURE_RAFT, &["users", "revoke", "ann"]).expect_err("a revocation at level 1");
    assert!(e.to_string().contains("needs feature level 3") && e.to_string().contains("cluster upgrade"), "{e}");
    let r = http.post(format!("http://{}/v1/sessions/revoke", one.client_addr)).bearer_auth(&ann).send().await?;
    assert_eq!(r.status(), 400, "a revocation over HTTP at level 1");

    // Every member reads the current level: raise the cluster to it, through either node.
    let current = raft_store::format::CURRENT;
    let out = ctl(&two.raft_addr, &["cluster", "upgrade"])?;
    assert!(out.contains(&format!("from feature level 1 to {current}")), "{out}");
    for raft in [FIXTURE_RAFT, two.raft_addr.as_str()] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while status(raft)?["feature_level"] != current {
            ensure!(std::time::Instant::now() < deadline, "node at {raft} is not at level {current}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(ctl(FIXTURE_RAFT, &["cluster", "upgrade"])?.contains(&format!("already at feature level {current}")));
    let e = chorusctl(&["--node", FIXTURE_RAFT, "cluster", "upgrade", "--level", "9"])?;
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("must run a newer chorusd"), "{e:?}");

    // Entries and a snapshot at the current level, read back after a restart.
    let posted = post(&http, &two.client_addr, &bob, "after-upgrade", "a current-level entry").await?;
    assert_eq!(posted.seq, 52);
    ctl(FIXTURE_RAFT, &["cluster", "snapshot"])?;
    let head = std::fs::read(snapshot_in(&root.join("node-1/snapshots"))?)?;
    let mut expected = b"CHORUSSNAP2\n".to_vec();
    expected.extend_from_slice(&current.to_le_bytes());
    assert!(head.starts_with(&expected), "{:?}", &head[..16.min(head.len())]);
    one.kill();
    one.start()?;
    lobby = history(&http, &two.client_addr, &bob, "lobby").await?;
    let messages = lobby["messages"].as_array().context("messages")?;
    assert_eq!(messages.len(), 52);
    assert_eq!(messages[51]["text"], "a current-level entry");
    let ann = login(&http, &one.client_addr, "ann").await?;
    converges(&http, &one.client_addr, &ann, "lobby", &lobby).await?;
    assert_eq!(status(FIXTURE_RAFT)?["feature_level"], current);
    let _: HistoryPage = serde_json::from_value(lobby)?;
    Ok(())
}

/// A cluster formed by today's binaries starts at the newest level its founders
/// read: nothing to upgrade before the first feature that needs it.
#[test]
fn a_new_cluster_starts_at_the_current_level() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = node::procs::ProcCluster::start(tmp.path(), 2, &[])?;
    let raft = c.procs[1].raft_addr.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = status(&raft)?;
        if s["feature_level"] == raft_store::format::CURRENT {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "still at level {} after formation", s["feature_level"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A peer forwards its clients' writes and nothing else: a `Propose` carrying
/// the feature level (or the formation) is refused, so holding the cluster
/// secret is not enough to raise the level past what every member reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_propose_the_feature_level() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = node::procs::ProcCluster::start(tmp.path(), 1, &[])?;
    let raft = c.procs[0].raft_addr.clone();
    let cluster_id = status(&raft)?["cluster_id"].as_str().context("cluster id")?.to_string();
    let mut client = proto::v1::raft_client::RaftClient::connect(format!("http://{raft}")).await?;
    let raise = raft_store::chat::Event::FeatureLevelRaised { level: raft_store::format::CURRENT + 1 };
    let refused = node::rpc::propose_at(&mut client, &cluster_id, None, &raise, std::time::Duration::from_secs(5)).await;
    match refused {
        Err(status) => assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}"),
        Ok(reply) => panic!("accepted: {reply:?}"),
    }
    // Still serving, at a level it reads.
    let s = status(&raft)?;
    assert!(s["feature_level"].as_u64().is_some_and(|l| l <= u64::from(raft_store::format::CURRENT)), "{s}");
    Ok(())
}
