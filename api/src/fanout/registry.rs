//! The node's connections, by room and by user: whom a room's messages and
//! signals go to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use raft_store::chat;

use super::outbox::Outbox;

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

    pub(super) fn room(&self, room: &str) -> Option<Arc<Vec<Arc<Outbox>>>> {
        self.lock().rooms.get(room).cloned()
    }

    pub(super) fn user(&self, user: &str) -> Option<Arc<Vec<Arc<Outbox>>>> {
        self.lock().users.get(user).cloned()
    }

    /// Whether any connection is open.
    pub(super) fn any(&self) -> bool {
        !self.lock().users.is_empty()
    }

    pub(super) fn all(&self) -> Vec<Arc<Outbox>> {
        self.lock().users.values().flat_map(|l| l.iter().cloned()).collect()
    }
}
