//! What the proxy tells about the traffic it carries: Istio's standard metrics
//! ([`istio`]), Istio's access log ([`accesslog`]), trace spans ([`trace`]) and egret's own
//! series (per-SNI passthrough, pools, DNS, certificates, configuration).
//!
//! Every HTTP request and every TCP/TLS connection produces one *record*, finished exactly
//! once — when the response body has been sent (or the client went away), or when the
//! connection closed — by the record's `Drop`, so no early return on the data path can skip
//! it. Finishing a record updates the metrics, queues one access-log line and, when the
//! request was sampled, one span; none of it waits.

pub mod accesslog;
pub mod egret;
pub mod istio;
pub mod record;
pub mod trace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use egret_model::snapshot::Snapshot;

pub use accesslog::{AccessLogSink, AccessLogger, LogFormat};
pub use istio::{IstioMetrics, SourceLabels};
pub use record::{HttpRecord, L4Record, Recorded};

/// One proxy's series (its source labels are its own).
pub struct Telemetry {
    pub istio: IstioMetrics,
    pub egret: egret::EgretSeries,
}

/// Access-log writers by file and span exporters by collector, for the life of the process:
/// a reload never reopens them, and proxies writing the same file share one writer.
static SINKS: OnceLock<Mutex<HashMap<String, Arc<AccessLogSink>>>> = OnceLock::new();
static EXPORTERS: OnceLock<Mutex<HashMap<String, Arc<crate::otlp::OtlpExporter>>>> =
    OnceLock::new();

/// What one snapshot asks for: where access logs go and how; where spans go.
#[derive(Clone, Default)]
pub struct TelemetryRuntime {
    pub access_log: Option<AccessLogger>,
    pub tracer: Option<trace::Tracer>,
}

impl Telemetry {
    pub fn new(source: &SourceLabels) -> Telemetry {
        Telemetry {
            istio: IstioMetrics::new(source),
            egret: egret::EgretSeries::default(),
        }
    }

    /// Istio's series and egret's, Prometheus text format.
    pub fn encode(&self, out: &mut String, extra: &egret::Gauges) {
        self.istio.encode(out);
        let (dropped, written, spans_dropped, spans_exported) = sink_totals();
        self.egret.encode(
            out,
            extra,
            &egret::Sinks {
                access_log_dropped: dropped,
                access_log_written: written,
                spans_dropped,
                spans_exported,
            },
        );
    }
}

impl TelemetryRuntime {
    /// The access log and tracer a snapshot configures. Sinks and exporters are shared by
    /// every snapshot that names the same file / collector (see [`SINKS`]).
    /// `Err` explains a setting that cannot be honoured (the snapshot is rejected).
    pub fn for_snapshot(snap: &Snapshot) -> Result<TelemetryRuntime, String> {
        let mut t = TelemetryRuntime::default();
        let mesh = &snap.mesh;
        let path = mesh.access_log_file.clone().or_else(|| {
            mesh.access_log_default_provider
                .then(|| "/dev/stdout".to_string())
        });
        if let Some(path) = path {
            let json = mesh.access_log_encoding == egret_config::types::AccessLogEncoding::Json;
            let format = LogFormat::new(json, mesh.access_log_format.as_deref())?;
            for op in &format.unknown {
                tracing::warn!(target: "config", "accessLogFormat: %{op}% is not implemented by egret; it is written as \"-\"");
            }
            let sink = {
                let mut sinks = SINKS
                    .get_or_init(Mutex::default)
                    .lock()
                    .map_err(|_| "access log state poisoned".to_string())?;
                match sinks.get(&path) {
                    Some(s) => s.clone(),
                    None => {
                        let s = AccessLogSink::open(&path)?;
                        sinks.insert(path.clone(), s.clone());
                        s
                    }
                }
            };
            t.access_log = Some(AccessLogger {
                sink,
                format: Arc::new(format),
            });
        }
        t.tracer = trace::Tracer::from_snapshot(snap, |key, cfg| {
            let mut ex = EXPORTERS.get_or_init(Mutex::default).lock().ok()?;
            Some(
                ex.entry(key.to_string())
                    .or_insert_with(|| crate::otlp::OtlpExporter::start(cfg))
                    .clone(),
            )
        });
        Ok(t)
    }
}

/// Access-log lines dropped and written, spans dropped and exported, over every sink and
/// exporter of the process.
fn sink_totals() -> (u64, u64, u64, u64) {
    use std::sync::atomic::Ordering;
    let (mut dropped, mut written) = (0, 0);
    if let Ok(s) = SINKS.get_or_init(Mutex::default).lock() {
        for sink in s.values() {
            dropped += sink.dropped.load(Ordering::Relaxed);
            written += sink.written.load(Ordering::Relaxed);
        }
    }
    let (mut spans_dropped, mut spans_exported) = (0, 0);
    if let Ok(e) = EXPORTERS.get_or_init(Mutex::default).lock() {
        for ex in e.values() {
            spans_dropped += ex.dropped();
            spans_exported += ex.exported();
        }
    }
    (dropped, written, spans_dropped, spans_exported)
}
