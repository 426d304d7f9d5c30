//! Gateway: servers, hosts and server TLS settings.

use egret_config::Object;
use egret_config::types::*;
use serde_json::Value;

use super::{
    FirstSeen, Report, check_port, check_unix_path, hostname_part, is_dns1123_label, is_ip, is_set,
    port_protocol, unix_path,
};

// ===== Gateway =====

/// Istio `ValidateGateway`.
pub(super) fn gateway(r: &mut Report<'_>, o: &Object<Gateway>) {
    if !is_dns1123_label(&o.meta.name) {
        r.error(
            "metadata.name",
            format!(
                "gateway name {:?} must be a DNS-1123 label (no dots)",
                o.meta.name
            ),
        );
    }
    let gw = &o.spec;
    if gw.servers.is_empty() {
        r.error("spec.servers", "at least one server is required");
    }
    let mut names: FirstSeen<&str> = FirstSeen::default();
    for (i, s) in gw.servers.iter().enumerate() {
        let base = format!("spec.servers[{i}]");
        server(r, &base, s);
        if let Some(name) = s.port.as_ref().and_then(|p| p.name.as_deref())
            && let Some(j) = names.dup(name, i)
        {
            r.error(
                &format!("{base}.port.name"),
                format!("duplicate server port name {name:?} (also spec.servers[{j}].port.name)"),
            );
        }
    }
}

/// Istio `validateServer`.
fn server(r: &mut Report<'_>, base: &str, s: &Server) {
    if s.hosts.is_empty() {
        r.error(&format!("{base}.hosts"), "at least one host is required");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        gateway_host(r, &format!("{base}.hosts[{i}]"), h);
    }
    let bind = s.bind.as_deref().unwrap_or("");
    let unix = unix_path(bind);

    // Istio `validateServerPort`.
    let mut proto = None;
    match &s.port {
        None => r.error(&format!("{base}.port"), "port is required"),
        Some(p) => {
            let pbase = format!("{base}.port");
            let mut ok = true;
            match port_protocol(&p.protocol) {
                Ok(Some(pr)) => proto = Some(pr),
                Ok(None) => {
                    r.error(&format!("{pbase}.protocol"), "protocol is required");
                    ok = false;
                }
                Err(x) => {
                    r.error(
                        &format!("{pbase}.protocol"),
                        format!("unknown protocol {x:?}; use HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, REDIS, MYSQL, TCP or TLS"),
                    );
                    ok = false;
                }
            }
            match p.number {
                None | Some(0) if unix.is_some() => {}
                None => {
                    r.error(&format!("{pbase}.number"), "port number is required");
                    ok = false;
                }
                Some(n) => {
                    check_port(r, &format!("{pbase}.number"), n);
                    ok &= (1..=65535).contains(&n);
                }
            }
            if p.target_port.is_some_and(|t| t > 0) {
                r.error(
                    &format!("{pbase}.targetPort"),
                    "targetPort has no effect on Gateways",
                );
            }
            if !is_set(&p.name) {
                r.error(&format!("{pbase}.name"), "port name is required");
                ok = false;
            }
            if !ok {
                proto = None;
            }
        }
    }

    // Istio `validateServerBind`.
    if let Some(path) = unix {
        check_unix_path(r, &format!("{base}.bind"), path);
        if s.port
            .as_ref()
            .and_then(|p| p.number)
            .is_some_and(|n| n != 0)
        {
            r.error(
                &format!("{base}.port.number"),
                "port number must be 0 with a unix:// bind address",
            );
        }
    } else if !bind.is_empty() && !is_ip(bind) {
        r.error(
            &format!("{base}.bind"),
            format!("bind {bind:?} is not an IP address or unix:// path"),
        );
    }

    if let Some(tls) = &s.tls {
        server_tls(r, &format!("{base}.tls"), tls);
    }

    // TLS settings must match the protocol (checked when the port is valid).
    if let Some(p) = proto {
        let pname = s
            .port
            .as_ref()
            .and_then(|p| p.protocol.as_deref())
            .unwrap_or("")
            .to_ascii_uppercase();
        match &s.tls {
            None if p.is_tls() => r.error(base, format!("{pname} servers need tls settings")),
            Some(tls) if !p.is_tls() => {
                let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
                let certs = is_set(&tls.server_certificate)
                    || is_set(&tls.private_key)
                    || is_set(&tls.ca_certificates);
                if !p.is_http() {
                    r.error(
                        &format!("{base}.tls"),
                        format!(
                            "tls settings are not allowed on {pname} servers (only HTTPS and TLS)"
                        ),
                    );
                } else if mode != ServerTlsMode::Passthrough || certs {
                    r.error(
                        &format!("{base}.tls"),
                        "tls on a plain-text HTTP server may only set httpsRedirect",
                    );
                } else if tls.https_redirect != Some(true) {
                    r.warning(
                        &format!("{base}.tls"),
                        "tls on a plain-text HTTP server has no effect without httpsRedirect: true",
                    );
                }
            }
            _ => {}
        }
        if !p.is_http()
            && s.tls
                .as_ref()
                .is_some_and(|t| t.https_redirect == Some(true))
        {
            r.warning(
                &format!("{base}.tls.httpsRedirect"),
                "httpsRedirect only applies to HTTP servers",
            );
        }
    }
}

/// Istio `ValidateNamespaceSlashWildcardHostname` for gateways: `[namespace/]dnsName`, where
/// namespace is `*`, `.` or a namespace name, and dnsName is `*`, a (wildcard) FQDN or an IP.
fn gateway_host(r: &mut Report<'_>, field: &str, h: &str) {
    let dns = match h.split_once('/') {
        Some((ns, dns)) => {
            if ns.is_empty() || dns.is_empty() {
                r.error(
                    field,
                    format!("host {h:?}: namespace and host must not be empty"),
                );
                return;
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                r.error(field, format!("host {h:?}: invalid namespace {ns:?}"));
            }
            dns
        }
        None => h,
    };
    hostname_part(r, field, dns, true);
}

/// Istio `validateTLSOptions` (ServerTLSSettings), plus egret's unsupported modes.
fn server_tls(r: &mut Report<'_>, base: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    let cert = is_set(&tls.server_certificate);
    let key = is_set(&tls.private_key);
    let ca = is_set(&tls.ca_certificates);
    let crl = is_set(&tls.ca_crl);
    let cred = is_set(&tls.credential_name);
    let creds = !tls.credential_names.is_empty();
    let tls_certs = !tls.tls_certificates.is_empty();

    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        r.error(
            &format!("{base}.minProtocolVersion"),
            format!("minProtocolVersion {min} is above maxProtocolVersion {max}"),
        );
    }
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        r.warning(
            &format!("{base}.minProtocolVersion"),
            "TLS versions below 1.2 need cipherSuites that support them; the defaults do not",
        );
    }

    if mode == ServerTlsMode::IstioMutual {
        if cert || key || ca || cred || creds || tls_certs {
            r.error(
                base,
                "ISTIO_MUTUAL uses the mesh identity; serverCertificate, privateKey, caCertificates, credentialName(s) and tlsCertificates must be empty",
            );
        }
        return;
    }
    let passthrough = matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    );
    if passthrough && (cert || key || ca || crl || cred || creds || tls_certs) {
        r.warning(
            base,
            format!("{mode} does not use certificates; they are ignored"),
        );
    }
    if mode == ServerTlsMode::AutoPassthrough {
        r.warning(
            &format!("{base}.mode"),
            "AUTO_PASSTHROUGH (multi-network east-west) is not supported by egret, server ignored",
        );
    }
    if mode == ServerTlsMode::OptionalMutual {
        r.warning(
            &format!("{base}.mode"),
            "OPTIONAL_MUTUAL is treated as MUTUAL by egret",
        );
    }

    let sources =
        usize::from(cert && key) + usize::from(cred) + usize::from(creds) + usize::from(tls_certs);
    if sources > 1 {
        r.error(
            base,
            "set only one of credentialName, credentialNames, serverCertificate/privateKey or tlsCertificates",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let mutual = mode != ServerTlsMode::Simple;
    if terminating && !cred && !creds {
        let what = if mutual { "MUTUAL" } else { "SIMPLE" };
        if tls_certs {
            for (i, c) in tls.tls_certificates.iter().enumerate() {
                let has = |k: &str| {
                    c.get(k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                };
                if !has("serverCertificate") || !has("privateKey") {
                    r.error(
                        &format!("{base}.tlsCertificates[{i}]"),
                        "each tlsCertificates entry needs serverCertificate and privateKey",
                    );
                }
            }
            if tls.tls_certificates.len() > 2 {
                r.warning(
                    &format!("{base}.tlsCertificates"),
                    "at most 2 server certificates are used",
                );
            }
        } else if !(cert && key) {
            r.error(
                base,
                format!("{what} requires serverCertificate and privateKey (or credentialName)"),
            );
        }
        if mutual && !ca {
            r.error(base, "MUTUAL requires caCertificates (or credentialName)");
        }
    }
    if crl {
        if cred {
            r.error(
                &format!("{base}.caCrl"),
                "not supported with credentialName; put the CRL in the credential",
            );
        }
        if mode == ServerTlsMode::Simple {
            r.error(&format!("{base}.caCrl"), "not supported with SIMPLE TLS");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::validate::test_util::{assert_all, run};

    #[test]
    fn gateway_servers() {
        let d = run(r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [foo]
  - port: {number: 80, name: https, protocol: HTTP}
    hosts: ["bad ns/a.com", "./*.a.com"]
    tls: {mode: SIMPLE, credentialName: c}
  - port: {number: 8443, name: mtls, protocol: TLS}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      serverCertificate: /c.pem
      privateKey: /k.pem
      minProtocolVersion: TLSV1_3
      maxProtocolVersion: TLSV1_2
  - port: {number: 15443, name: tls-ap, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 9443, name: om, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: om}
  - hosts: []
"#);
        let p = "Gateway default/gw: spec";
        assert_all(
            &d,
            &[
                &format!("test.yaml:8: error: {p}.servers[0]: HTTPS servers need tls settings"),
                &format!(
                    r#"test.yaml:9: error: {p}.servers[0].hosts[0]: short name "foo" is not allowed; use a fully qualified name"#
                ),
                &format!(
                    r#"test.yaml:10: error: {p}.servers[1].port.name: duplicate server port name "https" (also spec.servers[0].port.name)"#
                ),
                &format!(
                    r#"test.yaml:11: error: {p}.servers[1].hosts[0]: host "bad ns/a.com": invalid namespace "bad ns""#
                ),
                &format!(
                    "test.yaml:12: error: {p}.servers[1].tls: tls on a plain-text HTTP server may only set httpsRedirect"
                ),
                &format!(
                    "test.yaml:15: error: {p}.servers[2].tls: MUTUAL requires caCertificates (or credentialName)"
                ),
                &format!(
                    "test.yaml:19: error: {p}.servers[2].tls.minProtocolVersion: minProtocolVersion TLSV1_3 is above maxProtocolVersion TLSV1_2"
                ),
                &format!(
                    "test.yaml:23: warning: {p}.servers[3].tls.mode: AUTO_PASSTHROUGH (multi-network east-west) is not supported by egret, server ignored"
                ),
                &format!(
                    "test.yaml:26: warning: {p}.servers[4].tls.mode: OPTIONAL_MUTUAL is treated as MUTUAL by egret"
                ),
                &format!("test.yaml:27: error: {p}.servers[5].port: port is required"),
                &format!(
                    "test.yaml:27: error: {p}.servers[5].hosts: at least one host is required"
                ),
            ],
        );
        assert_eq!(d.len(), 11, "{d:#?}");
    }
}
