//! The compiled, per-proxy configuration the data plane serves from.
//!
//! Shape (Envoy's, because that is what Istio's semantics are written against):
//! - `listeners`, one per port: HTTP virtual hosts (by Host/:authority), TLS chains (by SNI and
//!   destination subnet), TCP chains (by destination subnet), and for gateways the servers.
//! - `clusters`, one per `outbound|<port>|<subset>|<host>`: endpoints, resolution, the merged
//!   DestinationRule traffic policy, TLS origination.
//! - the effective outbound traffic policy, authorization and request-authentication policies
//!   that apply to this proxy, and mesh-wide settings.
//!
//! Everything is in a deterministic order and serializes to the same JSON for the same input.
//! Lookup indexes are built by [`Snapshot::build_index`] and are not serialized.

use std::collections::BTreeMap;

use crate::fastmap::HashMap;
use std::net::IpAddr;

use egret_config::types::{
    AccessLogEncoding, ClientTlsMode, Duration, Location, Resolution, ServerTlsMode, SimpleLb,
    TlsProtocol,
};
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::host::{self, HostIndex};
use crate::identity::ProxyIdentity;

/// Envoy's name for traffic to unknown destinations under ALLOW_ANY.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Envoy's name for traffic to unknown destinations under REGISTRY_ONLY.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Content hash of everything below (hex); equal input gives an equal version.
    pub version: String,
    pub proxy: ProxyIdentity,
    pub mesh: MeshSettings,
    /// Sidecars only (gateways route only what their servers declare).
    pub outbound_traffic_policy: Option<OutboundPolicy>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// AuthorizationPolicies applying to this proxy, in evaluation order
    /// (CUSTOM, DENY, ALLOW, AUDIT; within an action by namespace/name).
    pub authorization_policies: Vec<AuthzPolicy>,
    pub request_authentications: Vec<RequestAuthn>,
    /// RateLimitPolicies applying to this proxy, by `ns/name` (docs/rate-limits.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::ratelimit::RateLimitPolicySpec>,
    /// Objects generated from ASMEgressTrafficPolicy, by name (for operators reading a dump).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<String>,
    #[serde(skip)]
    pub(crate) index: SnapshotIndex,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SnapshotIndex {
    listeners: HashMap<u16, usize>,
    clusters: HashMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    pub root_namespace: String,
    pub access_log_file: Option<String>,
    pub access_log_encoding: AccessLogEncoding,
    pub access_log_format: Option<String>,
    pub connect_timeout: Duration,
    pub dns_refresh_rate: Duration,
    pub extension_providers: Vec<ExtensionProvider>,
    pub enable_tracing: bool,
    /// Tracing in effect: `enableTracing` and `defaultProviders.tracing` naming an
    /// `opentelemetry` provider; `None` = no spans (trace headers are still propagated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
    /// `defaultProviders.accessLogging` names the built-in `envoy` provider (TEXT to
    /// /dev/stdout) when `accessLogFile` is not set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub access_log_default_provider: bool,
}

/// OTLP over HTTP (`extensionProviders[].opentelemetry.http`).
#[derive(Debug, Clone, Serialize)]
pub struct OtlpHttp {
    pub path: String,
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracingSettings {
    /// The `opentelemetry` extension provider spans go to.
    pub provider: String,
    /// Percentage of new traces sampled (`defaultConfig.tracing.sampling`, Istio's default 1).
    pub sampling: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(flatten)]
    pub kind: ExtensionProviderKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ExtensionProviderKind {
    ExtAuthzHttp {
        service: String,
        port: u16,
        timeout: Option<Duration>,
        path_prefix: Option<String>,
        fail_open: bool,
        status_on_error: Option<String>,
        include_request_headers_in_check: Vec<String>,
        headers_to_upstream_on_allow: Vec<String>,
        headers_to_downstream_on_deny: Vec<String>,
    },
    ExtAuthzGrpc {
        service: String,
        port: u16,
        timeout: Option<Duration>,
        fail_open: bool,
    },
    Opentelemetry {
        service: String,
        port: u16,
        max_tag_length: Option<u32>,
        /// `http:` present = OTLP/HTTP (Istio); absent = OTLP/gRPC.
        #[serde(skip_serializing_if = "Option::is_none")]
        http: Option<OtlpHttp>,
    },
    FileAccessLog {
        path: Option<String>,
    },
    Prometheus,
    /// Parsed, not acted on (warned at load).
    Unsupported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    AllowAny,
    RegistryOnly,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboundPolicy {
    pub mode: OutboundMode,
    /// Where the mode came from: `Sidecar ns/name`, `MeshConfig`, or `default (ALLOW_ANY)`.
    pub source: String,
}

// ===== Listeners =====

/// What a listener expects on its port when no more specific chain (a VIP) matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    /// HTTP/1.x or HTTP/2: route by Host through `virtual_hosts`.
    Http,
    /// TLS not terminated here: route by SNI through `tls_chains`.
    Tls,
    /// Opaque TCP: route by destination through `tcp_chains`.
    Tcp,
    /// No declared protocol, or services disagree: sniff (TLS ClientHello, HTTP) and pick.
    Auto,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Gateways only: the Gateway servers on this port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<GatewayServer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_chains: Vec<L4Chain>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_chains: Vec<L4Chain>,
    #[serde(skip)]
    pub(crate) vhost_index: HostIndex<usize>,
    #[serde(skip)]
    pub(crate) tls_index: ChainIndex,
    #[serde(skip)]
    pub(crate) tcp_index: ChainIndex,
}

/// Lookup for TLS/TCP chains without scanning them all.
///
/// - TLS: the most specific SNI pattern (exact, then longest wildcard, as Envoy's
///   `server_names` filter-chain match), then the first of its chains, in configuration order,
///   whose destination subnets match.
/// - TCP: chains whose subnets contain the exact destination address (a VIP), then chains with
///   wider subnets, then catch-alls, each in configuration order.
///
/// When the indexed candidates do not match (a destination-subnet condition), lookup falls back
/// to the ordered scan, so the index never changes an answer, only its cost.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainIndex {
    by_sni: HostIndex<Vec<usize>>,
    by_ip: HashMap<IpAddr, Vec<usize>>,
    /// Chains with subnets that are not single addresses.
    by_subnet: Vec<usize>,
    /// Chains with no SNI (TLS) or no subnet (TCP) condition.
    any: Vec<usize>,
}

impl ChainIndex {
    fn build_tls(chains: &[L4Chain]) -> ChainIndex {
        let mut by_pattern: HashMap<String, Vec<usize>> = HashMap::default();
        let mut any = Vec::new();
        for (i, c) in chains.iter().enumerate() {
            if c.sni_hosts.is_empty() {
                any.push(i);
            }
            for h in &c.sni_hosts {
                let mut keys = vec![h.clone()];
                // sniHosts `*.foo.com` also matches `foo.com`.
                if c.sni_wildcard_matches_apex
                    && let Some(apex) = h.strip_prefix("*.")
                {
                    keys.push(apex.to_string());
                }
                for k in keys {
                    let v = by_pattern.entry(k).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
            }
        }
        let mut by_sni = HostIndex::new();
        for (p, v) in by_pattern {
            by_sni.insert(&p, v);
        }
        by_sni.finish();
        ChainIndex {
            by_sni,
            any,
            ..ChainIndex::default()
        }
    }

    fn build_tcp(chains: &[L4Chain]) -> ChainIndex {
        let mut idx = ChainIndex::default();
        for (i, c) in chains.iter().enumerate() {
            if c.destination_subnets.is_empty() {
                idx.any.push(i);
                continue;
            }
            let mut wide = false;
            for n in &c.destination_subnets {
                if n.prefix_len() == n.max_prefix_len() {
                    let v = idx.by_ip.entry(n.addr()).or_default();
                    if !v.contains(&i) {
                        v.push(i);
                    }
                } else {
                    wide = true;
                }
            }
            if wide {
                idx.by_subnet.push(i);
            }
        }
        idx
    }
}

impl Listener {
    /// The virtual host for a request's Host/:authority (port stripped by the caller,
    /// canonical). Most specific match wins: exact name, then the longest wildcard.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        self.vhost_index.get(host).map(|i| &self.virtual_hosts[*i])
    }

    /// The TLS chain for a ClientHello's SNI (if any) and destination address: the most
    /// specific SNI pattern's first matching chain (see [`ChainIndex`]).
    pub fn tls_chain(&self, sni: Option<&str>, dst: Option<IpAddr>) -> Option<&L4Chain> {
        let idx = &self.tls_index;
        let candidates = match sni {
            Some(s) => idx.by_sni.get(s).map(Vec::as_slice).unwrap_or(&[]),
            None => &[],
        };
        candidates
            .iter()
            .chain(&idx.any)
            .map(|i| &self.tls_chains[*i])
            .find(|c| c.matches(sni, dst))
            .or_else(|| self.tls_chains.iter().find(|c| c.matches(sni, dst)))
    }

    /// The TCP chain for a destination address: exact VIP, then wider subnets, then
    /// catch-all, each in configuration order (see [`ChainIndex`]).
    pub fn tcp_chain(&self, dst: Option<IpAddr>) -> Option<&L4Chain> {
        let idx = &self.tcp_index;
        let exact = dst
            .and_then(|ip| idx.by_ip.get(&ip))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        exact
            .iter()
            .chain(&idx.by_subnet)
            .chain(&idx.any)
            .map(|i| &self.tcp_chains[*i])
            .find(|c| c.matches(None, dst))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayServer {
    /// `<gateway ns>/<gateway name>` and the server's index or name.
    pub gateway: String,
    pub name: String,
    pub protocol: String,
    /// Server hosts as (namespace filter, host): `*/example.com` -> ("*", "example.com").
    pub hosts: Vec<ServerHost>,
    pub tls: Option<ServerTls>,
    pub bind: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerHost {
    pub namespace: String,
    pub host: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub https_redirect: bool,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<TlsProtocol>,
    pub max_protocol_version: Option<TlsProtocol>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    /// `<host>:<port>` as Envoy names it.
    pub name: String,
    /// Canonical host names and wildcards this virtual host answers for.
    pub domains: Vec<String>,
    /// First match wins.
    pub routes: Vec<HttpRoute>,
}

/// One TLS or TCP filter chain: a match and where matching connections go.
#[derive(Debug, Clone, Serialize)]
pub struct L4Chain {
    /// Where it came from: `VirtualService ns/name tls[0]` or `ServiceEntry ns/name`.
    pub source: String,
    /// TLS only; empty = any SNI (or none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// VirtualService `sniHosts` semantics: `*.foo.com` also matches `foo.com`
    /// (`istio-egress-spec.md` §3). ServiceEntry hosts use plain wildcard matching, as
    /// Envoy's `server_names` do.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sni_wildcard_matches_apex: bool,
    /// Empty = any destination address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<IpNet>,
    pub route: Vec<WeightedCluster>,
}

impl L4Chain {
    pub fn matches(&self, sni: Option<&str>, dst: Option<IpAddr>) -> bool {
        let sni_ok = self.sni_hosts.is_empty()
            || sni.is_some_and(|s| {
                self.sni_hosts.iter().any(|p| {
                    if self.sni_wildcard_matches_apex {
                        host::sni_matches(p, s)
                    } else {
                        host::matches(p, s)
                    }
                })
            });
        let dst_ok = self.destination_subnets.is_empty()
            || dst.is_some_and(|ip| self.destination_subnets.iter().any(|n| n.contains(&ip)));
        sni_ok && dst_ok
    }
}

// ===== HTTP routes =====

#[derive(Debug, Clone, Serialize)]
pub struct HttpRoute {
    /// `<vs ns>.<vs name>.<index>` (Istio's route name in access logs), or `default` for a
    /// service with no VirtualService, `allow_any` / `block_all` never appear here.
    pub name: String,
    /// OR of matches; empty = match everything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    pub action: RouteAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StrMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StrMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StrMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StrMatch>,
    /// Header name (lower case) -> match; `None` = presence only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Option<StrMatch>)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<(String, Option<StrMatch>)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, Option<StrMatch>)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
}

/// An Istio `StringMatch`, compiled. Regexes match the whole value (Envoy's `safe_regex`).
#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl StrMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(s) => v == s,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(v),
        }
    }

    /// Case-insensitive for `ignoreUriCase` (exact and prefix only, as Istio).
    pub fn matches_ignore_case(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(s) => v.eq_ignore_ascii_case(s),
            StrMatch::Prefix(p) => {
                v.len() >= p.len() && v.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl Serialize for StrMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            StrMatch::Exact(v) => m.serialize_entry("exact", v)?,
            StrMatch::Prefix(v) => m.serialize_entry("prefix", v)?,
            // Shown as written by the user, without our anchoring.
            StrMatch::Regex(r) => {
                let p = r.as_str();
                let p = p
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(")$"))
                    .unwrap_or(p);
                m.serialize_entry("regex", p)?
            }
        }
        m.end()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Weighted destinations (weights are relative shares; a single destination gets all).
    Route(Vec<WeightedCluster>),
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightedCluster {
    /// `outbound|<port>|<subset>|<host>`.
    pub cluster: String,
    pub weight: u32,
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub derive_port_from_request: bool,
    pub scheme: Option<String>,
    /// Default 301, as Istio.
    pub code: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// (pattern, replacement) for `uriRegexRewrite`.
    pub uri_regex: Option<(String, String)>,
}

/// Istio's retry policy. With no `retries` block Istio still retries: 2 attempts on
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
/// (or `meshConfig.defaultHttpRetryPolicy`).
#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    pub retry_ignore_previous_hosts: bool,
    pub backoff: Option<Duration>,
}

/// Istio's `retryOn` (Envoy's `retry_on` plus bare status codes for
/// `retriable_status_codes`), parsed once when the snapshot is compiled so the data path tests
/// bits instead of splitting a string per request. It serializes as the string it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    raw: String,
    conditions: u16,
    /// Bare status codes (`"503,429"`).
    codes: Vec<u16>,
}

impl RetryOn {
    pub const FIVE_XX: u16 = 1;
    pub const GATEWAY_ERROR: u16 = 1 << 1;
    pub const RESET: u16 = 1 << 2;
    pub const CONNECT_FAILURE: u16 = 1 << 3;
    pub const RETRIABLE_4XX: u16 = 1 << 4;
    pub const REFUSED_STREAM: u16 = 1 << 5;
    pub const CANCELLED: u16 = 1 << 6;
    pub const DEADLINE_EXCEEDED: u16 = 1 << 7;
    pub const RESOURCE_EXHAUSTED: u16 = 1 << 8;
    pub const UNAVAILABLE: u16 = 1 << 9;
    /// Any other non-empty condition (`retriable-status-codes`, `retriable-headers`, ...):
    /// it matches nothing by itself but, like every condition other than
    /// `connect-failure`, means the request body may have to be replayed.
    pub const OTHER: u16 = 1 << 10;
    /// The gRPC conditions, which read the response's `grpc-status`.
    pub const GRPC: u16 =
        Self::CANCELLED | Self::DEADLINE_EXCEEDED | Self::RESOURCE_EXHAUSTED | Self::UNAVAILABLE;

    pub fn parse(s: &str) -> RetryOn {
        let mut on = RetryOn {
            raw: s.to_string(),
            ..RetryOn::default()
        };
        for cond in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            on.conditions |= match cond {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "reset" => Self::RESET,
                "connect-failure" => Self::CONNECT_FAILURE,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "refused-stream" => Self::REFUSED_STREAM,
                "cancelled" => Self::CANCELLED,
                "deadline-exceeded" => Self::DEADLINE_EXCEEDED,
                "resource-exhausted" => Self::RESOURCE_EXHAUSTED,
                "unavailable" => Self::UNAVAILABLE,
                code => {
                    if let Ok(c) = code.parse::<u16>() {
                        on.codes.push(c);
                    }
                    Self::OTHER
                }
            };
        }
        on
    }

    /// Is any of `bits` listed?
    pub fn any(&self, bits: u16) -> bool {
        self.conditions & bits != 0
    }

    pub fn codes(&self) -> &[u16] {
        &self.codes
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// (delay, percent of requests)
    pub delay: Option<(Duration, f64)>,
    /// (HTTP status, percent of requests)
    pub abort: Option<(u16, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    pub cluster: String,
    pub percent: f64,
}

// ===== Clusters =====

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// `outbound|<port>|<subset>|<host>`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
    /// The ServiceEntry the host comes from (`ns/name`); `None` when the host is unknown to
    /// this proxy (such a cluster has no endpoints: requests to it fail with 503 `UH`).
    pub service: Option<String>,
    pub location: Location,
    pub resolution: Resolution,
    /// Upstream port when the endpoints do not say: `targetPort`, else the port number.
    pub target_port: u16,
    /// Speak HTTP/2 to the upstream: the service port is HTTP2/GRPC/GRPC-WEB, or the
    /// DestinationRule says `h2UpgradePolicy: UPGRADE` (Istio). Otherwise HTTP/1.1, unless
    /// `useClientProtocol` and the client speaks HTTP/2.
    pub http2: bool,
    pub endpoints: Vec<Endpoint>,
    pub policy: ClusterPolicy,
    /// DestinationRule(s) that shaped `policy` (`ns/name`).
    pub destination_rule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// IP, DNS name (DNS resolutions) or `unix:///path`.
    pub address: String,
    pub port: u16,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Locality failover priority (0 = most preferred) from the DestinationRule's
    /// `localityLbSetting` (`failover` / `failoverPriority`) and the proxy's locality; all 0
    /// when locality failover is not active (Istio needs `outlierDetection` for it).
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Load-balancing weight after `localityLbSetting.distribute` (the locality's share split
    /// over its endpoints by `weight`); `None` = `weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb_weight: Option<u32>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Endpoint {
    /// The weight load balancing uses (0: `distribute` gives this locality no traffic).
    pub fn effective_weight(&self) -> u32 {
        match self.lb_weight {
            Some(w) => w,
            None => self.weight.max(1),
        }
    }
}

/// The DestinationRule traffic policy for one cluster after Istio's merge (subset over
/// top-level; port-level settings replacing whole components).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterPolicy {
    pub load_balancer: LoadBalancer,
    pub connection_pool: ConnectionPool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: UpstreamTls,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// UNSPECIFIED and LEAST_CONN are Istio's LEAST_REQUEST.
    Simple(SimpleLb),
    ConsistentHash(ConsistentHash),
}

impl Default for LoadBalancer {
    fn default() -> Self {
        LoadBalancer::Simple(SimpleLb::LeastRequest)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsistentHash {
    pub key: HashKey,
    /// `ring_hash` (default, minimum ring size 1024) or `maglev` (table size 65537).
    pub algorithm: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

/// Istio defaults: effectively unlimited, connect timeout 10s, idle timeout 1h.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionPool {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub max_connection_duration: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub http1_max_pending_requests: u32,
    pub http2_max_requests: u32,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    pub max_retries: u32,
    pub http_idle_timeout: Duration,
    pub max_concurrent_streams: Option<u32>,
    pub use_client_protocol: bool,
    pub h2_upgrade: bool,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_connections: u32::MAX,
            connect_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Duration::from_secs(3600),
            max_connection_duration: None,
            tcp_keepalive: None,
            http1_max_pending_requests: u32::MAX,
            http2_max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            http_idle_timeout: Duration::from_secs(3600),
            max_concurrent_streams: None,
            use_client_protocol: false,
            h2_upgrade: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// Present only when the DestinationRule has an `outlierDetection` block (Istio).
#[derive(Debug, Clone, Serialize)]
pub struct OutlierDetection {
    /// Default 5; 0 disables.
    pub consecutive_5xx_errors: u32,
    /// Default disabled (0).
    pub consecutive_gateway_errors: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failures: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
    /// `outlierDetectionHttpErrorCodes`: when set, the statuses that count as errors for
    /// `consecutive5xxErrors` instead of every 5xx.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_error_codes: Vec<u16>,
}

/// TLS towards the upstream (DestinationRule `tls`).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamTls {
    pub mode: ClientTlsMode,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub credential_name: Option<String>,
    /// How the server certificate is checked. egret verifies by default: the given CA, else
    /// the system roots; only `insecureSkipVerify: true` turns it off.
    pub verify: Verify,
    pub ca_crl: Option<String>,
    /// SANs to require; empty = the SNI / authority.
    pub subject_alt_names: Vec<String>,
    /// SNI to send; `None` = the request's Host/:authority (Istio auto-SNI).
    pub sni: Option<String>,
    /// Set when egret chose mutual TLS itself: a sidecar always speaks ISTIO_MUTUAL to
    /// MESH_INTERNAL destinations (its egress gateways), even where Istio would send plaintext
    /// because no DestinationRule asked for ISTIO_MUTUAL (`istio-egress-spec.md` §10.4).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auto_mtls: bool,
    /// Why this proxy cannot originate TLS for the cluster at all (requests to it fail with
    /// 503 and this reason; the rest of the configuration is served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unusable: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            mode: ClientTlsMode::Disable,
            client_certificate: None,
            private_key: None,
            credential_name: None,
            verify: Verify::SystemRoots,
            ca_crl: None,
            subject_alt_names: Vec::new(),
            sni: None,
            auto_mtls: false,
            unusable: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    SystemRoots,
    CaFile(String),
    /// The CA of a `credentialName` credential (`ca.crt`, or the `<name>-cacert` credential).
    Credential(String),
    /// The mesh trust bundle (ISTIO_MUTUAL).
    MeshRoots,
    InsecureSkip,
}

// ===== Security policies =====

#[derive(Debug, Clone, Serialize)]
pub struct AuthzPolicy {
    /// `ns/name`.
    pub name: String,
    pub action: egret_config::types::AuthzAction,
    pub provider: Option<String>,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    pub dry_run: bool,
    /// `None`: no rules (never matches). Rules are kept as written; the policy engine
    /// compiles them.
    pub rules: Option<Vec<AuthzRule>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthzRule {
    pub from: Vec<egret_config::types::Source>,
    pub to: Vec<egret_config::types::Operation>,
    pub when: Vec<egret_config::types::Condition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestAuthn {
    pub name: String,
    pub jwt_rules: Vec<egret_config::types::JwtRule>,
}

// ===== Lookup =====

impl Snapshot {
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.index.listeners.get(&port).map(|i| &self.listeners[*i])
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.index.clusters.get(name).map(|i| &self.clusters[*i])
    }

    /// Build the lookup indexes (done by `compile`; needed again after deserializing).
    pub fn build_index(&mut self) {
        self.index.listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.port, i))
            .collect();
        self.index.clusters = self
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        for l in &mut self.listeners {
            let mut idx = HostIndex::new();
            for (i, vh) in l.virtual_hosts.iter().enumerate() {
                for d in &vh.domains {
                    idx.insert(d, i);
                }
            }
            idx.finish();
            l.vhost_index = idx;
            l.tls_index = ChainIndex::build_tls(&l.tls_chains);
            l.tcp_index = ChainIndex::build_tcp(&l.tcp_chains);
        }
    }
}

/// `outbound|<port>|<subset>|<host>`, Envoy's cluster name as Istio writes it.
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}
