//! SPIFFE IDs (spiffe/spiffe `standards/SPIFFE-ID.md`).
//!
//! `spiffe://<trust-domain><path>`:
//! - the scheme is exactly `spiffe` (lowercase), followed by `://`;
//! - the trust domain is non-empty, at most 255 bytes, made of `[a-z0-9._-]` only — so an
//!   uppercase letter, a port (`:`), userinfo (`@`) or percent-encoding is rejected;
//! - the path is empty or a sequence of `/segment`, each segment non-empty, not `.` or `..`,
//!   made of `[A-Za-z0-9._-]` (no percent-encoding); a trailing `/` is an empty segment;
//! - no query (`?`) and no fragment (`#`); the whole ID is at most 2048 bytes.
//!
//! Istio's workload form is `spiffe://<td>/ns/<namespace>/sa/<service-account>`; its
//! AuthorizationPolicy `principals` are the same string without the `spiffe://` prefix.

use std::fmt;
use std::str::FromStr;

/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID (URI) in bytes.
pub const MAX_ID_LEN: usize = 2048;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("scheme is not `spiffe://`")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain must not contain a port")]
    Port,
    #[error("trust domain must not contain userinfo")]
    UserInfo,
    #[error("trust domain character {0:?} is not allowed (only a-z, 0-9, '.', '-', '_')")]
    TrustDomainChar(char),
    #[error("query is not allowed")]
    Query,
    #[error("fragment is not allowed")]
    Fragment,
    #[error("path must start with '/'")]
    PathNotAbsolute,
    #[error("path segments must not be empty (no '//' and no trailing '/')")]
    EmptySegment,
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    #[error("path character {0:?} is not allowed (only A-Z, a-z, 0-9, '.', '-', '_')")]
    PathChar(char),
}

/// A validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty, or starting with `/`.
    path: String,
}

impl SpiffeId {
    /// Parse and validate `spiffe://td/path`.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        // Query and fragment are checked before anything else so that the error names them.
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Build from a trust domain and a path (empty or starting with `/`).
    pub fn new(trust_domain: &str, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        validate_path(path)?;
        if SCHEME_PREFIX.len() + trust_domain.len() + path.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Istio's workload identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        // Each of namespace and service account is exactly one path segment.
        if namespace.contains('/') || service_account.contains('/') {
            return Err(SpiffeIdError::PathChar('/'));
        }
        SpiffeId::new(
            trust_domain,
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when the ID names a trust domain only (`spiffe://td`), which a workload SVID
    /// must not do.
    pub fn is_trust_domain_only(&self) -> bool {
        self.path.is_empty()
    }

    /// Istio's AuthorizationPolicy principal form: the ID without `spiffe://`
    /// (`cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }

    /// The namespace, when the path has Istio's exact `/ns/<ns>/sa/<sa>` form.
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account, when the path has Istio's exact `/ns/<ns>/sa/<sa>` form.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path.strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// Validate a trust domain name (`[a-z0-9._-]`, 1..=255 bytes).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.contains('?') {
        return Err(SpiffeIdError::Query);
    }
    if td.contains('#') {
        return Err(SpiffeIdError::Fragment);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::PathNotAbsolute);
    };
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(match c {
                '?' => SpiffeIdError::Query,
                '#' => SpiffeIdError::Fragment,
                c => SpiffeIdError::PathChar(c),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> SpiffeId {
        match SpiffeId::parse(s) {
            Ok(id) => id,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn err(s: &str) -> SpiffeIdError {
        match SpiffeId::parse(s) {
            Ok(id) => panic!("{s} accepted as {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_istio_workload_ids() {
        let id = ok("spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/sleep");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("sleep"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(
            SpiffeId::workload("cluster.local", "default", "sleep"),
            Ok(id)
        );
    }

    #[test]
    fn non_istio_paths_are_valid_but_have_no_ns_sa() {
        let id = ok("spiffe://example.org/foo/bar_baz/Q-1.2");
        assert_eq!(id.namespace(), None);
        assert_eq!(id.service_account(), None);
        assert_eq!(id.principal(), "example.org/foo/bar_baz/Q-1.2");
        // Looks like Istio's form but has an extra segment: not ns/sa.
        let id = ok("spiffe://td/ns/a/sa/b/c");
        assert_eq!(id.namespace(), None);
        // ...or a different order.
        assert_eq!(ok("spiffe://td/sa/b/ns/a").namespace(), None);
    }

    #[test]
    fn trust_domain_only() {
        let id = ok("spiffe://example.org");
        assert!(id.is_trust_domain_only());
        assert_eq!(id.path(), "");
        assert_eq!(id.principal(), "example.org");
        assert!(!ok("spiffe://example.org/a").is_trust_domain_only());
    }

    #[test]
    fn rejects_bad_scheme() {
        for s in [
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe:/cluster.local/ns/a/sa/b",
            "spiffe:cluster.local",
            "cluster.local/ns/a/sa/b",
        ] {
            assert_eq!(err(s), SpiffeIdError::WrongScheme, "{s}");
        }
        assert_eq!(err(""), SpiffeIdError::Empty);
    }

    #[test]
    fn rejects_bad_trust_domains() {
        assert_eq!(err("spiffe://"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(err("spiffe:///ns/a"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(
            err("spiffe://Cluster.local/ns/a"),
            SpiffeIdError::TrustDomainChar('C')
        );
        assert_eq!(err("spiffe://cluster.local:8080/ns/a"), SpiffeIdError::Port);
        assert_eq!(
            err("spiffe://user@cluster.local/ns/a"),
            SpiffeIdError::UserInfo
        );
        assert_eq!(
            err("spiffe://user:pw@cluster.local/ns/a"),
            SpiffeIdError::UserInfo
        );
        assert_eq!(
            err("spiffe://clu%41ster/ns/a"),
            SpiffeIdError::TrustDomainChar('%')
        );
        assert_eq!(
            err("spiffe://clüster/ns/a"),
            SpiffeIdError::TrustDomainChar('ü')
        );
        let long = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(err(&long), SpiffeIdError::TrustDomainTooLong);
        let max = format!("spiffe://{}/a", "a".repeat(255));
        ok(&max);
    }

    #[test]
    fn rejects_query_and_fragment() {
        assert_eq!(err("spiffe://td/ns/a?x=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td?x=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td/ns/a#frag"), SpiffeIdError::Fragment);
        assert_eq!(err("spiffe://td#frag"), SpiffeIdError::Fragment);
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(err("spiffe://td/"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/ns/a/"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/ns//a"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/ns/./a"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/ns/../a"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/.."), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/a%2Fb"), SpiffeIdError::PathChar('%'));
        assert_eq!(err("spiffe://td/a b"), SpiffeIdError::PathChar(' '));
        assert_eq!(err("spiffe://td/a*"), SpiffeIdError::PathChar('*'));
        // Dots inside a segment are fine.
        ok("spiffe://td/.a/b..c/...");
    }

    #[test]
    fn rejects_overlong_ids() {
        let s = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(err(&s), SpiffeIdError::TooLong);
        let s = format!(
            "spiffe://td/{}",
            "a".repeat(MAX_ID_LEN - "spiffe://td/".len())
        );
        ok(&s);
        assert_eq!(
            SpiffeId::new("td", &format!("/{}", "a".repeat(MAX_ID_LEN))),
            Err(SpiffeIdError::TooLong)
        );
    }

    #[test]
    fn workload_validates_its_parts() {
        assert_eq!(
            SpiffeId::workload("cluster.local", "a/b", "sa"),
            Err(SpiffeIdError::PathChar('/'))
        );
        assert_eq!(
            SpiffeId::workload("cluster.local", "ns", "sa/x"),
            Err(SpiffeIdError::PathChar('/'))
        );
        assert!(SpiffeId::workload("cluster.local", "", "sa").is_err());
        assert!(SpiffeId::workload("cluster.local", "ns", "..").is_err());
        assert!(SpiffeId::workload("Cluster", "ns", "sa").is_err());
    }

    #[test]
    fn from_str_and_new_agree() {
        let a: SpiffeId = "spiffe://td/x/y".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(SpiffeId::new("td", "/x/y"), Ok(a));
        assert_eq!(
            SpiffeId::new("td", "x"),
            Err(SpiffeIdError::PathNotAbsolute)
        );
    }
}
