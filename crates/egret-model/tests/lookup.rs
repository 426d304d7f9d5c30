//! The data plane's lookups against a compiled snapshot: port -> listener, Host -> virtual
//! host, SNI -> TLS chain, destination address -> TCP chain, name -> cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use egret_config::ConfigSet;
use egret_model::{ProxyIdentity, Snapshot, compile};

fn snapshot(yaml: &str) -> Snapshot {
    let (set, load) = ConfigSet::from_str("t.yaml", yaml);
    assert!(!load.has_errors(), "{load:?}");
    let (snap, diags) = compile(&set, &ProxyIdentity::sidecar("default"));
    assert!(!diags.has_errors(), "{diags:#?}");
    snap
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild}
spec:
  hosts: ["*.wiki.test"]
  ports: [{number: 443, name: https, protocol: HTTPS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: en}
spec:
  hosts: [en.wiki.test]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test, "*.api.example.test"]
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.test]
  addresses: [203.0.113.5]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 203.0.113.5}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-range}
spec:
  hosts: [dbs.example.test]
  addresses: [203.0.113.0/24]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-any}
spec:
  hosts: [any-db.example.test]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: corp}
spec:
  hosts: ["*.corp.test"]
  tls:
  - match:
    - sniHosts: ["*.corp.test"]
      port: 443
    route:
    - destination: {host: en.wiki.test}
"#;

fn cluster_of(c: Option<&egret_model::snapshot::L4Chain>) -> Option<String> {
    c.map(|c| c.route[0].cluster.clone())
}

#[test]
fn virtual_hosts_by_most_specific_host() {
    let s = snapshot(CONFIG);
    let l = s.listener(80).unwrap();
    assert_eq!(
        l.virtual_host("api.example.test").unwrap().domains,
        ["api.example.test"]
    );
    assert_eq!(
        l.virtual_host("v2.api.example.test").unwrap().domains,
        ["*.api.example.test"]
    );
    assert!(l.virtual_host("example.test").is_none());
    assert!(s.listener(81).is_none());
}

#[test]
fn sni_exact_beats_wildcard_and_apex_only_for_sni_hosts() {
    let s = snapshot(CONFIG);
    let l = s.listener(443).unwrap();
    assert_eq!(
        cluster_of(l.tls_chain(Some("en.wiki.test"), None)).as_deref(),
        Some("outbound|443||en.wiki.test")
    );
    assert_eq!(
        cluster_of(l.tls_chain(Some("de.wiki.test"), None)).as_deref(),
        Some("outbound|443||*.wiki.test")
    );
    // A ServiceEntry wildcard does not match its apex (Envoy server_names) ...
    assert!(l.tls_chain(Some("wiki.test"), None).is_none());
    // ... but VirtualService sniHosts do (istio-egress-spec.md §3).
    assert_eq!(
        cluster_of(l.tls_chain(Some("corp.test"), None)).as_deref(),
        Some("outbound|443||en.wiki.test")
    );
    assert_eq!(
        cluster_of(l.tls_chain(Some("x.corp.test"), None)).as_deref(),
        Some("outbound|443||en.wiki.test")
    );
    assert!(l.tls_chain(None, None).is_none());
    assert!(l.tls_chain(Some("other.test"), None).is_none());
}

#[test]
fn tcp_by_exact_address_then_subnet_then_catch_all() {
    let s = snapshot(CONFIG);
    let l = s.listener(5432).unwrap();
    assert_eq!(
        cluster_of(l.tcp_chain(ip("203.0.113.5"))).as_deref(),
        Some("outbound|5432||db.example.test")
    );
    assert_eq!(
        cluster_of(l.tcp_chain(ip("203.0.113.9"))).as_deref(),
        Some("outbound|5432||dbs.example.test")
    );
    assert_eq!(
        cluster_of(l.tcp_chain(ip("198.51.100.1"))).as_deref(),
        Some("outbound|5432||any-db.example.test")
    );
}

#[test]
fn clusters_by_name() {
    let s = snapshot(CONFIG);
    let c = s.cluster("outbound|5432||db.example.test").unwrap();
    assert_eq!(c.endpoints[0].address, "203.0.113.5");
    assert!(s.cluster("outbound|5432||nope").is_none());
}

/// The index never changes an answer: on a larger random-ish config, indexed lookups equal the
/// ordered scan (first chain that matches) whenever SNI patterns do not overlap.
#[test]
fn indexed_lookup_equals_scan_without_overlap() {
    let mut yaml = String::new();
    for i in 0..300 {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}}}\nspec:\n  hosts: [h{i}.example.test]\n  addresses: [203.0.113.{}]\n  ports: [{{number: 443, name: tls, protocol: TLS}}, {{number: 9000, name: tcp, protocol: TCP}}]\n",
            i % 250 + 1
        ));
    }
    let s = snapshot(&yaml);
    let l = s.listener(443).unwrap();
    for i in (0..300).step_by(7) {
        let sni = format!("h{i}.example.test");
        let dst = ip(&format!("203.0.113.{}", i % 250 + 1));
        let scan = l.tls_chains.iter().find(|c| c.matches(Some(&sni), dst));
        assert_eq!(
            cluster_of(l.tls_chain(Some(&sni), dst)),
            cluster_of(scan),
            "{sni}"
        );
    }
    let t = s.listener(9000).unwrap();
    for last in 1..=250u32 {
        let dst = ip(&format!("203.0.113.{last}"));
        let scan = t.tcp_chains.iter().find(|c| c.matches(None, dst));
        assert_eq!(cluster_of(t.tcp_chain(dst)), cluster_of(scan), "{dst:?}");
    }
}
