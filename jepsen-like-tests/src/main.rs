//! `chorus-jepsen`: runs real `chorusd` processes (formed and changed with the
//! real `chorusctl`), drives WebSocket clients against them while a nemesis
//! injects faults, then checks every guarantee of SPEC §5 and writes
//! `results.json`, `history.json` and `report.html`.
//!
//! ```text
//! chorus-jepsen --time 30 --nodes 3 --clients 6 --nemesis all --seed 42
//! ```
//! Every run prints its seed; the same seed replays the same fault schedule and
//! client choices (timing on a real machine still varies). As root, nodes run in
//! network namespaces and network faults are iptables rules; otherwise they go
//! through TCP fault proxies (see `cluster.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, ValueEnum};
use jepsen_like_tests::checker::check_all;
use jepsen_like_tests::cluster::{Cluster, Layout, NodeOptions};
use jepsen_like_tests::history::{Expected, History, Msg, Outcome};
use jepsen_like_tests::report;
use jepsen_like_tests::workload::{create_room, login, ms, read_markers, read_room, read_topic, sender, subscriber};
use jepsen_like_tests::{nemesis, netns};
use rand::Rng;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Net {
    /// Namespaces when root with ip and iptables, else the proxy.
    Auto,
    Namespaces,
    Proxy,
}

#[derive(Parser, Clone)]
struct Args {
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 30)]
    time: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Sending clients (two more subscribe).
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Comma-separated fault kinds or groups: kill, kill-leader, pause, crash-all,
    /// power-loss, partition-leader, partition-half, partition-bridge, partition-oneway, loss,
    /// slow, membership, clock-skew; groups all, process, network; or none.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Probability that a step combines two faults.
    #[arg(long, default_value_t = 0.3)]
    combine: f64,
    /// How the nodes are networked.
    #[arg(long, value_enum, default_value_t = Net::Auto)]
    net: Net,
    #[arg(long)]
    seed: Option<u64>,
    /// Acked sends below which the run is invalid however clean it is (default:
    /// 10 per second of `--time`; a healthy run here acks 80–200 per second).
    #[arg(long)]
    min_acked: Option<usize>,
    /// Where results.json and report.html go.
    #[arg(long, default_value = "jepsen-like-tests/results")]
    out: PathBuf,
    /// Start every node with `--unsafe-skip-wal-sync`: Raft appends are not
    /// fsynced. With `--nemesis power-loss` the run must then fail with acked
    /// messages lost; that is how the power-loss nemesis is shown to bite.
    #[arg(long)]
    unsafe_skip_wal_sync: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kinds = nemesis::parse(&args.nemesis)?;
    if !(0.0..=1.0).contains(&args.combine) {
        bail!("--combine is a probability between 0 and 1");
    }
    if !kinds.is_empty() && args.time < nemesis::MIN_SECS {
        bail!("--time must be at least {} s for the nemesis to inject a fault (or --nemesis none)", nemesis::MIN_SECS);
    }
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be 1 to 9");
    }
    let namespaces = match args.net {
        Net::Auto => netns::available(),
        Net::Namespaces if !netns::available() => bail!("--net namespaces needs root, ip and iptables"),
        Net::Namespaces => true,
        Net::Proxy => false,
    };
    // Before the runtime: its threads inherit the client namespace.
    let layout = Cluster::layout(args.nodes, namespaces)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args, kinds, layout))
}

/// One run: start the cluster, drive the clients under the nemesis, heal, read
/// every node's final history, check it and write the report.
async fn run(args: Args, kinds: Vec<String>, layout: Layout) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let opts = NodeOptions {
        power_loss: kinds.iter().any(|k| k == "power-loss"),
        extra_args: if args.unsafe_skip_wal_sync { vec!["--unsafe-skip-wal-sync".into()] } else { Vec::new() },
    };
    let cluster = Cluster::start_with(args.nodes, layout, &args.out.join("logs"), opts).await?;
    println!(
        "chorus-jepsen: seed {seed} (replay with --seed {seed}), {} s, {} nodes ({}), {} clients, nemesis {}",
        args.time,
        args.nodes,
        cluster.layout_name(),
        args.clients,
        kinds.join(",")
    );
    shut_down_on_signal(cluster.clone());
    let addrs: Vec<(u64, String)> = cluster.addresses().into_iter().map(|(id, client, _)| (id, client)).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut tokens = Vec::new();
    for i in 0..args.clients + 2 {
        tokens.push(login(&http, &addrs[i % addrs.len()].1, &format!("c{i}")).await?);
    }
    // c0 makes the room, and owns it: its topic changes are in the mix.
    let owner = create_room(&http, &addrs[0].1, &tokens[0]).await;

    let start = Instant::now();
    let (history, faults, mut fault_failures) = workload(&args, &cluster, kinds, &addrs, &tokens, owner, seed, start).await?;
    let duration_ms = ms(start);
    // Heal, let every node catch up, then read every node's final history.
    if let Err(e) = cluster.heal_all().await {
        fault_failures.push(format!("healing the cluster after the faults: {e:#}"));
    }
    let (finals, mut final_errors) = final_histories(&http, &addrs, &tokens[0]).await;
    let mut h = history;
    h.finals = finals;
    // Each node's topic, read once its history has converged with the others'.
    for (id, addr) in &addrs {
        match read_topic(&http, addr, &tokens[0]).await {
            Ok(read) => {
                h.final_topics.insert(*id, read);
            }
            Err(e) => {
                final_errors.entry(*id).or_insert_with(|| format!("reading the topic: {e}"));
            }
        }
    }
    h.final_errors = final_errors;
    let users: Vec<(String, String)> = (0..args.clients).map(|i| (format!("c{i}"), tokens[i].clone())).collect();
    h.final_markers = final_markers(&http, &addrs, &users).await;
    h.fault_failures = fault_failures;
    let min_acked = args.min_acked.unwrap_or(10 * args.time as usize);
    // About a quarter of the ops are changes once a client has a message to change.
    h.expected = Expected { nodes: addrs.iter().map(|(id, _)| *id).collect(), min_acked, min_changes: min_acked / 10, min_topics: usize::from(owner), min_marks: 1 };

    let valid = write_report(&args, seed, duration_ms, &h, &faults)?;
    cluster.shutdown();
    if !valid {
        bail!("the run is INVALID (seed {seed})");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM: the processes, the namespaces and the data go with us.
fn shut_down_on_signal(cluster: Arc<Cluster>) {
    tokio::spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        cluster.shutdown();
        eprintln!("chorus-jepsen: interrupted; nodes stopped, namespaces removed");
        std::process::exit(130);
    });
}

/// `--clients` senders and two subscribers until `--time` is up, with the
/// nemesis running beside them: the clients' history, the faults, and the
/// faults that did not take hold.
#[allow(clippy::too_many_arguments)]
async fn workload(
    args: &Args,
    cluster: &Arc<Cluster>,
    kinds: Vec<String>,
    addrs: &[(u64, String)],
    tokens: &[String],
    owner: bool,
    seed: u64,
    start: Instant,
) -> anyhow::Result<(History, Vec<report::Fault>, Vec<String>)> {
    let history = Arc::new(Mutex::new(History::default()));
    let deadline = start + Duration::from_secs(args.time);
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().take(args.clients).enumerate() {
        tasks.push(tokio::spawn(sender(i, addrs.to_vec(), token.clone(), seed, start, deadline, owner && i == 0, history.clone())));
    }
    for j in 0..2 {
        tasks.push(tokio::spawn(subscriber(j, addrs.to_vec(), tokens[args.clients + j].clone(), seed, deadline, history.clone())));
    }
    let schedule = nemesis::run(cluster.clone(), kinds, args.combine, seed, start, deadline).await;
    for t in tasks {
        t.await?;
    }
    let h = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((h, schedule.faults, schedule.failures))
}

/// Every node's history of the room once all nodes hold as many messages (or
/// after 60 s, with what they hold then), and the nodes that could not be read.
async fn final_histories(
    http: &reqwest::Client,
    addrs: &[(u64, String)],
    token: &str,
) -> (BTreeMap<u64, Vec<Msg>>, BTreeMap<u64, String>) {
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let mut finals = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for (id, addr) in addrs {
            match read_room(http, addr, token, false).await {
                Ok(h) => {
                    finals.insert(*id, h);
                }
                Err(e) => {
                    errors.insert(*id, e.to_string());
                }
            }
        }
        let lens: Vec<usize> = finals.values().map(Vec::len).collect();
        if finals.len() == addrs.len() && lens.windows(2).all(|w| w[0] == w[1]) {
            return (finals, errors);
        }
        if Instant::now() > settle {
            eprintln!("nodes did not converge in 60 s: {lens:?}");
            return (finals, errors);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every sender's read marker as each node serves it, once the nodes agree
/// (or after 15 s, with what they serve then): user → node → marker.
async fn final_markers(http: &reqwest::Client, addrs: &[(u64, String)], users: &[(String, String)]) -> BTreeMap<String, BTreeMap<u64, u64>> {
    let settle = Instant::now() + Duration::from_secs(15);
    loop {
        let mut by_user: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
        for (id, addr) in addrs {
            // A node that cannot be read is missing from the map: the checker names it.
            if let Ok(markers) = read_markers(http, addr, users).await {
                for (user, seq) in markers {
                    by_user.entry(user).or_default().insert(*id, seq);
                }
            }
        }
        let agreed = by_user.values().all(|m| m.len() == addrs.len() && m.values().all(|s| Some(s) == m.values().next()));
        if (agreed && by_user.len() == users.len()) || Instant::now() > settle {
            return by_user;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks the history, writes results.json, history.json and report.html, and
/// prints the verdicts. Whether the run is valid.
fn write_report(args: &Args, seed: u64, duration_ms: u64, h: &History, faults: &[report::Fault]) -> anyhow::Result<bool> {
    let verdicts = check_all(h);
    let results = report::results(seed, duration_ms, h, &verdicts, faults);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    std::fs::write(args.out.join("history.json"), serde_json::to_string(h)?)?;
    std::fs::write(args.out.join("report.html"), report::html(&results, h))?;
    println!(
        "sends ok {} / fail {} / unknown {}; reads ok {} / unknown {}; {} faults; {} messages stored",
        results.sends.ok, results.sends.fail, results.sends.unknown, results.reads.ok, results.reads.unknown, faults.len(),
        h.finals.values().next().map_or(0, Vec::len)
    );
    let acked = |op: &str| h.sends.iter().filter(|o| o.outcome == Outcome::Ok && o.change.as_ref().is_some_and(|c| c.op() == op)).count();
    println!("of the acked sends: {} edits, {} deletes, {} reactions, {} topic changes", acked("edit"), acked("delete"), acked("react"), acked("topic"));
    for v in &verdicts {
        println!("  {:<52} {}", v.property, if v.ok { "ok".to_string() } else { format!("VIOLATED ({} anomalies, first: {})", v.anomalies.len(), v.anomalies[0]) });
    }
    println!("report: {}", args.out.join("report.html").display());
    Ok(results.valid)
}
