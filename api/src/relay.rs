//! The signal relay: one task per node that writes presence and typing frames
//! ([`LocalSignal`]) to the connections that should see them.
//!
//! A signal concerns one room, or the rooms a user belongs to, so the relay
//! looks its connections up in the fan-out's [`Registry`](crate::fanout::Registry)
//! instead of waking every session to ask. A user's presence costs one
//! membership read per room with connections on this node, not one per
//! connection, and a look-up in an index of open direct-message rooms that
//! each batch builds once, not a pass over every local user.
//!
//! Signals go out in batches, like messages (see [`crate::fanout`]): a signal
//! to a quiet node goes out at once; under a stream of them, the relay writes
//! at most every [`RELAY_INTERVAL`], and each connection gets all of a batch's
//! frames for it with one write. That is what keeps a burst of joins to a big
//! room affordable. Each join tells every member already there, so 3,000
//! members joining one after the other make about 4.5 million presence frames
//! in all; written one per system call, they held both cores of a small
//! machine for most of a minute. Presence has seconds to arrive (SPEC §4), so
//! waiting part of an interval costs nothing a user would see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_store::{chat, ChatRead};
use wire::ServerFrame;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::fanout::{text_frame, Outbox};
use crate::presence::LocalSignal;
use crate::{App, ChatBackend};

/// Batches of signals are written at most this often while signals keep coming.
pub const RELAY_INTERVAL: Duration = Duration::from_millis(40);

/// Starts the node's signal relay. It ends with the node's presence plane, or
/// with the last other handle on `app`.
pub fn start<B: ChatBackend>(app: &Arc<App<B>>) {
    let mut signals = app.presence.subscribe();
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut last_batch: Option<Instant> = None;
        loop {
            let first = match signals.recv().await {
                Ok(sig) => sig,
                // Presence and typing are best-effort: a relay that fell behind skips some.
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "the signal relay fell behind");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if let Some(at) = last_batch {
                tokio::time::sleep_until(at + RELAY_INTERVAL).await;
            }
            last_batch = Some(Instant::now());
            let mut batch = vec![first];
            loop {
                match signals.try_recv() {
                    Ok(sig) => batch.push(sig),
                    Err(TryRecvError::Lagged(skipped)) => tracing::debug!(skipped, "the signal relay fell behind"),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            let Some(app) = app.upgrade() else { return };
            let mut frames = Frames::default();
            for sig in batch {
                frames.add(&app, sig);
            }
            frames.write();
        }
    });
}

/// Frames for one connection: (room, frame), in the order of their signals.
type ConnFrames = (Arc<Outbox>, Vec<(Arc<str>, Bytes)>);

/// A batch's frames, by connection.
#[derive(Default)]
struct Frames {
    /// Keyed by the connection's address, which its `Arc` keeps unique.
    by_conn: HashMap<usize, ConnFrames>,
    /// For presence, looked up once per batch: the rooms with a connection
    /// here, and the open direct-message rooms ([`DmIndex`]).
    local: Option<(Vec<String>, DmIndex)>,
}

/// Connections here that have a direct-message room open, by the room's other
/// user: where that user's presence goes.
type DmIndex = HashMap<String, Vec<(Arc<str>, Arc<Outbox>)>>;

fn dm_index<B: ChatBackend>(app: &App<B>) -> DmIndex {
    let mut index = DmIndex::new();
    for (user, conns) in app.registry.users() {
        for o in conns.iter() {
            for room in o.rooms() {
                let Some((a, b)) = chat::dm_participants(&room) else { continue };
                let other = if a == user { b } else { a };
                if other != user {
                    index.entry(other.to_string()).or_default().push((room.as_str().into(), o.clone()));
                }
            }
        }
    }
    index
}

impl Frames {
    fn for_conn(&mut self, o: &Arc<Outbox>, room: &Arc<str>, frame: &Bytes) {
        let key = Arc::as_ptr(o) as usize;
        self.by_conn.entry(key).or_insert_with(|| (o.clone(), Vec::new())).1.push((room.clone(), frame.clone()));
    }

    /// Every connection in `room` but those of `except`.
    fn for_room<B: ChatBackend>(&mut self, app: &App<B>, room: &str, except: &str, frame: &Bytes) {
        // One name shared by the room's connections, not a copy each.
        let name: Arc<str> = room.into();
        for o in app.registry.targets(room).iter().flat_map(|l| l.iter()) {
            if o.user != except {
                self.for_conn(o, &name, frame);
            }
        }
    }

    /// Adds the frames of one signal. Whether each connection is in the room
    /// is checked when it is written ([`Outbox::push_signals`]).
    fn add<B: ChatBackend>(&mut self, app: &App<B>, sig: LocalSignal) {
        match sig {
            LocalSignal::Typing { room, user } => {
                let frame = text_frame(ServerFrame::Typing { room: room.clone(), user: user.clone() }.to_text());
                self.for_room(app, &room, &user, &frame);
            }
            LocalSignal::Joined { room, user } => {
                let frame = text_frame(ServerFrame::Presence { room: room.clone(), user: user.clone(), online: true }.to_text());
                self.for_room(app, &room, &user, &frame);
            }
            LocalSignal::Presence { user, online } => {
                let frame = |room: &str| text_frame(ServerFrame::Presence { room: room.to_string(), user: user.clone(), online }.to_text());
                let (rooms, dms) = self.local.take().unwrap_or_else(|| (app.registry.rooms(), dm_index(app)));
                let reader = app.backend.reader();
                for room in &rooms {
                    match reader.is_member(room, &user) {
                        Ok(true) => self.for_room(app, room, &user, &frame(room)),
                        Ok(false) => {}
                        // Presence is best effort; a read that fails is said,
                        // not taken for "not a member".
                        Err(e) => tracing::warn!(room = %room, error = %e, "presence not relayed: cannot read the room's members"),
                    }
                }
                // Direct-message rooms have no room list: the other users'
                // connections that have their room with `user` open.
                let mut dm_frames: HashMap<&str, Bytes> = HashMap::new();
                for (dm, o) in dms.get(&user).into_iter().flatten() {
                    let f = dm_frames.entry(&**dm).or_insert_with(|| frame(dm)).clone();
                    self.for_conn(o, dm, &f);
                }
                self.local = Some((rooms, dms));
            }
        }
    }

    fn write(self) {
        for (o, frames) in self.by_conn.into_values() {
            o.push_signals(&frames);
        }
    }
}
