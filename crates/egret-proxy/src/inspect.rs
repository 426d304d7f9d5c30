//! What a running proxy says about itself: the admin endpoints `/server_info`, `/listeners`,
//! `/routes`, `/clusters` and `/certs` (Envoy's admin views that `istioctl proxy-config`
//! reads), and `egret proxy-config`, which renders them as tables.
//!
//! Every view is computed when it is asked for, from the current [`Runtime`] (loaded once per
//! request from the `ArcSwap`) and the proxy's shared state; nothing is recorded on the request
//! path for them. The JSON field names are a stable interface (docs/proxy-config.md): add
//! fields, never rename or remove them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use egret_config::types::{ClientTlsMode, Resolution, SimpleLb};
use egret_model::Role;
use egret_model::snapshot::{
    BLACKHOLE_CLUSTER, Cluster, HashKey, HttpMatch, HttpRoute, L4Chain, Listener, ListenerProtocol,
    LoadBalancer, OutboundMode, PASSTHROUGH_CLUSTER, RouteAction, StrMatch, Verify,
    WeightedCluster,
};
use serde::{Deserialize, Serialize};

use crate::config::Runtime;
use crate::proxy::Proxy;
use crate::tls::CredentialStore;
use crate::upstream::Upstreams;

/// Health status of an endpoint whose name did not resolve (Envoy's name: it has no host).
pub const UNHEALTHY: &str = "UNHEALTHY";

/// How long the `/clusters` view waits for one DNS name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many distinct DNS names are resolved for one `/clusters` request.
const MAX_NAMES: usize = 512;

/// What the admin endpoint knows about the process besides the snapshot: where it listens,
/// since when, and where credentials come from.
#[derive(Debug, Clone)]
pub struct ProxyInfo {
    pub started: SystemTime,
    /// Captured traffic (iptables REDIRECT), when enabled.
    pub outbound: Option<SocketAddr>,
    /// The explicit HTTP proxy, when enabled.
    pub explicit: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Gateway role: Gateway server port -> bound address, kept current across reloads.
    pub gateway: Option<Arc<Mutex<BTreeMap<u16, SocketAddr>>>>,
    pub credentials: CredentialStore,
    /// The data plane's runtime. `/clusters` resolves names there, as a request would: the
    /// resolver's connections live on the runtime that opens them, and the data plane must not
    /// come to depend on the admin's thread (which stops first on shutdown).
    pub data_runtime: Option<tokio::runtime::Handle>,
}

impl Default for ProxyInfo {
    fn default() -> Self {
        ProxyInfo {
            started: SystemTime::now(),
            outbound: None,
            explicit: None,
            admin: None,
            gateway: None,
            credentials: CredentialStore::default(),
            data_runtime: None,
        }
    }
}

// ===== /server_info =====

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub egret_version: String,
    /// `sidecar` or `gateway`.
    pub role: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The mesh identity's SPIFFE ID (from `--identity-dir`), if any.
    pub spiffe_id: Option<String>,
    /// The snapshot version (content hash) being served.
    pub config_version: String,
    /// When that snapshot was loaded (RFC 3339, UTC).
    pub config_loaded_at: String,
    pub config_loaded_at_unix: i64,
    /// Snapshots accepted since start (the first load included).
    pub config_loads: u64,
    /// Configuration changes rejected (errors); the previous snapshot kept serving.
    pub config_rejected_reloads: u64,
    /// Sidecars: `ALLOW_ANY` or `REGISTRY_ONLY`, and where it came from.
    pub outbound_traffic_policy: Option<String>,
    pub started_at: String,
    pub uptime_seconds: u64,
}

pub fn server_info(rt: &Runtime, proxy: &Proxy, info: &ProxyInfo) -> ServerInfo {
    let id = &rt.snapshot.proxy;
    let now = SystemTime::now();
    ServerInfo {
        egret_version: env!("CARGO_PKG_VERSION").to_string(),
        role: role(id.role).to_string(),
        namespace: id.namespace.clone(),
        service_account: id.service_account.clone(),
        labels: id.labels.clone(),
        spiffe_id: proxy
            .mesh
            .as_ref()
            .map(|m| m.store().spiffe_id().to_string()),
        config_version: rt.snapshot.version.clone(),
        config_loaded_at: rfc3339(rt.loaded_at),
        config_loaded_at_unix: unix(rt.loaded_at),
        config_loads: proxy.metrics.config_loaded.get(),
        config_rejected_reloads: proxy.metrics.config_rejected.get(),
        outbound_traffic_policy: rt.snapshot.outbound_traffic_policy.as_ref().map(|p| {
            let mode = match p.mode {
                OutboundMode::AllowAny => "ALLOW_ANY",
                OutboundMode::RegistryOnly => "REGISTRY_ONLY",
            };
            // Sources read `Sidecar ns/name`, `MeshConfig` or `default (ALLOW_ANY)`.
            let source = p.source.split(" (").next().unwrap_or(&p.source);
            format!("{mode} ({source})")
        }),
        started_at: rfc3339(info.started),
        uptime_seconds: now.duration_since(info.started).map_or(0, |d| d.as_secs()),
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Sidecar => "sidecar",
        Role::Gateway => "gateway",
    }
}

// ===== /listeners =====

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenersView {
    pub config_version: String,
    pub listeners: Vec<ListenerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    /// `outbound_capture` (iptables REDIRECT target), `explicit_proxy`, `admin`, `port` (a
    /// sidecar's per-destination-port listener, reached through the first two) or
    /// `gateway_server` (a Gateway server port, bound).
    pub kind: String,
    /// The bound socket; `None` for a sidecar's per-port listeners, which have no socket of
    /// their own.
    pub address: Option<String>,
    /// The port it serves (for `port` listeners: the destination port).
    pub port: u16,
    /// `HTTP`, `TLS`, `TCP` or `AUTO` (sniffed).
    pub protocol: String,
    /// Filter chains in evaluation order: what matches, where it goes.
    pub chains: Vec<ChainView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainView {
    #[serde(rename = "match")]
    pub matches: String,
    pub destination: String,
}

pub fn listeners(rt: &Runtime, info: &ProxyInfo) -> ListenersView {
    let snap = &rt.snapshot;
    let mut out = Vec::new();
    let unmatched = match snap.outbound_traffic_policy.as_ref().map(|p| p.mode) {
        Some(OutboundMode::AllowAny) => Some(PASSTHROUGH_CLUSTER),
        Some(OutboundMode::RegistryOnly) => Some(BLACKHOLE_CLUSTER),
        None => None,
    };
    if let Some(a) = info.outbound {
        out.push(ListenerView {
            name: "virtualOutbound".into(),
            kind: "outbound_capture".into(),
            address: Some(a.to_string()),
            port: a.port(),
            protocol: "AUTO".into(),
            chains: vec![ChainView {
                matches: "ALL (original destination)".into(),
                destination: format!(
                    "the listener of the destination port; none: {}",
                    unmatched.unwrap_or(BLACKHOLE_CLUSTER)
                ),
            }],
        });
    }
    if let Some(a) = info.explicit {
        out.push(ListenerView {
            name: "explicit_proxy".into(),
            kind: "explicit_proxy".into(),
            address: Some(a.to_string()),
            port: a.port(),
            protocol: "HTTP".into(),
            chains: vec![ChainView {
                matches: "CONNECT host:port; absolute-form HTTP".into(),
                destination: format!(
                    "the listener of the requested port; none: {}",
                    unmatched.unwrap_or(BLACKHOLE_CLUSTER)
                ),
            }],
        });
    }
    let bound: BTreeMap<u16, SocketAddr> = info
        .gateway
        .as_ref()
        .and_then(|g| g.lock().ok().map(|m| m.clone()))
        .unwrap_or_default();
    for l in &snap.listeners {
        let gateway = !l.servers.is_empty() || snap.proxy.role == Role::Gateway;
        let mut chains = listener_chains(l);
        if let Some(u) = unmatched {
            chains.push(ChainView {
                matches: "ALL (nothing above matched)".into(),
                destination: format!("Cluster: {u}"),
            });
        }
        out.push(ListenerView {
            name: l.name.clone(),
            kind: if gateway { "gateway_server" } else { "port" }.into(),
            address: bound.get(&l.port).map(SocketAddr::to_string),
            port: l.port,
            protocol: protocol(l.protocol).into(),
            chains,
        });
    }
    if let Some(a) = info.admin {
        out.push(ListenerView {
            name: "admin".into(),
            kind: "admin".into(),
            address: Some(a.to_string()),
            port: a.port(),
            protocol: "HTTP".into(),
            chains: vec![ChainView {
                matches: "/ready /server_info /listeners /routes /clusters /certs /config_dump /metrics /logging".into(),
                destination: "admin".into(),
            }],
        });
    }
    ListenersView {
        config_version: snap.version.clone(),
        listeners: out,
    }
}

fn protocol(p: ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Http => "HTTP",
        ListenerProtocol::Tls => "TLS",
        ListenerProtocol::Tcp => "TCP",
        ListenerProtocol::Auto => "AUTO",
    }
}

fn listener_chains(l: &Listener) -> Vec<ChainView> {
    let mut chains = Vec::new();
    for s in &l.servers {
        let hosts: Vec<String> = s
            .hosts
            .iter()
            .map(|h| format!("{}/{}", h.namespace, h.host))
            .collect();
        let tls = s
            .tls
            .as_ref()
            .map(|t| format!(" TLS {}", t.mode.as_str()))
            .unwrap_or_default();
        chains.push(ChainView {
            matches: format!("Server {} {}{tls}", s.protocol, hosts.join(",")),
            destination: format!("Gateway {} server {}", s.gateway, s.name),
        });
    }
    if !l.virtual_hosts.is_empty() {
        chains.push(ChainView {
            matches: "HTTP (http/1.1, h2c)".into(),
            destination: match l.virtual_hosts.len() {
                1 => format!("Route: {} (1 virtual host)", l.port),
                n => format!("Route: {} ({n} virtual hosts)", l.port),
            },
        });
    }
    for c in &l.tls_chains {
        chains.push(ChainView {
            matches: l4_match(c, true),
            destination: destinations_text(&c.route),
        });
    }
    for c in &l.tcp_chains {
        chains.push(ChainView {
            matches: l4_match(c, false),
            destination: destinations_text(&c.route),
        });
    }
    chains
}

fn l4_match(c: &L4Chain, tls: bool) -> String {
    let mut parts = Vec::new();
    if tls {
        if c.sni_hosts.is_empty() {
            parts.push("TLS (any SNI)".to_string());
        } else {
            parts.push(format!("SNI: {}", c.sni_hosts.join(",")));
        }
    }
    if !c.destination_subnets.is_empty() {
        let nets: Vec<String> = c
            .destination_subnets
            .iter()
            .map(ToString::to_string)
            .collect();
        parts.push(format!("Addr: {}", nets.join(",")));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

fn destinations_text(ws: &[WeightedCluster]) -> String {
    match ws {
        [] => "none".into(),
        [one] => format!("Cluster: {}", one.cluster),
        many => {
            let total: u64 = many.iter().map(|w| u64::from(w.weight)).sum::<u64>().max(1);
            let parts: Vec<String> = many
                .iter()
                .map(|w| format!("{} {}%", w.cluster, u64::from(w.weight) * 100 / total))
                .collect();
            format!("Clusters: {}", parts.join(", "))
        }
    }
}

// ===== /routes =====

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutesView {
    pub config_version: String,
    pub routes: Vec<RouteConfigView>,
}

/// The routes of one listener port (Envoy's route configuration is named by the port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteConfigView {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub virtual_hosts: Vec<VirtualHostView>,
    /// TLS (SNI) routes, in evaluation order.
    pub tls_routes: Vec<L4RouteView>,
    /// TCP routes, in evaluation order.
    pub tcp_routes: Vec<L4RouteView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualHostView {
    pub name: String,
    pub domains: Vec<String>,
    /// First match wins.
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    /// `<vs ns>.<vs name>.<index>`, or `default`.
    pub name: String,
    /// The match, summarised (docs/proxy-config.md): `/*` matches everything.
    #[serde(rename = "match")]
    pub matches: String,
    /// `route`, `redirect` or `direct_response`.
    pub action: String,
    pub destinations: Vec<DestinationView>,
    /// Redirect target or direct-response status.
    pub detail: Option<String>,
    pub timeout: Option<String>,
    pub retry_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationView {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L4RouteView {
    /// `VirtualService ns/name tls[0]`, `ServiceEntry ns/name`, ...
    pub source: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub destinations: Vec<DestinationView>,
}

pub fn routes(rt: &Runtime) -> RoutesView {
    let snap = &rt.snapshot;
    let routes = snap
        .listeners
        .iter()
        .map(|l| RouteConfigView {
            name: l.port.to_string(),
            port: l.port,
            protocol: protocol(l.protocol).into(),
            virtual_hosts: l
                .virtual_hosts
                .iter()
                .map(|vh| VirtualHostView {
                    name: vh.name.clone(),
                    domains: vh.domains.clone(),
                    routes: vh.routes.iter().map(route_view).collect(),
                })
                .collect(),
            tls_routes: l.tls_chains.iter().map(|c| l4_route(c, true)).collect(),
            tcp_routes: l.tcp_chains.iter().map(|c| l4_route(c, false)).collect(),
        })
        .collect();
    RoutesView {
        config_version: snap.version.clone(),
        routes,
    }
}

fn l4_route(c: &L4Chain, tls: bool) -> L4RouteView {
    L4RouteView {
        source: c.source.clone(),
        matches: l4_match(c, tls),
        destinations: c.route.iter().map(destination).collect(),
    }
}

fn destination(w: &WeightedCluster) -> DestinationView {
    DestinationView {
        cluster: w.cluster.clone(),
        weight: w.weight,
    }
}

fn route_view(r: &HttpRoute) -> RouteView {
    let matches = if r.matches.is_empty() {
        "/*".to_string()
    } else {
        r.matches
            .iter()
            .map(http_match)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let (action, destinations, detail) = match &r.action {
        RouteAction::Route(ws) => ("route", ws.iter().map(destination).collect(), None),
        RouteAction::Redirect(rd) => {
            let mut target = String::new();
            if let Some(s) = &rd.scheme {
                target.push_str(s);
                target.push_str("://");
            }
            if let Some(a) = &rd.authority {
                target.push_str(a);
            }
            if let Some(p) = rd.port {
                target.push_str(&format!(":{p}"));
            }
            if let Some(u) = &rd.uri {
                target.push_str(u);
            }
            (
                "redirect",
                Vec::new(),
                Some(format!("{} {target}", rd.code)),
            )
        }
        RouteAction::DirectResponse { status, .. } => {
            ("direct_response", Vec::new(), Some(status.to_string()))
        }
    };
    RouteView {
        name: r.name.clone(),
        matches,
        action: action.into(),
        destinations,
        detail,
        timeout: r.timeout.as_ref().map(ToString::to_string),
        retry_attempts: r.retries.attempts,
    }
}

/// A `StringMatch` in a short form: `v` exact, `v*` prefix, `~re` regex.
fn str_match(m: &StrMatch) -> String {
    match m {
        StrMatch::Exact(v) => v.clone(),
        StrMatch::Prefix(v) => format!("{v}*"),
        StrMatch::Regex(_) => {
            // The serialized form is the regex as the user wrote it.
            let v = serde_json::to_value(m).unwrap_or_default();
            format!("~{}", v.get("regex").and_then(|r| r.as_str()).unwrap_or(""))
        }
    }
}

fn http_match(m: &HttpMatch) -> String {
    let mut parts = Vec::new();
    match &m.uri {
        Some(u) => parts.push(str_match(u)),
        None => parts.push("/*".into()),
    }
    if m.ignore_uri_case {
        parts.push("(ignore case)".into());
    }
    for (what, v) in [
        ("method", &m.method),
        ("scheme", &m.scheme),
        ("authority", &m.authority),
    ] {
        if let Some(v) = v {
            parts.push(format!("{what}={}", str_match(v)));
        }
    }
    for (prefix, list) in [
        ("header ", &m.headers),
        ("!header ", &m.without_headers),
        ("query ", &m.query_params),
    ] {
        for (name, v) in list {
            match v {
                Some(v) => parts.push(format!("{prefix}{name}={}", str_match(v))),
                None => parts.push(format!("{prefix}{name}")),
            }
        }
    }
    if let Some(p) = m.port {
        parts.push(format!("port={p}"));
    }
    parts.join(" ")
}

// ===== /clusters =====

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClustersView {
    pub config_version: String,
    pub clusters: Vec<ClusterView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `outbound|<port>|<subset>|<host>`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
    /// The ServiceEntry (`ns/name`); `None`: no service, requests fail with 503 `NC`.
    pub service: Option<String>,
    pub destination_rule: Option<String>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
    pub location: String,
    /// The ServiceEntry resolution: `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`.
    pub resolution: String,
    /// Envoy's cluster type for it: `ORIGINAL_DST`, `EDS`, `STRICT_DNS`, `LOGICAL_DNS`,
    /// `DYNAMIC_FORWARD_PROXY`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `PASSTHROUGH` or `CONSISTENT_HASH(...)`.
    pub lb_policy: String,
    pub http2: bool,
    pub tls: TlsView,
    pub endpoints: Vec<EndpointView>,
    /// How endpoints are found when they are not listed (NONE, DYNAMIC_DNS).
    pub endpoint_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsView {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: String,
    /// egret chose ISTIO_MUTUAL itself (a sidecar towards MESH_INTERNAL endpoints).
    pub auto_mtls: bool,
    /// SNI sent; `None` = the request's host.
    pub sni: Option<String>,
    /// `system_roots`, `ca_file:<path>`, `credential:<name>`, `mesh_roots`, `insecure_skip`.
    pub verify: String,
    /// The client certificate presented (MUTUAL): `file-cert:<cert>~<key>` or
    /// `kubernetes://<credentialName>`, as Istio names them.
    pub client_certificate: Option<String>,
    /// TLS is needed and this proxy has a configuration for it (false: requests fail, see
    /// `unusable`).
    pub ready: bool,
    pub unusable: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    /// `ip:port`; for a name that did not resolve, `name:port`.
    pub address: String,
    /// The DNS name it was resolved from (DNS clusters).
    pub hostname: Option<String>,
    pub locality: Option<String>,
    pub weight: u32,
    /// `HEALTHY`; `UNHEALTHY` when the name does not resolve (see `resolution_error`) or
    /// when [`Upstreams::endpoint_health`] says so (outlier detection ejected it).
    pub health: String,
    pub resolution_error: Option<String>,
}

pub async fn clusters(rt: &Runtime, up: &Arc<Upstreams>, info: &ProxyInfo) -> ClustersView {
    let snap = &rt.snapshot;
    let mut names = BTreeSet::new();
    for c in &snap.clusters {
        if matches!(c.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            for ep in &c.endpoints {
                if is_name(&ep.address) {
                    names.insert(ep.address.clone());
                }
            }
        }
    }
    let resolved = resolve_all(up, names, info.data_runtime.as_ref()).await;
    let clusters = snap
        .clusters
        .iter()
        .map(|c| cluster_view(rt, c, up, &resolved))
        .collect();
    ClustersView {
        config_version: snap.version.clone(),
        clusters,
    }
}

fn is_name(address: &str) -> bool {
    address.trim_matches(['[', ']']).parse::<IpAddr>().is_err() && !address.starts_with("unix://")
}

/// Resolve each name as the data path would (a gateway refuses forbidden ranges), through the
/// same resolver and its cache, concurrently and each within [`RESOLVE_TIMEOUT`], on the data
/// plane's runtime when given.
async fn resolve_all(
    up: &Arc<Upstreams>,
    names: BTreeSet<String>,
    runtime: Option<&tokio::runtime::Handle>,
) -> HashMap<String, Result<Vec<IpAddr>, String>> {
    let mut out = HashMap::new();
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in names.into_iter().enumerate() {
        if i >= MAX_NAMES {
            out.insert(
                name,
                Err(format!("not resolved: more than {MAX_NAMES} DNS names")),
            );
            continue;
        }
        let up = up.clone();
        let task = async move {
            let r = tokio::time::timeout(RESOLVE_TIMEOUT, async {
                if up.gateway {
                    up.resolve_public(&name).await
                } else {
                    up.resolve(&name).await
                }
            })
            .await;
            let r = match r {
                Ok(Ok(ips)) => Ok(ips),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
            };
            (name, r)
        };
        match runtime {
            Some(h) => set.spawn_on(task, h),
            None => set.spawn(task),
        };
    }
    while let Some(joined) = set.join_next().await {
        if let Ok((name, r)) = joined {
            out.insert(name, r);
        }
    }
    out
}

fn cluster_view(
    rt: &Runtime,
    c: &Cluster,
    up: &Upstreams,
    resolved: &HashMap<String, Result<Vec<IpAddr>, String>>,
) -> ClusterView {
    let kind = match c.resolution {
        Resolution::None => "ORIGINAL_DST",
        Resolution::Static => "EDS",
        Resolution::Dns => "STRICT_DNS",
        Resolution::DnsRoundRobin => "LOGICAL_DNS",
        Resolution::DynamicDns => "DYNAMIC_FORWARD_PROXY",
    };
    let lb_policy = match &c.policy.load_balancer {
        LoadBalancer::Simple(SimpleLb::Unspecified | SimpleLb::LeastConn) => {
            "LEAST_REQUEST".to_string()
        }
        LoadBalancer::Simple(s) => s.as_str().to_string(),
        LoadBalancer::ConsistentHash(h) => {
            let key = match &h.key {
                HashKey::Header(n) => format!("header {n}"),
                HashKey::Cookie { name, .. } => format!("cookie {name}"),
                HashKey::SourceIp => "source ip".into(),
                HashKey::QueryParameter(q) => format!("query {q}"),
            };
            format!("CONSISTENT_HASH({key}, {})", h.algorithm)
        }
    };
    let mut endpoints = Vec::new();
    let mut endpoint_note = None;
    match c.resolution {
        Resolution::None => {
            endpoint_note = Some("the original destination of each connection".into());
        }
        Resolution::DynamicDns => {
            endpoint_note = Some(if egret_model::host::is_wildcard(&c.host) {
                "the requested host, resolved per request".into()
            } else {
                format!("{}, resolved per request", c.host)
            });
        }
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => {
            let state = rt.clusters.get(&c.name);
            for (index, ep) in c.endpoints.iter().enumerate() {
                let base = |address: String, health: &str, err: Option<String>| EndpointView {
                    address,
                    hostname: is_name(&ep.address).then(|| ep.address.clone()),
                    locality: ep.locality.clone(),
                    weight: ep.weight,
                    health: health.to_string(),
                    resolution_error: err,
                };
                if !is_name(&ep.address) {
                    match ep.address.trim_matches(['[', ']']).parse::<IpAddr>() {
                        Ok(ip) => {
                            let addr = SocketAddr::new(ip, ep.port);
                            let health = up.endpoint_health(state, index);
                            endpoints.push(base(addr.to_string(), health, None));
                        }
                        // unix:// endpoints: listed, not dialled by this proxy.
                        Err(_) => endpoints.push(base(ep.address.clone(), "UNKNOWN", None)),
                    }
                    continue;
                }
                match resolved.get(&ep.address) {
                    Some(Ok(ips)) => {
                        // LOGICAL_DNS (DNS_ROUND_ROBIN) uses the first address only.
                        let n = if c.resolution == Resolution::DnsRoundRobin {
                            1
                        } else {
                            ips.len()
                        };
                        for ip in ips.iter().take(n) {
                            let addr = SocketAddr::new(*ip, ep.port);
                            let health = up.endpoint_health(state, index);
                            endpoints.push(base(addr.to_string(), health, None));
                        }
                    }
                    Some(Err(e)) => endpoints.push(base(
                        format!("{}:{}", ep.address, ep.port),
                        UNHEALTHY,
                        Some(e.clone()),
                    )),
                    None => endpoints.push(base(
                        format!("{}:{}", ep.address, ep.port),
                        UNHEALTHY,
                        Some("not resolved".into()),
                    )),
                }
            }
            if c.endpoints.is_empty() {
                endpoint_note = Some("no endpoints: requests fail with 503 UH".into());
            }
        }
    }
    if c.service.is_none() {
        endpoint_note = Some("no ServiceEntry for this host: requests fail with 503 NC".into());
    }
    ClusterView {
        name: c.name.clone(),
        host: c.host.clone(),
        port: c.port,
        subset: c.subset.clone(),
        service: c.service.clone(),
        destination_rule: c.destination_rule.clone(),
        location: c.location.as_str().into(),
        resolution: c.resolution.as_str().into(),
        kind: kind.into(),
        lb_policy,
        http2: c.http2,
        tls: tls_view(rt, c),
        endpoints,
        endpoint_note,
    }
}

fn tls_view(rt: &Runtime, c: &Cluster) -> TlsView {
    let t = &c.policy.tls;
    let state = rt.clusters.get(&c.name);
    let ready = match t.mode {
        ClientTlsMode::Disable => true,
        ClientTlsMode::Simple | ClientTlsMode::Mutual => state.is_some_and(|s| s.tls.is_some()),
        ClientTlsMode::IstioMutual => state.is_some_and(|s| s.mesh.is_some()),
    };
    let unusable = t.unusable.clone().or_else(|| {
        (t.mode == ClientTlsMode::IstioMutual && !ready)
            .then(|| "ISTIO_MUTUAL needs the mesh identity (--identity-dir)".to_string())
    });
    TlsView {
        mode: t.mode.as_str().into(),
        auto_mtls: t.auto_mtls,
        sni: t.sni.clone(),
        verify: match &t.verify {
            Verify::SystemRoots => "system_roots".into(),
            Verify::CaFile(p) => format!("ca_file:{p}"),
            Verify::Credential(n) => format!("credential:{n}"),
            Verify::MeshRoots => "mesh_roots".into(),
            Verify::InsecureSkip => "insecure_skip".into(),
        },
        client_certificate: client_cert_name(c),
        ready,
        unusable,
    }
}

/// The client certificate a MUTUAL cluster presents, named as Istio's SDS names it; the files
/// win over `credentialName`, as in [`crate::tls::client_config`].
fn client_cert_name(c: &Cluster) -> Option<String> {
    let t = &c.policy.tls;
    if t.mode != ClientTlsMode::Mutual {
        return None;
    }
    match (&t.client_certificate, &t.private_key, &t.credential_name) {
        (Some(cert), Some(key), _) => Some(format!("file-cert:{cert}~{key}")),
        (_, _, Some(name)) => Some(format!("kubernetes://{name}")),
        _ => None,
    }
}

// ===== /certs =====

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertsView {
    /// The mesh identity (X.509-SVID), when the proxy has one.
    pub workload: Option<WorkloadCertView>,
    /// The mesh trust bundle's roots.
    pub trust_bundle: Vec<CertView>,
    /// Client certificates DestinationRules make this proxy present (TLS origination MUTUAL).
    pub client_certificates: Vec<ClientCertView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadCertView {
    pub spiffe_id: String,
    pub identity_dir: String,
    /// Certificates in the chain presented (leaf first).
    pub chain_length: usize,
    pub certificate: CertView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertView {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    /// Lower-case hex.
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub not_after_unix: i64,
    /// Negative once expired.
    pub seconds_until_expiry: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientCertView {
    /// `file-cert:<cert>~<key>` or `kubernetes://<credentialName>`.
    pub name: String,
    /// The certificate file.
    pub path: String,
    pub clusters: Vec<String>,
    pub destination_rules: Vec<String>,
    /// The certificate in use (from the loaded TLS configuration; read from `path` only if
    /// none is loaded).
    pub certificate: Option<CertView>,
    /// Why it could not be described (unreadable file, no `--credentials-dir`, ...).
    pub error: Option<String>,
}

pub fn certs(rt: &Runtime, proxy: &Proxy, info: &ProxyInfo) -> CertsView {
    let now = SystemTime::now();
    let mut workload = None;
    let mut trust_bundle = Vec::new();
    if let Some(mesh) = &proxy.mesh {
        let store = mesh.store();
        let key = store.certified_key();
        let leaf = store.leaf();
        let certificate = match key
            .cert
            .first()
            .map(|d| egret_identity::certinfo::summarize(d))
        {
            Some(Ok(s)) => cert_view(&s, now),
            // The store validated this leaf when it loaded it; fall back to what it recorded.
            _ => CertView {
                subject: String::new(),
                issuer: String::new(),
                sans: vec![format!("URI:{}", leaf.spiffe_id)],
                serial: hex(&leaf.serial),
                not_before: rfc3339(leaf.not_before),
                not_after: rfc3339(leaf.not_after),
                not_after_unix: unix(leaf.not_after),
                seconds_until_expiry: seconds_until(leaf.not_after, now),
            },
        };
        workload = Some(WorkloadCertView {
            spiffe_id: leaf.spiffe_id.to_string(),
            identity_dir: store.dir().display().to_string(),
            chain_length: key.cert.len(),
            certificate,
        });
        for der in store.trust_bundle().root_certs().iter() {
            if let Ok(s) = egret_identity::certinfo::summarize(der) {
                trust_bundle.push(cert_view(&s, now));
            }
        }
    }
    // One entry per certificate, with every cluster that presents it.
    let mut by_name: BTreeMap<String, ClientCertView> = BTreeMap::new();
    for c in &rt.snapshot.clusters {
        let Some(name) = client_cert_name(c) else {
            continue;
        };
        let t = &c.policy.tls;
        let entry = by_name.entry(name.clone()).or_insert_with(|| {
            let (path, path_err) = match (&t.client_certificate, &t.credential_name) {
                (Some(p), _) if t.private_key.is_some() => (p.clone(), None),
                (_, Some(cred)) => match &info.credentials.dir {
                    Some(d) => (d.join(cred).join("tls.crt").display().to_string(), None),
                    None => (
                        String::new(),
                        Some(format!(
                            "credentialName {cred:?}: credentials are read from --credentials-dir, which is not set"
                        )),
                    ),
                },
                _ => (String::new(), None),
            };
            let in_use = rt
                .clusters
                .get(&c.name)
                .and_then(|s| s.tls.as_ref())
                .and_then(|cfg| {
                    let schemes = egret_identity::crypto_provider()
                        .signature_verification_algorithms
                        .supported_schemes();
                    cfg.client_auth_cert_resolver.resolve(&[], &schemes)
                })
                .and_then(|k| k.cert.first().cloned());
            let described = match (in_use, path_err) {
                (Some(der), _) => {
                    egret_identity::certinfo::summarize(&der).map_err(|e| e.to_string())
                }
                (None, Some(e)) => Err(e),
                (None, None) => std::fs::read(&path)
                    .map_err(|e| format!("{path}: {e}"))
                    .and_then(|pem| {
                        egret_identity::certinfo::summarize_pem(&pem)
                            .map_err(|e| format!("{path}: {e}"))
                    })
                    .and_then(|v| v.into_iter().next().ok_or_else(|| format!("{path}: empty"))),
            };
            let (certificate, error) = match described {
                Ok(s) => (Some(cert_view(&s, now)), None),
                Err(e) => (None, Some(e)),
            };
            ClientCertView {
                name,
                path,
                clusters: Vec::new(),
                destination_rules: Vec::new(),
                certificate,
                error,
            }
        });
        entry.clusters.push(c.name.clone());
        if let Some(dr) = &c.destination_rule
            && !entry.destination_rules.contains(dr)
        {
            entry.destination_rules.push(dr.clone());
        }
    }
    CertsView {
        workload,
        trust_bundle,
        client_certificates: by_name.into_values().collect(),
    }
}

fn cert_view(s: &egret_identity::certinfo::CertSummary, now: SystemTime) -> CertView {
    CertView {
        subject: s.subject.clone(),
        issuer: s.issuer.clone(),
        sans: s.sans.clone(),
        serial: s.serial_hex(),
        not_before: rfc3339(s.not_before),
        not_after: rfc3339(s.not_after),
        not_after_unix: unix(s.not_after),
        seconds_until_expiry: seconds_until(s.not_after, now),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ===== time =====

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn seconds_until(t: SystemTime, now: SystemTime) -> i64 {
    unix(t).saturating_sub(unix(now))
}

/// `2026-11-21T13:57:46Z`: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::telemetry::accesslog::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_269_466)),
            "2026-11-21T13:57:46Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
            "9999-12-31T23:59:59Z"
        );
    }

    fn snapshot(yaml: &str) -> egret_model::Snapshot {
        let (set, _) = egret_config::ConfigSet::from_str("t.yaml", yaml);
        let (snap, d) = egret_model::compile(&set, &egret_model::ProxyIdentity::sidecar("default"));
        assert!(!d.has_errors(), "{d:?}");
        snap
    }

    #[test]
    fn route_matches_are_summarised() {
        let snap = snapshot(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 203.0.113.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.test]
  http:
  - match:
    - uri: {prefix: /v1}
      headers: {x-env: {exact: canary}}
    - uri: {regex: '/v[23]/.*'}
      method: {exact: POST}
    route: [{destination: {host: api.example.test}}]
  - directResponse: {status: 418}
",
        );
        let l = snap.listener(80).unwrap();
        let vh = l.virtual_host("api.example.test").unwrap();
        let first = route_view(&vh.routes[0]);
        assert_eq!(
            first.matches,
            "/v1* header x-env=canary | ~/v[23]/.* method=POST"
        );
        assert_eq!(first.action, "route");
        assert_eq!(
            first.destinations,
            vec![DestinationView {
                cluster: "outbound|80||api.example.test".into(),
                weight: 100
            }]
        );
        let chains = listener_chains(l);
        assert_eq!(chains[0].destination, "Route: 80 (1 virtual host)");
    }
}
