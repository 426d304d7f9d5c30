//! A small OTLP trace receiver for tests: OTLP/gRPC (HTTP/2 prior knowledge, `TraceService/
//! Export`) and OTLP/HTTP (protobuf `POST`, any path) on one loopback port.
//!
//! It decodes with the exporter's own message structs (`egret_proxy::otlp::proto`), whose
//! field numbers are unit-tested against the opentelemetry-proto wire format in egret-proxy,
//! and records every span with its resource, scope, transport and request path so tests can
//! wait for N spans. It can be stopped and restarted on the same port, made slow (a delay
//! before each answer) and made to fail (gRPC UNAVAILABLE / HTTP 503).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use egret_proxy::otlp::proto;
use egret_proxy::otlp::{AttrValue, GRPC_EXPORT_PATH};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpSocket;
use tokio::task::{JoinHandle, JoinSet};

const MAX_BODY: usize = 16 * 1024 * 1024;

/// How a span arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// One received span, flattened with its resource and scope.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub transport: Transport,
    /// The request path it was POSTed to.
    pub path: String,
    /// Resource attributes (string, int and bool values; others are left out).
    pub resource: Vec<(String, AttrValue)>,
    pub scope_name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    pub trace_state: String,
    pub name: String,
    /// OTLP `SpanKind` number (2 server, 3 client).
    pub kind: i32,
    pub flags: u32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<(String, AttrValue)>,
    /// OTLP `StatusCode` number (0 unset, 2 error).
    pub status_code: i32,
}

impl ReceivedSpan {
    /// The resource's `service.name`, if it is a string.
    pub fn service_name(&self) -> Option<&str> {
        self.resource.iter().find_map(|(k, v)| match v {
            AttrValue::Str(s) if k == "service.name" => Some(s.as_str()),
            _ => None,
        })
    }

    /// An attribute by key.
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

/// One export request as it arrived (before the delay).
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub transport: Transport,
    pub path: String,
    pub headers: HeaderMap,
    pub spans: usize,
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    rejects: AtomicU64,
    started: AtomicU64,
    answered: AtomicU64,
    connections: AtomicU64,
}

/// The receiver; stops (aborting open connections) when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    server: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> Result<OtlpReceiver> {
        let mut r = OtlpReceiver {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: Arc::new(State::default()),
            server: None,
        };
        r.serve()?;
        Ok(r)
    }

    /// The address both transports are served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&mut self) -> Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(self.addr)
            .with_context(|| format!("binding the OTLP receiver on {}", self.addr))?;
        let listener = socket.listen(128)?;
        self.addr = listener.local_addr()?;
        let state = self.state.clone();
        self.server = Some(tokio::spawn(async move {
            // Owned by this task: aborting it aborts (and closes) every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        state.connections.fetch_add(1, Ordering::SeqCst);
                        let state = state.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(state.clone(), req));
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
        Ok(())
    }

    /// Stops listening and closes every open connection (requests in flight get no answer).
    pub async fn stop(&mut self) {
        if let Some(t) = self.server.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Serves again on the same port (after [`OtlpReceiver::stop`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.serve()
    }

    /// Every answer waits this long first (a slow collector).
    pub fn set_delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answer every export with an error (gRPC status 14 UNAVAILABLE, HTTP 503), recording no
    /// spans.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Answer each export with an OTLP partial success rejecting this many of its spans
    /// (at most all of them); 0 answers plain success.
    pub fn set_partial_rejects(&self, n: u64) {
        self.state.rejects.store(n, Ordering::SeqCst);
    }

    /// Export requests that have arrived (whole body read), answered or not.
    pub fn requests_started(&self) -> u64 {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Export requests answered.
    pub fn requests_answered(&self) -> u64 {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// TCP connections accepted (across restarts).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The export requests received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until at least `n` spans have arrived; errors after `timeout`.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Result<Vec<ReceivedSpan>> {
        self.wait_until(timeout, |s| s.len() >= n)
            .await
            .with_context(|| format!("waiting for {n} spans"))
    }

    /// Waits until `pred` holds for the spans received so far; errors after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "OTLP receiver: condition not met within {timeout:?} ({} spans received)",
                    spans.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(t) = self.server.take() {
            t.abort();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

/// A gRPC answer with no message: status in the headers (gRPC "Trailers-Only").
fn grpc_error(code: u32, message: &str) -> Response<Body> {
    let mut r = full(StatusCode::OK, "application/grpc", Bytes::new());
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Ok(m) = HeaderValue::from_str(message) {
        r.headers_mut().insert("grpc-message", m);
    }
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let transport = if content_type.starts_with("application/grpc") {
        Transport::Grpc
    } else {
        Transport::Http
    };
    if req.method() != http::Method::POST {
        return Ok(full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::new(),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "text/plain", Bytes::new())),
    };
    let message = match transport {
        Transport::Grpc => {
            if path != GRPC_EXPORT_PATH {
                return Ok(grpc_error(12, "unknown method"));
            }
            // 1 byte compressed flag, 4 bytes big-endian length, the message.
            if body.len() < 5 || body[0] != 0 {
                return Ok(grpc_error(3, "bad or compressed gRPC frame"));
            }
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            if body.len() != 5 + len {
                return Ok(grpc_error(3, "gRPC frame length mismatch"));
            }
            body.slice(5..)
        }
        Transport::Http => {
            if content_type != "application/x-protobuf" {
                return Ok(full(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "text/plain",
                    Bytes::new(),
                ));
            }
            body
        }
    };
    let decoded = match proto::ExportTraceServiceRequest::decode(message) {
        Ok(d) => d,
        Err(e) => {
            return Ok(match transport {
                Transport::Grpc => grpc_error(3, &format!("decode: {e}")),
                Transport::Http => full(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()),
            });
        }
    };
    let failing = state.failing.load(Ordering::SeqCst);
    let spans = flatten(&decoded, transport, &path);
    let n_spans = spans.len();
    if let Ok(mut r) = state.requests.lock() {
        r.push(ReceivedRequest {
            transport,
            path: path.clone(),
            headers,
            spans: spans.len(),
        });
    }
    if !failing && let Ok(mut s) = state.spans.lock() {
        s.extend(spans);
    }
    state.started.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.answered.fetch_add(1, Ordering::SeqCst);
    let rejects = state.rejects.load(Ordering::SeqCst).min(n_spans as u64);
    let answer = proto::ExportTraceServiceResponse {
        partial_success: (rejects > 0).then(|| proto::ExportTracePartialSuccess {
            rejected_spans: rejects as i64,
            error_message: "receiver set to reject".into(),
        }),
    }
    .encode_to_vec();
    Ok(match (transport, failing) {
        (Transport::Grpc, true) => grpc_error(14, "receiver set to fail"),
        (Transport::Http, true) => {
            full(StatusCode::SERVICE_UNAVAILABLE, "text/plain", Bytes::new())
        }
        (Transport::Grpc, false) => {
            let mut framed = BytesMut::with_capacity(answer.len() + 5);
            framed.put_u8(0);
            framed.put_u32(answer.len() as u32);
            framed.put_slice(&answer);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = Full::new(framed.freeze())
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            let mut r = Response::new(body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r
        }
        (Transport::Http, false) => full(
            StatusCode::OK,
            "application/x-protobuf",
            Bytes::from(answer),
        ),
    })
}

fn attr(v: &Option<proto::AnyValue>) -> Option<AttrValue> {
    use proto::any_value::Value;
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(AttrValue::Str(s.clone())),
        Value::IntValue(i) => Some(AttrValue::Int(*i)),
        Value::BoolValue(b) => Some(AttrValue::Bool(*b)),
        _ => None,
    }
}

fn attrs(kvs: &[proto::KeyValue]) -> Vec<(String, AttrValue)> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), attr(&kv.value)?)))
        .collect()
}

fn flatten(
    req: &proto::ExportTraceServiceRequest,
    transport: Transport,
    path: &str,
) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let scope_name = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in &ss.spans {
                out.push(ReceivedSpan {
                    transport,
                    path: path.to_string(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    trace_id: s.trace_id.clone(),
                    span_id: s.span_id.clone(),
                    parent_span_id: s.parent_span_id.clone(),
                    trace_state: s.trace_state.clone(),
                    name: s.name.clone(),
                    kind: s.kind,
                    flags: s.flags,
                    start_time_unix_nano: s.start_time_unix_nano,
                    end_time_unix_nano: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    status_code: s.status.as_ref().map_or(0, |st| st.code),
                });
            }
        }
    }
    out
}
