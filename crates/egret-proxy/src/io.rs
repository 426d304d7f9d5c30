//! I/O adapters for the data path.
//!
//! [`PrefixedIo`] replays the bytes that protocol detection ([`crate::detect`]) already read
//! from a connection, then continues with the connection itself, so the real handler (HTTP
//! server, TLS passthrough, TCP proxy) sees the stream from its first byte — the same effect as
//! Envoy's listener filters, which peek and leave the bytes in the socket buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that yields `prefix` first, then reads from `inner`. Writes go straight to
/// `inner`.
#[derive(Debug)]
pub struct PrefixedIo<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedIo<S> {
    /// Wraps `inner` so that reads return `prefix` before anything from `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The part of the prefix not read yet.
    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Mutable access to the inner stream. Reading from it directly skips the unread prefix.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The unread prefix and the inner stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            if let Some(chunk) = this.prefix.get(..n) {
                buf.put_slice(chunk);
            }
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_drain_prefix_then_inner() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), server);
        let mut small = [0u8; 2];
        let mut got = Vec::new();
        loop {
            let n = io.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"hello world");
        assert!(io.prefix().is_empty());
    }

    #[tokio::test]
    async fn writes_and_shutdown_reach_inner() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"x"), server);
        io.write_all(b"reply").await.unwrap();
        let n = io.write_vectored(&[IoSlice::new(b"!")]).await.unwrap();
        assert_eq!(n, 1);
        io.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"reply!");
        assert_eq!(io.is_write_vectored(), io.get_ref().is_write_vectored());
        let (prefix, _inner) = io.into_parts();
        assert_eq!(prefix, Bytes::from_static(b"x"));
    }
}
