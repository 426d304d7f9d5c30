//! One negative test per cross-object analysis rule, each asserting the exact diagnostic
//! (file, line, object, field, message).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use egret_config::ConfigSet;

/// Diagnostics from `egret_model::check` (validation + analysis), rendered.
fn check(yaml: &str) -> Vec<String> {
    let (set, load) = ConfigSet::from_str("t.yaml", yaml);
    assert!(!load.has_errors(), "{load:?}");
    egret_model::check(&set)
        .iter()
        .map(|d| d.to_string())
        .collect()
}

fn assert_has(diags: &[String], want: &str) {
    assert!(
        diags.iter().any(|d| d == want),
        "missing diagnostic:\n  {want}\ngot:\n  {}",
        diags.join("\n  ")
    );
}

const SE_HTTP: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
spec:
  hosts: [api.example.test]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: DNS
";

#[test]
fn virtual_service_naming_an_unknown_gateway() {
    let yaml = format!(
        "{SE_HTTP}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress
  namespace: istio-system
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.example.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
spec:
  hosts: [api.example.test]
  gateways:
  - mesh
  - egress
  http:
  - route:
    - destination: {{host: api.example.test}}
"
    );
    let d = check(&yaml);
    assert_has(
        &d,
        "t.yaml:30: warning: VirtualService default/vs: spec.gateways[1]: gateway \"default/egress\" not found: these routes bind to no gateway; did you mean \"istio-system/egress\"?",
    );
}

#[test]
fn virtual_service_routing_to_an_unknown_host() {
    let yaml = format!(
        "{SE_HTTP}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
spec:
  hosts: [api.example.test]
  http:
  - route:
    - destination:
        host: nowhere.example.test
"
    );
    let d = check(&yaml);
    assert_has(
        &d,
        "t.yaml:20: warning: VirtualService default/vs: spec.http[0].route[0].destination.host: host \"nowhere.example.test\" is not declared by any ServiceEntry: egret has no endpoints for it and requests routed there fail with 503",
    );
}

#[test]
fn short_destination_host_is_expanded_before_lookup() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
  namespace: prod
spec:
  hosts: [api.example.test]
  http:
  - route:
    - destination:
        host: reviews
";
    let d = check(yaml);
    assert_has(
        &d,
        "t.yaml:11: warning: VirtualService prod/vs: spec.http[0].route[0].destination.host: host \"reviews.prod.svc.cluster.local\" is not declared by any ServiceEntry: egret has no endpoints for it and requests routed there fail with 503",
    );
}

#[test]
fn destination_rule_subset_that_does_not_exist() {
    let yaml = format!(
        "{SE_HTTP}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: dr
spec:
  host: api.example.test
  subsets:
  - name: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
spec:
  hosts: [api.example.test]
  http:
  - route:
    - destination:
        host: api.example.test
        subset: v2
"
    );
    let d = check(&yaml);
    assert_has(
        &d,
        "t.yaml:30: error: VirtualService default/vs: spec.http[0].route[0].destination.subset: subset \"v2\" of host \"api.example.test\" is not defined by any DestinationRule",
    );
    // The subset that exists raises nothing.
    let ok = yaml.replace("subset: v2", "subset: v1");
    assert!(
        check(&ok).iter().all(|d| !d.contains("subset")),
        "{:?}",
        check(&ok)
    );
}

#[test]
fn a_host_declared_by_two_service_entries_with_conflicting_ports() {
    let yaml = format!(
        "{SE_HTTP}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api-tcp
  namespace: other
spec:
  hosts: [api.example.test]
  addresses: [203.0.113.7]
  ports:
  - {{number: 80, name: tcp, protocol: TCP}}
  - {{number: 8080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - address: 203.0.113.7
"
    );
    let d = check(&yaml);
    assert_has(
        &d,
        "t.yaml:20: warning: ServiceEntry other/api-tcp: spec.ports[0]: host \"api.example.test\" port 80 is TCP here but HTTP in ServiceEntry default/api",
    );
    assert_has(
        &d,
        "t.yaml:21: warning: ServiceEntry other/api-tcp: spec.ports[1]: host \"api.example.test\" port name \"http\" is port 8080 here but port 80 in ServiceEntry default/api",
    );
}

const GATEWAY_MUTUAL_80: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: https, protocol: HTTPS}
    hosts: [api.example.test]
    tls: {mode: ISTIO_MUTUAL}
";

#[test]
fn istio_mutual_towards_the_gateway_without_a_matching_server() {
    let yaml = format!(
        "{GATEWAY_MUTUAL_80}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: to-gateway
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: api
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls:
          mode: ISTIO_MUTUAL
          sni: other.example.test
      - port: {{number: 443}}
        tls:
          mode: ISTIO_MUTUAL
          sni: api.example.test
"
    );
    let d = check(&yaml);
    // Right port, wrong SNI.
    assert_has(
        &d,
        "t.yaml:24: warning: DestinationRule default/to-gateway: spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.mode: ISTIO_MUTUAL on port 80, but no Gateway server on port 80 terminates ISTIO_MUTUAL for SNI \"other.example.test\": the egress gateway will refuse these connections",
    );
    // Right SNI, no server on the port.
    assert_has(
        &d,
        "t.yaml:28: warning: DestinationRule default/to-gateway: spec.subsets[0].trafficPolicy.portLevelSettings[1].tls.mode: ISTIO_MUTUAL on port 443, but no Gateway server on port 443 terminates ISTIO_MUTUAL for SNI \"api.example.test\": the egress gateway will refuse these connections",
    );
}

/// The reverse: the Gateway server expects ISTIO_MUTUAL, the VirtualService's mesh leg sends
/// there, and no DestinationRule says ISTIO_MUTUAL.
#[test]
fn gateway_server_expects_istio_mutual_but_the_mesh_leg_has_no_destination_rule() {
    let yaml = format!(
        "{SE_HTTP}---
{GATEWAY_MUTUAL_80}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
spec:
  hosts: [api.example.test]
  gateways: [mesh, egress]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port: {{number: 80}}
  - match:
    - gateways: [egress]
      port: 80
    route:
    - destination:
        host: api.example.test
"
    );
    let d = check(&yaml);
    assert_has(
        &d,
        "t.yaml:34: warning: VirtualService default/vs: spec.http[0].route[0].destination: the Gateway server on port 80 expects ISTIO_MUTUAL but no DestinationRule sets ISTIO_MUTUAL for outbound|80||istio-egressgateway.istio-system.svc.cluster.local: Istio sidecars would send plaintext and fail; egret sidecars always use mutual TLS to the gateway",
    );
    // With the DestinationRule the warning goes away.
    let fixed = format!(
        "{yaml}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: to-gateway
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, sni: api.example.test}}
"
    );
    let d = check(&fixed);
    assert!(
        !d.iter().any(|x| x.contains("expects ISTIO_MUTUAL")),
        "{d:#?}"
    );
}

#[test]
fn plaintext_gateway_leg_is_a_warning() {
    let gateway = GATEWAY_MUTUAL_80
        .replace("name: https, protocol: HTTPS", "name: http, protocol: HTTP")
        .replace("    tls: {mode: ISTIO_MUTUAL}\n", "");
    let yaml = format!(
        "{SE_HTTP}---
{gateway}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
spec:
  hosts: [api.example.test]
  gateways: [mesh, egress]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
"
    );
    let d = check(&yaml);
    assert_has(
        &d,
        "t.yaml:33: warning: VirtualService default/vs: spec.http[0].route[0].destination: the Gateway server on port 80 is plaintext HTTP: Istio sidecars would send these requests to the gateway unencrypted; egret sidecars send them over mutual TLS",
    );
}

#[test]
fn custom_authorization_with_an_undefined_provider() {
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext
  namespace: istio-system
spec:
  action: CUSTOM
  provider:
    name: nobody
  rules:
  - {}
";
    let d = check(yaml);
    assert_has(
        &d,
        "t.yaml:9: warning: AuthorizationPolicy istio-system/ext: spec.provider.name: extension provider \"nobody\" is not defined in meshConfig.extensionProviders: requests this policy matches will be denied",
    );
    let with_mesh = format!(
        "{yaml}---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    extensionProviders:
    - name: nobody
      envoyExtAuthzHttp: {{service: authz.example.test, port: 8000}}
"
    );
    assert!(!check(&with_mesh).iter().any(|x| x.contains("nobody")));
}

#[test]
fn two_namespace_wide_sidecars() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: a
spec:
  egress:
  - hosts: [\"./*\"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: b
spec:
  egress:
  - hosts: [\"*/*\"]
";
    let d = check(yaml);
    assert_has(
        &d,
        "t.yaml:13: error: Sidecar default/b: spec: namespace \"default\" already has a Sidecar without workloadSelector (default/a); only the first is used",
    );
}

#[test]
fn asm_generated_objects_are_analyzed_and_say_where_they_came_from() {
    let yaml = "apiVersion: istio.alibabacloud.com/v1beta1
kind: ASMEgressTrafficPolicy
metadata:
  name: p
  namespace: istio-egress
spec:
  byEgressGateway:
    name: gw-a
  egressRules:
  - from:
    - namespace: app
    to:
    - name: api
      hosts: [api.example.test]
      port: {name: http, number: 80, protocol: HTTP}
      byEgressGateway: {port: 80}
";
    let d = check(yaml);
    assert_has(
        &d,
        "t.yaml:13: warning: VirtualService istio-egress/p-api: spec.http[0].route[0].destination.host: host \"gw-a.istio-egress.svc.cluster.local\" is not declared by any ServiceEntry: egret has no endpoints for it and requests routed there fail with 503 (generated from ASMEgressTrafficPolicy istio-egress/p)",
    );
}

#[test]
fn gateway_leg_to_a_host_not_exported_to_the_gateway_namespace() {
    // Sample 16's shape: the ServiceEntry is visible only in `egress`; the gateway in
    // istio-system has no cluster for it (Istio: 503 NC).
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: egress}
spec:
  hosts: [example.test]
  exportTo: [\".\"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: egress}
spec:
  hosts: [example.test]
  gateways: [mesh, istio-system/gw]
  http:
  - match: [{gateways: [mesh]}]
    route: [{destination: {host: example.test}}]
  - match: [{gateways: [istio-system/gw]}]
    route: [{destination: {host: example.test}}]
";
    let d = check(yaml);
    assert_has(
        &d,
        "t.yaml:27: warning: VirtualService egress/vs: spec.http[1].route[0].destination.host: host \"example.test\" is not exported to namespace istio-system of Gateway istio-system/gw: the gateway has no cluster for it and answers 503 (NC); add \"istio-system\" to the ServiceEntry's exportTo",
    );
    // The mesh leg is not a gateway leg: nothing said about it.
    assert!(
        !d.iter()
            .any(|x| x.contains("spec.http[0]") && x.contains("not exported")),
        "{d:?}"
    );
    // Exported to istio-system too: no warning.
    let fixed = yaml.replace("exportTo: [\".\"]", "exportTo: [\".\", istio-system]");
    assert!(!check(&fixed).iter().any(|x| x.contains("not exported")));
}
