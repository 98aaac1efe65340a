//! Live delivery: one thread per node writes each applied message to the
//! sockets of every local connection that should get it.
//!
//! A room with a thousand local subscribers costs a thousand socket writes per
//! delivery round; what this module saves is everything around them. Each
//! message is serialised and framed once, and the fan-out thread writes the
//! same bytes to each socket itself, instead of waking a thousand session tasks
//! that would each take the message from a channel, frame it and write it.
//!
//! Deliveries go out in rounds, and each round writes each connection what it
//! lacks with one write, so a connection in a busy room gets several frames
//! per TCP segment. A message applied while the cluster is quiet goes out at
//! once; under sustained load rounds start every [`ROUND_INTERVAL`] (never
//! closer than half of it), so a connection gets one write per interval. Those
//! rounds keep to a grid of the node's own, offset from the other nodes' (see
//! [`round_delay`]), so nodes that share a machine take turns at its cores.
//! The per-segment cost (the system call, and on loopback the receiver's TCP
//! processing, all on this thread) is most of the cost of a delivery, so
//! batching is what lets one room reach a few thousand subscribers at tens of
//! messages per second on a small machine.
//!
//! A round over a thousand connections takes a good part of the interval, so
//! it keeps taking in messages as it goes (every [`TAKE_EVERY`] connections,
//! at most every [`TAKE_GAP`]): the connections it has yet to write get them
//! in this round, and the ones it already wrote get them in the next, which is
//! then due without waiting for a new message. For that, a room's messages
//! stay in its [`Window`] for the round that offered them and the next. So a
//! message waits about one interval for any connection, not an interval plus
//! the length of a round.
//!
//! Each connection's outgoing side is an [`Outbox`]: its socket, the frames the
//! socket has not taken yet, and per room the last seq it was sent. Everything
//! that writes to a connection (the fan-out thread, the session task, and
//! tungstenite's control frames through [`ConnIo`]) holds the outbox lock for
//! the whole frame, so frames never interleave and go out in the order they
//! were written. A frame is written straight to the socket when nothing is
//! queued ahead of it; otherwise it waits in the queue, which the session task
//! drains when the socket is writable. The queue is bounded: a live frame that
//! does not fit closes the connection with 4008 ("slow consumer").
//!
//! Gap-free delivery rests on each room's [`Cursor`]. The fan-out writes a
//! message only to a cursor that is live and whose `last` is the seq just
//! before it; an older seq was already sent; a newer one means something was
//! missed (a snapshot was installed, or the fan-out lagged), so the cursor goes
//! stale and the session fills the gap from storage. A session replaying a room
//! from storage keeps the cursor not live and advances `last` as it sends.
//! While the cursor is not live, the fan-out marks it `skipped` whenever it
//! passes over a newer message (or loses messages). Before each read of
//! storage the session clears that mark ([`Outbox::replay_from`]); when a read
//! finds nothing after `last`, it makes the cursor live, under the outbox lock,
//! only if the mark is still clear ([`Outbox::go_live`]), and reads again
//! otherwise. Messages reach storage before they reach the fan-out, so a
//! message the read missed reached the fan-out after the mark was cleared: if
//! the fan-out passed over it before the switch, the mark stops the switch; if
//! after, the cursor was live and got it. Storage is never read under the lock.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use raft_store::chat::{self, Message};
use raft_store::state_machine::Delivery;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

use crate::http::wire_message;

/// Frames queued to one connection before it counts as a slow consumer.
pub const OUTBOX_FRAMES: usize = 1024;
/// Close code for a connection whose queue overflowed.
pub const SLOW_CONSUMER: u16 = 4008;

/// Why and how a session ends, once decided: close code and reason.
pub type Closing = Option<(u16, &'static str)>;

/// Where a connection stands in one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last seq sent on this connection.
    pub last: u64,
    /// The fan-out may send the next seq; otherwise the session is replaying
    /// the room from storage.
    pub live: bool,
    /// While not live: the fan-out passed over a newer message (or lost some)
    /// since the session last started a read of storage, which therefore may
    /// not hold it ([`Outbox::replay_from`], [`Outbox::go_live`]).
    skipped: bool,
}

/// What the session task has to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum OutboxEvent {
    /// The socket can take nothing more: the client left or a write failed.
    Gone,
    /// The connection is to be closed with this code and reason.
    Closing(u16, &'static str),
    /// Rooms whose cursor went stale: replay them from storage.
    Stale,
}

/// The outgoing side of one WebSocket connection.
pub struct Outbox {
    stream: TcpStream,
    /// The user the connection belongs to.
    pub user: String,
    state: Mutex<OutState>,
    /// The session task, woken when the fan-out leaves it something to do.
    session: AtomicWaker,
}

#[derive(Default)]
struct OutState {
    /// Chunks of whole frames (at the front, maybe the rest of one), with how
    /// many frames each holds, that the socket has not taken.
    queue: VecDeque<(Bytes, usize)>,
    /// Bytes of the front chunk already written.
    written: usize,
    /// Frames in `queue`, held to [`OUTBOX_FRAMES`].
    frames: usize,
    rooms: HashMap<String, Cursor>,
    /// Some cursor went stale since the session last looked.
    stale: bool,
    /// Direct messages stamped (`ts`) at or after this reach the connection
    /// in DM rooms it has no cursor in: the cluster clock read once the
    /// connection was registered ([`Outbox::receive_dms_since`]); `None` before.
    dm_since: Option<u64>,
    /// The fan-out lost messages since the session last looked, so a DM room
    /// this connection has no cursor in may hold some it never got.
    dm_lost: bool,
    /// Set once; the first reason wins.
    closing: Closing,
    gone: bool,
}

/// What became of a frame handed to the outbox.
#[derive(PartialEq, Eq)]
enum Written {
    /// The socket took all of it.
    Sent,
    /// Some or all of it waits in the queue.
    Queued,
    /// The socket is unusable.
    Gone,
}

impl OutState {
    fn close_with(&mut self, code: u16, reason: &'static str) {
        if self.closing.is_none() {
            self.closing = Some((code, reason));
        }
    }
}

impl Outbox {
    pub fn new(stream: TcpStream, user: String) -> Arc<Self> {
        Arc::new(Outbox { stream, user, state: Mutex::new(OutState::default()), session: AtomicWaker::new() })
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding the lock leaves the state usable: every update
        // under it is a single field write or a queue push.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `chunk` (`frames` whole frames) now if nothing is queued ahead of
    /// it, else queues it.
    fn write(&self, st: &mut OutState, chunk: Bytes, frames: usize) -> Written {
        if st.gone {
            return Written::Gone;
        }
        // Whoever writes also moves the queue on, so it drains even while the
        // session task is busy elsewhere (awaiting a commit, say).
        self.try_drain(st);
        if st.gone {
            return Written::Gone;
        }
        if !st.queue.is_empty() {
            st.queue.push_back((chunk, frames));
            st.frames += frames;
            return Written::Queued;
        }
        let frame = chunk;
        let mut done = 0;
        while done < frame.len() {
            match self.stream.try_write(&frame[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    st.gone = true;
                    return Written::Gone;
                }
            }
        }
        if done == frame.len() {
            return Written::Sent;
        }
        st.queue.push_back((frame, frames));
        st.frames += frames;
        st.written = done;
        Written::Queued
    }

    /// Writes queued chunks as far as the socket takes them now, without
    /// registering for its readiness (the fan-out thread has no task to wake).
    fn try_drain(&self, st: &mut OutState) {
        while let Some((front, frames)) = st.queue.front() {
            let frames = *frames;
            match self.stream.try_write(&front[st.written..]) {
                Ok(0) => return,
                Ok(n) => {
                    st.written += n;
                    if st.written == front.len() {
                        st.queue.pop_front();
                        st.written = 0;
                        st.frames -= frames;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    st.gone = true;
                    return;
                }
            }
        }
    }

    /// Drives queued frames into the socket until it is empty (ready) or
    /// would block (pending, woken when the socket is writable).
    fn poll_drain(&self, st: &mut OutState, cx: &mut Context<'_>) -> Poll<()> {
        while !st.gone {
            let Some((front, frames)) = st.queue.front() else { return Poll::Ready(()) };
            let frames = *frames;
            if self.stream.poll_write_ready(cx).is_pending() {
                return Poll::Pending;
            }
            match self.stream.try_write(&front[st.written..]) {
                Ok(n) if n > 0 => {
                    st.written += n;
                    if st.written == front.len() {
                        st.queue.pop_front();
                        st.written = 0;
                        st.frames -= frames;
                    }
                }
                Ok(_) => return Poll::Pending,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => st.gone = true,
            }
        }
        Poll::Ready(())
    }

    /// For the session task: drains the queue as far as the socket allows and
    /// reports what needs acting on; pending (and woken) while nothing does.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<OutboxEvent> {
        self.session.register(cx.waker());
        let mut st = self.lock();
        let _ = self.poll_drain(&mut st, cx);
        if st.gone {
            return Poll::Ready(OutboxEvent::Gone);
        }
        if let Some((code, reason)) = st.closing {
            return Poll::Ready(OutboxEvent::Closing(code, reason));
        }
        if std::mem::take(&mut st.stale) {
            return Poll::Ready(OutboxEvent::Stale);
        }
        Poll::Pending
    }

    /// Queues a frame from the session (an answer, a presence signal). A full
    /// queue closes the connection as a slow consumer; false if it is closing.
    pub fn push(&self, frame: Bytes) -> bool {
        let mut st = self.lock();
        self.push_locked(&mut st, frame)
    }

    fn push_locked(&self, st: &mut OutState, frame: Bytes) -> bool {
        if st.closing.is_some() || st.gone {
            return false;
        }
        if st.frames >= OUTBOX_FRAMES {
            st.close_with(SLOW_CONSUMER, "slow consumer");
            return false;
        }
        self.write(st, frame, 1) != Written::Gone
    }

    /// Whether the queue has room for another frame; if not, registers the
    /// task to be woken when the socket can take more.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        let _ = self.poll_drain(&mut st, cx);
        if st.gone || st.closing.is_some() || st.frames < OUTBOX_FRAMES {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Writes `frames` (each a signal for the members of its room), those of
    /// rooms the connection is in, with one write (so none goes ahead of its
    /// room's `joined`); wakes the session if that leaves it something to do.
    /// A queue that cannot take them all closes the connection as a slow
    /// consumer, as a delivery would.
    pub fn push_signals(&self, frames: &[(Arc<str>, Bytes)]) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closing.is_some() || st.gone {
            return;
        }
        let mine: Vec<&Bytes> = frames.iter().filter(|(room, _)| st.rooms.contains_key(&**room)).map(|(_, f)| f).collect();
        if mine.is_empty() {
            return;
        }
        let was_queued = !st.queue.is_empty();
        if was_queued && st.frames + mine.len() > OUTBOX_FRAMES {
            st.close_with(SLOW_CONSUMER, "slow consumer");
        } else {
            let chunk = match mine.as_slice() {
                [one] => (*one).clone(),
                many => Bytes::from(many.iter().flat_map(|f| f.iter().copied()).collect::<Vec<u8>>()),
            };
            self.write(st, chunk, mine.len());
        }
        let wake = st.closing.is_some() || st.gone || (!was_queued && !st.queue.is_empty());
        drop(guard);
        if wake {
            self.session.wake();
        }
    }

    /// Sends a replayed message of `room` and moves its cursor to `seq`.
    pub fn push_replayed(&self, room: &str, seq: u64, frame: Bytes) -> bool {
        let mut st = self.lock();
        if !st.rooms.contains_key(room) || !self.push_locked(&mut st, frame) {
            return false;
        }
        if let Some(c) = st.rooms.get_mut(room) {
            c.last = seq;
        }
        true
    }

    /// Delivers what this connection lacks of `group`, a run of messages of
    /// one room applied on this node, with one write. `dm`: the connection's
    /// user is one of the two users of this direct-message room, which
    /// reaches them without a join; without a cursor in the room, the
    /// connection gets the messages stamped since it was registered (see
    /// [`Outbox::receive_dms_since`]). Returns the frames written.
    fn deliver(&self, group: &Group, dm: bool) -> u64 {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closing.is_some() || st.gone {
            return 0;
        }
        let cursor = match st.rooms.get(&group.room) {
            Some(c) => *c,
            None if dm => {
                // `ts` never decreases within a room, so these are the
                // group's tail: the cursor starts just before it.
                let Some(since) = st.dm_since else { return 0 };
                let Some(i) = group.ts.iter().position(|&ts| ts >= since) else { return 0 };
                Cursor { last: group.first + i as u64 - 1, live: true, skipped: false }
            }
            None => return 0,
        };
        if cursor.last >= group.last() {
            return 0;
        }
        if !cursor.live {
            // The session is replaying the room: it must read storage again
            // before it goes live.
            if let Some(c) = st.rooms.get_mut(&group.room) {
                c.skipped = true;
            }
            return 0;
        }
        if cursor.last + 1 < group.first {
            st.rooms.insert(group.room.clone(), Cursor { live: false, ..cursor });
            st.stale = true;
            drop(guard);
            self.session.wake();
            return 0;
        }
        // Frames already sent (from storage, by a replay) are skipped.
        let skip = (cursor.last + 1 - group.first) as usize;
        let frames = group.starts.len() - skip;
        if !st.queue.is_empty() && st.frames + frames > OUTBOX_FRAMES {
            st.close_with(SLOW_CONSUMER, "slow consumer");
            drop(guard);
            self.session.wake();
            return 0;
        }
        st.rooms.insert(group.room.clone(), Cursor { last: group.last(), live: true, skipped: false });
        let written = self.write(st, group.bytes.slice(group.starts[skip]..), frames);
        // The session drains a queue it knows about (it waits for the socket to
        // be writable); it learns of a new one here.
        let newly_queued = written == Written::Queued && st.queue.len() == 1;
        drop(guard);
        if written == Written::Gone || newly_queued {
            self.session.wake();
        }
        if written == Written::Gone {
            0
        } else {
            frames as u64
        }
    }

    /// Every room's cursor goes stale: storage may hold messages that were
    /// never delivered one by one. So may a DM room the connection has no
    /// cursor in, which the session looks for ([`Outbox::take_dm_lost`]).
    fn reset(&self) {
        let mut st = self.lock();
        st.dm_lost = st.dm_since.is_some();
        if st.rooms.is_empty() && !st.dm_lost {
            return;
        }
        st.rooms.values_mut().for_each(|c| {
            c.live = false;
            c.skipped = true;
        });
        st.stale = true;
        drop(st);
        self.session.wake();
    }

    /// From now on, direct messages stamped at or after `since` reach this
    /// connection in DM rooms it has no cursor in. The session calls this
    /// once the connection is registered with the fan-out, with the cluster
    /// clock it then reads: every message applied after that read is stamped
    /// at or after it (the clock never goes back), and the fan-out offers
    /// each message in its round and the next, so none applied after the
    /// read can pass this connection by.
    pub fn receive_dms_since(&self, since: u64) {
        self.lock().dm_since = Some(since);
    }

    /// Whether the fan-out lost messages since the last call, with the stamp
    /// from which direct messages reach this connection: the session then
    /// opens each DM room of its user that holds messages from then on and
    /// has no cursor here ([`Outbox::open_dm`]).
    pub fn take_dm_lost(&self) -> Option<u64> {
        let mut st = self.lock();
        let lost = std::mem::take(&mut st.dm_lost);
        st.dm_since.filter(|_| lost)
    }

    /// Gives direct-message room `room` a cursor after `last`, for a replay
    /// from storage, unless it has one (the fan-out may have delivered to it
    /// since the session read storage). Returns whether it made one.
    pub fn open_dm(&self, room: &str, last: u64) -> bool {
        let mut st = self.lock();
        if st.closing.is_some() || st.gone || st.rooms.contains_key(room) {
            return false;
        }
        st.rooms.insert(room.to_string(), Cursor { last, live: false, skipped: true });
        true
    }

    pub fn close_with(&self, code: u16, reason: &'static str) {
        self.lock().close_with(code, reason);
        self.session.wake();
    }

    pub fn closing(&self) -> Closing {
        self.lock().closing
    }

    pub fn is_gone(&self) -> bool {
        self.lock().gone
    }

    /// The cursor of `room`, if the connection is in it.
    pub fn cursor(&self, room: &str) -> Option<Cursor> {
        self.lock().rooms.get(room).copied()
    }

    /// Sends `joined` and starts (or restarts) `room` at `last`, not live (the
    /// session replays it), under one lock: no live frame of the room can come
    /// between the two. False if the connection is closing.
    pub fn start_room(&self, room: &str, last: u64, joined: Bytes) -> bool {
        let mut st = self.lock();
        if !self.push_locked(&mut st, joined) {
            return false;
        }
        st.rooms.insert(room.to_string(), Cursor { last, live: false, skipped: false });
        true
    }

    /// Ready once everything queued has gone to the socket (or it failed).
    pub fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        self.poll_drain(&mut st, cx)
    }

    pub fn leave_room(&self, room: &str) {
        self.lock().rooms.remove(room);
    }

    pub fn rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Rooms whose cursor is not live.
    pub fn stale_rooms(&self) -> Vec<String> {
        self.lock().rooms.iter().filter(|(_, c)| !c.live).map(|(r, _)| r.clone()).collect()
    }

    /// The cursor of `room`, for a replay that is about to read storage after
    /// `last`: from here on, the fan-out records any newer message it passes
    /// over (see [`Outbox::go_live`]).
    pub fn replay_from(&self, room: &str) -> Option<Cursor> {
        let mut st = self.lock();
        let c = st.rooms.get_mut(room)?;
        c.skipped = false;
        Some(*c)
    }

    /// Makes `room` live, once a read of storage begun after
    /// [`Outbox::replay_from`] found nothing after `last`, unless the fan-out
    /// has passed over a newer message since: that one may have reached
    /// storage after the read, so the replay must read again. Storage is not
    /// read under the lock. Returns whether the room is live.
    pub fn go_live(&self, room: &str, last: u64) -> bool {
        let mut st = self.lock();
        let Some(c) = st.rooms.get_mut(room) else { return true };
        if c.live {
            return true;
        }
        if c.skipped || c.last != last {
            return false;
        }
        c.live = true;
        true
    }

    /// For the end of a session: drops every cursor and every queued frame but
    /// the one partly written, which must go out whole for the close frame
    /// after it to be read as a frame.
    pub fn wind_down(&self) {
        let mut st = self.lock();
        st.rooms.clear();
        let keep = usize::from(st.written > 0);
        st.queue.truncate(keep);
        st.frames = st.queue.iter().map(|(_, n)| n).sum();
    }
}

/// The connection as tungstenite sees it: reads come from the socket, writes
/// (control frames: pongs, close) go through the outbox, in order with
/// everything else written to the connection.
pub struct ConnIo(pub Arc<Outbox>);

impl AsyncRead for ConnIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.stream.poll_read_ready(cx))?;
            match self.0.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = self.0.lock();
        // Control frames are not counted against the queue bound (the close
        // frame must get through after a slow-consumer overflow), so they wait
        // for an empty queue instead: tungstenite then keeps at most one pong
        // pending, however many pings a client that does not read sends.
        if self.0.poll_drain(&mut st, cx).is_pending() {
            return Poll::Pending;
        }
        match self.0.write(&mut st, Bytes::copy_from_slice(data), 0) {
            Written::Gone => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Written::Sent | Written::Queued => Poll::Ready(Ok(data.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.0.lock();
        ready!(self.0.poll_drain(&mut st, cx));
        if st.gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the session drops its outbox.
        self.poll_flush(cx)
    }
}

/// A text frame as a server sends it (unmasked), ready for any connection.
pub fn text_frame(text: String) -> Bytes {
    let frame = Frame::message(Bytes::from(text), OpCode::Data(Data::Text), true);
    let mut out = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail: it only writes to memory.
    if let Err(e) = frame.format(&mut out) {
        tracing::error!(error = %e, "cannot format a WebSocket frame");
    }
    Bytes::from(out)
}

/// The connections of one node, by room and by user.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Members>,
}

/// The fan-out (and the relay) take a list by cloning its Arc and write to its
/// sockets without holding the registry lock. A change edits a list in place
/// when nobody holds it ([`Arc::make_mut`]) and copies it otherwise, so that a
/// round always sees the list as it was when the round took it, and a burst of
/// n joins or disconnects in one room costs n scans of the list, not n copies.
#[derive(Default)]
struct Members {
    rooms: HashMap<String, Arc<Vec<Arc<Outbox>>>>,
    users: HashMap<String, Arc<Vec<Arc<Outbox>>>>,
}

fn add(lists: &mut HashMap<String, Arc<Vec<Arc<Outbox>>>>, key: &str, o: &Arc<Outbox>) {
    let list = lists.entry(key.to_string()).or_default();
    if list.iter().any(|x| Arc::ptr_eq(x, o)) {
        return;
    }
    Arc::make_mut(list).push(o.clone());
}

fn remove(lists: &mut HashMap<String, Arc<Vec<Arc<Outbox>>>>, key: &str, o: &Arc<Outbox>) {
    let Some(list) = lists.get_mut(key) else { return };
    let Some(at) = list.iter().position(|x| Arc::ptr_eq(x, o)) else { return };
    if list.len() == 1 {
        lists.remove(key);
    } else {
        // The order of a list is of no consequence.
        Arc::make_mut(list).swap_remove(at);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Members> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connect(&self, o: &Arc<Outbox>) {
        add(&mut self.lock().users, &o.user, o);
    }

    pub fn join(&self, room: &str, o: &Arc<Outbox>) {
        add(&mut self.lock().rooms, room, o);
    }

    pub fn leave(&self, room: &str, o: &Arc<Outbox>) {
        remove(&mut self.lock().rooms, room, o);
    }

    /// Forgets a connection: its user's list and each room in `rooms`.
    pub fn disconnect(&self, o: &Arc<Outbox>, rooms: &[String]) {
        let mut m = self.lock();
        remove(&mut m.users, &o.user, o);
        for room in rooms {
            remove(&mut m.rooms, room, o);
        }
    }

    /// The connections that get what is sent to `room`: the room's list, or
    /// for a direct-message room, which has none, the two users' connections.
    pub fn targets(&self, room: &str) -> Vec<Arc<Vec<Arc<Outbox>>>> {
        match chat::dm_participants(room) {
            Some((a, b)) => [self.user(a), self.user(b)].into_iter().flatten().collect(),
            None => self.room(room).into_iter().collect(),
        }
    }

    /// The rooms with a connection here (direct-message rooms aside).
    pub fn rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Each user with a connection here, and their connections.
    pub fn users(&self) -> Vec<(String, Arc<Vec<Arc<Outbox>>>)> {
        self.lock().users.iter().map(|(u, l)| (u.clone(), l.clone())).collect()
    }

    fn room(&self, room: &str) -> Option<Arc<Vec<Arc<Outbox>>>> {
        self.lock().rooms.get(room).cloned()
    }

    fn user(&self, user: &str) -> Option<Arc<Vec<Arc<Outbox>>>> {
        self.lock().users.get(user).cloned()
    }

    /// Whether any connection is open.
    fn any(&self) -> bool {
        !self.lock().users.is_empty()
    }

    fn all(&self) -> Vec<Arc<Outbox>> {
        self.lock().users.values().flat_map(|l| l.iter().cloned()).collect()
    }
}

/// Figures the fan-out keeps.
#[derive(Clone)]
pub struct FanoutMetrics {
    pub deliveries: Counter,
    pub lag: Histogram,
    /// Messages taken in while a round was writing.
    pub late: Counter,
    /// Each round's wall time, in seconds.
    pub rounds: Histogram,
}

/// Consecutive messages of one room, framed once and laid end to end.
struct Group {
    /// The seq of the first; the others follow without a gap.
    first: u64,
    bytes: Bytes,
    /// Where each message's frame starts in `bytes`.
    starts: Vec<usize>,
    /// Each message's `ts`.
    ts: Vec<u64>,
    room: String,
}

impl Group {
    fn last(&self) -> u64 {
        self.first + self.starts.len() as u64 - 1
    }
}

/// A message applied on this node, framed once.
struct Recent {
    /// The round that first offered it.
    round: u64,
    seq: u64,
    ts: u64,
    frame: Bytes,
}

/// One room's messages of this round and the last, in apply order, and the
/// groups cut from them (built when first wanted).
#[derive(Default)]
struct Window {
    messages: Vec<Recent>,
    groups: Option<Arc<Vec<Group>>>,
}

impl Window {
    fn groups(&mut self, room: &str) -> Arc<Vec<Group>> {
        if let Some(g) = &self.groups {
            return g.clone();
        }
        // Runs of consecutive seqs: (first, bytes, starts, ts).
        type Run = (u64, Vec<u8>, Vec<usize>, Vec<u64>);
        let mut runs: Vec<Run> = Vec::new();
        for m in &self.messages {
            let follows = runs.last().is_some_and(|(first, _, starts, _)| first + starts.len() as u64 == m.seq);
            if !follows {
                runs.push((m.seq, Vec::new(), Vec::new(), Vec::new()));
            }
            if let Some((_, bytes, starts, ts)) = runs.last_mut() {
                starts.push(bytes.len());
                bytes.extend_from_slice(&m.frame);
                ts.push(m.ts);
            }
        }
        let groups: Vec<Group> = runs
            .into_iter()
            .map(|(first, bytes, starts, ts)| Group { first, bytes: Bytes::from(bytes), starts, ts, room: room.to_string() })
            .collect();
        let groups = Arc::new(groups);
        self.groups = Some(groups.clone());
        groups
    }
}

/// Rounds of deliveries start at most this often under load; see the module docs.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(50);
/// Within a round, messages applied meanwhile are taken in after every this
/// many connections of a room, if [`TAKE_GAP`] has passed since the last look.
const TAKE_EVERY: usize = 16;
const TAKE_GAP: Duration = Duration::from_millis(1);

/// Microseconds since the Unix epoch: the clock that every process on a
/// machine reads alike, so nodes sharing it can keep their rounds apart.
fn wall_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Where in each [`ROUND_INTERVAL`] node `node`'s rounds start under load, in
/// µs: the fractional part of `node` times the golden ratio, which spreads
/// any run of node ids fairly evenly over the interval (1, 2, 3 land at 30,
/// 11 and 42 ms of 50).
fn round_phase(node: u64) -> u64 {
    let golden = 0.618_033_988_749_895_f64;
    ((node as f64 * golden).fract() * ROUND_INTERVAL.as_micros() as f64) as u64
}

/// How long to wait before a round, at wall time `now` (µs), when the last
/// one started at `last`: nothing after a quiet spell of a whole interval (a
/// message to a quiet cluster goes out at once); otherwise until the first
/// start on this node's grid (`phase` into each interval) that is at least
/// half an interval after the last round. Under load that is exactly one
/// interval after it, on the grid.
///
/// Why a grid: the nodes of a cluster apply each message at about the same
/// moment, so rounds timed only from their messages start together on every
/// node. Where nodes share a machine's cores (a local cluster, a test), their
/// rounds then share the cores for their whole length, and every round's last
/// connection is written late; with the nodes' rounds spread over the
/// interval, each round has the cores more to itself and ends sooner. Nodes
/// on machines of their own lose nothing: their rounds just start on a grid.
/// The wait never exceeds one and a half intervals, whatever the wall clock does.
fn round_delay(now: u64, last: Option<u64>, phase: u64) -> Duration {
    let interval = ROUND_INTERVAL.as_micros() as u64;
    let Some(last) = last else { return Duration::ZERO };
    if now >= last.saturating_add(interval) {
        return Duration::ZERO;
    }
    let earliest = now.max(last + interval / 2);
    // The first time at or after `earliest` that is `phase` into an interval.
    let start = earliest + (phase % interval + interval - earliest % interval) % interval;
    Duration::from_micros((start - now).min(interval + interval / 2))
}

/// Starts the fan-out thread of node `node`. It ends, closing every
/// connection with 1001, when the node's deliveries end.
pub fn start(node: u64, deliveries: broadcast::Receiver<Delivery>, registry: Arc<Registry>, metrics: FanoutMetrics) -> io::Result<()> {
    std::thread::Builder::new().name("chorus-fanout".into()).spawn(move || {
        let mut fanout = Fanout {
            from: deliveries,
            registry: &registry,
            metrics: &metrics,
            phase: round_phase(node),
            round: 0,
            rooms: HashMap::new(),
            owed: false,
            closed: false,
            new_rooms: Vec::new(),
            took: Instant::now(),
        };
        fanout.run();
    })?;
    Ok(())
}

/// The fan-out thread's state.
struct Fanout<'a> {
    from: broadcast::Receiver<Delivery>,
    registry: &'a Registry,
    metrics: &'a FanoutMetrics,
    /// Where in each interval this node's rounds start under load, in µs
    /// ([`round_delay`]).
    phase: u64,
    /// Rounds so far.
    round: u64,
    /// Rooms with messages this round or the last.
    rooms: HashMap<String, Window>,
    /// Messages came during the last round, after connections that should get
    /// them had been written: the next round is due without a new message.
    owed: bool,
    /// The node's deliveries have ended.
    closed: bool,
    /// Rooms that got their first recent message since the round began.
    new_rooms: Vec<String>,
    /// When the round last took in new messages.
    took: Instant,
}

impl Fanout<'_> {
    fn run(&mut self) {
        // When the last round started, in µs of wall time.
        let mut last_round: Option<u64> = None;
        while !self.closed {
            let mut first = None;
            if !self.owed {
                // Nothing pending: wait for the next message.
                match self.from.blocking_recv() {
                    Ok(Delivery::Message(m)) => first = Some(m),
                    Ok(Delivery::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => self.reset(),
                    Err(broadcast::error::RecvError::Closed) => self.closed = true,
                }
                if first.is_none() {
                    continue;
                }
            }
            let delay = round_delay(wall_micros(), last_round, self.phase);
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            last_round = Some(wall_micros());
            self.round += 1;
            let round = self.round;
            // Last round's messages stay one more round, for the connections
            // the last round wrote before they came.
            self.rooms.retain(|_, w| {
                let before = w.messages.len();
                w.messages.retain(|m| m.round + 1 >= round);
                if w.messages.len() != before {
                    w.groups = None;
                }
                !w.messages.is_empty()
            });
            if let Some(m) = first {
                self.offer(m);
            }
            self.take(None);
            let began = Instant::now();
            if self.deliver_round() {
                self.metrics.rounds.observe(began.elapsed().as_secs_f64());
            }
        }
        self.registry.all().iter().for_each(|o| o.close_with(1001, "node shutting down"));
    }

    /// Storage may now hold messages that never came here one by one (a
    /// snapshot was installed, or this thread fell behind): every connection
    /// fills its rooms from storage.
    fn reset(&self) {
        self.registry.all().iter().for_each(|o| o.reset());
    }

    /// Adds a message to this round's, framed once.
    fn offer(&mut self, m: Arc<Message>) {
        let now = crate::now_ms();
        self.metrics.lag.observe(now.saturating_sub(m.ts_ms) as f64 / 1000.0);
        let frame = text_frame(wire::ServerFrame::Message(wire_message(&m)).to_text());
        let w = match self.rooms.entry(m.room.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.new_rooms.push(e.key().clone());
                e.insert(Window::default())
            }
        };
        w.messages.push(Recent { round: self.round, seq: m.seq, ts: m.ts_ms, frame });
        w.groups = None;
    }

    /// Takes in everything applied since the last look, without waiting.
    /// Returns how many messages came, and whether one came for `current`.
    fn take(&mut self, current: Option<&str>) -> (u64, bool) {
        let (mut any, mut here) = (0, false);
        while !self.closed {
            match self.from.try_recv() {
                Ok(Delivery::Message(m)) => {
                    any += 1;
                    here |= current == Some(m.room.as_str());
                    self.offer(m);
                }
                Ok(Delivery::Reset) | Err(broadcast::error::TryRecvError::Lagged(_)) => self.reset(),
                Err(broadcast::error::TryRecvError::Closed) => self.closed = true,
                Err(broadcast::error::TryRecvError::Empty) => break,
            }
        }
        (any, here)
    }

    /// Writes each connection what it lacks of the rooms' recent messages,
    /// taking in new ones as it goes. False if the node had no connection to
    /// write to.
    fn deliver_round(&mut self) -> bool {
        self.owed = false;
        // Every room is visited from `self.rooms`; only rooms new during the
        // round are taken from here.
        self.new_rooms.clear();
        if !self.registry.any() {
            // Nobody to deliver to on this node.
            return false;
        }
        let mut visit: Vec<String> = self.rooms.keys().cloned().collect();
        self.took = Instant::now();
        let mut sent = 0;
        let mut next = 0;
        while let Some(room) = visit.get(next).cloned() {
            next += 1;
            let dm = chat::dm_participants(&room).is_some();
            // For a DM room, both users' connections, joined or not.
            let lists = self.registry.targets(&room);
            let Some(w) = self.rooms.get_mut(&room) else { continue };
            let mut groups = w.groups(&room);
            for (n, o) in lists.iter().flat_map(|l| l.iter()).enumerate() {
                if n % TAKE_EVERY == TAKE_EVERY - 1 && self.took.elapsed() >= TAKE_GAP {
                    self.took = Instant::now();
                    let (late, here) = self.take(Some(&room));
                    // Connections this round has written lack them.
                    self.owed |= late > 0;
                    self.metrics.late.inc_by(late);
                    if here {
                        if let Some(w) = self.rooms.get_mut(&room) {
                            groups = w.groups(&room);
                        }
                    }
                    visit.append(&mut self.new_rooms);
                }
                for g in groups.iter() {
                    sent += o.deliver(g, dm);
                }
            }
        }
        self.metrics.deliveries.inc_by(sent);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::exponential_buckets;
    use std::io::Read;

    /// Reads unmasked server text frames off `sock` until `count` have come.
    fn read_texts(sock: std::net::TcpStream, count: usize) -> io::Result<Vec<String>> {
        read_texts_until(sock, |texts| texts.len() >= count)
    }

    /// Reads unmasked server text frames off `sock` until `done` says so.
    fn read_texts_until(mut sock: std::net::TcpStream, done: impl Fn(&[String]) -> bool) -> io::Result<Vec<String>> {
        let mut buf = Vec::new();
        let mut texts = Vec::new();
        let mut chunk = [0u8; 8192];
        while !done(&texts) {
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                if buf.len() < 2 {
                    break;
                }
                assert_eq!(buf[0], 0x81, "a final text frame");
                let (len, header) = match buf[1] {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    126 => break,
                    n if n < 126 => (n as usize, 2),
                    n => panic!("unexpected length byte {n}"),
                };
                if buf.len() < header + len {
                    break;
                }
                texts.push(String::from_utf8_lossy(&buf[header..header + len]).into_owned());
                buf.drain(..header + len);
            }
        }
        Ok(texts)
    }

    /// Once everything `o` queued has gone to the socket, the first `count`
    /// texts its client reads.
    async fn flushed_texts(o: &Outbox, client: std::net::TcpStream, count: usize) -> io::Result<Vec<String>> {
        std::future::poll_fn(|cx| o.poll_flushed(cx)).await;
        tokio::task::spawn_blocking(move || read_texts(client, count)).await.map_err(io::Error::other)?
    }

    /// The `seq` of each message frame in `texts`.
    fn seqs(texts: &[String]) -> Vec<u64> {
        texts.iter().map(|t| serde_json::from_str::<serde_json::Value>(t).ok().and_then(|v| v["seq"].as_u64()).unwrap_or(0)).collect()
    }

    /// An outbox of `user` over one end of a loopback connection, and the
    /// client's end, which gives up reading after 10 s.
    fn connection(user: &str) -> io::Result<(Arc<Outbox>, std::net::TcpStream)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (server, _) = listener.accept()?;
        server.set_nonblocking(true)?;
        Ok((Outbox::new(TcpStream::from_std(server)?, user.into()), client))
    }

    #[tokio::test]
    async fn a_batch_of_signals_is_one_chunk_in_order_and_only_for_rooms_the_connection_is_in() -> io::Result<()> {
        let (o, client) = connection("ann")?;
        // Before the connection is in a room, its signals are dropped.
        o.push_signals(&[("a".into(), text_frame("early".into()))]);
        assert!(o.start_room("a", 0, text_frame("joined a".into())));
        let frames: Vec<(Arc<str>, Bytes)> =
            [("a", "one"), ("b", "not in b"), ("a", "two"), ("a", "three")].iter().map(|(r, t)| ((*r).into(), text_frame(t.to_string()))).collect();
        let queued = o.lock().queue.len();
        o.push_signals(&frames);
        assert!(o.lock().queue.len() <= queued + 1, "the batch was split");
        // What the socket did not take at once, the session drains.
        let texts = flushed_texts(&o, client, 4).await?;
        assert_eq!(texts, ["joined a", "one", "two", "three"]);
        Ok(())
    }

    /// Messages `seqs` of `room` as the fan-out groups them; message n reads
    /// "mn" and is stamped 10 n.
    fn group(room: &str, seqs: std::ops::RangeInclusive<u64>) -> Group {
        let (first, mut bytes, mut starts) = (*seqs.start(), Vec::new(), Vec::new());
        for seq in seqs.clone() {
            starts.push(bytes.len());
            bytes.extend_from_slice(&text_frame(format!("m{seq}")));
        }
        Group { first, bytes: Bytes::from(bytes), starts, ts: seqs.map(|s| 10 * s).collect(), room: room.into() }
    }

    #[tokio::test]
    async fn a_connection_gets_the_direct_messages_stamped_since_it_was_registered() -> io::Result<()> {
        let (o, client) = connection("ann")?;
        let dm = "dm:ann:bob";
        // Until the session has read the clock, no direct message goes out.
        assert_eq!(o.deliver(&group(dm, 1..=3), true), 0);
        o.receive_dms_since(20);
        // Messages 2 and 3 are stamped 20 and 30: the connection gets them,
        // and from then on has a cursor in the room.
        assert_eq!(o.deliver(&group(dm, 1..=3), true), 2);
        assert_eq!(o.deliver(&group(dm, 2..=4), true), 1);
        assert_eq!(o.cursor(dm).map(|c| (c.last, c.live)), Some((4, true)));
        // Rooms the connection is not one of the two users of stay shut.
        assert_eq!(o.deliver(&group("r", 1..=1), false), 0);
        // Lost messages: the session is told to look for DM rooms to replay,
        // once, and opens only those without a cursor.
        assert_eq!(o.take_dm_lost(), None);
        o.reset();
        assert_eq!(o.take_dm_lost(), Some(20));
        assert_eq!(o.take_dm_lost(), None);
        assert!(!o.open_dm(dm, 0), "a room with a cursor was opened again");
        assert!(o.open_dm("dm:ann:cy", 7));
        assert_eq!(o.replay_from("dm:ann:cy").map(|c| (c.last, c.live)), Some((7, false)));
        // A room to be replayed takes nothing from the fan-out until it is live.
        assert_eq!(o.deliver(&group("dm:ann:cy", 9..=9), true), 0);
        let texts = flushed_texts(&o, client, 3).await?;
        assert_eq!(texts, ["m2", "m3", "m4"]);
        Ok(())
    }

    #[tokio::test]
    async fn a_replay_goes_live_only_if_the_fan_out_passed_nothing_over_since_its_read() -> io::Result<()> {
        let (o, client) = connection("ann")?;
        assert!(o.start_room("r", 5, text_frame("joined r".into())));
        // A read of storage begins; meanwhile message 6 is applied, and the
        // fan-out passes it over.
        assert_eq!(o.replay_from("r").map(|c| (c.last, c.live)), Some((5, false)));
        assert_eq!(o.deliver(&group("r", 6..=6), false), 0);
        // The read found nothing after 5, but 6 may have reached storage after it began.
        assert!(!o.go_live("r", 5), "went live past a message it never sent");
        // The next read finds 6. A group it already has is no skip.
        assert_eq!(o.replay_from("r").map(|c| c.last), Some(5));
        assert!(o.push_replayed("r", 6, text_frame("m6".into())));
        assert_eq!(o.deliver(&group("r", 5..=6), false), 0);
        assert!(o.go_live("r", 6));
        assert_eq!(o.deliver(&group("r", 7..=7), false), 1);
        // A fan-out that lost messages sends the room back to storage, and a
        // replay that read before that must read again.
        assert_eq!(o.replay_from("r").map(|c| (c.last, c.live)), Some((7, true)));
        o.reset();
        assert!(!o.go_live("r", 7));
        assert_eq!(o.replay_from("r").map(|c| (c.last, c.live)), Some((7, false)));
        assert!(o.go_live("r", 7));
        let texts = flushed_texts(&o, client, 3).await?;
        assert_eq!(texts, ["joined r", "m6", "m7"]);
        Ok(())
    }

    #[tokio::test]
    async fn a_list_taken_for_a_round_stays_as_it_was_while_connections_come_and_go() -> io::Result<()> {
        let ((a, _ca), (b, _cb), (c, _cc)) = (connection("u0")?, connection("u1")?, connection("u2")?);
        let (a, b, c) = (&a, &b, &c);
        let ptrs = |lists: Vec<Arc<Vec<Arc<Outbox>>>>| {
            let mut p: Vec<*const Outbox> = lists.iter().flat_map(|l| l.iter().map(Arc::as_ptr)).collect();
            p.sort_unstable();
            p
        };
        let sorted = |mut p: Vec<*const Outbox>| {
            p.sort_unstable();
            p
        };
        let registry = Registry::default();
        registry.join("r", a);
        registry.join("r", b);
        registry.join("r", b);
        let taken = registry.targets("r");
        registry.join("r", c);
        registry.leave("r", a);
        // The round goes on with the list it took; the registry has moved on.
        assert_eq!(ptrs(taken), sorted(vec![Arc::as_ptr(a), Arc::as_ptr(b)]));
        assert_eq!(ptrs(registry.targets("r")), sorted(vec![Arc::as_ptr(b), Arc::as_ptr(c)]));
        // Nobody holds the list now: edits are made in place.
        let before = registry.room("r").map(|l| Arc::as_ptr(&l));
        registry.join("r", a);
        assert_eq!(registry.room("r").map(|l| Arc::as_ptr(&l)), before);
        registry.disconnect(b, &["r".to_string()]);
        registry.leave("r", c);
        registry.leave("r", a);
        assert!(registry.targets("r").is_empty());
        assert!(registry.rooms().is_empty());
        Ok(())
    }

    #[test]
    fn rounds_keep_to_the_node_grid_under_load_and_go_at_once_after_a_quiet_spell() {
        let interval = ROUND_INTERVAL.as_micros() as u64;
        let phase = round_phase(2);
        assert!(phase < interval);
        // Phases of neighbouring ids are spread out.
        let mut phases: Vec<u64> = (1..=3).map(round_phase).collect();
        phases.sort_unstable();
        assert!(phases.windows(2).all(|p| p[1] - p[0] >= interval / 5), "{phases:?}");
        let grid = 1_000 * interval + phase;
        // The first round, and any after a quiet interval, start at once.
        assert_eq!(round_delay(grid + 7, None, phase), Duration::ZERO);
        assert_eq!(round_delay(grid + interval, Some(grid), phase), Duration::ZERO);
        // Under load, a round on the grid is followed one interval later.
        assert_eq!(round_delay(grid + 1, Some(grid), phase), Duration::from_micros(interval - 1));
        assert_eq!(round_delay(grid + interval - 1, Some(grid), phase), Duration::from_micros(1));
        // An off-grid round (after a quiet spell) is followed by the first
        // grid point at least half an interval later.
        let off = grid + 3 * interval / 4;
        let next = round_delay(off + 1, Some(off), phase).as_micros() as u64 + off + 1;
        assert_eq!(next % interval, phase);
        assert!(next >= off + interval / 2 && next < off + interval / 2 + interval, "{next} after {off}");
        // A wall clock that stepped back never makes a round wait long.
        assert_eq!(round_delay(grid - 10 * interval, Some(grid), phase), ROUND_INTERVAL * 3 / 2);
    }

    /// A fan-out thread for node 1 over `registry`: the sender of its
    /// deliveries, and its figures.
    fn fan_out(registry: &Arc<Registry>) -> io::Result<(broadcast::Sender<Delivery>, FanoutMetrics)> {
        let (tx, rx) = broadcast::channel(1 << 16);
        let metrics = FanoutMetrics {
            deliveries: Counter::default(),
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 4)),
            late: Counter::default(),
            rounds: Histogram::new(exponential_buckets(0.001, 2.0, 4)),
        };
        start(1, rx, registry.clone(), metrics.clone())?;
        Ok((tx, metrics))
    }

    /// Messages keep coming while rounds write to many connections, so many
    /// come mid-round: each connection must still get every message, once, in
    /// order, whether it was written before or after one came.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_that_come_mid_round_reach_every_connection_once_in_order() -> io::Result<()> {
        const CONNECTIONS: usize = 300;
        const MESSAGES: u64 = 600;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let registry = Arc::new(Registry::default());
        let mut readers = Vec::new();
        for i in 0..CONNECTIONS {
            let client = std::net::TcpStream::connect(listener.local_addr()?)?;
            // A connection that misses a message waits for it in vain: fail instead.
            client.set_read_timeout(Some(Duration::from_secs(20)))?;
            let (server, _) = listener.accept()?;
            server.set_nonblocking(true)?;
            let o = Outbox::new(TcpStream::from_std(server)?, format!("u{i}"));
            assert!(o.start_room("r", 0, text_frame("joined".into())));
            assert_eq!(o.replay_from("r").map(|c| c.last), Some(0));
            assert!(o.go_live("r", 0));
            registry.connect(&o);
            registry.join("r", &o);
            readers.push((o, std::thread::spawn(move || read_texts(client, 1 + MESSAGES as usize))));
        }
        let (tx, metrics) = fan_out(&registry)?;
        let text = |seq: u64| format!("m{seq}");
        for seq in 1..=MESSAGES {
            let m = Message { room: "r".into(), seq, client_id: format!("{seq}"), from: "s".into(), text: text(seq), ts_ms: crate::now_ms() };
            tx.send(Delivery::Message(Arc::new(m))).map_err(|_| io::Error::other("the fan-out has stopped"))?;
            tokio::time::sleep(Duration::from_micros(250)).await;
        }
        for (i, (_outbox, reader)) in readers.into_iter().enumerate() {
            let texts = tokio::task::spawn_blocking(move || reader.join()).await.map_err(io::Error::other)?.map_err(|_| io::Error::other("reader panicked"))??;
            assert_eq!(texts[0], "joined");
            assert_eq!(seqs(&texts[1..]), (1..=MESSAGES).collect::<Vec<_>>(), "connection {i}");
        }
        assert_eq!(metrics.deliveries.get(), CONNECTIONS as u64 * MESSAGES);
        assert!(metrics.late.get() > 0, "no message came mid-round, so the test did not test that");
        drop(tx);
        Ok(())
    }
    /// Direct messages keep coming, many of them mid-round, while connections
    /// of one of the two users keep opening, none of them joined: each gets
    /// every message applied after it was registered, once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_opening_while_direct_messages_flow_get_every_later_one_once_in_order() -> io::Result<()> {
        const CONNECTIONS: usize = 120;
        const MESSAGES: u64 = 600;
        let room = chat::dm_room("ann", "bob");
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let registry = Arc::new(Registry::default());
        let (tx, metrics) = fan_out(&registry)?;
        // Reads frames until message MESSAGES; returns their seqs.
        let read_until_last = |sock| read_texts_until(sock, |texts| texts.last().is_some_and(|t| seqs(std::slice::from_ref(t)) == [MESSAGES])).map(|t| seqs(&t));
        // (outbox, reader, the last seq sent before the connection was registered)
        let mut readers = Vec::new();
        let mut sent = 0;
        while sent < MESSAGES {
            if sent % (MESSAGES / CONNECTIONS as u64) == 0 && readers.len() < CONNECTIONS {
                let client = std::net::TcpStream::connect(listener.local_addr()?)?;
                client.set_read_timeout(Some(Duration::from_secs(20)))?;
                let (server, _) = listener.accept()?;
                server.set_nonblocking(true)?;
                let o = Outbox::new(TcpStream::from_std(server)?, "ann".into());
                registry.connect(&o);
                // What a session does next: read the clock, here the stamp of
                // the last message applied (message n is stamped n).
                o.receive_dms_since(sent);
                readers.push((o, std::thread::spawn(move || read_until_last(client)), sent));
            }
            sent += 1;
            let m = Message { room: room.clone(), seq: sent, client_id: format!("{sent}"), from: "bob".into(), text: "hi".into(), ts_ms: sent };
            tx.send(Delivery::Message(Arc::new(m))).map_err(|_| io::Error::other("the fan-out has stopped"))?;
            tokio::time::sleep(Duration::from_micros(250)).await;
        }
        for (i, (_outbox, reader, before)) in readers.into_iter().enumerate() {
            let seqs = tokio::task::spawn_blocking(move || reader.join()).await.map_err(io::Error::other)?.map_err(|_| io::Error::other("reader panicked"))??;
            // Message `before` was applied before the registration, but is
            // stamped with the clock read after it: it may come or not.
            let from = seqs.first().copied().unwrap_or(0);
            assert!(from <= before + 1 && from + 1 >= before.max(1), "connection {i} registered after {before} began at {from}");
            assert_eq!(seqs, (from..=MESSAGES).collect::<Vec<_>>(), "connection {i}");
        }
        assert!(metrics.late.get() > 0, "no message came mid-round, so the test did not test that");
        drop(tx);
        Ok(())
    }
}
