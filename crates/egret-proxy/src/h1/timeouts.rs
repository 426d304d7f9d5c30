//! Downstream HTTP/1.1 timeouts: Envoy's HTTP connection manager `idle_timeout` (1 h),
//! `stream_idle_timeout` (5 min) and `request_headers_timeout` (disabled in Envoy; 30 s here,
//! hyper's default, because Envoy's edge best practices and its timeouts FAQ name it as the
//! slowloris defence and egret is secure by default).
//!
//! [`Timed`] wraps a downstream connection. Every read or write that would block is bounded by
//! a deadline that depends on what the connection is doing ([`Phase`]):
//!
//! - waiting for the next request (nothing of it read yet): `idle` without a byte;
//! - reading a request head: `stream_idle` without a byte, and `request_headers` in all;
//! - reading a request body or writing a response: `stream_idle` without progress.
//!
//! Cost on the hot path: one timer per connection, armed lazily the first time an operation
//! would block, and re-armed only when it fires early or a tighter deadline is needed. A busy
//! keep-alive connection reads the clock once per request (when it waits for the next one)
//! and never touches the timer wheel: the armed deadline lags behind, fires at most once per
//! `idle`, and is moved to the deadline that holds then.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The three limits; `None` disables one (Envoy: `0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No request in progress and no byte received (Envoy `idle_timeout`, default 1 h).
    pub idle: Option<Duration>,
    /// No progress while a request is read or its response written (Envoy
    /// `stream_idle_timeout`, default 5 min).
    pub stream_idle: Option<Duration>,
    /// From the first wait inside a request head to its end (Envoy `request_headers_timeout`).
    pub request_headers: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Some(Duration::from_secs(3600)),
            stream_idle: Some(Duration::from_secs(300)),
            request_headers: Some(Duration::from_secs(30)),
        }
    }
}

/// What the connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The next request (nothing of it read yet).
    Idle,
    /// The rest of a request head.
    Head,
    /// A request body, or the client taking the response.
    Stream,
}

/// Which limit ended the connection: an I/O error of kind `TimedOut` carries no more than
/// that, so the server asks [`Timed::expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    StreamIdle,
    RequestHeaders,
}

/// A downstream connection whose blocking reads and writes are bounded (module docs).
pub struct Timed<S> {
    io: S,
    limits: Timeouts,
    phase: Phase,
    /// Progress since the last time the clock was read (or a new phase): the next wait
    /// restarts the inactivity deadline.
    fresh: bool,
    /// The inactivity deadline of the current wait.
    inactive_at: Option<Instant>,
    /// `request_headers`' deadline, set at the first wait inside a head.
    head_at: Option<Instant>,
    /// Lazily created; boxed so that this wrapper (and the connection's future) stays `Unpin`.
    timer: Option<Pin<Box<Sleep>>>,
    expired: Option<Expired>,
}

impl<S> Timed<S> {
    pub fn new(io: S, limits: Timeouts) -> Self {
        Timed {
            io,
            limits,
            phase: Phase::Idle,
            fresh: true,
            inactive_at: None,
            head_at: None,
            timer: None,
            expired: None,
        }
    }

    /// Enter `phase`: its deadlines start at its first wait.
    pub fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.fresh = true;
            if phase != Phase::Head {
                self.head_at = None;
            }
        }
    }

    /// The limit that failed the last operation, if one did.
    pub fn expired(&self) -> Option<Expired> {
        self.expired
    }

    pub fn into_inner(self) -> S {
        self.io
    }

    /// An operation made progress.
    fn progress(&mut self) {
        self.fresh = true;
    }

    /// An operation would block: `Pending` (woken by the socket or the timer), or a
    /// `TimedOut` error once the deadline of the current phase has passed.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inactivity = match self.phase {
            Phase::Idle => self.limits.idle,
            Phase::Head | Phase::Stream => self.limits.stream_idle,
        };
        if self.fresh {
            self.fresh = false;
            let now = Instant::now();
            self.inactive_at = inactivity.map(|d| now + d);
            if self.phase == Phase::Head && self.head_at.is_none() {
                self.head_at = self.limits.request_headers.map(|d| now + d);
            }
        }
        let (deadline, which) = match (self.inactive_at, self.head_at) {
            (Some(i), Some(h)) if h < i => (h, Expired::RequestHeaders),
            (None, Some(h)) => (h, Expired::RequestHeaders),
            (Some(i), _) => (
                i,
                match self.phase {
                    Phase::Idle => Expired::Idle,
                    Phase::Head | Phase::Stream => Expired::StreamIdle,
                },
            ),
            (None, None) => return Poll::Pending,
        };
        let timer = match &mut self.timer {
            Some(t) => {
                // A later deadline needs no timer work: the armed one fires early and is
                // moved below. Only a tighter one re-arms now.
                if t.deadline() > deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                self.expired = Some(which);
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            // Fired early (armed for an older wait): re-arm for this one and poll again, which
            // registers the waker.
            timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.wait(cx))?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.wait(cx))?;
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.wait(cx))?;
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.wait(cx))?;
                Poll::Pending
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                ready!(self.wait(cx))?;
                Poll::Pending
            }
        }
    }
}
