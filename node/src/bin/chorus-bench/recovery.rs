//! `chorus-bench recovery`: how a cluster holding `--messages` messages
//! (default 1,000,000) comes back.
//!
//! 1. Loads the messages into room `bench` with the gathering client at 256
//!    writers, and registers a user `reader` in that room over HTTP. The nodes
//!    run with `--snapshot-every 1000 --snapshot-keep 100`, so the messages
//!    end up in snapshots as they would in a long-lived cluster.
//! 2. SIGKILLs a follower and restarts it: the time from the restart to
//!    `/readyz` answering 200, and to the first history page (`GET
//!    /v1/rooms/bench/messages?limit=50` as `reader`) served by it.
//! 3. Starts a new node and adds it as a learner (`chorusctl cluster add
//!    --learner`, which returns once it has caught up): the time that took, the
//!    size of the snapshot it was sent, and that size per second.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use node::procs::{ctl, Proc, ProcCluster};
use node::rpc::{propose_at, ProposeReply};
use proto::v1::raft_client::RaftClient;
use raft_store::chat::Event;

use crate::breakdown::wait_leader;
use crate::{gathering_client, message, Args, Writer};

const PASSWORD: &str = "recovery-password";

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (hb, el) = (args.heartbeat_ms.to_string(), args.election_ms.to_string());
    // Loaded in batches, a million messages are only some thousands of log
    // entries, fewer than `--snapshot-every`; a small interval makes the nodes
    // snapshot as a cluster that took its messages one by one would, so the
    // restart opens a snapshot and the new node is sent one.
    let extra = ["--heartbeat-ms", &hb, "--election-ms", &el, "--rate-limit", "0", "--snapshot-every", "1000", "--snapshot-keep", "100"];
    let mut c = ProcCluster::start(tmp.path(), args.nodes, &extra)?;
    let leader = wait_leader(&c)?;
    let leader_raft = c.proc(leader).raft_addr.clone();
    let status = c.status(&leader_raft)?;
    let cluster_id = status["cluster_id"].as_str().context("no cluster id")?.to_string();
    let leader_url = format!("http://{}", c.proc(leader).client_addr);

    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let token = reader_token(&http, &leader_url).await?;
    let mut client = RaftClient::connect(format!("http://{leader_raft}")).await?;
    for user in ["bench", "reader"] {
        let join = Event::RoomJoined { room: "bench".into(), user: user.into() };
        propose_at(&mut client, &cluster_id, None, &join, Duration::from_secs(5)).await?;
    }
    let began = Instant::now();
    let bytes = args.bytes;
    load(&leader_raft, &cluster_id, args.messages, move |w, i| message(w, i, bytes)).await?;
    let took = began.elapsed();
    println!(
        "chorus-bench recovery: {} messages of {} bytes loaded in {:.1} s ({:.0}/s)",
        args.messages,
        args.bytes,
        took.as_secs_f64(),
        args.messages as f64 / took.as_secs_f64()
    );

    let follower = c.procs.iter().map(|p| p.id).find(|id| *id != leader).context("no follower")?;
    restart(&http, c.proc(follower), &token).await?;
    join_new_node(&mut c, &leader_raft, &extra)?;
    Ok(())
}

/// Registers `reader` and logs in: its session token.
pub async fn reader_token(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({ "name": "reader", "password": PASSWORD });
    let created = http.post(format!("{url}/v1/users")).json(&body).send().await?;
    if !created.status().is_success() {
        bail!("register: {}", created.status());
    }
    let session: serde_json::Value = http.post(format!("{url}/v1/sessions")).json(&body).send().await?.error_for_status()?.json().await?;
    Ok(session["token"].as_str().context("no token in the login answer")?.to_string())
}

/// Commits `n` messages through the gathering client, 256 writers at once;
/// `make(writer, i)` is the `i`th message.
pub async fn load(leader_raft: &str, cluster_id: &str, n: u64, make: impl Fn(usize, u64) -> Event + Send + Sync + 'static) -> anyhow::Result<()> {
    let conn = RaftClient::connect(format!("http://{leader_raft}")).await?;
    let gatherer = gathering_client(conn, cluster_id.into());
    let next = Arc::new(AtomicU64::new(0));
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for w in 0..256 {
        let (mut writer, next, cluster_id, make) = (Writer::Gathered(gatherer.clone()), next.clone(), cluster_id.to_string(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                match writer.write(&cluster_id, make(w, i)).await? {
                    ProposeReply::Committed { .. } => {}
                    other => bail!("write refused: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// SIGKILLs and restarts `p`; prints the time to `/readyz` 200 and to its
/// first history page.
async fn restart(http: &reqwest::Client, p: &mut Proc, token: &str) -> anyhow::Result<()> {
    p.kill();
    let began = Instant::now();
    p.start()?;
    let started = began.elapsed();
    let url = format!("http://{}", p.client_addr);
    let deadline = began + Duration::from_secs(120);
    let ready = loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                break began.elapsed();
            }
        }
        if Instant::now() > deadline {
            bail!("node {} not ready within 120 s of its restart", p.id);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let page = http.get(format!("{url}/v1/rooms/bench/messages?limit=50")).bearer_auth(token).send().await?;
    if !page.status().is_success() {
        bail!("history page from node {}: {}", p.id, page.status());
    }
    let body: serde_json::Value = page.json().await?;
    let served = began.elapsed();
    let count = body["messages"].as_array().map_or(0, Vec::len);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "restart of node {}: serving (ready file) {:.0} ms, /readyz 200 {:.0} ms, first history page ({count} messages) {:.0} ms",
        p.id,
        ms(started),
        ms(ready),
        ms(served)
    );
    Ok(())
}

/// Starts a node with the next id, adds it as a learner and prints how long
/// catching up took and the size of the snapshot it holds.
fn join_new_node(c: &mut ProcCluster, leader_raft: &str, extra: &[&str]) -> anyhow::Result<()> {
    let id = c.procs.len() as u64 + 1;
    let mut p = Proc::new(id, c.root.join(format!("node-{id}")), extra);
    p.start()?;
    let began = Instant::now();
    ctl(leader_raft, &["cluster", "add", &p.raft_addr, "--learner"])?;
    let took = began.elapsed();
    let ms = took.as_secs_f64() * 1000.0;
    match largest_snapshot(&p.dir)? {
        Some(bytes) => println!(
            "new node {id}: caught up as a learner in {ms:.0} ms; snapshot {:.1} MB, {:.1} MB/s",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / took.as_secs_f64()
        ),
        None => println!("new node {id}: caught up as a learner in {ms:.0} ms, from the log alone (no snapshot was sent)"),
    }
    c.procs.push(p);
    Ok(())
}

/// The largest file in any `snapshots` directory under `dir`, if any.
fn largest_snapshot(dir: &Path) -> anyhow::Result<Option<u64>> {
    let mut largest = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if d.file_name().is_some_and(|n| n == "snapshots") {
                largest = largest.max(meta.len());
            }
        }
    }
    Ok((largest > 0).then_some(largest))
}
