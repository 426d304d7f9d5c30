//! X.509-SVID validation (spiffe/spiffe `standards/X509-SVID.md`) as rustls verifiers.
//!
//! A peer's leaf certificate is accepted when, in this order:
//! 1. it parses, and satisfies the leaf rules: exactly one URI SAN, which is a valid SPIFFE ID
//!    with a non-root path; basicConstraints `cA=false` (or absent); keyUsage present, critical,
//!    with `digitalSignature` and without `keyCertSign`/`cRLSign`; extKeyUsage, when present,
//!    contains the purpose of the peer's role (`clientAuth` for a client, `serverAuth` for a
//!    server; `anyExtendedKeyUsage` does not count);
//! 2. it chains to a root of the current [`TrustBundle`] (RFC 5280 path validation by webpki,
//!    which also checks the validity period against the handshake time);
//! 3. the identity is authorized: its trust domain is one of the allowed ones
//!    ([`MeshClientVerifier`]) or it is one of the expected identities ([`MeshServerVerifier`]).
//!    DNS names play no part.
//!
//! Every rejection is an [`SvidError`] carrying a [`Reason`] whose [`Reason::code`] is stable and
//! meant for logs and metrics; inside rustls it travels as
//! `Error::InvalidCertificate(CertificateError::Other(..))` and is recovered with
//! [`rejection_reason`] / [`io_rejection_reason`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe::SpiffeId;
use crate::{IdentityError, crypto_provider};

/// Why a peer certificate was rejected. [`Reason::code`] is the stable name for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The peer sent no certificate.
    PeerCertMissing,
    /// The leaf does not parse as X.509, or has duplicate/malformed extensions.
    MalformedCert,
    /// The leaf has no URI SAN.
    NoUriSan,
    /// The leaf has more than one URI SAN.
    MultipleUriSans,
    /// The URI SAN is not a valid SPIFFE ID.
    BadSpiffeId,
    /// The SPIFFE ID has no path (`spiffe://td`), which only signing certificates may use.
    NoPath,
    /// The leaf has basicConstraints `cA=true`.
    LeafIsCa,
    /// keyUsage is missing, not critical, lacks digitalSignature, or has keyCertSign/cRLSign.
    KeyUsage,
    /// extKeyUsage is present without the purpose of the peer's role.
    ExtKeyUsage,
    /// The chain does not lead to a root of the trust bundle.
    UntrustedIssuer,
    /// A signature in the chain does not verify.
    BadSignature,
    /// The leaf (or a certificate in its chain) has expired.
    Expired,
    /// The leaf (or a certificate in its chain) is not valid yet.
    NotYetValid,
    /// Any other path-validation failure.
    ChainInvalid,
    /// The SPIFFE ID's trust domain is not one of the allowed trust domains.
    TrustDomainNotAllowed,
    /// The SPIFFE ID is not one of the expected identities.
    UnexpectedIdentity,
}

impl Reason {
    /// Stable snake_case name, for logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::PeerCertMissing => "peer_cert_missing",
            Reason::MalformedCert => "malformed_cert",
            Reason::NoUriSan => "no_uri_san",
            Reason::MultipleUriSans => "multiple_uri_sans",
            Reason::BadSpiffeId => "bad_spiffe_id",
            Reason::NoPath => "spiffe_id_without_path",
            Reason::LeafIsCa => "leaf_is_ca",
            Reason::KeyUsage => "bad_key_usage",
            Reason::ExtKeyUsage => "bad_ext_key_usage",
            Reason::UntrustedIssuer => "untrusted_issuer",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "cert_expired",
            Reason::NotYetValid => "cert_not_yet_valid",
            Reason::ChainInvalid => "chain_invalid",
            Reason::TrustDomainNotAllowed => "trust_domain_not_allowed",
            Reason::UnexpectedIdentity => "unexpected_identity",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected SVID: the reason and a human-readable detail.
/// Displays (and debug-prints, so that rustls' own `Display` of
/// `InvalidCertificate(Other(..))` names the reason) as `spiffe: <code>: <detail>`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("spiffe: {reason}: {detail}")]
pub struct SvidError {
    pub reason: Reason,
    pub detail: String,
}

impl fmt::Debug for SvidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SvidError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> SvidError {
        SvidError {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<SvidError> for rustls::Error {
    fn from(e: SvidError) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// The [`Reason`] behind a rustls handshake error, when it is an SVID rejection (including
/// rustls' own "no certificate presented").
pub fn rejection_reason(err: &rustls::Error) -> Option<Reason> {
    match err {
        rustls::Error::NoCertificatesPresented => Some(Reason::PeerCertMissing),
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidError>().map(|e| e.reason)
        }
        _ => None,
    }
}

/// The [`Reason`] behind an I/O error from a TLS stream (tokio-rustls wraps rustls errors in
/// `io::Error`).
pub fn io_rejection_reason(err: &std::io::Error) -> Option<Reason> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(rejection_reason)
}

/// Which purpose the certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client (the gateway checks callers): `clientAuth`.
    Client,
    /// A TLS server (a sidecar checks the gateway): `serverAuth`.
    Server,
    /// Both (a proxy's own certificate, used in either role).
    Both,
}

/// What a valid SVID leaf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub spiffe_id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The serial number's big-endian bytes.
    pub serial: Vec<u8>,
}

fn parse_cert<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::new(
            Reason::MalformedCert,
            "trailing data after certificate",
        )),
        Err(e) => Err(SvidError::new(Reason::MalformedCert, e.to_string())),
    }
}

fn malformed(e: impl fmt::Display) -> SvidError {
    SvidError::new(Reason::MalformedCert, e.to_string())
}

/// The single URI SAN of `cert` as a SPIFFE ID with a path.
fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert.subject_alternative_name().map_err(malformed)?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => {
            return Err(SvidError::new(
                Reason::NoUriSan,
                "certificate has no URI SAN",
            ));
        }
        [one] => *one,
        many => {
            return Err(SvidError::new(
                Reason::MultipleUriSans,
                format!(
                    "certificate has {} URI SANs: {}",
                    many.len(),
                    many.join(", ")
                ),
            ));
        }
    };
    let id = SpiffeId::parse(uri)
        .map_err(|e| SvidError::new(Reason::BadSpiffeId, format!("{uri:?}: {e}")))?;
    if id.is_trust_domain_only() {
        return Err(SvidError::new(
            Reason::NoPath,
            format!("{id} has no path; a workload SVID needs one"),
        ));
    }
    Ok(id)
}

pub(crate) fn asn1_time(t: &x509_parser::time::ASN1Time) -> SystemTime {
    let ts = t.timestamp();
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Check the X.509-SVID leaf rules (not the chain, not the validity period) for `usage` and
/// return what the leaf says.
pub fn inspect_leaf(der: &[u8], usage: Usage) -> Result<LeafInfo, SvidError> {
    let cert = parse_cert(der)?;
    let spiffe_id = spiffe_id_of(&cert)?;

    if let Some(bc) = cert.basic_constraints().map_err(malformed)?
        && bc.value.ca
    {
        return Err(SvidError::new(
            Reason::LeafIsCa,
            format!("{spiffe_id}: leaf certificate has basicConstraints cA=true"),
        ));
    }

    match cert.key_usage().map_err(malformed)? {
        None => {
            return Err(SvidError::new(
                Reason::KeyUsage,
                format!("{spiffe_id}: keyUsage extension is missing"),
            ));
        }
        Some(ku) => {
            if !ku.critical {
                return Err(SvidError::new(
                    Reason::KeyUsage,
                    format!("{spiffe_id}: keyUsage is not marked critical"),
                ));
            }
            if !ku.value.digital_signature() {
                return Err(SvidError::new(
                    Reason::KeyUsage,
                    format!(
                        "{spiffe_id}: keyUsage lacks digitalSignature ({})",
                        ku.value
                    ),
                ));
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(SvidError::new(
                    Reason::KeyUsage,
                    format!(
                        "{spiffe_id}: leaf keyUsage allows keyCertSign/cRLSign ({})",
                        ku.value
                    ),
                ));
            }
        }
    }

    if let Some(eku) = cert.extended_key_usage().map_err(malformed)? {
        let e = eku.value;
        let (need_client, need_server) = match usage {
            Usage::Client => (true, false),
            Usage::Server => (false, true),
            Usage::Both => (true, true),
        };
        if need_client && !e.client_auth {
            return Err(SvidError::new(
                Reason::ExtKeyUsage,
                format!("{spiffe_id}: extKeyUsage lacks clientAuth"),
            ));
        }
        if need_server && !e.server_auth {
            return Err(SvidError::new(
                Reason::ExtKeyUsage,
                format!("{spiffe_id}: extKeyUsage lacks serverAuth"),
            ));
        }
    }

    let validity = cert.validity();
    Ok(LeafInfo {
        spiffe_id,
        not_before: asn1_time(&validity.not_before),
        not_after: asn1_time(&validity.not_after),
        serial: cert.raw_serial().to_vec(),
    })
}

/// The SPIFFE ID of a peer after the handshake, from its certificate chain (leaf first), e.g.
/// `ServerConnection::peer_certificates()`. Only reads the single URI SAN; the verifiers have
/// already enforced everything else.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, IdentityError> {
    let Some(leaf) = certs.first() else {
        return Err(
            SvidError::new(Reason::PeerCertMissing, "peer presented no certificate").into(),
        );
    };
    let cert = parse_cert(leaf)?;
    Ok(spiffe_id_of(&cert)?)
}

/// Map a path-validation error from webpki/rustls to a reason.
fn chain_error(err: rustls::Error, who: &SpiffeId) -> SvidError {
    let reason = match &err {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Reason::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Reason::NotYetValid
            }
            CertificateError::UnknownIssuer => Reason::UntrustedIssuer,
            CertificateError::BadSignature => Reason::BadSignature,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Reason::ExtKeyUsage
            }
            CertificateError::BadEncoding => Reason::MalformedCert,
            _ => Reason::ChainInvalid,
        },
        _ => Reason::ChainInvalid,
    };
    SvidError::new(reason, format!("{who}: {err}"))
}

#[derive(Debug)]
pub(crate) struct BundleState {
    roots: Arc<RootCertStore>,
    /// The roots as installed (the store above keeps only trust anchors), for the admin view.
    ders: Arc<[CertificateDer<'static>]>,
    /// webpki path validation for client certificates against `roots` (clientAuth purpose).
    client_chain: Arc<dyn ClientCertVerifier>,
}

impl BundleState {
    pub(crate) fn new(roots: Vec<CertificateDer<'static>>) -> Result<BundleState, IdentityError> {
        if roots.is_empty() {
            return Err(IdentityError::Bundle("no root certificates".into()));
        }
        let ders: Arc<[CertificateDer<'static>]> = roots.clone().into();
        let mut store = RootCertStore::empty();
        for (i, der) in roots.into_iter().enumerate() {
            store
                .add(der)
                .map_err(|e| IdentityError::Bundle(format!("root #{}: {e}", i + 1)))?;
        }
        let roots = Arc::new(store);
        let client_chain =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto_provider())
                .clear_root_hint_subjects()
                .build()
                .map_err(|e| IdentityError::Bundle(e.to_string()))?;
        Ok(BundleState {
            roots,
            ders,
            client_chain,
        })
    }
}

/// The roots a peer's chain must lead to: one or several (root rotation). Replaceable at run
/// time; verifiers read the current roots at each handshake.
#[derive(Debug)]
pub struct TrustBundle {
    state: ArcSwap<BundleState>,
}

impl TrustBundle {
    /// From DER roots (at least one).
    pub fn from_ders(roots: Vec<CertificateDer<'static>>) -> Result<TrustBundle, IdentityError> {
        Ok(TrustBundle {
            state: ArcSwap::from_pointee(BundleState::new(roots)?),
        })
    }

    pub(crate) fn from_state(state: BundleState) -> TrustBundle {
        TrustBundle {
            state: ArcSwap::from_pointee(state),
        }
    }

    /// From PEM text holding one or more certificates.
    pub fn from_pem(pem: &[u8]) -> Result<TrustBundle, IdentityError> {
        TrustBundle::from_ders(parse_pem_certs(pem)?)
    }

    /// Replace the roots; new handshakes use them, established connections are untouched.
    pub fn replace(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), IdentityError> {
        self.install(BundleState::new(roots)?);
        Ok(())
    }

    /// Install a state prepared with [`BundleState::new`] (so a reload can validate everything
    /// before swapping anything).
    pub(crate) fn install(&self, state: BundleState) {
        self.state.store(Arc::new(state));
    }

    /// The current roots.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.state.load().roots.clone()
    }

    /// The current roots as DER certificates, in the order they were given.
    pub fn root_certs(&self) -> Arc<[CertificateDer<'static>]> {
        self.state.load().ders.clone()
    }

    /// Number of roots.
    pub fn len(&self) -> usize {
        self.state.load().roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// All certificates in PEM text, in order.
pub(crate) fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Bundle(format!("PEM: {e}")))?;
    Ok(certs)
}

fn signature_schemes() -> Vec<SignatureScheme> {
    crypto_provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Server-side verifier (the gateway): requires a client certificate that is a valid
/// X.509-SVID, chains to the trust bundle, and belongs to an allowed trust domain.
#[derive(Debug)]
pub struct MeshClientVerifier {
    bundle: Arc<TrustBundle>,
    trust_domains: Vec<String>,
}

impl MeshClientVerifier {
    /// Accept clients whose SPIFFE ID is in one of `allowed_trust_domains`.
    pub fn new<I, S>(bundle: Arc<TrustBundle>, allowed_trust_domains: I) -> MeshClientVerifier
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MeshClientVerifier {
            bundle,
            trust_domains: allowed_trust_domains.into_iter().map(Into::into).collect(),
        }
    }

    /// The checks of [`ClientCertVerifier::verify_client_cert`], returning the caller's identity.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        let info = inspect_leaf(end_entity, Usage::Client)?;
        let id = info.spiffe_id;
        let state = self.bundle.state.load();
        state
            .client_chain
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| chain_error(e, &id))?;
        if !self.trust_domains.iter().any(|td| td == id.trust_domain()) {
            return Err(SvidError::new(
                Reason::TrustDomainNotAllowed,
                format!(
                    "{id}: trust domain {} is not one of [{}]",
                    id.trust_domain(),
                    self.trust_domains.join(", ")
                ),
            ));
        }
        Ok(id)
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

/// Client-side verifier (a sidecar dialing the gateway): the server certificate must be a valid
/// X.509-SVID chaining to the trust bundle whose SPIFFE ID is one of the expected identities.
/// The TLS server name (SNI) is not checked against the certificate.
#[derive(Debug)]
pub struct MeshServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: Vec<SpiffeId>,
}

impl MeshServerVerifier {
    /// Accept servers presenting one of `expected` (an empty set accepts nobody).
    pub fn new(
        bundle: Arc<TrustBundle>,
        expected: impl IntoIterator<Item = SpiffeId>,
    ) -> MeshServerVerifier {
        MeshServerVerifier {
            bundle,
            expected: expected.into_iter().collect(),
        }
    }

    /// The checks of [`ServerCertVerifier::verify_server_cert`], returning the server's identity.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        let info = inspect_leaf(end_entity, Usage::Server)?;
        let id = info.spiffe_id;
        let roots = self.bundle.roots();
        let parsed = ParsedCertificate::try_from(end_entity).map_err(|e| chain_error(e, &id))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            crypto_provider().signature_verification_algorithms.all,
        )
        .map_err(|e| chain_error(e, &id))?;
        if !self.expected.contains(&id) {
            let expected: Vec<String> = self.expected.iter().map(ToString::to_string).collect();
            return Err(SvidError::new(
                Reason::UnexpectedIdentity,
                format!("server is {id}, expected one of [{}]", expected.join(", ")),
            ));
        }
        Ok(id)
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::ca::{BadSvid, Ca, Svid};
    use crate::testutil::TempDir;

    struct Fixture {
        _dir: TempDir,
        ca: Ca,
        other_ca: Ca,
        bundle: Arc<TrustBundle>,
    }

    fn fixture() -> Fixture {
        let dir = TempDir::new("verify");
        let ca = Ca::init(dir.join("ca"), "cluster.local").unwrap();
        let other_ca = Ca::init(dir.join("other"), "cluster.local").unwrap();
        let bundle = Arc::new(TrustBundle::from_pem(ca.root_cert_pem().as_bytes()).unwrap());
        Fixture {
            _dir: dir,
            ca,
            other_ca,
            bundle,
        }
    }

    fn chain(s: &Svid) -> Vec<CertificateDer<'static>> {
        s.chain_der().unwrap()
    }

    fn client_check(f: &Fixture, s: &Svid) -> Result<SpiffeId, SvidError> {
        let v = MeshClientVerifier::new(f.bundle.clone(), ["cluster.local"]);
        let c = chain(s);
        v.verify(&c[0], &c[1..], UnixTime::now())
    }

    fn server_check(f: &Fixture, s: &Svid, expected: &[&str]) -> Result<SpiffeId, SvidError> {
        let v = MeshServerVerifier::new(
            f.bundle.clone(),
            expected.iter().map(|e| SpiffeId::parse(e).unwrap()),
        );
        let c = chain(s);
        v.verify(&c[0], &c[1..], UnixTime::now())
    }

    const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

    #[test]
    fn client_verifier_accepts_a_good_svid_and_names_it() {
        let f = fixture();
        let s =
            f.ca.issue("default", "sleep", Duration::from_secs(600))
                .unwrap();
        assert_eq!(client_check(&f, &s).unwrap().to_string(), SLEEP);
        // Through the rustls trait as well.
        let v = MeshClientVerifier::new(f.bundle.clone(), ["cluster.local"]);
        let c = chain(&s);
        assert!(
            v.verify_client_cert(&c[0], &c[1..], UnixTime::now())
                .is_ok()
        );
        assert!(v.client_auth_mandatory() && v.offer_client_auth());
    }

    #[test]
    fn client_verifier_rejections_each_have_their_own_reason() {
        let f = fixture();
        let bad = |b: BadSvid| {
            let s = f.ca.issue_bad("default", "sleep", b).unwrap();
            client_check(&f, &s).unwrap_err()
        };
        let cases = [
            (
                BadSvid::OtherTrustDomain("evil.org".into()),
                Reason::TrustDomainNotAllowed,
            ),
            (BadSvid::IsCa, Reason::LeafIsCa),
            (BadSvid::TwoUriSans, Reason::MultipleUriSans),
            (BadSvid::NoUriSan, Reason::NoUriSan),
            (BadSvid::NoPath, Reason::NoPath),
            (BadSvid::NotSpiffe, Reason::BadSpiffeId),
            (BadSvid::Expired, Reason::Expired),
            (BadSvid::NotYetValid, Reason::NotYetValid),
            (BadSvid::WrongKeyUsage, Reason::KeyUsage),
            (BadSvid::KeyCertSign, Reason::KeyUsage),
            (BadSvid::NoKeyUsage, Reason::KeyUsage),
            (BadSvid::ServerAuthOnly, Reason::ExtKeyUsage),
        ];
        for (b, want) in cases {
            let e = bad(b.clone());
            assert_eq!(e.reason, want, "{b:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("spiffe: {}: ", want.code())),
                "{e}"
            );
        }
        // A client-only certificate is fine for a client.
        let s =
            f.ca.issue_bad("default", "sleep", BadSvid::ClientAuthOnly)
                .unwrap();
        client_check(&f, &s).unwrap();
        // Another CA, even with the same trust domain.
        let s = f
            .other_ca
            .issue("default", "sleep", Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            client_check(&f, &s).unwrap_err().reason,
            Reason::UntrustedIssuer
        );
        // Leaf without its intermediate: the chain cannot be built.
        let s =
            f.ca.issue("default", "sleep", Duration::from_secs(600))
                .unwrap();
        let c = chain(&s);
        let v = MeshClientVerifier::new(f.bundle.clone(), ["cluster.local"]);
        assert_eq!(
            v.verify(&c[0], &[], UnixTime::now()).unwrap_err().reason,
            Reason::UntrustedIssuer
        );
        // Garbage.
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(
            v.verify(&junk, &[], UnixTime::now()).unwrap_err().reason,
            Reason::MalformedCert
        );
    }

    #[test]
    fn client_verifier_allows_several_trust_domains() {
        let f = fixture();
        let s =
            f.ca.issue_bad(
                "default",
                "sleep",
                BadSvid::OtherTrustDomain("partner.org".into()),
            )
            .unwrap();
        let v = MeshClientVerifier::new(f.bundle.clone(), ["cluster.local", "partner.org"]);
        let c = chain(&s);
        assert_eq!(
            v.verify(&c[0], &c[1..], UnixTime::now())
                .unwrap()
                .trust_domain(),
            "partner.org"
        );
    }

    #[test]
    fn server_verifier_checks_the_expected_identity_not_dns() {
        let f = fixture();
        let gw =
            f.ca.issue("istio-system", "egress-gateway", Duration::from_secs(600))
                .unwrap();
        let want = "spiffe://cluster.local/ns/istio-system/sa/egress-gateway";
        assert_eq!(server_check(&f, &gw, &[want]).unwrap().to_string(), want);
        assert_eq!(
            server_check(&f, &gw, &[SLEEP, want]).unwrap().to_string(),
            want
        );
        let e = server_check(&f, &gw, &[SLEEP]).unwrap_err();
        assert_eq!(e.reason, Reason::UnexpectedIdentity);
        assert!(
            e.to_string().contains(want) && e.to_string().contains(SLEEP),
            "{e}"
        );
        assert_eq!(
            server_check(&f, &gw, &[]).unwrap_err().reason,
            Reason::UnexpectedIdentity
        );
        // The server name is irrelevant.
        let v = MeshServerVerifier::new(f.bundle.clone(), [SpiffeId::parse(want).unwrap()]);
        let c = chain(&gw);
        let name = ServerName::try_from("unrelated.example.com").unwrap();
        assert!(
            v.verify_server_cert(&c[0], &c[1..], &name, &[], UnixTime::now())
                .is_ok()
        );
        // A server needs serverAuth.
        let s =
            f.ca.issue_bad("istio-system", "egress-gateway", BadSvid::ClientAuthOnly)
                .unwrap();
        assert_eq!(
            server_check(&f, &s, &[want]).unwrap_err().reason,
            Reason::ExtKeyUsage
        );
        // Expired / other CA.
        let s =
            f.ca.issue_bad("istio-system", "egress-gateway", BadSvid::Expired)
                .unwrap();
        assert_eq!(
            server_check(&f, &s, &[want]).unwrap_err().reason,
            Reason::Expired
        );
        let s = f
            .other_ca
            .issue("istio-system", "egress-gateway", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            server_check(&f, &s, &[want]).unwrap_err().reason,
            Reason::UntrustedIssuer
        );
    }

    #[test]
    fn trust_bundle_replacement_applies_to_the_next_verification() {
        let f = fixture();
        let s = f
            .other_ca
            .issue("default", "sleep", Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            client_check(&f, &s).unwrap_err().reason,
            Reason::UntrustedIssuer
        );
        let both = format!("{}{}", f.ca.root_cert_pem(), f.other_ca.root_cert_pem());
        f.bundle
            .replace(parse_pem_certs(both.as_bytes()).unwrap())
            .unwrap();
        assert_eq!(f.bundle.len(), 2);
        client_check(&f, &s).unwrap();
        let s_old =
            f.ca.issue("default", "sleep", Duration::from_secs(600))
                .unwrap();
        client_check(&f, &s_old).unwrap();
        // An empty bundle is refused and the old one kept.
        assert!(f.bundle.replace(vec![]).is_err());
        assert!(TrustBundle::from_pem(b"").is_err());
        assert_eq!(f.bundle.len(), 2);
    }

    #[test]
    fn peer_spiffe_id_reads_the_single_uri_san() {
        let f = fixture();
        let s =
            f.ca.issue("default", "sleep", Duration::from_secs(600))
                .unwrap();
        assert_eq!(peer_spiffe_id(&chain(&s)).unwrap().to_string(), SLEEP);
        match peer_spiffe_id(&[]) {
            Err(IdentityError::Svid(e)) => assert_eq!(e.reason, Reason::PeerCertMissing),
            other => panic!("{other:?}"),
        }
        let s =
            f.ca.issue_bad("default", "sleep", BadSvid::TwoUriSans)
                .unwrap();
        assert!(peer_spiffe_id(&chain(&s)).is_err());
    }

    #[test]
    fn reasons_survive_rustls_and_io_errors() {
        let e = SvidError::new(Reason::LeafIsCa, "x");
        let r: rustls::Error = e.into();
        assert_eq!(rejection_reason(&r), Some(Reason::LeafIsCa));
        assert!(r.to_string().contains("spiffe: leaf_is_ca: x"), "{r}");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, r);
        assert_eq!(io_rejection_reason(&io), Some(Reason::LeafIsCa));
        assert_eq!(
            rejection_reason(&rustls::Error::NoCertificatesPresented),
            Some(Reason::PeerCertMissing)
        );
        assert_eq!(rejection_reason(&rustls::Error::DecryptError), None);
        assert_eq!(io_rejection_reason(&std::io::Error::other("x")), None);
    }

    #[test]
    fn reason_codes_are_distinct() {
        let all = [
            Reason::PeerCertMissing,
            Reason::MalformedCert,
            Reason::NoUriSan,
            Reason::MultipleUriSans,
            Reason::BadSpiffeId,
            Reason::NoPath,
            Reason::LeafIsCa,
            Reason::KeyUsage,
            Reason::ExtKeyUsage,
            Reason::UntrustedIssuer,
            Reason::BadSignature,
            Reason::Expired,
            Reason::NotYetValid,
            Reason::ChainInvalid,
            Reason::TrustDomainNotAllowed,
            Reason::UnexpectedIdentity,
        ];
        let codes: HashSet<_> = all.iter().map(Reason::code).collect();
        assert_eq!(codes.len(), all.len());
    }
}
