//! VirtualService: hosts, gateways and http/tls/tcp routes.

use std::collections::HashSet;

use egret_config::types::*;
use egret_config::{ConfigSet, Object};
use serde_json::Value;

use super::{
    Report, check_duration, check_export_to, check_opt_duration, check_percent_int, check_port,
    destination, is_dns1123_label, is_ip, is_ip_or_cidr, is_set,
};
use crate::host;

// ===== VirtualService =====

/// `(namespace, name)` of every VirtualService some http route delegates to.
pub(super) fn delegate_targets(set: &ConfigSet) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for vs in &set.virtual_services {
        for h in &vs.spec.http {
            let Some(d) = &h.delegate else { continue };
            let Some(name) = d.get("name").and_then(Value::as_str) else {
                continue;
            };
            let ns = d
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(&vs.meta.namespace);
            out.insert((ns.to_string(), name.to_string()));
        }
    }
    out
}

/// Istio `ValidateVirtualService`.
pub(super) fn virtual_service(
    r: &mut Report<'_>,
    o: &Object<VirtualService>,
    delegates: &HashSet<(String, String)>,
) {
    let vs = &o.spec;
    let ns = &o.meta.namespace;

    // A VirtualService without hosts is a delegate.
    let is_delegate = vs.hosts.is_empty();
    if is_delegate {
        if !delegates.contains(&(ns.clone(), o.meta.name.clone())) {
            r.error(
                "spec.hosts",
                "at least one host is required (only delegate VirtualServices have none, and no VirtualService delegates to this one)",
            );
        }
        if !vs.gateways.is_empty() {
            r.error(
                "spec.gateways",
                "a delegate VirtualService must not set gateways",
            );
        }
        if !vs.tls.is_empty() {
            r.error(
                "spec.tls",
                "a delegate VirtualService must not have tls routes",
            );
        }
        if !vs.tcp.is_empty() {
            r.error(
                "spec.tcp",
                "a delegate VirtualService must not have tcp routes",
            );
        }
    }

    // Omitted gateways mean [mesh]; a list without "mesh" binds to gateways only.
    let applies_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    check_gateway_names(r, "spec.gateways", &vs.gateways);

    // Istio: JWT claim routing (`@request.auth.claims.*` header keys) needs a gateway.
    if applies_to_mesh {
        for (i, h) in vs.http.iter().enumerate() {
            for (j, m) in h.matches.iter().enumerate() {
                for (what, map) in [
                    ("headers", &m.headers),
                    ("withoutHeaders", &m.without_headers),
                ] {
                    for k in map.keys().filter(|k| is_jwt_claim_header(k)) {
                        r.error(
                            &format!("spec.http[{i}].match[{j}].{what}.{k}"),
                            "JWT claim based routing is only supported on gateways, not on the mesh (sidecars)",
                        );
                    }
                }
            }
        }
    }

    // Hosts: DNS names (short names allowed) or IPs; "*" not for the mesh.
    let mut all_valid = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if is_ip(h) {
            continue;
        }
        if let Err(e) = host::validate_dns_name(h) {
            r.error(&field, e);
            all_valid = false;
        } else if h == "*" && applies_to_mesh {
            r.error(
                &field,
                "wildcard host \"*\" is not allowed for VirtualServices bound to the mesh gateway",
            );
            all_valid = false;
        }
    }
    // Istio: overlapping hosts (literal or wildcard) in one VirtualService.
    if all_valid {
        let canon: Vec<String> = vs.hosts.iter().map(|h| host::canonical(h)).collect();
        for j in 0..canon.len() {
            if let Some(i) = (0..j).find(|&i| host::intersects(&canon[i], &canon[j])) {
                r.error(
                    &format!("spec.hosts[{j}]"),
                    format!(
                        "duplicate host: {:?} overlaps spec.hosts[{i}] ({:?})",
                        vs.hosts[j], vs.hosts[i]
                    ),
                );
            }
        }
    }

    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        r.error(
            "spec",
            "at least one of http, tls or tcp routes is required",
        );
    }
    for (i, h) in vs.http.iter().enumerate() {
        http_route(r, &format!("spec.http[{i}]"), h, is_delegate);
    }
    let vs_hosts: Vec<String> = vs
        .hosts
        .iter()
        .map(|h| host::resolve_short_name(h, ns))
        .collect();
    for (i, t) in vs.tls.iter().enumerate() {
        tls_route(r, &format!("spec.tls[{i}]"), t, &vs_hosts);
    }
    for (i, t) in vs.tcp.iter().enumerate() {
        tcp_route(r, &format!("spec.tcp[{i}]"), t);
    }
    check_export_to(r, ns, &vs.export_to, false, false);

    // Istio `analyzeUnreachable*Rules` (warnings).
    let http: Vec<Vec<HttpMatchRequest>> = vs
        .http
        .iter()
        .map(|h| {
            h.matches
                .iter()
                .map(|m| HttpMatchRequest {
                    name: None,
                    ..m.clone()
                })
                .collect()
        })
        .collect();
    unreachable_rules(r, "spec.http", &http);
    let tls: Vec<&[TlsMatchAttributes]> = vs.tls.iter().map(|t| t.matches.as_slice()).collect();
    unreachable_rules(r, "spec.tls", &tls);
    let tcp: Vec<&[L4MatchAttributes]> = vs.tcp.iter().map(|t| t.matches.as_slice()).collect();
    unreachable_rules(r, "spec.tcp", &tcp);
}

fn is_jwt_claim_header(k: &str) -> bool {
    k.starts_with("@request.auth.claims.") || k.starts_with("@request.auth.claims[")
}

/// Routes that can never match: after a route without matches, or whose every match appears
/// in an earlier route. Routes are first-match.
fn unreachable_rules<M: PartialEq, L: AsRef<[M]>>(r: &mut Report<'_>, base: &str, routes: &[L]) {
    let mut catch_all: Option<usize> = None;
    let mut seen: Vec<(&M, usize)> = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let matches = route.as_ref();
        let field = format!("{base}[{i}]");
        if let Some(j) = catch_all {
            r.warning(
                &field,
                format!("unreachable: {base}[{j}] before it has no match and takes all traffic"),
            );
            continue;
        }
        if matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut dups = 0;
        for (k, m) in matches.iter().enumerate() {
            if let Some((_, j)) = seen.iter().find(|(s, _)| *s == m) {
                r.warning(
                    &format!("{field}.match[{k}]"),
                    format!("never used: {base}[{j}] has the same match"),
                );
                dups += 1;
            } else {
                seen.push((m, i));
            }
        }
        if dups == matches.len() {
            r.warning(
                &field,
                "unreachable: every match is used by an earlier route",
            );
        }
    }
}

/// Istio `validateGatewayNames`: `mesh`, `name`, or `namespace/name`.
fn check_gateway_names(r: &mut Report<'_>, base: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let field = format!("{base}[{i}]");
        if g == "mesh" {
            continue;
        }
        match g.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    r.error(&field, "namespace and gateway name must not be empty");
                    continue;
                }
                if !is_dns1123_label(ns) {
                    r.error(&field, format!("invalid namespace {ns:?}"));
                }
                if !is_dns1123_label(name) {
                    r.error(&field, format!("invalid gateway name {name:?}"));
                }
            }
            None => {
                if let Some((name, rest)) = g.split_once('.') {
                    let ns = rest.split('.').next().unwrap_or(rest);
                    r.warning(
                        &field,
                        format!("legacy gateway name format {g:?}; prefer namespace/name: \"{ns}/{name}\""),
                    );
                }
                if !g.split('.').all(is_dns1123_label) {
                    r.error(&field, format!("invalid gateway name {g:?}"));
                }
            }
        }
    }
}

/// Istio `validateHTTPRoute`.
fn http_route(r: &mut Report<'_>, base: &str, h: &HttpRoute, in_delegate: bool) {
    let has_route = !h.route.is_empty();
    if let Some(d) = &h.delegate {
        if in_delegate {
            r.error(
                &format!("{base}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if d.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            r.error(
                &format!("{base}.delegate.name"),
                "delegate name is required",
            );
        }
        // Istio: a root route only delegates.
        if h.redirect.is_some() {
            r.error(
                &format!("{base}.redirect"),
                "a route with delegate must not set redirect",
            );
        }
        if has_route {
            r.error(
                &format!("{base}.route"),
                "a route with delegate must not set route",
            );
        }
    } else {
        let n = usize::from(has_route)
            + usize::from(h.redirect.is_some())
            + usize::from(h.direct_response.is_some());
        if n != 1 {
            r.error(
                base,
                "exactly one of route, redirect or directResponse is required",
            );
        }
        for (set, what) in [
            (h.redirect.is_some(), "redirect"),
            (h.direct_response.is_some(), "directResponse"),
        ] {
            if !set {
                continue;
            }
            if h.fault.is_some() {
                r.error(
                    &format!("{base}.fault"),
                    format!("fault cannot be combined with {what}"),
                );
            }
            if h.rewrite.is_some() {
                r.error(
                    &format!("{base}.rewrite"),
                    format!("rewrite cannot be combined with {what}"),
                );
            }
        }
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(base, "set only one of mirror or mirrors");
    }

    for (j, m) in h.matches.iter().enumerate() {
        http_match(r, &format!("{base}.match[{j}]"), m);
    }
    if let Some(f) = &h.fault {
        fault(r, &format!("{base}.fault"), f);
    }
    if let Some(p) = h.mirror_percentage {
        check_percentage(r, &format!("{base}.mirrorPercentage"), Some(p));
    }
    if let Some(p) = h.mirror_percent {
        if p > 100 {
            r.error(
                &format!("{base}.mirrorPercent"),
                format!("percentage {p} is above 100"),
            );
        }
        r.warning(
            &format!("{base}.mirrorPercent"),
            "deprecated: use mirrorPercentage",
        );
    }
    if let Some(m) = &h.mirror {
        destination(r, &format!("{base}.mirror"), m);
    }
    for (i, m) in h.mirrors.iter().enumerate() {
        let mbase = format!("{base}.mirrors[{i}]");
        match &m.destination {
            None => r.error(&format!("{mbase}.destination"), "destination is required"),
            Some(d) => destination(r, &format!("{mbase}.destination"), d),
        }
        check_percentage(r, &format!("{mbase}.percentage"), m.percentage);
    }
    if let Some(rd) = &h.redirect {
        redirect(r, &format!("{base}.redirect"), rd);
    }
    if let Some(dr) = &h.direct_response {
        direct_response(r, &format!("{base}.directResponse"), dr);
    }
    if let Some(rt) = &h.retries {
        retries(r, &format!("{base}.retries"), rt);
    }
    if let Some(rw) = &h.rewrite {
        rewrite(r, &format!("{base}.rewrite"), rw);
    }
    for (i, d) in h.route.iter().enumerate() {
        match &d.destination {
            None => r.error(
                &format!("{base}.route[{i}].destination"),
                "destination is required",
            ),
            Some(dest) => destination(r, &format!("{base}.route[{i}].destination"), dest),
        }
    }
    let weights: Vec<Option<i32>> = h.route.iter().map(|d| d.weight).collect();
    check_weights(r, &format!("{base}.route"), &weights);
    check_opt_duration(r, &format!("{base}.timeout"), h.timeout);
}

/// Istio `validateHTTPRouteMatchRequest`.
fn http_match(r: &mut Report<'_>, base: &str, m: &HttpMatchRequest) {
    // uri allows an empty prefix (matches every path); the others do not.
    let strict = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (what, sm) in strict {
        if let Some(sm) = sm {
            string_match(r, &format!("{base}.{what}"), sm, Empty::Warn, what == "uri");
        }
    }
    for (what, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (k, sm) in map {
            let field = format!("{base}.{what}.{k}");
            header_match_name(r, &field, k);
            // In withoutHeaders, `regex: "*"` means "present", not a regex.
            if !(what == "withoutHeaders" && sm.regex.as_deref() == Some("*")) {
                // An empty match (`{}`) tests presence.
                string_match(r, &field, sm, Empty::Presence, false);
            }
        }
    }
    for (k, sm) in &m.query_params {
        string_match(
            r,
            &format!("{base}.queryParams.{k}"),
            sm,
            Empty::Presence,
            false,
        );
    }
    if let Some(p) = m.port.filter(|p| *p != 0) {
        check_port(r, &format!("{base}.port"), p);
    }
    check_gateway_names(r, &format!("{base}.gateways"), &m.gateways);
    if let Some(ns) = m.source_namespace.as_deref().filter(|s| !s.is_empty())
        && !is_dns1123_label(ns)
    {
        r.error(
            &format!("{base}.sourceNamespace"),
            format!("invalid namespace {ns:?}"),
        );
    }
}

/// Header names in matches: lower case (the API requires it, Envoy compares lower-cased
/// names), RFC 7230 token characters; pseudo-headers and JWT claim keys are allowed.
fn header_match_name(r: &mut Report<'_>, field: &str, k: &str) {
    if is_jwt_claim_header(k)
        || matches!(
            k,
            ":method" | ":scheme" | ":authority" | ":path" | ":status"
        )
    {
        return;
    }
    const TCHARS: &str = "!#$%&'*+-.^_`|~";
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || TCHARS.contains(c))
    {
        r.error(field, format!("{k:?} is not a valid header name"));
    } else if k.chars().any(|c| c.is_ascii_uppercase()) {
        r.error(field, format!("header name {k:?} must be lower case"));
    }
}

/// What an empty StringMatch (`{}`) means where it appears.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Empty {
    /// Headers and query parameters: a presence test.
    Presence,
    /// uri/scheme/method/authority: Istio accepts it and matches everything.
    Warn,
}

/// Istio `validateStringMatch` / `validateStringMatchRegexp`, plus the proto oneof.
fn string_match(
    r: &mut Report<'_>,
    field: &str,
    sm: &StringMatch,
    empty: Empty,
    allow_empty_prefix: bool,
) {
    let n = usize::from(sm.exact.is_some())
        + usize::from(sm.prefix.is_some())
        + usize::from(sm.regex.is_some());
    if n > 1 {
        r.error(field, "exactly one of exact, prefix or regex is allowed");
    } else if n == 0 && empty == Empty::Warn {
        r.warning(
            field,
            "none of exact, prefix or regex is set: matches everything",
        );
    }
    if sm.prefix.as_deref() == Some("") && !allow_empty_prefix {
        r.error(&format!("{field}.prefix"), "prefix must not be empty");
    }
    if let Some(re) = &sm.regex {
        check_regex(r, &format!("{field}.regex"), re);
    }
}

/// Istio `validateHTTPRouteDestinations` / `validateRouteDestinations` weights, plus egret's
/// note that weights are relative shares.
fn check_weights(r: &mut Report<'_>, base: &str, weights: &[Option<i32>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w.filter(|w| *w < 0) {
            r.error(
                &format!("{base}[{i}].weight"),
                format!("weight {w} must not be negative"),
            );
        }
    }
    if weights.len() > 1 {
        let total: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if total == 0 {
            r.error(
                base,
                "all destination weights are 0: no traffic would be routed",
            );
        } else if total != 100 && weights.iter().any(Option::is_some) {
            r.warning(
                base,
                format!("destination weights sum to {total}, not 100: egret (like Envoy) treats them as relative shares"),
            );
        }
    }
}

/// Istio `validateHTTPFaultInjection`.
fn fault(r: &mut Report<'_>, base: &str, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(base, "fault injection needs abort and/or delay");
    }
    if let Some(d) = &f.delay {
        let dbase = format!("{base}.delay");
        check_percentage(r, &format!("{dbase}.percentage"), d.percentage);
        check_percent_int(r, &format!("{dbase}.percent"), d.percent);
        match (d.fixed_delay, d.exponential_delay) {
            (Some(_), Some(_)) => r.error(&dbase, "set only one of fixedDelay or exponentialDelay"),
            (None, None) => r.error(&dbase, "delay needs fixedDelay or exponentialDelay"),
            (Some(fd), None) => check_duration(r, &format!("{dbase}.fixedDelay"), fd),
            (None, Some(ed)) => {
                check_duration(r, &format!("{dbase}.exponentialDelay"), ed);
                r.error(
                    &format!("{dbase}.exponentialDelay"),
                    "exponentialDelay is not supported",
                );
            }
        }
    }
    if let Some(a) = &f.abort {
        let abase = format!("{base}.abort");
        check_percentage(r, &format!("{abase}.percentage"), a.percentage);
        let n = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.http2_error.is_some());
        if n > 1 {
            r.error(
                &abase,
                "set only one of httpStatus, grpcStatus or http2Error",
            );
        } else if n == 0 {
            // Istio warns: nothing would be injected.
            r.warning(
                &abase,
                "abort needs httpStatus, grpcStatus or http2Error; nothing is injected",
            );
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            r.error(
                &format!("{abase}.httpStatus"),
                format!("HTTP status {s} is not in the range 200..599"),
            );
        }
        if let Some(s) = &a.grpc_status
            && !GRPC_STATUS.contains(&s.as_str())
        {
            r.error(
                &format!("{abase}.grpcStatus"),
                format!("unknown gRPC status {s:?} (use a name such as \"NOT_FOUND\")"),
            );
        }
        if a.http2_error.is_some() {
            r.error(
                &format!("{abase}.http2Error"),
                "HTTP/2 abort fault injection is not supported",
            );
        }
    }
}

/// gRPC status names Istio accepts in `abort.grpcStatus`.
const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio `validateHTTPRedirect`.
fn redirect(r: &mut Report<'_>, base: &str, rd: &HttpRedirect) {
    if !is_set(&rd.uri)
        && !is_set(&rd.authority)
        && !is_set(&rd.scheme)
        && rd.port.is_none()
        && rd.derive_port.is_none()
    {
        r.error(
            base,
            "redirect must set at least one of uri, authority, scheme, port or derivePort",
        );
    }
    // `port` and `derivePort` are a proto oneof.
    if rd.port.is_some() && rd.derive_port.is_some() {
        r.error(base, "set only one of port or derivePort");
    }
    if let Some(c) = rd.redirect_code.filter(|c| *c != 0)
        && !(300..=399).contains(&c)
    {
        r.error(
            &format!("{base}.redirectCode"),
            format!("{c} is not a redirect (3xx) code"),
        );
    }
    if let Some(s) = rd.scheme.as_deref().filter(|s| !s.is_empty())
        && s != "http"
        && s != "https"
    {
        r.error(
            &format!("{base}.scheme"),
            format!("scheme {s:?} must be \"http\" or \"https\""),
        );
    }
    if let Some(p) = rd.port.filter(|p| *p != 0) {
        check_port(r, &format!("{base}.port"), p);
    }
}

/// Istio `validateHTTPDirectResponse`.
fn direct_response(r: &mut Report<'_>, base: &str, d: &HttpDirectResponse) {
    match d.status {
        None | Some(0) => r.error(&format!("{base}.status"), "status is required"),
        Some(s) if !(200..=599).contains(&s) => r.error(
            &format!("{base}.status"),
            format!("HTTP status {s} is not in the range 200..599"),
        ),
        Some(_) => {}
    }
    if let Some(b) = &d.body {
        if b.string.is_some() && b.bytes.is_some() {
            r.error(&format!("{base}.body"), "set only one of string or bytes");
        }
        let size = b
            .string
            .as_ref()
            .map_or(0, String::len)
            .max(b.bytes.as_ref().map_or(0, |s| s.len() / 4 * 3));
        if size > 1024 * 1024 {
            r.error(
                &format!("{base}.body"),
                "direct response bodies must be smaller than 1MB",
            );
        } else if size > 100 * 1024 {
            r.warning(
                &format!("{base}.body"),
                "large direct response bodies slow down configuration updates",
            );
        }
    }
}

/// Istio `ValidateHTTPRetry`.
pub(super) fn retries(r: &mut Report<'_>, base: &str, rt: &HttpRetry) {
    let attempts = rt.attempts.unwrap_or(0);
    if attempts < 0 {
        r.error(
            &format!("{base}.attempts"),
            format!("attempts {attempts} must not be negative"),
        );
    }
    if attempts == 0
        && (rt.per_try_timeout.is_some()
            || is_set(&rt.retry_on)
            || rt.retry_remote_localities.is_some())
    {
        r.error(
            base,
            "retry settings are given but attempts is 0 (retries disabled)",
        );
    }
    check_opt_duration(r, &format!("{base}.perTryTimeout"), rt.per_try_timeout);
    if let Some(on) = rt.retry_on.as_deref().filter(|s| !s.is_empty()) {
        for policy in on.split(',') {
            let status = policy
                .parse::<u16>()
                .is_ok_and(|c| (100..=599).contains(&c));
            if !status && !RETRY_ON.contains(&policy) {
                r.error(
                    &format!("{base}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    check_opt_duration(r, &format!("{base}.backoff"), rt.backoff);
}

/// Envoy `x-envoy-retry-on` and `x-envoy-retry-grpc-on` policies Istio accepts.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Istio `validateHTTPRewrite`.
fn rewrite(r: &mut Report<'_>, base: &str, rw: &HttpRewrite) {
    let uri = is_set(&rw.uri);
    if uri && rw.uri_regex_rewrite.is_some() {
        r.error(base, "set only one of uri or uriRegexRewrite");
    }
    if !uri && rw.uri_regex_rewrite.is_none() && !is_set(&rw.authority) {
        r.error(
            base,
            "rewrite must set at least one of uri, uriRegexRewrite or authority",
        );
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        let rbase = format!("{base}.uriRegexRewrite");
        match (&rr.pattern, &rr.rewrite) {
            (Some(p), Some(w)) if !p.is_empty() && !w.is_empty() => {
                check_regex(r, &format!("{rbase}.match"), p)
            }
            _ => r.error(&rbase, "uriRegexRewrite needs both match and rewrite"),
        }
    }
}

/// Istio `validateTLSRoute`.
fn tls_route(r: &mut Report<'_>, base: &str, t: &TlsRoute, vs_hosts: &[String]) {
    if t.matches.is_empty() {
        r.error(&format!("{base}.match"), "at least one match is required");
    }
    for (j, m) in t.matches.iter().enumerate() {
        let mbase = format!("{base}.match[{j}]");
        if m.sni_hosts.is_empty() {
            r.error(
                &format!("{mbase}.sniHosts"),
                "at least one SNI host is required",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let field = format!("{mbase}.sniHosts[{k}]");
            if let Err(e) = host::validate_dns_name(sni) {
                if is_ip(sni) {
                    r.warning(&field, format!("{sni:?} is an IP address; SNI carries host names and most clients never send an IP"));
                } else {
                    r.error(&field, e);
                }
                continue;
            }
            // Istio `validateSniHost`: within the VirtualService hosts (`*.foo.com` covers
            // `foo.com` for SNI).
            let s = host::canonical(sni);
            if !vs_hosts.iter().any(|h| host::sni_matches(h, &s)) {
                r.error(
                    &field,
                    format!("SNI host {sni:?} is not among the VirtualService hosts"),
                );
            }
        }
        l4_match_common(
            r,
            &mbase,
            &m.destination_subnets,
            m.port,
            &m.gateways,
            &m.source_namespace,
        );
    }
    if t.route.is_empty() {
        r.error(
            &format!("{base}.route"),
            "at least one route destination is required",
        );
    }
    route_destinations(r, &format!("{base}.route"), &t.route);
}

/// Istio `validateTCPRoute`.
fn tcp_route(r: &mut Report<'_>, base: &str, t: &TcpRoute) {
    for (j, m) in t.matches.iter().enumerate() {
        let mbase = format!("{base}.match[{j}]");
        l4_match_common(
            r,
            &mbase,
            &m.destination_subnets,
            m.port,
            &m.gateways,
            &m.source_namespace,
        );
    }
    if t.route.is_empty() {
        r.error(
            &format!("{base}.route"),
            "at least one route destination is required",
        );
    }
    route_destinations(r, &format!("{base}.route"), &t.route);
}

fn l4_match_common(
    r: &mut Report<'_>,
    base: &str,
    subnets: &[String],
    port: Option<u32>,
    gateways: &[String],
    source_namespace: &Option<String>,
) {
    for (i, s) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            r.error(
                &format!("{base}.destinationSubnets[{i}]"),
                format!("{s:?} is not an IP address or CIDR block"),
            );
        }
    }
    if let Some(p) = port.filter(|p| *p != 0) {
        check_port(r, &format!("{base}.port"), p);
    }
    check_gateway_names(r, &format!("{base}.gateways"), gateways);
    if let Some(ns) = source_namespace.as_deref().filter(|s| !s.is_empty())
        && !is_dns1123_label(ns)
    {
        r.error(
            &format!("{base}.sourceNamespace"),
            format!("invalid namespace {ns:?}"),
        );
    }
}

fn route_destinations(r: &mut Report<'_>, base: &str, route: &[RouteDestination]) {
    for (i, d) in route.iter().enumerate() {
        match &d.destination {
            None => r.error(
                &format!("{base}[{i}].destination"),
                "destination is required",
            ),
            Some(dest) => destination(r, &format!("{base}[{i}].destination"), dest),
        }
    }
    let weights: Vec<Option<i32>> = route.iter().map(|d| d.weight).collect();
    check_weights(r, base, &weights);
}

// ===== Small helpers =====

/// Istio `validatePercentage` (`Percent{value}`): 0, or within [0.0001, 100].
fn check_percentage(r: &mut Report<'_>, field: &str, p: Option<Percent>) {
    if let Some(v) = p.and_then(|p| p.value)
        && (!(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001))
    {
        r.error(
            &format!("{field}.value"),
            format!("percentage {v} is neither 0 nor in the range 0.0001..100"),
        );
    }
}

/// Compile a regex as Envoy would (RE2 syntax; the `regex` crate is close to RE2).
/// Istio `validateStringRegexp`: non-empty, at most 1024 characters, compiles.
fn check_regex(r: &mut Report<'_>, field: &str, re: &str) {
    if re.is_empty() {
        r.error(field, "regex must not be empty");
    } else if re.len() > 1024 {
        r.error(field, "regex is longer than 1024 characters");
    } else if let Err(e) = regex::Regex::new(re) {
        r.error(field, format!("invalid regex {re:?}: {}", regex_error(&e)));
    }
}

/// The one-line reason of a regex error (the crate's message spans several lines).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

    #[test]
    fn virtual_service_http_routes() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: v
spec:
  hosts: ["*"]
  http:
  - match:
    - uri: {prefix: /a, exact: /b}
      headers:
        X-Foo: {exact: bar}
        x-re: {regex: "a(b"}
      port: 70000
    route:
    - destination: {host: a.foo.com}
      weight: 60
    - destination: {host: b.foo.com}
      weight: 30
    redirect: {uri: /x}
    timeout: 0s
  - route:
    - destination: {host: a.foo.com, port: {number: 0}}
      weight: -1
    - destination: {subset: v1}
      weight: 1
    retries: {attempts: -1, perTryTimeout: 0s}
    fault: {abort: {httpStatus: 700}, delay: {percentage: {value: 50}}}
  - directResponse: {status: 99}
    mirrorPercentage: {value: 150}
    mirror: {host: m.foo.com}
    mirrors: [{destination: {host: m.foo.com}}]
"#);
        let p = "VirtualService default/v: spec";
        assert_all(
            &d,
            &[
                &format!(
                    r#"test.yaml:6: error: {p}.hosts[0]: wildcard host "*" is not allowed for VirtualServices bound to the mesh gateway"#
                ),
                &format!(
                    "test.yaml:8: error: {p}.http[0]: exactly one of route, redirect or directResponse is required"
                ),
                &format!(
                    "test.yaml:9: error: {p}.http[0].match[0].uri: exactly one of exact, prefix or regex is allowed"
                ),
                &format!(
                    r#"test.yaml:11: error: {p}.http[0].match[0].headers.X-Foo: header name "X-Foo" must be lower case"#
                ),
                &format!(
                    r#"test.yaml:12: error: {p}.http[0].match[0].headers.x-re.regex: invalid regex "a(b": unclosed group"#
                ),
                &format!(
                    "test.yaml:13: error: {p}.http[0].match[0].port: port number 70000 must be in the range 1..65535"
                ),
                &format!(
                    "test.yaml:14: warning: {p}.http[0].route: destination weights sum to 90, not 100: egret (like Envoy) treats them as relative shares"
                ),
                &format!(
                    "test.yaml:20: error: {p}.http[0].timeout: duration 0s is shorter than 1ms"
                ),
                &format!(
                    "test.yaml:21: error: {p}.http[1].route: all destination weights are 0: no traffic would be routed"
                ),
                &format!(
                    "test.yaml:22: error: {p}.http[1].route[0].destination.port.number: port number 0 must be in the range 1..65535"
                ),
                &format!(
                    "test.yaml:23: error: {p}.http[1].route[0].weight: weight -1 must not be negative"
                ),
                &format!(
                    "test.yaml:24: error: {p}.http[1].route[1].destination.host: destination host is required"
                ),
                &format!(
                    "test.yaml:26: error: {p}.http[1].retries.attempts: attempts -1 must not be negative"
                ),
                &format!(
                    "test.yaml:26: error: {p}.http[1].retries.perTryTimeout: duration 0s is shorter than 1ms"
                ),
                &format!(
                    "test.yaml:27: error: {p}.http[1].fault.abort.httpStatus: HTTP status 700 is not in the range 200..599"
                ),
                &format!(
                    "test.yaml:27: error: {p}.http[1].fault.delay: delay needs fixedDelay or exponentialDelay"
                ),
                &format!("test.yaml:28: error: {p}.http[2]: set only one of mirror or mirrors"),
                &format!(
                    "test.yaml:28: error: {p}.http[2].directResponse.status: HTTP status 99 is not in the range 200..599"
                ),
                &format!(
                    "test.yaml:29: error: {p}.http[2].mirrorPercentage.value: percentage 150 is neither 0 nor in the range 0.0001..100"
                ),
                &format!(
                    "test.yaml:28: warning: {p}.http[2]: unreachable: spec.http[1] before it has no match and takes all traffic"
                ),
            ],
        );
        assert_eq!(d.len(), 20, "{d:#?}");
    }

    #[test]
    fn virtual_service_tls_and_tcp_routes() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: t
spec:
  hosts: [a.com, "*.wiki.org", reviews]
  gateways: [mesh, istio-system/egress, Bad/x, gw.istio-system]
  tls:
  - match:
    - sniHosts: [a.com, b.com, wiki.org, x.en.wiki.org]
      destinationSubnets: [10.0.0.0/33]
    route:
    - destination: {host: a.com}
  - route:
    - destination: {host: a.com}
  tcp:
  - match:
    - destinationSubnets: [1.2.3.4]
      port: 0
  - route:
    - destination: {host: a.com}
      weight: 50
    - destination: {host: b.com}
"#);
        let p = "VirtualService default/t: spec";
        assert_all(
            &d,
            &[
                &format!(r#"test.yaml:7: error: {p}.gateways[2]: invalid namespace "Bad""#),
                &format!(
                    r#"test.yaml:7: warning: {p}.gateways[3]: legacy gateway name format "gw.istio-system"; prefer namespace/name: "istio-system/gw""#
                ),
                &format!(
                    r#"test.yaml:10: error: {p}.tls[0].match[0].sniHosts[1]: SNI host "b.com" is not among the VirtualService hosts"#
                ),
                &format!(
                    r#"test.yaml:11: error: {p}.tls[0].match[0].destinationSubnets[0]: "10.0.0.0/33" is not an IP address or CIDR block"#
                ),
                &format!("test.yaml:14: error: {p}.tls[1].match: at least one match is required"),
                &format!(
                    "test.yaml:17: error: {p}.tcp[0].route: at least one route destination is required"
                ),
                &format!(
                    "test.yaml:20: warning: {p}.tcp[1].route: destination weights sum to 50, not 100: egret (like Envoy) treats them as relative shares"
                ),
            ],
        );
        assert_eq!(d.len(), 7, "{d:#?}");
    }

    #[test]
    fn virtual_service_without_hosts() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: nohosts
spec:
  http:
  - route:
    - destination: {host: a.foo.com}
"#);
        assert_eq!(d, vec![
            "test.yaml:5: error: VirtualService default/nohosts: spec.hosts: at least one host is required (only delegate VirtualServices have none, and no VirtualService delegates to this one)".to_string(),
        ]);
    }
}
