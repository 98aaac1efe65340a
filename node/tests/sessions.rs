//! Session tokens across a 3-node cluster of real `chorusd` processes: a
//! revocation is replicated, so every node refuses the user's older tokens
//! and closes the connections opened with them; a key rotation keeps older
//! tokens good until they expire, unless the old keys are dropped.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use common::client::{self, connect, join, login};
use futures::StreamExt;
use node::procs::{ctl, ProcCluster};
use tokio_tungstenite::tungstenite::Message;

const FAST: [&str; 4] = ["--heartbeat-ms", "50", "--election-ms", "300"];

fn bases(c: &ProcCluster) -> Vec<String> {
    c.procs.iter().map(|p| format!("http://{}", p.client_addr)).collect()
}

/// The status `GET /v1/rooms` answers through `base` for `token`.
async fn rooms_status(base: &str, token: &str) -> anyhow::Result<u16> {
    let r = client::http().get(format!("{base}/v1/rooms")).bearer_auth(token).send().await?;
    Ok(r.status().as_u16())
}

/// Waits until every node answers `want` for `token` (each node refuses a
/// revoked token once it has applied the revocation).
async fn everywhere(bases: &[String], token: &str, want: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in bases {
        loop {
            let got = rooms_status(base, token).await?;
            if got == want {
                break;
            }
            ensure!(Instant::now() < deadline, "{base} still answers {got} for the token, not {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The key version a token names. A token is `PAYLOAD.TAG`, each base64url;
/// the payload is `user\nexpiry` (key 0, epoch 0) or `user\nexpiry\nversion\nepoch`.
fn key_version(token: &str) -> anyhow::Result<u32> {
    use base64::Engine;
    let (payload, _tag) = token.split_once('.').context("a token without a signature")?;
    let payload = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let fields: Vec<&str> = payload.split('\n').collect();
    match fields.len() {
        2 => Ok(0),
        4 => Ok(fields[2].parse()?),
        n => anyhow::bail!("a token payload of {n} fields: {payload:?}"),
    }
}

/// The close code the server ends `ws` with, skipping any other frames.
async fn close_code(ws: &mut common::client::Ws) -> anyhow::Result<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.context("no close within 10 s")?;
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return Ok(frame.code.into()),
            Some(Ok(Message::Close(None))) | None => anyhow::bail!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => anyhow::bail!("read failed before a close frame: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_refuses_older_tokens_on_every_node_and_closes_their_connections() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = ProcCluster::start(tmp.path(), 3, &FAST)?;
    let bases = bases(&c);
    let old = login(&bases[0], "ann").await;
    let other = login(&bases[1], "bob").await;
    everywhere(&bases, &old, 200).await?;
    // Open connections on two nodes with the token about to be revoked.
    let mut ws_a = connect(&bases[1], &old).await;
    join(&mut ws_a, "lobby", None).await;
    let mut ws_b = connect(&bases[2], &old).await;
    join(&mut ws_b, "lobby", None).await;

    // ann revokes her own sessions through node 1.
    let r = client::http().post(format!("{}/v1/sessions/revoke", bases[0])).bearer_auth(&old).send().await?;
    ensure!(r.status() == 200, "revoke answered {}", r.status());
    everywhere(&bases, &old, 401).await?;
    assert_eq!(close_code(&mut ws_a).await?, 4001);
    assert_eq!(close_code(&mut ws_b).await?, 4001);
    // Another user's token is untouched; ann can log in again, anywhere.
    everywhere(&bases, &other, 200).await?;
    let fresh = login(&bases[2], "ann").await;
    everywhere(&bases, &fresh, 200).await?;
    let mut ws = connect(&bases[0], &fresh).await;
    join(&mut ws, "lobby", None).await;

    // An operator revokes bob's sessions with chorusctl, through a follower or the leader alike.
    let out = ctl(&c.procs[2].raft_addr, &["users", "revoke", "bob"])?;
    assert!(out.contains("every session of bob"), "{out}");
    everywhere(&bases, &other, 401).await?;
    everywhere(&bases, &fresh, 200).await?;
    let e = ctl(&c.procs[0].raft_addr, &["users", "revoke", "nobody"]).expect_err("revoking an unknown user");
    assert!(e.to_string().contains("no user named nobody"), "{e}");
    // The revoked token cannot revoke again.
    let r = client::http().post(format!("{}/v1/sessions/revoke", bases[1])).bearer_auth(&old).send().await?;
    assert_eq!(r.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_new_tokens_and_old_ones_stay_good_until_dropped() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = ProcCluster::start(tmp.path(), 3, &FAST)?;
    let bases = bases(&c);
    let raft = c.procs[1].raft_addr.clone();
    let v0 = login(&bases[0], "ann").await;
    assert_eq!(key_version(&v0)?, 0);

    let out = ctl(&raft, &["--json", "users", "rotate-key"])?;
    let reply: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(reply["key_version"], 1, "{reply}");
    // Every node signs with the new key once it has applied the rotation.
    for base in &bases {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let token = login(base, "ann").await;
            if key_version(&token)? == 1 {
                everywhere(&bases, &token, 200).await?;
                break;
            }
            ensure!(Instant::now() < deadline, "{base} still signs with key 0");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    everywhere(&bases, &v0, 200).await?;
    let mut ws = connect(&bases[2], &v0).await;
    join(&mut ws, "lobby", None).await;

    // A leaked key: drop every older one, and their tokens are refused.
    let v1 = login(&bases[0], "ann").await;
    let out = ctl(&raft, &["users", "rotate-key", "--drop-old"])?;
    assert!(out.contains("version 2") && out.contains("refused"), "{out}");
    everywhere(&bases, &v0, 401).await?;
    everywhere(&bases, &v1, 401).await?;
    assert_eq!(close_code(&mut ws).await?, 4001, "a connection opened with a dropped key's token");
    let v2 = login(&bases[1], "ann").await;
    assert_eq!(key_version(&v2)?, 2);
    everywhere(&bases, &v2, 200).await?;
    Ok(())
}
