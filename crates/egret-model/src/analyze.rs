//! Cross-object analysis, like `istioctl analyze`: references between objects that point at
//! nothing, and combinations that cannot work. Per-object checks live in `validate`.

use std::collections::BTreeMap;

use egret_config::types::{
    ClientTlsMode, ClientTlsSettings, Destination, ServerTlsMode, TrafficPolicy, VirtualService,
};
use egret_config::{ConfigSet, Diagnostics, Object, Severity};

use crate::host;
use crate::identity::ProxyIdentity;
use crate::routes::resolve_gateways;
use crate::scope::{Proto, Scope};

pub fn analyze(set: &ConfigSet) -> Diagnostics {
    let mut d = Diagnostics::default();
    virtual_service_references(set, &mut d);
    gateway_leg_visibility(set, &mut d);
    conflicting_service_entries(set, &mut d);
    istio_mutual_without_gateway_server(set, &mut d);
    gateway_leg_without_mutual_tls(set, &mut d);
    authz_providers(set, &mut d);
    duplicate_default_sidecars(set, &mut d);
    asm_prerequisite(set, &mut d);
    d
}

/// ASM's egress traffic policy only blackholes workloads it does not name when the mesh is
/// REGISTRY_ONLY (its documented prerequisite).
fn asm_prerequisite(set: &ConfigSet, d: &mut Diagnostics) {
    let registry_only = set
        .mesh
        .outbound_traffic_policy
        .as_ref()
        .and_then(|p| p.mode)
        == Some(egret_config::types::OutboundMode::RegistryOnly);
    if registry_only {
        return;
    }
    for p in &set.asm_egress_policies {
        d.push(p.warning(
            "spec",
            "ASMEgressTrafficPolicy needs meshConfig.outboundTrafficPolicy.mode REGISTRY_ONLY: under ALLOW_ANY, workloads not named in egressRules still reach these hosts directly",
        ));
    }
}

/// Every host any ServiceEntry declares (canonical), for "is this host known?".
fn registry_hosts(set: &ConfigSet) -> host::HostIndex<()> {
    let mut idx = host::HostIndex::new();
    for se in &set.service_entries {
        for h in &se.spec.hosts {
            idx.insert(&host::canonical(h), ());
        }
    }
    idx
}

/// Subset names defined per DestinationRule host.
fn subsets_by_host(set: &ConfigSet) -> host::HostMultiMap<&str> {
    let mut m = host::HostMultiMap::new();
    for dr in &set.destination_rules {
        let Some(h) = &dr.spec.host else { continue };
        let h = host::resolve_short_name(h, &dr.meta.namespace);
        for s in &dr.spec.subsets {
            if let Some(n) = s.name.as_deref() {
                m.insert(&h, n);
            }
        }
    }
    m
}

/// Each destination of a VirtualService with its field path.
fn destinations(vs: &Object<VirtualService>) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                out.push((format!("spec.http[{i}].route[{j}].destination"), dest));
            }
        }
        if let Some(m) = &r.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                out.push((format!("spec.http[{i}].mirrors[{j}].destination"), dest));
            }
        }
    }
    for (kind, routes) in [
        (
            "tls",
            vs.spec.tls.iter().map(|r| &r.route).collect::<Vec<_>>(),
        ),
        (
            "tcp",
            vs.spec.tcp.iter().map(|r| &r.route).collect::<Vec<_>>(),
        ),
    ] {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, d) in route.iter().enumerate() {
                if let Some(dest) = &d.destination {
                    out.push((format!("spec.{kind}[{i}].route[{j}].destination"), dest));
                }
            }
        }
    }
    out
}

/// IST0101-style: gateways, destination hosts and subsets a VirtualService names must exist.
fn virtual_service_references(set: &ConfigSet, d: &mut Diagnostics) {
    let hosts = registry_hosts(set);
    let subsets = subsets_by_host(set);
    let gateways: Vec<String> = set.gateways.iter().map(|g| g.key()).collect();
    for vs in &set.virtual_services {
        let ns = &vs.meta.namespace;
        let mut check_gateways = |list: &[String], path: &str| {
            for (i, g) in resolve_gateways(list, ns).iter().enumerate() {
                if list.is_empty() || g == "mesh" {
                    continue;
                }
                if !gateways.contains(g) {
                    // Istio accepts the object; the leg simply binds to nothing
                    // (istioctl analyze IST0101). A name without namespace means the
                    // VirtualService's own namespace, a common surprise: say where a
                    // Gateway of that name does exist.
                    let name = g.rsplit('/').next().unwrap_or(g);
                    let elsewhere: Vec<&String> = gateways
                        .iter()
                        .filter(|k| k.rsplit('/').next() == Some(name))
                        .collect();
                    let hint = match elsewhere.first() {
                        Some(k) => format!("; did you mean \"{k}\"?"),
                        None => String::new(),
                    };
                    d.push(vs.warning(
                        &format!("{path}[{i}]"),
                        format!("gateway \"{g}\" not found: these routes bind to no gateway{hint}"),
                    ));
                }
            }
        };
        check_gateways(&vs.spec.gateways, "spec.gateways");
        for (i, r) in vs.spec.http.iter().enumerate() {
            for (j, m) in r.matches.iter().enumerate() {
                check_gateways(&m.gateways, &format!("spec.http[{i}].match[{j}].gateways"));
            }
        }
        for (i, r) in vs.spec.tls.iter().enumerate() {
            for (j, m) in r.matches.iter().enumerate() {
                check_gateways(&m.gateways, &format!("spec.tls[{i}].match[{j}].gateways"));
            }
        }
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            for (j, m) in r.matches.iter().enumerate() {
                check_gateways(&m.gateways, &format!("spec.tcp[{i}].match[{j}].gateways"));
            }
        }

        for (path, dest) in destinations(vs) {
            let Some(h) = &dest.host else { continue };
            let h = host::resolve_short_name(h, ns);
            let known = hosts.get(&h).is_some();
            if !known {
                d.push(vs.warning(
                    &format!("{path}.host"),
                    format!(
                        "host \"{h}\" is not declared by any ServiceEntry: egret has no endpoints for it and requests routed there fail with 503"
                    ),
                ));
            }
            if let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) {
                let defined = subsets.matching(&h).any(|s| *s == subset);
                if !defined {
                    d.push(vs.error(
                        &format!("{path}.subset"),
                        format!(
                            "subset \"{subset}\" of host \"{h}\" is not defined by any DestinationRule"
                        ),
                    ));
                }
            }
        }
    }
}

/// The gateways a route's destinations are used by: each match's `gateways`, or the
/// VirtualService's for a match without any (and for a route without matches), `mesh` excluded,
/// as namespaced keys.
fn route_gateways(vs: &Object<VirtualService>, match_gateways: &[&[String]]) -> Vec<String> {
    let ns = &vs.meta.namespace;
    let mut out: Vec<String> = Vec::new();
    let top = &vs.spec.gateways;
    let lists: Vec<&[String]> = if match_gateways.is_empty() {
        vec![top.as_slice()]
    } else {
        match_gateways
            .iter()
            .map(|m| if m.is_empty() { top.as_slice() } else { *m })
            .collect()
    };
    for l in lists {
        for g in resolve_gateways(l, ns) {
            if g != "mesh" && !out.contains(&g) {
                out.push(g);
            }
        }
    }
    out
}

/// A gateway leg whose destination host is declared, but by no ServiceEntry exported to the
/// gateway's namespace: the gateway has no cluster for it and answers 503 `NC` (Istio behaves
/// the same; istio/istio#47080). Warned once per destination and gateway.
fn gateway_leg_visibility(set: &ConfigSet, d: &mut Diagnostics) {
    let defaults = &set.mesh.default_service_export_to;
    let gateways: BTreeMap<String, &str> = set
        .gateways
        .iter()
        .map(|g| (g.key(), g.meta.namespace.as_str()))
        .collect();
    for vs in &set.virtual_services {
        let ns = &vs.meta.namespace;
        let mut legs: Vec<(String, Vec<String>, &Destination)> = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            let m: Vec<&[String]> = r.matches.iter().map(|m| m.gateways.as_slice()).collect();
            let gws = route_gateways(vs, &m);
            for (j, w) in r.route.iter().enumerate() {
                if let Some(dest) = &w.destination {
                    legs.push((
                        format!("spec.http[{i}].route[{j}].destination"),
                        gws.clone(),
                        dest,
                    ));
                }
            }
        }
        for (i, r) in vs.spec.tls.iter().enumerate() {
            let m: Vec<&[String]> = r.matches.iter().map(|m| m.gateways.as_slice()).collect();
            let gws = route_gateways(vs, &m);
            for (j, w) in r.route.iter().enumerate() {
                if let Some(dest) = &w.destination {
                    legs.push((
                        format!("spec.tls[{i}].route[{j}].destination"),
                        gws.clone(),
                        dest,
                    ));
                }
            }
        }
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            let m: Vec<&[String]> = r.matches.iter().map(|m| m.gateways.as_slice()).collect();
            let gws = route_gateways(vs, &m);
            for (j, w) in r.route.iter().enumerate() {
                if let Some(dest) = &w.destination {
                    legs.push((
                        format!("spec.tcp[{i}].route[{j}].destination"),
                        gws.clone(),
                        dest,
                    ));
                }
            }
        }
        for (path, gws, dest) in legs {
            let Some(h) = &dest.host else { continue };
            let h = host::resolve_short_name(h, ns);
            let declaring: Vec<_> = set
                .service_entries
                .iter()
                .filter(|se| {
                    se.spec.hosts.iter().any(|sh| {
                        let sh = host::canonical(sh);
                        sh == h || host::matches(&sh, &h)
                    })
                })
                .collect();
            if declaring.is_empty() {
                continue; // the unknown-host rule says so already
            }
            for g in gws {
                let Some(gw_ns) = gateways.get(&g) else {
                    continue;
                };
                let visible = declaring.iter().any(|se| {
                    crate::scope::exported_to(
                        &se.spec.export_to,
                        defaults,
                        &se.meta.namespace,
                        gw_ns,
                    )
                });
                if !visible {
                    d.push(vs.warning(
                        &format!("{path}.host"),
                        format!(
                            "host \"{h}\" is not exported to namespace {gw_ns} of Gateway {g}: the gateway has no cluster for it and answers 503 (NC); add \"{gw_ns}\" to the ServiceEntry's exportTo"
                        ),
                    ));
                }
            }
        }
    }
}

/// Two ServiceEntries declaring the same host must agree on its ports: the same number with
/// another protocol, or the same name with another number, makes routing depend on which one
/// a proxy happens to see first.
fn conflicting_service_entries(set: &ConfigSet, d: &mut Diagnostics) {
    // host -> [(port number, name, protocol, se key)]
    let mut seen: BTreeMap<String, Vec<(u32, String, Proto, String)>> = BTreeMap::new();
    for se in &set.service_entries {
        let key = se.key();
        for h in &se.spec.hosts {
            let h = host::canonical(h);
            let entries = seen.entry(h.clone()).or_default();
            for (i, p) in se.spec.ports.iter().enumerate() {
                let (Some(num), name) = (p.number, p.name.clone().unwrap_or_default()) else {
                    continue;
                };
                let proto = Proto::parse(p.protocol.as_deref());
                for (n2, name2, proto2, other) in entries.iter() {
                    if *other == key {
                        continue;
                    }
                    if *n2 == num && *proto2 != proto {
                        d.push(se.warning(
                            &format!("spec.ports[{i}]"),
                            format!(
                                "host \"{h}\" port {num} is {} here but {} in ServiceEntry {other}",
                                proto_name(proto),
                                proto_name(*proto2)
                            ),
                        ));
                    } else if *name2 == name && *n2 != num && !name.is_empty() {
                        d.push(se.warning(
                            &format!("spec.ports[{i}]"),
                            format!(
                                "host \"{h}\" port name \"{name}\" is port {num} here but port {n2} in ServiceEntry {other}"
                            ),
                        ));
                    }
                }
            }
            for p in &se.spec.ports {
                if let Some(num) = p.number {
                    entries.push((
                        num,
                        p.name.clone().unwrap_or_default(),
                        Proto::parse(p.protocol.as_deref()),
                        key.clone(),
                    ));
                }
            }
        }
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Http => "HTTP",
        Proto::Http2 => "HTTP2",
        Proto::Grpc => "GRPC",
        Proto::GrpcWeb => "GRPC-WEB",
        Proto::Https => "HTTPS",
        Proto::Tls => "TLS",
        Proto::Tcp => "TCP",
        Proto::Mongo => "MONGO",
        Proto::Redis => "REDIS",
        Proto::Mysql => "MYSQL",
        Proto::Udp => "UDP",
        Proto::Unknown => "unset",
    }
}

/// Every ClientTLSSettings in a DestinationRule with the port it is scoped to and its path.
fn tls_settings(
    dr_policy: Option<&TrafficPolicy>,
    base: &str,
) -> Vec<(String, Option<u32>, ClientTlsSettings)> {
    let mut out = Vec::new();
    let Some(p) = dr_policy else { return out };
    if let Some(t) = &p.tls {
        out.push((format!("{base}.tls"), None, t.clone()));
    }
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        if let Some(t) = &pl.tls {
            out.push((
                format!("{base}.portLevelSettings[{i}].tls"),
                pl.port.and_then(|p| p.number),
                t.clone(),
            ));
        }
    }
    out
}

/// A DestinationRule that sends ISTIO_MUTUAL needs a Gateway server on that port that
/// terminates ISTIO_MUTUAL for the SNI it sends (Istio matches gateway filter chains on
/// `server_names` = server hosts; `istio-egress-spec.md` §2, §10.4). In egret, whose sidecars
/// talk mutual TLS only to egress gateways, an ISTIO_MUTUAL rule is always such a leg.
fn istio_mutual_without_gateway_server(set: &ConfigSet, d: &mut Diagnostics) {
    let servers: Vec<(u32, Vec<String>)> = set
        .gateways
        .iter()
        .flat_map(|g| &g.spec.servers)
        .filter(|s| s.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::IstioMutual))
        .filter_map(|s| {
            let port = s.port.as_ref()?.number?;
            let hosts = s
                .hosts
                .iter()
                .map(|h| host::canonical(h.rsplit('/').next().unwrap_or(h)))
                .collect();
            Some((port, hosts))
        })
        .collect();
    for dr in &set.destination_rules {
        let mut all = tls_settings(dr.spec.traffic_policy.as_ref(), "spec.trafficPolicy");
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            all.extend(tls_settings(
                s.traffic_policy.as_ref(),
                &format!("spec.subsets[{i}].trafficPolicy"),
            ));
        }
        for (path, port, tls) in all {
            if tls.mode != Some(ClientTlsMode::IstioMutual) {
                continue;
            }
            let sni = tls.sni.as_deref().map(host::canonical);
            let ok = servers.iter().any(|(sp, hosts)| {
                port.is_none_or(|p| p == *sp)
                    && sni
                        .as_deref()
                        .is_none_or(|s| hosts.iter().any(|h| host::sni_matches(h, s)))
            });
            if !ok {
                let port_text = port.map(|p| format!(" on port {p}")).unwrap_or_default();
                let sni_text = sni.map(|s| format!(" for SNI \"{s}\"")).unwrap_or_default();
                d.push(dr.warning(
                    &format!("{path}.mode"),
                    format!(
                        "ISTIO_MUTUAL{port_text}, but no Gateway server{port_text} terminates ISTIO_MUTUAL{sni_text}: the egress gateway will refuse these connections"
                    ),
                ));
            }
        }
    }
}

/// The reverse: a VirtualService whose mesh leg sends traffic to an egress gateway port.
/// If that Gateway server expects ISTIO_MUTUAL and no DestinationRule says ISTIO_MUTUAL for
/// the leg, Istio sidecars would send plaintext and fail; if the server is plaintext, Istio
/// would send the request unencrypted. egret sidecars always use mutual TLS to the gateway,
/// so both are warnings that say what egret does instead.
fn gateway_leg_without_mutual_tls(set: &ConfigSet, d: &mut Diagnostics) {
    // One sidecar view per namespace, built only where a VirtualService has a gateway leg.
    let proxies: BTreeMap<&str, ProxyIdentity> = set
        .virtual_services
        .iter()
        .map(|vs| {
            let ns = vs.meta.namespace.as_str();
            (ns, ProxyIdentity::sidecar(ns))
        })
        .collect();
    let mut scopes: BTreeMap<&str, Scope<'_>> = BTreeMap::new();
    for vs in &set.virtual_services {
        let ns = vs.meta.namespace.as_str();
        let top = resolve_gateways(&vs.spec.gateways, ns);
        let gws: Vec<&Object<egret_config::types::Gateway>> = set
            .gateways
            .iter()
            .filter(|g| {
                let k = g.key();
                top.contains(&k)
                    || vs.spec.http.iter().flat_map(|r| &r.matches).any(|m| {
                        resolve_gateways(&m.gateways, ns).contains(&k) && !m.gateways.is_empty()
                    })
            })
            .collect();
        if gws.is_empty() {
            continue;
        }
        // A client in the VirtualService's namespace resolves DestinationRules as a sidecar there.
        let Some(proxy) = proxies.get(ns) else {
            continue;
        };
        let scope = scopes.entry(ns).or_insert_with(|| Scope::new(set, proxy));
        for (i, r) in vs.spec.http.iter().enumerate() {
            let mesh_leg = if r.matches.is_empty() {
                top.iter().any(|g| g == "mesh")
            } else {
                r.matches.iter().any(|m| {
                    let g = if m.gateways.is_empty() {
                        top.clone()
                    } else {
                        resolve_gateways(&m.gateways, ns)
                    };
                    g.iter().any(|g| g == "mesh")
                })
            };
            if !mesh_leg {
                continue;
            }
            for (j, rd) in r.route.iter().enumerate() {
                let Some(dest) = &rd.destination else {
                    continue;
                };
                let Some(h) = &dest.host else { continue };
                let h = host::resolve_short_name(h, ns);
                // A leg to the gateway: the destination is not one of the VirtualService's
                // own hosts (those are the gateway leg's targets).
                if crate::routes::vs_hosts(vs)
                    .iter()
                    .any(|vh| host::matches(vh, &h))
                {
                    continue;
                }
                let Some(port) = dest
                    .port
                    .and_then(|p| p.number)
                    .or_else(|| r.matches.iter().find_map(|m| m.port))
                else {
                    continue;
                };
                let Some(server) = gws
                    .iter()
                    .flat_map(|g| &g.spec.servers)
                    .find(|s| s.port.as_ref().and_then(|p| p.number) == Some(port))
                else {
                    continue;
                };
                let Ok(port16) = u16::try_from(port) else {
                    continue;
                };
                let cluster = crate::clusters::build(scope, &h, port16, dest.subset.as_deref());
                // What the configuration asks for, not egret's automatic upgrade.
                let mutual = cluster.policy.tls.mode == ClientTlsMode::IstioMutual
                    && !cluster.policy.tls.auto_mtls;
                let server_mode = server.tls.as_ref().and_then(|t| t.mode);
                let path = format!("spec.http[{i}].route[{j}].destination");
                if server_mode == Some(ServerTlsMode::IstioMutual) && !mutual {
                    d.push(vs.diag(
                        Severity::Warning,
                        &path,
                        format!(
                            "the Gateway server on port {port} expects ISTIO_MUTUAL but no DestinationRule sets ISTIO_MUTUAL for {}: Istio sidecars would send plaintext and fail; egret sidecars always use mutual TLS to the gateway",
                            cluster.name
                        ),
                    ));
                } else if server.tls.is_none()
                    && Proto::parse(server.port.as_ref().and_then(|p| p.protocol.as_deref()))
                        .is_http()
                {
                    d.push(vs.diag(
                        Severity::Warning,
                        &path,
                        format!(
                            "the Gateway server on port {port} is plaintext HTTP: Istio sidecars would send these requests to the gateway unencrypted; egret sidecars send them over mutual TLS"
                        ),
                    ));
                }
            }
        }
    }
}

/// A CUSTOM AuthorizationPolicy's provider should be one of `meshConfig.extensionProviders`.
fn authz_providers(set: &ConfigSet, d: &mut Diagnostics) {
    let names: Vec<&str> = set
        .mesh
        .extension_providers
        .iter()
        .filter_map(|p| p.name.as_deref())
        .collect();
    for ap in &set.authorization_policies {
        // Istio does not reject the policy; istiod turns it into deny-all for the requests
        // it matches.
        if let Some(name) = ap.spec.provider.as_ref().and_then(|p| p.name.as_deref())
            && !names.contains(&name)
        {
            d.push(ap.warning(
                "spec.provider.name",
                format!("extension provider \"{name}\" is not defined in meshConfig.extensionProviders: requests this policy matches will be denied"),
            ));
        }
    }
}

/// At most one Sidecar without a workloadSelector per namespace (Istio picks one arbitrarily).
fn duplicate_default_sidecars(set: &ConfigSet, d: &mut Diagnostics) {
    let mut first: BTreeMap<&str, String> = BTreeMap::new();
    for sc in &set.sidecars {
        if sc.spec.workload_selector.is_some() {
            continue;
        }
        match first.get(sc.meta.namespace.as_str()) {
            Some(other) => d.push(sc.error(
                "spec",
                format!(
                    "namespace \"{}\" already has a Sidecar without workloadSelector ({other}); only the first is used",
                    sc.meta.namespace
                ),
            )),
            None => {
                first.insert(&sc.meta.namespace, sc.key());
            }
        }
    }
}
