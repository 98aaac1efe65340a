//! The acks phase: `--senders` closed-loop senders spread over the nodes, each
//! in a room of its own (`load-i`); acked messages/s, ack latency and the
//! send→deliver latency of each sender's own copy. With `--changes PCT`, that
//! share of the operations edit or react to the sender's last message instead
//! (each an entry of the room, acked like a send).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use wire::ClientFrame;

use super::breakdown;
use super::deliveries::{frame_text, join, reader, Deliveries};
use super::measure::Meters;
use super::{micros, pct, Bench, BenchArgs};
use crate::chat::{connect, Ws};

pub(super) async fn run(bench: &Bench, args: &BenchArgs) -> anyhow::Result<()> {
    let deliveries = Arc::new(Deliveries::default());
    // The window and the meters open before the senders connect and join.
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let meters = Meters::start(&bench.http, &bench.urls, &args.pids).await;
    let stages = match args.breakdown {
        true => Some(breakdown::scrape(&bench.http, &bench.urls).await),
        false => None,
    };
    let senders = start_senders(bench, args, deadline, &deliveries).await?;
    let mut lat = Vec::new();
    for s in senders {
        lat.extend(s.await?);
    }
    lat.sort_unstable();
    let (cpu, syncs) = meters.stop(&bench.http, &bench.urls, lat.len() as u64, "acked message").await;
    let stages = match stages {
        Some(before) => Some(breakdown::report(&before, &breakdown::scrape(&bench.http, &bench.urls).await, lat.len() as u64)),
        None => None,
    };
    // Lets the last sends' own copies arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dl = deliveries.latencies();
    match args.changes {
        0 => println!("acks: {} senders", args.senders),
        pct => println!("acks: {} senders, {pct}% of operations edits and reactions", args.senders),
    }
    println!("  acked messages/s {:.0}", lat.len() as f64 / args.secs as f64);
    println!("  ack latency ms   p50 {:.2}  p99 {:.2}  p99.9 {:.2}", pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999));
    println!("  send→deliver ms  p50 {:.2}  p99 {:.2}", pct(&dl, 0.5), pct(&dl, 0.99));
    println!("  CPU              {cpu}");
    println!("  log syncs        {syncs}");
    if let Some(table) = stages {
        print!("{table}");
    }
    Ok(())
}

/// Connects and joins sender i to node i mod n and room `load-i`, one after
/// another, each sending from the moment it has joined; each task ends with
/// its ack latencies in µs.
async fn start_senders(bench: &Bench, args: &BenchArgs, deadline: Instant, deliveries: &Arc<Deliveries>) -> anyhow::Result<Vec<JoinHandle<Vec<u64>>>> {
    let n = args.senders;
    let mut senders = Vec::with_capacity(n);
    for i in 0..n {
        let mut ws = connect(&bench.urls[i % bench.urls.len()], bench.users.token(i)).await?;
        join(&mut ws, &format!("load-{i}")).await?;
        let (tx, rx) = ws.split();
        let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(reader(rx, bench.start, deliveries.clone(), Some(ack_tx), 1));
        let mix = Mix { changes: args.changes.min(100), pad: bench.pad.clone() };
        senders.push(tokio::spawn(send_closed_loop(tx, ack_rx, i, deadline, bench.start, mix)));
    }
    Ok(senders)
}

/// What one sender sends: `changes` percent of its operations are edits and
/// reactions (half each) of its last acked message, the rest messages.
struct Mix {
    changes: u8,
    pad: String,
}

impl Mix {
    /// Operation `n` of sender `i`, given its last acked message.
    fn frame(&self, i: usize, n: u64, sent: u64, last: Option<u64>) -> ClientFrame {
        let (room, id, text) = (format!("load-{i}"), n.into(), format!("{sent:020} {}", self.pad));
        // 37 is prime to 100: each run of 100 operations holds `changes` changes, spread out.
        let change = (n * 37) % 100 < u64::from(self.changes);
        match last {
            Some(target) if change && n.is_multiple_of(2) => ClientFrame::Edit { room, id, target, text },
            // A user's reaction per emoji is one, so repeating it grows nothing.
            Some(target) if change => ClientFrame::React { room, id, target, emoji: "👍".into() },
            _ => ClientFrame::Send { room, id, text, reply_to: None },
        }
    }
}

/// Sends to `load-i` until `deadline`, each operation once the last is answered.
async fn send_closed_loop(
    mut tx: SplitSink<Ws, Message>,
    mut ack_rx: UnboundedReceiver<Option<u64>>,
    i: usize,
    deadline: Instant,
    start: Instant,
    mix: Mix,
) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut n = 0u64;
    let mut last = None;
    while Instant::now() < deadline {
        let sent = micros(start);
        let f = mix.frame(i, n, sent, last);
        let is_send = matches!(f, ClientFrame::Send { .. });
        if tx.send(Message::Text(frame_text(f).into())).await.is_err() {
            break;
        }
        let Some(answer) = ack_rx.recv().await else { break };
        if is_send && answer.is_some() {
            last = answer;
        }
        lat.push(micros(start) - sent);
        n += 1;
    }
    let _ = tx.close().await;
    lat
}
