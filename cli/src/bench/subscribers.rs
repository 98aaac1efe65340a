//! The fan-out's subscribers: each connected and joined with blocking I/O,
//! then read by a few OS threads polling their sockets with mio
//! ([`SubscriberReader`]).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use mio::unix::SourceFd;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::HandshakeError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use wire::{ClientFrame, ServerFrame};

use super::deliveries::{frame_text, on_text, Deliveries};

/// A fan-out subscriber's socket, under sync tungstenite.
///
/// Once non-blocking (`drained` is `Some`), a read that fills less than its
/// buffer has emptied the socket, so the next read answers WouldBlock without
/// a system call until the poller reports new data (tokio does the same):
/// draining a subscriber then costs one read(2), not a second one that only
/// finds EAGAIN.
pub(super) struct SubSocket {
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
pub(super) type SyncWs = tungstenite::WebSocket<SubSocket>;

/// Opens a fan-out subscriber's WebSocket and joins "fanout", with blocking std
/// I/O (run it off the async runtime). It matches `chat::connect` and [`join`](super::deliveries::join):
/// the same URL, a 2 KiB read buffer, TCP_NODELAY (as
/// `connect_async_with_config(.., true)` sets), the same join frames. The
/// socket is left non-blocking, for [`SubscriberReader`].
pub(super) fn subscribe(url: &str, token: &str) -> anyhow::Result<SyncWs> {
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
pub(super) struct SubscriberReader {
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
    pub(super) fn spawn(threads: usize, start: Instant, deliveries: Arc<Deliveries>, sample_every: u64) -> anyhow::Result<Self> {
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
    pub(super) fn add(&mut self, ws: SyncWs) -> anyhow::Result<()> {
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
    pub(super) fn finish(&mut self) -> anyhow::Result<()> {
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
/// [`reader`](super::deliveries::reader) does.
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

