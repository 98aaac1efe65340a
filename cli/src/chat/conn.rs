//! Reaching a node's client port: logging in, TLS trusting the cluster's CA,
//! and opening a WebSocket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::Connector;
use wire::http::{Credentials, ErrorBody, NewUser, Session};

use super::Ws;

/// Registers `user` if new (with `invite` if given: a node run with
/// `--registration invite` asks for one), logs in, and returns a token. A
/// node that refuses the registration (closed, or no invite) still logs a
/// known user in; for an unknown one, its refusal is the error.
pub async fn session(http: &reqwest::Client, url: &str, user: &str, password: &str, invite: Option<&str>) -> anyhow::Result<String> {
    let new_user = NewUser { name: user.to_string(), password: password.to_string(), invite: invite.map(str::to_string) };
    let r = http.post(format!("{url}/v1/users")).json(&new_user).send().await.with_context(|| format!("cannot reach {url}"))?;
    let refused = match r.status() {
        s if s.is_success() || s == reqwest::StatusCode::CONFLICT => None,
        reqwest::StatusCode::FORBIDDEN => Some(error_text(r).await),
        _ => bail!("register: {}", error_text(r).await),
    };
    let creds = Credentials { name: user.to_string(), password: password.to_string() };
    let r = http.post(format!("{url}/v1/sessions")).json(&creds).send().await?;
    if !r.status().is_success() {
        match refused {
            Some(why) if r.status() == reqwest::StatusCode::UNAUTHORIZED => bail!("register: {why}"),
            _ => bail!("login: {}", error_text(r).await),
        }
    }
    let body: Session = r.json().await.context("login answered without a token")?;
    Ok(body.token)
}

async fn error_text(r: reqwest::Response) -> String {
    let status = r.status();
    match r.json::<ErrorBody>().await {
        Ok(e) => format!("{} ({})", e.message, e.error),
        Err(_) => status.to_string(),
    }
}

/// TLS to the client port trusting only the CA in the PEM file `ca`.
pub fn client_tls(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    anyhow::ensure!(added > 0, "{} holds no usable CA certificate", ca.display());
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP client for the client port: `ca` is the only root it trusts for
/// `https://` (none without it: HTTPS then fails with a certificate error).
pub fn http_client(ca: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

pub async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    connect_with(url, token, None).await
}

/// Opens a WebSocket to the node at `url`; a `wss://` one over `tls`.
pub async fn connect_with(url: &str, token: &str, tls: Option<&Arc<ClientConfig>>) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/v1/ws?token={token}", url.replacen("http", "ws", 1));
    // tungstenite's default 128 KiB read buffer is zeroed on every read attempt;
    // chat frames are a few hundred bytes, and the bench holds thousands of these
    // connections, each read once per frame.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(2 * 1024);
    let connector = tls.map(|t| Connector::Rustls(t.clone()));
    Ok(tokio_tungstenite::connect_async_tls_with_config(ws_url, Some(config), true, connector)
        .await
        .with_context(|| format!("cannot open a WebSocket to {url}"))?
        .0)
}
