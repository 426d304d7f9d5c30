//! One record per HTTP request and per TCP/TLS connection, finished exactly once by `Drop`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use egret_model::snapshot::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use http::{HeaderValue, Request, Version};

use super::accesslog::{Fields, Op, format_time, redact_query};
use super::istio::{Destination, DestinationKind};
use super::trace::Span;
use super::{Telemetry, TelemetryRuntime};
use crate::proxy::ConnInfo;

/// How a request ended, as the data path decided it.
pub struct HttpOutcome {
    pub status: u16,
    pub flags: &'static str,
    pub details: &'static str,
    pub cluster: String,
    pub upstream: Option<SocketAddr>,
    pub route: String,
}

pub struct HttpRecord {
    tel: Arc<Telemetry>,
    rt: Arc<TelemetryRuntime>,
    conn: Arc<ConnInfo>,
    start: Instant,
    start_wall: SystemTime,
    method: http::Method,
    path: Option<http::uri::PathAndQuery>,
    version: Version,
    /// The request headers the access-log format reads, captured on arrival.
    headers: Vec<Option<HeaderValue>>,
    request_bytes: u64,
    grpc: bool,
    request_id: Option<HeaderValue>,
    // Known once the response headers are ready:
    authority: String,
    status: u16,
    flags: &'static str,
    details: &'static str,
    cluster: String,
    upstream: Option<SocketAddr>,
    route: String,
    service_time_ms: Option<u128>,
    dest: Option<Arc<Destination>>,
    span: Option<Span>,
    // Known at the end:
    response_bytes: u64,
}

impl HttpRecord {
    /// A request arrived: capture what the log needs before the request is consumed, give it
    /// an `x-request-id` if it has none (Envoy does, at the first proxy), and start its span
    /// (rewriting the trace headers the upstream will see).
    pub fn start<B>(
        tel: &Arc<Telemetry>,
        rt: &Arc<TelemetryRuntime>,
        conn: &Arc<ConnInfo>,
        req: &mut Request<B>,
    ) -> HttpRecord {
        // What the record needs from the request headers, in one look at each (a lookup per
        // header costs a hash and a probe; a request has a handful of headers).
        let request_id_name = http::HeaderName::from_static("x-request-id");
        let (mut request_id, mut request_bytes, mut grpc) = (None, None, None);
        for (name, value) in req.headers() {
            if name == request_id_name {
                request_id.get_or_insert_with(|| value.clone());
            } else if name == http::header::CONTENT_LENGTH {
                request_bytes.get_or_insert_with(|| {
                    value
                        .to_str()
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                });
            } else if name == http::header::CONTENT_TYPE {
                grpc.get_or_insert_with(|| value.as_bytes().starts_with(b"application/grpc"));
            }
        }
        if request_id.is_none() {
            // One allocation: the header value takes the string's buffer.
            let id = Bytes::from(super::trace::request_id());
            if let Ok(v) = HeaderValue::from_maybe_shared(id) {
                req.headers_mut().insert(request_id_name, v.clone());
                request_id = Some(v);
            }
        }
        let span = rt.tracer.as_ref().map(|t| t.start(req.headers_mut()));
        let headers = match &rt.access_log {
            Some(l) => l
                .format
                .headers
                .iter()
                .map(|h| req.headers().get(h).cloned())
                .collect(),
            None => Vec::new(),
        };
        let request_bytes = request_bytes.unwrap_or(0);
        let grpc = grpc.unwrap_or(false);
        HttpRecord {
            tel: tel.clone(),
            rt: rt.clone(),
            conn: conn.clone(),
            start: Instant::now(),
            start_wall: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            headers,
            request_bytes,
            grpc,
            request_id,
            authority: String::new(),
            status: 0,
            flags: "-",
            details: "-",
            cluster: String::new(),
            upstream: None,
            route: String::new(),
            service_time_ms: None,
            dest: None,
            span,
            response_bytes: 0,
        }
    }

    /// When the request arrived (the access log's start time).
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The response headers are ready: what happened, and to which destination.
    pub fn responded(
        &mut self,
        out: HttpOutcome,
        authority: String,
        cluster_host: Option<(&str, Option<&str>)>,
    ) {
        self.status = out.status;
        self.flags = out.flags;
        self.details = out.details;
        self.upstream = out.upstream;
        self.authority = authority;
        if out.upstream.is_some() {
            self.service_time_ms = Some(self.start.elapsed().as_millis());
        }
        let routed = out.cluster != BLACKHOLE_CLUSTER && out.cluster != PASSTHROUGH_CLUSTER;
        self.dest = Some(match cluster_host {
            Some((h, service)) if routed => self
                .tel
                .istio
                .destination(DestinationKind::Cluster { host: h, service }),
            _ => {
                // Only traffic that was not routed to a cluster needs the requested host.
                let host = crate::http::split_authority(&self.authority).0;
                let kind = if out.cluster == BLACKHOLE_CLUSTER {
                    DestinationKind::BlackHole { host: &host }
                } else if out.cluster == PASSTHROUGH_CLUSTER {
                    DestinationKind::Passthrough { host: &host }
                } else {
                    // Answered before a cluster was chosen (denied, no route, direct response).
                    DestinationKind::Requested { host: &host }
                };
                self.tel.istio.destination(kind)
            }
        });
        self.cluster = out.cluster;
        self.route = out.route;
    }

    fn finish(&mut self, body_error: bool, complete: bool) {
        if body_error && self.flags == "-" {
            self.flags = "UC";
        } else if !complete && self.flags == "-" {
            // The client went away before the response was sent in full.
            self.flags = "DC";
        }
        let elapsed = self.start.elapsed();
        if let Some(d) = &self.dest {
            self.tel.istio.http(
                d,
                self.status,
                self.flags,
                self.grpc,
                elapsed.as_secs_f64() * 1000.0,
                self.request_bytes,
                self.response_bytes,
            );
        }
        if let Some(l) = &self.rt.access_log {
            l.log(&*self);
        }
        if let (Some(span), Some(t)) = (self.span.take(), &self.rt.tracer) {
            t.finish(span, &self.span_fields());
        }
    }

    fn span_fields(&self) -> super::trace::SpanFields<'_> {
        super::trace::SpanFields {
            name_host: self.authority.as_str(),
            method: self.method.as_str(),
            path: self.path.as_ref().map_or("/", |p| p.as_str()),
            protocol: protocol(self.version),
            status: self.status,
            flags: self.flags,
            cluster: if self.cluster.is_empty() {
                "-"
            } else {
                &self.cluster
            },
            upstream: self.upstream,
            peer: self.conn.peer,
            request_id: self.headers_request_id(),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            start: self.start_wall,
            end: self.start_wall + self.start.elapsed(),
        }
    }

    fn headers_request_id(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn addr(a: Option<SocketAddr>) -> Option<Cow<'static, str>> {
    a.map(|a| Cow::Owned(a.to_string()))
}

impl Fields for HttpRecord {
    fn value(&self, op: &Op) -> Option<Cow<'_, str>> {
        let header = |i: usize| {
            self.headers
                .get(i)
                .and_then(Option::as_ref)
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed)
        };
        let path = || {
            self.path
                .as_ref()
                .map(|p| redact_query(p.as_str()))
                .or(Some(Cow::Borrowed("/")))
        };
        match op {
            Op::StartTime => Some(Cow::Owned(format_time(self.start_wall))),
            Op::Method => Some(Cow::Borrowed(self.method.as_str())),
            Op::Path => path(),
            Op::Authority => {
                (!self.authority.is_empty()).then_some(Cow::Borrowed(self.authority.as_str()))
            }
            Op::Req(i, alt) => header(*i).or_else(|| match alt {
                Some(usize::MAX) => path(),
                Some(j) => header(*j),
                None => None,
            }),
            Op::UpstreamServiceTime => self.service_time_ms.map(|t| Cow::Owned(t.to_string())),
            Op::Protocol => Some(Cow::Borrowed(protocol(self.version))),
            Op::ResponseCode => Some(Cow::Owned(self.status.to_string())),
            Op::ResponseFlags => Some(Cow::Borrowed(self.flags)),
            Op::ResponseCodeDetails => Some(Cow::Borrowed(match self.details {
                "-" if self.upstream.is_some() => "via_upstream",
                d => d,
            })),
            Op::ConnectionTerminationDetails | Op::UpstreamTransportFailureReason => None,
            Op::BytesReceived => Some(Cow::Owned(self.request_bytes.to_string())),
            Op::BytesSent => Some(Cow::Owned(self.response_bytes.to_string())),
            Op::Duration => Some(Cow::Owned(self.start.elapsed().as_millis().to_string())),
            Op::UpstreamHost => addr(self.upstream),
            Op::UpstreamCluster => (!self.cluster.is_empty() && self.cluster != "-")
                .then_some(Cow::Borrowed(self.cluster.as_str())),
            Op::UpstreamLocalAddress => None,
            Op::DownstreamLocalAddress => addr(self.conn.orig_dst),
            Op::DownstreamRemoteAddress => addr(Some(self.conn.peer)),
            Op::DownstreamRemoteAddressWithoutPort => {
                Some(Cow::Owned(self.conn.peer.ip().to_string()))
            }
            Op::DownstreamPeerUriSan => self.conn.peer_identity.as_deref().map(Cow::Borrowed),
            Op::RequestedServerName => self.conn.sni.as_deref().map(Cow::Borrowed),
            Op::RouteName => (!self.route.is_empty() && self.route != "-")
                .then_some(Cow::Borrowed(self.route.as_str())),
            Op::Unknown(_) => None,
        }
    }
}

/// A response body that counts what it sends and finishes its record at the end.
pub struct Recorded {
    inner: crate::http::RespBody,
    rec: Option<Box<HttpRecord>>,
    /// Released when the body has been sent (or dropped): the request counts as in flight on
    /// its endpoint and in its circuit breaker until then.
    in_flight: crate::http::InFlight,
}

impl Recorded {
    pub fn new(
        inner: crate::http::RespBody,
        rec: Box<HttpRecord>,
        in_flight: crate::http::InFlight,
    ) -> Recorded {
        Recorded {
            inner,
            rec: Some(rec),
            in_flight,
        }
    }

    fn done(&mut self, error: bool, complete: bool) {
        self.in_flight = (None, None);
        if let Some(mut r) = self.rec.take() {
            r.finish(error, complete);
        }
    }
}

impl hyper::body::Body for Recorded {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), self.rec.as_mut()) {
                    r.response_bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.done(false, true);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => self.done(true, false),
            std::task::Poll::Ready(None) => self.done(false, true),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // A response that has no body on the wire (HEAD, 204, 304) is complete even though
        // the server never polled its body.
        let bodiless = self
            .rec
            .as_ref()
            .is_some_and(|r| r.method == http::Method::HEAD || r.status == 204 || r.status == 304);
        let complete = bodiless || hyper::body::Body::is_end_stream(&self.inner);
        self.done(false, complete);
    }
}

/// One TCP/TLS connection (routed, passed through, black-holed or refused).
pub struct L4Record {
    tel: Arc<Telemetry>,
    rt: Arc<TelemetryRuntime>,
    start: Instant,
    start_wall: SystemTime,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    principal: Option<Arc<str>>,
    sni: Option<String>,
    /// The host a `CONNECT` named (explicit proxy), when there is no SNI.
    tunnel_host: Option<String>,
    protocol: &'static str,
    dest: Option<Arc<Destination>>,
    cluster: String,
    upstream: Option<SocketAddr>,
    flags: &'static str,
    details: &'static str,
    /// Bytes to the upstream / from the upstream.
    pub sent: u64,
    pub received: u64,
    /// Passed through untouched by SNI (egret's per-SNI series).
    passthrough_tls: bool,
    /// Counted in `istio_tcp_connections_opened_total` already.
    opened: bool,
}

impl L4Record {
    pub fn start(
        tel: &Arc<Telemetry>,
        rt: &Arc<TelemetryRuntime>,
        conn: &ConnInfo,
        sni: Option<&str>,
        protocol: &'static str,
    ) -> L4Record {
        L4Record {
            tel: tel.clone(),
            rt: rt.clone(),
            start: Instant::now(),
            start_wall: SystemTime::now(),
            peer: conn.peer,
            orig_dst: conn.orig_dst,
            principal: conn.peer_identity.clone(),
            sni: sni.map(str::to_string),
            tunnel_host: conn.tunnel_host.clone(),
            protocol,
            dest: None,
            cluster: String::new(),
            upstream: None,
            flags: "-",
            details: "-",
            sent: 0,
            received: 0,
            passthrough_tls: false,
            opened: false,
        }
    }

    /// Where the connection goes: a cluster (`host`, ServiceEntry `ns/name`), or the
    /// passthrough / black-hole pseudo clusters.
    pub fn destination(&mut self, cluster: &str, host: Option<(&str, Option<&str>)>) {
        let fallback = self
            .sni
            .clone()
            .or_else(|| self.tunnel_host.clone())
            .or_else(|| self.orig_dst.map(|d| d.ip().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let kind = match (cluster, host) {
            (c, _) if c == BLACKHOLE_CLUSTER => DestinationKind::BlackHole { host: &fallback },
            (c, _) if c == PASSTHROUGH_CLUSTER => DestinationKind::Passthrough { host: &fallback },
            (_, Some((h, service))) => DestinationKind::Cluster { host: h, service },
            _ => DestinationKind::Requested { host: &fallback },
        };
        self.dest = Some(self.tel.istio.destination(kind));
        self.cluster = cluster.to_string();
        self.passthrough_tls = self.protocol == "tls" && self.sni.is_some();
    }

    /// The upstream connection is up: count the connection as opened now, with the flags it
    /// has so far, so that long connections show while they last.
    pub fn connected(&mut self) {
        self.count_opened();
    }

    /// `istio_tcp_connections_opened_total`, once, in the series of the flags known at this
    /// point. Istio reports a connection as opened in its first report: while it is up, or,
    /// for one refused or failed at once (BlackHoleCluster, UF, UH), when it closes — so its
    /// opened and closed counts are in the same series (same `response_flags`), never split
    /// across `-` and the failure's flag.
    fn count_opened(&mut self) {
        if !self.opened
            && let Some(d) = &self.dest
        {
            self.tel.istio.tcp_opened(d, self.flags);
            self.opened = true;
        }
    }

    pub fn upstream(&mut self, addr: SocketAddr) {
        self.upstream = Some(addr);
    }

    /// The connection was refused or failed: Envoy's response flag and a reason.
    pub fn fail(&mut self, flags: &'static str, details: &'static str) {
        self.flags = flags;
        self.details = details;
    }

    pub fn bytes(&mut self, sent: u64, received: u64) {
        self.sent = sent;
        self.received = received;
    }
}

impl Drop for L4Record {
    fn drop(&mut self) {
        if self.dest.is_none() {
            // Refused before a destination was known (policy, bad request): still one
            // connection to report.
            let c = if self.flags == "NR" {
                BLACKHOLE_CLUSTER
            } else {
                "-"
            };
            self.destination(c, None);
        }
        self.count_opened();
        if let Some(d) = &self.dest {
            self.tel
                .istio
                .tcp_closed(d, self.flags, self.sent, self.received);
        }
        if self.passthrough_tls
            && self.upstream.is_some()
            && let Some(sni) = &self.sni
        {
            self.tel.egret.tls_passthrough(
                sni,
                self.sent,
                self.received,
                self.start.elapsed().as_secs_f64(),
            );
        }
        if let Some(l) = &self.rt.access_log {
            l.log(&*self);
        }
    }
}

impl Fields for L4Record {
    fn value(&self, op: &Op) -> Option<Cow<'_, str>> {
        match op {
            Op::StartTime => Some(Cow::Owned(format_time(self.start_wall))),
            // Envoy writes `0` for the response code of a TCP connection.
            Op::ResponseCode => Some(Cow::Borrowed("0")),
            Op::ResponseFlags => Some(Cow::Borrowed(self.flags)),
            Op::ResponseCodeDetails => (self.details != "-").then_some(Cow::Borrowed(self.details)),
            Op::BytesReceived => Some(Cow::Owned(self.sent.to_string())),
            Op::BytesSent => Some(Cow::Owned(self.received.to_string())),
            Op::Duration => Some(Cow::Owned(self.start.elapsed().as_millis().to_string())),
            Op::UpstreamHost => addr(self.upstream),
            Op::UpstreamCluster => (!self.cluster.is_empty() && self.cluster != "-")
                .then_some(Cow::Borrowed(self.cluster.as_str())),
            Op::DownstreamLocalAddress => addr(self.orig_dst),
            Op::DownstreamRemoteAddress => addr(Some(self.peer)),
            Op::DownstreamRemoteAddressWithoutPort => Some(Cow::Owned(self.peer.ip().to_string())),
            Op::DownstreamPeerUriSan => self.principal.as_deref().map(Cow::Borrowed),
            Op::RequestedServerName => self.sni.as_deref().map(Cow::Borrowed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use egret_model::snapshot::ConnectionPool;
    use http_body_util::BodyExt as _;
    use hyper::body::{Body, Frame};

    use super::*;
    use crate::circuit::Breaker;
    use crate::proxy::Mode;
    use crate::telemetry::SourceLabels;

    /// A response body of `left` one-byte frames, all ready at once.
    struct Frames {
        left: usize,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = crate::body::BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }

        fn is_end_stream(&self) -> bool {
            self.left == 0
        }
    }

    fn record() -> Box<HttpRecord> {
        let source = SourceLabels::from_workload(
            "app",
            "default",
            None,
            &std::collections::BTreeMap::new(),
            "Kubernetes",
        );
        let tel = Arc::new(Telemetry::new(&source));
        let rt = Arc::new(TelemetryRuntime::default());
        let conn = Arc::new(ConnInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            orig_dst: None,
            mode: Mode::Explicit,
            default_port: 80,
            sni: None,
            peer_identity: None,
            tunnel_host: None,
        });
        let mut req = Request::get("/")
            .header("host", "api.test")
            .body(())
            .unwrap();
        Box::new(HttpRecord::start(&tel, &rt, &conn, &mut req))
    }

    /// The request keeps its circuit-breaker slot (and its endpoint's in-flight count, held
    /// the same way) until the response body has been sent, or dropped unsent.
    #[tokio::test]
    async fn in_flight_slots_are_held_until_the_body_is_sent_or_dropped() {
        let pool = ConnectionPool {
            http2_max_requests: 1,
            ..ConnectionPool::default()
        };
        let breaker = Breaker::new(&pool);
        let mut cx = Context::from_waker(Waker::noop());

        let slot = breaker.admit_http(false).await.unwrap();
        let body = Frames { left: 2 }.boxed();
        let mut body = Recorded::new(body, record(), (None, Some(slot)));
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(
            breaker.admit_http(false).await.is_err(),
            "half-sent: still in flight"
        );
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        // Sent, though the body itself is not dropped yet.
        let next = breaker.admit_http(false).await.unwrap();

        let body = Frames { left: 2 }.boxed();
        let mut body = Recorded::new(body, record(), (None, Some(next)));
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(breaker.admit_http(false).await.is_err());
        drop(body);
        assert!(
            breaker.admit_http(false).await.is_ok(),
            "a body dropped unsent gives its slot back"
        );
    }
}
