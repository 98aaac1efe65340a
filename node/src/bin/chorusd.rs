//! `chorusd`: one Chorus node. Parses flags, sets up logging, starts the node and
//! stops it gracefully on SIGINT or SIGTERM.

use clap::Parser;
use node::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("CHORUS_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match &config.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            Box::new(move || Box::new(file.try_clone().expect("log file handle")) as Box<dyn std::io::Write>)
        }
        None => Box::new(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write>),
    };
    match config.log_format {
        LogFormat::Json => builder.json().with_writer(writer).init(),
        LogFormat::Text => builder.with_writer(writer).init(),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// mimalloc instead of glibc's malloc: a loaded node allocates and frees
/// buffers of every size on many threads, and glibc's allocator (arena locks,
/// chunk consolidation) was 14 % of a node's CPU in the log benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(e) = init_logging(&config) {
        eprintln!("chorusd: cannot set up logging: {e:#}");
        std::process::exit(1);
    }
    let result = async {
        let listeners = node::Listeners::bind(&config).await?;
        let handle = node::start(config, listeners).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("chorusd: {e:#}");
        std::process::exit(1);
    }
}
