//! Node configuration: the SPEC §1 flags, each also read from `CHORUS_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Messages per user per node in a window; `0` disables limiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub messages: u32,
    pub window: Duration,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "0" {
            return Ok(RateLimit { messages: 0, window: Duration::from_secs(1) });
        }
        let (n, secs) = s.split_once('/').ok_or_else(|| format!("expected N/SECS or 0, got {s:?}"))?;
        let messages = n.trim().parse().map_err(|_| format!("bad message count in {s:?}"))?;
        let secs: u64 = secs.trim().parse().map_err(|_| format!("bad window in {s:?}"))?;
        if secs == 0 {
            return Err("the window must be at least one second".into());
        }
        Ok(RateLimit { messages, window: Duration::from_secs(secs) })
    }
}

/// One Chorus node.
#[derive(Parser, Clone, Debug)]
#[command(name = "chorusd", version, about = "A Chorus node: Raft-replicated, event-sourced chat")]
pub struct Config {
    /// Node id, unique in the cluster (> 0).
    #[arg(long, env = "CHORUS_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,

    /// RocksDB and node files [default: ./chorus-data/node-<id>]
    #[arg(long, env = "CHORUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// HTTP + WebSocket + web UI + /metrics listen address. Port 0 lets the OS
    /// pick one; the bound address is printed and written to `--ready-file`.
    #[arg(long, env = "CHORUS_CLIENT_ADDR", default_value = "127.0.0.1:8080")]
    pub client_addr: SocketAddr,

    /// gRPC listen address: Raft between nodes, admin for chorusctl. Port 0 as
    /// for `--client-addr`; a restarted node must bind the address its peers
    /// know, so restart it with the address it reported.
    #[arg(long, env = "CHORUS_RAFT_ADDR", default_value = "127.0.0.1:9080")]
    pub raft_addr: SocketAddr,

    /// Once the node serves, write its id, pid and bound addresses here as one
    /// JSON object (written whole: to a temporary file that is then renamed).
    /// Removed at startup and on a clean shutdown, so its presence means the
    /// process is serving or was killed.
    #[arg(long, env = "CHORUS_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Client URL told to other nodes and clients [default: http://<client-addr>]
    #[arg(long, env = "CHORUS_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,

    /// Raft address told to other nodes [default: the raft listen address]
    #[arg(long, env = "CHORUS_ADVERTISE_RAFT")]
    pub advertise_raft: Option<String>,

    /// Local IP that outgoing node-to-node connections are made from [default:
    /// chosen by the OS]. For multi-homed hosts whose peers or firewalls expect
    /// one source address; the fault-injection suite uses it to tell links apart.
    #[arg(long, env = "CHORUS_PEER_SOURCE_IP")]
    pub peer_source_ip: Option<std::net::IpAddr>,

    /// On an empty data dir, wait to be added or initialised instead of forming a
    /// single-node cluster.
    #[arg(long, env = "CHORUS_NO_BOOTSTRAP")]
    pub no_bootstrap: bool,

    /// Shared secret required on every gRPC call (peers and CLI).
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Allow binding non-loopback addresses without a cluster secret.
    #[arg(long, env = "CHORUS_INSECURE")]
    pub insecure: bool,

    /// Larger message text is refused with `too_large`.
    #[arg(long, env = "CHORUS_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,

    /// Messages per user per node, as N/SECS; 0 disables.
    #[arg(long, env = "CHORUS_RATE_LIMIT", default_value = "20/10")]
    pub rate_limit: RateLimit,

    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write logs to this file instead of stderr.
    #[arg(long, env = "CHORUS_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Build a snapshot (and compact the log) after this many applied entries.
    #[arg(long, env = "CHORUS_SNAPSHOT_EVERY", default_value_t = 50_000)]
    pub snapshot_every: u64,

    /// A snapshot copies the whole state, which grows with the chat history, so
    /// one also waits until the entries since the last snapshot number at least
    /// this fraction of the log index the last one covered: the copying then
    /// stays in proportion to the writes. 0 snapshots strictly every
    /// `--snapshot-every`.
    #[arg(long, env = "CHORUS_SNAPSHOT_RATIO", default_value_t = 0.5)]
    pub snapshot_ratio: f64,

    /// Log entries kept behind a snapshot, for followers that lag a little.
    #[arg(long, env = "CHORUS_SNAPSHOT_KEEP", default_value_t = 5_000)]
    pub snapshot_keep: u64,

    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,

    /// Raft election timeout range start in milliseconds (the end is twice it).
    /// A leader's death is noticed after the end of the range (openraft's leader
    /// lease), and an election usually needs a second timeout: writes resume
    /// about 3× this after a leader dies. Raise it on slow networks or disks.
    #[arg(long, env = "CHORUS_ELECTION_MS", default_value_t = 200)]
    pub election_ms: u64,
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn for_node(id: u64, data_dir: PathBuf) -> Self {
        let mut c = Config::parse_from(["chorusd"]);
        c.id = id;
        c.data_dir = Some(data_dir);
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("./chorus-data/node-{}", self.id)))
    }

    /// Refuses a non-loopback bind without a secret unless `--insecure`.
    pub fn check_exposure(&self, client: SocketAddr, raft: SocketAddr) -> anyhow::Result<()> {
        let exposed = !client.ip().is_loopback() || !raft.ip().is_loopback();
        if exposed && self.cluster_secret.is_none() && !self.insecure {
            anyhow::bail!(
                "refusing to listen on a non-loopback address without --cluster-secret; pass --insecure to do it anyway"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_parses() {
        let r: RateLimit = "20/10".parse().unwrap();
        assert_eq!((r.messages, r.window), (20, Duration::from_secs(10)));
        assert_eq!("0".parse::<RateLimit>().unwrap().messages, 0);
        assert!("5".parse::<RateLimit>().is_err());
        assert!("5/0".parse::<RateLimit>().is_err());
        assert!("x/3".parse::<RateLimit>().is_err());
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::parse_from(["chorusd"]);
        assert_eq!(c.id, 1);
        assert_eq!(c.client_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.raft_addr.to_string(), "127.0.0.1:9080");
        assert_eq!(c.max_message_bytes, 4096);
        assert_eq!(c.data_dir(), PathBuf::from("./chorus-data/node-1"));
        assert!(Config::try_parse_from(["chorusd", "--id", "0"]).is_err());
    }
}
