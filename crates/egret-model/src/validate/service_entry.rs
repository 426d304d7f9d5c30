//! ServiceEntry and WorkloadEntry (whose rules also apply to ServiceEntry endpoints).

use std::collections::HashSet;

use egret_config::Object;
use egret_config::types::*;

use super::{
    FirstSeen, Proto, Report, alpha_selector, check_export_to, check_port, check_unix_path,
    is_dns1123_label, is_fqdn, is_ip, is_ip_or_cidr, port_protocol, unix_path,
    warn_unknown_protocol,
};
use crate::host;

// ===== ServiceEntry =====

/// Istio `ValidateServiceEntry`.
pub(super) fn service_entry(r: &mut Report<'_>, o: &Object<ServiceEntry>) {
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
pub(super) enum EndpointKind {
    /// A WorkloadEntry object: IP, DNS name or unix socket.
    Standalone,
    /// A ServiceEntry endpoint with resolution STATIC: IP or unix socket.
    Static,
    /// A ServiceEntry endpoint with resolution DNS / DNS_ROUND_ROBIN: IP or DNS name.
    Dns,
}

/// Istio `validateWorkloadEntry` (WorkloadEntry objects and ServiceEntry endpoints).
/// `service_ports` are the names of the ServiceEntry's ports, for endpoints.
pub(super) fn workload_entry(
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

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
}
