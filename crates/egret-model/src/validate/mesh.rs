//! MeshConfig: the fields egret reads.

use egret_config::types::*;
use egret_config::{ConfigSet, Diagnostic, Diagnostics, ObjectRef, Severity};
use serde_json::Value;

use super::destination_rule::locality_lb;
use super::virtual_service::retries;
use super::{FirstSeen, Report, check_opt_duration, is_dns1123_label, is_fqdn, is_ip};

// ===== MeshConfig =====

/// Istio `ValidateMeshConfig` for the fields egret reads, plus egret's notes on
/// `outboundTrafficPolicy`. Field paths are relative to the mesh config.
pub(super) fn mesh_config(set: &ConfigSet, out: &mut Diagnostics) {
    let Some(origin) = &set.mesh_origin else {
        return;
    };
    let object = ObjectRef {
        kind: "MeshConfig".into(),
        namespace: String::new(),
        name: "mesh".into(),
    };
    let make = |severity: Severity, field: &str, message: String| Diagnostic {
        severity,
        file: origin.file.to_string(),
        line: origin.line_of(field),
        object: Some(object.clone()),
        field: field.to_string(),
        message,
    };
    let mut r = Report { make: &make, out };
    let r = &mut r;
    let mc = &set.mesh;

    if let Some(otp) = &mc.outbound_traffic_policy {
        match otp.mode {
            None => r.warning(
                "outboundTrafficPolicy",
                "outboundTrafficPolicy without mode: egret keeps the mesh default ALLOW_ANY (Istio merges mesh config over its defaults); write the mode explicitly",
            ),
            Some(OutboundMode::AllowAnyDynamicDns) => r.warning(
                "outboundTrafficPolicy.mode",
                "ALLOW_ANY_DYNAMIC_DNS is not supported by egret; treated as ALLOW_ANY",
            ),
            Some(_) => {}
        }
    }
    // Istio `validateTrustDomainConfig`.
    if let Some(td) = &mc.trust_domain
        && let Err(e) = trust_domain(td)
    {
        r.error("trustDomain", e);
    }
    for (i, td) in mc.trust_domain_aliases.iter().enumerate() {
        if let Err(e) = trust_domain(td) {
            r.error(&format!("trustDomainAliases[{i}]"), e);
        }
    }
    check_opt_duration(r, "connectTimeout", mc.connect_timeout);
    if let Some(l) = &mc.locality_lb_setting {
        locality_lb(r, "localityLbSetting", l, true);
    }
    if let Some(rt) = &mc.default_http_retry_policy {
        retries(r, "defaultHttpRetryPolicy", rt);
    }
    extension_providers(r, &mc.extension_providers);
}

/// Istio `ValidateTrustDomain`: DNS-1123 labels separated by dots (a trailing dot allowed).
fn trust_domain(td: &str) -> Result<(), String> {
    let body = td.strip_suffix('.').unwrap_or(td);
    if body.is_empty() || !body.split('.').all(is_dns1123_label) {
        return Err(format!("trust domain {td:?} is not a valid DNS name"));
    }
    Ok(())
}

/// A provider block's `service` and `port`.
type ServiceAndPort<'a> = (Option<&'a str>, Option<u32>);

/// Istio `validateExtensionProvider`.
fn extension_providers(r: &mut Report<'_>, providers: &[ExtensionProvider]) {
    let mut names: FirstSeen<&str> = FirstSeen::default();
    for (i, p) in providers.iter().enumerate() {
        let base = format!("extensionProviders[{i}]");
        match p.name.as_deref().filter(|s| !s.is_empty()) {
            None => r.error(
                &format!("{base}.name"),
                "extension provider name is required",
            ),
            Some(name) => {
                if let Some(j) = names.dup(name, i) {
                    r.error(
                        &format!("{base}.name"),
                        format!("duplicate extension provider name {name:?} (also extensionProviders[{j}])"),
                    );
                }
            }
        }
        // The provider is a proto oneof; the block kinds with a service and port get those
        // checked.
        let typed: [(&str, Option<ServiceAndPort<'_>>); 3] = [
            (
                "envoyExtAuthzHttp",
                p.envoy_ext_authz_http
                    .as_ref()
                    .map(|h| (h.service.as_deref(), h.port)),
            ),
            (
                "envoyExtAuthzGrpc",
                p.envoy_ext_authz_grpc
                    .as_ref()
                    .map(|g| (g.service.as_deref(), g.port)),
            ),
            (
                "opentelemetry",
                p.opentelemetry
                    .as_ref()
                    .map(|o| (o.service.as_deref(), o.port)),
            ),
        ];
        let untyped: [(&str, &Option<Value>, bool); 10] = [
            ("prometheus", &p.prometheus, false),
            ("stackdriver", &p.stackdriver, false),
            ("zipkin", &p.zipkin, true),
            ("datadog", &p.datadog, true),
            ("skywalking", &p.skywalking, true),
            ("lightstep", &p.lightstep, true),
            ("envoyOtelAls", &p.envoy_otel_als, true),
            ("envoyHttpAls", &p.envoy_http_als, true),
            ("envoyTcpAls", &p.envoy_tcp_als, true),
            ("sds", &p.sds, false),
        ];
        let count = typed.iter().filter(|(_, v)| v.is_some()).count()
            + untyped.iter().filter(|(_, v, _)| v.is_some()).count()
            + usize::from(p.envoy_file_access_log.is_some());
        if count != 1 {
            r.error(
                &base,
                format!("an extension provider needs exactly one provider block (envoyExtAuthzHttp, envoyExtAuthzGrpc, opentelemetry, ...), found {count}"),
            );
        }
        for (kind, sp) in typed {
            if let Some((service, port)) = sp {
                provider_service_port(r, &format!("{base}.{kind}"), service, port.map(u64::from));
            }
        }
        for (kind, v, has_service) in untyped {
            if let (Some(v), true) = (v, has_service) {
                let service = v.get("service").and_then(Value::as_str);
                let port = v.get("port").and_then(Value::as_u64);
                provider_service_port(r, &format!("{base}.{kind}"), service, port);
            }
        }
        if let Some(h) = &p.envoy_ext_authz_http {
            let hbase = format!("{base}.envoyExtAuthzHttp");
            if let Some(pp) = h.path_prefix.as_deref().filter(|s| !s.is_empty())
                && !pp.starts_with('/')
            {
                r.error(
                    &format!("{hbase}.pathPrefix"),
                    format!("pathPrefix {pp:?} must begin with '/'"),
                );
            }
            status_on_error(r, &format!("{hbase}.statusOnError"), &h.status_on_error);
        }
        if let Some(g) = &p.envoy_ext_authz_grpc {
            status_on_error(
                r,
                &format!("{base}.envoyExtAuthzGrpc.statusOnError"),
                &g.status_on_error,
            );
        }
    }
}

/// Istio `validateExtensionProviderService` and the port check.
fn provider_service_port(r: &mut Report<'_>, base: &str, service: Option<&str>, port: Option<u64>) {
    match service.filter(|s| !s.is_empty()) {
        None => r.error(&format!("{base}.service"), "service is required"),
        Some(s) => {
            let valid = match s.split_once('/') {
                None => is_fqdn(s) || is_ip(s),
                Some((ns, h)) => (ns == "*" || ns == "." || is_dns1123_label(ns)) && is_fqdn(h),
            };
            if !valid {
                r.error(
                    &format!("{base}.service"),
                    format!("service {s:?} must be a host name, an IP address or namespace/host"),
                );
            }
        }
    }
    match port {
        None | Some(0) => r.error(&format!("{base}.port"), "port is required"),
        Some(p) if p > 65535 => r.error(
            &format!("{base}.port"),
            format!("port number {p} must be in the range 1..65535"),
        ),
        Some(_) => {}
    }
}

/// Istio `validateExtensionProviderEnvoyExtAuthzStatusOnError`: an HTTP status code.
fn status_on_error(r: &mut Report<'_>, field: &str, s: &Option<String>) {
    if let Some(s) = s.as_deref().filter(|s| !s.is_empty())
        && !s.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c))
    {
        r.error(
            field,
            format!("statusOnError {s:?} is not an HTTP status code"),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

    #[test]
    fn mesh_config_rules() {
        let d = run(r#"spec:
  meshConfig:
    outboundTrafficPolicy: {}
    trustDomain: Bad_Domain
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local}
    - name: authz
      envoyExtAuthzGrpc: {service: a.b, port: 9000}
      opentelemetry: {service: o.b, port: 4317}
"#);
        assert_all(
            &d,
            &[
                "test.yaml:3: warning: MeshConfig /mesh: outboundTrafficPolicy: outboundTrafficPolicy without mode: egret keeps the mesh default ALLOW_ANY (Istio merges mesh config over its defaults); write the mode explicitly",
                r#"test.yaml:4: error: MeshConfig /mesh: trustDomain: trust domain "Bad_Domain" is not a valid DNS name"#,
                "test.yaml:7: error: MeshConfig /mesh: extensionProviders[0].envoyExtAuthzHttp.port: port is required",
                r#"test.yaml:8: error: MeshConfig /mesh: extensionProviders[1].name: duplicate extension provider name "authz" (also extensionProviders[0])"#,
                "test.yaml:8: error: MeshConfig /mesh: extensionProviders[1]: an extension provider needs exactly one provider block (envoyExtAuthzHttp, envoyExtAuthzGrpc, opentelemetry, ...), found 2",
            ],
        );
        assert_eq!(d.len(), 5, "{d:#?}");

        let d = run(
            "spec:\n  meshConfig:\n    outboundTrafficPolicy:\n      mode: ALLOW_ANY_DYNAMIC_DNS\n",
        );
        assert_eq!(d, vec![
            "test.yaml:4: warning: MeshConfig /mesh: outboundTrafficPolicy.mode: ALLOW_ANY_DYNAMIC_DNS is not supported by egret; treated as ALLOW_ANY".to_string(),
        ]);
    }
}
