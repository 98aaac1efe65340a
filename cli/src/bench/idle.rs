//! The idle phase: `--idle` connections to the first node, and its RSS growth
//! per connection (needs `--pids`).

use std::time::Duration;

use anyhow::Context;

use super::measure::rss_kib;
use super::{Bench, BenchArgs};
use crate::chat::connect;

pub(super) async fn run(bench: &Bench, args: &BenchArgs) -> anyhow::Result<()> {
    let pid = args.pids.first().copied().context("--idle needs --pids to read the server's RSS")?;
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        conns.push(connect(&bench.urls[0], bench.users.token(i)).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    println!("idle: {} connections on {}", args.idle, bench.urls[0]);
    println!("  server RSS {} KiB → {} KiB: {:.1} KiB per connection", before, after, (after.saturating_sub(before)) as f64 / args.idle as f64);
    drop(conns);
    Ok(())
}
