//! Each connection's outgoing side: its socket, the bounded queue of frames
//! the socket has not taken yet, and its cursor in each room. Everything that
//! writes to a connection holds the outbox lock for the whole frame.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::cursors::{self, Cursor, Dm, Step};
use crate::auth::Claims;
use super::window::Group;
use super::wire::Wire;

/// Frames queued to one connection before it counts as a slow consumer.
pub const OUTBOX_FRAMES: usize = 1024;
/// Bytes queued to one connection before it counts as a slow consumer, unless
/// the node says otherwise (`--max-outbox-bytes`).
pub const OUTBOX_BYTES: usize = 4 << 20;
/// Close code for a connection whose queue overflowed.
pub const SLOW_CONSUMER: u16 = 4008;

/// The close code of a connection whose token was revoked: log in again.
pub const SESSION_REVOKED: u16 = 4001;

/// Why and how a session ends, once decided: close code and reason.
pub type Closing = Option<(u16, &'static str)>;

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
    wire: Wire,
    /// The user the connection belongs to.
    pub user: String,
    /// The session epoch of the token it was opened with: a revocation to a
    /// higher epoch closes it ([`SESSION_REVOKED`]).
    pub epoch: u64,
    /// The version of the key that signed that token: dropping the key
    /// closes the connection too.
    pub key_version: u32,
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
    /// Bytes of the chunks in `queue` (the front one whole), held to `max_bytes`.
    bytes: usize,
    /// The most bytes the queue may hold before the connection counts as a
    /// slow consumer. Whatever a client asks for or is sent, this is what one
    /// connection can make the node hold for it.
    max_bytes: usize,
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
    /// The fan-out lost messages and the session has not finished reading
    /// from storage which DM rooms hold some since `dm_since`
    /// ([`Outbox::finish_dm_scan`]): a DM room without a cursor is then
    /// entered from storage, never by the fan-out.
    dm_scan_pending: bool,
    /// DM rooms without a cursor that the fan-out had messages for while
    /// `dm_scan_pending`: each waits for the session to place it
    /// ([`Outbox::open_dm`]) and takes nothing from the fan-out until then.
    dm_unplaced: BTreeSet<String>,
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
    /// The wire took all of it, but holds some back for the socket (sealed
    /// TLS records): the session must drain it as it would a queue.
    Held,
    /// The socket is unusable.
    Gone,
}

impl OutState {
    fn close_with(&mut self, code: u16, reason: &'static str) {
        if self.closing.is_none() {
            self.closing = Some((code, reason));
        }
    }

    /// Whether `frames` more frames of `bytes`, queued behind what waits
    /// already, would pass [`OUTBOX_FRAMES`] or the byte bound. Frames that
    /// can go straight to the socket (nothing queued ahead) always may try.
    fn overflows(&self, frames: usize, bytes: usize) -> bool {
        !self.queue.is_empty() && (self.frames + frames > OUTBOX_FRAMES || self.bytes + bytes > self.max_bytes)
    }

    /// Whether the queue is at either bound.
    fn full(&self) -> bool {
        self.frames >= OUTBOX_FRAMES || self.bytes >= self.max_bytes
    }

    fn enqueue(&mut self, chunk: Bytes, frames: usize) {
        self.bytes += chunk.len();
        self.frames += frames;
        self.queue.push_back((chunk, frames));
    }

    /// The socket took `n` more bytes of the front chunk.
    fn wrote_front(&mut self, n: usize) {
        let Some((front, frames)) = self.queue.front() else { return };
        let (len, frames) = (front.len(), *frames);
        self.written += n;
        if self.written == len {
            self.queue.pop_front();
            self.written = 0;
            self.frames -= frames;
            self.bytes -= len;
        }
    }
}

impl Outbox {
    /// The outbox of a connection on `wire` (a socket, or TLS on one) of
    /// `user` (with a token of session `epoch`), whose queue may hold
    /// `max_bytes` (and [`OUTBOX_FRAMES`] frames).
    pub fn new(wire: impl Into<Wire>, claims: Claims, max_bytes: usize) -> Arc<Self> {
        let state = OutState { max_bytes, ..OutState::default() };
        let Claims { user, epoch, key_version, .. } = claims;
        let wire = wire.into();
        Arc::new(Outbox { wire, user, epoch, key_version, state: Mutex::new(state), session: AtomicWaker::new() })
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
            st.enqueue(chunk, frames);
            return Written::Queued;
        }
        let frame = chunk;
        let mut done = 0;
        while done < frame.len() {
            match self.wire.try_write(&frame[done..]) {
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
            return if self.wire.holds_output() { Written::Held } else { Written::Sent };
        }
        st.enqueue(frame, frames);
        st.written = done;
        Written::Queued
    }

    /// Writes queued chunks as far as the socket takes them now, without
    /// registering for its readiness (the fan-out thread has no task to wake).
    fn try_drain(&self, st: &mut OutState) {
        while let Some((front, _)) = st.queue.front() {
            match self.wire.try_write(&front[st.written..]) {
                Ok(0) => return,
                Ok(n) => st.wrote_front(n),
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
            let Some((front, _)) = st.queue.front() else {
                return match self.wire.poll_flush_held(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) => Poll::Ready(()),
                    Poll::Ready(Err(_)) => {
                        st.gone = true;
                        Poll::Ready(())
                    }
                };
            };
            if self.wire.poll_write_ready(cx).is_pending() {
                return Poll::Pending;
            }
            match self.wire.try_write(&front[st.written..]) {
                Ok(n) if n > 0 => st.wrote_front(n),
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
        if st.full() {
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
        if st.gone || st.closing.is_some() || !st.full() {
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
        let mut held = false;
        if st.overflows(mine.len(), mine.iter().map(|f| f.len()).sum()) {
            st.close_with(SLOW_CONSUMER, "slow consumer");
        } else {
            let chunk = match mine.as_slice() {
                [one] => (*one).clone(),
                many => Bytes::from(many.iter().flat_map(|f| f.iter().copied()).collect::<Vec<u8>>()),
            };
            held = self.write(st, chunk, mine.len()) == Written::Held;
        }
        let wake = st.closing.is_some() || st.gone || held || (!was_queued && !st.queue.is_empty());
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
    pub(super) fn deliver(&self, group: &Group, dm: bool) -> u64 {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closing.is_some() || st.gone {
            return 0;
        }
        let entry = match st.dm_since {
            _ if !dm => Dm::NotMine,
            Some(since) if st.dm_scan_pending || st.dm_unplaced.contains(&group.room) => Dm::Place(since),
            since => Dm::Since(since),
        };
        let skip = match cursors::decide(st.rooms.get(&group.room).copied(), entry, group) {
            Step::Nothing => return 0,
            Step::Place => {
                // The session reads it from storage: in the scan it is in, or
                // once the scan finishes ([`Outbox::finish_dm_scan`]).
                st.dm_unplaced.insert(group.room.clone());
                return 0;
            }
            Step::PassOver => {
                if let Some(c) = st.rooms.get_mut(&group.room) {
                    c.pass_over();
                }
                return 0;
            }
            Step::Stale(cursor) => {
                st.rooms.insert(group.room.clone(), cursor);
                st.stale = true;
                drop(guard);
                self.session.wake();
                return 0;
            }
            Step::WriteFrom(skip) => skip,
        };
        let frames = group.starts.len() - skip;
        if st.overflows(frames, group.bytes.len() - group.starts[skip]) {
            st.close_with(SLOW_CONSUMER, "slow consumer");
            drop(guard);
            self.session.wake();
            return 0;
        }
        st.rooms.insert(group.room.clone(), Cursor::sent(group.last()));
        let written = self.write(st, group.bytes.slice(group.starts[skip]..), frames);
        // The session drains a queue it knows about (it waits for the socket to
        // be writable); it learns of a new one here.
        let newly_queued = (written == Written::Queued && st.queue.len() == 1) || written == Written::Held;
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
    pub(super) fn reset(&self) {
        let mut st = self.lock();
        st.dm_lost = st.dm_since.is_some();
        st.dm_scan_pending |= st.dm_lost;
        if st.rooms.is_empty() && !st.dm_lost {
            return;
        }
        st.rooms.values_mut().for_each(Cursor::lose);
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
        st.dm_unplaced.remove(room);
        if st.closing.is_some() || st.gone || st.rooms.contains_key(room) {
            return false;
        }
        st.rooms.insert(room.to_string(), Cursor::opened_after_loss(last));
        true
    }

    /// The session has read every DM room of its user from storage after a
    /// loss ([`Outbox::take_dm_lost`]). Unless the fan-out lost messages
    /// again meanwhile, DM rooms without a cursor are entered by the fan-out
    /// again. Returns the rooms the fan-out had messages for during the
    /// scan that are still without a cursor: the session reads where each
    /// is entered and opens it ([`Outbox::open_dm`]); until then they take
    /// nothing from the fan-out.
    pub fn finish_dm_scan(&self) -> Vec<String> {
        let mut st = self.lock();
        if !st.dm_lost {
            st.dm_scan_pending = false;
        }
        st.dm_unplaced.iter().cloned().collect()
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
        st.rooms.insert(room.to_string(), Cursor::replaying(last));
        true
    }

    /// The end of a connection once the close frame is out: sends FIN, then
    /// reads and drops whatever the client still sends until it closes its
    /// side or `linger` passes. Dropping a socket with unread data makes the
    /// kernel answer with a reset, and a reset can destroy the close frame
    /// (and the frames before it) in the client's receive buffer before the
    /// client reads them; a client that sent more than it read would then
    /// never learn why it was closed.
    pub async fn linger(&self, linger: std::time::Duration) {
        if self.wire.shutdown_write().is_err() {
            return;
        }
        let sock = self.wire.socket();
        let mut sink = [0u8; 4096];
        let drain = async {
            loop {
                if sock.readable().await.is_err() {
                    return;
                }
                match sock.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(linger, drain).await;
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
        c.begin_read();
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
        c.go_live(last)
    }

    /// How many chunks wait in the queue.
    #[cfg(test)]
    pub(super) fn queued_chunks(&self) -> usize {
        self.lock().queue.len()
    }

    /// How many bytes wait in the queue.
    #[cfg(test)]
    pub(super) fn queued_bytes(&self) -> usize {
        self.lock().bytes
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
        st.bytes = st.queue.iter().map(|(c, _)| c.len()).sum();
    }
}

/// The connection as tungstenite sees it: reads come from the socket, writes
/// (control frames: pongs, close) go through the outbox, in order with
/// everything else written to the connection.
pub struct ConnIo(pub Arc<Outbox>);

impl AsyncRead for ConnIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.wire.poll_read(cx, buf)
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
            Written::Sent | Written::Queued | Written::Held => Poll::Ready(Ok(data.len())),
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
