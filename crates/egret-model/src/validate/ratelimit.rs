//! egret: RateLimitPolicy (`egret.io/v1alpha1`, docs/rate-limits.md). No Istio rule exists
//! for this kind; every check here is egret's own, chosen so that a policy that would not do
//! what it says is an error at its line rather than a limit silently left out.

use egret_config::Object;
use egret_config::types::*;

use super::{FirstSeen, Report, check_duration, match_labels_selector};
use crate::ratelimit::{DescriptorKey, is_header_name_byte};

pub(super) fn rate_limit_policy(r: &mut Report<'_>, o: &Object<RateLimitPolicy>) {
    let p = &o.spec;
    if let Some(sel) = &p.selector {
        match_labels_selector(r, "spec.selector", sel);
    }
    if let Some(redis) = &p.redis {
        match redis.address.as_deref().map(str::trim) {
            None | Some("") => r.error("spec.redis.address", "address is required (host:port)"),
            Some(a) => {
                if let Err(e) = check_host_port(a) {
                    r.error("spec.redis.address", e);
                }
            }
        }
        if let Some(t) = redis.timeout {
            check_duration(r, "spec.redis.timeout", t);
        }
    }
    let has_redis = p
        .redis
        .as_ref()
        .and_then(|x| x.address.as_deref())
        .is_some_and(|a| !a.trim().is_empty());

    if p.limits.is_empty() {
        r.warning("spec.limits", "no limits: the policy does nothing");
    }
    let mut names: FirstSeen<&str> = FirstSeen::default();
    let mut any_global = false;
    for (i, l) in p.limits.iter().enumerate() {
        let base = format!("spec.limits[{i}]");
        match l.name.as_deref() {
            None | Some("") => r.error(&format!("{base}.name"), "name is required"),
            Some(n) => {
                if let Some(j) = names.dup(n, i) {
                    r.error(
                        &format!("{base}.name"),
                        format!("duplicate limit name {n:?} (also spec.limits[{j}])"),
                    );
                } else if !is_limit_name(n) {
                    r.error(
                        &format!("{base}.name"),
                        format!(
                            "invalid limit name {n:?}: use letters, digits, '-', '_' and '.' \
                             (it is part of Redis keys and metric labels)"
                        ),
                    );
                }
            }
        }
        match l.quota {
            None => r.error(&format!("{base}.quota"), "quota is required"),
            Some(0) => r.error(
                &format!("{base}.quota"),
                "quota must be at least 1 (to refuse everything, use an AuthorizationPolicy)",
            ),
            Some(_) => {}
        }
        let field = format!("{base}.fillInterval");
        match l.fill_interval {
            None => r.error(&field, "fillInterval is required"),
            Some(d) if d.as_nanos() == 0 => r.error(&field, "fillInterval must not be zero"),
            Some(d) => check_duration(r, &field, d),
        }
        let scope = l.scope.unwrap_or(RateLimitScope::Local);
        if scope == RateLimitScope::Global {
            any_global = true;
            if !has_redis {
                r.error(
                    &format!("{base}.scope"),
                    "a GLOBAL limit needs spec.redis.address (the Redis all replicas share)",
                );
            }
        }
        if let Some(m) = &l.match_ {
            limit_match(r, &format!("{base}.match"), m);
        }
        // Keyed by the canonical spelling, so `Host` and `host` are duplicates.
        let mut keys: FirstSeen<String> = FirstSeen::default();
        for (j, k) in l.by.iter().enumerate() {
            let field = format!("{base}.by[{j}]");
            match DescriptorKey::parse(k) {
                Err(e) => r.error(&field, e),
                Ok(key) => {
                    if let Some(first) = keys.dup(key.to_string(), j) {
                        r.warning(
                            &field,
                            format!("duplicate descriptor key {k:?} (also {base}.by[{first}])"),
                        );
                    }
                }
            }
        }
    }
    if p.redis.is_some() && !any_global && !p.limits.is_empty() {
        r.warning(
            "spec.redis",
            "no limit is GLOBAL, so Redis is never used (limits are LOCAL by default)",
        );
    }
}

fn limit_match(r: &mut Report<'_>, base: &str, m: &RateLimitMatch) {
    let lists: [(&str, &Vec<String>); 4] = [
        ("hosts", &m.hosts),
        ("paths", &m.paths),
        ("methods", &m.methods),
        ("principals", &m.principals),
    ];
    for (key, values) in lists {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                r.error(&format!("{base}.{key}[{i}]"), "empty value never matches");
            }
        }
    }
    for (i, p) in m.principals.iter().enumerate() {
        if p.starts_with("spiffe://") {
            r.error(
                &format!("{base}.principals[{i}]"),
                format!(
                    "principals are written without spiffe:// (as in AuthorizationPolicy): {:?}",
                    p.trim_start_matches("spiffe://")
                ),
            );
        }
    }
    for (i, p) in m.ports.iter().enumerate() {
        let ok = p
            .trim()
            .parse::<u32>()
            .is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            r.error(
                &format!("{base}.ports[{i}]"),
                format!("invalid port {p:?}: must be a number in 1..65535"),
            );
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        let field = format!("{base}.headers[{i}].name");
        match h.name.as_deref().map(str::trim) {
            None | Some("") => r.error(&field, "header name is required"),
            Some(n) if !n.bytes().all(is_header_name_byte) => {
                r.error(&field, format!("{n:?} is not a valid header name"))
            }
            Some(_) => {}
        }
    }
}

/// Limit names go into Redis keys (`egret:rl:<policy>:<limit>:...`), logs and metrics: keep
/// them to characters that need no quoting anywhere.
fn is_limit_name(n: &str) -> bool {
    n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `host:port`, with IPv6 hosts in brackets.
fn check_host_port(a: &str) -> Result<(), String> {
    let (host, port) = match a.strip_prefix('[') {
        Some(rest) => {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{a:?} is not host:port ([ipv6]:port for IPv6)"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{h:?} is not an IPv6 address"));
            }
            (h, p)
        }
        None => a
            .rsplit_once(':')
            .ok_or_else(|| format!("{a:?} is not host:port"))?,
    };
    if host.is_empty() {
        return Err(format!("{a:?} has no host"));
    }
    if !a.starts_with('[') && host.contains(':') {
        return Err(format!("{a:?}: write IPv6 addresses as [addr]:port"));
    }
    match port.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        _ => Err(format!("{a:?}: port {port:?} must be a number in 1..65535")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use egret_config::ConfigSet;

    use super::super::test_util::{assert_all, run};
    use super::*;

    #[test]
    fn valid_policy_is_clean() {
        let d = run(r#"apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: card, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  redis: {address: "redis.infra.svc:6379", timeout: 20ms, failureModeDeny: true}
  limits:
  - name: payments-card
    scope: GLOBAL
    quota: 100
    fillInterval: 1s
    match:
      hosts: ["api.test", "*.pay.test"]
      paths: ["/v1/charge*"]
      methods: [POST]
      ports: ["443"]
      principals: ["cluster.local/ns/pay/sa/payments"]
      headers: [{name: x-tenant, values: ["*"]}]
    by: [principal, host, "header:x-tenant", path, sni, method, source_ip]
  - name: local
    quota: 10
    fillInterval: 100ms
"#);
        assert!(d.is_empty(), "{d:#?}");
    }

    #[test]
    fn every_error_at_its_line() {
        let d = run(r#"apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: bad, namespace: ns}
spec:
  limits:
  - name: a
    scope: GLOBAL
    fillInterval: 1s
  - name: a
    quota: 0
  - name: b
    quota: 1
    fillInterval: 0s
    by: [principal, user, "header:", principal]
    match:
      ports: ["https", "0", "70000", "443"]
      headers: [{values: [x]}, {name: ""}]
      principals: ["spiffe://cluster.local/ns/a/sa/b"]
      hosts: [""]
  - quota: 5
    fillInterval: 1500us
"#);
        assert_all(
            &d,
            &[
                "test.yaml:6: error: RateLimitPolicy ns/bad: spec.limits[0].quota: quota is required",
                "test.yaml:7: error: RateLimitPolicy ns/bad: spec.limits[0].scope: a GLOBAL limit needs spec.redis.address (the Redis all replicas share)",
                r#"test.yaml:9: error: RateLimitPolicy ns/bad: spec.limits[1].name: duplicate limit name "a" (also spec.limits[0])"#,
                "test.yaml:10: error: RateLimitPolicy ns/bad: spec.limits[1].quota: quota must be at least 1 (to refuse everything, use an AuthorizationPolicy)",
                "test.yaml:9: error: RateLimitPolicy ns/bad: spec.limits[1].fillInterval: fillInterval is required",
                "test.yaml:13: error: RateLimitPolicy ns/bad: spec.limits[2].fillInterval: fillInterval must not be zero",
                r#"test.yaml:14: error: RateLimitPolicy ns/bad: spec.limits[2].by[1]: unknown descriptor key "user", expected one of principal, host, sni, path, method, source_ip, header:<name>"#,
                "test.yaml:14: error: RateLimitPolicy ns/bad: spec.limits[2].by[2]: header: needs a header name (header:<name>)",
                r#"test.yaml:14: warning: RateLimitPolicy ns/bad: spec.limits[2].by[3]: duplicate descriptor key "principal" (also spec.limits[2].by[0])"#,
                r#"test.yaml:16: error: RateLimitPolicy ns/bad: spec.limits[2].match.ports[0]: invalid port "https": must be a number in 1..65535"#,
                r#"test.yaml:16: error: RateLimitPolicy ns/bad: spec.limits[2].match.ports[1]: invalid port "0": must be a number in 1..65535"#,
                r#"test.yaml:16: error: RateLimitPolicy ns/bad: spec.limits[2].match.ports[2]: invalid port "70000": must be a number in 1..65535"#,
                "test.yaml:17: error: RateLimitPolicy ns/bad: spec.limits[2].match.headers[0].name: header name is required",
                "test.yaml:17: error: RateLimitPolicy ns/bad: spec.limits[2].match.headers[1].name: header name is required",
                r#"test.yaml:18: error: RateLimitPolicy ns/bad: spec.limits[2].match.principals[0]: principals are written without spiffe:// (as in AuthorizationPolicy): "cluster.local/ns/a/sa/b""#,
                "test.yaml:19: error: RateLimitPolicy ns/bad: spec.limits[2].match.hosts[0]: empty value never matches",
                "test.yaml:20: error: RateLimitPolicy ns/bad: spec.limits[3].name: name is required",
                "test.yaml:21: error: RateLimitPolicy ns/bad: spec.limits[3].fillInterval: duration 1500000ns: only millisecond precision is supported",
            ],
        );
        assert_eq!(d.len(), 18, "{d:#?}");
    }

    #[test]
    fn redis_settings() {
        let d = run(r#"apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: r, namespace: ns}
spec:
  redis:
    address: "redis"
    timeout: 0s
  limits: [{name: l, quota: 1, fillInterval: 1s, scope: GLOBAL}]
---
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: unused, namespace: ns}
spec:
  redis: {address: "[::1]:6379"}
  limits: [{name: l, quota: 1, fillInterval: 1s}]
---
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: v6, namespace: ns}
spec:
  redis: {address: "::1:6379"}
  limits: [{name: l, quota: 1, fillInterval: 1s, scope: GLOBAL}]
---
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: empty, namespace: ns}
spec:
  redis: {timeout: 10ms}
"#);
        assert_all(
            &d,
            &[
                r#"test.yaml:6: error: RateLimitPolicy ns/r: spec.redis.address: "redis" is not host:port"#,
                "test.yaml:7: error: RateLimitPolicy ns/r: spec.redis.timeout: duration 0s is shorter than 1ms",
                "test.yaml:14: warning: RateLimitPolicy ns/unused: spec.redis: no limit is GLOBAL, so Redis is never used (limits are LOCAL by default)",
                r#"test.yaml:21: error: RateLimitPolicy ns/v6: spec.redis.address: "::1:6379": write IPv6 addresses as [addr]:port"#,
                "test.yaml:28: error: RateLimitPolicy ns/empty: spec.redis.address: address is required (host:port)",
                "test.yaml:27: warning: RateLimitPolicy ns/empty: spec.limits: no limits: the policy does nothing",
            ],
        );
        assert_eq!(d.len(), 6, "{d:#?}");
    }

    /// An unknown scope is a type error of the loader (the enum), reported at its line, and
    /// the policy is not used.
    #[test]
    fn unknown_scope_is_a_load_error() {
        let (set, d) = ConfigSet::from_str(
            "test.yaml",
            r#"apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: s, namespace: ns}
spec:
  limits:
  - name: l
    scope: CLUSTER
    quota: 1
    fillInterval: 1s
"#,
        );
        let d: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            [
                r#"test.yaml:7: error: RateLimitPolicy ns/s: spec.limits[0].scope: unknown value "CLUSTER", expected one of LOCAL, GLOBAL"#
            ]
        );
        assert!(set.rate_limit_policies.is_empty());
    }

    #[test]
    fn other_egret_kinds_and_versions() {
        let (_, d) = ConfigSet::from_str(
            "test.yaml",
            r#"apiVersion: egret.io/v1
kind: RateLimitPolicy
metadata: {name: s}
---
apiVersion: egret.io/v1alpha1
kind: Quota
metadata: {name: q}
"#,
        );
        let d: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            [
                r#"test.yaml:1: error: RateLimitPolicy: apiVersion: unsupported apiVersion "egret.io/v1""#,
                r#"test.yaml:6: error: kind: unknown kind "Quota" in egret.io/v1alpha1"#,
            ]
        );
    }

    #[test]
    fn host_port() {
        assert!(check_host_port("127.0.0.1:6379").is_ok());
        assert!(check_host_port("redis.infra:6379").is_ok());
        assert!(check_host_port("[::1]:6379").is_ok());
        assert!(check_host_port(":6379").is_err());
        assert!(check_host_port("redis:").is_err());
        assert!(check_host_port("[zz]:1").is_err());
    }
}
