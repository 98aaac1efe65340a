//! The fan-out phase: `--subscribers` connections in room `fanout` spread over
//! the nodes, read by [`SubscriberReader`]'s threads, and `--fanout-senders`
//! senders, closed loop or paced at `--fanout-rate`; deliveries/s and the
//! sampled send→deliver latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use wire::ClientFrame;

use super::deliveries::{frame_text, join, reader, Deliveries};
use super::measure::Meters;
use super::subscribers::{subscribe, SubscriberReader};
use super::{micros, pct, Bench, BenchArgs};
use crate::chat::{connect, Ws};

pub(super) async fn run(bench: &Bench, args: &BenchArgs) -> anyhow::Result<()> {
    let deliveries = Arc::new(Deliveries::default());
    let mut subscribers = connect_subscribers(bench, args, &deliveries).await?;
    let senders = connect_senders(bench, args.fanout_senders).await?;
    let settled = settle(&deliveries).await;
    let before = deliveries.count.load(Ordering::Relaxed);
    let meters = Meters::start(&bench.http, &bench.urls, &args.pids).await;
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let sent = Arc::new(AtomicU64::new(0));
    // The fan-out senders' acks: their latency is the commit part of send→deliver.
    let fan_acks = Arc::new(Deliveries::default());
    for t in start_sending(bench, args, senders, deadline, &sent, &fan_acks) {
        t.await?;
    }
    // The rate counts what arrived within the window; the extra second only
    // lets in-flight deliveries add their latency samples.
    let got = deliveries.count.load(Ordering::Relaxed) - before;
    let (cpu, syncs) = meters.stop(&bench.http, &bench.urls, got, "delivery").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dl = deliveries.latencies();
    let pacing = if args.fanout_rate > 0 { format!("paced at {} messages/s", args.fanout_rate) } else { "closed loop".to_string() };
    println!("fan-out: {} subscribers, {} senders, {pacing}", args.subscribers, args.fanout_senders);
    println!("  set-up settled   {:.1} s after the last join", settled.as_secs_f64());
    println!("  messages sent    {}", sent.load(Ordering::Relaxed));
    println!("  deliveries/s     {:.0}", got as f64 / args.secs as f64);
    println!("  send→deliver ms  p50 {:.2}  p99 {:.2}  (sampled)", pct(&dl, 0.5), pct(&dl, 0.99));
    let al = fan_acks.latencies();
    println!("  ack latency ms   p50 {:.2}  p99 {:.2}  (fan-out senders)", pct(&al, 0.5), pct(&al, 0.99));
    println!("  CPU              {cpu}");
    println!("  log syncs        {syncs}");
    if args.timeline {
        print_timeline(&deliveries.samples());
    }
    // Stopping the reader thread closes every subscriber's connection.
    subscribers.finish()
}

/// Connects and joins subscriber i to node i mod n, one after another, and
/// hands each to the reader threads as soon as it has joined.
async fn connect_subscribers(bench: &Bench, args: &BenchArgs, deliveries: &Arc<Deliveries>) -> anyhow::Result<SubscriberReader> {
    let sample = (args.subscribers as u64 / 50).max(1);
    // A few threads read the subscribers (see `SubscriberReader`); each is
    // connected and joined with blocking I/O off the runtime, then handed over.
    let mut subscribers = SubscriberReader::spawn(args.reader_threads, bench.start, deliveries.clone(), sample)?;
    for i in 0..args.subscribers {
        let (url, token) = (bench.urls[i % bench.urls.len()].clone(), bench.users.token(i).to_string());
        subscribers.add(tokio::task::spawn_blocking(move || subscribe(&url, &token)).await??)?;
    }
    Ok(subscribers)
}

/// The senders connect before the window opens, so that the first of them do
/// not send while the others are still connecting and joining.
async fn connect_senders(bench: &Bench, n: usize) -> anyhow::Result<Vec<Ws>> {
    let mut senders = Vec::with_capacity(n);
    for i in 0..n {
        let mut ws = connect(&bench.urls[i % bench.urls.len()], bench.users.token(i)).await?;
        join(&mut ws, "fanout-senders").await?;
        senders.push(ws);
    }
    Ok(senders)
}

/// Starts every sender sending to `fanout` until `deadline`, counting what
/// they send in `sent` and their ack latency in `fan_acks`.
fn start_sending(
    bench: &Bench,
    args: &BenchArgs,
    senders: Vec<Ws>,
    deadline: Instant,
    sent: &Arc<AtomicU64>,
    fan_acks: &Arc<Deliveries>,
) -> Vec<JoinHandle<()>> {
    let start = bench.start;
    let mut tasks = Vec::new();
    let senders_n = senders.len();
    for (i, ws) in senders.into_iter().enumerate() {
        let (mut tx, rx) = ws.split();
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(reader(rx, start, fan_acks.clone(), Some(ack_tx), u64::MAX));
        let (pad, sent) = (bench.pad.clone(), sent.clone());
        // Paced senders send on a fixed schedule whatever the acks do, so the
        // latency is measured at a known load rather than at saturation.
        let period = (args.fanout_rate > 0).then(|| Duration::from_secs_f64(args.fanout_senders as f64 / args.fanout_rate as f64));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = period.map(|p| {
                // Sender i starts i/n of a period in, so that together they
                // send at an even rate rather than in bursts of n.
                let offset = p.mul_f64(i as f64 / senders_n as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t = micros(start);
                let f = ClientFrame::Send { room: "fanout".into(), id: format!("f{i}-{n}-{t}").into(), text: format!("{t:020} {pad}"), reply_to: None };
                if tx.send(Message::Text(frame_text(f).into())).await.is_err() {
                    break;
                }
                if tick.is_none() && ack_rx.recv().await.is_none() {
                    break;
                }
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Paced senders never await acks; the reader's unbounded channel
            // holds them until here.
            drop(ack_rx);
        }));
    }
    tasks
}

/// Waits until the subscribers have had no frame for [`SETTLED`] (at most
/// [`SETTLE_LIMIT`]) and returns how long that took. Joining thousands of
/// subscribers sets off presence frames to the room's members and a commit
/// for each join; on a machine short of CPU these can still be under way when
/// the last join is answered, and the window is for the steady state of the
/// fan-out, not the tail of the set-up.
async fn settle(deliveries: &Deliveries) -> Duration {
    let began = Instant::now();
    let frames = || deliveries.count.load(Ordering::Relaxed) + deliveries.others.load(Ordering::Relaxed);
    let mut seen = frames();
    while began.elapsed() < SETTLE_LIMIT {
        tokio::time::sleep(SETTLED).await;
        let now = frames();
        if now == seen {
            break;
        }
        seen = now;
    }
    began.elapsed()
}

const SETTLED: Duration = Duration::from_millis(500);
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// send→deliver per 250 ms of send time: p50, p99, max and the sample count.
fn print_timeline(samples: &[(u64, u64)]) {
    let mut buckets = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for &(sent, lat) in samples {
        buckets.entry(sent / 250_000).or_default().push(lat);
    }
    println!("  timeline (send time s: send→deliver ms p50 / p99 / max, samples)");
    for (b, mut lat) in buckets {
        lat.sort_unstable();
        let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
        println!("    {:7.2}: {:7.1} / {:7.1} / {:7.1}  {}", b as f64 / 4.0, pct(&lat, 0.5), pct(&lat, 0.99), max, lat.len());
    }
}
