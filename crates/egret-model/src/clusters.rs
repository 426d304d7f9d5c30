//! Clusters: endpoints from ServiceEntries and traffic policy from DestinationRules
//! (`istio-egress-spec.md` §1, §2).

use egret_config::Object;
use egret_config::types::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    LoadBalancerSettings, Location, OutlierDetection as OdSpec, Resolution, SimpleLb,
    TrafficPolicy,
};

use crate::host;
use crate::scope::{Scope, Service, exported_to};
use crate::snapshot::{
    Cluster, ClusterPolicy, ConnectionPool, ConsistentHash, Endpoint, HashKey, LoadBalancer,
    OutlierDetection, TcpKeepalive, UpstreamTls, Verify, cluster_name,
};

/// Build the cluster `outbound|port|subset|host`.
pub fn build(scope: &Scope<'_>, host: &str, port: u16, subset: Option<&str>) -> Cluster {
    let svc = scope.service(host);
    let dr = find_destination_rule(scope, host, svc.map(Service::namespace));
    let (policy_spec, subset_labels) = merged_policy(dr, subset, port);
    let mut policy = compile_policy(policy_spec.as_ref(), svc);
    // Istio reads `credentialName` at a sidecar only when the DestinationRule has a
    // workloadSelector (validation warns). Otherwise the credential is ignored here; a MUTUAL
    // cluster left without a client certificate cannot be used by this proxy, and only that
    // cluster fails (Envoy rejects the one cluster, not the whole configuration).
    if scope.proxy.role == crate::identity::Role::Sidecar
        && policy.tls.credential_name.is_some()
        && dr.is_some_and(|d| d.spec.workload_selector.is_none())
    {
        policy.tls.credential_name = None;
        if matches!(policy.tls.verify, Verify::Credential(_)) {
            policy.tls.verify = Verify::SystemRoots;
        }
        if policy.tls.mode == ClientTlsMode::Mutual && policy.tls.client_certificate.is_none() {
            policy.tls.unusable = Some(
                "MUTUAL with credentialName, which a sidecar reads only when the DestinationRule has a workloadSelector".into(),
            );
        }
    }
    // Sidecars reach MESH_INTERNAL destinations — in egret, its egress gateways — only over
    // mutual TLS with mesh identities. Istio sends plaintext there unless a DestinationRule
    // says ISTIO_MUTUAL; egret upgrades (and `analyze` warns about the config).
    if scope.proxy.role == crate::identity::Role::Sidecar
        && svc.is_some_and(|s| s.location == Location::MeshInternal)
        && policy.tls.mode != ClientTlsMode::IstioMutual
    {
        policy.tls = UpstreamTls {
            mode: ClientTlsMode::IstioMutual,
            verify: Verify::MeshRoots,
            sni: policy.tls.sni.clone(),
            subject_alt_names: policy.tls.subject_alt_names.clone(),
            auto_mtls: true,
            ..UpstreamTls::default()
        };
    }
    let svc_port = svc.and_then(|s| s.port(port));
    let target_port = svc_port.and_then(|p| p.target_port).unwrap_or(port);
    let http2 = svc_port.is_some_and(|p| {
        matches!(
            p.proto,
            crate::scope::Proto::Http2 | crate::scope::Proto::Grpc | crate::scope::Proto::GrpcWeb
        )
    }) || policy.connection_pool.h2_upgrade;
    let mut endpoints = match svc {
        Some(s) => endpoints(scope, s, port, subset_labels.as_ref()),
        None => Vec::new(),
    };
    let locality_setting = policy_spec
        .as_ref()
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .or(scope.set.mesh.locality_lb_setting.as_ref());
    crate::locality::apply(
        &mut endpoints,
        locality_setting,
        policy.outlier_detection.is_some(),
        &scope.proxy.labels,
    );
    Cluster {
        name: cluster_name(port, subset, host),
        host: host.to_string(),
        port,
        subset: subset.map(str::to_string),
        service: svc.map(Service::key),
        location: svc.map(|s| s.location).unwrap_or(Location::MeshExternal),
        resolution: svc.map(|s| s.resolution).unwrap_or(Resolution::None),
        target_port,
        http2,
        endpoints,
        policy,
        destination_rule: dr.map(|d| d.key()),
    }
}

/// The DestinationRule a proxy uses for `host`: the most specific host match among DRs in the
/// proxy's namespace (a matching `workloadSelector` first), then the service's namespace,
/// then the root namespace, each only if exported to the proxy's namespace
/// (`istio-egress-spec.md` §2, §10.10).
pub fn find_destination_rule<'a>(
    scope: &Scope<'a>,
    host: &str,
    svc_ns: Option<&str>,
) -> Option<&'a Object<DestinationRule>> {
    let proxy_ns = scope.proxy.namespace.as_str();
    let defaults = &scope.set.mesh.default_destination_rule_export_to;
    let candidates = |ns: &str| -> Vec<&'a Object<DestinationRule>> {
        let Some(by_host) = scope.destination_rules.get(ns) else {
            return Vec::new();
        };
        let mut idx: Vec<usize> = by_host.matching(host).copied().collect();
        // Load order decides ties, as before the index.
        idx.sort_unstable();
        idx.into_iter()
            .map(|i| &scope.set.destination_rules[i])
            .filter(|dr| exported_to(&dr.spec.export_to, defaults, &dr.meta.namespace, proxy_ns))
            .filter(|dr| match &dr.spec.workload_selector {
                None => true,
                Some(sel) => {
                    dr.meta.namespace == proxy_ns && scope.proxy.selected_by(&sel.match_labels)
                }
            })
            .collect()
    };
    let mut order: Vec<&str> = vec![proxy_ns];
    if let Some(ns) = svc_ns
        && !order.contains(&ns)
    {
        order.push(ns);
    }
    if !order.contains(&scope.root_ns.as_str()) {
        order.push(scope.root_ns.as_str());
    }
    for ns in order {
        let drs = candidates(ns);
        if let Some(dr) = most_specific(&drs, host) {
            return Some(dr);
        }
    }
    None
}

fn most_specific<'a>(
    drs: &[&'a Object<DestinationRule>],
    host: &str,
) -> Option<&'a Object<DestinationRule>> {
    // (exact host, host length, has a workloadSelector): higher is more specific.
    type Rank = (bool, usize, bool);
    let mut best: Option<(&'a Object<DestinationRule>, Rank)> = None;
    for dr in drs {
        let Some(h) = &dr.spec.host else { continue };
        let h = host::resolve_short_name(h, &dr.meta.namespace);
        if !host::matches(&h, host) {
            continue;
        }
        // Exact beats wildcard, longer wildcard beats shorter, a selector beats none; the
        // first loaded wins ties.
        let rank = (
            !host::is_wildcard(&h),
            h.len(),
            dr.spec.workload_selector.is_some(),
        );
        if best.as_ref().is_none_or(|(_, r)| rank > *r) {
            best = Some((dr, rank));
        }
    }
    best.map(|(d, _)| d)
}

/// Istio's `MergeTrafficPolicy`: start from the DR-level policy with its own port-level
/// settings applied, override with the subset's components that are set, then apply the
/// subset's port-level settings. Port-level settings replace load balancer, connection pool,
/// outlier detection and TLS *as a whole*: what the port-level entry omits gets the default,
/// not the DR-level value (`istio-egress-spec.md` §10.11).
fn merged_policy(
    dr: Option<&Object<DestinationRule>>,
    subset: Option<&str>,
    port: u16,
) -> (
    Option<TrafficPolicy>,
    Option<std::collections::BTreeMap<String, String>>,
) {
    let Some(dr) = dr else { return (None, None) };
    let top = dr
        .spec
        .traffic_policy
        .as_ref()
        .map(|p| apply_port_level(p, port));
    let Some(subset_name) = subset else {
        return (top, None);
    };
    let Some(sub) = dr
        .spec
        .subsets
        .iter()
        .find(|s| s.name.as_deref() == Some(subset_name))
    else {
        return (top, None);
    };
    let labels = Some(sub.labels.clone());
    let Some(sp) = &sub.traffic_policy else {
        return (top, labels);
    };
    let mut merged = top.unwrap_or_default();
    if sp.load_balancer.is_some() {
        merged.load_balancer = sp.load_balancer.clone();
    }
    if sp.connection_pool.is_some() {
        merged.connection_pool = sp.connection_pool.clone();
    }
    if sp.outlier_detection.is_some() {
        merged.outlier_detection = sp.outlier_detection.clone();
    }
    if sp.tls.is_some() {
        merged.tls = sp.tls.clone();
    }
    (Some(apply_port_level_over(merged, sp, port)), labels)
}

fn apply_port_level(p: &TrafficPolicy, port: u16) -> TrafficPolicy {
    let mut out = p.clone();
    out.port_level_settings.clear();
    apply_port_level_over(out, p, port)
}

fn apply_port_level_over(mut out: TrafficPolicy, from: &TrafficPolicy, port: u16) -> TrafficPolicy {
    if let Some(pl) = from
        .port_level_settings
        .iter()
        .find(|pl| pl.port.and_then(|p| p.number) == Some(u32::from(port)))
    {
        out.load_balancer = pl.load_balancer.clone();
        out.connection_pool = pl.connection_pool.clone();
        out.outlier_detection = pl.outlier_detection.clone();
        out.tls = pl.tls.clone();
    }
    out.port_level_settings.clear();
    out
}

fn compile_policy(p: Option<&TrafficPolicy>, svc: Option<&Service<'_>>) -> ClusterPolicy {
    let mut out = ClusterPolicy::default();
    let Some(p) = p else {
        out.tls = default_tls(svc);
        return out;
    };
    if let Some(lb) = &p.load_balancer {
        out.load_balancer = load_balancer(lb);
    }
    if let Some(cp) = &p.connection_pool {
        out.connection_pool = connection_pool(cp);
    }
    out.outlier_detection = p.outlier_detection.as_ref().map(outlier);
    out.tls = match &p.tls {
        Some(t) => upstream_tls(t, svc),
        None => default_tls(svc),
    };
    out
}

fn default_tls(svc: Option<&Service<'_>>) -> UpstreamTls {
    UpstreamTls {
        subject_alt_names: svc
            .map(|s| s.se.spec.subject_alt_names.clone())
            .unwrap_or_default(),
        ..UpstreamTls::default()
    }
}

fn load_balancer(lb: &LoadBalancerSettings) -> LoadBalancer {
    if let Some(ch) = &lb.consistent_hash {
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashKey::Cookie {
                name: c.name.clone().unwrap_or_default(),
                path: c.path.clone(),
                ttl: c.ttl,
            }
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            HashKey::SourceIp
        };
        let (algorithm, size) = match (&ch.maglev, &ch.ring_hash) {
            (Some(m), _) => ("maglev", m.table_size.unwrap_or(65537)),
            (None, Some(r)) => ("ring_hash", r.minimum_ring_size.unwrap_or(1024)),
            (None, None) => ("ring_hash", ch.minimum_ring_size.unwrap_or(1024)),
        };
        return LoadBalancer::ConsistentHash(ConsistentHash {
            key,
            algorithm: algorithm.to_string(),
            size,
        });
    }
    // UNSPECIFIED and the deprecated LEAST_CONN are Istio's LEAST_REQUEST.
    let simple = match lb.simple.unwrap_or(SimpleLb::Unspecified) {
        SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => {
            SimpleLb::LeastRequest
        }
        other => other,
    };
    LoadBalancer::Simple(simple)
}

fn connection_pool(cp: &ConnectionPoolSettings) -> ConnectionPool {
    let mut out = ConnectionPool::default();
    if let Some(t) = &cp.tcp {
        if let Some(v) = t.max_connections {
            out.max_connections = v;
        }
        if let Some(v) = t.connect_timeout {
            out.connect_timeout = v;
        }
        if let Some(v) = t.idle_timeout {
            out.tcp_idle_timeout = v;
        }
        out.max_connection_duration = t.max_connection_duration;
        out.tcp_keepalive = t.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
            probes: k.probes,
            time: k.time,
            interval: k.interval,
        });
    }
    if let Some(h) = &cp.http {
        if let Some(v) = h.http1_max_pending_requests {
            out.http1_max_pending_requests = v;
        }
        if let Some(v) = h.http2_max_requests {
            out.http2_max_requests = v;
        }
        if let Some(v) = h.max_requests_per_connection {
            out.max_requests_per_connection = v;
        }
        if let Some(v) = h.max_retries {
            out.max_retries = v;
        }
        if let Some(v) = h.idle_timeout {
            out.http_idle_timeout = v;
        }
        out.max_concurrent_streams = h.max_concurrent_streams;
        out.use_client_protocol = h.use_client_protocol.unwrap_or(false);
        out.h2_upgrade = matches!(
            h.h2_upgrade_policy,
            Some(egret_config::types::H2UpgradePolicy::Upgrade)
        );
    }
    out
}

fn outlier(o: &OdSpec) -> OutlierDetection {
    let pct = |v: Option<i32>, d: u32| v.map(|v| v.clamp(0, 100) as u32).unwrap_or(d);
    OutlierDetection {
        // `consecutiveErrors` (deprecated) is the old name for gateway errors; the
        // 5xx default applies only when neither is set.
        consecutive_5xx_errors: o
            .consecutive_5xx_errors
            .unwrap_or(if o.consecutive_errors.is_some() { 0 } else { 5 }),
        consecutive_gateway_errors: o
            .consecutive_gateway_errors
            .or(o.consecutive_errors)
            .unwrap_or(0),
        split_external_local_origin_errors: o.split_external_local_origin_errors.unwrap_or(false),
        consecutive_local_origin_failures: o.consecutive_local_origin_failures.unwrap_or(5),
        interval: o
            .interval
            .unwrap_or(egret_config::types::Duration::from_secs(10)),
        base_ejection_time: o
            .base_ejection_time
            .unwrap_or(egret_config::types::Duration::from_secs(30)),
        max_ejection_percent: pct(o.max_ejection_percent, 10),
        min_health_percent: pct(o.min_health_percent, 0),
        http_error_codes: o
            .outlier_detection_http_error_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
    }
}

fn upstream_tls(t: &ClientTlsSettings, svc: Option<&Service<'_>>) -> UpstreamTls {
    let mode = t.mode.unwrap_or(ClientTlsMode::Disable);
    let verify = if t.insecure_skip_verify == Some(true) {
        Verify::InsecureSkip
    } else if mode == ClientTlsMode::IstioMutual {
        Verify::MeshRoots
    } else if let Some(ca) = &t.ca_certificates {
        Verify::CaFile(ca.clone())
    } else if let Some(cred) = &t.credential_name {
        Verify::Credential(cred.clone())
    } else {
        // Secure by default: Istio historically skipped verification without
        // caCertificates; egret verifies against the system roots.
        Verify::SystemRoots
    };
    let subject_alt_names = if t.subject_alt_names.is_empty() {
        svc.map(|s| s.se.spec.subject_alt_names.clone())
            .unwrap_or_default()
    } else {
        t.subject_alt_names.clone()
    };
    UpstreamTls {
        mode,
        client_certificate: t.client_certificate.clone(),
        private_key: t.private_key.clone(),
        credential_name: t.credential_name.clone(),
        verify,
        ca_crl: t.ca_crl.clone(),
        subject_alt_names,
        sni: t.sni.as_deref().map(host::canonical),
        auto_mtls: false,
        unusable: None,
    }
}

/// Endpoints of a service port, filtered by subset labels. Port per endpoint: its own port map
/// entry for the port's name, else `targetPort`, else the port number.
fn endpoints(
    scope: &Scope<'_>,
    svc: &Service<'_>,
    port: u16,
    subset_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<Endpoint> {
    let Some(sp) = svc.port(port) else {
        return Vec::new();
    };
    let default_port = sp.target_port.unwrap_or(sp.number);
    let selected = |labels: &std::collections::BTreeMap<String, String>| {
        subset_labels.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    match svc.resolution {
        // NONE: the original destination; DYNAMIC_DNS: resolved per request from Host/SNI.
        Resolution::None | Resolution::DynamicDns => Vec::new(),
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => {
            let spec_eps = &svc.se.spec.endpoints;
            let mut out: Vec<Endpoint> = spec_eps
                .iter()
                .filter(|e| selected(&e.labels))
                .filter_map(|e| {
                    let address = e.address.clone()?;
                    let port = e
                        .ports
                        .get(&sp.name)
                        .and_then(|p| u16::try_from(*p).ok())
                        .unwrap_or(default_port);
                    Some(Endpoint {
                        address,
                        port,
                        labels: e.labels.clone(),
                        locality: e.locality.clone(),
                        weight: e.weight.unwrap_or(1).max(1),
                        service_account: e.service_account.clone(),
                        priority: 0,
                        lb_weight: None,
                    })
                })
                .collect();
            for we in scope.workload_entries(svc.se) {
                if !selected(&we.spec.labels) {
                    continue;
                }
                let Some(address) = we.spec.address.clone() else {
                    continue;
                };
                let port = we
                    .spec
                    .ports
                    .get(&sp.name)
                    .and_then(|p| u16::try_from(*p).ok())
                    .unwrap_or(default_port);
                out.push(Endpoint {
                    address,
                    port,
                    labels: we.spec.labels.clone(),
                    locality: we.spec.locality.clone(),
                    weight: we.spec.weight.unwrap_or(1).max(1),
                    service_account: we.spec.service_account.clone(),
                    priority: 0,
                    lb_weight: None,
                });
            }
            // DNS with no endpoints: the host itself is the name to resolve.
            if out.is_empty()
                && spec_eps.is_empty()
                && svc.se.spec.workload_selector.is_none()
                && matches!(svc.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && !host::is_wildcard(&svc.host)
            {
                out.push(Endpoint {
                    address: svc.host.clone(),
                    port: default_port,
                    labels: Default::default(),
                    locality: None,
                    weight: 1,
                    service_account: None,
                    priority: 0,
                    lb_weight: None,
                });
            }
            out
        }
    }
}
