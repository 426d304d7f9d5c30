//! A small file-based CA: a self-signed root (ECDSA P-256, 10 years) and a signing intermediate
//! (1 year, path length 0) that issues workload X.509-SVIDs.
//!
//! CA directory layout (`egret ca init --dir D`):
//!
//! | file | content |
//! |---|---|
//! | `root-cert.pem` | the root certificate |
//! | `root-key.pem` | the root's private key (0600) |
//! | `ca-cert.pem` | the signing intermediate |
//! | `ca-key.pem` | the intermediate's private key (0600) |
//! | `trust-domain` | the trust domain, one line |
//! | `trust-bundle.pem` | optional: the roots handed out with SVIDs (default `root-cert.pem`); put old+new roots here during a root rotation |
//!
//! Issued SVIDs (`egret ca issue`) follow the X.509-SVID rules: exactly one URI SAN (the SPIFFE
//! ID), empty subject (so the SAN is critical), basicConstraints `cA=false`, critical keyUsage
//! `digitalSignature, keyEncipherment`, extKeyUsage `serverAuth, clientAuth`, validity
//! `now - 1m .. now + ttl`, a fresh P-256 key and a random 128-bit serial.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

use crate::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use crate::spiffe::{SpiffeId, validate_trust_domain};
use crate::store::{CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};
use crate::verify::parse_pem_certs;
use crate::{IdentityError, crypto_provider};

/// The root certificate in a CA directory.
pub const CA_ROOT_CERT_FILE: &str = "root-cert.pem";
/// The root's private key in a CA directory.
pub const CA_ROOT_KEY_FILE: &str = "root-key.pem";
/// The signing (intermediate) certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing certificate's private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The trust domain in a CA directory.
pub const TRUST_DOMAIN_FILE: &str = "trust-domain";
/// Optional trust bundle in a CA directory (defaults to the root).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Files `Ca::init` writes, in order.
pub const CA_FILES: [&str; 5] = [
    CA_ROOT_KEY_FILE,
    CA_ROOT_CERT_FILE,
    CA_KEY_FILE,
    CA_CERT_FILE,
    TRUST_DOMAIN_FILE,
];

/// Lifetime of the root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the signing intermediate.
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating of every certificate's notBefore (clock skew between machines).
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Set `not_before`/`not_after` from `SystemTime`s (both after 1970 and before 9999).
fn set_validity(
    params: &mut CertificateParams,
    from: SystemTime,
    to: SystemTime,
) -> Result<(), IdentityError> {
    let since = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::Ttl("time before 1970".into()))
    };
    let (from, to) = (since(from)?, since(to)?);
    // Year 9999 is the end of GeneralizedTime; stay well inside it so the addition cannot panic.
    const MAX: Duration = Duration::from_secs(250_000_000_000);
    if from > MAX || to > MAX {
        return Err(IdentityError::Ttl("validity ends after year 9999".into()));
    }
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + from;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + to;
    Ok(())
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    crypto_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Generate(rcgen::Error::RingUnspecified))?;
    // Positive and exactly 16 bytes long in DER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(trust_domain: &str, common_name: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn not_after_of(der: &[u8], path: &Path) -> Result<SystemTime, IdentityError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| IdentityError::bad_file(path, e.to_string()))?;
    let ts = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0)))
}

/// A loaded CA that can issue SVIDs for its trust domain.
pub struct Ca {
    dir: PathBuf,
    trust_domain: String,
    root_cert_pem: String,
    ca_cert_pem: String,
    bundle_pem: String,
    ca_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .field("ca_not_after", &self.ca_not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Create a new CA in `dir` (created if missing). Fails with [`IdentityError::CaExists`]
    /// if any CA file is already there; nothing is overwritten.
    pub fn init(dir: impl AsRef<Path>, trust_domain: &str) -> Result<Ca, IdentityError> {
        let dir = dir.as_ref();
        validate_trust_domain(trust_domain)?;
        for file in CA_FILES.iter().chain([&TRUST_BUNDLE_FILE]) {
            if dir.join(file).exists() {
                return Err(IdentityError::CaExists {
                    dir: dir.to_owned(),
                    file,
                });
            }
        }
        fsutil::create_dir_all(dir)?;

        // A random tag in both subject names: two CAs of one trust domain (a root rotation)
        // must not have the same names, or path building confuses their certificates.
        let tag: String = random_serial()?.to_bytes()[12..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let now = SystemTime::now();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut root_params = ca_params(trust_domain, &format!("egret root CA {tag}"), None);
        root_params.serial_number = Some(random_serial()?);
        set_validity(&mut root_params, now - BACKDATE, now + ROOT_TTL)?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, &root_key);

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = ca_params(
            trust_domain,
            &format!("egret intermediate CA {tag}"),
            Some(0),
        );
        ca_params.serial_number = Some(random_serial()?);
        set_validity(&mut ca_params, now - BACKDATE, now + INTERMEDIATE_TTL)?;
        let ca_cert = ca_params.signed_by(&ca_key, &root_issuer)?;

        let files: [(&str, String, u32); 5] = [
            (CA_ROOT_KEY_FILE, root_key.serialize_pem(), KEY_MODE),
            (CA_ROOT_CERT_FILE, root_cert.pem(), PUBLIC_MODE),
            (CA_KEY_FILE, ca_key.serialize_pem(), KEY_MODE),
            (CA_CERT_FILE, ca_cert.pem(), PUBLIC_MODE),
            (TRUST_DOMAIN_FILE, format!("{trust_domain}\n"), PUBLIC_MODE),
        ];
        for (file, text, mode) in &files {
            let path = dir.join(file);
            fsutil::write_new(&path, text.as_bytes(), *mode).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    IdentityError::CaExists {
                        dir: dir.to_owned(),
                        file,
                    }
                } else {
                    IdentityError::io(&path, e)
                }
            })?;
        }
        Ca::load(dir)
    }

    /// Load the CA in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Ca, IdentityError> {
        let dir = dir.as_ref();
        let td_path = dir.join(TRUST_DOMAIN_FILE);
        let trust_domain = fsutil::read_string(&td_path)?.trim().to_owned();
        validate_trust_domain(&trust_domain)
            .map_err(|e| IdentityError::bad_file(&td_path, e.to_string()))?;

        let root_path = dir.join(CA_ROOT_CERT_FILE);
        let root_cert_pem = fsutil::read_string(&root_path)?;
        let root_ders = parse_pem_certs(root_cert_pem.as_bytes())
            .map_err(|e| IdentityError::bad_file(&root_path, e.to_string()))?;
        let [root_der] = root_ders.as_slice() else {
            return Err(IdentityError::bad_file(
                &root_path,
                format!("expected one certificate, found {}", root_ders.len()),
            ));
        };

        let cert_path = dir.join(CA_CERT_FILE);
        let ca_cert_pem = fsutil::read_string(&cert_path)?;
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = fsutil::read_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| IdentityError::bad_file(&key_path, e.to_string()))?;
        let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
            .map_err(|e| IdentityError::bad_file(&cert_path, e.to_string()))?;
        {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&ca_der)
                .map_err(|e| IdentityError::bad_file(&cert_path, e.to_string()))?;
            use rcgen::PublicKeyData;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(IdentityError::bad_file(
                    &key_path,
                    format!("key does not belong to {CA_CERT_FILE}"),
                ));
            }
        }
        let ca_not_after = not_after_of(&ca_der, &cert_path)?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| IdentityError::bad_file(&cert_path, e.to_string()))?;

        let bundle_path = dir.join(TRUST_BUNDLE_FILE);
        let bundle_pem = if bundle_path.exists() {
            let pem = fsutil::read_string(&bundle_path)?;
            let ders = parse_pem_certs(pem.as_bytes())
                .map_err(|e| IdentityError::bad_file(&bundle_path, e.to_string()))?;
            if !ders.iter().any(|d| d == root_der) {
                return Err(IdentityError::bad_file(
                    &bundle_path,
                    format!("does not contain this CA's root ({CA_ROOT_CERT_FILE})"),
                ));
            }
            pem
        } else {
            root_cert_pem.clone()
        };

        Ok(Ca {
            dir: dir.to_owned(),
            trust_domain,
            root_cert_pem,
            ca_cert_pem,
            bundle_pem,
            ca_not_after,
            issuer,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// This CA's root certificate (PEM).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// The signing intermediate (PEM).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The trust bundle handed out with SVIDs (PEM, one or more roots).
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// When the signing intermediate expires; no SVID may outlive it.
    pub fn ca_not_after(&self) -> SystemTime {
        self.ca_not_after
    }

    /// Issue an SVID for `spiffe://<td>/ns/<namespace>/sa/<service_account>`, valid for `ttl`.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<Svid, IdentityError> {
        let id = SpiffeId::workload(&self.trust_domain, namespace, service_account)?;
        self.issue_for(&id, ttl)
    }

    /// Issue an SVID for any SPIFFE ID of this CA's trust domain with a non-empty path.
    pub fn issue_for(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::TrustDomainMismatch {
                ca: self.trust_domain.clone(),
                requested: id.trust_domain().to_owned(),
            });
        }
        if id.is_trust_domain_only() {
            return Err(IdentityError::Svid(crate::verify::SvidError::new(
                crate::verify::Reason::NoPath,
                format!("{id}: a workload SVID needs a path"),
            )));
        }
        if ttl.is_zero() {
            return Err(IdentityError::Ttl("must be positive".into()));
        }
        let now = SystemTime::now();
        let not_after = now
            .checked_add(ttl)
            .filter(|t| *t <= self.ca_not_after)
            .ok_or_else(|| {
                IdentityError::Ttl(format!(
                    "{}s outlives the signing certificate ({CA_CERT_FILE}), which expires in {}s",
                    ttl.as_secs(),
                    self.ca_not_after
                        .duration_since(now)
                        .unwrap_or_default()
                        .as_secs()
                ))
            })?;
        let params = self.leaf_params(id, now - BACKDATE, not_after)?;
        self.sign(id, params)
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateParams, IdentityError> {
        let mut params = CertificateParams::default();
        // Empty subject, as Istio does: the SAN extension is then marked critical.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| IdentityError::Generate(e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, not_before, not_after)?;
        Ok(params)
    }

    fn sign(&self, id: &SpiffeId, params: CertificateParams) -> Result<Svid, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = cert.pem();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_cert_pem);
        Ok(Svid {
            spiffe_id: id.clone(),
            cert_chain_pem: chain,
            key_pem: key.serialize_pem(),
            root_pem: self.bundle_pem.clone(),
        })
    }
}

/// An issued identity, ready to be written as an Istio-style identity directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Svid {
    /// The identity the SVID was issued for.
    pub spiffe_id: SpiffeId,
    /// Leaf, then the signing intermediate (PEM).
    pub cert_chain_pem: String,
    /// The leaf's private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The trust bundle: one or more roots (PEM).
    pub root_pem: String,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"[redacted]")
            .field("root_pem", &self.root_pem)
            .finish()
    }
}

impl Svid {
    /// Write `root-cert.pem`, `key.pem` (0600) and `cert-chain.pem` into `out_dir` (created if
    /// missing), each replaced atomically. Returns the paths written.
    pub fn write(&self, out_dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, IdentityError> {
        let out = out_dir.as_ref();
        fsutil::create_dir_all(out)?;
        // The bundle first: during a root rotation it already holds the new root when the new
        // certificate appears.
        let files = [
            (ROOT_CERT_FILE, &self.root_pem, PUBLIC_MODE),
            (KEY_FILE, &self.key_pem, KEY_MODE),
            (CERT_CHAIN_FILE, &self.cert_chain_pem, PUBLIC_MODE),
        ];
        let mut written = Vec::with_capacity(files.len());
        for (name, text, mode) in files {
            let path = out.join(name);
            fsutil::write_atomic(&path, text.as_bytes(), mode)?;
            written.push(path);
        }
        Ok(written)
    }

    /// The certificate chain as DER, leaf first.
    pub fn chain_der(&self) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        parse_pem_certs(self.cert_chain_pem.as_bytes())
    }

    /// The leaf certificate as DER.
    pub fn leaf_der(&self) -> Result<CertificateDer<'static>, IdentityError> {
        CertificateDer::from_pem_slice(self.cert_chain_pem.as_bytes())
            .map_err(|e| IdentityError::Bundle(format!("cert chain PEM: {e}")))
    }

    /// The leaf's serial number (big-endian bytes).
    pub fn serial(&self) -> Result<Vec<u8>, IdentityError> {
        let der = self.leaf_der()?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
            .map_err(|e| IdentityError::Bundle(format!("leaf certificate: {e}")))?;
        Ok(cert.raw_serial().to_vec())
    }
}

/// Deliberately broken SVIDs for tests of the verifiers (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSvid {
    /// A well-formed SVID of another trust domain, signed by this CA.
    OtherTrustDomain(String),
    /// basicConstraints cA=true on the leaf.
    IsCa,
    /// Two URI SANs (the right ID and another one).
    TwoUriSans,
    /// No URI SAN at all (a DNS SAN instead).
    NoUriSan,
    /// `spiffe://<td>` without a path.
    NoPath,
    /// A URI SAN that is not a SPIFFE ID.
    NotSpiffe,
    /// Expired an hour ago.
    Expired,
    /// Valid from an hour from now.
    NotYetValid,
    /// keyUsage keyEncipherment only (no digitalSignature).
    WrongKeyUsage,
    /// keyUsage digitalSignature + keyCertSign on a leaf.
    KeyCertSign,
    /// No keyUsage extension.
    NoKeyUsage,
    /// extKeyUsage serverAuth only (cannot be a client).
    ServerAuthOnly,
    /// extKeyUsage clientAuth only (cannot be a server).
    ClientAuthOnly,
}

#[cfg(any(test, feature = "test-util"))]
impl Ca {
    /// Issue a leaf for `id` (no trust-domain or path check) after `tweak` has edited the
    /// parameters of a good SVID (validity `now-1m .. now+ttl`).
    pub fn issue_with(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Result<Svid, IdentityError> {
        let now = SystemTime::now();
        let mut params = self.leaf_params(id, now - BACKDATE, now + ttl)?;
        tweak(&mut params);
        self.sign(id, params)
    }

    /// Issue one of the [`BadSvid`] kinds for `ns`/`sa`.
    pub fn issue_bad(&self, ns: &str, sa: &str, bad: BadSvid) -> Result<Svid, IdentityError> {
        let ttl = Duration::from_secs(3600);
        let id = SpiffeId::workload(&self.trust_domain, ns, sa)?;
        let uri = |s: &str| -> Result<SanType, IdentityError> {
            Ok(SanType::URI(s.to_owned().try_into()?))
        };
        match bad {
            BadSvid::OtherTrustDomain(td) => {
                let other = SpiffeId::workload(&td, ns, sa)?;
                self.issue_with(&other, ttl, |_| {})
            }
            BadSvid::IsCa => self.issue_with(&id, ttl, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }),
            BadSvid::TwoUriSans => {
                let second = uri(&format!("spiffe://{}/ns/{ns}/sa/other", self.trust_domain))?;
                self.issue_with(&id, ttl, |p| p.subject_alt_names.push(second))
            }
            BadSvid::NoUriSan => {
                let dns = SanType::DnsName(format!("{sa}.{ns}.svc").try_into()?);
                self.issue_with(&id, ttl, |p| p.subject_alt_names = vec![dns])
            }
            BadSvid::NoPath => {
                let san = uri(&format!("spiffe://{}", self.trust_domain))?;
                self.issue_with(&id, ttl, |p| p.subject_alt_names = vec![san])
            }
            BadSvid::NotSpiffe => {
                let san = uri(&format!("https://{}/ns/{ns}/sa/{sa}", self.trust_domain))?;
                self.issue_with(&id, ttl, |p| p.subject_alt_names = vec![san])
            }
            BadSvid::Expired => {
                let now = SystemTime::now();
                let params = self.leaf_params(
                    &id,
                    now - Duration::from_secs(7200),
                    now - Duration::from_secs(3600),
                )?;
                self.sign(&id, params)
            }
            BadSvid::NotYetValid => {
                let now = SystemTime::now();
                let params = self.leaf_params(
                    &id,
                    now + Duration::from_secs(3600),
                    now + Duration::from_secs(7200),
                )?;
                self.sign(&id, params)
            }
            BadSvid::WrongKeyUsage => self.issue_with(&id, ttl, |p| {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
            }),
            BadSvid::KeyCertSign => self.issue_with(&id, ttl, |p| {
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }),
            BadSvid::NoKeyUsage => self.issue_with(&id, ttl, |p| p.key_usages.clear()),
            BadSvid::ServerAuthOnly => self.issue_with(&id, ttl, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }),
            BadSvid::ClientAuthOnly => self.issue_with(&id, ttl, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::testutil::TempDir;
    use crate::verify::{Reason, Usage, inspect_leaf};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn secs(t: SystemTime) -> i64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    #[test]
    fn init_writes_the_ca_files_with_private_keys_0600() {
        let dir = TempDir::new("ca-init");
        let ca = Ca::init(&*dir, "cluster.local").unwrap();
        assert_eq!(ca.trust_domain(), "cluster.local");
        for f in CA_FILES {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        assert_eq!(mode(&dir.join(CA_ROOT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CA_ROOT_CERT_FILE)), 0o644);
        assert_eq!(
            std::fs::read_to_string(dir.join(TRUST_DOMAIN_FILE)).unwrap(),
            "cluster.local\n"
        );
        assert_eq!(ca.trust_bundle_pem(), ca.root_cert_pem());
    }

    #[test]
    fn root_and_intermediate_are_p256_cas_with_the_right_lifetimes() {
        let dir = TempDir::new("ca-shape");
        let ca = Ca::init(&*dir, "example.org").unwrap();
        let now = secs(SystemTime::now());
        let root_der = CertificateDer::from_pem_slice(ca.root_cert_pem().as_bytes()).unwrap();
        let (_, root) = X509Certificate::from_der(&root_der).unwrap();
        assert!(root.basic_constraints().unwrap().unwrap().value.ca);
        assert!(root.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(root.subject(), root.issuer());
        let life = root.validity().not_after.timestamp() - now;
        assert!((life - ROOT_TTL.as_secs() as i64).abs() < 60, "{life}");
        // ECDSA P-256 with SHA-256.
        assert_eq!(
            root.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );

        let ca_der = CertificateDer::from_pem_slice(ca.ca_cert_pem().as_bytes()).unwrap();
        let (_, inter) = X509Certificate::from_der(&ca_der).unwrap();
        let bc = inter.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(inter.issuer(), root.subject());
        let life = inter.validity().not_after.timestamp() - now;
        assert!(
            (life - INTERMEDIATE_TTL.as_secs() as i64).abs() < 60,
            "{life}"
        );
        assert!(inter.validity().not_before.timestamp() <= now - 59);
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_ca() {
        let dir = TempDir::new("ca-reinit");
        Ca::init(&*dir, "cluster.local").unwrap();
        let before: Vec<Vec<u8>> = CA_FILES
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect();
        let err = Ca::init(&*dir, "cluster.local").unwrap_err();
        assert!(matches!(err, IdentityError::CaExists { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        let after: Vec<Vec<u8>> = CA_FILES
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect();
        assert_eq!(before, after);

        // Even a single leftover key file blocks init.
        let dir2 = TempDir::new("ca-partial");
        std::fs::create_dir_all(&*dir2).unwrap();
        std::fs::write(dir2.join(CA_KEY_FILE), "x").unwrap();
        let err = Ca::init(&*dir2, "cluster.local").unwrap_err();
        assert!(
            matches!(err, IdentityError::CaExists { file, .. } if file == CA_KEY_FILE),
            "{err}"
        );
    }

    #[test]
    fn init_rejects_invalid_trust_domains() {
        let dir = TempDir::new("ca-badtd");
        for td in ["", "Cluster.local", "td:8080", "a/b", "spiffe://td"] {
            assert!(Ca::init(&*dir, td).is_err(), "{td}");
        }
        assert!(!dir.join(CA_KEY_FILE).exists());
    }

    #[test]
    fn issued_svids_follow_the_x509_svid_rules() {
        let dir = TempDir::new("ca-issue");
        Ca::init(&*dir, "cluster.local").unwrap();
        let ca = Ca::load(&*dir).unwrap();
        let svid = ca
            .issue("default", "sleep", Duration::from_secs(24 * 3600))
            .unwrap();
        assert_eq!(
            svid.spiffe_id.to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        let chain = svid.chain_der().unwrap();
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        assert_eq!(
            chain[1],
            CertificateDer::from_pem_slice(ca.ca_cert_pem().as_bytes()).unwrap()
        );
        assert_eq!(svid.root_pem, ca.root_cert_pem());

        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let uris: Vec<_> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter(|g| matches!(g, GeneralName::URI(_)))
            .collect();
        assert_eq!(
            uris,
            vec![&GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/sleep"
            )]
        );
        // Empty subject, so the SAN is critical.
        assert!(leaf.subject().iter().next().is_none());
        assert!(leaf.subject_alternative_name().unwrap().unwrap().critical);
        let bc = leaf.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = leaf.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let now = secs(SystemTime::now());
        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        assert!(
            (now - 62..=now - 58).contains(&nb),
            "notBefore {nb} vs now {now}"
        );
        assert!(
            (na - now - 24 * 3600).abs() <= 2,
            "notAfter {na} vs now {now}"
        );
        assert_eq!(leaf.raw_serial().len(), 16);
        assert!(leaf.raw_serial()[0] & 0x80 == 0);

        let info = inspect_leaf(&chain[0], Usage::Both).unwrap();
        assert_eq!(info.spiffe_id, svid.spiffe_id);
        assert_eq!(info.serial, svid.serial().unwrap());

        // Fresh key and serial every time.
        let again = ca
            .issue("default", "sleep", Duration::from_secs(60))
            .unwrap();
        assert_ne!(again.key_pem, svid.key_pem);
        assert_ne!(again.serial().unwrap(), svid.serial().unwrap());
    }

    #[test]
    fn issue_checks_ttl_trust_domain_and_path() {
        let dir = TempDir::new("ca-issue-err");
        let ca = Ca::init(&*dir, "cluster.local").unwrap();
        assert!(matches!(
            ca.issue("a", "b", Duration::ZERO),
            Err(IdentityError::Ttl(_))
        ));
        // Longer than the intermediate lives.
        let err = ca
            .issue("a", "b", INTERMEDIATE_TTL + Duration::from_secs(3600))
            .unwrap_err();
        assert!(err.to_string().contains("outlives"), "{err}");
        let other = SpiffeId::workload("other.td", "a", "b").unwrap();
        assert!(matches!(
            ca.issue_for(&other, Duration::from_secs(60)),
            Err(IdentityError::TrustDomainMismatch { .. })
        ));
        let bare = SpiffeId::parse("spiffe://cluster.local").unwrap();
        match ca.issue_for(&bare, Duration::from_secs(60)) {
            Err(IdentityError::Svid(e)) => assert_eq!(e.reason, Reason::NoPath),
            other => panic!("{other:?}"),
        }
        assert!(ca.issue("a/b", "c", Duration::from_secs(60)).is_err());
        // Non-Istio paths of the right trust domain are fine.
        let custom = SpiffeId::parse("spiffe://cluster.local/gateway/egress").unwrap();
        ca.issue_for(&custom, Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn svid_write_uses_istio_names_and_modes_and_replaces_files() {
        let dir = TempDir::new("ca-write");
        let ca = Ca::init(dir.join("ca"), "cluster.local").unwrap();
        let out = dir.join("out/nested");
        let svid = ca
            .issue("default", "sleep", Duration::from_secs(3600))
            .unwrap();
        let written = svid.write(&out).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["root-cert.pem", "key.pem", "cert-chain.pem"]);
        assert_eq!(mode(&out.join("key.pem")), 0o600);
        assert_eq!(mode(&out.join("cert-chain.pem")), 0o644);
        assert_eq!(
            std::fs::read_to_string(out.join("cert-chain.pem")).unwrap(),
            svid.cert_chain_pem
        );
        // Re-issuing replaces the files, key stays 0600, no temporary files are left behind.
        let next = ca
            .issue("default", "sleep", Duration::from_secs(3600))
            .unwrap();
        next.write(&out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("key.pem")).unwrap(),
            next.key_pem
        );
        assert_eq!(mode(&out.join("key.pem")), 0o600);
        let entries = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(entries, 3);
        // Debug never shows the key.
        assert!(!format!("{next:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn trust_bundle_file_is_handed_out_and_must_contain_the_root() {
        let dir = TempDir::new("ca-bundle");
        let a = Ca::init(dir.join("a"), "cluster.local").unwrap();
        let b = Ca::init(dir.join("b"), "cluster.local").unwrap();
        let both = format!("{}{}", a.root_cert_pem(), b.root_cert_pem());
        std::fs::write(dir.join("a").join(TRUST_BUNDLE_FILE), &both).unwrap();
        let a = Ca::load(dir.join("a")).unwrap();
        assert_eq!(a.trust_bundle_pem(), both);
        let svid = a.issue("ns", "sa", Duration::from_secs(60)).unwrap();
        assert_eq!(svid.root_pem, both);

        std::fs::write(dir.join("a").join(TRUST_BUNDLE_FILE), b.root_cert_pem()).unwrap();
        let err = Ca::load(dir.join("a")).unwrap_err();
        assert!(err.to_string().contains("does not contain"), "{err}");
    }

    #[test]
    fn load_rejects_a_key_that_does_not_match_the_signing_cert() {
        let dir = TempDir::new("ca-mismatch");
        Ca::init(dir.join("a"), "cluster.local").unwrap();
        Ca::init(dir.join("b"), "cluster.local").unwrap();
        std::fs::copy(
            dir.join("b").join(CA_KEY_FILE),
            dir.join("a").join(CA_KEY_FILE),
        )
        .unwrap();
        let err = Ca::load(dir.join("a")).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(matches!(
            Ca::load(dir.join("missing")),
            Err(IdentityError::Io { .. })
        ));
    }

    #[test]
    fn bad_svids_are_bad_in_the_intended_way() {
        let dir = TempDir::new("ca-bad");
        let ca = Ca::init(&*dir, "cluster.local").unwrap();
        let leaf = |b: BadSvid| {
            let s = ca.issue_bad("default", "sleep", b).unwrap();
            let der = s.leaf_der().unwrap();
            inspect_leaf(&der, Usage::Both).map(|i| i.spiffe_id)
        };
        let reason = |b: BadSvid| leaf(b).unwrap_err().reason;
        assert_eq!(
            leaf(BadSvid::OtherTrustDomain("evil.org".into()))
                .unwrap()
                .trust_domain(),
            "evil.org"
        );
        assert_eq!(reason(BadSvid::IsCa), Reason::LeafIsCa);
        assert_eq!(reason(BadSvid::TwoUriSans), Reason::MultipleUriSans);
        assert_eq!(reason(BadSvid::NoUriSan), Reason::NoUriSan);
        assert_eq!(reason(BadSvid::NoPath), Reason::NoPath);
        assert_eq!(reason(BadSvid::NotSpiffe), Reason::BadSpiffeId);
        assert_eq!(reason(BadSvid::WrongKeyUsage), Reason::KeyUsage);
        assert_eq!(reason(BadSvid::KeyCertSign), Reason::KeyUsage);
        assert_eq!(reason(BadSvid::NoKeyUsage), Reason::KeyUsage);
        assert_eq!(reason(BadSvid::ServerAuthOnly), Reason::ExtKeyUsage);
        assert_eq!(reason(BadSvid::ClientAuthOnly), Reason::ExtKeyUsage);
        // Validity is not a leaf-shape rule; path validation rejects these.
        leaf(BadSvid::Expired).unwrap();
        leaf(BadSvid::NotYetValid).unwrap();
    }
}
