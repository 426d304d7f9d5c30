//! In-process end-to-end: TLS origination (SIMPLE, MUTUAL, verification on by default), TLS
//! passthrough by SNI, opaque TCP, the outbound policy for TLS/TCP, reload under load, and
//! drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use egret_testkit::ca::TestCa;
use egret_testkit::server::{InProcessServer, TestServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_server(name: &str, ca: &TestCa, hosts: &[&str], client_ca: Option<&str>) -> InProcessServer {
    let mut cfg = TestServerConfig::new(name)
        .plain("127.0.0.1:0".parse().unwrap())
        .tls(
            "127.0.0.1:0".parse().unwrap(),
            ca.issue_server(hosts).unwrap(),
        );
    if let Some(c) = client_ca {
        cfg = cfg.client_ca(c);
    }
    InProcessServer::start(None, cfg).unwrap()
}

fn tls_port(s: &InProcessServer) -> u16 {
    s.tls_addrs()[0].port()
}

fn dialed(port: u16) -> SocketAddr {
    format!("203.0.113.80:{port}").parse().unwrap()
}

/// istio.io TLS origination at the sidecar (sample 08's shape): the app speaks plain HTTP to
/// port 80; the ServiceEntry's `targetPort` and a DestinationRule `SIMPLE` send it as HTTPS.
fn origination_yaml(server: &InProcessServer, tls_extra: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {}}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
        mode: SIMPLE
{tls_extra}",
        tls_port(server)
    )
}

#[tokio::test]
async fn tls_origination_verifies_the_server_by_default() {
    let ca = TestCa::new("origins").unwrap();
    let srv = tls_server("secure", &ca, &["api.example.test"], None);
    let dir = temp_dir("ca");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();

    // No caCertificates: verified against the system roots, which do not know our test CA.
    let sc = Sidecar::start(&origination_yaml(&srv, "")).await;
    let cap = sc.capture(dialed(80)).await;
    let r = get(cap, "api.example.test", "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("TLS"), "{}", r.body);

    // With the CA: one plain HTTP request, one TLS-originated response.
    let extra = format!("        caCertificates: {}\n", ca_file.display());
    sc.reconfigure(&origination_yaml(&srv, &extra)).await;
    let r = get(cap, "api.example.test", "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from secure\n"));

    // subjectAltNames the certificate does not have: refused.
    let extra2 = format!("{extra}        subjectAltNames: [other.example.test]\n");
    sc.reconfigure(&origination_yaml(&srv, &extra2)).await;
    assert_eq!(get(cap, "api.example.test", "/", &[]).await.status, 503);

    // insecureSkipVerify is honoured (and warned about at load time).
    sc.reconfigure(&origination_yaml(
        &srv,
        "        insecureSkipVerify: true\n",
    ))
    .await;
    assert_eq!(get(cap, "api.example.test", "/", &[]).await.status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn mutual_tls_origination_presents_the_client_certificate() {
    let ca = TestCa::new("origins").unwrap();
    let srv = tls_server("mtls", &ca, &["api.example.test"], Some(ca.ca_pem()));
    let dir = temp_dir("mtls");
    let client = ca.issue_client("sleep").unwrap();
    let (cert, key, cafile) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("ca.pem"));
    std::fs::write(&cert, &client.cert_pem).unwrap();
    std::fs::write(&key, &client.key_pem).unwrap();
    std::fs::write(&cafile, ca.ca_pem()).unwrap();
    let simple = origination_yaml(
        &srv,
        &format!("        caCertificates: {}\n", cafile.display()),
    );
    let sc = Sidecar::start(&simple).await;
    let cap = sc.capture(dialed(80)).await;
    // SIMPLE towards a server that requires a client certificate: refused.
    assert_ne!(get(cap, "api.example.test", "/", &[]).await.status, 200);
    let mutual = simple.replace("mode: SIMPLE", "mode: MUTUAL")
        + &format!(
            "        clientCertificate: {}\n        privateKey: {}\n",
            cert.display(),
            key.display()
        );
    sc.reconfigure(&mutual).await;
    let r = get(cap, "api.example.test", "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from mtls\n"));
    let _ = std::fs::remove_dir_all(dir);
}

fn passthrough_yaml(tls_port: u16, extra: &str) -> String {
    format!(
        "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {tls_port}}}}}]
{extra}"
    )
}

#[tokio::test]
async fn tls_passthrough_by_sni_and_registry_only_closes_unknown_tls() {
    let ca = TestCa::new("origins").unwrap();
    let srv = tls_server(
        "tls",
        &ca,
        &["api.example.test", "other.example.test"],
        None,
    );
    let dir = temp_dir("sni");
    let cafile = dir.join("ca.pem");
    std::fs::write(&cafile, ca.ca_pem()).unwrap();
    let sc = Sidecar::start(&passthrough_yaml(tls_port(&srv), "")).await;
    // The application dialed some address on 443; the ServiceEntry's endpoint is the server.
    let cap = sc.capture(dialed(443)).await;
    let connect_to = |host: &str| format!("{host}:443:127.0.0.1:{}", cap.port());
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &connect_to("api.example.test"),
        "https://api.example.test/",
    ])
    .await;
    assert_eq!(
        (code, body.as_str()),
        (0, "hello from tls\n"),
        "registered SNI passes through, end-to-end TLS"
    );
    // An SNI with no ServiceEntry under REGISTRY_ONLY: the connection is closed during the
    // handshake — curl exit 35, as in the istio.io task.
    let (code, _) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &connect_to("other.example.test"),
        "https://other.example.test/",
    ])
    .await;
    assert_eq!(code, 35);
    let m = sc.running.proxy.metrics.encode();
    assert!(
        m.contains("egret_outbound_connections_total{outcome=\"blackhole\",protocol=\"tls\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("egret_outbound_connections_total{outcome=\"routed\",protocol=\"tls\"} 1"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn allow_any_passes_tls_and_tcp_through() {
    let ca = TestCa::new("origins").unwrap();
    let srv = tls_server("tls", &ca, &["unknown.example.test"], None);
    let dir = temp_dir("allow");
    let cafile = dir.join("ca.pem");
    std::fs::write(&cafile, ca.ca_pem()).unwrap();
    let sc = Sidecar::start(&passthrough_yaml(1, "").replace("REGISTRY_ONLY", "ALLOW_ANY")).await;
    let cap = sc.capture(srv.tls_addrs()[0]).await;
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("unknown.example.test:443:127.0.0.1:{}", cap.port()),
        "https://unknown.example.test/",
    ])
    .await;
    assert_eq!((code, body.as_str()), (0, "hello from tls\n"));
    // Opaque TCP (a server-first protocol: the client waits for a banner).
    let banner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = banner.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = banner.accept().await {
            let _ = s.write_all(b"220 banner\r\n").await;
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).await.is_ok() {
                let _ = s.write_all(&b).await;
            }
        }
    });
    let cap = sc.capture(baddr).await;
    let mut c = tokio::net::TcpStream::connect(cap).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"220 banner\r\n");
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"ping");
    let m = sc.running.proxy.metrics.encode();
    assert!(
        m.contains("egret_outbound_connections_total{outcome=\"passthrough\",protocol=\"tls\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("egret_outbound_connections_total{outcome=\"passthrough\",protocol=\"tcp\"} 1"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn registry_only_closes_unknown_tcp_and_routes_tcp_by_address() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let eaddr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 5];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    // A TCP ServiceEntry with an address: connections to that address are routed to its
    // endpoint; others on the port are blackholed.
    let yaml = format!(
        "---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example.test]
  addresses: [203.0.113.5/32]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {}}}}}]
",
        eaddr.port()
    );
    let sc = Sidecar::start(&yaml).await;
    let to_db = sc.capture("203.0.113.5:5432".parse().unwrap()).await;
    let mut c = tokio::net::TcpStream::connect(to_db).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"hello");
    let elsewhere = sc.capture("203.0.113.6:5432".parse().unwrap()).await;
    let mut c = tokio::net::TcpStream::connect(elsewhere).await.unwrap();
    let _ = c.write_all(b"hello").await;
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "blackholed: closed without a byte");
}

#[tokio::test]
async fn connections_to_the_proxy_itself_are_refused() {
    let sc = Sidecar::start("").await;
    let own = sc.explicit();
    let cap = sc.capture(own).await;
    let mut c = tokio::net::TcpStream::connect(cap).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        sc.running
            .proxy
            .metrics
            .encode()
            .contains("outcome=\"loop\"")
    );
}

fn two_versions(a_port: u16, body: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {a_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - match: [{{uri: {{exact: /version}}}}]
    directResponse: {{status: 200, body: {{string: {body}}}}}
  - route: [{{destination: {{host: api.example.test}}}}]
"
    )
}

// Four clients loop as fast as they can on the test's single-threaded runtime, which the
// data plane shares: config reloads still land because the watcher runs on the sidecar's own
// control thread.
#[tokio::test]
async fn reload_under_load_loses_no_request_and_invalid_config_keeps_the_old_routes() {
    let srv = InProcessServer::start(
        None,
        TestServerConfig::new("a").plain("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let p = srv.plain_addrs()[0].port();
    let sc = Sidecar::start(&two_versions(p, "v0")).await;
    let cap = sc.capture(dialed(80)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut c = Client::connect(cap).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.try_request("GET", "api.example.test", "/", &[]).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    for i in 1..=50 {
        sc.reconfigure(&two_versions(p, &format!("v{i}"))).await;
    }
    assert_eq!(
        get(cap, "api.example.test", "/version", &[]).await.body,
        "v50"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during reload: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 50, "requests sent during the reloads: {total}");
    assert_eq!(sc.running.proxy.metrics.config_loaded.get(), 51);

    // Invalid configuration: rejected, counted, and v50 keeps serving.
    sc.reconfigure("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [\"*\"]\n").await;
    assert_eq!(sc.running.proxy.metrics.config_rejected.get(), 1);
    assert_eq!(
        get(cap, "api.example.test", "/version", &[]).await.body,
        "v50"
    );
    assert_eq!(get(cap, "api.example.test", "/", &[]).await.status, 200);
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish() {
    let srv = InProcessServer::start(
        None,
        TestServerConfig::new("a").plain("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let p = srv.plain_addrs()[0].port();
    let sc = Sidecar::start(&two_versions(p, "v0")).await;
    let proxy_addr = sc.explicit();
    let ready = sc.running.ready.clone();
    let in_flight = tokio::spawn(async move {
        let mut c = Client::connect(proxy_addr).await;
        c.request(
            "GET",
            "api.example.test",
            "http://api.example.test/delay/0.5",
            &[],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Sidecar { running, .. } = sc;
    let left = running.drain().await;
    assert!(
        !ready.load(std::sync::atomic::Ordering::Acquire),
        "not ready while draining"
    );
    assert_eq!(left, 0);
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "delayed 0.5\n"));
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(proxy_addr).await.is_err());
}
