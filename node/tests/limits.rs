//! What one client can make a node hold, measured on a real `chorusd`: a
//! client that asks for much more than it reads is closed as a slow consumer
//! before its node's memory grows by more than its outgoing queue's bound.

mod common;

use std::time::{Duration, Instant};

use common::client::{self, connect, join, login};
use futures::{SinkExt, StreamExt};
use node::procs::Proc;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_history_and_reads_nothing_is_closed_with_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::new(1, tmp.path().join("node-1"), &["--rate-limit", "0", "--request-rate-limit", "0"]);
    p.start().expect("start chorusd");
    let out = node::procs::chorusctl(&["--node", &p.raft_addr, "cluster", "init", &p.raft_addr]).expect("chorusctl");
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let pid = p.child.as_ref().expect("running").id();
    let base = format!("http://{}", p.client_addr);

    // 500 messages of 1 KiB: a page of them is about 600 KB of JSON.
    let token = login(&base, "ann").await;
    let mut ws = connect(&base, &token).await;
    join(&mut ws, "big", None).await;
    let text = "x".repeat(1024);
    let http = client::http();
    for i in 0..500 {
        let r = http
            .post(format!("{base}/v1/rooms/big/messages"))
            .bearer_auth(&token)
            .json(&json!({ "id": i, "text": text }))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
    }
    drop(ws);

    let before = rss_kib(pid);
    let reader = connect(&base, &token).await;
    let (mut tx, mut rx) = reader.split();
    // 2,000 requests for the whole page, sent from a task: once the node stops
    // reading them, sending blocks, and the task is left to end with the socket.
    let sender = tokio::spawn(async move {
        for i in 0..2_000 {
            let frame = json!({ "type": "history", "room": "big", "limit": 500, "req": i });
            if tx.send(Message::Text(frame.to_string().into())).await.is_err() {
                return i;
            }
        }
        2_000
    });
    // Read nothing while the node decides; watch its memory meanwhile.
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    println!("RSS before {before} KiB, peak {peak} KiB: grew {grown_mib} MiB");
    assert!(grown_mib < 64, "the node's RSS grew by {grown_mib} MiB for one client");

    // Now read: what the socket held, then the close frame.
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(e) => {
                    println!("read failed: {e}");
                    return None;
                }
            }
        }
        None
    })
    .await
    .expect("the node closes the connection within 30 s");
    assert_eq!(close, Some(CloseCode::from(4008)), "closed as a slow consumer");
    sender.abort();
}

/// A flood of logins from one address: past `--account-rate-limit` (60 per
/// 10 s by default) they are refused with 429 before any argon2 runs, and the
/// ones let in wait for the node's four argon2 workers, so memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_refused_with_429_and_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::new(1, tmp.path().join("node-1"), &[]);
    p.start().expect("start chorusd");
    let out = node::procs::chorusctl(&["--node", &p.raft_addr, "cluster", "init", &p.raft_addr]).expect("chorusctl");
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let pid = p.child.as_ref().expect("running").id();
    let base = format!("http://{}", p.client_addr);
    let before = rss_kib(pid);
    let http = client::http();
    let attempts = (0..300).map(|i| {
        let (http, url) = (http.clone(), format!("{base}/v1/sessions"));
        async move {
            let creds = json!({ "name": format!("nobody{i}"), "password": "not-a-password" });
            http.post(url).json(&creds).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    });
    let codes = futures::future::join_all(attempts).await;
    let peak = rss_kib(pid);
    let limited = codes.iter().filter(|c| **c == 429).count();
    let denied = codes.iter().filter(|c| **c == 401).count();
    let grown_mib = peak.saturating_sub(before) / 1024;
    println!("300 logins: {denied} checked and denied, {limited} refused with 429; RSS grew {grown_mib} MiB");
    assert_eq!(denied + limited, 300, "every attempt is answered 401 or 429: {codes:?}");
    assert!(denied <= 60, "{denied} attempts ran argon2 in one window");
    assert!(limited >= 240, "only {limited} were refused");
    assert!(grown_mib < 128, "RSS grew by {grown_mib} MiB");
}

/// Past `--max-peer-connections` from one address, the raft port closes a
/// new connection at once; the ones it holds, and a freed place, still serve.
#[test]
fn the_raft_port_takes_only_so_many_connections_from_one_address() {
    use std::io::Read;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::new(1, tmp.path().join("node-1"), &["--max-peer-connections", "3"]);
    p.start().expect("start chorusd");
    let init = node::procs::chorusctl(&["--node", &p.raft_addr, "cluster", "init", &p.raft_addr]).expect("chorusctl");
    assert!(init.status.success(), "init: {}", String::from_utf8_lossy(&init.stderr));
    let held: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(&p.raft_addr).expect("connect")).collect();
    let mut extra = std::net::TcpStream::connect(&p.raft_addr).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 16];
    assert!(matches!(extra.read(&mut buf), Ok(0)), "a fourth connection was not closed");
    // chorusctl needs a place too, so it is refused while the three are held.
    let refused = node::procs::chorusctl(&["--node", &p.raft_addr, "--timeout", "2", "cluster", "status"]).expect("chorusctl");
    assert!(!refused.status.success(), "cluster status got through past the cap");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = node::procs::chorusctl(&["--node", &p.raft_addr, "--timeout", "2", "cluster", "status"]).expect("chorusctl");
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed places were not given: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}
