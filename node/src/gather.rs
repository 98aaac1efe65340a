//! Gathering concurrent requests into batches without adding a wait.
//!
//! The leader's proposer, a follower's forwarder and the log benchmark's client
//! all take requests one at a time from many callers and send them on in
//! groups: a group starts as soon as a slot is free and holds whatever else is
//! already queued. A lone caller gets a batch of one at once; under load the
//! batches grow by themselves while earlier ones are in flight.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Most requests in one batch.
pub const MAX_BATCH: usize = 512;
/// Batches a follower's forwarder (and the log benchmark's client) keeps in
/// flight: while one is out, the next gathers. Two rather than four: at 256
/// writers the batches are then about twice as large, and the cluster spends
/// less CPU per write (log bench at 1252e96: 15-16k against 13-14k writes/s
/// with one RPC per write, 22-27k against 16-25k with the gathering client).
pub const MAX_IN_FLIGHT: usize = 2;

/// Batches the leader's proposer keeps in flight: one. A second entry
/// proposed while the first replicates waits anyway, since replication keeps
/// one AppendEntries in flight per follower; held back, its commands join the
/// next entry instead (`chorus-bench breakdown`, 2026-12-08: 0.16 against
/// 0.27 entries per ack at 16 senders, 349-352 against 367-376 µs of CPU per
/// ack; see docs/PERFORMANCE.md).
pub const PROPOSER_IN_FLIGHT: usize = 1;

/// The receiving end: yields batches, each with the in-flight slot it holds
/// until dropped.
pub struct Gatherer<T> {
    rx: mpsc::Receiver<T>,
    slots: Arc<Semaphore>,
}

/// A queue for requests of type `T`, and the [`Gatherer`] that batches them.
/// `in_flight` batches (at least one) may be out at once; the queue holds
/// [`MAX_IN_FLIGHT`] batches' worth, and a sender waits once it is full.
pub fn channel<T>(in_flight: usize) -> (mpsc::Sender<T>, Gatherer<T>) {
    let (tx, rx) = mpsc::channel(MAX_BATCH * MAX_IN_FLIGHT);
    (tx, Gatherer { rx, slots: Arc::new(Semaphore::new(in_flight.max(1))) })
}

impl<T> Gatherer<T> {
    /// Waits for a free slot and a first request, then takes what else is
    /// already queued (up to [`MAX_BATCH`]) without waiting for more. `None`
    /// once every sender is gone.
    pub async fn next_batch(&mut self) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        let mut batch = Vec::new();
        if self.rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return None;
        }
        Some((slot, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_requests_come_out_together_and_in_order() {
        let (tx, mut g) = channel(MAX_IN_FLIGHT);
        for i in 0..10 {
            tx.send(i).await.unwrap();
        }
        let (_slot, batch) = g.next_batch().await.unwrap();
        assert_eq!(batch, (0..10).collect::<Vec<_>>());
        drop(tx);
        assert!(g.next_batch().await.is_none());
    }

    #[tokio::test]
    async fn a_batch_waits_for_a_free_slot() {
        let (tx, mut g) = channel(MAX_IN_FLIGHT);
        let mut held = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            tx.send(i).await.unwrap();
            held.push(g.next_batch().await.unwrap().0);
        }
        tx.send(99).await.unwrap();
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), g.next_batch()).await;
        assert!(blocked.is_err(), "a batch went out while every slot was in flight");
        held.pop();
        assert_eq!(g.next_batch().await.unwrap().1, vec![99]);
    }
}
