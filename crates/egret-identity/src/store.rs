//! A proxy's identity directory (Istio's layout: `cert-chain.pem`, `key.pem`, `root-cert.pem`),
//! loaded into rustls and reloadable.
//!
//! The rustls configs built here resolve their certificate through an `ArcSwap<CertifiedKey>` and
//! verify peers against an `ArcSwap`ed [`TrustBundle`], so [`IdentityStore::reload`] (or
//! [`IdentityStore::watch`]) changes what *new* handshakes present and accept; established
//! connections keep their session untouched. Mesh configs are TLS 1.3 only and never resume
//! sessions (a resumed session would skip verification against the current bundle and would
//! keep presenting the old certificate).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::spiffe::SpiffeId;
use crate::verify::{
    BundleState, LeafInfo, MeshClientVerifier, MeshServerVerifier, TrustBundle, Usage,
    inspect_leaf, parse_pem_certs,
};
use crate::{IdentityError, crypto_provider, fsutil};

/// Leaf certificate followed by intermediates.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The leaf's private key.
pub const KEY_FILE: &str = "key.pem";
/// The trust bundle: one or more roots.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// The raw contents of the three files, to detect changes.
#[derive(PartialEq, Eq)]
struct Contents {
    chain: Vec<u8>,
    key: Vec<u8>,
    roots: Vec<u8>,
}

impl Contents {
    fn read(dir: &Path) -> Result<Contents, IdentityError> {
        Ok(Contents {
            chain: fsutil::read(&dir.join(CERT_CHAIN_FILE))?,
            key: fsutil::read(&dir.join(KEY_FILE))?,
            roots: fsutil::read(&dir.join(ROOT_CERT_FILE))?,
        })
    }
}

/// Everything parsed and validated from one set of files, ready to be installed.
struct Parsed {
    key: Arc<CertifiedKey>,
    leaf: Arc<LeafInfo>,
    bundle: BundleState,
}

fn parse(dir: &Path, c: &Contents) -> Result<Parsed, IdentityError> {
    let chain_path = dir.join(CERT_CHAIN_FILE);
    let chain = parse_pem_certs(&c.chain)
        .map_err(|e| IdentityError::bad_file(&chain_path, e.to_string()))?;
    let Some(leaf_der) = chain.first() else {
        return Err(IdentityError::bad_file(&chain_path, "no certificate"));
    };
    let leaf = inspect_leaf(leaf_der, Usage::Both)
        .map_err(|e| IdentityError::bad_file(&chain_path, e.to_string()))?;
    let key_path = dir.join(KEY_FILE);
    let key = PrivateKeyDer::from_pem_slice(&c.key)
        .map_err(|e| IdentityError::bad_file(&key_path, format!("private key PEM: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|e| {
        IdentityError::bad_file(&key_path, format!("does not match {CERT_CHAIN_FILE}: {e}"))
    })?;
    let roots_path = dir.join(ROOT_CERT_FILE);
    let roots = parse_pem_certs(&c.roots)
        .map_err(|e| IdentityError::bad_file(&roots_path, e.to_string()))?;
    let bundle =
        BundleState::new(roots).map_err(|e| IdentityError::bad_file(&roots_path, e.to_string()))?;
    Ok(Parsed {
        key: Arc::new(key),
        leaf: Arc::new(leaf),
        bundle,
    })
}

struct Inner {
    dir: PathBuf,
    key: Arc<ArcSwap<CertifiedKey>>,
    leaf: ArcSwap<LeafInfo>,
    bundle: Arc<TrustBundle>,
    /// Contents of the files currently installed; held while reloading so reloads serialize.
    installed: Mutex<Contents>,
}

/// A proxy's identity: its certificate and key, and the trust bundle, from an identity
/// directory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct IdentityStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("dir", &self.inner.dir)
            .field("spiffe_id", &self.spiffe_id().to_string())
            .field("expiry", &self.expiry())
            .finish_non_exhaustive()
    }
}

impl IdentityStore {
    /// Read `cert-chain.pem`, `key.pem` and `root-cert.pem` from `dir`. The leaf must be a valid
    /// X.509-SVID usable as client and server, and the key must match it.
    pub fn load(dir: impl AsRef<Path>) -> Result<IdentityStore, IdentityError> {
        let dir = dir.as_ref().to_owned();
        let contents = Contents::read(&dir)?;
        let parsed = parse(&dir, &contents)?;
        let bundle = Arc::new(TrustBundle::from_state(parsed.bundle));
        let store = IdentityStore {
            inner: Arc::new(Inner {
                dir,
                key: Arc::new(ArcSwap::new(parsed.key)),
                leaf: ArcSwap::new(parsed.leaf),
                bundle,
                installed: Mutex::new(contents),
            }),
        };
        store.warn_if_not_chained();
        Ok(store)
    }

    /// Our own certificate should chain to our own bundle; peers will reject it otherwise.
    fn warn_if_not_chained(&self) {
        let key = self.certified_key();
        let verifier = MeshServerVerifier::new(self.trust_bundle(), [self.spiffe_id()]);
        if let Some((leaf, rest)) = key.cert.split_first()
            && let Err(e) = verifier.verify(leaf, rest, rustls::pki_types::UnixTime::now())
        {
            tracing::warn!(
                dir = %self.inner.dir.display(),
                error = %e,
                "identity certificate does not validate against its own trust bundle"
            );
        }
    }

    /// The identity directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Our SPIFFE ID (of the current leaf).
    pub fn spiffe_id(&self) -> SpiffeId {
        self.inner.leaf.load().spiffe_id.clone()
    }

    /// The current leaf's notAfter (for expiry metrics and refresh scheduling).
    pub fn expiry(&self) -> SystemTime {
        self.inner.leaf.load().not_after
    }

    /// What the current leaf says (identity, validity, serial).
    pub fn leaf(&self) -> Arc<LeafInfo> {
        self.inner.leaf.load_full()
    }

    /// The current certificate chain and key.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.inner.key.load_full()
    }

    /// The trust bundle the verifiers of this store's configs read.
    pub fn trust_bundle(&self) -> Arc<TrustBundle> {
        self.inner.bundle.clone()
    }

    /// Re-read the directory. Returns `Ok(true)` when new files were installed, `Ok(false)` when
    /// nothing changed. On error (unreadable, half-written, key not matching the certificate,
    /// invalid SVID, empty bundle) the current identity stays in place.
    pub fn reload(&self) -> Result<bool, IdentityError> {
        let mut installed = self
            .inner
            .installed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let contents = Contents::read(&self.inner.dir)?;
        if contents == *installed {
            return Ok(false);
        }
        let parsed = parse(&self.inner.dir, &contents)?;
        // The bundle first, so that peers with the new roots are accepted by the time we present
        // a certificate from them.
        self.inner.bundle.install(parsed.bundle);
        self.inner.key.store(parsed.key);
        self.inner.leaf.store(parsed.leaf);
        *installed = contents;
        drop(installed);
        self.warn_if_not_chained();
        Ok(true)
    }

    /// Poll the directory every `poll` and [`reload`](Self::reload) on change. Runs forever;
    /// spawn it. A failed reload is logged (after it failed twice in a row, to ride over a
    /// writer that is between two files) and retried on the next poll.
    pub async fn watch(self, poll: Duration) {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut failures = 0u32;
        let mut last_error = String::new();
        loop {
            ticker.tick().await;
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.reload()).await {
                Ok(Ok(true)) => {
                    failures = 0;
                    let leaf = self.leaf();
                    tracing::info!(
                        dir = %self.inner.dir.display(),
                        spiffe_id = %leaf.spiffe_id,
                        roots = self.inner.bundle.len(),
                        "identity reloaded"
                    );
                }
                Ok(Ok(false)) => failures = 0,
                Ok(Err(e)) => {
                    failures += 1;
                    let msg = e.to_string();
                    if failures >= 2 && (failures == 2 || msg != last_error) {
                        tracing::warn!(
                            dir = %self.inner.dir.display(),
                            error = %msg,
                            "identity reload failed; keeping the current certificate"
                        );
                    }
                    last_error = msg;
                }
                Err(e) => tracing::warn!(error = %e, "identity reload task failed"),
            }
        }
    }

    /// A certificate resolver for servers that always presents the current certificate.
    pub fn server_cert_resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(SwapResolver(self.inner.key.clone()))
    }

    /// A certificate resolver for clients that always presents the current certificate.
    pub fn client_cert_resolver(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::new(SwapResolver(self.inner.key.clone()))
    }

    /// A server config (the gateway's mesh listener) requiring client SVIDs of our own trust
    /// domain.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, IdentityError> {
        let td = self.spiffe_id().trust_domain().to_owned();
        self.server_config_for_trust_domains([td], alpn)
    }

    /// A server config requiring client SVIDs of any of `trust_domains`.
    pub fn server_config_for_trust_domains<I, S>(
        &self,
        trust_domains: I,
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let verifier = MeshClientVerifier::new(self.trust_bundle(), trust_domains);
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(self.server_cert_resolver());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// A client config (a sidecar dialing the gateway) presenting our SVID and accepting only a
    /// server whose SPIFFE ID is in `expected`. The server name given to rustls is used for SNI
    /// only, never for verification.
    pub fn client_config(
        &self,
        expected: impl IntoIterator<Item = SpiffeId>,
        alpn: &[&[u8]],
    ) -> Result<ClientConfig, IdentityError> {
        let verifier = MeshServerVerifier::new(self.trust_bundle(), expected);
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.client_cert_resolver());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = Resumption::disabled();
        Ok(config)
    }
}

#[derive(Debug)]
struct SwapResolver(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ResolvesClientCert for SwapResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificates in a PEM file (helper for callers that load extra bundles).
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bytes = fsutil::read(path)?;
    parse_pem_certs(&bytes).map_err(|e| IdentityError::bad_file(path, e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ca::{BadSvid, Ca};
    use crate::testutil::TempDir;

    fn setup(tag: &str) -> (TempDir, Ca, PathBuf) {
        let dir = TempDir::new(tag);
        let ca = Ca::init(dir.join("ca"), "cluster.local").unwrap();
        let id_dir = dir.join("identity");
        ca.issue("default", "sleep", Duration::from_secs(3600))
            .unwrap()
            .write(&id_dir)
            .unwrap();
        (dir, ca, id_dir)
    }

    #[test]
    fn load_exposes_identity_expiry_and_bundle() {
        let (_d, _ca, id_dir) = setup("store-load");
        let store = IdentityStore::load(&id_dir).unwrap();
        assert_eq!(
            store.spiffe_id().to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        let left = store
            .expiry()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((3590..=3600).contains(&left), "{left}");
        assert_eq!(store.trust_bundle().len(), 1);
        assert_eq!(store.certified_key().cert.len(), 2);
        assert_eq!(store.dir(), id_dir);
        assert!(format!("{store:?}").contains("sa/sleep"));
    }

    #[test]
    fn load_fails_clearly() {
        let (d, ca, id_dir) = setup("store-bad");
        // Missing directory.
        let err = IdentityStore::load(d.join("nope")).unwrap_err();
        assert!(err.to_string().contains("cert-chain.pem"), "{err}");
        // Key of another SVID.
        let other = ca
            .issue("default", "other", Duration::from_secs(60))
            .unwrap();
        std::fs::write(id_dir.join(KEY_FILE), &other.key_pem).unwrap();
        let err = IdentityStore::load(&id_dir).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // A leaf that is not a valid SVID.
        ca.issue_bad("default", "sleep", BadSvid::TwoUriSans)
            .unwrap()
            .write(&id_dir)
            .unwrap();
        let err = IdentityStore::load(&id_dir).unwrap_err();
        assert!(err.to_string().contains("multiple_uri_sans"), "{err}");
        // An empty bundle.
        ca.issue("default", "sleep", Duration::from_secs(60))
            .unwrap()
            .write(&id_dir)
            .unwrap();
        std::fs::write(id_dir.join(ROOT_CERT_FILE), "").unwrap();
        let err = IdentityStore::load(&id_dir).unwrap_err();
        assert!(err.to_string().contains("root-cert.pem"), "{err}");
    }

    #[test]
    fn reload_swaps_only_on_change_and_keeps_the_old_identity_on_error() {
        let (_d, ca, id_dir) = setup("store-reload");
        let store = IdentityStore::load(&id_dir).unwrap();
        let first = store.leaf();
        assert!(!store.reload().unwrap());

        let next = ca
            .issue("default", "sleep", Duration::from_secs(7200))
            .unwrap();
        next.write(&id_dir).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.leaf().serial, next.serial().unwrap());
        assert_ne!(store.leaf().serial, first.serial);
        assert!(store.expiry() > first.not_after);
        // Resolvers made before the reload see the new certificate.
        let resolver = store.client_cert_resolver();
        let ck = resolver.resolve(&[], &[]).unwrap();
        assert_eq!(ck.cert[0], next.leaf_der().unwrap());

        // Half-written rotation: new chain, old key.
        let third = ca
            .issue("default", "sleep", Duration::from_secs(60))
            .unwrap();
        std::fs::write(id_dir.join(CERT_CHAIN_FILE), &third.cert_chain_pem).unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.leaf().serial, next.serial().unwrap());
        // ...completed.
        std::fs::write(id_dir.join(KEY_FILE), &third.key_pem).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.leaf().serial, third.serial().unwrap());
    }

    #[test]
    fn reload_replaces_the_trust_bundle() {
        let (d, ca, id_dir) = setup("store-roots");
        let store = IdentityStore::load(&id_dir).unwrap();
        let bundle = store.trust_bundle();
        assert_eq!(bundle.len(), 1);
        let new_ca = Ca::init(d.join("new-ca"), "cluster.local").unwrap();
        let both = format!("{}{}", ca.root_cert_pem(), new_ca.root_cert_pem());
        std::fs::write(id_dir.join(ROOT_CERT_FILE), both).unwrap();
        assert!(store.reload().unwrap());
        // The same Arc the verifiers hold now has two roots.
        assert_eq!(bundle.len(), 2);
    }

    #[test]
    fn configs_are_tls13_only_without_resumption() {
        let (_d, _ca, id_dir) = setup("store-configs");
        let store = IdentityStore::load(&id_dir).unwrap();
        let s = store.server_config(&[b"h2"]).unwrap();
        assert_eq!(s.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(s.send_tls13_tickets, 0);
        let c = store
            .client_config([store.spiffe_id()], &[b"h2", b"http/1.1"])
            .unwrap();
        assert_eq!(c.alpn_protocols.len(), 2);
        assert!(c.client_auth_cert_resolver.has_certs());
    }

    #[tokio::test]
    async fn watch_picks_up_new_files() {
        let (_d, ca, id_dir) = setup("store-watch");
        let store = IdentityStore::load(&id_dir).unwrap();
        let task = tokio::spawn(store.clone().watch(Duration::from_millis(20)));
        let next = ca
            .issue("default", "sleep", Duration::from_secs(600))
            .unwrap();
        next.write(&id_dir).unwrap();
        let want = next.serial().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.leaf().serial != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watch did not reload"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    }
}
