//! Mutual TLS on the raft port, who a caller is, and TLS on the client port.
//!
//! With `--tls-cert`, `--tls-key` and `--tls-ca`, the raft port accepts only
//! connections whose client certificate the cluster's CA signed (the
//! handshake, run by `serve_grpc` with [`Tls::port`], fails otherwise, before
//! a byte of a request is read), and this node presents its own certificate
//! when it calls its peers, over gRPC or the peer link ([`LINK_ALPN`]). The role a
//! certificate grants is in its URI subject alternative name
//! ([`proto::roles`]): a **peer** may call the `Raft` service and ask another
//! node's `Admin.Info`; an **operator** may call the `Admin` service and
//! nothing of `Raft`, so it can change the cluster but cannot append entries
//! or propose a user's event. The roles are read by [`Callers::of`] and
//! checked in interceptors, before a request body is decoded, and per admin
//! method.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use proto::roles::{OPERATOR_URI_PREFIX, PEER_URI_PREFIX};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tonic::transport::{Certificate, CertificateDer, ClientTlsConfig, Identity};
use tonic::Status;

/// How long a TLS handshake on the raft port may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The ALPN protocol of the peer link ([`crate::link`]) under TLS. The raft
/// port offers it before `h2`, so a link caller gets it and tonic's callers
/// (which offer only `h2`) get gRPC; a node of an older build answers a link
/// caller with `h2`, which tells the caller to use gRPC.
pub const LINK_ALPN: &[u8] = b"chorus-link/1";
const H2_ALPN: &[u8] = b"h2";

/// This node's certificate and key, and the cluster's CA, read at start.
#[derive(Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
    /// The raft port's own TLS: the node's certificate, a client certificate
    /// from the cluster's CA required, `chorus-link/1` or `h2`.
    port: Arc<ServerConfig>,
    /// The link's calls to peers: the CA's certificates trusted, this node's
    /// presented.
    link_client: Arc<ClientConfig>,
}

impl Tls {
    /// Reads the three PEM files; all three or none must be given.
    pub fn load(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> anyhow::Result<Option<Tls>> {
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return Ok(None),
            (Some(c), Some(k), Some(a)) => (c, k, a),
            _ => anyhow::bail!("--tls-cert, --tls-key and --tls-ca go together: give all three or none"),
        };
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let (cert_pem, key_pem, ca_pem) = (read(cert)?, read(key)?, read(ca)?);
        for (what, pem, path) in [("certificate", &cert_pem, cert), ("key", &key_pem, key), ("CA certificate", &ca_pem, ca)] {
            anyhow::ensure!(pem.starts_with(b"-----BEGIN"), "{} is not a PEM {what}", path.display());
        }
        let (port, link_client) = rustls_configs(&cert_pem, &key_pem, &ca_pem)
            .with_context(|| format!("{}, {} and {} do not make a usable TLS identity", cert.display(), key.display(), ca.display()))?;
        Ok(Some(Tls { identity: Identity::from_pem(cert_pem, key_pem), ca: Certificate::from_pem(ca_pem), port, link_client }))
    }

    /// The raft port's TLS, as `serve_grpc` terminates it: the same checks as
    /// [`Tls::server`] (a client certificate the CA signed), offering the link
    /// and gRPC by ALPN.
    pub fn port(&self) -> Arc<ServerConfig> {
        self.port.clone()
    }

    /// TLS for the link's calls to peers.
    pub fn link_client(&self) -> Arc<ClientConfig> {
        self.link_client.clone()
    }


    /// Calls to peers: their certificate must be the CA's and name the host
    /// called (a DNS or IP subject alternative name); this node's goes with it.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone())
    }
}

fn rustls_configs(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> anyhow::Result<(Arc<ServerConfig>, Arc<ClientConfig>)> {
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().context("cannot read the certificate")?;
    anyhow::ensure!(!chain.is_empty(), "no PEM certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("cannot read the private key")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.context("cannot read the CA certificate")?).context("unusable CA certificate")?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .context("cannot verify client certificates with this CA")?;
    let mut port = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    port.alpn_protocols = vec![LINK_ALPN.to_vec(), H2_ALPN.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![LINK_ALPN.to_vec(), H2_ALPN.to_vec()];
    Ok((Arc::new(port), Arc::new(client)))
}

/// The role of the peer at the other end of a TLS connection, by the leaf of
/// the certificate chain its handshake gave.
pub fn role_of(session: &tokio_rustls::rustls::CommonState) -> Option<Caller> {
    session.peer_certificates().and_then(|certs| certs.first()).and_then(|leaf| role(leaf.as_ref()))
}

/// The client port's TLS (`--client-tls-cert`, `--client-tls-key`): HTTPS and
/// WSS with this certificate, HTTP/1.1 only (the WebSocket upgrade needs
/// it), no client certificate asked for (clients prove who they are with
/// tokens). `None` without the flags.
pub fn client_port(cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => anyhow::bail!("--client-tls-cert and --client-tls-key go together: give both or neither"),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
    let key_der = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read the private key {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| format!("{} and {} do not make a usable TLS identity", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Who made a gRPC call, by its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A member of the cluster, by node id.
    Peer(u64),
    /// Someone running `chorusctl`, by the name in their certificate.
    Operator(String),
}

/// A peer's certificate chain, as the handshake gave it.
type Chain = Arc<Vec<CertificateDer<'static>>>;

/// The roles of recent connections' certificates. Every request of one TLS
/// connection carries the same certificate chain (one `Arc`, made at the
/// handshake), so a Raft call on a known connection compares a pointer
/// instead of parsing X.509 again.
#[derive(Clone, Default)]
pub struct Callers {
    recent: Arc<Mutex<VecDeque<(Chain, Caller)>>>,
}

/// Connections whose role is remembered: a node has one per peer, plus the
/// operators' short-lived ones.
const REMEMBERED: usize = 32;

impl Callers {
    /// The caller of `request` under mutual TLS: the role in the URI subject
    /// alternative name of its certificate (the handshake already checked
    /// that the cluster's CA signed it).
    pub fn of<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, caller)) = recent.iter().find(|(c, _)| Arc::ptr_eq(c, &certs)) {
            return Ok(caller.clone());
        }
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let caller = role(leaf.as_ref()).ok_or_else(|| {
            Status::permission_denied(format!(
                "the client certificate names no Chorus role (a URI {PEER_URI_PREFIX}<id> or {OPERATOR_URI_PREFIX}<name>)"
            ))
        })?;
        if recent.len() == REMEMBERED {
            recent.pop_back();
        }
        recent.push_front((certs, caller.clone()));
        Ok(caller)
    }
}

/// The role a DER certificate names, if it names exactly one.
pub fn role(der: &[u8]) -> Option<Caller> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut roles = san.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => parse_role(uri),
        _ => None,
    });
    let first = roles.next()?;
    // A certificate that claims two roles is not trusted with either.
    roles.next().is_none().then_some(first)
}

fn parse_role(uri: &str) -> Option<Caller> {
    if let Some(id) = uri.strip_prefix(PEER_URI_PREFIX) {
        return id.parse().ok().filter(|id| *id > 0).map(Caller::Peer);
    }
    let name = uri.strip_prefix(OPERATOR_URI_PREFIX)?;
    (!name.is_empty()).then(|| Caller::Operator(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_from_uris() {
        assert_eq!(parse_role("chorus://peer/3"), Some(Caller::Peer(3)));
        assert_eq!(parse_role("chorus://operator/ops"), Some(Caller::Operator("ops".into())));
        assert_eq!(parse_role("chorus://peer/0"), None);
        assert_eq!(parse_role("chorus://peer/x"), None);
        assert_eq!(parse_role("chorus://operator/"), None);
        assert_eq!(parse_role("https://example.com"), None);
    }
}
