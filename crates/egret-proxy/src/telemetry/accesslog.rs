//! Istio's access log (`istio-egress-spec.md` §9): `meshConfig.accessLogFile` (or
//! `defaultProviders.accessLogging: [envoy]`, which writes to /dev/stdout),
//! `accessLogEncoding` TEXT or JSON, and `accessLogFormat` with Envoy's `%OPERATOR%` syntax.
//! One line per HTTP request and per TCP/TLS connection, denials and passthrough included.
//!
//! Lines are formatted on the data path and handed to a writer thread through a bounded
//! queue; when the writer falls behind (a slow disk, a blocked pipe), lines are dropped and
//! counted (`egret_access_log_dropped_total`) — the request is never made to wait.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

/// Istio's default TEXT format (telemetry_logging.go).
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys, in its order.
const DEFAULT_JSON: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// Lines queued for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// One `%OPERATOR%`.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    StartTime,
    /// `%REQ(A?B)%`: index into the captured request headers (first present wins).
    Req(usize, Option<usize>),
    /// `%REQ(:METHOD)%`, `:PATH`, `:AUTHORITY` (pseudo headers come from the request itself).
    Method,
    Path,
    Authority,
    /// `%RESP(X)%`: only `x-envoy-upstream-service-time` is known.
    UpstreamServiceTime,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    /// Not implemented by egret: renders `-` (warned once when the format is loaded).
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Op(Op, Option<usize>),
}

/// A parsed access-log format: TEXT pieces or JSON key → pieces.
#[derive(Debug, Clone)]
pub struct LogFormat {
    text: Option<Vec<Piece>>,
    json: Vec<(String, Vec<Piece>)>,
    /// Request headers the format reads (lower case), captured when the request arrives.
    pub headers: Vec<http::HeaderName>,
    /// Operators egret does not implement (for the warning at load).
    pub unknown: Vec<String>,
}

impl LogFormat {
    /// `accessLogEncoding` + `accessLogFormat` (for JSON a JSON object of key → format, as
    /// Istio's `labels`).
    pub fn new(json: bool, format: Option<&str>) -> Result<LogFormat, String> {
        let mut f = LogFormat {
            text: None,
            json: Vec::new(),
            headers: Vec::new(),
            unknown: Vec::new(),
        };
        if json {
            let pairs: Vec<(String, String)> = match format {
                None => DEFAULT_JSON
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                Some(s) => {
                    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s)
                        .map_err(|e| {
                            format!("accessLogFormat: JSON encoding needs a JSON object of key to format: {e}")
                        })?;
                    v.into_iter()
                        .map(|(k, v)| match v {
                            serde_json::Value::String(s) => (k, s),
                            other => (k, other.to_string()),
                        })
                        .collect()
                }
            };
            for (k, v) in pairs {
                let pieces = f.parse(&v)?;
                f.json.push((k, pieces));
            }
        } else {
            let fmt = format.unwrap_or(DEFAULT_TEXT_FORMAT);
            let pieces = f.parse(fmt)?;
            f.text = Some(pieces);
        }
        Ok(f)
    }

    fn header_index(&mut self, name: &str) -> Result<usize, String> {
        let h = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("accessLogFormat: {name:?} is not a header name"))?;
        Ok(match self.headers.iter().position(|x| *x == h) {
            Some(i) => i,
            None => {
                self.headers.push(h);
                self.headers.len() - 1
            }
        })
    }

    fn parse(&mut self, s: &str) -> Result<Vec<Piece>, String> {
        let mut out = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            // `%%` is a literal percent sign.
            if let Some(r) = after.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let Some(end) = after.find('%') else {
                lit.push('%');
                rest = after;
                continue;
            };
            let body = &after[..end];
            rest = &after[end + 1..];
            if !lit.is_empty() {
                out.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            // `NAME(ARG):LEN` — the length applies to REQ/RESP.
            let (body, max_len) = match body.rsplit_once("):") {
                Some((b, n)) if n.chars().all(|c| c.is_ascii_digit()) => {
                    (format!("{b})"), n.parse().ok())
                }
                _ => (body.to_string(), None),
            };
            let op = self.operator(&body)?;
            out.push(Piece::Op(op, max_len));
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            out.push(Piece::Lit(lit));
        }
        Ok(out)
    }

    fn operator(&mut self, body: &str) -> Result<Op, String> {
        let (name, arg) = match body.split_once('(') {
            Some((n, a)) => (n, a.strip_suffix(')')),
            None => (body, None),
        };
        Ok(match (name, arg) {
            ("START_TIME", _) => Op::StartTime,
            ("REQ", Some(a)) => {
                let (first, second) = match a.split_once('?') {
                    Some((x, y)) => (x, Some(y)),
                    None => (a, None),
                };
                match first.to_ascii_uppercase().as_str() {
                    ":METHOD" => Op::Method,
                    ":AUTHORITY" | "HOST" => Op::Authority,
                    ":PATH" => Op::Path,
                    _ => {
                        let i = self.header_index(first)?;
                        match second.map(str::to_ascii_uppercase).as_deref() {
                            Some(":PATH") => Op::Req(i, None).or_path(),
                            Some(s) => {
                                let j = self.header_index(s)?;
                                Op::Req(i, Some(j))
                            }
                            None => Op::Req(i, None),
                        }
                    }
                }
            }
            ("RESP", Some(a)) if a.eq_ignore_ascii_case("x-envoy-upstream-service-time") => {
                Op::UpstreamServiceTime
            }
            ("PROTOCOL", _) => Op::Protocol,
            ("RESPONSE_CODE", _) => Op::ResponseCode,
            ("RESPONSE_FLAGS", _) => Op::ResponseFlags,
            ("RESPONSE_CODE_DETAILS", _) => Op::ResponseCodeDetails,
            ("CONNECTION_TERMINATION_DETAILS", _) => Op::ConnectionTerminationDetails,
            ("UPSTREAM_TRANSPORT_FAILURE_REASON", _) => Op::UpstreamTransportFailureReason,
            ("BYTES_RECEIVED", _) => Op::BytesReceived,
            ("BYTES_SENT", _) => Op::BytesSent,
            ("DURATION", _) => Op::Duration,
            ("UPSTREAM_HOST", _) => Op::UpstreamHost,
            ("UPSTREAM_CLUSTER", _) | ("UPSTREAM_CLUSTER_RAW", _) => Op::UpstreamCluster,
            ("UPSTREAM_LOCAL_ADDRESS", _) => Op::UpstreamLocalAddress,
            ("DOWNSTREAM_LOCAL_ADDRESS", _) => Op::DownstreamLocalAddress,
            ("DOWNSTREAM_REMOTE_ADDRESS", _) | ("DOWNSTREAM_DIRECT_REMOTE_ADDRESS", _) => {
                Op::DownstreamRemoteAddress
            }
            ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", _) => Op::DownstreamRemoteAddressWithoutPort,
            ("DOWNSTREAM_PEER_URI_SAN", _) => Op::DownstreamPeerUriSan,
            ("REQUESTED_SERVER_NAME", _) => Op::RequestedServerName,
            ("ROUTE_NAME", _) => Op::RouteName,
            _ => {
                self.unknown.push(body.to_string());
                Op::Unknown(body.to_string())
            }
        })
    }

    /// Render one line (with its newline) for `rec`.
    pub fn render(&self, rec: &dyn Fields) -> String {
        let mut line = String::with_capacity(256);
        match &self.text {
            Some(pieces) => {
                render_pieces(pieces, rec, &mut line, false);
                if !line.ends_with('\n') {
                    line.push('\n');
                }
            }
            None => {
                line.push('{');
                for (i, (k, pieces)) in self.json.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    json_str(&mut line, k);
                    line.push(':');
                    // A lone numeric operator is a JSON number, else a string; `-` is null.
                    if let [Piece::Op(op, _)] = pieces.as_slice() {
                        match rec.value(op) {
                            None => line.push_str("null"),
                            Some(v) if is_numeric(op) => line.push_str(&v),
                            Some(v) => json_str(&mut line, &v),
                        }
                    } else {
                        let mut s = String::new();
                        render_pieces(pieces, rec, &mut s, false);
                        json_str(&mut line, &s);
                    }
                }
                line.push_str("}\n");
            }
        }
        line
    }
}

impl Op {
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: egret never sets the header, so this is the path
    /// unless a client sent it (which Envoy would log too).
    fn or_path(self) -> Op {
        match self {
            Op::Req(i, None) => Op::Req(i, Some(usize::MAX)),
            o => o,
        }
    }
}

fn is_numeric(op: &Op) -> bool {
    matches!(
        op,
        Op::ResponseCode
            | Op::BytesReceived
            | Op::BytesSent
            | Op::Duration
            | Op::UpstreamServiceTime
    )
}

fn render_pieces(pieces: &[Piece], rec: &dyn Fields, out: &mut String, _json: bool) {
    for p in pieces {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Op(op, max) => {
                let v = rec.value(op);
                let v = v.as_deref().unwrap_or("-");
                match max {
                    Some(n) => out.extend(v.chars().take(*n)),
                    None => out.push_str(v),
                }
            }
        }
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What a record offers to a format. `None` renders `-` (TEXT) or `null` (JSON).
pub trait Fields {
    fn value(&self, op: &Op) -> Option<Cow<'_, str>>;
}

/// Envoy's `%START_TIME%`: RFC 3339 UTC with milliseconds.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm). Also used by the admin views' RFC 3339 times.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Query parameters whose values are credentials are written as `REDACTED`: an access log
/// is read by more people than the credentials are meant for (egret's choice; Envoy logs the
/// query as sent).
pub fn redact_query(path: &str) -> Cow<'_, str> {
    let Some((p, q)) = path.split_once('?') else {
        return Cow::Borrowed(path);
    };
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        [
            "token",
            "key",
            "secret",
            "password",
            "passwd",
            "signature",
            "sig",
            "credential",
            "auth",
            "code",
        ]
        .iter()
        .any(|s| k.contains(s))
    };
    if !q
        .split('&')
        .any(|kv| secret(kv.split_once('=').map_or(kv, |(k, _)| k)))
    {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    out.push_str(p);
    out.push('?');
    for (i, kv) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match kv.split_once('=') {
            Some((k, _)) if secret(k) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(kv),
        }
    }
    Cow::Owned(out)
}

/// The writer of one access-log file: a thread fed by a bounded queue.
pub struct AccessLogSink {
    path: String,
    tx: SyncSender<String>,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
}

impl AccessLogSink {
    /// Open (append) `path` and start its writer thread.
    pub fn open(path: &str) -> Result<Arc<AccessLogSink>, String> {
        // `/dev/stdout` and `/dev/stderr` are written through the process's own descriptors:
        // opening the path again would make a second file description whose offset the
        // process log (on the same file when both are redirected to one) does not share, and
        // each would overwrite the other's lines.
        let out: Box<dyn std::io::Write + Send> = match path {
            "/dev/stdout" => Box::new(std::io::stdout()),
            "/dev/stderr" => Box::new(std::io::stderr()),
            _ => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("access log {path}: {e}"))?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE_LINES);
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        std::thread::Builder::new()
            .name("egret-access-log".into())
            .spawn(move || writer(out, rx, w))
            .map_err(|e| format!("access log writer: {e}"))?;
        Ok(Arc::new(AccessLogSink {
            path: path.to_string(),
            tx,
            written,
            dropped: AtomicU64::new(0),
        }))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Queue a line; never waits.
    pub fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn writer(file: Box<dyn std::io::Write + Send>, rx: Receiver<String>, written: Arc<AtomicU64>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    while let Ok(line) = rx.recv() {
        let mut n = 1;
        let mut ok = out.write_all(line.as_bytes()).is_ok();
        // Drain what is queued before flushing: one write(2) for a burst.
        while let Ok(line) = rx.try_recv() {
            ok &= out.write_all(line.as_bytes()).is_ok();
            n += 1;
        }
        ok &= out.flush().is_ok();
        if ok {
            written.fetch_add(n, Ordering::Relaxed);
        } else {
            // A full disk or a closed pipe: keep serving; the lines are lost, not retried.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The access log of one snapshot: where and how.
#[derive(Clone)]
pub struct AccessLogger {
    pub sink: Arc<AccessLogSink>,
    pub format: Arc<LogFormat>,
}

impl AccessLogger {
    pub fn log(&self, rec: &dyn Fields) {
        self.sink.write(self.format.render(rec));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    struct Rec;
    impl Fields for Rec {
        fn value(&self, op: &Op) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(match op {
                Op::StartTime => "2024-01-09T15:35:47.283Z",
                Op::Method => "GET",
                Op::Req(_, Some(usize::MAX)) | Op::Path => "/politics",
                Op::Protocol => "HTTP/1.1",
                Op::ResponseCode => "301",
                Op::ResponseFlags => "-",
                Op::ResponseCodeDetails => "via_upstream",
                Op::BytesReceived => "0",
                Op::BytesSent => "0",
                Op::Duration => "2",
                Op::UpstreamServiceTime => "2",
                Op::Authority => "edition.cnn.com",
                Op::UpstreamHost => "151.101.195.5:80",
                Op::UpstreamCluster => "outbound|80||edition.cnn.com",
                Op::RouteName => "default.forward-cnn-from-egress-gateway.0",
                _ => return None,
            }))
        }
    }

    #[test]
    fn default_text_matches_istio_shape() {
        let f = LogFormat::new(false, None).unwrap();
        assert!(f.unknown.is_empty());
        let line = f.render(&Rec);
        assert_eq!(
            line,
            "[2024-01-09T15:35:47.283Z] \"GET /politics HTTP/1.1\" 301 - via_upstream - \"-\" 0 0 2 2 \"-\" \"-\" \"-\" \"edition.cnn.com\" \"151.101.195.5:80\" outbound|80||edition.cnn.com - - - - default.forward-cnn-from-egress-gateway.0\n"
        );
    }

    #[test]
    fn json_has_istio_keys_numbers_and_nulls() {
        let f = LogFormat::new(true, None).unwrap();
        let line = f.render(&Rec);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["response_code"], 301);
        assert_eq!(v["path"], "/politics");
        assert_eq!(v["upstream_cluster"], "outbound|80||edition.cnn.com");
        assert!(v["user_agent"].is_null());
        assert_eq!(v.as_object().unwrap().len(), DEFAULT_JSON.len());
    }

    #[test]
    fn custom_formats() {
        let f = LogFormat::new(
            false,
            Some("%REQ(:METHOD)% %REQ(USER-AGENT):3% %%%FOO_BAR% %RESPONSE_CODE%"),
        )
        .unwrap();
        assert_eq!(f.unknown, vec!["FOO_BAR".to_string()]);
        assert_eq!(f.headers, vec![http::HeaderName::from_static("user-agent")]);
        assert_eq!(f.render(&Rec), "GET - %- 301\n");
        let j = LogFormat::new(
            true,
            Some(r#"{"m":"%REQ(:METHOD)%","c":"%RESPONSE_CODE%","x":"a %RESPONSE_CODE% b"}"#),
        )
        .unwrap();
        assert_eq!(
            j.render(&Rec),
            "{\"m\":\"GET\",\"c\":301,\"x\":\"a 301 b\"}\n"
        );
        assert!(LogFormat::new(true, Some("not json")).is_err());
    }

    #[test]
    fn times_and_redaction() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_814_547_283);
        assert_eq!(format_time(t), "2024-01-09T15:35:47.283Z");
        assert_eq!(redact_query("/a?x=1"), "/a?x=1");
        assert_eq!(
            redact_query("/a?x=1&access_token=abc&API_KEY=z"),
            "/a?x=1&access_token=REDACTED&API_KEY=REDACTED"
        );
    }
}
