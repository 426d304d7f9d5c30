//! Upstreams: from a cluster to a connected socket — endpoint choice (ServiceEntry resolution
//! and DestinationRule load balancing), DNS, connect with `connectionPool.tcp.connectTimeout`,
//! TLS origination — and the shared HTTP/1.1 connection pool.
//!
//! The pool is keyed by everything that makes a connection reusable (pingora's `reuse_hash`):
//! the endpoint address and, for TLS, the SNI and the client configuration. A lock is held only
//! to push or pop an idle connection, never across an `.await`.

use egret_model::fastmap::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use egret_config::types::Resolution;
use egret_model::snapshot::Cluster;
use hickory_resolver::TokioResolver;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::ClusterRuntime;
use crate::h1::client::{Conn as H1Conn, Pool as H1Pool};

pub type ReqBody = crate::body::BoxBody;

/// Why an upstream could not be reached, mapped to Envoy's response flags in logs.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `NC`: the destination host is not a service this proxy can see (no ServiceEntry, or not
    /// exported to its namespace): Istio has no cluster for it.
    #[error("no cluster for {0}: its host is not a service visible to this proxy")]
    NoCluster(String),
    /// `UH`: the cluster has no endpoint to send to.
    #[error("no healthy upstream for {0}")]
    NoEndpoint(String),
    /// `UF` (DNS): the name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// `UF`: connect failed or timed out.
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// `UF`: TLS origination failed (certificate verification included).
    #[error("TLS to {addr} ({sni}) failed: {reason}")]
    Tls {
        addr: SocketAddr,
        sni: String,
        reason: String,
    },
    #[error("upstream HTTP handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    /// `UH`: an ISTIO_MUTUAL cluster (the mesh tunnel) on a proxy without `--identity-dir`.
    #[error("cluster {0} needs the mesh identity (ISTIO_MUTUAL), which this proxy does not have")]
    NoMeshIdentity(String),
    /// The cluster's TLS settings cannot be used by this proxy (the reason says why).
    #[error("cluster {cluster} cannot be used by this proxy: {reason}")]
    Unusable { cluster: String, reason: String },
}

impl UpstreamError {
    pub fn response_flag(&self) -> &'static str {
        match self {
            UpstreamError::NoEndpoint(_)
            | UpstreamError::NoMeshIdentity(_)
            | UpstreamError::Unusable { .. } => "UH",
            UpstreamError::NoCluster(_) => "NC",
            _ => "UF",
        }
    }
}

/// An upstream byte stream: plain TCP or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A [`Stream`] that is also `Sync` (TCP and rustls streams are): a response body that owns
/// its connection (`h1/client.rs`) must be, to travel as a [`crate::body::BoxBody`].
pub trait SyncStream: Stream + Sync {}
impl<T: Stream + Sync> SyncStream for T {}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) addr: SocketAddr,
    /// (SNI, identity of the rustls configuration) when TLS is originated.
    pub(crate) tls: Option<(String, usize)>,
    /// The data-plane thread (`shard.rs`): each reuses only connections it opened itself.
    pub(crate) shard: u16,
}

/// The shared pieces: resolver and connection pool. One per proxy, shared by all requests.
/// Per-cluster limits the pool applies (DestinationRule `connectionPool`, Istio/Envoy):
/// `http.maxRequestsPerConnection`, `http.idleTimeout`, `tcp.maxConnectionDuration` and
/// `tcp.tcpKeepalive`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolLimits {
    /// 0 = unlimited; 1 disables keep-alive.
    pub max_requests_per_connection: u32,
    /// An idle pooled connection older than this is closed, not reused.
    pub idle_timeout: Option<Duration>,
    /// A connection older than this is not reused.
    pub max_connection_duration: Option<Duration>,
    /// TCP keep-alive probes on upstream sockets: (time, interval, probes).
    pub keepalive: Option<(Option<Duration>, Option<Duration>, Option<u32>)>,
}

impl PoolLimits {
    pub fn of(cp: &egret_model::snapshot::ConnectionPool) -> PoolLimits {
        PoolLimits {
            max_requests_per_connection: cp.max_requests_per_connection,
            // `0s` disables the idle timeout (Istio).
            idle_timeout: Some(cp.http_idle_timeout.to_std()).filter(|d| !d.is_zero()),
            max_connection_duration: cp
                .max_connection_duration
                .map(|d| d.to_std())
                .filter(|d| !d.is_zero()),
            keepalive: cp.tcp_keepalive.as_ref().map(|k| {
                (
                    k.time.map(|t| t.to_std()),
                    k.interval.map(|t| t.to_std()),
                    k.probes,
                )
            }),
        }
    }
}

/// The shared HTTP/2 connection of a key, with what the connection limits need.
struct H2Conn {
    sender: http2::SendRequest<ReqBody>,
    /// Requests it has been handed out for.
    uses: u32,
    created: std::time::Instant,
    last: std::time::Instant,
}

impl H2Conn {
    fn usable(&self, limits: &PoolLimits, now: std::time::Instant) -> bool {
        !self.sender.is_closed()
            && (limits.max_requests_per_connection == 0
                || self.uses < limits.max_requests_per_connection)
            && limits
                .max_connection_duration
                .is_none_or(|t| now.duration_since(self.created) < t)
            && limits
                .idle_timeout
                .is_none_or(|t| now.duration_since(self.last) < t)
    }
}

pub struct Upstreams {
    resolver: Option<TokioResolver>,
    /// Idle HTTP/1.1 connections (egret's own client, `h1/client.rs`).
    h1: Arc<H1Pool>,
    /// HTTP/2 connections, one per key, shared by concurrent requests (multiplexed).
    h2: std::sync::Mutex<HashMap<PoolKey, H2Conn>>,
    /// Ranges a gateway refuses for resolved names (besides loopback and link-local).
    pub forbidden: Vec<ipnet::IpNet>,
    /// Gateway role: names are resolved with [`Upstreams::resolve_public`].
    pub gateway: bool,
    /// Reuse and DNS counters (egret's metrics).
    pub stats: UpstreamStats,
}

/// Counters for `egret_upstream_connections_total` and `egret_dns_*`.
#[derive(Default)]
pub struct UpstreamStats {
    http1_reused: std::sync::atomic::AtomicU64,
    http1_new: std::sync::atomic::AtomicU64,
    http2_reused: std::sync::atomic::AtomicU64,
    http2_new: std::sync::atomic::AtomicU64,
    dns_lookups: std::sync::atomic::AtomicU64,
    dns_failures: std::sync::atomic::AtomicU64,
    /// Names resolved, with when their answer expires (the resolver's cache holds them).
    dns_valid_until: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// A reading of [`UpstreamStats`].
#[derive(Debug, Default, Clone)]
pub struct UpstreamCounts {
    pub http1_reused: u64,
    pub http1_new: u64,
    pub http2_reused: u64,
    pub http2_new: u64,
    pub idle: usize,
    pub dns_lookups: u64,
    pub dns_failures: u64,
    pub dns_cached: usize,
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn forbidden(ip: &IpAddr, extra: &[ipnet::IpNet]) -> bool {
    let special = match ip {
        IpAddr::V4(v) => {
            v.is_loopback() || v.is_link_local() || v.is_unspecified() || v.is_broadcast()
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped()
                    .is_some_and(|m| m.is_loopback() || m.is_link_local())
        }
    };
    special || extra.iter().any(|n| n.contains(ip))
}

/// The endpoint chosen for one request or connection.
pub struct Picked {
    pub addr: SocketAddr,
    /// The endpoint's host name when it was resolved by DNS (for logs).
    pub name: Option<String>,
    /// Counts this request as in flight on the endpoint until dropped (LEAST_REQUEST).
    pub load: Option<LoadGuard>,
    /// The endpoint's index in the cluster (static endpoints): for outlier detection and
    /// retries on another endpoint.
    pub endpoint: Option<usize>,
}

/// One request in flight on an endpoint.
pub struct LoadGuard {
    active: Arc<[std::sync::atomic::AtomicUsize]>,
    index: usize,
}

impl LoadGuard {
    fn new(active: &Arc<[std::sync::atomic::AtomicUsize]>, index: usize) -> Option<LoadGuard> {
        let slot = active.get(index)?;
        slot.fetch_add(1, Ordering::Relaxed);
        Some(LoadGuard {
            active: active.clone(),
            index,
        })
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.active.get(self.index) {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Upstreams {
    pub fn new() -> Upstreams {
        // The system resolver configuration (/etc/resolv.conf); hickory caches answers for
        // their TTL in a bounded cache.
        let resolver = match TokioResolver::builder_tokio() {
            Ok(mut b) => {
                b.options_mut().cache_size = 4096;
                b.build().ok()
            }
            Err(e) => {
                tracing::warn!("cannot read the system DNS configuration: {e}");
                None
            }
        };
        Upstreams {
            resolver,
            // Up to 256 idle connections kept per key (and data-plane thread): a burst of new
            // clients (a gateway terminating TLS for hundreds of connections at once) would
            // otherwise close and reopen upstream connections between its requests.
            h1: Arc::new(H1Pool::new(256)),
            h2: std::sync::Mutex::new(HashMap::default()),
            forbidden: Vec::new(),
            gateway: false,
            stats: UpstreamStats::default(),
        }
    }

    /// The counters, read for a scrape.
    pub fn counts(&self) -> UpstreamCounts {
        let st = &self.stats;
        let now = std::time::Instant::now();
        UpstreamCounts {
            http1_reused: st.http1_reused.load(Ordering::Relaxed),
            http1_new: st.http1_new.load(Ordering::Relaxed),
            http2_reused: st.http2_reused.load(Ordering::Relaxed),
            http2_new: st.http2_new.load(Ordering::Relaxed),
            idle: self.idle_connections(),
            dns_lookups: st.dns_lookups.load(Ordering::Relaxed),
            dns_failures: st.dns_failures.load(Ordering::Relaxed),
            dns_cached: st
                .dns_valid_until
                .lock()
                .map(|m| m.values().filter(|t| **t > now).count())
                .unwrap_or(0),
        }
    }

    /// Resolve a host name to its addresses (IP literals pass through).
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, UpstreamError> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let Some(r) = &self.resolver else {
            return Err(UpstreamError::Resolve {
                host: host.to_string(),
                reason: "no DNS configuration".into(),
            });
        };
        // A trailing dot makes the name absolute: no search domains for external names.
        let name = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        bump(&self.stats.dns_lookups);
        let lookup = r.lookup_ip(name.as_str()).await.map_err(|e| {
            bump(&self.stats.dns_failures);
            UpstreamError::Resolve {
                host: host.to_string(),
                reason: e.to_string(),
            }
        })?;
        if let Ok(mut m) = self.stats.dns_valid_until.lock() {
            // Bounded like the resolver's own cache.
            if m.len() < 4096 || m.contains_key(host) {
                match m.get_mut(host) {
                    Some(t) => *t = lookup.valid_until(),
                    None => {
                        m.insert(host.to_string(), lookup.valid_until());
                    }
                }
            }
        }
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        // Istio's clusters look up IPv4 only unless the mesh is dual-stack: use IPv6
        // addresses only for names that have no IPv4 address.
        if ips.iter().any(IpAddr::is_ipv4) {
            ips.retain(IpAddr::is_ipv4);
        }
        if ips.is_empty() {
            bump(&self.stats.dns_failures);
            return Err(UpstreamError::Resolve {
                host: host.to_string(),
                reason: "no addresses".into(),
            });
        }
        Ok(ips)
    }

    /// Resolve a name for a gateway: addresses in loopback, link-local, unspecified or the
    /// configured forbidden ranges are refused, so a name an attacker controls cannot be made
    /// to point the gateway at itself or at the mesh (DNS rebinding). Configured IP endpoints
    /// are not checked: the operator wrote them.
    pub async fn resolve_public(&self, host: &str) -> Result<Vec<IpAddr>, UpstreamError> {
        let ips = self.resolve(host).await?;
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return Ok(ips);
        }
        let allowed: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| !forbidden(ip, &self.forbidden))
            .collect();
        if allowed.is_empty() {
            return Err(UpstreamError::Resolve {
                host: host.to_string(),
                reason: format!("resolves only into forbidden ranges ({ips:?})"),
            });
        }
        Ok(allowed)
    }

    /// Choose where to send: by the cluster's resolution and load-balancing policy.
    /// `orig_dst` is the address the application dialed (captured traffic), `authority` the
    /// host it asked for (explicit proxy, or resolution NONE without a captured address).
    pub async fn pick(
        &self,
        cluster: &Cluster,
        state: Option<&ClusterRuntime>,
        orig_dst: Option<SocketAddr>,
        authority: &str,
    ) -> Result<Picked, UpstreamError> {
        self.pick_with(
            cluster,
            state,
            orig_dst,
            authority,
            &crate::balancer::PickCtx::default(),
        )
        .await
    }

    /// [`Upstreams::pick`] with a consistent-hash key and the endpoints already tried.
    pub async fn pick_with(
        &self,
        cluster: &Cluster,
        state: Option<&ClusterRuntime>,
        orig_dst: Option<SocketAddr>,
        authority: &str,
        ctx: &crate::balancer::PickCtx,
    ) -> Result<Picked, UpstreamError> {
        // A route to a host no ServiceEntry describes has no cluster in Istio (503); it never
        // falls back to where the client was going.
        if cluster.service.is_none() {
            return Err(UpstreamError::NoCluster(cluster.name.clone()));
        }
        match cluster.resolution {
            // NONE: Istio's ORIGINAL_DST — where the application connected. DYNAMIC_DNS:
            // the requested name, resolved now.
            Resolution::None | Resolution::DynamicDns => {
                if cluster.resolution == Resolution::None
                    && let Some(dst) = orig_dst
                {
                    return Ok(Picked {
                        addr: dst,
                        name: None,
                        load: None,
                        endpoint: None,
                    });
                }
                // Without an original destination (a gateway, the explicit proxy) the name to
                // resolve is the service host, or for a wildcard host the name the client
                // asked for (Host or SNI): SNI forwarding.
                let name = if egret_model::host::is_wildcard(&cluster.host) {
                    authority
                } else {
                    cluster.host.as_str()
                };
                let ips = if self.gateway {
                    Box::pin(self.resolve_public(name)).await?
                } else {
                    Box::pin(self.resolve(name)).await?
                };
                let i = state.map_or(0, |s| s.next.fetch_add(1, Ordering::Relaxed));
                Ok(Picked {
                    addr: SocketAddr::new(ips[i % ips.len()], cluster.target_port),
                    name: Some(name.to_string()),
                    load: None,
                    endpoint: None,
                })
            }
            Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => {
                // Priorities, outlier ejections, weights and the load balancer
                // (`balancer`); nothing healthy to send to is 503 `UH`.
                let Some(i) = crate::balancer::choose(cluster, state, ctx) else {
                    return Err(UpstreamError::NoEndpoint(cluster.name.clone()));
                };
                let ep = &cluster.endpoints[i];
                // An IP endpoint: nothing to resolve (parsed when the snapshot was built).
                if let Some(ip) = state.and_then(|s| s.endpoint_ips.get(i).copied().flatten()) {
                    return Ok(Picked {
                        addr: SocketAddr::new(ip, ep.port),
                        name: None,
                        load: state.and_then(|s| LoadGuard::new(&s.active, i)),
                        endpoint: Some(i),
                    });
                }
                let ips = if self.gateway {
                    Box::pin(self.resolve_public(&ep.address)).await?
                } else {
                    Box::pin(self.resolve(&ep.address)).await?
                };
                // STRICT_DNS: every address is an endpoint (round robin across them);
                // LOGICAL_DNS (DNS_ROUND_ROBIN): the first address.
                let j = if cluster.resolution == Resolution::DnsRoundRobin {
                    0
                } else {
                    state.map_or(0, |s| s.next_ip.fetch_add(1, Ordering::Relaxed)) % ips.len()
                };
                Ok(Picked {
                    addr: SocketAddr::new(ips[j], ep.port),
                    name: ep
                        .address
                        .parse::<IpAddr>()
                        .is_err()
                        .then(|| ep.address.clone()),
                    load: state.and_then(|s| LoadGuard::new(&s.active, i)),
                    endpoint: Some(i),
                })
            }
        }
    }

    /// Connect to an endpoint (plain TCP) within the cluster's connect timeout.
    pub async fn connect_tcp(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, UpstreamError> {
        self.connect_tcp_with(addr, timeout, &PoolLimits::default())
            .await
    }

    /// [`Upstreams::connect_tcp`] with the cluster's `tcpKeepalive`.
    pub async fn connect_tcp_with(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        limits: &PoolLimits,
    ) -> Result<TcpStream, UpstreamError> {
        let fail = |reason: String| UpstreamError::Connect { addr, reason };
        let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| fail(format!("timed out after {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = s.set_nodelay(true);
        if let Some((time, interval, probes)) = limits.keepalive {
            // Unset parts keep the OS defaults (Istio).
            let mut ka = socket2::TcpKeepalive::new();
            if let Some(t) = time {
                ka = ka.with_time(t);
            }
            if let Some(i) = interval {
                ka = ka.with_interval(i);
            }
            if let Some(p) = probes {
                ka = ka.with_retries(p);
            }
            if let Err(e) = socket2::SockRef::from(&s).set_tcp_keepalive(&ka) {
                tracing::debug!(%addr, "cannot set TCP keep-alive: {e}");
            }
        }
        Ok(s)
    }

    /// Connect, originating TLS when the cluster has a TLS configuration.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
    ) -> Result<Box<dyn Stream>, UpstreamError> {
        self.connect_with(addr, timeout, tls, &PoolLimits::default())
            .await
    }

    /// [`Upstreams::connect`] with the cluster's connection limits (`tcpKeepalive`).
    pub async fn connect_with(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
        limits: &PoolLimits,
    ) -> Result<Box<dyn Stream>, UpstreamError> {
        let s: Box<dyn Stream> = self.connect_sync(addr, timeout, tls, limits).await?;
        Ok(s)
    }

    /// [`Upstreams::connect_with`], keeping that the stream is `Sync`.
    async fn connect_sync(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
        limits: &PoolLimits,
    ) -> Result<Box<dyn SyncStream>, UpstreamError> {
        let tcp = self.connect_tcp_with(addr, timeout, limits).await?;
        let Some((config, sni)) = tls else {
            return Ok(Box::new(tcp));
        };
        let tls_err = |reason: String| UpstreamError::Tls {
            addr,
            sni: sni.to_string(),
            reason,
        };
        let name = rustls::pki_types::ServerName::try_from(sni.to_string())
            .map_err(|e| tls_err(e.to_string()))?;
        let s = tokio::time::timeout(
            timeout,
            TlsConnector::from(config.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| tls_err(format!("handshake timed out after {timeout:?}")))?
        .map_err(|e| tls_err(e.to_string()))?;
        Ok(Box::new(s))
    }

    /// An HTTP/1.1 connection to the endpoint for egret's own client: an idle pooled one
    /// when one is still open, else a new one. It returns to the pool by itself when its
    /// response body has been read (see `h1/client.rs`).
    pub async fn h1_conn(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
        limits: &PoolLimits,
    ) -> Result<H1Conn, UpstreamError> {
        let key = PoolKey {
            addr,
            tls: tls.map(|(c, sni)| (sni.to_string(), Arc::as_ptr(c) as *const () as usize)),
            shard: crate::shard::current(),
        };
        if let Some(c) = self.h1.take(&key, limits) {
            bump(&self.stats.http1_reused);
            return Ok(c.checked_out(self.h1.clone(), *limits));
        }
        // Boxed: a new connection (TCP connect, TLS handshake) is the rare case, and its state
        // inline would be copied with every request's future (see `http::forward`).
        let io = Box::pin(self.connect_sync(addr, timeout, tls, limits)).await?;
        bump(&self.stats.http1_new);
        Ok(H1Conn::new(io, key, self.h1.clone(), *limits))
    }

    /// A new HTTP/1.1 connection driven by hyper, for a request that may switch protocols
    /// (WebSocket): the upgraded connection belongs to the relay, so it is never pooled.
    pub async fn http1_upgrade(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
        limits: &PoolLimits,
    ) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
        let io = Box::pin(self.connect_with(addr, timeout, tls, limits)).await?;
        bump(&self.stats.http1_new);
        let (sender, conn) = Box::pin(http1::handshake(TokioIo::new(io)))
            .await
            .map_err(|e| UpstreamError::Handshake {
                addr,
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// An HTTP/2 connection to the endpoint (prior knowledge in plaintext, ALPN h2 with TLS):
    /// the shared one when it is still open.
    pub async fn http2(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        self.http2_with(addr, timeout, tls, &PoolLimits::default())
            .await
    }

    /// [`Upstreams::http2`] under the cluster's connection limits: a connection that has
    /// carried `maxRequestsPerConnection` requests, lived `maxConnectionDuration` or been idle
    /// `http.idleTimeout` is replaced (it closes once its streams have ended).
    pub async fn http2_with(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&Arc<ClientConfig>, &str)>,
        limits: &PoolLimits,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        let key = PoolKey {
            addr,
            tls: tls.map(|(c, sni)| (sni.to_string(), Arc::as_ptr(c) as *const () as usize)),
            shard: crate::shard::current(),
        };
        let now = std::time::Instant::now();
        if let Ok(mut map) = self.h2.lock()
            && let Some(c) = map.get_mut(&key).filter(|c| c.usable(limits, now))
        {
            bump(&self.stats.http2_reused);
            c.uses = c.uses.saturating_add(1);
            c.last = now;
            return Ok(c.sender.clone());
        }
        let io = Box::pin(self.connect_with(addr, timeout, tls, limits)).await?;
        bump(&self.stats.http2_new);
        let (sender, conn) = Box::pin(http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(io),
        ))
        .await
        .map_err(|e| UpstreamError::Handshake {
            addr,
            reason: e.to_string(),
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, "upstream HTTP/2 connection ended: {e}");
            }
        });
        if let Ok(mut map) = self.h2.lock() {
            let now = std::time::Instant::now();
            map.insert(
                key,
                H2Conn {
                    sender: sender.clone(),
                    uses: 1,
                    created: now,
                    last: now,
                },
            );
        }
        Ok(sender)
    }

    /// A stream through the mesh tunnel: an HTTP/2 `CONNECT authority` on the pooled mutual
    /// TLS connection to the gateway endpoint `addr` (see [`crate::mesh`]). The gateway
    /// answers 200 once it has accepted the stream for routing; anything else is a refusal.
    pub async fn tunnel(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        mesh: &Arc<ClientConfig>,
        sni: &str,
        authority: &str,
    ) -> Result<hyper::upgrade::Upgraded, UpstreamError> {
        let mut sender = self.http2(addr, timeout, Some((mesh, sni))).await?;
        let fail = |reason: String| UpstreamError::Handshake { addr, reason };
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority)
            .version(http::Version::HTTP_2)
            .body(ReqBody::default())
            .map_err(|e| fail(format!("CONNECT {authority}: {e}")))?;
        let resp = tokio::time::timeout(timeout, sender.send_request(req))
            .await
            .map_err(|_| fail(format!("CONNECT {authority}: no answer within {timeout:?}")))?
            .map_err(|e| fail(format!("CONNECT {authority}: {e}")))?;
        if resp.status() != http::StatusCode::OK {
            return Err(fail(format!(
                "gateway refused CONNECT {authority}: {}",
                resp.status()
            )));
        }
        hyper::upgrade::on(resp)
            .await
            .map_err(|e| fail(format!("CONNECT {authority}: {e}")))
    }

    /// The health of endpoint `index` of a cluster, as the admin's `/clusters` view reports it
    /// (Envoy's health status names): `UNHEALTHY` while outlier detection has it ejected, else
    /// `HEALTHY`. Called only from the admin endpoint, never on the request path.
    pub fn endpoint_health(
        &self,
        state: Option<&crate::config::ClusterRuntime>,
        index: usize,
    ) -> &'static str {
        match state.and_then(|s| s.health.as_ref()) {
            Some(h) if h.is_ejected(index, crate::outlier::now_ms()) => "UNHEALTHY",
            _ => "HEALTHY",
        }
    }

    /// Idle pooled connections (for tests and the admin view).
    pub fn idle_connections(&self) -> usize {
        self.h1.idle_count()
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

/// A small, fast, non-cryptographic random number (xorshift per thread).
pub fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            t ^ (std::process::id() as u64).rotate_left(32) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn choose(c: &Cluster, s: Option<&ClusterRuntime>) -> usize {
        crate::balancer::choose(c, s, &crate::balancer::PickCtx::default()).unwrap()
    }

    fn cluster(lb: &str) -> Cluster {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 203.0.113.1}}, {{address: 203.0.113.2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}
"
        );
        let (set, _) = egret_config::ConfigSet::from_str("t.yaml", &yaml);
        let (snap, d) = egret_model::compile(&set, &egret_model::ProxyIdentity::sidecar("default"));
        assert!(!d.has_errors());
        snap.cluster("outbound|80||api.example.test")
            .unwrap()
            .clone()
    }

    fn state(active: [usize; 2]) -> ClusterRuntime {
        ClusterRuntime {
            tls: None,
            mesh: None,
            next: std::sync::atomic::AtomicUsize::new(0),
            next_ip: std::sync::atomic::AtomicUsize::new(0),
            active: active
                .iter()
                .map(|n| std::sync::atomic::AtomicUsize::new(*n))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded_endpoint() {
        let c = cluster("LEAST_REQUEST");
        let s = state([100, 0]);
        let to_idle = (0..4000).filter(|_| choose(&c, Some(&s)) == 1).count();
        // Two random candidates: only when both are the busy one does it win (1 in 4).
        assert!((2700..=3300).contains(&to_idle), "{to_idle}/4000");
    }

    #[test]
    fn random_ignores_load_and_round_robin_alternates() {
        let c = cluster("RANDOM");
        let s = state([100, 0]);
        let to_idle = (0..4000).filter(|_| choose(&c, Some(&s)) == 1).count();
        assert!((1700..=2300).contains(&to_idle), "{to_idle}/4000");
        let c = cluster("ROUND_ROBIN");
        let picks: Vec<usize> = (0..4).map(|_| choose(&c, Some(&s))).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn load_guard_counts_in_flight() {
        let s = state([0, 0]);
        let g = LoadGuard::new(&s.active, 1);
        assert_eq!(s.active[1].load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(s.active[1].load(Ordering::Relaxed), 0);
        assert!(LoadGuard::new(&s.active, 5).is_none());
    }
}
