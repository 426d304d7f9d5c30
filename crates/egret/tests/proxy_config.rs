//! `egret proxy-config` against real proxies (no root): a mesh CA (`egret ca`), an egress
//! gateway and a sidecar (explicit-proxy mode, ephemeral admin ports) reading one file with a
//! STATIC and a DNS ServiceEntry, a VirtualService, and a DestinationRule that originates
//! mutual TLS with a client certificate. Each view is read with the binary and checked for the
//! specific listeners, routes, clusters, endpoints, certificates and config version; then the
//! file changes and the version must follow, and a broken file must be counted as rejected.
//!
//! DNS stays on this machine: `localhost` resolves from the resolver itself and `.invalid`
//! names fail without a query (RFC 6761), so nothing leaves loopback.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::process::wait_until;
use egret_testkit::{Process, TempDir, TestCa};
use serde_json::Value;

fn egret() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egret"))
}

fn run(args: &[&str]) -> Result<String> {
    let o = egret().args(args).output().context("run egret")?;
    ensure!(
        o.status.success(),
        "egret {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// The admin address a proxy started with `--admin-port 0` reports in its ready line.
fn admin_addr(proc_: &mut Process) -> Result<SocketAddr> {
    wait_until("the proxy's ready line", Duration::from_secs(30), || {
        proc_.check_running()?;
        let log = proc_.log();
        let Some(line) = log.lines().find(|l| l.contains(" ready ")) else {
            return Ok(None);
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .context("no admin= in the ready line")?;
        Ok(Some(addr.parse::<SocketAddr>()?))
    })
    .with_context(|| proc_.log())
}

/// `egret proxy-config VIEW --admin ADDR [-o json]`: stdout, or the failure with stderr.
fn proxy_config(admin: SocketAddr, view: &str, json: bool) -> Result<String> {
    let admin = admin.to_string();
    let mut args = vec!["proxy-config", view, "--admin", admin.as_str()];
    if json {
        args.extend(["-o", "json"]);
    }
    run(&args)
}

fn json_view(admin: SocketAddr, view: &str) -> Result<Value> {
    let out = proxy_config(admin, view, true)?;
    serde_json::from_str(&out).with_context(|| format!("proxy-config {view} -o json: {out}"))
}

/// The table row (split on istioctl's 5-space column gap) whose cells include all of `cells`.
fn row<'a>(table: &'a str, cells: &[&str]) -> Result<Vec<&'a str>> {
    for line in table.lines() {
        let got: Vec<&str> = line
            .split("     ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if cells.iter().all(|c| got.contains(c)) {
            return Ok(got);
        }
    }
    bail!("no row with {cells:?} in:\n{table}")
}

fn not_after_unix(pem: &str) -> Result<i64> {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    Ok(cert.validity().not_after.timestamp())
}

use rustls_pki_types::pem::PemObject;

fn mesh_yaml(gw_port: u16, cert_dir: &Path, extra: &str) -> String {
    let (cert, key, ca) = (
        cert_dir.join("cert.pem"),
        cert_dir.join("key.pem"),
        cert_dir.join("ca.pem"),
    );
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {gw_port}}}
    labels: {{istio: egressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.example.test, dns.example.test, cred.example.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cred, namespace: default}}
spec:
  hosts: [cred.example.test]
  gateways: [istio-system/istio-egressgateway]
  http: [{{route: [{{destination: {{host: cred.example.test, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: dns, namespace: default}}
spec:
  hosts: [dns.example.test]
  gateways: [istio-system/istio-egressgateway]
  http: [{{route: [{{destination: {{host: dns.example.test, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.test]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  resolution: STATIC
  endpoints:
  - {{address: 203.0.113.10, locality: us-east/zone-a, weight: 3}}
  - {{address: 203.0.113.11, locality: us-east/zone-b, weight: 1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dns-svc, namespace: default}}
spec:
  hosts: [dns.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: localhost}}, {{address: missing.invalid}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.test]
  gateways: [mesh, istio-system/istio-egressgateway]
  http:
  - match: [{{gateways: [mesh], port: 80, uri: {{prefix: /v1}}}}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port: {{number: 80}}
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: api.example.test, port: {{number: 443}}}}}}]
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 80}}]
    route: [{{destination: {{host: api.example.test, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: default}}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    # Port-level settings replace the DR-level ones (no inheritance), so the LB is here too.
    - port: {{number: 443}}
      loadBalancer: {{simple: ROUND_ROBIN}}
      tls:
        mode: MUTUAL
        clientCertificate: {cert}
        privateKey: {key}
        caCertificates: {ca}
        sni: api.example.test
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cred, namespace: default}}
spec:
  hosts: [cred.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 203.0.113.30}}]
---
# TLS origination with a credential from --credentials-dir (Istio: a Kubernetes Secret). Only
# the gateway reads it: a sidecar needs a workloadSelector on the DestinationRule (Istio).
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: cred, namespace: default}}
spec:
  host: cred.example.test
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: cred-client, sni: cred.example.test}}
{extra}",
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
    )
}

#[test]
fn proxy_config_shows_what_the_proxies_serve() -> Result<()> {
    let dir = TempDir::new("proxy-config")?;
    let (ca, gw_id, sleep_id) = (
        dir.path().join("ca"),
        dir.path().join("gw-id"),
        dir.path().join("sleep-id"),
    );
    run(&["ca", "init", "--dir", p(&ca)])?;
    run(&[
        "ca",
        "issue",
        "--dir",
        p(&ca),
        "--namespace",
        "istio-system",
        "--service-account",
        "istio-egressgateway-service-account",
        "--out",
        p(&gw_id),
    ])?;
    run(&[
        "ca",
        "issue",
        "--dir",
        p(&ca),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--ttl",
        "6h",
        "--out",
        p(&sleep_id),
    ])?;
    // The client certificate the DestinationRule presents (TLS origination, MUTUAL).
    let upstream_ca = TestCa::new("upstream")?;
    let client = upstream_ca.issue_client("sleep-client")?;
    let cert_dir = dir.path().join("client");
    client.write_to_dir(&cert_dir, upstream_ca.ca_pem())?;
    // And one from --credentials-dir (`credentialName`): DIR/<name>/{tls.crt,tls.key,ca.crt}.
    let creds = dir.path().join("creds");
    let cred = upstream_ca.issue_client("cred-client")?;
    std::fs::create_dir_all(creds.join("cred-client"))?;
    for (file, text) in [
        ("tls.crt", cred.cert_pem.as_str()),
        ("tls.key", cred.key_pem.as_str()),
        ("ca.crt", upstream_ca.ca_pem()),
    ] {
        std::fs::write(creds.join("cred-client").join(file), text)?;
    }

    let gw_port = free_port()?;
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, mesh_yaml(gw_port, &cert_dir, ""))?;

    let mut gw_cmd = egret();
    gw_cmd.args([
        "gateway",
        "--config",
        p(&config),
        "--namespace",
        "istio-system",
        "--labels",
        "istio=egressgateway",
        "--identity-dir",
        p(&gw_id),
        "--credentials-dir",
        p(&creds),
        "--listen",
        &format!("80=127.0.0.1:{gw_port}"),
        "--admin-port",
        "0",
    ]);
    let mut gw = Process::spawn(gw_cmd, "egret gateway", &dir.path().join("gateway.log"))?;
    let sc_proxy = free_port()?;
    let mut sc_cmd = egret();
    sc_cmd.args([
        "sidecar",
        "--config",
        p(&config),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--identity-dir",
        p(&sleep_id),
        "--outbound-port",
        "0",
        "--proxy-port",
        &sc_proxy.to_string(),
        "--admin-port",
        "0",
        "--config-poll-ms",
        "100",
    ]);
    let mut sc = Process::spawn(sc_cmd, "egret sidecar", &dir.path().join("sidecar.log"))?;
    let sc_admin = admin_addr(&mut sc)?;
    let gw_admin = admin_addr(&mut gw)?;

    // ---- version: identity, role, and the snapshot version `egret compile` gives too.
    let info = json_view(sc_admin, "version")?;
    let compiled: Value = serde_json::from_str(&run(&[
        "compile",
        "--role",
        "sidecar",
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        p(&config),
    ])?)?;
    let version = info["config_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        !version.is_empty() && compiled["version"].as_str() == Some(version.as_str()),
        "server_info {info} vs compile {}",
        compiled["version"]
    );
    ensure!(
        info["role"] == "sidecar" && info["namespace"] == "default",
        "{info}"
    );
    ensure!(
        info["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/sleep",
        "{info}"
    );
    ensure!(info["config_rejected_reloads"] == 0, "{info}");
    ensure!(info["egret_version"] == env!("CARGO_PKG_VERSION"), "{info}");
    let table = proxy_config(sc_admin, "version", false)?;
    row(&table, &["CONFIG VERSION", &version])?;
    row(
        &table,
        &["SPIFFE ID", "spiffe://cluster.local/ns/default/sa/sleep"],
    )?;
    row(&table, &["ROLE", "sidecar"])?;
    row(&table, &["OUTBOUND POLICY", "ALLOW_ANY (default)"])?;
    row(&table, &["REJECTED RELOADS", "0"])?;

    // ---- listeners: the explicit proxy socket, the per-port listeners, admin.
    let table = proxy_config(sc_admin, "listeners", false)?;
    row(
        &table,
        &[
            "explicit_proxy",
            &format!("127.0.0.1:{sc_proxy}"),
            "explicit_proxy",
            "HTTP",
        ],
    )?;
    row(
        &table,
        &["80", "port", "HTTP", "Route: 80 (4 virtual hosts)"],
    )?;
    row(&table, &["admin", &sc_admin.to_string(), "admin"])?;
    ensure!(
        !table.contains("virtualOutbound"),
        "capture is disabled (--outbound-port 0):\n{table}"
    );
    // The gateway: its server port, bound where --listen said.
    let table = proxy_config(gw_admin, "listeners", false)?;
    row(
        &table,
        &[
            &format!("127.0.0.1:{gw_port}"),
            "80",
            "gateway_server",
            "Server HTTP */api.example.test,*/dns.example.test,*/cred.example.test",
        ],
    )?;

    // ---- routes: first match wins, in order, with their destinations.
    let table = proxy_config(sc_admin, "routes", false)?;
    let first = row(&table, &["/v1* port=80"])?;
    ensure!(
        first.contains(&"api.example.test:80")
            && first.contains(&"outbound|80||istio-egressgateway.istio-system.svc.cluster.local"),
        "{first:?}"
    );
    row(&table, &["/* port=80", "outbound|443||api.example.test"])?;
    let routes = json_view(sc_admin, "routes")?;
    let vhs = routes["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["port"] == 80))
        .map(|r| r["virtual_hosts"].clone())
        .context("no port 80 routes")?;
    let api = vhs
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "api.example.test:80"))
        .context("no api vhost")?;
    ensure!(api["routes"].as_array().map(Vec::len) == Some(2), "{api}");
    let table = proxy_config(gw_admin, "routes", false)?;
    row(
        &table,
        &["api.example.test:80", "outbound|443||api.example.test"],
    )?;

    // ---- clusters: resolution, LB policy, TLS origination with its client certificate.
    let table = proxy_config(sc_admin, "clusters", false)?;
    row(
        &table,
        &[
            "api.example.test",
            "443",
            "EDS",
            "ROUND_ROBIN",
            "MUTUAL",
            "default/api",
            "2",
        ],
    )?;
    row(&table, &["dns.example.test", "80", "STRICT_DNS"])?;
    row(
        &table,
        &[
            "istio-egressgateway.istio-system.svc.cluster.local",
            "ISTIO_MUTUAL (auto)",
        ],
    )?;
    let clusters = json_view(sc_admin, "clusters")?;
    let api443 = clusters["clusters"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == "outbound|443||api.example.test")
        })
        .context("no api 443 cluster")?;
    ensure!(api443["tls"]["ready"] == true, "{api443}");
    ensure!(api443["tls"]["sni"] == "api.example.test", "{api443}");
    let client_name = format!(
        "file-cert:{}~{}",
        cert_dir.join("cert.pem").display(),
        cert_dir.join("key.pem").display()
    );
    ensure!(
        api443["tls"]["client_certificate"] == client_name.as_str(),
        "{api443}"
    );

    // ---- endpoints: static with locality and weight, DNS resolved, DNS failing.
    let table = proxy_config(sc_admin, "endpoints", false)?;
    row(
        &table,
        &[
            "203.0.113.10:443",
            "HEALTHY",
            "us-east/zone-a",
            "3",
            "outbound|443||api.example.test",
        ],
    )?;
    row(
        &table,
        &[
            "203.0.113.11:443",
            "HEALTHY",
            "us-east/zone-b",
            "1",
            "outbound|443||api.example.test",
        ],
    )?;
    row(
        &table,
        &[
            "127.0.0.1:80",
            "HEALTHY",
            "localhost",
            "outbound|80||dns.example.test",
        ],
    )?;
    let failed = row(
        &table,
        &[
            "missing.invalid:80",
            "UNHEALTHY",
            "missing.invalid",
            "outbound|80||dns.example.test",
        ],
    )?;
    ensure!(
        failed.len() == 7,
        "the resolution error is shown: {failed:?}"
    );
    row(
        &table,
        &[
            &format!("127.0.0.1:{gw_port}"),
            "HEALTHY",
            "outbound|80||istio-egressgateway.istio-system.svc.cluster.local",
        ],
    )?;
    // The gateway resolves the same name but refuses loopback answers (DNS rebinding).
    let table = proxy_config(gw_admin, "endpoints", false)?;
    let r = row(
        &table,
        &["localhost:80", "UNHEALTHY", "outbound|80||dns.example.test"],
    )?;
    ensure!(r.iter().any(|c| c.contains("forbidden ranges")), "{r:?}");

    // ---- secrets: the workload SVID (6h), the mesh root, the DestinationRule's client cert.
    let certs = json_view(sc_admin, "secrets")?;
    let w = &certs["workload"];
    ensure!(
        w["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/sleep",
        "{w}"
    );
    let left = w["certificate"]["seconds_until_expiry"]
        .as_i64()
        .unwrap_or(0);
    ensure!(
        (6 * 3600 - 600..=6 * 3600).contains(&left),
        "a 6h SVID has {left}s left"
    );
    let chain = std::fs::read_to_string(sleep_id.join("cert-chain.pem"))?;
    ensure!(
        w["certificate"]["not_after_unix"].as_i64() == Some(not_after_unix(&chain)?),
        "{w}"
    );
    let roots = certs["trust_bundle"].as_array().context("trust_bundle")?;
    let root_pem = std::fs::read_to_string(sleep_id.join("root-cert.pem"))?;
    ensure!(
        roots.len() == 1 && roots[0]["not_after_unix"].as_i64() == Some(not_after_unix(&root_pem)?),
        "{roots:?}"
    );
    let cc = certs["client_certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == client_name.as_str()))
        .context("no DestinationRule client certificate")?;
    ensure!(
        cc["certificate"]["not_after_unix"].as_i64() == Some(not_after_unix(&client.cert_pem)?),
        "{cc}"
    );
    ensure!(cc["destination_rules"][0] == "default/api", "{cc}");
    ensure!(
        cc["clusters"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "outbound|443||api.example.test")),
        "{cc}"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    ensure!(
        cc["certificate"]["seconds_until_expiry"]
            .as_i64()
            .unwrap_or(0)
            >= not_after_unix(&client.cert_pem)? - now - 5,
        "{cc}"
    );
    let table = proxy_config(sc_admin, "secrets", false)?;
    let serial = w["certificate"]["serial"].as_str().unwrap_or("?");
    row(
        &table,
        &[
            "default",
            "Cert Chain",
            "ACTIVE",
            "true",
            "URI:spiffe://cluster.local/ns/default/sa/sleep",
            serial,
        ],
    )?;
    row(&table, &["ROOTCA", "CA", "ACTIVE"])?;
    row(
        &table,
        &[&client_name, "Cert Chain", "ACTIVE", "DNS:sleep-client"],
    )?;

    // The gateway presents the credentialName certificate.
    let gw_certs = json_view(gw_admin, "secrets")?;
    let kc = gw_certs["client_certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "kubernetes://cred-client"))
        .context("no credentialName client certificate on the gateway")?;
    ensure!(
        kc["path"].as_str() == creds.join("cred-client").join("tls.crt").to_str()
            && kc["certificate"]["not_after_unix"].as_i64()
                == Some(not_after_unix(&cred.cert_pem)?)
            && kc["destination_rules"][0] == "default/cred"
            && kc["clusters"][0] == "outbound|80||cred.example.test",
        "{kc}"
    );
    let table = proxy_config(gw_admin, "secrets", false)?;
    row(
        &table,
        &["kubernetes://cred-client", "ACTIVE", "DNS:cred-client"],
    )?;
    // The sidecar has the cluster but cannot use the credential (Istio: no workloadSelector).
    let cred_cluster = clusters["clusters"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == "outbound|80||cred.example.test")
        })
        .context("no cred cluster on the sidecar")?;
    ensure!(
        cred_cluster["tls"]["ready"] == false
            && cred_cluster["tls"]["unusable"]
                .as_str()
                .is_some_and(|u| u.contains("workloadSelector")),
        "{cred_cluster}"
    );
    let table = proxy_config(sc_admin, "clusters", false)?;
    row(
        &table,
        &["cred.example.test", "MUTUAL (unusable)", "default/cred"],
    )?;

    // ---- all: every section, and every view's JSON parses.
    let all = proxy_config(sc_admin, "all", false)?;
    for header in [
        "CONFIG VERSION",
        "DESTINATION",
        "VHOST NAME",
        "SERVICE FQDN",
        "ENDPOINT",
        "RESOURCE NAME",
    ] {
        ensure!(all.contains(header), "{header} missing from all:\n{all}");
    }
    let all = json_view(sc_admin, "all")?;
    for key in ["server_info", "listeners", "routes", "clusters", "certs"] {
        ensure!(all[key].is_object(), "{key} missing from all -o json");
    }

    // ---- reload: a new ServiceEntry changes the version; a broken file is rejected.
    let extra = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: extra, namespace: default}
spec:
  hosts: [extra.example.test]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 203.0.113.20}]
";
    std::fs::write(&config, mesh_yaml(gw_port, &cert_dir, extra))?;
    let reloaded = wait_until(
        "the sidecar to load the new config",
        Duration::from_secs(20),
        || {
            sc.check_running()?;
            let i = json_view(sc_admin, "version")?;
            Ok((i["config_version"] != version.as_str()).then_some(i))
        },
    )
    .with_context(|| sc.log())?;
    let new_version = reloaded["config_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        reloaded["config_loaded_at_unix"].as_i64() >= info["config_loaded_at_unix"].as_i64(),
        "{reloaded} vs {info}"
    );
    ensure!(reloaded["config_loads"] == 2, "{reloaded}");
    let table = proxy_config(sc_admin, "clusters", false)?;
    row(&table, &["extra.example.test", "8080", "EDS"])?;
    let table = proxy_config(sc_admin, "version", false)?;
    row(&table, &["CONFIG VERSION", &new_version])?;

    std::fs::write(
        &config,
        mesh_yaml(gw_port, &cert_dir, extra).replace("resolution: DNS", "resolution: SOMETIMES"),
    )?;
    let rejected = wait_until(
        "the sidecar to reject the broken config",
        Duration::from_secs(20),
        || {
            sc.check_running()?;
            let i = json_view(sc_admin, "version")?;
            Ok((i["config_rejected_reloads"] == 1).then_some(i))
        },
    )
    .with_context(|| sc.log())?;
    ensure!(
        rejected["config_version"] == new_version.as_str(),
        "the last good snapshot keeps serving: {rejected}"
    );
    let table = proxy_config(sc_admin, "version", false)?;
    row(&table, &["REJECTED RELOADS", "1"])?;
    Ok(())
}

#[test]
fn unreachable_admin_is_a_clear_error() -> Result<()> {
    // A port nothing listens on: bind, note the port, close.
    let port = free_port()?;
    let admin = format!("127.0.0.1:{port}");
    for view in ["clusters", "all"] {
        let o = egret()
            .args(["proxy-config", view, "--admin", &admin])
            .output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        ensure!(o.status.code() == Some(1), "exit {:?}: {err}", o.status);
        ensure!(
            err.contains("cannot reach the admin endpoint at") && err.contains(&admin),
            "{err}"
        );
        ensure!(!err.contains("panicked"), "{err}");
        ensure!(o.stdout.is_empty(), "nothing on stdout");
    }
    let o = egret()
        .args(["proxy-config", "routes", "--admin", "not an address"])
        .output()?;
    ensure!(o.status.code() == Some(1), "{o:?}");
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("expected HOST:PORT"),
        "{o:?}"
    );
    Ok(())
}
