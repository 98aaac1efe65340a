//! Mutual TLS on the raft port, with real `chorusd` and `chorusctl` processes
//! and the certificates `chorusctl certs init` makes: members and operators get
//! in with their own certificates and only as what they are; a stranger does
//! not finish a handshake.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::client::{self, connect, join, login, next_of, send};
use node::procs::{chorusctl, Proc};
use proto::v1::raft_client::RaftClient;
use proto::v1::Empty;
use serde_json::{json, Value};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// `--tls-*` flags of node `id`.
fn node_flags(certs: &Path, id: u64) -> Vec<String> {
    let f = |name: String| certs.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        f(format!("node-{id}.crt")),
        "--tls-key".into(),
        f(format!("node-{id}.key")),
        "--tls-ca".into(),
        f("ca.crt".into()),
    ]
}

/// `chorusctl` credentials: the CA and the certificate `stem`.crt/.key.
fn creds(certs: &Path, stem: &str) -> Vec<String> {
    let f = |name: &str| certs.join(name).display().to_string();
    vec!["--ca".into(), f("ca.crt"), "--cert".into(), f(&format!("{stem}.crt")), "--key".into(), f(&format!("{stem}.key"))]
}

/// Runs chorusctl with `creds` against `node`; (success, stdout, stderr).
fn ctl(creds: &[String], node: &str, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = creds.iter().map(String::as_str).collect();
    all.extend(["--node", node, "--timeout", "10"]);
    all.extend_from_slice(args);
    let out = chorusctl(&all).expect("run chorusctl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn certs_init(dir: &Path) {
    let out = chorusctl(&["certs", "init", &dir.display().to_string(), "--nodes", "3"]).expect("run chorusctl");
    assert!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
}

/// A gRPC channel to `addr` over TLS trusting `ca`, presenting `identity`.
async fn channel(addr: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("read CA")));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).expect("read cert"), std::fs::read(key).expect("read key")));
    }
    Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect_timeout(Duration::from_secs(5)).connect().await
}

struct TlsCluster {
    _tmp: tempfile::TempDir,
    certs: PathBuf,
    procs: Vec<Proc>,
}

impl TlsCluster {
    /// Three TLS nodes formed by `chorusctl cluster init` with the operator's certificate.
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let certs = tmp.path().join("certs");
        certs_init(&certs);
        let mut procs = Vec::new();
        for id in 1..=3 {
            let mut extra = node_flags(&certs, id);
            extra.extend(["--rate-limit".to_string(), "0".to_string()]);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let mut p = Proc::new(id, tmp.path().join(format!("node-{id}")), &extra);
            p.start().expect("start a TLS node");
            procs.push(p);
        }
        let c = TlsCluster { _tmp: tmp, certs, procs };
        let mut args = vec!["cluster", "init"];
        args.extend(c.procs.iter().map(|p| p.raft_addr.as_str()));
        let (ok, _, err) = ctl(&c.operator(), &c.procs[0].raft_addr, &args);
        assert!(ok, "cluster init over TLS: {err}");
        c
    }

    fn operator(&self) -> Vec<String> {
        creds(&self.certs, "operator")
    }

    fn raft(&self, id: u64) -> &str {
        &self.procs[id as usize - 1].raft_addr
    }

    fn client(&self, id: u64) -> String {
        format!("http://{}", self.procs[id as usize - 1].client_addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_runs_chorusctl_and_a_member_certificate_does_not() {
    let c = TlsCluster::start();
    let (ok, out, err) = ctl(&c.operator(), c.raft(2), &["--json", "cluster", "status"]);
    assert!(ok, "status as the operator: {err}");
    let status: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");

    // A member's certificate is refused by every admin command.
    let (ok, _, err) = ctl(&creds(&c.certs, "node-1"), c.raft(2), &["cluster", "status"]);
    assert!(!ok);
    assert!(err.contains("member's, not an operator's"), "{err}");
    // Without credentials chorusctl speaks plain gRPC, which the TLS port does not answer.
    let (ok, _, err) = ctl(&[], c.raft(2), &["cluster", "status"]);
    assert!(!ok, "a plaintext status must fail: {err}");

    // A command only the leader carries out, sent to a follower, is redirected there.
    let leader = status["leader"].as_u64().expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3).find(|id| *id != leader && *id != follower).expect("another follower");
    let (ok, out, err) = ctl(&c.operator(), c.raft(follower), &["--json", "cluster", "transfer-leader", &other.to_string()]);
    assert!(ok, "transfer-leader through a follower: {err}");
    let moved: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(moved["leader"].as_u64(), Some(other), "{moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_finish_a_handshake_and_an_operator_cannot_call_raft() {
    let c = TlsCluster::start();
    let ca = c.certs.join("ca.crt");
    let addr = c.raft(1).to_string();

    // No client certificate: the server ends the handshake, no call gets through.
    let anonymous = match channel(&addr, &ca, None).await {
        Err(_) => None,
        Ok(ch) => Some(RaftClient::new(ch).read_index(Empty {}).await),
    };
    assert!(matches!(anonymous, None | Some(Err(_))), "a call without a certificate got an answer: {anonymous:?}");

    // A certificate from another CA: refused the same way.
    let elsewhere = c.certs.parent().expect("tmp").join("other-certs");
    certs_init(&elsewhere);
    let foreign = match channel(&addr, &ca, Some((&elsewhere.join("node-1.crt"), &elsewhere.join("node-1.key")))).await {
        Err(_) => None,
        Ok(ch) => Some(RaftClient::new(ch).read_index(Empty {}).await),
    };
    assert!(matches!(foreign, None | Some(Err(_))), "a foreign certificate got an answer: {foreign:?}");

    // The peer link in plaintext is a broken handshake to a TLS raft port,
    // whatever the hello says.
    use node::link::{CallError, Hello, Link};
    let t = std::time::Duration::from_secs(5);
    let hello = Hello { cluster_id: Some("any".into()), secret: None };
    let link = Link::connect(&addr, None, None, &hello, t).await;
    assert!(matches!(link, Err(CallError::Unsupported | CallError::Io(_))), "a TLS raft port answered the plaintext link: {:?}", link.err());
    // Over TLS, an operator's certificate completes the handshake but gets no
    // link (it is for members, as the Raft service is); a member's does.
    let tls_of = |who: &str| {
        let files = (c.certs.join(format!("{who}.crt")), c.certs.join(format!("{who}.key")));
        node::tls::Tls::load(Some(&files.0), Some(&files.1), Some(&ca)).expect("load").expect("tls").link_client()
    };
    let link = Link::connect(&addr, None, Some(&tls_of("operator")), &hello, t).await;
    assert!(matches!(link, Err(CallError::Unsupported | CallError::Io(_))), "an operator opened the peer link: {:?}", link.err());
    let link = Link::connect(&addr, None, Some(&tls_of("node-2")), &hello, t).await;
    assert!(matches!(&link, Err(CallError::Refused(why)) if why.contains("any")), "a member's link with a wrong cluster id: {:?}", link.err());

    // The operator's certificate completes the handshake, but the Raft
    // service (append, propose a user's event…) is for members only.
    let op = channel(&addr, &ca, Some((&c.certs.join("operator.crt"), &c.certs.join("operator.key")))).await.expect("operator handshake");
    let e = RaftClient::new(op).read_index(Empty {}).await.expect_err("an operator calling Raft");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // A member's certificate may.
    let member = channel(&addr, &ca, Some((&c.certs.join("node-2.crt"), &c.certs.join("node-2.key")))).await.expect("member handshake");
    let answer = RaftClient::new(member).read_index(Empty {}).await;
    assert!(!matches!(&answer, Err(e) if e.code() == tonic::Code::PermissionDenied), "{answer:?}");
}

/// The chat API of a cluster formed over TLS: written on one node, read and
/// delivered on the others, as without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_chat_across_nodes() {
    let c = TlsCluster::start();
    let (b1, b2, b3) = (c.client(1), c.client(2), c.client(3));
    let ann = login(&b1, "ann").await;
    let bob = login(&b2, "bob").await;
    let mut a = connect(&b3, &ann).await;
    let mut b = connect(&b2, &bob).await;
    join(&mut a, "general", None).await;
    join(&mut b, "general", None).await;
    send(&mut a, json!({ "type": "send", "room": "general", "id": "m1", "text": "over TLS" })).await;
    assert_eq!(next_of(&mut a, "ack").await["seq"], 1);
    assert_eq!(next_of(&mut b, "message").await["text"], "over TLS");
    let url = format!("{b1}/v1/rooms/general/messages?consistency=linearizable");
    let page: Value = client::http().get(url).bearer_auth(&ann).send().await.expect("history").json().await.expect("page");
    assert_eq!(page["messages"][0]["text"], "over TLS", "{page}");
}
