//! `chorus-bench search`: full-text search latency over a cluster holding
//! `--messages` messages (default 1,000,000).
//!
//! 1. Loads the messages into 10 rooms with the gathering client at 256
//!    writers. Each text is about 200 bytes of words drawn from a 10,000-word
//!    vocabulary with Zipf-like frequencies (the `r`th most common word about
//!    `1/r` as often as the first), so common words match hundreds of
//!    thousands of messages and rare ones a handful, as in real chat.
//! 2. Posts one last message with a word no other holds and times how long a
//!    follower's index takes to find it: how far its indexer trails the log.
//! 3. Sends `--queries` searches of each kind, one at a time, to that follower
//!    over HTTP (`GET /v1/search`, as a user who may read every room) and
//!    prints p50 and p99 per kind, with the index's size on disk.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use node::procs::ProcCluster;
use node::rpc::{propose_at, ProposeReply};
use proto::v1::raft_client::RaftClient;
use raft_store::chat::Event;

use crate::breakdown::wait_leader;
use crate::recovery::{load, reader_token};
use crate::{rand_suffix, Args};

const ROOMS: u64 = 10;
const VOCABULARY: u64 = 10_000;
const SYLLABLES: [&str; 20] = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "po", "qu", "ba", "de", "fi", "go", "hu", "ja", "ke", "li", "mo"];
const SENTINEL: &str = "zzlastwordzz";

/// The word of frequency rank `rank` (0 the most common): its digits in base
/// 20 as syllables, each word distinct.
fn word(rank: u64) -> String {
    let mut n = rank + SYLLABLES.len() as u64;
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(SYLLABLES[(n % SYLLABLES.len() as u64) as usize]);
        n /= SYLLABLES.len() as u64;
    }
    digits.iter().rev().copied().collect()
}

/// splitmix64: a fixed stream of pseudo-random numbers from `seed`.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Message `i`'s text: words until about 200 bytes, each rank log-uniform
/// over the vocabulary (a Zipf distribution with exponent 1).
fn text(i: u64) -> String {
    let mut out = String::with_capacity(220);
    let mut k = 0;
    while out.len() < 200 {
        let u = (mix(i.wrapping_mul(64).wrapping_add(k)) >> 11) as f64 / (1u64 << 53) as f64;
        let rank = ((VOCABULARY as f64).powf(u) as u64).saturating_sub(1).min(VOCABULARY - 1);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word(rank));
        k += 1;
    }
    out
}

fn room(i: u64) -> String {
    format!("bench-{}", i % ROOMS)
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (hb, el) = (args.heartbeat_ms.to_string(), args.election_ms.to_string());
    let extra = ["--heartbeat-ms", &hb, "--election-ms", &el, "--rate-limit", "0", "--request-rate-limit", "0"];
    let mut c = ProcCluster::start(tmp.path(), args.nodes, &extra)?;
    let leader = wait_leader(&c)?;
    let leader_raft = c.proc(leader).raft_addr.clone();
    let status = c.status(&leader_raft)?;
    let cluster_id = status["cluster_id"].as_str().context("no cluster id")?.to_string();
    let follower = c.procs.iter().map(|p| p.id).find(|id| *id != leader).context("no follower")?;
    let url = format!("http://{}", c.proc(follower).client_addr);

    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let token = reader_token(&http, &url).await?;
    let mut client = RaftClient::connect(format!("http://{leader_raft}")).await?;
    for r in 0..ROOMS {
        let join = Event::RoomJoined { room: room(r), user: "bench".into() };
        propose_at(&mut client, &cluster_id, None, &join, Duration::from_secs(5)).await?;
    }
    let began = Instant::now();
    let message = |w: usize, i: u64| Event::MessagePosted { room: room(i), from: "bench".into(), client_id: format!("{w}-{i}-{}", rand_suffix()), text: text(i) };
    load(&leader_raft, &cluster_id, args.messages, message).await?;
    let took = began.elapsed();
    println!("chorus-bench search: {} messages (~200 bytes, {VOCABULARY}-word Zipf vocabulary) in {ROOMS} rooms loaded in {:.1} s ({:.0}/s)", args.messages, took.as_secs_f64(), args.messages as f64 / took.as_secs_f64());

    let last = Event::MessagePosted { room: room(0), from: "bench".into(), client_id: format!("last-{}", rand_suffix()), text: format!("the end {SENTINEL}") };
    match propose_at(&mut client, &cluster_id, None, &last, Duration::from_secs(5)).await? {
        ProposeReply::Committed { .. } => {}
        other => bail!("the last message was refused: {other:?}"),
    }
    let acked = Instant::now();
    loop {
        let (status, page) = query(&http, &url, &token, SENTINEL).await?;
        if status != 200 {
            bail!("search on node {follower}: {status} {page}");
        }
        if page["results"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        if acked.elapsed() > Duration::from_secs(600) {
            bail!("node {follower}'s index did not find the last message within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("node {follower} (a follower) finds the last message {:.0} ms after its ack", acked.elapsed().as_secs_f64() * 1000.0);
    let dir = c.proc(follower).dir.join("search");
    println!("its index: {:.1} MB in {}", dir_bytes(&dir)? as f64 / 1e6, dir.display());

    let kinds: [(&str, String); 5] = [
        ("a common word (rank 3)", word(3)),
        ("a middling word (rank 300)", word(300)),
        ("a rare word (rank 9000)", word(9000)),
        ("two words (ranks 30, 300)", format!("{} {}", word(30), word(300))),
        ("a phrase (ranks 1, 2)", format!("\"{} {}\"", word(1), word(2))),
    ];
    println!("{} searches of each kind, one at a time, over HTTP to node {follower} (20 results a page):", args.queries);
    for (kind, q) in kinds {
        let mut lat = Vec::with_capacity(args.queries);
        let mut found = 0;
        for _ in 0..args.queries {
            let t = Instant::now();
            let (status, page) = query(&http, &url, &token, &q).await?;
            lat.push(t.elapsed());
            if status != 200 {
                bail!("search {q:?}: {status} {page}");
            }
            found = page["results"].as_array().map_or(0, Vec::len);
        }
        lat.sort();
        let at = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
        println!("  {kind:<28} {q:<24} p50 {:>6.2} ms  p99 {:>6.2} ms  ({found} results on the page)", at(0.50), at(0.99));
    }
    Ok(())
}

async fn query(http: &reqwest::Client, url: &str, token: &str, q: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = http.get(format!("{url}/v1/search")).query(&[("q", q)]).bearer_auth(token).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(serde_json::Value::Null)))
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_texts_fixed() {
        let words: std::collections::HashSet<String> = (0..VOCABULARY).map(word).collect();
        assert_eq!(words.len() as u64, VOCABULARY);
        assert_eq!(text(7), text(7));
        assert_ne!(text(7), text(8));
        assert!((200..260).contains(&text(7).len()), "{}", text(7));
    }
}
