//! In-process clusters for integration tests: real nodes, real RocksDB in
//! temporary directories, real gRPC on 127.0.0.1 ports chosen by the OS.
//!
//! With `CHORUS_TEST_CLIENT_TLS=1` every node serves its client port over TLS
//! (HTTPS and WSS, a certificate from a CA made once per test process), and
//! [`client`] speaks TLS trusting that CA: the same tests then run over TLS.

#![allow(dead_code)]

use openraft::async_runtime::WatchReceiver;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use node::{Config, Listeners, NodeHandle};
use proto::v1::admin_client::AdminClient;
use proto::v1::{AddRequest, ClusterStatus, Empty, IdRequest, InitRequest};
use raft_store::chat::Event;
use tempfile::TempDir;

pub struct TestNode {
    pub id: u64,
    pub dir: PathBuf,
    pub client_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub handle: Option<NodeHandle>,
}

pub struct TestCluster {
    pub tmp: TempDir,
    pub nodes: Vec<TestNode>,
    pub tweak: fn(&mut Config),
}

fn no_tweak(_: &mut Config) {}

pub fn config(id: u64, dir: PathBuf, tweak: fn(&mut Config)) -> Config {
    let mut c = Config::for_node(id, dir.clone());
    if let Some(tls) = client_tls::get() {
        let (cert, key) = tls.write_identity(&dir);
        c.client_tls_cert = Some(cert);
        c.client_tls_key = Some(key);
    }
    c.no_bootstrap = true;
    c.heartbeat_ms = 50;
    c.election_ms = 300;
    tweak(&mut c);
    c
}

async fn bind(client: SocketAddr, raft: SocketAddr) -> Listeners {
    // A restarted node takes its old ports back; the OS may hold them briefly.
    for _ in 0..100 {
        if let (Ok(c), Ok(r)) = (tokio::net::TcpListener::bind(client).await, tokio::net::TcpListener::bind(raft).await) {
            return Listeners { client: c, raft: r };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {client} and {raft}");
}

impl TestCluster {
    /// Starts `n` nodes that wait to be formed, and forms them with `init`.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, no_tweak).await
    }

    pub async fn start_with(n: u64, tweak: fn(&mut Config)) -> Self {
        let mut c = TestCluster { tmp: TempDir::new().unwrap(), nodes: Vec::new(), tweak };
        for id in 1..=n {
            c.spawn(id).await;
        }
        let addrs = c.nodes.iter().map(|n| n.raft_addr.to_string()).collect();
        c.admin(1).await.init(InitRequest { raft_addrs: addrs }).await.unwrap();
        c.wait_leader().await;
        c
    }

    /// Starts node `id` (fresh, waiting to be added).
    pub async fn spawn(&mut self, id: u64) -> &TestNode {
        let dir = self.tmp.path().join(format!("node-{id}"));
        let listeners = bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()).await;
        let handle = node::start(config(id, dir.clone(), self.tweak), listeners).await.unwrap();
        self.nodes.push(TestNode {
            id,
            dir,
            client_addr: handle.client_addr,
            raft_addr: handle.raft_addr,
            handle: Some(handle),
        });
        self.nodes.last().unwrap()
    }

    /// The client URL of node `id`: `https://` with client TLS.
    pub fn base(&self, id: u64) -> String {
        format!("{}://{}", client::scheme(), self.node(id).client_addr)
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn handle(&self, id: u64) -> &NodeHandle {
        self.node(id).handle.as_ref().expect("node is running")
    }

    pub async fn stop(&mut self, id: u64) {
        let n = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
    }

    /// Restarts a stopped node on its data dir and its old addresses.
    pub async fn restart(&mut self, id: u64) {
        let tweak = self.tweak;
        let n = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        assert!(n.handle.is_none(), "node {id} is running");
        let listeners = bind(n.client_addr, n.raft_addr).await;
        n.handle = Some(node::start(config(id, n.dir.clone(), tweak), listeners).await.unwrap());
    }

    pub fn running(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter().filter(|n| n.handle.is_some())
    }

    pub async fn admin(&self, id: u64) -> AdminClient<tonic::transport::Channel> {
        AdminClient::connect(format!("http://{}", self.node(id).raft_addr)).await.unwrap()
    }

    /// Waits until the running nodes agree on a leader, and returns it.
    pub async fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let leaders: Vec<Option<u64>> =
                self.running().map(|n| n.handle.as_ref().unwrap().node.raft.metrics().borrow_watched().current_leader).collect();
            if let Some(Some(l)) = leaders.first() {
                let running = self.running().any(|n| n.id == *l);
                if running && leaders.iter().all(|x| *x == Some(*l)) {
                    let leader = self.handle(*l);
                    if leader.node.is_leader() {
                        return *l;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader agreed on: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts a message through node `via`, joining the room first.
    pub async fn post(&self, via: u64, room: &str, user: &str, id: &str) -> node::node::Committed {
        let node = &self.handle(via).node;
        node.propose(Event::RoomJoined { room: room.into(), user: user.into() }, Duration::from_secs(10)).await.unwrap();
        node.propose(
            Event::MessagePosted { room: room.into(), from: user.into(), client_id: id.into(), text: format!("text {id}") },
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    }

    /// Waits until every running node has applied `index`, then checks that all
    /// of them hold the same state.
    pub async fn assert_converged(&self, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in self.running() {
            let node = &n.handle.as_ref().unwrap().node;
            node.wait_applied(index, deadline).await.unwrap_or_else(|e| panic!("node {}: {e}", n.id));
        }
        // Apply may run on past `index` on some nodes; compare at a quiet point.
        let target = self.running().map(|n| n.handle.as_ref().unwrap().node.applied_index()).max().unwrap();
        for n in self.running() {
            n.handle.as_ref().unwrap().node.wait_applied(target, deadline).await.unwrap();
        }
        let digests: Vec<(u64, String)> =
            self.running().map(|n| (n.id, n.handle.as_ref().unwrap().node.reader.digest().unwrap())).collect();
        assert!(digests.windows(2).all(|w| w[0].1 == w[1].1), "states differ: {digests:?}");
    }

    pub async fn status(&self, via: u64) -> ClusterStatus {
        self.admin(via).await.status(Empty {}).await.unwrap().into_inner()
    }

    /// The admin client of the node that answered `via`'s call by naming
    /// the leader (see `proto::LEADER_HEADER`), as chorusctl follows it.
    pub async fn redirected(&self, e: &tonic::Status) -> Option<AdminClient<tonic::transport::Channel>> {
        let leader = e.metadata().get(proto::LEADER_HEADER)?.to_str().ok()?;
        Some(AdminClient::connect(format!("http://{leader}")).await.unwrap())
    }

    pub async fn add(&self, via: u64, id: u64, learner: bool) {
        let add = AddRequest { raft_addr: self.node(id).raft_addr.to_string(), learner };
        let mut stream = match self.admin(via).await.add(add.clone()).await {
            Ok(s) => s.into_inner(),
            Err(e) => self.redirected(&e).await.unwrap_or_else(|| panic!("add via {via}: {e:?}")).add(add).await.unwrap().into_inner(),
        };
        while let Some(p) = stream.message().await.unwrap() {
            if p.done {
                return;
            }
        }
        panic!("add of node {id} ended early");
    }

    /// Removes member `id` through node `via`, following redirects to the
    /// leader (removing the leader redirects to its successor).
    pub async fn remove(&self, via: u64, id: u64) -> Result<ClusterStatus, tonic::Status> {
        let mut admin = self.admin(via).await;
        for _ in 0..3 {
            match admin.remove(IdRequest { id }).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(e) => match self.redirected(&e).await {
                    Some(next) => admin = next,
                    None => return Err(e),
                },
            }
        }
        admin.remove(IdRequest { id }).await.map(|r| r.into_inner())
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// TLS on the client port, when `CHORUS_TEST_CLIENT_TLS=1`: one CA and one
/// server certificate for 127.0.0.1 per test process, made with rcgen.
pub mod client_tls {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, OnceLock};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    pub struct ClientTls {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        /// TLS for the test's clients, trusting only the CA.
        pub client: Arc<ClientConfig>,
    }

    /// The process's client TLS, if the tests run with it.
    pub fn get() -> Option<&'static ClientTls> {
        static TLS: OnceLock<Option<ClientTls>> = OnceLock::new();
        TLS.get_or_init(|| (std::env::var("CHORUS_TEST_CLIENT_TLS").as_deref() == Ok("1")).then(make)).as_ref()
    }

    fn make() -> ClientTls {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem(), client: Arc::new(client) }
    }

    impl ClientTls {
        /// Writes the server certificate and key next to a node's data dir.
        pub fn write_identity(&self, data_dir: &Path) -> (PathBuf, PathBuf) {
            let parent = data_dir.parent().unwrap_or(data_dir);
            std::fs::create_dir_all(parent).unwrap();
            let (cert, key) = (parent.join("https.crt"), parent.join("https.key"));
            std::fs::write(&cert, &self.cert_pem).unwrap();
            std::fs::write(&key, &self.key_pem).unwrap();
            (cert, key)
        }

        pub fn ca_pem(&self) -> &str {
            &self.ca_pem
        }
    }
}

/// A WebSocket chat client for tests.
pub mod client {
    use std::time::Duration;

    use futures::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::Connector;

    pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    /// `https` when the tests run with client TLS, else `http`.
    pub fn scheme() -> &'static str {
        if super::client_tls::get().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The connector for `wss://` URLs (the test CA), if the tests use TLS.
    pub fn connector() -> Option<Connector> {
        super::client_tls::get().map(|t| Connector::Rustls(t.client.clone()))
    }

    pub fn http() -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(tls) = super::client_tls::get() {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem().as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    /// Registers `name` (if new) and logs in through `base`; returns the token.
    pub async fn login(base: &str, name: &str) -> String {
        let creds = json!({ "name": name, "password": "password-1" });
        let r = http().post(format!("{base}/v1/users")).json(&creds).send().await.unwrap();
        assert!(r.status() == 201 || r.status() == 409, "register {name}: {}", r.status());
        let r = http().post(format!("{base}/v1/sessions")).json(&creds).send().await.unwrap();
        assert_eq!(r.status(), 200, "login {name}");
        r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
    }

    pub async fn connect(base: &str, token: &str) -> Ws {
        let url = format!("{}/v1/ws?token={token}", base.replacen("http", "ws", 1));
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector()).await.unwrap().0
    }

    pub async fn send(ws: &mut Ws, frame: Value) {
        ws.send(Message::Text(frame.to_string().into())).await.unwrap();
    }

    /// The next JSON frame, within `secs`.
    pub async fn next(ws: &mut Ws, secs: u64) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(secs), ws.next()).await.ok()??.ok()?;
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame of type `kind`, skipping others (presence, typing…).
    pub async fn next_of(ws: &mut Ws, kind: &str) -> Value {
        loop {
            let f = next(ws, 10).await.unwrap_or_else(|| panic!("no {kind} frame"));
            if f["type"] == kind {
                return f;
            }
        }
    }

    pub async fn join(ws: &mut Ws, room: &str, after: Option<u64>) -> Value {
        let mut f = json!({ "type": "join", "room": room, "req": "j" });
        if let Some(a) = after {
            f["after"] = json!(a);
        }
        send(ws, f).await;
        next_of(ws, "joined").await
    }
}
