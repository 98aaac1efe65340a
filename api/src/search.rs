//! `GET /v1/search` and the thread that keeps this node's search index
//! ([`search::SearchIndex`]) in step with its applied state.
//!
//! The indexer follows the state machine's deliveries like the fan-out does:
//! applied entries are handed to the index, a lost stretch (the broadcast
//! lagged) or an installed snapshot is read back from the state machine, and
//! what was indexed is committed [`COMMIT_EVERY`] after it came, but never
//! sooner than [`MIN_COMMIT_GAP`] after the last commit. So a search finds a
//! message, or stops finding an edited or deleted text, within about 200 ms of
//! its apply on this node when the node is quiet, and within about a second
//! under load.
//!
//! Only the first entry after a commit wakes the indexer; until the next
//! commit it takes what came every [`GATHER_EVERY`], as one batch. Woken for
//! each entry, the indexer and tantivy's indexing thread cost two thread
//! wake-ups per message on every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use raft_store::chat::Message;
use raft_store::state_machine::Delivery;
use raft_store::ChatRead;
use search::SearchIndex;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use wire::http::{SearchPage, SearchQuery, SearchResult};

use crate::error::{ApiError, ApiResult, Code};
use crate::ops::wire_entry;
use crate::{App, ChatBackend};

/// How long an indexed entry waits to become searchable on a quiet node.
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The shortest time between two commits: under load an entry waits up to
/// this long. Each commit writes a new segment, which tantivy then merges and
/// the reader reopens; at one every 200 ms that cost a quarter of the nodes'
/// CPU per message at 16 senders, at most one a second 4–15 %.
pub const MIN_COMMIT_GAP: Duration = Duration::from_secs(1);
/// How often the indexer takes the entries that came while a commit is
/// pending. The deliveries' broadcast holds 8,192: at this period it lags
/// (and the indexer reads the stretch back) only past 80,000 entries a second.
pub const GATHER_EVERY: Duration = Duration::from_millis(100);
/// Results per page: at most, and when the query names none.
pub const MAX_RESULTS: u64 = 100;
pub const DEFAULT_RESULTS: u64 = 20;
/// How deep a client may page.
pub const MAX_OFFSET: u64 = 10_000;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;

/// Starts the indexer thread: it catches up with the state first, then
/// follows the deliveries until they end.
pub fn start<B: ChatBackend>(backend: Arc<B>, index: Arc<SearchIndex>) -> std::io::Result<()> {
    let deliveries = backend.deliveries();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    std::thread::Builder::new().name("search-indexer".into()).spawn(move || rt.block_on(follow(backend, index, deliveries)))?;
    Ok(())
}

async fn follow<B: ChatBackend>(backend: Arc<B>, index: Arc<SearchIndex>, mut deliveries: tokio::sync::broadcast::Receiver<Delivery>) {
    let report = |what: &str, r: Result<(), search::SearchError>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "search index: {what} failed");
        }
    };
    let started = Instant::now();
    match index.catch_up(backend.reader()) {
        Ok(n) => tracing::info!(entries = n, ms = started.elapsed().as_millis() as u64, "search index caught up with the state"),
        Err(e) => tracing::warn!(error = %e, "search index: catching up failed"),
    }
    // When what is pending gets committed: COMMIT_EVERY after the first of
    // it came, and not before MIN_COMMIT_GAP has passed since the last commit.
    let mut committed_at: Option<Instant> = None;
    let next_commit = |last: Option<Instant>| {
        let soon = Instant::now() + COMMIT_EVERY;
        last.map_or(soon, |c| soon.max(c + MIN_COMMIT_GAP))
    };
    let mut due = index.pending().then(|| next_commit(None));
    let mut batch: Vec<Arc<Message>> = Vec::new();
    let hand_over = |batch: &mut Vec<Arc<Message>>| {
        report("indexing", index.apply_all(backend.reader(), batch));
        batch.clear();
    };
    loop {
        // Quiet, wait for an entry; with a commit pending, gather what came.
        let mut next = match due {
            None => Some(deliveries.recv().await),
            Some(at) => {
                tokio::time::sleep_until(at.min(Instant::now() + GATHER_EVERY).into()).await;
                None
            }
        };
        let mut closed = false;
        loop {
            let got = match next.take() {
                Some(got) => got,
                None => match deliveries.try_recv() {
                    Ok(d) => Ok(d),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                },
            };
            match got {
                Ok(Delivery::Message(m)) => batch.push(m),
                Ok(Delivery::Reset) => {
                    hand_over(&mut batch);
                    report("emptying", index.reset());
                    report("catching up", index.catch_up(backend.reader()).map(|_| ()));
                }
                Err(RecvError::Lagged(_)) => {
                    hand_over(&mut batch);
                    report("catching up", index.catch_up(backend.reader()).map(|_| ()));
                }
                Ok(_) => {}
                Err(RecvError::Closed) => {
                    closed = true;
                    break;
                }
            }
        }
        hand_over(&mut batch);
        if closed {
            report("committing", index.commit());
            return;
        }
        if index.pending() {
            let at = *due.get_or_insert_with(|| next_commit(committed_at));
            if Instant::now() >= at {
                report("committing", index.commit());
                due = None;
                committed_at = Some(Instant::now());
            }
        }
    }
}

/// Messages the caller may read that match `q`, best first, each as it is now.
pub async fn search<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<SearchPage>> {
    let user = crate::http::bearer(&app, &headers)?;
    app.request_attempt(&user)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let text = q.q.trim();
    if text.is_empty() || text.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(format!("q is 1-{MAX_QUERY_BYTES} bytes")));
    }
    let limit = q.limit.unwrap_or(DEFAULT_RESULTS);
    let offset = q.offset.unwrap_or(0);
    if !(1..=MAX_RESULTS).contains(&limit) || offset > MAX_OFFSET {
        return Err(ApiError::bad_request(format!("limit is 1-{MAX_RESULTS}, offset at most {MAX_OFFSET}")));
    }
    let Some(index) = app.search.clone() else {
        return Err(ApiError::new(Code::Unavailable, "search is not running on this node"));
    };
    let (owned, u) = (text.to_string(), user.clone());
    let hits = tokio::task::spawn_blocking(move || index.search(&owned, &u, limit as usize, offset as usize))
        .await
        .map_err(|e| ApiError::new(Code::Unavailable, format!("search: {e}")))?
        .map_err(|e| ApiError::new(Code::Unavailable, e.to_string()))?;
    let next_offset = (hits.len() as u64 == limit).then_some(offset + limit);
    let reader = app.backend.reader();
    let mut results = Vec::with_capacity(hits.len());
    for hit in hits {
        // The index knows DM rooms' readers; who may read a private room
        // changes with its membership, so that is asked here, of the state
        // machine as it is now (a page may hold fewer than `limit`).
        if !raft_store::rooms::may_read(reader, &hit.room, &user)? {
            continue;
        }
        // Served as the state machine has it now: an entry the index has not
        // caught up with (edited or deleted since) shows as it is, or not at all.
        if let Some(wire::HistoryEntry::Message(m)) = reader.entry(&hit.room, hit.seq)?.as_ref().map(wire_entry) {
            if !m.deleted {
                results.push(SearchResult { score: hit.score, message: m });
            }
        }
    }
    Ok(Json(SearchPage { q: q.q, results, next_offset }))
}
