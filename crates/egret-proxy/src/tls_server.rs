//! TLS termination for Gateway servers (SIMPLE / MUTUAL / OPTIONAL_MUTUAL): rustls'
//! [`ServerConnection`] driven directly over the accepted connection.
//!
//! Why not `tokio-rustls`: its accept future flushes everything rustls queued before it
//! returns, so a TLS 1.3 server sends its session ticket in a write (and a TCP segment) of its
//! own, between the client's Finished and the first response. Here the ticket stays queued
//! until the first write of the connection and leaves in the same `writev` as the response (or
//! the upstream's first bytes, or an HTTP/2 server's SETTINGS) — one system call and one
//! segment less per full handshake (issue 8, bench/NOTES.md "TLS handshakes at the gateway").
//! A TLS 1.3 client does not wait for the ticket (RFC 8446 §4.6.1: it may arrive at any time
//! after the server's Finished), while a TLS 1.2 server's last flight (ChangeCipherSpec,
//! Finished) ends the handshake for the client, so everything queued is sent at once there.
//!
//! The bytes protocol detection already read (the ClientHello) are handed to rustls directly
//! instead of being replayed through [`crate::io::PrefixedIo`].
//!
//! Records rustls queues while reading (a KeyUpdate answer) go out with the next write, flush
//! or shutdown, as the ticket does: nothing is written from the read side after the handshake.

use std::future::poll_fn;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A terminated TLS connection: reads give the client's plaintext, writes are encrypted.
#[derive(Debug)]
pub struct TlsServerStream<S> {
    io: S,
    conn: ServerConnection,
    /// `close_notify` has been queued (by [`AsyncWrite::poll_shutdown`]).
    closing: bool,
}

/// The server's side of a handshake on `io`, starting with `prefix` (bytes already read from
/// `io`: the ClientHello, or part of it). Errors are rustls' (as `InvalidData`, after a
/// best-effort alert) or the connection's; a client that closes mid-handshake is
/// `UnexpectedEof`. The caller bounds the time.
pub async fn accept<S>(
    config: Arc<ServerConfig>,
    prefix: Bytes,
    io: S,
) -> io::Result<TlsServerStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut s = TlsServerStream {
        io,
        conn,
        closing: false,
    };
    let mut prefix = Some(prefix);
    poll_fn(|cx| {
        if let Some(p) = prefix.take() {
            s.take_prefix(cx, &p)?;
        }
        s.poll_handshake(cx)
    })
    .await?;
    Ok(s)
}

impl<S> TlsServerStream<S> {
    pub fn get_ref(&self) -> (&S, &ServerConnection) {
        (&self.io, &self.conn)
    }

    /// The bytes detection read, processed as if read from the socket.
    fn take_prefix(&mut self, cx: &mut Context<'_>, mut prefix: &[u8]) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        while !prefix.is_empty() {
            if !self.conn.wants_read() {
                // Only with decrypted data pending, which cannot precede the handshake.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS: unexpected data before the handshake",
                ));
            }
            self.conn.read_tls(&mut prefix)?;
            self.process(cx)?;
        }
        Ok(())
    }

    /// rustls processes what it has read. On an error, the alert rustls queued is written if
    /// the socket takes it now (never waited for): the primary error is what is returned.
    fn process(&mut self, cx: &mut Context<'_>) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.poll_send(cx);
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    /// Writes everything rustls has queued. `Ready(Ok)`: all of it is in the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + Unpin,
    {
        while self.conn.wants_write() {
            let mut w = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut w) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads one chunk from the socket into rustls and processes it. `Ok(0)`: end of stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut r = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = match self.conn.read_tls(&mut r) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.process(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            // TLS 1.3: once the handshake is done, what is queued is the session ticket; it
            // waits for the first write. Anything else (a flight, TLS 1.2's last one) goes now.
            let hold = !self.conn.is_handshaking()
                && self.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
            if !hold {
                ready!(self.poll_send(cx))?;
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS handshake: the client closed the connection",
                )));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsServerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                // 0 after the client's close_notify: end of stream.
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: the connection closed without close_notify.
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Nothing decrypted is buffered: read more. At the socket's end of stream rustls
            // answers the read above with end of stream or `UnexpectedEof`.
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsServerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, buf.is_empty(), |w| w.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let empty = bufs.iter().all(|b| b.is_empty());
        self.get_mut()
            .poll_write_with(cx, empty, |w| w.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.poll_send(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            // The client may be gone already: the write side is closed either way.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsServerStream<S> {
    /// Hands plaintext to rustls, then writes what is queued (the held ticket first). rustls
    /// takes nothing when its outgoing buffer is full: then the queue is written and, if that
    /// frees room, taken again.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        empty: bool,
        mut put: impl FnMut(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if empty {
            return Poll::Ready(Ok(0));
        }
        // Twice at most: once the queue is written rustls takes plaintext again; if it still
        // takes nothing (written after shutdown), that is an error rather than a busy loop.
        for _ in 0..2 {
            let n = put(&mut self.conn.writer())?;
            let sent = self.poll_send(cx)?;
            if n > 0 {
                // Taken by rustls; what the socket did not take goes with the next write or
                // flush (callers flush, as with any buffered writer).
                return Poll::Ready(Ok(n));
            }
            if sent.is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "TLS: the connection takes no more data",
        )))
    }
}

/// `std::io::{Read, Write}` over an async stream for rustls' `read_tls` / `write_tls`:
/// `Pending` becomes `WouldBlock` (the waker is registered by the poll).
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::{Context as _, Result};
    use egret_testkit::TestCa;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, HandshakeKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn server_config(
        ca: &TestCa,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<ServerConfig>> {
        let pair = ca.issue_server(&["backend.test"])?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut c = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_single_cert(vec![pair.cert_der()?], pair.key_der()?)?;
        crate::tls::resumption_by_stateless_ticket(&mut c)?;
        Ok(Arc::new(c))
    }

    fn client_config(
        ca: &TestCa,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let c = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(ca.root_store()?)
            .with_no_client_auth();
        Ok(Arc::new(c))
    }

    /// Counts the writes that reached the socket.
    struct Counting {
        io: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let r = Pin::new(&mut this.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(_)) = r {
                this.writes.fetch_add(1, Ordering::SeqCst);
            }
            r
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            if let Poll::Ready(Ok(_)) = r {
                this.writes.fetch_add(1, Ordering::SeqCst);
            }
            r
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
        }
    }

    /// One request/response on a new connection; the server takes the first `split` bytes of
    /// the ClientHello as the detection prefix. Returns the client's handshake kind and the
    /// server's socket writes: after the handshake, and in all.
    async fn one_exchange(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        split: usize,
    ) -> Result<(Option<HandshakeKind>, usize, usize)> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let srv = tokio::spawn(async move {
            let (mut s, _) = l.accept().await?;
            let mut prefix = vec![0; split];
            s.read_exact(&mut prefix).await?;
            let writes = Arc::new(AtomicUsize::new(0));
            let io = Counting {
                io: s,
                writes: writes.clone(),
            };
            let mut tls = accept(server, Bytes::from(prefix), io).await?;
            let after_handshake = writes.load(Ordering::SeqCst);
            let mut req = [0u8; 4];
            tls.read_exact(&mut req).await?;
            anyhow::ensure!(&req == b"ping", "request {req:?}");
            tls.write_all(b"pong").await?;
            tls.flush().await?;
            // The client's close_notify: a clean end of stream.
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await?;
            anyhow::ensure!(rest.is_empty(), "trailing {rest:?}");
            tls.shutdown().await?;
            anyhow::Ok((after_handshake, writes.load(Ordering::SeqCst)))
        });
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("backend.test")?;
        let mut c = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await?;
        c.write_all(b"ping").await?;
        let mut resp = [0u8; 4];
        c.read_exact(&mut resp).await?;
        anyhow::ensure!(&resp == b"pong", "response {resp:?}");
        c.shutdown().await?;
        // The server's close_notify: a clean end of stream (not UnexpectedEof).
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .await
            .context("client: end of stream")?;
        let kind = c.get_ref().1.handshake_kind();
        let (after_handshake, total) = srv.await??;
        Ok((kind, after_handshake, total))
    }

    #[tokio::test]
    async fn tls13_ticket_leaves_with_the_first_response_and_the_next_connection_resumes()
    -> Result<()> {
        let ca = TestCa::new("tls_server test")?;
        let server = server_config(&ca, &[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let client = client_config(&ca, &[&rustls::version::TLS13])?;
        let (kind, after_handshake, total) =
            one_exchange(server.clone(), client.clone(), 5).await?;
        assert_eq!(kind, Some(HandshakeKind::Full));
        // The server's flight, then the ticket and the response in one write, then
        // close_notify.
        assert_eq!((after_handshake, total), (1, 3));
        // The ticket arrived: the client resumes (and gets a fresh ticket with the response).
        let (kind, after_handshake, total) = one_exchange(server, client, 100).await?;
        assert_eq!(kind, Some(HandshakeKind::Resumed));
        assert_eq!((after_handshake, total), (1, 3));
        Ok(())
    }

    #[tokio::test]
    async fn tls12_last_flight_is_not_held() -> Result<()> {
        // A TLS 1.2 client waits for the server's Finished before it sends anything.
        let ca = TestCa::new("tls_server test")?;
        let server = server_config(&ca, &[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let client = client_config(&ca, &[&rustls::version::TLS12])?;
        let (kind, after_handshake, _) = one_exchange(server, client, 1).await?;
        assert_eq!(kind, Some(HandshakeKind::Full));
        assert_eq!(after_handshake, 2);
        Ok(())
    }

    #[tokio::test]
    async fn handshake_failure_is_an_error_and_the_client_gets_the_alert() -> Result<()> {
        let ca = TestCa::new("tls_server test")?;
        let server = server_config(&ca, &[&rustls::version::TLS13])?;
        let client = client_config(&ca, &[&rustls::version::TLS12])?;
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await?;
            anyhow::Ok(accept(server, Bytes::new(), s).await.map(|_| ()))
        });
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("backend.test")?;
        let err = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .err()
            .context("the client's handshake must fail")?;
        assert!(
            err.to_string().contains("ProtocolVersion"),
            "client error: {err}"
        );
        let server_err = srv
            .await??
            .err()
            .context("the server's handshake must fail")?;
        assert_eq!(server_err.kind(), io::ErrorKind::InvalidData);
        Ok(())
    }

    #[tokio::test]
    async fn megabytes_both_ways_through_full_socket_buffers() -> Result<()> {
        const N: usize = 8 << 20;
        let ca = TestCa::new("tls_server test")?;
        let server = server_config(&ca, &[&rustls::version::TLS13])?;
        let client = client_config(&ca, &[&rustls::version::TLS13])?;
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await?;
            let mut tls = accept(server, Bytes::new(), s).await?;
            // Everything the client sends, until its close_notify.
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await?;
            anyhow::ensure!(got.len() == N && got.iter().enumerate().all(|(i, b)| *b == i as u8));
            // Then as much back, in one write call per 64 KiB, while the client is slow.
            let data: Vec<u8> = (0..N).map(|i| (i * 7) as u8).collect();
            for chunk in data.chunks(64 << 10) {
                tls.write_all(chunk).await?;
            }
            tls.shutdown().await?;
            anyhow::Ok(())
        });
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("backend.test")?;
        let mut c = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await?;
        let data: Vec<u8> = (0..N).map(|i| i as u8).collect();
        c.write_all(&data).await?;
        c.shutdown().await?;
        let mut back = Vec::new();
        let mut buf = vec![0; 1000];
        loop {
            // A slow reader: the server's socket buffer fills and its writes wait.
            let n = c.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
            if back.len() % (1 << 20) < 1000 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(back.len(), N);
        assert!(back.iter().enumerate().all(|(i, b)| *b == (i * 7) as u8));
        srv.await??;
        Ok(())
    }
}
