//! Property tests for host matching, the host index and HTTP route compilation.
//!
//! Every property compares egret against a small reference written here, directly from
//! `istio-egress-spec.md` §0 and §3, working on label lists rather than on strings:
//! - a host is `*`, `*.<labels>` or `<labels>`; matching is case-insensitive and ignores one
//!   trailing dot (both are taken care of by `canonical`);
//! - `*.s` matches a concrete name whose labels end with `s` and has at least one more label
//!   (any depth), never `s` itself; a wildcard name matches a wildcard pattern when it is at
//!   least as specific; `*` matches everything;
//! - TLS `sniHosts` are the exception: `*.s` also matches `s`;
//! - VirtualService `http` routes: the first matching route wins; a match list is an OR of
//!   match requests whose fields are ANDed; an empty match list matches everything.
//!
//! Labels come from a tiny alphabet so that equal names, shared suffixes and byte-suffixes
//! that are not label suffixes (`b.com` / `ab.com`) come up often.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;

use egret_config::ConfigSet;
use egret_model::host::{self, HostIndex};
use egret_model::snapshot::{HttpMatch, HttpRoute, RouteAction, StrMatch};
use egret_model::{ProxyIdentity, compile};
use proptest::prelude::*;

// ===== Reference host model =====

const LABELS: &[&str] = &["a", "b", "ab", "foo", "com", "x-1"];

/// A host as the reference sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// `*`
    Any,
    /// `*.<labels>`
    Wild(Vec<String>),
    /// `<labels>`
    Exact(Vec<String>),
}

impl Host {
    /// The canonical spelling (lower case, no trailing dot).
    fn render(&self) -> String {
        match self {
            Host::Any => "*".to_string(),
            Host::Wild(s) => format!("*.{}", s.join(".")),
            Host::Exact(l) => l.join("."),
        }
    }
}

/// Reference parse of a canonical name into labels (independent of `host.rs`).
fn parse(canonical: &str) -> Host {
    let labels = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
    if canonical == "*" {
        Host::Any
    } else if let Some(rest) = canonical.strip_prefix("*.") {
        Host::Wild(labels(rest))
    } else {
        Host::Exact(labels(canonical))
    }
}

/// Reference: does pattern `p` match name `n` (concrete or wildcard)?
fn ref_matches(p: &Host, n: &Host) -> bool {
    match (p, n) {
        (Host::Any, _) => true,
        (Host::Wild(s), Host::Exact(l)) => l.len() > s.len() && l.ends_with(s),
        (Host::Wild(s), Host::Wild(l)) => l.len() >= s.len() && l.ends_with(s),
        (Host::Wild(_), Host::Any) => false,
        (Host::Exact(a), Host::Exact(b)) => a == b,
        (Host::Exact(_), _) => false,
    }
}

/// Reference: TLS sniHosts matching of a concrete SNI.
fn ref_sni_matches(p: &Host, sni: &Host) -> bool {
    match (p, sni) {
        (Host::Wild(s), Host::Exact(l)) if s == l => true,
        _ => ref_matches(p, sni),
    }
}

/// Reference: is there a concrete name matched by both?
fn ref_intersects(a: &Host, b: &Host) -> bool {
    match (a, b) {
        (Host::Any, _) | (_, Host::Any) => true,
        (Host::Exact(x), Host::Exact(y)) => x == y,
        (Host::Wild(s), Host::Exact(l)) | (Host::Exact(l), Host::Wild(s)) => {
            l.len() > s.len() && l.ends_with(s)
        }
        (Host::Wild(s), Host::Wild(t)) => s.ends_with(t) || t.ends_with(s),
    }
}

/// Reference "most specific" choice among inserted hosts (first insertion of a host wins):
/// the exact name, else the matching wildcard with the most labels, else `*`.
fn ref_most_specific(inserted: &[Host], q: &[String]) -> Option<usize> {
    let query = Host::Exact(q.to_vec());
    if let Some(i) = inserted.iter().position(|h| *h == query) {
        return Some(i);
    }
    let mut best: Option<(usize, usize)> = None; // (suffix labels, index)
    for (i, h) in inserted.iter().enumerate() {
        if let Host::Wild(s) = h
            && ref_matches(h, &query)
            && best.is_none_or(|(n, _)| s.len() > n)
        {
            best = Some((s.len(), i));
        }
    }
    if let Some((_, i)) = best {
        return Some(i);
    }
    inserted.iter().position(|h| *h == Host::Any)
}

// ===== Strategies =====

fn labels(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(LABELS).prop_map(str::to_string),
        1..=max,
    )
}

fn concrete() -> impl Strategy<Value = Host> {
    labels(4).prop_map(Host::Exact)
}

fn any_host() -> impl Strategy<Value = Host> {
    prop_oneof![
        1 => Just(Host::Any),
        4 => labels(3).prop_map(Host::Wild),
        5 => labels(4).prop_map(Host::Exact),
    ]
}

/// A host as a user might write it: random upper case, maybe a trailing dot.
#[derive(Debug, Clone)]
struct Written {
    host: Host,
    text: String,
}

fn written(h: impl Strategy<Value = Host>) -> impl Strategy<Value = Written> {
    (h, any::<u64>(), any::<bool>()).prop_map(|(host, case_bits, dot)| {
        let mut text: String = host
            .render()
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if case_bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        if dot {
            text.push('.');
        }
        Written { host, text }
    })
}

/// `canonical`, checked to give back the host that was written.
fn canon(w: &Written) -> String {
    let c = host::canonical(&w.text);
    assert_eq!(parse(&c), w.host, "canonical({:?}) = {c:?}", w.text);
    c
}

// ===== 1. Host matching =====

/// `*.s` written somehow, `s` written somehow, and a strictly deeper name `p.s` written somehow.
fn depth_case() -> impl Strategy<Value = (Written, Written, Written)> {
    (labels(3), labels(3)).prop_flat_map(|(s, p)| {
        let deeper = p.into_iter().chain(s.iter().cloned()).collect();
        (
            written(Just(Host::Wild(s.clone()))),
            written(Just(Host::Exact(s))),
            written(Just(Host::Exact(deeper))),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_agrees_with_reference(p in written(any_host()), n in written(any_host())) {
        let (pc, nc) = (canon(&p), canon(&n));
        prop_assert_eq!(
            host::matches(&pc, &nc),
            ref_matches(&p.host, &n.host),
            "matches({:?}, {:?}) written as ({:?}, {:?})", pc, nc, p.text, n.text
        );
        prop_assert_eq!(
            host::intersects(&pc, &nc),
            ref_intersects(&p.host, &n.host),
            "intersects({:?}, {:?})", pc, nc
        );
        prop_assert_eq!(host::is_wildcard(&pc), !matches!(p.host, Host::Exact(_)));
    }

    #[test]
    fn sni_matches_agrees_with_reference(p in written(any_host()), n in written(concrete())) {
        let (pc, nc) = (canon(&p), canon(&n));
        prop_assert_eq!(
            host::sni_matches(&pc, &nc),
            ref_sni_matches(&p.host, &n.host),
            "sni_matches({:?}, {:?})", pc, nc
        );
        // sniHosts only ever widen the ordinary rule, by exactly the bare suffix.
        if host::matches(&pc, &nc) {
            prop_assert!(host::sni_matches(&pc, &nc));
        }
    }

    /// `*.s` against `s`, `x.s`, `x.y.s`, ...: only strictly deeper names match, at any depth;
    /// sniHosts additionally take `s` itself. `*` takes everything.
    #[test]
    fn wildcard_depth((pattern, bare, deeper) in depth_case()) {
        let (pattern, bare, deeper) = (canon(&pattern), canon(&bare), canon(&deeper));
        prop_assert!(!host::matches(&pattern, &bare), "{} must not match {}", pattern, bare);
        prop_assert!(host::sni_matches(&pattern, &bare), "sni {} must match {}", pattern, bare);
        prop_assert!(host::matches(&pattern, &deeper), "{} must match {}", pattern, deeper);
        prop_assert!(host::sni_matches(&pattern, &deeper));
        prop_assert!(host::matches("*", &bare) && host::matches("*", &deeper));
        // A wildcard pattern covers itself and any deeper wildcard, not the other way round.
        prop_assert!(host::matches(&pattern, &pattern));
        let deeper_wild = format!("*.{deeper}");
        prop_assert!(host::matches(&pattern, &deeper_wild));
        prop_assert!(!host::matches(&deeper_wild, &pattern));
        // An exact name never matches a wildcard name.
        prop_assert!(!host::matches(&bare, &pattern));
    }

    #[test]
    fn short_names(w in written(any_host()), ns in prop::sample::select(&["default", "prod"][..])) {
        let c = canon(&w);
        let r = host::resolve_short_name(&w.text, ns);
        match &w.host {
            Host::Exact(l) if l.len() == 1 => {
                prop_assert_eq!(r, format!("{c}.{ns}.{}", host::CLUSTER_DOMAIN));
            }
            _ => prop_assert_eq!(r, c),
        }
    }
}

// ===== 2. HostIndex =====

fn index_case() -> impl Strategy<Value = (Vec<Written>, Vec<Vec<String>>)> {
    prop::collection::vec(written(any_host()), 0..8).prop_flat_map(|inserted| {
        // Queries: random names, plus one derived from each inserted host so hits are common.
        let derived: Vec<BoxedStrategy<Vec<String>>> = inserted
            .iter()
            .map(|w| match &w.host {
                Host::Any => labels(4).boxed(),
                Host::Exact(l) => Just(l.clone()).boxed(),
                Host::Wild(s) => {
                    let s = s.clone();
                    labels(2)
                        .prop_map(move |p| p.into_iter().chain(s.iter().cloned()).collect())
                        .boxed()
                }
            })
            .collect();
        (
            Just(inserted),
            (prop::collection::vec(labels(4), 0..6), derived).prop_map(|(mut a, b)| {
                a.extend(b);
                a
            }),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn host_index_most_specific((inserted, queries) in index_case()) {
        let canonical: Vec<String> = inserted.iter().map(canon).collect();
        let hosts: Vec<Host> = inserted.iter().map(|w| w.host.clone()).collect();
        let mut idx = HostIndex::new();
        for (i, h) in canonical.iter().enumerate() {
            idx.insert(h, i);
        }
        idx.finish();
        prop_assert_eq!(idx.is_empty(), inserted.is_empty());
        for q in &queries {
            let name = q.join(".");
            let got = idx.get(&name).copied();
            let want = ref_most_specific(&hosts, q);
            prop_assert_eq!(
                got, want,
                "get({:?}) with inserted {:?}: got {:?}, want {:?}",
                name, canonical, got.map(|i| &canonical[i]), want.map(|i| &canonical[i])
            );
            let query = Host::Exact(q.clone());
            if let Some(i) = got {
                // What was returned matches, and nothing inserted is more specific.
                prop_assert!(host::matches(&canonical[i], &name));
                prop_assert!(
                    hosts.iter().position(|h| *h == hosts[i]) == Some(i),
                    "not the first insertion of {}", canonical[i]
                );
                match &hosts[i] {
                    Host::Exact(_) => {}
                    Host::Wild(s) => {
                        prop_assert!(!hosts.contains(&query), "exact must beat wildcard");
                        prop_assert!(!hosts.iter().any(|h| matches!(h, Host::Wild(t)
                            if t.len() > s.len() && ref_matches(h, &query))),
                            "longer wildcard suffix must win");
                    }
                    Host::Any => {
                        prop_assert!(
                            !hosts.iter().any(|h| *h != Host::Any && ref_matches(h, &query)),
                            "`*` must come last"
                        );
                    }
                }
            } else {
                prop_assert!(!hosts.iter().any(|h| ref_matches(h, &query)));
            }
        }
    }
}

// ===== 3. First-match route order =====

const VS_HOST: &str = "api.example.test";
const PATHS: &[&str] = &["/", "/a", "/ab", "/a/b", "/b"];
const REQ_PATHS: &[&str] = &["/", "/a", "/ab", "/abc", "/a/b", "/b", "/c"];
const METHODS: &[&str] = &["GET", "POST"];
const REQ_METHODS: &[&str] = &["GET", "POST", "PUT"];
const HEADER: &str = "x-k";
const HEADER_VALUES: &[&str] = &["v1", "v2"];
const REQ_HEADERS: &[Option<&str>] = &[None, Some("v1"), Some("v2"), Some("")];

#[derive(Debug, Clone)]
enum UriSpec {
    Exact(&'static str),
    Prefix(&'static str),
}

#[derive(Debug, Clone)]
struct MatchSpec {
    uri: Option<UriSpec>,
    method: Option<&'static str>,
    header: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct RouteSpec {
    matches: Vec<MatchSpec>,
}

fn match_spec() -> impl Strategy<Value = MatchSpec> {
    let path = prop::sample::select(PATHS);
    (
        prop::option::of(prop_oneof![
            path.clone().prop_map(UriSpec::Exact),
            path.prop_map(UriSpec::Prefix),
        ]),
        prop::option::of(prop::sample::select(METHODS)),
        prop::option::of(prop::sample::select(HEADER_VALUES)),
    )
        .prop_map(|(uri, method, header)| MatchSpec {
            uri,
            method,
            header,
        })
}

fn routes_spec() -> impl Strategy<Value = Vec<RouteSpec>> {
    prop::collection::vec(
        prop::collection::vec(match_spec(), 0..=3).prop_map(|matches| RouteSpec { matches }),
        1..=8,
    )
}

fn dest(i: usize) -> String {
    format!("d{i}.example.test")
}

fn service_entry(name: &str, host: &str, port: u16, protocol: &str, resolution: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts: [\"{host}\"]\n  ports:\n  - {{number: {port}, name: p{port}, protocol: {protocol}}}\n  resolution: {resolution}\n  location: MESH_EXTERNAL\n---\n"
    )
}

fn virtual_service(name: &str, host: &str, routes: &[RouteSpec]) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts: [\"{host}\"]\n  http:\n"
    );
    for (i, r) in routes.iter().enumerate() {
        y.push_str("  -");
        if !r.matches.is_empty() {
            y.push_str(" match:\n");
            for m in &r.matches {
                let mut fields = Vec::new();
                match &m.uri {
                    Some(UriSpec::Exact(p)) => fields.push(format!("uri: {{exact: \"{p}\"}}")),
                    Some(UriSpec::Prefix(p)) => fields.push(format!("uri: {{prefix: \"{p}\"}}")),
                    None => {}
                }
                if let Some(me) = m.method {
                    fields.push(format!("method: {{exact: {me}}}"));
                }
                if let Some(v) = m.header {
                    fields.push(format!("headers: {{{HEADER}: {{exact: {v}}}}}"));
                }
                let _ = writeln!(y, "    - {{{}}}", fields.join(", "));
            }
            y.push_str("    route:\n");
        } else {
            y.push_str(" route:\n");
        }
        let _ = writeln!(y, "    - destination: {{host: {}}}", dest(i));
    }
    y.push_str("---\n");
    y
}

/// The ServiceEntries (the VirtualService host and one per destination) and the VirtualService.
fn route_config(routes: &[RouteSpec]) -> String {
    let mut y = service_entry("api", VS_HOST, 80, "HTTP", "DNS");
    for i in 0..routes.len() {
        y.push_str(&service_entry(
            &format!("d{i}"),
            &dest(i),
            80,
            "HTTP",
            "DNS",
        ));
    }
    y.push_str(&virtual_service("api", VS_HOST, routes));
    y
}

struct Request {
    path: &'static str,
    method: &'static str,
    header: Option<&'static str>,
}

/// Reference over the spec: the index of the first route that matches.
fn ref_route(routes: &[RouteSpec], req: &Request) -> Option<usize> {
    let one = |m: &MatchSpec| {
        let uri_ok = match &m.uri {
            None => true,
            Some(UriSpec::Exact(p)) => req.path == *p,
            Some(UriSpec::Prefix(p)) => req.path.starts_with(p),
        };
        let method_ok = m.method.is_none_or(|me| req.method == me);
        let header_ok = m.header.is_none_or(|v| req.header == Some(v));
        uri_ok && method_ok && header_ok
    };
    routes
        .iter()
        .position(|r| r.matches.is_empty() || r.matches.iter().any(one))
}

/// Evaluation over the compiled match, with only the fields the generator can set.
fn compiled_match(m: &HttpMatch, req: &Request) -> bool {
    assert!(
        m.scheme.is_none()
            && m.authority.is_none()
            && m.without_headers.is_empty()
            && m.query_params.is_empty()
            && m.port.is_none()
            && !m.ignore_uri_case,
        "unexpected fields in compiled match {m:?}"
    );
    let s = |sm: &Option<StrMatch>, v: &str| sm.as_ref().is_none_or(|sm| sm.matches(v));
    s(&m.uri, req.path)
        && s(&m.method, req.method)
        && m.headers
            .iter()
            .all(|(name, sm)| name == HEADER && req.header.is_some_and(|v| s(sm, v)))
}

fn route_dest(r: &HttpRoute) -> String {
    match &r.action {
        RouteAction::Route(w) => {
            assert_eq!(w.len(), 1, "one destination per route: {w:?}");
            w[0].cluster.clone()
        }
        other => panic!("unexpected action {other:?}"),
    }
}

fn cluster_of(i: usize) -> String {
    format!("outbound|80||{}", dest(i))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn first_matching_route_wins(routes in routes_spec()) {
        let yaml = route_config(&routes);
        let (set, load) = ConfigSet::from_str("routes.yaml", &yaml);
        prop_assert!(!load.has_errors(), "load errors {:?}\n{}", load, yaml);
        let (snap, diags) = compile(&set, &ProxyIdentity::sidecar("default"));
        prop_assert!(!diags.has_errors(), "compile errors {:?}\n{}", diags, yaml);
        let listener = snap.listener(80).expect("listener 80");
        let vh = listener.virtual_host(VS_HOST).expect("virtual host for the VS host");
        prop_assert!(vh.domains.iter().any(|d| d == VS_HOST), "{:?}", vh.domains);

        // Order is kept: compiled route k goes to d_k, and every route is kept.
        prop_assert_eq!(vh.routes.len(), routes.len(), "{}", yaml);
        for (k, r) in vh.routes.iter().enumerate() {
            prop_assert_eq!(route_dest(r), cluster_of(k));
            prop_assert_eq!(r.matches.len(), routes[k].matches.len());
            prop_assert_eq!(&r.name, &format!("default.api.{k}"));
        }

        for path in REQ_PATHS {
            for method in REQ_METHODS {
                for header in REQ_HEADERS {
                    let req = Request { path, method, header: *header };
                    let got = vh
                        .routes
                        .iter()
                        .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| compiled_match(m, &req)))
                        .map(route_dest);
                    let want = ref_route(&routes, &req).map(cluster_of);
                    prop_assert_eq!(
                        got, want,
                        "request {} {} x-k={:?}\n{}", method, path, header, yaml
                    );
                }
            }
        }
    }
}

// ===== 4. Determinism =====

/// Extra ServiceEntries with hosts from the small alphabet, on a few ports and protocols.
fn extra_entry() -> impl Strategy<Value = (Host, u16, &'static str, &'static str)> {
    (
        prop_oneof![
            labels(3).prop_map(Host::Wild),
            labels(3).prop_map(Host::Exact)
        ],
        prop::sample::select(&[80u16, 443, 8080][..]),
        prop::sample::select(&["HTTP", "HTTPS", "TLS", "TCP"][..]),
        prop::sample::select(&["NONE", "DNS"][..]),
    )
}

fn random_config() -> impl Strategy<Value = String> {
    (
        routes_spec(),
        prop::collection::vec(extra_entry(), 0..6),
        prop::option::of((written(any_host()), routes_spec())),
    )
        .prop_map(|(routes, extra, second_vs)| {
            let mut y = route_config(&routes);
            for (i, (h, port, proto, res)) in extra.iter().enumerate() {
                y.push_str(&service_entry(
                    &format!("x{i}"),
                    &h.render(),
                    *port,
                    proto,
                    res,
                ));
            }
            if let Some((w, r)) = second_vs {
                y.push_str(&virtual_service("second", &w.text, &r));
            }
            y
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn compile_is_deterministic(yaml in random_config()) {
        let proxy = ProxyIdentity::sidecar("default");
        let (set1, load1) = ConfigSet::from_str("random.yaml", &yaml);
        let (set2, load2) = ConfigSet::from_str("random.yaml", &yaml);
        prop_assert_eq!(&load1, &load2);
        let (a, da) = compile(&set1, &proxy);
        let (b, db) = compile(&set1, &proxy);
        let (c, dc) = compile(&set2, &proxy);
        let ja = serde_json::to_string(&a).unwrap();
        let jb = serde_json::to_string(&b).unwrap();
        let jc = serde_json::to_string(&c).unwrap();
        prop_assert_eq!(&ja, &jb, "same ConfigSet, different snapshots\n{}", yaml);
        prop_assert_eq!(&ja, &jc, "same YAML, different snapshots\n{}", yaml);
        prop_assert_eq!(&a.version, &b.version);
        prop_assert_eq!(&da, &db);
        prop_assert_eq!(&da, &dc);
    }
}
