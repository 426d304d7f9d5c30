//! Egress policy at the gateway, in network namespaces (issue 5): the `egret gateway` binary
//! decides by the caller's mesh identity (from the sidecar → gateway mutual-TLS tunnel), the
//! request, the JWT and the SNI — Istio's AuthorizationPolicy and RequestAuthentication
//! samples 19–23 and the egress-gateway authorization scenario of sample 29 (rendered by hand
//! with `.test` hosts), TLS passthrough decided by principal and SNI, path normalization and
//! dry-run. Rate limits shared by two gateway replicas through Redis: `netns_ratelimit.rs`.
//!
//! Topology as in `netns_gateway.rs` (see `netns_common::gateway`): the app namespace has no
//! way out but the gateway; "the internet" is the external namespace.
//! The tests need root, iproute2, iptables, curl, setpriv, nginx, dnsmasq and openssl;
//! without them they FAIL naming what is missing, never skip.

mod netns_common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use egret_testkit::fn_server::{FnServer, Seen, respond};
use egret_testkit::jwt::{TestIssuer, claims, now_secs};
use egret_testkit::process::wait_until;
use egret_testkit::{Topology, addrs, preflight};
use netns_common::gateway::*;
use netns_common::*;

fn policy_topology(tag: &str) -> Result<Topology> {
    preflight(PROGRAMS)?;
    Topology::new(tag)
}

/// An external HTTP service that answers with the request line and its headers (so a test
/// sees what the gateway forwarded: added headers, and that no token leaked).
fn echo(topo: &Topology, addr: SocketAddr) -> Result<FnServer> {
    FnServer::start(
        Some(&topo.external),
        addr,
        Arc::new(|s: &Seen| {
            let mut body = format!("{} {}\n", s.method, s.uri);
            for (k, v) in &s.headers {
                body.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            respond(200, &body, &[])
        }),
    )
}

/// A JWKS endpoint in the external namespace.
fn jwks_server(topo: &Topology, addr: SocketAddr, body: String) -> Result<FnServer> {
    FnServer::start(
        Some(&topo.external),
        addr,
        Arc::new(move |_s: &Seen| respond(200, &body, &[("content-type", "application/json")])),
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// The gateway's labels in these tests: Istio's two label conventions at once.
const GATEWAY_LABELS: &str = "istio=egressgateway,app=istio-egressgateway";

// ---------------------------------------------------------------------------------------------
// Sample 29: the egress gateway + AuthorizationPolicy + RequestAuthentication scenario
// ---------------------------------------------------------------------------------------------

/// Sample 29 (`tests/integration/security/testdata/authz/egress-gateway.yaml.tmpl`) rendered
/// with `.test` hosts: From = the app namespace `default`, Allowed = sleep/default, To = an
/// external echo service, the JWKS served by a real HTTP server the gateway fetches.
fn sample_29(jwks_uri: &str) -> String {
    format!(
        "\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  jwtRules:
    - issuer: \"test-issuer-1@istio.io\"
      jwksUri: \"{jwks_uri}\"
    - issuer: \"test-issuer-2@istio.io\"
      jwksUri: \"{jwks_uri}\"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: egressgateway
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-egressgateway
  rules:
    - to: # only allow /allow for company.test
        - operation:
            paths: [ \"/allow\" ]
            hosts: [ \"www.company.test\" ]
    - to: # checks only a call 443 over istio mutual without JWT
        - operation:
            hosts: [ \"sleep-default-only.test\" ]
      from:
        - source:
            principals: [ \"cluster.local/ns/default/sa/sleep\" ]
    - to: # checks workload can call 443 over istio mutual with JWT
        - operation:
            hosts: [ \"jwt-only.test\" ]
      from:
        - source:
            requestPrincipals: [ \"test-issuer-1@istio.io/sub-1\" ]
    - to: # checks only a can call 443 over istio mutual with JWT
        - operation:
            hosts: [ \"jwt-and-sleep-default-only.test\" ]
      from:
        - source:
            requestPrincipals: [ \"test-issuer-1@istio.io/sub-1\" ]
            principals: [ \"cluster.local/ns/default/sa/sleep\" ]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: test-egress
  namespace: default
spec:
  selector:
    istio: egressgateway
  servers:
    - port:
        number: 80
        name: http
        protocol: HTTP
      hosts:
        - \"www.company.test\"
    - port:
        number: 443
        name: https
        protocol: HTTPS
      tls:
        mode: ISTIO_MUTUAL
      hosts:
        - \"*\"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: route-via-egressgateway
  namespace: default
spec:
  hosts:
    - \"www.company.test\"
  gateways:
    - test-egress
    - mesh
  http:
    - match:
        - gateways:
            - mesh
          port: 80
      route:
        - destination:
            host: istio-egressgateway.istio-system.svc.cluster.local
            port:
              number: 80
          weight: 100
    - match:
        - gateways:
            - test-egress
          port: 80
      route:
        - destination:
            host: echo.external.test
            port:
              number: 80
          weight: 100
      headers:
        request:
          add:
            x-egress-test: \"handled-by-egress-gateway\"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: route-via-egressgateway-2
  namespace: default
spec:
  hosts:
    - \"sleep-default-only.test\"
    - \"jwt-only.test\"
    - \"jwt-and-sleep-default-only.test\"
  gateways:
    - test-egress
    - mesh
  http:
    - match:
        - gateways:
            - mesh
          port: 80
      route:
        - destination:
            host: istio-egressgateway.istio-system.svc.cluster.local
            port:
              number: 443
          weight: 100
    - match:
        - gateways:
            - test-egress
          port: 443
      route:
        - destination:
            host: echo.external.test
            port:
              number: 80
          weight: 100
      headers:
        request:
          add:
            x-egress-test: \"handled-by-egress-gateway\"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: test-egress
  namespace: default
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy:
    portLevelSettings:
      - port:
          number: 443
        tls:
          mode: ISTIO_MUTUAL
---
# The hosts the app calls, visible to the sidecar (egret, like Istio, routes HTTP hosts of a
# VirtualService on a port some service declares).
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: company-hosts
  namespace: default
spec:
  hosts: [www.company.test, sleep-default-only.test, jwt-only.test, jwt-and-sleep-default-only.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo
  namespace: default
spec:
  hosts: [echo.external.test]
  exportTo: [\"*\"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  location: MESH_EXTERNAL
"
    )
}

/// Sample 29 as istio's `TestAuthz_EgressGateway` checks it, plus the JWT classes a gateway
/// must refuse with 401 and an audit trail without secrets.
#[test]
fn policy_sample_29_egress_gateway_authorization() -> Result<()> {
    let topo = policy_topology("pol29")?;
    let team_b = topo.add_workload("pol29")?;
    let names = [
        ("www.company.test", addrs::EXTERNAL),
        ("sleep-default-only.test", addrs::EXTERNAL),
        ("jwt-only.test", addrs::EXTERNAL),
        ("jwt-and-sleep-default-only.test", addrs::EXTERNAL),
        ("echo.external.test", addrs::EXTERNAL),
        ("jwks.test", addrs::EXTERNAL_2),
    ];
    let _dns = start_dns(&topo, &names)?;
    let echo = echo(&topo, sa(addrs::EXTERNAL, 80))?;
    let issuer_1 = TestIssuer::rsa("issuer-1-key")?;
    let issuer_2 = TestIssuer::ec("issuer-2-key")?;
    let jwks = jwks_server(
        &topo,
        sa(addrs::EXTERNAL_2, 8000),
        TestIssuer::jwks_json_of(&[&issuer_1, &issuer_2]),
    )?;
    let yaml = format!(
        "{GATEWAY_SERVICE}---\n{}",
        sample_29("http://jwks.test:8000/.well-known/jwks.json")
    );

    let ca = MeshCa::new("pol29-ca")?;
    let gw_files = Files::new("pol29-gw")?;
    let audit = gw_files.path().join("audit.log");
    let audit_arg = audit.to_string_lossy().to_string();
    let gw = Gateway::start(
        &topo.gateway,
        gw_files,
        &ca,
        &yaml,
        GatewayOptions {
            labels: GATEWAY_LABELS,
            extra: &["--audit-log", &audit_arg],
            ..GatewayOptions::default()
        },
    )?;
    let app = sidecar(&topo.app, Files::new("pol29-app")?, &ca, SLEEP, &yaml, &[])?;
    let other = sidecar(
        &team_b,
        Files::new("pol29-b")?,
        &ca,
        ("team-b", "curl"),
        &yaml,
        &[],
    )?;

    // The gateway fetched the JWKS (a request with a good token succeeds once it has).
    wait_until(
        "the gateway to fetch the JWKS",
        Duration::from_secs(15),
        || Ok((jwks.requests() > 0).then_some(())),
    )?;

    // www.company.test: only /allow, for anyone in the mesh; the header added at the gateway.
    let r = app.curl(&["http://www.company.test/allow"])?;
    ensure!(
        r.status == 200 && r.body.contains("x-egress-test: handled-by-egress-gateway"),
        "/allow: {r:?}"
    );
    let r = app.curl(&["http://www.company.test/deny"])?;
    ensure!(
        (r.status, r.body.as_str()) == (403, "RBAC: access denied"),
        "/deny: {r:?}"
    );

    // A principal rule over the ISTIO_MUTUAL 443 leg: only sleep/default.
    let r = app.curl(&["http://sleep-default-only.test/"])?;
    ensure!(r.status == 200, "sleep → sleep-default-only: {r:?}");
    let r = curl(&team_b, &["http://sleep-default-only.test/"])?;
    ensure!(
        (r.status, r.body.as_str()) == (403, "RBAC: access denied"),
        "team-b → sleep-default-only: {r:?}"
    );

    // JWT rules: only issuer 1's sub-1.
    let now = now_secs();
    let t1 = issuer_1.sign(&claims("test-issuer-1@istio.io", "sub-1"))?;
    let t1_other_sub = issuer_1.sign(&claims("test-issuer-1@istio.io", "sub-2"))?;
    let t2 = issuer_2.sign(&claims("test-issuer-2@istio.io", "sub-1"))?;
    let expired = issuer_1.sign(&serde_json::json!({
        "iss": "test-issuer-1@istio.io", "sub": "sub-1", "iat": now - 7200, "exp": now - 3600
    }))?;
    // A key the JWKS does not hold (both rules share one JWKS, so issuer 2's key is trusted
    // for issuer 1 too, as in Istio's test).
    let forged =
        TestIssuer::rsa("issuer-1-key")?.sign(&claims("test-issuer-1@istio.io", "sub-1"))?;
    let url = "http://jwt-only.test/";
    let r = app.curl(&["-H", &bearer(&t1), url])?;
    ensure!(r.status == 200, "issuer-1/sub-1: {r:?}");
    ensure!(
        !r.body.to_ascii_lowercase().contains("authorization:"),
        "the token was forwarded upstream (forwardOriginalToken is false): {r:?}"
    );
    let r = curl(&team_b, &["-H", &bearer(&t1), url])?;
    ensure!(
        r.status == 200,
        "the JWT rule does not look at the principal: {r:?}"
    );
    for (what, token) in [("issuer-2", &t2), ("sub-2", &t1_other_sub)] {
        let r = app.curl(&["-H", &bearer(token), url])?;
        ensure!(
            (r.status, r.body.as_str()) == (403, "RBAC: access denied"),
            "{what}: {r:?}"
        );
    }
    let r = app.curl(&[url])?;
    ensure!(
        r.status == 403,
        "no token: no request principal, 403: {r:?}"
    );
    for (what, token) in [
        ("expired", expired.as_str()),
        ("forged", forged.as_str()),
        ("garbage", "a.b.c"),
    ] {
        let r = app.curl(&["-H", &bearer(token), url])?;
        ensure!(r.status == 401, "{what} token must be 401: {r:?}");
    }

    // Both: the principal AND the token.
    let url = "http://jwt-and-sleep-default-only.test/";
    let r = app.curl(&["-H", &bearer(&t1), url])?;
    ensure!(r.status == 200, "sleep + token: {r:?}");
    let r = curl(&team_b, &["-H", &bearer(&t1), url])?;
    ensure!(r.status == 403, "team-b + token: {r:?}");
    let r = app.curl(&[url])?;
    ensure!(r.status == 403, "sleep without token: {r:?}");

    // Counted, and an audit record per denial naming the caller — never a token.
    let m = gw.metrics()?;
    ensure!(
        series(&m, &requests("denied")) == 7,
        "denied requests:\n{m}"
    );
    ensure!(series(&m, &requests("unauthenticated")) == 3, "401s:\n{m}");
    let audit_text = wait_until("audit records", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&audit).unwrap_or_default();
        Ok((t.lines().count() >= 10).then_some(t))
    })?;
    for token in [&t1, &t2, &expired, &forged] {
        let sig = token.rsplit('.').next().unwrap_or_default();
        ensure!(
            !audit_text.contains(sig),
            "a token is in the audit log:\n{audit_text}"
        );
    }
    let denial = audit_text
        .lines()
        .find(|l| l.contains("team-b") && l.contains("sleep-default-only.test"))
        .context("an audit record for team-b's denial")?;
    let v: serde_json::Value = serde_json::from_str(denial)?;
    ensure!(
        v["decision"] == "deny"
            && v["reason"] == "no_matching_allow"
            && v["principal"] == "cluster.local/ns/team-b/sa/curl",
        "{denial}"
    );
    // What reached the external service: the allowed requests only, never a token.
    let seen = echo.seen();
    ensure!(
        seen.len() == 5,
        "the echo service saw {} requests: {seen:?}",
        seen.len()
    );
    ensure!(
        seen.iter()
            .all(|s| s.headers.get("authorization").is_none()),
        "a token was forwarded: {seen:?}"
    );
    drop(other);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS passthrough decided by principal and SNI
// ---------------------------------------------------------------------------------------------

const PASSTHROUGH: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.test]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress-tls, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [api.test]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-through-gateway, namespace: default}
spec:
  hosts: [api.test]
  gateways: [mesh, istio-system/egress-tls]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [api.test]}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 443}}}]
  - match: [{gateways: [istio-system/egress-tls], port: 443, sniHosts: [api.test]}]
    route: [{destination: {host: api.test, port: {number: 443}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-callers, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    when:
    - {key: connection.sni, values: [api.test]}
";

/// Two app namespaces with different service accounts call `https://api.test` with their own
/// TLS (passthrough at the gateway, never terminated): sleep/default is allowed, team-b/curl is
/// refused — decided at the gateway by principal and SNI, which Istio cannot do for
/// passthrough. The refused connection is closed before anything reaches api.test.
#[test]
fn policy_tls_passthrough_by_principal_and_sni() -> Result<()> {
    let topo = policy_topology("poltls")?;
    let team_b = topo.add_workload("poltls")?;
    let tca = egret_testkit::TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[("api.test", addrs::EXTERNAL)])?;
    let api = egret_testkit::Nginx::start(
        &topo.external,
        &tca,
        egret_testkit::NginxConfig::new("api", IpAddr::V4(addrs::EXTERNAL), &["api.test"]),
    )?;
    let shared = Files::new("poltls-shared")?;
    let ca_file = shared.write("ca.pem", tca.ca_pem())?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{PASSTHROUGH}");
    let (mesh_ca, gw, app) = mesh(&topo, "poltls", &yaml, &[])?;
    let _b = sidecar(
        &team_b,
        Files::new("poltls-b")?,
        &mesh_ca,
        ("team-b", "curl"),
        &yaml,
        &[],
    )?;
    let cafile = path_str(&ca_file);
    let r = app.curl(&["--cacert", cafile, "https://api.test/"])?;
    ensure!(
        r.status == 200 && r.body.contains("nginx api https"),
        "sleep: {r:?}"
    );
    let r = curl(&team_b, &["--cacert", cafile, "https://api.test/"])?;
    ensure!(
        r.status == 0 && r.exit != Some(0),
        "team-b must be refused: {r:?}"
    );
    api.wait_for_requests(1, Duration::from_secs(5))?;
    ensure!(
        api.requests() == 1,
        "only sleep's request reached api.test: {}",
        api.access_log()
    );
    let m = gw.metrics()?;
    ensure!(
        series(
            &m,
            "egret_policy_decisions_total{decision=\"deny\",reason=\"no_matching_allow\",protocol=\"tls\"}"
        ) == 1
            && series(
                &m,
                "egret_policy_decisions_total{decision=\"allow\",reason=\"allowed_by_policy\",protocol=\"tls\"}"
            ) == 1,
        "{m}"
    );
    gw.wait_for_line(&["RBAC: connection denied", "team-b", "api.test"])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Istio's AuthorizationPolicy / RequestAuthentication examples 19–23 at the gateway
// ---------------------------------------------------------------------------------------------

/// A sample from `../shared/conformance/istio-samples/`, with the replacements that move it
/// from its Istio workload (`foo/httpbin`, the ingress gateway) to this egress gateway.
fn sample(file: &str, replacements: &[(&str, &str)]) -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/istio-samples")
        .join(file);
    let mut text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (the shared samples sit beside the repo)",
            path.display()
        )
    })?;
    for (from, to) in replacements {
        ensure!(text.contains(from), "{file} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    Ok(text)
}

/// Policies of a sample, applied to the egress gateway: its namespace becomes the gateway's,
/// and a policy without selector gets the gateway's (a root-namespace policy without selector
/// would apply to every sidecar too).
const TO_GATEWAY: &[(&str, &str)] = &[("namespace: foo\n", "namespace: istio-system\n")];

/// The gateway Service with a third port (8080, for sample 20).
const GATEWAY_SERVICE_8080: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  hosts:
  - istio-egressgateway.istio-system.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 8080, name: http-alt, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - address: 198.51.100.2
    labels: {istio: egressgateway}
";

/// httpbin.test on ports 80 and 8080 through the gateway (istio.io's egress-gateway pattern).
const HTTPBIN: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.test]
  exportTo: [\"*\"]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 8080, name: http-alt, protocol: HTTP}
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress-httpbin, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.test]
  - port: {number: 8080, name: http-alt, protocol: HTTP}
    hosts: [httpbin.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-through-gateway, namespace: default}
spec:
  hosts: [httpbin.test]
  gateways: [mesh, istio-system/egress-httpbin]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 80}}}]
  - match: [{gateways: [mesh], port: 8080}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 8080}}}]
  - match: [{gateways: [istio-system/egress-httpbin], port: 80}]
    route: [{destination: {host: httpbin.test, port: {number: 80}}}]
  - match: [{gateways: [istio-system/egress-httpbin], port: 8080}]
    route: [{destination: {host: httpbin.test, port: {number: 8080}}}]
";

/// Samples 19, 20, 21, 22 and 23 one after the other on one gateway (reconfigured between
/// them), callers sleep/default and team-b/curl, the path-normalization table against a DENY
/// on `/admin*`, and a dry-run DENY that only records.
#[test]
fn policy_samples_19_to_23_at_the_gateway() -> Result<()> {
    let topo = policy_topology("polsam")?;
    let team_b = topo.add_workload("polsam")?;
    let _dns = start_dns(
        &topo,
        &[
            ("httpbin.test", addrs::EXTERNAL),
            ("jwks.test", addrs::EXTERNAL_2),
        ],
    )?;
    let _echo80 = echo(&topo, sa(addrs::EXTERNAL, 80))?;
    let _echo8080 = echo(&topo, sa(addrs::EXTERNAL, 8080))?;
    let authz = FnServer::ext_authz(Some(&topo.external), sa(addrs::EXTERNAL_3, 9000))?;
    let google = TestIssuer::ec("google-key")?;
    let foo = TestIssuer::rsa("foo-key")?;
    let _jwks = jwks_server(&topo, sa(addrs::EXTERNAL_2, 8000), foo.jwks_json())?;
    let base = format!("{GATEWAY_SERVICE_8080}---\n{HTTPBIN}");

    let ca = MeshCa::new("polsam-ca")?;
    let gw = Gateway::start(
        &topo.gateway,
        Files::new("polsam-gw")?,
        &ca,
        &base,
        GatewayOptions {
            labels: GATEWAY_LABELS,
            ..GatewayOptions::default()
        },
    )?;
    let _app = sidecar(&topo.app, Files::new("polsam-app")?, &ca, SLEEP, &base, &[])?;
    let _b = sidecar(
        &team_b,
        Files::new("polsam-b")?,
        &ca,
        ("team-b", "curl"),
        &base,
        &[],
    )?;
    let status = |ns: &egret_testkit::netns::Netns, args: &[&str]| -> Result<u16> {
        Ok(curl(ns, args)?.status)
    };
    let url = "http://httpbin.test";

    // --- 19: ALLOW (sleep's principal OR namespace team-b) AND (GET /info* OR POST /data)
    //         AND the token's iss is Google's.
    let s19 = sample(
        "19-api-authz-allow-from-to-when.yaml",
        &[
            TO_GATEWAY[0],
            ("namespaces: [\"test\"]", "namespaces: [\"team-b\"]"),
            (
                "https://accounts.google.com",
                "https://accounts.google.test",
            ),
        ],
    )?;
    let authn = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: google, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: https://accounts.google.test
    jwks: '{}'
",
        google.jwks_json()
    );
    gw.reconfigure(&format!("{base}---\n{s19}---\n{authn}"))?;
    let tok = google.sign(&claims("https://accounts.google.test", "user-1"))?;
    let h = bearer(&tok);
    let rogue =
        TestIssuer::ec("google-key")?.sign(&claims("https://accounts.google.test", "user-1"))?;
    for (who, ns, method, path, auth, want) in [
        ("sleep", &topo.app, "GET", "/info", Some(h.as_str()), 200),
        (
            "sleep",
            &topo.app,
            "GET",
            "/info/deep?x=1",
            Some(h.as_str()),
            200,
        ),
        ("team-b", &team_b, "POST", "/data", Some(h.as_str()), 200),
        ("sleep", &topo.app, "POST", "/info", Some(h.as_str()), 403),
        ("sleep", &topo.app, "GET", "/data", Some(h.as_str()), 403),
        ("sleep", &topo.app, "GET", "/info", None, 403),
        (
            "sleep",
            &topo.app,
            "GET",
            "/info",
            Some(&bearer(&rogue)),
            401,
        ),
    ] {
        let target = format!("{url}{path}");
        let mut args = vec!["-X", method, target.as_str()];
        if let Some(a) = auth {
            args.extend(["-H", a]);
        }
        let got = status(ns, &args)?;
        ensure!(
            got == want,
            "19: {who} {method} {path} token={}: {got}, want {want}",
            auth.is_some()
        );
    }

    // --- 20: DENY POST on port 8080 only.
    gw.reconfigure(&format!(
        "{base}---\n{}",
        sample("20-api-authz-deny-port-scoped.yaml", TO_GATEWAY)?
    ))?;
    ensure!(
        status(&topo.app, &["-X", "POST", "http://httpbin.test:8080/post"])? == 403,
        "20: POST :8080"
    );
    ensure!(
        status(&topo.app, &["http://httpbin.test:8080/get"])? == 200,
        "20: GET :8080"
    );
    ensure!(
        status(&topo.app, &["-X", "POST", "http://httpbin.test/post"])? == 200,
        "20: POST :80"
    );

    // --- 21: allow-nothing.
    gw.reconfigure(&format!(
        "{base}---\n{}",
        sample(
            "21-api-authz-allow-nothing.yaml",
            &[(" namespace: foo\n", " namespace: istio-system\n")]
        )?
    ))?;
    for ns in [&topo.app, &team_b] {
        let r = curl(ns, &[&format!("{url}/get")])?;
        ensure!(
            (r.status, r.body.as_str()) == (403, "RBAC: access denied"),
            "21: {r:?}"
        );
    }

    // --- 22: CUSTOM for /admin/* through Istio's ext-authz sample server.
    let providers = format!(
        "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    extensionProviders:
    - name: my-custom-authz
      envoyExtAuthzHttp:
        service: ext-authz.test
        port: 9000
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  hosts: [ext-authz.test]
  ports: [{{number: 9000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {}}}]
",
        addrs::EXTERNAL_3
    );
    gw.reconfigure(&format!(
        "{base}---\n{providers}---\n{}",
        sample(
            "22-api-authz-custom-ext-authz.yaml",
            &[("app: istio-ingressgateway", "app: istio-egressgateway")]
        )?
    ))?;
    let r = curl(
        &topo.app,
        &["-H", "x-ext-authz: allow", &format!("{url}/admin/users")],
    )?;
    ensure!(
        r.status == 200 && r.body.contains("x-ext-authz-check-result: allowed"),
        "22 allowed: {r:?}"
    );
    let r = curl(
        &topo.app,
        &["-H", "x-ext-authz: deny", &format!("{url}/admin/users")],
    )?;
    ensure!(
        r.status == 403 && r.body.contains("denied by ext_authz"),
        "22 denied: {r:?}"
    );
    ensure!(
        status(&topo.app, &[&format!("{url}/public")])? == 200,
        "22: /public is not checked"
    );
    ensure!(
        authz.requests() == 2,
        "the authorizer saw {} checks",
        authz.requests()
    );

    // --- 23: RequestAuthentication (jwksUri) + ALLOW requestPrincipals ["*"].
    gw.reconfigure(&format!(
        "{base}---\n{}",
        sample(
            "23-api-requestauthn-require-jwt.yaml",
            &[
                TO_GATEWAY[0],
                ("app: httpbin", "app: istio-egressgateway"),
                (
                    "https://example.com/.well-known/jwks.json",
                    "http://jwks.test:8000/jwks.json"
                ),
            ]
        )?
    ))?;
    let good = foo.sign(&claims("issuer-foo", "alice"))?;
    let bad = TestIssuer::rsa("foo-key")?.sign(&claims("issuer-foo", "alice"))?;
    let get = format!("{url}/get");
    wait_until(
        "the gateway to fetch issuer-foo's JWKS",
        Duration::from_secs(10),
        || Ok((status(&topo.app, &["-H", &bearer(&good), &get])? == 200).then_some(())),
    )?;
    ensure!(
        status(&topo.app, &["-H", &bearer(&bad), &get])? == 401,
        "23: invalid token"
    );
    ensure!(status(&topo.app, &[&get])? == 403, "23: no token");

    // --- The path-normalization table (through sidecar and gateway) against a DENY on
    //     /admin*, plus a dry-run DENY that only records.
    let deny_admin = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/admin*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-delete
  namespace: istio-system
  annotations: {istio.io/dry-run: \"true\"}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
";
    gw.reconfigure(&format!("{base}---\n{deny_admin}"))?;
    for path in [
        "/admin",
        "/allowed/../admin",
        "//admin",
        "/%61dmin",
        "/%2Fadmin",
        "/x/..%2Fadmin",
    ] {
        let r = curl(&topo.app, &["--path-as-is", &format!("{url}{path}")])?;
        ensure!(
            (r.status, r.body.as_str()) == (403, "RBAC: access denied"),
            "{path}: {r:?}"
        );
    }
    let r = curl(&topo.app, &["--path-as-is", &format!("{url}/Admin")])?;
    ensure!(
        r.status == 200 && r.body.starts_with("GET /Admin\n"),
        "/Admin is another path: {r:?}"
    );
    let r = curl(
        &topo.app,
        &["--path-as-is", &format!("{url}/a//b/./c/../d")],
    )?;
    ensure!(
        r.status == 200 && r.body.starts_with("GET /a/b/d\n"),
        "forwarded normalized: {r:?}"
    );
    let r = curl(&topo.app, &["-X", "DELETE", &format!("{url}/thing")])?;
    ensure!(r.status == 200, "dry-run never enforces: {r:?}");
    gw.wait_for_line(&[
        "dry-run policy would change this decision",
        "would-deny-delete",
    ])?;
    let m = gw.metrics()?;
    ensure!(
        series(
            &m,
            "egret_policy_decisions_total{decision=\"dry_run_deny\",reason=\"denied_by_policy\",protocol=\"http\"}"
        ) == 1,
        "{m}"
    );
    Ok(())
}
