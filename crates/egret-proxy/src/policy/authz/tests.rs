//! The authorizer against Istio's own examples (`shared/conformance/istio-samples` 19–21) and
//! the semantics table of `istio-egress-spec.md` §6.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use egret_config::ConfigSet;
use egret_model::ProxyIdentity;
use http::HeaderMap;

use super::*;
use crate::policy::attrs::RequestAuth;

fn sample(name: &str) -> String {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance/istio-samples/"
    );
    std::fs::read_to_string(format!("{dir}{name}")).unwrap_or_else(|e| {
        panic!("read sample {name}: {e} (the shared samples must be beside the repo)")
    })
}

fn authorizer(yaml: &str, proxy: &ProxyIdentity) -> Authorizer {
    let (set, diags) = ConfigSet::from_str("test.yaml", yaml);
    assert!(!diags.has_errors(), "{diags:?}");
    let policies = egret_model::policy::authorization(&set, proxy, "istio-system");
    Authorizer::new(&policies)
}

fn http<'a>(method: &'a str, path: &'a str) -> Attrs<'a> {
    Attrs {
        method: Some(method),
        path: Some(path),
        host: Some("api.test"),
        ..Attrs::connection(Protocol::Http, 80)
    }
}

fn allowed(a: &Authorizer, attrs: &Attrs<'_>) -> bool {
    a.evaluate(attrs).verdict.allowed()
}

#[test]
fn sample_19_allow_from_to_when() {
    let az = authorizer(
        &sample("19-api-authz-allow-from-to-when.yaml"),
        &ProxyIdentity::sidecar("foo"),
    );
    let google = RequestAuth {
        principal: "https://accounts.google.com/u1".into(),
        claims: serde_json::json!({"iss": "https://accounts.google.com", "sub": "u1"}),
        ..Default::default()
    };
    let other = RequestAuth {
        principal: "https://other.test/u1".into(),
        claims: serde_json::json!({"iss": "https://other.test", "sub": "u1"}),
        ..Default::default()
    };
    let base = |p: Option<&'static str>, m: &'static str, path: &'static str| Attrs {
        principal: p,
        ..http(m, path)
    };
    let sleep = Some("cluster.local/ns/default/sa/sleep");
    let in_test = Some("cluster.local/ns/test/sa/anyone");
    let stranger = Some("cluster.local/ns/prod/sa/x");
    for (principal, method, path, auth, want) in [
        (sleep, "GET", "/info", Some(&google), true),
        (sleep, "GET", "/info/deep", Some(&google), true),
        (in_test, "POST", "/data", Some(&google), true),
        (sleep, "POST", "/info", Some(&google), false), // POST only for /data
        (sleep, "GET", "/data", Some(&google), false),
        (stranger, "GET", "/info", Some(&google), false),
        (None, "GET", "/info", Some(&google), false),
        (sleep, "GET", "/info", Some(&other), false), // claim iss must be Google
        (sleep, "GET", "/info", None, false),         // no token: no claims
    ] {
        let a = Attrs {
            auth,
            ..base(principal, method, path)
        };
        let e = az.evaluate(&a);
        assert_eq!(
            e.verdict.allowed(),
            want,
            "{principal:?} {method} {path} {:?}: {e:?}",
            auth.map(|x| &x.principal)
        );
        if !want {
            assert_eq!(e.verdict.reason(), "no_matching_allow");
        }
    }
    // A TCP connection cannot match an ALLOW rule with HTTP fields: denied.
    let tcp = Attrs {
        principal: sleep,
        ..Attrs::connection(Protocol::Tcp, 80)
    };
    assert!(!allowed(&az, &tcp));
}

#[test]
fn sample_20_deny_post_on_port_also_closes_tcp() {
    let az = authorizer(
        &sample("20-api-authz-deny-port-scoped.yaml"),
        &ProxyIdentity::sidecar("foo"),
    );
    let post = |port| Attrs {
        destination_port: port,
        ..http("POST", "/x")
    };
    let get = Attrs {
        destination_port: 8080,
        ..http("GET", "/x")
    };
    let e = az.evaluate(&post(8080));
    assert_eq!(
        e.verdict,
        Verdict::Deny {
            policy: Some("foo/httpbin".into())
        }
    );
    assert!(allowed(&az, &post(9090)), "DENY is scoped to port 8080");
    assert!(allowed(&az, &get), "GET is not denied");
    // The HTTP-only `methods` is treated as matching for TCP: all TCP on 8080 is denied.
    assert!(!allowed(&az, &Attrs::connection(Protocol::Tcp, 8080)));
    assert!(!allowed(&az, &Attrs::connection(Protocol::Tls, 8080)));
    assert!(allowed(&az, &Attrs::connection(Protocol::Tcp, 9090)));
}

#[test]
fn sample_21_allow_nothing() {
    let az = authorizer(
        &sample("21-api-authz-allow-nothing.yaml"),
        &ProxyIdentity::sidecar("foo"),
    );
    assert!(!allowed(&az, &http("GET", "/")));
    assert!(!allowed(&az, &Attrs::connection(Protocol::Tcp, 443)));
    // Another namespace is not affected.
    let other = authorizer(
        &sample("21-api-authz-allow-nothing.yaml"),
        &ProxyIdentity::sidecar("bar"),
    );
    assert!(other.is_empty());
    assert!(allowed(&other, &http("GET", "/")));
}

#[test]
fn sample_22_custom_only_for_admin_paths() {
    let gw = ProxyIdentity::gateway("istio-system", &[("app", "istio-ingressgateway")]);
    let az = authorizer(&sample("22-api-authz-custom-ext-authz.yaml"), &gw);
    let m = az
        .custom(&http("GET", "/admin/users"))
        .expect("CUSTOM applies to /admin/*");
    assert_eq!(&*m.provider, "my-custom-authz");
    assert_eq!(&*m.policy, "istio-system/ext-authz");
    assert!(az.custom(&http("GET", "/public")).is_none());
    // No DENY/ALLOW policy: the local verdict allows.
    assert!(allowed(&az, &http("GET", "/admin/users")));
}

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/pay/sa/payments"]}}]
    to: [{operation: {hosts: ["api.test", "API2.test:443"], paths: ["/v1/{*}/charge", "/files/{**}"]}}]
  - from: [{source: {namespaces: ["ops"], ipBlocks: ["198.51.100.0/24"], notIpBlocks: ["198.51.100.66"]}}]
    when:
    - key: connection.sni
      values: ["*.ops.test"]
    - key: destination.port
      values: ["443"]
  - to: [{operation: {hosts: ["open.test"], notMethods: ["DELETE"]}}]
    when:
    - key: request.headers[x-team]
      values: ["blue", "green*"]
      notValues: ["greenish"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {hosts: ["api.test"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-delete
  namespace: istio-system
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: ["DELETE"]}}]
"#;

fn gateway() -> Authorizer {
    authorizer(
        POLICIES,
        &ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]),
    )
}

#[test]
fn principals_hosts_and_path_templates() {
    let az = gateway();
    let pay = Some("cluster.local/ns/pay/sa/payments");
    let req = |p, host, path| Attrs {
        principal: p,
        host: Some(host),
        ..http("POST", path)
    };
    assert!(allowed(&az, &req(pay, "api.test", "/v1/acct/charge")));
    assert!(
        allowed(&az, &req(pay, "api2.test", "/files/a/b/c")),
        "host:port in a policy matches the host"
    );
    assert!(allowed(&az, &req(pay, "api.test", "/files/")));
    assert!(
        !allowed(&az, &req(pay, "api.test", "/v1/a/b/charge")),
        "{{*}} is one segment"
    );
    assert!(!allowed(&az, &req(pay, "other.test", "/v1/acct/charge")));
    assert!(!allowed(
        &az,
        &req(
            Some("cluster.local/ns/web/sa/web"),
            "api.test",
            "/v1/acct/charge"
        )
    ));
    // DENY wins over ALLOW.
    let e = az.evaluate(&req(pay, "api.test", "/admin/x"));
    assert_eq!(e.verdict.reason(), "denied_by_policy");
    assert_eq!(e.verdict.policy(), "istio-system/deny-admin");
}

#[test]
fn connection_rules_by_sni_namespace_and_ip() {
    let ops = Some("cluster.local/ns/ops/sa/runner");
    let conn = |p, ip: &str, sni, port| Attrs {
        principal: p,
        source_ip: ip.parse::<IpAddr>().ok(),
        sni: Some(sni),
        ..Attrs::connection(Protocol::Tls, port)
    };
    // Istio builds a DENY policy's TCP filter without its HTTP fields: deny-admin, which
    // names only paths, closes every TLS/TCP connection (validation warns about this).
    let e = gateway().evaluate(&conn(ops, "198.51.100.7", "db.ops.test", 443));
    assert_eq!(e.verdict.policy(), "istio-system/deny-admin");
    // Without it, the ALLOW rule for connections decides.
    let without_deny = POLICIES
        .split_once("---")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let az = authorizer(
        without_deny,
        &ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]),
    );
    assert!(allowed(&az, &conn(ops, "198.51.100.7", "db.ops.test", 443)));
    assert!(
        !allowed(&az, &conn(ops, "198.51.100.66", "db.ops.test", 443)),
        "notIpBlocks"
    );
    assert!(
        !allowed(&az, &conn(ops, "203.0.113.7", "db.ops.test", 443)),
        "ipBlocks"
    );
    assert!(
        !allowed(&az, &conn(ops, "198.51.100.7", "db.other.test", 443)),
        "connection.sni"
    );
    assert!(
        !allowed(&az, &conn(ops, "198.51.100.7", "db.ops.test", 8443)),
        "destination.port"
    );
    assert!(
        !allowed(&az, &conn(None, "198.51.100.7", "db.ops.test", 443)),
        "namespaces need a principal"
    );
    // The pay rule names hosts/paths (HTTP-only): it cannot allow a connection.
    let pay = Some("cluster.local/ns/pay/sa/payments");
    assert!(!allowed(&az, &conn(pay, "198.51.100.7", "api.test", 443)));
}

#[test]
fn headers_and_not_methods() {
    let az = gateway();
    let mut h = HeaderMap::new();
    h.insert("x-team", "green-2".parse().unwrap());
    let req = |m, headers| Attrs {
        host: Some("open.test"),
        headers,
        ..http(m, "/x")
    };
    assert!(allowed(&az, &req("GET", Some(&h))));
    assert!(!allowed(&az, &req("DELETE", Some(&h))), "notMethods");
    let mut g = HeaderMap::new();
    g.insert("x-team", "greenish".parse().unwrap());
    assert!(!allowed(&az, &req("GET", Some(&g))), "notValues");
    assert!(!allowed(&az, &req("GET", None)), "header missing");
}

#[test]
fn audit_and_dry_run_never_change_the_decision() {
    let az = gateway();
    let pay = Some("cluster.local/ns/pay/sa/payments");
    let a = Attrs {
        principal: pay,
        host: Some("api.test"),
        ..http("DELETE", "/v1/a/charge")
    };
    let e = az.evaluate(&a);
    assert!(e.verdict.allowed());
    assert_eq!(e.audit, vec![Arc::<str>::from("istio-system/audit-all")]);
    assert_eq!(
        e.dry_run,
        Some(Verdict::Deny {
            policy: Some("istio-system/would-deny-delete".into())
        })
    );
}

#[test]
fn request_principals_and_claims() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: istio-system}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["issuer-1/*"]}}]
    when:
    - key: request.auth.claims[groups]
      values: ["admins"]
    - key: request.auth.claims[realm][name]
      values: ["eu"]
    - key: request.auth.audiences
      values: ["api"]
"#;
    let az = authorizer(yaml, &ProxyIdentity::sidecar("istio-system"));
    let tok = |p: &str, claims| RequestAuth {
        principal: p.into(),
        audiences: vec!["web".into(), "api".into()],
        claims,
        ..Default::default()
    };
    let good = tok(
        "issuer-1/alice",
        serde_json::json!({"groups": ["users", "admins"], "realm": {"name": "eu"}}),
    );
    let wrong_group = tok(
        "issuer-1/alice",
        serde_json::json!({"groups": ["users"], "realm": {"name": "eu"}}),
    );
    let wrong_issuer = tok(
        "issuer-2/alice",
        serde_json::json!({"groups": ["admins"], "realm": {"name": "eu"}}),
    );
    let a = |auth| Attrs {
        auth,
        ..http("GET", "/")
    };
    assert!(allowed(&az, &a(Some(&good))));
    assert!(!allowed(&az, &a(Some(&wrong_group))));
    assert!(!allowed(&az, &a(Some(&wrong_issuer))));
    assert!(!allowed(&az, &a(None)));
}

#[test]
fn thousand_policies_index_by_host() {
    let mut yaml = String::new();
    for i in 0..1000 {
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: istio-system}}\nspec:\n  rules:\n  - from: [{{source: {{principals: [\"cluster.local/ns/n{i}/sa/s\"]}}}}]\n    to: [{{operation: {{hosts: [\"h{i}.test\"]}}}}]\n"
        ));
    }
    let az = authorizer(&yaml, &ProxyIdentity::sidecar("istio-system"));
    assert_eq!(az.len(), 1000);
    let a = |p, h| Attrs {
        principal: Some(p),
        host: Some(h),
        ..http("GET", "/")
    };
    assert!(allowed(&az, &a("cluster.local/ns/n500/sa/s", "h500.test")));
    assert!(!allowed(&az, &a("cluster.local/ns/n501/sa/s", "h500.test")));
    assert!(!allowed(&az, &a("cluster.local/ns/n500/sa/s", "h501.test")));
    assert_eq!(
        az.allow.any_host.len(),
        0,
        "every policy is indexed by its host"
    );
}

#[test]
fn service_accounts_and_ports_without_allocation_semantics() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: istio-system}
spec:
  rules:
  - from: [{source: {serviceAccounts: ["pay/payments", "gw-sa"]}}]
    to: [{operation: {ports: ["443"], notPorts: ["8443"]}}]
  - when:
    - {key: source.serviceAccount, values: ["ops/runner"]}
    - {key: destination.port, notValues: ["22"]}
"#;
    let az = authorizer(yaml, &ProxyIdentity::sidecar("istio-system"));
    let a = |p: &'static str, port| Attrs {
        principal: Some(p),
        ..Attrs::connection(Protocol::Tcp, port)
    };
    assert!(allowed(&az, &a("cluster.local/ns/pay/sa/payments", 443)));
    assert!(!allowed(&az, &a("cluster.local/ns/pay/sa/payments", 80)));
    // A bare service account is in the policy's namespace (Istio).
    assert!(allowed(
        &az,
        &a("cluster.local/ns/istio-system/sa/gw-sa", 443)
    ));
    assert!(!allowed(&az, &a("cluster.local/ns/other/sa/gw-sa", 443)));
    assert!(allowed(&az, &a("cluster.local/ns/ops/sa/runner", 80)));
    assert!(!allowed(&az, &a("cluster.local/ns/ops/sa/runner", 22)));
}
