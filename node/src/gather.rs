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
/// Batches in flight at once in a follower's forwarder and the log
/// benchmark's client: while some are out, the next one gathers. Two rather
/// than four: at 256 writers the batches are then about twice as large, and
/// the cluster spends less CPU per write (log bench at 1252e96: 15-16k against
/// 13-14k writes/s with one RPC per write, 22-27k against 16-25k with the
/// gathering client). A lone caller still goes at once. The leader's proposer
/// awaits each batch before taking the next, so it has one in flight.
pub const MAX_IN_FLIGHT: usize = 2;

/// The receiving end: yields batches, each with the in-flight slot it holds
/// until dropped.
pub struct Gatherer<T> {
    rx: mpsc::Receiver<T>,
    slots: Arc<Semaphore>,
}

/// A queue for requests of type `T`, and the [`Gatherer`] that batches them.
pub fn channel<T>() -> (mpsc::Sender<T>, Gatherer<T>) {
    let (tx, rx) = mpsc::channel(MAX_BATCH * MAX_IN_FLIGHT);
    (tx, Gatherer { rx, slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) })
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
        let (tx, mut g) = channel();
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
        let (tx, mut g) = channel();
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
