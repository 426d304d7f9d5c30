//! What a certificate says — subject, SANs, serial, validity — for operators (the admin's
//! `/certs` view, `egret proxy-config secrets`). Nothing here validates: an expired or foreign
//! certificate is described, not rejected. Validation is [`crate::verify`]'s job.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::IdentityError;
use crate::verify::{asn1_time, parse_pem_certs};

/// The parts of an X.509 certificate an operator asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject DN as text (`CN=..., O=...`); empty for SVIDs without a subject.
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names: `URI:spiffe://...`, `DNS:name`, `IP:addr`.
    pub sans: Vec<String>,
    /// The serial number's big-endian bytes.
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// basicConstraints `cA=true`.
    pub is_ca: bool,
}

impl CertSummary {
    /// The serial as lower-case hex without separators (as `istioctl proxy-config secret`).
    pub fn serial_hex(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.serial.len() * 2);
        for b in &self.serial {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// Describe one DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary, IdentityError> {
    let cert = match X509Certificate::from_der(der) {
        Ok((_, cert)) => cert,
        Err(e) => return Err(IdentityError::Bundle(format!("certificate: {e}"))),
    };
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some(format!("URI:{u}")),
                GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                GeneralName::IPAddress(b) => ip_text(b).map(|ip| format!("IP:{ip}")),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let validity = cert.validity();
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        serial: cert.raw_serial().to_vec(),
        not_before: asn1_time(&validity.not_before),
        not_after: asn1_time(&validity.not_after),
        is_ca,
    })
}

/// Describe every certificate in PEM text, in order (a chain: leaf first).
pub fn summarize_pem(pem: &[u8]) -> Result<Vec<CertSummary>, IdentityError> {
    let certs: Vec<CertificateDer<'static>> = parse_pem_certs(pem)?;
    if certs.is_empty() {
        return Err(IdentityError::Bundle("no PEM certificate found".into()));
    }
    certs.iter().map(|c| summarize(c)).collect()
}

fn ip_text(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;
    use crate::Ca;
    use crate::testutil::TempDir;

    #[test]
    fn describes_an_svid_and_its_root() {
        let dir = TempDir::new("certinfo");
        let ca = Ca::init(&*dir, "cluster.local").unwrap();
        let svid = ca
            .issue("default", "sleep", Duration::from_secs(3600))
            .unwrap();
        let chain = summarize_pem(svid.cert_chain_pem.as_bytes()).unwrap();
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        let leaf = &chain[0];
        assert_eq!(
            leaf.sans,
            vec!["URI:spiffe://cluster.local/ns/default/sa/sleep".to_string()]
        );
        assert!(!leaf.is_ca);
        assert_eq!(leaf.serial, svid.serial().unwrap());
        assert_eq!(leaf.serial_hex().len(), leaf.serial.len() * 2);
        let ttl = leaf.not_after.duration_since(leaf.not_before).unwrap();
        // notBefore is backdated by `ca::BACKDATE` (clock skew); the lifetime is ttl plus that.
        assert!(
            ttl >= Duration::from_secs(3600) && ttl <= Duration::from_secs(3600 + 600),
            "{ttl:?}"
        );
        let roots = summarize_pem(svid.root_pem.as_bytes()).unwrap();
        assert!(roots[0].is_ca);
        assert_eq!(roots[0].subject, roots[0].issuer, "a root is self-signed");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(summarize(b"not a certificate").is_err());
        assert!(summarize_pem(b"").is_err());
        assert!(
            summarize_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
