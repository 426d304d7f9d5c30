//! Per-object validation: what Istio's validating webhook (and `istioctl validate`) rejects or
//! warns about, checked for each object on its own.
//!
//! The rules follow `istio/istio` `pkg/config/validation` (`validation.go`, `virtualservice.go`,
//! `agent/validation.go`, `agent/extensionprovider.go`, `pkg/config/security`) at the snapshot
//! named in `istio-egress-spec.md`. Each check says which Istio rule it implements; a few
//! checks are egret's own (marked "egret:"), where egret reads a field differently from Istio
//! or cannot act on it.
//!
//! Cross-object checks (unknown gateways, missing subsets, ...) belong to the compiler; the
//! only lookup across objects here is which VirtualServices are the target of a `delegate`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use egret_config::types::*;
use egret_config::{ConfigSet, Diagnostic, Diagnostics, Object, ObjectRef, Severity};
use serde_json::Value;

use crate::host;

/// Validate every object in `set` (and the mesh config, when one was given).
/// The result is sorted by file and line.
pub fn validate(set: &ConfigSet) -> Diagnostics {
    let mut out = Diagnostics::default();
    let delegates = delegate_targets(set);

    for o in &set.service_entries {
        check(o, &mut out, service_entry);
    }
    for o in &set.destination_rules {
        check(o, &mut out, destination_rule);
    }
    for o in &set.virtual_services {
        check(o, &mut out, |r, o| virtual_service(r, o, &delegates));
    }
    for o in &set.gateways {
        check(o, &mut out, gateway);
    }
    for o in &set.sidecars {
        check(o, &mut out, sidecar);
    }
    for o in &set.workload_entries {
        check(o, &mut out, |r, o| {
            workload_entry(r, "spec", &o.spec, EndpointKind::Standalone, None)
        });
    }
    for o in &set.authorization_policies {
        check(o, &mut out, authorization_policy);
    }
    for o in &set.request_authentications {
        check(o, &mut out, request_authentication);
    }
    for o in &set.asm_egress_policies {
        check(o, &mut out, asm_egress_policy);
    }
    mesh_config(set, &mut out);

    out.sort();
    out
}

// ===== Reporting =====

/// Collects the diagnostics about one object (or the mesh config). Field paths are rendered
/// separately from messages, so messages never repeat them.
struct Report<'a> {
    make: &'a dyn Fn(Severity, &str, String) -> Diagnostic,
    out: &'a mut Diagnostics,
}

impl Report<'_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        let d = (self.make)(Severity::Error, field, message.into());
        self.out.push(d);
    }

    fn warning(&mut self, field: &str, message: impl Into<String>) {
        let d = (self.make)(Severity::Warning, field, message.into());
        self.out.push(d);
    }
}

/// Run `f` on `obj` with a [`Report`] that attributes diagnostics to it, after the checks
/// every kind shares.
fn check<S>(obj: &Object<S>, out: &mut Diagnostics, f: impl FnOnce(&mut Report<'_>, &Object<S>)) {
    let make = |s: Severity, field: &str, m: String| obj.diag(s, field, m);
    let mut r = Report { make: &make, out };
    if obj.kind != egret_config::Kind::AuthorizationPolicy
        && obj.meta.annotations.contains_key(DRY_RUN)
    {
        // Istio `checkDryRunAnnotation`: only AuthorizationPolicy supports it.
        r.error(
            &format!("metadata.annotations.{DRY_RUN}"),
            format!("{DRY_RUN} is only supported on AuthorizationPolicy"),
        );
    }
    f(&mut r, obj);
}

const DRY_RUN: &str = "istio.io/dry-run";

// ===== Small helpers =====

/// Kubernetes DNS-1123 label: 1..63 of `[a-z0-9-]`, starting and ending alphanumeric
/// (Istio `labels.IsDNS1123Label`: namespaces, port names, subset and gateway names).
fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// Istio `ValidateIPSubnet` / `security.ValidateIPs`: an IP, or a CIDR block when it has a `/`.
fn is_ip_or_cidr(s: &str) -> bool {
    if s.contains('/') {
        s.parse::<ipnet::IpNet>().is_ok()
    } else {
        is_ip(s)
    }
}

/// A concrete (non-wildcard) DNS name (Istio `ValidateFQDN`).
fn is_fqdn(s: &str) -> bool {
    !host::is_wildcard(s) && host::validate_dns_name(s).is_ok()
}

fn is_set(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

fn unix_path(addr: &str) -> Option<&str> {
    addr.strip_prefix("unix://")
}

/// Istio `ValidateUnixAddress`: an absolute path to a file, or an abstract socket `@name`.
fn check_unix_path(r: &mut Report<'_>, field: &str, path: &str) {
    if path.is_empty() {
        r.error(field, "unix:// address must name a socket path");
    } else if !path.starts_with('@') && (!path.starts_with('/') || path.ends_with('/')) {
        r.error(field, format!("{path:?} is not an absolute path to a file"));
    }
}

/// Istio `ValidatePort`.
fn check_port(r: &mut Report<'_>, field: &str, n: u32) {
    if !(1..=65535).contains(&n) {
        r.error(
            field,
            format!("port number {n} must be in the range 1..65535"),
        );
    }
}

/// Istio `ValidateDuration`: at least 1ms, millisecond precision.
fn check_duration(r: &mut Report<'_>, field: &str, d: Duration) {
    const MS: u64 = 1_000_000;
    if d.as_nanos() < MS {
        r.error(field, format!("duration {d} is shorter than 1ms"));
    } else if !d.as_nanos().is_multiple_of(MS) {
        r.error(
            field,
            format!("duration {d}: only millisecond precision is supported"),
        );
    }
}

fn check_opt_duration(r: &mut Report<'_>, field: &str, d: Option<Duration>) {
    if let Some(d) = d {
        check_duration(r, field, d);
    }
}

/// Istio `ValidatePercent` (integer percentages).
fn check_percent_int(r: &mut Report<'_>, field: &str, v: Option<i32>) {
    if let Some(v) = v
        && !(0..=100).contains(&v)
    {
        r.error(field, format!("percentage {v} is not in the range 0..100"));
    }
}

/// Istio `validatePercentage` (`Percent{value}`): 0, or within [0.0001, 100].
fn check_percentage(r: &mut Report<'_>, field: &str, p: Option<Percent>) {
    if let Some(v) = p.and_then(|p| p.value)
        && (!(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001))
    {
        r.error(
            &format!("{field}.value"),
            format!("percentage {v} is neither 0 nor in the range 0.0001..100"),
        );
    }
}

/// Compile a regex as Envoy would (RE2 syntax; the `regex` crate is close to RE2).
/// Istio `validateStringRegexp`: non-empty, at most 1024 characters, compiles.
fn check_regex(r: &mut Report<'_>, field: &str, re: &str) {
    if re.is_empty() {
        r.error(field, "regex must not be empty");
    } else if re.len() > 1024 {
        r.error(field, "regex is longer than 1024 characters");
    } else if let Err(e) = regex::Regex::new(re) {
        r.error(field, format!("invalid regex {re:?}: {}", regex_error(&e)));
    }
}

/// The one-line reason of a regex error (the crate's message spans several lines).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Duplicate detection that remembers the first index of each key.
#[derive(Default)]
struct FirstSeen<K>(HashMap<K, usize>);

impl<K: std::hash::Hash + Eq> FirstSeen<K> {
    /// `Some(first index)` when `key` was seen before.
    fn dup(&mut self, key: K, i: usize) -> Option<usize> {
        match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
                None
            }
        }
    }
}

// ===== Protocols =====

/// The port protocols Istio knows (`protocol.Parse`, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    Https,
    Grpc,
    GrpcWeb,
    Http2,
    Mongo,
    Tcp,
    Tls,
    Redis,
    Mysql,
    Udp,
}

impl Proto {
    fn parse(s: &str) -> Option<Proto> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => Proto::Http,
            "HTTPS" => Proto::Https,
            "GRPC" => Proto::Grpc,
            "GRPC-WEB" => Proto::GrpcWeb,
            "HTTP2" => Proto::Http2,
            "MONGO" => Proto::Mongo,
            "TCP" => Proto::Tcp,
            "TLS" => Proto::Tls,
            "REDIS" => Proto::Redis,
            "MYSQL" => Proto::Mysql,
            "UDP" => Proto::Udp,
            _ => return None,
        })
    }

    /// Istio `Instance.IsHTTP`.
    fn is_http(self) -> bool {
        matches!(
            self,
            Proto::Http | Proto::Http2 | Proto::Grpc | Proto::GrpcWeb
        )
    }

    /// Istio `Instance.IsTLS`: HTTPS and TLS (not terminated by sidecars).
    fn is_tls(self) -> bool {
        matches!(self, Proto::Https | Proto::Tls)
    }

    /// Opaque TCP protocols: nothing in the stream tells hosts apart.
    fn is_opaque_tcp(self) -> bool {
        matches!(
            self,
            Proto::Tcp | Proto::Mongo | Proto::Redis | Proto::Mysql
        )
    }
}

/// A port's protocol: `Ok(None)` when unset, `Err(text)` when unknown.
fn port_protocol(p: &Option<String>) -> Result<Option<Proto>, &str> {
    match p.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => Proto::parse(s).map(Some).ok_or(s),
    }
}

/// egret: an unknown protocol is treated as unset (sniffed). Istio's `ValidateProtocol`
/// rejects it; egret warns, as `ServicePort` documents.
fn warn_unknown_protocol(r: &mut Report<'_>, field: &str, p: &Option<String>) {
    if let Err(s) = port_protocol(p) {
        r.warning(
            field,
            format!("unknown protocol {s:?}: treated as unset (protocol sniffing)"),
        );
    }
}

// ===== exportTo =====

/// Istio `validateExportTo` (SE, VS, DR).
fn check_export_to(
    r: &mut Report<'_>,
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    dr_with_selector: bool,
) {
    if export_to.is_empty() {
        return;
    }
    let mut seen: FirstSeen<&str> = FirstSeen::default();
    let mut valid: Vec<&str> = Vec::new();
    for (i, e) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        // "." is the object's own namespace: "." and "<ns>" are duplicates.
        let key = if e == "." { namespace } else { e.as_str() };
        if let Some(j) = seen.dup(key, i) {
            if export_to[j] == *e {
                r.error(
                    &field,
                    format!("duplicate entry {e:?} (also spec.exportTo[{j}])"),
                );
            } else {
                r.error(
                    &field,
                    format!(
                        "\".\" and {namespace:?} both name this namespace (also spec.exportTo[{j}])"
                    ),
                );
            }
            continue;
        }
        if e == "~" && !is_service_entry {
            r.error(
                &field,
                "\"~\" (export to no namespace) is only allowed on ServiceEntries",
            );
        } else if e == "~" || e == "*" || e == "." || is_dns1123_label(e) {
            valid.push(key);
        } else {
            let allowed = if is_service_entry {
                "\".\", \"*\", \"~\" or a namespace name"
            } else {
                "\".\", \"*\" or a namespace name"
            };
            r.error(&field, format!("{e:?} is not a valid entry: use {allowed}"));
        }
    }
    if dr_with_selector && !valid.is_empty() && (valid.len() > 1 || !valid.contains(&namespace)) {
        r.error(
            "spec.exportTo",
            "a DestinationRule with workloadSelector may only be exported to its own namespace (exportTo: [\".\"])",
        );
    }
    if valid.contains(&"*") && export_to.len() > 1 {
        r.error(
            "spec.exportTo",
            "\"*\" (all namespaces) cannot be combined with other entries",
        );
    }
    if valid.contains(&"~") && export_to.len() > 1 {
        r.error(
            "spec.exportTo",
            "\"~\" (no namespace) cannot be combined with other entries",
        );
    }
}

// ===== ServiceEntry =====

/// Istio `ValidateServiceEntry`.
fn service_entry(r: &mut Report<'_>, o: &Object<ServiceEntry>) {
    let se = &o.spec;
    let resolution = se.resolution.unwrap_or(Resolution::None);

    // Hosts: required, DNS names, bare "*" invalid.
    if se.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if h == "*" {
            r.error(&field, "\"*\" is not allowed in ServiceEntry hosts");
        } else if let Err(e) = host::validate_dns_name(h) {
            r.error(&field, e);
        }
    }

    // Addresses: IPs or CIDRs; CIDRs only with NONE/STATIC.
    for (i, a) in se.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        if !is_ip_or_cidr(a) {
            r.error(&field, format!("{a:?} is not an IP address or CIDR block"));
        } else if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            r.error(
                &field,
                format!("CIDR addresses are only allowed with resolution NONE or STATIC, not {resolution}"),
            );
        }
    }

    let port_names = service_ports(r, se);

    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "endpoints are not allowed with resolution NONE",
                );
            }
            if se.workload_selector.is_some() {
                r.warning(
                    "spec.workloadSelector",
                    "workloadSelector has no effect with resolution NONE",
                );
            }
        }
        Resolution::Static => {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                r.error(
                    "spec.resolution",
                    "resolution STATIC needs endpoints or a workloadSelector",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let base = format!("spec.endpoints[{i}]");
                workload_entry(r, &base, ep, EndpointKind::Static, Some(&port_names));
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                // Each host is the name to resolve, so it must be concrete.
                for (i, h) in se.hosts.iter().enumerate() {
                    if host::is_wildcard(h) && h != "*" {
                        r.error(
                            &format!("spec.hosts[{i}]"),
                            format!("{resolution} resolution is not allowed with wildcard host {h:?}; use resolution NONE"),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                r.error(
                    "spec.endpoints",
                    "DNS_ROUND_ROBIN allows at most one endpoint",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let base = format!("spec.endpoints[{i}]");
                workload_entry(r, &base, ep, EndpointKind::Dns, Some(&port_names));
            }
        }
        Resolution::DynamicDns => {
            for (i, h) in se.hosts.iter().enumerate() {
                if !host::is_wildcard(h) {
                    r.error(
                        &format!("spec.hosts[{i}]"),
                        format!("resolution DYNAMIC_DNS needs wildcard hosts (\"*.example.com\"), not {h:?}"),
                    );
                }
            }
            if !se.addresses.is_empty() {
                r.error(
                    "spec.addresses",
                    "addresses are not allowed with resolution DYNAMIC_DNS",
                );
            }
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "endpoints are not allowed with resolution DYNAMIC_DNS",
                );
            }
            // Istio: HTTP, TLS, GRPC and HTTP2 only (the dynamic forward proxy's protocols).
            for (i, p) in se.ports.iter().enumerate() {
                let ok = matches!(
                    port_protocol(&p.protocol),
                    Ok(Some(Proto::Http | Proto::Tls | Proto::Grpc | Proto::Http2))
                );
                if !ok {
                    r.error(
                        &format!("spec.ports[{i}].protocol"),
                        "resolution DYNAMIC_DNS supports only HTTP, TLS, GRPC and HTTP2 ports",
                    );
                }
            }
        }
    }

    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        r.error(
            "spec.workloadSelector",
            "set only one of endpoints or workloadSelector",
        );
    }
    if let Some(ws) = &se.workload_selector {
        alpha_selector(r, "spec.workloadSelector", ws);
    }

    // Istio: with several hosts only HTTP (Host header) and TLS (SNI) ports can tell them
    // apart; anything else (TCP, unset, unknown) needs resolution NONE, which ignores hosts.
    if resolution != Resolution::None && se.hosts.len() > 1 {
        let opaque = se.ports.iter().position(
            |p| !matches!(port_protocol(&p.protocol), Ok(Some(pr)) if pr.is_http() || pr.is_tls()),
        );
        if let Some(i) = opaque {
            r.error(
                &format!("spec.ports[{i}].protocol"),
                "multiple hosts with a TCP port require resolution NONE",
            );
        }
    }

    check_export_to(r, &o.meta.namespace, &se.export_to, true, false);
}

/// The checks on `spec.ports` of a ServiceEntry; returns the port names.
fn service_ports<'a>(r: &mut Report<'_>, se: &'a ServiceEntry) -> HashSet<&'a str> {
    if se.ports.is_empty() {
        r.error("spec.ports", "at least one port is required");
    }
    let mut numbers: FirstSeen<u32> = FirstSeen::default();
    let mut names: FirstSeen<&str> = FirstSeen::default();
    for (i, p) in se.ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        match p.number {
            None => r.error(&format!("{base}.number"), "port number is required"),
            Some(n) => {
                check_port(r, &format!("{base}.number"), n);
                if let Some(j) = numbers.dup(n, i) {
                    r.error(
                        &format!("{base}.number"),
                        format!("duplicate port number {n} (also spec.ports[{j}])"),
                    );
                }
            }
        }
        match p.name.as_deref() {
            None | Some("") => r.error(&format!("{base}.name"), "port name is required"),
            Some(name) => {
                // Istio `ValidatePortName`.
                if !is_dns1123_label(name) {
                    r.error(
                        &format!("{base}.name"),
                        format!("invalid port name {name:?}: must be a DNS-1123 label (lower-case letters, digits, '-')"),
                    );
                }
                if let Some(j) = names.dup(name, i) {
                    r.error(
                        &format!("{base}.name"),
                        format!("duplicate port name {name:?} (also spec.ports[{j}])"),
                    );
                }
            }
        }
        // targetPort 0 is the proto default (unset).
        if let Some(t) = p.target_port.filter(|t| *t != 0) {
            check_port(r, &format!("{base}.targetPort"), t);
        }
        warn_unknown_protocol(r, &format!("{base}.protocol"), &p.protocol);

        // Istio: "addresses are required for ports serving TCP (or unset) protocol" (warning):
        // without addresses the port is matched on any destination IP.
        if se.addresses.is_empty() && se.resolution != Some(Resolution::DynamicDns) {
            let n = p.number.unwrap_or(0);
            match port_protocol(&p.protocol) {
                Ok(Some(pr)) if pr.is_opaque_tcp() => r.warning(
                    &base,
                    format!("{} port {n} without addresses: every connection to port {n} on any IP matches this ServiceEntry", p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase()),
                ),
                Ok(None) | Err(_) => r.warning(
                    &base,
                    format!("port {n} without protocol or addresses: unless sniffed as HTTP, every connection to port {n} on any IP matches this ServiceEntry"),
                ),
                Ok(Some(_)) => {}
            }
        }
    }
    se.ports.iter().filter_map(|p| p.name.as_deref()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndpointKind {
    /// A WorkloadEntry object: IP, DNS name or unix socket.
    Standalone,
    /// A ServiceEntry endpoint with resolution STATIC: IP or unix socket.
    Static,
    /// A ServiceEntry endpoint with resolution DNS / DNS_ROUND_ROBIN: IP or DNS name.
    Dns,
}

/// Istio `validateWorkloadEntry` (WorkloadEntry objects and ServiceEntry endpoints).
/// `service_ports` are the names of the ServiceEntry's ports, for endpoints.
fn workload_entry(
    r: &mut Report<'_>,
    base: &str,
    we: &WorkloadEntry,
    kind: EndpointKind,
    service_ports: Option<&HashSet<&str>>,
) {
    let addr_field = format!("{base}.address");
    let addr = we.address.as_deref().unwrap_or("");
    if addr.is_empty() {
        match &we.network {
            // Reached through the network's gateway.
            Some(net) if kind != EndpointKind::Dns && !net.is_empty() => r.warning(
                &addr_field,
                format!("address is unset: reachable only through network {net:?}'s gateway"),
            ),
            _ => r.error(&addr_field, "address is required"),
        }
    } else if let Some(path) = unix_path(addr) {
        if kind == EndpointKind::Dns {
            r.error(
                &addr_field,
                format!("unix:// endpoint {addr:?} is only allowed with resolution STATIC"),
            );
        }
        check_unix_path(r, &addr_field, path);
        if !we.ports.is_empty() {
            r.error(
                &format!("{base}.ports"),
                "a unix:// endpoint takes no ports",
            );
        }
        if service_ports.is_some_and(|p| p.len() != 1) {
            r.error(
                &addr_field,
                "unix:// endpoints need exactly one ServiceEntry port",
            );
        }
    } else if !is_ip(addr) {
        match kind {
            EndpointKind::Static => r.error(
                &addr_field,
                format!("endpoint address {addr:?} must be an IP address or unix:// path with resolution STATIC"),
            ),
            EndpointKind::Dns | EndpointKind::Standalone if !is_fqdn(addr) => r.error(
                &addr_field,
                format!("address {addr:?} is not an IP address or a DNS name"),
            ),
            _ => {}
        }
    }
    for (name, port) in &we.ports {
        let field = format!("{base}.ports.{name}");
        if let Some(names) = service_ports {
            if !names.contains(name.as_str()) {
                r.error(
                    &field,
                    format!("endpoint port name {name:?} is not a port of this ServiceEntry"),
                );
            }
        } else if !is_dns1123_label(name) {
            r.error(
                &field,
                format!("invalid port name {name:?}: must be a DNS-1123 label"),
            );
        }
        check_port(r, &field, *port);
    }
}

/// Istio `ValidateAlphaWorkloadSelector` (networking `labels:` selectors).
fn alpha_selector(r: &mut Report<'_>, field: &str, ws: &WorkloadSelector) {
    selector_labels(r, field, &ws.labels, "labels");
    if ws.labels.is_empty() {
        r.warning(
            field,
            "workloadSelector without labels selects every workload in the namespace",
        );
    }
}

/// Istio `validateWorkloadSelector` (`matchLabels:` selectors).
fn match_labels_selector(r: &mut Report<'_>, field: &str, sel: &MatchLabelsSelector) {
    selector_labels(r, field, &sel.match_labels, "matchLabels");
    if sel.match_labels.is_empty() {
        r.warning(
            field,
            "selector without matchLabels selects every workload in the namespace",
        );
    }
}

fn selector_labels(r: &mut Report<'_>, field: &str, labels: &BTreeMap<String, String>, key: &str) {
    for (k, v) in labels {
        if k.is_empty() {
            r.error(&format!("{field}.{key}"), "empty label key");
        } else if k.contains('*') || v.contains('*') {
            r.error(
                &format!("{field}.{key}.{k}"),
                format!("wildcards are not supported in selectors ({k}={v})"),
            );
        }
    }
}

// ===== DestinationRule =====

/// Istio `ValidateDestinationRule`.
fn destination_rule(r: &mut Report<'_>, o: &Object<DestinationRule>) {
    let dr = &o.spec;
    let has_selector = dr.workload_selector.is_some();
    match dr.host.as_deref() {
        None | Some("") => r.error("spec.host", "host is required"),
        Some(h) => {
            if let Err(e) = host::validate_dns_name(h) {
                r.error("spec.host", e);
            }
        }
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(r, "spec.trafficPolicy", tp, has_selector);
    }
    let mut names: FirstSeen<&str> = FirstSeen::default();
    for (i, s) in dr.subsets.iter().enumerate() {
        let base = format!("spec.subsets[{i}]");
        match s.name.as_deref() {
            None | Some("") => r.error(&format!("{base}.name"), "subset name is required"),
            Some(name) => {
                if let Some(j) = names.dup(name, i) {
                    r.error(
                        &format!("{base}.name"),
                        format!("duplicate subset name {name:?} (also spec.subsets[{j}])"),
                    );
                }
                if !is_dns1123_label(name) {
                    r.error(
                        &format!("{base}.name"),
                        format!("subset name {name:?} must be a DNS-1123 label (lower-case letters, digits, '-')"),
                    );
                }
            }
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(r, &format!("{base}.trafficPolicy"), tp, has_selector);
        }
    }
    check_export_to(r, &o.meta.namespace, &dr.export_to, false, has_selector);
    if let Some(sel) = &dr.workload_selector {
        match_labels_selector(r, "spec.workloadSelector", sel);
    }
}

/// Istio `validateTrafficPolicy` (top level, or a subset's).
fn traffic_policy(r: &mut Report<'_>, base: &str, tp: &TrafficPolicy, has_selector: bool) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.error(base, "trafficPolicy must set at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(base, "set only one of tunnel or proxyProtocol");
    }
    policy_parts(
        r,
        base,
        PolicyParts {
            load_balancer: &tp.load_balancer,
            connection_pool: &tp.connection_pool,
            outlier_detection: &tp.outlier_detection,
            tls: &tp.tls,
        },
        has_selector,
    );

    // Istio `validatePortTrafficPolicies`, plus egret: one entry per port.
    let mut ports: FirstSeen<u32> = FirstSeen::default();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pbase = format!("{base}.portLevelSettings[{i}]");
        match pl.port.and_then(|p| p.number) {
            None if pl.port.is_none() => r.error(&format!("{pbase}.port"), "port is required"),
            None => r.error(&format!("{pbase}.port.number"), "port number is required"),
            Some(n) => {
                check_port(r, &format!("{pbase}.port.number"), n);
                if let Some(j) = ports.dup(n, i) {
                    r.error(
                        &format!("{pbase}.port.number"),
                        format!("duplicate port {n} (also {base}.portLevelSettings[{j}])"),
                    );
                }
            }
        }
        let parts = PolicyParts {
            load_balancer: &pl.load_balancer,
            connection_pool: &pl.connection_pool,
            outlier_detection: &pl.outlier_detection,
            tls: &pl.tls,
        };
        if parts.is_empty() {
            r.error(
                &pbase,
                "port-level settings must set at least one of loadBalancer, connectionPool, outlierDetection or tls",
            );
        } else {
            policy_parts(r, &pbase, parts, has_selector);
        }
    }
}

/// The settings a traffic policy and its port-level entries share.
struct PolicyParts<'a> {
    load_balancer: &'a Option<LoadBalancerSettings>,
    connection_pool: &'a Option<ConnectionPoolSettings>,
    outlier_detection: &'a Option<OutlierDetection>,
    tls: &'a Option<ClientTlsSettings>,
}

impl PolicyParts<'_> {
    fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
    }
}

fn policy_parts(r: &mut Report<'_>, base: &str, p: PolicyParts<'_>, has_selector: bool) {
    if let Some(lb) = p.load_balancer {
        load_balancer(
            r,
            &format!("{base}.loadBalancer"),
            lb,
            p.outlier_detection.is_some(),
        );
    }
    if let Some(cp) = p.connection_pool {
        connection_pool(r, &format!("{base}.connectionPool"), cp);
    }
    if let Some(od) = p.outlier_detection {
        outlier_detection(r, &format!("{base}.outlierDetection"), od);
    }
    if let Some(tls) = p.tls {
        client_tls(r, &format!("{base}.tls"), tls, has_selector);
    }
}

/// Istio `validateLoadBalancer`.
fn load_balancer(r: &mut Report<'_>, base: &str, lb: &LoadBalancerSettings, has_outlier: bool) {
    // `simple` and `consistentHash` are a proto oneof.
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.error(base, "set only one of simple or consistentHash");
    }
    if let Some(ch) = &lb.consistent_hash {
        consistent_hash(r, &format!("{base}.consistentHash"), ch);
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(r, &format!("{base}.localityLbSetting"), l, has_outlier);
    }
}

fn consistent_hash(r: &mut Report<'_>, base: &str, ch: &ConsistentHash) {
    // The hash key is a proto oneof.
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip.is_some(),
        ch.http_query_parameter_name.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if keys > 1 {
        r.error(
            base,
            "set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        );
    } else if keys == 0 {
        r.warning(
            base,
            "no hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName): requests are not hashed consistently",
        );
    }
    if let Some(c) = &ch.http_cookie
        && !is_set(&c.name)
    {
        r.error(
            &format!("{base}.httpCookie.name"),
            "httpCookie needs a name",
        );
    }
    // The hash algorithm is a proto oneof.
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        r.error(base, "set only one of ringHash or maglev");
    }
    if ch.minimum_ring_size.is_some_and(|n| n != 0) {
        r.warning(
            &format!("{base}.minimumRingSize"),
            "deprecated: use ringHash.minimumRingSize",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            r.error(
                &format!("{base}.minimumRingSize"),
                "set only one of minimumRingSize or ringHash/maglev",
            );
        }
    }
    if let Some(m) = &ch.maglev {
        let field = format!("{base}.maglev.tableSize");
        match m.table_size.unwrap_or(0) {
            0 => r.error(&field, "maglev needs tableSize"),
            n if n >= 5_000_011 => r.error(&field, "tableSize must be less than 5000011"),
            n if !is_prime(n) => r.error(&field, format!("tableSize {n} is not a prime number")),
            _ => {}
        }
    }
}

/// Envoy's primality test for Maglev table sizes (copied by Istio).
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// Istio `ValidateLocalityLbSetting`.
fn locality_lb(r: &mut Report<'_>, base: &str, l: &LocalityLbSetting, has_outlier: bool) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        r.error(base, "set only one of distribute or failover");
        return;
    }
    if !l.failover.is_empty() {
        for (i, label) in l.failover_priority.iter().enumerate() {
            if matches!(
                label.as_str(),
                "topology.kubernetes.io/region"
                    | "topology.kubernetes.io/zone"
                    | "topology.istio.io/subzone"
            ) {
                r.error(
                    &format!("{base}.failoverPriority[{i}]"),
                    format!("topology label {label:?} cannot be combined with failover"),
                );
            }
        }
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dbase = format!("{base}.distribute[{i}]");
        let mut total: u64 = 0;
        for (loc, w) in &d.to {
            if !(1..=100).contains(w) {
                r.error(
                    &format!("{dbase}.to.{loc}"),
                    format!("locality weight {w} is not in the range 1..100"),
                );
            }
            total += u64::from(*w);
            check_locality(r, &format!("{dbase}.to.{loc}"), loc);
        }
        if total != 100 {
            r.error(
                &format!("{dbase}.to"),
                format!("locality weights sum to {total}, not 100"),
            );
        }
        if let Some(from) = &d.from {
            check_locality(r, &format!("{dbase}.from"), from);
        }
    }
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        r.warning(base, "failover only takes effect with outlierDetection");
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fbase = format!("{base}.failover[{i}]");
        let from = f.from.as_deref().unwrap_or("");
        let to = f.to.as_deref().unwrap_or("");
        if from == to {
            r.error(&fbase, "failover from and to must be different regions");
        }
        if from.contains('/') || to.contains('/') {
            r.error(&fbase, "failover takes regions only (no zone or subzone)");
        }
        if from.contains('*') || to.contains('*') {
            r.error(&fbase, "failover regions must not contain '*'");
        }
    }
}

/// Istio `validateLocalities` (per entry): `region[/zone[/subzone]]`, no empty part, at most
/// one `*` and only at the end.
fn check_locality(r: &mut Report<'_>, field: &str, loc: &str) {
    let stars = loc.matches('*').count();
    if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
        r.error(
            field,
            format!("locality {loc:?}: '*' may appear once, at the end"),
        );
    }
    if loc.splitn(3, '/').any(str::is_empty) {
        r.error(
            field,
            format!("locality {loc:?} has an empty region, zone or subzone"),
        );
    }
}

/// Istio `validateOutlierDetection`.
fn outlier_detection(r: &mut Report<'_>, base: &str, od: &OutlierDetection) {
    check_opt_duration(
        r,
        &format!("{base}.baseEjectionTime"),
        od.base_ejection_time,
    );
    check_opt_duration(r, &format!("{base}.interval"), od.interval);
    if od.consecutive_errors.is_some_and(|n| n != 0) {
        r.warning(
            &format!("{base}.consecutiveErrors"),
            "deprecated: use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    if od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
        && od.split_external_local_origin_errors != Some(true)
    {
        r.error(
            &format!("{base}.consecutiveLocalOriginFailures"),
            "only takes effect with splitExternalLocalOriginErrors: true",
        );
    }
    check_percent_int(
        r,
        &format!("{base}.maxEjectionPercent"),
        od.max_ejection_percent,
    );
    check_percent_int(
        r,
        &format!("{base}.minHealthPercent"),
        od.min_health_percent,
    );
}

/// Istio `validateConnectionPool`.
fn connection_pool(r: &mut Report<'_>, base: &str, cp: &ConnectionPoolSettings) {
    if cp.tcp.is_none() && cp.http.is_none() {
        r.error(base, "connectionPool must set tcp or http");
        return;
    }
    if let Some(h) = &cp.http {
        check_opt_duration(r, &format!("{base}.http.idleTimeout"), h.idle_timeout);
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && h.use_client_protocol == Some(true)
        {
            r.error(
                &format!("{base}.http.useClientProtocol"),
                "must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
    }
    if let Some(t) = &cp.tcp {
        check_opt_duration(r, &format!("{base}.tcp.connectTimeout"), t.connect_timeout);
        check_opt_duration(
            r,
            &format!("{base}.tcp.maxConnectionDuration"),
            t.max_connection_duration,
        );
        // `idleTimeout: 0s` disables the timeout.
        if let Some(d) = t.idle_timeout.filter(|d| d.as_millis() != 0) {
            check_duration(r, &format!("{base}.tcp.idleTimeout"), d);
        }
        if let Some(ka) = &t.tcp_keepalive {
            check_opt_duration(r, &format!("{base}.tcp.tcpKeepalive.time"), ka.time);
            check_opt_duration(r, &format!("{base}.tcp.tcpKeepalive.interval"), ka.interval);
        }
    }
}

/// Istio `ValidateTLS` (ClientTLSSettings), plus egret's notes on credentialName and
/// insecureSkipVerify.
fn client_tls(r: &mut Report<'_>, base: &str, tls: &ClientTlsSettings, has_selector: bool) {
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    let cert = is_set(&tls.client_certificate);
    let key = is_set(&tls.private_key);
    let ca = is_set(&tls.ca_certificates);
    let crl = is_set(&tls.ca_crl);
    let cred = is_set(&tls.credential_name);
    let simple_or_mutual = matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);

    if mode == ClientTlsMode::IstioMutual && (cert || key || ca || cred) {
        r.error(
            base,
            "ISTIO_MUTUAL uses the mesh identity; clientCertificate, privateKey, caCertificates and credentialName must be empty",
        );
    }

    if tls.insecure_skip_verify == Some(true) {
        r.warning(
            &format!("{base}.insecureSkipVerify"),
            "the upstream certificate will not be verified",
        );
        if mode == ClientTlsMode::Simple && (ca || cred || !tls.subject_alt_names.is_empty()) {
            r.error(
                &format!("{base}.insecureSkipVerify"),
                "cannot be combined with caCertificates, credentialName or subjectAltNames",
            );
        }
        if mode == ClientTlsMode::Mutual && (ca || !tls.subject_alt_names.is_empty()) {
            r.error(
                &format!("{base}.insecureSkipVerify"),
                "cannot be combined with caCertificates or subjectAltNames",
            );
        }
    }

    if simple_or_mutual && cred {
        // The credential comes from the Secret: no file paths.
        if cert || key || ca || crl {
            r.error(
                base,
                "set either credentialName or clientCertificate/privateKey/caCertificates/caCrl, not both",
            );
        }
    } else if mode == ClientTlsMode::Mutual && !(cert && key) {
        r.error(
            base,
            "MUTUAL requires clientCertificate and privateKey (or credentialName)",
        );
    }

    // egret: Istio only reads credentialName on sidecars for DestinationRules with a
    // workloadSelector; egret does the same.
    if cred && !has_selector && mode != ClientTlsMode::IstioMutual {
        r.warning(
            &format!("{base}.credentialName"),
            "credentialName on a sidecar needs workloadSelector in Istio; egret reads it on gateways, and on sidecars only when the DestinationRule has a workloadSelector",
        );
    }
}

// ===== VirtualService =====

/// `(namespace, name)` of every VirtualService some http route delegates to.
fn delegate_targets(set: &ConfigSet) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for vs in &set.virtual_services {
        for h in &vs.spec.http {
            let Some(d) = &h.delegate else { continue };
            let Some(name) = d.get("name").and_then(Value::as_str) else {
                continue;
            };
            let ns = d
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(&vs.meta.namespace);
            out.insert((ns.to_string(), name.to_string()));
        }
    }
    out
}

/// Istio `ValidateVirtualService`.
fn virtual_service(
    r: &mut Report<'_>,
    o: &Object<VirtualService>,
    delegates: &HashSet<(String, String)>,
) {
    let vs = &o.spec;
    let ns = &o.meta.namespace;

    // A VirtualService without hosts is a delegate.
    let is_delegate = vs.hosts.is_empty();
    if is_delegate {
        if !delegates.contains(&(ns.clone(), o.meta.name.clone())) {
            r.error(
                "spec.hosts",
                "at least one host is required (only delegate VirtualServices have none, and no VirtualService delegates to this one)",
            );
        }
        if !vs.gateways.is_empty() {
            r.error(
                "spec.gateways",
                "a delegate VirtualService must not set gateways",
            );
        }
        if !vs.tls.is_empty() {
            r.error(
                "spec.tls",
                "a delegate VirtualService must not have tls routes",
            );
        }
        if !vs.tcp.is_empty() {
            r.error(
                "spec.tcp",
                "a delegate VirtualService must not have tcp routes",
            );
        }
    }

    // Omitted gateways mean [mesh]; a list without "mesh" binds to gateways only.
    let applies_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    check_gateway_names(r, "spec.gateways", &vs.gateways);

    // Istio: JWT claim routing (`@request.auth.claims.*` header keys) needs a gateway.
    if applies_to_mesh {
        for (i, h) in vs.http.iter().enumerate() {
            for (j, m) in h.matches.iter().enumerate() {
                for (what, map) in [
                    ("headers", &m.headers),
                    ("withoutHeaders", &m.without_headers),
                ] {
                    for k in map.keys().filter(|k| is_jwt_claim_header(k)) {
                        r.error(
                            &format!("spec.http[{i}].match[{j}].{what}.{k}"),
                            "JWT claim based routing is only supported on gateways, not on the mesh (sidecars)",
                        );
                    }
                }
            }
        }
    }

    // Hosts: DNS names (short names allowed) or IPs; "*" not for the mesh.
    let mut all_valid = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if is_ip(h) {
            continue;
        }
        if let Err(e) = host::validate_dns_name(h) {
            r.error(&field, e);
            all_valid = false;
        } else if h == "*" && applies_to_mesh {
            r.error(
                &field,
                "wildcard host \"*\" is not allowed for VirtualServices bound to the mesh gateway",
            );
            all_valid = false;
        }
    }
    // Istio: overlapping hosts (literal or wildcard) in one VirtualService.
    if all_valid {
        let canon: Vec<String> = vs.hosts.iter().map(|h| host::canonical(h)).collect();
        for j in 0..canon.len() {
            if let Some(i) = (0..j).find(|&i| host::intersects(&canon[i], &canon[j])) {
                r.error(
                    &format!("spec.hosts[{j}]"),
                    format!(
                        "duplicate host: {:?} overlaps spec.hosts[{i}] ({:?})",
                        vs.hosts[j], vs.hosts[i]
                    ),
                );
            }
        }
    }

    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        r.error(
            "spec",
            "at least one of http, tls or tcp routes is required",
        );
    }
    for (i, h) in vs.http.iter().enumerate() {
        http_route(r, &format!("spec.http[{i}]"), h, is_delegate);
    }
    let vs_hosts: Vec<String> = vs
        .hosts
        .iter()
        .map(|h| host::resolve_short_name(h, ns))
        .collect();
    for (i, t) in vs.tls.iter().enumerate() {
        tls_route(r, &format!("spec.tls[{i}]"), t, &vs_hosts);
    }
    for (i, t) in vs.tcp.iter().enumerate() {
        tcp_route(r, &format!("spec.tcp[{i}]"), t);
    }
    check_export_to(r, ns, &vs.export_to, false, false);

    // Istio `analyzeUnreachable*Rules` (warnings).
    let http: Vec<Vec<HttpMatchRequest>> = vs
        .http
        .iter()
        .map(|h| {
            h.matches
                .iter()
                .map(|m| HttpMatchRequest {
                    name: None,
                    ..m.clone()
                })
                .collect()
        })
        .collect();
    unreachable_rules(r, "spec.http", &http);
    let tls: Vec<&[TlsMatchAttributes]> = vs.tls.iter().map(|t| t.matches.as_slice()).collect();
    unreachable_rules(r, "spec.tls", &tls);
    let tcp: Vec<&[L4MatchAttributes]> = vs.tcp.iter().map(|t| t.matches.as_slice()).collect();
    unreachable_rules(r, "spec.tcp", &tcp);
}

fn is_jwt_claim_header(k: &str) -> bool {
    k.starts_with("@request.auth.claims.") || k.starts_with("@request.auth.claims[")
}

/// Routes that can never match: after a route without matches, or whose every match appears
/// in an earlier route. Routes are first-match.
fn unreachable_rules<M: PartialEq, L: AsRef<[M]>>(r: &mut Report<'_>, base: &str, routes: &[L]) {
    let mut catch_all: Option<usize> = None;
    let mut seen: Vec<(&M, usize)> = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let matches = route.as_ref();
        let field = format!("{base}[{i}]");
        if let Some(j) = catch_all {
            r.warning(
                &field,
                format!("unreachable: {base}[{j}] before it has no match and takes all traffic"),
            );
            continue;
        }
        if matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut dups = 0;
        for (k, m) in matches.iter().enumerate() {
            if let Some((_, j)) = seen.iter().find(|(s, _)| *s == m) {
                r.warning(
                    &format!("{field}.match[{k}]"),
                    format!("never used: {base}[{j}] has the same match"),
                );
                dups += 1;
            } else {
                seen.push((m, i));
            }
        }
        if dups == matches.len() {
            r.warning(
                &field,
                "unreachable: every match is used by an earlier route",
            );
        }
    }
}

/// Istio `validateGatewayNames`: `mesh`, `name`, or `namespace/name`.
fn check_gateway_names(r: &mut Report<'_>, base: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let field = format!("{base}[{i}]");
        if g == "mesh" {
            continue;
        }
        match g.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    r.error(&field, "namespace and gateway name must not be empty");
                    continue;
                }
                if !is_dns1123_label(ns) {
                    r.error(&field, format!("invalid namespace {ns:?}"));
                }
                if !is_dns1123_label(name) {
                    r.error(&field, format!("invalid gateway name {name:?}"));
                }
            }
            None => {
                if let Some((name, rest)) = g.split_once('.') {
                    let ns = rest.split('.').next().unwrap_or(rest);
                    r.warning(
                        &field,
                        format!("legacy gateway name format {g:?}; prefer namespace/name: \"{ns}/{name}\""),
                    );
                }
                if !g.split('.').all(is_dns1123_label) {
                    r.error(&field, format!("invalid gateway name {g:?}"));
                }
            }
        }
    }
}

/// Istio `validateHTTPRoute`.
fn http_route(r: &mut Report<'_>, base: &str, h: &HttpRoute, in_delegate: bool) {
    let has_route = !h.route.is_empty();
    if let Some(d) = &h.delegate {
        if in_delegate {
            r.error(
                &format!("{base}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if d.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            r.error(
                &format!("{base}.delegate.name"),
                "delegate name is required",
            );
        }
        // Istio: a root route only delegates.
        if h.redirect.is_some() {
            r.error(
                &format!("{base}.redirect"),
                "a route with delegate must not set redirect",
            );
        }
        if has_route {
            r.error(
                &format!("{base}.route"),
                "a route with delegate must not set route",
            );
        }
    } else {
        let n = usize::from(has_route)
            + usize::from(h.redirect.is_some())
            + usize::from(h.direct_response.is_some());
        if n != 1 {
            r.error(
                base,
                "exactly one of route, redirect or directResponse is required",
            );
        }
        for (set, what) in [
            (h.redirect.is_some(), "redirect"),
            (h.direct_response.is_some(), "directResponse"),
        ] {
            if !set {
                continue;
            }
            if h.fault.is_some() {
                r.error(
                    &format!("{base}.fault"),
                    format!("fault cannot be combined with {what}"),
                );
            }
            if h.rewrite.is_some() {
                r.error(
                    &format!("{base}.rewrite"),
                    format!("rewrite cannot be combined with {what}"),
                );
            }
        }
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(base, "set only one of mirror or mirrors");
    }

    for (j, m) in h.matches.iter().enumerate() {
        http_match(r, &format!("{base}.match[{j}]"), m);
    }
    if let Some(f) = &h.fault {
        fault(r, &format!("{base}.fault"), f);
    }
    if let Some(p) = h.mirror_percentage {
        check_percentage(r, &format!("{base}.mirrorPercentage"), Some(p));
    }
    if let Some(p) = h.mirror_percent {
        if p > 100 {
            r.error(
                &format!("{base}.mirrorPercent"),
                format!("percentage {p} is above 100"),
            );
        }
        r.warning(
            &format!("{base}.mirrorPercent"),
            "deprecated: use mirrorPercentage",
        );
    }
    if let Some(m) = &h.mirror {
        destination(r, &format!("{base}.mirror"), m);
    }
    for (i, m) in h.mirrors.iter().enumerate() {
        let mbase = format!("{base}.mirrors[{i}]");
        match &m.destination {
            None => r.error(&format!("{mbase}.destination"), "destination is required"),
            Some(d) => destination(r, &format!("{mbase}.destination"), d),
        }
        check_percentage(r, &format!("{mbase}.percentage"), m.percentage);
    }
    if let Some(rd) = &h.redirect {
        redirect(r, &format!("{base}.redirect"), rd);
    }
    if let Some(dr) = &h.direct_response {
        direct_response(r, &format!("{base}.directResponse"), dr);
    }
    if let Some(rt) = &h.retries {
        retries(r, &format!("{base}.retries"), rt);
    }
    if let Some(rw) = &h.rewrite {
        rewrite(r, &format!("{base}.rewrite"), rw);
    }
    for (i, d) in h.route.iter().enumerate() {
        match &d.destination {
            None => r.error(
                &format!("{base}.route[{i}].destination"),
                "destination is required",
            ),
            Some(dest) => destination(r, &format!("{base}.route[{i}].destination"), dest),
        }
    }
    let weights: Vec<Option<i32>> = h.route.iter().map(|d| d.weight).collect();
    check_weights(r, &format!("{base}.route"), &weights);
    check_opt_duration(r, &format!("{base}.timeout"), h.timeout);
}

/// Istio `validateHTTPRouteMatchRequest`.
fn http_match(r: &mut Report<'_>, base: &str, m: &HttpMatchRequest) {
    // uri allows an empty prefix (matches every path); the others do not.
    let strict = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (what, sm) in strict {
        if let Some(sm) = sm {
            string_match(r, &format!("{base}.{what}"), sm, Empty::Warn, what == "uri");
        }
    }
    for (what, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (k, sm) in map {
            let field = format!("{base}.{what}.{k}");
            header_match_name(r, &field, k);
            // In withoutHeaders, `regex: "*"` means "present", not a regex.
            if !(what == "withoutHeaders" && sm.regex.as_deref() == Some("*")) {
                // An empty match (`{}`) tests presence.
                string_match(r, &field, sm, Empty::Presence, false);
            }
        }
    }
    for (k, sm) in &m.query_params {
        string_match(
            r,
            &format!("{base}.queryParams.{k}"),
            sm,
            Empty::Presence,
            false,
        );
    }
    if let Some(p) = m.port.filter(|p| *p != 0) {
        check_port(r, &format!("{base}.port"), p);
    }
    check_gateway_names(r, &format!("{base}.gateways"), &m.gateways);
    if let Some(ns) = m.source_namespace.as_deref().filter(|s| !s.is_empty())
        && !is_dns1123_label(ns)
    {
        r.error(
            &format!("{base}.sourceNamespace"),
            format!("invalid namespace {ns:?}"),
        );
    }
}

/// Header names in matches: lower case (the API requires it, Envoy compares lower-cased
/// names), RFC 7230 token characters; pseudo-headers and JWT claim keys are allowed.
fn header_match_name(r: &mut Report<'_>, field: &str, k: &str) {
    if is_jwt_claim_header(k)
        || matches!(
            k,
            ":method" | ":scheme" | ":authority" | ":path" | ":status"
        )
    {
        return;
    }
    const TCHARS: &str = "!#$%&'*+-.^_`|~";
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || TCHARS.contains(c))
    {
        r.error(field, format!("{k:?} is not a valid header name"));
    } else if k.chars().any(|c| c.is_ascii_uppercase()) {
        r.error(field, format!("header name {k:?} must be lower case"));
    }
}

/// What an empty StringMatch (`{}`) means where it appears.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Empty {
    /// Headers and query parameters: a presence test.
    Presence,
    /// uri/scheme/method/authority: Istio accepts it and matches everything.
    Warn,
}

/// Istio `validateStringMatch` / `validateStringMatchRegexp`, plus the proto oneof.
fn string_match(
    r: &mut Report<'_>,
    field: &str,
    sm: &StringMatch,
    empty: Empty,
    allow_empty_prefix: bool,
) {
    let n = usize::from(sm.exact.is_some())
        + usize::from(sm.prefix.is_some())
        + usize::from(sm.regex.is_some());
    if n > 1 {
        r.error(field, "exactly one of exact, prefix or regex is allowed");
    } else if n == 0 && empty == Empty::Warn {
        r.warning(
            field,
            "none of exact, prefix or regex is set: matches everything",
        );
    }
    if sm.prefix.as_deref() == Some("") && !allow_empty_prefix {
        r.error(&format!("{field}.prefix"), "prefix must not be empty");
    }
    if let Some(re) = &sm.regex {
        check_regex(r, &format!("{field}.regex"), re);
    }
}

/// Istio `validateDestination`.
fn destination(r: &mut Report<'_>, base: &str, d: &Destination) {
    match d.host.as_deref() {
        None | Some("") => r.error(&format!("{base}.host"), "destination host is required"),
        Some("*") => r.error(
            &format!("{base}.host"),
            "\"*\" is not a valid destination host",
        ),
        Some(h) => {
            if let Err(e) = host::validate_dns_name(h) {
                r.error(&format!("{base}.host"), e);
            }
        }
    }
    if let Some(s) = &d.subset {
        if s.is_empty() {
            r.error(&format!("{base}.subset"), "subset name must not be empty");
        } else if !is_dns1123_label(s) {
            r.error(
                &format!("{base}.subset"),
                format!("invalid subset name {s:?}"),
            );
        }
    }
    if let Some(p) = d.port {
        match p.number {
            None => r.error(&format!("{base}.port.number"), "port number is required"),
            Some(n) => check_port(r, &format!("{base}.port.number"), n),
        }
    }
}

/// Istio `validateHTTPRouteDestinations` / `validateRouteDestinations` weights, plus egret's
/// note that weights are relative shares.
fn check_weights(r: &mut Report<'_>, base: &str, weights: &[Option<i32>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w.filter(|w| *w < 0) {
            r.error(
                &format!("{base}[{i}].weight"),
                format!("weight {w} must not be negative"),
            );
        }
    }
    if weights.len() > 1 {
        let total: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if total == 0 {
            r.error(
                base,
                "all destination weights are 0: no traffic would be routed",
            );
        } else if total != 100 && weights.iter().any(Option::is_some) {
            r.warning(
                base,
                format!("destination weights sum to {total}, not 100: egret (like Envoy) treats them as relative shares"),
            );
        }
    }
}

/// Istio `validateHTTPFaultInjection`.
fn fault(r: &mut Report<'_>, base: &str, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(base, "fault injection needs abort and/or delay");
    }
    if let Some(d) = &f.delay {
        let dbase = format!("{base}.delay");
        check_percentage(r, &format!("{dbase}.percentage"), d.percentage);
        check_percent_int(r, &format!("{dbase}.percent"), d.percent);
        match (d.fixed_delay, d.exponential_delay) {
            (Some(_), Some(_)) => r.error(&dbase, "set only one of fixedDelay or exponentialDelay"),
            (None, None) => r.error(&dbase, "delay needs fixedDelay or exponentialDelay"),
            (Some(fd), None) => check_duration(r, &format!("{dbase}.fixedDelay"), fd),
            (None, Some(ed)) => {
                check_duration(r, &format!("{dbase}.exponentialDelay"), ed);
                r.error(
                    &format!("{dbase}.exponentialDelay"),
                    "exponentialDelay is not supported",
                );
            }
        }
    }
    if let Some(a) = &f.abort {
        let abase = format!("{base}.abort");
        check_percentage(r, &format!("{abase}.percentage"), a.percentage);
        let n = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.http2_error.is_some());
        if n > 1 {
            r.error(
                &abase,
                "set only one of httpStatus, grpcStatus or http2Error",
            );
        } else if n == 0 {
            // Istio warns: nothing would be injected.
            r.warning(
                &abase,
                "abort needs httpStatus, grpcStatus or http2Error; nothing is injected",
            );
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            r.error(
                &format!("{abase}.httpStatus"),
                format!("HTTP status {s} is not in the range 200..599"),
            );
        }
        if let Some(s) = &a.grpc_status
            && !GRPC_STATUS.contains(&s.as_str())
        {
            r.error(
                &format!("{abase}.grpcStatus"),
                format!("unknown gRPC status {s:?} (use a name such as \"NOT_FOUND\")"),
            );
        }
        if a.http2_error.is_some() {
            r.error(
                &format!("{abase}.http2Error"),
                "HTTP/2 abort fault injection is not supported",
            );
        }
    }
}

/// gRPC status names Istio accepts in `abort.grpcStatus`.
const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio `validateHTTPRedirect`.
fn redirect(r: &mut Report<'_>, base: &str, rd: &HttpRedirect) {
    if !is_set(&rd.uri)
        && !is_set(&rd.authority)
        && !is_set(&rd.scheme)
        && rd.port.is_none()
        && rd.derive_port.is_none()
    {
        r.error(
            base,
            "redirect must set at least one of uri, authority, scheme, port or derivePort",
        );
    }
    // `port` and `derivePort` are a proto oneof.
    if rd.port.is_some() && rd.derive_port.is_some() {
        r.error(base, "set only one of port or derivePort");
    }
    if let Some(c) = rd.redirect_code.filter(|c| *c != 0)
        && !(300..=399).contains(&c)
    {
        r.error(
            &format!("{base}.redirectCode"),
            format!("{c} is not a redirect (3xx) code"),
        );
    }
    if let Some(s) = rd.scheme.as_deref().filter(|s| !s.is_empty())
        && s != "http"
        && s != "https"
    {
        r.error(
            &format!("{base}.scheme"),
            format!("scheme {s:?} must be \"http\" or \"https\""),
        );
    }
    if let Some(p) = rd.port.filter(|p| *p != 0) {
        check_port(r, &format!("{base}.port"), p);
    }
}

/// Istio `validateHTTPDirectResponse`.
fn direct_response(r: &mut Report<'_>, base: &str, d: &HttpDirectResponse) {
    match d.status {
        None | Some(0) => r.error(&format!("{base}.status"), "status is required"),
        Some(s) if !(200..=599).contains(&s) => r.error(
            &format!("{base}.status"),
            format!("HTTP status {s} is not in the range 200..599"),
        ),
        Some(_) => {}
    }
    if let Some(b) = &d.body {
        if b.string.is_some() && b.bytes.is_some() {
            r.error(&format!("{base}.body"), "set only one of string or bytes");
        }
        let size = b
            .string
            .as_ref()
            .map_or(0, String::len)
            .max(b.bytes.as_ref().map_or(0, |s| s.len() / 4 * 3));
        if size > 1024 * 1024 {
            r.error(
                &format!("{base}.body"),
                "direct response bodies must be smaller than 1MB",
            );
        } else if size > 100 * 1024 {
            r.warning(
                &format!("{base}.body"),
                "large direct response bodies slow down configuration updates",
            );
        }
    }
}

/// Istio `ValidateHTTPRetry`.
fn retries(r: &mut Report<'_>, base: &str, rt: &HttpRetry) {
    let attempts = rt.attempts.unwrap_or(0);
    if attempts < 0 {
        r.error(
            &format!("{base}.attempts"),
            format!("attempts {attempts} must not be negative"),
        );
    }
    if attempts == 0
        && (rt.per_try_timeout.is_some()
            || is_set(&rt.retry_on)
            || rt.retry_remote_localities.is_some())
    {
        r.error(
            base,
            "retry settings are given but attempts is 0 (retries disabled)",
        );
    }
    check_opt_duration(r, &format!("{base}.perTryTimeout"), rt.per_try_timeout);
    if let Some(on) = rt.retry_on.as_deref().filter(|s| !s.is_empty()) {
        for policy in on.split(',') {
            let status = policy
                .parse::<u16>()
                .is_ok_and(|c| (100..=599).contains(&c));
            if !status && !RETRY_ON.contains(&policy) {
                r.error(
                    &format!("{base}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    check_opt_duration(r, &format!("{base}.backoff"), rt.backoff);
}

/// Envoy `x-envoy-retry-on` and `x-envoy-retry-grpc-on` policies Istio accepts.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Istio `validateHTTPRewrite`.
fn rewrite(r: &mut Report<'_>, base: &str, rw: &HttpRewrite) {
    let uri = is_set(&rw.uri);
    if uri && rw.uri_regex_rewrite.is_some() {
        r.error(base, "set only one of uri or uriRegexRewrite");
    }
    if !uri && rw.uri_regex_rewrite.is_none() && !is_set(&rw.authority) {
        r.error(
            base,
            "rewrite must set at least one of uri, uriRegexRewrite or authority",
        );
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        let rbase = format!("{base}.uriRegexRewrite");
        match (&rr.pattern, &rr.rewrite) {
            (Some(p), Some(w)) if !p.is_empty() && !w.is_empty() => {
                check_regex(r, &format!("{rbase}.match"), p)
            }
            _ => r.error(&rbase, "uriRegexRewrite needs both match and rewrite"),
        }
    }
}

/// Istio `validateTLSRoute`.
fn tls_route(r: &mut Report<'_>, base: &str, t: &TlsRoute, vs_hosts: &[String]) {
    if t.matches.is_empty() {
        r.error(&format!("{base}.match"), "at least one match is required");
    }
    for (j, m) in t.matches.iter().enumerate() {
        let mbase = format!("{base}.match[{j}]");
        if m.sni_hosts.is_empty() {
            r.error(
                &format!("{mbase}.sniHosts"),
                "at least one SNI host is required",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let field = format!("{mbase}.sniHosts[{k}]");
            if let Err(e) = host::validate_dns_name(sni) {
                if is_ip(sni) {
                    r.warning(&field, format!("{sni:?} is an IP address; SNI carries host names and most clients never send an IP"));
                } else {
                    r.error(&field, e);
                }
                continue;
            }
            // Istio `validateSniHost`: within the VirtualService hosts (`*.foo.com` covers
            // `foo.com` for SNI).
            let s = host::canonical(sni);
            if !vs_hosts.iter().any(|h| host::sni_matches(h, &s)) {
                r.error(
                    &field,
                    format!("SNI host {sni:?} is not among the VirtualService hosts"),
                );
            }
        }
        l4_match_common(
            r,
            &mbase,
            &m.destination_subnets,
            m.port,
            &m.gateways,
            &m.source_namespace,
        );
    }
    if t.route.is_empty() {
        r.error(
            &format!("{base}.route"),
            "at least one route destination is required",
        );
    }
    route_destinations(r, &format!("{base}.route"), &t.route);
}

/// Istio `validateTCPRoute`.
fn tcp_route(r: &mut Report<'_>, base: &str, t: &TcpRoute) {
    for (j, m) in t.matches.iter().enumerate() {
        let mbase = format!("{base}.match[{j}]");
        l4_match_common(
            r,
            &mbase,
            &m.destination_subnets,
            m.port,
            &m.gateways,
            &m.source_namespace,
        );
    }
    if t.route.is_empty() {
        r.error(
            &format!("{base}.route"),
            "at least one route destination is required",
        );
    }
    route_destinations(r, &format!("{base}.route"), &t.route);
}

fn l4_match_common(
    r: &mut Report<'_>,
    base: &str,
    subnets: &[String],
    port: Option<u32>,
    gateways: &[String],
    source_namespace: &Option<String>,
) {
    for (i, s) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            r.error(
                &format!("{base}.destinationSubnets[{i}]"),
                format!("{s:?} is not an IP address or CIDR block"),
            );
        }
    }
    if let Some(p) = port.filter(|p| *p != 0) {
        check_port(r, &format!("{base}.port"), p);
    }
    check_gateway_names(r, &format!("{base}.gateways"), gateways);
    if let Some(ns) = source_namespace.as_deref().filter(|s| !s.is_empty())
        && !is_dns1123_label(ns)
    {
        r.error(
            &format!("{base}.sourceNamespace"),
            format!("invalid namespace {ns:?}"),
        );
    }
}

fn route_destinations(r: &mut Report<'_>, base: &str, route: &[RouteDestination]) {
    for (i, d) in route.iter().enumerate() {
        match &d.destination {
            None => r.error(
                &format!("{base}[{i}].destination"),
                "destination is required",
            ),
            Some(dest) => destination(r, &format!("{base}[{i}].destination"), dest),
        }
    }
    let weights: Vec<Option<i32>> = route.iter().map(|d| d.weight).collect();
    check_weights(r, base, &weights);
}

// ===== Gateway =====

/// Istio `ValidateGateway`.
fn gateway(r: &mut Report<'_>, o: &Object<Gateway>) {
    if !is_dns1123_label(&o.meta.name) {
        r.error(
            "metadata.name",
            format!(
                "gateway name {:?} must be a DNS-1123 label (no dots)",
                o.meta.name
            ),
        );
    }
    let gw = &o.spec;
    if gw.servers.is_empty() {
        r.error("spec.servers", "at least one server is required");
    }
    let mut names: FirstSeen<&str> = FirstSeen::default();
    for (i, s) in gw.servers.iter().enumerate() {
        let base = format!("spec.servers[{i}]");
        server(r, &base, s);
        if let Some(name) = s.port.as_ref().and_then(|p| p.name.as_deref())
            && let Some(j) = names.dup(name, i)
        {
            r.error(
                &format!("{base}.port.name"),
                format!("duplicate server port name {name:?} (also spec.servers[{j}].port.name)"),
            );
        }
    }
}

/// Istio `validateServer`.
fn server(r: &mut Report<'_>, base: &str, s: &Server) {
    if s.hosts.is_empty() {
        r.error(&format!("{base}.hosts"), "at least one host is required");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        gateway_host(r, &format!("{base}.hosts[{i}]"), h);
    }
    let bind = s.bind.as_deref().unwrap_or("");
    let unix = unix_path(bind);

    // Istio `validateServerPort`.
    let mut proto = None;
    match &s.port {
        None => r.error(&format!("{base}.port"), "port is required"),
        Some(p) => {
            let pbase = format!("{base}.port");
            let mut ok = true;
            match port_protocol(&p.protocol) {
                Ok(Some(pr)) => proto = Some(pr),
                Ok(None) => {
                    r.error(&format!("{pbase}.protocol"), "protocol is required");
                    ok = false;
                }
                Err(x) => {
                    r.error(
                        &format!("{pbase}.protocol"),
                        format!("unknown protocol {x:?}; use HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, REDIS, MYSQL, TCP or TLS"),
                    );
                    ok = false;
                }
            }
            match p.number {
                None | Some(0) if unix.is_some() => {}
                None => {
                    r.error(&format!("{pbase}.number"), "port number is required");
                    ok = false;
                }
                Some(n) => {
                    check_port(r, &format!("{pbase}.number"), n);
                    ok &= (1..=65535).contains(&n);
                }
            }
            if p.target_port.is_some_and(|t| t > 0) {
                r.error(
                    &format!("{pbase}.targetPort"),
                    "targetPort has no effect on Gateways",
                );
            }
            if !is_set(&p.name) {
                r.error(&format!("{pbase}.name"), "port name is required");
                ok = false;
            }
            if !ok {
                proto = None;
            }
        }
    }

    // Istio `validateServerBind`.
    if let Some(path) = unix {
        check_unix_path(r, &format!("{base}.bind"), path);
        if s.port
            .as_ref()
            .and_then(|p| p.number)
            .is_some_and(|n| n != 0)
        {
            r.error(
                &format!("{base}.port.number"),
                "port number must be 0 with a unix:// bind address",
            );
        }
    } else if !bind.is_empty() && !is_ip(bind) {
        r.error(
            &format!("{base}.bind"),
            format!("bind {bind:?} is not an IP address or unix:// path"),
        );
    }

    if let Some(tls) = &s.tls {
        server_tls(r, &format!("{base}.tls"), tls);
    }

    // TLS settings must match the protocol (checked when the port is valid).
    if let Some(p) = proto {
        let pname = s
            .port
            .as_ref()
            .and_then(|p| p.protocol.as_deref())
            .unwrap_or("")
            .to_ascii_uppercase();
        match &s.tls {
            None if p.is_tls() => r.error(base, format!("{pname} servers need tls settings")),
            Some(tls) if !p.is_tls() => {
                let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
                let certs = is_set(&tls.server_certificate)
                    || is_set(&tls.private_key)
                    || is_set(&tls.ca_certificates);
                if !p.is_http() {
                    r.error(
                        &format!("{base}.tls"),
                        format!(
                            "tls settings are not allowed on {pname} servers (only HTTPS and TLS)"
                        ),
                    );
                } else if mode != ServerTlsMode::Passthrough || certs {
                    r.error(
                        &format!("{base}.tls"),
                        "tls on a plain-text HTTP server may only set httpsRedirect",
                    );
                } else if tls.https_redirect != Some(true) {
                    r.warning(
                        &format!("{base}.tls"),
                        "tls on a plain-text HTTP server has no effect without httpsRedirect: true",
                    );
                }
            }
            _ => {}
        }
        if !p.is_http()
            && s.tls
                .as_ref()
                .is_some_and(|t| t.https_redirect == Some(true))
        {
            r.warning(
                &format!("{base}.tls.httpsRedirect"),
                "httpsRedirect only applies to HTTP servers",
            );
        }
    }
}

/// Istio `ValidateNamespaceSlashWildcardHostname` for gateways: `[namespace/]dnsName`, where
/// namespace is `*`, `.` or a namespace name, and dnsName is `*`, a (wildcard) FQDN or an IP.
fn gateway_host(r: &mut Report<'_>, field: &str, h: &str) {
    let dns = match h.split_once('/') {
        Some((ns, dns)) => {
            if ns.is_empty() || dns.is_empty() {
                r.error(
                    field,
                    format!("host {h:?}: namespace and host must not be empty"),
                );
                return;
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                r.error(field, format!("host {h:?}: invalid namespace {ns:?}"));
            }
            dns
        }
        None => h,
    };
    hostname_part(r, field, dns, true);
}

/// Istio `validateSidecarOrGatewayHostnamePart`: `*`, or a (wildcard) FQDN; no short names;
/// gateways also take IPs.
fn hostname_part(r: &mut Report<'_>, field: &str, dns: &str, is_gateway: bool) {
    if dns == "*" {
        return;
    }
    if is_gateway && is_ip(dns) {
        return;
    }
    if !dns.contains('.') {
        r.error(
            field,
            format!("short name {dns:?} is not allowed; use a fully qualified name"),
        );
        return;
    }
    if let Err(e) = host::validate_dns_name(dns) {
        r.error(field, e);
    }
}

/// Istio `validateTLSOptions` (ServerTLSSettings), plus egret's unsupported modes.
fn server_tls(r: &mut Report<'_>, base: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    let cert = is_set(&tls.server_certificate);
    let key = is_set(&tls.private_key);
    let ca = is_set(&tls.ca_certificates);
    let crl = is_set(&tls.ca_crl);
    let cred = is_set(&tls.credential_name);
    let creds = !tls.credential_names.is_empty();
    let tls_certs = !tls.tls_certificates.is_empty();

    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        r.error(
            &format!("{base}.minProtocolVersion"),
            format!("minProtocolVersion {min} is above maxProtocolVersion {max}"),
        );
    }
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        r.warning(
            &format!("{base}.minProtocolVersion"),
            "TLS versions below 1.2 need cipherSuites that support them; the defaults do not",
        );
    }

    if mode == ServerTlsMode::IstioMutual {
        if cert || key || ca || cred || creds || tls_certs {
            r.error(
                base,
                "ISTIO_MUTUAL uses the mesh identity; serverCertificate, privateKey, caCertificates, credentialName(s) and tlsCertificates must be empty",
            );
        }
        return;
    }
    let passthrough = matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    );
    if passthrough && (cert || key || ca || crl || cred || creds || tls_certs) {
        r.warning(
            base,
            format!("{mode} does not use certificates; they are ignored"),
        );
    }
    if mode == ServerTlsMode::AutoPassthrough {
        r.warning(
            &format!("{base}.mode"),
            "AUTO_PASSTHROUGH (multi-network east-west) is not supported by egret, server ignored",
        );
    }
    if mode == ServerTlsMode::OptionalMutual {
        r.warning(
            &format!("{base}.mode"),
            "OPTIONAL_MUTUAL is treated as MUTUAL by egret",
        );
    }

    let sources =
        usize::from(cert && key) + usize::from(cred) + usize::from(creds) + usize::from(tls_certs);
    if sources > 1 {
        r.error(
            base,
            "set only one of credentialName, credentialNames, serverCertificate/privateKey or tlsCertificates",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let mutual = mode != ServerTlsMode::Simple;
    if terminating && !cred && !creds {
        let what = if mutual { "MUTUAL" } else { "SIMPLE" };
        if tls_certs {
            for (i, c) in tls.tls_certificates.iter().enumerate() {
                let has = |k: &str| {
                    c.get(k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                };
                if !has("serverCertificate") || !has("privateKey") {
                    r.error(
                        &format!("{base}.tlsCertificates[{i}]"),
                        "each tlsCertificates entry needs serverCertificate and privateKey",
                    );
                }
            }
            if tls.tls_certificates.len() > 2 {
                r.warning(
                    &format!("{base}.tlsCertificates"),
                    "at most 2 server certificates are used",
                );
            }
        } else if !(cert && key) {
            r.error(
                base,
                format!("{what} requires serverCertificate and privateKey (or credentialName)"),
            );
        }
        if mutual && !ca {
            r.error(base, "MUTUAL requires caCertificates (or credentialName)");
        }
    }
    if crl {
        if cred {
            r.error(
                &format!("{base}.caCrl"),
                "not supported with credentialName; put the CRL in the credential",
            );
        }
        if mode == ServerTlsMode::Simple {
            r.error(&format!("{base}.caCrl"), "not supported with SIMPLE TLS");
        }
    }
}

// ===== Sidecar =====

/// Istio `ValidateSidecar` (egress listeners and outbound traffic policy; ingress listeners
/// are not read by egret).
fn sidecar(r: &mut Report<'_>, o: &Object<Sidecar>) {
    let sc = &o.spec;
    if let Some(ws) = &sc.workload_selector {
        alpha_selector(r, "spec.workloadSelector", ws);
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.error(
            "spec",
            "empty Sidecar: set egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }

    let mut catch_all = false;
    let mut ports: FirstSeen<u32> = FirstSeen::default();
    let mut sockets: FirstSeen<&str> = FirstSeen::default();
    let last = sc.egress.len().saturating_sub(1);
    for (i, e) in sc.egress.iter().enumerate() {
        let base = format!("spec.egress[{i}]");
        match &e.port {
            None => {
                // One catch-all listener (no port), and it comes last.
                if catch_all {
                    r.error(&base, "only one egress listener may omit port");
                } else if i != last {
                    r.error(
                        &base,
                        "the egress listener without port must be the last one",
                    );
                } else {
                    catch_all = true;
                }
            }
            Some(p) => {
                let bind = e.bind.as_deref().unwrap_or("");
                egress_port(r, &base, p, bind, e.capture_mode);
                match p.number.unwrap_or(0) {
                    0 => {
                        if let Some(j) = sockets.dup(bind, i) {
                            r.error(
                                &format!("{base}.bind"),
                                format!("duplicate unix socket (also spec.egress[{j}])"),
                            );
                        }
                    }
                    n => {
                        if let Some(j) = ports.dup(n, i) {
                            r.error(
                                &format!("{base}.port.number"),
                                format!("duplicate port {n} (also spec.egress[{j}])"),
                            );
                        }
                    }
                }
            }
        }
        sidecar_hosts(r, &base, &o.meta.namespace, &e.hosts);
    }

    if let Some(otp) = &sc.outbound_traffic_policy {
        sidecar_outbound_policy(r, otp);
    }
}

/// Istio `validateSidecarEgressPortBindAndCaptureMode`.
fn egress_port(
    r: &mut Report<'_>,
    base: &str,
    p: &ServicePort,
    bind: &str,
    capture: Option<CaptureMode>,
) {
    let pbase = format!("{base}.port");
    if p.target_port.is_some_and(|t| t > 0) {
        r.error(
            &format!("{pbase}.targetPort"),
            "targetPort has no effect on Sidecars",
        );
    }
    if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty())
        && !is_dns1123_label(name)
    {
        r.error(
            &format!("{pbase}.name"),
            format!("invalid port name {name:?}: must be a DNS-1123 label"),
        );
    }
    warn_unknown_protocol(r, &format!("{pbase}.protocol"), &p.protocol);
    match p.number.unwrap_or(0) {
        0 => {
            // Port 0: a unix domain socket listener.
            match unix_path(bind) {
                None => r.error(
                    &format!("{base}.bind"),
                    "a listener with port 0 needs a unix:// bind address",
                ),
                Some(path) => check_unix_path(r, &format!("{base}.bind"), path),
            }
            if !matches!(
                capture,
                None | Some(CaptureMode::Default | CaptureMode::None)
            ) {
                r.error(
                    &format!("{base}.captureMode"),
                    "unix domain socket listeners take captureMode DEFAULT or NONE",
                );
            }
        }
        n => {
            check_port(r, &format!("{pbase}.number"), n);
            if !bind.is_empty() && !is_ip(bind) {
                r.error(
                    &format!("{base}.bind"),
                    format!("bind {bind:?} is not an IP address"),
                );
            }
        }
    }
}

/// Istio: egress `hosts` are `namespace/dnsName`; duplicates are warned about.
fn sidecar_hosts(r: &mut Report<'_>, base: &str, own_ns: &str, hosts: &[String]) {
    if hosts.is_empty() {
        r.error(&format!("{base}.hosts"), "at least one host is required");
        return;
    }
    // namespace -> dnsNames seen, for the duplicate warnings.
    let mut seen: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let field = format!("{base}.hosts[{i}]");
        let Some((ns, dns)) = h.split_once('/') else {
            r.error(
                &field,
                format!("hosts entry {h:?} must be namespace/host, e.g. \"*/{h}\""),
            );
            continue;
        };
        if ns.is_empty() || dns.is_empty() {
            r.error(
                &field,
                format!("hosts entry {h:?}: namespace and host must not be empty"),
            );
            continue;
        }
        // "*", ".", "~", a namespace, or "~namespace" (an exclusion).
        let bare = ns.strip_prefix('~').unwrap_or(ns);
        if !(bare.is_empty() || bare == "*" || bare == "." || is_dns1123_label(bare)) {
            r.error(
                &field,
                format!("hosts entry {h:?}: invalid namespace {ns:?}"),
            );
        }
        hostname_part(r, &field, dns, false);
        if ns.starts_with('~') {
            continue;
        }
        let key = if ns == "." { own_ns } else { ns };
        let names = seen.entry(key).or_default();
        let dup = if dns == "*" {
            !names.is_empty()
        } else {
            names.contains(dns) || names.contains("*")
        };
        if dup {
            r.warning(&field, format!("duplicated egress host {h:?}"));
        }
        names.insert(dns);
    }
    if seen.get("*").is_some_and(|n| n.contains("*")) && seen.len() > 1 {
        r.warning(
            &format!("{base}.hosts"),
            "\"*/*\" selects everything; the other entries add nothing",
        );
    }
}

/// Istio `validateSidecarOutboundTrafficPolicy`, plus egret's note on a missing mode.
fn sidecar_outbound_policy(r: &mut Report<'_>, otp: &OutboundTrafficPolicy) {
    let base = "spec.outboundTrafficPolicy";
    match otp.mode {
        None => r.warning(
            base,
            "outboundTrafficPolicy without mode means REGISTRY_ONLY (the Istio enum default): unknown destinations are blocked",
        ),
        Some(OutboundMode::AllowAnyDynamicDns) => {
            r.error(&format!("{base}.mode"), "ALLOW_ANY_DYNAMIC_DNS is only valid in MeshConfig");
            return;
        }
        Some(_) => {}
    }
    if let Some(ep) = &otp.egress_proxy {
        let ebase = format!("{base}.egressProxy");
        if otp.mode != Some(OutboundMode::AllowAny) {
            r.error(&ebase, "egressProxy is only allowed with mode ALLOW_ANY");
            return;
        }
        if ep.host.as_deref().is_some_and(|h| !is_fqdn(h)) {
            r.error(
                &format!("{ebase}.host"),
                "egressProxy host must be a fully qualified name",
            );
        }
        if ep.port.is_none() {
            r.error(&format!("{ebase}.port"), "egressProxy port is required");
        }
        destination(r, &ebase, ep);
    }
}

// ===== AuthorizationPolicy =====

/// Istio `ValidateAuthorizationPolicy`, plus the `istio.io/dry-run` annotation.
fn authorization_policy(r: &mut Report<'_>, o: &Object<AuthorizationPolicy>) {
    let ap = &o.spec;
    let action = ap.action.unwrap_or(AuthzAction::Allow);

    if let Some(v) = o.meta.annotations.get(DRY_RUN) {
        let field = format!("metadata.annotations.{DRY_RUN}");
        if !matches!(action, AuthzAction::Allow | AuthzAction::Deny) {
            r.error(
                &field,
                format!("{DRY_RUN} only supports action ALLOW or DENY, not {action}"),
            );
        } else if parse_go_bool(v).is_none() {
            r.error(&field, format!("value {v:?} must be \"true\" or \"false\""));
        }
    }

    // Istio `validateOneOfSelectorType`.
    let targets = usize::from(ap.selector.is_some())
        + usize::from(ap.target_ref.is_some())
        + usize::from(!ap.target_refs.is_empty());
    if targets > 1 {
        r.error("spec", "set only one of selector, targetRef or targetRefs");
    }
    if let Some(sel) = &ap.selector {
        match_labels_selector(r, "spec.selector", sel);
    }

    let rules = ap.rules.as_deref().unwrap_or(&[]);
    match action {
        AuthzAction::Custom => {
            if rules.is_empty() {
                r.error(
                    "spec.rules",
                    "a CUSTOM policy without rules never matches; add `rules: [{}]` to match every request",
                );
            } else if !ap.provider.as_ref().is_some_and(|p| is_set(&p.name)) {
                r.error("spec.provider.name", "action CUSTOM requires provider.name");
            }
        }
        AuthzAction::Deny if rules.is_empty() => r.error(
            "spec.rules",
            "a DENY policy without rules never matches; add `rules: [{}]` to match every request",
        ),
        // egret: AUDIT is not checked by Istio, but without rules it does nothing either.
        AuthzAction::Audit if rules.is_empty() => r.warning(
            "spec.rules",
            "an AUDIT policy without rules never matches; add `rules: [{}]` to match every request",
        ),
        // ALLOW without rules (`spec: {}`) is meaningful: it denies everything.
        _ => {}
    }
    if ap.provider.is_some() && action != AuthzAction::Custom {
        r.error(
            "spec.provider",
            format!("provider is only allowed with action CUSTOM, not {action}"),
        );
    }

    for (i, rule) in rules.iter().enumerate() {
        authz_rule(r, &format!("spec.rules[{i}]"), rule, action);
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for the dry-run annotation.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn authz_rule(r: &mut Report<'_>, base: &str, rule: &Rule, action: AuthzAction) {
    let custom = action == AuthzAction::Custom;
    let mut from_exists = false;
    let mut to_exists = false;
    let mut tcp_in_from = false;
    let mut tcp_in_to = false;

    for (j, f) in rule.from.iter().enumerate() {
        let fbase = format!("{base}.from[{j}]");
        let Some(src) = &f.source else {
            r.error(&format!("{fbase}.source"), "source is required");
            continue;
        };
        from_exists = true;
        source(r, &format!("{fbase}.source"), src, custom);
        tcp_in_from |= !(src.principals.is_empty()
            && src.not_principals.is_empty()
            && src.ip_blocks.is_empty()
            && src.not_ip_blocks.is_empty()
            && src.namespaces.is_empty()
            && src.not_namespaces.is_empty()
            && src.remote_ip_blocks.is_empty()
            && src.not_remote_ip_blocks.is_empty()
            && src.service_accounts.is_empty()
            && src.not_service_accounts.is_empty());
    }
    for (j, t) in rule.to.iter().enumerate() {
        let tbase = format!("{base}.to[{j}]");
        let Some(op) = &t.operation else {
            r.error(&format!("{tbase}.operation"), "operation is required");
            continue;
        };
        to_exists = true;
        operation(r, &format!("{tbase}.operation"), op);
        tcp_in_to |= !(op.ports.is_empty() && op.not_ports.is_empty());
    }
    for (j, c) in rule.when.iter().enumerate() {
        condition(r, &format!("{base}.when[{j}]"), c, custom);
    }

    // Istio warns: a DENY rule with only HTTP attributes also matches all TCP traffic.
    if action == AuthzAction::Deny
        && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
    {
        r.warning(
            base,
            "this DENY rule uses only HTTP attributes: it denies all TCP traffic in its scope; add ports to limit it",
        );
    }
}

fn source(r: &mut Report<'_>, base: &str, s: &Source, custom: bool) {
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        r.error(base, "source must set at least one field");
    }
    for (name, list) in lists {
        check_no_empty_values(r, &format!("{base}.{name}"), list);
        let ip_based = name.ends_with("pBlocks"); // ipBlocks, remoteIpBlocks and their not* forms
        if custom && !list.is_empty() && !ip_based {
            // Istio: CUSTOM only supports IP-based sources.
            r.error(
                &format!("{base}.{name}"),
                format!("{name} is not supported with action CUSTOM"),
            );
        }
    }
    if (!s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty())
        && (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
    {
        r.error(
            base,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
    for (name, list) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty() && !is_ip_or_cidr(v) {
                r.error(
                    &format!("{base}.{name}[{k}]"),
                    format!("{v:?} is not an IP address or CIDR block"),
                );
            }
        }
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (k, v) in list.iter().enumerate() {
            if let Err(e) = service_account_value(v) {
                r.error(&format!("{base}.{name}[{k}]"), e);
            }
        }
    }
}

/// Istio `security.CheckServiceAccount` (one value): `sa` or `namespace/sa`, no wildcards.
fn service_account_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(()); // reported as an empty value
    }
    if v.contains('*') {
        return Err(format!("{v:?}: wildcards are not allowed"));
    }
    if v.len() > 320 {
        return Err(format!("{v:?} is longer than 320 characters"));
    }
    match v.split_once('/') {
        Some((ns, sa)) if ns.is_empty() || sa.is_empty() || sa.contains('/') => Err(format!(
            "{v:?}: expected \"serviceAccount\" or \"namespace/serviceAccount\""
        )),
        _ => Ok(()),
    }
}

/// Istio `security.CheckEmptyValues`.
fn check_no_empty_values(r: &mut Report<'_>, base: &str, values: &[String]) {
    if let Some(k) = values.iter().position(String::is_empty) {
        r.error(&format!("{base}[{k}]"), "empty value not allowed");
    }
}

fn operation(r: &mut Report<'_>, base: &str, op: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        r.error(base, "operation must set at least one field");
    }
    for (name, list) in lists {
        check_no_empty_values(r, &format!("{base}.{name}"), list);
    }
    for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (k, p) in list.iter().enumerate() {
            if !p.is_empty() && !is_valid_port_string(p) {
                r.error(
                    &format!("{base}.{name}[{k}]"),
                    format!("{p:?} is not a port number (1..65535)"),
                );
            }
        }
    }
    for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (k, p) in list.iter().enumerate() {
            if let Err(e) = path_template(p) {
                r.error(&format!("{base}.{name}[{k}]"), e);
            }
        }
    }
}

fn is_valid_port_string(p: &str) -> bool {
    p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

/// Istio `security.CheckValidPathTemplate`: `{*}` matches one segment, `{**}` any number and
/// must be the last operator; braces are not allowed otherwise; with templates, the literal
/// segments must be valid path characters.
fn path_template(path: &str) -> Result<(), String> {
    let has_template = path.contains("{*}") || path.contains("{**}");
    let mut seen_any = false;
    for seg in path.trim_matches('/').split('/') {
        match seg {
            "{*}" | "{**}" if seen_any => {
                return Err(format!(
                    "invalid path template {path:?}: {{**}} must be the last operator"
                ));
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if seg.contains(['{', '}']) {
            return Err(format!(
                "invalid path template {path:?}: '{{' and '}}' are only allowed as whole {{*}} or {{**}} segments"
            ));
        }
        const PCHARS: &str = "-._~%!$&'()+,;:@=";
        if has_template
            && (seg.is_empty()
                || !seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || PCHARS.contains(c)))
        {
            return Err(format!(
                "invalid path template {path:?}: segment {seg:?} has characters not allowed in a path"
            ));
        }
    }
    Ok(())
}

/// Istio: `when` conditions (`security.ValidateAttribute`).
fn condition(r: &mut Report<'_>, base: &str, c: &Condition, custom: bool) {
    let key = match c.key.as_deref() {
        None | Some("") => {
            r.error(&format!("{base}.key"), "key is required");
            return;
        }
        Some(k) => k,
    };
    let key_field = format!("{base}.key");
    if c.values.is_empty() && c.not_values.is_empty() {
        r.error(
            base,
            format!("condition on {key:?} needs values or notValues"),
        );
    }
    let map_key = |k: &str| -> bool {
        // `name[key]` with a non-empty key.
        k.ends_with(']')
            && k.find('[')
                .is_some_and(|open| open > 0 && open < k.len() - 2)
    };
    enum Kind {
        Any,
        Ip,
        Port,
        ServiceAccount,
        Wildcard,
    }
    let kind = match key {
        k if k.starts_with("request.headers") => {
            if !map_key(k) {
                r.error(
                    &key_field,
                    format!("{k:?} should have the form request.headers[<name>]"),
                );
            }
            Kind::Any
        }
        k if k.starts_with("request.auth.claims") => {
            if !map_key(k) {
                r.error(
                    &key_field,
                    format!("{k:?} should have the form request.auth.claims[<claim>]"),
                );
            }
            Kind::Any
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            if !map_key(k) {
                r.error(
                    &key_field,
                    format!(
                        "{k:?} should have the form experimental.envoy.filters.<filter>[<key>]"
                    ),
                );
            }
            Kind::Any
        }
        "source.ip" | "remote.ip" | "destination.ip" => Kind::Ip,
        "destination.port" => Kind::Port,
        "source.serviceAccount" => Kind::ServiceAccount,
        "source.trustDomain" => Kind::Wildcard,
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Kind::Any,
        k => {
            r.error(&key_field, format!("unknown condition key {k:?}"));
            return;
        }
    };
    if custom
        && (matches!(
            key,
            "source.namespace"
                | "source.serviceAccount"
                | "source.trustDomain"
                | "source.principal"
        ) || key.starts_with("request.auth."))
    {
        r.error(
            &key_field,
            format!("{key:?} is not supported with action CUSTOM"),
        );
    }
    for (what, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        check_no_empty_values(r, &format!("{base}.{what}"), values);
        for (k, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            let field = format!("{base}.{what}[{k}]");
            match kind {
                Kind::Ip if !is_ip_or_cidr(v) => {
                    r.error(&field, format!("{v:?} is not an IP address or CIDR block"))
                }
                Kind::Port if !v.parse::<u32>().is_ok_and(|n| n <= 65535) => {
                    r.error(&field, format!("{v:?} is not a port number"))
                }
                Kind::ServiceAccount => {
                    if let Err(e) = service_account_value(v) {
                        r.error(&field, e);
                    }
                }
                Kind::Wildcard => {
                    let stars = v.matches('*').count();
                    if stars > 1
                        || (stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*'))
                    {
                        r.error(
                            &field,
                            format!("{v:?}: a wildcard is only allowed once, at the start or end"),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

// ===== RequestAuthentication =====

/// Istio `ValidateRequestAuthentication` / `validateJwtRule`.
fn request_authentication(r: &mut Report<'_>, o: &Object<RequestAuthentication>) {
    let ra = &o.spec;
    let targets = usize::from(ra.selector.is_some())
        + usize::from(ra.target_ref.is_some())
        + usize::from(!ra.target_refs.is_empty());
    if targets > 1 {
        r.error("spec", "set only one of selector, targetRef or targetRefs");
    }
    if let Some(sel) = &ra.selector {
        match_labels_selector(r, "spec.selector", sel);
    }
    let mut issuers: FirstSeen<&str> = FirstSeen::default();
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let base = format!("spec.jwtRules[{i}]");
        match rule.issuer.as_deref().filter(|s| !s.is_empty()) {
            // Istio accepts a rule without issuer when jwksUri is set.
            None if !is_set(&rule.jwks_uri) => {
                r.error(&format!("{base}.issuer"), "issuer is required (or jwksUri)")
            }
            None => {}
            Some(iss) => {
                if let Some(j) = issuers.dup(iss, i) {
                    r.warning(
                        &format!("{base}.issuer"),
                        format!("issuer {iss:?} is also used by spec.jwtRules[{j}]"),
                    );
                }
            }
        }
        for (k, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                r.error(&format!("{base}.audiences[{k}]"), "empty audience");
            }
        }
        if let Some(uri) = rule.jwks_uri.as_deref().filter(|s| !s.is_empty()) {
            if !(uri.starts_with("http://") || uri.starts_with("https://"))
                || uri.split("://").nth(1).is_none_or(|rest| rest.is_empty())
            {
                r.error(
                    &format!("{base}.jwksUri"),
                    format!("{uri:?} is not an http:// or https:// URL"),
                );
            }
            if is_set(&rule.jwks) {
                r.warning(
                    &format!("{base}.jwks"),
                    "set only one of jwks or jwksUri: which one Istio uses depends on its JWKS fetch mode",
                );
            }
        }
        if let Some(jwks) = rule.jwks.as_deref().filter(|s| !s.is_empty()) {
            match serde_json::from_str::<Value>(jwks) {
                Ok(v) if v.get("keys").is_some_and(Value::is_array) => {}
                Ok(_) => r.error(
                    &format!("{base}.jwks"),
                    "jwks must be a JSON Web Key Set ({\"keys\": [...]})",
                ),
                Err(e) => r.error(
                    &format!("{base}.jwks"),
                    format!("jwks is not valid JSON: {e}"),
                ),
            }
        }
        for (k, h) in rule.from_headers.iter().enumerate() {
            if !is_set(&h.name) {
                r.error(
                    &format!("{base}.fromHeaders[{k}].name"),
                    "header name is required",
                );
            }
        }
        check_no_empty_values(r, &format!("{base}.fromParams"), &rule.from_params);
        check_no_empty_values(r, &format!("{base}.fromCookies"), &rule.from_cookies);
        for (k, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cbase = format!("{base}.outputClaimToHeaders[{k}]");
            match (c.header.as_deref(), c.claim.as_deref()) {
                (Some(h), Some(cl)) if !h.is_empty() && !cl.is_empty() => {
                    if !h
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                    {
                        r.error(
                            &format!("{cbase}.header"),
                            format!("{h:?} is not a valid header name"),
                        );
                    }
                }
                _ => r.error(&cbase, "header and claim are both required"),
            }
        }
        check_opt_duration(r, &format!("{base}.timeout"), rule.timeout);
    }
}

// ===== MeshConfig =====

/// Istio `ValidateMeshConfig` for the fields egret reads, plus egret's notes on
/// `outboundTrafficPolicy`. Field paths are relative to the mesh config.
fn mesh_config(set: &ConfigSet, out: &mut Diagnostics) {
    let Some(origin) = &set.mesh_origin else {
        return;
    };
    let object = ObjectRef {
        kind: "MeshConfig".into(),
        namespace: String::new(),
        name: "mesh".into(),
    };
    let make = |severity: Severity, field: &str, message: String| Diagnostic {
        severity,
        file: origin.file.to_string(),
        line: origin.line_of(field),
        object: Some(object.clone()),
        field: field.to_string(),
        message,
    };
    let mut r = Report { make: &make, out };
    let r = &mut r;
    let mc = &set.mesh;

    if let Some(otp) = &mc.outbound_traffic_policy {
        match otp.mode {
            None => r.warning(
                "outboundTrafficPolicy",
                "outboundTrafficPolicy without mode: egret keeps the mesh default ALLOW_ANY (Istio merges mesh config over its defaults); write the mode explicitly",
            ),
            Some(OutboundMode::AllowAnyDynamicDns) => r.warning(
                "outboundTrafficPolicy.mode",
                "ALLOW_ANY_DYNAMIC_DNS is not supported by egret; treated as ALLOW_ANY",
            ),
            Some(_) => {}
        }
    }
    // Istio `validateTrustDomainConfig`.
    if let Some(td) = &mc.trust_domain
        && let Err(e) = trust_domain(td)
    {
        r.error("trustDomain", e);
    }
    for (i, td) in mc.trust_domain_aliases.iter().enumerate() {
        if let Err(e) = trust_domain(td) {
            r.error(&format!("trustDomainAliases[{i}]"), e);
        }
    }
    check_opt_duration(r, "connectTimeout", mc.connect_timeout);
    if let Some(l) = &mc.locality_lb_setting {
        locality_lb(r, "localityLbSetting", l, true);
    }
    if let Some(rt) = &mc.default_http_retry_policy {
        retries(r, "defaultHttpRetryPolicy", rt);
    }
    extension_providers(r, &mc.extension_providers);
}

/// Istio `ValidateTrustDomain`: DNS-1123 labels separated by dots (a trailing dot allowed).
fn trust_domain(td: &str) -> Result<(), String> {
    let body = td.strip_suffix('.').unwrap_or(td);
    if body.is_empty() || !body.split('.').all(is_dns1123_label) {
        return Err(format!("trust domain {td:?} is not a valid DNS name"));
    }
    Ok(())
}

/// A provider block's `service` and `port`.
type ServiceAndPort<'a> = (Option<&'a str>, Option<u32>);

/// Istio `validateExtensionProvider`.
fn extension_providers(r: &mut Report<'_>, providers: &[ExtensionProvider]) {
    let mut names: FirstSeen<&str> = FirstSeen::default();
    for (i, p) in providers.iter().enumerate() {
        let base = format!("extensionProviders[{i}]");
        match p.name.as_deref().filter(|s| !s.is_empty()) {
            None => r.error(
                &format!("{base}.name"),
                "extension provider name is required",
            ),
            Some(name) => {
                if let Some(j) = names.dup(name, i) {
                    r.error(
                        &format!("{base}.name"),
                        format!("duplicate extension provider name {name:?} (also extensionProviders[{j}])"),
                    );
                }
            }
        }
        // The provider is a proto oneof; the block kinds with a service and port get those
        // checked.
        let typed: [(&str, Option<ServiceAndPort<'_>>); 3] = [
            (
                "envoyExtAuthzHttp",
                p.envoy_ext_authz_http
                    .as_ref()
                    .map(|h| (h.service.as_deref(), h.port)),
            ),
            (
                "envoyExtAuthzGrpc",
                p.envoy_ext_authz_grpc
                    .as_ref()
                    .map(|g| (g.service.as_deref(), g.port)),
            ),
            (
                "opentelemetry",
                p.opentelemetry
                    .as_ref()
                    .map(|o| (o.service.as_deref(), o.port)),
            ),
        ];
        let untyped: [(&str, &Option<Value>, bool); 10] = [
            ("prometheus", &p.prometheus, false),
            ("stackdriver", &p.stackdriver, false),
            ("zipkin", &p.zipkin, true),
            ("datadog", &p.datadog, true),
            ("skywalking", &p.skywalking, true),
            ("lightstep", &p.lightstep, true),
            ("envoyOtelAls", &p.envoy_otel_als, true),
            ("envoyHttpAls", &p.envoy_http_als, true),
            ("envoyTcpAls", &p.envoy_tcp_als, true),
            ("sds", &p.sds, false),
        ];
        let count = typed.iter().filter(|(_, v)| v.is_some()).count()
            + untyped.iter().filter(|(_, v, _)| v.is_some()).count()
            + usize::from(p.envoy_file_access_log.is_some());
        if count != 1 {
            r.error(
                &base,
                format!("an extension provider needs exactly one provider block (envoyExtAuthzHttp, envoyExtAuthzGrpc, opentelemetry, ...), found {count}"),
            );
        }
        for (kind, sp) in typed {
            if let Some((service, port)) = sp {
                provider_service_port(r, &format!("{base}.{kind}"), service, port.map(u64::from));
            }
        }
        for (kind, v, has_service) in untyped {
            if let (Some(v), true) = (v, has_service) {
                let service = v.get("service").and_then(Value::as_str);
                let port = v.get("port").and_then(Value::as_u64);
                provider_service_port(r, &format!("{base}.{kind}"), service, port);
            }
        }
        if let Some(h) = &p.envoy_ext_authz_http {
            let hbase = format!("{base}.envoyExtAuthzHttp");
            if let Some(pp) = h.path_prefix.as_deref().filter(|s| !s.is_empty())
                && !pp.starts_with('/')
            {
                r.error(
                    &format!("{hbase}.pathPrefix"),
                    format!("pathPrefix {pp:?} must begin with '/'"),
                );
            }
            status_on_error(r, &format!("{hbase}.statusOnError"), &h.status_on_error);
        }
        if let Some(g) = &p.envoy_ext_authz_grpc {
            status_on_error(
                r,
                &format!("{base}.envoyExtAuthzGrpc.statusOnError"),
                &g.status_on_error,
            );
        }
    }
}

/// Istio `validateExtensionProviderService` and the port check.
fn provider_service_port(r: &mut Report<'_>, base: &str, service: Option<&str>, port: Option<u64>) {
    match service.filter(|s| !s.is_empty()) {
        None => r.error(&format!("{base}.service"), "service is required"),
        Some(s) => {
            let valid = match s.split_once('/') {
                None => is_fqdn(s) || is_ip(s),
                Some((ns, h)) => (ns == "*" || ns == "." || is_dns1123_label(ns)) && is_fqdn(h),
            };
            if !valid {
                r.error(
                    &format!("{base}.service"),
                    format!("service {s:?} must be a host name, an IP address or namespace/host"),
                );
            }
        }
    }
    match port {
        None | Some(0) => r.error(&format!("{base}.port"), "port is required"),
        Some(p) if p > 65535 => r.error(
            &format!("{base}.port"),
            format!("port number {p} must be in the range 1..65535"),
        ),
        Some(_) => {}
    }
}

/// Istio `validateExtensionProviderEnvoyExtAuthzStatusOnError`: an HTTP status code.
fn status_on_error(r: &mut Report<'_>, field: &str, s: &Option<String>) {
    if let Some(s) = s.as_deref().filter(|s| !s.is_empty())
        && !s.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c))
    {
        r.error(
            field,
            format!("statusOnError {s:?} is not an HTTP status code"),
        );
    }
}

// ===== ASMEgressTrafficPolicy =====

/// egret: the fields ASM's generator needs (`istio-egress-spec.md` §8).
fn asm_egress_policy(r: &mut Report<'_>, o: &Object<AsmEgressTrafficPolicy>) {
    let p = &o.spec;
    if o.meta.namespace != "istio-egress" {
        r.warning(
            "metadata.namespace",
            "ASM expects ASMEgressTrafficPolicy in namespace istio-egress",
        );
    }
    if !p
        .by_egress_gateway
        .as_ref()
        .is_some_and(|g| is_set(&g.name))
    {
        r.error(
            "spec.byEgressGateway.name",
            "egress gateway name is required",
        );
    }
    for (i, rule) in p.egress_rules.iter().enumerate() {
        let base = format!("spec.egressRules[{i}]");
        if rule.to.is_empty() {
            r.error(
                &format!("{base}.to"),
                "at least one destination is required",
            );
        }
        for (j, to) in rule.to.iter().enumerate() {
            asm_destination(r, &format!("{base}.to[{j}]"), to);
        }
        for (j, from) in rule.from.iter().enumerate() {
            let field = format!("{base}.from[{j}].namespace");
            match from.namespace.as_deref().filter(|s| !s.is_empty()) {
                None => r.error(&field, "namespace is required"),
                Some(ns) if !is_dns1123_label(ns) => {
                    r.error(&field, format!("invalid namespace {ns:?}"))
                }
                Some(_) => {}
            }
        }
    }
}

fn asm_destination(r: &mut Report<'_>, base: &str, to: &EgressTo) {
    if !is_set(&to.name) {
        r.error(&format!("{base}.name"), "name is required");
    }
    if to.hosts.is_empty() {
        r.error(&format!("{base}.hosts"), "at least one host is required");
    }
    for (k, h) in to.hosts.iter().enumerate() {
        let field = format!("{base}.hosts[{k}]");
        if host::is_wildcard(h) {
            r.error(
                &field,
                format!("wildcard host {h:?} is not supported (ASM resolves hosts with DNS)"),
            );
        } else if let Err(e) = host::validate_dns_name(h) {
            r.error(&field, e);
        }
    }
    match &to.port {
        None => r.error(&format!("{base}.port"), "port is required"),
        Some(p) => {
            match p.number {
                None => r.error(&format!("{base}.port.number"), "port number is required"),
                Some(n) => check_port(r, &format!("{base}.port.number"), n),
            }
            if !is_set(&p.protocol) {
                r.error(&format!("{base}.port.protocol"), "protocol is required");
            } else {
                warn_unknown_protocol(r, &format!("{base}.port.protocol"), &p.protocol);
            }
        }
    }
    match to.by_egress_gateway.as_ref().and_then(|g| g.port) {
        None => r.error(
            &format!("{base}.byEgressGateway.port"),
            "egress gateway port is required",
        ),
        Some(n) => check_port(r, &format!("{base}.byEgressGateway.port"), n),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Validate `yaml` (as file `test.yaml`) and render every diagnostic.
    fn run(yaml: &str) -> Vec<String> {
        let (set, load) = ConfigSet::from_str("test.yaml", yaml);
        assert!(!load.has_errors(), "load errors: {load:?}");
        validate(&set).iter().map(ToString::to_string).collect()
    }

    fn assert_has(diags: &[String], want: &str) {
        assert!(
            diags.iter().any(|d| d == want),
            "missing diagnostic:\n  {want}\ngot:\n  {}",
            diags.join("\n  ")
        );
    }

    fn assert_all(diags: &[String], want: &[&str]) {
        for w in want {
            assert_has(diags, w);
        }
    }

    #[test]
    fn service_entry_hosts_and_ports() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: x
spec:
  hosts: [a.example.com, "*"]
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 80
    name: http
    protocol: FOO
  - number: 70000
    protocol: tcp
  resolution: NONE
"#);
        assert_all(
            &d,
            &[
                r#"test.yaml:6: error: ServiceEntry default/x: spec.hosts[1]: "*" is not allowed in ServiceEntry hosts"#,
                "test.yaml:11: error: ServiceEntry default/x: spec.ports[1].number: duplicate port number 80 (also spec.ports[0])",
                r#"test.yaml:12: error: ServiceEntry default/x: spec.ports[1].name: duplicate port name "http" (also spec.ports[0])"#,
                r#"test.yaml:13: warning: ServiceEntry default/x: spec.ports[1].protocol: unknown protocol "FOO": treated as unset (protocol sniffing)"#,
                "test.yaml:11: warning: ServiceEntry default/x: spec.ports[1]: port 80 without protocol or addresses: unless sniffed as HTTP, every connection to port 80 on any IP matches this ServiceEntry",
                "test.yaml:14: error: ServiceEntry default/x: spec.ports[2].number: port number 70000 must be in the range 1..65535",
                "test.yaml:14: error: ServiceEntry default/x: spec.ports[2].name: port name is required",
                "test.yaml:14: warning: ServiceEntry default/x: spec.ports[2]: TCP port 70000 without addresses: every connection to port 70000 on any IP matches this ServiceEntry",
            ],
        );
        assert_eq!(d.len(), 8, "{d:#?}");
    }

    #[test]
    fn service_entry_resolution_rules() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: dns
spec:
  hosts: ["*.foo.com"]
  ports:
  - {number: 443, name: tls, protocol: TLS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: none
spec:
  hosts: [a.foo.com]
  ports:
  - {number: 443, name: tls, protocol: TLS}
  endpoints:
  - address: 1.2.3.4
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: static
spec:
  hosts: [b.foo.com]
  ports:
  - {number: 443, name: tls, protocol: TLS}
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: rr
spec:
  hosts: [c.foo.com, d.foo.com]
  addresses: [10.0.0.0/8]
  ports:
  - {number: 5432, name: pg, protocol: TCP}
  resolution: DNS_ROUND_ROBIN
  endpoints:
  - address: db1.foo.com
    ports: {pgx: 5432}
  - address: not_valid!
"#);
        assert_all(
            &d,
            &[
                r#"test.yaml:6: error: ServiceEntry default/dns: spec.hosts[0]: DNS resolution is not allowed with wildcard host "*.foo.com"; use resolution NONE"#,
                "test.yaml:19: error: ServiceEntry default/none: spec.endpoints: endpoints are not allowed with resolution NONE",
                "test.yaml:30: error: ServiceEntry default/static: spec.resolution: resolution STATIC needs endpoints or a workloadSelector",
                "test.yaml:38: error: ServiceEntry default/rr: spec.addresses[0]: CIDR addresses are only allowed with resolution NONE or STATIC, not DNS_ROUND_ROBIN",
                "test.yaml:40: error: ServiceEntry default/rr: spec.ports[0].protocol: multiple hosts with a TCP port require resolution NONE",
                "test.yaml:42: error: ServiceEntry default/rr: spec.endpoints: DNS_ROUND_ROBIN allows at most one endpoint",
                r#"test.yaml:44: error: ServiceEntry default/rr: spec.endpoints[0].ports.pgx: endpoint port name "pgx" is not a port of this ServiceEntry"#,
                r#"test.yaml:45: error: ServiceEntry default/rr: spec.endpoints[1].address: address "not_valid!" is not an IP address or a DNS name"#,
            ],
        );
        assert_eq!(d.len(), 8, "{d:#?}");
    }

    #[test]
    fn service_entry_dynamic_dns_static_endpoints_and_selector() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: dyn
spec:
  hosts: [a.foo.com]
  addresses: [10.1.1.1]
  ports:
  - {number: 8443, name: https, protocol: HTTPS, targetPort: 0}
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: st
spec:
  hosts: [s.foo.com]
  addresses: [10.1.1.2]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 99999}
  resolution: STATIC
  workloadSelector: {labels: {app: x}}
  endpoints:
  - address: host.foo.com
"#);
        assert_all(
            &d,
            &[
                r#"test.yaml:6: error: ServiceEntry default/dyn: spec.hosts[0]: resolution DYNAMIC_DNS needs wildcard hosts ("*.example.com"), not "a.foo.com""#,
                "test.yaml:7: error: ServiceEntry default/dyn: spec.addresses: addresses are not allowed with resolution DYNAMIC_DNS",
                "test.yaml:9: error: ServiceEntry default/dyn: spec.ports[0].protocol: resolution DYNAMIC_DNS supports only HTTP, TLS, GRPC and HTTP2 ports",
                "test.yaml:20: error: ServiceEntry default/st: spec.ports[0].targetPort: port number 99999 must be in the range 1..65535",
                "test.yaml:22: error: ServiceEntry default/st: spec.workloadSelector: set only one of endpoints or workloadSelector",
                r#"test.yaml:24: error: ServiceEntry default/st: spec.endpoints[0].address: endpoint address "host.foo.com" must be an IP address or unix:// path with resolution STATIC"#,
            ],
        );
        assert_eq!(d.len(), 6, "{d:#?}");
    }

    #[test]
    fn service_entry_tcp_port_without_addresses_warns() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ssh
spec:
  hosts: [dummy.github.com]
  ports:
  - name: tcp
    number: 22
    protocol: tcp
"#);
        assert_eq!(d, vec![
            "test.yaml:8: warning: ServiceEntry default/ssh: spec.ports[0]: TCP port 22 without addresses: every connection to port 22 on any IP matches this ServiceEntry".to_string(),
        ]);
    }

    #[test]
    fn export_to_rules() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: e
  namespace: ns1
spec:
  hosts: [e.foo.com]
  addresses: [10.0.0.1]
  ports: [{number: 80, name: http, protocol: HTTP}]
  exportTo: [".", ns1, "~", "Bad_NS"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: d
spec:
  host: e.foo.com
  exportTo: ["~", "*", "*"]
  workloadSelector: {matchLabels: {app: a}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ok
spec:
  host: e.foo.com
  exportTo: ["."]
  workloadSelector: {matchLabels: {app: a}}
"#);
        assert_all(
            &d,
            &[
                r#"test.yaml:10: error: ServiceEntry ns1/e: spec.exportTo[1]: "." and "ns1" both name this namespace (also spec.exportTo[0])"#,
                r#"test.yaml:10: error: ServiceEntry ns1/e: spec.exportTo[3]: "Bad_NS" is not a valid entry: use ".", "*", "~" or a namespace name"#,
                r#"test.yaml:10: error: ServiceEntry ns1/e: spec.exportTo: "~" (no namespace) cannot be combined with other entries"#,
                r#"test.yaml:18: error: DestinationRule default/d: spec.exportTo[0]: "~" (export to no namespace) is only allowed on ServiceEntries"#,
                r#"test.yaml:18: error: DestinationRule default/d: spec.exportTo[2]: duplicate entry "*" (also spec.exportTo[1])"#,
                r#"test.yaml:18: error: DestinationRule default/d: spec.exportTo: a DestinationRule with workloadSelector may only be exported to its own namespace (exportTo: ["."])"#,
                r#"test.yaml:18: error: DestinationRule default/d: spec.exportTo: "*" (all namespaces) cannot be combined with other entries"#,
            ],
        );
        assert_eq!(d.len(), 7, "{d:#?}");
    }

    #[test]
    fn destination_rule_traffic_policy() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: d
spec:
  host: api.foo.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      consistentHash:
        httpCookie: {ttl: 0s}
        useSourceIp: true
    outlierDetection:
      maxEjectionPercent: 120
      interval: 0s
    connectionPool:
      tcp: {connectTimeout: 0.5ms}
    tls:
      mode: MUTUAL
      insecureSkipVerify: true
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: ISTIO_MUTUAL, caCertificates: /etc/ca.pem}
    - port: {number: 443}
      tls: {mode: SIMPLE, credentialName: cred}
  subsets:
  - name: v1
  - name: v1
  - name: V_2
    trafficPolicy: {}
"#);
        let p = "DestinationRule default/d: spec";
        assert_all(
            &d,
            &[
                &format!(
                    "test.yaml:8: error: {p}.trafficPolicy.loadBalancer: set only one of simple or consistentHash"
                ),
                &format!(
                    "test.yaml:10: error: {p}.trafficPolicy.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"
                ),
                &format!(
                    "test.yaml:11: error: {p}.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: httpCookie needs a name"
                ),
                &format!(
                    "test.yaml:14: error: {p}.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 120 is not in the range 0..100"
                ),
                &format!(
                    "test.yaml:15: error: {p}.trafficPolicy.outlierDetection.interval: duration 0s is shorter than 1ms"
                ),
                &format!(
                    "test.yaml:17: error: {p}.trafficPolicy.connectionPool.tcp.connectTimeout: duration 500000ns is shorter than 1ms"
                ),
                &format!(
                    "test.yaml:18: error: {p}.trafficPolicy.tls: MUTUAL requires clientCertificate and privateKey (or credentialName)"
                ),
                &format!(
                    "test.yaml:20: warning: {p}.trafficPolicy.tls.insecureSkipVerify: the upstream certificate will not be verified"
                ),
                &format!(
                    "test.yaml:23: error: {p}.trafficPolicy.portLevelSettings[0].tls: ISTIO_MUTUAL uses the mesh identity; clientCertificate, privateKey, caCertificates and credentialName must be empty"
                ),
                &format!(
                    "test.yaml:24: error: {p}.trafficPolicy.portLevelSettings[1].port.number: duplicate port 443 (also spec.trafficPolicy.portLevelSettings[0])"
                ),
                &format!(
                    "test.yaml:25: warning: {p}.trafficPolicy.portLevelSettings[1].tls.credentialName: credentialName on a sidecar needs workloadSelector in Istio; egret reads it on gateways, and on sidecars only when the DestinationRule has a workloadSelector"
                ),
                &format!(
                    r#"test.yaml:28: error: {p}.subsets[1].name: duplicate subset name "v1" (also spec.subsets[0])"#
                ),
                &format!(
                    r#"test.yaml:29: error: {p}.subsets[2].name: subset name "V_2" must be a DNS-1123 label (lower-case letters, digits, '-')"#
                ),
                &format!(
                    "test.yaml:30: error: {p}.subsets[2].trafficPolicy: trafficPolicy must set at least one field"
                ),
            ],
        );
        assert_eq!(d.len(), 14, "{d:#?}");
    }

    #[test]
    fn destination_rule_locality_and_host() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: dist
spec:
  host: api.foo.com
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-west/zone1/*
          to: {"us-west/zone1/*": 80, "us-west/zone2/*": 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: fail
spec:
  host: "bad host"
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover:
        - {from: us-east, to: us-east}
"#);
        assert_all(
            &d,
            &[
                "test.yaml:12: error: DestinationRule default/dist: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: locality weights sum to 90, not 100",
                r#"test.yaml:19: error: DestinationRule default/fail: spec.host: host "bad host": invalid label "bad host""#,
                "test.yaml:22: warning: DestinationRule default/fail: spec.trafficPolicy.loadBalancer.localityLbSetting: failover only takes effect with outlierDetection",
                "test.yaml:24: error: DestinationRule default/fail: spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: failover from and to must be different regions",
            ],
        );
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    #[test]
    fn virtual_service_http_routes() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: v
spec:
  hosts: ["*"]
  http:
  - match:
    - uri: {prefix: /a, exact: /b}
      headers:
        X-Foo: {exact: bar}
        x-re: {regex: "a(b"}
      port: 70000
    route:
    - destination: {host: a.foo.com}
      weight: 60
    - destination: {host: b.foo.com}
      weight: 30
    redirect: {uri: /x}
    timeout: 0s
  - route:
    - destination: {host: a.foo.com, port: {number: 0}}
      weight: -1
    - destination: {subset: v1}
      weight: 1
    retries: {attempts: -1, perTryTimeout: 0s}
    fault: {abort: {httpStatus: 700}, delay: {percentage: {value: 50}}}
  - directResponse: {status: 99}
    mirrorPercentage: {value: 150}
    mirror: {host: m.foo.com}
    mirrors: [{destination: {host: m.foo.com}}]
"#);
        let p = "VirtualService default/v: spec";
        assert_all(
            &d,
            &[
                &format!(
                    r#"test.yaml:6: error: {p}.hosts[0]: wildcard host "*" is not allowed for VirtualServices bound to the mesh gateway"#
                ),
                &format!(
                    "test.yaml:8: error: {p}.http[0]: exactly one of route, redirect or directResponse is required"
                ),
                &format!(
                    "test.yaml:9: error: {p}.http[0].match[0].uri: exactly one of exact, prefix or regex is allowed"
                ),
                &format!(
                    r#"test.yaml:11: error: {p}.http[0].match[0].headers.X-Foo: header name "X-Foo" must be lower case"#
                ),
                &format!(
                    r#"test.yaml:12: error: {p}.http[0].match[0].headers.x-re.regex: invalid regex "a(b": unclosed group"#
                ),
                &format!(
                    "test.yaml:13: error: {p}.http[0].match[0].port: port number 70000 must be in the range 1..65535"
                ),
                &format!(
                    "test.yaml:14: warning: {p}.http[0].route: destination weights sum to 90, not 100: egret (like Envoy) treats them as relative shares"
                ),
                &format!(
                    "test.yaml:20: error: {p}.http[0].timeout: duration 0s is shorter than 1ms"
                ),
                &format!(
                    "test.yaml:21: error: {p}.http[1].route: all destination weights are 0: no traffic would be routed"
                ),
                &format!(
                    "test.yaml:22: error: {p}.http[1].route[0].destination.port.number: port number 0 must be in the range 1..65535"
                ),
                &format!(
                    "test.yaml:23: error: {p}.http[1].route[0].weight: weight -1 must not be negative"
                ),
                &format!(
                    "test.yaml:24: error: {p}.http[1].route[1].destination.host: destination host is required"
                ),
                &format!(
                    "test.yaml:26: error: {p}.http[1].retries.attempts: attempts -1 must not be negative"
                ),
                &format!(
                    "test.yaml:26: error: {p}.http[1].retries.perTryTimeout: duration 0s is shorter than 1ms"
                ),
                &format!(
                    "test.yaml:27: error: {p}.http[1].fault.abort.httpStatus: HTTP status 700 is not in the range 200..599"
                ),
                &format!(
                    "test.yaml:27: error: {p}.http[1].fault.delay: delay needs fixedDelay or exponentialDelay"
                ),
                &format!("test.yaml:28: error: {p}.http[2]: set only one of mirror or mirrors"),
                &format!(
                    "test.yaml:28: error: {p}.http[2].directResponse.status: HTTP status 99 is not in the range 200..599"
                ),
                &format!(
                    "test.yaml:29: error: {p}.http[2].mirrorPercentage.value: percentage 150 is neither 0 nor in the range 0.0001..100"
                ),
                &format!(
                    "test.yaml:28: warning: {p}.http[2]: unreachable: spec.http[1] before it has no match and takes all traffic"
                ),
            ],
        );
        assert_eq!(d.len(), 20, "{d:#?}");
    }

    #[test]
    fn virtual_service_tls_and_tcp_routes() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: t
spec:
  hosts: [a.com, "*.wiki.org", reviews]
  gateways: [mesh, istio-system/egress, Bad/x, gw.istio-system]
  tls:
  - match:
    - sniHosts: [a.com, b.com, wiki.org, x.en.wiki.org]
      destinationSubnets: [10.0.0.0/33]
    route:
    - destination: {host: a.com}
  - route:
    - destination: {host: a.com}
  tcp:
  - match:
    - destinationSubnets: [1.2.3.4]
      port: 0
  - route:
    - destination: {host: a.com}
      weight: 50
    - destination: {host: b.com}
"#);
        let p = "VirtualService default/t: spec";
        assert_all(
            &d,
            &[
                &format!(r#"test.yaml:7: error: {p}.gateways[2]: invalid namespace "Bad""#),
                &format!(
                    r#"test.yaml:7: warning: {p}.gateways[3]: legacy gateway name format "gw.istio-system"; prefer namespace/name: "istio-system/gw""#
                ),
                &format!(
                    r#"test.yaml:10: error: {p}.tls[0].match[0].sniHosts[1]: SNI host "b.com" is not among the VirtualService hosts"#
                ),
                &format!(
                    r#"test.yaml:11: error: {p}.tls[0].match[0].destinationSubnets[0]: "10.0.0.0/33" is not an IP address or CIDR block"#
                ),
                &format!("test.yaml:14: error: {p}.tls[1].match: at least one match is required"),
                &format!(
                    "test.yaml:17: error: {p}.tcp[0].route: at least one route destination is required"
                ),
                &format!(
                    "test.yaml:20: warning: {p}.tcp[1].route: destination weights sum to 50, not 100: egret (like Envoy) treats them as relative shares"
                ),
            ],
        );
        assert_eq!(d.len(), 7, "{d:#?}");
    }

    #[test]
    fn virtual_service_without_hosts() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: nohosts
spec:
  http:
  - route:
    - destination: {host: a.foo.com}
"#);
        assert_eq!(d, vec![
            "test.yaml:5: error: VirtualService default/nohosts: spec.hosts: at least one host is required (only delegate VirtualServices have none, and no VirtualService delegates to this one)".to_string(),
        ]);
    }

    #[test]
    fn gateway_servers() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [foo]
  - port: {number: 80, name: https, protocol: HTTP}
    hosts: ["bad ns/a.com", "./*.a.com"]
    tls: {mode: SIMPLE, credentialName: c}
  - port: {number: 8443, name: mtls, protocol: TLS}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      serverCertificate: /c.pem
      privateKey: /k.pem
      minProtocolVersion: TLSV1_3
      maxProtocolVersion: TLSV1_2
  - port: {number: 15443, name: tls-ap, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 9443, name: om, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: om}
  - hosts: []
"#);
        let p = "Gateway default/gw: spec";
        assert_all(
            &d,
            &[
                &format!("test.yaml:8: error: {p}.servers[0]: HTTPS servers need tls settings"),
                &format!(
                    r#"test.yaml:9: error: {p}.servers[0].hosts[0]: short name "foo" is not allowed; use a fully qualified name"#
                ),
                &format!(
                    r#"test.yaml:10: error: {p}.servers[1].port.name: duplicate server port name "https" (also spec.servers[0].port.name)"#
                ),
                &format!(
                    r#"test.yaml:11: error: {p}.servers[1].hosts[0]: host "bad ns/a.com": invalid namespace "bad ns""#
                ),
                &format!(
                    "test.yaml:12: error: {p}.servers[1].tls: tls on a plain-text HTTP server may only set httpsRedirect"
                ),
                &format!(
                    "test.yaml:15: error: {p}.servers[2].tls: MUTUAL requires caCertificates (or credentialName)"
                ),
                &format!(
                    "test.yaml:19: error: {p}.servers[2].tls.minProtocolVersion: minProtocolVersion TLSV1_3 is above maxProtocolVersion TLSV1_2"
                ),
                &format!(
                    "test.yaml:23: warning: {p}.servers[3].tls.mode: AUTO_PASSTHROUGH (multi-network east-west) is not supported by egret, server ignored"
                ),
                &format!(
                    "test.yaml:26: warning: {p}.servers[4].tls.mode: OPTIONAL_MUTUAL is treated as MUTUAL by egret"
                ),
                &format!("test.yaml:27: error: {p}.servers[5].port: port is required"),
                &format!(
                    "test.yaml:27: error: {p}.servers[5].hosts: at least one host is required"
                ),
            ],
        );
        assert_eq!(d.len(), 11, "{d:#?}");
    }

    #[test]
    fn sidecar_egress_and_outbound_policy() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: s
spec:
  workloadSelector: {labels: {}}
  egress:
  - hosts: ["*/*"]
  - port: {number: 70000, protocol: HTTP, name: http}
    hosts: [foo.com, "./*", "./*", "~/*"]
  - port: {number: 9080}
  outboundTrafficPolicy: {}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: s2
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY_DYNAMIC_DNS}
"#);
        let p = "Sidecar default/s: spec";
        assert_all(
            &d,
            &[
                &format!(
                    "test.yaml:6: warning: {p}.workloadSelector: workloadSelector without labels selects every workload in the namespace"
                ),
                &format!(
                    "test.yaml:8: error: {p}.egress[0]: the egress listener without port must be the last one"
                ),
                &format!(
                    "test.yaml:9: error: {p}.egress[1].port.number: port number 70000 must be in the range 1..65535"
                ),
                &format!(
                    r#"test.yaml:10: error: {p}.egress[1].hosts[0]: hosts entry "foo.com" must be namespace/host, e.g. "*/foo.com""#
                ),
                &format!(
                    r#"test.yaml:10: warning: {p}.egress[1].hosts[2]: duplicated egress host "./*""#
                ),
                &format!("test.yaml:11: error: {p}.egress[2].hosts: at least one host is required"),
                &format!(
                    "test.yaml:12: warning: {p}.outboundTrafficPolicy: outboundTrafficPolicy without mode means REGISTRY_ONLY (the Istio enum default): unknown destinations are blocked"
                ),
                "test.yaml:19: error: Sidecar default/s2: spec.outboundTrafficPolicy.mode: ALLOW_ANY_DYNAMIC_DNS is only valid in MeshConfig",
            ],
        );
        assert_eq!(d.len(), 8, "{d:#?}");
    }

    #[test]
    fn workload_entry_address_and_ports() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: w
spec:
  ports: {http: 0, Bad: 80}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: w2
spec:
  address: unix:///var/run/sock
  ports: {http: 80}
"#);
        assert_all(
            &d,
            &[
                "test.yaml:5: error: WorkloadEntry default/w: spec.address: address is required",
                "test.yaml:6: error: WorkloadEntry default/w: spec.ports.http: port number 0 must be in the range 1..65535",
                r#"test.yaml:6: error: WorkloadEntry default/w: spec.ports.Bad: invalid port name "Bad": must be a DNS-1123 label"#,
                "test.yaml:14: error: WorkloadEntry default/w2: spec.ports: a unix:// endpoint takes no ports",
            ],
        );
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    #[test]
    fn authorization_policy_rules() {
        let d = run(r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: a
  namespace: foo
  annotations:
    istio.io/dry-run: "yes"
spec:
  action: DENY
  rules:
  - from:
    - source:
        serviceAccounts: [foo/sa]
        principals: [cluster.local/ns/foo/sa/x]
        ipBlocks: [10.0.0.0/40]
    to:
    - operation:
        ports: ["80", "http"]
        paths: ["/a/{**}/{*}", "/b/{x}"]
    when:
    - key: request.headers[x-a]
      values: [a]
    - key: source.unknown
      values: [x]
    - key: destination.ip
      values: [nope]
    - key: source.ip
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: c
spec:
  action: CUSTOM
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
spec:
  action: ALLOW
  provider: {name: x}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-none
spec:
  action: DENY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
spec: {}
"#);
        let p = "AuthorizationPolicy foo/a";
        assert_all(
            &d,
            &[
                &format!(
                    r#"test.yaml:7: error: {p}: metadata.annotations.istio.io/dry-run: value "yes" must be "true" or "false""#
                ),
                &format!(
                    "test.yaml:12: error: {p}: spec.rules[0].from[0].source: serviceAccounts cannot be combined with principals or namespaces"
                ),
                &format!(
                    r#"test.yaml:15: error: {p}: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/40" is not an IP address or CIDR block"#
                ),
                &format!(
                    r#"test.yaml:18: error: {p}: spec.rules[0].to[0].operation.ports[1]: "http" is not a port number (1..65535)"#
                ),
                &format!(
                    r#"test.yaml:19: error: {p}: spec.rules[0].to[0].operation.paths[0]: invalid path template "/a/{{**}}/{{*}}": {{**}} must be the last operator"#
                ),
                &format!(
                    r#"test.yaml:19: error: {p}: spec.rules[0].to[0].operation.paths[1]: invalid path template "/b/{{x}}": '{{' and '}}' are only allowed as whole {{*}} or {{**}} segments"#
                ),
                &format!(
                    r#"test.yaml:23: error: {p}: spec.rules[0].when[1].key: unknown condition key "source.unknown""#
                ),
                &format!(
                    r#"test.yaml:26: error: {p}: spec.rules[0].when[2].values[0]: "nope" is not an IP address or CIDR block"#
                ),
                &format!(
                    r#"test.yaml:27: error: {p}: spec.rules[0].when[3]: condition on "source.ip" needs values or notValues"#
                ),
                "test.yaml:33: error: AuthorizationPolicy default/c: spec.provider.name: action CUSTOM requires provider.name",
                "test.yaml:43: error: AuthorizationPolicy default/p: spec.provider: provider is only allowed with action CUSTOM, not ALLOW",
                "test.yaml:49: error: AuthorizationPolicy default/deny-none: spec.rules: a DENY policy without rules never matches; add `rules: [{}]` to match every request",
            ],
        );
        // `spec: {}` (ALLOW, no rules) means "deny everything": meaningful, not an error.
        assert!(!d.iter().any(|l| l.contains("allow-nothing")), "{d:#?}");
        assert_eq!(d.len(), 12, "{d:#?}");
    }

    #[test]
    fn request_authentication_rules() {
        let d = run(r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: r
spec:
  jwtRules:
  - issuer: a
    jwksUri: ftp://x
    jwks: '{"keys": []}'
  - jwks: 'nope'
    fromHeaders: [{prefix: "Bearer "}]
  - issuer: a
"#);
        let p = "RequestAuthentication default/r: spec.jwtRules";
        assert_all(
            &d,
            &[
                &format!(
                    r#"test.yaml:8: error: {p}[0].jwksUri: "ftp://x" is not an http:// or https:// URL"#
                ),
                &format!(
                    "test.yaml:9: warning: {p}[0].jwks: set only one of jwks or jwksUri: which one Istio uses depends on its JWKS fetch mode"
                ),
                &format!("test.yaml:10: error: {p}[1].issuer: issuer is required (or jwksUri)"),
                &format!(
                    "test.yaml:10: error: {p}[1].jwks: jwks is not valid JSON: expected ident at line 1 column 2"
                ),
                &format!(
                    "test.yaml:11: error: {p}[1].fromHeaders[0].name: header name is required"
                ),
                &format!(
                    r#"test.yaml:12: warning: {p}[2].issuer: issuer "a" is also used by spec.jwtRules[0]"#
                ),
            ],
        );
        assert_eq!(d.len(), 6, "{d:#?}");
    }

    #[test]
    fn mesh_config_rules() {
        let d = run(r#"spec:
  meshConfig:
    outboundTrafficPolicy: {}
    trustDomain: Bad_Domain
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local}
    - name: authz
      envoyExtAuthzGrpc: {service: a.b, port: 9000}
      opentelemetry: {service: o.b, port: 4317}
"#);
        assert_all(
            &d,
            &[
                "test.yaml:3: warning: MeshConfig /mesh: outboundTrafficPolicy: outboundTrafficPolicy without mode: egret keeps the mesh default ALLOW_ANY (Istio merges mesh config over its defaults); write the mode explicitly",
                r#"test.yaml:4: error: MeshConfig /mesh: trustDomain: trust domain "Bad_Domain" is not a valid DNS name"#,
                "test.yaml:7: error: MeshConfig /mesh: extensionProviders[0].envoyExtAuthzHttp.port: port is required",
                r#"test.yaml:8: error: MeshConfig /mesh: extensionProviders[1].name: duplicate extension provider name "authz" (also extensionProviders[0])"#,
                "test.yaml:8: error: MeshConfig /mesh: extensionProviders[1]: an extension provider needs exactly one provider block (envoyExtAuthzHttp, envoyExtAuthzGrpc, opentelemetry, ...), found 2",
            ],
        );
        assert_eq!(d.len(), 5, "{d:#?}");

        let d = run(
            "spec:\n  meshConfig:\n    outboundTrafficPolicy:\n      mode: ALLOW_ANY_DYNAMIC_DNS\n",
        );
        assert_eq!(d, vec![
            "test.yaml:4: warning: MeshConfig /mesh: outboundTrafficPolicy.mode: ALLOW_ANY_DYNAMIC_DNS is not supported by egret; treated as ALLOW_ANY".to_string(),
        ]);
    }

    #[test]
    fn asm_egress_traffic_policy() {
        let d = run(r#"apiVersion: istio.alibabacloud.com/v1beta1
kind: ASMEgressTrafficPolicy
metadata:
  name: p
  namespace: default
spec:
  byEgressGateway: {}
  egressRules:
  - from:
    - workloadSelector: {app: a}
    to:
    - hosts: ["*.httpbin.org"]
      port: {number: 80}
      byEgressGateway: {port: 0}
"#);
        let p = "ASMEgressTrafficPolicy default/p";
        assert_all(
            &d,
            &[
                &format!(
                    "test.yaml:5: warning: {p}: metadata.namespace: ASM expects ASMEgressTrafficPolicy in namespace istio-egress"
                ),
                &format!(
                    "test.yaml:7: error: {p}: spec.byEgressGateway.name: egress gateway name is required"
                ),
                &format!(
                    "test.yaml:10: error: {p}: spec.egressRules[0].from[0].namespace: namespace is required"
                ),
                &format!(
                    "test.yaml:12: error: {p}: spec.egressRules[0].to[0].name: name is required"
                ),
                &format!(
                    r#"test.yaml:12: error: {p}: spec.egressRules[0].to[0].hosts[0]: wildcard host "*.httpbin.org" is not supported (ASM resolves hosts with DNS)"#
                ),
                &format!(
                    "test.yaml:13: error: {p}: spec.egressRules[0].to[0].port.protocol: protocol is required"
                ),
                &format!(
                    "test.yaml:14: error: {p}: spec.egressRules[0].to[0].byEgressGateway.port: port number 0 must be in the range 1..65535"
                ),
            ],
        );
        assert_eq!(d.len(), 7, "{d:#?}");
    }

    fn samples_dir() -> PathBuf {
        match std::env::var_os("EGRET_SAMPLES") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/conformance/istio-samples"),
        }
    }

    /// Every conformance sample is valid Istio configuration: no errors.
    #[test]
    fn conformance_samples_have_no_errors() {
        let dir = samples_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("conformance samples missing at {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 29,
            "only {} samples in {}",
            files.len(),
            dir.display()
        );
        let mut failures = Vec::new();
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let mut text = std::fs::read_to_string(f).unwrap();
            if name.starts_with("14-") {
                text = text
                    .replace("$PROXY_IP", "203.0.113.10")
                    .replace("$PROXY_PORT", "3128");
            }
            let (set, _) = ConfigSet::from_str(&name, &text);
            let diags = validate(&set);
            if diags.has_errors() {
                failures.extend(diags.iter().map(ToString::to_string));
            }
        }
        assert!(
            failures.is_empty(),
            "samples with errors:\n{}",
            failures.join("\n")
        );
    }
}
