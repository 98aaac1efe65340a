//! The ephemeral plane: who is online where, and who is typing. Never in the Raft
//! log; nodes tell each other with best-effort signals, and a node that stops
//! sending heartbeats has its users dropped after [`PEER_TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How often a node repeats its full list of online users to its peers.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// A peer not heard from for this long is taken to be down, its users offline.
pub const PEER_TTL: Duration = Duration::from_secs(10);
/// A user's typing in one room reaches the room's members at most once per
/// this interval from each node: a typing indicator needs no more, and a user
/// sending `typing` in a loop must not fill everyone else's queues (which
/// would close their connections as slow consumers).
pub const TYPING_EVERY: Duration = Duration::from_secs(1);
/// Remembered `(room, user)` typing times beyond which stale ones are dropped.
const TYPING_REMEMBERED: usize = 10_000;

/// What nodes tell each other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PeerSignal {
    /// `user`'s first connection opened (`online`) or last one closed on `node`.
    Presence { node: u64, user: String, online: bool },
    /// Every user online on `node`, repeated every [`HEARTBEAT`].
    Heartbeat { node: u64, users: Vec<String> },
    Typing { room: String, user: String },
    /// An online user just joined `room`: its members should see them online.
    Joined { room: String, user: String },
}

/// What this node's WebSocket connections are told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalSignal {
    /// `user` came online anywhere in the cluster, or went offline everywhere.
    Presence { user: String, online: bool },
    Typing { room: String, user: String },
    /// `user`, online, joined `room`.
    Joined { room: String, user: String },
}

#[derive(Default)]
struct Inner {
    local: HashMap<String, usize>,
    remote: HashMap<u64, (HashSet<String>, Instant)>,
    /// When each `(room, user)` typing signal was last passed on.
    typing: HashMap<(String, String), Instant>,
}

impl Inner {
    fn online(&self, user: &str) -> bool {
        self.local.get(user).is_some_and(|n| *n > 0) || self.remote.values().any(|(users, _)| users.contains(user))
    }
}

pub struct Presence {
    node: u64,
    inner: Mutex<Inner>,
    local: broadcast::Sender<LocalSignal>,
}

impl Presence {
    pub fn new(node: u64) -> Self {
        Presence { node, inner: Mutex::default(), local: broadcast::channel(4096).0 }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LocalSignal> {
        self.local.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tell(&self, signal: LocalSignal) {
        let _ = self.local.send(signal);
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.lock().online(user)
    }

    /// Local users with at least one connection.
    pub fn local_users(&self) -> Vec<String> {
        self.lock().local.iter().filter(|(_, n)| **n > 0).map(|(u, _)| u.clone()).collect()
    }

    /// A connection of `user` opened here. Returns the signal to send peers when
    /// it is the user's first connection on this node.
    pub fn connected(&self, user: &str) -> Option<PeerSignal> {
        let mut inner = self.lock();
        let was_online = inner.online(user);
        let count = inner.local.entry(user.to_string()).or_default();
        *count += 1;
        let first_here = *count == 1;
        drop(inner);
        if !was_online {
            self.tell(LocalSignal::Presence { user: user.to_string(), online: true });
        }
        first_here.then(|| PeerSignal::Presence { node: self.node, user: user.to_string(), online: true })
    }

    /// A connection of `user` closed here; the peer signal when it was the last.
    pub fn disconnected(&self, user: &str) -> Option<PeerSignal> {
        let mut inner = self.lock();
        let count = inner.local.entry(user.to_string()).or_default();
        *count = count.saturating_sub(1);
        let last_here = *count == 0;
        if last_here {
            inner.local.remove(user);
        }
        let online = inner.online(user);
        drop(inner);
        if last_here && !online {
            self.tell(LocalSignal::Presence { user: user.to_string(), online: false });
        }
        last_here.then(|| PeerSignal::Presence { node: self.node, user: user.to_string(), online: false })
    }

    /// Whether a typing signal for `(room, user)` is passed on at `now`: the
    /// first in each [`TYPING_EVERY`] is, the rest are dropped.
    fn typing_passes(&self, room: &str, user: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        let key = (room.to_string(), user.to_string());
        if inner.typing.get(&key).is_some_and(|last| now.saturating_duration_since(*last) < TYPING_EVERY) {
            return false;
        }
        if inner.typing.len() >= TYPING_REMEMBERED {
            inner.typing.retain(|_, last| now.saturating_duration_since(*last) < TYPING_EVERY);
        }
        inner.typing.insert(key, now);
        true
    }

    /// A signal from a peer, or from a local connection (then the caller sends
    /// it on to peers only if this returns true: a typing signal within
    /// [`TYPING_EVERY`] of the last one for its room and user is dropped).
    pub fn receive(&self, signal: PeerSignal, now: Instant) -> bool {
        match signal {
            PeerSignal::Typing { room, user } => {
                if !self.typing_passes(&room, &user, now) {
                    return false;
                }
                self.tell(LocalSignal::Typing { room, user });
            }
            PeerSignal::Joined { room, user } => self.tell(LocalSignal::Joined { room, user }),
            PeerSignal::Presence { node, user, online } if node != self.node => {
                let mut inner = self.lock();
                let before = inner.online(&user);
                let entry = inner.remote.entry(node).or_insert_with(|| (HashSet::new(), now));
                entry.1 = now;
                if online {
                    entry.0.insert(user.clone());
                } else {
                    entry.0.remove(&user);
                }
                let after = inner.online(&user);
                drop(inner);
                if before != after {
                    self.tell(LocalSignal::Presence { user, online: after });
                }
            }
            PeerSignal::Heartbeat { node, users } if node != self.node => {
                let mut inner = self.lock();
                let users: HashSet<String> = users.into_iter().collect();
                let old = inner.remote.remove(&node).map(|(u, _)| u).unwrap_or_default();
                let changed: Vec<String> = old.symmetric_difference(&users).cloned().collect();
                let before: Vec<bool> = changed.iter().map(|u| inner.online(u) || old.contains(u)).collect();
                inner.remote.insert(node, (users, now));
                let after: Vec<(String, bool)> = changed.into_iter().map(|u| { let o = inner.online(&u); (u, o) }).collect();
                drop(inner);
                for ((user, online), was) in after.into_iter().zip(before) {
                    if online != was {
                        self.tell(LocalSignal::Presence { user, online });
                    }
                }
            }
            PeerSignal::Presence { .. } | PeerSignal::Heartbeat { .. } => {}
        }
        true
    }

    /// Forgets peers not heard from within [`PEER_TTL`]; their users go offline.
    pub fn expire(&self, now: Instant) {
        let mut inner = self.lock();
        let dead: Vec<u64> =
            inner.remote.iter().filter(|(_, (_, at))| now.duration_since(*at) > PEER_TTL).map(|(n, _)| *n).collect();
        let mut gone = Vec::new();
        for node in dead {
            if let Some((users, _)) = inner.remote.remove(&node) {
                gone.extend(users);
            }
        }
        let offline: Vec<String> = gone.into_iter().filter(|u| !inner.online(u)).collect::<HashSet<_>>().into_iter().collect();
        drop(inner);
        for user in offline {
            self.tell(LocalSignal::Presence { user, online: false });
        }
    }

    pub fn heartbeat(&self) -> PeerSignal {
        PeerSignal::Heartbeat { node: self.node, users: self.local_users() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut broadcast::Receiver<LocalSignal>) -> Vec<LocalSignal> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn p(user: &str, online: bool) -> LocalSignal {
        LocalSignal::Presence { user: user.into(), online }
    }

    #[test]
    fn first_and_last_connection_anywhere_flip_presence() {
        let pr = Presence::new(1);
        let mut rx = pr.subscribe();
        assert!(pr.connected("a").is_some());
        assert!(pr.connected("a").is_none(), "second connection here");
        assert_eq!(drain(&mut rx), vec![p("a", true)]);
        let now = Instant::now();
        pr.receive(PeerSignal::Presence { node: 2, user: "a".into(), online: true }, now);
        assert!(drain(&mut rx).is_empty(), "already online");
        assert!(pr.disconnected("a").is_none());
        assert!(pr.disconnected("a").is_some());
        assert!(drain(&mut rx).is_empty(), "still online on node 2");
        pr.receive(PeerSignal::Presence { node: 2, user: "a".into(), online: false }, now);
        assert_eq!(drain(&mut rx), vec![p("a", false)]);
    }

    #[test]
    fn a_silent_peer_s_users_expire() {
        let pr = Presence::new(1);
        let mut rx = pr.subscribe();
        let t0 = Instant::now();
        pr.receive(PeerSignal::Heartbeat { node: 3, users: vec!["b".into(), "c".into()] }, t0);
        let mut got = drain(&mut rx);
        got.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(got, vec![p("b", true), p("c", true)]);
        pr.expire(t0 + Duration::from_secs(5));
        assert!(pr.is_online("b"));
        pr.expire(t0 + PEER_TTL + Duration::from_secs(1));
        assert!(!pr.is_online("b") && !pr.is_online("c"));
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[test]
    fn typing_is_passed_on_once_a_second_per_room_and_user() {
        let pr = Presence::new(1);
        let mut rx = pr.subscribe();
        let t0 = Instant::now();
        let typing = |room: &str, user: &str| PeerSignal::Typing { room: room.into(), user: user.into() };
        assert!(pr.receive(typing("r", "a"), t0));
        for i in 1..100 {
            assert!(!pr.receive(typing("r", "a"), t0 + Duration::from_millis(i)), "coalesced");
        }
        // Another user, another room: their own allowance.
        assert!(pr.receive(typing("r", "b"), t0));
        assert!(pr.receive(typing("q", "a"), t0));
        assert!(pr.receive(typing("r", "a"), t0 + TYPING_EVERY));
        assert_eq!(drain(&mut rx).len(), 4);
    }
}
