//! AuthorizationPolicy and RequestAuthentication.

use egret_config::Object;
use egret_config::types::*;
use serde_json::Value;

use super::{
    DRY_RUN, FirstSeen, Report, check_opt_duration, is_ip_or_cidr, is_set, match_labels_selector,
};

// ===== AuthorizationPolicy =====

/// Istio `ValidateAuthorizationPolicy`, plus the `istio.io/dry-run` annotation.
pub(super) fn authorization_policy(r: &mut Report<'_>, o: &Object<AuthorizationPolicy>) {
    let ap = &o.spec;
    let action = ap.action.unwrap_or(AuthzAction::Allow);

    if let Some(v) = o.meta.annotations.get(DRY_RUN) {
        let field = format!("metadata.annotations.{DRY_RUN}");
        if !matches!(action, AuthzAction::Allow | AuthzAction::Deny) {
            r.error(
                &field,
                format!("{DRY_RUN} only supports action ALLOW or DENY, not {action}"),
            );
        } else if parse_go_bool(v).is_none() {
            r.error(&field, format!("value {v:?} must be \"true\" or \"false\""));
        }
    }

    // Istio `validateOneOfSelectorType`.
    let targets = usize::from(ap.selector.is_some())
        + usize::from(ap.target_ref.is_some())
        + usize::from(!ap.target_refs.is_empty());
    if targets > 1 {
        r.error("spec", "set only one of selector, targetRef or targetRefs");
    }
    if let Some(sel) = &ap.selector {
        match_labels_selector(r, "spec.selector", sel);
    }

    let rules = ap.rules.as_deref().unwrap_or(&[]);
    match action {
        AuthzAction::Custom => {
            if rules.is_empty() {
                r.error(
                    "spec.rules",
                    "a CUSTOM policy without rules never matches; add `rules: [{}]` to match every request",
                );
            } else if !ap.provider.as_ref().is_some_and(|p| is_set(&p.name)) {
                r.error("spec.provider.name", "action CUSTOM requires provider.name");
            }
        }
        AuthzAction::Deny if rules.is_empty() => r.error(
            "spec.rules",
            "a DENY policy without rules never matches; add `rules: [{}]` to match every request",
        ),
        // egret: AUDIT is not checked by Istio, but without rules it does nothing either.
        AuthzAction::Audit if rules.is_empty() => r.warning(
            "spec.rules",
            "an AUDIT policy without rules never matches; add `rules: [{}]` to match every request",
        ),
        // ALLOW without rules (`spec: {}`) is meaningful: it denies everything.
        _ => {}
    }
    if ap.provider.is_some() && action != AuthzAction::Custom {
        r.error(
            "spec.provider",
            format!("provider is only allowed with action CUSTOM, not {action}"),
        );
    }

    for (i, rule) in rules.iter().enumerate() {
        authz_rule(r, &format!("spec.rules[{i}]"), rule, action);
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for the dry-run annotation.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn authz_rule(r: &mut Report<'_>, base: &str, rule: &Rule, action: AuthzAction) {
    let custom = action == AuthzAction::Custom;
    let mut from_exists = false;
    let mut to_exists = false;
    let mut tcp_in_from = false;
    let mut tcp_in_to = false;

    for (j, f) in rule.from.iter().enumerate() {
        let fbase = format!("{base}.from[{j}]");
        let Some(src) = &f.source else {
            r.error(&format!("{fbase}.source"), "source is required");
            continue;
        };
        from_exists = true;
        source(r, &format!("{fbase}.source"), src, custom);
        tcp_in_from |= !(src.principals.is_empty()
            && src.not_principals.is_empty()
            && src.ip_blocks.is_empty()
            && src.not_ip_blocks.is_empty()
            && src.namespaces.is_empty()
            && src.not_namespaces.is_empty()
            && src.remote_ip_blocks.is_empty()
            && src.not_remote_ip_blocks.is_empty()
            && src.service_accounts.is_empty()
            && src.not_service_accounts.is_empty());
    }
    for (j, t) in rule.to.iter().enumerate() {
        let tbase = format!("{base}.to[{j}]");
        let Some(op) = &t.operation else {
            r.error(&format!("{tbase}.operation"), "operation is required");
            continue;
        };
        to_exists = true;
        operation(r, &format!("{tbase}.operation"), op);
        tcp_in_to |= !(op.ports.is_empty() && op.not_ports.is_empty());
    }
    for (j, c) in rule.when.iter().enumerate() {
        condition(r, &format!("{base}.when[{j}]"), c, custom);
    }

    // Istio warns: a DENY rule with only HTTP attributes also matches all TCP traffic.
    if action == AuthzAction::Deny
        && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
    {
        r.warning(
            base,
            "this DENY rule uses only HTTP attributes: it denies all TCP traffic in its scope; add ports to limit it",
        );
    }
}

fn source(r: &mut Report<'_>, base: &str, s: &Source, custom: bool) {
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        r.error(base, "source must set at least one field");
    }
    for (name, list) in lists {
        check_no_empty_values(r, &format!("{base}.{name}"), list);
        let ip_based = name.ends_with("pBlocks"); // ipBlocks, remoteIpBlocks and their not* forms
        if custom && !list.is_empty() && !ip_based {
            // Istio: CUSTOM only supports IP-based sources.
            r.error(
                &format!("{base}.{name}"),
                format!("{name} is not supported with action CUSTOM"),
            );
        }
    }
    if (!s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty())
        && (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
    {
        r.error(
            base,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
    for (name, list) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty() && !is_ip_or_cidr(v) {
                r.error(
                    &format!("{base}.{name}[{k}]"),
                    format!("{v:?} is not an IP address or CIDR block"),
                );
            }
        }
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (k, v) in list.iter().enumerate() {
            if let Err(e) = service_account_value(v) {
                r.error(&format!("{base}.{name}[{k}]"), e);
            }
        }
    }
}

/// Istio `security.CheckServiceAccount` (one value): `sa` or `namespace/sa`, no wildcards.
fn service_account_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(()); // reported as an empty value
    }
    if v.contains('*') {
        return Err(format!("{v:?}: wildcards are not allowed"));
    }
    if v.len() > 320 {
        return Err(format!("{v:?} is longer than 320 characters"));
    }
    match v.split_once('/') {
        Some((ns, sa)) if ns.is_empty() || sa.is_empty() || sa.contains('/') => Err(format!(
            "{v:?}: expected \"serviceAccount\" or \"namespace/serviceAccount\""
        )),
        _ => Ok(()),
    }
}

/// Istio `security.CheckEmptyValues`.
fn check_no_empty_values(r: &mut Report<'_>, base: &str, values: &[String]) {
    if let Some(k) = values.iter().position(String::is_empty) {
        r.error(&format!("{base}[{k}]"), "empty value not allowed");
    }
}

fn operation(r: &mut Report<'_>, base: &str, op: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        r.error(base, "operation must set at least one field");
    }
    for (name, list) in lists {
        check_no_empty_values(r, &format!("{base}.{name}"), list);
    }
    for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (k, p) in list.iter().enumerate() {
            if !p.is_empty() && !is_valid_port_string(p) {
                r.error(
                    &format!("{base}.{name}[{k}]"),
                    format!("{p:?} is not a port number (1..65535)"),
                );
            }
        }
    }
    for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (k, p) in list.iter().enumerate() {
            if let Err(e) = path_template(p) {
                r.error(&format!("{base}.{name}[{k}]"), e);
            }
        }
    }
}

fn is_valid_port_string(p: &str) -> bool {
    p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

/// Istio `security.CheckValidPathTemplate`: `{*}` matches one segment, `{**}` any number and
/// must be the last operator; braces are not allowed otherwise; with templates, the literal
/// segments must be valid path characters.
fn path_template(path: &str) -> Result<(), String> {
    let has_template = path.contains("{*}") || path.contains("{**}");
    let mut seen_any = false;
    for seg in path.trim_matches('/').split('/') {
        match seg {
            "{*}" | "{**}" if seen_any => {
                return Err(format!(
                    "invalid path template {path:?}: {{**}} must be the last operator"
                ));
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if seg.contains(['{', '}']) {
            return Err(format!(
                "invalid path template {path:?}: '{{' and '}}' are only allowed as whole {{*}} or {{**}} segments"
            ));
        }
        const PCHARS: &str = "-._~%!$&'()+,;:@=";
        if has_template
            && (seg.is_empty()
                || !seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || PCHARS.contains(c)))
        {
            return Err(format!(
                "invalid path template {path:?}: segment {seg:?} has characters not allowed in a path"
            ));
        }
    }
    Ok(())
}

/// Istio: `when` conditions (`security.ValidateAttribute`).
fn condition(r: &mut Report<'_>, base: &str, c: &Condition, custom: bool) {
    let key = match c.key.as_deref() {
        None | Some("") => {
            r.error(&format!("{base}.key"), "key is required");
            return;
        }
        Some(k) => k,
    };
    let key_field = format!("{base}.key");
    if c.values.is_empty() && c.not_values.is_empty() {
        r.error(
            base,
            format!("condition on {key:?} needs values or notValues"),
        );
    }
    let map_key = |k: &str| -> bool {
        // `name[key]` with a non-empty key.
        k.ends_with(']')
            && k.find('[')
                .is_some_and(|open| open > 0 && open < k.len() - 2)
    };
    enum Kind {
        Any,
        Ip,
        Port,
        ServiceAccount,
        Wildcard,
    }
    let kind = match key {
        k if k.starts_with("request.headers") => {
            if !map_key(k) {
                r.error(
                    &key_field,
                    format!("{k:?} should have the form request.headers[<name>]"),
                );
            }
            Kind::Any
        }
        k if k.starts_with("request.auth.claims") => {
            if !map_key(k) {
                r.error(
                    &key_field,
                    format!("{k:?} should have the form request.auth.claims[<claim>]"),
                );
            }
            Kind::Any
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            if !map_key(k) {
                r.error(
                    &key_field,
                    format!(
                        "{k:?} should have the form experimental.envoy.filters.<filter>[<key>]"
                    ),
                );
            }
            Kind::Any
        }
        "source.ip" | "remote.ip" | "destination.ip" => Kind::Ip,
        "destination.port" => Kind::Port,
        "source.serviceAccount" => Kind::ServiceAccount,
        "source.trustDomain" => Kind::Wildcard,
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Kind::Any,
        k => {
            r.error(&key_field, format!("unknown condition key {k:?}"));
            return;
        }
    };
    if custom
        && (matches!(
            key,
            "source.namespace"
                | "source.serviceAccount"
                | "source.trustDomain"
                | "source.principal"
        ) || key.starts_with("request.auth."))
    {
        r.error(
            &key_field,
            format!("{key:?} is not supported with action CUSTOM"),
        );
    }
    for (what, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        check_no_empty_values(r, &format!("{base}.{what}"), values);
        for (k, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            let field = format!("{base}.{what}[{k}]");
            match kind {
                Kind::Ip if !is_ip_or_cidr(v) => {
                    r.error(&field, format!("{v:?} is not an IP address or CIDR block"))
                }
                Kind::Port if !v.parse::<u32>().is_ok_and(|n| n <= 65535) => {
                    r.error(&field, format!("{v:?} is not a port number"))
                }
                Kind::ServiceAccount => {
                    if let Err(e) = service_account_value(v) {
                        r.error(&field, e);
                    }
                }
                Kind::Wildcard => {
                    let stars = v.matches('*').count();
                    if stars > 1
                        || (stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*'))
                    {
                        r.error(
                            &field,
                            format!("{v:?}: a wildcard is only allowed once, at the start or end"),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

// ===== RequestAuthentication =====

/// Istio `ValidateRequestAuthentication` / `validateJwtRule`.
pub(super) fn request_authentication(r: &mut Report<'_>, o: &Object<RequestAuthentication>) {
    let ra = &o.spec;
    let targets = usize::from(ra.selector.is_some())
        + usize::from(ra.target_ref.is_some())
        + usize::from(!ra.target_refs.is_empty());
    if targets > 1 {
        r.error("spec", "set only one of selector, targetRef or targetRefs");
    }
    if let Some(sel) = &ra.selector {
        match_labels_selector(r, "spec.selector", sel);
    }
    let mut issuers: FirstSeen<&str> = FirstSeen::default();
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let base = format!("spec.jwtRules[{i}]");
        match rule.issuer.as_deref().filter(|s| !s.is_empty()) {
            // Istio accepts a rule without issuer when jwksUri is set.
            None if !is_set(&rule.jwks_uri) => {
                r.error(&format!("{base}.issuer"), "issuer is required (or jwksUri)")
            }
            None => {}
            Some(iss) => {
                if let Some(j) = issuers.dup(iss, i) {
                    r.warning(
                        &format!("{base}.issuer"),
                        format!("issuer {iss:?} is also used by spec.jwtRules[{j}]"),
                    );
                }
            }
        }
        for (k, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                r.error(&format!("{base}.audiences[{k}]"), "empty audience");
            }
        }
        if let Some(uri) = rule.jwks_uri.as_deref().filter(|s| !s.is_empty()) {
            if !(uri.starts_with("http://") || uri.starts_with("https://"))
                || uri.split("://").nth(1).is_none_or(|rest| rest.is_empty())
            {
                r.error(
                    &format!("{base}.jwksUri"),
                    format!("{uri:?} is not an http:// or https:// URL"),
                );
            }
            if is_set(&rule.jwks) {
                r.warning(
                    &format!("{base}.jwks"),
                    "set only one of jwks or jwksUri: which one Istio uses depends on its JWKS fetch mode",
                );
            }
        }
        if let Some(jwks) = rule.jwks.as_deref().filter(|s| !s.is_empty()) {
            match serde_json::from_str::<Value>(jwks) {
                Ok(v) if v.get("keys").is_some_and(Value::is_array) => {}
                Ok(_) => r.error(
                    &format!("{base}.jwks"),
                    "jwks must be a JSON Web Key Set ({\"keys\": [...]})",
                ),
                Err(e) => r.error(
                    &format!("{base}.jwks"),
                    format!("jwks is not valid JSON: {e}"),
                ),
            }
        }
        for (k, h) in rule.from_headers.iter().enumerate() {
            if !is_set(&h.name) {
                r.error(
                    &format!("{base}.fromHeaders[{k}].name"),
                    "header name is required",
                );
            }
        }
        check_no_empty_values(r, &format!("{base}.fromParams"), &rule.from_params);
        check_no_empty_values(r, &format!("{base}.fromCookies"), &rule.from_cookies);
        for (k, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cbase = format!("{base}.outputClaimToHeaders[{k}]");
            match (c.header.as_deref(), c.claim.as_deref()) {
                (Some(h), Some(cl)) if !h.is_empty() && !cl.is_empty() => {
                    if !h
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                    {
                        r.error(
                            &format!("{cbase}.header"),
                            format!("{h:?} is not a valid header name"),
                        );
                    }
                }
                _ => r.error(&cbase, "header and claim are both required"),
            }
        }
        check_opt_duration(r, &format!("{base}.timeout"), rule.timeout);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

    #[test]
    fn authorization_policy_rules() {
        let d = run(r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: a
  namespace: foo
  annotations:
    istio.io/dry-run: "yes"
spec:
  action: DENY
  rules:
  - from:
    - source:
        serviceAccounts: [foo/sa]
        principals: [cluster.local/ns/foo/sa/x]
        ipBlocks: [10.0.0.0/40]
    to:
    - operation:
        ports: ["80", "http"]
        paths: ["/a/{**}/{*}", "/b/{x}"]
    when:
    - key: request.headers[x-a]
      values: [a]
    - key: source.unknown
      values: [x]
    - key: destination.ip
      values: [nope]
    - key: source.ip
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: c
spec:
  action: CUSTOM
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
spec:
  action: ALLOW
  provider: {name: x}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-none
spec:
  action: DENY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
spec: {}
"#);
        let p = "AuthorizationPolicy foo/a";
        assert_all(
            &d,
            &[
                &format!(
                    r#"test.yaml:7: error: {p}: metadata.annotations.istio.io/dry-run: value "yes" must be "true" or "false""#
                ),
                &format!(
                    "test.yaml:12: error: {p}: spec.rules[0].from[0].source: serviceAccounts cannot be combined with principals or namespaces"
                ),
                &format!(
                    r#"test.yaml:15: error: {p}: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/40" is not an IP address or CIDR block"#
                ),
                &format!(
                    r#"test.yaml:18: error: {p}: spec.rules[0].to[0].operation.ports[1]: "http" is not a port number (1..65535)"#
                ),
                &format!(
                    r#"test.yaml:19: error: {p}: spec.rules[0].to[0].operation.paths[0]: invalid path template "/a/{{**}}/{{*}}": {{**}} must be the last operator"#
                ),
                &format!(
                    r#"test.yaml:19: error: {p}: spec.rules[0].to[0].operation.paths[1]: invalid path template "/b/{{x}}": '{{' and '}}' are only allowed as whole {{*}} or {{**}} segments"#
                ),
                &format!(
                    r#"test.yaml:23: error: {p}: spec.rules[0].when[1].key: unknown condition key "source.unknown""#
                ),
                &format!(
                    r#"test.yaml:26: error: {p}: spec.rules[0].when[2].values[0]: "nope" is not an IP address or CIDR block"#
                ),
                &format!(
                    r#"test.yaml:27: error: {p}: spec.rules[0].when[3]: condition on "source.ip" needs values or notValues"#
                ),
                "test.yaml:33: error: AuthorizationPolicy default/c: spec.provider.name: action CUSTOM requires provider.name",
                "test.yaml:43: error: AuthorizationPolicy default/p: spec.provider: provider is only allowed with action CUSTOM, not ALLOW",
                "test.yaml:49: error: AuthorizationPolicy default/deny-none: spec.rules: a DENY policy without rules never matches; add `rules: [{}]` to match every request",
            ],
        );
        // `spec: {}` (ALLOW, no rules) means "deny everything": meaningful, not an error.
        assert!(!d.iter().any(|l| l.contains("allow-nothing")), "{d:#?}");
        assert_eq!(d.len(), 12, "{d:#?}");
    }

    #[test]
    fn request_authentication_rules() {
        let d = run(r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: r
spec:
  jwtRules:
  - issuer: a
    jwksUri: ftp://x
    jwks: '{"keys": []}'
  - jwks: 'nope'
    fromHeaders: [{prefix: "Bearer "}]
  - issuer: a
"#);
        let p = "RequestAuthentication default/r: spec.jwtRules";
        assert_all(
            &d,
            &[
                &format!(
                    r#"test.yaml:8: error: {p}[0].jwksUri: "ftp://x" is not an http:// or https:// URL"#
                ),
                &format!(
                    "test.yaml:9: warning: {p}[0].jwks: set only one of jwks or jwksUri: which one Istio uses depends on its JWKS fetch mode"
                ),
                &format!("test.yaml:10: error: {p}[1].issuer: issuer is required (or jwksUri)"),
                &format!(
                    "test.yaml:10: error: {p}[1].jwks: jwks is not valid JSON: expected ident at line 1 column 2"
                ),
                &format!(
                    "test.yaml:11: error: {p}[1].fromHeaders[0].name: header name is required"
                ),
                &format!(
                    r#"test.yaml:12: warning: {p}[2].issuer: issuer "a" is also used by spec.jwtRules[0]"#
                ),
            ],
        );
        assert_eq!(d.len(), 6, "{d:#?}");
    }
}
