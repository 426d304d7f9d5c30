//! AuthorizationPolicy evaluation (`istio-egress-spec.md` §6).
//!
//! Istio's order per workload: (1) a matching CUSTOM policy hands the request to its
//! external authorizer; (2) any matching DENY denies; (3) with no ALLOW policy the request
//! is allowed; (4) a matching ALLOW allows; (5) otherwise deny. AUDIT never changes the
//! decision. A rule matches when any `from`, any `to` and every `when` match (an absent part
//! matches anything); a policy matches when any rule does; a policy without rules never
//! matches (`spec: {}` = allow nothing). Dry-run policies (`istio.io/dry-run: "true"`) are
//! evaluated and reported, never enforced.
//!
//! HTTP-only attributes (hosts, methods, paths, request principals, `request.headers`,
//! `request.auth.*`) on a TLS or TCP connection: in ALLOW/AUDIT/CUSTOM rules the attribute
//! cannot match; in DENY rules it is treated as matching — Istio builds the TCP filter of a
//! DENY policy without those fields, so `DENY methods: [POST], ports: ["8080"]` closes every
//! TCP connection to 8080.
//!
//! Policies are compiled once per snapshot. HTTP requests only visit the policies that can
//! match their host: a policy whose every rule names exact `hosts` is indexed by them.

use egret_model::fastmap::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use egret_config::types::{AuthzAction, Condition, Operation, Source};
use egret_model::snapshot::AuthzPolicy;
use ipnet::IpNet;

use super::attrs::{Attrs, Protocol, istio_match};

/// The outcome of DENY/ALLOW evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `policy`: the ALLOW policy that matched, or `None` when no ALLOW policy applies.
    Allow { policy: Option<Arc<str>> },
    /// `policy`: the DENY policy that matched, or `None` for "no ALLOW policy matched".
    Deny { policy: Option<Arc<str>> },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    pub fn policy(&self) -> &str {
        match self {
            Verdict::Allow { policy } | Verdict::Deny { policy } => {
                policy.as_deref().unwrap_or("-")
            }
        }
    }

    /// `denied_by_policy` / `no_matching_allow` / `allowed_by_policy` / `no_policy`.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Allow { policy: Some(_) } => "allowed_by_policy",
            Verdict::Allow { policy: None } => "no_allow_policy",
            Verdict::Deny { policy: Some(_) } => "denied_by_policy",
            Verdict::Deny { policy: None } => "no_matching_allow",
        }
    }
}

/// Everything one evaluation found, for enforcement and the audit record.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// Matching AUDIT policies (enforced or dry-run).
    pub audit: Vec<Arc<str>>,
    /// What the dry-run policies would have decided, when any apply and differ.
    pub dry_run: Option<Verdict>,
}

/// A CUSTOM policy that matched: its provider decides.
#[derive(Debug, Clone)]
pub struct CustomMatch {
    pub policy: Arc<str>,
    pub provider: Arc<str>,
    pub dry_run: bool,
}

/// The AuthorizationPolicies of one proxy, compiled.
#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Vec<CPolicy>,
    custom: Vec<usize>,
    deny: Index,
    allow: Index,
    audit: Index,
    dry_deny: Index,
    dry_allow: Index,
    /// Some enforced ALLOW policy applies: unmatched requests are denied.
    has_allow: bool,
    has_dry_allow: bool,
}

/// Policies of one action: those indexed by exact host, and the rest.
#[derive(Debug, Default)]
struct Index {
    by_host: HashMap<Box<str>, Vec<usize>>,
    any_host: Vec<usize>,
    /// Every policy, for TLS/TCP (host constraints do not apply there for DENY).
    all: Vec<usize>,
}

impl Index {
    fn add(&mut self, i: usize, p: &CPolicy) {
        self.all.push(i);
        match &p.exact_hosts {
            Some(hosts) => {
                for h in hosts {
                    let v = self.by_host.entry(h.clone()).or_default();
                    if !v.contains(&i) {
                        v.push(i);
                    }
                }
            }
            None => self.any_host.push(i),
        }
    }

    /// The first policy among the candidates for this request that matches.
    fn first_match<'p>(
        &self,
        policies: &'p [CPolicy],
        a: &Attrs<'_>,
        deny: bool,
    ) -> Option<&'p CPolicy> {
        let check = |i: &usize| policies.get(*i).filter(|p| p.matches(a, deny));
        match (a.protocol, a.host) {
            (Protocol::Http, Some(host)) => self
                .any_host
                .iter()
                .chain(self.by_host.get(host).into_iter().flatten())
                .find_map(check),
            // Host-indexed policies need a host: for ALLOW they cannot match a connection;
            // for DENY the host is an HTTP-only attribute treated as matching.
            _ if deny => self.all.iter().find_map(check),
            _ => self.any_host.iter().find_map(check),
        }
    }

    fn all_matches(&self, policies: &[CPolicy], a: &Attrs<'_>) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        let mut seen = |i: &usize| {
            if let Some(p) = policies.get(*i)
                && p.matches(a, false)
                && !out.contains(&p.name)
            {
                out.push(p.name.clone());
            }
        };
        match (a.protocol, a.host) {
            (Protocol::Http, Some(host)) => {
                self.any_host.iter().for_each(&mut seen);
                self.by_host
                    .get(host)
                    .into_iter()
                    .flatten()
                    .for_each(&mut seen);
            }
            _ => self.any_host.iter().for_each(&mut seen),
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

impl Authorizer {
    /// Compile the policies a snapshot selected for this proxy (already in Istio's order).
    /// Values were validated when the configuration was loaded; anything unparseable that
    /// slips through can only make a rule not match (never widen it).
    pub fn new(policies: &[AuthzPolicy]) -> Authorizer {
        let mut a = Authorizer::default();
        for p in policies {
            let cp = CPolicy::compile(p);
            let i = a.policies.len();
            match (p.action, p.dry_run) {
                (AuthzAction::Custom, _) => a.custom.push(i),
                (AuthzAction::Deny, false) => a.deny.add(i, &cp),
                (AuthzAction::Deny, true) => a.dry_deny.add(i, &cp),
                (AuthzAction::Allow, false) => {
                    a.has_allow = true;
                    a.allow.add(i, &cp)
                }
                (AuthzAction::Allow, true) => {
                    a.has_dry_allow = true;
                    a.dry_allow.add(i, &cp)
                }
                (AuthzAction::Audit, _) => a.audit.add(i, &cp),
            }
            a.policies.push(cp);
        }
        a
    }

    /// No policy applies: nothing to evaluate (the fast path for unpoliced proxies).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// The CUSTOM policy that applies to this request, if any (Istio allows one provider
    /// per workload; the first matching policy names it).
    pub fn custom(&self, a: &Attrs<'_>) -> Option<CustomMatch> {
        self.custom.iter().find_map(|&i| {
            let p = self.policies.get(i)?;
            p.matches(a, false).then(|| CustomMatch {
                policy: p.name.clone(),
                provider: p.provider.clone().unwrap_or_else(|| Arc::from("")),
                dry_run: p.dry_run,
            })
        })
    }

    /// DENY then ALLOW, plus AUDIT matches and what dry-run policies would decide.
    pub fn evaluate(&self, a: &Attrs<'_>) -> Evaluation {
        let verdict = decide(&self.policies, &self.deny, &self.allow, self.has_allow, a);
        let audit = if self.audit.is_empty() {
            Vec::new()
        } else {
            self.audit.all_matches(&self.policies, a)
        };
        let dry_run = (!self.dry_deny.is_empty() || self.has_dry_allow).then(|| {
            // The dry-run view: the enforced policies plus the dry-run ones.
            if let Some(p) = self.dry_deny.first_match(&self.policies, a, true) {
                return Verdict::Deny {
                    policy: Some(p.name.clone()),
                };
            }
            if self.has_dry_allow
                && let Verdict::Allow { policy: None } = verdict
            {
                return match self.dry_allow.first_match(&self.policies, a, false) {
                    Some(p) => Verdict::Allow {
                        policy: Some(p.name.clone()),
                    },
                    None => Verdict::Deny { policy: None },
                };
            }
            verdict.clone()
        });
        Evaluation {
            verdict,
            audit,
            dry_run,
        }
    }
}

fn decide(
    policies: &[CPolicy],
    deny: &Index,
    allow: &Index,
    has_allow: bool,
    a: &Attrs<'_>,
) -> Verdict {
    if let Some(p) = deny.first_match(policies, a, true) {
        return Verdict::Deny {
            policy: Some(p.name.clone()),
        };
    }
    if !has_allow {
        return Verdict::Allow { policy: None };
    }
    match allow.first_match(policies, a, false) {
        Some(p) => Verdict::Allow {
            policy: Some(p.name.clone()),
        },
        None => Verdict::Deny { policy: None },
    }
}

// ===== compiled policies =====

#[derive(Debug)]
struct CPolicy {
    name: Arc<str>,
    provider: Option<Arc<str>>,
    dry_run: bool,
    /// `None`: never matches.
    rules: Option<Vec<CRule>>,
    /// When every rule requires one of these exact hosts (HTTP), the policy's index keys.
    exact_hosts: Option<Vec<Box<str>>>,
}

#[derive(Debug)]
struct CRule {
    from: Vec<CSource>,
    to: Vec<COperation>,
    when: Vec<CCondition>,
}

/// One field's values (`principals`) and their negation (`notPrincipals`).
#[derive(Debug)]
struct Values<T> {
    is: Vec<T>,
    not: Vec<T>,
    /// A value did not parse (validation rejects such configurations, so only a bug gets
    /// here): the field matches nothing, rather than an emptied list matching everything.
    broken: bool,
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Values {
            is: Vec::new(),
            not: Vec::new(),
            broken: false,
        }
    }
}

impl<T> Values<T> {
    fn present(&self) -> bool {
        !self.is.is_empty() || !self.not.is_empty() || self.broken
    }

    /// Parse both lists with `f`.
    fn parsed(is: &[String], not: &[String], f: impl Fn(&str) -> Option<T>) -> Values<T> {
        let mut broken = false;
        let mut parse = |v: &[String]| -> Vec<T> {
            v.iter()
                .filter_map(|s| {
                    let p = f(s);
                    broken |= p.is_none();
                    p
                })
                .collect()
        };
        let (is, not) = (parse(is), parse(not));
        Values { is, not, broken }
    }
}

impl Values<String> {
    fn strings(is: &[String], not: &[String]) -> Values<String> {
        Values {
            is: is.to_vec(),
            not: not.to_vec(),
            broken: false,
        }
    }

    /// A missing value matches no positive pattern and no negative one (so `notX` alone
    /// passes), as Envoy's RBAC matchers do.
    fn check(&self, v: Option<&str>, m: impl Fn(&str, &str) -> bool) -> bool {
        (self.is.is_empty() || v.is_some_and(|v| self.is.iter().any(|p| m(p, v))))
            && !v.is_some_and(|v| self.not.iter().any(|p| m(p, v)))
    }
}

impl Values<IpNet> {
    fn nets(is: &[String], not: &[String]) -> Values<IpNet> {
        Values::parsed(is, not, parse_net)
    }

    fn check(&self, ip: Option<IpAddr>) -> bool {
        !self.broken
            && (self.is.is_empty() || ip.is_some_and(|ip| self.is.iter().any(|n| n.contains(&ip))))
            && !ip.is_some_and(|ip| self.not.iter().any(|n| n.contains(&ip)))
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[derive(Debug, Default)]
struct CSource {
    principals: Values<String>,
    request_principals: Values<String>,
    namespaces: Values<String>,
    service_accounts: Values<String>,
    trust_domains: Values<String>,
    ip_blocks: Values<IpNet>,
    remote_ip_blocks: Values<IpNet>,
}

#[derive(Debug)]
struct COperation {
    /// Lower-cased: hosts match case-insensitively.
    hosts: Values<String>,
    ports: Values<u16>,
    methods: Values<String>,
    paths: Values<PathPattern>,
}

#[derive(Debug)]
enum PathPattern {
    /// Istio's exact / `prefix*` / `*suffix` / `*`.
    Plain(String),
    /// `{*}` / `{**}` templates, as a regex.
    Template(regex::Regex),
    /// A template that did not compile: matches nothing.
    Never,
}

impl PathPattern {
    fn compile(p: &str) -> PathPattern {
        if !p.contains('{') {
            return PathPattern::Plain(p.to_string());
        }
        // `{*}`: one path segment; `{**}`: zero or more segments (the last operator).
        let mut re = String::from("^");
        let mut rest = p;
        while let Some(at) = rest.find('{') {
            re.push_str(&regex::escape(&rest[..at]));
            let tail = &rest[at..];
            if let Some(t) = tail.strip_prefix("{**}") {
                re.push_str("(?:[^/]+(?:/[^/]+)*)?");
                rest = t;
            } else if let Some(t) = tail.strip_prefix("{*}") {
                re.push_str("[^/]+");
                rest = t;
            } else {
                return PathPattern::Never;
            }
        }
        re.push_str(&regex::escape(rest));
        re.push('$');
        regex::Regex::new(&re)
            .map(PathPattern::Template)
            .unwrap_or(PathPattern::Never)
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => istio_match(p, path),
            PathPattern::Template(re) => re.is_match(path),
            PathPattern::Never => false,
        }
    }
}

#[derive(Debug)]
struct CCondition {
    key: Key,
    values: Vec<String>,
    not_values: Vec<String>,
    nets: Values<IpNet>,
}

#[derive(Debug)]
enum Key {
    Header(http::HeaderName),
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    /// `request.auth.claims[a][b]`: the path into the payload.
    AuthClaim(Vec<String>),
    ConnectionSni,
    /// `experimental.envoy.filters.*` and anything egret cannot evaluate: like an HTTP-only
    /// attribute on TCP (ALLOW cannot match, DENY matches) — never an accidental allow.
    Unsupported,
}

impl Key {
    fn parse(k: &str) -> Key {
        let bracketed = |prefix: &str| -> Option<Vec<String>> {
            let rest = k.strip_prefix(prefix)?;
            let mut out = Vec::new();
            let mut rest = rest;
            while let Some(r) = rest.strip_prefix('[') {
                let (inner, tail) = r.split_once(']')?;
                out.push(inner.to_string());
                rest = tail;
            }
            (rest.is_empty() && !out.is_empty()).then_some(out)
        };
        if let Some(name) = bracketed("request.headers") {
            return name
                .first()
                .and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .map(Key::Header)
                .unwrap_or(Key::Unsupported);
        }
        if let Some(path) = bracketed("request.auth.claims") {
            return Key::AuthClaim(path);
        }
        match k {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "source.serviceAccount" => Key::SourceServiceAccount,
            "source.trustDomain" => Key::SourceTrustDomain,
            "request.auth.principal" => Key::AuthPrincipal,
            "request.auth.audiences" => Key::AuthAudiences,
            "request.auth.presenter" => Key::AuthPresenter,
            "connection.sni" => Key::ConnectionSni,
            _ => Key::Unsupported,
        }
    }

    fn http_only(&self) -> bool {
        matches!(
            self,
            Key::Header(_)
                | Key::AuthPrincipal
                | Key::AuthAudiences
                | Key::AuthPresenter
                | Key::AuthClaim(_)
                | Key::Unsupported
        )
    }
}

impl CPolicy {
    fn compile(p: &AuthzPolicy) -> CPolicy {
        let ns = p.name.split('/').next().unwrap_or_default();
        let rules: Option<Vec<CRule>> = p.rules.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| CRule {
                    from: r.from.iter().map(|f| compile_source(f, ns)).collect(),
                    to: r.to.iter().map(compile_operation).collect(),
                    when: r.when.iter().map(compile_condition).collect(),
                })
                .collect()
        });
        let exact_hosts = rules.as_ref().and_then(|rules| {
            let mut hosts: Vec<Box<str>> = Vec::new();
            for r in rules {
                if r.to.is_empty() {
                    return None;
                }
                for op in &r.to {
                    if op.hosts.is.is_empty() || op.hosts.is.iter().any(|h| h.contains('*')) {
                        return None;
                    }
                    hosts.extend(op.hosts.is.iter().map(|h| Box::from(h.as_str())));
                }
            }
            (!hosts.is_empty()).then_some(hosts)
        });
        CPolicy {
            name: Arc::from(p.name.as_str()),
            provider: p.provider.as_deref().map(Arc::from),
            dry_run: p.dry_run,
            rules,
            exact_hosts,
        }
    }

    /// `deny`: evaluate as a DENY policy (HTTP-only attributes on connections match).
    fn matches(&self, a: &Attrs<'_>, deny: bool) -> bool {
        let Some(rules) = &self.rules else {
            return false;
        };
        rules.iter().any(|r| r.matches(a, deny))
    }
}

/// `ns`: the policy's namespace, which a bare `serviceAccounts` value (`sa`) is in (Istio).
fn compile_source(s: &Source, ns: &str) -> CSource {
    let qualify = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|sa| {
                if sa.contains('/') {
                    sa.clone()
                } else {
                    format!("{ns}/{sa}")
                }
            })
            .collect()
    };
    CSource {
        principals: Values::strings(&s.principals, &s.not_principals),
        request_principals: Values::strings(&s.request_principals, &s.not_request_principals),
        namespaces: Values::strings(&s.namespaces, &s.not_namespaces),
        service_accounts: Values::strings(
            &qualify(&s.service_accounts),
            &qualify(&s.not_service_accounts),
        ),
        trust_domains: Values::strings(&s.trust_domains, &s.not_trust_domains),
        ip_blocks: Values::nets(&s.ip_blocks, &s.not_ip_blocks),
        remote_ip_blocks: Values::nets(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
    }
}

fn compile_operation(o: &Operation) -> COperation {
    let lower = |v: &[String]| v.iter().map(|h| h.to_ascii_lowercase()).collect::<Vec<_>>();
    COperation {
        hosts: Values {
            is: lower(&o.hosts),
            not: lower(&o.not_hosts),
            broken: false,
        },
        ports: Values::parsed(&o.ports, &o.not_ports, |p| p.parse().ok()),
        methods: Values::strings(&o.methods, &o.not_methods),
        paths: Values {
            is: o.paths.iter().map(|p| PathPattern::compile(p)).collect(),
            not: o
                .not_paths
                .iter()
                .map(|p| PathPattern::compile(p))
                .collect(),
            broken: false,
        },
    }
}

fn compile_condition(c: &Condition) -> CCondition {
    let key = Key::parse(c.key.as_deref().unwrap_or(""));
    let nets = match key {
        Key::SourceIp | Key::RemoteIp | Key::DestinationIp => {
            Values::nets(&c.values, &c.not_values)
        }
        _ => Values::default(),
    };
    CCondition {
        key,
        values: c.values.clone(),
        not_values: c.not_values.clone(),
        nets,
    }
}

/// Result of checking one attribute that may not exist for this protocol.
fn http_field(a: &Attrs<'_>, deny: bool, present: bool, check: impl FnOnce() -> bool) -> bool {
    if !present {
        return true;
    }
    if a.protocol != Protocol::Http {
        return deny;
    }
    check()
}

impl CRule {
    fn matches(&self, a: &Attrs<'_>, deny: bool) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a, deny)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a, deny)))
            && self.when.iter().all(|c| c.matches(a, deny))
    }
}

impl CSource {
    fn matches(&self, a: &Attrs<'_>, deny: bool) -> bool {
        self.principals.check(a.principal, istio_match)
            && self.namespaces.check(a.source_namespace(), istio_match)
            && (!self.service_accounts.present() || {
                // `ns/sa`, compared without building the string.
                let sa = a.source_namespace().zip(a.source_service_account());
                let is = |p: &str| sa.is_some_and(|(ns, sa)| p.split_once('/') == Some((ns, sa)));
                (self.service_accounts.is.is_empty()
                    || self.service_accounts.is.iter().any(|p| is(p)))
                    && !self.service_accounts.not.iter().any(|p| is(p))
            })
            && self
                .trust_domains
                .check(a.source_trust_domain(), istio_match)
            && self.ip_blocks.check(a.source_ip)
            && self.remote_ip_blocks.check(a.remote_ip)
            && http_field(a, deny, self.request_principals.present(), || {
                self.request_principals
                    .check(a.auth.map(|x| x.principal.as_str()), istio_match)
            })
    }
}

impl COperation {
    fn matches(&self, a: &Attrs<'_>, deny: bool) -> bool {
        let port = a.destination_port;
        !self.ports.broken
            && (self.ports.is.is_empty() || self.ports.is.contains(&port))
            && !self.ports.not.contains(&port)
            && http_field(a, deny, self.hosts.present(), || {
                self.hosts.check(a.host, |p, v| {
                    istio_match(p, v) || strip_port(p).is_some_and(|p| istio_match(p, v))
                })
            })
            && http_field(a, deny, self.methods.present(), || {
                self.methods.check(a.method, istio_match)
            })
            && http_field(a, deny, self.paths.present(), || {
                let path = a.path;
                (self.paths.is.is_empty()
                    || path.is_some_and(|v| self.paths.is.iter().any(|p| p.matches(v))))
                    && !path.is_some_and(|v| self.paths.not.iter().any(|p| p.matches(v)))
            })
    }
}

/// `host:port` in a policy also matches the host: requests are matched without their port.
fn strip_port(p: &str) -> Option<&str> {
    let (h, port) = p.rsplit_once(':')?;
    (port == "*" || port.parse::<u16>().is_ok()).then_some(h)
}

impl CCondition {
    fn matches(&self, a: &Attrs<'_>, deny: bool) -> bool {
        if self.key.http_only() && a.protocol != Protocol::Http {
            return deny;
        }
        let strings = |v: Option<&str>| {
            (self.values.is_empty()
                || v.is_some_and(|v| self.values.iter().any(|p| istio_match(p, v))))
                && !v.is_some_and(|v| self.not_values.iter().any(|p| istio_match(p, v)))
        };
        // Several values for one key (a list claim, audiences): any may match; none may be
        // excluded.
        let lists = |vs: &[&str]| {
            (self.values.is_empty()
                || vs
                    .iter()
                    .any(|v| self.values.iter().any(|p| istio_match(p, v))))
                && !vs
                    .iter()
                    .any(|v| self.not_values.iter().any(|p| istio_match(p, v)))
        };
        match &self.key {
            Key::Header(name) => {
                let v = a
                    .headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.to_str().ok());
                strings(v)
            }
            Key::SourceIp => self.nets.check(a.source_ip),
            Key::RemoteIp => self.nets.check(a.remote_ip),
            Key::DestinationIp => self.nets.check(a.destination_ip),
            Key::DestinationPort => {
                let port = a.destination_port;
                let is = |v: &String| v.parse::<u16>().ok() == Some(port);
                (self.values.is_empty() || self.values.iter().any(is))
                    && !self.not_values.iter().any(is)
            }
            Key::SourceNamespace => strings(a.source_namespace()),
            Key::SourcePrincipal => strings(a.principal),
            Key::SourceServiceAccount => {
                let sa = a.source_namespace().zip(a.source_service_account());
                let is =
                    |p: &String| sa.is_some_and(|(ns, sa)| p.split_once('/') == Some((ns, sa)));
                (self.values.is_empty() || self.values.iter().any(is))
                    && !self.not_values.iter().any(is)
            }
            Key::SourceTrustDomain => strings(a.source_trust_domain()),
            Key::ConnectionSni => strings(a.sni),
            Key::AuthPrincipal => strings(a.auth.map(|x| x.principal.as_str())),
            Key::AuthPresenter => strings(a.auth.and_then(|x| x.presenter.as_deref())),
            Key::AuthAudiences => {
                let v: Vec<&str> = a
                    .auth
                    .map(|x| x.audiences.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                if v.is_empty() {
                    strings(None)
                } else {
                    lists(&v)
                }
            }
            Key::AuthClaim(path) => {
                let mut node = a.auth.map(|x| &x.claims);
                for seg in path {
                    node = node.and_then(|n| n.get(seg.as_str()));
                }
                match node {
                    Some(serde_json::Value::String(s)) => strings(Some(s)),
                    Some(serde_json::Value::Array(items)) => {
                        let v: Vec<&str> = items.iter().filter_map(|i| i.as_str()).collect();
                        lists(&v)
                    }
                    Some(serde_json::Value::Bool(b)) => {
                        strings(Some(if *b { "true" } else { "false" }))
                    }
                    Some(serde_json::Value::Number(n)) => strings(Some(&n.to_string())),
                    _ => strings(None),
                }
            }
            Key::Unsupported => deny,
        }
    }
}

#[cfg(test)]
mod tests;
