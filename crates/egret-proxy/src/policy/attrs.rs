//! The attributes one decision looks at, and Istio's string matching.

use std::net::IpAddr;

use http::HeaderMap;

/// Which kind of traffic a decision is about. HTTP-only attributes (host, method, path,
/// headers, request principals) exist only for `Http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tls,
    Tcp,
}

/// A verified JWT: what RequestAuthentication hands to authorization (`request.auth.*`).
#[derive(Debug, Clone, Default)]
pub struct RequestAuth {
    /// `<iss>/<sub>` — `request.auth.principal`, `source.requestPrincipals`.
    pub principal: String,
    /// `aud` (a string or a list in the token) — `request.auth.audiences`.
    pub audiences: Vec<String>,
    /// `azp` — `request.auth.presenter`.
    pub presenter: Option<String>,
    /// The whole payload — `request.auth.claims[a][b]`.
    pub claims: serde_json::Value,
}

/// What is known about the request or connection being decided.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    pub protocol: Protocol,
    /// The downstream peer's address (`source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The original client address (`remote.ip`, `remoteIpBlocks`): from
    /// `X-Forwarded-For`'s first hop when the request carries one, else `source_ip`.
    pub remote_ip: Option<IpAddr>,
    /// The caller's mesh identity without `spiffe://` (`cluster.local/ns/<ns>/sa/<sa>`), from
    /// the mesh tunnel's client certificate at a gateway, the workload's own at a sidecar.
    pub principal: Option<&'a str>,
    /// Where the request is going: the original destination or the resolved upstream.
    pub destination_ip: Option<IpAddr>,
    /// The listener (gateway server) or original destination port (`destination.port`).
    pub destination_port: u16,
    /// TLS server name (`connection.sni`).
    pub sni: Option<&'a str>,
    /// HTTP: the normalized host (lower case, no port, no trailing dot).
    pub host: Option<&'a str>,
    pub method: Option<&'a str>,
    /// HTTP: the normalized path, without the query.
    pub path: Option<&'a str>,
    pub headers: Option<&'a HeaderMap>,
    /// HTTP: the verified JWT, if the request carried one.
    pub auth: Option<&'a RequestAuth>,
}

impl<'a> Attrs<'a> {
    /// A connection's attributes (TLS or TCP): no HTTP fields.
    pub fn connection(protocol: Protocol, destination_port: u16) -> Attrs<'a> {
        Attrs {
            protocol,
            source_ip: None,
            remote_ip: None,
            principal: None,
            destination_ip: None,
            destination_port,
            sni: None,
            host: None,
            method: None,
            path: None,
            headers: None,
            auth: None,
        }
    }

    /// `source.namespace`: the `ns` segment of the principal.
    pub fn source_namespace(&self) -> Option<&'a str> {
        principal_segment(self.principal?, "ns")
    }

    /// `source.serviceAccount` segment.
    pub fn source_service_account(&self) -> Option<&'a str> {
        principal_segment(self.principal?, "sa")
    }

    /// `source.trustDomain`: the first segment of the principal.
    pub fn source_trust_domain(&self) -> Option<&'a str> {
        self.principal?.split('/').next()
    }
}

/// The value after `/<key>/` in `td/ns/<ns>/sa/<sa>`.
fn principal_segment<'a>(p: &'a str, key: &str) -> Option<&'a str> {
    let mut parts = p.split('/').skip(1);
    while let Some(k) = parts.next() {
        let v = parts.next()?;
        if k == key {
            return Some(v);
        }
    }
    None
}

/// Istio's principal form of a SPIFFE ID: `spiffe://td/ns/x/sa/y` -> `td/ns/x/sa/y`.
pub fn principal_of(spiffe_id: &str) -> &str {
    spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id)
}

/// Istio's string match for AuthorizationPolicy values: exact, `prefix*`, `*suffix`, and `*`
/// (present, non-empty for Istio's presence match).
pub fn istio_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_matching() {
        assert!(istio_match("abc", "abc"));
        assert!(!istio_match("abc", "abcd"));
        assert!(istio_match("/info*", "/info/x"));
        assert!(istio_match("*.test", "api.test"));
        assert!(!istio_match("*.test", "api.example"));
        assert!(istio_match("*", "x"));
        assert!(!istio_match("*", ""));
    }

    #[test]
    fn principal_segments() {
        let a = Attrs {
            principal: Some("cluster.local/ns/pay/sa/payments"),
            ..Attrs::connection(Protocol::Tcp, 443)
        };
        assert_eq!(a.source_namespace(), Some("pay"));
        assert_eq!(a.source_service_account(), Some("payments"));
        assert_eq!(a.source_trust_domain(), Some("cluster.local"));
        assert_eq!(
            principal_of("spiffe://cluster.local/ns/a/sa/b"),
            "cluster.local/ns/a/sa/b"
        );
    }
}
