//! An in-memory node for the API's tests: [`MemBackend`] folds proposed events
//! into `MemTables` with the same `chat::apply` a node runs, and the API is
//! served on a loopback socket the system picks (port 0), so no two tests can
//! collide on a port.

#![allow(dead_code)] // each test file uses a part of it

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api::presence::{PeerSignal, Presence};
use api::{App, BackendError, ChatBackend, ClusterView, Limits, MemberView, RaftGauges};
use futures::{SinkExt, StreamExt};
use raft_store::chat::{self, Command, Event, MemTables, Outcome, Table, TablesRead};
use raft_store::read::Order;
use raft_store::state_machine::Delivery;
use raft_store::{ChatRead, StoreError};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::{ClientFrame, ServerFrame};

/// The applied state, readable by the API, and a switch that makes every
/// read fail as a damaged disk would.
#[derive(Default)]
pub struct MemReader {
    pub tables: RwLock<MemTables>,
    pub failing: AtomicBool,
}

impl MemReader {
    fn check(&self) -> Result<(), StoreError> {
        match self.failing.load(Ordering::SeqCst) {
            true => Err(StoreError::Failed("injected read failure".into())),
            false => Ok(()),
        }
    }

    fn tables(&self) -> std::sync::RwLockReadGuard<'_, MemTables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl TablesRead for MemReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check()?;
        self.tables().get(table, key)
    }

    fn keys_below(&self, table: Table, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.check()?;
        self.tables().keys_below(table, end, limit)
    }
}

impl ChatRead for MemReader {
    fn scan(&self, table: Table, lower: &[u8], upper: Option<&[u8]>, limit: usize, order: Order) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.check()?;
        self.tables().scan(table, lower, upper, limit, order)
    }
}

/// A one-node "cluster" whose log is a function call.
pub struct MemBackend {
    pub reader: MemReader,
    deliveries: broadcast::Sender<Delivery>,
    clock: AtomicU64,
}

impl MemBackend {
    /// A formed cluster (it has a token key, at the newest feature level) and nothing else.
    pub fn formed() -> Arc<Self> {
        let backend = Arc::new(MemBackend { reader: MemReader::default(), deliveries: broadcast::channel(1024).0, clock: AtomicU64::new(1_000) });
        let formed = backend.apply(Event::ClusterFormed { cluster_id: "mem".into(), signing_key: vec![7; 32] });
        assert_eq!(formed, Outcome::ClusterFormed { cluster_id: "mem".into() });
        // As a cluster formed by today's binaries: at the newest level.
        let level = raft_store::format::CURRENT;
        assert_eq!(backend.apply(Event::FeatureLevelRaised { level }), Outcome::LevelRaised { level });
        backend
    }

    /// Commits and applies `event` at once, as a node does once the leader has it
    /// on a majority, and tells the fan-out of a stored message.
    pub fn apply(&self, event: Event) -> Outcome {
        let ts_ms = self.clock.fetch_add(1, Ordering::SeqCst);
        let applied = {
            let mut tables = self.reader.tables.write().unwrap_or_else(|p| p.into_inner());
            chat::apply(&mut *tables, &Command { ts_ms, event }).expect("apply to memory")
        };
        if let Some(m) = applied.delivery {
            let _ = self.deliveries.send(Delivery::Message(Arc::new(m)));
        }
        applied.outcome
    }

    pub fn fail_reads(&self, failing: bool) {
        self.reader.failing.store(failing, Ordering::SeqCst);
    }
}

impl ChatBackend for MemBackend {
    type Reader = MemReader;

    fn node_id(&self) -> u64 {
        1
    }

    fn ready(&self) -> bool {
        true
    }

    fn reader(&self) -> &MemReader {
        &self.reader
    }

    async fn propose(&self, event: Event) -> Result<Outcome, BackendError> {
        Ok(self.apply(event))
    }

    async fn read_barrier(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn deliveries(&self) -> broadcast::Receiver<Delivery> {
        self.deliveries.subscribe()
    }

    fn send_signal(&self, _signal: PeerSignal) {}

    async fn cluster(&self) -> ClusterView {
        let member = MemberView {
            id: 1,
            client_url: "http://mem".into(),
            role: "leader".into(),
            connections: 0,
            applied_index: 0,
            reachable: true,
            term: 1,
            last_log_index: 0,
            lag: 0,
        };
        ClusterView { cluster_id: "mem".into(), leader: Some(1), term: 1, members: vec![member] }
    }

    fn raft_gauges(&self) -> RaftGauges {
        RaftGauges::default()
    }
}

/// The API served over a [`MemBackend`].
pub struct Api {
    pub backend: Arc<MemBackend>,
    pub url: String,
    pub http: reqwest::Client,
    /// The search index's directory, removed with the test.
    _search: tempfile::TempDir,
}

impl Api {
    pub async fn start() -> Self {
        Self::with_limits(Limits { rate_messages: 0, ..Limits::default() }).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        let backend = MemBackend::formed();
        let presence = Arc::new(Presence::new(1));
        let mut app = App::new(backend.clone(), limits, presence, Arc::new(AtomicU64::new(0)), api::metrics::WriteFigures::default()).expect("app");
        let search = tempfile::tempdir().expect("a directory for the search index");
        app.start_search(search.path()).expect("search index");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let timeout = app.limits.http_timeout;
        tokio::spawn(api::serve::serve(listener, api::router(Arc::new(app)), None, timeout, std::future::pending()));
        Api { backend, url, http: reqwest::Client::new(), _search: search }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url))
    }

    /// Registers `name` and logs in: its token.
    pub async fn user(&self, name: &str) -> String {
        let creds = serde_json::json!({ "name": name, "password": "correct horse" });
        let r = self.post("/v1/users").json(&creds).send().await.expect("register");
        assert_eq!(r.status(), 201, "register {name}");
        let r = self.post("/v1/sessions").json(&creds).send().await.expect("login");
        assert_eq!(r.status(), 200, "login {name}");
        let session: wire::http::Session = r.json().await.expect("session body");
        session.token
    }

    /// A WebSocket session of the user with `token`.
    pub async fn connect(&self, token: &str) -> Client {
        let url = format!("{}/v1/ws?token={token}", self.url.replacen("http", "ws", 1));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connect");
        Client { ws }
    }
}

/// The error code and status of a failed HTTP answer.
pub async fn error_of(r: reqwest::Response) -> (u16, wire::ErrorCode) {
    let status = r.status().as_u16();
    let body: wire::http::ErrorBody = r.json().await.expect("an error body");
    (status, body.error)
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, frame: ClientFrame) {
        self.send_text(frame.to_text(None)).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(WsMessage::text(text)).await.expect("send a frame");
    }

    /// The next server frame (skipping presence, which depends on timing),
    /// within five seconds.
    pub async fn next(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.expect("a frame within 5 s");
            let text = match msg {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            };
            match ServerFrame::parse(&text).expect("a server frame") {
                ServerFrame::Presence { .. } => continue,
                frame => return frame,
            }
        }
    }

    /// Joins `room` and returns its head.
    pub async fn join(&mut self, room: &str) -> u64 {
        self.send(ClientFrame::Join { room: room.into(), after: None }).await;
        match self.next().await {
            ServerFrame::Joined { room: r, head, .. } if r == room => head,
            other => panic!("expected joined {room}, got {other:?}"),
        }
    }
}
