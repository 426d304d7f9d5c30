//! The HTTP request path: Host -> virtual host -> first matching route -> action.
//!
//! Istio semantics (`istio-egress-spec.md` §3, §5): VirtualService routes are first-match; a
//! Host with no virtual host follows the outbound traffic policy (ALLOW_ANY: pass through to
//! where the application was going; REGISTRY_ONLY: 502 from the `block_all` route); a virtual
//! host whose routes do not match answers 404 (`NR`); a route timeout answers 504 (`UT`).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::InBody as Incoming;
use bytes::Bytes;
use egret_model::snapshot::{
    BLACKHOLE_CLUSTER, Cluster, HeaderOps, HttpMatch, HttpRoute, OutboundMode, PASSTHROUGH_CLUSTER,
    RouteAction, StrMatch, WeightedCluster,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use crate::proxy::{ConnInfo, Mode, Proxy};
use crate::telemetry::record::HttpOutcome;
use crate::telemetry::{HttpRecord, Recorded};
use crate::upstream::{ReqBody, UpstreamError};

pub type RespBody = crate::body::BoxBody;

/// A response egret makes itself.
pub fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// What happened to one request, for the access log and counters.
struct Outcome {
    status: u16,
    flags: &'static str,
    details: &'static str,
    cluster: String,
    upstream: Option<SocketAddr>,
    route: String,
    /// The endpoint's in-flight count and the circuit-breaker slots: held until the response
    /// body has been sent (`Recorded`).
    in_flight: InFlight,
}

/// What a request holds while it is in flight on an endpoint (LEAST_REQUEST's count, circuit
/// breaking's slots).
pub type InFlight = (
    Option<crate::upstream::LoadGuard>,
    Option<crate::circuit::Admission>,
);

/// Serve one request on a connection. Never fails: every problem is a response.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let mut req = req;
    let rt = proxy.state.load_full();
    // Boxed at once: the record lives across the whole request, and inline it would add its
    // size to the request's future, which is moved into a box per request (proxy.rs).
    let mut rec = Box::new(HttpRecord::start(
        &proxy.telemetry,
        &rt.telemetry,
        &conn,
        &mut req,
    ));
    let method = req.method().clone();
    // Credential-looking query values never reach a log line (see `telemetry::accesslog`).
    // Only built when the process log's `access` lines are on (not at the default level).
    let path = tracing::enabled!(target: "access", tracing::Level::INFO).then(|| {
        req.uri()
            .path_and_query()
            .map(|p| crate::telemetry::accesslog::redact_query(p.as_str()).into_owned())
            .unwrap_or_else(|| "/".into())
    });
    let version = req.version();
    let (resp, out, authority) = route_and_forward(&proxy, &rt, &conn, req).await;
    proxy.metrics.request(match (out.flags, out.details) {
        (_, "rbac_access_denied" | "ext_authz_denied" | "ext_authz_error") => "denied",
        (_, d) if d.starts_with("jwt_") => "unauthenticated",
        ("RL", _) => "rate_limited",
        (flags, _) => match flags {
            "-" => match out.details {
                "direct_response" => "direct_response",
                "redirect" => "redirect",
                "passthrough" => "passthrough",
                _ => "routed",
            },
            "NR" if out.cluster == BLACKHOLE_CLUSTER => "blackhole",
            "NR" => "no_route",
            "UT" => "timeout",
            "UO" => "overflow",
            "FI" | "DI,FI" => "fault_abort",
            "DI" => "routed",
            "DPE" => "bad_request",
            _ => "upstream_error",
        },
    });
    tracing::info!(
        target: "access",
        "\"{method} {} {version:?}\" {} {} {} \"{authority}\" \"{}\" {} {} {}ms {} peer={}",
        path.as_deref().unwrap_or("/"),
        out.status,
        out.flags,
        out.details,
        out.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        or_dash(&out.cluster),
        conn.orig_dst.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        rec.started().elapsed().as_millis(),
        or_dash(&out.route),
        conn.principal(),
    );
    let cluster = rt
        .snapshot
        .cluster(&out.cluster)
        .map(|c| (c.host.as_str(), c.service.as_deref()));
    let in_flight = out.in_flight;
    rec.responded(
        HttpOutcome {
            status: out.status,
            flags: out.flags,
            details: out.details,
            cluster: out.cluster,
            upstream: out.upstream,
            route: out.route,
        },
        authority,
        cluster,
    );
    Ok(resp.map(|b| Recorded::new(b, rec, in_flight).boxed()))
}

/// Envoy logs an absent value as `-`.
fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The request's authority: the absolute-form URI's (explicit proxy, HTTP/2 `:authority`),
/// else the Host header.
fn authority_of(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// `Host[:port]` -> (canonical host, port). IPv6 literals keep their brackets off. The host
/// is borrowed when it is already canonical (lower case, no trailing dot), as it usually is.
pub fn split_authority(a: &str) -> (Cow<'_, str>, Option<u16>) {
    let a = a.rsplit('@').next().unwrap_or(a);
    let (h, p) = if let Some(rest) = a.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
            _ => (a, None),
        }
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    let h = if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    };
    (h, p)
}

async fn route_and_forward(
    proxy: &Arc<Proxy>,
    rt: &Arc<crate::config::Runtime>,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
) -> (Response<RespBody>, Outcome, String) {
    let mut rate_headers = None;
    let (mut resp, out, authority) =
        policy_route_forward(proxy, rt, conn, req, &mut rate_headers).await;
    // `x-ratelimit-*` of the tightest rate limit that applied.
    if let Some(h) = rate_headers {
        for (k, v) in &h {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
    (resp, out, authority)
}

/// One configuration snapshot serves the whole request (`rt`, loaded once in `handle`).
async fn policy_route_forward(
    proxy: &Arc<Proxy>,
    rt: &Arc<crate::config::Runtime>,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
    rate_headers: &mut Option<http::HeaderMap>,
) -> (Response<RespBody>, Outcome, String) {
    let mut out = Outcome {
        status: 0,
        flags: "-",
        details: "-",
        // Empty until known (no allocation); logged as "-".
        cluster: String::new(),
        upstream: None,
        route: String::new(),
        in_flight: (None, None),
    };
    let Some(authority) = authority_of(&req) else {
        out.status = 400;
        out.flags = "DPE";
        out.details = "missing_host";
        return (
            local(StatusCode::BAD_REQUEST, "missing Host\n"),
            out,
            "-".into(),
        );
    };
    let (host, auth_port) = split_authority(&authority);
    // Where the gateway terminated TLS, the request must be for the name the TLS was for:
    // otherwise a client could present an allowed SNI and ask for another host (domain
    // fronting). 421 Misdirected Request, as Envoy's and RFC 9110's answer.
    if let Some(sni) = &conn.sni
        && !sni.eq_ignore_ascii_case(&host)
    {
        out.status = 421;
        out.flags = "DPE";
        out.details = "sni_host_mismatch";
        tracing::warn!(target: "policy", %sni, %host, "Host does not match the TLS SNI: 421");
        return (
            local(
                StatusCode::MISDIRECTED_REQUEST,
                "host does not match the TLS server name\n",
            ),
            out,
            authority,
        );
    }
    // Which port the request is for: where it was captured, else the URI/Host port.
    let port = match (conn.mode, conn.orig_dst) {
        (Mode::Captured, Some(dst)) => dst.port(),
        // At a gateway the listener (server) port decides, whatever the Host says.
        (Mode::Gateway, _) => conn.default_port,
        _ => auth_port.unwrap_or(conn.default_port),
    };
    // One normalized form of the path and host: what policies and routes match is what the
    // upstream receives (see `policy::normalize`).
    let mut req = req;
    if let Err(e) = normalize_request(&mut req, &host, auth_port) {
        out.status = 400;
        out.flags = "DPE";
        out.details = "invalid_path";
        tracing::info!(target: "policy", %host, "bad request path: {e}");
        return (
            local(StatusCode::BAD_REQUEST, "bad request path\n"),
            out,
            authority,
        );
    }
    // Policies are checked in a future of their own, boxed and only when this proxy has any:
    // its state (external authorizer and rate-limit service calls) is several KiB, and inline
    // it would be carried and copied with every request's future.
    if !rt.policy.is_empty() {
        let check = crate::policy::enforce::check_http(proxy, rt, conn, &mut req, &host, port);
        match Box::pin(check).await {
            Ok(h) => *rate_headers = h,
            Err(d) => {
                out.status = d.status;
                out.flags = d.flags;
                out.details = d.details;
                return (d.response, out, authority);
            }
        }
    }
    let snap = &rt.snapshot;
    let vhost = snap.listener(port).and_then(|l| l.virtual_host(&host));
    let Some(vhost) = vhost else {
        // `host` borrows `authority`, which moves into the outcome.
        let host = host.into_owned();
        return outbound_policy(proxy, rt, conn, req, &host, port, out, authority).await;
    };
    // First matching route wins.
    let Some((route, matched)) = vhost
        .routes
        .iter()
        .find_map(|r| route_matches(r, &req, port).map(|m| (r, m)))
    else {
        out.status = 404;
        out.flags = "NR";
        out.details = "route_not_found";
        return (local(StatusCode::NOT_FOUND, ""), out, authority);
    };
    out.route = route.name.clone();
    match &route.action {
        RouteAction::DirectResponse { status, body } => {
            out.status = *status;
            out.details = "direct_response";
            let s = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let mut r = local(s, body.clone().unwrap_or_default());
            apply_headers(r.headers_mut(), &route.response_headers);
            (r, out, authority)
        }
        RouteAction::Redirect(rd) => {
            let scheme = rd.scheme.clone().unwrap_or_else(|| "http".into());
            let host_part = rd.authority.clone().unwrap_or_else(|| host.to_string());
            let default_port = if scheme == "https" { 443 } else { 80 };
            let port_part = match (rd.port, rd.derive_port_from_request) {
                (Some(p), _) => Some(p),
                (None, true) => Some(port),
                (None, false) => None,
            }
            .filter(|p| *p != default_port)
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
            let path = rd
                .uri
                .clone()
                .unwrap_or_else(|| req.uri().path().to_string());
            let location = format!("{scheme}://{host_part}{port_part}{path}");
            out.status = rd.code;
            out.details = "redirect";
            let mut r = local(
                StatusCode::from_u16(rd.code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                "",
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            (r, out, authority)
        }
        RouteAction::Route(dests) => {
            let Some(dest) = pick_weighted(dests) else {
                out.status = 503;
                out.flags = "UH";
                return (
                    local(StatusCode::SERVICE_UNAVAILABLE, "no destination\n"),
                    out,
                    authority,
                );
            };
            let Some(cluster) = snap.cluster(&dest.cluster) else {
                out.status = 503;
                out.flags = "NC";
                out.cluster = dest.cluster.clone();
                return (
                    local(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n"),
                    out,
                    authority,
                );
            };
            out.cluster = cluster.name.clone();
            let req = rewrite(req, route, matched, rt);
            let (resp, o) = forward(proxy, conn, rt, cluster, route, dest, req, &host, out).await;
            (resp, o, authority)
        }
    }
}

/// Rewrite the request to its normalized path (the query is kept as sent) and Host (lower
/// case, no trailing dot).
fn normalize_request(
    req: &mut Request<Incoming>,
    host: &str,
    port: Option<u16>,
) -> Result<(), crate::policy::normalize::PathError> {
    use std::borrow::Cow;
    let normalized = crate::policy::normalize::normalize_path(req.uri().path())?;
    if let Cow::Owned(path) = normalized {
        let mut parts = req.uri().clone().into_parts();
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.path_and_query = pq.parse().ok();
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    // The Host differs from its canonical form only by upper case, a trailing dot or userinfo:
    // check the bytes first, so the common request allocates nothing.
    let needs_rewrite = req.headers().get(header::HOST).is_some_and(|h| {
        let b = h.as_bytes();
        b.iter().any(u8::is_ascii_uppercase)
            || b.ends_with(b".")
            || b.windows(2).any(|w| w == b".:")
            || b.contains(&b'@')
    });
    if needs_rewrite && !host.contains(':') {
        let canonical = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&canonical) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    Ok(())
}

/// ALLOW_ANY: pass the request through to where it was going (`PassthroughCluster`, no
/// timeout). REGISTRY_ONLY: 502, Istio's `block_all` direct response.
#[allow(clippy::too_many_arguments)]
async fn outbound_policy(
    proxy: &Arc<Proxy>,
    rt: &Arc<crate::config::Runtime>,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
    host: &str,
    port: u16,
    mut out: Outcome,
    authority: String,
) -> (Response<RespBody>, Outcome, String) {
    if conn.mode == Mode::Gateway {
        // A gateway routes only what its servers and VirtualServices declare (Envoy: 404 NR).
        out.status = 404;
        out.flags = "NR";
        out.details = "route_not_found";
        tracing::warn!(target: "policy", host, port, "gateway: no route for this host");
        return (local(StatusCode::NOT_FOUND, ""), out, authority);
    }
    let mode = proxy.outbound_mode(rt);
    if mode == OutboundMode::RegistryOnly {
        out.status = 502;
        out.flags = "NR";
        out.details = "registry_only";
        out.cluster = BLACKHOLE_CLUSTER.into();
        tracing::warn!(target: "policy", host, port, dst = ?conn.orig_dst, "REGISTRY_ONLY: no service for this host, answered 502");
        return (local(StatusCode::BAD_GATEWAY, ""), out, authority);
    }
    out.cluster = PASSTHROUGH_CLUSTER.into();
    out.details = "passthrough";
    let addr = match (conn.mode, conn.orig_dst) {
        (Mode::Captured, Some(dst)) => dst,
        _ => match proxy.upstreams.resolve(host).await {
            Ok(ips) => SocketAddr::new(ips[0], port),
            Err(e) => return upstream_failed(e, out, authority),
        },
    };
    if proxy.is_self(addr) {
        out.status = 502;
        out.flags = "UF";
        out.details = "loop";
        return (
            local(StatusCode::BAD_GATEWAY, "refusing to loop\n"),
            out,
            authority,
        );
    }
    tracing::info!(target: "policy", host, %addr, "ALLOW_ANY: passthrough");
    let (mut req, upgrade) = strip_hop_by_hop(req, &authority);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(|b| b.boxed());
    let limits = crate::upstream::PoolLimits::default();
    let connect_timeout = Duration::from_secs(10);
    let up = match downstream_upgrade {
        Some(_) => proxy
            .upstreams
            .http1_upgrade(addr, connect_timeout, None, &limits)
            .await
            .map(Up::H1Upgrade),
        None => proxy
            .upstreams
            .h1_conn(addr, connect_timeout, None, &limits)
            .await
            .map(Up::H1),
    };
    let up = match up {
        Ok(c) => c,
        Err(e) => return upstream_failed(e, out, authority),
    };
    out.upstream = Some(addr);
    let sent = match up {
        Up::H1(c) => {
            let (head, body) = req.into_parts();
            exchange(addr, c, &head, body, None).await
        }
        Up::H1Upgrade(s) => exchange_upgrade(addr, s, req, downstream_upgrade, None).await,
        Up::H2(_) => Err(SendError::Reset(format!("{addr}: not HTTP/1"), false)),
    };
    match sent {
        Ok(r) => {
            out.status = r.status().as_u16();
            (r, out, authority)
        }
        Err(SendError::Upstream(e)) => upstream_failed(e, out, authority),
        Err(_) => {
            out.status = 503;
            out.flags = "UC";
            (
                local(StatusCode::SERVICE_UNAVAILABLE, "upstream reset\n"),
                out,
                authority,
            )
        }
    }
}

fn upstream_failed<A>(
    e: UpstreamError,
    mut out: Outcome,
    authority: A,
) -> (Response<RespBody>, Outcome, A) {
    out.status = 503;
    out.flags = e.response_flag();
    out.details = "upstream_connect_failure";
    tracing::warn!(target: "upstream", "{e}");
    (
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error: {e}\n"),
        ),
        out,
        authority,
    )
}

/// Weighted choice among destinations (weights are relative shares; a single destination
/// gets everything). Shared by HTTP routes and TLS/TCP chains.
pub fn pick_weighted(dests: &[WeightedCluster]) -> Option<&WeightedCluster> {
    match dests {
        [] => None,
        [one] => Some(one),
        _ => {
            let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
            if total == 0 {
                return None;
            }
            let mut t = crate::upstream::random() % total;
            for d in dests {
                if t < u64::from(d.weight) {
                    return Some(d);
                }
                t -= u64::from(d.weight);
            }
            dests.last()
        }
    }
}

/// Does the route match? Returns the index of the matching match (for prefix rewrites),
/// `usize::MAX` when the route has no matches.
fn route_matches(r: &HttpRoute, req: &Request<Incoming>, port: u16) -> Option<usize> {
    if r.matches.is_empty() {
        return Some(usize::MAX);
    }
    r.matches.iter().position(|m| one_match(m, req, port))
}

fn one_match(m: &HttpMatch, req: &Request<Incoming>, port: u16) -> bool {
    if m.port.is_some_and(|p| p != port) {
        return false;
    }
    let path = req.uri().path();
    if let Some(u) = &m.uri {
        let ok = if m.ignore_uri_case {
            u.matches_ignore_case(path)
        } else {
            u.matches(path)
        };
        if !ok {
            return false;
        }
    }
    if let Some(mm) = &m.method
        && !mm.matches(req.method().as_str())
    {
        return false;
    }
    if let Some(s) = &m.scheme
        && !s.matches(req.uri().scheme_str().unwrap_or("http"))
    {
        return false;
    }
    if let Some(a) = &m.authority {
        let auth = authority_of_ref(req);
        if !a.matches(auth.unwrap_or("")) {
            return false;
        }
    }
    for (name, sm) in &m.headers {
        if !header_matches(req, name, sm.as_ref()) {
            return false;
        }
    }
    for (name, sm) in &m.without_headers {
        if header_matches(req, name, sm.as_ref()) {
            return false;
        }
    }
    if !m.query_params.is_empty() {
        let q = req.uri().query().unwrap_or("");
        for (name, sm) in &m.query_params {
            let v = q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then_some(v)
            });
            let ok = match (v, sm) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(sm)) => sm.matches(v),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

fn authority_of_ref(req: &Request<Incoming>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// `{}` (None) = the header is present; otherwise any value matching.
fn header_matches(req: &Request<Incoming>, name: &str, sm: Option<&StrMatch>) -> bool {
    let mut values = req.headers().get_all(name).iter().peekable();
    if values.peek().is_none() {
        return false;
    }
    match sm {
        None => true,
        Some(sm) => values.any(|v| v.to_str().is_ok_and(|v| sm.matches(v))),
    }
}

/// Apply `rewrite.uri` (replacing the matched prefix, or the whole path), `uriRegexRewrite`
/// and `rewrite.authority`.
fn rewrite(
    mut req: Request<Incoming>,
    route: &HttpRoute,
    matched: usize,
    rt: &crate::config::Runtime,
) -> Request<Incoming> {
    let Some(rw) = &route.rewrite else { return req };
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let mut new_path = path.clone();
    if let Some(u) = &rw.uri {
        let prefix = route.matches.get(matched).and_then(|m| match &m.uri {
            Some(StrMatch::Prefix(p)) => Some(p.clone()),
            _ => None,
        });
        new_path = match prefix {
            Some(p) if path.starts_with(&p) => format!("{u}{}", &path[p.len()..]),
            _ => u.clone(),
        };
    } else if let Some((pat, rep)) = &rw.uri_regex
        && let Some(re) = rt.regexes.get(pat)
    {
        let rep = rt
            .substitutions
            .get(rep)
            .map_or(rep.as_str(), String::as_str);
        new_path = re.replace_all(&path, rep).into_owned();
    }
    let pq = match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(p) = pq.parse() {
        parts.path_and_query = Some(p);
    }
    if let Some(a) = &rw.authority {
        if let Ok(v) = HeaderValue::from_str(a) {
            req.headers_mut().insert(header::HOST, v);
        }
        if parts.authority.is_some()
            && let Ok(auth) = a.parse()
        {
            parts.authority = Some(auth);
        }
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Make the request fit for the upstream: origin-form URI, Host = authority, no hop-by-hop
/// headers (an upgrade keeps `Upgrade` and `Connection: upgrade`). Also says whether the
/// request asks for an upgrade.
fn strip_hop_by_hop(mut req: Request<Incoming>, authority: &str) -> (Request<Incoming>, bool) {
    // One look at each header name instead of a hash lookup per question: a request has a
    // handful of headers.
    let (mut upgrade_header, mut connection, mut hop, mut host, mut request_id) =
        (false, false, false, false, false);
    for k in req.headers().keys() {
        upgrade_header |= k == header::UPGRADE;
        connection |= k == header::CONNECTION;
        host |= k == header::HOST;
        request_id |= k == X_REQUEST_ID;
        hop |= HOP_BY_HOP_NAMES.contains(k);
    }
    let upgrade = upgrade_header && is_upgrade(&req);
    let upgrade_value = if upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let h = req.headers_mut();
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1). Most
    // requests have no `Connection` header: nothing is allocated for them.
    if connection {
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            h.remove(name);
        }
        // It may have named `host` or `x-request-id`.
        host = h.contains_key(header::HOST);
        request_id = h.contains_key(X_REQUEST_ID);
    }
    if hop {
        for name in &HOP_BY_HOP_NAMES {
            h.remove(name);
        }
    }
    if let Some(u) = upgrade_value {
        h.insert(header::UPGRADE, u);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !host && let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    // Envoy generates `x-request-id` when the request has none (`generate_request_id`).
    if !request_id {
        let mut id = [0u8; 32];
        hex16(&mut id[..16], crate::upstream::random());
        hex16(&mut id[16..], crate::upstream::random());
        if let Ok(v) = HeaderValue::from_bytes(&id) {
            h.insert(X_REQUEST_ID, v);
        }
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // Origin-form towards the upstream: the path and query are shared, not re-parsed.
    if req.uri().authority().is_some() || req.uri().scheme().is_some() {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    *req.version_mut() = http::Version::HTTP_11;
    (req, upgrade)
}

/// `n` as 16 lowercase hex digits (`{:016x}` without the formatting machinery).
fn hex16(out: &mut [u8], n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in out.iter_mut().take(16).enumerate() {
        *d = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, and the proxy ones Envoy removes), parsed at compile
/// time.
const HOP_BY_HOP_NAMES: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe the mesh (identities, internal routing) never leave it: the gateway
/// removes them before a request goes to an external service.
fn strip_mesh_headers(h: &mut http::HeaderMap) {
    let internal: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("x-envoy-")
                || k.starts_with("x-istio-")
                || k.starts_with("x-egret-")
                || k == "x-forwarded-client-cert"
        })
        .cloned()
        .collect();
    for k in internal {
        h.remove(k);
    }
}

fn apply_headers(h: &mut http::HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        h.remove(name.as_str());
    }
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
}

/// Forward a routed request: fault injection, circuit breaking, mirrors, then attempts on
/// endpoints with the route's retry policy and timeouts (`resilience`, `circuit`, `outlier`).
#[allow(clippy::too_many_arguments)]
async fn forward(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnInfo>,
    rt: &crate::config::Runtime,
    cluster: &Cluster,
    route: &HttpRoute,
    dest: &WeightedCluster,
    req: Request<Incoming>,
    host: &str,
    mut out: Outcome,
) -> (Response<RespBody>, Outcome) {
    use crate::resilience::{self as res, Attempt};
    // Fault injection (Envoy's fault filter: the delay first, then the abort).
    if let Some(f) = &route.fault {
        if let Some((d, pct)) = f.delay
            && res::roll(pct)
        {
            proxy.metrics.fault("delay");
            tokio::time::sleep(d.to_std()).await;
            out.flags = "DI";
        }
        if let Some((status, pct)) = f.abort
            && res::roll(pct)
        {
            proxy.metrics.fault("abort");
            out.status = status;
            out.flags = if out.flags == "DI" { "DI,FI" } else { "FI" };
            out.details = "fault_filter_abort";
            let s = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (local(s, "fault filter abort"), out);
        }
    }
    // The Host header's value is shared (a reference count), not copied.
    let host_value = req.headers().get(header::HOST).cloned();
    let authority: Cow<'_, str> = match host_value.as_ref().and_then(|v| v.to_str().ok()) {
        Some(a) => a.into(),
        None => match req.uri().authority() {
            Some(a) => a.to_string().into(),
            None => host.into(),
        },
    };
    let (mut req, _) = strip_hop_by_hop(req, &authority);
    if conn.mode == Mode::Gateway && cluster.location == egret_config::types::Location::MeshExternal
    {
        strip_mesh_headers(req.headers_mut());
    }
    apply_headers(req.headers_mut(), &route.request_headers);
    apply_headers(req.headers_mut(), &dest.request_headers);
    let state = rt.clusters.get(&cluster.name);
    if let Some(reason) = &cluster.policy.tls.unusable {
        let e = UpstreamError::Unusable {
            cluster: cluster.name.clone(),
            reason: reason.clone(),
        };
        let (r, o, _) = upstream_failed(e, out, authority);
        return (r, o);
    }
    // ISTIO_MUTUAL: the mesh tunnel to an egress gateway (`mesh.rs`): the request travels as
    // one HTTP/2 request on the pooled mutual-TLS connection to the gateway endpoint.
    let mesh = cluster.policy.tls.mode == egret_config::types::ClientTlsMode::IstioMutual;
    let tls = if mesh {
        match state.and_then(|s| s.mesh.as_ref()) {
            Some(m) => Some(m),
            None => {
                let e = UpstreamError::NoMeshIdentity(cluster.name.clone());
                let (r, o, _) = upstream_failed(e, out, authority);
                return (r, o);
            }
        }
    } else {
        state.and_then(|s| s.tls.as_ref())
    };
    // SNI: the DestinationRule's `sni`, else the request's host (Istio auto-SNI); towards the
    // gateway, the gateway's name (the tunnel routes by `:authority`, not by SNI).
    // Only TLS needs it: plain HTTP upstreams build nothing.
    let sni: Cow<'_, str> = match (&cluster.policy.tls.sni, mesh) {
        (Some(s), _) => s.as_str().into(),
        (None, true) => cluster.host.as_str().into(),
        (None, false) if tls.is_some() => split_authority(&authority).0,
        (None, false) => "".into(),
    };
    let connect_timeout = cluster.policy.connection_pool.connect_timeout.to_std();
    // HTTP/2 upstream: the cluster says so (port protocol HTTP2/GRPC, h2UpgradePolicy), or
    // `useClientProtocol` and the client speaks HTTP/2.
    let downstream_h2 = req.version() == http::Version::HTTP_2;
    let h2 = mesh
        || cluster.http2
        || (cluster.policy.connection_pool.use_client_protocol && downstream_h2);
    // Circuit breaking: over the cluster's limits the request is refused at once (`UO`).
    let admission = match state {
        Some(s) => match s.breaker.admit_http(!h2).await {
            Ok(a) => Some(a),
            Err(o) => {
                proxy.metrics.overflow(&cluster.name);
                out.status = 503;
                out.flags = "UO";
                out.details = "upstream_overflow";
                tracing::warn!(target: "upstream", cluster = %cluster.name, limit = o.0, "circuit breaker open: 503 UO");
                let mut r = local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
                r.headers_mut().insert(
                    HeaderName::from_static("x-envoy-overloaded"),
                    HeaderValue::from_static("true"),
                );
                return (r, out);
            }
        },
        None => None,
    };
    let policy = &route.retries;
    let pool_limits = crate::upstream::PoolLimits::of(&cluster.policy.connection_pool);
    let mut hash = state
        .and_then(|s| s.hash_table.as_ref())
        .and_then(|_| res::hash_key(cluster, &req, conn.peer));
    let mut set_cookie = None;
    if hash.is_none()
        && state.is_some_and(|s| s.hash_table.is_some())
        && let Some((h, cookie)) = res::generate_cookie(cluster)
    {
        hash = Some(h);
        set_cookie = Some(cookie);
    }
    // Which mirrors this request goes to (`mirrorPercentage`).
    let mut mirror_mask = 0u64;
    for (i, m) in route.mirrors.iter().enumerate().take(64) {
        if res::roll(m.percent) {
            mirror_mask |= 1 << i;
        }
    }
    let upgrade = is_upgrade(&req);
    let mut downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    let replayable =
        !upgrade && (res::replays(&policy.retry_on, policy.attempts) || mirror_mask != 0);
    let mut body = if replayable {
        res::buffer_small(body, &head.headers).await
    } else {
        res::Body::Stream(body)
    };
    if let res::Body::Failed = body {
        out.status = 400;
        out.flags = "DC";
        out.details = "downstream_body_read_failed";
        return (
            local(StatusCode::BAD_REQUEST, "cannot read the request body\n"),
            out,
        );
    }
    if let res::Body::Buffered(b) = &body {
        for (i, m) in route.mirrors.iter().enumerate().take(64) {
            if mirror_mask & (1 << i) != 0 {
                res::mirror(proxy, &m.cluster, &head, b.clone(), host);
            }
        }
    }
    // The route timeout covers every attempt; `perTryTimeout` each one.
    let deadline = route.timeout.map(|t| Instant::now() + t.to_std());
    let max_attempts = 1 + policy.attempts.min(res::MAX_ATTEMPTS - 1);
    let mut ctx = crate::balancer::PickCtx { hash, tried: 0 };
    let mut attempt = 0u32;
    let mut _retry_slot = None;
    loop {
        attempt += 1;
        let may_retry = || -> Option<crate::circuit::RetrySlot> {
            if attempt >= max_attempts {
                return None;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let slot = match state {
                Some(s) => s.breaker.retry(),
                None => None,
            };
            if slot.is_none() && state.is_some() {
                tracing::debug!(target: "upstream", "maxRetries reached: not retrying");
            }
            slot
        };
        let picked = match proxy
            .upstreams
            .pick_with(cluster, state, conn.orig_dst, host, &ctx)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let (r, o, _) = upstream_failed(e, out, authority);
                return (r, o);
            }
        };
        if proxy.is_self(picked.addr) {
            return refuse_loop(out);
        }
        // Istio's `retryIgnorePreviousHosts` (default true): retries go to other endpoints.
        if let Some(i) = picked.endpoint
            && policy.retry_ignore_previous_hosts
        {
            ctx.mark_tried(i);
        }
        let record = |r: crate::outlier::Result| {
            if let (Some(h), Some(i)) = (state.and_then(|s| s.health.as_ref()), picked.endpoint)
                && h.record(i, r)
            {
                proxy.metrics.outlier_ejection(&cluster.name);
                tracing::warn!(target: "upstream", cluster = %cluster.name, endpoint = %picked.addr, "outlier detection: endpoint ejected");
            }
        };
        out.upstream = Some(picked.addr);
        let tls_pair = tls.map(|c| (c, &*sni));
        let upstream = if h2 {
            proxy
                .upstreams
                .http2_with(picked.addr, connect_timeout, tls_pair, &pool_limits)
                .await
                .map(Up::H2)
        } else if upgrade {
            // Upgrades (WebSocket) stay with hyper, on a connection of their own.
            proxy
                .upstreams
                .http1_upgrade(picked.addr, connect_timeout, tls_pair, &pool_limits)
                .await
                .map(Up::H1Upgrade)
        } else {
            proxy
                .upstreams
                .h1_conn(picked.addr, connect_timeout, tls_pair, &pool_limits)
                .await
                .map(Up::H1)
        };
        let upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                record(crate::outlier::Result::LocalFailure);
                // Nothing has been sent: a connect failure can be retried whatever the body.
                if res::retriable(&policy.retry_on, Attempt::ConnectFailure)
                    && let Some(slot) = may_retry()
                {
                    _retry_slot = Some(slot);
                    proxy.metrics.retry(&cluster.name);
                    tokio::time::sleep(res::backoff(policy.backoff.map(|b| b.to_std()), attempt))
                        .await;
                    continue;
                }
                let (r, o, _) = upstream_failed(e, out, authority);
                return (r, o);
            }
        };
        let up_body = match &mut body {
            res::Body::Buffered(b) => res::full(b),
            res::Body::Stream(_) => match std::mem::replace(&mut body, res::Body::Failed) {
                res::Body::Stream(s) => s.boxed(),
                _ => ReqBody::default(),
            },
            res::Body::Failed => ReqBody::default(),
        };
        let can_replay = matches!(body, res::Body::Buffered(_));
        // egret's HTTP/1.1 client writes the head from a borrow (nothing copied per attempt);
        // hyper's clients (upgrades, HTTP/2) own theirs: the last attempt that can use the
        // headers takes them, earlier ones copy.
        let mut owned_request = |up_body: ReqBody| {
            let mut up_req = Request::new(up_body);
            *up_req.method_mut() = head.method.clone();
            *up_req.uri_mut() = head.uri.clone();
            *up_req.version_mut() = head.version;
            *up_req.headers_mut() = if !can_replay || attempt >= max_attempts {
                std::mem::take(&mut head.headers)
            } else {
                head.headers.clone()
            };
            up_req
        };
        // This attempt's time: the per-try timeout, within what is left of the route's.
        let now = Instant::now();
        let left = deadline.map(|d| d.saturating_duration_since(now));
        let per_try = policy
            .per_try_timeout
            .map(|t| t.to_std())
            .filter(|t| !t.is_zero());
        let (timeout, global) = match (per_try, left) {
            (Some(p), Some(l)) if p < l => (Some(p), false),
            (_, Some(l)) => (Some(l), true),
            (Some(p), None) => (Some(p), false),
            (None, None) => (None, false),
        };
        let res = match upstream {
            Up::H1(c) => exchange(picked.addr, c, &head, up_body, timeout).await,
            Up::H1Upgrade(sender) => {
                let down = downstream_upgrade.take();
                let up_req = owned_request(up_body);
                exchange_upgrade(picked.addr, sender, up_req, down, timeout).await
            }
            Up::H2(mut sender) => {
                let up_req = to_h2(owned_request(up_body), tls.is_some(), &authority);
                let send = sender.send_request(up_req);
                let r = match timeout {
                    Some(t) => tokio::time::timeout(t, send)
                        .await
                        .map_err(|_| SendError::Timeout),
                    None => Ok(send.await),
                };
                match r {
                    Err(e) => Err(e),
                    Ok(Err(e)) => {
                        let refused = e.to_string().to_ascii_lowercase().contains("refused");
                        Err(SendError::Reset(format!("{}: {e}", picked.addr), refused))
                    }
                    Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(Into::into).boxed())),
                }
            }
        };
        match res {
            Ok(resp) => {
                let status = resp.status().as_u16();
                record(crate::outlier::Result::Status(status));
                let retry_it =
                    res::retriable(&policy.retry_on, Attempt::Status(status, resp.headers()));
                if retry_it
                    && can_replay
                    && let Some(slot) = may_retry()
                {
                    _retry_slot = Some(slot);
                    proxy.metrics.retry(&cluster.name);
                    drop(resp);
                    tokio::time::sleep(res::backoff(policy.backoff.map(|b| b.to_std()), attempt))
                        .await;
                    continue;
                }
                out.status = status;
                if retry_it && attempt > 1 {
                    // The answer is still one to retry, and no retry is left.
                    out.flags = "URX";
                }
                let mut r = resp;
                if let Some(c) = set_cookie {
                    r.headers_mut().append(header::SET_COOKIE, c);
                }
                apply_headers(r.headers_mut(), &dest.response_headers);
                apply_headers(r.headers_mut(), &route.response_headers);
                // In flight until the response body has been sent (LEAST_REQUEST, circuit
                // breaking): `handle` gives these to the body's `Recorded`.
                out.in_flight = (picked.load, admission);
                return (r, out);
            }
            Err(SendError::Timeout) => {
                record(crate::outlier::Result::LocalFailure);
                if !global
                    && can_replay
                    && res::retriable(&policy.retry_on, Attempt::Timeout)
                    && let Some(slot) = may_retry()
                {
                    _retry_slot = Some(slot);
                    proxy.metrics.retry(&cluster.name);
                    continue;
                }
                out.status = 504;
                out.flags = "UT";
                out.details = "upstream_response_timeout";
                return (
                    local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                    out,
                );
            }
            Err(SendError::Upstream(e)) => {
                record(crate::outlier::Result::LocalFailure);
                let (r, o, _) = upstream_failed(e, out, authority);
                return (r, o);
            }
            Err(SendError::Reset(reason, refused)) => {
                record(crate::outlier::Result::LocalFailure);
                tracing::warn!(target: "upstream", "{reason}");
                if can_replay
                    && res::retriable(&policy.retry_on, Attempt::Reset { refused })
                    && let Some(slot) = may_retry()
                {
                    _retry_slot = Some(slot);
                    proxy.metrics.retry(&cluster.name);
                    tokio::time::sleep(res::backoff(policy.backoff.map(|b| b.to_std()), attempt))
                        .await;
                    continue;
                }
                out.status = 503;
                out.flags = if attempt > 1 { "URX" } else { "UC" };
                out.details = "upstream_reset_before_response_started";
                return (
                    local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers",
                    ),
                    out,
                );
            }
        }
    }
}

/// An upstream connection for one attempt.
// `H1` is the common case: boxing it would cost an allocation per request to shrink a value
// that lives on the stack for one attempt.
#[allow(clippy::large_enum_variant)]
enum Up {
    /// egret's own HTTP/1.1 client (`h1/client.rs`): the hot path.
    H1(crate::h1::client::Conn),
    /// hyper's, on a connection of its own, for a request that asks to switch protocols.
    H1Upgrade(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// An HTTP/1.1-shaped request made fit for HTTP/2: the authority goes into an absolute URI
/// (`:authority`), not a Host header.
pub(crate) fn to_h2(req: Request<ReqBody>, tls: bool, authority: &str) -> Request<ReqBody> {
    let scheme = if tls { "https" } else { "http" };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| authority.to_string());
    parts.headers.remove(header::HOST);
    parts.version = http::Version::HTTP_2;
    if let Ok(u) = format!("{scheme}://{authority}{pq}").parse() {
        parts.uri = u;
    }
    Request::from_parts(parts, body)
}

fn refuse_loop(mut out: Outcome) -> (Response<RespBody>, Outcome) {
    out.status = 502;
    out.flags = "UF";
    out.details = "loop";
    (local(StatusCode::BAD_GATEWAY, "refusing to loop\n"), out)
}

enum SendError {
    Timeout,
    Upstream(UpstreamError),
    /// The upstream reset the stream (`true`: HTTP/2 REFUSED_STREAM).
    Reset(String, bool),
}

impl From<UpstreamError> for SendError {
    fn from(e: UpstreamError) -> Self {
        SendError::Upstream(e)
    }
}

/// Send over an HTTP/1.1 connection (pooled or new) with egret's own client; the connection
/// goes back to the pool when the response body has been read. `timeout` runs until the
/// response head arrives. Whatever fails before then is an upstream reset (Envoy's `UC`).
async fn exchange(
    addr: SocketAddr,
    conn: crate::h1::client::Conn,
    head: &http::request::Parts,
    body: ReqBody,
    timeout: Option<Duration>,
) -> Result<Response<RespBody>, SendError> {
    let send = |body| conn.send_head(&head.method, &head.uri, &head.headers, body);
    // Each branch makes its own send future: one future held across an await in both would
    // be stored twice in this function's state (once bare, once inside the timeout).
    let resp = match timeout {
        Some(t) => tokio::time::timeout(t, send(body))
            .await
            .map_err(|_| SendError::Timeout)?,
        None => send(body).await,
    }
    .map_err(|e| SendError::Reset(format!("{addr}: {e}"), false))?;
    let mut resp = resp.map(|b| b.boxed());
    strip_response_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

/// Send a request that asks to switch protocols over a new hyper connection and relay the
/// upgrade (WebSocket) when the upstream switches. `timeout` runs until the response headers
/// arrive.
async fn exchange_upgrade(
    addr: SocketAddr,
    mut sender: hyper::client::conn::http1::SendRequest<ReqBody>,
    req: Request<ReqBody>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    timeout: Option<Duration>,
) -> Result<Response<RespBody>, SendError> {
    let send = sender.send_request(req);
    let mut resp = match timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| SendError::Timeout)?,
        None => send.await,
    }
    .map_err(|e| SendError::Reset(format!("{addr}: {e}"), false))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(downstream_upgrade) = downstream_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(d), Ok(u)) = tokio::join!(downstream_upgrade, up) {
                let mut d = hyper_util::rt::TokioIo::new(d);
                let mut u = hyper_util::rt::TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
            }
        });
    }
    let mut resp = resp.map(|b| b.map_err(Into::into).boxed());
    strip_response_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

/// Hop-by-hop headers do not travel on; `upgrade` and `connection` do (an upgrade's answer
/// needs them, and the downstream side acts on `connection: close`).
fn strip_response_hop_by_hop(h: &mut http::HeaderMap) {
    // A response has a handful of headers: looking at each is cheaper than eight removals.
    let hop = |k: &HeaderName| {
        *k != header::UPGRADE && *k != header::CONNECTION && HOP_BY_HOP_NAMES.contains(k)
    };
    if !h.keys().any(hop) {
        return;
    }
    for name in &HOP_BY_HOP_NAMES[..] {
        if hop(name) {
            h.remove(name);
        }
    }
}

/// Requests that are not proxyable at all.
pub fn bad_request(msg: &'static str) -> Response<RespBody> {
    local(StatusCode::BAD_REQUEST, msg)
}

pub fn is_connect(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex16_is_format_016x() {
        for n in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = [0u8; 16];
            hex16(&mut out, n);
            assert_eq!(std::str::from_utf8(&out), Ok(format!("{n:016x}").as_str()));
        }
    }

    #[test]
    fn authority_forms() {
        assert_eq!(
            split_authority("Example.COM."),
            ("example.com".into(), None)
        );
        assert_eq!(
            split_authority("a.test:8080"),
            ("a.test".into(), Some(8080))
        );
        assert_eq!(split_authority("[::1]:443"), ("::1".into(), Some(443)));
        assert_eq!(
            split_authority("user@a.test:81"),
            ("a.test".into(), Some(81))
        );
    }
}
