//! `compile`: a ConfigSet and a proxy identity in, a Snapshot and diagnostics out.
//!
//! Order of work: expand ASM policies -> validate and analyze (global) -> the proxy's scope
//! (exportTo, Sidecar) -> listeners (sidecar: per service port; gateway: per server port)
//! with their routes -> the clusters those routes reference -> security policies -> indexes
//! and a content version.

use std::collections::{BTreeMap, BTreeSet};

use egret_config::types::{ServerTlsMode, VirtualService};
use egret_config::{ConfigSet, Diagnostics, Object};
use sha2::{Digest, Sha256};

use crate::host;
use crate::identity::{ProxyIdentity, Role};
use crate::routes::{self, Binding, ClusterRef, DestCtx};
use crate::scope::{Proto, Scope, parse_net};
use crate::snapshot::*;
use crate::{analyze, asm, clusters, policy, validate};

/// Compile the configuration for one proxy. Pure and deterministic.
///
/// The snapshot is produced even when there are errors (so `egret compile` can show what it
/// would do); a proxy must refuse a snapshot whose diagnostics contain errors and keep its
/// last good one.
pub fn compile(input: &ConfigSet, proxy: &ProxyIdentity) -> (Snapshot, Diagnostics) {
    let (expanded, generated) = asm::expand(input);
    let set = &expanded;
    let mut diags = validate::validate(set);
    diags.extend(analyze::analyze(set));
    let snapshot = build(set, proxy, generated);
    diags.sort();
    (snapshot, diags)
}

/// Compile without validation or analysis (for callers that already ran them, e.g. one
/// config compiled for many proxies).
pub fn build(set: &ConfigSet, proxy: &ProxyIdentity, generated: Vec<String>) -> Snapshot {
    let scope = Scope::new(set, proxy);
    let default_retry = routes::default_retry(set.mesh.default_http_retry_policy.as_ref());
    let mut refs: Vec<ClusterRef> = Vec::new();
    let listeners = match proxy.role {
        Role::Sidecar => sidecar_listeners(&scope, &default_retry, &mut refs),
        Role::Gateway => gateway_listeners(&scope, &default_retry, &mut refs),
    };
    // External authorizers (`envoyExtAuthzHttp`) are reached like any service: a cluster for
    // `service:port`, so a ServiceEntry can give their endpoints.
    for p in &set.mesh.extension_providers {
        if let Some(h) = &p.envoy_ext_authz_http
            && let (Some(service), Some(port)) =
                (&h.service, h.port.and_then(|p| u16::try_from(p).ok()))
        {
            let host = service.rsplit('/').next().unwrap_or(service);
            refs.push((host.to_string(), port, None));
        }
    }
    let mut seen = BTreeSet::new();
    let mut cluster_list = Vec::new();
    for (h, p, s) in refs {
        let name = cluster_name(p, s.as_deref(), &h);
        if seen.insert(name) {
            cluster_list.push(clusters::build(&scope, &h, p, s.as_deref()));
        }
    }
    cluster_list.sort_by(|a, b| a.name.cmp(&b.name));
    let root_ns = scope.root_ns.clone();
    let mut snap = Snapshot {
        version: String::new(),
        proxy: proxy.clone(),
        mesh: policy::mesh_settings(&set.mesh, &root_ns),
        outbound_traffic_policy: match proxy.role {
            Role::Sidecar => Some(policy::outbound_policy(&scope)),
            Role::Gateway => None,
        },
        listeners,
        clusters: cluster_list,
        authorization_policies: policy::authorization(set, proxy, &root_ns),
        request_authentications: policy::request_authentication(set, proxy, &root_ns),
        rate_limits: crate::ratelimit::rate_limits(set, proxy, &root_ns),
        generated,
        index: Default::default(),
    };
    snap.version = content_version(&snap);
    snap.build_index();
    snap
}

/// SHA-256 of the snapshot's JSON (version left empty), streamed into the hasher: equal
/// snapshots get equal versions however they were written, so a proxy can skip a reload that
/// changes nothing.
fn content_version(s: &Snapshot) -> String {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, HashWriter(Sha256::new()));
    // Writing to a hasher cannot fail; a serialization error would leave a partial hash,
    // which is still deterministic.
    let _ = serde_json::to_writer(&mut w, s);
    let digest = match w.into_inner() {
        Ok(h) => h.0.finalize(),
        Err(_) => Sha256::digest(b""),
    };
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The port a destination without `port` uses: the service's only port, else the listener
/// port (Istio).
fn default_port_fn<'s>(scope: &'s Scope<'_>) -> impl Fn(&str, u16) -> u16 + 's {
    move |h: &str, listener_port: u16| match scope.service(h) {
        Some(s) if s.ports.len() == 1 => s.ports[0].number,
        _ => listener_port,
    }
}

/// VirtualServices visible to this proxy and bound to `b`, in load order.
fn bound_virtual_services<'a>(scope: &Scope<'a>, b: &Binding) -> Vec<&'a Object<VirtualService>> {
    let ns = scope.proxy.namespace.as_str();
    let defaults = &scope.set.mesh.default_virtual_service_export_to;
    scope
        .set
        .virtual_services
        .iter()
        .filter(|vs| {
            crate::scope::exported_to(&vs.spec.export_to, defaults, &vs.meta.namespace, ns)
        })
        .filter(|vs| routes::vs_binds(vs, b))
        .filter(|vs| match b {
            Binding::Mesh => scope.imported(&vs.meta.namespace, &routes::vs_hosts(vs)),
            Binding::Gateway(_) => true,
        })
        .collect()
}

/// All traffic to one cluster.
fn to_cluster(cluster: String) -> Vec<WeightedCluster> {
    vec![WeightedCluster {
        cluster,
        weight: 100,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }]
}

// ===== Sidecar =====

/// Sidecar listeners: one per port that carries a visible service (or that a mesh-bound
/// VirtualService matches on), following Istio's outbound listener construction
/// (`istio-egress-spec.md` §1 "Sidecar listener behaviour", §3).
fn sidecar_listeners(
    scope: &Scope<'_>,
    default_retry: &RetryPolicy,
    refs: &mut Vec<ClusterRef>,
) -> Vec<Listener> {
    let vss = bound_virtual_services(scope, &Binding::Mesh);
    let mut ports = scope.port_protocols();
    // VirtualService-only hosts (no ServiceEntry) still get HTTP routes on the ports their
    // matches name (`istio-egress-spec.md` §10.16).
    for vs in &vss {
        for r in &vs.spec.http {
            for m in &r.matches {
                if let Some(p) = m.port.and_then(|p| u16::try_from(p).ok()) {
                    ports.entry(p).or_default();
                }
            }
        }
    }
    let default_port = default_port_fn(scope);
    let mut out = Vec::new();
    for (port, protos) in ports {
        let protocol = listener_protocol(&protos.wildcard, &protos.vip);
        let ctx = DestCtx {
            default_port: &default_port,
            listener_port: port,
            namespace: "",
        };
        let mut l = Listener {
            name: format!("0.0.0.0_{port}"),
            port,
            protocol,
            servers: Vec::new(),
            virtual_hosts: Vec::new(),
            tls_chains: Vec::new(),
            tcp_chains: Vec::new(),
            vhost_index: Default::default(),
            tls_index: Default::default(),
            tcp_index: Default::default(),
        };
        let classes: BTreeSet<ListenerProtocol> =
            protos.wildcard.union(&protos.vip).copied().collect();
        let wants = |c: ListenerProtocol| {
            classes.is_empty() || classes.contains(&c) || classes.contains(&ListenerProtocol::Auto)
        };
        if wants(ListenerProtocol::Http) {
            l.virtual_hosts = sidecar_vhosts(scope, &vss, port, &ctx, default_retry, refs);
        }
        if wants(ListenerProtocol::Tls) && !classes.is_empty() {
            l.tls_chains = sidecar_tls_chains(scope, &vss, port, &ctx, refs);
        }
        if wants(ListenerProtocol::Tcp) && !classes.is_empty() {
            l.tcp_chains = sidecar_tcp_chains(scope, &vss, port, &ctx, refs);
        }
        if l.protocol == ListenerProtocol::Auto && classes.is_empty() {
            // Only VirtualService match ports: plain HTTP routing.
            l.protocol = ListenerProtocol::Http;
        }
        out.push(l);
    }
    out
}

fn listener_protocol(
    wildcard: &BTreeSet<ListenerProtocol>,
    vip: &BTreeSet<ListenerProtocol>,
) -> ListenerProtocol {
    let set = if wildcard.is_empty() { vip } else { wildcard };
    if set.len() == 1 {
        set.iter().next().copied().unwrap_or(ListenerProtocol::Auto)
    } else {
        ListenerProtocol::Auto
    }
}

/// Does any service matched by the VirtualService's hosts carry `port` with a protocol of
/// class `class` (or unset)? A VirtualService with no matching service applies on every port.
fn vs_applies_on_port(
    scope: &Scope<'_>,
    hosts: &[String],
    port: u16,
    class: ListenerProtocol,
) -> bool {
    let svcs: Vec<_> = hosts
        .iter()
        .flat_map(|h| scope.services_matching(h))
        .collect();
    if svcs.is_empty() {
        return true;
    }
    svcs.iter().any(|s| {
        s.port(port).is_some_and(|p| {
            let c = p.proto.listener_class();
            c == class || c == ListenerProtocol::Auto
        })
    })
}

fn sidecar_vhosts(
    scope: &Scope<'_>,
    vss: &[&Object<VirtualService>],
    port: u16,
    ctx: &DestCtx<'_>,
    default_retry: &RetryPolicy,
    refs: &mut Vec<ClusterRef>,
) -> Vec<VirtualHost> {
    let mut vhosts = Vec::new();
    // Hosts that already have a virtual host; a service inside one of them needs no other.
    let mut covered: host::HostIndex<()> = host::HostIndex::new();
    for vs in vss {
        if vs.spec.http.is_empty() {
            continue;
        }
        let hosts = routes::vs_hosts(vs);
        if !vs_applies_on_port(scope, &hosts, port, ListenerProtocol::Http) {
            continue;
        }
        let ctx = DestCtx {
            namespace: &vs.meta.namespace,
            ..*ctx
        };
        let mut local_refs = Vec::new();
        let routes = routes::http_routes(
            vs,
            &Binding::Mesh,
            scope.proxy,
            &ctx,
            default_retry,
            &mut local_refs,
        );
        if routes.is_empty() {
            continue;
        }
        refs.extend(local_refs);
        for h in &hosts {
            covered.insert(h, ());
        }
        vhosts.push(VirtualHost {
            name: format!("{}:{port}", hosts.join(",")),
            domains: hosts,
            routes,
        });
    }
    // Services with no VirtualService: one virtual host each, routing to the service.
    for s in &scope.services {
        let Some(sp) = s.port(port) else { continue };
        if !(sp.proto.is_http() || sp.proto == Proto::Unknown) {
            continue;
        }
        if covered.get(&s.host).is_some() {
            continue;
        }
        covered.insert(&s.host, ());
        refs.push((s.host.clone(), port, None));
        vhosts.push(VirtualHost {
            name: format!("{}:{port}", s.host),
            domains: vec![s.host.clone()],
            routes: vec![HttpRoute {
                name: "default".into(),
                matches: Vec::new(),
                action: RouteAction::Route(to_cluster(cluster_name(port, None, &s.host))),
                rewrite: None,
                timeout: None,
                retries: default_retry.clone(),
                fault: None,
                mirrors: Vec::new(),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }],
        });
    }
    vhosts
}

fn sidecar_tls_chains(
    scope: &Scope<'_>,
    vss: &[&Object<VirtualService>],
    port: u16,
    ctx: &DestCtx<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Vec<L4Chain> {
    let mut chains = Vec::new();
    for vs in vss {
        let hosts = routes::vs_hosts(vs);
        let ctx = DestCtx {
            namespace: &vs.meta.namespace,
            ..*ctx
        };
        for (i, r) in vs.spec.tls.iter().enumerate() {
            for m in &r.matches {
                if m.port.is_none()
                    && !vs_applies_on_port(scope, &hosts, port, ListenerProtocol::Tls)
                {
                    continue;
                }
                if !routes::match_applies(vs, m, &Binding::Mesh, scope.proxy, Some(port)) {
                    continue;
                }
                let route = routes::l4_route(&r.route, &ctx, refs);
                if route.is_empty() {
                    continue;
                }
                chains.push(L4Chain {
                    source: format!("VirtualService {} tls[{i}]", vs.key()),
                    sni_wildcard_matches_apex: true,
                    sni_hosts: m
                        .sni_hosts
                        .iter()
                        .map(|h| host::resolve_short_name(h, &vs.meta.namespace))
                        .collect(),
                    destination_subnets: m
                        .destination_subnets
                        .iter()
                        .filter_map(|s| parse_net(s))
                        .collect(),
                    route,
                });
            }
        }
    }
    // Then each service with a TLS/HTTPS port: SNI = its host. Exact names before wildcards
    // so the first match is also the most specific, as with Envoy's server_names.
    let mut defaults: Vec<L4Chain> = Vec::new();
    for s in &scope.services {
        let Some(sp) = s.port(port) else { continue };
        if !matches!(
            sp.proto.listener_class(),
            ListenerProtocol::Tls | ListenerProtocol::Auto
        ) {
            continue;
        }
        refs.push((s.host.clone(), port, None));
        defaults.push(L4Chain {
            source: format!("ServiceEntry {}", s.key()),
            sni_wildcard_matches_apex: false,
            sni_hosts: vec![s.host.clone()],
            destination_subnets: s.addresses.clone(),
            route: to_cluster(cluster_name(port, None, &s.host)),
        });
    }
    defaults.sort_by_key(|c| {
        let h = &c.sni_hosts[0];
        (host::is_wildcard(h), std::cmp::Reverse(h.len()))
    });
    chains.extend(defaults);
    chains
}

fn sidecar_tcp_chains(
    scope: &Scope<'_>,
    vss: &[&Object<VirtualService>],
    port: u16,
    ctx: &DestCtx<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Vec<L4Chain> {
    let mut chains = Vec::new();
    for vs in vss {
        let hosts = routes::vs_hosts(vs);
        let ctx = DestCtx {
            namespace: &vs.meta.namespace,
            ..*ctx
        };
        // Without destinationSubnets a tcp route matches the addresses of the services its
        // hosts name (Istio binds tcp routes to the service VIPs).
        let vs_addresses: Vec<_> = hosts
            .iter()
            .flat_map(|h| scope.services_matching(h))
            .flat_map(|s| s.addresses.clone())
            .collect();
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            let ms: Vec<Option<&egret_config::types::L4MatchAttributes>> = if r.matches.is_empty() {
                vec![None]
            } else {
                r.matches.iter().map(Some).collect()
            };
            for m in ms {
                let applies = match m {
                    None => {
                        routes::vs_binds(vs, &Binding::Mesh)
                            && vs_applies_on_port(scope, &hosts, port, ListenerProtocol::Tcp)
                    }
                    Some(m) => {
                        (m.port.is_some()
                            || vs_applies_on_port(scope, &hosts, port, ListenerProtocol::Tcp))
                            && routes::match_applies(vs, m, &Binding::Mesh, scope.proxy, Some(port))
                    }
                };
                if !applies {
                    continue;
                }
                let route = routes::l4_route(&r.route, &ctx, refs);
                if route.is_empty() {
                    continue;
                }
                let subnets: Vec<_> = m
                    .map(|m| {
                        m.destination_subnets
                            .iter()
                            .filter_map(|s| parse_net(s))
                            .collect()
                    })
                    .unwrap_or_default();
                chains.push(L4Chain {
                    source: format!("VirtualService {} tcp[{i}]", vs.key()),
                    sni_wildcard_matches_apex: false,
                    sni_hosts: Vec::new(),
                    destination_subnets: if subnets.is_empty() {
                        vs_addresses.clone()
                    } else {
                        subnets
                    },
                    route,
                });
            }
        }
    }
    // Then each service with a TCP port: services with addresses match those; one without
    // addresses matches every destination on the port (Istio warns about it).
    let mut defaults = Vec::new();
    let mut catch_all = None;
    for s in &scope.services {
        let Some(sp) = s.port(port) else { continue };
        if !matches!(
            sp.proto.listener_class(),
            ListenerProtocol::Tcp | ListenerProtocol::Auto
        ) {
            continue;
        }
        let chain = L4Chain {
            source: format!("ServiceEntry {}", s.key()),
            sni_wildcard_matches_apex: false,
            sni_hosts: Vec::new(),
            destination_subnets: s.addresses.clone(),
            route: to_cluster(cluster_name(port, None, &s.host)),
        };
        if s.addresses.is_empty() {
            if catch_all.is_none() && sp.proto != Proto::Unknown {
                refs.push((s.host.clone(), port, None));
                catch_all = Some(chain);
            }
        } else {
            refs.push((s.host.clone(), port, None));
            defaults.push(chain);
        }
    }
    chains.extend(defaults);
    chains.extend(catch_all);
    chains
}

// ===== Gateway =====

/// Gateway listeners: the servers of every Gateway whose selector matches this proxy's labels,
/// grouped by port, with the routes of the VirtualServices bound to those Gateways
/// (`istio-egress-spec.md` §4).
fn gateway_listeners(
    scope: &Scope<'_>,
    default_retry: &RetryPolicy,
    refs: &mut Vec<ClusterRef>,
) -> Vec<Listener> {
    let proxy = scope.proxy;
    let mut by_port: BTreeMap<u16, Vec<(String, usize, &egret_config::types::Server)>> =
        BTreeMap::new();
    for gw in &scope.set.gateways {
        if !proxy.selected_by(&gw.spec.selector) {
            continue;
        }
        for (i, srv) in gw.spec.servers.iter().enumerate() {
            let Some(port) = srv
                .port
                .as_ref()
                .and_then(|p| p.number)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
            else {
                continue;
            };
            if srv.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::AutoPassthrough) {
                continue; // not supported (warned by validation)
            }
            by_port.entry(port).or_default().push((gw.key(), i, srv));
        }
    }
    let default_port = default_port_fn(scope);
    let mut out = Vec::new();
    for (port, servers) in by_port {
        let ctx = DestCtx {
            default_port: &default_port,
            listener_port: port,
            namespace: "",
        };
        let mut l = Listener {
            name: format!("0.0.0.0_{port}"),
            port,
            protocol: ListenerProtocol::Auto,
            servers: Vec::new(),
            virtual_hosts: Vec::new(),
            tls_chains: Vec::new(),
            tcp_chains: Vec::new(),
            vhost_index: Default::default(),
            tls_index: Default::default(),
            tcp_index: Default::default(),
        };
        let mut wire = BTreeSet::new();
        let mut seen_vhost: BTreeSet<String> = BTreeSet::new();
        for (gw_key, i, srv) in servers {
            let proto = Proto::parse(srv.port.as_ref().and_then(|p| p.protocol.as_deref()));
            let tls_mode = srv
                .tls
                .as_ref()
                .map(|t| t.mode.unwrap_or(ServerTlsMode::Passthrough));
            // What arrives on the wire, and what is routed after any termination.
            let terminated = matches!(
                tls_mode,
                Some(
                    ServerTlsMode::Simple
                        | ServerTlsMode::Mutual
                        | ServerTlsMode::IstioMutual
                        | ServerTlsMode::OptionalMutual
                )
            );
            let (on_wire, inner) = match (proto.listener_class(), terminated) {
                (ListenerProtocol::Http, false) => (ListenerProtocol::Http, ListenerProtocol::Http),
                (ListenerProtocol::Http, true) => (ListenerProtocol::Tls, ListenerProtocol::Http),
                (ListenerProtocol::Tls, true) if proto == Proto::Https => {
                    (ListenerProtocol::Tls, ListenerProtocol::Http)
                }
                (ListenerProtocol::Tls, true) => (ListenerProtocol::Tls, ListenerProtocol::Tcp),
                (ListenerProtocol::Tls, false) => (ListenerProtocol::Tls, ListenerProtocol::Tls),
                (ListenerProtocol::Tcp, _) => (ListenerProtocol::Tcp, ListenerProtocol::Tcp),
                (ListenerProtocol::Auto, _) => (ListenerProtocol::Auto, ListenerProtocol::Http),
            };
            wire.insert(on_wire);
            let server_hosts: Vec<ServerHost> = srv
                .hosts
                .iter()
                .map(|h| match h.split_once('/') {
                    Some((ns, hh)) => ServerHost {
                        namespace: ns.to_string(),
                        host: host::canonical(hh),
                    },
                    None => ServerHost {
                        namespace: "*".to_string(),
                        host: host::canonical(h),
                    },
                })
                .collect();
            let gw_ns = gw_key.split('/').next().unwrap_or_default().to_string();
            let binding = Binding::Gateway(gw_key.clone());
            let vss: Vec<_> = bound_virtual_services(scope, &binding)
                .into_iter()
                .filter(|vs| {
                    crate::scope::exported_to(
                        &vs.spec.export_to,
                        &scope.set.mesh.default_virtual_service_export_to,
                        &vs.meta.namespace,
                        &gw_ns,
                    )
                })
                .collect();
            for vs in vss {
                // The VirtualService's hosts that this server accepts (host match and the
                // server host's namespace filter).
                let hosts: Vec<String> = routes::vs_hosts(vs)
                    .into_iter()
                    .filter(|h| {
                        server_hosts.iter().any(|sh| {
                            let ns_ok = match sh.namespace.as_str() {
                                "*" => true,
                                "." => vs.meta.namespace == gw_ns,
                                n => vs.meta.namespace == n,
                            };
                            ns_ok && host::intersects(&sh.host, h)
                        })
                    })
                    .collect();
                if hosts.is_empty() {
                    continue;
                }
                let vctx = DestCtx {
                    namespace: &vs.meta.namespace,
                    ..ctx
                };
                match inner {
                    ListenerProtocol::Http => {
                        let key = format!("{}|{}", vs.key(), hosts.join(","));
                        if !seen_vhost.insert(key) {
                            continue;
                        }
                        let mut local = Vec::new();
                        let rs = routes::http_routes(
                            vs,
                            &binding,
                            proxy,
                            &vctx,
                            default_retry,
                            &mut local,
                        );
                        if rs.is_empty() {
                            continue;
                        }
                        refs.extend(local);
                        l.virtual_hosts.push(VirtualHost {
                            name: format!("{}:{port}", hosts.join(",")),
                            domains: hosts,
                            routes: rs,
                        });
                    }
                    ListenerProtocol::Tls => {
                        for (ri, r) in vs.spec.tls.iter().enumerate() {
                            for m in &r.matches {
                                if !routes::match_applies(vs, m, &binding, proxy, Some(port)) {
                                    continue;
                                }
                                let route = routes::l4_route(&r.route, &vctx, refs);
                                if route.is_empty() {
                                    continue;
                                }
                                l.tls_chains.push(L4Chain {
                                    source: format!("VirtualService {} tls[{ri}]", vs.key()),
                                    sni_wildcard_matches_apex: true,
                                    sni_hosts: m
                                        .sni_hosts
                                        .iter()
                                        .map(|h| host::resolve_short_name(h, &vs.meta.namespace))
                                        .collect(),
                                    destination_subnets: m
                                        .destination_subnets
                                        .iter()
                                        .filter_map(|s| parse_net(s))
                                        .collect(),
                                    route,
                                });
                            }
                        }
                    }
                    _ => {
                        for (ri, r) in vs.spec.tcp.iter().enumerate() {
                            let applies = r.matches.is_empty()
                                || r.matches.iter().any(|m| {
                                    routes::match_applies(vs, m, &binding, proxy, Some(port))
                                });
                            if !applies {
                                continue;
                            }
                            let route = routes::l4_route(&r.route, &vctx, refs);
                            if route.is_empty() {
                                continue;
                            }
                            l.tcp_chains.push(L4Chain {
                                source: format!("VirtualService {} tcp[{ri}]", vs.key()),
                                sni_wildcard_matches_apex: false,
                                sni_hosts: Vec::new(),
                                destination_subnets: Vec::new(),
                                route,
                            });
                        }
                    }
                }
            }
            l.servers.push(GatewayServer {
                gateway: gw_key.clone(),
                name: srv.name.clone().unwrap_or_else(|| format!("{gw_key}/{i}")),
                protocol: srv
                    .port
                    .as_ref()
                    .and_then(|p| p.protocol.clone())
                    .unwrap_or_default()
                    .to_ascii_uppercase(),
                hosts: server_hosts,
                tls: srv.tls.as_ref().map(|t| ServerTls {
                    mode: t.mode.unwrap_or(ServerTlsMode::Passthrough),
                    https_redirect: t.https_redirect.unwrap_or(false),
                    server_certificate: t.server_certificate.clone(),
                    private_key: t.private_key.clone(),
                    ca_certificates: t.ca_certificates.clone(),
                    ca_crl: t.ca_crl.clone(),
                    credential_name: t.credential_name.clone(),
                    subject_alt_names: t.subject_alt_names.clone(),
                    min_protocol_version: t.min_protocol_version,
                    max_protocol_version: t.max_protocol_version,
                }),
                bind: srv.bind.clone(),
            });
        }
        l.protocol = if wire.len() == 1 {
            wire.into_iter().next().unwrap_or(ListenerProtocol::Auto)
        } else {
            ListenerProtocol::Auto
        };
        out.push(l);
    }
    out
}
