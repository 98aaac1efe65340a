//! `chorusctl certs …`: the certificates of a cluster that runs mutual TLS.
//!
//! `init DIR` makes the cluster's CA and, signed by it, one certificate per
//! node and one for an operator. A node's certificate names the hosts its raft
//! address may use (loopback always, `--host` for more) and carries the
//! `chorus://peer/<id>` URI; an operator's carries `chorus://operator/<name>`
//! and no host (it is only ever a client). The URIs are the roles a node
//! grants (see `node::tls` and docs/SECURITY.md). `node` and `operator` sign
//! more certificates with the CA of an existing DIR. `init` also signs
//! `https.crt`, the client port's certificate (`chorusd --client-tls-cert`):
//! a server certificate only, with no role, so a node's HTTPS key cannot be
//! used to reach any raft port. `https` signs another with more hosts.
//! Private keys are written owner-only (0600).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use proto::roles::{OPERATOR_URI_PREFIX, PEER_URI_PREFIX};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// How long the certificates `certs` makes are valid.
const VALID_DAYS: i64 = 3650;

#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a CA in DIR and sign node certificates (node-<id>.crt/.key) and an
    /// operator certificate (operator.crt/.key) with it.
    Init {
        dir: PathBuf,
        /// Nodes 1..=N get a certificate.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// A host name or IP address the nodes' raft addresses use, besides
        /// localhost, 127.0.0.1 and ::1 (repeat for more).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// The operator certificate's name.
        #[arg(long, default_value = "admin")]
        operator: String,
    },
    /// Sign a certificate for node ID with DIR's CA: node-<id>.crt/.key.
    Node {
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Sign an operator certificate with DIR's CA: operator-<name>.crt/.key.
    Operator {
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Sign the client port's certificate (HTTPS and WSS) with DIR's CA:
    /// https.crt/.key, replacing any there.
    Https {
        dir: PathBuf,
        /// A host name or IP address clients reach the nodes by, besides
        /// localhost, 127.0.0.1 and ::1 (repeat for more).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

pub fn run(cmd: &CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, nodes, hosts, operator } => {
            anyhow::ensure!(*nodes >= 1, "--nodes must be at least 1");
            let issuer = new_ca(dir)?;
            for id in 1..=*nodes {
                node_cert(dir, &issuer, id, hosts)?;
            }
            operator_cert(dir, &issuer, operator, "operator")?;
            https_cert(dir, &issuer, hosts)?;
            println!("wrote ca.crt, ca.key, node-1..{nodes}.crt/.key, operator.crt/.key and https.crt/.key to {}", dir.display());
            println!("keep ca.key offline: whoever holds it can make members and operators");
        }
        CertsCommand::Node { dir, id, hosts } => {
            anyhow::ensure!(*id >= 1, "--id must be at least 1");
            node_cert(dir, &load_ca(dir)?, *id, hosts)?;
            println!("wrote node-{id}.crt and node-{id}.key to {}", dir.display());
        }
        CertsCommand::Operator { dir, name } => {
            let stem = format!("operator-{name}");
            operator_cert(dir, &load_ca(dir)?, name, &stem)?;
            println!("wrote {stem}.crt and {stem}.key to {}", dir.display());
        }
        CertsCommand::Https { dir, hosts } => {
            https_cert(dir, &load_ca(dir)?, hosts)?;
            println!("wrote https.crt and https.key to {}", dir.display());
        }
    }
    Ok(())
}

fn valid_now(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A day back, for clocks a little behind this one.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Chorus");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A new CA in `dir` (made if missing); refuses to replace one.
fn new_ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.key").exists() {
        bail!("{} already holds a CA (ca.key); use `certs node` or `certs operator` to sign more with it", dir.display());
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = named("Chorus cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    valid_now(&mut params);
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.crt"), cert.pem().as_bytes(), false)?;
    write(&dir.join("ca.key"), key.serialize_pem().as_bytes(), true)?;
    Ok(Issuer::new(params, key))
}

fn load_ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {} (run `chorusctl certs init` first)", path.display()))
    };
    let key = KeyPair::from_pem(&read("ca.key")?).context("ca.key is not a PEM private key")?;
    Issuer::from_ca_cert_pem(&read("ca.crt")?, key).context("ca.crt is not a CA certificate for ca.key")
}

fn node_cert(dir: &Path, issuer: &Issuer<'_, KeyPair>, id: u64, hosts: &[String]) -> anyhow::Result<()> {
    // IP addresses become IP names, the rest DNS names.
    let mut params = CertificateParams::new(host_names(hosts))?;
    params.subject_alt_names.push(SanType::URI(format!("{PEER_URI_PREFIX}{id}").try_into()?));
    params.distinguished_name = named(&format!("chorus node {id}"));
    // A member is the server of its raft port and the client of its peers'.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    signed(dir, issuer, params, &format!("node-{id}"))
}

/// Names every certificate a host presents carries: loopback, and `hosts`.
fn host_names(hosts: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    names.extend(hosts.iter().cloned());
    names
}

/// The client port's certificate: the same for every node (clients may be
/// sent to any), a server's only.
fn https_cert(dir: &Path, issuer: &Issuer<'_, KeyPair>, hosts: &[String]) -> anyhow::Result<()> {
    let mut params = CertificateParams::new(host_names(hosts))?;
    params.distinguished_name = named("chorus client port");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    signed(dir, issuer, params, "https")
}

fn operator_cert(dir: &Path, issuer: &Issuer<'_, KeyPair>, name: &str, stem: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
        "an operator name is letters, digits, '-', '_' or '.'"
    );
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(SanType::URI(format!("{OPERATOR_URI_PREFIX}{name}").try_into()?));
    params.distinguished_name = named(&format!("chorus operator {name}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    signed(dir, issuer, params, stem)
}

fn signed(dir: &Path, issuer: &Issuer<'_, KeyPair>, mut params: CertificateParams, stem: &str) -> anyhow::Result<()> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    valid_now(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write(&dir.join(format!("{stem}.crt")), cert.pem().as_bytes(), false)?;
    write(&dir.join(format!("{stem}.key")), key.serialize_pem().as_bytes(), true)
}

/// Writes a new file; a private key is readable by its owner only.
fn write(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    if private {
        // `mode` applies only to a new file; an older key file may be wider.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}
