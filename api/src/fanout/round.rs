//! The fan-out thread: it takes each applied message off the node's
//! deliveries, frames it once, and in rounds writes each connection what it
//! lacks of every room's recent messages.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use raft_store::chat::{self, Message};
use raft_store::lifecycle::Kind;
use wire::ServerFrame;
use raft_store::state_machine::Delivery;
use tokio::sync::broadcast;

use super::registry::Registry;
use super::schedule::{round_delay, round_phase, wall_micros};
use super::{text_frame, SESSION_REVOKED};
use super::window::{Group, Recent, Window};
use crate::ops::entry_frame_text;

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

/// Within a round, messages applied meanwhile are taken in after every this
/// many connections of a room, if [`TAKE_GAP`] has passed since the last look.
pub(super) const TAKE_EVERY: usize = 16;
pub(super) const TAKE_GAP: Duration = Duration::from_millis(1);

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
                    Ok(Delivery::Revoked { user, epoch }) => self.revoke(&user, epoch),
                    Ok(Delivery::KeysDropped { oldest }) => self.drop_keys(oldest),
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
            self.rooms.retain(|_, w| w.expire(round));
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

    /// Closes the user's connections opened with a token the revocation to
    /// `epoch` refuses (a connection opened since, with a newer token, stays).
    fn revoke(&self, user: &str, epoch: u64) {
        for o in self.registry.user(user).iter().flat_map(|list| list.iter()) {
            if o.epoch < epoch {
                o.close_with(SESSION_REVOKED, "session revoked");
            }
        }
    }

    /// Closes every connection opened with a token signed by a key older than
    /// `oldest`: those keys were dropped.
    fn drop_keys(&self, oldest: u32) {
        for o in self.registry.all().iter().filter(|o| o.key_version < oldest) {
            o.close_with(SESSION_REVOKED, "signing key dropped");
        }
    }

    /// Adds a message to this round's, framed once.
    fn offer(&mut self, m: Arc<Message>) {
        let now = crate::now_ms();
        self.metrics.lag.observe(now.saturating_sub(m.ts_ms) as f64 / 1000.0);
        let frame = text_frame(entry_frame_text(&m));
        let w = match self.rooms.entry(m.room.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.new_rooms.push(e.key().clone());
                e.insert(Window::default())
            }
        };
        w.push(Recent { round: self.round, seq: m.seq, ts: m.ts_ms, frame });
        if let Kind::Room(action) = &m.kind {
            if let Some(user) = action.removes() {
                let groups = w.groups(&m.room);
                self.remove(&m.room, user, &groups);
            }
        }
    }

    /// `user` was kicked or banned from `room`: each of their connections in
    /// the room gets what it lacks of the room's recent entries, the kick
    /// among them and nothing after it, then a `removed` frame, and is out
    /// of the room.
    fn remove(&self, room: &str, user: &str, groups: &[Group]) {
        let removed = text_frame(ServerFrame::Removed { room: room.to_string() }.to_text());
        for o in self.registry.user(user).iter().flat_map(|list| list.iter()) {
            if o.cursor(room).is_none() {
                continue;
            }
            for g in groups {
                o.deliver(g, false);
            }
            o.leave_room(room);
            self.registry.leave(room, o);
            o.push(removed.clone());
        }
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
                Ok(Delivery::Revoked { user, epoch }) => self.revoke(&user, epoch),
                Ok(Delivery::KeysDropped { oldest }) => self.drop_keys(oldest),
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
