//! The Chorus domain and its durable storage.
//!
//! # Layout
//!
//! - [`chat`]: the event enum, the records, and the one pure `apply` that folds
//!   committed events into chat state.
//! - [`types`]: the openraft type configuration (`TypeConfig`), node identity.
//! - [`db`]: the shared RocksDB instance and its column families.
//! - [`log_store`]: the Raft log and vote ([`LogStore`]); what is synced and when.
//! - [`state_machine`]: the event-sourced state machine persisted in RocksDB
//!   ([`StateMachine`]), with read access for history and membership queries.
//! - [`read`]: [`ChatRead`], the chat queries (history, members, rooms…)
//!   written once over a ranged scan, for RocksDB and for `MemTables`.
//! - [`lifecycle`]: replies, threads, edits, deletes and reactions as room
//!   entries; [`markers`]: read markers and unread counts; [`rooms`]: owners,
//!   visibility, roles, invitations, bans and mutes; [`quota`]: rooms per user;
//!   [`accounts`]: display names and invite codes.
//! - [`sessions`]: the versioned token-signing keys and each user's session
//!   epoch (rotation and revocation).
//! - [`token`]: the session token format, issued and verified under those keys.
//! - [`snapshot`]: the streaming snapshot file format, build and install.
//! - [`backup`]: the backup file (a snapshot with its origin and a checksum),
//!   and seeding a data dir from one (restore, force-new).
//! - [`format`]: the cluster's feature level, and the level every entry and
//!   snapshot carries.
//! - [`stages`]: where one write's time goes on a node, timed per stage.
//! - [`codec`], [`error`]: the one binary encoding, and storage errors.
//!
//! Nothing here knows of HTTP, WebSocket, gRPC or the CLI.

pub mod accounts;
#[cfg(feature = "rocksdb")]
pub mod backup;
pub mod chat;
pub mod codec;
#[cfg(feature = "rocksdb")]
pub mod db;
pub mod error;
pub mod format;
pub mod lifecycle;
pub mod markers;
pub mod mem;
#[cfg(feature = "rocksdb")]
pub mod log_store;
pub mod quota;
pub mod rooms;
pub mod read;
pub mod sessions;
pub mod token;
pub mod snapshot;
pub mod stages;
#[cfg(feature = "rocksdb")]
pub mod state_machine;
pub mod types;

#[cfg(feature = "rocksdb")]
pub use db::{open, Store};
pub use error::StoreError;
#[cfg(feature = "rocksdb")]
pub use log_store::{LogStore, WalSync};
pub use read::ChatRead;
#[cfg(feature = "rocksdb")]
pub use state_machine::StateMachine;
pub use types::{NodeInfo, TypeConfig};
