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
//! [`round_delay`]: schedule::round_delay
//! [`TAKE_EVERY`]: round::TAKE_EVERY
//! [`TAKE_GAP`]: round::TAKE_GAP
//! [`Window`]: window::Window
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
//!
//! # Layout
//!
//! - `cursors`: the per-room cursor protocol, pure: what a delivery does to a
//!   connection's cursor (nothing, pass over, stale, write from frame n).
//! - `outbox`: [`Outbox`], a connection's socket and write queue, and
//!   [`ConnIo`], the connection as tungstenite sees it.
//! - `wire`: [`Wire`], the socket under an outbox, plain or TLS, written
//!   without blocking from any thread.
//! - `registry`: [`Registry`], the node's connections by room and by user.
//! - `window`: each room's recent messages and the gap-free groups cut from them.
//! - `schedule`: when rounds start ([`ROUND_INTERVAL`], the node's grid).
//! - `round`: the fan-out thread ([`start`]) and its delivery rounds.

mod cursors;
mod outbox;
mod registry;
mod round;
mod schedule;
mod window;
mod wire;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

pub use cursors::Cursor;
pub use outbox::{Closing, ConnIo, Outbox, OutboxEvent, OUTBOX_BYTES, OUTBOX_FRAMES, SESSION_REVOKED, SLOW_CONSUMER};
pub use registry::Registry;
pub use round::{start, FanoutMetrics};
pub use schedule::ROUND_INTERVAL;
pub use wire::Wire;

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
