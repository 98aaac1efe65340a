//! Network namespaces for real network faults (run as root).
//!
//! One run owns `N + 1` namespaces named `chj<pid>x<k>-…`: a client namespace
//! `chj<pid>x<k>-c`, where the suite itself runs (its clients, chorusctl and the
//! proxies) and which holds the bridge `br0`, and one namespace per node joined
//! to the bridge by a veth pair. Node `i` has 198.18.0.i on its `eth0`; its proxy
//! listens on 198.18.0.(100+i) on the bridge; the client side is 198.18.0.254.
//! Everything lives inside namespaces this run creates (addresses from
//! 198.18.0.0/15, set aside for network tests); the host's own namespace is
//! never touched. Faults are iptables rules inside the node namespaces.
//!
//! Teardown deletes every namespace of the run, which destroys its veths, the
//! bridge and its rules with it. It runs on drop (also when unwinding from a
//! panic) and from the Ctrl-C handler; a run that was SIGKILLed leaves
//! namespaces that the next run sweeps ([`sweep_stale`]).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

const PREFIX: &str = "chj";

pub struct Topology {
    tag: String,
    nodes: u64,
    torn_down: std::sync::atomic::AtomicBool,
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether this process can build namespaces: root, with `ip` and `iptables`.
pub fn available() -> bool {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    let works = |c: &str, flag: &str| Command::new(c).arg(flag).output().map(|o| o.status.success()).unwrap_or(false);
    root && works("ip", "-V") && works("iptables", "--version")
}

/// Deletes the namespaces of earlier runs whose process is gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, id as u8)
}

pub fn proxy_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 100 + id as u8)
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

impl Topology {
    pub fn create(nodes: u64) -> anyhow::Result<Self> {
        if !(1..=90).contains(&nodes) {
            bail!("network namespaces support 1 to 90 nodes");
        }
        sweep_stale();
        // Unique per process and per topology, so runs (and tests) in parallel
        // never share a namespace.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Topology { tag: format!("{PREFIX}{}x{k}", std::process::id()), nodes, torn_down: Default::default() };
        // From here on, a failure tears down what was built.
        t.build().inspect_err(|_| t.teardown_quietly())?;
        Ok(t)
    }

    fn build(&self) -> anyhow::Result<()> {
        let c = self.client_ns();
        run("ip", &["netns", "add", &c])?;
        run("ip", &["-n", &c, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &c, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &c, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "br0"])?;
        for id in 1..=self.nodes {
            run("ip", &["-n", &c, "addr", "add", &format!("{}/32", proxy_ip(id)), "dev", "br0"])?;
        }
        run("ip", &["-n", &c, "link", "set", "br0", "up"])?;
        for id in 1..=self.nodes {
            let n = self.node_ns(id);
            let veth = format!("v{id}");
            run("ip", &["netns", "add", &n])?;
            run("ip", &["-n", &n, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &c, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &n])?;
            run("ip", &["-n", &c, "link", "set", &veth, "master", "br0"])?;
            run("ip", &["-n", &c, "link", "set", &veth, "up"])?;
            run("ip", &["-n", &n, "addr", "add", &format!("{}/24", node_ip(id)), "dev", "eth0"])?;
            run("ip", &["-n", &n, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    pub fn client_ns(&self) -> String {
        format!("{}-c", self.tag)
    }

    pub fn node_ns(&self, id: u64) -> String {
        format!("{}-n{id}", self.tag)
    }

    /// Moves the calling thread into the client namespace. Call it before any
    /// other thread starts (before the tokio runtime): threads inherit it.
    pub fn enter_client_ns(&self) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.client_ns()))?;
        // SAFETY: setns on a namespace file we just opened; it only changes the
        // calling thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns into {}: {}", self.client_ns(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// `iptables ARGS` inside node `id`'s namespace.
    pub fn iptables(&self, id: u64, args: &[&str]) -> anyhow::Result<()> {
        let ns = self.node_ns(id);
        let mut all = vec!["netns", "exec", ns.as_str(), "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Drops every packet node `from` sends towards node `to` (its address and
    /// its proxy's).
    pub fn drop_link(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let dest = format!("{},{}", node_ip(to), proxy_ip(to));
        self.iptables(from, &["-A", "OUTPUT", "-d", &dest, "-j", "DROP"])
    }

    /// Drops each packet in or out of every node's `eth0` with probability `p`.
    pub fn loss(&self, p: f64) -> anyhow::Result<()> {
        let p = format!("{p:.3}");
        for id in 1..=self.nodes {
            self.iptables(id, &["-A", "INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"])?;
            self.iptables(id, &["-A", "OUTPUT", "-o", "eth0", "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every rule in every node namespace.
    pub fn heal(&self) -> anyhow::Result<()> {
        for id in 1..=self.nodes {
            self.iptables(id, &["-F", "INPUT"])?;
            self.iptables(id, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }

    fn teardown_quietly(&self) {
        for id in 1..=self.nodes {
            let _ = run("ip", &["netns", "del", &self.node_ns(id)]);
        }
        let _ = run("ip", &["netns", "del", &self.client_ns()]);
    }

    /// Deletes every namespace of this run (and with them the veths, the bridge
    /// and the rules). Processes inside must be gone first.
    pub fn teardown(&self) {
        if !self.torn_down.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.teardown_quietly();
        }
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = (1..=self.nodes).map(|id| self.node_ns(id)).collect();
        v.push(self.client_ns());
        v
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Deletes the named namespaces; for the Ctrl-C path, which cannot reach the
/// [`Topology`] itself.
pub fn delete(names: &[String]) {
    for n in names {
        let _ = run("ip", &["netns", "del", n]);
    }
}
