//! The cluster under test: real `chorusd` processes formed and changed with the
//! real `chorusctl`, and the network between them.
//!
//! Two ways to lay the network out, chosen by [`Cluster::start`]:
//! - **namespaces** (root with `ip` and `iptables`): each node in its own network
//!   namespace on a bridge ([`crate::netns`]); partitions and packet loss are
//!   iptables rules inside the node namespaces.
//! - **proxy** (anyone): every node on loopback, dialling its peers from its own
//!   127.0.0.(10+id) source address; partitions stall links inside the proxies
//!   and "loss" cuts proxied connections at random.
//!
//! In both, every node advertises a [`crate::proxy`] address as its raft
//! address, so slow links (delay) work the same way. Clients and `chorusctl`
//! reach the nodes directly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::netns::{self, Topology};
use crate::proxy::{self, Faults};

/// The secret every node and chorusctl call carries (the namespace layout binds
/// non-loopback addresses, which chorusd refuses without one).
const SECRET: &str = "chorus-jepsen-secret";

/// Where the built binaries are: `$CHORUS_BIN`, else next to this executable.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("CHORUS_BIN") {
        Ok(d) => PathBuf::from(d),
        Err(_) => {
            // target/debug/<bin>, or target/debug/deps/<test>
            let mut d = std::env::current_exe()?.parent().context("no exe dir")?.to_path_buf();
            if d.ends_with("deps") {
                d.pop();
            }
            d
        }
    };
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} not found; build the workspace first", p.display());
    }
    Ok(p)
}

/// libfaketime, for the clock-skew nemesis.
pub fn faketime_lib() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub struct NodeProc {
    pub id: u64,
    /// host:port of the HTTP/WebSocket listener. In the proxy layout the node
    /// binds port 0 at its first start; this is then what it reported.
    pub client: String,
    /// The raft listen address: chorusctl talks here. Port 0 as for `client`;
    /// restarts bind the reported address again, where the proxy sends.
    pub raft: String,
    /// The advertised raft address: this node's proxy, which peers dial.
    pub advertised: String,
    dir: PathBuf,
    log: PathBuf,
    /// Where the node writes its bound addresses once it serves (`--ready-file`).
    ready: PathBuf,
    /// The network namespace it runs in, in the namespace layout.
    netns: Option<String>,
    /// The source IP of its outgoing peer connections, in the proxy layout.
    source_ip: Option<IpAddr>,
    /// A libfaketime offset such as `-90s`, while the clock-skew nemesis holds it.
    pub skew: Option<String>,
    /// Where the power-loss library journals this node's writes, when the node
    /// runs under it (see [`crate::powerloss`]).
    power_journal: Option<PathBuf>,
    /// More `chorusd` arguments, from [`NodeOptions`].
    extra_args: Vec<String>,
    child: Option<Child>,
}

/// How the nodes of a [`Cluster`] run.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Run every node under the power-loss library, so that
    /// [`NodeProc::power_off`] can drop what it had not synced.
    pub power_loss: bool,
    /// More arguments for every `chorusd`.
    pub extra_args: Vec<String>,
}

impl NodeProc {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the node unless it runs already.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        match std::fs::remove_file(&self.ready) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", self.ready.display())),
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("chorusd")?);
                c
            }
            None => Command::new(bin("chorusd")?),
        };
        cmd.args(["--id", &self.id.to_string(), "--client-addr", &self.client, "--raft-addr", &self.raft])
            .args(["--advertise-raft", &self.advertised])
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--ready-file")
            .arg(&self.ready)
            // Plain HTTP on addresses of the suite's own network namespaces,
            // which nothing outside the test can reach: hence --insecure.
            .args(["--no-bootstrap", "--insecure", "--cluster-secret", SECRET, "--rate-limit", "0", "--request-rate-limit", "0", "--heartbeat-ms", "50", "--election-ms", "300"])
            // Small thresholds so snapshot install and compaction run under faults.
            .args(["--snapshot-every", "300", "--snapshot-ratio", "0", "--snapshot-keep", "20"]);
        if let Some(ip) = self.source_ip {
            cmd.args(["--peer-source-ip", &ip.to_string()]);
        }
        cmd.args(&self.extra_args);
        let mut preload: Vec<PathBuf> = Vec::new();
        if let Some(journal) = &self.power_journal {
            std::fs::create_dir_all(&self.dir)?;
            let dir = self.dir.canonicalize().with_context(|| format!("cannot resolve {}", self.dir.display()))?;
            cmd.env("CHORUS_POWERLOSS_DIR", dir).env("CHORUS_POWERLOSS_JOURNAL", journal);
            preload.push(crate::powerloss::library()?);
        }
        if let Some(skew) = &self.skew {
            preload.push(faketime_lib().context("libfaketime is not installed")?);
            cmd.env("FAKETIME", skew).env("FAKETIME_DONT_FAKE_MONOTONIC", "1").env("FAKETIME_NO_CACHE", "1");
        }
        if !preload.is_empty() {
            let list: Vec<String> = preload.iter().map(|p| p.display().to_string()).collect();
            cmd.env("LD_PRELOAD", list.join(":"));
        }
        // If this process dies without cleaning up (SIGKILL), the node dies
        // with it instead of running on as an orphan. The signal follows the
        // thread that spawned the node: nodes are started from runtime worker
        // threads or the main thread, which live as long as the run.
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.stdout(Stdio::null()).stderr(log).spawn().context("cannot start chorusd")?);
        Ok(())
    }

    /// Once the started node has written its ready file, takes the addresses
    /// it bound and returns true; false while it has not. Fails if the process
    /// has exited or the file cannot be read.
    pub fn poll_ready(&mut self) -> anyhow::Result<bool> {
        let bytes = match std::fs::read(&self.ready) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(status) = self.child.as_mut().context("node not started")?.try_wait()? {
                    bail!("node {} exited ({status}) before it served; see {}", self.id, self.log.display());
                }
                return Ok(false);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.ready.display())),
        };
        let ready: wire::Ready = serde_json::from_slice(&bytes).with_context(|| format!("bad ready file {}", self.ready.display()))?;
        self.client = ready.client_addr.to_string();
        self.raft = ready.raft_addr.to_string();
        Ok(true)
    }

    /// SIGKILL: no shutdown path runs. True if a process was running and is now
    /// gone (reaped), false if there was none.
    pub fn kill(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                c.wait().is_ok()
            }
            None => false,
        }
    }

    /// A power cut: SIGKILL, then every write the node had not synced is
    /// dropped from its files. True if a process was running. Fails if the
    /// node does not run under the power-loss library.
    pub fn power_off(&mut self) -> anyhow::Result<bool> {
        let journal = self.power_journal.clone().context("node does not run under the power-loss library (NodeOptions::power_loss)")?;
        // A stopped (paused) process dies on SIGKILL all the same.
        let was_running = self.kill();
        let dropped = crate::powerloss::drop_unsynced(&journal).with_context(|| format!("node {}: cannot drop unsynced writes", self.id))?;
        if dropped.files > 0 {
            eprintln!("power-loss: node {} lost {} bytes appended and {} bytes overwritten in {} files since their last sync", self.id, dropped.truncated, dropped.restored, dropped.files);
        }
        Ok(was_running)
    }

    /// Whether the process is stopped by a signal (state `T` in /proc), as a
    /// pause must leave it.
    pub fn stopped(&self) -> bool {
        let Some(c) = &self.child else { return false };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", c.id())) else { return false };
        // `pid (comm) state ...`; comm may hold spaces or parentheses.
        stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).is_some_and(|s| s == 'T' || s == 't')
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

pub enum Layout {
    Namespaces(Topology),
    Proxy,
}

pub struct Cluster {
    nodes: Mutex<Vec<NodeProc>>,
    pub layout: Layout,
    faults: Faults,
    /// The nodes' data directories.
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Lays out the network for `n` nodes. In the namespace layout this moves the
    /// calling thread into the client namespace: call it before the runtime starts.
    pub fn layout(n: u64, want_namespaces: bool) -> anyhow::Result<Layout> {
        if want_namespaces {
            let t = Topology::create(n)?;
            t.enter_client_ns()?;
            Ok(Layout::Namespaces(t))
        } else {
            Ok(Layout::Proxy)
        }
    }

    /// Starts `n` nodes, their proxies, and forms them into one cluster. Node
    /// logs go to `logs/node-<id>.log`; data to a temporary directory.
    pub async fn start(n: u64, layout: Layout, logs: &std::path::Path) -> anyhow::Result<Arc<Cluster>> {
        Self::start_with(n, layout, logs, NodeOptions::default()).await
    }

    /// As [`Cluster::start`], with the nodes run as `opts` says.
    pub async fn start_with(n: u64, layout: Layout, logs: &std::path::Path, opts: NodeOptions) -> anyhow::Result<Arc<Cluster>> {
        let tmp = tempfile::tempdir()?;
        std::fs::create_dir_all(logs)?;
        let faults = Faults::default();
        // Every proxy is bound first (its address is what the node advertises);
        // then each node starts, and in the proxy layout lets the OS pick its
        // ports and reports them, so concurrent runs never share a port.
        let mut planned = Vec::new();
        for id in 1..=n {
            let dir = tmp.path().join(format!("node-{id}"));
            let (client, raft, proxy_listen, netns, source_ip) = match &layout {
                Layout::Namespaces(t) => (
                    format!("{}:8080", netns::node_ip(id)),
                    format!("{}:9080", netns::node_ip(id)),
                    SocketAddr::new(netns::proxy_ip(id).into(), 9080),
                    Some(t.node_ns(id)),
                    None,
                ),
                Layout::Proxy => (
                    "127.0.0.1:0".to_string(),
                    "127.0.0.1:0".to_string(),
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
                    None,
                    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))),
                ),
            };
            let listener = tokio::net::TcpListener::bind(proxy_listen).await.with_context(|| format!("proxy for node {id} on {proxy_listen}"))?;
            let advertised = listener.local_addr()?.to_string();
            let identify: Arc<dyn Fn(IpAddr) -> Option<u64> + Send + Sync> = Arc::new(move |ip: IpAddr| match ip {
                IpAddr::V4(v4) if v4.octets()[0] == 127 && (11..=10 + n).contains(&u64::from(v4.octets()[3])) => Some(u64::from(v4.octets()[3]) - 10),
                _ => None,
            });
            let log = logs.join(format!("node-{id}.log"));
            let _ = std::fs::remove_file(&log);
            let ready = tmp.path().join(format!("node-{id}.ready"));
            let power_journal = opts.power_loss.then(|| tmp.path().join(format!("node-{id}.powerloss")));
            let extra_args = opts.extra_args.clone();
            let node = NodeProc { id, client, raft, advertised, dir, log, ready, netns, source_ip, skew: None, power_journal, extra_args, child: None };
            planned.push((node, listener, identify));
        }
        let mut nodes = Vec::new();
        for (mut p, listener, identify) in planned {
            p.start()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !p.poll_ready()? {
                if Instant::now() > deadline {
                    bail!("node {} did not start; see {}", p.id, p.log.display());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            proxy::spawn(listener, p.id, p.raft.parse()?, identify, faults.clone());
            nodes.push(p);
        }
        let c = Arc::new(Cluster { nodes: Mutex::new(nodes), layout, faults, _tmp: tmp });
        let addrs = c.addresses();
        let mut init = vec!["--node", addrs[0].2.as_str(), "--timeout", "10", "cluster", "init"];
        let advertised: Vec<String> = c.nodes().iter().map(|p| p.advertised.clone()).collect();
        init.extend(advertised.iter().map(String::as_str));
        c.ctl(&init)?;
        Ok(c)
    }

    pub fn nodes(&self) -> MutexGuard<'_, Vec<NodeProc>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn with_node<T>(&self, id: u64, f: impl FnOnce(&mut NodeProc) -> T) -> Option<T> {
        self.nodes().iter_mut().find(|n| n.id == id).map(f)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes().iter().map(|n| n.id).collect()
    }

    /// Nodes with a live process (paused ones included).
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes().iter().filter(|n| n.running()).map(|n| n.id).collect()
    }

    /// Waits until the (re)started node `id` has written its ready file: it
    /// opened its store and serves. Fails if it exits first or takes `secs`.
    pub async fn wait_ready(&self, id: u64, secs: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.with_node(id, |n| n.poll_ready()).context("no such node")?? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} did not serve within {secs} s of starting");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(id, client host:port, raft listen address)` of every node.
    pub fn addresses(&self) -> Vec<(u64, String, String)> {
        self.nodes().iter().map(|n| (n.id, n.client.clone(), n.raft.clone())).collect()
    }

    pub fn namespaces(&self) -> Vec<String> {
        match &self.layout {
            Layout::Namespaces(t) => t.names(),
            Layout::Proxy => Vec::new(),
        }
    }

    pub fn layout_name(&self) -> &'static str {
        match self.layout {
            Layout::Namespaces(_) => "network namespaces + iptables",
            Layout::Proxy => "loopback + TCP fault proxy",
        }
    }

    /// Runs chorusctl with the cluster's secret; its `--json` output, if any.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(bin("chorusctl")?).args(["--secret", SECRET]).args(args).output()?;
        if !out.status.success() {
            bail!("chorusctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    /// `cluster status --json` as node `id` itself sees it.
    pub fn status_of(&self, id: u64) -> Option<Value> {
        let raft = self.with_node(id, |n| n.raft.clone())?;
        self.ctl(&["--node", &raft, "--json", "--timeout", "3", "cluster", "status"]).ok()
    }

    /// `cluster status --json` as the first running node that answers sees it.
    pub fn status(&self) -> Option<Value> {
        let raft: Vec<String> = self.nodes().iter().filter(|n| n.running()).map(|n| n.raft.clone()).collect();
        raft.iter().find_map(|r| {
            let s = self.ctl(&["--node", r, "--json", "--timeout", "3", "cluster", "status"]).ok()?;
            (s["leader"].as_u64().unwrap_or(0) > 0).then_some(s)
        })
    }

    pub fn leader(&self) -> Option<u64> {
        self.status()?["leader"].as_u64()
    }

    /// Voter ids of the current membership.
    pub fn voters(&self) -> Option<Vec<u64>> {
        let s = self.status()?;
        Some(s["members"].as_array()?.iter().filter(|m| m["voter"].as_bool() == Some(true)).filter_map(|m| m["id"].as_u64()).collect())
    }

    /// chorusctl through a running node other than `not`.
    fn ctl_via_other(&self, not: u64, args: &[&str]) -> anyhow::Result<Value> {
        let via: Vec<String> = self.nodes().iter().filter(|n| n.running() && n.id != not).map(|n| n.raft.clone()).collect();
        let mut last = anyhow::anyhow!("no running node to ask");
        for r in via {
            let mut all = vec!["--node", r.as_str(), "--json", "--timeout", "20"];
            all.extend_from_slice(args);
            match self.ctl(&all) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn remove(&self, id: u64) -> anyhow::Result<()> {
        self.ctl_via_other(id, &["cluster", "remove", &id.to_string()]).map(drop)
    }

    /// Adds node `id` back (learner → catch-up → voter).
    pub fn add(&self, id: u64) -> anyhow::Result<()> {
        let adv = self.with_node(id, |n| n.advertised.clone()).context("no such node")?;
        self.ctl_via_other(id, &["cluster", "add", &adv]).map(drop)
    }

    /// Moves leadership to node `id` once it answers; gives up after ~10 s.
    pub fn make_leader(&self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let result = self.ctl_via_other(id, &["cluster", "transfer-leader", &id.to_string()]);
            if result.is_ok() && self.status_of(id).and_then(|s| s["leader"].as_u64()) == Some(id) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return result.map(drop).and_then(|_| Err(anyhow::anyhow!("node {id} did not take the lead")));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Drops traffic `from` → `to`.
    pub fn cut(&self, from: u64, to: u64) -> anyhow::Result<()> {
        match &self.layout {
            Layout::Namespaces(t) => t.drop_link(from, to),
            Layout::Proxy => {
                self.faults.stall(from, to);
                Ok(())
            }
        }
    }

    /// Random packet loss (namespaces) or connection cuts (proxy).
    pub fn loss(&self, p: f64) -> anyhow::Result<()> {
        match &self.layout {
            Layout::Namespaces(t) => t.loss(p),
            Layout::Proxy => {
                self.faults.cut(p / 20.0);
                Ok(())
            }
        }
    }

    pub fn slow(&self, node: u64, delay: Duration) {
        self.faults.slow(node, delay);
    }

    /// Removes every network fault.
    pub fn heal_network(&self) -> anyhow::Result<()> {
        self.faults.heal();
        match &self.layout {
            Layout::Namespaces(t) => t.heal(),
            Layout::Proxy => Ok(()),
        }
    }

    /// Back to a whole cluster: no network faults, every node running on a true
    /// clock, every node a voter again.
    pub async fn heal_all(&self) -> anyhow::Result<()> {
        self.heal_network()?;
        for n in self.nodes().iter_mut() {
            n.signal("CONT");
            if n.skew.take().is_some() {
                n.kill();
            }
            n.start()?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let voters = self.voters().unwrap_or_default();
            let missing: Vec<u64> = self.ids().into_iter().filter(|id| !voters.contains(id)).collect();
            if !voters.is_empty() && missing.is_empty() {
                return Ok(());
            }
            for id in missing {
                if let Err(e) = self.add(id) {
                    eprintln!("heal: adding node {id} back: {e}");
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster did not heal in 60 s (voters {voters:?})");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every process, removes the namespaces and the nodes' data.
    pub fn shutdown(&self) {
        for n in self.nodes().iter_mut() {
            n.signal("CONT");
            n.kill();
        }
        if let Layout::Namespaces(t) = &self.layout {
            t.teardown();
        }
        // Also on the Ctrl-C path, which exits without running destructors.
        let _ = std::fs::remove_dir_all(self._tmp.path());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
