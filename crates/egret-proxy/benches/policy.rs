//! The cost of egress policy on the data path (issue 5): what one HTTP request pays at an
//! egress gateway with 1,000 AuthorizationPolicies and a RequestAuthentication, against one
//! with none. The macro benchmark (two real `egret gateway` processes under load) is
//! `bench/policy.sh`; this one isolates the decision itself.
//!
//! ```text
//! cargo bench -p egret-proxy --bench policy            # timings (about a minute)
//! cargo bench -p egret-proxy --bench policy -- --test  # each benchmark once (smoke)
//! ```
//!
//! The configuration is built the way a gateway gets it: generated YAML, loaded with
//! `ConfigSet::from_str`, selected for the gateway `istio-system` / `istio=egressgateway` by
//! `egret_model::policy::{authorization, request_authentication}`, compiled by
//! `Authorizer::new` and `JwtAuthenticator::compile`. The generated set (the same shape as
//! `bench/policy.sh` writes):
//!
//! - 1,000 ALLOW policies in `istio-system` selecting the gateway. Policy `i` allows the mesh
//!   principal `cluster.local/ns/team-<i>/sa/app-<i>` to `GET`/`POST` `/v1/team-<i>/*` on
//!   `svc-<i % 250>.partner.test`; every 250th (`i % 250 == 0`) names `api.test` instead, and
//!   every 20th (`i % 20 == 19`) a wildcard host `*.partner-<i>.test`, which the host index
//!   cannot key (so 50 policies are visited by every request). The last one,
//!   `allow-jwt-clients` (sorted last among the ALLOW policies, as Istio orders them by name),
//!   is the one the benchmark's request matches: `requestPrincipals` of the JWT, `GET /v1/*` on
//!   `api.test`, and `when: request.auth.claims[groups]` contains `egress-users`.
//! - 5 DENY policies: `/admin*` and `/internal/*` on any host, an `x-debug` header, two
//!   `ipBlocks`, no request principal on `api.test`, write methods on `api.test`.
//! - One RequestAuthentication with an inline `jwks` of an RSA-2048 (RS256) and a P-256
//!   (ES256) key.
//!
//! The request: `GET /v1/orders/42` to `api.test` from 127.0.0.1 without a mesh principal (as
//! an `--allow-direct` client), `Authorization: Bearer <RS256 token>`. "miss" is the same
//! request to `unknown.test`, for which no policy names the host (denied: no ALLOW matches).
//! `1000-unindexed` is the same 1,000 policies without `hosts` (only principals, methods and
//! paths): the worst case, where every request visits every policy.
//!
//! Benchmarks: `normalize/{clean,dirty}`, `jwt/{RS256,ES256}` (`authenticate`: extraction,
//! base64 and JSON decoding, one signature verification), `authz/{0,1,1000,1000-unindexed}/
//! {hit,miss}` (`Authorizer::evaluate`), `decision/{0,1000}` (normalize + authenticate +
//! evaluate, the whole policy step of one request), and `compile/1000` (building the
//! Authorizer at a configuration reload).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use egret_config::ConfigSet;
use egret_model::ProxyIdentity;
use egret_model::snapshot::{AuthzPolicy, RequestAuthn};
use egret_proxy::policy::authz::{Authorizer, Verdict};
use egret_proxy::policy::jwks::{JwksCache, JwksCacheOptions};
use egret_proxy::policy::jwt::JwtAuthenticator;
use egret_proxy::policy::normalize::normalize_path;
use egret_proxy::policy::{Attrs, Protocol, RequestAuth};
use egret_testkit::jwt::{TestIssuer, now_secs};
use http::{HeaderMap, HeaderValue};
use serde_json::json;

const ROOT_NS: &str = "istio-system";
const GATEWAY_LABELS: &[(&str, &str)] = &[("istio", "egressgateway")];
const ISSUER: &str = "https://issuer.bench.test";
const SUBJECT: &str = "bench-client";
const POLICIES: usize = 1000;

// ===== The generated configuration =====

/// ALLOW policy `i` of `n` (see the top). `hosts: false` leaves `hosts` out of the policies
/// that do not match (the unindexed worst case).
fn allow_policy(out: &mut String, i: usize, n: usize, hosts: bool) {
    if i + 1 == n {
        write!(
            out,
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-jwt-clients, namespace: {ROOT_NS}}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ['{ISSUER}/{SUBJECT}']}}}}]
    to: [{{operation: {{hosts: [api.test], methods: [GET], paths: ['/v1/*']}}}}]
    when: [{{key: 'request.auth.claims[groups]', values: [egress-users]}}]
"
        )
        .unwrap();
        return;
    }
    let host = if i.is_multiple_of(250) {
        "api.test".to_string()
    } else if i % 20 == 19 {
        format!("'*.partner-{i}.test'")
    } else {
        format!("svc-{}.partner.test", i % 250)
    };
    let hosts = if hosts {
        format!("hosts: [{host}], ")
    } else {
        String::new()
    };
    write!(
        out,
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-{i:04}, namespace: {ROOT_NS}}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/team-{i}/sa/app-{i}]}}}}]
    to: [{{operation: {{{hosts}methods: [GET, POST], paths: ['/v1/team-{i}/*']}}}}]
"
    )
    .unwrap();
}

const DENY_POLICIES: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-paths, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/admin*', '/internal/*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug-header, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-debug]', values: ['1', 'true']}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked-networks, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [203.0.113.0/24, 198.51.100.0/24]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api-without-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ['*']}}]
    to: [{operation: {hosts: [api.test]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api-writes, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {hosts: [api.test], methods: [DELETE, PUT, PATCH]}}]
";

fn request_authentication_yaml(jwks: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: bench-jwt, namespace: {ROOT_NS}}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
"
    )
}

/// `allow` ALLOW policies (0 = none), the DENY policies when `deny`, and the
/// RequestAuthentication.
fn generate(allow: usize, deny: bool, hosts: bool, jwks: &str) -> String {
    let mut out = request_authentication_yaml(jwks);
    if deny {
        out.push_str(DENY_POLICIES);
    }
    for i in 0..allow {
        allow_policy(&mut out, i, allow, hosts);
    }
    out
}

/// Load and select the way a gateway does.
fn select(yaml: &str) -> (Vec<AuthzPolicy>, Vec<RequestAuthn>) {
    let (set, diags) = ConfigSet::from_str("policy-bench.yaml", yaml);
    let errors: Vec<String> = diags.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "generated YAML has errors: {errors:#?}");
    let gw = ProxyIdentity::gateway(ROOT_NS, GATEWAY_LABELS);
    (
        egret_model::policy::authorization(&set, &gw, ROOT_NS),
        egret_model::policy::request_authentication(&set, &gw, ROOT_NS),
    )
}

// ===== The request =====

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.test"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn attrs<'a>(
    host: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
    auth: Option<&'a RequestAuth>,
) -> Attrs<'a> {
    let ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Attrs {
        protocol: Protocol::Http,
        source_ip: ip,
        remote_ip: ip,
        principal: None,
        destination_ip: None,
        destination_port: 80,
        sni: None,
        host: Some(host),
        method: Some("GET"),
        path: Some(path),
        headers: Some(headers),
        auth,
    }
}

const CLEAN_PATH: &str = "/v1/orders/42";
const DIRTY_PATH: &str = "/v1//orders/./%34%32/../42/%7Eitems%2Fx/..";

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

fn main() {
    let rsa = TestIssuer::rsa("bench-rsa").unwrap();
    let ec = TestIssuer::ec("bench-ec").unwrap();
    let jwks = TestIssuer::jwks_json_of(&[&rsa, &ec]);
    let claims = json!({
        "iss": ISSUER,
        "sub": SUBJECT,
        "aud": "api.test",
        "groups": ["egress-users", "readers"],
        "iat": now_secs(),
        "exp": now_secs() + 24 * 3600,
    });
    let rs_token = rsa.sign(&claims).unwrap();
    let es_token = ec.sign(&claims).unwrap();
    let rs_headers = headers(&rs_token);
    let es_headers = headers(&es_token);

    // The configurations: none; the matching ALLOW policy alone; 1,000 ALLOW + 5 DENY; the
    // same 1,005 with no `hosts` on the 999 that do not match.
    let start = Instant::now();
    let full_yaml = generate(POLICIES, true, true, &jwks);
    let (full, authns) = select(&full_yaml);
    println!(
        "generated + loaded + selected {} AuthorizationPolicies and {} RequestAuthentication ({} KiB of YAML) in {:.1?}",
        full.len(),
        authns.len(),
        full_yaml.len() / 1024,
        start.elapsed()
    );
    assert_eq!(full.len(), POLICIES + 5);
    assert_eq!(authns.len(), 1);
    let (one, _) = select(&generate(1, false, true, &jwks));
    let (unindexed, _) = select(&generate(POLICIES, true, false, &jwks));
    let start = Instant::now();
    let authz_full = Authorizer::new(&full);
    println!("Authorizer::new(1,005 policies): {:.1?}", start.elapsed());
    let authz_none = Authorizer::new(&[]);
    let authz_one = Authorizer::new(&one);
    let authz_unindexed = Authorizer::new(&unindexed);
    let jwt = JwtAuthenticator::compile(&authns).unwrap();
    let jwt_none = JwtAuthenticator::compile(&[]).unwrap();
    let cache = JwksCache::new(JwksCacheOptions::default()).unwrap();

    // What the benchmarks decide, checked once.
    let now = SystemTime::now();
    let rs_auth = jwt
        .authenticate(&rs_headers, None, now, &cache)
        .unwrap()
        .expect("the RS256 token verifies")
        .auth;
    let es_auth = jwt
        .authenticate(&es_headers, None, now, &cache)
        .unwrap()
        .expect("the ES256 token verifies")
        .auth;
    assert_eq!(rs_auth.principal, format!("{ISSUER}/{SUBJECT}"));
    assert_eq!(es_auth.principal, rs_auth.principal);
    let hit = attrs("api.test", CLEAN_PATH, &rs_headers, Some(&rs_auth));
    let miss = attrs("unknown.test", CLEAN_PATH, &rs_headers, Some(&rs_auth));
    let allowed_by = |a: &Authorizer, x: &Attrs<'_>| match a.evaluate(x).verdict {
        Verdict::Allow { policy } => Some(policy.as_deref().unwrap_or("-").to_string()),
        Verdict::Deny { .. } => None,
    };
    for (name, a) in [
        ("1", &authz_one),
        ("1000", &authz_full),
        ("1000-unindexed", &authz_unindexed),
    ] {
        assert_eq!(
            allowed_by(a, &hit).as_deref(),
            Some("istio-system/allow-jwt-clients"),
            "{name}/hit"
        );
        assert_eq!(allowed_by(a, &miss), None, "{name}/miss");
    }
    assert_eq!(allowed_by(&authz_none, &hit).as_deref(), Some("-"));
    // Without the token, the DENY on api.test applies.
    let anon = attrs("api.test", CLEAN_PATH, &rs_headers, None);
    assert_eq!(
        authz_full.evaluate(&anon).verdict.policy(),
        "istio-system/deny-api-without-jwt"
    );
    assert_eq!(normalize_path(CLEAN_PATH).unwrap(), CLEAN_PATH);
    assert_eq!(normalize_path(DIRTY_PATH).unwrap(), "/v1/orders/42/~items/");

    let mut c = criterion();

    let mut g = c.benchmark_group("normalize");
    g.bench_function("clean", |b| {
        b.iter(|| normalize_path(black_box(CLEAN_PATH)))
    });
    g.bench_function("dirty", |b| {
        b.iter(|| normalize_path(black_box(DIRTY_PATH)))
    });
    g.finish();

    let mut g = c.benchmark_group("jwt");
    for (alg, h) in [("RS256", &rs_headers), ("ES256", &es_headers)] {
        g.bench_function(alg, |b| {
            b.iter(|| {
                jwt.authenticate(black_box(h), None, SystemTime::now(), &cache)
                    .unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("authz");
    for (name, a) in [
        ("0", &authz_none),
        ("1", &authz_one),
        ("1000", &authz_full),
        ("1000-unindexed", &authz_unindexed),
    ] {
        g.bench_function(format!("{name}/hit"), |b| {
            b.iter(|| a.evaluate(black_box(&hit)))
        });
        if name != "0" {
            g.bench_function(format!("{name}/miss"), |b| {
                b.iter(|| a.evaluate(black_box(&miss)))
            });
        }
    }
    g.finish();

    // The whole policy step of one request, as `enforce::check_http` runs it (without its
    // metrics and audit bookkeeping): normalize the path, verify the token, evaluate.
    let mut g = c.benchmark_group("decision");
    for (name, a, j) in [("0", &authz_none, &jwt_none), ("1000", &authz_full, &jwt)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let path = normalize_path(black_box(CLEAN_PATH)).unwrap();
                let auth = j
                    .authenticate(black_box(&rs_headers), None, SystemTime::now(), &cache)
                    .unwrap();
                let x = attrs(
                    "api.test",
                    &path,
                    &rs_headers,
                    auth.as_ref().map(|x| &x.auth),
                );
                a.evaluate(&x).verdict.allowed()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.bench_function("1000", |b| b.iter(|| Authorizer::new(black_box(&full))));
    g.finish();

    c.final_summary();
}
