//! DestinationRule: host, subsets and traffic policies.

use egret_config::Object;
use egret_config::types::*;

use super::{
    FirstSeen, Report, check_duration, check_export_to, check_opt_duration, check_percent_int,
    check_port, is_dns1123_label, is_set, match_labels_selector,
};
use crate::host;

// ===== DestinationRule =====

/// Istio `ValidateDestinationRule`.
pub(super) fn destination_rule(r: &mut Report<'_>, o: &Object<DestinationRule>) {
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
pub(super) fn locality_lb(
    r: &mut Report<'_>,
    base: &str,
    l: &LocalityLbSetting,
    has_outlier: bool,
) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

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
}
