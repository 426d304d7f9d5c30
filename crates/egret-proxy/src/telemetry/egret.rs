//! egret's series beyond Istio's: what Istio users ask for and Envoy's stats don't give them
//! in one place — passthrough TLS per SNI (Istio shows it as `unknown`/`PassthroughCluster`),
//! connection reuse towards upstreams, DNS, certificate expiry, the configuration in force,
//! and what the access log and the tracer had to drop.

use egret_model::fastmap::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::istio::header;

/// Distinct SNIs with their own series; the rest share `sni="overflow"`.
pub const MAX_SNIS: usize = 1000;

/// Connection durations in seconds.
const SECONDS: [f64; 14] = [
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Default)]
pub struct SniSeries {
    connections: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    buckets: [AtomicU64; 14],
    sum_ms: AtomicU64,
}

#[derive(Default)]
pub struct EgretSeries {
    snis: RwLock<HashMap<String, Arc<SniSeries>>>,
}

/// Values read from elsewhere at scrape time.
#[derive(Default)]
pub struct Gauges {
    pub config_version: String,
    /// (SPIFFE id, not-after as Unix seconds) of this proxy's workload certificate.
    pub workload_cert: Option<(String, u64)>,
    pub upstream: crate::upstream::UpstreamCounts,
}

pub struct Sinks {
    pub access_log_dropped: u64,
    pub access_log_written: u64,
    pub spans_dropped: u64,
    pub spans_exported: u64,
}

impl EgretSeries {
    fn sni(&self, sni: &str) -> Arc<SniSeries> {
        if let Ok(m) = self.snis.read()
            && let Some(s) = m.get(sni)
        {
            return s.clone();
        }
        let Ok(mut m) = self.snis.write() else {
            return Arc::default();
        };
        if let Some(s) = m.get(sni) {
            return s.clone();
        }
        let key = if m.len() >= MAX_SNIS { "overflow" } else { sni };
        m.entry(key.to_string()).or_default().clone()
    }

    /// A TLS connection routed by SNI (passed through, never terminated) has ended.
    pub fn tls_passthrough(&self, sni: &str, sent: u64, received: u64, seconds: f64) {
        let s = self.sni(sni);
        s.connections.fetch_add(1, Ordering::Relaxed);
        s.sent.fetch_add(sent, Ordering::Relaxed);
        s.received.fetch_add(received, Ordering::Relaxed);
        let i = SECONDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(SECONDS.len());
        if let Some(b) = s.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        s.sum_ms
            .fetch_add((seconds * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn encode(&self, out: &mut String, g: &Gauges, sinks: &Sinks) {
        let snis: Vec<(String, Arc<SniSeries>)> = match self.snis.read() {
            Ok(m) => m.iter().map(|(k, v)| (escape(k), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        header(
            out,
            "egret_tls_passthrough_connections_total",
            "counter",
            "TLS connections passed through by SNI (closed)",
        );
        for (sni, s) in &snis {
            let _ = writeln!(
                out,
                "egret_tls_passthrough_connections_total{{sni=\"{sni}\"}} {}",
                s.connections.load(Ordering::Relaxed)
            );
        }
        for (name, help, pick) in [
            (
                "egret_tls_passthrough_sent_bytes_total",
                "Bytes sent to the destination on passed-through TLS connections",
                (|s: &SniSeries| &s.sent) as fn(&SniSeries) -> &AtomicU64,
            ),
            (
                "egret_tls_passthrough_received_bytes_total",
                "Bytes received from the destination on passed-through TLS connections",
                |s: &SniSeries| &s.received,
            ),
        ] {
            header(out, name, "counter", help);
            for (sni, s) in &snis {
                let _ = writeln!(
                    out,
                    "{name}{{sni=\"{sni}\"}} {}",
                    pick(s).load(Ordering::Relaxed)
                );
            }
        }
        let name = "egret_tls_passthrough_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Lifetime of passed-through TLS connections",
        );
        for (sni, s) in &snis {
            let mut cumulative = 0;
            for (b, le) in s.buckets.iter().zip(SECONDS) {
                cumulative += b.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{sni=\"{sni}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = s.connections.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{sni=\"{sni}\",le=\"+Inf\"}} {count}");
            let sum = s.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            let _ = writeln!(out, "{name}_sum{{sni=\"{sni}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{sni=\"{sni}\"}} {count}");
        }

        let u = &g.upstream;
        header(
            out,
            "egret_upstream_connections_total",
            "counter",
            "Upstream HTTP connections used for a request: reused from the pool or newly opened",
        );
        for (proto, reused, v) in [
            ("http1", "true", u.http1_reused),
            ("http1", "false", u.http1_new),
            ("http2", "true", u.http2_reused),
            ("http2", "false", u.http2_new),
        ] {
            let _ = writeln!(
                out,
                "egret_upstream_connections_total{{protocol=\"{proto}\",reused=\"{reused}\"}} {v}"
            );
        }
        header(
            out,
            "egret_upstream_idle_connections",
            "gauge",
            "Idle HTTP/1.1 connections in the upstream pool",
        );
        let _ = writeln!(out, "egret_upstream_idle_connections {}", u.idle);
        header(out, "egret_dns_lookups_total", "counter", "DNS lookups");
        let _ = writeln!(out, "egret_dns_lookups_total {}", u.dns_lookups);
        header(
            out,
            "egret_dns_failures_total",
            "counter",
            "DNS lookups that failed or returned no usable address",
        );
        let _ = writeln!(out, "egret_dns_failures_total {}", u.dns_failures);
        header(
            out,
            "egret_dns_cache_entries",
            "gauge",
            "Names whose last answer is still within its TTL",
        );
        let _ = writeln!(out, "egret_dns_cache_entries {}", u.dns_cached);

        header(
            out,
            "egret_config_info",
            "gauge",
            "The configuration snapshot in force (version = content hash)",
        );
        let _ = writeln!(
            out,
            "egret_config_info{{version=\"{}\"}} 1",
            escape(&g.config_version)
        );
        header(
            out,
            "egret_certificate_expiry_timestamp_seconds",
            "gauge",
            "When this proxy's workload certificate expires (Unix time)",
        );
        if let Some((id, ts)) = &g.workload_cert {
            let _ = writeln!(
                out,
                "egret_certificate_expiry_timestamp_seconds{{kind=\"workload\",id=\"{}\"}} {ts}",
                escape(id)
            );
        }
        for (name, help, v) in [
            (
                "egret_access_log_lines_total",
                "Access-log lines written",
                sinks.access_log_written,
            ),
            (
                "egret_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind",
                sinks.access_log_dropped,
            ),
            (
                "egret_trace_spans_exported_total",
                "Spans accepted by the OTLP collector",
                sinks.spans_exported,
            ),
            (
                "egret_trace_spans_dropped_total",
                "Spans dropped (queue full or the collector failed)",
                sinks.spans_dropped,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
