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
//! Cost on the hot path: no tokio timer. A tokio timer per connection would make every park
//! of the data-plane runtime walk the timer wheel and read the clock twice (callgrind: ~570
//! instructions per request, 1.7 %). Instead each connection publishes its current deadline
//! in a small shared slot, and one process-wide sweeper thread (`egret-timers`) wakes the
//! connections whose deadline has passed. Deadlines are computed from a coarse clock the
//! sweeper keeps (one atomic load, no `clock_gettime`), so they hold to within one sweep
//! interval: a tenth of the shortest limit in use, between 5 ms and 1 s.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// Progress since the deadline was last computed (or a new phase): the next wait restarts
    /// the inactivity deadline.
    fresh: bool,
    /// The inactivity deadline of the current wait (coarse milliseconds, see [`coarse_now`]).
    inactive_at: Option<u64>,
    /// `request_headers`' deadline, set at the first wait inside a head.
    head_at: Option<u64>,
    /// This connection's slot in the sweeper's list; made at the first wait.
    slot: Option<SlotHandle>,
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
            slot: None,
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

    /// An operation would block: `Pending` (woken by the socket or the sweeper), or a
    /// `TimedOut` error once the deadline of the current phase has passed.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inactivity = match self.phase {
            Phase::Idle => self.limits.idle,
            Phase::Head | Phase::Stream => self.limits.stream_idle,
        };
        if self.fresh {
            self.fresh = false;
            let now = coarse_now();
            self.inactive_at = inactivity.map(|d| now.saturating_add(millis(d)));
            if self.phase == Phase::Head && self.head_at.is_none() {
                self.head_at = self
                    .limits
                    .request_headers
                    .map(|d| now.saturating_add(millis(d)));
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
        if coarse_now() >= deadline {
            self.expired = Some(which);
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let limits = self.limits;
        let slot = self
            .slot
            .get_or_insert_with(|| SlotHandle(Slot::register(&limits)));
        slot.0.arm(deadline, cx.waker());
        Poll::Pending
    }
}

/// What a connection shares with the sweeper: its deadline and whom to wake.
pub struct Slot {
    /// Coarse milliseconds; `u64::MAX`: nothing to wake for.
    deadline: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn register(limits: &Timeouts) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            deadline: AtomicU64::new(u64::MAX),
            waker: Mutex::new(None),
        });
        let shortest = [limits.idle, limits.stream_idle, limits.request_headers]
            .into_iter()
            .flatten()
            .min()
            .map_or(MAX_TICK_MS, millis);
        SWEEP_MS.fetch_min(
            (shortest / 10).clamp(MIN_TICK_MS, MAX_TICK_MS),
            Ordering::Relaxed,
        );
        SWEEPER.call_once(|| {
            COARSE_MS.store(clock_ms(), Ordering::Relaxed);
            if let Err(e) = std::thread::Builder::new()
                .name("egret-timers".into())
                .spawn(sweep)
            {
                // Without it connections are never cut: said once, loudly.
                tracing::error!("cannot start the downstream timeout thread: {e}");
            }
        });
        if let Ok(mut all) = SLOTS.lock() {
            all.push(slot.clone());
        }
        slot
    }

    fn arm(&self, deadline: u64, waker: &Waker) {
        if let Ok(mut w) = self.waker.lock() {
            match &*w {
                Some(old) if old.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
        self.deadline.store(deadline, Ordering::Release);
    }
}

/// The connection's hold on its slot. Dropped with the connection (or when the server hands
/// the socket to hyper), it disarms the slot and lets go of the waker at once: a waker keeps
/// its task's memory alive, and the sweeper forgets the slot only at its next sweep.
struct SlotHandle(Arc<Slot>);

impl Drop for SlotHandle {
    fn drop(&mut self) {
        self.0.deadline.store(u64::MAX, Ordering::Release);
        if let Ok(mut w) = self.0.waker.lock() {
            *w = None;
        }
    }
}

/// Every connection's slot; the sweeper drops those whose connection has ended.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
static SWEEPER: Once = Once::new();
/// The sweep interval in milliseconds (see the module docs).
static SWEEP_MS: AtomicU64 = AtomicU64::new(MAX_TICK_MS);
/// The coarse clock: milliseconds since [`epoch`], as of the last sweep.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);
const MIN_TICK_MS: u64 = 5;
const MAX_TICK_MS: u64 = 1000;

fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn clock_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The sweeper's clock: at most one sweep interval behind.
fn coarse_now() -> u64 {
    COARSE_MS.load(Ordering::Relaxed)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `egret-timers` thread: advance the coarse clock, wake connections past their
/// deadline, forget ended ones.
fn sweep() {
    let mut due = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(SWEEP_MS.load(Ordering::Relaxed)));
        let now = clock_ms();
        COARSE_MS.store(now, Ordering::Relaxed);
        if let Ok(mut all) = SLOTS.lock() {
            all.retain(|s| Arc::strong_count(s) > 1);
            for s in all.iter() {
                let d = s.deadline.load(Ordering::Acquire);
                // Disarmed first, so that a connection woken for an old deadline is not woken
                // again at every sweep; it re-arms with its current one if it still waits.
                if now >= d
                    && s.deadline
                        .compare_exchange(d, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    due.push(s.clone());
                }
            }
        }
        // Woken outside the list's lock: a wake may run the connection's task inline.
        for s in due.drain(..) {
            let w = s.waker.lock().ok().and_then(|mut w| w.take());
            if let Some(w) = w {
                w.wake();
            }
        }
    }
}

impl<S> Timed<S> {
    /// After an operation on the connection: progress restarts the inactivity deadline; a
    /// would-block waits under the current one.
    fn settle<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
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

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.settle(cx, r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.settle(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.settle(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.settle(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.settle(cx, r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::task::Wake;

    struct Counted;
    impl Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    /// A connection that ends lets go of its waker at once, not at the sweeper's next pass:
    /// the waker keeps the connection's task (and its memory) alive.
    #[tokio::test]
    async fn ended_connection_releases_its_waker_at_once() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = Timed::new(server, Timeouts::default());
        let task = Arc::new(Counted);
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut space = [0u8; 16];
        let mut buf = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        let slot = io.slot.as_ref().map(|h| h.0.clone()).expect("armed");
        assert_ne!(slot.deadline.load(Ordering::Relaxed), u64::MAX);
        drop(io);
        drop(client);
        // Only the test's own two references are left (the slot is still in the sweeper's
        // list until its next pass).
        assert_eq!(Arc::strong_count(&task), 2);
        assert_eq!(slot.deadline.load(Ordering::Relaxed), u64::MAX);
        assert!(slot.waker.lock().unwrap().is_none());
    }
}
