//! A throw-away certificate authority for tests (rcgen).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let ca = egret_testkit::ca::TestCa::new("egret test CA")?;
//! let server = ca.issue_server(&["api.test", "203.0.113.10"])?;
//! let client = ca.issue_client("client.test")?;
//! ca.write_to_dir(&server, std::path::Path::new("/tmp/server-certs"))?;
//! # let _ = client; Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate (PEM, leaf only) and its private key (PKCS#8 PEM).
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertPair {
    /// Writes `cert.pem`, `key.pem` and `ca.pem` into `dir` (created if missing).
    pub fn write_to_dir(&self, dir: &Path, ca_pem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for (file, text) in [
            ("cert.pem", self.cert_pem.as_str()),
            ("key.pem", self.key_pem.as_str()),
            ("ca.pem", ca_pem),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }

    /// The certificate as DER (for rustls).
    pub fn cert_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).context("parse certificate PEM")
    }

    /// The private key as DER (for rustls).
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).context("parse private key PEM")
    }
}

/// A self-signed root that issues server and client certificates.
pub struct TestCa {
    name: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

impl TestCa {
    /// A new root CA whose subject CN (and O) is `name`.
    pub fn new(name: &str) -> Result<TestCa> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "egret tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generate CA key")?;
        let cert = params.self_signed(&key).context("self-sign CA")?;
        Ok(TestCa {
            name: name.to_string(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).context("parse CA PEM")
    }

    /// A rustls root store holding only this CA.
    pub fn root_store(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()?).context("add CA to root store")?;
        Ok(roots)
    }

    /// A rustls client config trusting only this CA (no client certificate), ALPN unset.
    pub fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A server certificate (serverAuth) for `dns_names`; entries that parse as IP addresses
    /// become IP SANs. The first name is also the subject CN.
    pub fn issue_server(&self, dns_names: &[&str]) -> Result<CertPair> {
        let sans: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).context("server SANs")?;
        if let Some(first) = dns_names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate (clientAuth) with subject CN `cn` (also a DNS SAN when it is a
    /// valid DNS name).
    pub fn issue_client(&self, cn: &str) -> Result<CertPair> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Ok(name) = cn.to_string().try_into() {
            params.subject_alt_names = vec![SanType::DnsName(name)];
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate carrying a URI SAN (e.g. a SPIFFE id) and no CN.
    pub fn issue_client_uri(&self, uri: &str) -> Result<CertPair> {
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(uri.to_string().try_into().context("URI SAN")?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        self.sign(params)
    }

    /// Signs arbitrary parameters with this CA (for unusual certificates).
    pub fn sign(&self, params: CertificateParams) -> Result<CertPair> {
        let key = KeyPair::generate().context("generate key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("sign certificate")?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `pair` as `cert.pem` / `key.pem` plus this CA as `ca.pem` into `dir`.
    pub fn write_to_dir(&self, pair: &CertPair, dir: &Path) -> Result<()> {
        pair.write_to_dir(dir, &self.cert_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_that_rustls_accepts() -> Result<()> {
        let ca = TestCa::new("unit CA")?;
        let server = ca.issue_server(&["api.test", "203.0.113.10"])?;
        let client = ca.issue_client("client.test")?;
        assert!(ca.ca_pem().contains("BEGIN CERTIFICATE"));
        assert!(server.key_pem.contains("PRIVATE KEY"));
        let roots = Arc::new(ca.root_store()?);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()?;
        let _server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert_der()?], server.key_der()?)?;
        let _ = client.cert_der()?;
        let dir = std::env::temp_dir().join(format!("egret-ca-unit-{}", std::process::id()));
        ca.write_to_dir(&client, &dir)?;
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            assert!(dir.join(f).is_file());
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
