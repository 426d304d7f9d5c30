//! JSON Web Key Sets for RequestAuthentication: parsing (`Jwks`) and the process-wide cache of
//! remote key sets (`JwksCache`).
//!
//! Istio turns each `jwtRules[]` entry into an Envoy `jwt_authn` provider whose keys are either
//! inline (`jwks`) or fetched from `jwksUri` (or, with neither, from the issuer's OpenID
//! discovery document). Envoy fetches remote key sets asynchronously when the configuration is
//! loaded, refreshes them periodically, keeps serving the keys it has when a refresh fails, and
//! answers `401 Jwks remote fetch is failed` to a request whose issuer has no keys yet. This
//! module does the same:
//!
//! - [`Jwks::parse`] reads `{"keys": [...]}`: RSA keys (`n`, `e`; RS256/384/512 and
//!   PS256/384/512) and EC keys (`crv` P-256 -> ES256, P-384 -> ES384). Keys of another type,
//!   curve, or with `use: enc`, are skipped; a set with no usable key is an error. Every key is
//!   parsed once, here, into aws-lc-rs [`ParsedPublicKey`]s, one per algorithm it may verify.
//! - [`JwksCache`] (one per proxy process, shared by every configuration it loads) fetches each
//!   remote URI in a background task: first when a configuration naming it is loaded
//!   ([`JwksCache::ensure`]), then every `refresh_interval` (Istio's 20 minutes by default),
//!   retrying failures with a doubling backoff. A refresh that fails (network, status, body too
//!   large, not a usable key set) logs a warning with the URI and the reason, counts a failure
//!   and leaves the previous keys in place (served stale).
//!
//! Readers (the request path) never take a lock: the URI table and each URI's keys are behind
//! `ArcSwap`s.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

/// A JWS signature algorithm egret verifies. HMAC (`HS*`) is deliberately absent: a JWKS holds
/// public keys, and treating one as an HMAC secret is the classic key-confusion attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

impl Alg {
    const RSA: [Alg; 6] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
    ];

    /// The algorithm named by a JOSE `alg` value (case-sensitive, as RFC 7515 says).
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
        }
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::ES256 | Alg::ES384 => return None,
        })
    }
}

/// One usable public key of a key set.
pub struct Jwk {
    kid: Option<String>,
    /// The key parsed once per algorithm it may verify: one entry for an EC key or an RSA key
    /// with `alg`, the six RSA algorithms for an RSA key without `alg`.
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("algs", &self.algs().map(Alg::name).collect::<Vec<_>>())
            .finish()
    }
}

impl Jwk {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key verifies.
    pub fn algs(&self) -> impl Iterator<Item = Alg> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    pub fn supports(&self, alg: Alg) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Whether `signature` is a valid `alg` signature of `message` under this key (false when
    /// the key does not do `alg`).
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok())
    }
}

/// Why a key set could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no \"keys\" array")]
    NoKeys,
    #[error("JWKS has no usable key ({0})")]
    NoUsableKey(String),
}

/// A parsed JSON Web Key Set (RFC 7517): the usable signature keys, in document order.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    /// Parse a JWKS document. Keys that cannot be used (unknown `kty` or `crv`, `use: enc`, an
    /// `alg` egret does not verify, bad key material) are skipped; at least one key must remain.
    pub fn parse(json: &str) -> Result<Jwks, JwksError> {
        let doc: Value = serde_json::from_str(json).map_err(|e| JwksError::Json(e.to_string()))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeys)?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match parse_jwk(entry) {
                Ok(k) => keys.push(k),
                Err(why) => skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if keys.is_empty() {
            let why = if skipped.is_empty() {
                "the \"keys\" array is empty".to_string()
            } else {
                skipped.join("; ")
            };
            return Err(JwksError::NoUsableKey(why));
        }
        Ok(Jwks { keys })
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn b64(field: &str, v: Option<&Value>) -> Result<Vec<u8>, String> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| format!("\"{field}\" is missing"))?;
    URL_SAFE_NO_PAD_INDIFFERENT
        .decode(s)
        .map_err(|_| format!("\"{field}\" is not base64url"))
}

fn parse_jwk(v: &Value) -> Result<Jwk, String> {
    let kty = v
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("\"kty\" is missing")?;
    if let Some(u) = v.get("use").and_then(Value::as_str)
        && u != "sig"
    {
        return Err(format!("\"use\" is {u:?}, not \"sig\""));
    }
    let kid = v.get("kid").and_then(Value::as_str).map(str::to_string);
    let declared = match v.get("alg").and_then(Value::as_str) {
        None => None,
        Some(name) => {
            Some(Alg::from_name(name).ok_or_else(|| format!("\"alg\" {name:?} is not supported"))?)
        }
    };
    let verifiers = match kty {
        "RSA" => {
            let algs: Vec<Alg> = match declared {
                Some(a) if a.rsa_params().is_some() => vec![a],
                Some(a) => return Err(format!("\"alg\" {} does not fit an RSA key", a.name())),
                None => Alg::RSA.to_vec(),
            };
            let n = b64("n", v.get("n"))?;
            let e = b64("e", v.get("e"))?;
            // RFC 7518 says no leading zero octets; some issuers add one anyway.
            let comps = RsaPublicKeyComponents {
                n: strip_zeros(&n),
                e: strip_zeros(&e),
            };
            if comps.n.len() < 256 {
                return Err("RSA modulus is shorter than 2048 bits".to_string());
            }
            let mut out = Vec::with_capacity(algs.len());
            for a in algs {
                let params = a.rsa_params().ok_or("not an RSA algorithm")?;
                let key = comps
                    .to_parsed_public_key(params)
                    .map_err(|e| format!("RSA key rejected: {e}"))?;
                out.push((a, key));
            }
            out
        }
        "EC" => {
            let crv = v
                .get("crv")
                .and_then(Value::as_str)
                .ok_or("\"crv\" is missing")?;
            let (alg, len, verify_alg): (
                Alg,
                usize,
                &'static signature::EcdsaVerificationAlgorithm,
            ) = match crv {
                "P-256" => (Alg::ES256, 32, &signature::ECDSA_P256_SHA256_FIXED),
                "P-384" => (Alg::ES384, 48, &signature::ECDSA_P384_SHA384_FIXED),
                other => return Err(format!("curve {other:?} is not supported")),
            };
            if declared.is_some_and(|d| d != alg) {
                return Err(format!("\"alg\" does not fit curve {crv}"));
            }
            let x = b64("x", v.get("x"))?;
            let y = b64("y", v.get("y"))?;
            if x.len() != len || y.len() != len {
                return Err(format!("\"x\"/\"y\" are not {len} bytes for {crv}"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = ParsedPublicKey::new(verify_alg, point)
                .map_err(|e| format!("EC key rejected: {e}"))?;
            vec![(alg, key)]
        }
        other => return Err(format!("\"kty\" {other:?} is not supported")),
    };
    Ok(Jwk { kid, verifiers })
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

// ===== The cache of remote key sets =====

/// Where a remote key set comes from, and how long one fetch may take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksSource {
    /// The cache key: `jwksUri`, or for OpenID discovery the issuer's
    /// `<issuer>/.well-known/openid-configuration`.
    pub uri: String,
    /// `true` when `uri` is an OpenID discovery document whose `jwks_uri` names the key set.
    pub discovery: bool,
    /// The rule's `timeout` (Istio's default 5 s): for the whole fetch (connect, TLS, request,
    /// body; both requests for discovery).
    pub timeout: Duration,
}

/// Settings of a [`JwksCache`].
#[derive(Debug, Clone)]
pub struct JwksCacheOptions {
    /// How often a key set is fetched again after a success. Istio's default is 20 minutes
    /// (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
    pub refresh_interval: Duration,
    /// The first retry delay after a failed fetch; doubles on each further failure.
    pub retry_initial: Duration,
    /// The longest retry delay (also never longer than `refresh_interval`).
    pub retry_max: Duration,
    /// A response body larger than this is a failed fetch (the previous keys stay).
    pub max_body_bytes: usize,
    /// Extra PEM CA certificates trusted for `https` URIs besides the system roots.
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for JwksCacheOptions {
    fn default() -> Self {
        JwksCacheOptions {
            refresh_interval: Duration::from_secs(20 * 60),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_body_bytes: 256 * 1024,
            extra_ca_file: None,
        }
    }
}

/// Why a JWKS fetch failed (logged with the URI, counted in `fetch_failures`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URI: {0}")]
    Uri(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    #[error("OpenID discovery document: {0}")]
    Discovery(String),
    #[error("{0}")]
    Jwks(#[from] JwksError),
}

/// Errors creating a [`JwksCache`].
#[derive(Debug, thiserror::Error)]
pub enum JwksCacheError {
    #[error("{path}: cannot read the JWKS CA bundle: {source}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM CA certificate found")]
    NoCa(String),
}

/// One remote URI: its keys, counters and refresh task.
struct UriEntry {
    source: JwksSource,
    keys: ArcSwapOption<Jwks>,
    /// Fetch timeout in milliseconds (the largest asked for by any rule naming the URI).
    timeout_ms: AtomicU64,
    failures: AtomicU64,
    successes: AtomicU64,
    last_error: Mutex<Option<String>>,
    task: Mutex<Option<AbortHandle>>,
}

impl UriEntry {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the refresh tasks share.
struct Fetcher {
    opts: JwksCacheOptions,
    extra_roots: Vec<CertificateDer<'static>>,
    tls: OnceLock<Result<Arc<ClientConfig>, String>>,
    failures: AtomicU64,
}

/// The process-wide cache of remote JWKS, keyed by URI. Create one per proxy process with
/// [`JwksCache::new`] and keep it across configuration reloads, so a reload neither refetches
/// nor forgets keys. Refresh tasks are tokio tasks; they stop when the cache is dropped or their
/// URI is removed with [`JwksCache::retain`].
pub struct JwksCache {
    fetcher: Arc<Fetcher>,
    entries: ArcSwap<HashMap<String, Arc<UriEntry>>>,
    /// Serializes writers of `entries` (never held across an `.await`).
    write: Mutex<()>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("uris", &self.entries.load().keys().collect::<Vec<_>>())
            .field("fetch_failures", &self.fetch_failures())
            .finish()
    }
}

impl JwksCache {
    /// A cache with no URIs yet. Reads `opts.extra_ca_file` now (an unreadable or empty file
    /// is an error); the system roots are loaded on the first `https` fetch.
    pub fn new(opts: JwksCacheOptions) -> Result<Arc<JwksCache>, JwksCacheError> {
        let extra_roots = match &opts.extra_ca_file {
            None => Vec::new(),
            Some(p) => {
                let path = p.display().to_string();
                let pem = std::fs::read(p).map_err(|source| JwksCacheError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    return Err(JwksCacheError::NoCa(path));
                }
                certs
            }
        };
        Ok(Arc::new(JwksCache {
            fetcher: Arc::new(Fetcher {
                opts,
                extra_roots,
                tls: OnceLock::new(),
                failures: AtomicU64::new(0),
            }),
            entries: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
        }))
    }

    /// Start fetching every source not yet known (each in its own background task; the first
    /// fetch starts at once). Sources already known keep their keys and task; a longer
    /// `timeout` is adopted. Call it when a configuration is loaded, from inside a tokio
    /// runtime (outside one, nothing is fetched and an error is logged).
    pub fn ensure<I: IntoIterator<Item = JwksSource>>(&self, sources: I) {
        let _w = lock(&self.write);
        let current = self.entries.load_full();
        let mut next: Option<HashMap<String, Arc<UriEntry>>> = None;
        for src in sources {
            let timeout_ms = u64::try_from(src.timeout.as_millis()).unwrap_or(u64::MAX);
            if let Some(e) = current.get(&src.uri) {
                e.timeout_ms.fetch_max(timeout_ms, Ordering::Relaxed);
                continue;
            }
            let map = next.get_or_insert_with(|| (*current).clone());
            if let Some(e) = map.get(&src.uri) {
                e.timeout_ms.fetch_max(timeout_ms, Ordering::Relaxed);
                continue;
            }
            let entry = Arc::new(UriEntry {
                source: src.clone(),
                keys: ArcSwapOption::empty(),
                timeout_ms: AtomicU64::new(timeout_ms),
                failures: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                last_error: Mutex::new(None),
                task: Mutex::new(None),
            });
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let handle = rt.spawn(refresh(entry.clone(), self.fetcher.clone()));
                    *lock(&entry.task) = Some(handle.abort_handle());
                }
                Err(_) => tracing::error!(
                    uri = %src.uri,
                    "JWKS cache used outside a tokio runtime: the key set is not fetched"
                ),
            }
            map.insert(src.uri, entry);
        }
        if let Some(map) = next {
            self.entries.store(Arc::new(map));
        }
    }

    /// Stop refreshing (and forget) every URI not in `keep`.
    pub fn retain(&self, keep: &HashSet<String>) {
        let _w = lock(&self.write);
        let current = self.entries.load_full();
        if current.keys().all(|k| keep.contains(k)) {
            return;
        }
        let mut map = HashMap::with_capacity(keep.len());
        for (uri, e) in current.iter() {
            if keep.contains(uri) {
                map.insert(uri.clone(), e.clone());
            } else {
                e.stop();
            }
        }
        self.entries.store(Arc::new(map));
    }

    /// The keys last fetched from `uri`, or `None` before the first successful fetch (or for a
    /// URI never passed to [`JwksCache::ensure`]).
    pub fn keys(&self, uri: &str) -> Option<Arc<Jwks>> {
        self.entries.load().get(uri)?.keys.load_full()
    }

    /// Whether `uri` has keys.
    pub fn has_keys(&self, uri: &str) -> bool {
        self.keys(uri).is_some()
    }

    /// Failed fetches of every URI since the cache was created.
    pub fn fetch_failures(&self) -> u64 {
        self.fetcher.failures.load(Ordering::Relaxed)
    }

    /// Failed fetches of one URI.
    pub fn fetch_failures_for(&self, uri: &str) -> u64 {
        self.entries
            .load()
            .get(uri)
            .map_or(0, |e| e.failures.load(Ordering::Relaxed))
    }

    /// Successful fetches of one URI.
    pub fn fetch_successes_for(&self, uri: &str) -> u64 {
        self.entries
            .load()
            .get(uri)
            .map_or(0, |e| e.successes.load(Ordering::Relaxed))
    }

    /// The reason of the last failed fetch of `uri`, if the last fetch failed.
    pub fn last_error(&self, uri: &str) -> Option<String> {
        lock(&self.entries.load().get(uri)?.last_error).clone()
    }

    /// The URIs being refreshed.
    pub fn uris(&self) -> Vec<String> {
        self.entries.load().keys().cloned().collect()
    }

    /// Wait until `uri` has keys, at most `within`; whether it has them.
    pub async fn wait_for_keys(&self, uri: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.has_keys(uri) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fetch and parse one key set now, without caching it (for tools and tests).
    pub async fn fetch_once(&self, source: &JwksSource) -> Result<Jwks, FetchError> {
        self.fetcher.fetch(source, source.timeout).await
    }
}

impl Drop for JwksCache {
    fn drop(&mut self) {
        for e in self.entries.load().values() {
            e.stop();
        }
    }
}

/// The background task of one URI: fetch, then refresh every `refresh_interval`; after a
/// failure retry with a doubling backoff, keeping whatever keys were there.
async fn refresh(entry: Arc<UriEntry>, fetcher: Arc<Fetcher>) {
    let opts = &fetcher.opts;
    let mut backoff = opts.retry_initial;
    loop {
        let timeout = entry.timeout();
        match fetcher.fetch(&entry.source, timeout).await {
            Ok(jwks) => {
                let first = entry.keys.load().is_none();
                entry.keys.store(Some(Arc::new(jwks)));
                entry.successes.fetch_add(1, Ordering::Relaxed);
                *lock(&entry.last_error) = None;
                if first {
                    tracing::info!(uri = %entry.source.uri, "JWKS fetched");
                } else {
                    tracing::debug!(uri = %entry.source.uri, "JWKS refreshed");
                }
                backoff = opts.retry_initial;
                tokio::time::sleep(opts.refresh_interval).await;
            }
            Err(err) => {
                entry.failures.fetch_add(1, Ordering::Relaxed);
                fetcher.failures.fetch_add(1, Ordering::Relaxed);
                let stale = entry.keys.load().is_some();
                tracing::warn!(
                    uri = %entry.source.uri,
                    reason = %err,
                    serving_stale_keys = stale,
                    "JWKS fetch failed"
                );
                *lock(&entry.last_error) = Some(err.to_string());
                let wait = backoff.min(opts.refresh_interval);
                backoff = backoff.saturating_mul(2).min(opts.retry_max);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Fetcher {
    async fn fetch(&self, src: &JwksSource, timeout: Duration) -> Result<Jwks, FetchError> {
        match tokio::time::timeout(timeout, self.fetch_inner(src)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(timeout)),
        }
    }

    async fn fetch_inner(&self, src: &JwksSource) -> Result<Jwks, FetchError> {
        let jwks_uri = if src.discovery {
            let body = self.get(&src.uri).await?;
            let doc: Value = serde_json::from_slice(&body)
                .map_err(|e| FetchError::Discovery(format!("not JSON: {e}")))?;
            doc.get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| FetchError::Discovery("no \"jwks_uri\"".to_string()))?
                .to_string()
        } else {
            src.uri.clone()
        };
        let body = self.get(&jwks_uri).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| JwksError::Json("body is not UTF-8".to_string()))?;
        Ok(Jwks::parse(text)?)
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>, FetchError> {
        self.tls
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                roots.add_parsable_certificates(self.extra_roots.iter().cloned());
                if roots.is_empty() {
                    return Err("no CA certificates (system roots or extra CA file)".to_string());
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let mut config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(config))
            })
            .clone()
            .map_err(FetchError::Tls)
    }

    /// One HTTP/1.1 GET (no redirects, as Envoy), the body limited to `max_body_bytes`.
    async fn get(&self, uri: &str) -> Result<Bytes, FetchError> {
        let parsed: http::Uri = uri.parse().map_err(|_| FetchError::Uri(uri.to_string()))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Uri(format!("{uri}: not http or https"))),
        };
        let authority = parsed
            .authority()
            .ok_or_else(|| FetchError::Uri(format!("{uri}: no host")))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = parsed
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let request = http::Request::get(path)
            // Never user info (`user:pass@`) in Host.
            .header(
                http::header::HOST,
                authority.as_str().rsplit('@').next().unwrap_or_default(),
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "egret-jwks")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;

        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| FetchError::Connect(format!("{host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| FetchError::Uri(format!("{uri}: bad host name")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Tls(e.to_string()))?;
            self.exchange(TokioIo::new(tls), request).await
        } else {
            self.exchange(TokioIo::new(tcp), request).await
        }
    }

    /// Send `request` on a fresh HTTP/1.1 connection and read a 200 response's body, at most
    /// `max_body_bytes`. The connection is driven by this future alone (no spawned task), so
    /// the caller's timeout dropping it closes the socket.
    async fn exchange<T>(
        &self,
        io: T,
        request: http::Request<Empty<Bytes>>,
    ) -> Result<Bytes, FetchError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let max = self.opts.max_body_bytes;
        let work = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| FetchError::Http(e.to_string()))?;
            if response.status() != http::StatusCode::OK {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            let too_large = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|len| len > max as u64);
            if too_large {
                return Err(FetchError::TooLarge(max));
            }
            let body = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge(max)
                    } else {
                        FetchError::Http(e.to_string())
                    }
                })?;
            Ok(body.to_bytes())
        };
        tokio::pin!(conn, work);
        tokio::select! {
            r = &mut work => r,
            // The connection ended (server closed, or an error): the exchange has its answer
            // buffered, or fails with hyper's error.
            _ = &mut conn => work.await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use egret_testkit::jwt::TestIssuer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn parses_rsa_and_ec_keys_and_skips_unknown_ones() {
        let rsa = TestIssuer::rsa("r1").unwrap();
        let ec = TestIssuer::ec("e1").unwrap();
        let mut keys = vec![rsa.jwk(), ec.jwk()];
        keys.push(serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}));
        keys.push(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}));
        let mut enc = rsa.jwk();
        enc["use"] = "enc".into();
        enc["kid"] = "enc".into();
        keys.push(enc);
        let doc = serde_json::json!({ "keys": keys }).to_string();
        let jwks = Jwks::parse(&doc).unwrap();
        assert_eq!(jwks.len(), 2);
        assert_eq!(jwks.keys()[0].kid(), Some("r1"));
        assert!(jwks.keys()[0].supports(Alg::RS256));
        assert!(jwks.keys()[0].supports(Alg::PS256));
        assert!(!jwks.keys()[0].supports(Alg::ES256));
        assert_eq!(jwks.keys()[1].kid(), Some("e1"));
        assert_eq!(jwks.keys()[1].algs().collect::<Vec<_>>(), vec![Alg::ES256]);
    }

    #[test]
    fn declared_alg_limits_an_rsa_key() {
        let rsa = TestIssuer::rsa("r1").unwrap();
        let mut k = rsa.jwk();
        k["alg"] = "RS384".into();
        let jwks = Jwks::parse(&serde_json::json!({ "keys": [k] }).to_string()).unwrap();
        assert_eq!(jwks.keys()[0].algs().collect::<Vec<_>>(), vec![Alg::RS384]);
    }

    #[test]
    fn p384_key_is_es384() {
        let ec = TestIssuer::ec384("e2").unwrap();
        let jwks = Jwks::parse(&ec.jwks_json()).unwrap();
        assert_eq!(jwks.keys()[0].algs().collect::<Vec<_>>(), vec![Alg::ES384]);
    }

    #[test]
    fn unusable_documents_are_errors() {
        assert!(matches!(Jwks::parse("not json"), Err(JwksError::Json(_))));
        assert_eq!(Jwks::parse("{}").unwrap_err(), JwksError::NoKeys);
        assert!(matches!(
            Jwks::parse(r#"{"keys": []}"#),
            Err(JwksError::NoUsableKey(_))
        ));
        let only_oct = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#;
        let err = Jwks::parse(only_oct).unwrap_err();
        assert!(err.to_string().contains("\"oct\""), "{err}");
        let bad_n = r#"{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}"#;
        assert!(matches!(Jwks::parse(bad_n), Err(JwksError::NoUsableKey(_))));
        let short = r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#;
        assert!(matches!(Jwks::parse(short), Err(JwksError::NoUsableKey(_))));
    }

    /// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1 answering every request with
    /// whatever `respond` says at that moment (`None`: accept and never answer).
    struct CannedServer {
        addr: std::net::SocketAddr,
        body: Arc<Mutex<Option<(u16, String)>>>,
        requests: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl CannedServer {
        async fn start(status: u16, body: String) -> CannedServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let canned = Arc::new(Mutex::new(Some((status, body))));
            let requests = Arc::new(AtomicU64::new(0));
            let (c, r) = (canned.clone(), requests.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (c, r) = (c.clone(), r.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = c.lock().unwrap().clone();
                        match answer {
                            Some((status, body)) => {
                                let head = format!(
                                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                    body.len()
                                );
                                let _ = sock.write_all(head.as_bytes()).await;
                                let _ = sock.write_all(body.as_bytes()).await;
                                let _ = sock.shutdown().await;
                            }
                            None => {
                                // Never answer; hold the connection open.
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                    });
                }
            });
            CannedServer {
                addr,
                body: canned,
                requests,
                task,
            }
        }

        fn uri(&self) -> String {
            format!("http://{}/jwks.json", self.addr)
        }

        fn set(&self, answer: Option<(u16, String)>) {
            *self.body.lock().unwrap() = answer;
        }

        fn requests(&self) -> u64 {
            self.requests.load(Ordering::SeqCst)
        }
    }

    impl Drop for CannedServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn opts(refresh: Duration) -> JwksCacheOptions {
        JwksCacheOptions {
            refresh_interval: refresh,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            max_body_bytes: 64 * 1024,
            extra_ca_file: None,
        }
    }

    fn source(uri: &str, timeout: Duration) -> JwksSource {
        JwksSource {
            uri: uri.to_string(),
            discovery: false,
            timeout,
        }
    }

    async fn wait_until(mut f: impl FnMut() -> bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    #[tokio::test]
    async fn fetches_caches_refreshes_and_serves_stale_keys() {
        let issuer = TestIssuer::rsa("k1").unwrap();
        let server = CannedServer::start(200, issuer.jwks_json()).await;
        let uri = server.uri();
        let cache = JwksCache::new(opts(Duration::from_millis(300))).unwrap();
        assert!(!cache.has_keys(&uri));
        cache.ensure([source(&uri, Duration::from_secs(2))]);
        assert!(cache.wait_for_keys(&uri, Duration::from_secs(5)).await);
        assert_eq!(cache.keys(&uri).unwrap().keys()[0].kid(), Some("k1"));
        assert_eq!(cache.fetch_failures(), 0);

        // Cached: a second ensure (a config reload) does not refetch or start another task.
        let before = server.requests();
        cache.ensure([source(&uri, Duration::from_secs(2))]);
        assert_eq!(cache.uris(), vec![uri.clone()]);
        assert!(server.requests() <= before + 1);

        // Refresh: a new key set replaces the old one after refresh_interval.
        let rotated = TestIssuer::ec("k2").unwrap();
        server.set(Some((200, rotated.jwks_json())));
        assert!(
            wait_until(
                || cache
                    .keys(&uri)
                    .is_some_and(|k| k.keys()[0].kid() == Some("k2")),
                Duration::from_secs(5)
            )
            .await
        );

        // A failing refresh (500, then not a key set) keeps serving the previous keys.
        server.set(Some((500, "oops".to_string())));
        assert!(wait_until(|| cache.fetch_failures() >= 1, Duration::from_secs(5)).await);
        assert!(cache.last_error(&uri).unwrap().contains("500"));
        assert_eq!(cache.keys(&uri).unwrap().keys()[0].kid(), Some("k2"));
        server.set(Some((200, r#"{"keys": []}"#.to_string())));
        let failures = cache.fetch_failures();
        assert!(wait_until(|| cache.fetch_failures() > failures, Duration::from_secs(5)).await);
        assert_eq!(cache.keys(&uri).unwrap().keys()[0].kid(), Some("k2"));
        assert_eq!(cache.fetch_failures_for(&uri), cache.fetch_failures());

        // Recovery clears the error.
        server.set(Some((200, issuer.jwks_json())));
        assert!(
            wait_until(
                || cache
                    .keys(&uri)
                    .is_some_and(|k| k.keys()[0].kid() == Some("k1")),
                Duration::from_secs(5)
            )
            .await
        );
        assert!(cache.last_error(&uri).is_none());

        // retain() stops and forgets a URI no longer configured.
        cache.retain(&HashSet::new());
        assert!(cache.uris().is_empty());
        assert!(!cache.has_keys(&uri));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_rejected_and_old_keys_stay() {
        let issuer = TestIssuer::rsa("k1").unwrap();
        let server = CannedServer::start(200, issuer.jwks_json()).await;
        let uri = server.uri();
        let cache = JwksCache::new(opts(Duration::from_millis(200))).unwrap();
        cache.ensure([source(&uri, Duration::from_secs(2))]);
        assert!(cache.wait_for_keys(&uri, Duration::from_secs(5)).await);

        let huge = format!(r#"{{"keys": [], "pad": "{}"}}"#, "x".repeat(65 * 1024));
        server.set(Some((200, huge.clone())));
        assert!(wait_until(|| cache.fetch_failures() >= 1, Duration::from_secs(5)).await);
        assert!(
            cache.last_error(&uri).unwrap().contains("larger than"),
            "{:?}",
            cache.last_error(&uri)
        );
        assert!(cache.has_keys(&uri));

        // Directly too: the limit holds whatever Content-Length says.
        let err = cache
            .fetch_once(&source(&uri, Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::TooLarge(_)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_hits_the_timeout_and_requests_get_no_keys() {
        let server = CannedServer::start(200, String::new()).await;
        server.set(None);
        let uri = server.uri();
        let cache = JwksCache::new(opts(Duration::from_secs(60))).unwrap();
        let started = std::time::Instant::now();
        let err = cache
            .fetch_once(&source(&uri, Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));

        cache.ensure([source(&uri, Duration::from_millis(200))]);
        assert!(wait_until(|| cache.fetch_failures() >= 1, Duration::from_secs(5)).await);
        assert!(cache.last_error(&uri).unwrap().contains("timed out"));
        assert!(!cache.has_keys(&uri));
    }

    #[tokio::test]
    async fn connection_refused_is_a_counted_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri = format!("http://{addr}/jwks");
        let cache = JwksCache::new(opts(Duration::from_secs(60))).unwrap();
        cache.ensure([source(&uri, Duration::from_secs(1))]);
        assert!(
            wait_until(
                || cache.fetch_failures_for(&uri) >= 2,
                Duration::from_secs(5)
            )
            .await
        );
        assert!(!cache.has_keys(&uri));
    }

    #[tokio::test]
    async fn openid_discovery_finds_the_key_set() {
        let issuer = TestIssuer::rsa("k1").unwrap();
        let keys = CannedServer::start(200, issuer.jwks_json()).await;
        let doc = serde_json::json!({"issuer": "x", "jwks_uri": keys.uri()}).to_string();
        let discovery = CannedServer::start(200, doc).await;
        let src = JwksSource {
            uri: format!("http://{}/.well-known/openid-configuration", discovery.addr),
            discovery: true,
            timeout: Duration::from_secs(2),
        };
        let cache = JwksCache::new(opts(Duration::from_secs(60))).unwrap();
        cache.ensure([src.clone()]);
        assert!(cache.wait_for_keys(&src.uri, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn https_with_the_extra_ca() {
        let ca = egret_testkit::TestCa::new("jwks-ca").unwrap();
        let pair = ca.issue_server(&["localhost"]).unwrap();
        let acceptor = egret_testkit::server::tls_acceptor(&pair, None).unwrap();
        let issuer = TestIssuer::ec("tls").unwrap();
        let body = issuer.jwks_json();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(body.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let dir = egret_testkit::TempDir::new("jwks-ca").unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.ca_pem()).unwrap();
        let cache = JwksCache::new(JwksCacheOptions {
            extra_ca_file: Some(ca_file),
            ..opts(Duration::from_secs(60))
        })
        .unwrap();
        let uri = format!("https://localhost:{}/keys", addr.port());
        let jwks = cache
            .fetch_once(&source(&uri, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(jwks.keys()[0].kid(), Some("tls"));

        // Without the CA the server is not trusted.
        let plain = JwksCache::new(opts(Duration::from_secs(60))).unwrap();
        let err = plain
            .fetch_once(&source(&uri, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Tls(_)), "{err}");
        server.abort();
    }

    #[test]
    fn missing_ca_file_is_an_error() {
        let err = JwksCache::new(JwksCacheOptions {
            extra_ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..JwksCacheOptions::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"));
    }
}
