//! Inactivity limits for connections served as a whole:
//! - `connectionPool.tcp.idleTimeout` for TLS/TCP relays (Envoy's TCP proxy `idle_timeout`,
//!   Istio default 1 h, `0s` disables): a relay with no bytes in either direction for that long
//!   is closed;
//! - the downstream `idle_timeout` (Envoy's HTTP connection manager, 1 h) of connections hyper
//!   serves (HTTP/2, upgrades, streamed uploads; egret's own HTTP/1.1 server has its own timer,
//!   `h1::timeouts`).
//!
//! Each side records its last activity in an atomic; one timer per connection checks it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that records when it last moved bytes.
pub struct Active<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S> Active<S> {
    fn touch(&self) {
        self.last.store(crate::outlier::now_ms(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// [`crate::proxy::relay`] closed after `idle` without traffic (`None`: never).
/// Returns bytes (to upstream, from upstream) when the relay ended by itself, `None` when it
/// was closed for being idle.
pub async fn relay<S, U>(
    down: S,
    prefix: Bytes,
    up: U,
    idle: Option<Duration>,
) -> Option<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle) = idle.filter(|d| !d.is_zero()) else {
        return Some(crate::proxy::relay(down, prefix, up).await);
    };
    let last = Arc::new(AtomicU64::new(crate::outlier::now_ms()));
    let down = Active {
        inner: down,
        last: last.clone(),
    };
    let up = Active {
        inner: up,
        last: last.clone(),
    };
    tokio::select! {
        r = crate::proxy::relay(down, prefix, up) => Some(r),
        () = watchdog(&last, idle) => None,
    }
}

/// Run `serve` on `io` until it ends, or until `idle` (`None` or zero: never) passes without a
/// byte read or written; then `serve` is dropped, which closes the connection. `None`: closed
/// for being idle.
pub async fn serve<S, F, Fut>(io: S, idle: Option<Duration>, serve: F) -> Option<Fut::Output>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Active<S>) -> Fut,
    Fut: Future,
{
    let last = Arc::new(AtomicU64::new(crate::outlier::now_ms()));
    let io = Active {
        inner: io,
        last: last.clone(),
    };
    let Some(idle) = idle.filter(|d| !d.is_zero()) else {
        return Some(serve(io).await);
    };
    tokio::select! {
        r = serve(io) => Some(r),
        () = watchdog(&last, idle) => None,
    }
}

/// Returns once `idle` has passed since `last` (milliseconds, `outlier::now_ms`).
async fn watchdog(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = crate::outlier::now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}
