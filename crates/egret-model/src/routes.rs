//! VirtualService routes compiled for one proxy (`istio-egress-spec.md` §3).
//!
//! A VirtualService applies to a sidecar when its `gateways` list is empty or contains `mesh`,
//! and to a gateway when it names that Gateway (`name` = same namespace as the VirtualService,
//! or `ns/name`). A match's own `gateways` overrides the top-level list for that match. Routes
//! keep their order: the first matching rule wins.

use egret_config::Object;
use egret_config::types::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRoute as HttpRouteSpec,
    RouteDestination, StringMatch, VirtualService,
};

use crate::host;
use crate::identity::ProxyIdentity;
use crate::snapshot::{
    Fault, HeaderOps, HttpMatch, HttpRoute, Mirror, Redirect, RetryOn, RetryPolicy, Rewrite,
    RouteAction, StrMatch, WeightedCluster,
};

/// What a route or match is being compiled for.
#[derive(Debug, Clone)]
pub enum Binding {
    /// Sidecars: the reserved gateway name `mesh`.
    Mesh,
    /// A Gateway, by `ns/name`.
    Gateway(String),
}

/// The gateways a VirtualService (or one of its matches) names, resolved to `ns/name` or
/// `mesh`. Empty means `[mesh]`.
pub fn resolve_gateways(list: &[String], vs_ns: &str) -> Vec<String> {
    if list.is_empty() {
        return vec!["mesh".to_string()];
    }
    list.iter()
        .map(|g| {
            if g == "mesh" || g.contains('/') {
                g.clone()
            } else {
                format!("{vs_ns}/{g}")
            }
        })
        .collect()
}

fn binds(gateways: &[String], b: &Binding) -> bool {
    match b {
        Binding::Mesh => gateways.iter().any(|g| g == "mesh"),
        Binding::Gateway(k) => gateways.iter().any(|g| g == k),
    }
}

/// Is the VirtualService bound to `b` at the top level or in any match?
pub fn vs_binds(vs: &Object<VirtualService>, b: &Binding) -> bool {
    let ns = &vs.meta.namespace;
    let top = resolve_gateways(&vs.spec.gateways, ns);
    if binds(&top, b) {
        return true;
    }
    let any_match = |gws: &[String]| !gws.is_empty() && binds(&resolve_gateways(gws, ns), b);
    vs.spec
        .http
        .iter()
        .flat_map(|r| &r.matches)
        .any(|m| any_match(&m.gateways))
        || vs
            .spec
            .tls
            .iter()
            .flat_map(|r| &r.matches)
            .any(|m| any_match(&m.gateways))
        || vs
            .spec
            .tcp
            .iter()
            .flat_map(|r| &r.matches)
            .any(|m| any_match(&m.gateways))
}

/// The parts of an HTTP, TLS or TCP match that decide whether it applies to a proxy:
/// its own `gateways`, `sourceLabels`, `sourceNamespace` and `port`.
pub trait MatchScope {
    fn gateways(&self) -> &[String];
    fn source_labels(&self) -> &std::collections::BTreeMap<String, String>;
    fn source_namespace(&self) -> Option<&str>;
    fn port(&self) -> Option<u32>;
}

macro_rules! match_scope {
    ($t:ty) => {
        impl MatchScope for $t {
            fn gateways(&self) -> &[String] {
                &self.gateways
            }
            fn source_labels(&self) -> &std::collections::BTreeMap<String, String> {
                &self.source_labels
            }
            fn source_namespace(&self) -> Option<&str> {
                self.source_namespace.as_deref()
            }
            fn port(&self) -> Option<u32> {
                self.port
            }
        }
    };
}
match_scope!(HttpMatchRequest);
match_scope!(egret_config::types::TlsMatchAttributes);
match_scope!(egret_config::types::L4MatchAttributes);

/// Does a match apply to this proxy, binding and listener port? Its `gateways` (else the
/// VirtualService's) must include the binding; `sourceLabels` / `sourceNamespace` are
/// config-time selectors of the client workload; `port` = None means "any port".
pub fn match_applies(
    vs: &Object<VirtualService>,
    m: &impl MatchScope,
    b: &Binding,
    proxy: &ProxyIdentity,
    port: Option<u16>,
) -> bool {
    let gws = if m.gateways().is_empty() {
        resolve_gateways(&vs.spec.gateways, &vs.meta.namespace)
    } else {
        resolve_gateways(m.gateways(), &vs.meta.namespace)
    };
    binds(&gws, b)
        && proxy.selected_by(m.source_labels())
        && m.source_namespace().is_none_or(|ns| ns == proxy.namespace)
        && match (m.port(), port) {
            (Some(mp), Some(p)) => mp == u32::from(p),
            _ => true,
        }
}

/// The VirtualService's hosts, canonical, short names expanded with its namespace.
pub fn vs_hosts(vs: &Object<VirtualService>) -> Vec<String> {
    vs.spec
        .hosts
        .iter()
        .map(|h| host::resolve_short_name(h, &vs.meta.namespace))
        .collect()
}

/// Context for resolving destinations into cluster names.
pub struct DestCtx<'s> {
    /// Returns the port a destination without `port` uses: the service's only port, else
    /// the listener port.
    pub default_port: &'s dyn Fn(&str, u16) -> u16,
    pub listener_port: u16,
    pub namespace: &'s str,
}

impl DestCtx<'_> {
    /// `(cluster name, host, port, subset)` for a destination.
    pub fn resolve(&self, d: &Destination) -> Option<(String, String, u16, Option<String>)> {
        let h = host::resolve_short_name(d.host.as_deref()?, self.namespace);
        let port = match d.port.and_then(|p| p.number) {
            Some(p) => u16::try_from(p).ok().filter(|p| *p > 0)?,
            None => (self.default_port)(&h, self.listener_port),
        };
        let subset = d.subset.clone().filter(|s| !s.is_empty());
        Some((
            crate::snapshot::cluster_name(port, subset.as_deref(), &h),
            h,
            port,
            subset,
        ))
    }
}

/// Referenced cluster, to be built later.
pub type ClusterRef = (String, u16, Option<String>);

/// Compile the `http` routes of one VirtualService for a binding and listener port.
/// Returns the routes in order, and every cluster they reference.
pub fn http_routes(
    vs: &Object<VirtualService>,
    b: &Binding,
    proxy: &ProxyIdentity,
    ctx: &DestCtx<'_>,
    default_retry: &RetryPolicy,
    refs: &mut Vec<ClusterRef>,
) -> Vec<HttpRoute> {
    let mut out = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        if r.delegate.is_some() {
            continue; // not supported (warned at load)
        }
        let port = Some(ctx.listener_port);
        let matches: Vec<HttpMatch> = if r.matches.is_empty() {
            let gws = resolve_gateways(&vs.spec.gateways, &vs.meta.namespace);
            if !binds(&gws, b) {
                continue;
            }
            Vec::new()
        } else {
            let applicable: Vec<&HttpMatchRequest> = r
                .matches
                .iter()
                .filter(|m| match_applies(vs, *m, b, proxy, port))
                .collect();
            if applicable.is_empty() {
                continue;
            }
            applicable.into_iter().map(compile_match).collect()
        };
        let Some(action) = action(r, ctx, refs) else {
            continue;
        };
        let mut mirrors = Vec::new();
        if let Some(m) = &r.mirror {
            let pct = r
                .mirror_percentage
                .and_then(|p| p.value)
                .or(r.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            if let Some((name, h, p, s)) = ctx.resolve(m) {
                refs.push((h, p, s));
                mirrors.push(Mirror {
                    cluster: name,
                    percent: pct,
                });
            }
        }
        for m in &r.mirrors {
            if let Some((name, h, p, s)) = m.destination.as_ref().and_then(|d| ctx.resolve(d)) {
                refs.push((h, p, s));
                mirrors.push(Mirror {
                    cluster: name,
                    percent: m.percentage.and_then(|p| p.value).unwrap_or(100.0),
                });
            }
        }
        let fault = r.fault.as_ref().map(|f| Fault {
            delay: f.delay.as_ref().and_then(|d| {
                let pct = d
                    .percentage
                    .and_then(|p| p.value)
                    .or(d.percent.map(f64::from))
                    .unwrap_or(0.0);
                d.fixed_delay.map(|fd| (fd, pct))
            }),
            abort: f.abort.as_ref().and_then(|a| {
                let pct = a.percentage.and_then(|p| p.value).unwrap_or(0.0);
                a.http_status
                    .and_then(|s| u16::try_from(s).ok())
                    .map(|s| (s, pct))
            }),
        });
        // Istio: timeouts and retries are not enabled on a route with fault injection.
        let (timeout, retries) = if fault.is_some() {
            (
                None,
                RetryPolicy {
                    attempts: 0,
                    ..default_retry.clone()
                },
            )
        } else {
            (
                r.timeout.filter(|t| t.as_nanos() > 0),
                retry(r, default_retry),
            )
        };
        let (request_headers, response_headers) = header_ops(r.headers.as_ref());
        out.push(HttpRoute {
            name: r
                .name
                .clone()
                .unwrap_or_else(|| format!("{}.{}.{i}", vs.meta.namespace, vs.meta.name)),
            matches,
            action,
            rewrite: r.rewrite.as_ref().map(|rw| Rewrite {
                uri: rw.uri.clone(),
                authority: rw.authority.clone(),
                uri_regex: rw.uri_regex_rewrite.as_ref().and_then(|x| {
                    Some((x.pattern.clone()?, x.rewrite.clone().unwrap_or_default()))
                }),
            }),
            timeout,
            retries,
            fault,
            mirrors,
            request_headers,
            response_headers,
        });
    }
    out
}

fn action(r: &HttpRouteSpec, ctx: &DestCtx<'_>, refs: &mut Vec<ClusterRef>) -> Option<RouteAction> {
    if let Some(dr) = &r.direct_response {
        let body = dr.body.as_ref().and_then(|b| {
            b.string
                .clone()
                .or_else(|| b.bytes.as_deref().and_then(decode_base64))
        });
        return Some(RouteAction::DirectResponse {
            status: dr.status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
            body,
        });
    }
    if let Some(rd) = &r.redirect {
        return Some(RouteAction::Redirect(Redirect {
            uri: rd.uri.clone(),
            authority: rd.authority.clone(),
            port: rd.port.and_then(|p| u16::try_from(p).ok()),
            derive_port_from_request: matches!(
                rd.derive_port,
                Some(egret_config::types::RedirectPortSelection::FromRequestPort)
            ),
            scheme: rd.scheme.clone(),
            code: rd
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        }));
    }
    let dests = weighted(
        r.route
            .iter()
            .map(|d| (d.destination.as_ref(), d.weight, d.headers.as_ref())),
        ctx,
        refs,
    );
    if dests.is_empty() {
        return None;
    }
    Some(RouteAction::Route(dests))
}

/// Weighted destinations. A single destination gets all traffic whatever its weight; with
/// several, a missing weight counts as 0 (Istio).
fn weighted<'a>(
    dests: impl Iterator<Item = (Option<&'a Destination>, Option<i32>, Option<&'a Headers>)>,
    ctx: &DestCtx<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Vec<WeightedCluster> {
    let dests: Vec<_> = dests.collect();
    let single = dests.len() == 1;
    let mut out = Vec::new();
    for (d, w, headers) in dests {
        let Some((name, h, p, s)) = d.and_then(|d| ctx.resolve(d)) else {
            continue;
        };
        let weight = if single {
            100
        } else {
            u32::try_from(w.unwrap_or(0)).unwrap_or(0)
        };
        if weight == 0 && !single {
            continue;
        }
        refs.push((h, p, s));
        let (request_headers, response_headers) = header_ops(headers);
        out.push(WeightedCluster {
            cluster: name,
            weight,
            request_headers,
            response_headers,
        });
    }
    out
}

/// Destinations of a `tls` or `tcp` route.
pub fn l4_route(
    route: &[RouteDestination],
    ctx: &DestCtx<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Vec<WeightedCluster> {
    weighted(
        route
            .iter()
            .map(|d| (d.destination.as_ref(), d.weight, None)),
        ctx,
        refs,
    )
}

fn retry(r: &HttpRouteSpec, default: &RetryPolicy) -> RetryPolicy {
    let Some(rt) = &r.retries else {
        return default.clone();
    };
    RetryPolicy {
        attempts: u32::try_from(rt.attempts.unwrap_or(0)).unwrap_or(0),
        per_try_timeout: rt.per_try_timeout,
        retry_on: rt
            .retry_on
            .as_deref()
            .map(RetryOn::parse)
            .unwrap_or_else(|| default.retry_on.clone()),
        retry_ignore_previous_hosts: rt.retry_ignore_previous_hosts.unwrap_or(true),
        backoff: rt.backoff,
    }
}

/// Istio's default when a route has no `retries` (`istio-egress-spec.md` §3).
pub fn default_retry(mesh_default: Option<&egret_config::types::HttpRetry>) -> RetryPolicy {
    let base = RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: RetryOn::parse(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        ),
        retry_ignore_previous_hosts: true,
        backoff: None,
    };
    match mesh_default {
        None => base,
        Some(rt) => RetryPolicy {
            attempts: rt
                .attempts
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(base.attempts),
            per_try_timeout: rt.per_try_timeout,
            retry_on: rt
                .retry_on
                .as_deref()
                .map(RetryOn::parse)
                .unwrap_or(base.retry_on),
            retry_ignore_previous_hosts: rt.retry_ignore_previous_hosts.unwrap_or(true),
            backoff: rt.backoff,
        },
    }
}

fn header_ops(h: Option<&Headers>) -> (HeaderOps, HeaderOps) {
    let conv = |o: Option<&HeaderOperations>| match o {
        None => HeaderOps::default(),
        Some(o) => HeaderOps {
            set: o.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            add: o.add.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            remove: o.remove.clone(),
        },
    };
    match h {
        None => (HeaderOps::default(), HeaderOps::default()),
        Some(h) => (conv(h.request.as_ref()), conv(h.response.as_ref())),
    }
}

fn compile_match(m: &HttpMatchRequest) -> HttpMatch {
    let map = |m: &std::collections::BTreeMap<String, StringMatch>| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), str_match(v)))
            .collect::<Vec<_>>()
    };
    HttpMatch {
        uri: m.uri.as_ref().and_then(str_match),
        scheme: m.scheme.as_ref().and_then(str_match),
        method: m.method.as_ref().and_then(str_match),
        authority: m.authority.as_ref().and_then(str_match),
        headers: map(&m.headers),
        without_headers: map(&m.without_headers),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), str_match(v)))
            .collect(),
        port: m.port.and_then(|p| u16::try_from(p).ok()),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
    }
}

/// `None` for an empty StringMatch (`{}`: presence only). An invalid regex is a validation
/// error; here it compiles to a regex that never matches, so a bad snapshot cannot widen a
/// match.
pub fn str_match(m: &StringMatch) -> Option<StrMatch> {
    if let Some(e) = &m.exact {
        return Some(StrMatch::Exact(e.clone()));
    }
    if let Some(p) = &m.prefix {
        return Some(StrMatch::Prefix(p.clone()));
    }
    let r = m.regex.as_ref()?;
    let anchored = format!("^(?:{r})$");
    let re = regex::Regex::new(&anchored)
        .or_else(|_| regex::Regex::new(r"[^\s\S]"))
        .ok()?;
    Some(StrMatch::Regex(re))
}

/// Standard base64 (protobuf `bytes` in JSON/YAML), tolerant of missing padding.
fn decode_base64(s: &str) -> Option<String> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8="), Some("hello".into()));
        assert_eq!(decode_base64("aGVsbG8"), Some("hello".into()));
    }

    #[test]
    fn gateway_names_resolve_in_the_vs_namespace() {
        assert_eq!(
            resolve_gateways(&["gw".into(), "other/gw".into(), "mesh".into()], "ns"),
            vec!["ns/gw", "other/gw", "mesh"]
        );
        assert_eq!(resolve_gateways(&[], "ns"), vec!["mesh"]);
    }
}
