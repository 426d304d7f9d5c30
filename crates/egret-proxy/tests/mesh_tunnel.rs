//! In-process end-to-end: the mesh tunnel between a sidecar and an egress gateway — mutual TLS
//! with SPIFFE identities both ways, HTTP as HTTP/2 requests, app-originated TLS and raw TCP as
//! CONNECT streams — and what the gateway refuses: direct clients, certificates from another CA,
//! expired ones, an unexpected gateway identity, a CONNECT whose inner SNI names another host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::mesh::*;
use common::*;
use egret_identity::{BadSvid, Ca, IdentityStore, SpiffeId};
use egret_testkit::ca::TestCa;
use egret_testkit::server::InProcessServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway (mesh identity `gw_identity`, no direct clients) and a sidecar (identity
/// `sc_identity`) configured to reach it.
async fn pair(
    ext: &InProcessServer,
    gw_identity: &Path,
    sc_identity: Option<&Path>,
    gw_sa: Option<&str>,
) -> (Sidecar, Sidecar) {
    let gw = Sidecar::gateway_mesh(
        &config(ext, [1, 2, 3], gw_sa),
        LABELS,
        &[80, 443, 3306],
        Some(gw_identity),
        false,
    )
    .await;
    let ports = [
        gw.addr(80).port(),
        gw.addr(443).port(),
        gw.addr(3306).port(),
    ];
    let sc = Sidecar::start_mesh(&config(ext, ports, gw_sa), &[], sc_identity).await;
    (gw, sc)
}

fn write_ca(ca: &TestCa) -> (PathBuf, PathBuf) {
    let dir = temp_dir("ext-ca");
    let f = dir.join("ca.pem");
    std::fs::write(&f, ca.ca_pem()).unwrap();
    (dir, f)
}

#[tokio::test]
async fn http_tls_and_tcp_go_through_the_tunnel() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let (gw, sc) = pair(&ext, &mesh.gateway(), Some(&mesh.sidecar()), None).await;

    // HTTP: sidecar → (HTTP/2 over mTLS) → gateway → cnn.test; the gateway's route adds its
    // header, so the request really went through the gateway.
    let shim = sc.capture("203.0.113.10:80".parse().unwrap()).await;
    for _ in 0..3 {
        let r = get(shim, "cnn.test", "/headers", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.contains("x-egress-test: handled-by-egress-gateway"),
            "{}",
            r.body
        );
        // Mesh-internal headers do not leave the mesh.
        assert!(!r.body.contains("x-forwarded-client-cert"), "{}", r.body);
    }
    assert_eq!(gw.running.proxy.metrics.request_count("routed"), 3);

    // App-originated TLS: a CONNECT stream, passed through by SNI at the gateway.
    let tls_shim = sc.capture("203.0.113.10:443".parse().unwrap()).await;
    let (dir, cafile) = write_ca(&ext_ca);
    let (code, body) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("cnn.test:443:127.0.0.1:{}", tls_shim.port()),
        "https://cnn.test/",
    ])
    .await;
    assert_eq!((code, body.as_str()), (0, "hello from cnn\n"));

    // Raw TCP: a CONNECT stream to the gateway's TCP server (the bytes happen to be HTTP).
    let tcp_shim = sc.capture("203.0.113.10:3306".parse().unwrap()).await;
    let mut s = tokio::net::TcpStream::connect(tcp_shim).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.contains("hello from cnn"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn gateway_refuses_clients_without_the_mesh_tunnel() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let (gw, _sc) = pair(&ext, &mesh.gateway(), Some(&mesh.sidecar()), None).await;
    // Plain HTTP straight to the gateway's port: closed without an answer.
    let mut s = tokio::net::TcpStream::connect(gw.addr(80)).await.unwrap();
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: cnn.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    // TLS passthrough without the tunnel (a non-mesh client using the gateway as SNI proxy).
    let (dir, cafile) = write_ca(&ext_ca);
    let (code, _) = curl(&[
        "--cacert",
        cafile.to_str().unwrap(),
        "--connect-to",
        &format!("cnn.test:443:127.0.0.1:{}", gw.addr(443).port()),
        "https://cnn.test/",
    ])
    .await;
    assert_eq!(code, 35);
    assert_eq!(
        gw.running
            .proxy
            .metrics
            .connection_count("refused_not_mesh", "tcp"),
        2
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// What a tunnel handshake with `client_identity` against the gateway at `addr` gives.
async fn tunnel_with(
    client_identity: &Path,
    addr: std::net::SocketAddr,
    authority: &str,
) -> Result<hyper::upgrade::Upgraded, String> {
    let store = IdentityStore::load(client_identity).unwrap();
    let gw_id = SpiffeId::workload("cluster.local", "istio-system", GW_SA).unwrap();
    let config = Arc::new(
        store
            .client_config([gw_id], &[egret_proxy::mesh::MESH_ALPN.as_bytes()])
            .unwrap(),
    );
    egret_proxy::upstream::Upstreams::new()
        .tunnel(addr, Duration::from_secs(5), &config, "gw", authority)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn gateway_refuses_bad_client_certificates() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let (gw, _sc) = pair(&ext, &mesh.gateway(), Some(&mesh.sidecar()), None).await;
    let addr = gw.addr(443);
    // The real identity works.
    assert!(
        tunnel_with(&mesh.sidecar(), addr, "cnn.test:443")
            .await
            .is_ok()
    );
    // Another CA: same names, wrong root. The client trusts only its own root, so write the
    // mesh root next to the foreign leaf: the gateway's verifier is what must say no.
    let other_dir = temp_dir("other-ca");
    let other = Ca::init(other_dir.join("ca"), "cluster.local").unwrap();
    let foreign = other_dir.join("foreign");
    other
        .issue("default", "sleep", Duration::from_secs(3600))
        .unwrap()
        .write(&foreign)
        .unwrap();
    std::fs::write(foreign.join("root-cert.pem"), mesh.ca.trust_bundle_pem()).unwrap();
    // Expired, from the right CA.
    let expired = mesh.dir.join("expired");
    mesh.ca
        .issue_bad("default", "sleep", BadSvid::Expired)
        .unwrap()
        .write(&expired)
        .unwrap();
    let before = gw
        .running
        .proxy
        .metrics
        .connection_count("refused_mesh_tls", "tls");
    assert!(tunnel_with(&foreign, addr, "cnn.test:443").await.is_err());
    // IdentityStore refuses to load an expired leaf of its own; use the raw files.
    let r = expired_tunnel(&expired, &mesh, addr).await;
    assert!(r.is_err(), "expired client certificate accepted");
    let after = gw
        .running
        .proxy
        .metrics
        .connection_count("refused_mesh_tls", "tls");
    assert_eq!(after - before, 2);
    let _ = std::fs::remove_dir_all(other_dir);
}

/// A TLS 1.3 client presenting the (expired) chain in `dir` with the mesh ALPN.
async fn expired_tunnel(dir: &Path, mesh: &Mesh, addr: std::net::SocketAddr) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("cert-chain.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(mesh.ca.trust_bundle_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    // The gateway's SVID has no DNS name; skip server verification (this test is about the
    // gateway checking us).
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = egret_identity::crypto_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![egret_proxy::mesh::MESH_ALPN.as_bytes().to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gw").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server's verdict on our certificate arrives after our Finished.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

#[tokio::test]
async fn sidecar_refuses_an_unexpected_gateway_identity() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    // The gateway runs as another service account than the one the Service names.
    let impostor = mesh.issue("impostor", "istio-system", "impostor");
    let (_gw, sc) = pair(&ext, &impostor, Some(&mesh.sidecar()), None).await;
    let shim = sc.capture("203.0.113.10:80".parse().unwrap()).await;
    let r = get(shim, "cnn.test", "/headers", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("unexpected_identity")
            || r.body.contains("UnexpectedIdentity")
            || r.body.contains("expected one of"),
        "{}",
        r.body
    );
    // The endpoint's serviceAccount names the identity to expect: then it is accepted.
    let (_gw2, sc2) = pair(&ext, &impostor, Some(&mesh.sidecar()), Some("impostor")).await;
    let shim2 = sc2.capture("203.0.113.10:80".parse().unwrap()).await;
    assert_eq!(get(shim2, "cnn.test", "/headers", &[]).await.status, 200);
}

#[tokio::test]
async fn sidecar_without_identity_answers_503() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let (_gw, sc) = pair(&ext, &mesh.gateway(), None, None).await;
    let shim = sc.capture("203.0.113.10:80".parse().unwrap()).await;
    let r = get(shim, "cnn.test", "/headers", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("mesh identity"), "{}", r.body);
}

#[tokio::test]
async fn connect_authority_must_match_the_inner_sni() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let (gw, _sc) = pair(&ext, &mesh.gateway(), Some(&mesh.sidecar()), None).await;
    let client = ext_ca.rustls_client_config().unwrap();
    // CONNECT cnn.test, TLS inside for cnn.test: served.
    let up = tunnel_with(&mesh.sidecar(), gw.addr(443), "cnn.test:443")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("cnn.test").unwrap();
    let ok = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, hyper_util::rt::TokioIo::new(up))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    // CONNECT other.test, TLS inside names cnn.test: refused (the stream is closed).
    let up = tunnel_with(&mesh.sidecar(), gw.addr(443), "other.test:443")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("cnn.test").unwrap();
    let bad = tokio_rustls::TlsConnector::from(client)
        .connect(name, hyper_util::rt::TokioIo::new(up))
        .await;
    assert!(bad.is_err(), "CONNECT other.test carried TLS for cnn.test");
}

#[tokio::test]
async fn a_client_stalling_mid_handshake_is_closed() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let (gw, _sc) = pair(&ext, &mesh.gateway(), Some(&mesh.sidecar()), None).await;
    // A real ClientHello offering the tunnel's ALPN, then silence.
    let store = IdentityStore::load(mesh.sidecar()).unwrap();
    let gw_id = SpiffeId::workload("cluster.local", "istio-system", GW_SA).unwrap();
    let config = store
        .client_config([gw_id], &[egret_proxy::mesh::MESH_ALPN.as_bytes()])
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("gw").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut s = tokio::net::TcpStream::connect(gw.addr(443)).await.unwrap();
    s.write_all(&hello).await.unwrap();
    // The gateway answers its part of the handshake, then gives up on us (hello timeout, 5 s).
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut sink)).await;
    assert!(r.is_ok(), "the gateway kept a stalled handshake open");
    assert!(
        gw.running
            .proxy
            .metrics
            .connection_count("refused_mesh_tls", "tls")
            >= 1
    );
}
