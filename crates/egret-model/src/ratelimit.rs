//! RateLimitPolicy (`egret.io/v1alpha1`, docs/rate-limits.md): which policies apply to a proxy,
//! and their compiled form in the snapshot.
//!
//! The compiled form is what the data plane's limiter reads: defaults filled in, ports parsed,
//! descriptor keys parsed, host patterns and header names lower-cased. A limit that validation
//! rejects (no quota, no fillInterval, GLOBAL without Redis, an unknown `by` key) is left out
//! here — the proxy refuses a snapshot with errors anyway, and a half-understood limit must
//! never be enforced by accident.

use std::fmt;

use egret_config::ConfigSet;
use egret_config::Object;
use egret_config::types::{Duration, RateLimit, RateLimitPolicy, RateLimitScope};
use serde::{Serialize, Serializer};

use crate::identity::ProxyIdentity;

/// `redis.timeout` when absent: one decision may wait this long for Redis.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// One RateLimitPolicy as it applies to a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitPolicySpec {
    /// `ns/name`: part of every bucket and Redis key, so two policies never share a counter.
    pub name: String,
    /// Present when the policy gave `redis.address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSettings>,
    pub limits: Vec<RateLimitSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisSettings {
    /// `host:port`.
    pub address: String,
    /// Budget of one decision (default 50ms).
    pub timeout: Duration,
    /// `true`: refuse when Redis fails; `false` (default): allow.
    pub failure_mode_deny: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitSpec {
    pub name: String,
    pub scope: RateLimitScope,
    /// Tokens per `fill_interval`, and the bucket's capacity (at least 1).
    pub quota: u64,
    /// At least 1ms.
    pub fill_interval: Duration,
    #[serde(rename = "match")]
    pub matches: LimitMatch,
    /// Empty: one bucket for the limit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by: Vec<DescriptorKey>,
}

/// All non-empty fields must match; within a field any entry may.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LimitMatch {
    /// Lower case, no trailing dot; Istio string patterns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl LimitMatch {
    /// Does the match look at anything only an HTTP request has? Such a limit never applies to
    /// a TLS or TCP connection.
    pub fn is_http_only(&self) -> bool {
        !(self.paths.is_empty() && self.methods.is_empty() && self.headers.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    /// Empty: the header must be present.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One entry of `by`: where a descriptor value comes from (Envoy rate-limit actions:
/// `source_cluster`, `request_headers`, `remote_address`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DescriptorKey {
    /// The caller's principal (mesh identity, without `spiffe://`).
    Principal,
    /// The HTTP host, else the TLS SNI.
    Host,
    /// The TLS SNI.
    Sni,
    /// HTTP path (without the query).
    Path,
    /// HTTP method.
    Method,
    /// The downstream peer address.
    SourceIp,
    /// `header:<name>`: a request header (name lower-cased).
    Header(String),
}

impl DescriptorKey {
    /// The spellings `by` accepts (for messages).
    pub const KEYS: &'static str = "principal, host, sni, path, method, source_ip, header:<name>";

    /// Parse a `by` entry (keys are case-insensitive; header names are lower-cased).
    pub fn parse(s: &str) -> Result<DescriptorKey, String> {
        if let Some((k, name)) = s.split_once(':')
            && k.eq_ignore_ascii_case("header")
        {
            let name = name.trim();
            if name.is_empty() {
                return Err("header: needs a header name (header:<name>)".into());
            }
            if !name.bytes().all(is_header_name_byte) {
                return Err(format!("{name:?} is not a valid header name"));
            }
            return Ok(DescriptorKey::Header(name.to_ascii_lowercase()));
        }
        Ok(match s.to_ascii_lowercase().as_str() {
            "principal" => DescriptorKey::Principal,
            "host" => DescriptorKey::Host,
            "sni" => DescriptorKey::Sni,
            "path" => DescriptorKey::Path,
            "method" => DescriptorKey::Method,
            "source_ip" | "sourceip" => DescriptorKey::SourceIp,
            _ => {
                return Err(format!(
                    "unknown descriptor key {s:?}, expected one of {}",
                    Self::KEYS
                ));
            }
        })
    }

    /// Does this key only have a value for HTTP requests?
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            DescriptorKey::Path | DescriptorKey::Method | DescriptorKey::Header(_)
        )
    }
}

/// RFC 9110 token characters (a header name).
pub fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl fmt::Display for DescriptorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorKey::Principal => f.write_str("principal"),
            DescriptorKey::Host => f.write_str("host"),
            DescriptorKey::Sni => f.write_str("sni"),
            DescriptorKey::Path => f.write_str("path"),
            DescriptorKey::Method => f.write_str("method"),
            DescriptorKey::SourceIp => f.write_str("source_ip"),
            DescriptorKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl Serialize for DescriptorKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The RateLimitPolicies that apply to this proxy, by `ns/name`. Policies left without a
/// usable limit are dropped.
pub fn rate_limits(
    set: &ConfigSet,
    proxy: &ProxyIdentity,
    root_ns: &str,
) -> Vec<RateLimitPolicySpec> {
    let mut out: Vec<RateLimitPolicySpec> = set
        .rate_limit_policies
        .iter()
        .filter(|p| {
            crate::policy::applies(
                &p.meta.namespace,
                p.spec.selector.as_ref().map(|s| &s.match_labels),
                proxy,
                root_ns,
            )
        })
        .filter_map(compile_policy)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn compile_policy(p: &Object<RateLimitPolicy>) -> Option<RateLimitPolicySpec> {
    let redis = p.spec.redis.as_ref().and_then(|r| {
        let address = r
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())?;
        Some(RedisSettings {
            address: address.to_string(),
            timeout: r
                .timeout
                .filter(|t| t.as_nanos() > 0)
                .unwrap_or(DEFAULT_REDIS_TIMEOUT),
            failure_mode_deny: r.failure_mode_deny.unwrap_or(false),
        })
    });
    let limits: Vec<RateLimitSpec> = p
        .spec
        .limits
        .iter()
        .filter_map(|l| compile_limit(l, redis.is_some()))
        .collect();
    if limits.is_empty() {
        return None;
    }
    Some(RateLimitPolicySpec {
        name: p.key(),
        redis,
        limits,
    })
}

fn compile_limit(l: &RateLimit, has_redis: bool) -> Option<RateLimitSpec> {
    let name = l.name.clone().filter(|n| !n.is_empty())?;
    let quota = l.quota.filter(|q| *q > 0)?;
    let fill_interval = l.fill_interval.filter(|d| d.as_millis() > 0)?;
    let scope = l.scope.unwrap_or(RateLimitScope::Local);
    if scope == RateLimitScope::Global && !has_redis {
        return None;
    }
    let by =
        l.by.iter()
            .map(|k| DescriptorKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
    let m = l.match_.clone().unwrap_or_default();
    let ports = m
        .ports
        .iter()
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
        .collect::<Option<Vec<_>>>()?;
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let name = h.name.as_deref().map(str::trim).filter(|n| !n.is_empty())?;
            Some(HeaderMatch {
                name: name.to_ascii_lowercase(),
                values: h.values.clone(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RateLimitSpec {
        name,
        scope,
        quota,
        fill_interval,
        matches: LimitMatch {
            hosts: m
                .hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            paths: m.paths,
            methods: m.methods,
            ports,
            principals: m.principals,
            headers,
        },
        by,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> ConfigSet {
        let (set, d) = ConfigSet::from_str("t.yaml", yaml);
        assert!(!d.has_errors(), "{d:?}");
        set
    }

    const POLICIES: &str = r#"
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: card, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  redis: {address: "127.0.0.1:6379"}
  limits:
  - name: payments
    scope: global
    quota: 100
    fillInterval: 1s
    match:
      hosts: ["API.test.", "*.pay.test"]
      ports: ["443"]
      headers: [{name: X-Tenant}]
    by: [principal, "Header:X-Tenant"]
---
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  limits: [{name: all, quota: 5, fillInterval: 100ms}]
---
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: other-ns, namespace: apps}
spec:
  limits: [{name: all, quota: 5, fillInterval: 1s}]
"#;

    #[test]
    fn selection_follows_authorization_policy() {
        let s = set(POLICIES);
        let gw = ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]);
        let names: Vec<_> = rate_limits(&s, &gw, "istio-system")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["istio-system/card", "istio-system/mesh-wide"]);

        // Another namespace: the root-namespace policy without a selector applies, the
        // selected one does not (labels), and its own namespace's does.
        let sc = ProxyIdentity::sidecar("apps");
        let names: Vec<_> = rate_limits(&s, &sc, "istio-system")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["apps/other-ns", "istio-system/mesh-wide"]);
    }

    #[test]
    fn compiled_form() {
        let s = set(POLICIES);
        let gw = ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]);
        let p = &rate_limits(&s, &gw, "istio-system")[0];
        assert_eq!(
            p.redis,
            Some(RedisSettings {
                address: "127.0.0.1:6379".into(),
                timeout: DEFAULT_REDIS_TIMEOUT,
                failure_mode_deny: false,
            })
        );
        let l = &p.limits[0];
        assert_eq!(l.scope, RateLimitScope::Global);
        assert_eq!(l.quota, 100);
        assert_eq!(l.fill_interval, Duration::from_secs(1));
        assert_eq!(l.matches.hosts, ["api.test", "*.pay.test"]);
        assert_eq!(l.matches.ports, [443]);
        assert_eq!(l.matches.headers[0].name, "x-tenant");
        assert!(l.matches.is_http_only());
        assert_eq!(
            l.by,
            [
                DescriptorKey::Principal,
                DescriptorKey::Header("x-tenant".into())
            ]
        );
        let json = serde_json::to_value(l).unwrap();
        assert_eq!(
            json["by"],
            serde_json::json!(["principal", "header:x-tenant"])
        );
        assert_eq!(json["fill_interval"], "1s");
        assert_eq!(json["scope"], "GLOBAL");
    }

    /// `compile` carries the policies into the snapshot, and its JSON only shows them when
    /// there are some (so snapshots without rate limits keep their golden form).
    #[test]
    fn snapshot_field() {
        let s = set(POLICIES);
        let gw = ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]);
        let (snap, d) = crate::compile(&s, &gw);
        assert!(!d.has_errors(), "{d:?}");
        assert_eq!(snap.rate_limits.len(), 2);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["rate_limits"][0]["name"], "istio-system/card");

        let (snap, _) = crate::compile(&ConfigSet::default(), &gw);
        assert!(snap.rate_limits.is_empty());
        let json = serde_json::to_value(&snap).unwrap();
        assert!(json.get("rate_limits").is_none());
    }

    #[test]
    fn descriptor_keys() {
        assert_eq!(DescriptorKey::parse("SNI"), Ok(DescriptorKey::Sni));
        assert_eq!(
            DescriptorKey::parse("source_ip"),
            Ok(DescriptorKey::SourceIp)
        );
        assert!(DescriptorKey::parse("header:").is_err());
        assert!(DescriptorKey::parse("header:a b").is_err());
        assert!(DescriptorKey::parse("user").is_err());
        assert!(DescriptorKey::Method.is_http_only());
        assert!(!DescriptorKey::Host.is_http_only());
    }
}
