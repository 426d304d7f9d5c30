//! In-process end-to-end: AuthorizationPolicy, path normalization and CUSTOM (external
//! authorization) through a real sidecar to real servers on loopback. Policies that select a
//! sidecar's workload apply to what it sends (the workload is the caller); the gateway
//! scenarios with the caller's principal from the mesh tunnel are in `egret`'s netns tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use egret_testkit::fn_server::{FnServer, Seen, respond};

/// An upstream that answers with the path (and query) it received.
fn echo_path() -> FnServer {
    FnServer::start(
        None,
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|s: &Seen| {
            let team = s
                .headers
                .get("x-ext-authz-check-result")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            respond(200, &format!("{} check={team}\n", s.uri), &[])
        }),
    )
    .unwrap()
}

fn se(host: &str, srv: &FnServer) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}, namespace: default}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        srv.addr().port()
    )
}

fn dialed() -> SocketAddr {
    "203.0.113.80:80".parse().unwrap()
}

const DENY_ADMIN: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ['/admin*'], hosts: [api.test]}}]
";

/// The path-normalization table of the issue: every spelling of `/admin` is denied by a DENY
/// on `/admin*`, and what is allowed reaches the upstream in the normalized form that was
/// matched. `/Admin` is another path (matching is case-sensitive, as Istio's) and goes through
/// as `/Admin`.
#[tokio::test]
async fn path_normalization_table() {
    let up = echo_path();
    let sc = Sidecar::start(&format!("{}{DENY_ADMIN}", se("api.test", &up))).await;
    let cap = sc.capture(dialed()).await;
    let mut cl = Client::connect(cap).await;
    for path in [
        "/admin",
        "/admin/users",
        "/allowed/../admin",
        "//admin",
        "/%61dmin",
        "/%2Fadmin",
        "/x/..%2Fadmin",
        "/./admin",
    ] {
        let r = cl.request("GET", "api.test", path, &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "RBAC: access denied"),
            "{path}"
        );
    }
    // Host spellings are one host too.
    for host in ["API.test", "api.test.", "api.test:80"] {
        let r = cl.request("GET", host, "/admin", &[]).await;
        assert_eq!(r.status, 403, "{host}");
    }
    for (sent, forwarded) in [
        ("/Admin", "/Admin"),
        ("/public//a/./b/../c?q=1", "/public/a/c?q=1"),
        ("/%7Euser/x%3ay", "/~user/x%3Ay"),
    ] {
        let r = cl.request("GET", "api.test", sent, &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("{forwarded} check=-\n").as_str()),
            "{sent}"
        );
    }
    let r = cl.request("GET", "api.test", "/bad%zz", &[]).await;
    assert_eq!(r.status, 400);
    let m = &sc.running.proxy.metrics;
    assert_eq!(m.policy_count("deny", "denied_by_policy", "http"), 11);
    assert_eq!(m.request_count("denied"), 11);
    // No upstream ever saw an admin path.
    assert!(
        up.seen()
            .iter()
            .all(|s| !s.uri.to_ascii_lowercase().contains("admin") || s.uri == "/Admin")
    );
}

/// Sample 21 in the workload's namespace: `spec: {}` = allow nothing, for HTTP and TCP alike;
/// another namespace's sidecar is not affected.
#[tokio::test]
async fn allow_nothing_denies_http_and_closes_tcp() {
    let up = echo_path();
    let allow_nothing = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
";
    let tcp_se = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.test]
  addresses: [203.0.113.90]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {}}}}}]
",
        up.addr().port()
    );
    let yaml = format!("{}{tcp_se}{allow_nothing}", se("api.test", &up));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let r = get(cap, "api.test", "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (403, "RBAC: access denied"));
    // TCP: closed before anything is forwarded.
    let tcp = sc.capture("203.0.113.90:5432".parse().unwrap()).await;
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed, not hung")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed");
    let m = &sc.running.proxy.metrics;
    assert_eq!(m.policy_count("deny", "no_matching_allow", "tcp"), 1);
    assert_eq!(up.requests(), 0);
    let text = m.encode();
    for series in [
        "egret_jwks_fetch_failures_total 0",
        "egret_audit_records_dropped_total 0",
        "egret_ratelimit_redis_errors_total 0",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
}

/// Sample 22's CUSTOM policy with Istio's ext-authz sample as the authorizer: requests to
/// `/admin/*` are decided by it (allowed with `x-ext-authz: allow`, the check result header
/// passed upstream; otherwise its 403 and body); other paths never reach it. An unreachable
/// authorizer denies (403) unless `failOpen`.
#[tokio::test]
async fn custom_external_authorization() {
    let up = echo_path();
    let authz = FnServer::ext_authz(None, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mesh = |port: u16, fail_open: bool| {
        format!(
            "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    extensionProviders:
    - name: my-custom-authz
      envoyExtAuthzHttp:
        service: ext-authz.test
        port: {port}
        timeout: 2s
        failOpen: {fail_open}
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
        headersToDownstreamOnDeny: [x-ext-authz-check-result]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: default}}
spec:
  hosts: [ext-authz.test]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: default}}
spec:
  action: CUSTOM
  provider: {{name: my-custom-authz}}
  rules:
  - to: [{{operation: {{paths: ['/admin/*']}}}}]
"
        )
    };
    let base = se("api.test", &up);
    let sc = Sidecar::start(&format!("{base}{}", mesh(authz.addr().port(), false))).await;
    let cap = sc.capture(dialed()).await;
    let mut cl = Client::connect(cap).await;

    let r = cl.request("GET", "api.test", "/public", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "/public check=-\n"));
    assert_eq!(authz.requests(), 0, "only /admin/* is checked");

    let r = cl
        .request("GET", "api.test", "/admin/x", &[("x-ext-authz", "allow")])
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "/admin/x check=allowed\n")
    );
    let r = cl
        .request(
            "GET",
            "api.test",
            "/admin/x",
            &[("x-ext-authz", "deny"), ("authorization", "Bearer abc")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("denied by ext_authz"), "{}", r.body);
    assert_eq!(r.headers["x-ext-authz-check-result"], "denied");
    assert_eq!(authz.requests(), 2);
    // The check request carried the original method, path, host and the listed headers.
    let seen = authz.seen();
    assert_eq!(seen[1].uri, "/admin/x");
    assert_eq!(seen[1].headers["x-ext-authz"], "deny");
    assert_eq!(seen[1].headers["authorization"], "Bearer abc");
    assert_eq!(
        up.seen().len(),
        2,
        "the denied request never reached the upstream"
    );

    // The authorizer is down: fail closed, then fail open.
    let port = authz.addr().port();
    drop(authz);
    let r = cl
        .request("GET", "api.test", "/admin/x", &[("x-ext-authz", "allow")])
        .await;
    assert_eq!(r.status, 403);
    sc.reconfigure(&format!("{base}{}", mesh(port, true))).await;
    let r = cl
        .request("GET", "api.test", "/admin/y", &[("x-ext-authz", "allow")])
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "/admin/y check=-\n"));
    let m = &sc.running.proxy.metrics;
    assert_eq!(m.policy_count("deny", "ext_authz_denied", "http"), 1);
    assert_eq!(m.policy_count("deny", "ext_authz_error", "http"), 1);
    assert_eq!(m.policy_count("allow", "ext_authz_failed_open", "http"), 1);
}
