//! Faults, alone and combined, on a seeded random schedule.
//!
//! Each step picks one fault kind (or, with probability `combine`, two that can
//! hold together), begins them, holds them for 1.5–4 s, ends them in reverse
//! order, and lets the cluster run whole for 1.5–3.5 s. Every begin/end is
//! recorded as a [`Fault`] window for the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cluster::{faketime_lib, Cluster};
use crate::report::Fault;

/// Every fault kind, in the order `--nemesis all` lists them.
pub const KINDS: &[&str] = &[
    "kill",
    "kill-leader",
    "pause",
    "crash-all",
    "power-loss",
    "partition-leader",
    "partition-half",
    "partition-bridge",
    "partition-oneway",
    "loss",
    "slow",
    "membership",
    "clock-skew",
];

/// Expands `all`, `process`, `network` and checks every name.
pub fn parse(spec: &str) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for k in spec.split(',').map(str::trim).filter(|k| !k.is_empty() && *k != "none") {
        let group: &[&str] = match k {
            "all" => KINDS,
            "process" => &["kill", "kill-leader", "pause", "crash-all", "power-loss"],
            "network" => &["partition-leader", "partition-half", "partition-bridge", "partition-oneway", "loss", "slow"],
            k if KINDS.contains(&k) => &[k][..],
            other => anyhow::bail!("unknown nemesis {other:?}; known: {}, all, process, network, none", KINDS.join(", ")),
        };
        for g in group {
            if !out.iter().any(|o| o == g) {
                out.push(g.to_string());
            }
        }
    }
    if out.iter().any(|k| k == "power-loss") {
        crate::powerloss::library()?;
    }
    if out.iter().any(|k| k == "clock-skew") && faketime_lib().is_none() {
        anyhow::bail!("the clock-skew nemesis needs libfaketime (apt-get install faketime)");
    }
    Ok(out)
}

/// Kinds that take the whole cluster through a change and do not combine.
fn solo(kind: &str) -> bool {
    matches!(kind, "crash-all" | "power-loss" | "membership")
}

/// What ending a fault must undo.
enum Undo {
    Restart(u64),
    Resume(u64),
    RestartAll,
    HealNetwork,
    AddBack(u64),
    Unskew(u64),
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// `n` node ids split at random into a majority and a minority.
fn halves(ids: &[u64], rng: &mut StdRng) -> (Vec<u64>, Vec<u64>) {
    let mut ids = ids.to_vec();
    ids.shuffle(rng);
    let minority = ids.split_off(ids.len() / 2 + 1);
    (ids, minority)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A fault that began: what it targets, how to undo it, and why it did not
/// take effect if it did not (it is still undone).
struct Begun {
    target: String,
    undo: Undo,
    problem: Option<String>,
}

impl Begun {
    fn new(target: String, undo: Undo) -> Self {
        Begun { target, undo, problem: None }
    }
}

/// How long a restarted node may take to serve again.
const RESTART_SECS: u64 = 30;

/// Where one step's faults may aim: the nodes, the running ones and the
/// leader (asked for only by kinds that aim at it).
struct Aim<'a> {
    c: &'a Arc<Cluster>,
    ids: Vec<u64>,
    running: Vec<u64>,
    leader: Option<u64>,
    /// A node drawn at random, for kinds that aim anywhere.
    random: u64,
}

impl Aim<'_> {
    /// A running node that no pause of this step holds.
    fn awake(&self, id: u64) -> bool {
        self.running.contains(&id) && self.c.with_node(id, |n| !n.stopped()).unwrap_or(false)
    }

    /// A random awake node: a process fault aims at a live process, and one
    /// combined with a kill must not pick the node the kill already took.
    fn live(&self, rng: &mut StdRng, kind: &str) -> anyhow::Result<u64> {
        let pool: Vec<u64> = self.running.iter().copied().filter(|id| self.awake(*id)).collect();
        anyhow::ensure!(!pool.is_empty(), "no node is running to {kind}");
        Ok(pool[rng.random_range(0..pool.len())])
    }
}

/// Begins one fault and checks that it took hold: a killed process is gone, a
/// paused one is stopped, a removed member is out of the voters, a skewed node
/// serves again. An error means nothing was done and there is nothing to undo.
async fn begin(c: &Arc<Cluster>, kind: &str, rng: &mut StdRng) -> anyhow::Result<Begun> {
    let ids = c.ids();
    let random = ids[rng.random_range(0..ids.len())];
    // Asking for the leader is a status round-trip: only for kinds that aim at it.
    let aims_at_leader = matches!(kind, "kill-leader" | "partition-leader" | "partition-oneway" | "membership" | "clock-skew");
    let leader = if aims_at_leader {
        let c = c.clone();
        blocking(move || c.leader()).await
    } else {
        None
    };
    let aim = Aim { c, ids, running: c.running_ids(), leader, random };
    match kind {
        "kill" | "kill-leader" => kill(&aim, kind, rng),
        "pause" => pause(&aim, rng).await,
        "crash-all" => {
            let killed = c.nodes().iter_mut().map(|n| n.kill()).filter(|k| *k).count();
            anyhow::ensure!(killed > 0, "no node had a process to kill");
            Ok(Begun::new(format!("all nodes ({killed} running)"), Undo::RestartAll))
        }
        "power-loss" => {
            // The whole cluster loses power at once: each node's unsynced
            // writes go with it, so only what a majority synced survives.
            let mut off = 0;
            for n in c.nodes().iter_mut() {
                if n.power_off()? {
                    off += 1;
                }
            }
            anyhow::ensure!(off > 0, "no node had a process to power off");
            Ok(Begun::new(format!("all nodes ({off} running), unsynced writes dropped"), Undo::RestartAll))
        }
        "partition-leader" | "partition-half" | "partition-bridge" | "partition-oneway" => partition(&aim, kind, rng),
        "loss" => {
            let p = rng.random_range(0.05..0.25);
            c.loss(p)?;
            Ok(Begun::new(format!("{:.0}% of packets", p * 100.0), Undo::HealNetwork))
        }
        "slow" => {
            let delay = Duration::from_millis(rng.random_range(50..300));
            let targets: Vec<u64> = if rng.random_bool(0.5) { vec![random] } else { aim.ids.clone() };
            for t in &targets {
                c.slow(*t, delay);
            }
            Ok(Begun::new(format!("{} ms into {targets:?}", delay.as_millis()), Undo::HealNetwork))
        }
        "membership" => membership(&aim, rng).await,
        "clock-skew" => clock_skew(&aim, rng).await,
        other => anyhow::bail!("unknown nemesis {other}"),
    }
}

/// SIGKILL: the leader for `kill-leader` (any node if none is known), else a
/// random node. Never a paused node: killing it would end the pause it is under.
fn kill(aim: &Aim<'_>, kind: &str, rng: &mut StdRng) -> anyhow::Result<Begun> {
    let (id, target) = match aim.leader.filter(|l| kind == "kill-leader" && aim.awake(*l)) {
        Some(l) => (l, format!("node {l}")),
        // No leader known (an election under another fault): a node.
        None if kind == "kill-leader" => {
            let id = aim.live(rng, kind)?;
            (id, format!("node {id} (no leader known)"))
        }
        None => {
            let id = aim.live(rng, kind)?;
            (id, format!("node {id}"))
        }
    };
    anyhow::ensure!(aim.c.with_node(id, |n| n.kill()) == Some(true), "node {id} had no process to kill");
    Ok(Begun::new(target, Undo::Restart(id)))
}

/// SIGSTOP a random node, and check that it stopped.
async fn pause(aim: &Aim<'_>, rng: &mut StdRng) -> anyhow::Result<Begun> {
    let c = aim.c;
    let id = aim.live(rng, "pause")?;
    c.with_node(id, |n| n.signal("STOP"));
    let mut b = Begun::new(format!("node {id}"), Undo::Resume(id));
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.with_node(id, |n| n.stopped()) != Some(true) {
        if Instant::now() > deadline {
            b.problem = Some(format!("node {id} was sent SIGSTOP but did not stop"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(b)
}

/// The four partitions: the leader alone, a minority, two sides joined by one
/// bridge node, and the leader's packets dropped one way.
fn partition(aim: &Aim<'_>, kind: &str, rng: &mut StdRng) -> anyhow::Result<Begun> {
    let (c, ids) = (aim.c, &aim.ids);
    let both = |a: u64, b: u64| -> anyhow::Result<()> {
        c.cut(a, b)?;
        c.cut(b, a)
    };
    let target = match kind {
        "partition-leader" => {
            let l = aim.leader.unwrap_or(aim.random);
            for &o in ids.iter().filter(|o| **o != l) {
                both(l, o)?;
            }
            format!("{{{l}}} | rest")
        }
        "partition-half" => {
            let (major, minor) = halves(ids, rng);
            for a in &major {
                for b in &minor {
                    both(*a, *b)?;
                }
            }
            format!("{major:?} | {minor:?}")
        }
        "partition-bridge" => {
            // Two sides that cannot talk, and one node that talks to both.
            let mut order = ids.clone();
            order.shuffle(rng);
            let bridge = order[0];
            let rest = &order[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            for a in left {
                for b in right {
                    both(*a, *b)?;
                }
            }
            format!("{left:?} - {bridge} - {right:?}")
        }
        _ => {
            // partition-oneway: the leader's packets to the others are
            // dropped; theirs reach it.
            let l = aim.leader.unwrap_or(aim.random);
            for &o in ids.iter().filter(|o| **o != l) {
                c.cut(l, o)?;
            }
            format!("{l} -> rest dropped")
        }
    };
    Ok(Begun::new(target, Undo::HealNetwork))
}

/// Removes a member (the leader half of the time), and checks that the voters
/// every member reports agree it is out; ending the fault adds it back.
async fn membership(aim: &Aim<'_>, rng: &mut StdRng) -> anyhow::Result<Begun> {
    let c = aim.c;
    let id = if rng.random_bool(0.5) { aim.leader.unwrap_or(aim.random) } else { aim.random };
    let c2 = c.clone();
    blocking(move || c2.remove(id)).await?;
    let mut b = Begun::new(format!("remove node {id}, add it back"), Undo::AddBack(id));
    // `cluster remove` returns once the change is committed; the voters
    // any member reports must agree (the removed leader steps down first).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c2 = c.clone();
        match blocking(move || c2.voters()).await {
            Some(v) if !v.contains(&id) => break,
            seen if Instant::now() > deadline => {
                b.problem = Some(format!("node {id} was removed but the voters are still {seen:?}"));
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Ok(b)
}

/// Restarts the leader (or a node) with its clock 30–300 s off, and hands it
/// the leadership back: the leader stamps `ts`, so skewing it is what tests
/// monotonicity. Never a node another fault of this step holds.
async fn clock_skew(aim: &Aim<'_>, rng: &mut StdRng) -> anyhow::Result<Begun> {
    let c = aim.c;
    let id = match aim.leader.filter(|l| aim.awake(*l)) {
        Some(l) => l,
        None => aim.live(rng, "clock-skew")?,
    };
    let secs: i64 = if rng.random_bool(0.5) { -rng.random_range(30..300) } else { rng.random_range(30..300) };
    let skew = format!("{secs:+}s");
    c.with_node(id, |n| {
        n.kill();
        n.skew = Some(skew.clone());
        n.start()
    })
    .transpose()?;
    if let Err(e) = c.wait_ready(id, RESTART_SECS).await {
        let mut b = Begun::new(format!("node {id} clock {skew}"), Undo::Unskew(id));
        b.problem = Some(format!("{e:#}"));
        return Ok(b);
    }
    // A restarted leader comes back a follower: hand it the leadership so
    // its clock is the one stamping messages (best effort).
    let c2 = c.clone();
    let led = blocking(move || c2.make_leader(id)).await;
    let how = if led.is_ok() { "leading" } else { "following" };
    Ok(Begun::new(format!("node {id} clock {skew}, {how}"), Undo::Unskew(id)))
}

/// Undoes a fault; a restarted node must serve again.
async fn end(c: &Arc<Cluster>, undo: Undo) -> anyhow::Result<()> {
    match undo {
        Undo::Restart(id) => {
            c.with_node(id, |n| n.start()).transpose()?;
            c.wait_ready(id, RESTART_SECS).await
        }
        Undo::Resume(id) => {
            c.with_node(id, |n| n.signal("CONT"));
            Ok(())
        }
        Undo::RestartAll => {
            for n in c.nodes().iter_mut() {
                n.start()?;
            }
            for id in c.ids() {
                c.wait_ready(id, RESTART_SECS).await?;
            }
            Ok(())
        }
        Undo::HealNetwork => c.heal_network(),
        Undo::AddBack(id) => {
            // Other faults may have left the cluster briefly leaderless: retry.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let c2 = c.clone();
                match blocking(move || c2.add(id)).await {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Undo::Unskew(id) => {
            c.with_node(id, |n| {
                n.kill();
                n.skew = None;
                n.start()
            })
            .transpose()?;
            c.wait_ready(id, RESTART_SECS).await
        }
    }
}

/// What the schedule did: every fault window, and every fault that did not
/// take effect or could not be undone (each of those invalidates the run).
#[derive(Default)]
pub struct Schedule {
    pub faults: Vec<Fault>,
    pub failures: Vec<String>,
}

/// Runs the schedule until `deadline` (minus time to let the last fault end).
pub async fn run(c: Arc<Cluster>, kinds: Vec<String>, combine: f64, seed: u64, start: Instant, deadline: Instant) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let mut out = Schedule::default();
    if kinds.is_empty() {
        return out;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while Instant::now() + Duration::from_secs(6) < deadline {
        let first = kinds[rng.random_range(0..kinds.len())].clone();
        let mut step = vec![first.clone()];
        if !solo(&first) && rng.random_bool(combine) {
            let others: Vec<&String> = kinds.iter().filter(|k| **k != first && !solo(k)).collect();
            if !others.is_empty() {
                step.push(others[rng.random_range(0..others.len())].clone());
            }
        }
        let begin_ms = ms(start);
        let mut held = Vec::new();
        for kind in &step {
            match begin(&c, kind, &mut rng).await {
                Ok(b) => {
                    if let Some(p) = &b.problem {
                        out.failures.push(format!("{kind} at {begin_ms} ms did not take effect: {p}"));
                    }
                    held.push((kind.clone(), b.target, b.undo));
                }
                Err(e) => out.failures.push(format!("{kind} at {begin_ms} ms did not start: {e:#}")),
            }
        }
        let hold = Duration::from_millis(rng.random_range(1500..4000));
        tokio::time::sleep(hold).await;
        let combined = step.len() > 1;
        while let Some((kind, target, undo)) = held.pop() {
            if let Err(e) = end(&c, undo).await {
                out.failures.push(format!("{kind} on {target}: undoing it failed: {e:#}"));
            }
            let kind = if combined { format!("{kind} (combined)") } else { kind };
            out.faults.push(Fault { kind, target, start_ms: begin_ms, end_ms: ms(start) });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
    }
    if out.faults.is_empty() {
        out.failures.push(format!("nemesis {} injected no fault", kinds.join(",")));
    }
    out
}

/// The shortest `--time` in which the schedule fits one fault (a 2 s lead-in,
/// then a step must end 6 s before the deadline).
pub const MIN_SECS: u64 = 10;
