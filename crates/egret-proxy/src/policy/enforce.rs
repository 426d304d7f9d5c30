//! Where policy meets traffic: the per-snapshot [`PolicyRuntime`], the per-process
//! [`Shared`] state, and the two checks the data path calls — [`check_http`] for every HTTP
//! request (after path normalization, before routing) and [`check_connection`] for every
//! TLS/TCP connection (before it is forwarded).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::body::InBody as Incoming;
use egret_model::Snapshot;
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};

use super::attrs::{Attrs, Protocol, principal_of};
use super::audit::{AuditLog, Record};
use super::authz::{Authorizer, Verdict};
use super::ext_authz::{CustomDecision, HttpAuthorizer};
use super::jwks::{JwksCache, JwksCacheOptions};
use super::jwt::JwtAuthenticator;
use super::ratelimit::{Decision as RateDecision, RateLimitState, RateLimiter};
use crate::config::Runtime;
use crate::http::{RespBody, local};
use crate::proxy::{ConnInfo, Mode, Proxy};

/// Policy state that outlives configuration snapshots (one per process): the audit log,
/// remote JWKS (fetched once, refreshed in the background, kept across reloads) and rate-limit
/// buckets and Redis connections (so a reload does not refill a bucket).
pub struct Shared {
    pub audit: AuditLog,
    /// `None` only if the cache could not be created (then a `jwksUri` rule is a config error).
    pub jwks: Option<Arc<JwksCache>>,
    pub ratelimit: Arc<RateLimitState>,
}

impl Shared {
    pub fn new(audit: AuditLog, jwks: JwksCacheOptions) -> Result<Arc<Shared>, String> {
        let jwks = JwksCache::new(jwks).map_err(|e| e.to_string())?;
        Ok(Arc::new(Shared {
            audit,
            jwks: Some(jwks),
            ratelimit: Arc::new(RateLimitState::new()),
        }))
    }
}

impl Shared {
    /// Export what this state counts: rate-limit decisions, JWKS fetch failures, audit
    /// records dropped because the writer fell behind.
    pub fn register(self: &Arc<Self>, registry: &mut prometheus_client::registry::Registry) {
        self.ratelimit.register(registry);
        registry.register_collector(Box::new(SharedCounters(self.clone())));
    }
}

/// Counters read from [`Shared`] at scrape time.
struct SharedCounters(Arc<Shared>);

impl std::fmt::Debug for SharedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCounters")
    }
}

impl prometheus_client::collector::Collector for SharedCounters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let counters = [
            (
                "jwks_fetch_failures",
                "Remote JWKS fetches that failed (the last good keys keep serving)",
                self.0.jwks.as_ref().map_or(0, |j| j.fetch_failures()),
            ),
            (
                "audit_records_dropped",
                "Audit records dropped because the writer fell behind",
                self.0.audit.dropped(),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            audit: AuditLog::to_log(false),
            jwks: JwksCache::new(JwksCacheOptions::default()).ok(),
            ratelimit: Arc::new(RateLimitState::new()),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("policy::Shared").finish_non_exhaustive()
    }
}

/// The policies of one snapshot, compiled for the data path.
pub struct PolicyRuntime {
    pub authz: Authorizer,
    /// `envoyExtAuthzHttp` providers by name.
    pub providers: HashMap<String, Arc<HttpAuthorizer>>,
    /// RequestAuthentication `jwtRules` (gateways; see `egret_model::policy`).
    pub jwt: JwtAuthenticator,
    pub jwks: Option<Arc<JwksCache>>,
    pub ratelimit: RateLimiter,
}

impl PolicyRuntime {
    /// Compile; `activate`: also start fetching the key sets this snapshot needs (and stop
    /// refreshing those it no longer names) — only for a snapshot about to be served.
    pub fn new(
        snapshot: &Snapshot,
        shared: &Shared,
        activate: bool,
    ) -> Result<PolicyRuntime, Vec<String>> {
        let jwt = JwtAuthenticator::compile(&snapshot.request_authentications)
            .map_err(|e| vec![e.to_string()])?;
        if !jwt.sources().is_empty() && shared.jwks.is_none() {
            return Err(vec!["jwksUri: the JWKS cache is not available".into()]);
        }
        if activate && let Some(cache) = &shared.jwks {
            cache.ensure(jwt.sources().iter().cloned());
            cache.retain(&jwt.uris());
        }
        Ok(PolicyRuntime {
            authz: Authorizer::new(&snapshot.authorization_policies),
            providers: HttpAuthorizer::from_providers(&snapshot.mesh.extension_providers),
            jwt,
            jwks: shared.jwks.clone(),
            ratelimit: RateLimiter::new(&snapshot.rate_limits, &shared.ratelimit),
        })
    }

    /// Nothing to check: the data path skips policy entirely.
    pub fn is_empty(&self) -> bool {
        self.authz.is_empty() && self.jwt.is_empty() && self.ratelimit.is_empty()
    }
}

/// A request or connection that may not pass, and how to say so.
pub struct Denial {
    pub response: http::Response<RespBody>,
    pub status: u16,
    /// Envoy response flag for the access log: `-` (RBAC), `UAEX` (external authorizer),
    /// `RL` (rate limited).
    pub flags: &'static str,
    /// Envoy-style response code details.
    pub details: &'static str,
}

/// The caller's principal: through the mesh tunnel at a gateway; the workload's own identity
/// at a sidecar (it is the caller of everything it sends).
fn principal<'a>(proxy: &'a Proxy, conn: &'a ConnInfo) -> Option<&'a str> {
    match conn.mode {
        Mode::Gateway => conn.peer_identity.as_deref().map(principal_of),
        _ => proxy.own_identity.as_deref().map(principal_of),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tls => "tls",
        Protocol::Tcp => "tcp",
    }
}

/// Record and count one decision.
fn report(
    proxy: &Proxy,
    conn: &ConnInfo,
    a: &Attrs<'_>,
    decision: &str,
    reason: &'static str,
    policy: &str,
    status: u16,
) {
    proxy.metrics.policy(
        if decision == "allow" { "allow" } else { "deny" },
        reason,
        protocol_name(a.protocol),
    );
    let audit = &proxy.policy.audit;
    if decision != "allow" || audit.include_allowed {
        audit.record(&Record {
            decision,
            reason,
            policy,
            source: conn.peer,
            attrs: a,
            status,
        });
    }
}

/// AUDIT matches and dry-run results: recorded, never enforced.
fn report_shadow(proxy: &Proxy, conn: &ConnInfo, a: &Attrs<'_>, e: &super::authz::Evaluation) {
    for p in &e.audit {
        proxy.policy.audit.record(&Record {
            decision: "audit",
            reason: "audit_policy",
            policy: p,
            source: conn.peer,
            attrs: a,
            status: 0,
        });
    }
    if let Some(dry) = &e.dry_run
        && dry.allowed() != e.verdict.allowed()
    {
        let decision = if dry.allowed() {
            "dry_run_allow"
        } else {
            "dry_run_deny"
        };
        tracing::info!(target: "policy", policy = dry.policy(), decision, "dry-run policy would change this decision");
        proxy
            .metrics
            .policy(decision, dry.reason(), protocol_name(a.protocol));
        proxy.policy.audit.record(&Record {
            decision,
            reason: dry.reason(),
            policy: dry.policy(),
            source: conn.peer,
            attrs: a,
            status: 0,
        });
    }
}

/// An HTTP request's attributes, without headers and token.
fn request_attrs<'a>(
    conn: &'a ConnInfo,
    principal: Option<&'a str>,
    port: u16,
    host: &'a str,
    method: &'a str,
    path: &'a str,
) -> Attrs<'a> {
    Attrs {
        protocol: Protocol::Http,
        source_ip: Some(conn.peer.ip()),
        // No X-Forwarded-For is trusted (Istio's default `numTrustedProxies: 0`).
        remote_ip: Some(conn.peer.ip()),
        principal,
        destination_ip: conn.orig_dst.map(|d| d.ip()),
        destination_port: port,
        sni: conn.sni.as_deref(),
        host: Some(host),
        method: Some(method),
        path: Some(path),
        headers: None,
        auth: None,
    }
}

fn rbac_denied() -> http::Response<RespBody> {
    local(StatusCode::FORBIDDEN, "RBAC: access denied")
}

/// Check one HTTP request: JWT, CUSTOM, DENY/ALLOW, rate limits. `host` and the request's
/// path are already normalized. On success the request may carry headers the JWT rules and
/// the external authorizer set, and the answer holds `x-ratelimit-*` headers for the response
/// when a limit applied.
pub async fn check_http(
    proxy: &Arc<Proxy>,
    rt: &Runtime,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    host: &str,
    port: u16,
) -> Result<Option<http::HeaderMap>, Denial> {
    let pol = &rt.policy;
    if pol.is_empty() {
        return Ok(None);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let principal = principal(proxy, conn);

    // 0. RequestAuthentication: an invalid token is 401; no token is no request principal.
    let mut authenticated = None;
    if !pol.jwt.is_empty()
        && let Some(keys) = &pol.jwks
    {
        // Claim headers come from the verified token only, never from the client.
        pol.jwt.strip_output_headers(req.headers_mut());
        match pol.jwt.authenticate(
            req.headers(),
            req.uri().query(),
            std::time::SystemTime::now(),
            keys,
        ) {
            Ok(a) => authenticated = a,
            Err(e) => {
                let a = request_attrs(conn, principal, port, host, method.as_str(), &path);
                report(proxy, conn, &a, "deny", e.reason(), "-", 401);
                tracing::info!(target: "policy", reason = e.reason(), principal = principal.unwrap_or("-"), host, path, "JWT rejected: 401");
                let mut response = local(StatusCode::UNAUTHORIZED, e.body());
                if let Ok(v) = HeaderValue::from_str(e.www_authenticate()) {
                    response
                        .headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, v);
                }
                return Err(Denial {
                    response,
                    status: 401,
                    flags: "-",
                    details: "jwt_authn_access_denied",
                });
            }
        }
        if let Some(auth) = &authenticated {
            // forwardOriginalToken / outputPayloadToHeader / outputClaimToHeaders.
            auth.apply_to_headers(req.headers_mut());
            if let Some(q) = req.uri().query().and_then(|q| auth.rewrite_query(q)) {
                let pq = if q.is_empty() {
                    path.clone()
                } else {
                    format!("{path}?{q}")
                };
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = pq.parse().ok();
                if let Ok(u) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = u;
                }
            }
        }
    }
    let a = Attrs {
        headers: Some(req.headers()),
        auth: authenticated.as_ref().map(|x| &x.auth),
        ..request_attrs(conn, principal, port, host, method.as_str(), &path)
    };

    // 1. CUSTOM: the external authorizer decides first; a denial stops here.
    let mut add: Vec<(HeaderName, HeaderValue)> = Vec::new();
    if let Some(custom) = pol.authz.custom(&a) {
        let decision = match pol.providers.get(&*custom.provider) {
            Some(authorizer) => {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                authorizer
                    .check(&proxy.upstreams, rt, &method, pq, host, req.headers())
                    .await
            }
            None => {
                // Validation reports unknown providers; if one still gets here, fail closed
                // (Envoy answers 403 when its ext_authz filter is missing for a CUSTOM rule).
                tracing::warn!(target: "policy", provider = %custom.provider, policy = %custom.policy, "CUSTOM policy names no envoyExtAuthzHttp provider: denied");
                CustomDecision::Deny {
                    response: rbac_denied(),
                    status: 403,
                    reason: "ext_authz_error",
                }
            }
        };
        match decision {
            CustomDecision::Allow {
                upstream_headers,
                failed_open,
            } => {
                let reason = if failed_open {
                    "ext_authz_failed_open"
                } else {
                    "ext_authz_allowed"
                };
                report(proxy, conn, &a, "allow", reason, &custom.policy, 0);
                add = upstream_headers;
            }
            CustomDecision::Deny {
                response,
                status,
                reason,
            } => {
                if custom.dry_run {
                    report_shadow(
                        proxy,
                        conn,
                        &a,
                        &super::authz::Evaluation {
                            verdict: Verdict::Allow { policy: None },
                            audit: Vec::new(),
                            dry_run: Some(Verdict::Deny {
                                policy: Some(custom.policy.clone()),
                            }),
                        },
                    );
                } else {
                    report(proxy, conn, &a, "deny", reason, &custom.policy, status);
                    tracing::info!(target: "policy", policy = %custom.policy, status, principal = principal.unwrap_or("-"), host, path, "denied by the external authorizer");
                    return Err(Denial {
                        response,
                        status,
                        flags: "UAEX",
                        details: reason,
                    });
                }
            }
        }
    }

    // 2–5. DENY, then ALLOW.
    let e = pol.authz.evaluate(&a);
    report_shadow(proxy, conn, &a, &e);
    if !e.verdict.allowed() {
        report(
            proxy,
            conn,
            &a,
            "deny",
            e.verdict.reason(),
            e.verdict.policy(),
            403,
        );
        tracing::info!(target: "policy", policy = e.verdict.policy(), reason = e.verdict.reason(), principal = principal.unwrap_or("-"), host, path, "RBAC: access denied");
        return Err(Denial {
            response: rbac_denied(),
            status: 403,
            flags: "-",
            details: "rbac_access_denied",
        });
    }
    report(
        proxy,
        conn,
        &a,
        "allow",
        e.verdict.reason(),
        e.verdict.policy(),
        0,
    );

    // 6. Rate limits, for what policy let through.
    let mut rate_headers = None;
    if !pol.ratelimit.is_empty() {
        let d = pol.ratelimit.check(&a).await;
        if let RateDecision::Limited {
            limit_name, policy, ..
        } = &d
        {
            let name = format!("{policy}/{limit_name}");
            report(proxy, conn, &a, "deny", "rate_limited", &name, 429);
            tracing::info!(target: "policy", limit = %name, principal = principal.unwrap_or("-"), host, path, "rate limited: 429");
            let mut response = local(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited");
            for (k, v) in &d.response_headers() {
                response.headers_mut().insert(k.clone(), v.clone());
            }
            return Err(Denial {
                response,
                status: 429,
                flags: "RL",
                details: "rate_limited",
            });
        }
        let h = d.response_headers();
        if !h.is_empty() {
            rate_headers = Some(h);
        }
    }
    let h = req.headers_mut();
    for (n, v) in add {
        h.insert(n, v);
    }
    Ok(rate_headers)
}

/// Check one TLS or TCP connection (before anything is forwarded). `Err` carries the reason
/// for the log; the caller closes the connection.
pub async fn check_connection(
    proxy: &Arc<Proxy>,
    rt: &Runtime,
    conn: &ConnInfo,
    protocol: Protocol,
    sni: Option<&str>,
    port: u16,
    destination_ip: Option<IpAddr>,
) -> Result<(), &'static str> {
    let pol = &rt.policy;
    if pol.is_empty() {
        return Ok(());
    }
    let principal = principal(proxy, conn);
    let a = Attrs {
        source_ip: Some(conn.peer.ip()),
        remote_ip: Some(conn.peer.ip()),
        principal,
        destination_ip,
        sni,
        ..Attrs::connection(protocol, port)
    };
    // CUSTOM with an HTTP authorizer cannot judge a connection (Istio's TCP ext_authz needs a
    // gRPC provider): a matching CUSTOM policy closes it rather than letting it through.
    if let Some(custom) = pol.authz.custom(&a)
        && !custom.dry_run
    {
        report(
            proxy,
            conn,
            &a,
            "deny",
            "ext_authz_not_for_tcp",
            &custom.policy,
            0,
        );
        tracing::info!(target: "policy", policy = %custom.policy, sni = sni.unwrap_or("-"), port, "CUSTOM policy matches a TLS/TCP connection; an HTTP authorizer cannot check it: closed");
        return Err("ext_authz_not_for_tcp");
    }
    let e = pol.authz.evaluate(&a);
    report_shadow(proxy, conn, &a, &e);
    if !e.verdict.allowed() {
        report(
            proxy,
            conn,
            &a,
            "deny",
            e.verdict.reason(),
            e.verdict.policy(),
            0,
        );
        tracing::info!(target: "policy", policy = e.verdict.policy(), reason = e.verdict.reason(), principal = principal.unwrap_or("-"), sni = sni.unwrap_or("-"), port, "RBAC: connection denied");
        return Err(e.verdict.reason());
    }
    report(
        proxy,
        conn,
        &a,
        "allow",
        e.verdict.reason(),
        e.verdict.policy(),
        0,
    );
    if !pol.ratelimit.is_empty()
        && let RateDecision::Limited {
            limit_name, policy, ..
        } = pol.ratelimit.check(&a).await
    {
        let name = format!("{policy}/{limit_name}");
        report(proxy, conn, &a, "deny", "rate_limited", &name, 0);
        tracing::info!(target: "policy", limit = %name, principal = principal.unwrap_or("-"), sni = sni.unwrap_or("-"), port, "rate limited: new connection refused");
        return Err("rate_limited");
    }
    Ok(())
}
