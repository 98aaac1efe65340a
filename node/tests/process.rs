//! Real `chorusd` processes formed by the real `chorusctl`: the leader is killed
//! with SIGKILL, writes continue, and the killed node restarts and catches up.

use std::time::{Duration, Instant};

use node::procs::{chorusctl, single_node, ProcCluster};
use node::rpc::{propose_at, ProposeReply};
use proto::v1::raft_client::RaftClient;
use raft_store::chat::{Event, Outcome};

/// Proposes through whichever running node is the leader, retrying others.
async fn write(c: &ProcCluster, cluster_id: &str, event: &Event, deadline: Instant) -> anyhow::Result<u64> {
    loop {
        for p in c.procs.iter().filter(|p| p.child.is_some()) {
            let Ok(mut client) = RaftClient::connect(format!("http://{}", p.raft_addr)).await else { continue };
            if let Ok(ProposeReply::Committed { outcome, index }) =
                propose_at(&mut client, cluster_id, None, event, Duration::from_secs(2)).await
            {
                anyhow::ensure!(!matches!(outcome, Outcome::Rejected { .. } | Outcome::NotMember), "{outcome:?}");
                return Ok(index);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no node accepted the write in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn post(i: u32) -> Event {
    Event::MessagePosted { room: "r".into(), from: "u".into(), client_id: format!("m{i}"), text: "x".repeat(200) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_then_restart() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut c = ProcCluster::start(tmp.path(), 3, &["--heartbeat-ms", "50", "--election-ms", "300"])?;
    let leader = c.leader().expect("a leader after init");
    let status = c.status(&c.procs[0].raft_addr)?;
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);

    let deadline = Instant::now() + Duration::from_secs(30);
    write(&c, &cluster_id, &Event::RoomJoined { room: "r".into(), user: "u".into() }, deadline).await?;
    for i in 0..20 {
        write(&c, &cluster_id, &post(i), deadline).await?;
    }

    c.proc(leader).kill();
    let killed_at = Instant::now();
    write(&c, &cluster_id, &post(20), Instant::now() + Duration::from_secs(15)).await?;
    eprintln!("first write after SIGKILL of the leader: {:?}", killed_at.elapsed());
    let mut last = 0;
    for i in 21..40 {
        last = write(&c, &cluster_id, &post(i), deadline).await?;
    }
    let new_leader = c.leader().expect("a new leader");
    assert_ne!(new_leader, leader);

    c.proc(leader).start()?;
    let addr = c.proc(leader).raft_addr.clone();
    c.wait_answering(&addr)?;
    let catch_up = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status(&addr)?;
        let me = s["members"].as_array().unwrap().iter().find(|m| m["id"] == leader).cloned().unwrap();
        let all_reachable = s["members"].as_array().unwrap().iter().all(|m| m["reachable"] == true);
        if me["applied_index"].as_u64().unwrap_or(0) >= last && all_reachable {
            assert_eq!(me["role"], "follower");
            break;
        }
        assert!(Instant::now() < catch_up, "restarted node did not catch up: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A retry of an already committed id is answered as a duplicate with its seq.
    let retry = {
        let p = c.procs.iter().find(|p| p.id == new_leader).unwrap();
        let mut client = RaftClient::connect(format!("http://{}", p.raft_addr)).await?;
        propose_at(&mut client, &cluster_id, None, &post(5), Duration::from_secs(5)).await?
    };
    assert!(matches!(retry, ProposeReply::Committed { outcome: Outcome::Posted { seq: 6, duplicate: true, .. }, .. }), "{retry:?}");
    Ok(())
}

#[test]
fn chorusctl_reports_failures_with_exit_codes() -> anyhow::Result<()> {
    let out = chorusctl(&["--node", "127.0.0.1:1", "--timeout", "1", "cluster", "status"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("chorusctl: cannot reach"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let out = chorusctl(&["cluster", "frobnicate"])?;
    assert_eq!(out.status.code(), Some(2), "bad usage");
    let out = chorusctl(&["cluster", "remove", "not-a-number"])?;
    assert_eq!(out.status.code(), Some(2), "bad usage");
    Ok(())
}

#[test]
fn chorusctl_chat_sends_lines_and_prints_messages() -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir()?;
    let (ready_path, log_path) = (tmp.path().join("node.ready"), tmp.path().join("node.log"));
    let mut node = single_node(tmp.path(), Stdio::null())?;
    let ready = node::procs::wait_ready(&ready_path, &mut node, &log_path, node::procs::READY_TIMEOUT)?;
    let (url, raft) = (ready.client_url.clone(), ready.raft_addr.to_string());
    // A fresh node forms its single-node cluster right after it serves.
    let formed = Instant::now() + Duration::from_secs(20);
    let leader = || -> anyhow::Result<u64> {
        let out = chorusctl(&["--node", &raft, "--json", "cluster", "status"])?;
        Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|s| s["leader"].as_u64()).unwrap_or(0))
    };
    while leader()? == 0 {
        assert!(Instant::now() < formed, "node did not form its cluster");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut chat = Command::new(node::procs::bin("chorusctl")?)
        .args(["chat", "--url", &url, "--user", "ann", "--password", "password-1", "--room", "lobby"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = chat.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    writeln!(stdin, "hello from the terminal")?;
    std::thread::sleep(Duration::from_secs(1));
    writeln!(stdin, "/history")?;
    std::thread::sleep(Duration::from_secs(1));
    writeln!(stdin, "/quit")?;
    let out = chat.wait_with_output()?;
    let _ = node.kill();
    let _ = node.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chat failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("joined lobby"), "{stdout}");
    assert!(stdout.contains("[lobby #1] ann: hello from the terminal"), "{stdout}");
    Ok(())
}

/// Port 0 for both listeners: the node reports what it bound, on stdout and in
/// its ready file, serves there, and removes the file when it stops cleanly.
#[test]
fn chorusd_on_port_zero_reports_its_addresses() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir()?;
    let (ready_path, log_path) = (tmp.path().join("node.ready"), tmp.path().join("node.log"));
    // A file left by an earlier run is not taken for this one.
    std::fs::write(&ready_path, b"{\"stale\":true}")?;
    let mut node = single_node(tmp.path(), Stdio::piped())?;
    // The stdout line comes once the file is written.
    let mut line = String::new();
    BufReader::new(node.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    let ready: node::Ready = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{e}: {line:?}; log: {:?}", std::fs::read_to_string(&log_path)))?;
    assert_eq!(node::ready::read(&ready_path)?, Some(ready.clone()), "the file says what stdout says");
    assert_ne!(ready.client_addr.port(), 0);
    assert_ne!(ready.raft_addr.port(), 0);
    assert_eq!(ready.pid, node.id());
    assert_eq!(ready.client_url, format!("http://{}", ready.client_addr));
    assert_eq!(ready.advertise_raft, ready.raft_addr.to_string());


    // Both listeners answer where the record says.
    let mut http = std::net::TcpStream::connect(ready.client_addr)?;
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    http.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = chorusctl(&["--node", &ready.raft_addr.to_string(), "--timeout", "5", "cluster", "status"])?;
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    Command::new("kill").args(["-TERM", &node.id().to_string()]).status()?;
    let exit = node.wait()?;
    assert!(exit.success(), "clean exit: {exit}");
    assert!(!ready_path.exists(), "the ready file goes with the node");
    Ok(())
}

/// `--config`: the file sets what neither a flag nor a `CHORUS_*` variable
/// does, `--print-config` says which won, and an unknown key stops the node
/// before it binds anything.
#[test]
fn chorusd_reads_a_config_file_under_flags_and_environment() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("chorus.toml");
    std::fs::write(&file, "snapshot-every = 100\nheartbeat-ms = 80\nelection-ms = 400\nno-bootstrap = true\n")?;
    let out = std::process::Command::new(node::procs::bin("chorusd")?)
        .arg("--config")
        .arg(&file)
        .args(["--election-ms", "500", "--print-config"])
        .env("CHORUS_HEARTBEAT_MS", "90")
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    for (key, value, source) in
        [("snapshot-every", "100", "config file"), ("heartbeat-ms", "90", "environment"), ("election-ms", "500", "flag"), ("no-bootstrap", "true", "config file"), ("id", "1", "default")]
    {
        let line = text.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap_or_default();
        assert!(line.contains(&format!("= {value} ")) && line.ends_with(&format!("# {source}")), "{key}: {line:?} in\n{text}");
    }

    std::fs::write(&file, "snapshot-evry = 100\n")?;
    let out = std::process::Command::new(node::procs::bin("chorusd")?).arg("--config").arg(&file).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown key \"snapshot-evry\"") && err.contains("chorus.toml"), "{err}");
    Ok(())
}
