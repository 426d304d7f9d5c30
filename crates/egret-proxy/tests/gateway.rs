//! In-process end-to-end: the egress gateway role — Gateway servers bound by selector, HTTP
//! routing by the gateway leg of a VirtualService, TLS PASSTHROUGH by SNI, SIMPLE/MUTUAL
//! termination with file certificates followed by TLS origination, TCP, and the hygiene rules
//! that are already in place (no SNI, unknown SNI, unknown host).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use egret_testkit::ca::TestCa;
use egret_testkit::server::{InProcessServer, TestServerConfig};

const LABELS: &[(&str, &str)] = &[("istio", "egressgateway")];

fn external(name: &str, ca: &TestCa, hosts: &[&str]) -> InProcessServer {
    InProcessServer::start(
        None,
        TestServerConfig::new(name)
            .plain("127.0.0.1:0".parse().unwrap())
            .tls(
                "127.0.0.1:0".parse().unwrap(),
                ca.issue_server(hosts).unwrap(),
            ),
    )
    .unwrap()
}

/// The external service as a STATIC ServiceEntry: port 80 -> its plain listener, 443 -> TLS.
fn external_se(host: &str, srv: &InProcessServer) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}, https: {}}}}}]
",
        srv.plain_addrs()[0].port(),
        srv.tls_addrs()[0].port(),
        name = host.replace('.', "-"),
    )
}

#[tokio::test]
async fn http_server_routes_the_gateway_leg() {
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn", &ca, &["cnn.test"]);
    // Sample 05's gateway side, hosts adapted; the Gateway binds by selector.
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [cnn.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  gateways: [istio-system/istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 80}}]
    route: [{{destination: {{host: cnn.test, port: {{number: 80}}}}}}]
    headers: {{request: {{add: {{x-egress-test: handled-by-egress-gateway}}}}}}
",
        external_se("cnn.test", &cnn)
    );
    let gw = Sidecar::gateway(&yaml, LABELS, &[80]).await;
    let r = get(gw.addr(80), "cnn.test", "/headers", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("x-egress-test: handled-by-egress-gateway"),
        "{}",
        r.body
    );
    // Hosts the gateway does not serve: 404 (NR), never passed through.
    assert_eq!(get(gw.addr(80), "other.test", "/", &[]).await.status, 404);
    // A gateway with other labels binds nothing.
    let none = Sidecar::gateway(&yaml, &[("istio", "other")], &[]).await;
    assert!(none.running.gateway_ports().is_empty());
}

#[tokio::test]
async fn passthrough_routes_by_sni_and_refuses_no_sni_and_unknown_sni() {
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn-tls", &ca, &["cnn.test"]);
    // Sample 06's gateway side.
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [cnn.test]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  gateways: [istio-system/istio-egressgateway]
  tls:
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 443, sniHosts: [cnn.test]}}]
    route: [{{destination: {{host: cnn.test, port: {{number: 443}}}}}}]
",
        external_se("cnn.test", &cnn)
    );
    let gw = Sidecar::gateway(&yaml, LABELS, &[443]).await;
    let dir = temp_dir("gw-ca");
    let cafile = dir.join("ca.pem");
    std::fs::write(&cafile, ca.ca_pem()).unwrap();
    let port = gw.addr(443).port();
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("cnn.test:443:127.0.0.1:{port}"),
        "https://cnn.test/",
    ])
    .await;
    assert_eq!((code, body.as_str()), (0, "hello from cnn-tls\n"));
    // Unknown SNI: closed during the handshake.
    let (code, _) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("evil.test:443:127.0.0.1:{port}"),
        "https://evil.test/",
    ])
    .await;
    assert_eq!(code, 35);
    // No SNI (an IP literal URL sends none): refused.
    let (code, _) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        &format!("https://127.0.0.1:{port}/"),
    ])
    .await;
    assert_eq!(code, 35);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn simple_termination_then_tls_origination() {
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn-origin", &ca, &["cnn.test"]);
    let dir = temp_dir("gw-simple");
    let gw_cert = ca.issue_server(&["cnn.test"]).unwrap();
    let (cert, key, cafile) = (dir.join("gw.pem"), dir.join("gw.key"), dir.join("ca.pem"));
    std::fs::write(&cert, &gw_cert.cert_pem).unwrap();
    std::fs::write(&key, &gw_cert.key_pem).unwrap();
    std::fs::write(&cafile, ca.ca_pem()).unwrap();
    // Sample 10's gateway side with SIMPLE file certificates in place of ISTIO_MUTUAL: TLS is
    // terminated at the gateway, the request routed to cnn.test:443, and TLS originated again.
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [cnn.test]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  gateways: [istio-system/istio-egressgateway]
  http:
  - route: [{{destination: {{host: cnn.test, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate}}
spec:
  host: cnn.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
",
        external_se("cnn.test", &cnn),
        cert = cert.display(),
        key = key.display(),
        ca = cafile.display(),
    );
    let gw = Sidecar::gateway(&yaml, LABELS, &[443]).await;
    let port = gw.addr(443).port();
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("cnn.test:443:127.0.0.1:{port}"),
        "https://cnn.test/headers",
    ])
    .await;
    assert_eq!(code, 0, "{body}");
    // The external server saw a request over its TLS listener, from the gateway.
    assert!(body.contains("GET /headers"), "{body}");
    assert!(cnn.requests() >= 1);
    // Session resumption (Envoy's default stateless tickets): the first connection is a full
    // handshake and leaves the client a ticket; the next one resumes with it.
    let client = ca.rustls_client_config().unwrap();
    let (kind, reply) = get_over_tls(&client, port, "cnn.test").await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let (kind, reply) = get_over_tls(&client, port, "cnn.test").await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One `GET /` with `Connection: close` over TLS to `127.0.0.1:port` with SNI `host`: the kind
/// of handshake and the whole reply (reading to the end also takes in the session ticket).
async fn get_over_tls(
    client: &std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    host: &str,
) -> (rustls::HandshakeKind, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    // A server that closes without close_notify ends the read with an error after the reply.
    let _ = tls.read_to_end(&mut reply).await;
    (kind, String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test]
async fn mutual_server_requires_a_client_certificate() {
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn-m", &ca, &["cnn.test"]);
    let dir = temp_dir("gw-mutual");
    let gw_cert = ca.issue_server(&["cnn.test"]).unwrap();
    let client = ca.issue_client("caller").unwrap();
    let p = |n: &str| dir.join(n);
    std::fs::write(p("gw.pem"), &gw_cert.cert_pem).unwrap();
    std::fs::write(p("gw.key"), &gw_cert.key_pem).unwrap();
    std::fs::write(p("ca.pem"), ca.ca_pem()).unwrap();
    std::fs::write(p("c.pem"), &client.cert_pem).unwrap();
    std::fs::write(p("c.key"), &client.key_pem).unwrap();
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [cnn.test]
    tls: {{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  gateways: [istio-system/gw]
  http:
  - route: [{{destination: {{host: cnn.test, port: {{number: 80}}}}}}]
",
        external_se("cnn.test", &cnn),
        p("gw.pem").display(),
        p("gw.key").display(),
        p("ca.pem").display(),
    );
    let gw = Sidecar::gateway(&yaml, LABELS, &[443]).await;
    let port = gw.addr(443).port();
    let connect_to = format!("cnn.test:443:127.0.0.1:{port}");
    let cafile = p("ca.pem");
    let base = [
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        connect_to.as_str(),
    ];
    let (code, _) = curl(&[&base[..], &["https://cnn.test/"]].concat()).await;
    assert_ne!(code, 0, "no client certificate: refused");
    let (cert, key) = (p("c.pem"), p("c.key"));
    let (code, body) = curl(
        &[
            &base[..],
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "https://cnn.test/",
            ],
        ]
        .concat(),
    )
    .await;
    assert_eq!((code, body.as_str()), (0, "hello from cnn-m\n"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Egress hygiene at the gateway: Host must match the SNI of the TLS it terminated (421),
/// an IP literal is not accepted as SNI, mesh-internal headers do not leave the mesh, and a
/// name resolved at the gateway may not point into loopback (DNS rebinding).
#[tokio::test]
async fn egress_hygiene() {
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn-h", &ca, &["cnn.test"]);
    let dir = temp_dir("gw-hygiene");
    let gw_cert = ca.issue_server(&["cnn.test", "evil.test"]).unwrap();
    let p = |n: &str| dir.join(n);
    std::fs::write(p("gw.pem"), &gw_cert.cert_pem).unwrap();
    std::fs::write(p("gw.key"), &gw_cert.key_pem).unwrap();
    std::fs::write(p("ca.pem"), ca.ca_pem()).unwrap();
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: local}}
spec:
  hosts: [rebind.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: localhost, ports: {{http: {}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [cnn.test, evil.test]
    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [cnn.test, rebind.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test, rebind.test]
  gateways: [istio-system/gw]
  http:
  - match: [{{authority: {{exact: rebind.test}}}}]
    route: [{{destination: {{host: rebind.test, port: {{number: 80}}}}}}]
  - route: [{{destination: {{host: cnn.test, port: {{number: 80}}}}}}]
",
        external_se("cnn.test", &cnn),
        cnn.plain_addrs()[0].port(),
        p("gw.pem").display(),
        p("gw.key").display(),
    );
    let gw = Sidecar::gateway(&yaml, LABELS, &[80, 443]).await;
    let port = gw.addr(443).port();
    let cafile = p("ca.pem");
    // TLS for cnn.test, request for evil.test (both served names): 421.
    let (code, out) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("cnn.test:443:127.0.0.1:{port}"),
        "-H",
        "Host: evil.test",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "https://cnn.test/",
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "421"));
    // The matching Host works.
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("cnn.test:443:127.0.0.1:{port}"),
        "https://cnn.test/",
    ])
    .await;
    assert_eq!((code, body.as_str()), (0, "hello from cnn-h\n"));
    // An IP literal as SNI: the handshake is refused.
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "203.0.113.9",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("no peer certificate available") && text.contains("read 0 bytes"),
        "{text}"
    );
    assert!(
        gw.running
            .proxy
            .metrics
            .encode()
            .contains("outcome=\"bad_request\",protocol=\"tls\"")
    );
    // Mesh-internal headers are removed on the way out.
    let r = get(
        gw.addr(80),
        "cnn.test",
        "/headers",
        &[
            ("x-envoy-peer-metadata", "secret"),
            ("x-forwarded-client-cert", "By=spiffe://x"),
            ("x-trace", "keep"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("x-envoy-peer-metadata") && !r.body.contains("x-forwarded-client-cert"),
        "{}",
        r.body
    );
    assert!(r.body.contains("x-trace: keep"), "{}", r.body);
    // rebind.test's endpoint name resolves to loopback: the gateway refuses to go there
    // (DNS rebinding), though the same configuration works at a sidecar.
    let r = get(gw.addr(80), "rebind.test", "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("forbidden ranges"), "{}", r.body);
    let _ = std::fs::remove_dir_all(dir);
}

/// cnn.test behind the egress gateway, with an HTTP server on each of `ports`.
fn cnn_on_ports(cnn: &InProcessServer, ports: &[u16]) -> String {
    let servers: String = ports
        .iter()
        .map(|p| {
            format!(
                "  - port: {{number: {p}, name: http-{p}, protocol: HTTP}}\n    hosts: [cnn.test]\n"
            )
        })
        .collect();
    format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
{servers}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  gateways: [istio-system/istio-egressgateway]
  http:
  - route: [{{destination: {{host: cnn.test, port: {{number: 80}}}}}}]
",
        external_se("cnn.test", cnn)
    )
}

#[tokio::test]
async fn reload_adds_and_removes_server_ports() {
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn-reload", &ca, &["cnn.test"]);
    let yaml = |port: u16| cnn_on_ports(&cnn, &[port]);
    let gw = Sidecar::gateway(&yaml(80), LABELS, &[80, 8080]).await;
    let old = gw.addr(80);
    assert_eq!(get(old, "cnn.test", "/", &[]).await.status, 200);
    // The server moves to 8080: a listener appears there, the one for 80 closes.
    gw.reconfigure(&yaml(8080)).await;
    let mut ports = Vec::new();
    for _ in 0..100 {
        ports = gw.running.gateway_ports();
        if ports.iter().map(|(p, _)| *p).collect::<Vec<_>>() == [8080] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ports.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [8080]);
    assert_eq!(get(gw.addr(8080), "cnn.test", "/", &[]).await.status, 200);
    assert!(tokio::net::TcpStream::connect(old).await.is_err());
}

/// A Gateway server port added by a reload is served by every data-plane thread, as the ports
/// of the first snapshot are: each thread gets its own `SO_REUSEPORT` socket on the new port.
#[tokio::test]
async fn port_added_by_reload_is_served_on_every_thread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("ext").unwrap();
    let cnn = external("cnn-threads", &ca, &["cnn.test"]);
    let yaml = |ports: &[u16]| cnn_on_ports(&cnn, ports);
    let (worker, _stop) = worker_thread(1);
    let gw = Sidecar::gateway_workers(
        &yaml(&[80]),
        LABELS,
        &[80, 8080],
        None,
        true,
        std::slice::from_ref(&worker),
    )
    .await;
    gw.reconfigure(&yaml(&[80, 8080])).await;
    let mut added = None;
    for _ in 0..100 {
        added = gw
            .running
            .gateway_ports()
            .into_iter()
            .find(|(p, _)| *p == 8080);
        if added.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let addr = added.expect("a listener for the added port").1;
    let here = tokio::runtime::Handle::current();
    let (here0, worker0) = (
        here.metrics().num_alive_tasks(),
        worker.metrics().num_alive_tasks(),
    );
    // 32 keep-alive connections held open: the kernel spreads them over the sockets of the
    // port (all on one of two: probability 2^-31).
    let mut conns = Vec::new();
    for _ in 0..32 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: cnn.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        conns.push(c);
    }
    let (here1, worker1) = (
        here.metrics().num_alive_tasks(),
        worker.metrics().num_alive_tasks(),
    );
    assert!(
        here1 > here0 && worker1 > worker0,
        "connections on this runtime: {here0} -> {here1}, on the worker: {worker0} -> {worker1}"
    );
    drop(conns);
}
