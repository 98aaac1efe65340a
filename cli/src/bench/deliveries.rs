//! What the bench's connections receive: message frames counted and their
//! send→deliver latency sampled, acks passed on to the senders waiting on them.
//! Also the frames the bench sends: a join, and any frame as text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use wire::{ClientFrame, ServerFrame};

use super::micros;

/// Counts message frames and samples their send→deliver latency.
///
/// A std mutex, not tokio's: the fan-out subscribers record from a plain thread
/// ([`SubscriberReader`](super::subscribers::SubscriberReader)), and no one
/// holds the lock across an await.
#[derive(Default)]
pub(super) struct Deliveries {
    pub(super) count: AtomicU64,
    /// Other frames to subscribers (presence, mostly), for telling when the
    /// set-up has settled.
    pub(super) others: AtomicU64,
    /// (send time, latency) in µs since `start`.
    samples: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Deliveries {
    pub(super) fn record(&self, sent: u64, start: Instant) {
        let lat = micros(start).saturating_sub(sent);
        self.samples().push((sent, lat));
    }

    /// The samples so far. A thread that panicked while pushing left nothing
    /// half-done, so a poisoned lock is taken as is.
    pub(super) fn samples(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sampled latencies, sorted.
    pub(super) fn latencies(&self) -> Vec<u64> {
        let mut lat: Vec<u64> = self.samples().iter().map(|&(_, lat)| lat).collect();
        lat.sort_unstable();
        lat
    }
}

/// Counts and samples one text frame: a delivery, or (with `acks`, for senders)
/// an ack or error, passed on to the sender.
pub(super) fn on_text(t: &str, start: Instant, deliveries: &Deliveries, acks: Option<&AckTx>, sample_every: u64) {
    // Thousands of subscribers share this machine's cores with the nodes: a
    // subscriber's frame is only parsed when it is sampled, so the load
    // generator's own queueing adds as little as it can to the latency.
    if acks.is_none() {
        if !wire::is_message(t) {
            deliveries.others.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = deliveries.count.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(sample_every) {
            if let Ok(ServerFrame::Message(m)) = ServerFrame::parse(t) {
                record_sent_text(&m, start, deliveries);
            }
        }
        return;
    }
    let Ok(f) = ServerFrame::parse(t) else { return };
    match f {
        ServerFrame::Message(m) => {
            let n = deliveries.count.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(sample_every) {
                record_sent_text(&m, start, deliveries);
            }
        }
        ServerFrame::Ack { id, seq, .. } => answered(Some(&id), start, deliveries, acks, Some(seq)),
        ServerFrame::Error { id, .. } => answered(id.as_ref(), start, deliveries, acks, None),
        _ => {}
    }
}

/// What a sender waiting on its answer is told: the acked seq, or `None` if refused.
pub(super) type AckTx = tokio::sync::mpsc::UnboundedSender<Option<u64>>;

/// A send was answered (acked at `seq`, or refused): its latency, if its id
/// says when it went out, and a wake-up for the sender waiting on it.
fn answered(id: Option<&wire::Id>, start: Instant, deliveries: &Deliveries, acks: Option<&AckTx>, seq: Option<u64>) {
    // Fan-out senders put their send time last in the id.
    // Only a fan-out sender's id (`f{sender}-{n}-{sent µs}`) carries its send
    // time; the acks phase's ids are plain counters, whose acks are timed by
    // their senders and must not count as deliveries here.
    let timed = id.map(wire::Id::text).filter(|t| t.starts_with('f'));
    if let Some(sent) = timed.as_deref().and_then(|t| t.rsplit('-').next()?.parse::<u64>().ok()) {
        deliveries.record(sent, start);
    }
    if let Some(a) = acks {
        let _ = a.send(seq);
    }
}

/// Senders put their send time first in the text.
fn record_sent_text(m: &wire::Message, start: Instant, deliveries: &Deliveries) {
    if let Some(sent) = m.text.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
        deliveries.record(sent, start);
    }
}

/// A frame that asks for nothing back (`req` is not used here), as text.
pub(super) fn frame_text(f: ClientFrame) -> String {
    f.to_text(None)
}

/// Counts what one async connection receives, as [`on_text`] says, until it closes.
pub(super) async fn reader<S>(
    mut rx: S,
    start: Instant,
    deliveries: Arc<Deliveries>,
    acks: Option<AckTx>,
    sample_every: u64,
) where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(t) = msg else { continue };
        on_text(t.as_str(), start, &deliveries, acks.as_ref(), sample_every);
    }
}

/// Joins `room` and waits for the answer.
pub(super) async fn join(ws: &mut crate::chat::Ws, room: &str) -> anyhow::Result<()> {
    ws.send(Message::Text(frame_text(ClientFrame::Join { room: room.into(), after: None }).into())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            if matches!(ServerFrame::parse(t.as_str()), Ok(ServerFrame::Joined { .. })) {
                return Ok(());
            }
        }
    }
    bail!("closed before joining {room}")
}
