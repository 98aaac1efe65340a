//! A connection's byte stream as the outbox writes it: a TCP socket, or a TCP
//! socket carrying TLS (`--client-tls-cert`).
//!
//! The fan-out thread writes to sockets with non-blocking `try_write` calls
//! from outside any task, so TLS here is rustls's [`ServerConnection`] driven
//! by hand rather than an async stream: a write hands plaintext to rustls,
//! which seals it into records, and as many record bytes as the socket takes
//! go out at once. Records the socket did not take are *held* in the
//! connection (at most one write's worth, up to rustls's buffer limit): a
//! write refuses new plaintext while any are held, so what the outbox counts
//! as written is at most that much ahead of the socket, and its byte bound
//! keeps holding. Whoever writes to the socket holds the TLS lock, so records
//! go out in the order rustls sealed them.

use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConnection;

/// The stream under one WebSocket connection.
pub enum Wire {
    Plain(TcpStream),
    // Boxed: a rustls connection is large, and most sockets are plain.
    Tls(Box<TlsWire>),
}

/// A socket and the TLS session on it (handshake done).
pub struct TlsWire {
    sock: TcpStream,
    conn: Mutex<ServerConnection>,
}

impl From<TcpStream> for Wire {
    fn from(sock: TcpStream) -> Self {
        Wire::Plain(sock)
    }
}

impl Wire {
    /// A TLS connection whose handshake finished on `sock`. Plaintext the
    /// client sent that was not read yet stays in `conn` and is read first.
    pub fn tls(sock: TcpStream, conn: ServerConnection) -> Self {
        Wire::Tls(Box::new(TlsWire { sock, conn: Mutex::new(conn) }))
    }

    /// The socket itself.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(t) => &t.sock,
        }
    }

    /// Writes some of `buf` without blocking, as [`TcpStream::try_write`]:
    /// the number of bytes taken, or `WouldBlock`. Over TLS, bytes taken may
    /// wait in the connection as sealed records ([`Wire::holds_output`]).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.try_write(buf),
            Wire::Tls(t) => t.try_write(buf),
        }
    }

    /// Whether bytes already taken by [`Wire::try_write`] wait for the socket.
    pub fn holds_output(&self) -> bool {
        match self {
            Wire::Plain(_) => false,
            Wire::Tls(t) => t.lock().wants_write(),
        }
    }

    /// Ready once nothing is held for the socket (pending, woken when it is
    /// writable, while something is).
    pub fn poll_flush_held(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Wire::Plain(_) => Poll::Ready(Ok(())),
            Wire::Tls(t) => t.poll_flush_held(cx),
        }
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket().poll_write_ready(cx)
    }

    /// Reads what the client sent (plaintext, over TLS) into `buf`.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Wire::Plain(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                match s.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if retry(&e) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Wire::Tls(t) => t.poll_read(cx, buf),
        }
    }

    /// Ends the sending side: over TLS a `close_notify` first (if the
    /// socket takes it now), then FIN.
    pub fn shutdown_write(&self) -> io::Result<()> {
        if let Wire::Tls(t) = self {
            let mut conn = t.lock();
            conn.send_close_notify();
            flush(&mut conn, &t.sock)?;
        }
        socket2::SockRef::from(self.socket()).shutdown(std::net::Shutdown::Write)
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

impl TlsWire {
    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        // rustls leaves the connection consistent between calls; a panic
        // elsewhere while the lock was held does not make it unusable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut conn = self.lock();
        flush(&mut conn, &self.sock)?;
        if conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // What the socket does not take now is held, and goes first next time.
        flush(&mut conn, &self.sock)?;
        Ok(n)
    }

    fn poll_flush_held(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.lock().wants_write() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.sock.poll_write_ready(cx))?;
            // A socket that would block clears its readiness, so the next
            // poll registers for it.
            flush(&mut self.lock(), &self.sock)?;
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            // Plaintext already decrypted goes first; `Ok(0)` is the client's
            // close_notify, an error a close without one.
            match self.lock().reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(self.sock.poll_read_ready(cx))?;
            let mut conn = self.lock();
            match conn.read_tls(&mut SockIo(&self.sock)) {
                // End of stream: rustls notes it, and the reader reports it.
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // The alert rustls queued for the client, if it fits.
                        let _ = flush(&mut conn, &self.sock);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // Records the client's asked for (a key update answer).
                    flush(&mut conn, &self.sock)?;
                }
                Err(e) if retry(&e) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Writes sealed records to `sock` until none are left or it would block.
fn flush(conn: &mut ServerConnection, sock: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut SockIo(sock)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as blocking-style `Read`/`Write` for rustls, through tokio's
/// non-blocking calls (so a `WouldBlock` clears tokio's readiness).
struct SockIo<'a>(&'a TcpStream);

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
