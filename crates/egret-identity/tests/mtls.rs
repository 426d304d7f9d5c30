//! Real mTLS handshakes over loopback TCP between a gateway-like server (`MeshClientVerifier`)
//! and a sidecar-like client (`MeshServerVerifier`), with good and bad SVIDs, certificate
//! rotation and root rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use egret_identity::{
    BadSvid, Ca, IdentityStore, MeshServerVerifier, Reason, SpiffeId, Svid, TrustBundle, Usage,
    crypto_provider, inspect_leaf, io_rejection_reason, peer_spiffe_id,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/egress-gateway";
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const T: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "egret-mtls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the gateway saw for one connection.
#[derive(Debug)]
enum Seen {
    Accepted {
        id: SpiffeId,
        serial: Vec<u8>,
    },
    Rejected {
        reason: Option<Reason>,
        error: String,
    },
}

struct Gateway {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Gateway {
    /// Serve `config` on 127.0.0.1:0: report each handshake, then echo.
    async fn start(config: ServerConfig) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let certs = tls.get_ref().1.peer_certificates().unwrap_or(&[]);
                            let id = peer_spiffe_id(certs).unwrap();
                            let serial = inspect_leaf(&certs[0], Usage::Client).unwrap().serial;
                            let _ = tx.send(Seen::Accepted { id, serial });
                            let mut buf = [0u8; 64];
                            loop {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if tls.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Seen::Rejected {
                                reason: io_rejection_reason(&e),
                                error: e.to_string(),
                            });
                        }
                    }
                });
            }
        });
        Gateway { addr, seen }
    }

    async fn next(&mut self) -> Seen {
        timeout(T, self.seen.recv()).await.unwrap().unwrap()
    }

    async fn expect_accepted(&mut self) -> (SpiffeId, Vec<u8>) {
        match self.next().await {
            Seen::Accepted { id, serial } => (id, serial),
            other => panic!("expected an accepted handshake, got {other:?}"),
        }
    }

    async fn expect_rejected(&mut self, want: Reason) {
        match self.next().await {
            Seen::Rejected { reason, error } => {
                assert_eq!(reason, Some(want), "gateway error: {error}");
                assert!(
                    error.contains(want.code()) || want == Reason::PeerCertMissing,
                    "error text does not name the reason: {error}"
                );
            }
            other => panic!("expected a rejection ({want}), got {other:?}"),
        }
    }
}

async fn dial(config: ClientConfig, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("egress-gateway.istio-system.svc").unwrap();
    timeout(T, TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .map_err(std::io::Error::other)?
}

async fn ping(tls: &mut TlsStream<TcpStream>) -> std::io::Result<()> {
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    timeout(T, tls.read_exact(&mut buf))
        .await
        .map_err(std::io::Error::other)??;
    assert_eq!(&buf, b"ping");
    Ok(())
}

fn server_serial(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    inspect_leaf(&certs[0], Usage::Server).unwrap().serial
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Write `svid` to `dir`, optionally with another trust bundle, and load it.
fn store(svid: &Svid, dir: &Path, roots_pem: Option<&str>) -> IdentityStore {
    let mut svid = svid.clone();
    if let Some(r) = roots_pem {
        svid.root_pem = r.to_owned();
    }
    svid.write(dir).unwrap();
    IdentityStore::load(dir).unwrap()
}

/// A sidecar client config built by hand, so that it can present certificates that
/// `IdentityStore` would refuse to load; `None` presents no certificate at all.
fn raw_client(svid: Option<&Svid>, roots_pem: &str, expected: &str) -> ClientConfig {
    let bundle = Arc::new(TrustBundle::from_pem(roots_pem.as_bytes()).unwrap());
    let verifier = Arc::new(MeshServerVerifier::new(bundle, [id(expected)]));
    let b = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match svid {
        Some(s) => {
            let chain: Vec<CertificateDer<'static>> = s.chain_der().unwrap();
            let key = PrivateKeyDer::from_pem_slice(s.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    }
}

struct Mesh {
    dir: TempDir,
    ca: Ca,
    gateway: IdentityStore,
    sleep: IdentityStore,
}

fn mesh(tag: &str) -> Mesh {
    let dir = TempDir::new(tag);
    let ca = Ca::init(dir.join("ca"), "cluster.local").unwrap();
    let hour = Duration::from_secs(3600);
    let gw = ca.issue("istio-system", "egress-gateway", hour).unwrap();
    let sleep = ca.issue("default", "sleep", hour).unwrap();
    Mesh {
        gateway: store(&gw, &dir.join("gateway"), None),
        sleep: store(&sleep, &dir.join("sleep"), None),
        dir,
        ca,
    }
}

#[tokio::test]
async fn good_svids_handshake_and_the_gateway_learns_the_caller() {
    let m = mesh("good");
    let mut gw = Gateway::start(m.gateway.server_config(&[b"egret-mesh"]).unwrap()).await;
    let client = m
        .sleep
        .client_config([id(GATEWAY)], &[b"egret-mesh"])
        .unwrap();
    let mut tls = dial(client, gw.addr).await.unwrap();
    ping(&mut tls).await.unwrap();
    let (caller, _) = gw.expect_accepted().await;
    assert_eq!(caller.to_string(), SLEEP);
    assert_eq!(caller.principal(), "cluster.local/ns/default/sa/sleep");
    assert_eq!(caller.namespace(), Some("default"));
    assert_eq!(caller.service_account(), Some("sleep"));
    let conn = tls.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(&b"egret-mesh"[..]));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The client saw the gateway's identity.
    assert_eq!(
        peer_spiffe_id(conn.peer_certificates().unwrap())
            .unwrap()
            .to_string(),
        GATEWAY
    );
}

#[tokio::test]
async fn bad_clients_are_refused_each_with_its_own_reason() {
    let m = mesh("bad");
    let mut gw = Gateway::start(m.gateway.server_config(&[]).unwrap()).await;
    let root = m.ca.root_cert_pem().to_owned();

    // No client certificate.
    let mut tls = dial(raw_client(None, &root, GATEWAY), gw.addr)
        .await
        .unwrap();
    gw.expect_rejected(Reason::PeerCertMissing).await;
    assert!(ping(&mut tls).await.is_err());

    // A certificate from another CA (same trust domain, same names).
    let other_ca = Ca::init(m.dir.join("other-ca"), "cluster.local").unwrap();
    let foreign = other_ca
        .issue("default", "sleep", Duration::from_secs(600))
        .unwrap();
    let mut tls = dial(raw_client(Some(&foreign), &root, GATEWAY), gw.addr)
        .await
        .unwrap();
    gw.expect_rejected(Reason::UntrustedIssuer).await;
    assert!(ping(&mut tls).await.is_err());

    let cases = [
        (
            BadSvid::OtherTrustDomain("evil.example".into()),
            Reason::TrustDomainNotAllowed,
        ),
        (BadSvid::IsCa, Reason::LeafIsCa),
        (BadSvid::TwoUriSans, Reason::MultipleUriSans),
        (BadSvid::NoUriSan, Reason::NoUriSan),
        (BadSvid::NoPath, Reason::NoPath),
        (BadSvid::Expired, Reason::Expired),
        (BadSvid::NotYetValid, Reason::NotYetValid),
        (BadSvid::WrongKeyUsage, Reason::KeyUsage),
        (BadSvid::ServerAuthOnly, Reason::ExtKeyUsage),
    ];
    let mut seen_reasons = Vec::new();
    for (bad, want) in cases {
        let svid = m.ca.issue_bad("default", "sleep", bad.clone()).unwrap();
        let mut tls = dial(raw_client(Some(&svid), &root, GATEWAY), gw.addr)
            .await
            .unwrap_or_else(|e| panic!("{bad:?}: client handshake: {e}"));
        gw.expect_rejected(want).await;
        assert!(ping(&mut tls).await.is_err(), "{bad:?}: data flowed");
        seen_reasons.push(want);
    }
    seen_reasons.dedup();
    assert_eq!(seen_reasons.len(), 9, "distinct reasons");

    // And the gateway still serves good clients afterwards.
    let good = m.sleep.client_config([id(GATEWAY)], &[]).unwrap();
    let mut tls = dial(good, gw.addr).await.unwrap();
    ping(&mut tls).await.unwrap();
    gw.expect_accepted().await;
}

#[tokio::test]
async fn sidecar_refuses_a_gateway_with_an_unexpected_identity() {
    let m = mesh("unexpected");
    let mut gw = Gateway::start(m.gateway.server_config(&[]).unwrap()).await;
    let client = m
        .sleep
        .client_config(
            [id(
                "spiffe://cluster.local/ns/istio-system/sa/other-gateway",
            )],
            &[],
        )
        .unwrap();
    let err = dial(client, gw.addr).await.unwrap_err();
    assert_eq!(
        io_rejection_reason(&err),
        Some(Reason::UnexpectedIdentity),
        "{err}"
    );
    assert!(err.to_string().contains("unexpected_identity"), "{err}");
    assert!(err.to_string().contains(GATEWAY), "{err}");
    // The gateway saw the client abort; it never accepted anything.
    assert!(matches!(gw.next().await, Seen::Rejected { .. }));

    // A gateway certificate from another CA is refused as untrusted, even with the right id.
    let other_ca = Ca::init(m.dir.join("other-ca"), "cluster.local").unwrap();
    let impostor = other_ca
        .issue("istio-system", "egress-gateway", Duration::from_secs(600))
        .unwrap();
    let impostor = store(&impostor, &m.dir.join("impostor"), None);
    let gw2 = Gateway::start(
        impostor
            .server_config_for_trust_domains(["cluster.local"], &[])
            .unwrap(),
    )
    .await;
    let client = m.sleep.client_config([id(GATEWAY)], &[]).unwrap();
    let err = dial(client, gw2.addr).await.unwrap_err();
    assert_eq!(
        io_rejection_reason(&err),
        Some(Reason::UntrustedIssuer),
        "{err}"
    );
}

#[tokio::test]
async fn rotation_keeps_established_connections_and_new_handshakes_get_the_new_cert() {
    let m = mesh("rotate");
    let mut gw = Gateway::start(m.gateway.server_config(&[]).unwrap()).await;
    let client = m.sleep.client_config([id(GATEWAY)], &[]).unwrap();

    let old_gw_serial = m.gateway.leaf().serial.clone();
    let old_sleep_serial = m.sleep.leaf().serial.clone();
    let mut before = dial(client.clone(), gw.addr).await.unwrap();
    ping(&mut before).await.unwrap();
    assert_eq!(server_serial(&before), old_gw_serial);
    assert_eq!(gw.expect_accepted().await.1, old_sleep_serial);

    // Re-issue both identities with new keys and reload.
    let hour = Duration::from_secs(3600);
    let new_gw = m.ca.issue("istio-system", "egress-gateway", hour).unwrap();
    let new_sleep = m.ca.issue("default", "sleep", hour).unwrap();
    assert_ne!(new_gw.key_pem, m.gateway_key());
    new_gw.write(m.dir.join("gateway")).unwrap();
    new_sleep.write(m.dir.join("sleep")).unwrap();
    assert!(m.gateway.reload().unwrap());
    assert!(m.sleep.reload().unwrap());
    assert_eq!(m.gateway.leaf().serial, new_gw.serial().unwrap());

    // The established connection is untouched.
    for _ in 0..3 {
        ping(&mut before).await.unwrap();
    }
    assert_eq!(server_serial(&before), old_gw_serial);

    // A new handshake, with the same configs, presents the new certificates both ways.
    let mut after = dial(client, gw.addr).await.unwrap();
    ping(&mut after).await.unwrap();
    assert_eq!(server_serial(&after), new_gw.serial().unwrap());
    assert_eq!(gw.expect_accepted().await.1, new_sleep.serial().unwrap());
    ping(&mut before).await.unwrap();
}

impl Mesh {
    fn gateway_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway").join("key.pem")).unwrap()
    }
}

#[tokio::test]
async fn root_rotation_bundle_with_old_and_new_roots_accepts_both() {
    let dir = TempDir::new("roots");
    let old = Ca::init(dir.join("old"), "cluster.local").unwrap();
    let new = Ca::init(dir.join("new"), "cluster.local").unwrap();
    let hour = Duration::from_secs(3600);
    let old_only = old.root_cert_pem().to_owned();
    let both = format!("{}{}", old.root_cert_pem(), new.root_cert_pem());

    // The gateway starts trusting only the old root.
    let gw_store = store(
        &old.issue("istio-system", "egress-gateway", hour).unwrap(),
        &dir.join("gateway"),
        Some(&old_only),
    );
    let mut gw = Gateway::start(gw_store.server_config(&[]).unwrap()).await;
    let from_old = store(
        &old.issue("default", "sleep", hour).unwrap(),
        &dir.join("a"),
        Some(&both),
    );
    let from_new = store(
        &new.issue("default", "sleep", hour).unwrap(),
        &dir.join("b"),
        Some(&both),
    );
    let client_old = from_old.client_config([id(GATEWAY)], &[]).unwrap();
    let client_new = from_new.client_config([id(GATEWAY)], &[]).unwrap();

    let mut tls = dial(client_old.clone(), gw.addr).await.unwrap();
    ping(&mut tls).await.unwrap();
    gw.expect_accepted().await;
    let mut refused = dial(client_new.clone(), gw.addr).await.unwrap();
    gw.expect_rejected(Reason::UntrustedIssuer).await;
    assert!(ping(&mut refused).await.is_err());

    // Roll the gateway's bundle to old+new: both are accepted, the old connection lives on.
    std::fs::write(dir.join("gateway").join("root-cert.pem"), &both).unwrap();
    assert!(gw_store.reload().unwrap());
    assert_eq!(gw_store.trust_bundle().len(), 2);
    for client in [client_old.clone(), client_new.clone()] {
        let mut t = dial(client, gw.addr).await.unwrap();
        ping(&mut t).await.unwrap();
        let (caller, _) = gw.expect_accepted().await;
        assert_eq!(caller.to_string(), SLEEP);
    }
    ping(&mut tls).await.unwrap();

    // Then the gateway itself moves to a certificate from the new root: clients holding
    // old+new still accept it.
    let mut next = new.issue("istio-system", "egress-gateway", hour).unwrap();
    next.root_pem = both.clone();
    next.write(dir.join("gateway")).unwrap();
    assert!(gw_store.reload().unwrap());
    for client in [client_old, client_new] {
        let mut t = dial(client, gw.addr).await.unwrap();
        ping(&mut t).await.unwrap();
        assert_eq!(server_serial(&t), next.serial().unwrap());
        gw.expect_accepted().await;
    }
}
