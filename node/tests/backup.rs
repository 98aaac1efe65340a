//! Backup, restore and force-new with real binaries: a backup taken under load
//! from a follower restores into a fresh three-node cluster with every message
//! acked before it began, and a survivor of a lost majority becomes a new
//! cluster that keeps every acked message and grows again.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use node::procs::{chorusctl, ctl, Proc, ProcCluster};
use serde_json::Value;
use wire::http::{Credentials, PostMessage, Session};

const FLAGS: [&str; 6] = ["--heartbeat-ms", "50", "--election-ms", "300", "--rate-limit", "0"];

fn status(raft: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&ctl(raft, &["--json", "cluster", "status"])?)?)
}

/// Registers `user`, logs in through `client` and joins `lobby`.
async fn login(http: &reqwest::Client, client: &str, user: &str) -> anyhow::Result<String> {
    use futures::{SinkExt, StreamExt};
    let creds = Credentials { name: user.into(), password: format!("password-of-{user}") };
    let r = http.post(format!("http://{client}/v1/users")).json(&creds).send().await?;
    ensure!(r.status().is_success(), "register {user} on {client}: {}", r.status());
    let r = http.post(format!("http://{client}/v1/sessions")).json(&creds).send().await?;
    ensure!(r.status().is_success(), "login of {user} on {client}: {}", r.status());
    let token = r.json::<Session>().await?.token;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{client}/v1/ws?token={token}")).await?;
    let join = serde_json::json!({ "type": "join", "room": "lobby" }).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(join.into())).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?.context("closed before joining")??;
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let f: Value = serde_json::from_str(t.as_str())?;
            ensure!(f["type"] != "error", "join: {f}");
            if f["type"] == "joined" {
                return Ok(token);
            }
        }
    }
}

async fn post(http: &reqwest::Client, client: &str, token: &str, text: &str) -> anyhow::Result<()> {
    let body = PostMessage { id: text.into(), text: text.into(), reply_to: None };
    let r = http.post(format!("http://{client}/v1/rooms/lobby/messages")).bearer_auth(token).json(&body).send().await?;
    ensure!(r.status().is_success(), "post {text} to {client}: {}", r.status());
    Ok(())
}

/// Every text in `lobby` as `client` serves it from its own state, paged.
async fn texts(http: &reqwest::Client, client: &str, token: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("http://{client}/v1/rooms/lobby/messages?after={after}&limit=500&consistency=local");
        let r = http.get(url).bearer_auth(token).send().await?;
        ensure!(r.status().is_success(), "history on {client}: {}", r.status());
        let page: Value = r.json().await?;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            return Ok(out);
        }
        for m in &messages {
            out.push(m["text"].as_str().unwrap_or_default().to_string());
            after = m["seq"].as_u64().unwrap_or(after);
        }
    }
}

/// Waits until `client` serves every text of `want` in `lobby` (in order, and
/// only texts that were posted); returns what it served.
async fn holds(http: &reqwest::Client, client: &str, token: &str, want: &[String], posted: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = texts(http, client, token).await?;
        ensure!(got.iter().all(|t| posted.contains(t)), "{client} serves a text nobody posted");
        let have: BTreeSet<&String> = got.iter().collect();
        let missing: Vec<&String> = want.iter().filter(|t| !have.contains(t)).collect();
        if missing.is_empty() {
            let order: Vec<&String> = got.iter().filter(|t| want.contains(t)).collect();
            ensure!(order == want.iter().collect::<Vec<_>>(), "{client} serves the acked messages out of order");
            return Ok(got);
        }
        ensure!(Instant::now() < deadline, "{client} lacks {} acked messages, e.g. {}", missing.len(), missing[0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until node `id`, through `raft`, leads a cluster of `n` caught-up voters.
fn leads(raft: &str, id: u64, n: usize) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = status(raft) {
            let members = s["members"].as_array().cloned().unwrap_or_default();
            let whole = members.len() == n
                && members.iter().all(|m| m["voter"] == true && m["reachable"] == true)
                && members.windows(2).all(|w| w[0]["applied_index"] == w[1]["applied_index"]);
            if s["leader"] == id && whole {
                return Ok(s);
            }
            ensure!(Instant::now() < deadline, "node {id} does not lead {n} caught-up voters: {s}");
        }
        ensure!(Instant::now() < deadline, "node {id} at {raft} does not answer");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts fresh nodes `ids` (empty data dirs under `root`) and adds them through `raft`.
fn grow(root: &Path, raft: &str, ids: &[u64]) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for &id in ids {
        let mut p = Proc::new(id, root.join(format!("node-{id}")), &FLAGS);
        p.start()?;
        ctl(raft, &["cluster", "add", &p.raft_addr])?;
        procs.push(p);
    }
    Ok(procs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_new_cluster_with_every_acked_message() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("old"))?;
    let old = ProcCluster::start(&tmp.path().join("old"), 3, &FLAGS)?;
    let raft1 = old.procs[0].raft_addr.clone();
    let leader = leads_any(&raft1)?;
    let follower = old.procs.iter().find(|p| p.id != leader).context("no follower")?;
    let client = old.procs[0].client_addr.clone();
    let http = reqwest::Client::new();
    let token = login(&http, &client, "ann").await?;

    // One writer posts without pause; each ack is recorded with its time.
    let acks: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, client, token, acks, stop) = (http.clone(), client.clone(), token.clone(), acks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let text = format!("m-{n}");
                if post(&http, &client, &token, &text).await.is_ok() {
                    acks.lock().unwrap().push((text, Instant::now()));
                }
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let file = tmp.path().join("chorus.bak");
    let began = Instant::now();
    let (raft, path) = (follower.raft_addr.clone(), file.clone());
    let out = tokio::task::spawn_blocking(move || ctl(&raft, &["backup", path.to_str().unwrap_or_default()])).await??;
    ensure!(out.contains("sha256"), "backup printed no checksum: {out}");
    // It holds password hashes and the token key: for its owner's eyes only.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
    ensure!(mode & 0o077 == 0, "the backup is mode {mode:o}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let posted_count = writer.await?;
    let acked: Vec<(String, Instant)> = acks.lock().unwrap().clone();
    let before: Vec<String> = acked.iter().filter(|(_, at)| *at < began).map(|(t, _)| t.clone()).collect();
    ensure!(before.len() >= 20, "only {} messages were acked before the backup began", before.len());
    let posted: BTreeSet<String> = (1..=posted_count).map(|n| format!("m-{n}")).collect();
    eprintln!("{} acked before the backup began, {} in all, {posted_count} posted", before.len(), acked.len());
    let old_cluster = status(&raft1)?["cluster_id"].as_str().unwrap_or_default().to_string();

    // A damaged backup is refused, by name.
    let mut bytes = std::fs::read(&file)?;
    let damaged = tmp.path().join("damaged.bak");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&damaged, &bytes)?;
    let out = chorusctl(&["restore", damaged.to_str().unwrap_or_default(), "--data-dir", tmp.path().join("x").to_str().unwrap_or_default()])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("checksum"), "{out:?}");

    // Restore into a fresh cluster: node 1 on the restored dir, 2 and 3 new.
    let new_root = tmp.path().join("new");
    std::fs::create_dir_all(&new_root)?;
    let dir1 = new_root.join("node-1");
    ctl(&raft1, &["restore", file.to_str().unwrap_or_default(), "--data-dir", dir1.to_str().unwrap_or_default()])?;
    let mut n1 = Proc::new(1, dir1, &FLAGS);
    n1.start()?;
    leads(&n1.raft_addr, 1, 1)?;
    let _others = grow(&new_root, &n1.raft_addr, &[2, 3])?;
    let s = leads(&n1.raft_addr, 1, 3)?;
    let new_cluster = s["cluster_id"].as_str().unwrap_or_default();
    ensure!(!new_cluster.is_empty() && new_cluster != old_cluster, "the restored cluster kept id {old_cluster}");

    // Every node of the new cluster serves every message acked before the
    // backup began, and the token from the old cluster still works there.
    let clients: Vec<String> =
        s["members"].as_array().cloned().unwrap_or_default().iter().map(|m| m["client_addr"].as_str().unwrap_or_default().to_string()).collect();
    ensure!(clients.len() == 3, "{s}");
    for c in &clients {
        holds(&http, c.trim_start_matches("http://"), &token, &before, &posted).await?;
    }
    let c1 = clients[0].trim_start_matches("http://");
    post(&http, c1, &token, "after-restore").await?;
    let mut want = before.clone();
    want.push("after-restore".into());
    let mut posted = posted;
    posted.insert("after-restore".into());
    for c in &clients {
        holds(&http, c.trim_start_matches("http://"), &token, &want, &posted).await?;
    }
    Ok(())
}

/// The leader of the cluster `raft` belongs to, once there is one.
fn leads_any(raft: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = status(raft).ok().and_then(|s| s["leader"].as_u64()).filter(|l| *l != 0) {
            return Ok(l);
        }
        ensure!(Instant::now() < deadline, "no leader via {raft}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_after_losing_a_majority_keeps_every_acked_message() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut c = ProcCluster::start(tmp.path(), 3, &FLAGS)?;
    let raft1 = c.procs[0].raft_addr.clone();
    leads_any(&raft1)?;
    let client = c.procs[0].client_addr.clone();
    let http = reqwest::Client::new();
    let token = login(&http, &client, "ann").await?;
    let mut acked = Vec::new();
    for n in 1..=60 {
        let text = format!("m-{n}");
        post(&http, &client, &token, &text).await?;
        acked.push(text);
    }
    let posted: BTreeSet<String> = acked.iter().cloned().collect();
    let dirs: Vec<String> = c.procs.iter().map(|p| p.dir.to_string_lossy().into_owned()).collect();

    // A running node's data is not touched.
    let mut args = vec!["cluster", "force-new"];
    args.extend(dirs.iter().map(String::as_str));
    let out = chorusctl(&args)?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stop its chorusd"), "{out:?}");

    // The majority is lost for good; the last member is stopped too.
    for id in [2, 3, 1] {
        c.proc(id).kill();
    }
    let out = chorusctl(&args)?;
    ensure!(out.status.success(), "force-new: {}", String::from_utf8_lossy(&out.stderr));
    let chosen = c.procs.iter().position(|p| p.dir.join("restore.chorusbak").is_file()).context("no dir was chosen")?;
    let id = c.procs[chosen].id;
    let survivor = &mut c.procs[chosen];
    survivor.start()?;
    let raft = survivor.raft_addr.clone();
    let s = leads(&raft, id, 1)?;
    let client = s["members"][0]["client_addr"].as_str().unwrap_or_default().trim_start_matches("http://").to_string();
    holds(&http, &client, &token, &acked, &posted).await?;

    // It takes writes, and grows again from fresh nodes.
    post(&http, &client, &token, "after-force-new").await?;
    acked.push("after-force-new".into());
    let mut posted = posted;
    posted.insert("after-force-new".into());
    let fresh_root = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh_root)?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != id).collect();
    let _grown = grow(&fresh_root, &raft, &others)?;
    let s = leads(&raft, id, 3)?;
    for m in s["members"].as_array().cloned().unwrap_or_default() {
        holds(&http, m["client_addr"].as_str().unwrap_or_default().trim_start_matches("http://"), &token, &acked, &posted).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_backups_rotate_and_each_restores() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let backups = tmp.path().join("backups");
    let b = backups.to_string_lossy().into_owned();
    let mut flags: Vec<&str> = FLAGS.to_vec();
    flags.extend(["--backup-dir", &b, "--backup-interval", "1", "--backup-keep", "2"]);
    let c = ProcCluster::start(tmp.path(), 1, &flags)?;
    let raft = c.procs[0].raft_addr.clone();
    leads_any(&raft)?;
    let client = c.procs[0].client_addr.clone();
    let http = reqwest::Client::new();
    let token = login(&http, &client, "ann").await?;
    let files = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&backups)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "chorusbak")).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    // Writes between backups, so each holds more than the one before.
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    while seen.len() < 4 {
        ensure!(Instant::now() < deadline, "only {} automatic backups appeared", seen.len());
        let text = format!("m-{}", acked.len() + 1);
        post(&http, &client, &token, &text).await?;
        acked.push(text);
        seen.extend(files());
        tokio::time::sleep(Duration::from_millis(50)).await;
        ensure!(files().len() <= 2, "more backups kept than --backup-keep: {:?}", files());
    }
    let newest = files().pop().context("no backup left")?;
    let dir = tmp.path().join("restored");
    ctl(&raft, &["restore", newest.to_str().unwrap_or_default(), "--data-dir", dir.to_str().unwrap_or_default()])?;
    let mut p = Proc::new(1, dir, &FLAGS);
    p.start()?;
    let s = leads(&p.raft_addr, 1, 1)?;
    let restored = s["members"][0]["client_addr"].as_str().unwrap_or_default().trim_start_matches("http://").to_string();
    let got = texts(&http, &restored, &token).await?;
    ensure!(!got.is_empty() && acked.starts_with(&got), "the restored history is not a prefix of what was acked: {got:?}");
    Ok(())
}
