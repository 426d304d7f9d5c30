//! Resilience at the egress gateway (issue 7) in network namespaces: the app's sidecar sends
//! through the mesh tunnel to `egret gateway`, which reaches an external API with two
//! endpoints; one of them accepts connections and never answers. The gateway's VirtualService
//! retries with a `perTryTimeout` on another endpoint, its DestinationRule's outlier detection
//! ejects the silent endpoint, and the caller sees only successes.
//!
//! Topology and requirements as in `netns_gateway.rs` (root, iproute2, iptables, curl,
//! util-linux, nginx, dnsmasq, openssl): without them the test FAILS naming what is missing.

mod netns_common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use egret_testkit::fn_server::{FnServer, Seen, respond};
use netns_common::gateway::*;
use netns_common::*;

const API: &str = "api.partner.test";

/// The external API behind the gateway: two STATIC endpoints; at the gateway, retries with a
/// per-try timeout and outlier detection that ejects an endpoint after one failure.
fn config() -> String {
    format!(
        "{GATEWAY_SERVICE}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner}}
spec:
  hosts: [{API}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - address: {EXT_1}
  - address: {EXT_2}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{API}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-partner}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: partner
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner}}
spec:
  host: {API}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 10s
      baseEjectionTime: 60s
      maxEjectionPercent: 50
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-through-egress-gateway}}
spec:
  hosts: [{API}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: partner
        port: {{number: 80}}
  - match:
    - gateways: [istio-egressgateway]
      port: 80
    timeout: 10s
    retries:
      attempts: 2
      perTryTimeout: 1s
      retryOn: connect-failure,reset,5xx
    route:
    - destination:
        host: {API}
        port: {{number: 80}}
"
    )
}

/// A server in the external namespace that accepts connections, reads what is sent and never
/// answers: an endpoint that times out. Counts the connections it accepted.
struct Silent {
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start(ns: &egret_testkit::netns::Netns, addr: SocketAddr) -> Result<Silent> {
        let l = ns.bind_tcp(addr)?;
        l.set_nonblocking(true)?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        held.push(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Silent {
            accepted,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn gateway_fails_over_from_an_endpoint_that_times_out() -> Result<()> {
    let topo = topology("res1")?;
    let _dns = start_dns(&topo, &[(API, EXT_1)])?;
    let good = FnServer::start(
        Some(&topo.external),
        SocketAddr::new(IpAddr::V4(EXT_1), 80),
        Arc::new(|s: &Seen| respond(200, &format!("partner {}\n", s.uri), &[])),
    )?;
    let silent = Silent::start(&topo.external, SocketAddr::new(IpAddr::V4(EXT_2), 80))?;
    let yaml = config();
    let (_ca, gw, app) = mesh(&topo, "res1", &yaml, &[])?;

    const N: u64 = 20;
    for i in 0..N {
        let r = app
            .curl(&["--max-time", "15", &format!("http://{API}/v1/item/{i}")])
            .with_context(|| format!("request {i}"))?;
        ensure!(
            (r.status, r.body.as_str()) == (200, format!("partner /v1/item/{i}\n").as_str()),
            "request {i}: {r:?}"
        );
    }
    // Every request the client sent succeeded, each served once by the answering endpoint;
    // the silent one was tried once (then timed out, was retried elsewhere and ejected).
    ensure!(
        good.requests() == N,
        "answering endpoint saw {}",
        good.requests()
    );
    ensure!(
        silent.accepted.load(Ordering::SeqCst) == 1,
        "the silent endpoint got {} connections",
        silent.accepted.load(Ordering::SeqCst)
    );
    let m = gw.metrics()?;
    let cluster = format!("cluster=\"outbound|80||{API}\"");
    ensure!(
        series(&m, &format!("egret_outlier_ejections_total{{{cluster}}}")) == 1,
        "{m}"
    );
    ensure!(
        series(&m, &format!("egret_upstream_retries_total{{{cluster}}}")) == 1,
        "{m}"
    );
    ensure!(series(&m, &requests("routed")) == N, "{m}");
    Ok(())
}
