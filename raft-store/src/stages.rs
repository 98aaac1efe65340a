//! Where one write's time goes on this node: the stages of the write path,
//! timed where they happen and reported to an observer (the node exports them
//! on `/metrics` as `chorus_write_stage_seconds{stage=…}`; `chorus-bench
//! breakdown` reads them).
//!
//! Stages that start in one component and end in another (an entry appended
//! by the log store, applied by the state machine, answered by the proposer)
//! are joined by log index through a small ring of recent marks. Only the last
//! entry of each append is marked; a mark that was overwritten before its
//! entry was applied is simply not counted, so under load the figures are a
//! sample, and at one writer they cover every write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One stage of a write, as timed on the node that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Leader: from the proposal reaching the proposer to the log store's
    /// `append` being called for its entry (gathering, task hand-offs, the
    /// Raft core's queue).
    Propose,
    /// Any node: the log store writing an append's entries to RocksDB, not
    /// yet synced.
    Append,
    /// Any node: from an append's write to its completion being signalled,
    /// i.e. waiting for and doing the fsync that covers it.
    Sync,
    /// Any node: one fsync of the write-ahead log.
    Fsync,
    /// Leader: one AppendEntries RPC carrying entries, sent until answered
    /// (the follower's append and sync are inside it).
    Replicate,
    /// Follower: handling one AppendEntries RPC carrying entries, from its
    /// arrival to the answer (the follower's append and sync are inside it).
    FollowerAppend,
    /// Any node: from an entry's append to the state machine starting to apply
    /// it (on the leader: waiting for a quorum's syncs and the commit).
    Commit,
    /// Any node: applying a run of entries and writing the result.
    Apply,
    /// Leader: from the entry's apply to its proposer receiving the answer.
    Reply,
    /// Leader: from the proposal reaching the proposer to its answer.
    Total,
    /// Follower: a client's write from reaching the forwarder to the
    /// leader's answer (waiting for a forwarder slot, the `Propose` round
    /// trip, and the leader's `total`).
    Forward,
    /// Follower: from the leader's answer to a forwarded write to this node
    /// having applied it (learning the commit from the leader, then applying).
    CatchUp,
}

impl Stage {
    /// Every stage, in the order a write goes through them.
    pub const ALL: [Stage; 12] = [
        Stage::Propose,
        Stage::Append,
        Stage::Sync,
        Stage::Fsync,
        Stage::Replicate,
        Stage::FollowerAppend,
        Stage::Commit,
        Stage::Apply,
        Stage::Reply,
        Stage::Total,
        Stage::Forward,
        Stage::CatchUp,
    ];

    /// The label value on `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Propose => "propose",
            Stage::Append => "append",
            Stage::Sync => "sync",
            Stage::Fsync => "fsync",
            Stage::Replicate => "replicate",
            Stage::FollowerAppend => "follower_append",
            Stage::Commit => "commit",
            Stage::Apply => "apply",
            Stage::Reply => "reply",
            Stage::Total => "total",
            Stage::Forward => "forward",
            Stage::CatchUp => "catch_up",
        }
    }
}

/// Told each timed stage.
pub type StageObserver = Arc<dyn Fn(Stage, Duration) + Send + Sync>;

/// Marks kept: more than the entries in flight at one writer, few enough that
/// a lookup is a compare.
const RING: usize = 64;

#[derive(Clone, Copy)]
struct Mark {
    index: u64,
    append_began: Instant,
    appended: Instant,
    applied: Option<Instant>,
}

/// The observer and the ring of marks, shared by the log store, the state
/// machine, the proposer and the network of one node.
pub struct WriteStages {
    observer: StageObserver,
    marks: Mutex<[Option<Mark>; RING]>,
}

impl WriteStages {
    pub fn new(observer: StageObserver) -> Arc<Self> {
        Arc::new(WriteStages { observer, marks: Mutex::new([None; RING]) })
    }

    /// Stages timed and dropped.
    pub fn off() -> Arc<Self> {
        Self::new(Arc::new(|_, _| {}))
    }

    pub fn observe(&self, stage: Stage, took: Duration) {
        (self.observer)(stage, took);
    }

    fn with_marks<R>(&self, f: impl FnOnce(&mut [Option<Mark>; RING]) -> R) -> R {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut marks)
    }

    /// The log store wrote entries up to `last` between `began` and `ended`.
    pub(crate) fn appended(&self, last: u64, began: Instant, ended: Instant) {
        self.observe(Stage::Append, ended - began);
        self.with_marks(|m| m[slot(last)] = Some(Mark { index: last, append_began: began, appended: ended, applied: None }));
    }

    /// The state machine starts applying the entry at `index`.
    pub(crate) fn applying(&self, index: u64, now: Instant) {
        let appended = self.with_marks(|m| m[slot(index)].filter(|k| k.index == index).map(|k| k.appended));
        if let Some(at) = appended {
            self.observe(Stage::Commit, now.saturating_duration_since(at));
        }
    }

    /// The state machine wrote a run of entries up to `last`, begun at `began`.
    pub(crate) fn applied(&self, last: u64, began: Instant, now: Instant) {
        self.observe(Stage::Apply, now - began);
        self.with_marks(|m| {
            if let Some(k) = m[slot(last)].as_mut().filter(|k| k.index == last) {
                k.applied = Some(now);
            }
        });
    }

    /// The proposer got the answer for the entry at `index`, whose proposals
    /// reached it at `proposed`.
    pub fn answered(&self, index: u64, proposed: Instant) {
        let now = Instant::now();
        self.observe(Stage::Total, now.saturating_duration_since(proposed));
        let mark = self.with_marks(|m| m[slot(index)].filter(|k| k.index == index));
        if let Some(k) = mark {
            self.observe(Stage::Propose, k.append_began.saturating_duration_since(proposed));
            if let Some(applied) = k.applied {
                self.observe(Stage::Reply, now.saturating_duration_since(applied));
            }
        }
    }
}

fn slot(index: u64) -> usize {
    (index % RING as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type Seen = Arc<Mutex<HashMap<Stage, Vec<Duration>>>>;

    fn recording() -> (Arc<WriteStages>, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let stages = WriteStages::new(Arc::new(move |stage, d| s.lock().unwrap().entry(stage).or_default().push(d)));
        (stages, seen)
    }

    #[test]
    fn one_write_is_split_into_its_stages() {
        let (stages, seen) = recording();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        stages.appended(7, ms(1), ms(2));
        stages.applying(7, ms(5));
        stages.applied(7, ms(5), ms(6));
        stages.answered(7, t0);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[&Stage::Append], vec![Duration::from_millis(1)]);
        assert_eq!(seen[&Stage::Commit], vec![Duration::from_millis(3)]);
        assert_eq!(seen[&Stage::Apply], vec![Duration::from_millis(1)]);
        assert_eq!(seen[&Stage::Propose], vec![Duration::from_millis(1)]);
        assert!(seen[&Stage::Reply][0] < seen[&Stage::Total][0]);
    }

    #[test]
    fn an_overwritten_mark_is_not_counted_for_another_index() {
        let (stages, seen) = recording();
        let t0 = Instant::now();
        stages.appended(3, t0, t0);
        stages.appended(3 + RING as u64, t0, t0);
        stages.applying(3, t0 + Duration::from_millis(1));
        stages.answered(3, t0);
        let seen = seen.lock().unwrap();
        assert!(!seen.contains_key(&Stage::Commit));
        assert!(!seen.contains_key(&Stage::Propose));
        assert_eq!(seen[&Stage::Total].len(), 1);
    }
}
