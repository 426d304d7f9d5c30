//! Request-level resilience of a route (VirtualService `retries`, `fault`, `mirror(s)`) and
//! the consistent-hash key (`istio-egress-spec.md` §2, §3):
//!
//! - `retryOn` is evaluated as Envoy's `x-envoy-retry-on` list without allocating: `5xx`,
//!   `gateway-error`, `reset`, `connect-failure`, `retriable-4xx`, `refused-stream`,
//!   `retriable-status-codes` (with Istio's bare status codes in the same list), and the gRPC
//!   conditions `cancelled`, `deadline-exceeded`, `resource-exhausted`, `unavailable` (on the
//!   `grpc-status` of a trailers-only answer).
//! - A request is replayed only when its body is known and small: empty, or a
//!   `content-length` of at most [`REPLAY_BODY_LIMIT`]; it is buffered once. Other requests are
//!   retried only on connect failures (their body has not been sent yet).
//! - Mirrors are fire and forget, on at most [`MAX_MIRRORS_IN_FLIGHT`] requests in flight
//!   per proxy (more are not mirrored), each bounded by [`MIRROR_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::body::InBody as Incoming;
use bytes::Bytes;
use egret_model::snapshot::{Cluster, HashKey, LoadBalancer, RetryOn};
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;

use crate::balancer::hash_bytes;
use crate::proxy::Proxy;
use crate::upstream::ReqBody;

/// Largest request body buffered so the request can be retried or mirrored.
pub const REPLAY_BODY_LIMIT: u64 = 64 * 1024;
/// Mirror requests in flight per proxy, at most.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 128;
/// A mirror request is abandoned after this long.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per request, at most (a configuration cannot make one request fan out).
pub const MAX_ATTEMPTS: u32 = 10;

/// How one attempt ended, for `retryOn`.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    Status(u16, &'a HeaderMap),
    ConnectFailure,
    /// The upstream reset or closed the stream before answering (`refused`: HTTP/2
    /// REFUSED_STREAM).
    Reset {
        refused: bool,
    },
    /// The per-try timeout expired.
    Timeout,
}

/// Is the attempt's outcome retriable under `retry_on`? Envoy's conditions
/// (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`), as Istio's `retryOn` lists them; bare codes
/// are Envoy's `retriable_status_codes`, accepted with or without `retriable-status-codes`.
pub fn retriable(on: &RetryOn, a: Attempt<'_>) -> bool {
    match a {
        Attempt::Status(s, h) => {
            (on.any(RetryOn::FIVE_XX) && s >= 500)
                || (on.any(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504))
                || (on.any(RetryOn::RETRIABLE_4XX) && s == 409)
                || on.codes().contains(&s)
                // The gRPC status is read only if a gRPC condition is listed.
                || (on.any(RetryOn::GRPC)
                    && match grpc_status(h) {
                        Some(1) => on.any(RetryOn::CANCELLED),
                        Some(4) => on.any(RetryOn::DEADLINE_EXCEEDED),
                        Some(8) => on.any(RetryOn::RESOURCE_EXHAUSTED),
                        Some(14) => on.any(RetryOn::UNAVAILABLE),
                        _ => false,
                    })
        }
        Attempt::ConnectFailure => {
            on.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::CONNECT_FAILURE)
        }
        Attempt::Timeout => on.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET),
        Attempt::Reset { refused } => {
            on.any(RetryOn::FIVE_XX | RetryOn::RESET)
                || (refused && on.any(RetryOn::REFUSED_STREAM))
        }
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    // Read on every response under Istio's default `retryOn` (it lists `unavailable` and
    // `cancelled`): comparing the few names a response has is cheaper than hashing this
    // custom name for a lookup. The first value counts, as `HeaderMap::get`.
    let (_, v) = h.iter().find(|(k, _)| k.as_str() == "grpc-status")?;
    v.to_str().ok()?.parse().ok()
}

/// Does the policy retry anything beyond connect failures (which need no replay)?
pub fn replays(on: &RetryOn, attempts: u32) -> bool {
    attempts > 0 && (on.any(!RetryOn::CONNECT_FAILURE) || !on.codes().is_empty())
}

/// Envoy's retry back-off: fully jittered exponential from `base` (25 ms), capped at 10 × base.
pub fn backoff(base: Option<Duration>, retry: u32) -> Duration {
    let base = base
        .unwrap_or(Duration::from_millis(25))
        .max(Duration::from_millis(1));
    let cap = base * 10;
    let ceiling = base.saturating_mul(1 << retry.min(10)).min(cap);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(crate::upstream::random() % (ms + 1))
}

/// True with probability `percent`/100 (`percentage.value` of faults and mirrors).
pub fn roll(percent: f64) -> bool {
    if percent <= 0.0 {
        return false;
    }
    if percent >= 100.0 {
        return true;
    }
    // Millionths of a percent, as Envoy's fractional percent.
    let threshold = (percent * 1_000_000.0) as u64;
    crate::upstream::random() % 100_000_000 < threshold
}

/// The request body, buffered when it can be replayed.
pub enum Body {
    Buffered(Bytes),
    Stream(Incoming),
    /// Reading the body failed (the client went away).
    Failed,
}

/// Buffer the body when it is empty or its `content-length` is at most
/// [`REPLAY_BODY_LIMIT`]; otherwise leave it streaming.
pub async fn buffer_small(body: Incoming, headers: &HeaderMap) -> Body {
    use hyper::body::Body as _;
    let len = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let small = body.is_end_stream() || len.is_some_and(|l| l <= REPLAY_BODY_LIMIT);
    if !small {
        return Body::Stream(body);
    }
    match http_body_util::Limited::new(body, REPLAY_BODY_LIMIT as usize)
        .collect()
        .await
    {
        Ok(c) => Body::Buffered(c.to_bytes()),
        Err(_) => Body::Failed,
    }
}

/// A replayable body.
pub fn full(b: &Bytes) -> ReqBody {
    Full::new(b.clone()).map_err(|never| match never {}).boxed()
}

/// The consistent-hash key's hash for a request, `None` when the request lacks the key.
pub fn hash_key(cluster: &Cluster, req: &http::Request<Incoming>, peer: SocketAddr) -> Option<u64> {
    let LoadBalancer::ConsistentHash(ch) = &cluster.policy.load_balancer else {
        return None;
    };
    match &ch.key {
        HashKey::Header(name) => {
            let v = req.headers().get(name.as_str())?;
            Some(hash_bytes(&[v.as_bytes()]))
        }
        HashKey::Cookie { name, .. } => {
            let v = req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then_some(v)
                })?;
            Some(hash_bytes(&[v.as_bytes()]))
        }
        HashKey::QueryParameter(name) => {
            let q = req.uri().query()?;
            let v = q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then_some(v)
            })?;
            Some(hash_bytes(&[v.as_bytes()]))
        }
        HashKey::SourceIp => Some(match peer.ip() {
            std::net::IpAddr::V4(v) => hash_bytes(&[&v.octets()]),
            std::net::IpAddr::V6(v) => hash_bytes(&[&v.octets()]),
        }),
    }
}

/// Envoy's cookie generation for `httpCookie` with a `ttl`: a request without the cookie gets
/// a new random value to hash on, and the response sets it (`Max-Age` = ttl; a zero ttl makes
/// a session cookie), so the client's next requests land on the same endpoint.
pub fn generate_cookie(cluster: &Cluster) -> Option<(u64, http::HeaderValue)> {
    let LoadBalancer::ConsistentHash(ch) = &cluster.policy.load_balancer else {
        return None;
    };
    let HashKey::Cookie {
        name,
        path,
        ttl: Some(ttl),
    } = &ch.key
    else {
        return None;
    };
    let value = format!(
        "{:016x}{:016x}",
        crate::upstream::random(),
        crate::upstream::random()
    );
    let mut cookie = format!("{name}={value}");
    if let Some(p) = path {
        cookie.push_str("; Path=");
        cookie.push_str(p);
    }
    let secs = ttl.to_std().as_secs();
    if secs > 0 {
        cookie.push_str(&format!("; Max-Age={secs}"));
    }
    cookie.push_str("; HttpOnly");
    let v = http::HeaderValue::from_str(&cookie).ok()?;
    Some((hash_bytes(&[value.as_bytes()]), v))
}

fn mirror_slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(MAX_MIRRORS_IN_FLIGHT)))
}

/// Mirror requests in flight now (tests, admin views).
pub fn mirrors_in_flight() -> usize {
    MAX_MIRRORS_IN_FLIGHT - mirror_slots().available_permits()
}

/// Send a copy of a request to the mirror cluster `cluster` and forget it: its answer is
/// read and dropped, its latency never reaches the caller. Envoy appends `-shadow` to the
/// Host. Returns false when no slot was free (the mirror is skipped, never queued).
pub fn mirror(
    proxy: &Arc<Proxy>,
    cluster: &str,
    head: &http::request::Parts,
    body: Bytes,
    host: &str,
) -> bool {
    let Ok(permit) = mirror_slots().clone().try_acquire_owned() else {
        return false;
    };
    let mut b = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.clone());
    if let Some(h) = b.headers_mut() {
        *h = head.headers.clone();
        let shadow = format!("{host}-shadow");
        if let Ok(v) = http::HeaderValue::from_str(&shadow) {
            h.insert(http::header::HOST, v);
        }
    }
    let Ok(req) = b.body(()) else { return false };
    let (proxy, cluster, host) = (proxy.clone(), cluster.to_string(), host.to_string());
    tokio::spawn(async move {
        let _permit = permit;
        let send = async {
            let rt = proxy.state.load_full();
            let Some(c) = rt.snapshot.cluster(&cluster) else {
                return;
            };
            let state = rt.clusters.get(&c.name);
            let Ok(p) = proxy.upstreams.pick(c, state, None, &host).await else {
                return;
            };
            if proxy.is_self(p.addr) {
                return;
            }
            let timeout = c.policy.connection_pool.connect_timeout.to_std();
            let mesh = c.policy.tls.mode == egret_config::types::ClientTlsMode::IstioMutual;
            let tls = if mesh {
                state.and_then(|s| s.mesh.as_ref())
            } else {
                state.and_then(|s| s.tls.as_ref())
            };
            let sni = c.policy.tls.sni.clone().unwrap_or_else(|| c.host.clone());
            let (parts, ()) = req.into_parts();
            let up = http::Request::from_parts(parts, full(&body));
            if mesh || c.http2 {
                let Ok(mut s) = proxy
                    .upstreams
                    .http2(p.addr, timeout, tls.map(|t| (t, sni.as_str())))
                    .await
                else {
                    return;
                };
                let up = crate::http::to_h2(up, tls.is_some(), &format!("{host}-shadow"));
                if let Ok(r) = s.send_request(up).await {
                    let _ = r.into_body().collect().await;
                }
            } else {
                let limits = crate::upstream::PoolLimits::of(&c.policy.connection_pool);
                let Ok(conn) = proxy
                    .upstreams
                    .h1_conn(p.addr, timeout, tls.map(|t| (t, sni.as_str())), &limits)
                    .await
                else {
                    return;
                };
                // Read to its end, the answer puts the connection back into the pool.
                if let Ok(r) = conn.send(up).await {
                    let _ = r.into_body().collect().await;
                }
            }
        };
        let _ = tokio::time::timeout(MIRROR_TIMEOUT, send).await;
    });
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn retry_on_conditions() {
        let h = HeaderMap::new();
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(retriable(&RetryOn::parse("5xx"), Attempt::Status(500, &h)));
        assert!(!retriable(&RetryOn::parse("5xx"), Attempt::Status(404, &h)));
        assert!(retriable(
            &RetryOn::parse("gateway-error"),
            Attempt::Status(503, &h)
        ));
        assert!(!retriable(
            &RetryOn::parse("gateway-error"),
            Attempt::Status(500, &h)
        ));
        assert!(retriable(
            &RetryOn::parse("retriable-4xx"),
            Attempt::Status(409, &h)
        ));
        assert!(retriable(
            &RetryOn::parse("connect-failure"),
            Attempt::ConnectFailure
        ));
        assert!(!retriable(
            &RetryOn::parse("connect-failure"),
            Attempt::Status(503, &h)
        ));
        assert!(retriable(
            &RetryOn::parse("reset"),
            Attempt::Reset { refused: false }
        ));
        assert!(retriable(
            &RetryOn::parse("refused-stream"),
            Attempt::Reset { refused: true }
        ));
        assert!(!retriable(
            &RetryOn::parse("refused-stream"),
            Attempt::Reset { refused: false }
        ));
        assert!(retriable(
            &RetryOn::parse("503,reset"),
            Attempt::Status(503, &h)
        ));
        assert!(retriable(
            &RetryOn::parse("retriable-status-codes,429"),
            Attempt::Status(429, &h)
        ));
        assert!(retriable(
            &RetryOn::parse("unavailable"),
            Attempt::Status(200, &grpc)
        ));
        assert!(!retriable(
            &RetryOn::parse("cancelled"),
            Attempt::Status(200, &grpc)
        ));
        assert!(retriable(&RetryOn::parse("5xx"), Attempt::Timeout));
        assert!(!retriable(
            &RetryOn::parse("connect-failure"),
            Attempt::Timeout
        ));
        assert!(!replays(&RetryOn::parse("connect-failure"), 3));
        assert!(replays(&RetryOn::parse("connect-failure,5xx"), 3));
        assert!(!replays(&RetryOn::parse("5xx"), 0));
        // Istio's default list replays (it has conditions beyond connect-failure).
        let default = RetryOn::parse(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        );
        assert!(replays(&default, 2));
        assert!(retriable(&default, Attempt::Status(200, &grpc)));
        assert!(!retriable(&default, Attempt::Status(503, &h)));
        assert!(retriable(&default, Attempt::ConnectFailure));
        let mut deadline = HeaderMap::new();
        deadline.insert("grpc-status", http::HeaderValue::from_static("4"));
        assert!(!retriable(&default, Attempt::Status(200, &deadline)));
        assert_eq!(
            default.as_str(),
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
    }

    #[test]
    fn roll_follows_the_percentage() {
        assert!(!roll(0.0));
        assert!(roll(100.0));
        let hits = (0..100_000).filter(|_| roll(25.0)).count();
        assert!((23_500..=26_500).contains(&hits), "{hits}");
    }
}
