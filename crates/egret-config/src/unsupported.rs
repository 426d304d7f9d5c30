//! Fields egret parses but does not act on. Each is reported as
//! `warning: … not supported, ignored` wherever it appears, so nothing a user wrote is dropped
//! silently. docs/configuration.md lists the same table; a test keeps the two in step.

use serde_json::Value;

use crate::object::Kind;

/// (kind, field path with `[]` for "every item", why / what happens instead)
pub const UNSUPPORTED: &[(Kind, &str, &str)] = &[
    (
        Kind::ServiceEntry,
        "endpoints[].network",
        "multi-network routing is not implemented",
    ),
    (
        Kind::WorkloadEntry,
        "network",
        "multi-network routing is not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.tunnel",
        "HTTP CONNECT/POST tunnelling to the upstream is not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.proxyProtocol",
        "PROXY protocol towards upstreams is not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.retryBudget",
        "retry budgets are not implemented; maxRetries still applies",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.loadBalancer.warmup",
        "slow-start warmup is not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.loadBalancer.warmupDurationSecs",
        "slow-start warmup is not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.portLevelSettings[].loadBalancer.warmup",
        "slow-start warmup is not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.connectionPool.http.http2KeepAlive",
        "HTTP/2 keepalive pings are not implemented",
    ),
    (
        Kind::DestinationRule,
        "trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
        "cookie attributes are not implemented",
    ),
    (
        Kind::DestinationRule,
        "subsets[].trafficPolicy.tunnel",
        "HTTP CONNECT/POST tunnelling to the upstream is not implemented",
    ),
    (
        Kind::DestinationRule,
        "subsets[].trafficPolicy.proxyProtocol",
        "PROXY protocol towards upstreams is not implemented",
    ),
    (
        Kind::VirtualService,
        "http[].delegate",
        "VirtualService delegation is not implemented; the route is dropped",
    ),
    (
        Kind::VirtualService,
        "http[].corsPolicy",
        "CORS is a browser concern of ingress, not egress",
    ),
    (
        Kind::VirtualService,
        "http[].match[].statPrefix",
        "per-match stat prefixes are not implemented",
    ),
    (
        Kind::VirtualService,
        "http[].fault.delay.exponentialDelay",
        "only fixedDelay is implemented",
    ),
    (
        Kind::VirtualService,
        "http[].fault.abort.grpcStatus",
        "only httpStatus aborts are implemented",
    ),
    (
        Kind::VirtualService,
        "http[].fault.abort.http2Error",
        "only httpStatus aborts are implemented",
    ),
    (
        Kind::VirtualService,
        "http[].retries.retryRemoteLocalities",
        "locality-aware retries are not implemented",
    ),
    (
        Kind::VirtualService,
        "tcp[].match[].sourceSubnet",
        "deprecated and never implemented by Istio",
    ),
    (
        Kind::Gateway,
        "servers[].defaultEndpoint",
        "only meaningful for Istio's sidecar ingress",
    ),
    (
        Kind::Gateway,
        "servers[].tls.verifyCertificateSpki",
        "SPKI pinning is not implemented; use subjectAltNames",
    ),
    (
        Kind::Gateway,
        "servers[].tls.verifyCertificateHash",
        "certificate-hash pinning is not implemented; use subjectAltNames",
    ),
    (
        Kind::Gateway,
        "servers[].tls.cipherSuites",
        "egret uses rustls's safe default cipher suites",
    ),
    (
        Kind::Gateway,
        "servers[].tls.tlsCertificates",
        "use serverCertificate/privateKey or credentialName",
    ),
    (
        Kind::Gateway,
        "servers[].tls.credentialNames",
        "use a single credentialName",
    ),
    (
        Kind::Gateway,
        "servers[].tls.caCertCredentialName",
        "use caCertificates or the credential's ca.crt",
    ),
    (
        Kind::Sidecar,
        "ingress",
        "egret handles outbound (egress) traffic only; inbound listeners are not configured",
    ),
    (
        Kind::Sidecar,
        "inboundConnectionPool",
        "egret handles outbound (egress) traffic only",
    ),
    (
        Kind::Sidecar,
        "outboundTrafficPolicy.egressProxy",
        "sending unknown traffic to an egress proxy is not implemented; route through an egress gateway instead",
    ),
    (
        Kind::AuthorizationPolicy,
        "targetRef",
        "Gateway-API policy attachment is not implemented; use selector",
    ),
    (
        Kind::AuthorizationPolicy,
        "targetRefs",
        "Gateway-API policy attachment is not implemented; use selector",
    ),
    (
        Kind::RequestAuthentication,
        "targetRef",
        "Gateway-API policy attachment is not implemented; use selector",
    ),
    (
        Kind::RequestAuthentication,
        "targetRefs",
        "Gateway-API policy attachment is not implemented; use selector",
    ),
    (
        Kind::MeshConfig,
        "outboundTrafficPolicy.egressProxy",
        "egressProxy is a Sidecar field; sending unknown traffic to an egress proxy is not implemented",
    ),
    (
        Kind::MeshConfig,
        "defaultHttpRetryPolicy.retryRemoteLocalities",
        "locality-aware retries are not implemented",
    ),
    (
        Kind::MeshConfig,
        "defaultConfig",
        "ProxyConfig is Envoy/istio-agent configuration; egret reads only `tracing.sampling` from it and takes the rest from the command line",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].zipkin",
        "only opentelemetry tracing is implemented",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].datadog",
        "only opentelemetry tracing is implemented",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].skywalking",
        "only opentelemetry tracing is implemented",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].stackdriver",
        "only opentelemetry tracing is implemented",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].lightstep",
        "only opentelemetry tracing is implemented",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].envoyOtelAls",
        "access logs go to accessLogFile",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].envoyHttpAls",
        "access logs go to accessLogFile",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].envoyTcpAls",
        "access logs go to accessLogFile",
    ),
    (
        Kind::MeshConfig,
        "extensionProviders[].sds",
        "egret reads certificates from files and its own CA",
    ),
];

/// Traffic-policy fields not acted on, relative to a traffic policy. Checked at every place a
/// traffic policy can sit in a DestinationRule (top level, port level, subset, subset port
/// level); the top-level paths are also rows of [`UNSUPPORTED`].
pub const TRAFFIC_POLICY_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "tunnel",
        "HTTP CONNECT/POST tunnelling to the upstream is not implemented",
    ),
    (
        "proxyProtocol",
        "PROXY protocol towards upstreams is not implemented",
    ),
    (
        "retryBudget",
        "retry budgets are not implemented; maxRetries still applies",
    ),
    (
        "loadBalancer.warmup",
        "slow-start warmup is not implemented",
    ),
    (
        "loadBalancer.warmupDurationSecs",
        "slow-start warmup is not implemented",
    ),
    (
        "connectionPool.http.http2KeepAlive",
        "HTTP/2 keepalive pings are not implemented",
    ),
    (
        "loadBalancer.consistentHash.httpCookie.attributes",
        "cookie attributes are not implemented",
    ),
];

const NESTED_TRAFFIC_POLICIES: &[&str] = &[
    "trafficPolicy.portLevelSettings[]",
    "subsets[].trafficPolicy",
    "subsets[].trafficPolicy.portLevelSettings[]",
];

/// The concrete paths (prefixed `spec.` for kinds other than MeshConfig) of unsupported fields
/// present in `spec`, with the message to show.
pub fn check(kind: Kind, spec: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let prefix = if kind == Kind::MeshConfig { "" } else { "spec" };
    for (k, pattern, why) in UNSUPPORTED {
        if *k != kind {
            continue;
        }
        // `defaultConfig.tracing.sampling` is read (tracing); anything else in it is not.
        if kind == Kind::MeshConfig && *pattern == "defaultConfig" && only_sampling(spec) {
            continue;
        }
        let mut found = Vec::new();
        walk(spec, pattern, prefix.to_string(), &mut found);
        for path in found {
            out.push((path, format!("not supported, ignored: {why}")));
        }
    }
    if kind == Kind::DestinationRule {
        for nest in NESTED_TRAFFIC_POLICIES {
            for (rel, why) in TRAFFIC_POLICY_UNSUPPORTED {
                let pattern = format!("{nest}.{rel}");
                if UNSUPPORTED
                    .iter()
                    .any(|(k, p, _)| *k == kind && *p == pattern)
                {
                    continue;
                }
                let mut found = Vec::new();
                walk(spec, &pattern, prefix.to_string(), &mut found);
                for path in found {
                    out.push((path, format!("not supported, ignored: {why}")));
                }
            }
        }
        out.sort();
        out.dedup();
    }
    out
}

/// `defaultConfig: {tracing: {sampling: N}}` and nothing else.
fn only_sampling(mesh: &Value) -> bool {
    let Some(Value::Object(dc)) = mesh.get("defaultConfig") else {
        return false;
    };
    !dc.is_empty()
        && dc.keys().all(|k| k == "tracing")
        && match dc.get("tracing") {
            Some(Value::Object(t)) => t.keys().all(|k| k == "sampling"),
            None => true,
            _ => false,
        }
}

fn walk(v: &Value, pattern: &str, at: String, out: &mut Vec<String>) {
    if pattern.is_empty() {
        if !v.is_null() {
            out.push(at);
        }
        return;
    }
    let (seg, rest) = match pattern.split_once('.') {
        Some((s, r)) => (s, r),
        None => (pattern, ""),
    };
    let (key, each) = match seg.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (seg, false),
    };
    let Some(child) = v.get(key) else { return };
    let path = if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    };
    if each {
        if let Value::Array(items) = child {
            for (i, item) in items.iter().enumerate() {
                walk(item, rest, format!("{path}[{i}]"), out);
            }
        }
    } else {
        walk(child, rest, path, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_policy_fields_are_checked_at_every_nesting() {
        let spec = serde_json::json!({
            "subsets": [{"name": "a", "trafficPolicy": {
                "retryBudget": {"percent": 1},
                "portLevelSettings": [{"loadBalancer": {"warmup": {}}}]
            }}],
            "trafficPolicy": {"portLevelSettings": [{"connectionPool": {"http": {"http2KeepAlive": {}}}}]}
        });
        let paths: Vec<String> = check(Kind::DestinationRule, &spec)
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(
            paths,
            vec![
                "spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer.warmup",
                "spec.subsets[0].trafficPolicy.retryBudget",
                "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2KeepAlive",
            ]
        );
    }

    #[test]
    fn finds_nested_paths() {
        let spec =
            serde_json::json!({"http": [{"route": []}, {"corsPolicy": {"allowOrigins": []}}]});
        let found = check(Kind::VirtualService, &spec);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "spec.http[1].corsPolicy");
        assert!(found[0].1.starts_with("not supported, ignored"));
    }
}
