//! RequestAuthentication: JWT verification on the HTTP path (`istio-egress-spec.md` §6).
//!
//! Istio compiles the `jwtRules` of every RequestAuthentication that applies to a proxy into
//! one Envoy `jwt_authn` filter: a provider per rule, required as "any of them, or no token at
//! all" (`requires_any` + `allow_missing`). [`JwtAuthenticator`] is that filter:
//!
//! - **Where tokens are.** Each rule's `fromHeaders` (`name`, optional value `prefix` such as
//!   `"Bearer "`), `fromParams` and `fromCookies`; a rule that sets none of them reads
//!   `Authorization: Bearer <token>`, then the `access_token` query parameter (Envoy's
//!   default). A header value is used when it starts with the prefix (ASCII case-insensitive);
//!   the rest, trimmed, is the token.
//! - **No token anywhere**: accepted without identity (`Ok(None)`). Authorization decides what
//!   an anonymous request may do (`requestPrincipals: ["*"]` forces a token).
//! - **A token**: it must verify, or the request is answered 401 ([`JwtError`]). Only the rules
//!   that read the location the token was found in are candidates; the one whose `issuer`
//!   equals the token's `iss` verifies it (none: `Jwt issuer is not configured`). Every token
//!   found (in different locations) must verify; the first gives the identity.
//! - **Algorithms.** Only asymmetric ones (RS256/384/512, PS256/384/512, ES256, ES384).
//!   `alg: none` is refused, and so is every `HS*` alg: a public key is never used as an HMAC
//!   secret (the HS/RS key-confusion attack). The key is chosen as Envoy's jwt_verify_lib does:
//!   a key whose `kid` equals the token's (keys without a `kid` qualify too; without a `kid` in
//!   the token every key qualifies) and whose type and `alg` fit the token's `alg`.
//! - **Time.** `exp` in the past and `nbf` in the future fail, with Envoy's default 60 s clock
//!   skew. `iat` is not checked.
//! - **Audiences.** With `audiences` set, one of the token's `aud` (a string or a list) must be
//!   among them, compared after Envoy's normalization (an `http://` / `https://` scheme and a
//!   trailing `/` are ignored). Without `audiences` any `aud` is accepted.
//! - **Keys.** Inline `jwks` are parsed when the configuration is compiled; `jwksUri` keys come
//!   from the process-wide [`JwksCache`] (a rule with neither uses OpenID discovery at
//!   `<issuer>/.well-known/openid-configuration`, as istiod does). An issuer whose keys were
//!   never fetched answers `Jwks remote fetch is failed`.
//! - **Order of checks**: structure, `alg`, issuer, keys, signature, then `exp` / `nbf` and
//!   audiences, so `expired` or `wrong_audience` is only ever reported for a genuine token.
//!
//! On success [`Authenticated`] carries `request.auth.*` for authorization and the header side
//! effects: the token is removed from the forwarded request unless `forwardOriginalToken`
//! (headers here; query parameters through [`Authenticated::rewrite_query`]; cookies are left
//! alone, as Envoy does), `outputPayloadToHeader` gets the base64url payload, and
//! `outputClaimToHeaders` copy claims. Tokens are never logged, and never kept in an error.
//!
//! `spaceDelimitedClaims` (and, as in Istio, always `scope` and `permission`): a top-level
//! claim that is a string with spaces is turned into the list of its words in
//! [`RequestAuth::claims`], so `request.auth.claims[scope]` matches one scope the way Envoy's
//! `normalize_payload_in_metadata` makes it. Headers get the claims as sent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE_NO_PAD, URL_SAFE_NO_PAD_INDIFFERENT};
use egret_config::types::JwtRule;
use egret_model::snapshot::RequestAuthn;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use super::attrs::RequestAuth;
use super::jwks::{Alg, Jwks, JwksCache, JwksSource};

/// Envoy's default `clock_skew_seconds`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Istio's default JWKS fetch `timeout`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Claims Istio always treats as space-delimited.
const DEFAULT_SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Why a request's token was refused. Every variant is answered `401` with [`JwtError::body`]
/// (Envoy's wording) and `WWW-Authenticate: Bearer ...`; [`JwtError::reason`] is a short stable
/// name for logs and counters. No variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not `header.payload.signature`, bad base64url, not a JSON object, bad claim type.
    #[error("{0}")]
    Malformed(&'static str),
    #[error("Jwt header [alg] none is not allowed")]
    AlgNone,
    /// HMAC (`HS*`), an algorithm egret does not verify, or one no candidate key does.
    #[error("Jwt header [alg] is not allowed")]
    AlgNotAllowed,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// The token names a `kid` that no key of its issuer has.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    UnknownKid,
    #[error("Jwt verification fails")]
    BadSignature,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    WrongAudience,
    /// The issuer's remote key set has not been fetched successfully yet.
    #[error("Jwks remote fetch is failed")]
    JwksUnavailable,
}

impl JwtError {
    /// A short stable name for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::AlgNone => "alg_none",
            JwtError::AlgNotAllowed => "alg_not_allowed",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::JwksUnavailable => "jwks_unavailable",
        }
    }

    /// Always 401 Unauthorized (Envoy's jwt_authn answer to a failed token).
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    /// The response body, Envoy's status message (e.g. `Jwt verification fails`).
    pub fn body(&self) -> String {
        self.to_string()
    }

    /// The `WWW-Authenticate` value of the 401 (RFC 6750 `invalid_token`).
    pub fn www_authenticate(&self) -> &'static str {
        "Bearer error=\"invalid_token\""
    }
}

/// A RequestAuthentication that cannot be used: the configuration should be rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RequestAuthentication {authn}: jwtRules[{rule}] (issuer {issuer:?}): {message}")]
pub struct JwtConfigError {
    /// `namespace/name`.
    pub authn: String,
    /// Index in `jwtRules`.
    pub rule: usize,
    pub issuer: String,
    pub message: String,
}

/// A place a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
enum Keys {
    Inline(Arc<Jwks>),
    /// The [`JwksCache`] key.
    Remote(String),
}

#[derive(Debug)]
struct Rule {
    authn: String,
    index: usize,
    issuer: String,
    /// Normalized (see [`normalize_audience`]).
    audiences: Vec<String>,
    keys: Keys,
    forward_original_token: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
    space_delimited: Vec<String>,
}

/// The compiled `jwtRules` of every RequestAuthentication applying to a proxy. Built once per
/// snapshot with [`JwtAuthenticator::compile`]; [`JwtAuthenticator::authenticate`] is a few
/// header lookups, base64/JSON decoding and one signature check per token.
#[derive(Debug, Default)]
pub struct JwtAuthenticator {
    rules: Vec<Rule>,
    /// Every distinct token location, in rule order, with the rules reading it.
    locations: Vec<(Location, Vec<usize>)>,
    sources: Vec<JwksSource>,
}

/// A verified token: what authorization sees, and what to change in the forwarded request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// `request.auth.*` of the (first) token.
    pub auth: RequestAuth,
    /// `namespace/name` of the RequestAuthentication whose rule verified it.
    pub authn: String,
    /// Index of that rule in its `jwtRules`.
    pub rule: usize,
    remove_headers: Vec<HeaderName>,
    remove_params: Vec<String>,
    set_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Authenticated {
    /// Apply the header side effects to the request being forwarded upstream: remove token
    /// headers (unless the rule has `forwardOriginalToken: true`), then set
    /// `outputPayloadToHeader` and `outputClaimToHeaders` headers (replacing any value the
    /// client sent).
    pub fn apply_to_headers(&self, headers: &mut HeaderMap) {
        for name in &self.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Query parameters that carried a token and must not be forwarded.
    pub fn params_to_remove(&self) -> &[String] {
        &self.remove_params
    }

    /// The query to forward with token parameters removed: `None` when nothing changes,
    /// `Some("")` when no parameter is left (drop the `?`).
    pub fn rewrite_query(&self, query: &str) -> Option<String> {
        if self.remove_params.is_empty() {
            return None;
        }
        let mut q = query.to_string();
        for p in &self.remove_params {
            q = remove_query_param(&q, p);
        }
        (q != query).then_some(q)
    }

    /// The headers this authentication sets (for tests and debugging).
    pub fn headers_to_set(&self) -> &[(HeaderName, HeaderValue)] {
        &self.set_headers
    }
}

/// `query` without every `name=...` (or bare `name`) parameter; other parameters keep their
/// order and spelling.
pub fn remove_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && key != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn header_name(
    what: &str,
    name: &str,
    err: &dyn Fn(String) -> JwtConfigError,
) -> Result<HeaderName, JwtConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| err(format!("{what}: {name:?} is not a valid header name")))
}

impl JwtAuthenticator {
    /// Compile every rule of every RequestAuthentication applying to the proxy. Inline `jwks`
    /// are parsed here; an unusable one, a missing `issuer`, a `jwksUri` that is not an
    /// http(s) URL, or an invalid header name is an error naming the RequestAuthentication and
    /// issuer (Istio's validation, or Envoy rejecting the listener, would refuse it too).
    pub fn compile(authns: &[RequestAuthn]) -> Result<JwtAuthenticator, JwtConfigError> {
        let mut out = JwtAuthenticator::default();
        let mut seen_sources: HashSet<String> = HashSet::new();
        for authn in authns {
            for (index, jr) in authn.jwt_rules.iter().enumerate() {
                let rule_idx = out.rules.len();
                let (rule, source) = compile_rule(&authn.name, index, jr)?;
                for loc in locations_of(jr, &|m| JwtConfigError {
                    authn: authn.name.clone(),
                    rule: index,
                    issuer: rule.issuer.clone(),
                    message: m,
                })? {
                    match out.locations.iter_mut().find(|(l, _)| *l == loc) {
                        Some((_, rules)) => rules.push(rule_idx),
                        None => out.locations.push((loc, vec![rule_idx])),
                    }
                }
                if let Some(src) = source {
                    if seen_sources.insert(src.uri.clone()) {
                        out.sources.push(src);
                    } else if let Some(s) = out.sources.iter_mut().find(|s| s.uri == src.uri) {
                        s.timeout = s.timeout.max(src.timeout);
                    }
                }
                out.rules.push(rule);
            }
        }
        Ok(out)
    }

    /// No rules: every request passes without identity.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The remote key sets these rules need: pass them to [`JwksCache::ensure`] when the
    /// snapshot is loaded.
    pub fn sources(&self) -> &[JwksSource] {
        &self.sources
    }

    /// The cache keys of [`JwtAuthenticator::sources`] (for [`JwksCache::retain`]).
    pub fn uris(&self) -> HashSet<String> {
        self.sources.iter().map(|s| s.uri.clone()).collect()
    }

    /// Remove the headers named by any rule's `outputPayloadToHeader` / `outputClaimToHeaders`
    /// from a request. Envoy forwards such headers as the client sent them when the request has
    /// no token; egret's callers should call this before [`Authenticated::apply_to_headers`]
    /// so that an upstream trusting them never sees a client's forgery.
    pub fn strip_output_headers(&self, headers: &mut HeaderMap) {
        for r in &self.rules {
            if let Some(h) = &r.payload_header {
                headers.remove(h);
            }
            for (h, _) in &r.claim_headers {
                headers.remove(h);
            }
        }
    }

    /// Verify the request's token(s), Envoy's `jwt_authn` with Istio's `allow_missing`:
    /// `Ok(None)` without a token, `Ok(Some(..))` when every token found verifies, else the
    /// first failure (to be answered 401). `query` is the request URI's query (without `?`);
    /// `keys` holds the remote key sets.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: SystemTime,
        keys: &JwksCache,
    ) -> Result<Option<Authenticated>, JwtError> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        // Tokens by value, each with the locations it was found in (the same token in two
        // places is verified once, and removed from both).
        let mut found: Vec<(&str, Vec<usize>)> = Vec::new();
        for (li, (loc, _)) in self.locations.iter().enumerate() {
            if let Some(tok) = extract(loc, headers, query) {
                match found.iter_mut().find(|(t, _)| *t == tok) {
                    Some((_, locs)) => locs.push(li),
                    None => found.push((tok, vec![li])),
                }
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs() as f64);
        let mut result: Option<Authenticated> = None;
        for (token, locs) in found {
            let candidates: Vec<usize> = {
                let mut c: Vec<usize> = Vec::new();
                for &li in &locs {
                    for &r in &self.locations[li].1 {
                        if !c.contains(&r) {
                            c.push(r);
                        }
                    }
                }
                c
            };
            let verified = self.verify(token, &candidates, now_secs, keys)?;
            let rule = &self.rules[verified.rule];
            let auth = result.get_or_insert_with(|| Authenticated {
                auth: verified.auth,
                authn: rule.authn.clone(),
                rule: rule.index,
                remove_headers: Vec::new(),
                remove_params: Vec::new(),
                set_headers: Vec::new(),
            });
            if !rule.forward_original_token {
                for &li in &locs {
                    match &self.locations[li].0 {
                        Location::Header { name, .. } => {
                            if !auth.remove_headers.contains(name) {
                                auth.remove_headers.push(name.clone());
                            }
                        }
                        Location::Param(p) => {
                            if !auth.remove_params.contains(p) {
                                auth.remove_params.push(p.clone());
                            }
                        }
                        Location::Cookie(_) => {}
                    }
                }
            }
            if let Some(h) = &rule.payload_header
                && let Ok(v) = HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(&verified.payload))
            {
                auth.set_headers.push((h.clone(), v));
            }
            for (h, claim) in &rule.claim_headers {
                if let Some(v) = claim_header_value(&verified.raw_claims, claim) {
                    auth.set_headers.push((h.clone(), v));
                }
            }
        }
        Ok(result)
    }

    fn verify(
        &self,
        token: &str,
        candidates: &[usize],
        now: f64,
        cache: &JwksCache,
    ) -> Result<Verified, JwtError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            ));
        };
        let header_bytes = URL_SAFE_NO_PAD_INDIFFERENT
            .decode(h64)
            .map_err(|_| JwtError::Malformed("Jwt header is an invalid Base64url encoded"))?;
        let header: Value = serde_json::from_slice(&header_bytes)
            .ok()
            .filter(Value::is_object)
            .ok_or(JwtError::Malformed("Jwt header is an invalid JSON"))?;
        let payload = URL_SAFE_NO_PAD_INDIFFERENT
            .decode(p64)
            .map_err(|_| JwtError::Malformed("Jwt payload is an invalid Base64url encoded"))?;
        let claims: Value = serde_json::from_slice(&payload)
            .ok()
            .filter(Value::is_object)
            .ok_or(JwtError::Malformed("Jwt payload is an invalid JSON"))?;
        let signature = URL_SAFE_NO_PAD_INDIFFERENT
            .decode(s64)
            .map_err(|_| JwtError::Malformed("Jwt signature is an invalid Base64url encoded"))?;

        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed(
                "Jwt header [alg] field is required and must be a string",
            ))?;
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgNone);
        }
        // HS*, and anything else that is not an asymmetric algorithm we verify.
        let alg = Alg::from_name(alg_name).ok_or(JwtError::AlgNotAllowed)?;
        if header.get("crit").is_some() {
            // RFC 7515 §4.1.11: unknown critical extensions must be refused.
            return Err(JwtError::Malformed("Jwt header [crit] is not supported"));
        }

        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(JwtError::UnknownIssuer)?;
        let rule_idx = candidates
            .iter()
            .copied()
            .find(|&r| self.rules[r].issuer == iss)
            .ok_or(JwtError::UnknownIssuer)?;
        let rule = &self.rules[rule_idx];

        let jwks: Arc<Jwks> = match &rule.keys {
            Keys::Inline(k) => k.clone(),
            Keys::Remote(uri) => cache.keys(uri).ok_or(JwtError::JwksUnavailable)?,
        };
        let kid = header.get("kid").and_then(Value::as_str);
        let by_kid: Vec<_> = jwks
            .keys()
            .iter()
            .filter(|k| match (kid, k.kid()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if by_kid.is_empty() {
            return Err(JwtError::UnknownKid);
        }
        let usable: Vec<_> = by_kid.into_iter().filter(|k| k.supports(alg)).collect();
        if usable.is_empty() {
            return Err(JwtError::AlgNotAllowed);
        }
        let signing_input = &token[..h64.len() + 1 + p64.len()];
        if !usable
            .iter()
            .any(|k| k.verify(alg, signing_input.as_bytes(), &signature))
        {
            return Err(JwtError::BadSignature);
        }

        let skew = CLOCK_SKEW.as_secs_f64();
        if let Some(exp) = numeric_claim(&claims, "exp")?
            && now > exp + skew
        {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_claim(&claims, "nbf")?
            && now + skew < nbf
        {
            return Err(JwtError::NotYetValid);
        }

        let audiences: Vec<String> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        if !rule.audiences.is_empty()
            && !audiences
                .iter()
                .any(|a| rule.audiences.contains(&normalize_audience(a)))
        {
            return Err(JwtError::WrongAudience);
        }

        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let principal = format!("{iss}/{sub}");
        let presenter = claims
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut normalized = claims.clone();
        split_space_delimited(&mut normalized, &rule.space_delimited);
        Ok(Verified {
            rule: rule_idx,
            payload,
            raw_claims: claims,
            auth: RequestAuth {
                principal,
                audiences,
                presenter,
                claims: normalized,
            },
        })
    }
}

struct Verified {
    rule: usize,
    /// The payload JSON bytes as received.
    payload: Vec<u8>,
    raw_claims: Value,
    auth: RequestAuth,
}

/// `exp` / `nbf`: absent is fine, present must be a number (NumericDate).
fn numeric_claim(claims: &Value, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(JwtError::Malformed(
            "Jwt payload has a time claim that is not a number",
        )),
        Some(_) => Err(JwtError::Malformed(
            "Jwt payload has a time claim that is not a number",
        )),
    }
}

/// Envoy's jwt_verify_lib audience normalization: no `http://` / `https://`, no trailing `/`.
fn normalize_audience(a: &str) -> String {
    let s = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    s.strip_suffix('/').unwrap_or(s).to_string()
}

fn split_space_delimited(claims: &mut Value, names: &[String]) {
    let Some(obj) = claims.as_object_mut() else {
        return;
    };
    for name in names {
        if let Some(v) = obj.get_mut(name.as_str())
            && let Some(s) = v.as_str()
            && s.contains(' ')
        {
            *v = Value::Array(
                s.split(' ')
                    .filter(|w| !w.is_empty())
                    .map(|w| Value::String(w.to_string()))
                    .collect(),
            );
        }
    }
}

/// The header value for `outputClaimToHeaders`: a string as is, a number or bool as text;
/// objects, lists and absent claims set nothing (Envoy supports string, int and bool). A
/// dotted name (`a.b`) that is not itself a claim reads a nested claim.
fn claim_header_value(claims: &Value, claim: &str) -> Option<HeaderValue> {
    let v = claims.get(claim).or_else(|| {
        claim
            .split('.')
            .try_fold(claims, |v, part| v.get(part))
            .filter(|_| claim.contains('.'))
    })?;
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

/// The token at one location, if any (empty values are no token).
fn extract<'a>(loc: &Location, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    match loc {
        Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let rest = match v.get(..prefix.len()) {
                Some(head) if head.eq_ignore_ascii_case(prefix) => &v[prefix.len()..],
                _ => return None,
            };
            Some(rest.trim()).filter(|t| !t.is_empty())
        }),
        Location::Param(p) => query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == p && !v.is_empty()).then_some(v)
        }),
        Location::Cookie(c) => headers.get_all(COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                let v = v.trim_matches('"');
                (k == c && !v.is_empty()).then_some(v)
            })
        }),
    }
}

fn locations_of(
    jr: &JwtRule,
    err: &dyn Fn(String) -> JwtConfigError,
) -> Result<Vec<Location>, JwtConfigError> {
    if jr.from_headers.is_empty() && jr.from_params.is_empty() && jr.from_cookies.is_empty() {
        return Ok(vec![
            Location::Header {
                name: AUTHORIZATION,
                prefix: "Bearer ".to_string(),
            },
            Location::Param("access_token".to_string()),
        ]);
    }
    let mut out = Vec::new();
    for (i, h) in jr.from_headers.iter().enumerate() {
        let name = h
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| err(format!("fromHeaders[{i}]: name is required")))?;
        out.push(Location::Header {
            name: header_name(&format!("fromHeaders[{i}]"), name, err)?,
            prefix: h.prefix.clone().unwrap_or_default(),
        });
    }
    for p in jr.from_params.iter().filter(|p| !p.is_empty()) {
        out.push(Location::Param(p.clone()));
    }
    for c in jr.from_cookies.iter().filter(|c| !c.is_empty()) {
        out.push(Location::Cookie(c.clone()));
    }
    Ok(out)
}

fn compile_rule(
    authn: &str,
    index: usize,
    jr: &JwtRule,
) -> Result<(Rule, Option<JwksSource>), JwtConfigError> {
    let issuer = jr.issuer.clone().unwrap_or_default();
    let err = |message: String| JwtConfigError {
        authn: authn.to_string(),
        rule: index,
        issuer: issuer.clone(),
        message,
    };
    if issuer.is_empty() {
        return Err(err("issuer is required".to_string()));
    }
    let timeout = jr
        .timeout
        .map(|d| d.to_std())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_FETCH_TIMEOUT);
    let (keys, source) = match (jr.jwks.as_deref(), jr.jwks_uri.as_deref()) {
        (Some(inline), _) if !inline.trim().is_empty() => {
            let jwks = Jwks::parse(inline).map_err(|e| err(format!("jwks: {e}")))?;
            (Keys::Inline(Arc::new(jwks)), None)
        }
        (_, Some(uri)) if !uri.is_empty() => {
            let ok = uri.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                return Err(err(format!("jwksUri {uri:?} is not an http(s) URL")));
            }
            let src = JwksSource {
                uri: uri.to_string(),
                discovery: false,
                timeout,
            };
            (Keys::Remote(src.uri.clone()), Some(src))
        }
        _ => {
            // Neither: OpenID discovery from the issuer, as istiod does.
            let uri = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let ok = uri.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                return Err(err(
                    "no jwks or jwksUri, and the issuer is not an http(s) URL for OpenID discovery"
                        .to_string(),
                ));
            }
            let src = JwksSource {
                uri,
                discovery: true,
                timeout,
            };
            (Keys::Remote(src.uri.clone()), Some(src))
        }
    };
    let payload_header = match jr.output_payload_to_header.as_deref() {
        Some(h) if !h.is_empty() => Some(header_name("outputPayloadToHeader", h, &err)?),
        _ => None,
    };
    let mut claim_headers = Vec::new();
    for (i, c) in jr.output_claim_to_headers.iter().enumerate() {
        let (Some(h), Some(claim)) = (c.header.as_deref(), c.claim.as_deref()) else {
            return Err(err(format!(
                "outputClaimToHeaders[{i}]: header and claim are required"
            )));
        };
        claim_headers.push((
            header_name(&format!("outputClaimToHeaders[{i}]"), h, &err)?,
            claim.to_string(),
        ));
    }
    let mut space_delimited: Vec<String> = DEFAULT_SPACE_DELIMITED
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in &jr.space_delimited_claims {
        if !space_delimited.contains(c) {
            space_delimited.push(c.clone());
        }
    }
    let rule = Rule {
        authn: authn.to_string(),
        index,
        issuer: issuer.clone(),
        audiences: jr.audiences.iter().map(|a| normalize_audience(a)).collect(),
        keys,
        forward_original_token: jr.forward_original_token.unwrap_or(false),
        payload_header,
        claim_headers,
        space_delimited,
    };
    Ok((rule, source))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::OnceLock;

    use super::*;
    use crate::policy::jwks::JwksCacheOptions;
    use egret_config::types::{ClaimToHeader, JwtHeader};
    use egret_testkit::jwt::{TestIssuer, claims, now_secs, sign_with_alg_none, tamper_payload};
    use serde_json::json;

    const ISS: &str = "https://issuer.test";

    fn rsa() -> &'static TestIssuer {
        static K: OnceLock<TestIssuer> = OnceLock::new();
        K.get_or_init(|| TestIssuer::rsa("rsa-1").unwrap())
    }

    fn ec() -> &'static TestIssuer {
        static K: OnceLock<TestIssuer> = OnceLock::new();
        K.get_or_init(|| TestIssuer::ec("ec-1").unwrap())
    }

    fn cache() -> Arc<JwksCache> {
        JwksCache::new(JwksCacheOptions::default()).unwrap()
    }

    fn rule(jwks: &str) -> JwtRule {
        JwtRule {
            issuer: Some(ISS.to_string()),
            jwks: Some(jwks.to_string()),
            ..JwtRule::default()
        }
    }

    fn both_keys() -> String {
        TestIssuer::jwks_json_of(&[rsa(), ec()])
    }

    fn authn(rules: Vec<JwtRule>) -> JwtAuthenticator {
        JwtAuthenticator::compile(&[RequestAuthn {
            name: "ns/jwt".to_string(),
            jwt_rules: rules,
        }])
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    fn check(a: &JwtAuthenticator, token: &str) -> Result<Option<Authenticated>, JwtError> {
        a.authenticate(&bearer(token), None, SystemTime::now(), &cache())
    }

    fn err(a: &JwtAuthenticator, token: &str) -> JwtError {
        check(a, token).unwrap_err()
    }

    #[test]
    fn valid_rs256_and_es256_tokens() {
        let a = authn(vec![rule(&both_keys())]);
        for issuer in [rsa(), ec()] {
            let mut c = claims(ISS, "alice");
            c["aud"] = json!(["a", "b"]);
            c["azp"] = json!("client-1");
            let ok = check(&a, &issuer.sign(&c).unwrap()).unwrap().unwrap();
            assert_eq!(ok.auth.principal, "https://issuer.test/alice");
            assert_eq!(ok.auth.audiences, vec!["a", "b"]);
            assert_eq!(ok.auth.presenter.as_deref(), Some("client-1"));
            assert_eq!(ok.auth.claims["sub"], "alice");
            assert_eq!(ok.authn, "ns/jwt");
            assert_eq!(ok.rule, 0);
            // Without a kid every key of the right type is tried.
            let ok = check(&a, &issuer.sign_without_kid(&c).unwrap()).unwrap();
            assert!(ok.is_some());
        }
    }

    #[test]
    fn no_token_is_accepted_without_identity() {
        let a = authn(vec![rule(&both_keys())]);
        let r = a.authenticate(&HeaderMap::new(), Some("x=1"), SystemTime::now(), &cache());
        assert!(r.unwrap().is_none());
        // A header without the prefix is no token either.
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert!(
            a.authenticate(&h, None, SystemTime::now(), &cache())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let a = authn(vec![rule(&both_keys())]);
        let c = claims(ISS, "alice");
        assert_eq!(err(&a, &rsa().sign_with_alg_none(&c)), JwtError::AlgNone);
        assert_eq!(err(&a, &sign_with_alg_none(&c)), JwtError::AlgNone);
        assert_eq!(JwtError::AlgNone.reason(), "alg_none");
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        let a = authn(vec![rule(&both_keys())]);
        let t = rsa()
            .sign_hs256_with_public_key(&claims(ISS, "admin"))
            .unwrap();
        let e = err(&a, &t);
        assert_eq!(e, JwtError::AlgNotAllowed);
        assert_eq!(e.reason(), "alg_not_allowed");
        // Also keyed with the raw JWK text or the modulus: the alg alone decides.
        let n = rsa().jwk()["n"].as_str().unwrap().to_string();
        let t = egret_testkit::jwt::sign_hs256(n.as_bytes(), None, &claims(ISS, "admin"));
        assert_eq!(err(&a, &t), JwtError::AlgNotAllowed);
    }

    #[test]
    fn alg_that_the_key_does_not_do_is_refused() {
        // An RSA key listed with alg RS384 does not verify RS256 tokens; an EC token against an
        // RSA-only set finds no key.
        let mut k = rsa().jwk();
        k["alg"] = json!("RS384");
        let a = authn(vec![rule(&json!({ "keys": [k] }).to_string())]);
        let e = err(&a, &rsa().sign(&claims(ISS, "alice")).unwrap());
        assert_eq!(e, JwtError::AlgNotAllowed);
        let a = authn(vec![rule(&rsa().jwks_json())]);
        let e = err(&a, &ec().sign_without_kid(&claims(ISS, "alice")).unwrap());
        assert_eq!(e, JwtError::AlgNotAllowed);
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let a = authn(vec![rule(&both_keys())]);
        let now = now_secs();
        let mut c = claims(ISS, "alice");
        c["exp"] = json!(now - 120);
        assert_eq!(err(&a, &rsa().sign(&c).unwrap()), JwtError::Expired);
        // Within the 60 s skew: accepted.
        c["exp"] = json!(now - 30);
        assert!(check(&a, &rsa().sign(&c).unwrap()).unwrap().is_some());

        let mut c = claims(ISS, "alice");
        c["nbf"] = json!(now + 600);
        assert_eq!(err(&a, &ec().sign(&c).unwrap()), JwtError::NotYetValid);
        c["nbf"] = json!(now + 30);
        assert!(check(&a, &ec().sign(&c).unwrap()).unwrap().is_some());

        c["exp"] = json!("tomorrow");
        assert_eq!(err(&a, &ec().sign(&c).unwrap()).reason(), "malformed");
    }

    #[test]
    fn wrong_issuer() {
        let a = authn(vec![rule(&both_keys())]);
        let e = err(
            &a,
            &rsa().sign(&claims("https://evil.test", "alice")).unwrap(),
        );
        assert_eq!(e, JwtError::UnknownIssuer);
        assert_eq!(e.body(), "Jwt issuer is not configured");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let mut c = claims(ISS, "alice");
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(err(&a, &rsa().sign(&c).unwrap()), JwtError::UnknownIssuer);
    }

    #[test]
    fn audiences() {
        let mut r = rule(&both_keys());
        r.audiences = vec!["https://api.test/".to_string(), "other".to_string()];
        let a = authn(vec![r]);
        let mut c = claims(ISS, "alice");
        c["aud"] = json!("nope");
        assert_eq!(err(&a, &rsa().sign(&c).unwrap()), JwtError::WrongAudience);
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(err(&a, &rsa().sign(&c).unwrap()), JwtError::WrongAudience);
        c["aud"] = json!(["x", "api.test"]); // normalized as Envoy does
        assert!(check(&a, &rsa().sign(&c).unwrap()).unwrap().is_some());
        c["aud"] = json!("other");
        assert!(check(&a, &rsa().sign(&c).unwrap()).unwrap().is_some());
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let a = authn(vec![rule(&both_keys())]);
        for issuer in [rsa(), ec()] {
            let t = issuer
                .sign_tampered(&claims(ISS, "alice"), &claims(ISS, "admin"))
                .unwrap();
            let e = err(&a, &t);
            assert_eq!(e, JwtError::BadSignature);
            assert_eq!(e.body(), "Jwt verification fails");
        }
        // Signed by a key that is not in the set but has the same kid.
        let other = TestIssuer::ec("ec-1").unwrap();
        let e = err(&a, &other.sign(&claims(ISS, "alice")).unwrap());
        assert_eq!(e, JwtError::BadSignature);
    }

    #[test]
    fn unknown_kid() {
        let a = authn(vec![rule(&both_keys())]);
        let t = rsa()
            .sign_with_kid("rotated-away", &claims(ISS, "alice"))
            .unwrap();
        let e = err(&a, &t);
        assert_eq!(e, JwtError::UnknownKid);
        assert_eq!(e.reason(), "unknown_kid");
    }

    #[test]
    fn malformed_tokens() {
        let a = authn(vec![rule(&both_keys())]);
        let good = rsa().sign(&claims(ISS, "alice")).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "abc".to_string(),
            "a.b".to_string(),
            format!("{good}.extra"),
            format!("!!!.{}.{}", parts[1], parts[2]),
            format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
            format!("{}.{}.{}", b64("[1]"), parts[1], parts[2]),
            format!("{}.%%%.{}", parts[0], parts[2]),
            format!("{}.{}.{}", parts[0], b64("{nope"), parts[2]),
            format!("{}.{}.***", parts[0], parts[1]),
            format!("{}.{}.{}", b64(r#"{"typ":"JWT"}"#), parts[1], parts[2]),
        ] {
            let e = err(&a, &bad);
            assert!(matches!(e, JwtError::Malformed(_)), "{bad}: {e:?}");
            assert_eq!(e.reason(), "malformed");
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        }
        // The error never echoes the token.
        let e = err(&a, &format!("{good}.extra"));
        assert!(!e.body().contains(parts[2]));
    }

    #[test]
    fn remote_keys_not_yet_fetched() {
        let a = authn(vec![JwtRule {
            issuer: Some(ISS.to_string()),
            jwks_uri: Some("http://127.0.0.1:9/jwks".to_string()),
            ..JwtRule::default()
        }]);
        assert_eq!(a.sources().len(), 1);
        assert_eq!(a.sources()[0].timeout, DEFAULT_FETCH_TIMEOUT);
        let e = err(&a, &rsa().sign(&claims(ISS, "alice")).unwrap());
        assert_eq!(e, JwtError::JwksUnavailable);
        assert_eq!(e.body(), "Jwks remote fetch is failed");
        assert_eq!(e.reason(), "jwks_unavailable");
    }

    #[tokio::test]
    async fn remote_keys_from_a_local_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = rsa().jwks_json();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            }
        });
        let a = authn(vec![JwtRule {
            issuer: Some(ISS.to_string()),
            jwks_uri: Some(format!("http://{addr}/jwks")),
            timeout: Some(egret_config::types::Duration::from_secs(2)),
            ..JwtRule::default()
        }]);
        let keys = cache();
        keys.ensure(a.sources().iter().cloned());
        assert!(
            keys.wait_for_keys(&a.sources()[0].uri, Duration::from_secs(5))
                .await
        );
        let t = rsa().sign(&claims(ISS, "alice")).unwrap();
        let ok = a.authenticate(&bearer(&t), None, SystemTime::now(), &keys);
        assert_eq!(
            ok.unwrap().unwrap().auth.principal,
            "https://issuer.test/alice"
        );
        server.abort();
    }

    #[test]
    fn custom_header_with_prefix() {
        let mut r = rule(&both_keys());
        r.from_headers = vec![JwtHeader {
            name: Some("x-jwt-assertion".to_string()),
            prefix: Some("Token ".to_string()),
        }];
        let a = authn(vec![r]);
        let t = ec().sign(&claims(ISS, "bob")).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-jwt-assertion", format!("Token {t}").parse().unwrap());
        h.insert("x-other", "kept".parse().unwrap());
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        assert_eq!(ok.auth.principal, "https://issuer.test/bob");
        ok.apply_to_headers(&mut h);
        assert!(h.get("x-jwt-assertion").is_none());
        assert_eq!(h.get("x-other").unwrap(), "kept");

        // The default locations are not read when a rule names its own.
        let r = a.authenticate(&bearer(&t), None, SystemTime::now(), &cache());
        assert!(r.unwrap().is_none());
        // Without the prefix: no token.
        let mut h = HeaderMap::new();
        h.insert("x-jwt-assertion", t.parse().unwrap());
        assert!(
            a.authenticate(&h, None, SystemTime::now(), &cache())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn token_in_a_query_parameter() {
        let a = authn(vec![rule(&both_keys())]);
        let t = rsa().sign(&claims(ISS, "carol")).unwrap();
        let q = format!("a=1&access_token={t}&b=2");
        let ok = a
            .authenticate(&HeaderMap::new(), Some(&q), SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        assert_eq!(ok.auth.principal, "https://issuer.test/carol");
        assert_eq!(ok.params_to_remove(), ["access_token"]);
        assert_eq!(ok.rewrite_query(&q).as_deref(), Some("a=1&b=2"));
        assert_eq!(
            ok.rewrite_query(&format!("access_token={t}")).as_deref(),
            Some("")
        );

        // A custom parameter.
        let mut r = rule(&both_keys());
        r.from_params = vec!["jwt".to_string()];
        let a = authn(vec![r]);
        let q = format!("jwt={t}");
        let ok = a.authenticate(&HeaderMap::new(), Some(&q), SystemTime::now(), &cache());
        assert!(ok.unwrap().is_some());
        let bad = format!("jwt={}", tamper_payload(&t, &claims(ISS, "x")));
        let e = a.authenticate(&HeaderMap::new(), Some(&bad), SystemTime::now(), &cache());
        assert_eq!(e.unwrap_err(), JwtError::BadSignature);
    }

    #[test]
    fn token_in_a_cookie() {
        let mut r = rule(&both_keys());
        r.from_cookies = vec!["session".to_string()];
        let a = authn(vec![r]);
        let t = ec().sign(&claims(ISS, "dave")).unwrap();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, format!("a=b; session={t}; c=d").parse().unwrap());
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        assert_eq!(ok.auth.principal, "https://issuer.test/dave");
    }

    #[test]
    fn forward_original_token() {
        let t = rsa().sign(&claims(ISS, "alice")).unwrap();
        // Default (false): the Authorization header is removed.
        let a = authn(vec![rule(&both_keys())]);
        let mut h = bearer(&t);
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        ok.apply_to_headers(&mut h);
        assert!(h.get(AUTHORIZATION).is_none());
        // true: kept.
        let mut r = rule(&both_keys());
        r.forward_original_token = Some(true);
        let a = authn(vec![r]);
        let mut h = bearer(&t);
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        ok.apply_to_headers(&mut h);
        assert!(h.get(AUTHORIZATION).is_some());
        let q = format!("access_token={t}");
        assert!(ok.rewrite_query(&q).is_none());
    }

    #[test]
    fn output_payload_and_claims_to_headers() {
        let mut r = rule(&both_keys());
        r.output_payload_to_header = Some("x-jwt-payload".to_string());
        r.output_claim_to_headers = vec![
            ClaimToHeader {
                header: Some("x-sub".to_string()),
                claim: Some("sub".to_string()),
            },
            ClaimToHeader {
                header: Some("x-level".to_string()),
                claim: Some("level".to_string()),
            },
            ClaimToHeader {
                header: Some("x-admin".to_string()),
                claim: Some("admin".to_string()),
            },
            ClaimToHeader {
                header: Some("x-team".to_string()),
                claim: Some("org.team".to_string()),
            },
            ClaimToHeader {
                header: Some("x-groups".to_string()),
                claim: Some("groups".to_string()),
            },
            ClaimToHeader {
                header: Some("x-missing".to_string()),
                claim: Some("missing".to_string()),
            },
        ];
        let a = authn(vec![r]);
        let mut c = claims(ISS, "alice");
        c["level"] = json!(3);
        c["admin"] = json!(false);
        c["org"] = json!({"team": "payments"});
        c["groups"] = json!(["a", "b"]);
        c["scope"] = json!("read write");
        let t = ec().sign(&c).unwrap();
        let mut h = bearer(&t);
        h.insert("x-sub", "forged".parse().unwrap());
        h.insert("x-missing", "forged".parse().unwrap());
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        a.strip_output_headers(&mut h);
        ok.apply_to_headers(&mut h);
        let payload = h.get("x-jwt-payload").unwrap().to_str().unwrap();
        assert_eq!(payload, t.split('.').nth(1).unwrap());
        let decoded: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(decoded, c);
        assert_eq!(h.get("x-sub").unwrap(), "alice");
        assert_eq!(h.get("x-level").unwrap(), "3");
        assert_eq!(h.get("x-admin").unwrap(), "false");
        assert_eq!(h.get("x-team").unwrap(), "payments");
        assert!(h.get("x-groups").is_none());
        assert!(h.get("x-missing").is_none());
        assert!(h.get(AUTHORIZATION).is_none());
        // scope is space-delimited in request.auth.claims.
        assert_eq!(ok.auth.claims["scope"], json!(["read", "write"]));
    }

    #[test]
    fn issuer_is_matched_per_location() {
        // Rule 1 (issuer A) reads x-a; rule 2 (issuer B) the default Authorization. A token of
        // issuer A in Authorization is an unknown issuer there, as in Envoy.
        let a_iss = "https://a.test";
        let mut r1 = rule(&both_keys());
        r1.issuer = Some(a_iss.to_string());
        r1.from_headers = vec![JwtHeader {
            name: Some("x-a".to_string()),
            prefix: None,
        }];
        let r2 = rule(&both_keys());
        let a = JwtAuthenticator::compile(&[
            RequestAuthn {
                name: "ns/one".to_string(),
                jwt_rules: vec![r1],
            },
            RequestAuthn {
                name: "ns/two".to_string(),
                jwt_rules: vec![r2],
            },
        ])
        .unwrap();
        let ta = rsa().sign(&claims(a_iss, "x")).unwrap();
        assert_eq!(err(&a, &ta), JwtError::UnknownIssuer);
        let mut h = HeaderMap::new();
        h.insert("x-a", ta.parse().unwrap());
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        assert_eq!(ok.authn, "ns/one");
        let tb = rsa().sign(&claims(ISS, "y")).unwrap();
        let ok = check(&a, &tb).unwrap().unwrap();
        assert_eq!(ok.authn, "ns/two");

        // Two tokens: both must verify; the first location gives the identity.
        let mut h = bearer(&tb);
        h.insert("x-a", ta.parse().unwrap());
        let ok = a
            .authenticate(&h, None, SystemTime::now(), &cache())
            .unwrap()
            .unwrap();
        assert_eq!(ok.auth.principal, "https://a.test/x");
        let mut h = bearer(&tamper_payload(&tb, &claims(ISS, "z")));
        h.insert("x-a", ta.parse().unwrap());
        let e = a.authenticate(&h, None, SystemTime::now(), &cache());
        assert_eq!(e.unwrap_err(), JwtError::BadSignature);
    }

    #[test]
    fn compile_errors_name_the_authn_and_issuer() {
        let bad = RequestAuthn {
            name: "ns/broken".to_string(),
            jwt_rules: vec![rule(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#)],
        };
        let e = JwtAuthenticator::compile(&[bad]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("ns/broken"), "{msg}");
        assert!(msg.contains(ISS), "{msg}");
        assert!(msg.contains("no usable key"), "{msg}");

        let e = JwtAuthenticator::compile(&[RequestAuthn {
            name: "ns/x".to_string(),
            jwt_rules: vec![JwtRule::default()],
        }])
        .unwrap_err();
        assert!(e.to_string().contains("issuer is required"));

        let e = JwtAuthenticator::compile(&[RequestAuthn {
            name: "ns/x".to_string(),
            jwt_rules: vec![JwtRule {
                issuer: Some(ISS.to_string()),
                jwks_uri: Some("ftp://keys".to_string()),
                ..JwtRule::default()
            }],
        }])
        .unwrap_err();
        assert!(e.to_string().contains("jwksUri"));

        let mut r = rule(&both_keys());
        r.output_payload_to_header = Some("bad header".to_string());
        let e = JwtAuthenticator::compile(&[RequestAuthn {
            name: "ns/x".to_string(),
            jwt_rules: vec![r],
        }])
        .unwrap_err();
        assert!(e.to_string().contains("outputPayloadToHeader"));

        // No keys at all: OpenID discovery from the issuer.
        let a = authn(vec![JwtRule {
            issuer: Some("https://accounts.test/".to_string()),
            ..JwtRule::default()
        }]);
        assert_eq!(
            a.sources()[0].uri,
            "https://accounts.test/.well-known/openid-configuration"
        );
        assert!(a.sources()[0].discovery);
    }

    #[test]
    fn remove_query_param_keeps_the_rest() {
        assert_eq!(remove_query_param("a=1&t=x&b=2&t=y", "t"), "a=1&b=2");
        assert_eq!(remove_query_param("t", "t"), "");
        assert_eq!(remove_query_param("tt=1", "t"), "tt=1");
    }

    #[test]
    fn empty_authenticator_passes_everything() {
        let a = JwtAuthenticator::compile(&[]).unwrap();
        assert!(a.is_empty());
        let r = check(&a, "garbage");
        assert!(r.unwrap().is_none());
    }
}
