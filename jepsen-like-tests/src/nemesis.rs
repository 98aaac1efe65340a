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
            "process" => &["kill", "kill-leader", "pause", "crash-all"],
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
    if out.iter().any(|k| k == "clock-skew") && faketime_lib().is_none() {
        anyhow::bail!("the clock-skew nemesis needs libfaketime (apt-get install faketime)");
    }
    Ok(out)
}

/// Kinds that take the whole cluster through a change and do not combine.
fn solo(kind: &str) -> bool {
    matches!(kind, "crash-all" | "membership")
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

/// Begins one fault; returns what it targets and how to undo it.
async fn begin(c: &Arc<Cluster>, kind: &str, rng: &mut StdRng) -> anyhow::Result<(String, Undo)> {
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
    Ok(match kind {
        "kill" | "kill-leader" => {
            let id = if kind == "kill-leader" { leader.unwrap_or(random) } else { random };
            c.with_node(id, |n| n.kill());
            (format!("node {id}"), Undo::Restart(id))
        }
        "pause" => {
            c.with_node(random, |n| n.signal("STOP"));
            (format!("node {random}"), Undo::Resume(random))
        }
        "crash-all" => {
            for n in c.nodes().iter_mut() {
                n.kill();
            }
            ("all nodes".into(), Undo::RestartAll)
        }
        "partition-leader" => {
            let l = leader.unwrap_or(random);
            for &o in ids.iter().filter(|o| **o != l) {
                c.cut(l, o)?;
                c.cut(o, l)?;
            }
            (format!("{{{l}}} | rest"), Undo::HealNetwork)
        }
        "partition-half" => {
            let (major, minor) = halves(&ids, rng);
            for a in &major {
                for b in &minor {
                    c.cut(*a, *b)?;
                    c.cut(*b, *a)?;
                }
            }
            (format!("{major:?} | {minor:?}"), Undo::HealNetwork)
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
                    c.cut(*a, *b)?;
                    c.cut(*b, *a)?;
                }
            }
            (format!("{left:?} - {bridge} - {right:?}"), Undo::HealNetwork)
        }
        "partition-oneway" => {
            // The leader's packets to the others are dropped; theirs reach it.
            let l = leader.unwrap_or(random);
            for &o in ids.iter().filter(|o| **o != l) {
                c.cut(l, o)?;
            }
            (format!("{l} -> rest dropped"), Undo::HealNetwork)
        }
        "loss" => {
            let p = rng.random_range(0.05..0.25);
            c.loss(p)?;
            (format!("{:.0}% of packets", p * 100.0), Undo::HealNetwork)
        }
        "slow" => {
            let delay = Duration::from_millis(rng.random_range(50..300));
            let targets: Vec<u64> = if rng.random_bool(0.5) { vec![random] } else { ids.clone() };
            for t in &targets {
                c.slow(*t, delay);
            }
            (format!("{} ms into {targets:?}", delay.as_millis()), Undo::HealNetwork)
        }
        "membership" => {
            let id = if rng.random_bool(0.5) { leader.unwrap_or(random) } else { random };
            let c2 = c.clone();
            blocking(move || c2.remove(id)).await?;
            (format!("remove node {id}, add it back"), Undo::AddBack(id))
        }
        "clock-skew" => {
            // The leader stamps `ts`, so skewing it is what tests monotonicity.
            let id = leader.unwrap_or(random);
            let secs: i64 = if rng.random_bool(0.5) { -rng.random_range(30..300) } else { rng.random_range(30..300) };
            let skew = format!("{secs:+}s");
            c.with_node(id, |n| {
                n.kill();
                n.skew = Some(skew.clone());
                n.start()
            })
            .transpose()?;
            // A restarted leader comes back a follower: hand it the leadership so
            // its clock is the one stamping messages (best effort).
            let c2 = c.clone();
            let led = blocking(move || c2.make_leader(id)).await;
            let how = if led.is_ok() { "leading" } else { "following" };
            (format!("node {id} clock {skew}, {how}"), Undo::Unskew(id))
        }
        other => anyhow::bail!("unknown nemesis {other}"),
    })
}

async fn end(c: &Arc<Cluster>, undo: Undo) -> anyhow::Result<()> {
    match undo {
        Undo::Restart(id) => c.with_node(id, |n| n.start()).transpose().map(drop),
        Undo::Resume(id) => {
            c.with_node(id, |n| n.signal("CONT"));
            Ok(())
        }
        Undo::RestartAll => {
            for n in c.nodes().iter_mut() {
                n.start()?;
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
        Undo::Unskew(id) => c
            .with_node(id, |n| {
                n.kill();
                n.skew = None;
                n.start()
            })
            .transpose()
            .map(drop),
    }
}

/// Runs the schedule until `deadline` (minus time to let the last fault end).
pub async fn run(c: Arc<Cluster>, kinds: Vec<String>, combine: f64, seed: u64, start: Instant, deadline: Instant) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
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
                Ok((target, undo)) => held.push((kind.clone(), target, undo)),
                Err(e) => eprintln!("nemesis {kind} did not start: {e:#}"),
            }
        }
        let hold = Duration::from_millis(rng.random_range(1500..4000));
        tokio::time::sleep(hold).await;
        let combined = step.len() > 1;
        while let Some((kind, target, undo)) = held.pop() {
            if let Err(e) = end(&c, undo).await {
                eprintln!("nemesis {kind}: undoing it failed: {e:#}");
            }
            let kind = if combined { format!("{kind} (combined)") } else { kind };
            faults.push(Fault { kind, target, start_ms: begin_ms, end_ms: ms(start) });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
    }
    faults
}
