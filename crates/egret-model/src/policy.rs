//! Mesh settings, the effective outbound traffic policy, and the security policies that apply
//! to a proxy (`istio-egress-spec.md` §5, §6).

use egret_config::ConfigSet;
use egret_config::types::{
    AccessLogEncoding, AuthzAction, Duration, MeshConfig, OutboundMode as Mode,
};

use crate::identity::ProxyIdentity;
use crate::scope::Scope;
use crate::snapshot::{
    AuthzPolicy, AuthzRule, ExtensionProvider, ExtensionProviderKind, MeshSettings, OutboundMode,
    OutboundPolicy, RequestAuthn,
};

pub fn mesh_settings(mesh: &MeshConfig, root_ns: &str) -> MeshSettings {
    MeshSettings {
        trust_domain: mesh
            .trust_domain
            .clone()
            .unwrap_or_else(|| "cluster.local".to_string()),
        trust_domain_aliases: mesh.trust_domain_aliases.clone(),
        root_namespace: root_ns.to_string(),
        access_log_file: mesh.access_log_file.clone().filter(|s| !s.is_empty()),
        access_log_encoding: mesh.access_log_encoding.unwrap_or(AccessLogEncoding::Text),
        access_log_format: mesh.access_log_format.clone().filter(|s| !s.is_empty()),
        connect_timeout: mesh.connect_timeout.unwrap_or(Duration::from_secs(10)),
        dns_refresh_rate: mesh.dns_refresh_rate.unwrap_or(Duration::from_secs(60)),
        extension_providers: mesh
            .extension_providers
            .iter()
            .filter_map(|p| {
                let name = p.name.clone()?;
                let port = |p: Option<u32>| p.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                let kind = if let Some(h) = &p.envoy_ext_authz_http {
                    ExtensionProviderKind::ExtAuthzHttp {
                        service: h.service.clone().unwrap_or_default(),
                        port: port(h.port),
                        timeout: h.timeout,
                        path_prefix: h.path_prefix.clone(),
                        fail_open: h.fail_open.unwrap_or(false),
                        status_on_error: h.status_on_error.clone(),
                        include_request_headers_in_check: h
                            .include_request_headers_in_check
                            .iter()
                            .chain(&h.include_headers_in_check)
                            .cloned()
                            .collect(),
                        headers_to_upstream_on_allow: h.headers_to_upstream_on_allow.clone(),
                        headers_to_downstream_on_deny: h.headers_to_downstream_on_deny.clone(),
                    }
                } else if let Some(g) = &p.envoy_ext_authz_grpc {
                    ExtensionProviderKind::ExtAuthzGrpc {
                        service: g.service.clone().unwrap_or_default(),
                        port: port(g.port),
                        timeout: g.timeout,
                        fail_open: g.fail_open.unwrap_or(false),
                    }
                } else if let Some(o) = &p.opentelemetry {
                    ExtensionProviderKind::Opentelemetry {
                        service: o.service.clone().unwrap_or_default(),
                        port: port(o.port),
                        max_tag_length: o.max_tag_length,
                        http: o.http.as_ref().map(otlp_http),
                    }
                } else if let Some(f) = &p.envoy_file_access_log {
                    ExtensionProviderKind::FileAccessLog {
                        path: f.path.clone(),
                    }
                } else if p.prometheus.is_some() {
                    ExtensionProviderKind::Prometheus
                } else {
                    ExtensionProviderKind::Unsupported
                };
                Some(ExtensionProvider { name, kind })
            })
            .collect(),
        enable_tracing: mesh.enable_tracing.unwrap_or(true),
        tracing: tracing_settings(mesh),
        access_log_default_provider: mesh
            .default_providers
            .as_ref()
            .is_some_and(|d| d.access_logging.iter().any(|p| p == "envoy")),
    }
}

/// `opentelemetry.http: {path, timeout, headers: [{name, value}]}`.
fn otlp_http(v: &serde_json::Value) -> crate::snapshot::OtlpHttp {
    let path = v
        .get("path")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .map_or_else(
            || "/v1/traces".to_string(),
            |p| {
                if p.starts_with('/') {
                    p.to_string()
                } else {
                    format!("/{p}")
                }
            },
        );
    let timeout = v
        .get("timeout")
        .and_then(|t| t.as_str())
        .and_then(|t| Duration::parse(t).ok());
    let headers = v
        .get("headers")
        .and_then(|h| h.as_array())
        .map(|hs| {
            hs.iter()
                .filter_map(|h| {
                    Some((
                        h.get("name")?.as_str()?.to_string(),
                        h.get("value")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    crate::snapshot::OtlpHttp {
        path,
        timeout,
        headers,
    }
}

/// Tracing is on when `enableTracing` (default true) and `defaultProviders.tracing` names an
/// `opentelemetry` extension provider. Sampling: `defaultConfig.tracing.sampling`, a
/// percentage (Istio's default 1%).
fn tracing_settings(mesh: &MeshConfig) -> Option<crate::snapshot::TracingSettings> {
    if mesh.enable_tracing == Some(false) {
        return None;
    }
    let provider = mesh
        .default_providers
        .as_ref()?
        .tracing
        .iter()
        .find(|name| {
            mesh.extension_providers
                .iter()
                .any(|p| p.name.as_deref() == Some(name.as_str()) && p.opentelemetry.is_some())
        })?
        .clone();
    let sampling = mesh
        .default_config
        .as_ref()
        .and_then(|c| c.get("tracing"))
        .and_then(|t| t.get("sampling"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(1.0)
        .clamp(0.0, 100.0);
    Some(crate::snapshot::TracingSettings { provider, sampling })
}

/// The outbound traffic policy of a sidecar: its Sidecar resource's `outboundTrafficPolicy`
/// when present (present without `mode` = REGISTRY_ONLY, the enum zero value), else the
/// mesh's, else Istio's default ALLOW_ANY. (`istio-egress-spec.md` §5, §10.1)
pub fn outbound_policy(scope: &Scope<'_>) -> OutboundPolicy {
    if let Some(sc) = scope.sidecar
        && let Some(otp) = &sc.spec.outbound_traffic_policy
    {
        let mode = match otp.mode.unwrap_or(Mode::RegistryOnly) {
            Mode::RegistryOnly => OutboundMode::RegistryOnly,
            // ALLOW_ANY_DYNAMIC_DNS is rejected on Sidecars by validation.
            Mode::AllowAny | Mode::AllowAnyDynamicDns => OutboundMode::AllowAny,
        };
        return OutboundPolicy {
            mode,
            source: format!("Sidecar {}", sc.key()),
        };
    }
    match scope
        .set
        .mesh
        .outbound_traffic_policy
        .as_ref()
        .and_then(|p| p.mode)
    {
        // Mesh config is merged over Istio's defaults, so `outboundTrafficPolicy: {}` keeps
        // ALLOW_ANY there (validation warns about it).
        Some(Mode::RegistryOnly) => OutboundPolicy {
            mode: OutboundMode::RegistryOnly,
            source: "MeshConfig".into(),
        },
        Some(_) => OutboundPolicy {
            mode: OutboundMode::AllowAny,
            source: "MeshConfig".into(),
        },
        None => OutboundPolicy {
            mode: OutboundMode::AllowAny,
            source: "default (ALLOW_ANY)".into(),
        },
    }
}

/// Does a policy in `ns` with this selector apply to the proxy? Policies in the root namespace
/// apply mesh-wide; others to their own namespace. An absent selector selects every workload.
/// (RateLimitPolicy selects the same way.)
pub(crate) fn applies(
    ns: &str,
    selector: Option<&std::collections::BTreeMap<String, String>>,
    proxy: &ProxyIdentity,
    root_ns: &str,
) -> bool {
    (ns == root_ns || ns == proxy.namespace) && selector.is_none_or(|s| proxy.selected_by(s))
}

/// AuthorizationPolicies for this proxy, in Istio's evaluation order: CUSTOM, DENY, ALLOW,
/// then AUDIT (which never changes the decision).
pub fn authorization(set: &ConfigSet, proxy: &ProxyIdentity, root_ns: &str) -> Vec<AuthzPolicy> {
    let mut out: Vec<AuthzPolicy> = set
        .authorization_policies
        .iter()
        .filter(|p| {
            applies(
                &p.meta.namespace,
                p.spec.selector.as_ref().map(|s| &s.match_labels),
                proxy,
                root_ns,
            )
        })
        .map(|p| AuthzPolicy {
            name: p.key(),
            action: p.spec.action.unwrap_or(AuthzAction::Allow),
            provider: p.spec.provider.as_ref().and_then(|x| x.name.clone()),
            dry_run: p
                .meta
                .annotations
                .get("istio.io/dry-run")
                .is_some_and(|v| v == "true"),
            rules: p.spec.rules.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|r| AuthzRule {
                        from: r.from.iter().filter_map(|f| f.source.clone()).collect(),
                        to: r.to.iter().filter_map(|t| t.operation.clone()).collect(),
                        when: r.when.clone(),
                    })
                    .collect()
            }),
        })
        .collect();
    let rank = |a: AuthzAction| match a {
        AuthzAction::Custom => 0,
        AuthzAction::Deny => 1,
        AuthzAction::Allow => 2,
        AuthzAction::Audit => 3,
    };
    out.sort_by(|a, b| (rank(a.action), &a.name).cmp(&(rank(b.action), &b.name)));
    out
}

/// RequestAuthentications for this proxy — gateways only. In Istio a RequestAuthentication
/// checks tokens on requests *into* the selected workload; a sidecar's traffic in egret is what
/// the workload sends, whose `Authorization` belongs to the external API it calls (an API key,
/// a partner's token): checking it against the mesh's issuers would turn every such call into
/// a 401. The egress gateway is where RequestAuthentication applies.
pub fn request_authentication(
    set: &ConfigSet,
    proxy: &ProxyIdentity,
    root_ns: &str,
) -> Vec<RequestAuthn> {
    if proxy.role != crate::identity::Role::Gateway {
        return Vec::new();
    }
    let mut out: Vec<RequestAuthn> = set
        .request_authentications
        .iter()
        .filter(|p| {
            applies(
                &p.meta.namespace,
                p.spec.selector.as_ref().map(|s| &s.match_labels),
                proxy,
                root_ns,
            )
        })
        .map(|p| RequestAuthn {
            name: p.key(),
            jwt_rules: p.spec.jwt_rules.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
