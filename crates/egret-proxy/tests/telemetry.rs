//! In-process end-to-end: what a request through sidecar → (mesh tunnel) → egress gateway →
//! external API leaves behind — Istio's metric series on both proxies, one access-log line per
//! request on each, and one trace whose gateway span is the child of the sidecar's span,
//! exported over OTLP to a real receiver; a collector that is gone changes nothing for traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::mesh::*;
use common::*;
use egret_testkit::ca::TestCa;
use egret_testkit::otlp::OtlpReceiver;
use egret_testkit::server::InProcessServer;

/// The mesh settings both proxies share: tracing to the receiver at 100%, an access log.
fn telemetry(collector: std::net::SocketAddr, log: &Path, json: bool) -> String {
    format!(
        "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    accessLogFile: {log}
    accessLogEncoding: {enc}
    defaultConfig: {{tracing: {{sampling: 100}}}}
    defaultProviders: {{tracing: [otel]}}
    extensionProviders:
    - name: otel
      opentelemetry: {{service: {ip}, port: {port}}}
---
",
        log = log.display(),
        enc = if json { "JSON" } else { "TEXT" },
        ip = collector.ip(),
        port = collector.port(),
    )
}

async fn pair(
    ext: &InProcessServer,
    mesh: &Mesh,
    collector: std::net::SocketAddr,
    logs: &Path,
) -> (Sidecar, Sidecar) {
    let gw_yaml =
        telemetry(collector, &logs.join("gateway.log"), true) + &config(ext, [1, 2, 3], None);
    let gw = Sidecar::gateway_mesh(
        &gw_yaml,
        LABELS,
        &[80, 443, 3306],
        Some(&mesh.gateway()),
        false,
    )
    .await;
    let ports = [
        gw.addr(80).port(),
        gw.addr(443).port(),
        gw.addr(3306).port(),
    ];
    let sc_yaml =
        telemetry(collector, &logs.join("sidecar.log"), false) + &config(ext, ports, None);
    let sc = Sidecar::start_mesh(
        &sc_yaml,
        &[("app", "sleep"), ("version", "v1")],
        Some(&mesh.sidecar()),
    )
    .await;
    (gw, sc)
}

/// Lines of a file, waiting (bounded) until there are `n`.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn scrape(p: &Sidecar) -> String {
    let mut out = String::new();
    p.running
        .proxy
        .telemetry
        .encode(&mut out, &Default::default());
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn tohex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The value of the one series of `name` whose line contains every needle.
fn series(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(found.len() <= 1, "{name} {needles:?}: several series");
    found.first().copied()
}

#[tokio::test]
async fn one_trace_one_log_line_and_istio_series_per_request_on_both_proxies() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let collector = OtlpReceiver::start().await.unwrap();
    let logs = temp_dir("telemetry-logs");
    let (gw, sc) = pair(&ext, &mesh, collector.addr(), &logs).await;
    let shim = sc.capture("203.0.113.10:80".parse().unwrap()).await;

    // Three requests without a trace context, one continuing a caller's trace; one carries a
    // bearer token and a cookie, which no log line may show.
    const N: usize = 4;
    let mut upstream_seen = Vec::new();
    for i in 0..N {
        let mut headers = vec![
            ("authorization", "Bearer s3cr3t-t0ken"),
            ("cookie", "session=c00kie-value"),
        ];
        if i == 3 {
            headers.push((
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ));
        }
        let r = get(
            shim,
            "cnn.test",
            "/headers?access_token=qu3ry-s3cret&page=2",
            &headers,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        upstream_seen.push(r.body);
    }

    // Spans: two per request (sidecar, gateway), the gateway's parented by the sidecar's.
    let spans = collector
        .wait_for_spans(2 * N, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(spans.len(), 2 * N, "{spans:#?}");
    let mut traces: std::collections::BTreeMap<Vec<u8>, Vec<_>> = Default::default();
    for s in &spans {
        traces
            .entry(s.trace_id.clone())
            .or_default()
            .push(s.clone());
    }
    assert_eq!(traces.len(), N, "one trace per request");
    let caller_trace = unhex("4bf92f3577b34da6a3ce929d0e0e4736");
    let caller_span = unhex("00f067aa0ba902b7");
    for (trace, spans) in &traces {
        let sidecar = spans
            .iter()
            .find(|s| s.service_name() == Some("sleep.default"))
            .expect("sidecar span");
        let gateway = spans
            .iter()
            .find(|s| s.service_name() == Some("istio-egressgateway-service-account.istio-system"))
            .expect("gateway span");
        assert_eq!(
            gateway.parent_span_id, sidecar.span_id,
            "gateway span is the sidecar span's child"
        );
        if *trace == caller_trace {
            assert_eq!(
                sidecar.parent_span_id, caller_span,
                "the caller's trace is continued"
            );
        } else {
            assert!(
                sidecar.parent_span_id.is_empty(),
                "a new trace starts at the sidecar"
            );
        }
        assert_eq!(sidecar.kind, 3);
        assert_eq!(sidecar.name, "cnn.test/*");
        let url = format!("{:?}", gateway.attribute("http.url"));
        assert!(
            url.contains("access_token=REDACTED") && !url.contains("qu3ry"),
            "{url}"
        );
        // The upstream saw the gateway's span as its parent.
        let tp = format!(
            "traceparent: 00-{}-{}-01",
            tohex(trace),
            tohex(&gateway.span_id)
        );
        assert!(
            upstream_seen.iter().any(|b| b.contains(&tp)),
            "{tp} not in {upstream_seen:?}"
        );
    }

    // Metrics: the sidecar reports the gateway leg, the gateway the external host.
    let sc_m = scrape(&sc);
    assert_eq!(
        series(
            &sc_m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "source_workload=\"sleep\"",
                "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
                "destination_service_name=\"istio-egressgateway\"",
                "destination_service_namespace=\"istio-system\"",
                "response_code=\"200\"",
            ]
        ),
        Some(N as f64),
        "{sc_m}"
    );
    let gw_m = scrape(&gw);
    assert_eq!(
        series(
            &gw_m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "source_workload=\"istio-egressgateway-service-account\"",
                "destination_service=\"cnn.test\"",
                "destination_service_name=\"cnn.test\"",
                "response_code=\"200\"",
                "response_flags=\"-\"",
            ]
        ),
        Some(N as f64),
        "{gw_m}"
    );
    assert_eq!(
        series(
            &gw_m,
            "istio_request_duration_milliseconds_count",
            &["destination_service=\"cnn.test\""]
        ),
        Some(N as f64)
    );

    // Access log: one line per request on each proxy (TEXT at the sidecar, JSON at the
    // gateway), no secret anywhere.
    let sc_lines = lines(&logs.join("sidecar.log"), N).await;
    let gw_lines = lines(&logs.join("gateway.log"), N).await;
    assert_eq!(
        (sc_lines.len(), gw_lines.len()),
        (N, N),
        "{sc_lines:#?} {gw_lines:#?}"
    );
    for l in &sc_lines {
        assert!(
            l.contains("\"GET /headers?access_token=REDACTED&page=2 HTTP/1.1\" 200 - via_upstream"),
            "{l}"
        );
        assert!(
            l.contains("outbound|80||istio-egressgateway.istio-system.svc.cluster.local"),
            "{l}"
        );
    }
    for l in &gw_lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["response_code"], 200, "{l}");
        assert_eq!(v["authority"], "cnn.test", "{l}");
        assert_eq!(v["upstream_cluster"], "outbound|80||cnn.test", "{l}");
        assert!(
            v["request_id"].as_str().is_some_and(|s| s.len() == 36),
            "{l}"
        );
    }
    for l in sc_lines.iter().chain(&gw_lines) {
        for secret in ["s3cr3t-t0ken", "c00kie-value", "qu3ry-s3cret"] {
            assert!(!l.contains(secret), "secret {secret} in {l}");
        }
    }
    // The same request id on both proxies: the sidecar made it, the gateway kept it.
    for l in &gw_lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let id = v["request_id"].as_str().unwrap();
        assert!(sc_lines.iter().any(|s| s.contains(id)), "{id}");
    }
    let _ = std::fs::remove_dir_all(&logs);
}

#[tokio::test]
async fn a_collector_that_is_gone_changes_nothing_for_traffic() {
    let mesh = Mesh::new();
    let ext_ca = TestCa::new("ext").unwrap();
    let ext = external("cnn", &ext_ca);
    let mut collector = OtlpReceiver::start().await.unwrap();
    let logs = temp_dir("telemetry-dead");
    let (_gw, sc) = pair(&ext, &mesh, collector.addr(), &logs).await;
    let shim = sc.capture("203.0.113.10:80".parse().unwrap()).await;
    let r = get(shim, "cnn.test", "/", &[]).await;
    assert_eq!(r.status, 200);
    collector
        .wait_for_spans(2, Duration::from_secs(15))
        .await
        .unwrap();
    collector.stop().await;
    // Every request still succeeds with the collector gone.
    for _ in 0..50 {
        let r = get(shim, "cnn.test", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The spans are dropped and counted (export is retried in batches with backoff).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(&sc);
        let dropped = series(&m, "egret_trace_spans_dropped_total", &[]).unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dropped spans counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&logs);
}
