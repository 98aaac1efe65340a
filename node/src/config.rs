//! Node configuration: the SPEC §1 flags, each also read from `CHORUS_<FLAG>`
//! and, with `--config FILE`, from a TOML file whose keys are the flag names
//! (`client-addr = "0.0.0.0:8080"`). A flag beats its environment variable,
//! which beats the file, which beats the default; `--print-config` shows the
//! result and where each value came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

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

    /// Client URL told to other nodes and clients [default: http://<client-addr>,
    /// or https:// with --client-tls-cert]
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

    /// Keep no search index on this node: `GET /v1/search` answers 503
    /// `unavailable` here. Indexing every message costs CPU on every node.
    #[arg(long, env = "CHORUS_NO_SEARCH")]
    pub no_search: bool,

    /// Shared secret required on every gRPC call (peers and CLI). Weaker than
    /// mutual TLS: it travels in plain text, and peers and operators share it.
    #[arg(long, env = "CHORUS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// This node's certificate (PEM) for mutual TLS on the raft port: it must
    /// name the node's raft host and `chorus://peer/<id>` (`chorusctl certs`).
    #[arg(long, env = "CHORUS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CHORUS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// The cluster's CA certificate (PEM): peers and operators must present a
    /// certificate it signed.
    #[arg(long, env = "CHORUS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// A certificate (PEM, its chain after it) to serve HTTPS and WSS on the
    /// client port with; `chorusctl certs init` writes `https.crt`. Without
    /// it the client port speaks plain HTTP.
    #[arg(long, env = "CHORUS_CLIENT_TLS_CERT", requires = "client_tls_key")]
    pub client_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--client-tls-cert`.
    #[arg(long, env = "CHORUS_CLIENT_TLS_KEY", requires = "client_tls_cert")]
    pub client_tls_key: Option<PathBuf>,

    /// Allow binding non-loopback addresses without TLS: the raft port without
    /// mutual TLS or a cluster secret, the client port without
    /// `--client-tls-cert` (passwords and tokens then cross the network in
    /// plain text).
    #[arg(long, env = "CHORUS_INSECURE")]
    pub insecure: bool,

    /// WebSocket connections served at once; past it an upgrade gets 503
    /// `overloaded` (the client picks another node) instead of the node
    /// running out of file descriptors. 0: no limit.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Connections to the raft port open at once from one source address;
    /// more are closed as they are accepted. Members keep one to each peer
    /// and `chorusctl` one per command. 0: no limit.
    #[arg(long, env = "CHORUS_MAX_PEER_CONNECTIONS", default_value_t = 256)]
    pub max_peer_connections: usize,

    /// The largest snapshot this node takes from a leader, in bytes; a larger
    /// stream is refused and its file removed. Snapshots are received one at
    /// a time.
    #[arg(long, env = "CHORUS_MAX_SNAPSHOT_BYTES", default_value_t = 64 << 30)]
    pub max_snapshot_bytes: u64,

    /// Complete Raft appends without fsyncing the write-ahead log. UNSAFE: a
    /// power loss then loses acknowledged messages. It exists only for the
    /// fault-injection suite's test that its power-loss nemesis catches a
    /// missing fsync; never set it on a node that holds data you want.
    #[arg(long, hide = true)]
    pub unsafe_skip_wal_sync: bool,

    /// Registrations and logins per client address per node, as N/SECS; `0`
    /// disables. Each costs an argon2 run (about 19 MiB for a moment).
    #[arg(long, env = "CHORUS_ACCOUNT_RATE_LIMIT", default_value = "60/10")]
    pub account_rate_limit: RateLimit,

    /// `join`, `leave` and `history` frames, and room and history reads over
    /// HTTP, per user per node, as N/SECS; `0` disables. Past it they get
    /// `rate_limited` and the connection stays open.
    #[arg(long, env = "CHORUS_REQUEST_RATE_LIMIT", default_value = "300/10")]
    pub request_rate_limit: RateLimit,

    /// Rooms one user may create (join first); past it a join that would
    /// create a room gets `rate_limited`. Counted in the log from feature
    /// level 3. 0: no limit.
    #[arg(long, env = "CHORUS_MAX_ROOMS_PER_USER", default_value_t = 1000)]
    pub max_rooms_per_user: u64,

    /// Seconds a client gets to send a request's headers (also how long an
    /// idle kept-alive HTTP connection stays open), and then to finish the
    /// request; past it, 408 or a closed connection. At least 1.
    #[arg(long, env = "CHORUS_HTTP_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_timeout_secs: u64,

    /// Bytes a WebSocket connection's outgoing queue may hold before it is
    /// closed with 4008 (slow consumer): what one client can make the node
    /// hold for it, whatever it asks for.
    /// At least 64 KiB.
    #[arg(long, env = "CHORUS_MAX_OUTBOX_BYTES", default_value_t = api::fanout::OUTBOX_BYTES as u64, value_parser = clap::value_parser!(u64).range(64 << 10..))]
    pub max_outbox_bytes: u64,

    /// Who may register on this node: `open` (anyone), `invite` (only with an
    /// operator's invite code from `chorusctl invites create`; needs feature
    /// level 6), or `closed` (nobody; operators' accounts only). Give every
    /// node the same.
    #[arg(long, env = "CHORUS_REGISTRATION", default_value = "open")]
    pub registration: wire::http::RegistrationMode,

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

    /// Write a backup of this node's state (the format of `chorusctl backup`)
    /// into this directory every `--backup-interval`, keeping the newest
    /// `--backup-keep`. Each holds what this node had applied when taken.
    #[arg(long, env = "CHORUS_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Seconds between automatic backups (with `--backup-dir`).
    #[arg(long, env = "CHORUS_BACKUP_INTERVAL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub backup_interval: u64,

    /// Automatic backups kept; older ones are removed.
    #[arg(long, env = "CHORUS_BACKUP_KEEP", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..))]
    pub backup_keep: u64,

    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,

    /// Raft election timeout range start in milliseconds (the end is twice it).
    /// A follower that hears no leader keeps its lease on the last one for the
    /// end of the range (openraft's leader lease), then waits a timeout drawn
    /// from the range before it stands: writes resume 3–4× this after a leader
    /// dies (300–400 ms at the default). Heartbeats do not wait for log syncs,
    /// so a slow disk does not start elections; raise it on slow networks or
    /// when nodes are paused for long (swap, stop-the-world).
    #[arg(long, env = "CHORUS_ELECTION_MS", default_value_t = 100)]
    pub election_ms: u64,

    /// A TOML file of settings, one key per flag (`snapshot-every = 100000`).
    /// Flags and `CHORUS_*` variables override it; an unknown key is an error.
    #[arg(long, env = "CHORUS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective settings (as a config file, with where each came
    /// from) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The shortest `--cluster-secret` taken: 16 bytes of `openssl rand -hex 8`
/// are 64 bits, out of reach of guessing over the network.
pub const MIN_SECRET_BYTES: usize = 16;

/// Flags that select how settings are read, not settings themselves: neither
/// taken from a config file nor printed by `--print-config`.
const NOT_SETTINGS: [&str; 4] = ["config", "print_config", "help", "version"];

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
    Unset,
}

/// The settings and where each came from.
pub struct Loaded {
    pub config: Config,
    /// `(flag name, raw value, source)` for every setting, in `--help` order.
    pub settings: Vec<(String, Option<String>, Source)>,
}

/// Parses `args` (the first is the program name), the `CHORUS_*` environment
/// and the `--config` file. A bad flag is clap's error (print it with
/// `exit()`); a bad file or key is an error naming the file and the key.
pub fn load_from<I, T>(args: I) -> anyhow::Result<Loaded>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let first = Config::command().try_get_matches_from(&args)?;
    let file = first.get_one::<PathBuf>("config").cloned();
    let mut from_file = Vec::new();
    let mut argv = args.clone();
    if let Some(path) = &file {
        for (key, value) in read_file(path)? {
            // A flag or a variable given for this key overrides the file.
            if matches!(first.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            let long = key.replace('_', "-");
            match value {
                FileValue::Switch(true) => argv.push(format!("--{long}").into()),
                FileValue::Switch(false) => {}
                FileValue::Text(v) => argv.push(format!("--{long}={v}").into()),
            }
            from_file.push(key);
        }
    }
    let matches = Config::command()
        .try_get_matches_from(&argv)
        .map_err(|e| match &file {
            // The flags parsed alone, so the file's values are what failed.
            Some(path) => {
                let first_line = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
                anyhow::anyhow!("{}: {first_line}", path.display())
            }
            None => e.into(),
        })?;
    let config = Config::from_arg_matches(&matches)?;
    let settings = Config::command()
        .get_arguments()
        .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()))
        .map(|a| {
            let id = a.get_id().as_str();
            let raw = matches.get_raw(id).and_then(|mut v| v.next()).map(|v| v.to_string_lossy().into_owned());
            let source = match matches.value_source(id) {
                _ if from_file.iter().any(|k| k == id) => Source::File,
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env,
                Some(_) => Source::Default,
                None => Source::Unset,
            };
            (id.replace('_', "-"), raw, source)
        })
        .collect();
    Ok(Loaded { config, settings })
}

/// A value from the file: a switch (`no-bootstrap = true`) or anything else as
/// the text a flag would take.
enum FileValue {
    Switch(bool),
    Text(String),
}

/// The file's settings as `(arg id, value)`; every key must name a setting.
fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, FileValue)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    let doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let command = Config::command();
    let known: Vec<&clap::Arg> = command.get_arguments().filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str())).collect();
    let mut out = Vec::new();
    for (key, item) in doc.iter() {
        let id = key.replace('-', "_");
        let Some(arg) = known.iter().find(|a| a.get_id().as_str() == id) else {
            let names: Vec<String> = known.iter().map(|a| a.get_id().as_str().replace('_', "-")).collect();
            bail!("{}: unknown key {key:?}; the keys are the flag names: {}", path.display(), names.join(", "));
        };
        let switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let value = match item.as_value() {
            Some(toml_edit::Value::Boolean(b)) if switch => FileValue::Switch(*b.value()),
            _ if switch => bail!("{}: {key} is a switch: true or false", path.display()),
            Some(toml_edit::Value::String(s)) => FileValue::Text(s.value().clone()),
            Some(toml_edit::Value::Integer(i)) => FileValue::Text(i.value().to_string()),
            Some(toml_edit::Value::Float(f)) => FileValue::Text(f.value().to_string()),
            Some(toml_edit::Value::Boolean(b)) => FileValue::Text(b.value().to_string()),
            _ => bail!("{}: {key} must be a string, a number or a boolean", path.display()),
        };
        out.push((id, value));
    }
    Ok(out)
}

impl Loaded {
    /// The effective settings as a config file: each line says where its value
    /// came from; unset ones are commented out, and a secret is not shown.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# chorusd settings: a flag beats CHORUS_*, which beats --config, which beats the default\n");
        for (key, raw, source) in &self.settings {
            let from = match source {
                Source::Flag => "flag",
                Source::Env => "environment",
                Source::File => "config file",
                Source::Default => "default",
                Source::Unset => "not set",
            };
            let line = match raw {
                None => format!("# {key} ="),
                Some(_) if key == "cluster-secret" => format!("# {key} = (set, not shown)"),
                Some(v) if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok() || v == "true" || v == "false" => format!("{key} = {v}"),
                Some(v) => format!("{key} = {}", toml_edit::Value::from(v.as_str())),
            };
            out += &format!("{line:<48} # {from}\n");
        }
        out
    }
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

    /// The client URL this node advertises: `--advertise-client`, or the bound
    /// address with the scheme the client port serves, so clients that follow
    /// `GET /v1/cluster` to another node stay on TLS.
    pub fn client_url(&self, bound: SocketAddr) -> String {
        let scheme = if self.client_tls_cert.is_some() { "https" } else { "http" };
        self.advertise_client.clone().unwrap_or_else(|| format!("{scheme}://{bound}"))
    }

    /// Refuses, unless `--insecure`, a non-loopback raft address without
    /// mutual TLS or a secret (of at least [`MIN_SECRET_BYTES`]), and a
    /// non-loopback client address without `--client-tls-cert`.
    pub fn check_exposure(&self, client: SocketAddr, raft: SocketAddr) -> anyhow::Result<()> {
        if self.insecure {
            return Ok(());
        }
        let raft_exposed = !raft.ip().is_loopback();
        let tls = self.tls_cert.is_some();
        if raft_exposed && !tls && self.cluster_secret.is_none() {
            anyhow::bail!(
                "refusing to listen on non-loopback raft address {raft} without mutual TLS (--tls-cert, --tls-key, --tls-ca; \
                 `chorusctl certs init` writes them) or --cluster-secret; pass --insecure to do it anyway"
            );
        }
        if !client.ip().is_loopback() && self.client_tls_cert.is_none() {
            anyhow::bail!(
                "refusing to serve clients on non-loopback address {client} without TLS: passwords and tokens would cross \
                 the network in plain text; give --client-tls-cert and --client-tls-key (`chorusctl certs init` writes \
                 https.crt and https.key) or pass --insecure to do it anyway"
            );
        }
        // On loopback a short secret keeps working, as it always did; where
        // the raft port can be reached from elsewhere it must resist guessing.
        if let Some(secret) = self.cluster_secret.as_ref().filter(|_| raft_exposed && !tls) {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "--cluster-secret must be at least {MIN_SECRET_BYTES} bytes (it is {}); `openssl rand -hex 16` makes one",
                secret.len()
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
    fn exposed_ports_need_tls_or_insecure() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let out: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let c = Config::for_node(1, "d".into());
        assert!(c.check_exposure(lo, lo).is_ok(), "loopback needs nothing");
        let raft = c.check_exposure(lo, out).unwrap_err().to_string();
        assert!(raft.contains("raft address 198.18.0.1:1") && raft.contains("--insecure"), "{raft}");
        let client = c.check_exposure(out, lo).unwrap_err().to_string();
        assert!(client.contains("serve clients on non-loopback address") && client.contains("--client-tls-cert"), "{client}");

        let mut tls = Config::for_node(1, "d".into());
        tls.tls_cert = Some("n.crt".into());
        assert!(tls.check_exposure(lo, out).is_ok(), "mutual TLS covers the raft port");
        assert!(tls.check_exposure(out, lo).is_err(), "but not the client port");
        tls.client_tls_cert = Some("https.crt".into());
        assert!(tls.check_exposure(out, out).is_ok());

        let mut secret = Config::for_node(1, "d".into());
        secret.cluster_secret = Some("short".into());
        assert!(secret.check_exposure(lo, lo).is_ok(), "a short secret keeps working on loopback");
        assert!(secret.check_exposure(lo, out).unwrap_err().to_string().contains("at least"));
        secret.cluster_secret = Some("0123456789abcdef".into());
        assert!(secret.check_exposure(lo, out).is_ok());

        let mut insecure = Config::for_node(1, "d".into());
        insecure.insecure = true;
        assert!(insecure.check_exposure(out, out).is_ok());
    }

    #[test]
    fn advertised_client_url_follows_the_client_port_scheme() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let mut c = Config::for_node(1, "d".into());
        assert_eq!(c.client_url(addr), "http://127.0.0.1:8443");
        c.client_tls_cert = Some("https.crt".into());
        assert_eq!(c.client_url(addr), "https://127.0.0.1:8443");
        c.advertise_client = Some("https://chat.example:443".into());
        assert_eq!(c.client_url(addr), "https://chat.example:443");
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_config_file_sets_what_flags_do_not() {
        let f = file("client-addr = \"127.0.0.1:18080\"\nsnapshot-every = 100\nno-bootstrap = true\nrate-limit = \"5/1\"\nsnapshot_ratio = 0.25\n");
        let path = f.path().to_str().unwrap();
        let l = load_from(["chorusd", "--config", path, "--snapshot-every", "7"]).unwrap();
        assert_eq!(l.config.client_addr.to_string(), "127.0.0.1:18080");
        assert_eq!(l.config.snapshot_every, 7, "the flag wins");
        assert!(l.config.no_bootstrap);
        assert_eq!(l.config.rate_limit.messages, 5);
        assert_eq!(l.config.snapshot_ratio, 0.25);
        let source = |k: &str| l.settings.iter().find(|s| s.0 == k).map(|s| s.2);
        assert_eq!(source("client-addr"), Some(Source::File));
        assert_eq!(source("snapshot-every"), Some(Source::Flag));
        assert_eq!(source("heartbeat-ms"), Some(Source::Default));
        assert_eq!(source("ready-file"), Some(Source::Unset));
        let printed = l.to_toml();
        assert!(printed.contains("client-addr = \"127.0.0.1:18080\""), "{printed}");
        assert!(printed.lines().any(|l| l.starts_with("snapshot-every = 7") && l.ends_with("# flag")), "{printed}");
        // What it prints reads back as a config file with the same settings.
        let again = file(&printed);
        let l2 = load_from(["chorusd", "--config", again.path().to_str().unwrap()]).unwrap();
        assert_eq!(l2.config.snapshot_every, 7);
        assert_eq!(l2.config.client_addr, l.config.client_addr);
    }

    #[test]
    fn a_bad_config_file_is_a_clear_error() {
        let err = |text: &str| {
            let f = file(text);
            load_from(["chorusd", "--config", f.path().to_str().unwrap()]).err().map(|e| format!("{e:#}")).unwrap_or_default()
        };
        let e = err("client-adr = \"x\"\n");
        assert!(e.contains("unknown key \"client-adr\"") && e.contains("client-addr"), "{e}");
        assert!(err("heartbeat-ms = \"soon\"\n").contains("heartbeat-ms"));
        assert!(err("no-bootstrap = \"yes\"\n").contains("switch"));
        assert!(err("config = \"other.toml\"\n").contains("unknown key"));
        assert!(err("[section]\nid = 2\n").contains("unknown key"));
        assert!(err("id = \n").contains("not valid TOML"));
        assert!(load_from(["chorusd", "--config", "/nonexistent/chorus.toml"]).is_err());
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
