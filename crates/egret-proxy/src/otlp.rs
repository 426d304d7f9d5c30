//! OTLP span exporter: finished request spans go to an OpenTelemetry collector over OTLP/gRPC
//! or OTLP/HTTP (protobuf), the two transports Istio's `meshConfig.extensionProviders[]
//! .opentelemetry` selects between (`http` present → OTLP/HTTP, absent → gRPC).
//!
//! The request path only ever calls [`OtlpExporter::export`], which is a `try_send` into a
//! bounded queue: it never blocks, never awaits and never allocates beyond moving the span in.
//! One background task drains the queue into batches (`batch_size`, or whatever is queued
//! every `flush_interval`, like the OpenTelemetry SDK's BatchSpanProcessor) and sends each batch
//! once over a single reused connection. A collector that is down or slow therefore only
//! delays that task: the queue fills, further spans are dropped and counted, traffic is
//! untouched. A batch that fails is dropped and counted, never retried (no unbounded retry
//! buffer); after a failure the next connection attempt waits an exponential backoff.
//!
//! The wire messages are hand-written `prost` structs in [`proto`] with the field numbers of
//! opentelemetry-proto (trace/v1/trace.proto, common/v1/common.proto,
//! resource/v1/resource.proto, collector/trace/v1/trace_service.proto), so no protoc is needed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, TE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The OTLP/gRPC method path (collector/trace/v1/trace_service.proto, `TraceService.Export`).
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The OTLP/HTTP default traces path (OTLP specification, "OTLP/HTTP Request").
pub const DEFAULT_HTTP_PATH: &str = "/v1/traces";
/// Queue capacity between the request path and the export task (OpenTelemetry SDK
/// `OTEL_BSP_MAX_QUEUE_SIZE` default).
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// Spans per export request (SDK `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` default).
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// How long a partial batch waits before it is sent (SDK `OTEL_BSP_SCHEDULE_DELAY` is 5s;
/// Envoy's OpenTelemetry tracer flushes every 5s too — egret uses 1s so traces show up quickly).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Per-export timeout when the provider sets none (SDK `OTEL_EXPORTER_OTLP_TIMEOUT` default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// First and largest wait before reconnecting after a failed export.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// A collector's answer is a tiny message; anything larger is read no further.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Instrumentation scope name on every exported span.
pub const SCOPE_NAME: &str = "egret";

/// The OTLP wire messages (opentelemetry-proto v1), only the fields egret writes or a receiver
/// needs to read. Unknown fields (events, links) are skipped by prost when decoding.
pub mod proto {
    /// collector/trace/v1: `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    /// collector/trace/v1: `ExportTraceServiceResponse { ExportTracePartialSuccess partial_success = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportTracePartialSuccess>,
    }

    /// collector/trace/v1: `{ int64 rejected_spans = 1; string error_message = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTracePartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_spans: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// trace/v1: `{ Resource resource = 1; repeated ScopeSpans scope_spans = 2; string schema_url = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    /// resource/v1: `{ repeated KeyValue attributes = 1; uint32 dropped_attributes_count = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }

    /// trace/v1: `{ InstrumentationScope scope = 1; repeated Span spans = 2; string schema_url = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    /// common/v1: `{ string name = 1; string version = 2; repeated KeyValue attributes = 3;
    /// uint32 dropped_attributes_count = 4; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "4")]
        pub dropped_attributes_count: u32,
    }

    /// trace/v1 `Span` (events = 11, dropped_events_count = 12, links = 13 and
    /// dropped_links_count = 14 are not written by egret).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(enumeration = "span::SpanKind", tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "10")]
        pub dropped_attributes_count: u32,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    pub mod span {
        /// trace/v1 `Span.SpanKind`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum SpanKind {
            Unspecified = 0,
            Internal = 1,
            Server = 2,
            Client = 3,
            Producer = 4,
            Consumer = 5,
        }
    }

    /// trace/v1: `Status { reserved 1; string message = 2; StatusCode code = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(enumeration = "status::StatusCode", tag = "3")]
        pub code: i32,
    }

    pub mod status {
        /// trace/v1 `Status.StatusCode`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum StatusCode {
            Unset = 0,
            Ok = 1,
            Error = 2,
        }
    }

    /// common/v1: `KeyValue { string key = 1; AnyValue value = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// common/v1: `AnyValue { oneof value { ... } }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
            #[prost(message, tag = "5")]
            ArrayValue(super::ArrayValue),
            #[prost(message, tag = "6")]
            KvlistValue(super::KeyValueList),
            #[prost(bytes = "vec", tag = "7")]
            BytesValue(Vec<u8>),
        }
    }

    /// common/v1: `ArrayValue { repeated AnyValue values = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    /// common/v1: `KeyValueList { repeated KeyValue values = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }

    impl KeyValue {
        /// A string attribute.
        pub fn string(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
            KeyValue {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(value.into())),
                }),
            }
        }
    }
}

/// What a span describes, as OTLP `Span.SpanKind`. Envoy (and so Istio) marks the span of an
/// outbound request CLIENT and the span of a request the proxy terminates SERVER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
}

impl SpanKind {
    fn to_proto(self) -> proto::span::SpanKind {
        match self {
            SpanKind::Internal => proto::span::SpanKind::Internal,
            SpanKind::Server => proto::span::SpanKind::Server,
            SpanKind::Client => proto::span::SpanKind::Client,
        }
    }
}

/// A span attribute value (the OTLP `AnyValue` kinds egret writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl AttrValue {
    fn to_proto(&self) -> proto::AnyValue {
        use proto::any_value::Value;
        proto::AnyValue {
            value: Some(match self {
                AttrValue::Str(s) => Value::StringValue(s.clone()),
                AttrValue::Int(i) => Value::IntValue(*i),
                AttrValue::Bool(b) => Value::BoolValue(*b),
            }),
        }
    }
}

/// One finished span, handed to [`OtlpExporter::export`].
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span (OTLP: `parent_span_id` empty).
    pub parent_span_id: Option<[u8; 8]>,
    /// The W3C `tracestate` to carry, if any.
    pub trace_state: Option<String>,
    /// e.g. `api.example.test:443/*` (Envoy names the span by the route decorator or the host).
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Status ERROR (Envoy: 5xx or reset), else UNSET.
    pub error: bool,
}

impl SpanData {
    fn to_proto(&self) -> proto::Span {
        proto::Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state.clone().unwrap_or_default(),
            parent_span_id: self.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            // Low 8 bits are the W3C trace flags: only sampled spans are exported.
            flags: 0x01,
            name: self.name.clone(),
            kind: self.kind.to_proto() as i32,
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(self.end),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| proto::KeyValue {
                    key: (*k).to_string(),
                    value: Some(v.to_proto()),
                })
                .collect(),
            dropped_attributes_count: 0,
            status: self.error.then(|| proto::Status {
                message: String::new(),
                code: proto::status::StatusCode::Error as i32,
            }),
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where the collector is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtlpEndpoint {
    /// A name (or IP literal) and port, resolved on every (re)connect.
    HostPort { host: String, port: u16 },
    /// Already resolved addresses, tried in order.
    Addrs(Vec<SocketAddr>),
}

impl OtlpEndpoint {
    /// The `host:port` authority sent to the collector (`:authority` / `Host`).
    fn authority(&self) -> String {
        match self {
            OtlpEndpoint::HostPort { host, port } if host.contains(':') => {
                format!("[{host}]:{port}")
            }
            OtlpEndpoint::HostPort { host, port } => format!("{host}:{port}"),
            OtlpEndpoint::Addrs(addrs) => addrs
                .first()
                .map_or_else(|| "localhost".to_string(), |a| a.to_string()),
        }
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, ExportError> {
        match self {
            OtlpEndpoint::Addrs(a) => Ok(a.clone()),
            OtlpEndpoint::HostPort { host, port } => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| ExportError::Resolve(format!("{host}: {e}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(ExportError::Resolve(format!("{host}: no addresses")));
                }
                Ok(addrs)
            }
        }
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC: HTTP/2 cleartext, `TraceService/Export`.
    Grpc,
    /// OTLP/HTTP: protobuf body POSTed to `path` over HTTP/1.1.
    Http { path: String },
}

/// Everything the exporter needs. Build it with [`OtlpConfig::new`] or
/// [`OtlpConfig::from_provider`] and adjust fields as needed.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub endpoint: OtlpEndpoint,
    pub protocol: OtlpProtocol,
    /// Per-export timeout, connecting included.
    pub timeout: Duration,
    /// Extra request headers (Istio `http.headers`; also sent as gRPC metadata).
    pub headers: Vec<(String, String)>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Further resource attributes (string valued).
    pub resource: Vec<(&'static str, String)>,
    pub queue_size: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
}

/// A provider that cannot be turned into an exporter configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpConfigError {
    #[error("opentelemetry provider: `service` is required")]
    MissingService,
    #[error("opentelemetry provider: `port` is required and must be 1..=65535 (got {0:?})")]
    BadPort(Option<u32>),
    #[error("opentelemetry provider: `http` must be an object with path, timeout, headers")]
    HttpNotObject,
    #[error("opentelemetry provider: http.{field}: {reason}")]
    BadHttpField { field: &'static str, reason: String },
    #[error("opentelemetry provider: header {name:?}: {reason}")]
    BadHeader { name: String, reason: String },
}

impl OtlpConfig {
    /// A configuration with the default queue, batch, flush interval and timeout.
    pub fn new(
        endpoint: OtlpEndpoint,
        protocol: OtlpProtocol,
        service_name: impl Into<String>,
    ) -> OtlpConfig {
        OtlpConfig {
            endpoint,
            protocol,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
            service_name: service_name.into(),
            resource: Vec::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }

    /// Maps Istio's `meshConfig.extensionProviders[].opentelemetry`: `service`
    /// (`[<namespace>/]<hostname>`, the namespace is dropped) and `port` are required; `http`
    /// present selects OTLP/HTTP with `http.path` (default `/v1/traces`), `http.timeout` and
    /// `http.headers: [{name, value}]`; `http` absent selects OTLP/gRPC.
    pub fn from_provider(
        p: &egret_config::types::mesh::OpenTelemetryProvider,
        service_name: impl Into<String>,
    ) -> Result<OtlpConfig, OtlpConfigError> {
        let service = p
            .service
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(OtlpConfigError::MissingService)?;
        let host = service.rsplit_once('/').map_or(service, |(_, h)| h);
        if host.is_empty() {
            return Err(OtlpConfigError::MissingService);
        }
        let port = p
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or(OtlpConfigError::BadPort(p.port))?;
        let endpoint = OtlpEndpoint::HostPort {
            host: host.to_string(),
            port,
        };
        let mut cfg = OtlpConfig::new(endpoint, OtlpProtocol::Grpc, service_name);
        if let Some(http) = &p.http {
            let obj = http.as_object().ok_or(OtlpConfigError::HttpNotObject)?;
            let path = match obj.get("path") {
                None | Some(serde_json::Value::Null) => DEFAULT_HTTP_PATH.to_string(),
                Some(serde_json::Value::String(s)) if s.starts_with('/') => s.clone(),
                Some(v) => {
                    return Err(OtlpConfigError::BadHttpField {
                        field: "path",
                        reason: format!("must be a string starting with '/', got {v}"),
                    });
                }
            };
            cfg.protocol = OtlpProtocol::Http { path };
            match obj.get("timeout") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => {
                    let d = egret_config::types::common::Duration::parse(s).map_err(|reason| {
                        OtlpConfigError::BadHttpField {
                            field: "timeout",
                            reason,
                        }
                    })?;
                    if d.as_nanos() == 0 {
                        return Err(OtlpConfigError::BadHttpField {
                            field: "timeout",
                            reason: "must be greater than 0".into(),
                        });
                    }
                    cfg.timeout = d.to_std();
                }
                Some(v) => {
                    return Err(OtlpConfigError::BadHttpField {
                        field: "timeout",
                        reason: format!("must be a duration string such as \"5s\", got {v}"),
                    });
                }
            }
            match obj.get("headers") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Array(list)) => {
                    for h in list {
                        let name = h.get("name").and_then(|v| v.as_str());
                        let value = h.get("value").and_then(|v| v.as_str());
                        match (name, value) {
                            (Some(n), Some(v)) => cfg.headers.push((n.to_string(), v.to_string())),
                            _ => {
                                return Err(OtlpConfigError::BadHttpField {
                                    field: "headers",
                                    reason: format!(
                                        "each header needs string `name` and `value`, got {h}"
                                    ),
                                });
                            }
                        }
                    }
                }
                Some(v) => {
                    return Err(OtlpConfigError::BadHttpField {
                        field: "headers",
                        reason: format!("must be a list of {{name, value}}, got {v}"),
                    });
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the OTLP/HTTP path is an absolute request path and the headers are valid HTTP
    /// header names and values, and not ones the exporter owns (`content-type`, `te`, `host`,
    /// gRPC's `grpc-*`).
    pub fn validate(&self) -> Result<(), OtlpConfigError> {
        if let OtlpProtocol::Http { path } = &self.protocol
            && (!path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err())
        {
            return Err(OtlpConfigError::BadHttpField {
                field: "path",
                reason: format!("{path:?} is not an absolute request path"),
            });
        }
        for (n, v) in &self.headers {
            parse_header(n, v)?;
        }
        Ok(())
    }
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), OtlpConfigError> {
    let bad = |reason: &str| OtlpConfigError::BadHeader {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
    if n == CONTENT_TYPE || n == TE || n == HOST || n.as_str().starts_with("grpc-") {
        return Err(bad("set by the exporter itself"));
    }
    let v = HeaderValue::from_str(value).map_err(|_| bad("not a valid header value"))?;
    Ok((n, v))
}

/// Why one export request failed (logged; the batch is dropped and counted).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("resolving the collector: {0}")]
    Resolve(String),
    #[error("connecting to the collector: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("reading the response: {0}")]
    Body(String),
    #[error("collector answered HTTP {0}")]
    Status(StatusCode),
    #[error("collector answered grpc-status {code} {message}")]
    Grpc { code: String, message: String },
    #[error("timed out")]
    Timeout,
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    exported: AtomicU64,
    failed_batches: AtomicU64,
}

/// The exporter handle shared with the request path.
pub struct OtlpExporter {
    tx: mpsc::Sender<SpanData>,
    accepting: AtomicBool,
    counters: Arc<Counters>,
    /// Carries the shutdown deadline to the export task.
    shutdown_tx: watch::Sender<Option<Instant>>,
    /// Taken by the first `shutdown` call; never held across an await.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("dropped", &self.dropped())
            .field("exported", &self.exported())
            .field("failed_batches", &self.failed_batches())
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Spawns the background export task on the current tokio runtime.
    ///
    /// Headers that [`OtlpConfig::validate`] rejects are skipped with a warning (validate the
    /// configuration first to turn them into an error). Must be called within a tokio runtime.
    pub fn start(cfg: OtlpConfig) -> Arc<OtlpExporter> {
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let counters = Arc::new(Counters::default());
        let batcher = Batcher::new(cfg, counters.clone(), rx, shutdown_rx);
        let task = tokio::spawn(batcher.run());
        Arc::new(OtlpExporter {
            tx,
            accepting: AtomicBool::new(true),
            counters,
            shutdown_tx,
            task: Mutex::new(Some(task)),
        })
    }

    /// Never blocks, never awaits: `try_send` into the bounded queue; when the queue is full
    /// (or the exporter is shut down) the span is dropped and counted.
    pub fn export(&self, span: SpanData) {
        if !self.accepting.load(Ordering::Relaxed) || self.tx.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans that will never reach the collector: queue full, exporter shut down, in a batch
    /// whose export failed, or rejected by the collector (OTLP partial success).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Ordering::Relaxed)
    }

    /// Export requests that failed (connect error, timeout, non-2xx, gRPC status != OK).
    pub fn failed_batches(&self) -> u64 {
        self.counters.failed_batches.load(Ordering::Relaxed)
    }

    /// Stops accepting spans, then sends what is queued, giving up at `deadline` from now
    /// (spans still unsent then are counted as dropped). Later calls return at once.
    pub async fn shutdown(&self, deadline: Duration) {
        self.accepting.store(false, Ordering::Relaxed);
        let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let until = Instant::now() + deadline;
        self.shutdown_tx.send_replace(Some(until));
        // The task honours the deadline itself; the grace covers its last bookkeeping.
        let abort = task.abort_handle();
        if tokio::time::timeout_at(until + Duration::from_millis(200), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// The export task: batches the queue and owns the connection.
struct Batcher {
    rx: mpsc::Receiver<SpanData>,
    shutdown_rx: watch::Receiver<Option<Instant>>,
    counters: Arc<Counters>,
    batch_size: usize,
    flush_interval: Duration,
    resource: proto::Resource,
    client: Client,
}

impl Batcher {
    fn new(
        cfg: OtlpConfig,
        counters: Arc<Counters>,
        rx: mpsc::Receiver<SpanData>,
        shutdown_rx: watch::Receiver<Option<Instant>>,
    ) -> Batcher {
        let mut attributes = vec![proto::KeyValue::string("service.name", &cfg.service_name)];
        for (k, v) in &cfg.resource {
            if *k != "service.name" {
                attributes.push(proto::KeyValue::string(*k, v));
            }
        }
        let mut headers = HeaderMap::new();
        for (n, v) in &cfg.headers {
            match parse_header(n, v) {
                Ok((n, v)) => {
                    headers.append(n, v);
                }
                Err(e) => tracing::warn!(target: "otlp", "ignoring header: {e}"),
            }
        }
        Batcher {
            rx,
            shutdown_rx,
            counters,
            batch_size: cfg.batch_size.max(1),
            flush_interval: cfg.flush_interval.max(Duration::from_millis(1)),
            resource: proto::Resource {
                attributes,
                dropped_attributes_count: 0,
            },
            client: Client {
                authority: cfg.endpoint.authority(),
                endpoint: cfg.endpoint,
                protocol: cfg.protocol,
                timeout: cfg.timeout,
                headers,
                conn: None,
                backoff: Duration::ZERO,
                next_attempt: None,
                healthy: true,
            },
        }
    }

    async fn run(mut self) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.batch_size);
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let deadline = loop {
            if let Some(d) = *self.shutdown_rx.borrow() {
                break Some(d);
            }
            let room = self.batch_size - batch.len();
            tokio::select! {
                biased;
                changed = self.shutdown_rx.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                }
                n = self.rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        // Every sender is gone: the exporter was dropped without shutdown.
                        break None;
                    }
                    if batch.len() >= self.batch_size {
                        self.send(&mut batch, None).await;
                        tick.reset();
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.send(&mut batch, None).await;
                    }
                }
            }
        };
        // Drain: whatever is queued goes out in full batches until the deadline.
        self.rx.close();
        loop {
            while batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.send(&mut batch, deadline).await;
        }
    }

    /// Sends `batch` once and empties it; counts the outcome.
    async fn send(&mut self, batch: &mut Vec<SpanData>, deadline: Option<Instant>) {
        let n = batch.len() as u64;
        // A shutdown that began while this batch was being filled bounds it too.
        let mut deadline = deadline.or(*self.shutdown_rx.borrow());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.counters.dropped.fetch_add(n, Ordering::Relaxed);
            batch.clear();
            return;
        }
        // After a failure wait out the backoff, unless shutting down (then the deadline rules).
        if let Some(at) = self.client.next_attempt
            && deadline.is_none()
        {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.shutdown_rx.changed() => {
                    deadline = *self.shutdown_rx.borrow();
                }
            }
        }
        let req = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: SCOPE_NAME.to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    spans: batch.iter().map(SpanData::to_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        batch.clear();
        let until = {
            let t = Instant::now() + self.client.timeout;
            deadline.map_or(t, |d| d.min(t))
        };
        match self
            .client
            .export(&req, until, self.shutdown_rx.clone())
            .await
        {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                self.counters
                    .exported
                    .fetch_add(n - rejected, Ordering::Relaxed);
                self.counters.dropped.fetch_add(rejected, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                if self.client.healthy {
                    tracing::warn!(target: "otlp", collector = %self.client.authority, spans = n, "span export failed, batch dropped: {e}");
                } else {
                    tracing::debug!(target: "otlp", collector = %self.client.authority, spans = n, "span export failed, batch dropped: {e}");
                }
            }
        }
    }
}

/// Completes when a shutdown deadline is set and has passed; never if none is set.
async fn shutdown_deadline(rx: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *rx.borrow_and_update();
        if let Some(d) = deadline {
            tokio::time::sleep_until(d).await;
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

/// One reused connection to the collector.
struct Client {
    endpoint: OtlpEndpoint,
    authority: String,
    protocol: OtlpProtocol,
    timeout: Duration,
    headers: HeaderMap,
    conn: Option<Conn>,
    backoff: Duration,
    next_attempt: Option<Instant>,
    /// Whether the last export succeeded: the first failure after a success is a warning,
    /// further ones are debug so a long outage does not flood the log.
    healthy: bool,
}

impl Client {
    /// Exports one request before `until`, or before the shutdown deadline should one be set
    /// meanwhile; returns the number of spans the collector rejected.
    async fn export(
        &mut self,
        req: &proto::ExportTraceServiceRequest,
        until: Instant,
        mut shutdown: watch::Receiver<Option<Instant>>,
    ) -> Result<u64, ExportError> {
        let attempt = async {
            tokio::select! {
                r = self.try_export(req) => r,
                _ = shutdown_deadline(&mut shutdown) => Err(ExportError::Timeout),
            }
        };
        let result = match tokio::time::timeout_at(until, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ExportError::Timeout),
        };
        match &result {
            Ok(_) => {
                self.backoff = Duration::ZERO;
                self.next_attempt = None;
                if !self.healthy {
                    tracing::info!(target: "otlp", collector = %self.authority, "span export recovered");
                }
                self.healthy = true;
            }
            Err(_) => {
                // The connection may be half-used (a timed-out HTTP/1 request): start afresh.
                self.conn = None;
                self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                self.next_attempt = Some(Instant::now() + self.backoff);
                self.healthy = false;
            }
        }
        result
    }

    async fn connect(&self) -> Result<Conn, ExportError> {
        let addrs = self.endpoint.resolve().await?;
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match stream {
            Some(s) => s,
            None => {
                return Err(ExportError::Connect(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses")
                })));
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        match self.protocol {
            OtlpProtocol::Grpc => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "otlp", "collector connection ended: {e}");
                    }
                });
                Ok(Conn::H2(send))
            }
            OtlpProtocol::Http { .. } => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "otlp", "collector connection ended: {e}");
                    }
                });
                Ok(Conn::H1(send))
            }
        }
    }

    async fn try_export(
        &mut self,
        req: &proto::ExportTraceServiceRequest,
    ) -> Result<u64, ExportError> {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            self.conn = Some(self.connect().await?);
        }
        let len = req.encoded_len();
        let request = match &self.protocol {
            OtlpProtocol::Grpc => {
                // gRPC message framing: 1 byte compressed flag (0), 4 bytes big-endian length.
                let mut buf = BytesMut::with_capacity(len + 5);
                buf.put_u8(0);
                buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
                req.encode_raw(&mut buf);
                let mut r = Request::builder()
                    .method(Method::POST)
                    .uri(format!("http://{}{}", self.authority, GRPC_EXPORT_PATH))
                    .header(CONTENT_TYPE, "application/grpc")
                    .header(TE, "trailers")
                    .header(
                        "grpc-timeout",
                        format!("{}m", self.timeout.as_millis().clamp(1, 99_999_999)),
                    )
                    .body(Full::new(buf.freeze()))
                    .map_err(|e| ExportError::Body(e.to_string()))?;
                r.headers_mut().extend(self.headers.clone());
                r
            }
            OtlpProtocol::Http { path } => {
                let mut buf = BytesMut::with_capacity(len);
                req.encode_raw(&mut buf);
                let mut r = Request::builder()
                    .method(Method::POST)
                    .uri(path.as_str())
                    .header(HOST, self.authority.as_str())
                    .header(CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(buf.freeze()))
                    .map_err(|e| ExportError::Body(e.to_string()))?;
                r.headers_mut().extend(self.headers.clone());
                r
            }
        };
        let resp = match self.conn.as_mut() {
            Some(Conn::H2(s)) => {
                s.ready().await?;
                s.send_request(request).await?
            }
            Some(Conn::H1(s)) => {
                s.ready().await?;
                s.send_request(request).await?
            }
            None => return Err(ExportError::Body("no connection".into())),
        };
        let (parts, body) = resp.into_parts();
        if !parts.status.is_success() {
            return Err(ExportError::Status(parts.status));
        }
        let collected = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ExportError::Body(e.to_string()))?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        let message = match self.protocol {
            OtlpProtocol::Grpc => {
                // The status is in the trailers, or in the headers of a trailers-only answer.
                let status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .or_else(|| parts.headers.get("grpc-status"));
                let code = status.and_then(|s| s.to_str().ok()).unwrap_or("missing");
                if code != "0" {
                    let message = trailers
                        .as_ref()
                        .and_then(|t| t.get("grpc-message"))
                        .or_else(|| parts.headers.get("grpc-message"))
                        .and_then(|m| m.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    return Err(ExportError::Grpc {
                        code: code.to_string(),
                        message,
                    });
                }
                body.get(5..)
                    .map(Bytes::copy_from_slice)
                    .unwrap_or_default()
            }
            // Only a protobuf answer can carry a partial success we understand.
            OtlpProtocol::Http { .. }
                if parts
                    .headers
                    .get(CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf")) =>
            {
                body
            }
            OtlpProtocol::Http { .. } => Bytes::new(),
        };
        // OTLP partial success: count what the collector rejected (never retried).
        let rejected = proto::ExportTraceServiceResponse::decode(message)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| {
                if p.rejected_spans > 0 {
                    tracing::warn!(target: "otlp", rejected = p.rejected_spans, "collector rejected spans: {}", p.error_message);
                }
                u64::try_from(p.rejected_spans).unwrap_or(0)
            });
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use egret_config::types::mesh::OpenTelemetryProvider;

    fn provider(http: Option<serde_json::Value>) -> OpenTelemetryProvider {
        OpenTelemetryProvider {
            service: Some("observability/otel-collector.observability.svc.cluster.local".into()),
            port: Some(4317),
            http,
            ..Default::default()
        }
    }

    #[test]
    fn provider_without_http_is_grpc() {
        let c = OtlpConfig::from_provider(&provider(None), "egret-gw").unwrap();
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            c.endpoint,
            OtlpEndpoint::HostPort {
                host: "otel-collector.observability.svc.cluster.local".into(),
                port: 4317
            }
        );
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(c.service_name, "egret-gw");
    }

    #[test]
    fn provider_with_http_maps_path_timeout_headers() {
        let http = serde_json::json!({
            "path": "/otlp/v1/traces",
            "timeout": "250ms",
            "headers": [{"name": "x-tenant", "value": "a"}, {"name": "authorization", "value": "Bearer t"}],
        });
        let c = OtlpConfig::from_provider(&provider(Some(http)), "s").unwrap();
        assert_eq!(
            c.protocol,
            OtlpProtocol::Http {
                path: "/otlp/v1/traces".into()
            }
        );
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(
            c.headers,
            vec![
                ("x-tenant".to_string(), "a".to_string()),
                ("authorization".to_string(), "Bearer t".to_string())
            ]
        );
        let c = OtlpConfig::from_provider(&provider(Some(serde_json::json!({}))), "s").unwrap();
        assert_eq!(
            c.protocol,
            OtlpProtocol::Http {
                path: DEFAULT_HTTP_PATH.into()
            }
        );
    }

    #[test]
    fn bad_providers_are_errors() {
        let mut p = provider(None);
        p.service = None;
        assert_eq!(
            OtlpConfig::from_provider(&p, "s").unwrap_err(),
            OtlpConfigError::MissingService
        );
        let mut p = provider(None);
        p.port = Some(70000);
        assert!(matches!(
            OtlpConfig::from_provider(&p, "s"),
            Err(OtlpConfigError::BadPort(Some(70000)))
        ));
        p.port = None;
        assert!(OtlpConfig::from_provider(&p, "s").is_err());
        for bad in [
            serde_json::json!("yes"),
            serde_json::json!({"path": "v1/traces"}),
            serde_json::json!({"path": "/v1/traces bad"}),
            serde_json::json!({"timeout": "soon"}),
            serde_json::json!({"timeout": "0s"}),
            serde_json::json!({"headers": [{"name": "x"}]}),
            serde_json::json!({"headers": [{"name": "bad header", "value": "v"}]}),
            serde_json::json!({"headers": [{"name": "content-type", "value": "text/plain"}]}),
            serde_json::json!({"headers": [{"name": "x", "value": "a\nb"}]}),
        ] {
            assert!(
                OtlpConfig::from_provider(&provider(Some(bad.clone())), "s").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn span_encoding_round_trips_with_otlp_field_numbers() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let s = SpanData {
            trace_id: [0xab; 16],
            span_id: [0x01, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([9; 8]),
            trace_state: Some("congo=t61rcWkgMzE".into()),
            name: "api.example.test:443/*".into(),
            kind: SpanKind::Client,
            start,
            end: start + Duration::from_millis(5),
            attributes: vec![
                ("http.status_code", AttrValue::Int(503)),
                (
                    "upstream_cluster",
                    AttrValue::Str("outbound|443||api".into()),
                ),
                ("error", AttrValue::Bool(true)),
            ],
            error: true,
        };
        let p = s.to_proto();
        let bytes = p.encode_to_vec();
        // Hand-checked wire prefix: field 1 (trace_id), wire type 2 → tag byte 0x0a, len 16.
        assert_eq!(&bytes[..2], &[0x0a, 16]);
        // field 2 (span_id) → 0x12, len 8.
        assert_eq!(&bytes[18..20], &[0x12, 8]);
        let back = proto::Span::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.kind, 3);
        assert_eq!(back.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(back.end_time_unix_nano, 1_700_000_000_128_456_789);
        assert_eq!(back.status.unwrap().code, 2);
        // A root span has an empty parent_span_id and no status when not an error.
        let root = SpanData {
            parent_span_id: None,
            error: false,
            ..s
        }
        .to_proto();
        assert!(root.parent_span_id.is_empty());
        assert!(root.status.is_none());
    }

    #[test]
    fn span_fields_use_the_proto_tags() {
        // fixed64 start_time_unix_nano = 7 → tag (7 << 3) | 1 = 0x39; end = 8 → 0x41;
        // kind = 6 varint → 0x30; flags = 16 fixed32 → varint tag 0x85 0x01.
        let p = proto::Span {
            kind: 2,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            flags: 1,
            ..Default::default()
        };
        let b = p.encode_to_vec();
        assert!(b.windows(2).any(|w| w == [0x30, 2]), "{b:02x?}");
        assert!(b.windows(2).any(|w| w == [0x39, 1]), "{b:02x?}");
        assert!(b.windows(2).any(|w| w == [0x41, 2]), "{b:02x?}");
        assert!(b.windows(3).any(|w| w == [0x85, 0x01, 1]), "{b:02x?}");
    }
}
