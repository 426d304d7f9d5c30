//! In-process end-to-end: the remaining routing features — upgrades, sourceLabels,
//! VirtualService `tls` and `tcp` routes, endpoint weights.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use egret_testkit::ca::TestCa;
use egret_testkit::server::{InProcessServer, TestServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn server(name: &str) -> InProcessServer {
    InProcessServer::start(
        None,
        TestServerConfig::new(name).plain("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap()
}

fn se(name: &str, host: &str, port: u16, proto: &str, listen: u16) -> String {
    let pname = proto.to_ascii_lowercase();
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: {pname}, protocol: {proto}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{{pname}: {listen}}}}}]
"
    )
}

fn dialed(port: u16) -> SocketAddr {
    format!("203.0.113.80:{port}").parse().unwrap()
}

/// A server that answers an HTTP/1.1 upgrade with 101 and then echoes bytes, like a
/// WebSocket server after its handshake.
async fn upgrade_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let req = String::from_utf8_lossy(&got).to_ascii_lowercase();
                if !req.contains("upgrade: websocket") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                    .await;
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgrades_are_passed_through() {
    let up = upgrade_server().await;
    let sc = Sidecar::start(&se("ws", "ws.example.test", 80, "HTTP", up.port())).await;
    let cap = sc.capture(dialed(80)).await;
    let mut c = tokio::net::TcpStream::connect(cap).await.unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c.write_all(b"frame-1").await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"frame-1");
}

#[tokio::test]
async fn source_labels_select_routes_for_the_workload() {
    let (a, b) = (server("a"), server("b"));
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  http:
  - match: [{{sourceLabels: {{app: payments}}}}]
    route: [{{destination: {{host: a.svc.test}}}}]
  - route: [{{destination: {{host: b.svc.test}}}}]
",
        se(
            "api",
            "api.example.test",
            80,
            "HTTP",
            a.plain_addrs()[0].port()
        ),
        se("sa", "a.svc.test", 80, "HTTP", a.plain_addrs()[0].port()),
        se("sb", "b.svc.test", 80, "HTTP", b.plain_addrs()[0].port()),
    );
    let payments = Sidecar::start_with(&yaml, &[("app", "payments")]).await;
    let other = Sidecar::start_with(&yaml, &[("app", "web")]).await;
    let cap = payments.capture(dialed(80)).await;
    assert_eq!(
        get(cap, "api.example.test", "/", &[]).await.body,
        "hello from a\n"
    );
    let cap = other.capture(dialed(80)).await;
    assert_eq!(
        get(cap, "api.example.test", "/", &[]).await.body,
        "hello from b\n"
    );
}

#[tokio::test]
async fn virtual_service_tls_route_by_sni_and_tcp_route_by_subnet() {
    let ca = TestCa::new("origins").unwrap();
    let firewall = InProcessServer::start(
        None,
        TestServerConfig::new("firewall").tls(
            "127.0.0.1:0".parse().unwrap(),
            ca.issue_server(&["en.wikipedia.test"]).unwrap(),
        ),
    )
    .unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let eport = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            let _ = s.write_all(b"via-tcp-route").await;
        }
    });
    // Sample 15's shape: SNI `*.wikipedia.test` sent to an internal "egress firewall"; and a
    // tcp route for 203.0.113.0/24:9000 to an echo service.
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
metadata: {{name: wikipedia}}
spec:
  hosts: [wikipedia.test, \"*.wikipedia.test\"]
  ports: [{{number: 443, name: https, protocol: TLS}}]
  resolution: NONE
{}{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-tcp}}
spec:
  hosts: [ext-tcp.example.test]
  addresses: [203.0.113.0/24]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routing}}
spec:
  hosts: [wikipedia.test, \"*.wikipedia.test\", ext-tcp.example.test]
  tls:
  - match: [{{sniHosts: [wikipedia.test, \"*.wikipedia.test\"]}}]
    route: [{{destination: {{host: firewall.internal.test}}}}]
  tcp:
  - match: [{{port: 9000, destinationSubnets: [203.0.113.0/25]}}]
    route: [{{destination: {{host: echo.internal.test}}}}]
",
        se(
            "fw",
            "firewall.internal.test",
            443,
            "TLS",
            firewall.tls_addrs()[0].port()
        ),
        se("echo", "echo.internal.test", 9000, "TCP", eport),
    );
    let sc = Sidecar::start(&yaml).await;
    let dir = temp_dir("vs-tls");
    let cafile = dir.join("ca.pem");
    std::fs::write(&cafile, ca.ca_pem()).unwrap();
    let cap = sc.capture(dialed(443)).await;
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("en.wikipedia.test:443:127.0.0.1:{}", cap.port()),
        "https://en.wikipedia.test/",
    ])
    .await;
    assert_eq!((code, body.as_str()), (0, "hello from firewall\n"));
    // TCP to 203.0.113.7:9000 matches the route's subnet; 203.0.113.200 is in the
    // ServiceEntry's range but not the route's, so it gets the ServiceEntry's own
    // destination (resolution NONE: the original destination, which refuses here).
    let cap = sc.capture("203.0.113.7:9000".parse().unwrap()).await;
    let mut c = tokio::net::TcpStream::connect(cap).await.unwrap();
    let mut buf = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"via-tcp-route");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn endpoint_weights_shape_traffic() {
    let (a, b) = (server("a"), server("b"));
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
  - {{address: 127.0.0.1, weight: 3, ports: {{http: {}}}}}
  - {{address: 127.0.0.1, weight: 1, ports: {{http: {}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
",
        a.plain_addrs()[0].port(),
        b.plain_addrs()[0].port()
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed(80)).await;
    let mut cl = Client::connect(cap).await;
    let mut to_a = 0;
    for _ in 0..400 {
        if cl.request("GET", "api.example.test", "/", &[]).await.body == "hello from a\n" {
            to_a += 1;
        }
    }
    assert_eq!(to_a, 300, "weighted round robin 3:1");
}
