//! `chorusctl bench`: load over the public WebSocket API, with printed figures.
//!
//! Three phases, each optional:
//! - **acks**: `--senders` closed-loop senders spread over the nodes, each in a
//!   room of its own; acked messages/s, ack latency, send→deliver latency.
//! - **fan-out**: `--subscribers` connections in one room spread over the nodes,
//!   `--fanout-senders` senders; deliveries/s and send→deliver latency. The
//!   subscribers are read by `--reader-threads` OS threads polling their
//!   sockets with mio (see [`subscribers::SubscriberReader`]), not by a tokio
//!   task each.
//! - **idle**: `--idle` connections to the first node; its RSS growth per
//!   connection (needs `--pids`, the chorusd process ids in `--urls` order).
//!
//! The acks and fan-out phases also print the CPU time the nodes (with
//! `--pids`) and this process used per acked message or delivery, how busy
//! the machine was, and each node's Raft log fsyncs in the window (from its
//! `chorus_log_sync_seconds`): how many, how many took over 25 ms, and a bound
//! on the slowest. A stalled disk shows there rather than as a mystery in the
//! latency figures.
//!
//! The cluster should run with `--rate-limit 0`. Send times travel in the message
//! text, so send→deliver is measured on one clock (this process's).
//!
//! [`run`] sets up what the phases share ([`Bench`]) and runs each phase that
//! was asked for, in that order: [`acks`], [`fanout`], [`idle`]. Each phase
//! connects its clients, drives the load for `--secs` and prints its figures.
//! With `--breakdown`, acks also prints each node's write stages
//! ([`breakdown`]). [`measure`] holds the CPU, RSS and log-sync meters, [`deliveries`] what the
//! connections count and sample, [`subscribers`] the fan-out's mio readers.

mod acks;
mod breakdown;
mod deliveries;
mod fanout;
mod idle;
mod measure;
mod subscribers;

use std::time::Instant;

use crate::chat::session;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Client URLs of the nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    #[arg(long, default_value_t = 256)]
    senders: usize,
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    #[arg(long, default_value_t = 8)]
    fanout_senders: usize,
    /// Fan-out messages per second over all its senders, paced (open loop);
    /// 0: each sender sends its next message when the last is acked.
    #[arg(long, default_value_t = 0)]
    fanout_rate: u64,
    /// Threads reading the fan-out subscribers' sockets. One is the default:
    /// on a 2-core machine that also runs the nodes, two measured no better
    /// (docs/PERFORMANCE.md, "Tried and not kept"); on a bigger load machine, use more.
    #[arg(long, default_value_t = 1)]
    reader_threads: usize,
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// chorusd process ids, in --urls order (for RSS and CPU figures).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 200)]
    bytes: usize,
    /// Also print the fan-out's send→deliver latency per 250 ms of send time,
    /// to tell a steady queue from a few stalls.
    #[arg(long)]
    timeline: bool,
    /// Also print, per node, the mean time of each stage of a write in the
    /// acks window (from `chorus_write_stage_seconds`): run with `--senders 1`
    /// and the leader's URL first to see one write's path.
    #[arg(long)]
    breakdown: bool,
    /// The percentage (0-100) of the acks phase's operations that edit or
    /// react to the sender's last message instead of sending one.
    #[arg(long, default_value_t = 0)]
    changes: u8,
}

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}


struct Users {
    tokens: Vec<String>,
}

impl Users {
    async fn new(url: &str, prefix: &str, n: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let mut tokens = Vec::new();
        for i in 0..n {
            tokens.push(session(&http, url, &format!("{prefix}{i}"), "bench-password", None).await?);
        }
        Ok(Users { tokens })
    }

    fn token(&self, i: usize) -> &str {
        &self.tokens[i % self.tokens.len()]
    }
}


/// What the phases share: the nodes' URLs, the users their connections log in
/// as, and the clock send times are taken on.
struct Bench {
    start: Instant,
    urls: Vec<String>,
    users: Users,
    http: reqwest::Client,
    /// Message text after the 20-digit send time and its space, to make up `--bytes`.
    pad: String,
}

impl Bench {
    async fn setup(args: &BenchArgs) -> anyhow::Result<Self> {
        let start = Instant::now();
        let urls: Vec<String> = args.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        let users = Users::new(&urls[0], "bench", 16).await?;
        let http = reqwest::Client::new();
        let pad = "x".repeat(args.bytes.saturating_sub(21));
        Ok(Bench { start, urls, users, http, pad })
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let bench = Bench::setup(args).await?;
    println!("chorusctl bench: {} nodes, {}-byte messages, {} s per phase", bench.urls.len(), args.bytes, args.secs);
    if args.senders > 0 {
        acks::run(&bench, args).await?;
    }
    if args.subscribers > 0 {
        fanout::run(&bench, args).await?;
    }
    if args.idle > 0 {
        idle::run(&bench, args).await?;
    }
    Ok(())
}
