//! The quick start as an operator runs it: `scripts/run.sh` makes the
//! certificates, starts three `chorusd` processes and forms them with
//! `chorusctl`, raft on mutual TLS and the client port on HTTPS and WSS. The
//! chat API then works across its nodes over TLS only, for programs and for
//! `chorusctl chat`, and Ctrl-C (SIGTERM) stops every node.
//!
//! The whole chat suite (`tests/chat.rs`) also runs over client TLS, in
//! process, with `CHORUS_TEST_TLS=1` (scripts/test.sh does both).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{join, next_of, send, Ws};
use node::procs::bin_dir;
use serde_json::{json, Value};
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::Connector;

/// Ports `base + 1 ..= base + 3` free now for clients, and `base + 101 ..=
/// base + 103` for raft (run.sh gives node i base + i).
fn free_bases() -> (u16, u16) {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 7 + attempt * 997) % 30_000) as u16;
        let ports = (1..=3).flat_map(|i| [base + i, base + 100 + i]);
        let held: Result<Vec<TcpListener>, _> = ports.map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if held.is_ok() {
            return (base, base + 100);
        }
    }
    panic!("no six free loopback ports found");
}

/// `scripts/run.sh` running in its own process group, stopped on drop.
struct RunSh {
    child: Child,
    data: PathBuf,
}

impl RunSh {
    /// Starts run.sh on `data` and waits until it says the cluster is formed.
    fn start(data: &Path, client_base: u16, raft_base: u16) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let target = bin_dir().expect("binaries").parent().expect("target dir").to_path_buf();
        let mut child = Command::new("bash")
            .arg(root.join("scripts/run.sh"))
            .env("CHORUS_DATA", data)
            .env("CHORUS_NO_BUILD", "1")
            .env("CARGO_TARGET_DIR", &target)
            .env("CHORUS_CLIENT_PORT_BASE", client_base.to_string())
            .env("CHORUS_RAFT_PORT_BASE", raft_base.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start scripts/run.sh");
        let stdout = child.stdout.take().expect("run.sh stdout");
        let mut run = RunSh { child, data: data.to_path_buf() };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("run.sh: {line}");
                if line.contains("Ctrl-C stops the cluster") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            let status = run.child.try_wait().ok().flatten();
            panic!("run.sh did not form the cluster in 90 s (exit: {status:?}); logs in {}", run.data.display());
        }
        run
    }

    fn ca(&self) -> PathBuf {
        self.data.join("certs/ca.crt")
    }

    /// SIGTERM to run.sh, as Ctrl-C: it stops its nodes and exits.
    fn stop(&mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for RunSh {
    fn drop(&mut self) {
        // Whatever is left of the group (the nodes, if run.sh did not stop them).
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

async fn login(http: &reqwest::Client, base: &str, name: &str) -> String {
    let creds = json!({ "name": name, "password": "password-1" });
    let r = http.post(format!("{base}/v1/users")).json(&creds).send().await.expect("register over HTTPS");
    assert!(r.status() == 201 || r.status() == 409, "register {name}: {}", r.status());
    let r = http.post(format!("{base}/v1/sessions")).json(&creds).send().await.expect("log in over HTTPS");
    assert_eq!(r.status(), 200, "login {name}");
    r.json::<Value>().await.expect("session")["token"].as_str().expect("token").to_string()
}

async fn connect(base: &str, token: &str, tls: &Arc<ClientConfig>) -> Ws {
    let url = format!("{}/v1/ws?token={token}", base.replacen("https", "wss", 1));
    let connector = Some(Connector::Rustls(tls.clone()));
    tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await.expect("WSS connect").0
}

/// Types `lines` into `chorusctl chat` on `base` as `user`; waits for it to quit.
fn cli_chat(ca: &Path, base: &str, user: &str, lines: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin_dir().expect("binaries").join("chorusctl"))
        .args(["--ca", &ca.display().to_string(), "chat", "--url", base, "--user", user, "--password", "password-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chorusctl chat");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in lines {
        writeln!(stdin, "{line}").expect("type a line");
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(stdin);
    child.wait_with_output().expect("chorusctl chat ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_forms_a_tls_cluster_that_serves_chat_over_https_and_wss() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (client_base, raft_base) = free_bases();
    let mut run = RunSh::start(tmp.path(), client_base, raft_base);
    let ca = run.ca();
    let tls = common::tls::trusting(&std::fs::read(&ca).expect("read ca.crt"));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("ca.crt")).expect("PEM"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTPS client");
    let base = |i: u16| format!("https://127.0.0.1:{}", client_base + i);

    // Nothing is served in plain text on the client port.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/healthz", client_base + 1)).send().await;
    assert!(plain.is_err(), "plain HTTP answered on a TLS client port: {plain:?}");
    // Nor to a client that does not trust the cluster's CA.
    let untrusted = reqwest::Client::new().get(format!("{}/healthz", base(1))).send().await;
    assert!(untrusted.is_err(), "a client without the CA completed a handshake: {untrusted:?}");

    let ann = login(&http, &base(1), "ann").await;
    let bob = login(&http, &base(2), "bob").await;
    let mut a = connect(&base(3), &ann, &tls).await;
    let mut b = connect(&base(2), &bob, &tls).await;
    join(&mut a, "general", None).await;
    join(&mut b, "general", None).await;
    send(&mut a, json!({ "type": "send", "room": "general", "id": "m1", "text": "over TLS" })).await;
    assert_eq!(next_of(&mut a, "ack").await["seq"], 1);
    assert_eq!(next_of(&mut b, "message").await["text"], "over TLS");
    // The same id again is stored once: the same seq comes back.
    send(&mut a, json!({ "type": "send", "room": "general", "id": "m1", "text": "over TLS" })).await;
    assert_eq!(next_of(&mut a, "ack").await["seq"], 1);
    send(&mut b, json!({ "type": "dm", "to": "ann", "id": "d1", "text": "direct" })).await;
    // ann's own message reaches her connection live too, before or after its
    // ack (the ack and the fan-out are separate writers): it may come first.
    let mut m = next_of(&mut a, "message").await;
    if m["text"] == "over TLS" {
        m = next_of(&mut a, "message").await;
    }
    assert_eq!(m["text"], "direct");

    // The terminal client over WSS, trusting the CA from --ca.
    let out = cli_chat(&ca, &base(1), "cat", &["hello from the terminal", "/quit"]);
    assert!(out.status.success(), "chorusctl chat: {}", String::from_utf8_lossy(&out.stderr));
    // (bob's own DM comes back to him first.)
    let mut m = next_of(&mut b, "message").await;
    while m["room"] != "general" {
        m = next_of(&mut b, "message").await;
    }
    assert_eq!((m["from"].as_str(), m["text"].as_str()), (Some("cat"), Some("hello from the terminal")), "{m}");

    // Every node serves the same history, and a client resumes on another
    // node with nothing missed.
    for i in 1..=3 {
        let url = format!("{}/v1/rooms/general/messages?consistency=linearizable", base(i));
        let page: Value = http.get(url).bearer_auth(&ann).send().await.expect("history").json().await.expect("page");
        let texts: Vec<&str> = page["messages"].as_array().expect("messages").iter().filter_map(|m| m["text"].as_str()).collect();
        assert_eq!(texts, ["over TLS", "hello from the terminal"], "node {i}: {page}");
    }
    let mut again = connect(&base(1), &bob, &tls).await;
    join(&mut again, "general", Some(1)).await;
    assert_eq!(next_of(&mut again, "message").await["text"], "hello from the terminal");

    assert!(run.stop(), "run.sh did not exit on SIGTERM");
    for i in 1..=3 {
        let gone = std::net::TcpStream::connect(("127.0.0.1", client_base + i)).is_err();
        assert!(gone, "node {i} still listens after run.sh stopped");
    }
}
