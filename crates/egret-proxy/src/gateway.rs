//! The gateway role: a connection on a Gateway server's port (`istio-egress-spec.md` §4).
//!
//! Every connection is looked at first. A TLS ClientHello offering the mesh ALPN is the mesh
//! tunnel from a sidecar ([`crate::mesh`]): it is terminated with the gateway's SVID, the
//! caller's SVID is verified (chain to the trust bundle, SPIFFE rules, trust domain), and each
//! HTTP/2 request or `CONNECT` stream inside is routed as if it had arrived on this port, with
//! the caller's principal attached. Anything else is a direct client: refused, unless the
//! gateway runs with `--allow-direct`, because a direct client has no mesh identity.
//!
//! Routing a stream (direct or inside the tunnel) follows the servers bound to the port: plain
//! HTTP servers route by Host; TLS arrives with a ClientHello whose SNI picks the server:
//! PASSTHROUGH routes it by SNI without terminating, SIMPLE/MUTUAL terminate with the server's
//! certificate and then route HTTP (HTTPS servers) or TCP (TLS servers); TCP servers route by
//! the TCP routes. Inside the tunnel, ISTIO_MUTUAL servers see what the tunnel carried (the
//! tunnel *is* their mutual TLS). Nothing here ever connects to the address the client dialed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use egret_config::types::ServerTlsMode;
use egret_model::snapshot::{GatewayServer, ListenerProtocol};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::body::InBody;
use crate::config::Runtime;
use crate::detect::{self, Detected};
use crate::http::{self as h, RespBody};
use crate::io::PrefixedIo;
use crate::mesh::MESH_ALPN;
use crate::proxy::{ConnInfo, Mode, Proxy};

impl Proxy {
    /// No Gateway server or route for the connection (`NR`): refused, counted, logged.
    fn no_route(&self, rt: &Runtime, conn: &ConnInfo, sni: Option<&str>, protocol: &'static str) {
        self.refused(
            rt,
            conn,
            sni,
            protocol,
            "no_route",
            "filter_chain_not_found",
        );
    }

    /// Not what the port expects (HTTP on a TLS port, TLS without SNI, …): refused.
    fn malformed(&self, rt: &Runtime, conn: &ConnInfo, sni: Option<&str>, protocol: &'static str) {
        self.refused(rt, conn, sni, protocol, "bad_request", "malformed_stream");
    }

    /// A connection accepted on the Gateway server port `port`.
    pub async fn serve_gateway(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, port: u16) {
        let rt = self.state.load_full();
        let Some(listener) = rt.snapshot.listener(port) else {
            self.metrics.connection("no_route", "tcp");
            return;
        };
        let mut stream = stream;
        // TCP servers may carry server-first protocols: do not wait long for client bytes.
        let timeout = if listener.protocol == ListenerProtocol::Tcp {
            self.detect_timeout
        } else {
            self.hello_timeout
        };
        let (detected, prefix) = match detect::detect(&mut stream, timeout).await {
            Ok(d) => d,
            Err(e) => {
                self.metrics.connection("bad_request", "tcp");
                tracing::warn!(target: "policy", %peer, port, "closing: {e}");
                return;
            }
        };
        if let Detected::Tls(hello) = &detected
            && hello.alpn.iter().any(|a| a == MESH_ALPN)
        {
            return self.serve_tunnel(stream, prefix, peer, port).await;
        }
        if !self.allow_direct {
            // Egress through the gateway is for mesh workloads: without the tunnel there is no
            // verified caller identity to log or authorize.
            let conn = ConnInfo::new(peer, None, Mode::Gateway, port);
            self.refused(
                &rt,
                &conn,
                None,
                "tcp",
                "refused_not_mesh",
                "not_mesh_tunnel",
            );
            tracing::warn!(
                target: "policy",
                %peer,
                port,
                reason = "not_mesh_tunnel",
                "connection refused: not the mesh tunnel (no mesh identity); --allow-direct admits direct clients"
            );
            return;
        }
        let conn = ConnInfo::new(peer, None, Mode::Gateway, port);
        self.gateway_stream(stream, prefix, detected, conn).await
    }

    /// The mesh tunnel: mutual TLS with the mesh identity, then HTTP/2 requests and `CONNECT`
    /// streams.
    async fn serve_tunnel(
        self: Arc<Self>,
        stream: TcpStream,
        prefix: Bytes,
        peer: SocketAddr,
        port: u16,
    ) {
        let Some(mesh) = self.mesh.clone() else {
            self.metrics.connection("refused_mesh_tls", "tls");
            tracing::warn!(target: "policy", %peer, port, reason = "no_gateway_identity", "mesh tunnel refused: this gateway has no --identity-dir");
            return;
        };
        // A client that stalls mid-handshake must not hold the connection forever.
        let accept = tokio_rustls::TlsAcceptor::from(mesh.server_config())
            .accept(PrefixedIo::new(prefix, stream));
        let tls = match tokio::time::timeout(self.hello_timeout, accept)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
        {
            Ok(t) => t,
            Err(e) => {
                let reason = egret_identity::verify::io_rejection_reason(&e)
                    .map_or("handshake_failed", |r| r.code());
                self.metrics.connection("refused_mesh_tls", "tls");
                tracing::warn!(target: "policy", %peer, port, reason, "mesh tunnel refused: {e}");
                return;
            }
        };
        let principal: Option<Arc<str>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| egret_identity::verify::peer_spiffe_id(c).ok())
            .map(|id| Arc::from(id.to_string()));
        let Some(principal) = principal else {
            // The verifier accepted the chain, so this cannot happen; refuse rather than serve
            // a caller without a name.
            self.metrics.connection("refused_mesh_tls", "tls");
            tracing::warn!(target: "policy", %peer, port, reason = "peer_cert_missing", "mesh tunnel refused: no peer identity");
            return;
        };
        tracing::debug!(target: "policy", %peer, port, %principal, "mesh tunnel accepted");
        let me = self.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let p = me.clone();
            let principal = principal.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    p.tunnel_request(req.map(InBody::from), peer, port, principal)
                        .await,
                )
            }
        });
        if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), svc)
            .await
        {
            tracing::debug!(%peer, "mesh tunnel ended: {e}");
        }
    }

    /// One request inside the tunnel: `CONNECT host:port` opens a stream routed like a direct
    /// connection on `port`; any other method is an HTTP request for the port's routes.
    async fn tunnel_request(
        self: Arc<Self>,
        req: Request<InBody>,
        peer: SocketAddr,
        port: u16,
        principal: Arc<str>,
    ) -> Response<RespBody> {
        let mut conn = ConnInfo::new(peer, None, Mode::Gateway, port);
        conn.peer_identity = Some(principal);
        if !h::is_connect(&req) {
            let resp = h::handle(self, Arc::new(conn), req).await;
            return match resp {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        let Some(authority) = req.uri().authority().map(|a| a.to_string()) else {
            return h::bad_request("CONNECT needs host:port\n");
        };
        let (host, _) = h::split_authority(&authority);
        conn.tunnel_host = Some(host.into_owned());
        let me = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut inner = TokioIo::new(upgraded);
                    // TCP servers route without looking at the bytes (and server-first
                    // protocols send none): no detection, no delay.
                    let tcp_port = me
                        .state
                        .load()
                        .snapshot
                        .listener(port)
                        .is_some_and(|l| l.protocol == ListenerProtocol::Tcp);
                    let detected = if tcp_port {
                        Ok((Detected::Opaque, Bytes::new()))
                    } else {
                        detect::detect(&mut inner, me.hello_timeout).await
                    };
                    let (detected, prefix) = match detected {
                        Ok(d) => d,
                        Err(e) => {
                            me.metrics.connection("bad_request", "tcp");
                            tracing::warn!(target: "policy", %peer, port, principal = conn.principal(), "closing tunnel stream: {e}");
                            return;
                        }
                    };
                    me.gateway_stream(inner, prefix, detected, conn).await;
                }
                Err(e) => tracing::debug!("tunnel CONNECT upgrade failed: {e}"),
            }
        });
        h::local(StatusCode::OK, "")
    }

    /// Route one stream on a gateway port (`conn.default_port`): a direct connection, or a
    /// `CONNECT` stream from the tunnel (`conn.tunnel_host` set).
    async fn gateway_stream<S>(
        self: Arc<Self>,
        stream: S,
        prefix: Bytes,
        detected: Detected,
        mut conn: ConnInfo,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let port = conn.default_port;
        let peer = conn.peer;
        let rt = self.state.load_full();
        let Some(listener) = rt.snapshot.listener(port) else {
            self.no_route(&rt, &conn, None, "tcp");
            return;
        };
        let tunnelled = conn.tunnel_host.is_some();
        match (listener.protocol, &detected) {
            (
                ListenerProtocol::Http | ListenerProtocol::Auto,
                Detected::Http1 | Detected::Http2,
            ) => {
                return self.serve_http(stream, prefix, conn).await;
            }
            (ListenerProtocol::Http, _) => {
                self.malformed(&rt, &conn, None, "tcp");
                tracing::warn!(target: "policy", %peer, port, "expected HTTP on an HTTP gateway port: closed");
                return;
            }
            (ListenerProtocol::Tcp, _) => {
                match listener.tcp_chain(None) {
                    Some(chain) => {
                        let chain = chain.clone();
                        self.forward_l4(&rt, &chain, stream, prefix, conn, None, "tcp")
                            .await
                    }
                    None => self.no_route(&rt, &conn, None, "tcp"),
                }
                return;
            }
            _ => {}
        }
        let hello = match detected {
            Detected::Tls(h) => h,
            _ if tunnelled => {
                // Plaintext inside the tunnel: the tunnel was the TLS. The server is the one
                // for the CONNECT's host.
                let host = conn.tunnel_host.clone().unwrap_or_default();
                let Some((_, server)) = pick_server(&listener.servers, &host) else {
                    self.no_route(&rt, &conn, None, "tcp");
                    tracing::warn!(target: "policy", %peer, port, host, principal = conn.principal(), "no Gateway server for this host: closed");
                    return;
                };
                let mode = server.tls.as_ref().map(|t| t.mode);
                if mode == Some(ServerTlsMode::Passthrough) {
                    self.malformed(&rt, &conn, None, "tcp");
                    tracing::warn!(target: "policy", %peer, port, host, "PASSTHROUGH server expects TLS from the application: closed");
                    return;
                }
                if server.protocol == "TLS" || server.protocol == "TCP" {
                    match listener.tcp_chain(None) {
                        Some(chain) => {
                            let chain = chain.clone();
                            self.forward_l4(&rt, &chain, stream, prefix, conn, Some(host), "tcp")
                                .await
                        }
                        None => self.no_route(&rt, &conn, None, "tcp"),
                    }
                } else {
                    self.serve_http(stream, prefix, conn).await
                }
                return;
            }
            _ => {
                self.malformed(&rt, &conn, None, "tcp");
                tracing::warn!(target: "policy", %peer, port, "expected TLS on a TLS gateway port: closed");
                return;
            }
        };
        let Some(sni) = hello.sni.clone() else {
            // Egress hygiene: a gateway routes TLS by name; without SNI there is no name.
            self.malformed(&rt, &conn, None, "tls");
            tracing::warn!(target: "policy", %peer, port, reason = "no_sni", "TLS without SNI refused");
            return;
        };
        if sni.parse::<IpAddr>().is_ok() {
            // Egress hygiene: an IP address is not a name the gateway can check or resolve.
            self.malformed(&rt, &conn, Some(&sni), "tls");
            tracing::warn!(target: "policy", %peer, port, %sni, reason = "ip_sni", "IP literal as SNI refused");
            return;
        }
        if let Some(host) = &conn.tunnel_host
            && !host.eq_ignore_ascii_case(&sni)
        {
            // Egress hygiene: the stream was announced for one host and names another inside.
            self.malformed(&rt, &conn, Some(&sni), "tls");
            tracing::warn!(target: "policy", %peer, port, %sni, connect = %host, reason = "connect_sni_mismatch", principal = conn.principal(), "CONNECT authority differs from the inner SNI: refused");
            return;
        }
        let Some((idx, server)) = pick_server(&listener.servers, &sni) else {
            self.no_route(&rt, &conn, Some(&sni), "tls");
            tracing::warn!(target: "policy", %peer, port, %sni, "no Gateway server for this SNI: closed");
            return;
        };
        let mode = server
            .tls
            .as_ref()
            .map(|t| t.mode)
            .unwrap_or(ServerTlsMode::Passthrough);
        match mode {
            ServerTlsMode::Passthrough => {
                match listener.tls_chain(Some(&sni), None) {
                    Some(chain) => {
                        let chain = chain.clone();
                        self.forward_l4(&rt, &chain, stream, prefix, conn, Some(sni), "tls")
                            .await
                    }
                    None => {
                        self.no_route(&rt, &conn, Some(&sni), "tls");
                        tracing::warn!(target: "policy", %peer, port, %sni, "no TLS route for this SNI: closed");
                    }
                }
                return;
            }
            ServerTlsMode::IstioMutual if tunnelled && server.protocol == "TLS" => {
                // The application's own TLS inside the tunnel of an ISTIO_MUTUAL TLS server:
                // the TCP routes forward it untouched.
                match listener.tcp_chain(None) {
                    Some(chain) => {
                        let chain = chain.clone();
                        self.forward_l4(&rt, &chain, stream, prefix, conn, Some(sni), "tls")
                            .await
                    }
                    None => self.no_route(&rt, &conn, Some(&sni), "tls"),
                }
                return;
            }
            _ => {}
        }
        let Some(config) = rt.servers.get(&(port, idx)).cloned() else {
            // ISTIO_MUTUAL servers are served through the mesh tunnel only.
            self.malformed(&rt, &conn, Some(&sni), "tls");
            tracing::warn!(target: "policy", %peer, port, %sni, ?mode, "this server is reachable only through the mesh tunnel: closed");
            return;
        };
        // Not tokio-rustls: the session ticket leaves with the first response (tls_server.rs).
        let accept = crate::tls_server::accept(config, prefix, stream);
        let tls = match tokio::time::timeout(self.hello_timeout, accept)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
        {
            Ok(t) => t,
            Err(e) => {
                self.malformed(&rt, &conn, Some(&sni), "tls");
                tracing::warn!(target: "policy", %peer, port, %sni, "TLS handshake failed: {e}");
                return;
            }
        };
        conn.sni = Some(sni.clone());
        if server.protocol == "TLS" {
            match listener.tcp_chain(None) {
                Some(chain) => {
                    let chain = chain.clone();
                    self.forward_l4(&rt, &chain, tls, Bytes::new(), conn, Some(sni), "tcp")
                        .await
                }
                None => self.no_route(&rt, &conn, None, "tcp"),
            }
        } else {
            self.serve_http(tls, Bytes::new(), conn).await
        }
    }
}

/// The Gateway server for an SNI (or a tunnel's host): an exact host first, then the longest
/// wildcard, then `*` (Envoy's filter-chain match on `server_names` = the server hosts).
pub fn pick_server<'a>(
    servers: &'a [GatewayServer],
    sni: &str,
) -> Option<(usize, &'a GatewayServer)> {
    let mut best: Option<(usize, usize, &GatewayServer)> = None;
    for (i, s) in servers.iter().enumerate() {
        for h in &s.hosts {
            let rank = if h.host == sni {
                usize::MAX
            } else if egret_model::host::matches(&h.host, sni) {
                h.host.len()
            } else {
                continue;
            };
            if best.is_none_or(|(_, r, _)| rank > r) {
                best = Some((i, rank, s));
            }
        }
    }
    best.map(|(i, _, s)| (i, s))
}
