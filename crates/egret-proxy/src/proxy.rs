//! One connection from accept to upstream.
//!
//! Captured traffic (outbound :15001, `SO_ORIGINAL_DST`): the port's declared protocol decides,
//! else detection (TLS ClientHello -> SNI, HTTP/1, HTTP/2, else opaque TCP). HTTP goes to
//! `http::handle`; TLS is routed by SNI through the listener's TLS chains without being
//! terminated; opaque TCP by destination address through the TCP chains. What matches
//! nothing follows the outbound traffic policy: ALLOW_ANY passes through to the original
//! destination (`PassthroughCluster`), REGISTRY_ONLY closes the connection
//! (`BlackHoleCluster`; curl sees exit 35 for HTTPS) — `istio-egress-spec.md` §5.
//!
//! Explicit proxy (:15080): `CONNECT host:port` becomes a tunnel handled exactly like captured
//! traffic to `host:port`; absolute-form requests go through the same HTTP routing.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use egret_model::snapshot::{
    BLACKHOLE_CLUSTER, L4Chain, ListenerProtocol, OutboundMode, PASSTHROUGH_CLUSTER,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::InBody;
use crate::config::Runtime;
use crate::detect::{self, Detected};
use crate::h1::server::Served;
use crate::h1::timeouts::{Expired, Timeouts};
use crate::http::{self as h, RespBody};
use crate::io::PrefixedIo;
use crate::metrics::Metrics;
use crate::telemetry::L4Record;
use crate::upstream::Upstreams;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redirected by iptables; the destination is the original one.
    Captured,
    /// The application addressed us as its HTTP proxy.
    Explicit,
    /// A Gateway server's port: routes come from the servers and VirtualServices bound to it,
    /// the destination is never the address the client dialed.
    Gateway,
}

/// What is known about a downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Where the application was connecting (captured traffic, or a resolved CONNECT target).
    pub orig_dst: Option<SocketAddr>,
    pub mode: Mode,
    /// Port assumed for an absolute-form URI without one.
    pub default_port: u16,
    /// The SNI of the TLS this gateway terminated: requests must name the same host (421).
    pub sni: Option<String>,
    /// The caller's SPIFFE ID, when it came through the mesh tunnel (gateway role).
    pub peer_identity: Option<Arc<str>>,
    /// The destination named by the tunnel's `CONNECT` (gateway role): an inner TLS stream
    /// must carry the same SNI.
    pub tunnel_host: Option<String>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        orig_dst: Option<SocketAddr>,
        mode: Mode,
        default_port: u16,
    ) -> ConnInfo {
        ConnInfo {
            peer,
            orig_dst,
            mode,
            default_port,
            sni: None,
            peer_identity: None,
            tunnel_host: None,
        }
    }

    /// For logs: the caller's principal, or `-`.
    pub fn principal(&self) -> &str {
        self.peer_identity.as_deref().unwrap_or("-")
    }
}

pub struct Proxy {
    pub state: Arc<ArcSwap<Runtime>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    /// This proxy's own listening ports: connections addressed to them are never forwarded.
    pub own_ports: Vec<u16>,
    /// How long to wait for a client's first bytes before treating the stream as opaque TCP.
    pub detect_timeout: Duration,
    /// How long to wait for a complete TLS ClientHello.
    pub hello_timeout: Duration,
    /// Downstream HTTP connections: idle, stream-idle and request-headers timeouts.
    pub timeouts: Timeouts,
    /// This proxy's mesh identity: the sidecar's side of the tunnel is in the cluster runtime;
    /// a gateway accepts the tunnel with it.
    pub mesh: Option<Arc<crate::mesh::MeshTls>>,
    /// Gateway role: serve clients that do not come through the mesh tunnel (no identity).
    pub allow_direct: bool,
    /// Sidecar role: the workload's own SPIFFE ID — the caller of everything it sends, for
    /// AuthorizationPolicies that select the workload.
    pub own_identity: Option<Arc<str>>,
    /// Policy state shared across snapshots: audit log, JWKS cache, rate-limit buckets.
    pub policy: Arc<crate::policy::enforce::Shared>,
    /// Istio's standard metrics and egret's own series for this proxy.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

impl Proxy {
    pub fn new(state: Arc<ArcSwap<Runtime>>, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            state,
            upstreams: Arc::new(Upstreams::new()),
            metrics,
            own_ports: Vec::new(),
            detect_timeout: Duration::from_millis(500),
            hello_timeout: Duration::from_secs(5),
            timeouts: Timeouts::default(),
            mesh: None,
            allow_direct: false,
            own_identity: None,
            policy: Arc::new(crate::policy::enforce::Shared::default()),
            telemetry: Arc::new(crate::telemetry::Telemetry::new(&Default::default())),
        }
    }

    /// The outbound traffic policy of the current snapshot (sidecars). Gateways have none:
    /// they route only what their servers declare, so the answer there is REGISTRY_ONLY.
    pub fn outbound_mode(&self, rt: &Runtime) -> OutboundMode {
        rt.snapshot
            .outbound_traffic_policy
            .as_ref()
            .map_or(OutboundMode::RegistryOnly, |p| p.mode)
    }

    /// Would forwarding to `addr` reach this proxy again?
    pub fn is_self(&self, addr: SocketAddr) -> bool {
        self.own_ports.contains(&addr.port())
            && (addr.ip().is_loopback() || addr.ip().is_unspecified())
    }

    /// Serve a captured connection whose original destination is `orig_dst`.
    pub async fn serve_captured(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        orig_dst: SocketAddr,
    ) {
        // A connection made straight to our port (not redirected) reports our own address as
        // its original destination: forwarding it would loop forever.
        if stream.local_addr().ok() == Some(orig_dst) || self.is_self(orig_dst) {
            self.metrics.connection("loop", "tcp");
            tracing::warn!(target: "policy", %peer, %orig_dst, "connection addressed to the proxy itself: closed");
            return;
        }
        let conn = ConnInfo::new(peer, Some(orig_dst), Mode::Captured, orig_dst.port());
        self.serve_stream(stream, conn).await;
    }

    /// Route a byte stream to `conn.orig_dst` (captured traffic or a CONNECT tunnel).
    pub async fn serve_stream<S>(self: Arc<Self>, stream: S, conn: ConnInfo)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Some(dst) = conn.orig_dst else { return };
        let rt = self.state.load_full();
        let listener = rt.snapshot.listener(dst.port());
        let declared = listener.map(|l| l.protocol);
        let dst_ip = Some(dst.ip());
        match declared {
            Some(ListenerProtocol::Http) => {
                return self.serve_http(stream, Bytes::new(), conn).await;
            }
            Some(ListenerProtocol::Tcp) => {
                if let Some(chain) = listener.and_then(|l| l.tcp_chain(dst_ip)) {
                    let chain = chain.clone();
                    return self
                        .forward_l4(&rt, &chain, stream, Bytes::new(), conn, None, "tcp")
                        .await;
                }
            }
            _ => {}
        }
        let mut stream = stream;
        let timeout = if declared == Some(ListenerProtocol::Tls) {
            self.hello_timeout
        } else {
            self.detect_timeout
        };
        let (detected, prefix) = match detect::detect(&mut stream, timeout).await {
            Ok(d) => d,
            Err(e) => {
                self.metrics.connection("bad_request", "tcp");
                tracing::warn!(target: "policy", peer = %conn.peer, %dst, "closing: {e}");
                let mut rec = L4Record::start(&self.telemetry, &rt.telemetry, &conn, None, "tcp");
                rec.fail("-", "protocol_detection_failed");
                return;
            }
        };
        match detected {
            Detected::Http1 | Detected::Http2 => self.serve_http(stream, prefix, conn).await,
            Detected::Tls(hello) => {
                let sni = hello.sni.clone();
                // Egress hygiene: `CONNECT a.test:443` carrying TLS for another name would be
                // routed (and allowed) as that name while connecting to a.test's address.
                if let (Some(host), Some(s)) = (&conn.tunnel_host, &sni)
                    && !host.eq_ignore_ascii_case(s)
                {
                    self.metrics.connection("bad_request", "tls");
                    tracing::warn!(target: "policy", peer = %conn.peer, connect = %host, sni = %s, reason = "connect_sni_mismatch", "CONNECT authority differs from the inner SNI: refused");
                    let mut rec =
                        L4Record::start(&self.telemetry, &rt.telemetry, &conn, Some(s), "tls");
                    rec.fail("-", "connect_sni_mismatch");
                    return;
                }
                match listener.and_then(|l| l.tls_chain(sni.as_deref(), dst_ip)) {
                    Some(chain) => {
                        let chain = chain.clone();
                        self.forward_l4(&rt, &chain, stream, prefix, conn, sni, "tls")
                            .await
                    }
                    None => {
                        self.outbound_l4(&rt, stream, prefix, conn, sni, "tls")
                            .await
                    }
                }
            }
            Detected::Opaque => match listener.and_then(|l| l.tcp_chain(dst_ip)) {
                Some(chain) => {
                    let chain = chain.clone();
                    self.forward_l4(&rt, &chain, stream, prefix, conn, None, "tcp")
                        .await
                }
                None => {
                    self.outbound_l4(&rt, stream, prefix, conn, None, "tcp")
                        .await
                }
            },
        }
    }

    pub(crate) async fn serve_http<S>(self: Arc<Self>, stream: S, prefix: Bytes, conn: ConnInfo)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let conn = Arc::new(conn);
        // egret's own HTTP/1.1 server first (issue 8: one task per connection, no buffer
        // while idle); anything else — HTTP/2 (h2c), upgrades, streamed uploads, malformed
        // heads — goes to hyper with the bytes read so far, as before.
        let (me, c) = (self.clone(), conn.clone());
        let served = crate::h1::server::serve(stream, prefix, self.timeouts, move |req| {
            let (p, c) = (me.clone(), c.clone());
            Box::pin(async move {
                match h::handle(p, c, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            })
        })
        .await;
        let (read, io) = match served {
            Served::HandOff { read, io } => (read, io),
            Served::Closed => return,
            Served::TimedOut(e) => return self.timed_out(e, &conn),
        };
        // Boxed: hyper's connection state would otherwise be part of every connection's task.
        Box::pin(self.serve_http_hyper(io, read, conn)).await
    }

    /// hyper's automatic HTTP/1 + HTTP/2 server, from the first byte not consumed yet.
    async fn serve_http_hyper<S>(self: Arc<Self>, stream: S, prefix: Bytes, conn: Arc<ConnInfo>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let me = self.clone();
        let conn_info = conn.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let p = me.clone();
            let c = conn.clone();
            // Boxed: hyper keeps the service future inline in each connection's task, and this
            // one (routing, policy, upstream, TLS) is tens of KiB — copied, so resident, for
            // every accepted connection, idle or not. One allocation per request instead
            // (issue 8: memory per idle keep-alive connection).
            async move { Box::pin(h::handle(p, c, req.map(InBody::from))).await }
        });
        let timeouts = self.timeouts;
        let served = crate::idle::serve(PrefixedIo::new(prefix, stream), timeouts.idle, |io| {
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.request_headers);
            async move {
                b.serve_connection_with_upgrades(TokioIo::new(io), svc)
                    .await
            }
        })
        .await;
        match served {
            None => self.timed_out(Expired::Idle, &conn_info),
            // hyper's `header_read_timeout` closes without a response.
            Some(Err(e))
                if e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout) =>
            {
                self.timed_out(Expired::RequestHeaders, &conn_info)
            }
            Some(Err(e)) => tracing::debug!("downstream HTTP connection ended: {e}"),
            Some(Ok(())) => {}
        }
    }

    /// A downstream HTTP connection closed by one of its timeouts: counted and logged with
    /// the reason (Envoy's `downstream_cx_idle_timeout`, and the `408`s of
    /// `request_header_timeout` / `stream_idle_timeout`).
    fn timed_out(&self, e: Expired, conn: &ConnInfo) {
        let (outcome, reason) = match e {
            Expired::Idle => ("idle_timeout", "idle_timeout"),
            Expired::StreamIdle => ("request_timeout", "stream_idle_timeout"),
            Expired::RequestHeaders => ("request_timeout", "request_header_timeout"),
        };
        self.metrics.connection(outcome, "http");
        if e == Expired::Idle {
            tracing::debug!(peer = %conn.peer, reason, "downstream connection closed");
        } else {
            tracing::warn!(target: "policy", peer = %conn.peer, reason, "downstream request timed out: connection closed");
        }
    }

    /// A TCP/TLS connection refused before anything was forwarded (no route, not the mesh
    /// tunnel, a malformed stream): counted by outcome, and one access-log line / Istio TCP
    /// series like every other connection (`NR` for no route).
    pub(crate) fn refused(
        &self,
        rt: &Runtime,
        conn: &ConnInfo,
        sni: Option<&str>,
        protocol: &'static str,
        outcome: &'static str,
        details: &'static str,
    ) {
        self.metrics.connection(outcome, protocol);
        let mut rec = L4Record::start(&self.telemetry, &rt.telemetry, conn, sni, protocol);
        let flags = match outcome {
            "no_route" => "NR",
            "upstream_error" => "UF",
            _ => "-",
        };
        rec.fail(flags, details);
    }

    /// AuthorizationPolicies (and rate limits) for a TLS/TCP connection, before anything is
    /// forwarded. `false`: refused, counted and logged; dropping the stream closes it.
    pub(crate) async fn connection_allowed(
        self: &Arc<Self>,
        rt: &Runtime,
        conn: &ConnInfo,
        sni: Option<&str>,
        protocol: &'static str,
    ) -> bool {
        let kind = if sni.is_some() || protocol == "tls" {
            crate::policy::Protocol::Tls
        } else {
            crate::policy::Protocol::Tcp
        };
        let port = match (conn.mode, conn.orig_dst) {
            (Mode::Gateway, _) => conn.default_port,
            (_, Some(dst)) => dst.port(),
            _ => conn.default_port,
        };
        let dst_ip = conn.orig_dst.map(|d| d.ip());
        match crate::policy::enforce::check_connection(self, rt, conn, kind, sni, port, dst_ip)
            .await
        {
            Ok(()) => true,
            Err(reason) => {
                self.metrics.connection("denied", protocol);
                tracing::info!(
                    target: "access",
                    "\"- - -\" 0 - {reason} \"-\" \"-\" - {} {} {} peer={}",
                    conn.orig_dst.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                    conn.peer,
                    sni.unwrap_or("-"),
                    conn.principal(),
                );
                false
            }
        }
    }

    /// Traffic that matched no service: pass through or black-hole.
    async fn outbound_l4<S>(
        self: Arc<Self>,
        rt: &Runtime,
        stream: S,
        prefix: Bytes,
        conn: ConnInfo,
        sni: Option<String>,
        protocol: &'static str,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Some(dst) = conn.orig_dst else { return };
        let mut rec = L4Record::start(
            &self.telemetry,
            &rt.telemetry,
            &conn,
            sni.as_deref(),
            protocol,
        );
        if self.outbound_mode(rt) == OutboundMode::RegistryOnly {
            rec.destination(BLACKHOLE_CLUSTER, None);
            rec.fail("NR", "registry_only");
            self.metrics.connection("blackhole", protocol);
            tracing::info!(
                target: "access",
                "\"- - -\" 0 NR registry_only \"-\" \"-\" {BLACKHOLE_CLUSTER} {dst} {} {}",
                conn.peer,
                sni.as_deref().unwrap_or("-")
            );
            return; // dropping the stream closes it
        }
        if !self
            .connection_allowed(rt, &conn, sni.as_deref(), protocol)
            .await
        {
            rec.fail("-", "rbac_access_denied");
            return;
        }
        rec.destination(PASSTHROUGH_CLUSTER, None);
        self.metrics.connection("passthrough", protocol);
        tracing::info!(target: "policy", %dst, sni = sni.as_deref().unwrap_or("-"), "ALLOW_ANY: passthrough");
        let start = Instant::now();
        match self
            .upstreams
            .connect_tcp(dst, Duration::from_secs(10))
            .await
        {
            Ok(up) => {
                rec.upstream(dst);
                rec.connected();
                let (tx, rx) = relay(stream, prefix, up).await;
                rec.bytes(tx, rx);
                tracing::info!(
                    target: "access",
                    "\"- - -\" 0 - passthrough \"{dst}\" {PASSTHROUGH_CLUSTER} {} {} {rx} {tx} {}ms",
                    conn.peer,
                    sni.as_deref().unwrap_or("-"),
                    start.elapsed().as_millis()
                );
            }
            Err(e) => {
                rec.fail(e.response_flag(), "upstream_connect_failure");
                self.metrics.connection("upstream_error", protocol);
                tracing::warn!(target: "upstream", "{e}");
            }
        }
    }

    /// Forward to the cluster a TLS/TCP chain routes to. TLS from the application is passed
    /// through untouched; a TCP cluster with a TLS DestinationRule gets TLS originated.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward_l4<S>(
        self: Arc<Self>,
        rt: &Runtime,
        chain: &L4Chain,
        stream: S,
        prefix: Bytes,
        conn: ConnInfo,
        sni: Option<String>,
        protocol: &'static str,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let start = Instant::now();
        let mut rec = L4Record::start(
            &self.telemetry,
            &rt.telemetry,
            &conn,
            sni.as_deref(),
            protocol,
        );
        if !self
            .connection_allowed(rt, &conn, sni.as_deref(), protocol)
            .await
        {
            rec.fail("-", "rbac_access_denied");
            return;
        }
        let Some(dest) = h::pick_weighted(&chain.route) else {
            rec.fail("UH", "no_healthy_upstream");
            return;
        };
        let Some(cluster) = rt.snapshot.cluster(&dest.cluster) else {
            rec.fail("NC", "cluster_not_found");
            self.metrics.connection("upstream_error", protocol);
            return;
        };
        rec.destination(
            &cluster.name,
            Some((cluster.host.as_str(), cluster.service.as_deref())),
        );
        let state = rt.clusters.get(&cluster.name);
        if let Some(reason) = cluster
            .policy
            .tls
            .unusable
            .as_ref()
            .filter(|_| protocol == "tcp")
        {
            rec.fail("UH", "cluster_unusable");
            self.metrics.connection("upstream_error", protocol);
            tracing::warn!(target: "upstream", cluster = %cluster.name, "cannot be used by this proxy: {reason}");
            return;
        }
        // `tcp.maxConnections`: over the limit the connection is closed at once (`UO`).
        let _admission = match state.map(|s| s.breaker.admit_connection()) {
            Some(Err(_)) => {
                self.metrics.connection("overflow", protocol);
                self.metrics.overflow(&cluster.name);
                tracing::warn!(target: "access", "\"- - -\" 0 UO upstream_overflow \"-\" {} peer={}", cluster.name, conn.peer);
                return;
            }
            Some(Ok(a)) => Some(a),
            None => None,
        };
        let host = sni.clone().unwrap_or_else(|| cluster.host.clone());
        let picked = match self
            .upstreams
            .pick(cluster, state, conn.orig_dst, &host)
            .await
        {
            Ok(p) if self.is_self(p.addr) => {
                rec.fail("UF", "loop");
                self.metrics.connection("loop", protocol);
                return;
            }
            Ok(p) => p,
            Err(e) => {
                rec.fail(e.response_flag(), "upstream_connect_failure");
                self.metrics.connection("upstream_error", protocol);
                tracing::warn!(target: "upstream", cluster = %cluster.name, "{e}");
                return;
            }
        };
        let timeout = cluster.policy.connection_pool.connect_timeout.to_std();
        let originate = if protocol == "tcp" {
            state.and_then(|s| s.tls.as_ref()).map(|c| {
                (
                    c,
                    cluster
                        .policy
                        .tls
                        .sni
                        .clone()
                        .unwrap_or_else(|| cluster.host.clone()),
                )
            })
        } else {
            None
        };
        let up = if cluster.policy.tls.mode == egret_config::types::ClientTlsMode::IstioMutual {
            // The mesh tunnel: a CONNECT stream to the gateway carrying the application's
            // bytes untouched; its authority is the SNI (TLS) or where the app connected.
            let Some(mesh) = state.and_then(|s| s.mesh.as_ref()) else {
                rec.fail("UH", "no_mesh_identity");
                self.metrics.connection("upstream_error", protocol);
                tracing::warn!(target: "upstream", "{}", crate::upstream::UpstreamError::NoMeshIdentity(cluster.name.clone()));
                return;
            };
            let port = conn.orig_dst.map_or(cluster.port, |d| d.port());
            let authority = match (&sni, conn.orig_dst) {
                (Some(s), _) => format!("{s}:{port}"),
                (None, Some(d)) => d.to_string(),
                (None, None) => format!("{}:{port}", cluster.host),
            };
            let outer_sni = cluster.policy.tls.sni.as_deref().unwrap_or(&cluster.host);
            self.upstreams
                .tunnel(picked.addr, timeout, mesh, outer_sni, &authority)
                .await
                .map(|u| Box::new(TokioIo::new(u)) as Box<dyn crate::upstream::Stream>)
        } else {
            self.upstreams
                .connect_with(
                    picked.addr,
                    timeout,
                    originate.as_ref().map(|(c, s)| (*c, s.as_str())),
                    &crate::upstream::PoolLimits::of(&cluster.policy.connection_pool),
                )
                .await
        };
        rec.upstream(picked.addr);
        // Outlier detection for TCP counts connect failures (Istio: `consecutive5xxErrors`).
        if let (Some(h), Some(i)) = (state.and_then(|s| s.health.as_ref()), picked.endpoint) {
            let r = if up.is_ok() {
                crate::outlier::Result::Connected
            } else {
                crate::outlier::Result::LocalFailure
            };
            if h.record(i, r) {
                self.metrics.outlier_ejection(&cluster.name);
                tracing::warn!(target: "upstream", cluster = %cluster.name, endpoint = %picked.addr, "outlier detection: endpoint ejected");
            }
        }
        let up = match up {
            Ok(s) => s,
            Err(e) => {
                rec.fail(e.response_flag(), "upstream_connect_failure");
                self.metrics.connection("upstream_error", protocol);
                tracing::warn!(target: "upstream", cluster = %cluster.name, "{e}");
                return;
            }
        };
        self.metrics.connection("routed", protocol);
        rec.connected();
        // `tcp.idleTimeout` (default 1 h, `0s` disables) closes a relay without traffic.
        let idle = cluster.policy.connection_pool.tcp_idle_timeout.to_std();
        let Some((tx, rx)) = crate::idle::relay(stream, prefix, up, Some(idle)).await else {
            tracing::info!(target: "access", "\"- - -\" 0 - idle_timeout \"{}\" {} peer={}", picked.addr, cluster.name, conn.principal());
            rec.fail("-", "idle_timeout");
            return;
        };
        rec.bytes(tx, rx);
        tracing::info!(
            target: "access",
            "\"- - -\" 0 - via_upstream \"{}\" {} {} {} {rx} {tx} {}ms {} peer={}",
            picked.addr,
            cluster.name,
            conn.orig_dst.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            conn.peer,
            start.elapsed().as_millis(),
            sni.as_deref().unwrap_or("-"),
            conn.principal(),
        );
    }

    /// Explicit proxy connection: absolute-form HTTP requests and `CONNECT host:port`.
    pub async fn serve_explicit(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // egret's own HTTP/1.1 server first (see `serve_http`); CONNECT and everything else
        // unusual goes to hyper's HTTP/1 server with upgrades, as before.
        let me = self.clone();
        // What the requests of this connection share, made once per connection.
        let conn = Arc::new(ConnInfo::new(peer, None, Mode::Explicit, 80));
        let c = conn.clone();
        let served = crate::h1::server::serve(stream, Bytes::new(), self.timeouts, move |req| {
            Box::pin(me.clone().explicit_request(req, c.clone()))
        })
        .await;
        let (read, io) = match served {
            Served::HandOff { read, io } => (read, io),
            Served::Closed => return,
            Served::TimedOut(e) => return self.timed_out(e, &conn),
        };
        Box::pin(self.serve_explicit_hyper(PrefixedIo::new(read, io), peer)).await
    }

    async fn serve_explicit_hyper(
        self: Arc<Self>,
        stream: PrefixedIo<TcpStream>,
        peer: SocketAddr,
    ) {
        let me = self.clone();
        let conn = Arc::new(ConnInfo::new(peer, None, Mode::Explicit, 80));
        let conn_info = conn.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let p = me.clone();
            let conn = conn.clone();
            // Boxed for the same reason as in `serve_http`: a small task per idle connection.
            async move {
                Ok::<_, Infallible>(Box::pin(p.explicit_request(req.map(InBody::from), conn)).await)
            }
        });
        let timeouts = self.timeouts;
        let served = crate::idle::serve(stream, timeouts.idle, |io| {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(timeouts.request_headers);
            async move {
                b.serve_connection(TokioIo::new(io), svc)
                    .with_upgrades()
                    .await
            }
        })
        .await;
        match served {
            None => self.timed_out(Expired::Idle, &conn_info),
            Some(Err(e)) if e.is_timeout() => self.timed_out(Expired::RequestHeaders, &conn_info),
            Some(Err(e)) => tracing::debug!("explicit proxy connection ended: {e}"),
            Some(Ok(())) => {}
        }
    }

    async fn explicit_request(
        self: Arc<Self>,
        req: Request<InBody>,
        conn: Arc<ConnInfo>,
    ) -> Response<RespBody> {
        let peer = conn.peer;
        if h::is_connect(&req) {
            let Some(auth) = req.uri().authority().map(|a| a.to_string()) else {
                return h::bad_request("CONNECT needs host:port\n");
            };
            let (host, port) = h::split_authority(&auth);
            let host = host.into_owned();
            let Some(port) = port else {
                return h::bad_request("CONNECT needs host:port\n");
            };
            let ip: IpAddr = match self.upstreams.resolve(&host).await {
                Ok(ips) => ips[0],
                Err(e) => {
                    let mut conn = ConnInfo::new(peer, None, Mode::Explicit, port);
                    conn.tunnel_host = Some(host);
                    let rt = self.state.load_full();
                    self.refused(
                        &rt,
                        &conn,
                        None,
                        "tcp",
                        "upstream_error",
                        "dns_resolution_failed",
                    );
                    return h::local(StatusCode::BAD_GATEWAY, format!("{e}\n"));
                }
            };
            let dst = SocketAddr::new(ip, port);
            if self.is_self(dst) {
                self.metrics.connection("loop", "tcp");
                return h::local(StatusCode::FORBIDDEN, "refusing to loop\n");
            }
            let me = self.clone();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        let mut conn = ConnInfo::new(peer, Some(dst), Mode::Captured, port);
                        if host.parse::<IpAddr>().is_err() {
                            conn.tunnel_host = Some(host);
                        }
                        me.serve_stream(TokioIo::new(upgraded), conn).await;
                    }
                    Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
                }
            });
            return h::local(StatusCode::OK, "");
        }
        if req.uri().authority().is_none() {
            return h::bad_request(
                "explicit proxy requests need an absolute URI (http://host/path)\n",
            );
        }
        match h::handle(self, conn, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// Write what was peeked, then copy both ways until either side closes. Returns bytes
/// (to upstream, from upstream).
pub(crate) async fn relay<S, U>(mut down: S, prefix: Bytes, mut up: U) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !prefix.is_empty() && up.write_all(&prefix).await.is_err() {
        return (0, 0);
    }
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((a, b)) => (a + prefix.len() as u64, b),
        Err(_) => (prefix.len() as u64, 0),
    }
}
