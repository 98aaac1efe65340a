//! `chorusd`: one Chorus node. Parses flags, sets up logging, starts the node and
//! stops it gracefully on SIGINT or SIGTERM.

use std::io::Write;

use node::config::{Config, LogFormat};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("CHORUS_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // One shared handle for every line: cloning the file per line would need a
    // descriptor per line, and could fail when descriptors run out.
    let writer = match &config.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            BoxMakeWriter::new(std::sync::Arc::new(file))
        }
        None => BoxMakeWriter::new(std::io::stderr),
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
    let config = match node::config::load_from(std::env::args_os()) {
        Ok(loaded) if loaded.config.print_config => {
            print!("{}", loaded.to_toml());
            return;
        }
        Ok(loaded) => loaded.config,
        Err(e) => match e.downcast::<clap::Error>() {
            // --help, --version and bad flags: clap's own output and exit code.
            Ok(clap_error) => clap_error.exit(),
            Err(e) => {
                eprintln!("chorusd: {e:#}");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("chorusd: cannot set up logging: {e:#}");
        std::process::exit(1);
    }
    let ready_file = config.ready_file.clone();
    let result = async {
        // A file left by an earlier run must not be taken for this one.
        if let Some(path) = &ready_file {
            node::ready::remove(path)?;
        }
        let listeners = node::Listeners::bind(&config).await?;
        let handle = node::start(config, listeners).await?;
        // The servers run and the listeners are bound: whoever started this
        // process may connect now (the addresses matter most with port 0). The
        // file goes first, so whoever read the stdout line finds it there too.
        let ready = node::ready::of(&handle);
        if let Some(path) = &ready_file {
            node::ready::write(&ready, path)?;
        }
        // Not println!: a closed stdout must not panic the node.
        let _ = writeln!(std::io::stdout(), "{}", node::ready::to_json(&ready));
        shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(path) = &ready_file {
            let _ = node::ready::remove(path);
        }
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
