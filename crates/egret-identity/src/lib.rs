//! Mesh identity for egret: a small CA (root + signing intermediate), SPIFFE IDs and X.509-SVIDs,
//! trust bundles (several roots for root rotation), identity directories in Istio's layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`) with hot reload, and rustls verifiers that
//! check SPIFFE identities instead of DNS names.
//!
//! - [`spiffe`]: [`SpiffeId`] parsing/validation and Istio's `ns/<ns>/sa/<sa>` form.
//! - [`ca`]: [`Ca::init`], [`Ca::load`], [`Ca::issue`] → [`Svid`], [`Svid::write`].
//! - [`verify`]: [`MeshClientVerifier`] (gateway side), [`MeshServerVerifier`] (sidecar side),
//!   [`TrustBundle`], [`peer_spiffe_id`], and the rejection [`Reason`]s.
//! - [`certinfo`]: [`certinfo::summarize`]: subject, SANs, serial and validity of any
//!   certificate (for the admin's `/certs` view; no validation).
//! - [`store`]: [`IdentityStore`]: load, reload, watch, rustls configs whose certificates and
//!   trust bundle swap for new handshakes only.
//!
//! The crypto provider is rustls' aws-lc-rs provider ([`crypto_provider`]); mesh connections are
//! TLS 1.3 only and never resume sessions, so every connection is verified against the current
//! trust bundle and presents the current certificate.

pub mod ca;
pub mod certinfo;
mod error;
mod fsutil;
pub mod spiffe;
pub mod store;
pub mod verify;

use std::sync::{Arc, OnceLock};

#[cfg(any(test, feature = "test-util"))]
pub use ca::BadSvid;
pub use ca::{Ca, Svid};
pub use error::IdentityError;
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use store::{CERT_CHAIN_FILE, IdentityStore, KEY_FILE, ROOT_CERT_FILE};
pub use verify::{
    LeafInfo, MeshClientVerifier, MeshServerVerifier, Reason, SvidError, TrustBundle, Usage,
    inspect_leaf, io_rejection_reason, peer_spiffe_id, rejection_reason,
};

/// The default trust domain (Istio's).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The rustls crypto provider used for everything in this crate (aws-lc-rs).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory path under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let d = std::env::temp_dir().join(format!(
                "egret-identity-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&d);
            TempDir(d)
        }
    }

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
