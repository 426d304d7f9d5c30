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
//!
//! Each kind's rules live in their own submodule (`service_entry` also holds WorkloadEntry,
//! `security` AuthorizationPolicy and RequestAuthentication); the helpers several kinds share
//! are here.

mod asm;
mod destination_rule;
mod gateway;
mod mesh;
mod ratelimit;
mod security;
mod service_entry;
mod sidecar;
mod virtual_service;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use egret_config::types::*;
use egret_config::{ConfigSet, Diagnostic, Diagnostics, Object, Severity};

use crate::host;

use asm::asm_egress_policy;
use destination_rule::destination_rule;
use gateway::gateway;
use mesh::mesh_config;
use ratelimit::rate_limit_policy;
use security::{authorization_policy, request_authentication};
use service_entry::{EndpointKind, service_entry, workload_entry};
use sidecar::sidecar;
use virtual_service::{delegate_targets, virtual_service};

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
    for o in &set.rate_limit_policies {
        check(o, &mut out, rate_limit_policy);
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

// ===== Selectors =====

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

// ===== Destinations and hostnames =====

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

/// Helpers shared by the tests of every kind.
#[cfg(test)]
mod test_util {
    use egret_config::ConfigSet;

    use super::validate;

    /// Validate `yaml` (as file `test.yaml`) and render every diagnostic.
    pub(super) fn run(yaml: &str) -> Vec<String> {
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

    pub(super) fn assert_all(diags: &[String], want: &[&str]) {
        for w in want {
            assert_has(diags, w);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::test_util::{assert_all, run};
    use super::*;
    use std::path::PathBuf;

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
