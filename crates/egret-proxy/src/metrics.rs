//! Counters the proxy keeps from the first day (the full Istio metric set comes with the
//! observability work): requests and connections by outcome, configuration loads and
//! rejections. Served as Prometheus text on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `routed`, `passthrough`, `blackhole`, `no_route`, `direct_response`, `redirect`,
    /// `upstream_error`, `timeout`, `bad_request`, `loop`, `accept_error`, `denied`
    /// (AuthorizationPolicy, CUSTOM), `unauthenticated` (bad JWT: 401), `rate_limited`
    /// (429, or a refused connection); at a gateway also
    /// `refused_not_mesh` (a client without the mesh tunnel) and `refused_mesh_tls` (a tunnel
    /// handshake whose client certificate was rejected).
    pub outcome: &'static str,
    /// `http`, `tls` or `tcp`.
    pub protocol: &'static str,
}

/// One policy decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyDecision {
    /// `allow`, `deny`, `dry_run_deny`, `dry_run_allow`.
    pub decision: &'static str,
    /// `allowed_by_policy`, `no_allow_policy`, `denied_by_policy`, `no_matching_allow`,
    /// `ext_authz_allowed`, `ext_authz_denied`, `ext_authz_error`, `ext_authz_failed_open`,
    /// `ext_authz_not_for_tcp`, `jwt_<reason>`, `rate_limited`.
    pub reason: &'static str,
    /// `http`, `tls` or `tcp`.
    pub protocol: &'static str,
}

/// A cluster (`outbound|port|subset|host`): bounded by the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// `delay` or `abort`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultKind {
    pub kind: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    /// Endpoints ejected by outlier detection, per cluster.
    pub outlier_ejections: Family<ClusterLabel, Counter>,
    /// Requests and connections refused by circuit breaking (`UO`), per cluster.
    pub overflow: Family<ClusterLabel, Counter>,
    /// Retries made, per cluster.
    pub retries: Family<ClusterLabel, Counter>,
    /// Faults injected (`delay`, `abort`).
    pub faults: Family<FaultKind, Counter>,
    pub policy: Family<PolicyDecision, Counter>,
    pub requests: Family<Outcome, Counter>,
    pub connections: Family<Outcome, Counter>,
    pub config_loaded: Counter,
    pub config_rejected: Counter,
    pub active_connections: Gauge,
    /// The `requests` series of the outcomes most requests end in, each taken from the family
    /// at its first use: a `Family` lookup hashes the labels (SipHash) under an `RwLock` both
    /// data-plane threads take, ~450 instructions per request (callgrind, bench/NOTES.md).
    hot_requests: [OnceLock<Counter>; HOT_OUTCOMES.len()],
}

/// Request outcomes counted through [`Metrics::hot_requests`].
const HOT_OUTCOMES: [&str; 6] = [
    "routed",
    "passthrough",
    "blackhole",
    "no_route",
    "upstream_error",
    "denied",
];

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("egret");
        let requests = Family::<Outcome, Counter>::default();
        let connections = Family::<Outcome, Counter>::default();
        let config_loaded = Counter::default();
        let config_rejected = Counter::default();
        let active_connections = Gauge::default();
        let policy = Family::<PolicyDecision, Counter>::default();
        registry.register(
            "policy_decisions",
            "Authorization, authentication and rate-limit decisions, by outcome and reason",
            policy.clone(),
        );
        registry.register(
            "outbound_requests",
            "HTTP requests handled, by outcome",
            requests.clone(),
        );
        registry.register(
            "outbound_connections",
            "Connections handled (TLS and TCP), by outcome",
            connections.clone(),
        );
        registry.register(
            "config_loaded",
            "Configuration snapshots accepted",
            config_loaded.clone(),
        );
        registry.register(
            "config_rejected",
            "Configuration changes rejected (the last good snapshot kept serving)",
            config_rejected.clone(),
        );
        registry.register(
            "active_connections",
            "Downstream connections open now",
            active_connections.clone(),
        );
        let outlier_ejections = Family::<ClusterLabel, Counter>::default();
        let overflow = Family::<ClusterLabel, Counter>::default();
        let retries = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster",
            outlier_ejections.clone(),
        );
        registry.register(
            "upstream_overflow",
            "Requests and connections refused by circuit breaking (UO), by cluster",
            overflow.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries made, by cluster",
            retries.clone(),
        );
        let faults = Family::<FaultKind, Counter>::default();
        registry.register(
            "faults_injected",
            "Faults injected by VirtualService fault rules, by kind (delay, abort)",
            faults.clone(),
        );
        Metrics {
            registry,
            faults,
            outlier_ejections,
            overflow,
            retries,
            policy,
            requests,
            connections,
            config_loaded,
            config_rejected,
            active_connections,
            hot_requests: Default::default(),
        }
    }

    pub fn request(&self, outcome: &'static str) {
        let series = || {
            self.requests
                .get_or_create(&Outcome {
                    outcome,
                    protocol: "http",
                })
                .clone()
        };
        match HOT_OUTCOMES.iter().position(|h| *h == outcome) {
            Some(i) => self.hot_requests[i].get_or_init(series).inc(),
            None => series().inc(),
        };
    }

    pub fn policy(&self, decision: &'static str, reason: &'static str, protocol: &'static str) {
        self.policy
            .get_or_create(&PolicyDecision {
                decision,
                reason,
                protocol,
            })
            .inc();
    }

    /// The count of policy decisions with this outcome (tests, admin views).
    pub fn policy_count(
        &self,
        decision: &'static str,
        reason: &'static str,
        protocol: &'static str,
    ) -> u64 {
        self.policy
            .get_or_create(&PolicyDecision {
                decision,
                reason,
                protocol,
            })
            .get()
    }

    pub fn connection(&self, outcome: &'static str, protocol: &'static str) {
        self.connections
            .get_or_create(&Outcome { outcome, protocol })
            .inc();
    }

    /// The count of HTTP requests with `outcome` (tests, admin views).
    pub fn request_count(&self, outcome: &'static str) -> u64 {
        self.requests
            .get_or_create(&Outcome {
                outcome,
                protocol: "http",
            })
            .get()
    }

    /// The count of connections with `outcome` and `protocol`.
    pub fn connection_count(&self, outcome: &'static str, protocol: &'static str) -> u64 {
        self.connections
            .get_or_create(&Outcome { outcome, protocol })
            .get()
    }

    fn cluster_counter(f: &Family<ClusterLabel, Counter>, cluster: &str) -> Counter {
        f.get_or_create(&ClusterLabel {
            cluster: cluster.to_string(),
        })
        .clone()
    }

    pub fn outlier_ejection(&self, cluster: &str) {
        Self::cluster_counter(&self.outlier_ejections, cluster).inc();
    }

    pub fn overflow(&self, cluster: &str) {
        Self::cluster_counter(&self.overflow, cluster).inc();
    }

    pub fn retry(&self, cluster: &str) {
        Self::cluster_counter(&self.retries, cluster).inc();
    }

    pub fn fault(&self, kind: &'static str) {
        self.faults.get_or_create(&FaultKind { kind }).inc();
    }

    pub fn fault_count(&self, kind: &'static str) -> u64 {
        self.faults.get_or_create(&FaultKind { kind }).get()
    }

    /// (ejections, overflows, retries) of a cluster (tests, admin views).
    pub fn resilience_counts(&self, cluster: &str) -> (u64, u64, u64) {
        (
            Self::cluster_counter(&self.outlier_ejections, cluster).get(),
            Self::cluster_counter(&self.overflow, cluster).get(),
            Self::cluster_counter(&self.retries, cluster).get(),
        )
    }

    /// Prometheus text format 0.0.4 (what `/stats/prometheus` serves and `promtool check
    /// metrics` reads). prometheus-client writes OpenMetrics, whose counter families are named
    /// without `_total` and which ends with `# EOF`: both are adjusted here.
    pub fn encode(&self) -> String {
        let mut om = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut om, &self.registry);
        let counters: std::collections::HashSet<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(om.len() + 256);
        for line in om.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let meta = line
                .strip_prefix("# HELP ")
                .map(|r| ("# HELP ", r))
                .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
            match meta {
                Some((kind, rest)) => {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    out.push_str(kind);
                    out.push_str(name);
                    if counters.contains(name) && !name.ends_with("_total") {
                        out.push_str("_total");
                    }
                    out.push(' ');
                    out.push_str(tail);
                }
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A hot outcome's counter is the family's series: scrapes and `request_count` see it.
    #[test]
    fn hot_outcomes_count_in_the_family() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.request("routed");
        }
        m.request("redirect");
        assert_eq!(m.request_count("routed"), 3);
        assert_eq!(m.request_count("redirect"), 1);
        assert_eq!(m.request_count("passthrough"), 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        assert!(
            text.contains(r#"egret_outbound_requests_total{outcome="routed",protocol="http"} 3"#),
            "{text}"
        );
    }
}
