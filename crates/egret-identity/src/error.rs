use std::path::PathBuf;

use crate::spiffe::SpiffeIdError;
use crate::verify::SvidError;

/// Everything that can go wrong in this crate outside a TLS handshake.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a CA already exists in {} ({file} is present); refusing to overwrite it",
        dir.display()
    )]
    CaExists { dir: PathBuf, file: &'static str },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("invalid SPIFFE ID: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    #[error("{0}")]
    Svid(#[from] SvidError),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("this CA signs for trust domain {ca}, not {requested}")]
    TrustDomainMismatch { ca: String, requested: String },
    #[error("invalid ttl: {0}")]
    Ttl(String),
    #[error("trust bundle: {0}")]
    Bundle(String),
}

impl IdentityError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> IdentityError {
        IdentityError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> IdentityError {
        IdentityError::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
}
