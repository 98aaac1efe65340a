//! `chorusctl cluster …`: the admin gRPC calls and how their answers are shown.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context};
use proto::v1::admin_client::AdminClient;
use proto::v1::{AddRequest, ClusterStatus, Empty, IdRequest, InitRequest, UpgradeRequest};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Cli, ClusterCommand};

pub(crate) async fn connect(cli: &Cli, addr: &str) -> anyhow::Result<AdminClient<Channel>> {
    let endpoint = match tls(cli)? {
        // The node's certificate must name the host of `addr`.
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|_| anyhow!("{addr:?} is not a host:port address"))?
            .tls_config(tls)
            .map_err(|e| anyhow!("cannot set up TLS to {addr}: {}", root_cause(&e)))?,
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|_| anyhow!("{addr:?} is not a host:port address"))?,
    }
    .connect_timeout(cli.timeout());
    let channel = endpoint.connect().await.map_err(|e| anyhow!("cannot reach the node at {addr}: {}", root_cause(&e)))?;
    Ok(AdminClient::new(channel))
}

/// The client TLS of `--ca`, `--cert` and `--key`: all three, or none for a
/// cluster without TLS.
fn tls(cli: &Cli) -> anyhow::Result<Option<ClientTlsConfig>> {
    let (ca, cert, key) = match (&cli.ca, &cli.cert, &cli.key) {
        (None, None, None) => return Ok(None),
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        _ => bail!("--ca, --cert and --key go together: give all three for a cluster that runs mutual TLS"),
    };
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    Ok(Some(
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)).identity(Identity::from_pem(read(cert)?, read(key)?)),
    ))
}

/// Calls `call` on the node at `addr`. A node that is not the leader refuses
/// calls only the leader carries out, naming the leader: the call is repeated
/// there (a few times, as leadership may move meanwhile).
pub(crate) async fn at_leader<T, F, Fut>(cli: &Cli, addr: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut addr = addr.to_string();
    for _ in 0..4 {
        let status = match call(connect(cli, &addr).await?).await {
            Ok(v) => return Ok(v),
            Err(status) => status,
        };
        match status.metadata().get(proto::LEADER_HEADER).and_then(|v| v.to_str().ok()) {
            Some(leader) if leader != addr => addr = leader.to_string(),
            _ => return Err(failed(status)),
        }
    }
    bail!("leadership kept moving while the command was sent; try again")
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub(crate) fn request<T>(cli: &Cli, msg: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    if let Some(secret) = &cli.secret {
        if let Ok(v) = secret.parse() {
            req.metadata_mut().insert(proto::SECRET_HEADER, v);
        }
    }
    req
}

/// A gRPC failure as one line for the operator.
pub(crate) fn failed(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::DeadlineExceeded => anyhow!("timed out: {}", status.message()),
        tonic::Code::Unauthenticated => anyhow!("refused: {} (pass --secret, or --ca, --cert and --key)", status.message()),
        tonic::Code::PermissionDenied => anyhow!("refused: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
}

pub async fn run(cli: &Cli, cmd: &ClusterCommand) -> anyhow::Result<()> {
    let t = cli.timeout();
    // `init` goes to the first node being formed; everything else to --node.
    let target = match cmd {
        ClusterCommand::Init { addrs } => addrs.first().context("cluster init needs at least one address")?,
        _ => &cli.node,
    };
    let mut client = connect(cli, target).await?;
    let status = match cmd {
        ClusterCommand::Init { addrs } => {
            let init = InitRequest { raft_addrs: addrs.clone() };
            client.init(request(cli, init, t.max(std::time::Duration::from_secs(20)))).await.map_err(failed)?.into_inner()
        }
        ClusterCommand::Add { addr, learner } => return add(cli, addr, *learner).await,
        ClusterCommand::Promote { id } => {
            let id = IdRequest { id: *id };
            at_leader(cli, target, |mut c| {
                async move { c.promote(request(cli, id, t)).await }
            })
            .await?
            .into_inner()
        }
        ClusterCommand::Remove { id } => {
            let id = IdRequest { id: *id };
            at_leader(cli, target, |mut c| {
                async move { c.remove(request(cli, id, t)).await }
            })
            .await?
            .into_inner()
        }
        ClusterCommand::TransferLeader { id } => {
            let id = IdRequest { id: *id };
            at_leader(cli, target, |mut c| {
                async move { c.transfer_leader(request(cli, id, t)).await }
            })
            .await?
            .into_inner()
        }
        ClusterCommand::ForceNew { .. } => bail!("cluster force-new works on data dirs, not through a node"),
        ClusterCommand::Status => client.status(request(cli, Empty {}, t)).await.map_err(failed)?.into_inner(),
        ClusterCommand::Upgrade { level: requested } => return upgrade(cli, &mut client, target, *requested).await,
        ClusterCommand::Snapshot => {
            let reply = client.snapshot(request(cli, Empty {}, t.max(std::time::Duration::from_secs(120)))).await.map_err(failed)?.into_inner();
            if cli.json {
                println!("{}", json!({ "snapshot_index": reply.index }));
            } else {
                println!("snapshot built at index {}; log compacted up to it", reply.index);
            }
            return Ok(());
        }
    };
    print_status(cli, &status);
    Ok(())
}

/// Raises the feature level through the leader, and says what held it back
/// if nothing changed.
async fn upgrade(cli: &Cli, client: &mut AdminClient<Channel>, target: &str, requested: Option<u32>) -> anyhow::Result<()> {
    let t = cli.timeout();
    let before = client.status(request(cli, Empty {}, t)).await.map_err(failed)?.into_inner().feature_level;
    let up = UpgradeRequest { level: requested.unwrap_or(0) };
    let after = at_leader(cli, target, |mut c| {
        async move { c.upgrade(request(cli, up, t)).await }
    })
    .await?
    .into_inner();
    if cli.json {
        println!("{}", json!({ "feature_level": after.feature_level, "was": before }));
    } else if after.feature_level > before {
        println!("cluster raised from feature level {before} to {}", after.feature_level);
    } else {
        println!("cluster already at feature level {}: nothing to do", after.feature_level);
        // Who keeps it there: the members whose binary reads no newer level.
        let newest = after.members.iter().map(|m| m.max_feature_level).max().unwrap_or(0);
        let held: Vec<String> = after
            .members
            .iter()
            .filter(|m| m.max_feature_level < newest)
            .map(|m| format!("{} (reads up to {})", m.id, level(m.max_feature_level)))
            .collect();
        if !held.is_empty() {
            println!("member(s) {} must run a newer chorusd before level {newest}", held.join(", "));
        }
    }
    Ok(())
}

async fn add(cli: &Cli, addr: &str, learner: bool) -> anyhow::Result<()> {
    // Catching up can take long; the whole stream gets a generous deadline.
    let deadline = cli.timeout().max(std::time::Duration::from_secs(600));
    let add = AddRequest { raft_addr: addr.to_string(), learner };
    let mut stream = at_leader(cli, &cli.node, |mut c| {
        let add = add.clone();
        async move { c.add(request(cli, add, deadline)).await }
    })
    .await?
    .into_inner();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} entries")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_phase = String::new();
    let mut id = 0;
    while let Some(p) = stream.message().await.map_err(failed)? {
        id = p.id;
        if let Some(bar) = &bar {
            bar.set_length(p.target.max(1));
            bar.set_position(p.matched.min(p.target));
            bar.set_message(p.phase.clone());
        } else if p.phase != last_phase && !cli.json {
            eprintln!("node {}: {} ({}/{})", p.id, p.phase, p.matched, p.target);
        }
        last_phase = p.phase.clone();
        if p.done {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            if cli.json {
                println!("{}", json!({ "id": p.id, "role": p.phase, "last_log_index": p.target }));
            } else {
                println!("node {} at {addr} added as {}", p.id, p.phase);
            }
            return Ok(());
        }
    }
    bail!("the add of node {id} at {addr} ended before it finished ({last_phase})")
}

fn print_status(cli: &Cli, s: &ClusterStatus) {
    if cli.json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "raft_addr": m.raft_addr, "client_addr": m.client_addr, "role": m.role,
                    "voter": m.voter, "term": m.term, "last_log_index": m.last_log_index,
                    "applied_index": m.applied_index, "lag": m.lag, "reachable": m.reachable,
                    "max_feature_level": m.max_feature_level,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "cluster_id": s.cluster_id, "leader": s.leader, "term": s.term, "feature_level": level(s.feature_level), "members": members })
        );
        return;
    }
    println!(
        "cluster {}  leader {}  term {}  feature level {}",
        s.cluster_id,
        if s.leader == 0 { "none".into() } else { s.leader.to_string() },
        s.term,
        level(s.feature_level)
    );
    println!(
        "{:>4}  {:<22} {:<28} {:<10} {:>5} {:>9} {:>9} {:>7}  {:<9} READS",
        "ID", "RAFT", "CLIENT", "ROLE", "TERM", "LAST_LOG", "APPLIED", "LAG", "REACHABLE"
    );
    if let Some(hint) = quorum_hint(s) {
        println!("{hint}");
    }
    for m in &s.members {
        println!(
            "{:>4}  {:<22} {:<28} {:<10} {:>5} {:>9} {:>9} {:>7}  {:<9} {}",
            m.id, m.raft_addr, m.client_addr, m.role, m.term, m.last_log_index, m.applied_index, m.lag,
            if m.reachable { "yes" } else { "no" },
            if m.max_feature_level == 0 { "?".to_string() } else { format!("≤{}", m.max_feature_level) }
        );
    }
}

/// A node older than feature levels reports 0: it is at level 1.
fn level(reported: u32) -> u32 {
    reported.max(1)
}

/// What to do when a majority of voters does not answer (the answering node may
/// still call itself leader: it cannot commit anything), or no leader is known.
fn quorum_hint(s: &ClusterStatus) -> Option<String> {
    let voters: Vec<_> = s.members.iter().filter(|m| m.voter).collect();
    let up = voters.iter().filter(|m| m.reachable).count();
    let need = voters.len() / 2 + 1;
    let down: Vec<String> = voters.iter().filter(|m| !m.reachable).map(|m| format!("{} ({})", m.id, m.raft_addr)).collect();
    if up < need {
        Some(format!(
            "no quorum: {up} of {} voters answer and {need} are needed to commit or elect. Start the unreachable voters {} on their data dirs; \
             if they are lost for good, see \"No quorum\" in docs/OPERATIONS.md",
            voters.len(),
            down.join(", ")
        ))
    } else if s.leader == 0 {
        Some(format!(
            "no leader yet: {up} of {} voters answer, enough to elect one; an election is under way, or the voters cannot reach each other",
            voters.len()
        ))
    } else {
        None
    }
}
