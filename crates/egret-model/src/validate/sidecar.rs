//! Sidecar: egress listeners and outbound traffic policy.

use std::collections::{BTreeMap, HashSet};

use egret_config::Object;
use egret_config::types::*;

use super::{
    FirstSeen, Report, alpha_selector, check_port, check_unix_path, destination, hostname_part,
    is_dns1123_label, is_fqdn, is_ip, unix_path, warn_unknown_protocol,
};

// ===== Sidecar =====

/// Istio `ValidateSidecar` (egress listeners and outbound traffic policy; ingress listeners
/// are not read by egret).
pub(super) fn sidecar(r: &mut Report<'_>, o: &Object<Sidecar>) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

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
}
