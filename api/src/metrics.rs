//! `/metrics` in the Prometheus text format.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use raft_store::stages::{Stage, StageObserver};

use crate::{App, ChatBackend};

/// The API's own figures; Raft's are read at scrape time.
pub struct ApiMetrics {
    registry: Registry,
    pub messages_committed: Counter,
    pub duplicates: Counter,
    pub ack_latency: Histogram,
    pub delivery_lag: Histogram,
    pub deliveries: Counter,
    pub late_messages: Counter,
    pub fanout_rounds: Histogram,
    /// Fed by the log store, the state machine and Raft (see [`WriteFigures`]).
    writes: WriteFigures,
    pub slow_consumer_closes: Counter,
    ws_connections: Gauge,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
}

type StageLabels = [(&'static str, &'static str); 1];
type StageFamily = Family<StageLabels, Histogram, fn() -> Histogram>;

/// The figures the write path below the API feeds: each fsync of the Raft log
/// and the time of each stage of a write ([`raft_store::stages`]). Made before
/// the log store, fed through [`WriteFigures::observer`], and handed to
/// [`ApiMetrics::new`] to export.
#[derive(Clone)]
pub struct WriteFigures {
    wal_syncs: Histogram,
    stages: StageFamily,
}

impl Default for WriteFigures {
    fn default() -> Self {
        // 0.05 ms .. ~0.8 s: a local SSD syncs in well under a millisecond.
        let wal_syncs = Histogram::new(exponential_buckets(0.000_05, 2.0, 15));
        // 10 µs .. ~0.3 s: the stages of one write are microseconds to milliseconds.
        let stages: StageFamily = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_01, 2.0, 16)));
        WriteFigures { wal_syncs, stages }
    }
}

impl WriteFigures {
    /// What the log store, state machine, proposer and network report to.
    pub fn observer(&self) -> StageObserver {
        let figures = self.clone();
        Arc::new(move |stage: Stage, took: Duration| {
            if stage == Stage::Fsync {
                figures.wal_syncs.observe(took.as_secs_f64());
            }
            figures.stages.get_or_create(&[("stage", stage.name())]).observe(took.as_secs_f64());
        })
    }
}

impl ApiMetrics {
    pub fn new(writes: WriteFigures) -> Self {
        let mut registry = Registry::with_prefix("chorus");
        let m = ApiMetrics {
            messages_committed: Counter::default(),
            duplicates: Counter::default(),
            // 0.25 ms .. ~4 s
            ack_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            delivery_lag: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            deliveries: Counter::default(),
            late_messages: Counter::default(),
            // 0.5 ms .. ~0.5 s: a round near the 50 ms interval is at capacity.
            fanout_rounds: Histogram::new(exponential_buckets(0.000_5, 2.0, 11)),
            writes,
            slow_consumer_closes: Counter::default(),
            ws_connections: Gauge::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("messages_committed", "Messages stored and acknowledged by this node", m.messages_committed.clone());
        registry.register("duplicate_sends", "Retried sends answered from the dedup table", m.duplicates.clone());
        registry.register("ack_latency_seconds", "Time from a send to its acknowledgement", m.ack_latency.clone());
        registry.register(
            "delivery_lag_seconds",
            "Time from the leader stamping a message to this node handing it to its sessions (ms resolution; includes any clock difference between the nodes)",
            m.delivery_lag.clone(),
        );
        registry.register("deliveries", "Message frames queued to WebSocket connections", m.deliveries.clone());
        registry.register(
            "fanout_late_messages",
            "Messages applied while a delivery round was writing: they reach the round's remaining connections at once and the others in the next round",
            m.late_messages.clone(),
        );
        registry.register(
            "fanout_round_seconds",
            "Wall time of each delivery round of the fan-out thread, from its start to its last write",
            m.fanout_rounds.clone(),
        );
        registry.register(
            "log_sync_seconds",
            "Wall time of each fsync of the Raft log (RocksDB's write-ahead log); every acknowledged write waits for one, and one covers every append made before it",
            m.writes.wal_syncs.clone(),
        );
        registry.register(
            "write_stage_seconds",
            "Time of each stage of a write on this node (propose, append, sync, fsync, replicate, follower_append, commit, apply, reply, total, forward, catch_up); see raft_store::stages",
            m.writes.stages.clone(),
        );
        registry.register("slow_consumer_closes", "Connections closed because their queue overflowed", m.slow_consumer_closes.clone());
        registry.register("ws_connections", "Open WebSocket connections", m.ws_connections.clone());
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register("raft_leader", "Current leader id (0: none known)", m.raft_leader.clone());
        registry.register("raft_commit_index", "Last committed log index known here", m.raft_commit_index.clone());
        registry.register("raft_applied_index", "Last log index applied here", m.raft_applied_index.clone());
        ApiMetrics { registry, ..m }
    }

    pub fn acked(&self, latency: Duration, duplicate: bool) {
        self.ack_latency.observe(latency.as_secs_f64());
        if duplicate {
            self.duplicates.inc();
        } else {
            self.messages_committed.inc();
        }
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub async fn serve<B: ChatBackend>(State(app): State<Arc<App<B>>>) -> impl IntoResponse {
    let m = &app.metrics;
    let raft = app.backend.raft_gauges();
    m.raft_term.set(gauge(raft.term));
    m.raft_leader.set(gauge(raft.leader));
    m.raft_commit_index.set(gauge(raft.committed));
    m.raft_applied_index.set(gauge(raft.applied));
    m.ws_connections.set(gauge(app.connection_count()));
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &m.registry) {
        out = format!("# encoding failed: {e}\n");
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
}
