//! Istio's standard metrics (`istio-egress-spec.md` §9), kept by the proxy itself.
//!
//! Every request and every TCP/TLS connection is reported with `reporter="source"`: egret is
//! always the client side of an egress call (a sidecar sending for its workload, or a gateway
//! sending to the external service), which is how Istio reports egress too — there is no server
//! sidecar on an external service. Labels follow Istio's stats plugin:
//!
//! - `source_*` describe this proxy's workload (for a gateway: the gateway itself);
//! - `destination_service` is the ServiceEntry host (or the Host / SNI of passed-through
//!   traffic), `destination_service_name` the host, or `PassthroughCluster` /
//!   `BlackHoleCluster` for unknown destinations, or the short Kubernetes service name for
//!   `*.svc.*` hosts (the sidecar → gateway leg reports `istio-egressgateway`);
//! - `connection_security_policy` is `unknown` (the value Istio gives at the source).
//!
//! The data path does two hash lookups per report (destination by cluster/host, then the
//! series by (destination, code, flags) in its own thread's copy) under short, never-async
//! read locks; labels are
//! rendered once per destination, never per request. Distinct passthrough/black-hole
//! destinations are capped ([`MAX_DESTINATIONS`]); beyond the cap they share one series whose
//! `destination_service` is `overflow`.

use egret_model::fastmap::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Envoy's default histogram buckets, which Istio uses for duration (ms) and sizes (bytes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Distinct destinations that are not clusters (hosts and SNIs of passthrough and black-holed
/// traffic) kept as their own series before they share the `overflow` one.
pub const MAX_DESTINATIONS: usize = 1000;

/// The label value Istio uses for anything it does not know.
pub const UNKNOWN: &str = "unknown";

/// A histogram with [`BUCKETS`] (cumulative counts are computed when scraped).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 19],
    count: AtomicU64,
    /// Sum in thousandths, to keep sub-millisecond durations.
    sum_milli: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, v: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli
            .fetch_add((v.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Add this histogram's counts to `snap` (the per-thread shards are summed when scraped).
    fn add_to(&self, snap: &mut HistogramSum) {
        for (s, b) in snap.buckets.iter_mut().zip(&self.buckets) {
            *s += b.load(Ordering::Relaxed);
        }
        snap.count += self.count.load(Ordering::Relaxed);
        snap.sum_milli += self.sum_milli.load(Ordering::Relaxed);
    }
}

/// A histogram's counts summed over the data-plane threads, as scraped.
#[derive(Default, Clone, Copy)]
struct HistogramSum {
    buckets: [u64; 19],
    count: u64,
    sum_milli: u64,
}

impl HistogramSum {
    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            cumulative += b;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_milli as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// One HTTP series summed over the data-plane threads.
#[derive(Default, Clone, Copy)]
struct HttpSum {
    requests: u64,
    duration_ms: HistogramSum,
    request_bytes: HistogramSum,
    response_bytes: HistogramSum,
}

/// How many per-thread copies of the HTTP series there are; data-plane thread `i` uses copy
/// `i % HTTP_SHARDS` (`shard.rs`).
const HTTP_SHARDS: usize = 16;

/// One data-plane thread's HTTP series, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct HttpShard(RwLock<HashMap<HttpKey, HttpSeries>>);

/// One destination's rendered `destination_*` labels.
pub struct Destination {
    id: u32,
    labels: String,
}

/// What a destination is, before its labels are rendered.
pub enum DestinationKind<'a> {
    /// A cluster of the snapshot: its host and the ServiceEntry's namespace (`ns/name`).
    Cluster {
        host: &'a str,
        service: Option<&'a str>,
    },
    /// ALLOW_ANY traffic to something no service describes; `host` is the Host, SNI or
    /// address.
    Passthrough { host: &'a str },
    /// REGISTRY_ONLY traffic that was refused.
    BlackHole { host: &'a str },
    /// Answered before any cluster was chosen (denied by policy, no route, a direct
    /// response): the host that was asked for.
    Requested { host: &'a str },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct HttpKey {
    dest: u32,
    code: u16,
    flags: &'static str,
    grpc: bool,
}

#[derive(Default)]
pub struct HttpSeries {
    pub requests: AtomicU64,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct TcpKey {
    dest: u32,
    flags: &'static str,
}

#[derive(Default)]
pub struct TcpSeries {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// This proxy's side of every series.
#[derive(Debug, Clone, Default)]
pub struct SourceLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl SourceLabels {
    /// Istio's derivation from the workload's labels: `app`/`version`, canonical service from
    /// `service.istio.io/canonical-name`, `app.kubernetes.io/name`, `app`, else the workload
    /// name; canonical revision from `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version`, `version`, else `latest`.
    pub fn from_workload(
        workload: &str,
        namespace: &str,
        principal: Option<&str>,
        labels: &std::collections::BTreeMap<String, String>,
        cluster: &str,
    ) -> SourceLabels {
        let get = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        SourceLabels {
            workload: workload.to_string(),
            namespace: namespace.to_string(),
            principal: principal.unwrap_or(UNKNOWN).to_string(),
            app: get(&["app", "app.kubernetes.io/name"]).unwrap_or_else(|| UNKNOWN.into()),
            version: get(&["version", "app.kubernetes.io/version"])
                .unwrap_or_else(|| UNKNOWN.into()),
            canonical_service: get(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| workload.to_string()),
            canonical_revision: get(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
            cluster: cluster.to_string(),
        }
    }

    fn render(&self) -> String {
        let mut s = String::from("reporter=\"source\"");
        for (k, v) in [
            ("source_workload", &self.workload),
            ("source_workload_namespace", &self.namespace),
            ("source_principal", &self.principal),
            ("source_app", &self.app),
            ("source_version", &self.version),
            ("source_canonical_service", &self.canonical_service),
            ("source_canonical_revision", &self.canonical_revision),
            ("source_cluster", &self.cluster),
        ] {
            push_label(&mut s, k, v);
        }
        s
    }
}

/// `,key="escaped value"`.
fn push_label(s: &mut String, key: &str, value: &str) {
    if !s.is_empty() {
        s.push(',');
    }
    s.push_str(key);
    s.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
}

/// `<name>.<namespace>.svc[.<domain>]` → (name, namespace).
fn kubernetes_service(host: &str) -> Option<(&str, &str)> {
    let mut parts = host.split('.');
    let name = parts.next()?;
    let ns = parts.next()?;
    (parts.next() == Some("svc")).then_some((name, ns))
}

fn render_destination(kind: &DestinationKind<'_>, cluster_id: &str) -> String {
    let (service, name, namespace) = match kind {
        DestinationKind::Cluster { host, service } => {
            let ns = service.and_then(|s| s.split_once('/')).map(|(ns, _)| ns);
            match kubernetes_service(host) {
                Some((name, ns)) => (*host, name, ns),
                None => (*host, *host, ns.unwrap_or(UNKNOWN)),
            }
        }
        DestinationKind::Passthrough { host } => (*host, "PassthroughCluster", UNKNOWN),
        DestinationKind::BlackHole { host } => (*host, "BlackHoleCluster", UNKNOWN),
        DestinationKind::Requested { host } => (*host, *host, UNKNOWN),
    };
    let mut s = String::new();
    for (k, v) in [
        ("destination_workload", UNKNOWN),
        ("destination_workload_namespace", UNKNOWN),
        ("destination_principal", UNKNOWN),
        ("destination_app", UNKNOWN),
        ("destination_version", UNKNOWN),
        ("destination_service", service),
        ("destination_service_name", name),
        ("destination_service_namespace", namespace),
        ("destination_canonical_service", UNKNOWN),
        ("destination_canonical_revision", UNKNOWN),
        ("destination_cluster", cluster_id),
    ] {
        push_label(&mut s, k, v);
    }
    s
}

pub struct IstioMetrics {
    source: String,
    cluster_id: String,
    destinations: RwLock<Destinations>,
    /// Per data-plane thread: a request updates only its own thread's counters and takes only
    /// its own thread's (uncontended) read lock, so the threads do not write the same cache
    /// lines per request — Envoy and HAProxy keep per-thread statistics the same way. The
    /// scrape sums them.
    http: Box<[HttpShard]>,
    tcp: RwLock<HashMap<TcpKey, Arc<TcpSeries>>>,
}

#[derive(Default)]
struct Destinations {
    by_key: HashMap<String, Arc<Destination>>,
    all: Vec<Arc<Destination>>,
    /// How many non-cluster destinations have their own series.
    uncapped: usize,
}

impl IstioMetrics {
    pub fn new(source: &SourceLabels) -> IstioMetrics {
        IstioMetrics {
            source: source.render(),
            cluster_id: source.cluster.clone(),
            destinations: RwLock::default(),
            http: (0..HTTP_SHARDS).map(|_| HttpShard::default()).collect(),
            tcp: RwLock::default(),
        }
    }

    /// The destination for a cluster, a passed-through host or a black-holed one.
    pub fn destination(&self, kind: DestinationKind<'_>) -> Arc<Destination> {
        let (key, capped) = match &kind {
            DestinationKind::Cluster { host, .. } => (*host, false),
            DestinationKind::Passthrough { host }
            | DestinationKind::BlackHole { host }
            | DestinationKind::Requested { host } => (*host, true),
        };
        let prefix = match kind {
            DestinationKind::Cluster { .. } => 'c',
            DestinationKind::Passthrough { .. } => 'p',
            DestinationKind::BlackHole { .. } => 'b',
            DestinationKind::Requested { .. } => 'r',
        };
        // Look up without allocating: the key is the prefix char plus the host.
        if let Ok(d) = self.destinations.read()
            && let Some(dest) = lookup(&d.by_key, prefix, key)
        {
            return dest;
        }
        let Ok(mut d) = self.destinations.write() else {
            return Arc::new(Destination {
                id: u32::MAX,
                labels: render_destination(&kind, &self.cluster_id),
            });
        };
        if let Some(dest) = lookup(&d.by_key, prefix, key) {
            return dest;
        }
        let (map_key, kind) = if capped && d.uncapped >= MAX_DESTINATIONS {
            let overflow = match kind {
                DestinationKind::BlackHole { .. } => {
                    DestinationKind::BlackHole { host: "overflow" }
                }
                DestinationKind::Requested { .. } => {
                    DestinationKind::Requested { host: "overflow" }
                }
                _ => DestinationKind::Passthrough { host: "overflow" },
            };
            if let Some(dest) = lookup(&d.by_key, prefix, "overflow") {
                return dest;
            }
            (format!("{prefix}overflow"), overflow)
        } else {
            if capped {
                d.uncapped += 1;
            }
            (format!("{prefix}{key}"), kind)
        };
        let dest = Arc::new(Destination {
            id: d.all.len() as u32,
            labels: render_destination(&kind, &self.cluster_id),
        });
        d.by_key.insert(map_key, dest.clone());
        d.all.push(dest.clone());
        dest
    }

    /// Run `f` on this thread's series for `key`, made on first use.
    fn with_http_series(&self, key: HttpKey, f: impl FnOnce(&HttpSeries)) {
        let Some(HttpShard(shard)) = self
            .http
            .get(usize::from(crate::shard::current()) % HTTP_SHARDS)
        else {
            return;
        };
        if let Ok(m) = shard.read()
            && let Some(s) = m.get(&key)
        {
            return f(s);
        }
        if let Ok(mut m) = shard.write() {
            f(m.entry(key).or_default());
        }
    }

    /// One finished HTTP request.
    #[allow(clippy::too_many_arguments)]
    pub fn http(
        &self,
        dest: &Destination,
        code: u16,
        flags: &'static str,
        grpc: bool,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let key = HttpKey {
            dest: dest.id,
            code,
            flags,
            grpc,
        };
        self.with_http_series(key, |s| {
            s.requests.fetch_add(1, Ordering::Relaxed);
            s.duration_ms.observe(duration_ms);
            s.request_bytes.observe(request_bytes as f64);
            s.response_bytes.observe(response_bytes as f64);
        });
    }

    /// The HTTP series summed over the data-plane threads.
    fn http_sums(&self) -> HashMap<HttpKey, HttpSum> {
        let mut sums: HashMap<HttpKey, HttpSum> = HashMap::default();
        for HttpShard(shard) in &self.http {
            let Ok(m) = shard.read() else { continue };
            for (k, s) in m.iter() {
                let sum = sums.entry(*k).or_default();
                sum.requests += s.requests.load(Ordering::Relaxed);
                s.duration_ms.add_to(&mut sum.duration_ms);
                s.request_bytes.add_to(&mut sum.request_bytes);
                s.response_bytes.add_to(&mut sum.response_bytes);
            }
        }
        sums
    }

    fn tcp_series(&self, key: TcpKey) -> Arc<TcpSeries> {
        if let Ok(m) = self.tcp.read()
            && let Some(s) = m.get(&key)
        {
            return s.clone();
        }
        match self.tcp.write() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// A TCP/TLS connection was opened towards `dest`.
    pub fn tcp_opened(&self, dest: &Destination, flags: &'static str) {
        self.tcp_series(TcpKey {
            dest: dest.id,
            flags,
        })
        .opened
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A TCP/TLS connection ended: `sent` bytes to the upstream, `received` from it.
    pub fn tcp_closed(&self, dest: &Destination, flags: &'static str, sent: u64, received: u64) {
        let s = self.tcp_series(TcpKey {
            dest: dest.id,
            flags,
        });
        s.closed.fetch_add(1, Ordering::Relaxed);
        s.sent.fetch_add(sent, Ordering::Relaxed);
        s.received.fetch_add(received, Ordering::Relaxed);
    }

    /// Prometheus text exposition (format 0.0.4) of every series.
    pub fn encode(&self, out: &mut String) {
        let dests: Vec<Arc<Destination>> = match self.destinations.read() {
            Ok(d) => d.all.clone(),
            Err(_) => return,
        };
        let labels_of = |id: u32| dests.get(id as usize).map(|d| d.labels.as_str());
        let http = self.http_sums();
        let tcp: Vec<(TcpKey, Arc<TcpSeries>)> = match self.tcp.read() {
            Ok(m) => m.iter().map(|(k, v)| (*k, v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        let http_labels: Vec<(String, &HttpSum)> = http
            .iter()
            .filter_map(|(k, s)| {
                let mut l = self.source.clone();
                l.push(',');
                l.push_str(labels_of(k.dest)?);
                push_label(
                    &mut l,
                    "request_protocol",
                    if k.grpc { "grpc" } else { "http" },
                );
                push_label(&mut l, "response_code", &k.code.to_string());
                push_label(&mut l, "grpc_response_status", "");
                push_label(&mut l, "response_flags", k.flags);
                push_label(&mut l, "connection_security_policy", UNKNOWN);
                Some((l, s))
            })
            .collect();
        let tcp_labels: Vec<(String, &Arc<TcpSeries>)> = tcp
            .iter()
            .filter_map(|(k, s)| {
                let mut l = self.source.clone();
                l.push(',');
                l.push_str(labels_of(k.dest)?);
                push_label(&mut l, "request_protocol", "tcp");
                push_label(&mut l, "response_flags", k.flags);
                push_label(&mut l, "connection_security_policy", UNKNOWN);
                Some((l, s))
            })
            .collect();

        header(
            out,
            "istio_requests_total",
            "counter",
            "Requests, by source, destination and response",
        );
        for (l, s) in &http_labels {
            let _ = writeln!(out, "istio_requests_total{{{l}}} {}", s.requests);
        }
        for (name, help, pick) in [
            (
                "istio_request_duration_milliseconds",
                "Request duration until the last response byte",
                (|s: &HttpSum| &s.duration_ms) as fn(&HttpSum) -> &HistogramSum,
            ),
            (
                "istio_request_bytes",
                "Request body sizes",
                |s: &HttpSum| &s.request_bytes,
            ),
            (
                "istio_response_bytes",
                "Response body sizes",
                |s: &HttpSum| &s.response_bytes,
            ),
        ] {
            header(out, name, "histogram", help);
            for (l, s) in &http_labels {
                pick(s).encode(out, name, l);
            }
        }
        for (name, help, pick) in [
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the destination on TCP/TLS connections",
                (|s: &TcpSeries| &s.sent) as fn(&TcpSeries) -> &AtomicU64,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the destination on TCP/TLS connections",
                |s: &TcpSeries| &s.received,
            ),
            (
                "istio_tcp_connections_opened_total",
                "TCP/TLS connections opened",
                |s: &TcpSeries| &s.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP/TLS connections closed",
                |s: &TcpSeries| &s.closed,
            ),
        ] {
            header(out, name, "counter", help);
            for (l, s) in &tcp_labels {
                let _ = writeln!(out, "{name}{{{l}}} {}", pick(s).load(Ordering::Relaxed));
            }
        }
    }

    /// Requests counted for a destination service name (tests, `egret up`).
    pub fn requests_for(&self, destination_service_name: &str) -> u64 {
        let needle = format!("destination_service_name=\"{destination_service_name}\"");
        let ids: Vec<u32> = match self.destinations.read() {
            Ok(d) => d
                .all
                .iter()
                .filter(|d| d.labels.contains(&needle))
                .map(|d| d.id)
                .collect(),
            Err(_) => return 0,
        };
        self.http_sums()
            .iter()
            .filter(|(k, _)| ids.contains(&k.dest))
            .map(|(_, s)| s.requests)
            .sum()
    }
}

fn lookup(
    map: &HashMap<String, Arc<Destination>>,
    prefix: char,
    key: &str,
) -> Option<Arc<Destination>> {
    // Keys are `<prefix><host>`; a stack buffer avoids allocating for the usual short host.
    let mut buf = [0u8; 256];
    let needed = 1 + key.len();
    if needed <= buf.len() {
        buf[0] = prefix as u8;
        buf[1..needed].copy_from_slice(key.as_bytes());
        let k = std::str::from_utf8(&buf[..needed]).ok()?;
        map.get(k).cloned()
    } else {
        map.get(&format!("{prefix}{key}")).cloned()
    }
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn source() -> SourceLabels {
        SourceLabels::from_workload(
            "sleep",
            "default",
            Some("spiffe://cluster.local/ns/default/sa/sleep"),
            &[("app".to_string(), "sleep".to_string())]
                .into_iter()
                .collect(),
            "Kubernetes",
        )
    }

    #[test]
    fn series_of_every_data_plane_thread_are_summed_when_scraped() {
        let m = Arc::new(IstioMetrics::new(&source()));
        let dest = m.destination(DestinationKind::Cluster {
            host: "api.example.test",
            service: Some("external/api"),
        });
        // Threads 0, 1 and 17 (17 shares thread 1's copy): one, two and one requests.
        let threads: Vec<_> = [(0u16, 1), (1, 2), (17, 1)]
            .into_iter()
            .map(|(shard, n)| {
                let (m, dest) = (m.clone(), dest.clone());
                std::thread::spawn(move || {
                    crate::shard::set(shard);
                    for _ in 0..n {
                        m.http(&dest, 200, "-", false, 3.0, 100, 2000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let used = m
            .http
            .iter()
            .filter(|HttpShard(s)| !s.read().unwrap().is_empty())
            .count();
        assert_eq!(
            used, 2,
            "one copy per data-plane thread (modulo {HTTP_SHARDS})"
        );
        assert_eq!(m.requests_for("api.example.test"), 4);
        let mut out = String::new();
        m.encode(&mut out);
        let value = |prefix: &str| {
            out.lines()
                .find(|l| l.starts_with(prefix) && l.contains("response_code=\"200\""))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(value("istio_requests_total{").as_deref(), Some("4"));
        assert_eq!(
            value("istio_request_duration_milliseconds_count{").as_deref(),
            Some("4")
        );
        assert_eq!(
            value("istio_request_duration_milliseconds_sum{").as_deref(),
            Some("12")
        );
        assert_eq!(value("istio_response_bytes_sum{").as_deref(), Some("8000"));
        assert!(
            out.lines()
                .any(|l| l.starts_with("istio_request_bytes_bucket{")
                    && l.contains("le=\"100\"")
                    && l.ends_with(" 4")),
            "{out}"
        );
    }

    #[test]
    fn labels_follow_istio_for_egress() {
        let m = IstioMetrics::new(&source());
        let se = m.destination(DestinationKind::Cluster {
            host: "api.example.test",
            service: Some("external/api"),
        });
        let gw = m.destination(DestinationKind::Cluster {
            host: "istio-egressgateway.istio-system.svc.cluster.local",
            service: None,
        });
        let bh = m.destination(DestinationKind::BlackHole { host: "x.test" });
        m.http(&se, 200, "-", false, 3.0, 0, 10);
        m.http(&gw, 200, "-", false, 3.0, 0, 10);
        m.http(&bh, 502, "NR", false, 0.1, 0, 0);
        let mut out = String::new();
        m.encode(&mut out);
        let line = |needles: &[&str]| {
            out.lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .any(|l| needles.iter().all(|n| l.contains(n)))
        };
        assert!(line(&[
            "reporter=\"source\"",
            "source_workload=\"sleep\"",
            "source_app=\"sleep\"",
            "source_canonical_revision=\"latest\"",
            "destination_service=\"api.example.test\"",
            "destination_service_name=\"api.example.test\"",
            "destination_service_namespace=\"external\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"unknown\"",
        ]));
        assert!(line(&[
            "destination_service_name=\"istio-egressgateway\"",
            "destination_service_namespace=\"istio-system\""
        ]));
        assert!(line(&[
            "destination_service_name=\"BlackHoleCluster\"",
            "response_code=\"502\"",
            "response_flags=\"NR\""
        ]));
        assert_eq!(m.requests_for("BlackHoleCluster"), 1);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for v in [0.2, 0.7, 3.0, 4000.0, 1e9] {
            h.observe(v);
        }
        let mut sum = HistogramSum::default();
        h.add_to(&mut sum);
        let mut out = String::new();
        sum.encode(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 1\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"5\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"5000\"} 4\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"3600000\"} 4\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_count{a=\"b\"} 5\n"));
    }

    #[test]
    fn passthrough_destinations_are_capped() {
        let m = IstioMetrics::new(&source());
        for i in 0..MAX_DESTINATIONS + 50 {
            let host = format!("h{i}.test");
            let d = m.destination(DestinationKind::Passthrough { host: &host });
            m.tcp_opened(&d, "-");
        }
        let mut out = String::new();
        m.encode(&mut out);
        let series = out
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .count();
        assert_eq!(series, MAX_DESTINATIONS + 1);
        assert!(out.contains("destination_service=\"overflow\""));
        assert!(out.contains(&"destination_service=\"overflow\",destination_service_name=\"PassthroughCluster\",destination_service_namespace=\"unknown\",destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\",destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"unknown\"} 50".to_string()));
    }
}
