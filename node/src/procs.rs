//! Real `chorusd` processes, formed with the real `chorusctl`: the harness of the
//! process-level tests and the benchmarks. Children are killed when dropped.
//!
//! Every node binds port 0 and reports what it bound in its ready file, so any
//! number of clusters can start at once without two nodes meeting on a port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ready::{self, Ready};

/// Where the binaries are: next to the running executable's target directory.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CHORUS_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    // target/debug/deps/<test> or target/debug/<bin>
    let mut dir = exe.parent().context("no parent dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!("{} is not built; run `cargo build --bins` first", path.display());
    }
    Ok(path)
}

/// How long a started `chorusd` may take to write its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the `chorusd` just started as `child` has written its ready file
/// at `path`. Fails at once, with the tail of `log`, if the process exits first.
pub fn wait_ready(path: &Path, child: &mut Child, log: &Path, timeout: Duration) -> anyhow::Result<Ready> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = ready::read(path)? {
            return Ok(r);
        }
        if let Some(status) = child.try_wait()? {
            bail!("chorusd exited ({status}) before it served: {}", log_tail(log));
        }
        if Instant::now() > deadline {
            bail!("chorusd wrote no ready file in {timeout:?}: {}", log_tail(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a node's log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// One `chorusd` process. Its addresses start as `127.0.0.1:0`, and are the
/// ones it bound from its first start on, so a restart comes back where its
/// peers know it.
pub struct Proc {
    pub id: u64,
    pub client_addr: String,
    pub raft_addr: String,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    pub child: Option<Child>,
}

impl Proc {
    /// A node not started yet, whose ports the OS will pick.
    pub fn new(id: u64, dir: PathBuf, extra: &[&str]) -> Self {
        Proc {
            id,
            client_addr: "127.0.0.1:0".into(),
            raft_addr: "127.0.0.1:0".into(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    pub fn ready_path(&self) -> PathBuf {
        self.dir.with_extension("ready")
    }

    /// Starts the node and returns once it serves, with its addresses filled in.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let (log_path, ready_path) = (self.log_path(), self.ready_path());
        ready::remove(&ready_path)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut child = Command::new(bin("chorusd")?)
            .args(["--id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--client-addr", &self.client_addr, "--raft-addr", &self.raft_addr, "--no-bootstrap"])
            .arg("--ready-file")
            .arg(&ready_path)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start chorusd")?;
        let started = match wait_ready(&ready_path, &mut child, &log_path, READY_TIMEOUT) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context(format!("node {}", self.id)));
            }
        };
        self.client_addr = started.client_addr.to_string();
        self.raft_addr = started.raft_addr.to_string();
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct ProcCluster {
    pub procs: Vec<Proc>,
    pub root: PathBuf,
}

/// Runs `chorusctl` and returns its output.
pub fn chorusctl(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin("chorusctl")?).args(args).output()?)
}

/// Runs `chorusctl --node RAFT --timeout 20 ARGS…`; its stdout, or an error
/// with its stderr if it failed.
pub fn ctl(raft: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["--node", raft, "--timeout", "20"];
    all.extend_from_slice(args);
    let out = chorusctl(&all)?;
    anyhow::ensure!(out.status.success(), "chorusctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8(out.stdout)?)
}

/// A `chorusd` that forms a single-node cluster in `dir/data` (or reopens it),
/// on port 0, with its ready file at `dir/node.ready` and its log at
/// `dir/node.log`.
pub fn single_node(dir: &Path, stdout: Stdio) -> anyhow::Result<Child> {
    Ok(Command::new(bin("chorusd")?)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--client-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--ready-file"])
        .arg(dir.join("node.ready"))
        .stdout(stdout)
        .stderr(std::fs::File::create(dir.join("node.log"))?)
        .spawn()?)
}

impl ProcCluster {
    /// Starts `n` nodes under `root` and forms them with `chorusctl cluster init`.
    pub fn start(root: &Path, n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let mut procs = Vec::new();
        for id in 1..=n {
            let mut p = Proc::new(id, root.join(format!("node-{id}")), extra);
            p.start()?;
            procs.push(p);
        }
        let c = ProcCluster { procs, root: root.to_path_buf() };
        let mut args = vec!["cluster", "init"];
        args.extend(c.procs.iter().map(|p| p.raft_addr.as_str()));
        let out = chorusctl(&args)?;
        if !out.status.success() {
            bail!("cluster init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(c)
    }

    pub fn wait_answering(&self, raft_addr: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if chorusctl(&["--node", raft_addr, "--timeout", "1", "cluster", "status"])?.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node at {raft_addr} did not answer")
    }

    /// `chorusctl --json cluster status` through `raft_addr`.
    pub fn status(&self, raft_addr: &str) -> anyhow::Result<serde_json::Value> {
        let out = chorusctl(&["--node", raft_addr, "--json", "--timeout", "2", "cluster", "status"])?;
        if !out.status.success() {
            bail!("status via {raft_addr}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The leader id as some running node reports it.
    pub fn leader(&self) -> Option<u64> {
        self.procs.iter().filter(|p| p.child.is_some()).find_map(|p| {
            let s = self.status(&p.raft_addr).ok()?;
            s["leader"].as_u64().filter(|l| *l != 0)
        })
    }

    pub fn proc(&mut self, id: u64) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.id == id).expect("no such node")
    }
}
