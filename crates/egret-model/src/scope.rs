//! What one proxy can see: exportTo visibility, Sidecar scoping, services and their ports.

use std::collections::BTreeSet;

use egret_config::types::{
    EgressListener, Location, Resolution, ServiceEntry, Sidecar, WorkloadEntry,
};
use egret_config::{ConfigSet, Object};
use ipnet::IpNet;

use crate::host::{self, HostIndex};
use crate::identity::{ProxyIdentity, Role};
use crate::snapshot::ListenerProtocol;

pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Is an object with `export_to` (empty = `defaults`, empty defaults = everywhere) in
/// namespace `obj_ns` visible from namespace `ns`? (`istio-egress-spec.md` §0)
pub fn exported_to(export_to: &[String], defaults: &[String], obj_ns: &str, ns: &str) -> bool {
    let list = if export_to.is_empty() {
        defaults
    } else {
        export_to
    };
    if list.is_empty() {
        return true;
    }
    list.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => obj_ns == ns,
        "~" => false,
        other => other == ns,
    })
}

/// A protocol as declared on a ServiceEntry / Gateway / Sidecar port (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// Empty or unknown: sniffed.
    Unknown,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Proto {
        match s.map(|s| s.to_ascii_uppercase()).as_deref() {
            Some("HTTP") => Proto::Http,
            Some("HTTP2") => Proto::Http2,
            Some("GRPC") => Proto::Grpc,
            Some("GRPC-WEB") => Proto::GrpcWeb,
            Some("HTTPS") => Proto::Https,
            Some("TLS") => Proto::Tls,
            Some("TCP") => Proto::Tcp,
            Some("MONGO") => Proto::Mongo,
            Some("REDIS") => Proto::Redis,
            Some("MYSQL") => Proto::Mysql,
            Some("UDP") => Proto::Udp,
            _ => Proto::Unknown,
        }
    }

    /// How a sidecar listener treats it: HTTPS and TLS are *not* terminated at the sidecar,
    /// only routed by SNI (`istio-egress-spec.md` §10.2).
    pub fn listener_class(self) -> ListenerProtocol {
        match self {
            Proto::Http | Proto::Http2 | Proto::Grpc | Proto::GrpcWeb => ListenerProtocol::Http,
            Proto::Https | Proto::Tls => ListenerProtocol::Tls,
            Proto::Tcp | Proto::Mongo | Proto::Redis | Proto::Mysql | Proto::Udp => {
                ListenerProtocol::Tcp
            }
            Proto::Unknown => ListenerProtocol::Auto,
        }
    }

    pub fn is_http(self) -> bool {
        self.listener_class() == ListenerProtocol::Http
    }
}

#[derive(Debug, Clone)]
pub struct SvcPort {
    pub number: u16,
    pub name: String,
    pub proto: Proto,
    pub target_port: Option<u16>,
}

/// One host of one ServiceEntry, as a proxy sees it.
#[derive(Debug, Clone)]
pub struct Service<'a> {
    pub host: String,
    pub se: &'a Object<ServiceEntry>,
    pub ports: Vec<SvcPort>,
    pub addresses: Vec<IpNet>,
    pub resolution: Resolution,
    pub location: Location,
}

impl Service<'_> {
    pub fn port(&self, number: u16) -> Option<&SvcPort> {
        self.ports.iter().find(|p| p.number == number)
    }

    pub fn namespace(&self) -> &str {
        &self.se.meta.namespace
    }

    pub fn key(&self) -> String {
        self.se.key()
    }
}

/// The proxy's view of the registry.
pub struct Scope<'a> {
    pub set: &'a ConfigSet,
    pub proxy: &'a ProxyIdentity,
    pub root_ns: String,
    /// The Sidecar resource that applies to this proxy (sidecars only).
    pub sidecar: Option<&'a Object<Sidecar>>,
    /// Visible services in a stable order (load order of the ServiceEntries, then host order).
    pub services: Vec<Service<'a>>,
    /// host -> index into `services` (first visible wins; the proxy's own namespace first).
    pub by_host: HostIndex<usize>,
    /// literal host (wildcards as written) -> every service with it.
    all_by_host: std::collections::HashMap<String, Vec<usize>>,
    /// namespace -> DestinationRules there by host (short names expanded), as indexes into
    /// `set.destination_rules`.
    pub destination_rules: std::collections::HashMap<String, host::HostMultiMap<usize>>,
}

impl<'a> Scope<'a> {
    pub fn new(set: &'a ConfigSet, proxy: &'a ProxyIdentity) -> Scope<'a> {
        let root_ns = set
            .mesh
            .root_namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_string());
        let sidecar = match proxy.role {
            Role::Sidecar => find_sidecar(set, proxy, &root_ns),
            Role::Gateway => None,
        };
        let mut scope = Scope {
            set,
            proxy,
            root_ns,
            sidecar,
            services: Vec::new(),
            by_host: HostIndex::new(),
            all_by_host: Default::default(),
            destination_rules: Default::default(),
        };
        scope.collect_services();
        for (i, dr) in set.destination_rules.iter().enumerate() {
            if let Some(h) = &dr.spec.host {
                scope
                    .destination_rules
                    .entry(dr.meta.namespace.clone())
                    .or_default()
                    .insert(&host::resolve_short_name(h, &dr.meta.namespace), i);
            }
        }
        scope
    }

    fn imports(&self) -> Option<Vec<(String, String)>> {
        let sc = self.sidecar?;
        let listeners: &Vec<EgressListener> = &sc.spec.egress;
        if listeners.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for l in listeners {
            for h in &l.hosts {
                if let Some((ns, host)) = h.split_once('/') {
                    // `.` is the workload's own namespace, also in a mesh-wide default
                    // Sidecar from the root namespace (Istio's convertIstioListenerToWrapper).
                    let ns = if ns == "." {
                        self.proxy.namespace.clone()
                    } else {
                        ns.to_string()
                    };
                    out.push((ns, host::canonical(host)));
                }
            }
        }
        Some(out)
    }

    /// Sidecar `egress.hosts` scoping: does the proxy import `host` from namespace `ns`?
    /// (Only prunes configuration; unmatched traffic falls to the outbound policy.)
    /// Entries `~ns/host` (newer Istio API) subtract from what the others import; `~/*`
    /// imports nothing.
    pub fn imported(&self, ns: &str, hosts: &[String]) -> bool {
        let Some(imports) = self.imports() else {
            return true;
        };
        let ns_ok = |ins: &str| ins == "*" || ins == ns;
        hosts.iter().any(|h| {
            let included = imports
                .iter()
                .filter(|(ins, _)| !ins.starts_with('~'))
                .any(|(ins, ih)| ns_ok(ins) && host::intersects(ih, h));
            let excluded = imports.iter().any(|(ins, ih)| {
                ins.strip_prefix('~')
                    .filter(|rest| !rest.is_empty())
                    .is_some_and(|ens| ns_ok(ens) && host::matches(ih, h))
            });
            included && !excluded
        })
    }

    fn collect_services(&mut self) {
        let ns = self.proxy.namespace.as_str();
        let defaults = &self.set.mesh.default_service_export_to;
        let mut visible: Vec<&'a Object<ServiceEntry>> = self
            .set
            .service_entries
            .iter()
            .filter(|se| exported_to(&se.spec.export_to, defaults, &se.meta.namespace, ns))
            .collect();
        // The proxy's own namespace first: when two namespaces declare the same host, a
        // proxy sees its own namespace's definition.
        visible.sort_by_key(|se| se.meta.namespace != ns);
        for se in visible {
            let hosts: Vec<String> = se.spec.hosts.iter().map(|h| host::canonical(h)).collect();
            for h in hosts {
                if !self.imported(&se.meta.namespace, std::slice::from_ref(&h)) {
                    continue;
                }
                let svc = service_of(se, h.clone());
                self.by_host.insert(&h, self.services.len());
                self.all_by_host
                    .entry(h.clone())
                    .or_default()
                    .push(self.services.len());
                self.services.push(svc);
            }
        }
        self.by_host.finish();
    }

    /// The visible service for a concrete or wildcard host, if any (most specific match).
    pub fn service(&self, host: &str) -> Option<&Service<'a>> {
        self.by_host.get(host).map(|i| &self.services[*i])
    }

    /// Services whose host falls within `pattern` (a VirtualService host), or whose wildcard
    /// host contains it. A concrete pattern costs one hash lookup per label; a wildcard
    /// pattern scans the services (rare: VirtualService hosts are mostly concrete names).
    pub fn services_matching(&self, pattern: &str) -> Vec<&Service<'a>> {
        if host::is_wildcard(pattern) {
            return self
                .services
                .iter()
                .filter(|s| host::matches(pattern, &s.host) || host::matches(&s.host, pattern))
                .collect();
        }
        let mut idx: Vec<usize> = self.all_by_host.get(pattern).cloned().unwrap_or_default();
        // Wildcard services containing the name: `*.<suffix>` for each proper suffix, then `*`.
        let mut rest = pattern;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if let Some(v) = self.all_by_host.get(&format!("*.{rest}")) {
                idx.extend(v);
            }
        }
        if let Some(v) = self.all_by_host.get("*") {
            idx.extend(v);
        }
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| &self.services[i]).collect()
    }

    /// WorkloadEntries selected by a MESH_INTERNAL ServiceEntry's `workloadSelector`.
    pub fn workload_entries(&self, se: &Object<ServiceEntry>) -> Vec<&'a Object<WorkloadEntry>> {
        let Some(sel) = &se.spec.workload_selector else {
            return Vec::new();
        };
        self.set
            .workload_entries
            .iter()
            .filter(|we| {
                we.meta.namespace == se.meta.namespace
                    && sel
                        .labels
                        .iter()
                        .all(|(k, v)| we.spec.labels.get(k) == Some(v))
            })
            .collect()
    }

    /// Ports that carry any visible service, with the protocols declared there, split into
    /// services without addresses (port-wide) and with addresses (VIP-specific).
    pub fn port_protocols(&self) -> std::collections::BTreeMap<u16, PortProtocols> {
        let mut out: std::collections::BTreeMap<u16, PortProtocols> = Default::default();
        for s in &self.services {
            for p in &s.ports {
                let e = out.entry(p.number).or_default();
                if s.addresses.is_empty() {
                    e.wildcard.insert(p.proto.listener_class());
                } else {
                    e.vip.insert(p.proto.listener_class());
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default)]
pub struct PortProtocols {
    pub wildcard: BTreeSet<ListenerProtocol>,
    pub vip: BTreeSet<ListenerProtocol>,
}

fn service_of<'a>(se: &'a Object<ServiceEntry>, host: String) -> Service<'a> {
    let ports = se
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let number = u16::try_from(p.number?).ok().filter(|n| *n > 0)?;
            Some(SvcPort {
                number,
                name: p.name.clone().unwrap_or_default(),
                proto: Proto::parse(p.protocol.as_deref()),
                target_port: p.target_port.and_then(|t| u16::try_from(t).ok()),
            })
        })
        .collect();
    let addresses = se
        .spec
        .addresses
        .iter()
        .filter_map(|a| parse_net(a))
        .collect();
    Service {
        host,
        se,
        ports,
        addresses,
        resolution: se.spec.resolution.unwrap_or(Resolution::None),
        location: se.spec.location.unwrap_or(Location::MeshExternal),
    }
}

/// An IP or CIDR.
pub fn parse_net(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    s.parse::<std::net::IpAddr>().ok().map(IpNet::from)
}

/// The Sidecar resource for a workload: one in its namespace whose selector matches its labels,
/// else its namespace's selector-less one, else the root namespace's selector-less one
/// (`istio-egress-spec.md` §5). Among equals, the first loaded.
fn find_sidecar<'a>(
    set: &'a ConfigSet,
    proxy: &ProxyIdentity,
    root_ns: &str,
) -> Option<&'a Object<Sidecar>> {
    let ns = proxy.namespace.as_str();
    let in_ns = |n: &str| -> Vec<&'a Object<Sidecar>> {
        set.sidecars
            .iter()
            .filter(|s| s.meta.namespace == n)
            .collect()
    };
    let own = in_ns(ns);
    own.iter()
        .find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| !sel.labels.is_empty() && proxy.selected_by(&sel.labels))
        })
        .or_else(|| own.iter().find(|s| s.spec.workload_selector.is_none()))
        .copied()
        .or_else(|| {
            in_ns(root_ns)
                .into_iter()
                .find(|s| s.spec.workload_selector.is_none())
        })
}
