//! In-process end-to-end: HTTP routing through a real sidecar to real servers on loopback
//! (issue: sidecar data plane, items 5-8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const REGISTRY_ONLY: &str = "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
";

/// The address the application "dialed": any address works for STATIC/DNS clusters, since
/// the sidecar picks the endpoint itself (documentation range, never contacted).
fn dialed() -> SocketAddr {
    "203.0.113.80:80".parse().unwrap()
}

#[tokio::test]
async fn service_entry_without_virtual_service_routes_to_its_endpoint() {
    let a = server("a");
    let sc = Sidecar::start(&se("api", "api.example.test", &a)).await;
    let cap = sc.capture(dialed()).await;
    let r = get(cap, "api.example.test", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from a\n");
    // Host matching is case-insensitive, ignores the port and a trailing dot.
    let r = get(cap, "API.Example.TEST.:80", "/", &[]).await;
    assert_eq!(r.body, "hello from a\n");
}

#[tokio::test]
async fn first_matching_route_wins_with_every_match_kind() {
    let (a, b, c, d, e, f) = (
        server("a"),
        server("b"),
        server("c"),
        server("d"),
        server("e"),
        server("f"),
    );
    let yaml = format!(
        "{}{}{}{}{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - match: [{{uri: {{exact: /exact}}}}]
    route: [{{destination: {{host: a.svc.test}}}}]
  - match: [{{uri: {{regex: '/re/[0-9]+'}}}}]
    route: [{{destination: {{host: b.svc.test}}}}]
  - match: [{{method: {{exact: POST}}, uri: {{prefix: /p}}}}]
    route: [{{destination: {{host: c.svc.test}}}}]
  - match: [{{headers: {{x-user: {{exact: alice}}}}}}, {{queryParams: {{v: {{exact: '2'}}}}}}]
    route: [{{destination: {{host: d.svc.test}}}}]
  - match: [{{uri: {{prefix: /p}}, withoutHeaders: {{x-skip: {{}}}}}}]
    route: [{{destination: {{host: e.svc.test}}}}]
  - match: [{{authority: {{prefix: api.}}, port: 80}}]
    route: [{{destination: {{host: f.svc.test}}}}]
",
        se("api", "api.example.test", &a),
        se("sa", "a.svc.test", &a),
        se("sb", "b.svc.test", &b),
        se("sc", "c.svc.test", &c),
        se("sd", "d.svc.test", &d),
        se("se", "e.svc.test", &e),
        se("sf", "f.svc.test", &f),
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut cl = Client::connect(cap).await;
    let h = "api.example.test";
    let who = |r: &Resp| r.body.trim().trim_start_matches("hello from ").to_string();
    assert_eq!(who(&cl.request("GET", h, "/exact", &[]).await), "a");
    assert_eq!(who(&cl.request("GET", h, "/re/42", &[]).await), "b");
    // Regexes match the whole path (Envoy safe_regex).
    assert_eq!(who(&cl.request("GET", h, "/re/42x", &[]).await), "f");
    assert_eq!(who(&cl.request("POST", h, "/p/1", &[]).await), "c");
    assert_eq!(
        who(&cl.request("GET", h, "/x", &[("x-user", "alice")]).await),
        "d"
    );
    assert_eq!(who(&cl.request("GET", h, "/x?v=2", &[]).await), "d");
    assert_eq!(who(&cl.request("GET", h, "/p/1", &[]).await), "e");
    assert_eq!(
        who(&cl.request("GET", h, "/p/1", &[("x-skip", "1")]).await),
        "f"
    );
    // /exact is earlier than the catch-all: first match wins even though both match.
    assert_eq!(
        who(&cl.request("GET", h, "/exact", &[("x-user", "alice")]).await),
        "a"
    );
}

#[tokio::test]
async fn no_route_in_a_virtual_host_is_404() {
    let a = server("a");
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - match: [{{uri: {{prefix: /only}}}}]
    route: [{{destination: {{host: api.example.test}}}}]
",
        se("api", "api.example.test", &a)
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    assert_eq!(
        get(cap, "api.example.test", "/only/x", &[]).await.status,
        200
    );
    assert_eq!(
        get(cap, "api.example.test", "/other", &[]).await.status,
        404
    );
}

#[tokio::test]
async fn weighted_destinations_split_traffic() {
    let (a, b) = (server("a"), server("b"));
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - route:
    - {{destination: {{host: a.svc.test}}, weight: 80}}
    - {{destination: {{host: b.svc.test}}, weight: 20}}
",
        se("api", "api.example.test", &a),
        se("sa", "a.svc.test", &a),
        se("sb", "b.svc.test", &b),
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut cl = Client::connect(cap).await;
    let mut to_a = 0;
    let n = 1000;
    for _ in 0..n {
        if cl.request("GET", "api.example.test", "/", &[]).await.body == "hello from a\n" {
            to_a += 1;
        }
    }
    assert!(
        (750..=850).contains(&to_a),
        "80/20 split gave {to_a}/{n} to a"
    );
}

#[tokio::test]
async fn rewrite_redirect_direct_response_and_headers() {
    let a = server("a");
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - match: [{{uri: {{prefix: /old}}}}]
    rewrite: {{uri: /headers, authority: rewritten.example.test}}
    route: [{{destination: {{host: api.example.test}}}}]
    headers:
      request:
        set: {{x-set: one}}
        add: {{x-added: two}}
        remove: [x-drop-me]
      response:
        set: {{x-resp: three}}
  - match: [{{uri: {{prefix: /v1/}}}}]
    rewrite: {{uriRegexRewrite: {{match: '^/v1/([a-z]+)$', rewrite: '/\\1'}}}}
    route: [{{destination: {{host: api.example.test}}}}]
  - match: [{{uri: {{exact: /moved}}}}]
    redirect: {{uri: /new, authority: new.example.test}}
  - match: [{{uri: {{exact: /direct}}}}]
    directResponse: {{status: 503, body: {{string: maintenance}}}}
",
        se("api", "api.example.test", &a)
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    // The matched prefix `/old` is replaced: `/old` -> `/headers` (the server's echo path).
    let r = get(cap, "api.example.test", "/old", &[("x-drop-me", "1")]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("GET /headers"), "{}", r.body);
    assert!(
        r.body.contains("host: rewritten.example.test"),
        "{}",
        r.body
    );
    assert!(r.body.contains("x-set: one"), "{}", r.body);
    assert!(r.body.contains("x-added: two"), "{}", r.body);
    assert!(!r.body.contains("x-drop-me"), "{}", r.body);
    assert_eq!(r.headers["x-resp"], "three");
    // uriRegexRewrite (RE2 syntax, `\1` groups as Istio/Envoy): /v1/headers -> /headers.
    let r = get(cap, "api.example.test", "/v1/headers", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("GET /headers"), "{}", r.body);
    let r = get(cap, "api.example.test", "/moved", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "http://new.example.test/new");
    let r = get(cap, "api.example.test", "/direct", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "maintenance"));
}

#[tokio::test]
async fn route_timeout_answers_504() {
    let a = server("a");
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - timeout: 300ms
    route: [{{destination: {{host: api.example.test}}}}]
",
        se("api", "api.example.test", &a)
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let t = Instant::now();
    let r = get(cap, "api.example.test", "/delay/2", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "upstream request timeout");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        get(cap, "api.example.test", "/delay/0.05", &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn registry_only_answers_502_for_unknown_hosts_and_allow_any_passes_through() {
    let a = server("a");
    let yaml = format!("{REGISTRY_ONLY}{}", se("api", "api.example.test", &a));
    let sc = Sidecar::start(&yaml).await;
    // Unknown host on a known port, and on an unknown port.
    let cap = sc.capture(dialed()).await;
    assert_eq!(get(cap, "unknown.example.test", "/", &[]).await.status, 502);
    let cap = sc.capture(a.plain_addrs()[0]).await;
    assert_eq!(get(cap, "unknown.example.test", "/", &[]).await.status, 502);
    assert_eq!(
        get(cap, "api.example.test", "/", &[]).await.status,
        502,
        "port {} has no service",
        port(&a)
    );
    // ALLOW_ANY (the default): the same request passes through to where it was going.
    sc.reconfigure(&se("api", "api.example.test", &a)).await;
    let r = get(cap, "unknown.example.test", "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from a\n"));
    let m = sc.running.proxy.metrics.encode();
    assert!(
        m.contains("egret_outbound_requests_total{outcome=\"blackhole\",protocol=\"http\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("egret_outbound_requests_total{outcome=\"passthrough\",protocol=\"http\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn round_robin_uses_every_static_endpoint_with_port_maps() {
    let (a, b, c) = (server("a"), server("b"), server("c"));
    let yaml = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
",
        port(&a),
        port(&b),
        port(&c)
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let r = get(cap, "api.example.test", "/", &[]).await;
        *seen.entry(r.body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.values().all(|n| *n == 10),
        "round robin is even: {seen:?}"
    );
}

#[tokio::test]
async fn dns_resolution_of_endpoint_names() {
    let a = server("a");
    // `localhost` resolves through the system resolver configuration (/etc/hosts).
    let yaml = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: localhost, ports: {{http: {}}}}}]
",
        port(&a)
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    assert_eq!(
        get(cap, "api.example.test", "/", &[]).await.body,
        "hello from a\n"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let a = server("a");
    let sc = Sidecar::start(&se("api", "api.example.test", &a)).await;
    let cap = sc.capture(dialed()).await;
    for _ in 0..20 {
        assert_eq!(get(cap, "api.example.test", "/", &[]).await.status, 200);
    }
    // 20 client connections, one after the other, share one upstream connection.
    assert!(
        a.connections() <= 2,
        "upstream connections: {}",
        a.connections()
    );
}

#[tokio::test]
async fn explicit_proxy_absolute_form_and_connect() {
    let a = server("a");
    let yaml = format!("{REGISTRY_ONLY}{}", se("api", "api.example.test", &a));
    let sc = Sidecar::start(&yaml).await;
    let proxy = format!("http://{}", sc.explicit());
    let (code, body) = curl(&["-x", &proxy, "http://api.example.test/"]).await;
    assert_eq!((code, body.as_str()), (0, "hello from a\n"));
    let (code, out) = curl(&[
        "-x",
        &proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://unknown.example.test/",
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "502"));
    // A CONNECT tunnel is routed like captured traffic to its target: plain HTTP inside a
    // tunnel to an unregistered port is blocked by REGISTRY_ONLY (502 from inside the tunnel).
    let (code, out) = curl(&[
        "-p",
        "-x",
        &proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{}/", port(&a)),
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "502"));
}

#[tokio::test]
async fn admin_ready_config_dump_and_metrics() {
    let a = server("a");
    let sc = Sidecar::start(&se("api", "api.example.test", &a)).await;
    let admin = sc.running.admin;
    let r = get(admin, "localhost", "/ready", &[]).await;
    assert_eq!(r.status, 200);
    let r = get(admin, "localhost", "/config_dump", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["version"],
        sc.running.proxy.state.load().snapshot.version.as_str()
    );
    assert!(r.body.contains("outbound|80||api.example.test"));
    let r = get(admin, "localhost", "/metrics", &[]).await;
    assert!(r.body.contains("egret_config_loaded_total 1"), "{}", r.body);
}

#[tokio::test]
async fn http2_port_protocol_speaks_http2_to_the_upstream() {
    let a = server("a");
    let yaml = se("api", "api.example.test", &a).replace("protocol: HTTP}", "protocol: HTTP2}");
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    // The client speaks HTTP/1.1; the upstream gets HTTP/2 (prior knowledge, h2c).
    let mut cl = Client::connect(cap).await;
    for _ in 0..3 {
        let r = cl.request("GET", "api.example.test", "/headers", &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("HTTP/2"), "{}", r.body);
    }
    // Multiplexed: one upstream connection for all of them.
    assert_eq!(a.connections(), 1);
}

#[tokio::test]
async fn connect_authority_must_match_the_inner_sni() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = server("a");
    let sc = Sidecar::start(&se("api", "api.example.test", &a)).await;
    // `CONNECT localhost:<port>`, then TLS whose SNI names another host: the sidecar would
    // route (and allow) it as that host while connecting to localhost's address.
    let mut s = tokio::net::TcpStream::connect(sc.explicit()).await.unwrap();
    let target = format!("localhost:{}", port(&a));
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let ca = egret_testkit::ca::TestCa::new("any").unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
    let r = tokio_rustls::TlsConnector::from(ca.rustls_client_config().unwrap())
        .connect(name, s)
        .await;
    assert!(r.is_err(), "TLS for another name went through the tunnel");
    assert_eq!(
        sc.running
            .proxy
            .metrics
            .connection_count("bad_request", "tls"),
        1
    );
}

/// Thread per core: every data-plane thread accepts on its own `SO_REUSEPORT` socket of the
/// listener, serves the connections it accepted itself and reuses its own upstream connections.
#[tokio::test]
async fn every_data_plane_thread_accepts_and_serves_its_own_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = server("a");
    let yaml = format!("{REGISTRY_ONLY}{}", se("api", "api.example.test", &a));
    let (worker, _stop) = worker_thread(1);
    let sc = Sidecar::start_workers(&yaml, &[], None, std::slice::from_ref(&worker)).await;
    let here = tokio::runtime::Handle::current();
    let (here0, worker0) = (
        here.metrics().num_alive_tasks(),
        worker.metrics().num_alive_tasks(),
    );
    // 32 keep-alive connections, one request each, all held open: the kernel spreads them over
    // the two sockets (all on one of them: probability 2^-31).
    let mut conns = Vec::new();
    for _ in 0..32 {
        let mut c = tokio::net::TcpStream::connect(sc.explicit()).await.unwrap();
        c.write_all(b"GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("hello from a\n") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        conns.push(c);
    }
    // Each runtime holds a task per connection it serves.
    let (here1, worker1) = (
        here.metrics().num_alive_tasks(),
        worker.metrics().num_alive_tasks(),
    );
    assert!(
        here1 > here0 && worker1 > worker0,
        "connections on this runtime: {} -> {here1}, on the worker: {} -> {worker1}",
        here0,
        worker0
    );
    assert!(here1 - here0 + worker1 - worker0 >= 32);
    // Each thread pools its own upstream connections (`shard.rs`): the requests, one after
    // another, took exactly one upstream connection per thread.
    assert_eq!(a.connections(), 2, "upstream connections");
    drop(conns);
}
