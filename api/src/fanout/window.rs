//! Each room's recent messages, framed once, and the runs of consecutive
//! seqs cut from them that a round writes to the room's connections.

use std::sync::Arc;

use bytes::Bytes;

/// Consecutive messages of one room, framed once and laid end to end.
pub(super) struct Group {
    /// The seq of the first; the others follow without a gap.
    pub(super) first: u64,
    pub(super) bytes: Bytes,
    /// Where each message's frame starts in `bytes`.
    pub(super) starts: Vec<usize>,
    /// Each message's `ts`.
    pub(super) ts: Vec<u64>,
    pub(super) room: String,
}

impl Group {
    pub(super) fn last(&self) -> u64 {
        self.first + self.starts.len() as u64 - 1
    }
}

/// A message applied on this node, framed once.
pub(super) struct Recent {
    /// The round that first offered it.
    pub(super) round: u64,
    pub(super) seq: u64,
    pub(super) ts: u64,
    pub(super) frame: Bytes,
}

/// One room's messages of this round and the last, in apply order, and the
/// groups cut from them (built when first wanted).
#[derive(Default)]
pub(super) struct Window {
    messages: Vec<Recent>,
    groups: Option<Arc<Vec<Group>>>,
}

impl Window {
    /// Adds a message applied after all those the window holds.
    pub(super) fn push(&mut self, m: Recent) {
        self.messages.push(m);
        self.groups = None;
    }

    /// At the start of round `round`: drops the messages older than the last
    /// round's, which stay one more round for the connections the last round
    /// wrote before they came. Returns whether any message is left.
    pub(super) fn expire(&mut self, round: u64) -> bool {
        let before = self.messages.len();
        self.messages.retain(|m| m.round + 1 >= round);
        if self.messages.len() != before {
            self.groups = None;
        }
        !self.messages.is_empty()
    }

    /// The runs of consecutive seqs among the messages, built once until the
    /// messages change.
    pub(super) fn groups(&mut self, room: &str) -> Arc<Vec<Group>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Message `seq` of round `round`: stamped 10 seq, its frame the bytes "m{seq};".
    fn recent(round: u64, seq: u64) -> Recent {
        Recent { round, seq, ts: 10 * seq, frame: Bytes::from(format!("m{seq};")) }
    }

    /// Each group as (first, last, its bytes as text, ts).
    fn shapes(groups: &[Group]) -> Vec<(u64, u64, String, Vec<u64>)> {
        groups.iter().map(|g| (g.first, g.last(), String::from_utf8_lossy(&g.bytes).into_owned(), g.ts.clone())).collect()
    }

    #[test]
    fn groups_are_the_runs_of_consecutive_seqs_in_apply_order() {
        let mut w = Window::default();
        for seq in [3, 4, 5, 7, 8, 2] {
            w.push(recent(1, seq));
        }
        let groups = w.groups("r");
        assert_eq!(
            shapes(&groups),
            [(3, 5, "m3;m4;m5;".into(), vec![30, 40, 50]), (7, 8, "m7;m8;".into(), vec![70, 80]), (2, 2, "m2;".into(), vec![20])]
        );
        assert_eq!(groups[0].starts, [0, 3, 6]);
        assert!(groups.iter().all(|g| g.room == "r"));
        // Built once until the messages change.
        assert!(Arc::ptr_eq(&groups, &w.groups("r")));
        // Only the last run grows.
        w.push(recent(1, 3));
        w.push(recent(1, 9));
        assert_eq!(shapes(&w.groups("r"))[2..], [(2, 3, "m2;m3;".into(), vec![20, 30]), (9, 9, "m9;".into(), vec![90])]);
    }

    #[test]
    fn messages_stay_for_the_round_that_offered_them_and_the_next() {
        let mut w = Window::default();
        w.push(recent(1, 1));
        w.push(recent(2, 2));
        let before = w.groups("r");
        assert!(w.expire(2));
        assert!(Arc::ptr_eq(&before, &w.groups("r")), "nothing expired, yet the groups were rebuilt");
        assert!(w.expire(3));
        assert_eq!(shapes(&w.groups("r")), [(2, 2, "m2;".into(), vec![20])]);
        assert!(!w.expire(4));
        assert!(w.groups("r").is_empty());
    }
}
