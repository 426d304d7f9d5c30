//! TLS origination (DestinationRule `tls` SIMPLE / MUTUAL): rustls client configurations built
//! once per cluster when a snapshot is loaded — never on the request path.
//!
//! Server certificates are verified by default (`istio-egress-spec.md` §10.17; egret's
//! secure default): against `caCertificates` when given, else the system roots. With
//! `subjectAltNames` the certificate must carry one of them (instead of the SNI).
//! `insecureSkipVerify: true` turns verification off and is logged as a warning at load time.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use egret_config::types::ClientTlsMode;
use egret_model::snapshot::{UpstreamTls, Verify};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: String, what: &'static str },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("no system root certificates could be loaded")]
    NoSystemRoots,
    #[error("credentialName {0:?}: credentials are read from --credentials-dir, which is not set")]
    NoCredentialsDir(String),
    #[error("{0}")]
    Verifier(String),
}

/// Where `credentialName` credentials live: `<dir>/<name>/{tls.crt,tls.key,ca.crt}`.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    pub dir: Option<std::path::PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Option<Arc<RootCertStore>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            (added > 0).then(|| Arc::new(store))
        })
        .clone()
        .ok_or(TlsError::NoSystemRoots)
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_string(),
        source,
    })
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Pem {
        path: path.to_string(),
        what: "private key",
    })
}

fn roots_from(path: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs(path)?);
    if added == 0 {
        return Err(TlsError::Pem {
            path: path.to_string(),
            what: "CA certificate",
        });
    }
    Ok(Arc::new(store))
}

/// A rustls client configuration for a cluster, or `None` when the cluster is plaintext
/// (DISABLE) or uses the mesh identity (ISTIO_MUTUAL, which the mesh TLS layer handles).
pub fn client_config(
    t: &UpstreamTls,
    creds: &CredentialStore,
    http2: bool,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if !matches!(t.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
        return Ok(None);
    }
    let cred_file = |name: &str, file: &str| -> Result<String, TlsError> {
        let dir = creds
            .dir
            .as_ref()
            .ok_or_else(|| TlsError::NoCredentialsDir(name.to_string()))?;
        Ok(dir.join(name).join(file).display().to_string())
    };
    let verifier: Arc<dyn ServerCertVerifier> = match &t.verify {
        Verify::InsecureSkip => Arc::new(NoVerify(provider())),
        Verify::CaFile(p) => san_verifier(roots_from(p)?, &t.subject_alt_names)?,
        Verify::Credential(name) => san_verifier(
            roots_from(&cred_file(name, "ca.crt")?)?,
            &t.subject_alt_names,
        )?,
        Verify::SystemRoots | Verify::MeshRoots => {
            san_verifier(system_roots()?, &t.subject_alt_names)?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match t.mode {
        ClientTlsMode::Mutual => {
            let (cert, pkey) = match (&t.client_certificate, &t.private_key, &t.credential_name) {
                (Some(c), Some(k), _) => (certs(c)?, key(k)?),
                (_, _, Some(name)) => (
                    certs(&cred_file(name, "tls.crt")?)?,
                    key(&cred_file(name, "tls.key")?)?,
                ),
                _ => {
                    return Err(TlsError::Verifier(
                        "MUTUAL needs clientCertificate and privateKey, or credentialName".into(),
                    ));
                }
            };
            builder.with_client_auth_cert(cert, pkey)?
        }
        _ => builder.with_no_client_auth(),
    };
    // The upstream protocol is decided by the cluster (Istio: the port's protocol and
    // h2UpgradePolicy); ALPN says the same. Client TLS (passthrough) never comes here.
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Some(Arc::new(config)))
}

fn san_verifier(
    roots: Arc<RootCertStore>,
    sans: &[String],
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    if sans.is_empty() {
        return Ok(inner);
    }
    let names = sans
        .iter()
        .filter_map(|s| ServerName::try_from(s.clone()).ok())
        .collect();
    Ok(Arc::new(SanVerifier { inner, names }))
}

/// `subjectAltNames`: the chain must be valid and the certificate must match one of these
/// names (whatever SNI was sent).
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subjectAltNames to verify".into());
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: signatures are still checked (the handshake must be with the
/// holder of the presented key), the certificate itself is not.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Does this file path exist? (For clearer load-time errors.)
pub fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

/// A Gateway server's TLS termination (SIMPLE or MUTUAL with certificate files or a
/// `credentialName`), built once per snapshot. ISTIO_MUTUAL uses the mesh identity instead and
/// PASSTHROUGH terminates nothing: both are `None` here.
pub fn server_config(
    s: &egret_model::snapshot::ServerTls,
    creds: &CredentialStore,
    alpn_h2: bool,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    use egret_config::types::{ServerTlsMode, TlsProtocol};
    if !matches!(
        s.mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) {
        return Ok(None);
    }
    let cred_file = |name: &str, file: &str| -> Result<String, TlsError> {
        let dir = creds
            .dir
            .as_ref()
            .ok_or_else(|| TlsError::NoCredentialsDir(name.to_string()))?;
        Ok(dir.join(name).join(file).display().to_string())
    };
    let (chain, pkey) = match (&s.server_certificate, &s.private_key, &s.credential_name) {
        (Some(c), Some(k), _) => (certs(c)?, key(k)?),
        (_, _, Some(name)) => (
            certs(&cred_file(name, "tls.crt")?)?,
            key(&cred_file(name, "tls.key")?)?,
        ),
        _ => {
            return Err(TlsError::Verifier(
                "SIMPLE/MUTUAL servers need serverCertificate and privateKey, or credentialName"
                    .into(),
            ));
        }
    };
    // Istio's defaults: TLS 1.2 minimum; TLS_AUTO/none = what rustls supports (1.2, 1.3).
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        match (s.min_protocol_version, s.max_protocol_version) {
            (Some(TlsProtocol::TlsV1_3), _) => vec![&rustls::version::TLS13],
            (_, Some(TlsProtocol::TlsV1_2)) => vec![&rustls::version::TLS12],
            _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)?;
    let builder = if matches!(
        s.mode,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) {
        let ca = match (&s.ca_certificates, &s.credential_name) {
            (Some(p), _) => p.clone(),
            (None, Some(name)) => cred_file(name, "ca.crt")?,
            (None, None) => {
                return Err(TlsError::Verifier(
                    "MUTUAL servers need caCertificates or credentialName".into(),
                ));
            }
        };
        let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots_from(&ca)?,
            provider(),
        );
        if s.mode == ServerTlsMode::OptionalMutual {
            v = v.allow_unauthenticated();
        }
        let v = v.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, pkey)?;
    resumption_by_stateless_ticket(&mut config)?;
    config.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Some(Arc::new(config)))
}

/// Session resumption for a Gateway server's TLS termination: one stateless TLS 1.3 ticket per
/// full handshake, sealed with a process-local key that rotates every 6 hours (rustls'
/// [`rustls::crypto::aws_lc_rs::Ticketer`]), and no server-side session cache.
///
/// Why: Envoy (Istio's gateway) resumes by default with stateless tickets
/// (`DownstreamTlsContext.disable_stateless_session_resumption: false`, keys generated per
/// process), and Istio's `ServerTLSSettings` has no field to change that, so egret keeps
/// resumption on. rustls' default instead sends two tickets that are keys into a 256-entry
/// in-memory cache behind a mutex: every full handshake paid two ticket records and two cache
/// inserts, and past ~128 new clients a second the entries were evicted before anyone came
/// back, so resumption mostly failed anyway (issue 8, bench/NOTES.md "TLS handshakes at the
/// gateway"). A stateless ticket costs one seal and one record, works for any number of
/// clients, and a client that resumes gets a fresh ticket each time (so one is enough for the
/// usual reconnect pattern; TLS 1.3 tickets are single-use, RFC 8446 §8.1).
pub(crate) fn resumption_by_stateless_ticket(
    config: &mut rustls::ServerConfig,
) -> Result<(), TlsError> {
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 1;
    Ok(())
}
