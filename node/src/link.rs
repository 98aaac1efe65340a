//! The peer link: the two hot node-to-node calls, appends and forwarded
//! proposals, on plain framed connections of their own instead of gRPC.
//!
//! Every write waits for one AppendEntries round trip to a follower, and a
//! write taken by a follower also for a `Propose` round trip to the leader.
//! Over gRPC each passes through tonic's buffer task and h2's connection task
//! on both ends, each a thread wake-up on cores the three nodes share. Here
//! the caller's task writes its request straight to the socket and reads the
//! answer from it, and the callee's connection task does the work and writes
//! the answer back itself.
//!
//! The link shares the raft port with gRPC: the first four bytes of a
//! connection are [`MAGIC`] (an HTTP/2 client begins with `PRI `), so
//! `serve_grpc` hands the connection here instead of to tonic. Then:
//!
//! - the caller sends a [`Hello`] frame (the cluster id and the secret, as a
//!   gRPC call carries them in its metadata) and the node answers
//!   `Result<(), String>`: accepted, or why not;
//! - then requests and answers alternate, one at a time. A request is a kind
//!   byte and a bincode body:
//!   - [`APPEND`]: an `AppendEntriesRequest`, answered with the node's
//!     `Result<AppendEntriesResponse, String>` once its Raft has appended and
//!     synced the entries (its log store signals an append only after the
//!     fsync that covers it; see `raft_store::log_store`);
//!   - [`PROPOSE`]: the `Vec<Event>` a follower forwards, answered with
//!     `Result<Vec<ProposeReply>, String>` once each is committed or refused
//!     (as the gRPC `Propose`, whose checks it shares: `rpc::answer_proposals`).
//!
//! A frame is a little-endian `u32` length and that many bytes, at most
//! [`MAX_FRAME`]. Because answers are not tagged, a call that outlives its
//! deadline drops the connection (a late answer must not be read as the next
//! one's); the next call connects again.
//!
//! A peer that does not speak the link (a node of an older build, which treats
//! the bytes as a broken HTTP/2 preface and closes) is called over gRPC from
//! then on. With mutual TLS on the raft port the link runs over TLS: the
//! handshake agrees on it by ALPN ([`crate::tls::LINK_ALPN`]), it is served
//! only to a member's certificate, and a node of an older build, which agrees
//! on `h2` only, is called over gRPC.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_store::codec::{decode, encode};
use raft_store::stages::Stage;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use crate::identity::Identity;
use crate::node::Node;

/// The first bytes of a link connection.
pub const MAGIC: [u8; 4] = *b"CRL1";
/// The kind byte of an append.
pub const APPEND: u8 = 1;
/// The kind byte of forwarded proposals.
pub const PROPOSE: u8 = 2;
/// The largest frame either side reads, as the gRPC service's message limit.
pub const MAX_FRAME: usize = 64 << 20;
/// How long a connecting caller has to send its magic and [`Hello`].
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection: a heartbeat or a small append and its header
/// arrive in one read.
const READ_BUFFER: usize = 16 << 10;

/// What a caller says first: who it is, as a gRPC call says it in metadata.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: Option<String>,
    pub secret: Option<String>,
}

impl Hello {
    /// This node's hello: its cluster id and the secret, if set.
    pub fn of(identity: &Identity) -> Hello {
        Hello { cluster_id: identity.cluster_id(), secret: identity.secret().map(str::to_string) }
    }
}

/// The largest hello read: it is read before the caller is known, so a
/// stranger must not make the node allocate a whole [`MAX_FRAME`].
const MAX_HELLO: usize = 4 << 10;

/// Reads one frame. `Ok(None)` on a clean end of stream before a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    read_frame_within(r, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes, refusing a longer one before
/// reading (or allocating for) its body.
async fn read_frame_within<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes is over the {max}-byte limit")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Writes one frame (length and body in one write) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    write_frame_of(w, &[], body).await
}

/// Writes one frame whose body is `head` then `body`, copied once into the
/// buffer that goes out in one write (an append's entries are not copied
/// twice to put a kind byte before them).
async fn write_frame_of<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], body: &[u8]) -> io::Result<()> {
    let len = head.len() + body.len();
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes is over the {MAX_FRAME}-byte limit")));
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(head);
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Why a call on the link failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer took the connection but closed it at the hello: it does not
    /// speak the link.
    #[error("the peer does not speak the peer link")]
    Unsupported,
    /// The peer refused the hello (wrong secret, another cluster).
    #[error("the peer refused the peer link: {0}")]
    Refused(String),
    /// The answer did not come within the deadline; the connection is gone.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, writing or reading failed; the connection is gone.
    #[error("peer link: {0}")]
    Io(#[from] io::Error),
}

/// A link connection's byte stream: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for S {}

/// The caller's end: one connection, one call at a time.
pub struct Link {
    conn: BufReader<Box<dyn Stream>>,
}

impl Link {
    /// Connects to `addr` (from `source`, if given; over TLS with `tls`, if
    /// given) and says `hello`, within `timeout`.
    pub async fn connect(
        addr: &str,
        source: Option<std::net::IpAddr>,
        tls: Option<&Arc<ClientConfig>>,
        hello: &Hello,
        timeout: Duration,
    ) -> Result<Link, CallError> {
        let attempt = async {
            let tcp = connect_tcp(addr, source).await?;
            tcp.set_nodelay(true)?;
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some(config) => {
                    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
                    let name = ServerName::try_from(host.to_string()).map_err(invalid)?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?;
                    // A node of an older build offers gRPC only.
                    if tls.get_ref().1.alpn_protocol() != Some(crate::tls::LINK_ALPN) {
                        return Err(CallError::Unsupported);
                    }
                    Box::new(tls)
                }
            };
            let mut conn = BufReader::with_capacity(READ_BUFFER, stream);
            let mut first = MAGIC.to_vec();
            let body = encode(hello).map_err(invalid)?;
            first.extend_from_slice(&(body.len() as u32).to_le_bytes());
            first.extend_from_slice(&body);
            conn.write_all(&first).await?;
            conn.flush().await?;
            // A node that does not know the link closes (or resets) here.
            let answer = match read_frame(&mut conn).await {
                Ok(Some(answer)) => answer,
                Ok(None) => return Err(CallError::Unsupported),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(CallError::Unsupported),
                Err(e) => return Err(e.into()),
            };
            let accepted: Result<(), String> = decode(&answer).map_err(invalid)?;
            accepted.map_err(CallError::Refused)?;
            Ok(Link { conn })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    /// Sends one request of `kind` and reads its answer, within `timeout`.
    /// On any error the link must be dropped.
    pub async fn call(&mut self, kind: u8, body: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        let exchange = async {
            write_frame_of(&mut self.conn, &[kind], body).await?;
            read_frame(&mut self.conn)
                .await?
                .ok_or_else(|| CallError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the peer link")))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }
}

async fn connect_tcp(addr: &str, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(addr).await };
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, format!("{addr} has no address of {source}'s family")))?;
    let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// The node's end of one link connection whose magic was already read:
/// checks the hello, then answers requests until the caller closes, a frame
/// is bad, or `stop` is set.
pub async fn serve<S>(node: Arc<Node>, conn: S, mut stop: tokio::sync::watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = BufReader::with_capacity(READ_BUFFER, conn);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame_within(&mut conn, MAX_HELLO)).await {
        Ok(Ok(Some(hello))) => hello,
        _ => return,
    };
    let verdict = match decode::<Hello>(&hello) {
        Ok(hello) => admit(&node.peers.identity, &hello),
        Err(e) => Err(format!("undecodable hello: {e}")),
    };
    let accepted = verdict.is_ok();
    let Ok(answer) = encode(&verdict) else { return };
    if write_frame(&mut conn, &answer).await.is_err() || !accepted {
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut conn) => frame,
            _ = stop.wait_for(|s| *s) => return,
        };
        let request = match frame {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "peer link closed on a bad frame");
                return;
            }
        };
        let Ok(answer) = answer_request(&node, &request).await else { return };
        if write_frame(&mut conn, &answer).await.is_err() {
            return;
        }
    }
}

/// The answer to one request. A body that cannot be decoded, or a kind this
/// build does not know (a newer caller's), gets `Err` with the reason: the
/// same bytes whatever `Result<_, String>` the caller expects.
async fn answer_request(node: &Node, request: &[u8]) -> Result<Vec<u8>, raft_store::error::StoreError> {
    let refuse = |why: String| encode(&Err::<(), String>(why));
    let Some((&kind, body)) = request.split_first() else { return refuse("an empty request".into()) };
    match kind {
        APPEND => {
            let arrived = Instant::now();
            let req: openraft::raft::AppendEntriesRequest<raft_store::TypeConfig> = match decode(body) {
                Ok(req) => req,
                Err(e) => return refuse(format!("undecodable append: {e}")),
            };
            let carries_entries = !req.entries.is_empty();
            let result = node.raft.append_entries(req).await.map_err(|e| e.to_string());
            if carries_entries {
                node.stages.observe(Stage::FollowerAppend, arrived.elapsed());
            }
            encode(&result)
        }
        PROPOSE => {
            let events: Vec<raft_store::chat::Event> = match decode(body) {
                Ok(events) => events,
                Err(e) => return refuse(format!("undecodable proposals: {e}")),
            };
            encode(&crate::rpc::answer_proposals(node, events).await)
        }
        other => refuse(format!("unknown request kind {other}")),
    }
}

/// Whether a hello may open a link: the secret, if one is set, and the
/// cluster id, which a node with none yet adopts (as for a gRPC peer call).
fn admit(identity: &Identity, hello: &Hello) -> Result<(), String> {
    identity.check_secret_str(hello.secret.as_deref().unwrap_or_default()).map_err(|s| s.message().to_string())?;
    let cluster_id = hello.cluster_id.as_deref().ok_or("peer call without a cluster id")?;
    identity.adopt(cluster_id).map_err(|s| s.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_an_oversized_one_is_refused() -> io::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello").await?;
        write_frame(&mut a, b"").await?;
        assert_eq!(read_frame(&mut b).await?, Some(b"hello".to_vec()));
        assert_eq!(read_frame(&mut b).await?, Some(Vec::new()));
        a.write_all(&((MAX_FRAME as u32) + 1).to_le_bytes()).await?;
        let err = read_frame(&mut b).await.expect_err("an oversized frame was read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert_eq!(read_frame(&mut b).await?, None, "a clean close is the end, not an error");
        Ok(())
    }

    #[tokio::test]
    async fn a_hello_longer_than_its_limit_is_refused_before_its_body() -> io::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Only the length is sent: the reader must refuse without waiting for
        // (or allocating) the megabyte it claims.
        a.write_all(&(1u32 << 20).to_le_bytes()).await?;
        let err = read_frame_within(&mut b, MAX_HELLO).await.expect_err("an oversized hello was read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        Ok(())
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error() -> io::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_le_bytes()).await?;
        a.write_all(b"abc").await?;
        drop(a);
        assert!(read_frame(&mut b).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_that_closes_at_the_hello_does_not_speak_the_link() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let closer = tokio::spawn(async move {
            // As an older node's tonic does with a preface it cannot read.
            let (mut s, _) = listener.accept().await?;
            let mut first = [0u8; 4];
            s.read_exact(&mut first).await?;
            io::Result::Ok(first)
        });
        let hello = Hello { cluster_id: Some("c".into()), secret: None };
        let e = Link::connect(&addr, None, None, &hello, Duration::from_secs(5)).await.err().expect("a closed link connected");
        assert!(matches!(e, CallError::Unsupported), "{e:?}");
        assert_eq!(closer.await.map_err(io::Error::other)??, MAGIC);
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_is_a_timeout() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let hello = Hello { cluster_id: Some("c".into()), secret: None };
        let e = Link::connect(&addr, None, None, &hello, Duration::from_millis(200)).await.err().expect("a silent peer connected");
        assert!(matches!(e, CallError::Timeout(_)), "{e:?}");
        drop(listener);
        Ok(())
    }

    #[test]
    fn a_hello_needs_the_secret_and_the_cluster_id() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let identity = Identity::load(raft_store::db::open(dir.path())?, Some("a-long-enough-secret".into()), false)?;
        let hello = |cluster: Option<&str>, secret: Option<&str>| Hello { cluster_id: cluster.map(Into::into), secret: secret.map(Into::into) };
        let wrong = admit(&identity, &hello(Some("c1"), Some("a-long-enough-secreT"))).expect_err("a wrong secret was admitted");
        assert!(wrong.contains("secret"), "{wrong}");
        admit(&identity, &hello(Some("c1"), None)).expect_err("no secret was admitted");
        admit(&identity, &hello(None, Some("a-long-enough-secret"))).expect_err("no cluster id was admitted");
        // A node with no cluster yet adopts the caller's, as for gRPC.
        admit(&identity, &hello(Some("c1"), Some("a-long-enough-secret"))).map_err(anyhow::Error::msg)?;
        assert_eq!(identity.cluster_id().as_deref(), Some("c1"));
        let other = admit(&identity, &hello(Some("c2"), Some("a-long-enough-secret"))).expect_err("another cluster was admitted");
        assert!(other.contains("c1"), "{other}");
        Ok(())
    }

    #[test]
    fn the_magic_cannot_be_an_http2_preface() {
        assert_ne!(&MAGIC, b"PRI ");
    }
}
