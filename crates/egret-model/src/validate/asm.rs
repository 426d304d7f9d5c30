//! ASMEgressTrafficPolicy (egret's own rules).

use egret_config::Object;
use egret_config::types::*;

use super::{Report, check_port, is_dns1123_label, is_set, warn_unknown_protocol};
use crate::host;

// ===== ASMEgressTrafficPolicy =====

/// egret: the fields ASM's generator needs (`istio-egress-spec.md` §8).
pub(super) fn asm_egress_policy(r: &mut Report<'_>, o: &Object<AsmEgressTrafficPolicy>) {
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
    use crate::validate::test_util::{assert_all, run};

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
}
