//! A cap on the raft port's open connections per source address, checked as
//! each connection is accepted, before TLS or HTTP/2 has read a byte of it.
//!
//! A member keeps one channel to each peer, and `chorusctl` one per command,
//! so a few connections per address are the norm; a stranger who opens
//! thousands would otherwise hold a task and buffers each, and the file
//! descriptors the members need. A connection past the cap is closed at once.
//! The count of an address goes down when its connection is dropped.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Open connections per source address, and the most each may have.
pub struct PeerConnections {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

impl PeerConnections {
    /// At most `max` open connections per address; 0: no cap.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PeerConnections { open: Mutex::new(HashMap::new()), max })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every update under the lock is one counter write.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `stream`, counted against its address, or `None` (and the stream
    /// dropped, so closed) if the address already has the most it may.
    pub fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Counted> {
        let ip = match stream.peer_addr() {
            Ok(addr) => addr.ip(),
            // Gone already: nothing to serve.
            Err(_) => return None,
        };
        {
            let mut open = self.open();
            let n = open.entry(ip).or_insert(0);
            if self.max > 0 && *n >= self.max {
                tracing::debug!(%ip, max = self.max, "refused a raft-port connection: the address has its limit open");
                return None;
            }
            *n += 1;
        }
        Some(Counted { stream, _slot: Slot { owner: self.clone(), ip } })
    }

    /// Open connections from `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open().get(&ip).copied().unwrap_or(0)
    }
}

/// One counted connection's place; given back on drop.
struct Slot {
    owner: Arc<PeerConnections>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An admitted connection: the socket, holding its place until dropped.
pub struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl Counted {
    /// Reads what has arrived without taking it off the socket.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }
}

impl Connected for Counted {
    // The socket's own, so that TLS and `Request::peer_certs` see what they
    // would see without the cap.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(listener: &tokio::net::TcpListener) -> io::Result<(TcpStream, TcpStream)> {
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((client, server))
    }

    #[tokio::test]
    async fn an_address_gets_at_most_its_cap_and_a_closed_connection_frees_its_place() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ip: IpAddr = [127, 0, 0, 1].into();
        let caps = PeerConnections::new(2);
        let mut kept = Vec::new();
        for _ in 0..2 {
            let (client, server) = pair(&listener).await?;
            kept.push((client, caps.admit(server).expect("within the cap")));
        }
        assert_eq!(caps.count(ip), 2);
        let (_client, server) = pair(&listener).await?;
        assert!(caps.admit(server).is_none(), "a third connection was admitted");
        assert_eq!(caps.count(ip), 2);
        kept.pop();
        assert_eq!(caps.count(ip), 1);
        let (_client, server) = pair(&listener).await?;
        assert!(caps.admit(server).is_some(), "the freed place was not given");
        assert_eq!(caps.count(ip), 1, "the admitted one was dropped at once, so counted no more");
        let unlimited = PeerConnections::new(0);
        let mut many = Vec::new();
        for _ in 0..5 {
            let (client, server) = pair(&listener).await?;
            many.push((client, unlimited.admit(server).expect("no cap")));
        }
        assert_eq!(unlimited.count(ip), 5);
        Ok(())
    }
}
