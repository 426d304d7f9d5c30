//! Trace context and spans: W3C `traceparent`/`tracestate` and B3 (single `b3` header or
//! `x-b3-*`), one span per request on each proxy, exported over OTLP to the
//! `meshConfig.extensionProviders[].opentelemetry` provider named by
//! `defaultProviders.tracing`.
//!
//! As Envoy: a request that arrives with a sampled (or unsampled) context keeps that decision;
//! one without gets a new trace, sampled at `defaultConfig.tracing.sampling` percent. The span
//! egret creates becomes the parent the upstream sees: `traceparent` always, and the B3
//! headers when the request came with B3. Spans go to a bounded queue; a collector that is
//! down or slow costs dropped spans (counted), never a slower request.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use egret_model::snapshot::{ExtensionProviderKind, Snapshot};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::otlp::{AttrValue, OtlpExporter, SpanData, SpanKind};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

#[derive(Clone)]
pub struct Tracer {
    /// A new trace is sampled when a random u64 is below this.
    threshold: u64,
    exporter: Arc<OtlpExporter>,
    /// `maxTagLength` (Istio's default 256).
    max_tag: usize,
    namespace: String,
    canonical_service: String,
}

/// The span of one request, from its start.
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub trace_state: Option<String>,
}

/// What the finished request tells its span.
pub struct SpanFields<'a> {
    pub name_host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub status: u16,
    pub flags: &'static str,
    pub cluster: &'a str,
    pub upstream: Option<SocketAddr>,
    pub peer: SocketAddr,
    pub request_id: Option<&'a str>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// A random 128-bit id in hex (`x-request-id`).
pub fn request_id() -> String {
    let (a, b) = (crate::upstream::random(), crate::upstream::random());
    // UUID v4 layout, as Envoy generates: 8-4-4-4-12 hex digits, version 4, variant 10.
    // Written digit by digit (one per request: `format!` cost more than the rest of the id).
    let fields: [(u64, usize); 5] = [
        (a >> 32, 8),
        ((a >> 16) & 0xffff, 4),
        (0x4000 | (a & 0xfff), 4),
        ((b >> 48) & 0x3fff | 0x8000, 4),
        (b & 0xffff_ffff_ffff, 12),
    ];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, (v, digits)) in fields.into_iter().enumerate() {
        if i > 0 {
            s.push('-');
        }
        for d in (0..digits).rev() {
            s.push(char::from(HEX[((v >> (d * 4)) & 0xf) as usize]));
        }
    }
    s
}

impl Tracer {
    /// The tracer a snapshot configures, with its exporter from `exporter(key, config)`
    /// (shared across snapshots by the caller).
    pub fn from_snapshot(
        snap: &Snapshot,
        exporter: impl Fn(&str, crate::otlp::OtlpConfig) -> Option<Arc<OtlpExporter>>,
    ) -> Option<Tracer> {
        let settings = snap.mesh.tracing.as_ref()?;
        let provider = snap
            .mesh
            .extension_providers
            .iter()
            .find(|p| p.name == settings.provider)?;
        let ExtensionProviderKind::Opentelemetry {
            service,
            port,
            max_tag_length,
            http,
        } = &provider.kind
        else {
            return None;
        };
        let proxy = &snap.proxy;
        let canonical_service = proxy
            .labels
            .get("service.istio.io/canonical-name")
            .or_else(|| proxy.labels.get("app"))
            .cloned()
            .unwrap_or_else(|| proxy.service_account.clone());
        // `service` is `[<namespace>/]<hostname>`: the namespace part is dropped (Istio).
        let host = service
            .rsplit_once('/')
            .map_or(service.as_str(), |(_, h)| h);
        let protocol = match http {
            Some(h) => crate::otlp::OtlpProtocol::Http {
                path: h.path.clone(),
            },
            None => crate::otlp::OtlpProtocol::Grpc,
        };
        let mut cfg = crate::otlp::OtlpConfig::new(
            crate::otlp::OtlpEndpoint::HostPort {
                host: host.to_string(),
                port: *port,
            },
            protocol,
            // Istio's service name for a workload's spans: `<canonical service>.<namespace>`.
            format!("{canonical_service}.{}", proxy.namespace),
        );
        if let Some(h) = http {
            if let Some(t) = h.timeout {
                cfg.timeout = t.to_std();
            }
            cfg.headers = h.headers.clone();
        }
        if let Err(e) = cfg.validate() {
            tracing::warn!(target: "config", provider = %provider.name, "tracing disabled: {e}");
            return None;
        }
        // One exporter per collector and service name: two proxies in one process (tests,
        // `egret up`) keep their own resource.
        let key = format!(
            "{service}:{port}:{:?}:{}",
            http.as_ref().map(|h| &h.path),
            cfg.service_name
        );
        let exporter = exporter(&key, cfg)?;
        let threshold = if settings.sampling >= 100.0 {
            u64::MAX
        } else {
            (settings.sampling / 100.0 * u64::MAX as f64) as u64
        };
        Some(Tracer {
            threshold,
            exporter,
            max_tag: max_tag_length.map_or(256, |n| n as usize),
            namespace: proxy.namespace.clone(),
            canonical_service,
        })
    }

    /// Read the incoming context (W3C first, then B3), decide sampling, and rewrite the
    /// headers so the upstream sees this proxy's span as its parent.
    pub fn start(&self, h: &mut HeaderMap) -> Span {
        let incoming = parse_traceparent(h).or_else(|| parse_b3(h));
        let b3_single = h.contains_key(B3);
        let b3_multi = h.contains_key(B3_TRACE);
        let span_id = nonzero_u64().to_be_bytes();
        let span = match incoming {
            Some((trace_id, parent, sampled)) => Span {
                trace_id,
                span_id,
                parent: Some(parent),
                sampled: sampled.unwrap_or_else(|| self.sample()),
                trace_state: h
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&crate::upstream::random().to_be_bytes());
                Span {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: self.sample(),
                    trace_state: None,
                }
            }
        };
        let trace = hex(&span.trace_id);
        let id = hex(&span.span_id);
        let flag = if span.sampled { "01" } else { "00" };
        if let Ok(v) = HeaderValue::from_str(&format!("00-{trace}-{id}-{flag}")) {
            h.insert(TRACEPARENT, v);
        }
        if b3_single {
            let mut b = format!("{trace}-{id}-{}", if span.sampled { 1 } else { 0 });
            if let Some(p) = span.parent {
                b.push('-');
                b.push_str(&hex(&p));
            }
            if let Ok(v) = HeaderValue::from_str(&b) {
                h.insert(B3, v);
            }
        }
        if b3_multi {
            if let Ok(v) = HeaderValue::from_str(&trace) {
                h.insert(B3_TRACE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert(B3_SPAN, v);
            }
            match span
                .parent
                .map(|p| hex(&p))
                .and_then(|p| HeaderValue::from_str(&p).ok())
            {
                Some(v) => {
                    h.insert(B3_PARENT, v);
                }
                None => {
                    h.remove(B3_PARENT);
                }
            }
            h.insert(
                B3_SAMPLED,
                HeaderValue::from_static(if span.sampled { "1" } else { "0" }),
            );
            h.remove(B3_FLAGS);
        }
        span
    }

    fn sample(&self) -> bool {
        self.threshold == u64::MAX || crate::upstream::random() < self.threshold
    }

    /// Export the span of a finished request (when sampled).
    pub fn finish(&self, span: Span, f: &SpanFields<'_>) {
        if !span.sampled {
            return;
        }
        let cut = |s: &str| -> String { s.chars().take(self.max_tag).collect() };
        let host = crate::http::split_authority(f.name_host).0;
        let mut attributes = vec![
            ("component", AttrValue::Str("proxy".into())),
            ("http.method", AttrValue::Str(f.method.to_string())),
            (
                "http.url",
                AttrValue::Str(cut(&format!(
                    "{host}{}",
                    super::accesslog::redact_query(f.path)
                ))),
            ),
            ("http.protocol", AttrValue::Str(f.protocol.into())),
            ("http.status_code", AttrValue::Int(i64::from(f.status))),
            ("response_flags", AttrValue::Str(f.flags.into())),
            ("upstream_cluster", AttrValue::Str(cut(f.cluster))),
            ("peer.address", AttrValue::Str(f.peer.ip().to_string())),
            ("request_size", AttrValue::Int(f.request_bytes as i64)),
            ("response_size", AttrValue::Int(f.response_bytes as i64)),
            ("istio.namespace", AttrValue::Str(self.namespace.clone())),
            (
                "istio.canonical_service",
                AttrValue::Str(self.canonical_service.clone()),
            ),
        ];
        if let Some(u) = f.upstream {
            attributes.push(("upstream.address", AttrValue::Str(u.to_string())));
        }
        if let Some(id) = f.request_id {
            attributes.push(("guid:x-request-id", AttrValue::Str(cut(id))));
        }
        self.exporter.export(SpanData {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent,
            trace_state: span.trace_state,
            // Envoy's default operation name: the route's `host:port/*` decorator.
            name: format!("{host}/*"),
            kind: SpanKind::Client,
            start: f.start,
            end: f.end,
            attributes,
            error: f.status >= 500 || f.status == 0,
        });
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = crate::upstream::random();
        if v != 0 {
            return v;
        }
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex flags>` (W3C). Invalid or all-zero ids are
/// ignored, as the spec says (a new trace starts).
pub fn parse_traceparent(h: &HeaderMap) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    let v = h.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    let trace: [u8; 16] = unhex(parts.next()?)?;
    let span: [u8; 8] = unhex(parts.next()?)?;
    let flags: [u8; 1] = unhex(parts.next()?)?;
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, Some(flags[0] & 1 == 1)))
}

/// B3: `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or `x-b3-traceid`/`x-b3-spanid`/
/// `x-b3-sampled`/`x-b3-flags`. 64-bit trace ids are left-padded to 128 bits.
pub fn parse_b3(h: &HeaderMap) -> Option<([u8; 16], [u8; 8], Option<bool>)> {
    let trace_of = |s: &str| -> Option<[u8; 16]> {
        match s.len() {
            32 => unhex(s),
            16 => {
                let low: [u8; 8] = unhex(s)?;
                let mut t = [0u8; 16];
                t[8..].copy_from_slice(&low);
                Some(t)
            }
            _ => None,
        }
    };
    let sampled_of = |s: &str| match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    };
    if let Some(v) = h.get(B3).and_then(|v| v.to_str().ok()) {
        let mut p = v.trim().split('-');
        let trace = trace_of(p.next()?)?;
        let span: [u8; 8] = unhex(p.next()?)?;
        let sampled = p.next().and_then(sampled_of);
        return (trace != [0; 16]).then_some((trace, span, sampled));
    }
    let trace = trace_of(h.get(B3_TRACE)?.to_str().ok()?)?;
    let span: [u8; 8] = unhex(h.get(B3_SPAN)?.to_str().ok()?)?;
    let debug = h.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = if debug {
        Some(true)
    } else {
        h.get(B3_SAMPLED)
            .and_then(|v| v.to_str().ok())
            .and_then(sampled_of)
    };
    (trace != [0; 16]).then_some((trace, span, sampled))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_traceparent() {
        let h = map(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let (t, s, sampled) = parse_traceparent(&h).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s), "00f067aa0ba902b7");
        assert_eq!(sampled, Some(true));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(
                parse_traceparent(&map(&[("traceparent", bad)])).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let (t, s, sampled) = parse_b3(&map(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(hex(&t), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(hex(&s), "e457b5a2e4d86bd1");
        assert_eq!(sampled, Some(true));
        let (t, _, sampled) = parse_b3(&map(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(hex(&t), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(sampled, Some(false));
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        // RFC 9562 variant 10xx, dashes in the 8-4-4-4-12 places, lower-case hex elsewhere.
        assert!(
            matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
        for (i, c) in id.bytes().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                assert_eq!(c, b'-', "{id}");
            } else {
                assert!(c.is_ascii_digit() || (b'a'..=b'f').contains(&c), "{id}");
            }
        }
        assert_ne!(id, request_id());
    }
}
