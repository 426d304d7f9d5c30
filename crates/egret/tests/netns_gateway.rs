//! The `egret gateway` binary in network namespaces with `egret sidecar` in front of it
//! (DESIGN.md "Testing layers", item 5; issue 4): the istio.io egress-gateway tasks with the
//! samples in `../shared/conformance/istio-samples/` adapted to `.test` hosts and otherwise kept
//! in their Istio shapes, the mesh tunnel (sidecar → gateway always mutual TLS with SPIFFE ids),
//! and what the gateway must refuse.
//!
//! Every test builds its own [`Topology::new`]:
//!
//! - `app` — the workload: `egret iptables apply`, the sidecar as uid 1337 with its SVID
//!   (`spiffe://cluster.local/ns/default/sa/sleep`, `--identity-dir`), curl as root (captured).
//!   Its default route goes to the gateway namespace, which does not forward: **app has no path
//!   to the internet** except through the egress gateway process.
//! - `gateway` — `egret gateway` (root) with the SVID
//!   `spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account`, reached by
//!   the sidecar at [`addrs::GATEWAY`] (198.51.100.2), the endpoint of the gateway Service's
//!   MESH_INTERNAL ServiceEntry ([`GATEWAY_SERVICE`], given to both proxies).
//! - `external` — "the internet": nginx (HTTPS, mTLS) and egret's test server on 203.0.113.10,
//!   .11 and .12, reachable from the gateway namespace only.
//! - `dns` — dnsmasq answering the `.test` names for app and gateway.
//!
//! Some tests add a second workload ([`Topology::add_workload`]) or a second gateway with its own
//! external network ([`Topology::add_gateway`]).
//!
//! Mesh identities come from `egret ca init` / `egret ca issue` (a fresh CA per test); the
//! external services' certificates from the testkit's [`TestCa`].
//!
//! The tests need root and iproute2, iptables, curl, util-linux (`setpriv`), nginx, dnsmasq and
//! openssl (`s_client` speaks the tunnel's ALPN, which curl cannot). Without them they FAIL with
//! a message naming what is missing: they never skip. Namespaces, processes and files are removed
//! when a test ends; tests may run in parallel. On failure the proxies' logs are printed.

mod netns_common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use egret_testkit::netns::Netns;
use egret_testkit::process::{run_command, wait_until};
use egret_testkit::{Nginx, NginxConfig, TestCa, addrs};
use netns_common::*;

use netns_common::gateway::*;

/// Sample 05 (istio.io "Egress gateway for HTTP traffic"), hosts adapted.
const SAMPLE_05: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.test
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.test
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.test
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.test
        port:
          number: 80
      weight: 100
";

/// Sample 06 (istio.io "Egress gateway for HTTPS traffic", TLS passthrough), hosts adapted.
const SAMPLE_06: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.test
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.test
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.test
  gateways:
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - edition.cnn.test
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.test
    route:
    - destination:
        host: edition.cnn.test
        port:
          number: 443
      weight: 100
";

/// Samples 05 and 06 applied together (one object of each kind, both ports): HTTP on 80 and
/// TLS passthrough on 443 through the gateway.
const SAMPLES_05_06: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.test
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.test
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.test
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.test
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.test
        port:
          number: 80
      weight: 100
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - edition.cnn.test
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.test
    route:
    - destination:
        host: edition.cnn.test
        port:
          number: 443
      weight: 100
";

/// Sample 10 (istio.io "Perform TLS origination with an egress gateway"), hosts adapted.
/// egret verifies upstream certificates by default, so the last DestinationRule names the CA
/// that signed the server's certificate (`ca_file`).
fn sample_10(ca_file: &Path) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: https-port-for-tls-origination
      protocol: HTTPS
    hosts:
    - edition.cnn.test
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
      portLevelSettings:
      - port:
          number: 80
        tls:
          mode: ISTIO_MUTUAL
          sni: edition.cnn.test
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.test
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.test
        port:
          number: 443
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls-for-edition-cnn-com
spec:
  host: edition.cnn.test
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: SIMPLE # initiates HTTPS for connections to edition.cnn.com
        caCertificates: {}
",
        ca_file.display()
    )
}

/// The task's Kubernetes Service my-nginx (namespace mesh-external), as a ServiceEntry. It
/// lists port 80 too: the app calls http://my-nginx... on port 80, and where Istio gives a
/// VirtualService host without an HTTP port a virtual host on port 80 anyway, egret's compiler
/// only does so for ports the Service declares.
const MY_NGINX_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: my-nginx
  namespace: mesh-external
spec:
  hosts:
  - my-nginx.mesh-external.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
";

/// Sample 11 (istio.io "Perform mutual TLS origination with an egress gateway"), hosts adapted,
/// without its last DestinationRule ([`SAMPLE_11_ORIGINATE_MTLS`]).
const SAMPLE_11: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - my-nginx.mesh-external.test
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-nginx
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: nginx
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
      portLevelSettings:
      - port:
          number: 443
        tls:
          mode: ISTIO_MUTUAL
          sni: my-nginx.mesh-external.test
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-nginx-through-egress-gateway
spec:
  hosts:
  - my-nginx.mesh-external.test
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: nginx
        port:
          number: 443
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
    route:
    - destination:
        host: my-nginx.mesh-external.test
        port:
          number: 443
      weight: 100
";

/// Sample 11's last DestinationRule: mutual TLS origination with `credentialName`, in
/// istio-system as the task's `kubectl apply -n istio-system` puts it.
const SAMPLE_11_ORIGINATE_MTLS: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
  namespace: istio-system
spec:
  host: my-nginx.mesh-external.test
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        credentialName: client-credential # this must match the secret created earlier to hold client certs
        sni: my-nginx.mesh-external.test
";

// ---------------------------------------------------------------------------------------------
// The istio.io egress-gateway tasks
// ---------------------------------------------------------------------------------------------

/// Sample 05 (istio.io "Egress gateway for HTTP traffic"): `curl http://edition.cnn.test/politics`
/// from the app goes sidecar → (mesh tunnel) → gateway → nginx; the gateway's access log names
/// the request, the cluster `outbound|80||edition.cnn.test` and the caller's SPIFFE id. The app
/// itself has no way out: the same curl as uid 1337 (not captured) cannot connect.
#[test]
fn gateway_sample_05_http() -> Result<()> {
    let topo = topology("gw05")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLE_05}");
    let (_mesh_ca, gw, app) = mesh(&topo, "gw05", &yaml, &[])?;

    let r = app.curl(&["http://edition.cnn.test/politics"])?;
    ensure!(
        (r.status, r.body.as_str()) == (200, "nginx cnn http edition.cnn.test /politics\n"),
        "http://{CNN}/politics: {r:?}"
    );
    gw.wait_for_line(&[
        "\"GET /politics HTTP/",
        "\" 200 ",
        "outbound|80||edition.cnn.test",
        &format!("peer={SLEEP_ID}"),
    ])?;
    // nginx saw the request come from the gateway's egress address.
    cnn.wait_for_requests(1, Duration::from_secs(5))?;
    let log = cnn.access_log();
    ensure!(
        log.starts_with(&format!("{}:", addrs::GATEWAY_EXTERNAL))
            && log.contains("\"GET /politics HTTP/1.1\" 200"),
        "nginx access log: {log}"
    );
    let m = gw.metrics()?;
    ensure!(series(&m, &requests("routed")) == 1, "{m}");
    let m = app.metrics()?;
    ensure!(series(&m, &requests("routed")) == 1, "{m}");

    // Not captured (the proxy's uid): no route to the internet from the app namespace.
    let r = curl_as(
        &topo.app,
        PROXY_UID,
        &connect_fails("http://edition.cnn.test/politics"),
    )?;
    ensure!(
        cannot_connect(&r),
        "the app reached {CNN} without the gateway: {r:?}"
    );
    ensure!(cnn.requests() == 1, "nginx: {}", cnn.access_log());
    Ok(())
}

/// Sample 06 (istio.io "Egress gateway for HTTPS traffic"): the app's own TLS to
/// edition.cnn.test goes through the gateway untouched (a `CONNECT` stream in the tunnel, routed
/// by SNI at the gateway, PASSTHROUGH) and is verified end to end with nginx's CA; the gateway
/// logs a TCP line (`"- - -"`) with the cluster, the SNI and the caller.
#[test]
fn gateway_sample_06_https_passthrough() -> Result<()> {
    let topo = topology("gw06")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLE_06}");
    let (_mesh_ca, gw, app) = mesh(&topo, "gw06", &yaml, &[])?;
    let ca_file = app.files.write("ca.pem", ca.ca_pem())?;

    let r = app.curl(&[
        "--cacert",
        path_str(&ca_file),
        "https://edition.cnn.test/politics",
    ])?;
    ensure!(
        (r.status, r.body.as_str()) == (200, "nginx cnn https edition.cnn.test /politics\n"),
        "https://{CNN}/politics: {r:?}"
    );
    let line = gw.wait_for_line(&[
        "\"- - -\"",
        "outbound|443||edition.cnn.test",
        " edition.cnn.test ",
        &format!("peer={SLEEP_ID}"),
    ])?;
    ensure!(line.contains("203.0.113.10:443"), "{line}");
    // ALPN passes through too (the task's `curl -sI`: HTTP/2).
    let r = app.curl(&[
        "-I",
        "--cacert",
        path_str(&ca_file),
        "https://edition.cnn.test/",
    ])?;
    ensure!(r.body.starts_with("HTTP/2 200"), "curl -I: {r:?}");
    cnn.wait_for_requests(2, Duration::from_secs(5))?;
    let log = cnn.access_log();
    ensure!(
        log.lines().all(|l| l.starts_with("203.0.113.1:")
            && l.contains("sni=edition.cnn.test")
            && l.contains("verify=NONE")),
        "nginx should see the app's own TLS, from the gateway: {log}"
    );
    Ok(())
}

/// Sample 10 (istio.io "Perform TLS origination with an egress gateway"): the app sends plain
/// HTTP; the gateway's leg goes to edition.cnn.test:443 and the DestinationRule's SIMPLE makes
/// the gateway originate TLS (verified against the server's CA). nginx, which redirects plain
/// HTTP like edition.cnn.com does, answers one 200 over TLS.
#[test]
fn gateway_sample_10_tls_origination() -> Result<()> {
    let topo = topology("gw10")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let mut cnn = NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]);
    cnn.extra_server_config =
        "        if ($scheme = http) { return 301 https://$host$request_uri; }\n".into();
    let cnn = Nginx::start(&topo.external, &ca, cnn)?;

    let shared = Files::new("gw10-shared")?;
    let ca_file = shared.write("ca.pem", ca.ca_pem())?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{}", sample_10(&ca_file));
    let (_mesh_ca, gw, app) = mesh(&topo, "gw10", &yaml, &[])?;

    let r = app.curl(&["-i", "http://edition.cnn.test/politics"])?;
    ensure!(r.status == 200, "http://{CNN}/politics: {r:?}");
    ensure!(
        r.body.matches("HTTP/").count() == 1
            && r.body
                .ends_with("nginx cnn https edition.cnn.test /politics\n"),
        "one 200 over HTTPS expected: {r:?}"
    );
    cnn.wait_for_requests(1, Duration::from_secs(5))?;
    let log = cnn.access_log();
    ensure!(
        lines_with(
            &log,
            &[
                "203.0.113.1:",
                "sni=edition.cnn.test",
                "tls=TLSv1.",
                "\"GET /politics HTTP/1.1\" 200"
            ]
        )
        .len()
            == 1,
        "nginx did not get the request over TLS from the gateway: {log}"
    );
    gw.wait_for_line(&[
        "\"GET /politics HTTP/",
        "\" 200 ",
        "outbound|443||edition.cnn.test",
        &format!("peer={SLEEP_ID}"),
    ])?;
    Ok(())
}

/// Sample 11 (istio.io "Perform mutual TLS origination with an egress gateway"): nginx requires
/// a client certificate; the DestinationRule in istio-system originates mutual TLS at the gateway
/// with `credentialName: client-credential` from `--credentials-dir`. Then the same gateway
/// configuration with SIMPLE instead of MUTUAL (a second gateway run): nginx answers 400.
#[test]
fn gateway_sample_11_mutual_tls_origination() -> Result<()> {
    const HOST: &str = "my-nginx.mesh-external.test";
    let topo = topology("gw11")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(HOST, EXT_1)])?;
    let mut nginx =
        NginxConfig::new("my-nginx", IpAddr::V4(EXT_1), &[HOST]).with_client_ca(ca.ca_pem());
    nginx.http_port = None; // like the task's my-nginx: HTTPS (443) only
    let nginx = Nginx::start(&topo.external, &ca, nginx)?;

    let yaml = format!(
        "{GATEWAY_SERVICE}---\n{MY_NGINX_SERVICE}---\n{SAMPLE_11}---\n{SAMPLE_11_ORIGINATE_MTLS}"
    );
    // The sidecar gets the configuration without the istio-system DestinationRule: with it, the
    // sidecar refuses the whole configuration (it tries to read the `client-credential` it says
    // it ignores on sidecars) and exits — see gateway_sample_11_config_is_accepted_by_the_sidecar.
    let sidecar_yaml = format!("{GATEWAY_SERVICE}---\n{MY_NGINX_SERVICE}---\n{SAMPLE_11}");
    let mesh_ca = MeshCa::new("gw11-ca")?;
    let gw_files = Files::new("gw11-gw")?;
    // The secret `client-credential` (tls.crt, tls.key, ca.crt) in the gateway's namespace.
    gw_files.credential(
        "client-credential",
        &ca.issue_client("istio-egressgateway")?,
        ca.ca_pem(),
    )?;
    // Outlives the first gateway's files: the second run's DestinationRule names it.
    let shared = Files::new("gw11-shared")?;
    let ca_file = shared.write("ca.pem", ca.ca_pem())?;
    let gw = Gateway::start(
        &topo.gateway,
        gw_files,
        &mesh_ca,
        &yaml,
        GatewayOptions::default(),
    )?;
    let app = sidecar(
        &topo.app,
        Files::new("gw11-app")?,
        &mesh_ca,
        SLEEP,
        &sidecar_yaml,
        &[],
    )?;

    let r = app.curl(&["http://my-nginx.mesh-external.test/"])?;
    ensure!(
        (r.status, r.body.as_str()) == (200, format!("nginx my-nginx https {HOST} /\n").as_str()),
        "http://{HOST}/: {r:?}"
    );
    nginx.wait_for_requests(1, Duration::from_secs(5))?;
    let log = nginx.access_log();
    ensure!(
        lines_with(
            &log,
            &[
                "203.0.113.1:",
                "sni=my-nginx.mesh-external.test",
                "verify=SUCCESS",
                "CN=istio-egressgateway",
                "\"GET / HTTP/1.1\" 200"
            ]
        )
        .len()
            == 1,
        "nginx access log: {log}"
    );
    gw.wait_for_line(&[
        "\"GET / HTTP/",
        "\" 200 ",
        "outbound|443||my-nginx.mesh-external.test",
        &format!("peer={SLEEP_ID}"),
    ])?;
    drop(gw);

    // Without the client certificate (SIMPLE: verify nginx, present nothing): 400.
    let simple = yaml.replace("mode: MUTUAL", "mode: SIMPLE").replace(
        "credentialName: client-credential # this must match the secret created earlier to hold client certs",
        &format!("caCertificates: {}", ca_file.display()),
    );
    let _gw = Gateway::start(
        &topo.gateway,
        Files::new("gw11-gw-simple")?,
        &mesh_ca,
        &simple,
        GatewayOptions::default(),
    )?;
    let r = app.curl(&["http://my-nginx.mesh-external.test/"])?;
    ensure!(
        r.status == 400 && r.body.contains("No required SSL certificate"),
        "http://{HOST}/ without a client certificate: {r:?}"
    );
    nginx.wait_for_requests(2, Duration::from_secs(5))?;
    let log = nginx.access_log();
    ensure!(
        lines_with(&log, &["verify=NONE", "\" 400 "]).len() == 1,
        "nginx access log: {log}"
    );
    Ok(())
}

/// Sample 11 as applied in the task, the istio-system DestinationRule included, is also what
/// every sidecar sees (a DestinationRule in the root namespace applies mesh-wide). The sidecar
/// must accept it: its MUTUAL/`credentialName` setting is for the gateway (egret's own warning:
/// "egret reads it on gateways, and on sidecars only when the DestinationRule has a
/// workloadSelector") and the sidecar never uses that cluster (port 80 goes to the gateway).
#[test]
fn gateway_sample_11_config_is_accepted_by_the_sidecar() -> Result<()> {
    let topo = topology("gw11sc")?;
    let yaml = format!(
        "{GATEWAY_SERVICE}---\n{MY_NGINX_SERVICE}---\n{SAMPLE_11}---\n{SAMPLE_11_ORIGINATE_MTLS}"
    );
    let mesh_ca = MeshCa::new("gw11sc-ca")?;
    let _app = sidecar(
        &topo.app,
        Files::new("gw11sc-app")?,
        &mesh_ca,
        SLEEP,
        &yaml,
        &[],
    )?;
    Ok(())
}

/// Sample 13 (istio.io "Configure egress gateway traffic to a wildcard host"): the gateway
/// passes `*.wikipedia.test` through and sends every SNI to the single real host
/// `www.wikipedia.test` (resolved at the gateway), whose certificate covers the wildcard.
/// en.wikipedia.test and de.wikipedia.test resolve (for the app) to a decoy that never sees a
/// request.
#[test]
fn gateway_sample_13_wildcard_passthrough() -> Result<()> {
    let topo = topology("gw13")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(
        &topo,
        &[
            ("www.wikipedia.test", EXT_1),
            ("en.wikipedia.test", EXT_2),
            ("de.wikipedia.test", EXT_2),
        ],
    )?;
    let www = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new(
            "wikipedia",
            IpAddr::V4(EXT_1),
            &["www.wikipedia.test", "*.wikipedia.test"],
        ),
    )?;
    let decoy = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new(
            "decoy",
            IpAddr::V4(EXT_2),
            &["en.wikipedia.test", "de.wikipedia.test"],
        ),
    )?;
    let sample = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - \"*.wikipedia.test\"
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-wikipedia
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
    - name: wikipedia
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-wikipedia-through-egress-gateway
spec:
  hosts:
  - \"*.wikipedia.test\"
  gateways:
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - \"*.wikipedia.test\"
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: wikipedia
        port:
          number: 443
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - \"*.wikipedia.test\"
    route:
    - destination:
        host: www.wikipedia.test
        port:
          number: 443
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: www-wikipedia
spec:
  hosts:
  - www.wikipedia.test
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
";
    let yaml = format!("{GATEWAY_SERVICE}---\n{sample}");
    let (_mesh_ca, gw, app) = mesh(&topo, "gw13", &yaml, &[])?;
    let ca_file = app.files.write("ca.pem", ca.ca_pem())?;

    for host in ["en.wikipedia.test", "de.wikipedia.test"] {
        let r = app.curl(&[
            "--cacert",
            path_str(&ca_file),
            &format!("https://{host}/wiki/Main_Page"),
        ])?;
        ensure!(
            (r.status, r.body.as_str())
                == (
                    200,
                    format!("nginx wikipedia https {host} /wiki/Main_Page\n").as_str()
                ),
            "https://{host}/wiki/Main_Page: {r:?}"
        );
        gw.wait_for_line(&[
            "\"- - -\"",
            "outbound|443||www.wikipedia.test",
            &format!(" {host} "),
            &format!("peer={SLEEP_ID}"),
        ])?;
    }
    // Two connections to www.wikipedia.test (the task's `cx_total::2`), none to the decoy.
    www.wait_for_requests(2, Duration::from_secs(5))?;
    ensure!(www.connections() == 2, "{}", www.access_log());
    ensure!(decoy.requests() == 0, "decoy: {}", decoy.access_log());
    Ok(())
}

/// SNI forwarding (issue 4, item 4; Istio's most requested egress feature): a PASSTHROUGH server
/// for `*.wild.test` and a `tls` route whose destination is the wildcard ServiceEntry itself
/// (resolution DYNAMIC_DNS) send each connection to the host its SNI names, resolved by the
/// gateway. a.wild.test and b.wild.test are different servers; the app resolves both to a decoy
/// that must never see a connection.
#[test]
fn gateway_forwards_by_sni_to_any_host() -> Result<()> {
    let topo = topology("gwsni")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[("a.wild.test", EXT_1), ("b.wild.test", EXT_2)])?;
    let a = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("a", IpAddr::V4(EXT_1), &["a.wild.test"]),
    )?;
    let b = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("b", IpAddr::V4(EXT_2), &["b.wild.test"]),
    )?;
    let decoy = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("decoy", IpAddr::V4(EXT_3), &["a.wild.test", "b.wild.test"]),
    )?;
    let sample = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wild
spec:
  hosts: [\"*.wild.test\"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [\"*.wild.test\"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: wild-through-egress-gateway
spec:
  hosts: [\"*.wild.test\"]
  gateways: [mesh, istio-system/istio-egressgateway]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [\"*.wild.test\"]}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port: {number: 443}
  - match: [{gateways: [istio-system/istio-egressgateway], port: 443, sniHosts: [\"*.wild.test\"]}]
    route:
    - destination:
        host: \"*.wild.test\"
        port: {number: 443}
";
    let yaml = format!("{GATEWAY_SERVICE}---\n{sample}");
    let (_mesh_ca, gw, app) = mesh(&topo, "gwsni", &yaml, &[])?;
    let ca_file = app.files.write("ca.pem", ca.ca_pem())?;
    let decoy_ip = EXT_3.to_string();
    for (host, server) in [("a.wild.test", "a"), ("b.wild.test", "b")] {
        let r = app.curl(&[
            "--cacert",
            path_str(&ca_file),
            "--resolve",
            &format!("{host}:443:{decoy_ip}"),
            &format!("https://{host}/x"),
        ])?;
        ensure!(
            (r.status, r.body.as_str())
                == (200, format!("nginx {server} https {host} /x\n").as_str()),
            "https://{host}/x: {r:?}"
        );
        gw.wait_for_line(&[
            "\"- - -\"",
            "outbound|443||*.wild.test",
            &format!(" {host} "),
            &format!("peer={SLEEP_ID}"),
        ])?;
    }
    ensure!(
        a.requests() == 1 && b.requests() == 1,
        "a: {}\nb: {}",
        a.access_log(),
        b.access_log()
    );
    ensure!(decoy.connections() == 0, "decoy: {}", decoy.access_log());
    Ok(())
}

/// Sample 16 (istio/api ServiceEntry docs): `example.test` exported only to its namespace
/// `egress`, a Gateway for `*` in istio-system and a VirtualService (exportTo `*`) with the mesh
/// and gateway legs. The gateway is referenced as `istio-system/istio-egressgateway` (the short
/// name would resolve in the VirtualService's namespace, `egress`, and bind nothing).
///
/// As written, the ServiceEntry is visible only in `egress`: the gateway, in `istio-system`,
/// has no cluster for example.test and answers 503 `NC` — what Istio does too (gateways honour
/// exportTo; istio/istio#47080, #48300). Exported to `istio-system` as well, workloads in
/// `egress` (which sees the ServiceEntry) and in `other` (which sees only the VirtualService)
/// both reach example.test through the gateway, which logs each caller's identity.
#[test]
fn gateway_sample_16_export_to_and_legs() -> Result<()> {
    let topo = topology("gw16")?;
    let _dns = start_dns(&topo, &[("example.test", EXT_1)])?;
    let example = test_server(&topo, "example", sa(EXT_1, 80))?;
    let sample = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-httpbin
  namespace: egress
spec:
  hosts:
  - example.test
  exportTo:
  - \".\"
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
 name: istio-egressgateway
 namespace: istio-system
spec:
 selector:
   istio: egressgateway
 servers:
 - port:
     number: 80
     name: http
     protocol: HTTP
   hosts:
   - \"*\"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: gateway-routing
  namespace: egress
spec:
  hosts:
  - example.test
  exportTo:
  - \"*\"
  gateways:
  - mesh
  - istio-system/istio-egressgateway
  http:
  - match:
    - port: 80
      gateways:
      - mesh
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
  - match:
    - port: 80
      gateways:
      - istio-system/istio-egressgateway
    route:
    - destination:
        host: example.test
";
    let as_written = format!("{GATEWAY_SERVICE}---\n{sample}");
    let mesh_ca = MeshCa::new("gw16-ca")?;
    let gw = Gateway::start(
        &topo.gateway,
        Files::new("gw16-gw")?,
        &mesh_ca,
        &as_written,
        GatewayOptions::default(),
    )?;
    {
        let app = sidecar(
            &topo.app,
            Files::new("gw16-asis")?,
            &mesh_ca,
            ("egress", "sleep"),
            &as_written,
            &[],
        )?;
        let r = app.curl(&["http://example.test/"])?;
        ensure!(r.status == 503, "as written: {r:?}");
        gw.wait_for_line(&["\" 503 NC ", "outbound|80||example.test"])?;
        ensure!(
            example.requests() == 0,
            "example.test reached without a cluster"
        );
    }
    let yaml = as_written.replace(
        "  exportTo:\n  - \".\"\n",
        "  exportTo:\n  - \".\"\n  - istio-system\n",
    );
    ensure!(yaml != as_written, "exportTo not rewritten");
    gw.reconfigure(&yaml)?;
    for (i, ns) in ["egress", "other"].into_iter().enumerate() {
        let app = sidecar(
            &topo.app,
            Files::new(&format!("gw16-{ns}"))?,
            &mesh_ca,
            (ns, "sleep"),
            &yaml,
            &[],
        )?;
        let r = app.curl(&["http://example.test/"])?;
        ensure!(
            (r.status, r.body.as_str()) == (200, "hello from example\n"),
            "http://example.test/ from namespace {ns}: {r:?}"
        );
        gw.wait_for_line(&[
            "\"GET / HTTP/",
            "\" 200 ",
            "outbound|80||example.test",
            &format!("peer=spiffe://cluster.local/ns/{ns}/sa/sleep"),
        ])?;
        ensure!(example.requests() == i as u64 + 1, "example.test requests");
    }
    Ok(())
}

/// Sample 28 (istio/istio testdata "route via egressgateway"): the Gateway (HTTP 80 and a SIMPLE
/// HTTPS 443 with file certificates) and the VirtualService live in `testns`; the mesh leg names
/// the gateway by the short name `istio-egressgateway`, i.e. the Service
/// istio-egressgateway.testns.svc.cluster.local, whose gateway runs in testns with identity
/// `ns/testns/sa/istio-egressgateway-service-account`. The gateway leg sends
/// egressgateway.bookinfo.test to eu.bookinfo.test (a DNS ServiceEntry), resolved at the gateway
/// (not where the app dialed: that address answers too, and never sees a request).
#[test]
fn gateway_sample_28_route_via_gateway() -> Result<()> {
    let topo = topology("gw28")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(
        &topo,
        &[
            ("egressgateway.bookinfo.test", EXT_3),
            ("eu.bookinfo.test", EXT_2),
        ],
    )?;
    let eu = test_server(&topo, "eu", sa(EXT_2, 80))?;
    let decoy = test_server(&topo, "decoy", sa(EXT_3, 80))?;
    let gw_files = Files::new("gw28-gw")?;
    let cert = ca.issue_server(&["egressgateway.bookinfo.test"])?;
    gw_files.write("certs/cert-chain.pem", &cert.cert_pem)?;
    gw_files.write("certs/key.pem", &cert.key_pem)?;
    gw_files.write("certs/root-cert.pem", ca.ca_pem())?;
    let certs = gw_files.path().join("certs");
    let service = GATEWAY_SERVICE
        .replace(
            "istio-egressgateway.istio-system",
            "istio-egressgateway.testns",
        )
        .replace("namespace: istio-system", "namespace: testns");
    let sample = format!(
        "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
  namespace: testns
spec:
  selector:
    # DO NOT CHANGE THESE LABELS
    # The egressgateway is defined in install/kubernetes/helm/istio/values.yaml
    # with these labels
    istio: egressgateway
  servers:
  - port:
      number: 80 #also declared in gateway's deployment files
      name: http
      protocol: HTTP
    hosts:
    - egressgateway.bookinfo.test
    #tls:
    #  httpsRedirect: true # sends 302 redirect for http requests
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - egressgateway.bookinfo.test
    tls:
      # We can reuse the standard Istio certs mounted in the gateway
      mode: SIMPLE #enables HTTPS on this port
      serverCertificate: {certs}/cert-chain.pem
      privateKey: {certs}/key.pem
      caCertificates: {certs}/root-cert.pem
      #mode: MUTUAL # TODO
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: route-via-egressgateway
  namespace: testns
spec:
  hosts:
    - egressgateway.bookinfo.test
  gateways:
  # Pinned to both the sidecars (mesh) and egress gateway
  - istio-egressgateway
  - mesh
  http:
    - match:
      - gateways:
        - mesh # from sidecars, route to egress gateway service
      route:
      - destination:
          host: istio-egressgateway
        weight: 100
    - match:
      - gateways: # from egress gateway, route to actual external service
                  # for testing purposes, we route to service t
        - istio-egressgateway
      route:
      - destination:
          host: eu.bookinfo.test
        weight: 100
",
        certs = certs.display()
    );
    // The external service the gateway leg names. Istio needs it registered (a gateway route
    // to an unknown host has no cluster); the testdata sample, written for config generation,
    // leaves it out.
    let eu_service = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: eu-bookinfo
  namespace: testns
spec:
  hosts:
  - eu.bookinfo.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
";
    let yaml = format!("{service}---\n{eu_service}---\n{sample}");
    let mesh_ca = MeshCa::new("gw28-ca")?;
    let gw = Gateway::start(
        &topo.gateway,
        gw_files,
        &mesh_ca,
        &yaml,
        GatewayOptions {
            namespace: "testns",
            ..GatewayOptions::default()
        },
    )?;
    let app = sidecar(
        &topo.app,
        Files::new("gw28-app")?,
        &mesh_ca,
        SLEEP,
        &yaml,
        &[],
    )?;

    let r = app.curl(&["http://egressgateway.bookinfo.test/productpage"])?;
    ensure!(
        (r.status, r.body.as_str()) == (200, "hello from eu\n"),
        "http://egressgateway.bookinfo.test/productpage: {r:?}"
    );
    gw.wait_for_line(&[
        "\"GET /productpage HTTP/",
        "\" 200 ",
        "outbound|80||eu.bookinfo.test",
        &format!("peer={SLEEP_ID}"),
    ])?;
    ensure!(
        (eu.requests(), decoy.requests()) == (1, 0),
        "eu {} decoy {}",
        eu.requests(),
        decoy.requests()
    );
    let m = app.metrics()?;
    ensure!(series(&m, &requests("routed")) == 1, "{m}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Enforcement: the gateway is the only way out, and only for the mesh
// ---------------------------------------------------------------------------------------------

/// Without the capture rules (`egret iptables clean`) or as the proxy's uid (never captured),
/// the app cannot connect to the internet at all; with the rules its requests leave through the
/// gateway. Only the captured requests ever reach the server.
#[test]
fn gateway_bypass_is_impossible() -> Result<()> {
    let topo = topology("gwbypass")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLE_05}");
    let (_mesh_ca, _gw, app) = mesh(&topo, "gwbypass", &yaml, &[])?;
    let egret = egret_bin();
    let ok =
        |r: &Reply| (r.status, r.body.as_str()) == (200, "nginx cnn http edition.cnn.test /\n");

    let r = app.curl(&["http://edition.cnn.test/"])?;
    ensure!(ok(&r), "captured: {r:?}");

    // uid 1337 (never captured): HTTP and HTTPS cannot connect.
    for url in ["http://edition.cnn.test/", "https://edition.cnn.test/"] {
        let r = curl_as(&topo.app, PROXY_UID, &connect_fails(url))?;
        ensure!(cannot_connect(&r), "uid {PROXY_UID} {url}: {r:?}");
    }

    // Rules removed: root is not captured any more, and has no route either.
    topo.app
        .exec_ok(path_str(&egret), &["iptables", "clean"])
        .context("egret iptables clean")?;
    let r = app.curl(&connect_fails("http://edition.cnn.test/"))?;
    ensure!(cannot_connect(&r), "root without capture rules: {r:?}");
    let r = topo.app.connect_tcp(sa(EXT_1, 80), Duration::from_secs(3));
    ensure!(r.is_err(), "raw TCP connect to {EXT_1}:80 succeeded");

    // Rules back: through the gateway again.
    topo.app
        .exec_ok(
            path_str(&egret),
            &["iptables", "apply", "--proxy-uid", "1337"],
        )
        .context("egret iptables apply")?;
    let r = app.curl(&["http://edition.cnn.test/"])?;
    ensure!(ok(&r), "captured again: {r:?}");
    cnn.wait_for_requests(2, Duration::from_secs(5))?;
    ensure!(
        cnn.requests() == 2
            && cnn
                .access_log()
                .lines()
                .all(|l| l.starts_with("203.0.113.1:")),
        "only the two captured requests, from the gateway: {}",
        cnn.access_log()
    );
    Ok(())
}

/// Clients that are not the mesh tunnel are refused by the gateway, each with its reason in the
/// gateway's log, and none of them reaches nginx — from the app namespace as uid 1337 (not
/// captured), straight at 198.51.100.2:
///
/// - with curl (which cannot offer the tunnel's ALPN): plain HTTP; TLS without a client
///   certificate; with a certificate from another CA; with an expired certificate; even with
///   the app's valid SVID — all `not_mesh_tunnel`;
/// - with `openssl s_client -alpn egret-tunnel`: no client certificate (`peer_cert_missing`),
///   another CA (`untrusted_issuer`), expired (`cert_expired`); the app's valid SVID completes
///   the handshake (the control).
#[test]
fn gateway_refuses_bad_clients() -> Result<()> {
    let topo = topology("gwbad")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLES_05_06}");
    let (mesh_ca, gw, app) = mesh(&topo, "gwbad", &yaml, &[])?;

    // The control: the mesh (captured root curl) gets through.
    let r = app.curl(&["http://edition.cnn.test/politics"])?;
    ensure!(r.status == 200, "through the sidecar: {r:?}");
    cnn.wait_for_requests(1, Duration::from_secs(5))?;

    let valid = app.files.path().join("identity");
    let roots = valid.join("root-cert.pem");
    // Another CA's SVID with the very same SPIFFE id.
    let other_ca = MeshCa::new("gwbad-other-ca")?;
    let foreign = other_ca.issue_dir("foreign", SLEEP, "24h")?;
    // An SVID from the mesh CA that has expired.
    let expired = mesh_ca.issue_dir("expired", SLEEP, "1s")?;
    std::thread::sleep(Duration::from_millis(2500));

    let gateway = addrs::GATEWAY;
    let http = format!("{CNN}:80:{gateway}");
    let https = format!("{CNN}:443:{gateway}");
    let url_http = "http://edition.cnn.test/politics";
    let url_https = "https://edition.cnn.test/politics";
    let cert_args = |dir: &Path| -> Vec<String> {
        vec![
            "--cert".into(),
            dir.join("cert-chain.pem").display().to_string(),
            "--key".into(),
            dir.join("key.pem").display().to_string(),
        ]
    };
    let mut curl_cases: Vec<(&str, Vec<String>)> = vec![
        (
            "plain HTTP",
            vec!["--resolve".into(), http.clone(), url_http.into()],
        ),
        (
            "TLS without a client certificate",
            vec![
                "-k".into(),
                "--resolve".into(),
                https.clone(),
                url_https.into(),
            ],
        ),
    ];
    for (what, dir) in [
        ("a certificate from another CA", &foreign),
        ("an expired certificate", &expired),
        ("the app's valid SVID (but not the tunnel)", &valid),
    ] {
        let mut args = vec!["-k".into(), "--resolve".into(), https.clone()];
        args.extend(cert_args(dir));
        args.push(url_https.into());
        curl_cases.push((what, args));
    }
    for (what, args) in &curl_cases {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let r = curl_as(&topo.app, PROXY_UID, &args)?;
        ensure!(
            r.status == 0 && r.exit != Some(0),
            "{what}: the gateway answered: {r:?}"
        );
    }
    let refused = wait_until(
        "every curl refusal in the gateway log",
        Duration::from_secs(5),
        || {
            let log = gw.log();
            let n = lines_with(&log, &["not_mesh_tunnel", "198.51.100.1:"]).len();
            Ok((n >= curl_cases.len()).then_some(n))
        },
    )
    .with_context(|| format!("gateway log:\n{}", gw.log()))?;
    ensure!(refused == curl_cases.len(), "gateway log:\n{}", gw.log());

    // With the tunnel's ALPN: the handshake itself decides.
    let target = SocketAddr::new(IpAddr::V4(gateway), 443);
    let out = tunnel_handshake(&topo.app, target, &roots, Some(&valid))?;
    ensure!(
        out.stdout.contains("ALPN protocol: egret-tunnel"),
        "the app's valid SVID should complete the tunnel handshake: {out:?}"
    );
    for (what, dir, reason) in [
        ("no client certificate", None, "peer_cert_missing"),
        (
            "a certificate from another CA",
            Some(foreign.as_path()),
            "untrusted_issuer",
        ),
        (
            "an expired certificate",
            Some(expired.as_path()),
            "cert_expired",
        ),
    ] {
        let out = tunnel_handshake(&topo.app, target, &roots, dir)?;
        ensure!(out.stdout.contains("CONNECTED"), "{what}: {out:?}");
        gw.wait_for_line(&["mesh tunnel refused", reason, "198.51.100.1:"])
            .with_context(|| format!("{what}: s_client said {out:?}"))?;
    }

    let m = gw.metrics()?;
    ensure!(
        series(&m, &connections("refused_not_mesh", "tcp")) == curl_cases.len() as u64,
        "{m}"
    );
    ensure!(
        series(&m, &connections("refused_mesh_tls", "tls")) == 3,
        "{m}"
    );
    ensure!(series(&m, &requests("routed")) == 1, "{m}");
    // Only the sidecar's request ever reached nginx.
    std::thread::sleep(Duration::from_millis(300));
    ensure!(cnn.requests() == 1, "nginx: {}", cnn.access_log());
    Ok(())
}

/// The sidecar accepts only the gateway identity it expects
/// (`istio-egressgateway-service-account` in istio-system, from the gateway Service): a
/// "gateway" at the right address with another valid SVID of the mesh is refused during the
/// handshake (`unexpected_identity`), nothing is sent in plaintext instead, and nothing reaches
/// the server.
#[test]
fn gateway_with_another_identity_is_refused_by_the_sidecar() -> Result<()> {
    let topo = topology("gwimpostor")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLES_05_06}");
    let mesh_ca = MeshCa::new("gwimpostor-ca")?;
    let gw = Gateway::start(
        &topo.gateway,
        Files::new("gwimpostor-gw")?,
        &mesh_ca,
        &yaml,
        GatewayOptions {
            service_account: "impostor",
            ..GatewayOptions::default()
        },
    )?;
    let app = sidecar(
        &topo.app,
        Files::new("gwimpostor-app")?,
        &mesh_ca,
        SLEEP,
        &yaml,
        &[],
    )?;
    let ca_file = app.files.write("ca.pem", ca.ca_pem())?;

    let r = app.curl(&["http://edition.cnn.test/politics"])?;
    ensure!(
        r.status == 503,
        "HTTP through a gateway with the wrong identity: {r:?}"
    );
    let r = app.curl(&["--cacert", path_str(&ca_file), "https://edition.cnn.test/"])?;
    ensure!(
        r.status == 0 && r.exit != Some(0),
        "TLS through a gateway with the wrong identity: {r:?}"
    );
    wait_until(
        "unexpected_identity in the sidecar log",
        Duration::from_secs(5),
        || Ok(app.log().contains("unexpected_identity").then_some(())),
    )
    .with_context(|| format!("sidecar log:\n{}", app.log()))?;
    let m = gw.metrics()?;
    ensure!(series(&m, &requests("routed")) == 0, "{m}");
    ensure!(cnn.requests() == 0, "nginx: {}", cnn.access_log());
    Ok(())
}

/// SNI spoofing: the app dials an attacker's address (203.0.113.12, serving a valid certificate
/// for allowed.test from the same CA) with SNI allowed.test. The gateway resolves allowed.test
/// itself, so the answer comes from the real allowed.test and the attacker sees nothing. TLS
/// without SNI (an IP URL) is refused.
#[test]
fn gateway_sni_spoofing_goes_to_the_real_host() -> Result<()> {
    const HOST: &str = "allowed.test";
    let topo = topology("gwspoof")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(HOST, EXT_1)])?;
    let allowed = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("allowed", IpAddr::V4(EXT_1), &[HOST]),
    )?;
    let attacker = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("attacker", IpAddr::V4(EXT_3), &[HOST]),
    )?;
    let yaml = format!(
        "{GATEWAY_SERVICE}---\n{}",
        SAMPLE_06.replace(CNN, HOST).replace("cnn", "allowed")
    );
    let files = Files::new("gwspoof-app")?;
    let mesh_file = files.write("mesh.yaml", REGISTRY_ONLY)?;
    let (_mesh_ca, gw, app) = mesh(
        &topo,
        "gwspoof",
        &yaml,
        &["--mesh-config", path_str(&mesh_file)],
    )?;
    let ca_file = files.write("ca.pem", ca.ca_pem())?;
    let ca_path = path_str(&ca_file);

    let spoof = format!("{HOST}:443:{EXT_3}");
    let r = app.curl(&[
        "-i",
        "--cacert",
        ca_path,
        "--resolve",
        &spoof,
        "https://allowed.test/",
    ])?;
    ensure!(
        r.status == 200
            && r.body.contains("x-served-by: allowed")
            && r.body.ends_with("nginx allowed https allowed.test /\n"),
        "https://{HOST}/ dialed at {EXT_3}: {r:?}"
    );
    let line = gw.wait_for_line(&["\"- - -\"", "outbound|443||allowed.test", " allowed.test "])?;
    ensure!(
        line.contains("203.0.113.10:443") && !line.contains("203.0.113.12:443"),
        "{line}"
    );

    // No SNI at all: refused (the sidecar has no route for it under REGISTRY_ONLY; nothing
    // reaches the gateway or the server).
    let r = app.curl(&["-k", "https://203.0.113.10/"])?;
    ensure!(
        r.exit == Some(35) && r.status == 0,
        "https://{EXT_1}/: {r:?}"
    );

    std::thread::sleep(Duration::from_millis(300));
    ensure!(allowed.requests() == 1, "allowed: {}", allowed.access_log());
    ensure!(
        attacker.requests() == 0,
        "attacker: {}",
        attacker.access_log()
    );
    ensure!(
        lines_with(&gw.log(), &["\"- - -\""]).len() == 1,
        "gateway log:\n{}",
        gw.log()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Upstream reuse, rotation, several gateways, drain
// ---------------------------------------------------------------------------------------------

/// 1,000 HTTP requests from two workloads (default/sleep in app, team-b/curl in a second
/// workload namespace; 500 each, concurrently, each a curl run with URL globbing) through the
/// gateway with TLS origination (sample 10): all succeed, and the gateway shares a handful of
/// upstream TLS connections among all callers.
#[test]
fn gateway_reuses_upstream_connections_across_workloads() -> Result<()> {
    const PER_WORKLOAD: usize = 500;
    let topo = topology("gwreuse")?;
    let app2 = topo.add_workload("gwreuse")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let shared = Files::new("gwreuse-shared")?;
    let ca_file = shared.write("ca.pem", ca.ca_pem())?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{}", sample_10(&ca_file));
    let (mesh_ca, gw, _app) = mesh(&topo, "gwreuse", &yaml, &[])?;
    let _app2 = sidecar(
        &app2,
        Files::new("gwreuse-app2")?,
        &mesh_ca,
        ("team-b", "curl"),
        &yaml,
        &[],
    )?;

    let run = |ns: &Netns, who: &str| -> Result<usize> {
        let mut cmd = ns.command("curl")?;
        cmd.args([
            "-sS",
            "--connect-timeout",
            "5",
            "--max-time",
            "20",
            "-w",
            "#status=%{http_code}\n",
            &format!("http://edition.cnn.test/politics?{who}=[1-{PER_WORKLOAD}]"),
        ]);
        let out = run_command(&mut cmd, Duration::from_secs(240))?;
        ensure!(out.success(), "{who}: curl {:?} {}", out.code, out.stderr);
        Ok(out.stdout.lines().filter(|l| *l == "#status=200").count())
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&topo.app, "sleep"));
        let b = s.spawn(|| run(&app2, "curl"));
        (a.join(), b.join())
    });
    let a = a.map_err(|_| anyhow::anyhow!("curl thread panicked"))??;
    let b = b.map_err(|_| anyhow::anyhow!("curl thread panicked"))??;
    ensure!(
        (a, b) == (PER_WORKLOAD, PER_WORKLOAD),
        "200s: sleep {a}, curl {b} of {PER_WORKLOAD} each"
    );
    cnn.wait_for_requests(2 * PER_WORKLOAD, Duration::from_secs(10))?;
    let log = cnn.access_log();
    ensure!(
        lines_with(&log, &["203.0.113.1:", "tls=TLSv1.", "\" 200 "]).len() == 2 * PER_WORKLOAD,
        "nginx should have 1000 TLS requests from the gateway"
    );
    let upstream = cnn.connections();
    ensure!(
        upstream <= 8,
        "{upstream} upstream TLS connections for 1000 requests"
    );
    let m = gw.metrics()?;
    ensure!(
        series(&m, &requests("routed")) == 2 * PER_WORKLOAD as u64,
        "{m}"
    );
    let log = gw.log();
    for id in [SLEEP_ID, "spiffe://cluster.local/ns/team-b/sa/curl"] {
        ensure!(
            lines_with(&log, &[&format!("peer={id}")]).len() == PER_WORKLOAD,
            "{PER_WORKLOAD} access-log lines for {id} expected"
        );
    }
    Ok(())
}

/// Rotation: while HTTP requests and the app's own TLS flow through the tunnel in a loop (and
/// one slow request stays open throughout), the app's and the gateway's SVIDs are re-issued
/// four times, each valid for 12 s only. No request fails and the slow one completes; both
/// proxies log each reload. After the first certificates have expired, a restarted gateway
/// (new tunnel handshakes, both sides) still serves the app: the rotated certificates are in
/// use.
#[test]
fn gateway_identity_rotation_drops_nothing() -> Result<()> {
    const TTL: &str = "12s";
    let topo = topology("gwrotate")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    ensure!(
        cnn.has_echo_module(),
        "nginx without the echo module (/delay): install nginx-light"
    );
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLES_05_06}");
    let mesh_ca = MeshCa::new("gwrotate-ca")?;
    let mut gw = Gateway::start(
        &topo.gateway,
        Files::new("gwrotate-gw")?,
        &mesh_ca,
        &yaml,
        GatewayOptions::default(),
    )?;
    let app = sidecar(
        &topo.app,
        Files::new("gwrotate-app")?,
        &mesh_ca,
        SLEEP,
        &yaml,
        &[],
    )?;
    // From now on every certificate is short-lived.
    let first_issued = Instant::now();
    mesh_ca.issue(GATEWAY_ID, &gw.identity_dir(), TTL)?;
    let app_identity = app.files.path().join("identity");
    mesh_ca.issue(SLEEP, &app_identity, TTL)?;
    let ca_file = app.files.write("ca.pem", ca.ca_pem())?;
    let reloads = |log: &str| lines_with(log, &["identity reloaded"]).len();
    // Both have picked up the short-lived certificates before the traffic starts.
    wait_until("the short-lived identities", Duration::from_secs(5), || {
        Ok((reloads(&gw.log()) >= 1 && reloads(&app.log()) >= 1).then_some(()))
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (slow, rotated) = std::thread::scope(|s| -> Result<_> {
        let slow = s.spawn(|| app.curl(&["http://edition.cnn.test/delay/9"]));
        let looper = s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r = if i.is_multiple_of(2) {
                    app.curl(&["http://edition.cnn.test/politics"])
                } else {
                    app.curl(&["--cacert", path_str(&ca_file), "https://edition.cnn.test/"])
                };
                match r {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("{other:?}"));
                        }
                    }
                }
            }
        });
        let mut rotated = Ok(());
        for round in 1..=4usize {
            std::thread::sleep(Duration::from_secs(2));
            let step = mesh_ca
                .issue(SLEEP, &app_identity, TTL)
                .and_then(|_| mesh_ca.issue(GATEWAY_ID, &gw.identity_dir(), TTL))
                .and_then(|_| {
                    wait_until(
                        &format!("reload {round} in both proxies"),
                        Duration::from_secs(5),
                        || {
                            Ok((reloads(&gw.log()) > round && reloads(&app.log()) > round)
                                .then_some(()))
                        },
                    )
                });
            if step.is_err() {
                rotated = step;
                break;
            }
        }
        let slow = slow.join();
        stop.store(true, Ordering::Relaxed);
        let _ = looper.join();
        Ok((slow, rotated))
    })?;
    rotated?;
    let slow = slow.map_err(|_| anyhow::anyhow!("slow curl panicked"))??;
    ensure!(
        (slow.status, slow.body.as_str()) == (200, "delayed 9\n"),
        "the request open during all rotations: {slow:?}"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    ensure!(
        failed == 0,
        "{failed} of {} requests failed during rotation: {:?}",
        ok + failed,
        failures.lock().map(|f| f.clone()).unwrap_or_default()
    );
    ensure!(ok >= 20, "only {ok} requests ran during the rotations");

    // The first certificates have expired by now; new handshakes on both sides must use the
    // rotated ones.
    let since = first_issued.elapsed();
    if since < Duration::from_secs(13) {
        std::thread::sleep(Duration::from_secs(13) - since);
    }
    gw.restart()?;
    let r = app.curl(&["http://edition.cnn.test/politics"])?;
    ensure!(r.status == 200, "after the gateway restart: {r:?}");
    ensure!(
        !gw.log().contains("cert_expired"),
        "a handshake used an expired certificate:\n{}",
        gw.log()
    );
    Ok(())
}

/// Two gateways, each the only way to its own network: `public.test` (203.0.113.10) is routed
/// through istio-egressgateway (istio=egressgateway, in `gateway`) and `private.test`
/// (192.0.2.10, reachable only from the second gateway's namespace) through
/// istio-privategateway (istio=privategateway, its own identity
/// `istio-privategateway-service-account`). Each gateway serves only its own Gateway's host and
/// refuses to resolve into the other's network (`--deny-cidrs`).
#[test]
fn gateway_two_gateways_by_selector() -> Result<()> {
    let topo = topology("gwtwo")?;
    let second = topo.add_gateway("gwtwo")?;
    let _dns = start_dns(
        &topo,
        &[
            ("public.test", EXT_1),
            ("private.test", addrs::SECOND_EXTERNAL),
        ],
    )?;
    let public = test_server(&topo, "public", sa(EXT_1, 80))?;
    let private = egret_testkit::InProcessServer::start(
        Some(&second.external),
        egret_testkit::TestServerConfig::new("private").plain(sa(addrs::SECOND_EXTERNAL, 80)),
    )?;
    let private_service = GATEWAY_SERVICE
        .replace("istio-egressgateway", "istio-privategateway")
        .replace("198.51.100.2", &addrs::SECOND_GATEWAY.to_string())
        .replace("istio: egressgateway", "istio: privategateway");
    let route = |host: &str, gateway: &str, selector: &str| {
        format!(
            "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {host}
spec:
  hosts:
  - {host}
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {gateway}
  namespace: istio-system
spec:
  selector:
    istio: {selector}
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - {host}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {host}-through-{gateway}
spec:
  hosts:
  - {host}
  gateways:
  - istio-system/{gateway}
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: {gateway}.istio-system.svc.cluster.local
        port:
          number: 80
  - match:
    - gateways:
      - istio-system/{gateway}
      port: 80
    route:
    - destination:
        host: {host}
        port:
          number: 80
"
        )
    };
    let yaml = format!(
        "{GATEWAY_SERVICE}---\n{private_service}---\n{}---\n{}",
        route("public.test", "istio-egressgateway", "egressgateway"),
        route("private.test", "istio-privategateway", "privategateway"),
    );
    let mesh_ca = MeshCa::new("gwtwo-ca")?;
    let gw_public = Gateway::start(
        &topo.gateway,
        Files::new("gwtwo-public")?,
        &mesh_ca,
        &yaml,
        GatewayOptions {
            extra: &["--deny-cidrs", addrs::SECOND_INTERNET_CIDR],
            ..GatewayOptions::default()
        },
    )?;
    let gw_private = Gateway::start(
        &second.gateway,
        Files::new("gwtwo-private")?,
        &mesh_ca,
        &yaml,
        GatewayOptions {
            service_account: "istio-privategateway-service-account",
            labels: "istio=privategateway",
            extra: &["--deny-cidrs", addrs::INTERNET_CIDR],
            ..GatewayOptions::default()
        },
    )?;
    let app = sidecar(
        &topo.app,
        Files::new("gwtwo-app")?,
        &mesh_ca,
        SLEEP,
        &yaml,
        &[],
    )?;

    for _ in 0..2 {
        let r = app.curl(&["http://public.test/"])?;
        ensure!(
            (r.status, r.body.as_str()) == (200, "hello from public\n"),
            "http://public.test/: {r:?}"
        );
        let r = app.curl(&["http://private.test/"])?;
        ensure!(
            (r.status, r.body.as_str()) == (200, "hello from private\n"),
            "http://private.test/: {r:?}"
        );
    }
    gw_public.wait_for_line(&["outbound|80||public.test", &format!("peer={SLEEP_ID}")])?;
    gw_private.wait_for_line(&["outbound|80||private.test", &format!("peer={SLEEP_ID}")])?;
    ensure!(
        lines_with(&gw_public.log(), &["access:", "private.test"]).is_empty(),
        "the public gateway saw private.test:\n{}",
        gw_public.log()
    );
    ensure!(
        lines_with(&gw_private.log(), &["access:", "public.test"]).is_empty(),
        "the private gateway saw public.test:\n{}",
        gw_private.log()
    );
    ensure!(
        (public.requests(), private.requests()) == (2, 2),
        "public {} private {}",
        public.requests(),
        private.requests()
    );
    for (gw, n) in [(&gw_public, 2), (&gw_private, 2)] {
        let m = gw.metrics()?;
        ensure!(series(&m, &requests("routed")) == n, "{m}");
    }
    Ok(())
}

/// Drain: SIGTERM to the gateway while a slow request (`/delay/2` on egret's test server) is in
/// flight through it — the request completes with its 200 and the gateway exits 0 after it.
#[test]
fn gateway_drains_in_flight_requests_on_sigterm() -> Result<()> {
    let topo = topology("gwdrain")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = test_server(&topo, "cnn", sa(EXT_1, 80))?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{SAMPLE_05}");
    let mesh_ca = MeshCa::new("gwdrain-ca")?;
    let mut gw = Gateway::start(
        &topo.gateway,
        Files::new("gwdrain-gw")?,
        &mesh_ca,
        &yaml,
        GatewayOptions {
            drain_seconds: 5,
            ..GatewayOptions::default()
        },
    )?;
    let app = sidecar(
        &topo.app,
        Files::new("gwdrain-app")?,
        &mesh_ca,
        SLEEP,
        &yaml,
        &[],
    )?;

    let (reply, status, stopped_after) = std::thread::scope(|s| -> Result<_> {
        let slow = s.spawn(|| app.curl(&["http://edition.cnn.test/delay/2"]));
        // In flight: the server has the request.
        wait_until(
            "the slow request at the server",
            Duration::from_secs(5),
            || Ok((cnn.requests() == 1).then_some(())),
        )?;
        let t = Instant::now();
        let status = gw.process.stop_with(Duration::from_secs(10));
        let stopped_after = t.elapsed();
        let reply = slow.join().map_err(|_| anyhow::anyhow!("curl panicked"))?;
        Ok((reply, status, stopped_after))
    })?;
    let reply = reply?;
    ensure!(
        (reply.status, reply.body.as_str()) == (200, "delayed 2\n"),
        "the in-flight request: {reply:?}"
    );
    ensure!(
        status.is_some_and(|s| s.success()),
        "gateway exit status {status:?} after {stopped_after:?}; log:\n{}",
        gw.log()
    );
    ensure!(
        stopped_after >= Duration::from_millis(1000) && stopped_after < Duration::from_secs(6),
        "the gateway exited {stopped_after:?} after SIGTERM (the request needed about 2 s)"
    );
    ensure!(gw.log().contains("draining"), "{}", gw.log());
    Ok(())
}
