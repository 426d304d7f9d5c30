//! `egret.io/v1alpha1` RateLimitPolicy: request and connection rate limits at a proxy
//! (docs/rate-limits.md).
//!
//! Istio has no rate-limit kind of its own (it configures Envoy's rate-limit filters through
//! EnvoyFilter); Alibaba ASM has ASMLocalRateLimiter and ASMGlobalRateLimiter. This kind keeps
//! their vocabulary (`quota` per `fillInterval`, Envoy descriptors) in one object, selected
//! like an AuthorizationPolicy, so one policy can say "100 charges a second per caller, shared
//! by every gateway replica". Every field is optional here: what is required is checked by
//! validation, which can then report every problem of a policy at its line at once.

use serde::{Deserialize, Serialize};

use super::common::*;
use crate::istio_enum;

istio_enum!(
    /// Where a limit's counters live. Default LOCAL.
    RateLimitScope {
        /// A token bucket in each proxy replica: N replicas allow up to N × quota.
        Local = "LOCAL",
        /// A counter shared by every replica through Redis (`spec.redis`).
        Global = "GLOBAL",
    }
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicy {
    /// Which workloads the policy applies to, as for AuthorizationPolicy: absent = every
    /// workload in the policy's namespace (every workload of the mesh in the root namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<MatchLabelsSelector>,
    /// The Redis server GLOBAL limits count in. Required when any limit is GLOBAL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RateLimitRedis>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRedis {
    /// `host:port` (a DNS name or an IP; IPv6 in brackets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The whole budget of one decision: connect (when needed), send, answer. Default 50ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What a decision does when Redis does not answer in time: `false` (default) allows the
    /// request (fail open, as Envoy's rate-limit filter does by default), `true` refuses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_mode_deny: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Unique within the policy; names the limit in logs, metrics, Redis keys and 429s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<RateLimitScope>,
    /// Requests (HTTP) or new connections (TLS, TCP) allowed per `fillInterval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_interval: Option<Duration>,
    /// Which traffic the limit counts; absent = everything.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RateLimitMatch>,
    /// Descriptor keys: one bucket per distinct combination of their values. `principal`,
    /// `host`, `sni`, `path`, `method`, `source_ip`, `header:<name>`. Absent = one bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by: Vec<String>,
}

/// Every field given must match (AND); within a field any value may match (OR). Values use
/// Istio's AuthorizationPolicy string matching: exact, `prefix*`, `*suffix`, `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitMatch {
    /// The HTTP Host, or the TLS SNI when there is no HTTP host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Destination ports, as strings (as AuthorizationPolicy writes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Caller principals without `spiffe://` (`cluster.local/ns/<ns>/sa/<sa>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<RateLimitHeaderMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitHeaderMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any value may match; absent = the header must be present (any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}
