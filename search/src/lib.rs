//! Full-text search over a node's applied chat state: a tantivy index in the
//! node's data directory, beside RocksDB, kept in step with the room entries
//! the state machine applies.
//!
//! The index is derived data. It holds one document per live message (its
//! room, seq, who may read it, and its current text, indexed but not stored),
//! and records in each commit's payload how far it has indexed every room
//! (the room's last seq applied to it). An edit replaces its message's
//! document, a delete removes it, so a search finds each message by its
//! current text and never a deleted one once the change is committed. Missing,
//! damaged, or ahead of the state it serves (a snapshot was installed, a
//! backup restored), the index is emptied and rebuilt from the state machine
//! by [`SearchIndex::catch_up`]; nothing in it is needed to recover anything.
//!
//! Entries reach the index one room at a time in seq order: [`SearchIndex::apply`]
//! takes a live entry if it is the room's next, skips one already indexed, and
//! reads the room's missed entries from the state machine when one comes past a
//! gap. Replaying a room's entries in order gives the same documents as
//! indexing it live: a post is read as it now is (edited, or deleted), and the
//! edits after it are applied on top, ending at its current text.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use raft_store::chat::{self, Message};
use raft_store::lifecycle::Kind;
use raft_store::ChatRead;
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::UserOperation;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// The indexing heap of the one writer thread.
const WRITER_HEAP: usize = 30 << 20;
/// Entries read from the state machine at a time when catching up.
const CATCH_UP_PAGE: usize = 1000;
/// The `readers` term of a room any user may read.
const ANYONE: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index: {0}")]
    Open(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("search index: {0}")]
    Io(#[from] std::io::Error),
    #[error("state machine: {0}")]
    Store(#[from] raft_store::StoreError),
}

/// One message a search found, by rank.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub room: String,
    pub seq: u64,
    pub score: f32,
}

struct Fields {
    /// `seq@room`: the term an edit or delete replaces the document by.
    key: Field,
    room: Field,
    seq: Field,
    /// Who may read the message: [`ANYONE`], or a DM room's two users.
    readers: Field,
    text: Field,
}

struct Writer {
    writer: IndexWriter,
    /// Room → the last seq indexed, as of the changes not yet committed too.
    positions: BTreeMap<String, u64>,
    /// Changes since the last commit.
    pending: usize,
    /// Changes not yet handed to tantivy's indexing thread: they go as one
    /// batch at the end of each call, so a run of entries wakes that thread
    /// once rather than once per entry.
    ops: Vec<UserOperation>,
}

impl Writer {
    fn hand_over(&mut self) -> Result<(), SearchError> {
        if !self.ops.is_empty() {
            self.writer.run(std::mem::take(&mut self.ops))?;
        }
        Ok(())
    }

    /// Forgets every document, committed or not (the state was replaced).
    fn empty(&mut self) -> Result<(), SearchError> {
        self.ops.clear();
        self.writer.delete_all_documents()?;
        self.positions.clear();
        self.pending += 1;
        Ok(())
    }
}

pub struct SearchIndex {
    reader: IndexReader,
    fields: Fields,
    parser: QueryParser,
    writer: Mutex<Writer>,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        room: b.add_text_field("room", STRING | STORED),
        seq: b.add_u64_field("seq", STORED),
        readers: b.add_text_field("readers", STRING),
        text: b.add_text_field("text", TEXT),
    };
    (b.build(), fields)
}

fn key(room: &str, seq: u64) -> String {
    format!("{seq}@{room}")
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it if missing; one that cannot be
    /// opened (damaged, or of another schema) is removed and created anew, to
    /// be rebuilt by [`SearchIndex::catch_up`].
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        match Self::open_existing(dir) {
            Ok(index) => Ok(index),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "the search index cannot be opened; rebuilding it");
                std::fs::remove_dir_all(dir)?;
                Self::open_existing(dir)
            }
        }
    }

    fn open_existing(dir: &Path) -> Result<Self, SearchError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(MmapDirectory::open(dir)?, schema)?;
        let positions = match index.load_metas()?.payload {
            Some(p) => serde_json::from_str(&p).map_err(|e| tantivy::TantivyError::InvalidArgument(format!("commit payload: {e}")))?,
            None => BTreeMap::new(),
        };
        let writer = index.writer_with_num_threads(1, WRITER_HEAP)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let parser = QueryParser::for_index(&index, vec![fields.text]);
        Ok(SearchIndex { reader, fields, parser, writer: Mutex::new(Writer { writer, positions, pending: 0, ops: Vec::new() }) })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How far `room` is indexed (committed or not).
    pub fn position(&self, room: &str) -> u64 {
        self.writer().positions.get(room).copied().unwrap_or(0)
    }

    /// Takes in one entry applied to the state machine `state` reads (see
    /// the module's notes on order).
    pub fn apply<R: ChatRead + ?Sized>(&self, state: &R, m: &Message) -> Result<(), SearchError> {
        self.apply_all(state, std::slice::from_ref(m))
    }

    /// Takes in entries applied to the state machine `state` reads, in the
    /// order they were applied, as one batch.
    pub fn apply_all<R: ChatRead + ?Sized, M: std::borrow::Borrow<Message>>(&self, state: &R, entries: &[M]) -> Result<(), SearchError> {
        let mut w = self.writer();
        for m in entries {
            let m = m.borrow();
            let at = w.positions.get(&m.room).copied().unwrap_or(0);
            if m.seq == at + 1 {
                self.index_entry(&mut w, m);
            } else if m.seq > at {
                self.catch_up_room(&mut w, state, &m.room, u64::MAX)?;
            }
        }
        w.hand_over()
    }

    /// Indexes every room's entries past its position, as the state machine
    /// has them now. If the index is ahead of the state (it holds rooms or
    /// seqs the state has not), it is emptied and rebuilt. Returns how many
    /// entries it read.
    pub fn catch_up<R: ChatRead + ?Sized>(&self, state: &R) -> Result<u64, SearchError> {
        let rooms = state.rooms()?;
        let mut w = self.writer();
        let heads: BTreeMap<&str, u64> = rooms.iter().map(|(name, r)| (name.as_str(), r.last_seq)).collect();
        let ahead = w.positions.iter().any(|(room, at)| heads.get(room.as_str()).is_none_or(|head| at > head));
        if ahead {
            tracing::info!("the search index is ahead of this node's state (a snapshot or backup was installed); rebuilding it");
            w.empty()?;
        }
        let mut read = 0;
        for (room, head) in heads {
            if w.positions.get(room).copied().unwrap_or(0) < head {
                read += self.catch_up_room(&mut w, state, room, head)?;
            }
        }
        Ok(read)
    }

    /// Empties the index, to be rebuilt by [`SearchIndex::catch_up`] (after a
    /// snapshot replaced the state).
    pub fn reset(&self) -> Result<(), SearchError> {
        self.writer().empty()
    }

    fn catch_up_room<R: ChatRead + ?Sized>(&self, w: &mut Writer, state: &R, room: &str, head: u64) -> Result<u64, SearchError> {
        let mut read = 0;
        loop {
            let after = w.positions.get(room).copied().unwrap_or(0);
            if after >= head {
                return Ok(read);
            }
            let page = state.history(room, Some(after), None, CATCH_UP_PAGE)?;
            if page.messages.is_empty() {
                return Ok(read);
            }
            for m in &page.messages {
                self.index_entry(w, m);
                read += 1;
            }
            w.hand_over()?;
        }
    }

    /// One entry, the room's next: a post adds its document, an edit replaces
    /// its target's, a delete removes it.
    fn index_entry(&self, w: &mut Writer, m: &Message) {
        let f = &self.fields;
        // `fresh`: a post the index cannot hold yet (its seq is past the
        // room's position), so there is no document to delete first; a
        // delete by term costs a lookup in every segment at each commit.
        let replace = |w: &mut Writer, seq: u64, text: &str, fresh: bool| {
            if !fresh {
                w.ops.push(UserOperation::Delete(Term::from_field_text(f.key, &key(&m.room, seq))));
            }
            if text.is_empty() {
                return;
            }
            let mut d = doc!(f.key => key(&m.room, seq), f.room => m.room.as_str(), f.seq => seq, f.text => text);
            match chat::dm_participants(&m.room) {
                Some((a, b)) => {
                    d.add_text(f.readers, a);
                    d.add_text(f.readers, b);
                }
                None => d.add_text(f.readers, ANYONE),
            }
            w.ops.push(UserOperation::Add(d));
        };
        match &m.kind {
            Kind::Post(state) if !state.deleted => replace(w, m.seq, &m.text, true),
            Kind::Post(_) => {}
            Kind::Edit { target } => replace(w, *target, &m.text, false),
            Kind::Delete { target } => replace(w, *target, "", false),
            Kind::Reaction { .. } | Kind::Room(_) => {}
        }
        w.positions.insert(m.room.clone(), m.seq);
        w.pending += 1;
    }

    /// Whether changes await [`SearchIndex::commit`].
    pub fn pending(&self) -> bool {
        self.writer().pending > 0
    }

    /// Makes what was indexed searchable and durable, with the positions it
    /// reached.
    pub fn commit(&self) -> Result<(), SearchError> {
        let mut w = self.writer();
        if w.pending == 0 {
            return Ok(());
        }
        w.hand_over()?;
        let payload = serde_json::to_string(&w.positions).unwrap_or_default();
        let mut prepared = w.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        w.pending = 0;
        drop(w);
        self.reader.reload()?;
        Ok(())
    }

    /// Up to `limit` messages `user` may read that match `q`, best first,
    /// skipping the first `offset`. `q` is tantivy's query language over the
    /// text (words, `"phrases"`, `-excluded`, `AND`/`OR`); what does not
    /// parse is read as plain words.
    pub fn search(&self, q: &str, user: &str, limit: usize, offset: usize) -> Result<Vec<Hit>, SearchError> {
        let f = &self.fields;
        let (text, _) = self.parser.parse_query_lenient(q);
        let reader_term = |who: &str| -> Box<dyn Query> { Box::new(TermQuery::new(Term::from_field_text(f.readers, who), IndexRecordOption::Basic)) };
        let may_read = BooleanQuery::new(vec![(Occur::Should, reader_term(ANYONE)), (Occur::Should, reader_term(user))]);
        let query = BooleanQuery::new(vec![(Occur::Must, text), (Occur::Must, Box::new(may_read))]);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit).and_offset(offset).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let d: TantivyDocument = searcher.doc(address)?;
            let room = d.get_first(f.room).and_then(|v| v.as_str()).map(str::to_string);
            let seq = d.get_first(f.seq).and_then(|v| v.as_u64());
            if let (Some(room), Some(seq)) = (room, seq) {
                hits.push(Hit { room, seq, score });
            }
        }
        Ok(hits)
    }

    /// How many live messages the committed index holds.
    pub fn documents(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

#[cfg(test)]
mod tests;
