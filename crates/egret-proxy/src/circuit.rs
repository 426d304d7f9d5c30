//! Circuit breaking: the DestinationRule's `connectionPool` limits per cluster, as Envoy's
//! cluster circuit breakers (`istio-egress-spec.md` §2).
//!
//! - HTTP/1.1: a request needs a connection of its own, so at most `tcp.maxConnections`
//!   requests are in flight; up to `http.http1MaxPendingRequests` more wait for one; beyond
//!   that the request is refused at once: 503 with response flag `UO` and
//!   `x-envoy-overloaded: true`.
//! - All HTTP: at most `http.http2MaxRequests` requests in flight (Envoy's `max_requests`).
//! - Retries: at most `http.maxRetries` retries outstanding (Envoy's `max_retries`); a retry
//!   beyond it is not made.
//! - TCP/TLS: at most `tcp.maxConnections` connections; more are closed at once.
//!
//! Only atomics and a semaphore: admission never holds a lock across an `.await`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use egret_model::snapshot::ConnectionPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Tokio's semaphore holds at most this many permits.
const MAX_PERMITS: u32 = (usize::MAX >> 4) as u32;

pub struct Breaker {
    /// `tcp.maxConnections`; `None` when unlimited.
    connections: Option<Arc<Semaphore>>,
    max_pending: u32,
    pending: AtomicU32,
    max_requests: u32,
    requests: Arc<AtomicU32>,
    max_retries: u32,
    retries: Arc<AtomicU32>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new(&ConnectionPool::default())
    }
}

/// Admission to the cluster: holds its slots until dropped (when the response body ends).
pub struct Admission {
    _connection: Option<OwnedSemaphorePermit>,
    requests: Option<Arc<AtomicU32>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(r) = &self.requests {
            r.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A retry slot, held while the retry is outstanding.
pub struct RetrySlot(Arc<AtomicU32>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request overflowed a limit (`UO`).
#[derive(Debug)]
pub struct Overflow(pub &'static str);

impl Breaker {
    pub fn new(p: &ConnectionPool) -> Breaker {
        Breaker {
            connections: (p.max_connections < MAX_PERMITS)
                .then(|| Arc::new(Semaphore::new(p.max_connections.max(1) as usize))),
            max_pending: p.http1_max_pending_requests,
            pending: AtomicU32::new(0),
            max_requests: p.http2_max_requests,
            requests: Arc::new(AtomicU32::new(0)),
            max_retries: p.max_retries,
            retries: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Admit an HTTP request (`http1`: it needs a connection of its own).
    pub async fn admit_http(&self, http1: bool) -> Result<Admission, Overflow> {
        let requests = if self.max_requests < u32::MAX {
            if self.requests.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
                self.requests.fetch_sub(1, Ordering::Relaxed);
                return Err(Overflow("max_requests"));
            }
            Some(self.requests.clone())
        } else {
            None
        };
        // From here on `admission` gives the request slot back if we return early.
        let mut admission = Admission {
            _connection: None,
            requests,
        };
        if !http1 {
            return Ok(admission);
        }
        let Some(sem) = &self.connections else {
            return Ok(admission);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            admission._connection = Some(p);
            return Ok(admission);
        }
        // No connection free: wait as a pending request, if there is room to wait.
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(Overflow("max_pending_requests"));
        }
        let permit = sem.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        admission._connection = permit.ok();
        Ok(admission)
    }

    /// Admit a TCP/TLS connection (`tcp.maxConnections`; no waiting).
    pub fn admit_connection(&self) -> Result<Admission, Overflow> {
        let conn = match &self.connections {
            Some(sem) => Some(
                sem.clone()
                    .try_acquire_owned()
                    .map_err(|_| Overflow("max_connections"))?,
            ),
            None => None,
        };
        Ok(Admission {
            _connection: conn,
            requests: None,
        })
    }

    /// A retry slot (`maxRetries`), or `None` when too many retries are outstanding.
    pub fn retry(&self) -> Option<RetrySlot> {
        if self.retries.fetch_add(1, Ordering::Relaxed) >= self.max_retries {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RetrySlot(self.retries.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn http1_connections_then_pending_then_overflow() {
        let p = ConnectionPool {
            max_connections: 1,
            http1_max_pending_requests: 1,
            ..ConnectionPool::default()
        };
        let b = Arc::new(Breaker::new(&p));
        let first = b.admit_http(true).await.unwrap();
        // The second waits (pending) ...
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.admit_http(true).await.is_ok() });
        for _ in 0..100 {
            if b.pending.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // ... and the third overflows at once.
        assert!(matches!(
            b.admit_http(true).await,
            Err(Overflow("max_pending_requests"))
        ));
        drop(first);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn max_requests_and_retries() {
        let p = ConnectionPool {
            http2_max_requests: 1,
            max_retries: 1,
            ..ConnectionPool::default()
        };
        let b = Breaker::new(&p);
        let a = b.admit_http(false).await.unwrap();
        assert!(b.admit_http(false).await.is_err());
        drop(a);
        assert!(b.admit_http(false).await.is_ok());
        let r = b.retry().unwrap();
        assert!(b.retry().is_none());
        drop(r);
        assert!(b.retry().is_some());
    }
}
