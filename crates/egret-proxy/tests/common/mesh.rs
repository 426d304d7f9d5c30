//! The mesh pieces the tunnel and telemetry tests share: a mesh CA with the sidecar's and the
//! gateway's identities, an external test server, and samples 05 + 06 (HTTP and TLS through the
//! egress gateway) plus a TCP server, hosts adapted.

use std::path::PathBuf;
use std::time::Duration;

use egret_identity::Ca;
use egret_testkit::ca::TestCa;
use egret_testkit::server::{InProcessServer, TestServerConfig};

use super::temp_dir;

pub const LABELS: &[(&str, &str)] = &[("istio", "egressgateway")];
pub const GW_SA: &str = "istio-egressgateway-service-account";

/// A mesh CA with identities for the sidecar (default/sleep) and the gateway.
pub struct Mesh {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl Mesh {
    pub fn new() -> Mesh {
        let dir = temp_dir("mesh-ca");
        let ca = Ca::init(dir.join("ca"), "cluster.local").unwrap();
        Mesh { dir, ca }
    }

    pub fn issue(&self, name: &str, ns: &str, sa: &str) -> PathBuf {
        let out = self.dir.join(name);
        self.ca
            .issue(ns, sa, Duration::from_secs(3600))
            .unwrap()
            .write(&out)
            .unwrap();
        out
    }

    pub fn sidecar(&self) -> PathBuf {
        self.issue("sleep", "default", "sleep")
    }

    pub fn gateway(&self) -> PathBuf {
        self.issue("gateway", "istio-system", GW_SA)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn external(name: &str, ca: &TestCa) -> InProcessServer {
    InProcessServer::start(
        None,
        TestServerConfig::new(name)
            .plain("127.0.0.1:0".parse().unwrap())
            .tls(
                "127.0.0.1:0".parse().unwrap(),
                ca.issue_server(&["cnn.test"]).unwrap(),
            ),
    )
    .unwrap()
}

/// Sample 05 + 06 (HTTP and TLS passthrough through the gateway) plus a TCP server, hosts
/// adapted. `gw` = the gateway's listening ports for 80, 443 and 3306 (the Service endpoint
/// the sidecar dials); `gw_sa` = the endpoint's serviceAccount, if any.
pub fn config(ext: &InProcessServer, gw: [u16; 3], gw_sa: Option<&str>) -> String {
    let sa = gw_sa
        .map(|s| format!(", serviceAccount: {s}"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS}}
  - {{number: 3306, name: tcp, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}, tls: {}, tcp: {}}}, labels: {{istio: egressgateway}}{sa}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS}}
  - {{number: 3306, name: tcp, protocol: TCP}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {plain}, tls: {tls}, tcp: {plain}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [cnn.test]
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [cnn.test]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 3306, name: tcp, protocol: TCP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [cnn.test]
  gateways: [istio-system/istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}}}]
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 80}}]
    route: [{{destination: {{host: cnn.test, port: {{number: 80}}}}}}]
    headers: {{request: {{add: {{x-egress-test: handled-by-egress-gateway}}}}}}
  tls:
  - match: [{{gateways: [mesh], port: 443, sniHosts: [cnn.test]}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 443}}}}}}]
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 443, sniHosts: [cnn.test]}}]
    route: [{{destination: {{host: cnn.test, port: {{number: 443}}}}}}]
  tcp:
  - match: [{{gateways: [mesh], port: 3306}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 3306}}}}}}]
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 3306}}]
    route: [{{destination: {{host: cnn.test, port: {{number: 3306}}}}}}]
",
        gw[0],
        gw[1],
        gw[2],
        plain = ext.plain_addrs()[0].port(),
        tls = ext.tls_addrs()[0].port(),
    )
}
