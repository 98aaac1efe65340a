//! `chorusctl`: form and change a Chorus cluster, and (later) chat from a terminal.
//!
//! It talks to running nodes only over their public protocols (the admin gRPC
//! service on the raft address, over mutual TLS with an operator certificate
//! when the cluster runs it). It opens storage only for the offline
//! commands on a stopped node's data dir (`restore`, `cluster force-new`). Exit codes: 0 success, 1 failure with
//! a one-line reason on stderr, 2 bad usage.

mod admin;
mod backup;
mod bench;
mod certs;
mod chat;
mod invites;
mod rooms;
mod users;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "chorusctl", version, about = "Operate a Chorus cluster")]
pub struct Cli {
    /// Raft address of any member.
    #[arg(long, global = true, env = "CHORUS_NODE", default_value = "127.0.0.1:9080")]
    pub node: String,

    /// Shared cluster secret, when the cluster has one.
    #[arg(long, global = true, env = "CHORUS_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// The cluster's CA certificate (PEM), for a cluster that runs mutual TLS;
    /// with --cert and --key, an operator certificate it signed. `chat`
    /// trusts it for an https:// URL.
    #[arg(long, global = true, env = "CHORUS_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// Operator certificate (PEM), as `chorusctl certs init` writes it.
    #[arg(long, global = true, env = "CHORUS_CERT")]
    pub cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(long, global = true, env = "CHORUS_KEY")]
    pub key: Option<std::path::PathBuf>,

    /// Machine-readable output.
    #[arg(long, global = true, env = "CHORUS_JSON")]
    pub json: bool,

    /// Seconds to wait for each call.
    #[arg(long, global = true, env = "CHORUS_TIMEOUT", default_value_t = 15)]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Form and change the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Make the certificates of a cluster that runs mutual TLS (offline).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Rotate the token-signing key, revoke a user's sessions.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Invite codes for registration on nodes run with --registration invite.
    #[command(subcommand)]
    Invites(invites::InvitesCommand),
    /// An operator's say over rooms: name a room's owner.
    #[command(subcommand)]
    Rooms(rooms::RoomsCommand),
    /// An interactive terminal chat client.
    Chat {
        /// Client URL of any node, e.g. http://127.0.0.1:8080 (https:// with --ca)
        #[arg(long, env = "CHORUS_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        user: String,
        /// Password (or CHORUS_PASSWORD); the user is registered if new.
        #[arg(long)]
        password: Option<String>,
        #[arg(long, default_value = "general")]
        room: String,
        /// An operator's invite code, to register on a node run with
        /// --registration invite.
        #[arg(long, env = "CHORUS_INVITE")]
        invite: Option<String>,
    },
    /// Load-test the chat API over WebSocket and print figures.
    Bench(bench::BenchArgs),
    /// Write a consistent backup of the cluster's state, from any member, to FILE.
    Backup { file: std::path::PathBuf },
    /// Prepare an empty data dir from a backup: a chorusd started on it forms a
    /// new one-member cluster with the backup's history (offline).
    Restore {
        file: std::path::PathBuf,
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Make nodes started with --no-bootstrap one cluster of voters.
    Init {
        /// Raft addresses of the nodes; the first one receives the request.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Add the node at ADDR: as a learner, wait for it to catch up, then promote it.
    Add {
        addr: String,
        /// Leave it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote { id: u64 },
    /// Remove a member (voter or learner).
    Remove { id: u64 },
    /// Move leadership to a voter.
    TransferLeader { id: u64 },
    /// Show every member.
    Status,
    /// Build a snapshot now and compact the log.
    Snapshot,
    /// After losing a majority: from stopped members' data dirs, the one whose
    /// log reaches furthest becomes a new one-member cluster when its chorusd
    /// starts (offline; every entry it holds is kept).
    ForceNew {
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
    },
    /// Raise the cluster's feature level, once every member's chorusd reads it.
    Upgrade {
        /// The level to raise to; the default is the newest every member reads.
        #[arg(long)]
        level: Option<u32>,
    },
}

impl Cli {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Cluster(ClusterCommand::ForceNew { dirs }) => backup::force_new(&cli, dirs).await,
        Command::Cluster(cmd) => admin::run(&cli, cmd).await,
        Command::Backup { file } => backup::backup(&cli, file).await,
        Command::Restore { file, data_dir } => backup::restore(&cli, file, data_dir),
        Command::Chat { url, user, password, room, invite } => {
            chat::run(chat::ChatArgs { url, user, password: password.as_deref(), room, invite: invite.as_deref(), ca: cli.ca.as_deref() }).await
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Certs(cmd) => certs::run(cmd),
        Command::Users(cmd) => users::run(&cli, cmd).await,
        Command::Invites(cmd) => invites::run(&cli, cmd).await,
        Command::Rooms(cmd) => rooms::run(&cli, cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("chorusctl: {msg}");
            ExitCode::from(1)
        }
    }
}
