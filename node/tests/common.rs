//! In-process clusters for integration tests: real nodes, real RocksDB in
//! temporary directories, real gRPC on 127.0.0.1 ports chosen by the OS.
//!
//! With `CHORUS_TEST_TLS=1` every node runs its raft port on mutual TLS and
//! serves its client port over HTTPS and WSS, with certificates from a CA made
//! once per test process ([`tls`]); admin calls go as an operator and
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
    if let Some(tls) = tls::get() {
        let files = tls.write_identity(&dir, id);
        c.client_tls_cert = Some(files.https_cert);
        c.client_tls_key = Some(files.https_key);
        c.tls_cert = Some(files.peer_cert);
        c.tls_key = Some(files.peer_key);
        c.tls_ca = Some(files.ca);
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

/// The admin client of the raft port at `raft`: as the tests' operator, with TLS.
pub async fn admin_at(raft: SocketAddr) -> AdminClient<tonic::transport::Channel> {
    match tls::get() {
        Some(tls) => AdminClient::new(tls.operator_channel(raft).await),
        None => AdminClient::connect(format!("http://{raft}")).await.unwrap(),
    }
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
        if tls::get().is_some() {
            // The raft port really is on TLS: plain gRPC gets no answer.
            if let Ok(mut plain) = AdminClient::connect(format!("http://{}", c.nodes[0].raft_addr)).await {
                assert!(plain.status(Empty {}).await.is_err(), "a TLS raft port answered plain gRPC");
            }
        }
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
        admin_at(self.node(id).raft_addr).await
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
    /// of them hold the same state: the digests of the nodes that stand at
    /// the same applied index (each read with its index from one RocksDB
    /// snapshot) must be equal. Entries the leader proposes on its own (the
    /// formation's feature level) may still be arriving, so the nodes are
    /// read again until they stand at one index.
    pub async fn assert_converged(&self, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in self.running() {
            let node = &n.handle.as_ref().unwrap().node;
            node.wait_applied(index, deadline).await.unwrap_or_else(|e| panic!("node {}: {e}", n.id));
        }
        loop {
            let states: Vec<(u64, u64, String)> = self
                .running()
                .map(|n| {
                    let (applied, digest) = n.handle.as_ref().unwrap().node.reader.applied_digest().unwrap();
                    (n.id, applied, digest)
                })
                .collect();
            for a in &states {
                for b in &states {
                    assert!(a.1 != b.1 || a.2 == b.2, "states differ at the same applied index: {states:?}");
                }
            }
            if states.windows(2).all(|w| w[0].1 == w[1].1) {
                return;
            }
            assert!(Instant::now() < deadline, "nodes never stood at one applied index: {states:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(&self, via: u64) -> ClusterStatus {
        self.admin(via).await.status(Empty {}).await.unwrap().into_inner()
    }

    /// The admin client of the node that answered `via`'s call by naming
    /// the leader (see `proto::LEADER_HEADER`), as chorusctl follows it.
    pub async fn redirected(&self, e: &tonic::Status) -> Option<AdminClient<tonic::transport::Channel>> {
        let leader = e.metadata().get(proto::LEADER_HEADER)?.to_str().ok()?;
        Some(admin_at(leader.parse().ok()?).await)
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

/// TLS, when `CHORUS_TEST_TLS=1`: one CA per test process (rcgen), and from
/// it a server certificate for the client port, a peer certificate per node
/// id for mutual TLS on the raft port, and an operator certificate for the
/// tests' admin calls, as `chorusctl certs init` makes them.
pub mod tls {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, OnceLock};

    use proto::roles::{OPERATOR_URI_PREFIX, PEER_URI_PREFIX};
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

    /// The node ids that get a peer certificate.
    const MAX_NODE_ID: u64 = 16;

    /// A certificate and its key, PEM.
    struct Pair {
        cert: String,
        key: String,
    }

    pub struct TestTls {
        ca_pem: String,
        https: Pair,
        peers: Vec<Pair>,
        operator: Pair,
        /// TLS for the test's chat clients, trusting only the CA.
        pub client: Arc<ClientConfig>,
    }

    /// The process's TLS, if the tests run with it.
    pub fn get() -> Option<&'static TestTls> {
        static TLS: OnceLock<Option<TestTls>> = OnceLock::new();
        TLS.get_or_init(|| (std::env::var("CHORUS_TEST_TLS").as_deref() == Ok("1")).then(make)).as_ref()
    }

    fn sign(issuer: &Issuer<'_, KeyPair>, uri: Option<String>, usages: Vec<ExtendedKeyUsagePurpose>) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
        params.extended_key_usages = usages;
        Pair { cert: params.signed_by(&key, issuer).unwrap().pem(), key: key.serialize_pem() }
    }

    fn make() -> TestTls {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let peers = (1..=MAX_NODE_ID).map(|id| sign(&issuer, Some(format!("{PEER_URI_PREFIX}{id}")), vec![ServerAuth, ClientAuth])).collect();
        TestTls {
            https: sign(&issuer, None, vec![ServerAuth]),
            peers,
            operator: sign(&issuer, Some(format!("{OPERATOR_URI_PREFIX}tests")), vec![ClientAuth]),
            client: trusting(ca_pem.as_bytes()),
            ca_pem,
        }
    }

    /// Where [`TestTls::write_identity`] put a node's files.
    pub struct NodeFiles {
        pub https_cert: PathBuf,
        pub https_key: PathBuf,
        pub peer_cert: PathBuf,
        pub peer_key: PathBuf,
        pub ca: PathBuf,
    }

    impl TestTls {
        /// Writes node `id`'s certificates and keys next to its data dir.
        pub fn write_identity(&self, data_dir: &Path, id: u64) -> NodeFiles {
            let parent = data_dir.parent().unwrap_or(data_dir).join(format!("certs-{id}"));
            std::fs::create_dir_all(&parent).unwrap();
            let peer = &self.peers[usize::try_from(id - 1).unwrap()];
            let files = NodeFiles {
                https_cert: parent.join("https.crt"),
                https_key: parent.join("https.key"),
                peer_cert: parent.join("node.crt"),
                peer_key: parent.join("node.key"),
                ca: parent.join("ca.crt"),
            };
            for (path, pem) in [
                (&files.https_cert, &self.https.cert),
                (&files.https_key, &self.https.key),
                (&files.peer_cert, &peer.cert),
                (&files.peer_key, &peer.key),
                (&files.ca, &self.ca_pem),
            ] {
                std::fs::write(path, pem).unwrap();
            }
            files
        }

        pub fn ca_pem(&self) -> &str {
            &self.ca_pem
        }

        /// A gRPC channel to a raft port, as the tests' operator.
        pub async fn operator_channel(&self, raft: SocketAddr) -> Channel {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&self.ca_pem))
                .identity(Identity::from_pem(&self.operator.cert, &self.operator.key));
            Endpoint::from_shared(format!("https://{raft}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
        }
    }

    /// Client TLS trusting only the CA certificates in `ca_pem`.
    pub fn trusting(ca_pem: &[u8]) -> Arc<ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.expect("a PEM certificate")).expect("add the CA");
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap();
        Arc::new(config.with_root_certificates(roots).with_no_client_auth())
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
        if super::tls::get().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The connector for `wss://` URLs (the test CA), if the tests use TLS.
    pub fn connector() -> Option<Connector> {
        super::tls::get().map(|t| Connector::Rustls(t.client.clone()))
    }

    pub fn http() -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(tls) = super::tls::get() {
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
