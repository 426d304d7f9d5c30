//! Host names the Istio way (`istio-egress-spec.md` §0, §3, §10.7).
//!
//! - Canonical form: lower case, no trailing dot (DNS is case-insensitive; `example.com.` and
//!   `example.com` are the same name).
//! - Short names in VirtualService / DestinationRule / Sidecar are expanded with the namespace
//!   of the object that wrote them: `reviews` -> `reviews.<ns>.svc.cluster.local`
//!   (Istio's `ResolveShortnameToFQDN`). ServiceEntry hosts are taken as written, as in Istio.
//! - Wildcards are left-most only: `*.foo.com` matches `a.foo.com` and `a.b.foo.com`, never
//!   `foo.com`; `*` matches everything.
//! - TLS `sniHosts` are the exception: `*.com` also matches `example.com`... and `*.foo.com`
//!   matches `foo.com`.

use crate::fastmap::HashMap;

/// The DNS suffix Istio appends to short names (istiod's default domain suffix).
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Lower-case and strip one trailing dot.
pub fn canonical(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    h.to_ascii_lowercase()
}

/// Canonicalize and expand a short name with `namespace`.
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    let h = canonical(host);
    if h == "*" || h.contains('.') || h.is_empty() {
        h
    } else {
        format!("{h}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// Does the (possibly wildcard) pattern `pattern` match the concrete or wildcard name `name`?
/// Both must be canonical. A wildcard name matches a wildcard pattern when it is at least as
/// specific (`*.a.foo.com` is inside `*.foo.com`).
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        // "*.foo.com" -> suffix ".foo.com": name must end with it and have something before.
        Some(suffix) => {
            let name_body = name.strip_prefix('*').unwrap_or(name);
            name_body.len() > suffix.len() && name_body.ends_with(suffix)
                || (name.starts_with('*') && name_body == suffix)
        }
        None => !name.starts_with('*') && pattern == name,
    }
}

/// Do two host patterns overlap (some concrete name matches both)?
pub fn intersects(a: &str, b: &str) -> bool {
    matches(a, b) || matches(b, a)
}

/// TLS `sniHosts` matching: like [`matches`], but `*.foo.com` also matches `foo.com`
/// (Envoy server_names semantics, `istio-egress-spec.md` §3).
pub fn sni_matches(pattern: &str, sni: &str) -> bool {
    if let Some(rest) = pattern.strip_prefix("*.")
        && sni == rest
    {
        return true;
    }
    matches(pattern, sni)
}

/// Validate a DNS name as Istio does for hosts: optional leading `*.` (or exactly `*` where the
/// caller allows it), labels of 1..63 chars of `[a-z0-9-]` (upper case allowed, it is
/// canonicalized), not starting or ending with `-`, total <= 255.
pub fn validate_dns_name(host: &str) -> Result<(), String> {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.is_empty() {
        return Err("empty host".into());
    }
    if h.len() > 255 {
        return Err(format!("host {host:?} is longer than 255 characters"));
    }
    let body = match h.strip_prefix("*.") {
        Some(b) => b,
        None if h == "*" => return Ok(()),
        None => h,
    };
    for label in body.split('.') {
        if label.is_empty() {
            return Err(format!("host {host:?} has an empty label"));
        }
        if label.contains('*') {
            return Err(format!(
                "host {host:?}: a wildcard is only allowed as the whole left-most label (\"*.example.com\")"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "host {host:?}: label {label:?} is longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!("host {host:?}: invalid label {label:?}"));
        }
    }
    Ok(())
}

/// Lookup from a name to the value of the most specific matching host: exact names, then
/// wildcards from the longest suffix, then `*`. Built once at compile time; a lookup hashes
/// at most one key per label of the name, however many hosts are indexed.
#[derive(Debug, Clone, Default)]
pub struct HostIndex<T> {
    exact: HashMap<String, T>,
    /// "foo.com" for "*.foo.com".
    wildcards: HashMap<String, T>,
    any: Option<T>,
}

impl<T: Clone> HostIndex<T> {
    pub fn new() -> Self {
        HostIndex {
            exact: HashMap::default(),
            wildcards: HashMap::default(),
            any: None,
        }
    }

    /// Insert; the first insertion of a host wins (first-match order).
    pub fn insert(&mut self, host: &str, value: T) {
        if host == "*" {
            if self.any.is_none() {
                self.any = Some(value);
            }
        } else if let Some(suffix) = host.strip_prefix("*.") {
            self.wildcards.entry(suffix.to_string()).or_insert(value);
        } else {
            self.exact.entry(host.to_string()).or_insert(value);
        }
    }

    /// Kept for callers that build in two phases; lookups need no preparation.
    pub fn finish(&mut self) {}

    /// The most specific match for a canonical name. A wildcard name (`*.a.foo.com`) matches
    /// itself exactly, then wider wildcards (`*.foo.com`).
    pub fn get(&self, name: &str) -> Option<&T> {
        let body = match name.strip_prefix("*.") {
            Some(b) => {
                if let Some(v) = self.wildcards.get(b) {
                    return Some(v);
                }
                b
            }
            None => {
                if let Some(v) = self.exact.get(name) {
                    return Some(v);
                }
                name
            }
        };
        // Strip one label at a time: the first hit is the longest suffix.
        let mut rest = body;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if let Some(v) = self.wildcards.get(rest) {
                return Some(v);
            }
        }
        self.any.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty() && self.any.is_none()
    }
}

/// Every value whose host pattern matches a name (not only the most specific): for
/// "which DestinationRules could apply to this host". One hash lookup per label of the name.
#[derive(Debug, Clone, Default)]
pub struct HostMultiMap<T> {
    by_pattern: HashMap<String, Vec<T>>,
}

impl<T> HostMultiMap<T> {
    pub fn new() -> Self {
        HostMultiMap {
            by_pattern: HashMap::default(),
        }
    }

    pub fn insert(&mut self, pattern: &str, value: T) {
        self.by_pattern
            .entry(pattern.to_string())
            .or_default()
            .push(value);
    }

    /// Values of patterns matching `name` (see [`matches`]): the name itself, wildcards over
    /// each proper suffix, then `*`. A wildcard name also finds patterns equal to it.
    pub fn matching<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s T> + 's {
        let mut keys = vec![name.to_string()];
        let body = name.strip_prefix("*.").unwrap_or(name);
        let mut rest = body;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            keys.push(format!("*.{rest}"));
        }
        keys.push("*".to_string());
        keys.dedup();
        keys.into_iter()
            .filter_map(move |k| self.by_pattern.get(&k))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_and_short_names() {
        assert_eq!(canonical("Example.COM."), "example.com");
        assert_eq!(
            resolve_short_name("reviews", "prod"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(resolve_short_name("a.b", "prod"), "a.b");
        assert_eq!(resolve_short_name("*", "prod"), "*");
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("*.foo.com", "a.foo.com"));
        assert!(matches("*.foo.com", "a.b.foo.com"));
        assert!(!matches("*.foo.com", "foo.com"));
        assert!(!matches("*.foo.com", "afoo.com"));
        assert!(matches("*", "anything"));
        assert!(matches("*.foo.com", "*.a.foo.com"));
        assert!(matches("*.foo.com", "*.foo.com"));
        assert!(!matches("a.foo.com", "*.foo.com"));
        assert!(sni_matches("*.com", "example.com"));
        assert!(sni_matches("*.foo.com", "foo.com"));
        assert!(!sni_matches("*.foo.com", "barfoo.com"));
    }

    #[test]
    fn index_prefers_exact_then_longest_wildcard() {
        let mut idx = HostIndex::new();
        idx.insert("*.com", 1);
        idx.insert("*.foo.com", 2);
        idx.insert("a.foo.com", 3);
        idx.finish();
        assert_eq!(idx.get("a.foo.com"), Some(&3));
        assert_eq!(idx.get("b.foo.com"), Some(&2));
        assert_eq!(idx.get("bar.com"), Some(&1));
        assert_eq!(idx.get("foo.com"), Some(&1));
        assert_eq!(idx.get("com"), None);
    }

    #[test]
    fn multimap_finds_every_matching_pattern() {
        let mut m = HostMultiMap::new();
        m.insert("a.foo.com", 1);
        m.insert("*.foo.com", 2);
        m.insert("*", 3);
        m.insert("*.a.foo.com", 4);
        let mut got: Vec<_> = m.matching("a.foo.com").copied().collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        let mut got: Vec<_> = m.matching("*.a.foo.com").copied().collect();
        got.sort();
        assert_eq!(got, vec![2, 3, 4]);
    }

    #[test]
    fn dns_names() {
        assert!(validate_dns_name("*.wikipedia.org").is_ok());
        assert!(validate_dns_name("a*.b.com").is_err());
        assert!(validate_dns_name("a..b").is_err());
        assert!(validate_dns_name("-a.b").is_err());
    }
}
