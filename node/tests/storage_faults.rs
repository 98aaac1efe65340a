//! Damaged files are answered, not hidden: a node whose write-ahead log, table
//! file or snapshot was corrupted on disk refuses to start, exits 1, and names
//! the file; a node whose Raft stopped on a disk error stops serving reads.
//!
//! Each test writes through a real `chorusd`, stops it, flips bytes in one of
//! its files, and starts it again on the same data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use node::procs::{bin, single_node, wait_ready, READY_TIMEOUT};
use wire::http::Credentials;

/// Starts a node, registers `users` accounts (one log entry each), and returns
/// it running with its client address.
async fn node_with_users(dir: &Path, users: usize) -> anyhow::Result<(Child, String)> {
    let mut child = single_node(dir, Stdio::null())?;
    let ready = wait_ready(&dir.join("node.ready"), &mut child, &dir.join("node.log"), READY_TIMEOUT)?;
    let http = reqwest::Client::new();
    for i in 0..users {
        let creds = Credentials { name: format!("user-{i}"), password: format!("password-of-user-{i}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = http.post(format!("http://{}/v1/users", ready.client_addr)).json(&creds).send().await;
            if r.as_ref().is_ok_and(|r| r.status().as_u16() == 201) {
                break;
            }
            ensure!(Instant::now() < deadline, "cannot register {}: {r:?}", creds.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((child, ready.client_addr.to_string()))
}

fn sigterm(child: &mut Child) -> anyhow::Result<()> {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "chorusd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The largest file in `dir` whose name ends with `suffix`.
fn largest(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .map(|e| e.path())
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

/// Inverts `len` bytes of `path` starting at `at`.
fn flip(path: &Path, at: usize, len: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    ensure!(at + len <= bytes.len(), "{} has only {} bytes", path.display(), bytes.len());
    for b in &mut bytes[at..at + len] {
        *b = !*b;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Starts the node on its damaged data and expects it to exit 1 before it
/// serves, with every one of `words` in what it printed.
fn refuses_to_start(dir: &Path, words: &[&str]) -> anyhow::Result<String> {
    let mut child = single_node(dir, Stdio::null())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("chorusd kept running on damaged data: {}", std::fs::read_to_string(dir.join("node.log"))?);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("node.log"))?;
    ensure!(status.code() == Some(1), "exit {status}: {log}");
    ensure!(!dir.join("node.ready").exists(), "it wrote a ready file: {log}");
    for w in words {
        ensure!(log.contains(w), "no {w:?} in: {log}");
    }
    Ok(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_write_ahead_log_stops_the_node_and_names_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut child, _) = node_with_users(tmp.path(), 30).await?;
    // SIGKILL: nothing is flushed, every entry lives only in the WAL.
    child.kill()?;
    child.wait()?;
    let wal = largest(&tmp.path().join("data/db"), ".log")?;
    let len = std::fs::metadata(&wal)?.len() as usize;
    // Well before the end: a synced record, not a torn tail.
    flip(&wal, len / 3, 8)?;
    let name = wal.file_name().context("name")?.to_string_lossy().into_owned();
    refuses_to_start(tmp.path(), &["Corruption", &name])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_table_file_stops_the_node_and_names_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut child, _) = node_with_users(tmp.path(), 10).await?;
    // A clean stop flushes the memtables into table files.
    sigterm(&mut child)?;
    let sst = largest(&tmp.path().join("data/db"), ".sst")?;
    let len = std::fs::metadata(&sst)?.len() as usize;
    // The footer: its magic number and the index handles before it.
    flip(&sst, len - 12, 12)?;
    let name = sst.file_name().context("name")?.to_string_lossy().into_owned();
    refuses_to_start(tmp.path(), &["Corruption", &name])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_stops_the_node_and_names_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut child, _) = node_with_users(tmp.path(), 10).await?;
    let ready = node::ready::read(&tmp.path().join("node.ready"))?.context("ready file")?;
    let out = Command::new(bin("chorusctl")?).args(["--node", &ready.raft_addr.to_string(), "cluster", "snapshot"]).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sigterm(&mut child)?;
    let snap = largest(&tmp.path().join("data/snapshots"), ".snap")?;
    let len = std::fs::metadata(&snap)?.len() as usize;
    flip(&snap, len / 2, 4)?;
    let name = snap.file_name().context("name")?.to_string_lossy().into_owned();
    refuses_to_start(tmp.path(), &["corrupt snapshot", &name])?;
    Ok(())
}

/// The disk fills under a running node (a small tmpfs, so only as root, as CI
/// runs): its next write fails, Raft stops, and from then on `/readyz` answers
/// 503 and reads are refused instead of served from a state that will not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fails_stops_serving_reads() -> anyhow::Result<()> {
    if !nix_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mnt = tmp.path().join("disk");
    std::fs::create_dir(&mnt)?;
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).status()?;
    ensure!(mounted.success(), "mount tmpfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let (mut child, client) = node_with_users(&mnt, 1).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let creds = Credentials { name: "user-0".into(), password: "password-of-user-0".into() };
    let token: wire::http::Session = http.post(format!("http://{client}/v1/sessions")).json(&creds).send().await?.error_for_status()?.json().await?;
    let rooms = |http: reqwest::Client| {
        let (client, token) = (client.clone(), token.token.clone());
        async move { http.get(format!("http://{client}/v1/rooms")).bearer_auth(token).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(rooms(http.clone()).await?, 200);

    // Fill the disk, then write until a write fails.
    let mut filler = std::fs::File::create(mnt.join("filler"))?;
    let chunk = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        i += 1;
        let creds = Credentials { name: format!("late-{i}"), password: format!("password-of-late-{i}") };
        let _ = http.post(format!("http://{client}/v1/users")).json(&creds).send().await;
        let ready = http.get(format!("http://{client}/readyz")).send().await.map(|r| r.status().as_u16());
        if ready.as_ref().is_ok_and(|s| *s == 503) && rooms(http.clone()).await? == 503 {
            break;
        }
        ensure!(Instant::now() < deadline, "after {i} writes on a full disk: readyz {ready:?}, rooms {:?}", rooms(http.clone()).await);
    }
    let log = std::fs::read_to_string(mnt.join("node.log"))?;
    assert!(log.contains("no longer serves reads"), "{log}");
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn nix_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
