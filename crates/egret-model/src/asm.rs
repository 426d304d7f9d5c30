//! Alibaba ASM `ASMEgressTrafficPolicy` expanded into the Istio objects ASM generates
//! (`istio-egress-spec.md` §8). For each `to` destination of a policy in namespace N naming
//! egress gateway G:
//!
//! - ServiceEntry `<policy>-<to>`: the hosts and port, DNS, MESH_EXTERNAL.
//! - Gateway `<policy>` (selector `istio: G`): one server per gateway port, ISTIO_MUTUAL
//!   (HTTPS for HTTP destinations, TLS for TLS/HTTPS ones), hosts = the destinations' hosts.
//! - VirtualService `<policy>-<to>`: the mesh leg sends port traffic to
//!   `G.N.svc.cluster.local` (subset `<to>`) on the gateway port; the gateway leg sends it to
//!   the external host on its port.
//! - DestinationRule `<policy>`: ISTIO_MUTUAL to the gateway per subset, SNI = first host.
//! - Visibility: everything above is exported only to N and the `from` namespaces; inside a
//!   `from` namespace a namespace-wide Sidecar hides hosts granted only to selected workloads
//!   (`~N/host` exclusions) and each selected workload gets a Sidecar that shows its own. With
//!   the REGISTRY_ONLY prerequisite, a workload not named is blackholed, as in ASM.
//!
//! Sidecar -> gateway is always mutual TLS, as in ASM. The gateway itself must be described as
//! a MESH_INTERNAL ServiceEntry when egret runs without Kubernetes.

use std::collections::BTreeMap;

use egret_config::types::*;
use egret_config::{ConfigSet, Kind, Meta, Object};

use crate::scope::Proto;

/// The input with ASM policies expanded, and the `Kind ns/name` of each generated object.
pub fn expand(input: &ConfigSet) -> (std::borrow::Cow<'_, ConfigSet>, Vec<String>) {
    if input.asm_egress_policies.is_empty() {
        return (std::borrow::Cow::Borrowed(input), Vec::new());
    }
    let mut set = input.clone();
    let mut generated = Vec::new();
    for p in &input.asm_egress_policies {
        expand_one(p, &mut set, &mut generated);
    }
    (std::borrow::Cow::Owned(set), generated)
}

/// A generated object. Its origin is the part of the ASM policy it came from (`at`, a field
/// path), so a diagnostic about it points at that line.
#[allow(clippy::too_many_arguments)]
fn obj<S>(
    src: &Object<AsmEgressTrafficPolicy>,
    at: &str,
    kind: Kind,
    api: &str,
    ns: &str,
    name: String,
    spec: S,
    generated: &mut Vec<String>,
) -> Object<S> {
    generated.push(format!("{kind} {ns}/{name}"));
    Object {
        kind,
        api_version: api.to_string(),
        meta: Meta {
            name,
            namespace: ns.to_string(),
            labels: Default::default(),
            annotations: BTreeMap::from([(
                "egret.dev/generated-from".to_string(),
                format!("ASMEgressTrafficPolicy {}", src.key()),
            )]),
        },
        spec,
        origin: egret_config::Origin {
            file: src.origin.file.clone(),
            positions: std::sync::Arc::new(src.origin.positions.subtree(at)),
        },
        generated_from: Some(src.obj_ref()),
    }
}

fn expand_one(
    p: &Object<AsmEgressTrafficPolicy>,
    set: &mut ConfigSet,
    generated: &mut Vec<String>,
) {
    const NET: &str = "networking.istio.io/v1";
    let Some(gw_name) = p
        .spec
        .by_egress_gateway
        .as_ref()
        .and_then(|g| g.name.clone())
    else {
        return; // validation reports it
    };
    let ns = p.meta.namespace.clone();
    let pname = p.meta.name.clone();
    let gw_host = format!("{gw_name}.{ns}.svc.cluster.local");
    let gw_ref = format!("{ns}/{pname}");
    // Visible only where it is needed: the gateway's namespace and the namespaces of the
    // `from` workloads. Anyone else sees nothing of it (and is blackholed under the
    // REGISTRY_ONLY prerequisite).
    let mut export_to = vec![ns.clone()];
    for f in p.spec.egress_rules.iter().flat_map(|r| &r.from) {
        if let Some(n) = &f.namespace
            && !export_to.contains(n)
        {
            export_to.push(n.clone());
        }
    }

    // Gateway servers by gateway port: (protocol, hosts)
    let mut servers: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
    let mut subsets = Vec::new();
    // from-namespace -> workload labels (empty = the whole namespace) -> granted hosts
    let mut grants: BTreeMap<String, BTreeMap<BTreeMap<String, String>, Vec<String>>> =
        BTreeMap::new();

    for (ri, rule) in p.spec.egress_rules.iter().enumerate() {
        for (ti, to) in rule.to.iter().enumerate() {
            let at = format!("spec.egressRules[{ri}].to[{ti}]");
            let (Some(tname), Some(port), Some(gport)) = (
                to.name.clone(),
                to.port.clone(),
                to.by_egress_gateway.as_ref().and_then(|g| g.port),
            ) else {
                continue;
            };
            let Some(number) = port.number else { continue };
            if to.hosts.is_empty() {
                continue;
            }
            let proto = Proto::parse(port.protocol.as_deref());
            let http = proto.is_http();
            let first_host = to.hosts[0].clone();

            set.service_entries.push(obj(
                p,
                &at,
                Kind::ServiceEntry,
                NET,
                &ns,
                format!("{pname}-{tname}"),
                ServiceEntry {
                    hosts: to.hosts.clone(),
                    ports: vec![ServicePort {
                        number: Some(number),
                        name: port.name.clone().or_else(|| Some(format!("port-{number}"))),
                        protocol: port.protocol.clone(),
                        target_port: None,
                    }],
                    location: Some(Location::MeshExternal),
                    resolution: Some(Resolution::Dns),
                    export_to: export_to.clone(),
                    ..Default::default()
                },
                generated,
            ));

            let server_proto = if http { "HTTPS" } else { "TLS" };
            let e = servers
                .entry(gport)
                .or_insert_with(|| (server_proto.to_string(), Vec::new()));
            e.1.extend(to.hosts.iter().cloned());

            subsets.push(Subset {
                name: Some(tname.clone()),
                labels: Default::default(),
                traffic_policy: Some(TrafficPolicy {
                    port_level_settings: vec![PortTrafficPolicy {
                        port: Some(PortSelector {
                            number: Some(gport),
                        }),
                        tls: Some(ClientTlsSettings {
                            mode: Some(ClientTlsMode::IstioMutual),
                            sni: Some(first_host.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            });

            let to_gateway = Destination {
                host: Some(gw_host.clone()),
                subset: Some(tname.clone()),
                port: Some(PortSelector {
                    number: Some(gport),
                }),
            };
            let to_external = Destination {
                host: Some(first_host.clone()),
                subset: None,
                port: Some(PortSelector {
                    number: Some(number),
                }),
            };
            let vs = if http {
                VirtualService {
                    hosts: to.hosts.clone(),
                    gateways: vec!["mesh".into(), gw_ref.clone()],
                    http: vec![
                        HttpRoute {
                            matches: vec![HttpMatchRequest {
                                gateways: vec!["mesh".into()],
                                port: Some(number),
                                ..Default::default()
                            }],
                            route: vec![HttpRouteDestination {
                                destination: Some(to_gateway),
                                weight: Some(100),
                                headers: None,
                            }],
                            ..Default::default()
                        },
                        HttpRoute {
                            matches: vec![HttpMatchRequest {
                                gateways: vec![gw_ref.clone()],
                                port: Some(gport),
                                ..Default::default()
                            }],
                            route: vec![HttpRouteDestination {
                                destination: Some(to_external),
                                weight: Some(100),
                                headers: None,
                            }],
                            ..Default::default()
                        },
                    ],
                    export_to: export_to.clone(),
                    ..Default::default()
                }
            } else {
                VirtualService {
                    hosts: to.hosts.clone(),
                    gateways: vec!["mesh".into(), gw_ref.clone()],
                    tls: vec![TlsRoute {
                        matches: vec![TlsMatchAttributes {
                            sni_hosts: to.hosts.clone(),
                            gateways: vec!["mesh".into()],
                            port: Some(number),
                            ..Default::default()
                        }],
                        route: vec![RouteDestination {
                            destination: Some(to_gateway),
                            weight: Some(100),
                        }],
                    }],
                    tcp: vec![TcpRoute {
                        matches: vec![L4MatchAttributes {
                            gateways: vec![gw_ref.clone()],
                            port: Some(gport),
                            ..Default::default()
                        }],
                        route: vec![RouteDestination {
                            destination: Some(to_external),
                            weight: Some(100),
                        }],
                    }],
                    export_to: export_to.clone(),
                    ..Default::default()
                }
            };
            set.virtual_services.push(obj(
                p,
                &at,
                Kind::VirtualService,
                NET,
                &ns,
                format!("{pname}-{tname}"),
                vs,
                generated,
            ));

            for f in &rule.from {
                let Some(fns) = f.namespace.clone() else {
                    continue;
                };
                let hosts = grants
                    .entry(fns)
                    .or_default()
                    .entry(f.workload_selector.clone())
                    .or_default();
                for h in &to.hosts {
                    if !hosts.contains(h) {
                        hosts.push(h.clone());
                    }
                }
            }
        }
    }

    if servers.is_empty() {
        return;
    }
    set.gateways.push(obj(
        p,
        "spec.byEgressGateway",
        Kind::Gateway,
        NET,
        &ns,
        pname.clone(),
        Gateway {
            selector: BTreeMap::from([("istio".to_string(), gw_name.clone())]),
            servers: servers
                .into_iter()
                .map(|(port, (proto, hosts))| Server {
                    port: Some(ServicePort {
                        number: Some(port),
                        name: Some(format!("{}-{port}", proto.to_ascii_lowercase())),
                        protocol: Some(proto),
                        target_port: None,
                    }),
                    hosts,
                    tls: Some(ServerTlsSettings {
                        mode: Some(ServerTlsMode::IstioMutual),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        },
        generated,
    ));
    set.destination_rules.push(obj(
        p,
        "spec.byEgressGateway",
        Kind::DestinationRule,
        NET,
        &ns,
        format!("{pname}-gateway"),
        DestinationRule {
            host: Some(gw_host.clone()),
            subsets,
            export_to: export_to.clone(),
            ..Default::default()
        },
        generated,
    ));
    // Within a `from` namespace, workloads not granted a host must not see it. A
    // namespace-wide Sidecar imports everything except the hosts granted only to selected
    // workloads (`~ns/host` exclusions); each selected workload gets a Sidecar that lets it
    // see its own grants.
    for (fns, by_selector) in grants {
        let all: Vec<&String> = by_selector.values().flatten().collect();
        let everyone: Vec<String> = by_selector
            .get(&BTreeMap::new())
            .cloned()
            .unwrap_or_default();
        let hidden: Vec<&String> = all
            .iter()
            .copied()
            .filter(|h| !everyone.contains(h))
            .collect();
        if hidden.is_empty() {
            continue;
        }
        let sidecar = |labels: BTreeMap<String, String>, excluded: Vec<String>| Sidecar {
            workload_selector: if labels.is_empty() {
                None
            } else {
                Some(WorkloadSelector { labels })
            },
            egress: vec![EgressListener {
                hosts: std::iter::once("*/*".to_string())
                    .chain(excluded.into_iter().map(|h| format!("~{ns}/{h}")))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut unique: Vec<String> = hidden.iter().map(|h| h.to_string()).collect();
        unique.sort();
        unique.dedup();
        set.sidecars.push(obj(
            p,
            "spec.egressRules",
            Kind::Sidecar,
            NET,
            &fns,
            format!("{pname}-default"),
            sidecar(BTreeMap::new(), unique.clone()),
            generated,
        ));
        for (i, (labels, granted)) in by_selector.iter().enumerate() {
            if labels.is_empty() {
                continue;
            }
            let excluded: Vec<String> = unique
                .iter()
                .filter(|h| !granted.contains(h))
                .cloned()
                .collect();
            set.sidecars.push(obj(
                p,
                "spec.egressRules",
                Kind::Sidecar,
                NET,
                &fns,
                format!("{pname}-{i}"),
                sidecar(labels.clone(), excluded),
                generated,
            ));
        }
    }
}
