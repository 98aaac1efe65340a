//! `chorusctl bench`: load over the public WebSocket API, with printed figures.
//!
//! Three phases, each optional:
//! - **acks**: `--senders` closed-loop senders spread over the nodes, each in a
//!   room of its own; acked messages/s, ack latency, send→deliver latency.
//! - **fan-out**: `--subscribers` connections in one room spread over the nodes,
//!   `--fanout-senders` senders; deliveries/s and send→deliver latency. The
//!   subscribers are read by `--reader-threads` OS threads polling their
//!   sockets with mio (see [`SubscriberReader`]), not by a tokio task each.
//! - **idle**: `--idle` connections to the first node; its RSS growth per
//!   connection (needs `--pids`, the chorusd process ids in `--urls` order).
//!
//! The acks and fan-out phases also print the CPU time the nodes (with
//! `--pids`) and this process used per acked message or delivery, how busy
//! the machine was, and each node's Raft log fsyncs in the window (from its
//! `chorus_log_sync_seconds`): how many, how many took over 25 ms, and a bound
//! on the slowest. A stalled disk shows there rather than as a mystery in the
//! latency figures.
//!
//! The cluster should run with `--rate-limit 0`. Send times travel in the message
//! text, so send→deliver is measured on one clock (this process's).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use mio::unix::SourceFd;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::HandshakeError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use wire::{ClientFrame, ServerFrame};

use crate::chat::{connect, session};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Client URLs of the nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    #[arg(long, default_value_t = 256)]
    senders: usize,
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    #[arg(long, default_value_t = 8)]
    fanout_senders: usize,
    /// Fan-out messages per second over all its senders, paced (open loop);
    /// 0: each sender sends its next message when the last is acked.
    #[arg(long, default_value_t = 0)]
    fanout_rate: u64,
    /// Threads reading the fan-out subscribers' sockets. One is the default:
    /// on a 2-core machine that also runs the nodes, two measured no better
    /// (docs/PERFORMANCE.md, "Tried and not kept"); on a bigger load machine, use more.
    #[arg(long, default_value_t = 1)]
    reader_threads: usize,
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// chorusd process ids, in --urls order (for RSS and CPU figures).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 200)]
    bytes: usize,
    /// Also print the fan-out's send→deliver latency per 250 ms of send time,
    /// to tell a steady queue from a few stalls.
    #[arg(long)]
    timeline: bool,
}

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`
/// (`self` for this one); `None` where that is not readable.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime are fields 14 and 15; the command name before them is
    // parenthesised and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ on Linux
}

/// The machine's (busy, total) CPU time so far in ticks, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // user nice system idle iowait irq softirq steal; the guest columns after
    // them are already counted in user and nice.
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|t| t.parse().ok()).collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// CPU used by the nodes, this process and the machine over a phase, per unit
/// of work: on a machine the nodes and the load generator share, this is the
/// figure that tells how near the cores are to full.
struct CpuMeter {
    pids: Vec<u32>,
    nodes: Option<f64>,
    me: Option<f64>,
    machine: Option<(u64, u64)>,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> Self {
        CpuMeter { pids: pids.to_vec(), nodes: Self::nodes(pids), me: cpu_secs("self"), machine: machine_ticks() }
    }

    fn nodes(pids: &[u32]) -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_secs(&p.to_string())).sum()
    }

    /// "nodes 8.1 µs, load generator 4.2 µs per delivery; machine 97 % busy".
    fn report(&self, units: u64, unit: &str) -> String {
        let per = |before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(b), Some(n)) if units > 0 => format!("{:.1} µs", (n - b) * 1e6 / units as f64),
            _ => "n/a".to_string(),
        };
        let busy = match (self.machine, machine_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => format!("{:.0} %", (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64),
            _ => "n/a".to_string(),
        };
        format!(
            "nodes {}, load generator {} per {unit}; machine {busy} busy",
            per(self.nodes, Self::nodes(&self.pids)),
            per(self.me, cpu_secs("self"))
        )
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
}

/// One node's `chorus_log_sync_seconds` buckets: (upper bound in seconds,
/// cumulative count), in the order of the exposition.
type SyncBuckets = Vec<(f64, u64)>;

/// Scrapes each node's log-sync histogram; `None` for a node that did not answer.
async fn sync_buckets(http: &reqwest::Client, urls: &[String]) -> Vec<Option<SyncBuckets>> {
    let mut all = Vec::with_capacity(urls.len());
    for url in urls {
        let text = match http.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        };
        let buckets: Option<SyncBuckets> = text.map(|t| {
            t.lines()
                .filter_map(|l| {
                    let (le, count) = l.strip_prefix("chorus_log_sync_seconds_bucket{le=\"")?.split_once("\"} ")?;
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                    Some((le, count.trim().parse().ok()?))
                })
                .collect()
        });
        all.push(buckets.filter(|b| !b.is_empty()));
    }
    all
}

/// Per node, the log syncs between two scrapes: how many, how many over
/// 25.6 ms, and the smallest bucket bound that holds them all.
fn sync_report(before: &[Option<SyncBuckets>], after: &[Option<SyncBuckets>]) -> String {
    const SLOW: f64 = 0.0256;
    let nodes: Vec<String> = before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, pair)| {
            let (Some(b), Some(a)) = pair else { return format!("node {}: not scraped", i + 1) };
            // Cumulative counts in the window, by bucket bound.
            let window: Vec<(f64, u64)> = a.iter().zip(b).map(|((le, n), (_, m))| (*le, n.saturating_sub(*m))).collect();
            let total = window.last().map_or(0, |(_, n)| *n);
            if total == 0 {
                return format!("node {}: none", i + 1);
            }
            let fast = window.iter().find(|(le, _)| *le >= SLOW).map_or(0, |(_, n)| *n);
            let worst = window.iter().find(|(_, n)| *n == total).map_or(f64::INFINITY, |(le, _)| *le);
            let top = window.iter().rev().map(|(le, _)| *le).find(|le| le.is_finite()).unwrap_or(0.0);
            let worst = if worst.is_finite() { format!("≤ {:.1} ms", worst * 1000.0) } else { format!("over {:.0} ms", top * 1000.0) };
            format!("node {}: {total}, {} over 25.6 ms, slowest {worst}", i + 1, total - fast)
        })
        .collect();
    nodes.join("; ")
}

struct Users {
    tokens: Vec<String>,
}

impl Users {
    async fn new(url: &str, prefix: &str, n: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let mut tokens = Vec::new();
        for i in 0..n {
            tokens.push(session(&http, url, &format!("{prefix}{i}"), "bench-password").await?);
        }
        Ok(Users { tokens })
    }

    fn token(&self, i: usize) -> &str {
        &self.tokens[i % self.tokens.len()]
    }
}

/// Counts message frames and samples their send→deliver latency.
///
/// A std mutex, not tokio's: the fan-out subscribers record from a plain thread
/// ([`SubscriberReader`]), and no one holds the lock across an await.
#[derive(Default)]
struct Deliveries {
    count: AtomicU64,
    /// Other frames to subscribers (presence, mostly), for telling when the
    /// set-up has settled.
    others: AtomicU64,
    /// (send time, latency) in µs since `start`.
    samples: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Deliveries {
    fn record(&self, sent: u64, start: Instant) {
        let lat = micros(start).saturating_sub(sent);
        self.samples().push((sent, lat));
    }

    /// The samples so far. A thread that panicked while pushing left nothing
    /// half-done, so a poisoned lock is taken as is.
    fn samples(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sampled latencies, sorted.
    fn latencies(&self) -> Vec<u64> {
        let mut lat: Vec<u64> = self.samples().iter().map(|&(_, lat)| lat).collect();
        lat.sort_unstable();
        lat
    }
}

/// Counts and samples one text frame: a delivery, or (with `acks`, for senders)
/// an ack or error, passed on to the sender.
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

fn on_text(t: &str, start: Instant, deliveries: &Deliveries, acks: Option<&tokio::sync::mpsc::UnboundedSender<()>>, sample_every: u64) {
    // Thousands of subscribers share this machine's cores with the nodes: a
    // subscriber's frame is only parsed when it is sampled, so the load
    // generator's own queueing adds as little as it can to the latency.
    if acks.is_none() {
        if !wire::is_message(t) {
            deliveries.others.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = deliveries.count.fetch_add(1, Ordering::Relaxed);
        if n % sample_every == 0 {
            if let Ok(ServerFrame::Message(m)) = ServerFrame::parse(t) {
                record_sent_text(&m, start, deliveries);
            }
        }
        return;
    }
    let Ok(f) = ServerFrame::parse(t) else { return };
    match f {
        ServerFrame::Message(m) => {
            let n = deliveries.count.fetch_add(1, Ordering::Relaxed);
            if n % sample_every == 0 {
                record_sent_text(&m, start, deliveries);
            }
        }
        ServerFrame::Ack { id, .. } => answered(Some(&id), start, deliveries, acks),
        ServerFrame::Error { id, .. } => answered(id.as_ref(), start, deliveries, acks),
        _ => {}
    }
}

/// A send was answered (acked or refused): its latency, if its id says when it
/// went out, and a wake-up for the sender waiting on it.
fn answered(id: Option<&wire::Id>, start: Instant, deliveries: &Deliveries, acks: Option<&tokio::sync::mpsc::UnboundedSender<()>>) {
    // Fan-out senders put their send time last in the id.
    if let Some(sent) = id.and_then(|id| id.text().rsplit('-').next()?.parse::<u64>().ok()) {
        deliveries.record(sent, start);
    }
    if let Some(a) = acks {
        let _ = a.send(());
    }
}

/// Senders put their send time first in the text.
fn record_sent_text(m: &wire::Message, start: Instant, deliveries: &Deliveries) {
    if let Some(sent) = m.text.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
        deliveries.record(sent, start);
    }
}

/// A frame that asks for nothing back (`req` is not used here), as text.
fn frame_text(f: ClientFrame) -> String {
    f.to_text(None)
}

async fn reader<S>(
    mut rx: S,
    start: Instant,
    deliveries: Arc<Deliveries>,
    acks: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    sample_every: u64,
) where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(t) = msg else { continue };
        on_text(t.as_str(), start, &deliveries, acks.as_ref(), sample_every);
    }
}

/// A fan-out subscriber's socket, under sync tungstenite.
///
/// Once non-blocking (`drained` is `Some`), a read that fills less than its
/// buffer has emptied the socket, so the next read answers WouldBlock without
/// a system call until the poller reports new data (tokio does the same):
/// draining a subscriber then costs one read(2), not a second one that only
/// finds EAGAIN.
struct SubSocket {
    tcp: TcpStream,
    /// `None` while blocking (handshake and join); then whether a read found
    /// the socket empty since its last readiness event.
    drained: Option<bool>,
}

impl Read for SubSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.drained == Some(true) {
            return Err(ErrorKind::WouldBlock.into());
        }
        let r = self.tcp.read(buf);
        if let Some(drained) = self.drained.as_mut() {
            *drained = match &r {
                Ok(n) => *n < buf.len(),
                Err(e) => e.kind() == ErrorKind::WouldBlock,
            };
        }
        r
    }
}

impl Write for SubSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A fan-out subscriber's connection: sync tungstenite over a std socket,
/// non-blocking once it has joined.
type SyncWs = tungstenite::WebSocket<SubSocket>;

/// Opens a fan-out subscriber's WebSocket and joins "fanout", with blocking std
/// I/O (run it off the async runtime). It matches `chat::connect` and [`join`]:
/// the same URL, a 2 KiB read buffer, TCP_NODELAY (as
/// `connect_async_with_config(.., true)` sets), the same join frames. The
/// socket is left non-blocking, for [`SubscriberReader`].
fn subscribe(url: &str, token: &str) -> anyhow::Result<SyncWs> {
    let ws_url = format!("{}/v1/ws?token={token}", url.replacen("http", "ws", 1));
    let request = ws_url.as_str().into_client_request().with_context(|| format!("bad node URL {url}"))?;
    if request.uri().scheme_str() != Some("ws") {
        bail!("the bench's subscribers speak plain ws:// only, not to {url}");
    }
    let host = request.uri().host().with_context(|| format!("no host in {url}"))?;
    // An IPv6 literal comes bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = request.uri().port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port)).with_context(|| format!("cannot connect to {url}"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(2 * 1024);
    let (mut ws, _) = tungstenite::client::client_with_config(request, SubSocket { tcp, drained: None }, Some(config))
        .map_err(|e| match e {
            HandshakeError::Failure(e) => anyhow::Error::from(e),
            HandshakeError::Interrupted(_) => anyhow!("a blocking WebSocket handshake was interrupted"),
        })
        .with_context(|| format!("cannot open a WebSocket to {url}"))?;
    ws.send(Message::Text(frame_text(ClientFrame::Join { room: "fanout".into(), after: None }).into()))?;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if matches!(ServerFrame::parse(t.as_str()), Ok(ServerFrame::Joined { .. })) => break,
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => bail!("closed before joining fanout"),
            Err(e) => return Err(e.into()),
        }
    }
    let sock = ws.get_mut();
    sock.tcp.set_nonblocking(true).context("cannot make a subscriber's socket non-blocking")?;
    sock.drained = Some(false);
    Ok(ws)
}

/// The poll token of [`SubscriberReader`]'s waker; a subscriber's token is its slot.
const WAKE: mio::Token = mio::Token(usize::MAX);

/// Reads every fan-out subscriber from a few OS threads (`--reader-threads`),
/// each polling its share of the sockets with mio and reading each with sync
/// tungstenite until it would block.
///
/// Why threads and not tasks: the load generator shares this machine's cores
/// with the nodes, so every µs of its CPU per delivery is taken from them and
/// shows up in the latency it measures. A tokio task per subscriber cost ~1.5 µs
/// of this process's own code per delivery (task wakeups, the async WebSocket
/// adapters); here there are no tasks to wake, one `epoll_wait` reports many
/// subscribers, and a delivery costs its share of that, one read(2) (see
/// [`SubSocket`]) and tungstenite's framing. Why more than one, when the
/// cores allow: a node writes a message to all its subscribers at once, and
/// one thread reading 3,000 sockets in turn makes the last of them wait for
/// the other 2,999, which a client on its own machine never would.
///
/// Subscribers are handed over as they join, round robin, so none goes unread
/// while the rest connect; dropping the reader (or [`SubscriberReader::finish`])
/// stops the threads, which drop, and so close, every subscriber's connection.
struct SubscriberReader {
    threads: Vec<ReaderThread>,
    /// The thread the next subscriber goes to.
    next: usize,
}

/// One of [`SubscriberReader`]'s threads.
struct ReaderThread {
    /// New subscribers; dropped to tell the thread to stop.
    new: Option<mpsc::Sender<SyncWs>>,
    /// Wakes the thread to take new subscribers or stop.
    waker: mio::Waker,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl SubscriberReader {
    fn spawn(threads: usize, start: Instant, deliveries: Arc<Deliveries>, sample_every: u64) -> anyhow::Result<Self> {
        let threads = (0..threads.max(1))
            .map(|i| {
                let poll = mio::Poll::new().context("cannot create a poller for the subscribers")?;
                let waker = mio::Waker::new(poll.registry(), WAKE).context("cannot create the subscriber reader's waker")?;
                let (new, joined) = mpsc::channel();
                let deliveries = deliveries.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("bench-subs-{i}"))
                    .spawn(move || read_subscribers(poll, joined, start, &deliveries, sample_every))
                    .context("cannot start a subscriber reader thread")?;
                Ok(ReaderThread { new: Some(new), waker, thread: Some(thread) })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(SubscriberReader { threads, next: 0 })
    }

    /// Hands a joined subscriber ([`subscribe`]) to the next thread.
    fn add(&mut self, ws: SyncWs) -> anyhow::Result<()> {
        let i = self.next % self.threads.len();
        self.next = i + 1;
        let t = &mut self.threads[i];
        if t.new.as_ref().is_none_or(|new| new.send(ws).is_err()) {
            // The thread has ended: say why.
            self.finish()?;
            bail!("a subscriber reader thread has stopped");
        }
        t.waker.wake().context("cannot wake a subscriber reader thread")
    }

    /// Stops the threads, closing every subscriber's connection, and returns
    /// the first error one ended with, if any.
    fn finish(&mut self) -> anyhow::Result<()> {
        for t in &mut self.threads {
            t.new = None;
        }
        let mut result = Ok(());
        for t in &mut self.threads {
            let Some(thread) = t.thread.take() else { continue };
            let ended = t
                .waker
                .wake()
                .context("cannot wake a subscriber reader thread")
                .and_then(|()| thread.join().map_err(|_| anyhow!("a subscriber reader thread panicked"))?);
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }
}

impl Drop for SubscriberReader {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A subscriber on the reader thread, with its socket's descriptor for mio.
struct Subscriber {
    fd: RawFd,
    ws: SyncWs,
}

/// The body of [`SubscriberReader`]'s thread: takes subscribers from `joined`
/// until its sender is dropped, and counts what they receive as the async
/// [`reader`] does.
fn read_subscribers(
    mut poll: mio::Poll,
    joined: mpsc::Receiver<SyncWs>,
    start: Instant,
    deliveries: &Deliveries,
    sample_every: u64,
) -> anyhow::Result<()> {
    let mut events = mio::Events::with_capacity(1024);
    // Slot i holds the subscriber registered with token i; `free` lists the
    // slots of closed ones.
    let mut subs: Vec<Option<Subscriber>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("cannot poll the subscribers"),
        }
        for event in &events {
            let registry = poll.registry();
            if event.token() == WAKE {
                loop {
                    let ws = match joined.try_recv() {
                        Ok(ws) => ws,
                        Err(TryRecvError::Empty) => break,
                        // Dropping the sockets closes them.
                        Err(TryRecvError::Disconnected) => return Ok(()),
                    };
                    let mut sub = Subscriber { fd: ws.get_ref().tcp.as_raw_fd(), ws };
                    let slot = free.pop().unwrap_or(subs.len());
                    registry
                        .register(&mut SourceFd(&sub.fd), mio::Token(slot), mio::Interest::READABLE)
                        .context("cannot register a subscriber's socket")?;
                    // Frames that came with the join answer wait in tungstenite's
                    // buffer, where no readiness event will announce them.
                    if !drain(&mut sub.ws, start, deliveries, sample_every) {
                        let _ = registry.deregister(&mut SourceFd(&sub.fd));
                        free.push(slot);
                        continue;
                    }
                    if slot == subs.len() {
                        subs.push(Some(sub));
                    } else {
                        subs[slot] = Some(sub);
                    }
                }
                continue;
            }
            let slot = event.token().0;
            let Some(sub) = subs.get_mut(slot).and_then(Option::as_mut) else { continue };
            sub.ws.get_mut().drained = Some(false);
            if !drain(&mut sub.ws, start, deliveries, sample_every) {
                let _ = registry.deregister(&mut SourceFd(&sub.fd));
                subs[slot] = None;
                free.push(slot);
            }
        }
    }
}

/// Reads and counts every frame a subscriber has, until its socket would
/// block; `false` once the connection is over (a close frame or an error).
fn drain(ws: &mut SyncWs, start: Instant, deliveries: &Deliveries, sample_every: u64) -> bool {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => on_text(t.as_str(), start, deliveries, None, sample_every),
            Ok(Message::Close(_)) => {
                // Send the close reply tungstenite queued, if the socket takes it.
                let _ = ws.flush();
                return false;
            }
            // tungstenite queues the pong to a ping itself.
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    // Pongs go out with the next read too; this sends them now if the socket
    // takes them (a flush with nothing queued makes no system call).
    match ws.flush() {
        Ok(()) => true,
        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

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

async fn join(ws: &mut crate::chat::Ws, room: &str) -> anyhow::Result<()> {
    ws.send(Message::Text(frame_text(ClientFrame::Join { room: room.into(), after: None }).into())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            if matches!(ServerFrame::parse(t.as_str()), Ok(ServerFrame::Joined { .. })) {
                return Ok(());
            }
        }
    }
    bail!("closed before joining {room}")
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let urls: Vec<String> = args.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
    let users = Users::new(&urls[0], "bench", 16).await?;
    let http = reqwest::Client::new();
    let pad = "x".repeat(args.bytes.saturating_sub(21));
    println!("chorusctl bench: {} nodes, {}-byte messages, {} s per phase", urls.len(), args.bytes, args.secs);

    if args.senders > 0 {
        let deliveries = Arc::new(Deliveries::default());
        let ack_lat = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(args.secs);
        let cpu = CpuMeter::start(&args.pids);
        let syncs = sync_buckets(&http, &urls).await;
        let mut tasks = Vec::new();
        for i in 0..args.senders {
            let mut ws = connect(&urls[i % urls.len()], users.token(i)).await?;
            join(&mut ws, &format!("load-{i}")).await?;
            let (mut tx, rx) = ws.split();
            let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(reader(rx, start, deliveries.clone(), Some(ack_tx), 1));
            let (ack_lat, pad) = (ack_lat.clone(), pad.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let sent = micros(start);
                    let f = ClientFrame::Send { room: format!("load-{i}"), id: n.into(), text: format!("{sent:020} {pad}") };
                    if tx.send(Message::Text(frame_text(f).into())).await.is_err() || ack_rx.recv().await.is_none() {
                        break;
                    }
                    lat.push(micros(start) - sent);
                    n += 1;
                }
                ack_lat.lock().await.extend(lat);
                let _ = tx.close().await;
            }));
        }
        for t in tasks {
            t.await?;
        }
        let mut lat = ack_lat.lock().await.clone();
        lat.sort_unstable();
        let cpu = cpu.report(lat.len() as u64, "acked message");
        let syncs = sync_report(&syncs, &sync_buckets(&http, &urls).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let dl = deliveries.latencies();
        println!("acks: {} senders", args.senders);
        println!("  acked messages/s {:.0}", lat.len() as f64 / args.secs as f64);
        println!("  ack latency ms   p50 {:.2}  p99 {:.2}  p99.9 {:.2}", pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999));
        println!("  send→deliver ms  p50 {:.2}  p99 {:.2}", pct(&dl, 0.5), pct(&dl, 0.99));
        println!("  CPU              {cpu}");
        println!("  log syncs        {syncs}");
    }

    if args.subscribers > 0 {
        let deliveries = Arc::new(Deliveries::default());
        let sample = (args.subscribers as u64 / 50).max(1);
        // A few threads read the subscribers (see `SubscriberReader`); each is
        // connected and joined with blocking I/O off the runtime, then handed over.
        let mut subscribers = SubscriberReader::spawn(args.reader_threads, start, deliveries.clone(), sample)?;
        for i in 0..args.subscribers {
            let (url, token) = (urls[i % urls.len()].clone(), users.token(i).to_string());
            subscribers.add(tokio::task::spawn_blocking(move || subscribe(&url, &token)).await??)?;
        }
        // The senders connect before the window opens, so that the first of
        // them do not send while the others are still connecting and joining.
        let mut senders = Vec::with_capacity(args.fanout_senders);
        for i in 0..args.fanout_senders {
            let mut ws = connect(&urls[i % urls.len()], users.token(i)).await?;
            join(&mut ws, "fanout-senders").await?;
            senders.push(ws);
        }
        let settled = settle(&deliveries).await;
        let before = deliveries.count.load(Ordering::Relaxed);
        let cpu = CpuMeter::start(&args.pids);
        let syncs = sync_buckets(&http, &urls).await;
        let deadline = Instant::now() + Duration::from_secs(args.secs);
        let sent = Arc::new(AtomicU64::new(0));
        // The fan-out senders' acks: their latency is the commit part of send→deliver.
        let fan_acks = Arc::new(Deliveries::default());
        let mut tasks = Vec::new();
        let senders_n = senders.len();
        for (i, ws) in senders.into_iter().enumerate() {
            let (mut tx, rx) = ws.split();
            let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(reader(rx, start, fan_acks.clone(), Some(ack_tx), u64::MAX));
            let (pad, sent) = (pad.clone(), sent.clone());
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
                    let f = ClientFrame::Send { room: "fanout".into(), id: format!("f{i}-{n}-{t}").into(), text: format!("{t:020} {pad}") };
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
        for t in tasks {
            t.await?;
        }
        // The rate counts what arrived within the window; the extra second only
        // lets in-flight deliveries add their latency samples.
        let got = deliveries.count.load(Ordering::Relaxed) - before;
        let cpu = cpu.report(got, "delivery");
        let syncs = sync_report(&syncs, &sync_buckets(&http, &urls).await);
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
        subscribers.finish()?;
    }

    if args.idle > 0 {
        let pid = args.pids.first().copied().context("--idle needs --pids to read the server's RSS")?;
        let before = rss_kib(pid)?;
        let mut conns = Vec::with_capacity(args.idle);
        for i in 0..args.idle {
            conns.push(connect(&urls[0], users.token(i)).await?);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid)?;
        println!("idle: {} connections on {}", args.idle, urls[0]);
        println!("  server RSS {} KiB → {} KiB: {:.1} KiB per connection", before, after, (after.saturating_sub(before)) as f64 / args.idle as f64);
        drop(conns);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_report_counts_the_window_s_slow_syncs_and_bounds_the_slowest() {
        let buckets = |counts: [u64; 4]| Some(vec![(0.0128, counts[0]), (0.0256, counts[1]), (0.0512, counts[2]), (f64::INFINITY, counts[3])]);
        let before = [buckets([10, 10, 10, 10]), buckets([5, 5, 5, 5]), buckets([0, 0, 0, 0]), None];
        let after = [buckets([20, 21, 23, 23]), buckets([5, 5, 5, 6]), buckets([0, 0, 0, 0]), buckets([1, 1, 1, 1])];
        assert_eq!(
            sync_report(&before, &after),
            "node 1: 13, 2 over 25.6 ms, slowest ≤ 51.2 ms; node 2: 1, 1 over 25.6 ms, slowest over 51 ms; node 3: none; node 4: not scraped"
        );
    }
}
