//! `chorus-jepsen`: runs real `chorusd` processes (formed with the real
//! `chorusctl`), drives WebSocket clients against them while a nemesis injects
//! faults, then checks every guarantee of SPEC §5 and writes `results.json` and
//! `report.html`.
//!
//! ```text
//! chorus-jepsen --time 30 --nodes 3 --clients 6 --nemesis kill,kill-leader,pause,crash-all --seed 42
//! ```
//! Every run prints its seed; the same seed replays the same fault schedule and
//! client choices (timing on a real machine still varies).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use jepsen_like_tests::checker::check_all;
use jepsen_like_tests::history::{History, Msg, Outcome, ReadOp, SendOp, Subscription};
use jepsen_like_tests::report::{self, Fault};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "jepsen";

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
    /// Comma-separated: kill, kill-leader, pause, crash-all (or `none`).
    #[arg(long, default_value = "kill,kill-leader,pause,crash-all")]
    nemesis: String,
    #[arg(long)]
    seed: Option<u64>,
    /// Where results.json and report.html go.
    #[arg(long, default_value = "jepsen-like-tests/results")]
    out: PathBuf,
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("CHORUS_BIN") {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::current_exe()?.parent().context("no exe dir")?.to_path_buf(),
    };
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} not found; build the workspace first", p.display());
    }
    Ok(p)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct NodeProc {
    id: u64,
    client: String,
    raft: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log"))?;
        self.child = Some(
            Command::new(bin("chorusd")?)
                .args(["--id", &self.id.to_string(), "--client-addr", &self.client, "--raft-addr", &self.raft])
                .arg("--data-dir")
                .arg(&self.dir)
                .args(["--no-bootstrap", "--rate-limit", "0", "--heartbeat-ms", "50", "--election-ms", "300"])
                // Small thresholds so snapshot install and compaction run under faults.
                .args(["--snapshot-every", "300", "--snapshot-keep", "20"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
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

type Cluster = Arc<Mutex<Vec<NodeProc>>>;

fn ctl(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(bin("chorusctl")?).args(args).output()?;
    if !out.status.success() {
        bail!("chorusctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

fn leader(cluster: &Cluster) -> Option<u64> {
    let raft: Vec<String> = cluster.lock().ok()?.iter().filter(|n| n.child.is_some()).map(|n| n.raft.clone()).collect();
    raft.iter().find_map(|r| ctl(&["--node", r, "--json", "--timeout", "1", "cluster", "status"]).ok()?["leader"].as_u64().filter(|l| *l > 0))
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(client_addr: &str, token: &str) -> Option<Ws> {
    let url = format!("ws://{client_addr}/v1/ws?token={token}");
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await.ok()?.ok()?;
    ws.send(Message::Text(json!({ "type": "join", "room": ROOM }).to_string().into())).await.ok()?;
    loop {
        let f = next_frame(&mut ws, 5).await?;
        if f["type"] == "joined" {
            return Some(ws);
        }
    }
}

async fn next_frame(ws: &mut Ws, secs: u64) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn login(http: &reqwest::Client, client_addr: &str, user: &str) -> anyhow::Result<String> {
    let creds = json!({ "name": user, "password": "jepsen-password" });
    for _ in 0..100 {
        let _ = http.post(format!("http://{client_addr}/v1/users")).json(&creds).send().await;
        if let Ok(r) = http.post(format!("http://{client_addr}/v1/sessions")).json(&creds).send().await {
            if r.status().is_success() {
                let v: Value = r.json().await?;
                return Ok(v["token"].as_str().unwrap_or_default().to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("cannot log {user} in")
}

/// One sending client: unique ids, retried with the same id on another node
/// until acked or out of attempts (then the outcome is unknown).
async fn sender(i: usize, addrs: Vec<(u64, String)>, token: String, seed: u64, start: Instant, deadline: Instant, h: Arc<Mutex<History>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64 + 1) * 0x9E37_79B9);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let user = format!("c{i}");
    let mut conn: Option<(u64, Ws)> = None;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        if n % 7 == 0 {
            let (node, addr) = &addrs[rng.random_range(0..addrs.len())];
            let linearizable = rng.random_bool(0.7);
            let invoke = ms(start);
            // The first page carries the consistency; later pages are local reads of
            // the same node, whose state only moves forward.
            let (outcome, seen) = match read_room(&http, addr, &token, linearizable).await {
                Ok(msgs) => (Outcome::Ok, msgs.into_iter().map(|m| (m.from, m.id)).collect()),
                Err(ReadError::Refused) => (Outcome::Fail, Vec::new()),
                Err(ReadError::Unknown) => (Outcome::Unknown, Vec::new()),
            };
            let op = ReadOp { node: *node, room: ROOM.into(), linearizable, invoke_ms: invoke, complete_ms: ms(start), outcome, seen };
            h.lock().unwrap_or_else(|p| p.into_inner()).reads.push(op);
        }
        let id = format!("{user}-{n}");
        let invoke = ms(start);
        let mut outcome = Outcome::Unknown;
        let mut seq = None;
        let mut node_used = 0;
        for _attempt in 0..4 {
            if conn.is_none() {
                let (node, addr) = &addrs[rng.random_range(0..addrs.len())];
                conn = ws_connect(addr, &token).await.map(|ws| (*node, ws));
            }
            let Some((node, ws)) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            node_used = *node;
            let frame = json!({ "type": "send", "room": ROOM, "id": id, "text": format!("{id} payload") });
            if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                conn = None;
                continue;
            }
            let answer = loop {
                match next_frame(ws, 6).await {
                    Some(f) if f["id"] == id.as_str() && (f["type"] == "ack" || f["type"] == "error") => break Some(f),
                    Some(_) => continue,
                    None => break None,
                }
            };
            match answer {
                Some(f) if f["type"] == "ack" => {
                    outcome = Outcome::Ok;
                    seq = f["seq"].as_u64();
                    break;
                }
                Some(f) if f["code"] == "unavailable" => {
                    conn = None;
                }
                Some(_) => {
                    outcome = Outcome::Fail;
                    break;
                }
                None => conn = None,
            }
        }
        let op = SendOp { client: i, node: node_used, user: user.clone(), room: ROOM.into(), id, invoke_ms: invoke, complete_ms: ms(start), outcome, seq };
        h.lock().unwrap_or_else(|p| p.into_inner()).sends.push(op);
    }
}

/// A subscriber: joins with `after`, records what it receives, and on any
/// disconnect resumes on another node from the last seq it saw.
async fn subscriber(i: usize, addrs: Vec<(u64, String)>, token: String, seed: u64, deadline: Instant, h: Arc<Mutex<History>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xABCD ^ i as u64);
    let mut last = 0u64;
    while Instant::now() < deadline {
        let (node, addr) = addrs[rng.random_range(0..addrs.len())].clone();
        let url = format!("ws://{addr}/v1/ws?token={token}");
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let join = json!({ "type": "join", "room": ROOM, "after": last });
        if ws.send(Message::Text(join.to_string().into())).await.is_err() {
            continue;
        }
        let mut sub = Subscription { client: 1000 + i, node, room: ROOM.into(), after: last, received: Vec::new() };
        while Instant::now() < deadline + Duration::from_secs(2) {
            match next_frame(&mut ws, 3).await {
                Some(f) if f["type"] == "message" => {
                    let m = Msg {
                        room: ROOM.into(),
                        seq: f["seq"].as_u64().unwrap_or(0),
                        id: f["id"].as_str().unwrap_or("").into(),
                        from: f["from"].as_str().unwrap_or("").into(),
                        ts: f["ts"].as_u64().unwrap_or(0),
                    };
                    last = last.max(m.seq);
                    sub.received.push(m);
                }
                Some(_) => {}
                None if Instant::now() < deadline => break,
                None => {}
            }
        }
        h.lock().unwrap_or_else(|p| p.into_inner()).subscriptions.push(sub);
    }
}

async fn nemesis(cluster: Cluster, kinds: Vec<String>, seed: u64, start: Instant, deadline: Instant) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while Instant::now() + Duration::from_secs(6) < deadline {
        let kind = kinds[rng.random_range(0..kinds.len())].clone();
        let hold = Duration::from_millis(rng.random_range(1500..4000));
        let begin = ms(start);
        let target = match kind.as_str() {
            "kill" | "kill-leader" | "pause" => {
                let n = cluster.lock().map(|c| c.len()).unwrap_or(0) as u64;
                let id = if kind == "kill-leader" { leader(&cluster).unwrap_or(1) } else { rng.random_range(1..=n) };
                {
                    let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(node) = c.iter_mut().find(|x| x.id == id) else { continue };
                    if kind == "pause" { node.signal("STOP") } else { node.kill() }
                }
                tokio::time::sleep(hold).await;
                let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(node) = c.iter_mut().find(|x| x.id == id) {
                    if kind == "pause" {
                        node.signal("CONT");
                    } else if let Err(e) = node.start() {
                        eprintln!("restart of node {id} failed: {e}");
                    }
                }
                format!("node {id}")
            }
            "crash-all" => {
                for node in cluster.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                    node.kill();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                for node in cluster.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                    if let Err(e) = node.start() {
                        eprintln!("restart of node {} failed: {e}", node.id);
                    }
                }
                "all nodes".to_string()
            }
            other => {
                eprintln!("unknown nemesis {other}");
                continue;
            }
        };
        faults.push(Fault { kind, target, start_ms: begin, end_ms: ms(start) });
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
    }
    faults
}

enum ReadError {
    /// The node answered with a client error: nothing was read.
    Refused,
    Unknown,
}

/// Every message of the room as `addr` serves it, paged; the first page with the
/// asked consistency.
async fn read_room(http: &reqwest::Client, addr: &str, token: &str, linearizable: bool) -> Result<Vec<Msg>, ReadError> {
    let mut out: Vec<Msg> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m.seq);
        let consistency = if linearizable && out.is_empty() { "linearizable" } else { "local" };
        let url = format!("http://{addr}/v1/rooms/{ROOM}/messages?after={after}&limit=1000&consistency={consistency}");
        let r = http.get(url).bearer_auth(token).send().await.map_err(|_| ReadError::Unknown)?;
        if r.status().is_client_error() {
            return Err(ReadError::Refused);
        }
        let v: Value = r.error_for_status().map_err(|_| ReadError::Unknown)?.json().await.map_err(|_| ReadError::Unknown)?;
        let page = v["messages"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page.iter().map(|m| Msg {
            room: ROOM.into(),
            seq: m["seq"].as_u64().unwrap_or(0),
            id: m["id"].as_str().unwrap_or("").into(),
            from: m["from"].as_str().unwrap_or("").into(),
            ts: m["ts"].as_u64().unwrap_or(0),
        }));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    println!("chorus-jepsen: seed {seed} (replay with --seed {seed}), {} s, {} nodes, {} clients, nemesis {}", args.time, args.nodes, args.clients, args.nemesis);
    let tmp = tempfile::tempdir()?;
    let mut procs = Vec::new();
    for id in 1..=args.nodes {
        let mut p = NodeProc {
            id,
            client: format!("127.0.0.1:{}", free_port()?),
            raft: format!("127.0.0.1:{}", free_port()?),
            dir: tmp.path().join(format!("node-{id}")),
            child: None,
        };
        p.start()?;
        procs.push(p);
    }
    let cluster: Cluster = Arc::new(Mutex::new(procs));
    let (raft, addrs): (Vec<String>, Vec<(u64, String)>) = {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        (c.iter().map(|n| n.raft.clone()).collect(), c.iter().map(|n| (n.id, n.client.clone())).collect())
    };
    // Ctrl-C: the processes and the data die with us.
    let on_signal = cluster.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            for n in on_signal.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                n.signal("CONT");
                n.kill();
            }
            std::process::exit(130);
        }
    });
    for r in &raft {
        let ready = Instant::now() + Duration::from_secs(30);
        while ctl(&["--node", r, "--timeout", "1", "cluster", "status"]).is_err() {
            if Instant::now() > ready {
                bail!("node at {r} did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut init = vec!["cluster", "init"];
    init.extend(raft.iter().map(String::as_str));
    ctl(&init)?;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut tokens = Vec::new();
    for i in 0..args.clients + 2 {
        tokens.push(login(&http, &addrs[i % addrs.len()].1, &format!("c{i}")).await?);
    }
    let history = Arc::new(Mutex::new(History::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.time);
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        tasks.push(tokio::spawn(sender(i, addrs.clone(), tokens[i].clone(), seed, start, deadline, history.clone())));
    }
    for j in 0..2 {
        tasks.push(tokio::spawn(subscriber(j, addrs.clone(), tokens[args.clients + j].clone(), seed, deadline, history.clone())));
    }
    let kinds: Vec<String> = args.nemesis.split(',').map(str::trim).filter(|k| !k.is_empty() && *k != "none").map(String::from).collect();
    let faults = nemesis(cluster.clone(), kinds, seed, start, deadline).await;
    for t in tasks {
        t.await?;
    }
    let duration_ms = ms(start);

    // Heal, let every node catch up, then read every node's final history.
    for n in cluster.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
        n.signal("CONT");
        if n.child.is_none() {
            n.start()?;
        }
    }
    let token = tokens[0].clone();
    let settle = Instant::now() + Duration::from_secs(60);
    let finals = loop {
        let mut finals = std::collections::BTreeMap::new();
        for (id, addr) in &addrs {
            if let Ok(h) = read_room(&http, addr, &token, false).await {
                finals.insert(*id, h);
            }
        }
        let lens: Vec<usize> = finals.values().map(Vec::len).collect();
        if finals.len() == addrs.len() && lens.windows(2).all(|w| w[0] == w[1]) {
            break finals;
        }
        if Instant::now() > settle {
            eprintln!("nodes did not converge in 60 s: {lens:?}");
            break finals;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut h = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    h.finals = finals;

    let verdicts = check_all(&h);
    let results = report::results(seed, duration_ms, &h, &verdicts, &faults);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    std::fs::write(args.out.join("history.json"), serde_json::to_string(&h)?)?;
    std::fs::write(args.out.join("report.html"), report::html(&results, &h))?;
    println!(
        "sends ok {} / fail {} / unknown {}; reads ok {} / unknown {}; {} faults; {} messages stored",
        results.sends.ok, results.sends.fail, results.sends.unknown, results.reads.ok, results.reads.unknown, faults.len(),
        h.finals.values().next().map_or(0, Vec::len)
    );
    for v in &verdicts {
        println!("  {:<52} {}", v.property, if v.ok { "ok".to_string() } else { format!("VIOLATED ({} anomalies, first: {})", v.anomalies.len(), v.anomalies[0]) });
    }
    println!("report: {}", args.out.join("report.html").display());
    drop(cluster);
    if !results.valid {
        bail!("the run is INVALID (seed {seed})");
    }
    Ok(())
}
