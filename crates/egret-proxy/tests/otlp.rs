//! OTLP span export end to end: `OtlpExporter` → real loopback HTTP/2 (gRPC) and HTTP/1.1
//! connections → the testkit's `OtlpReceiver`, which decodes the protobuf. Covers exact span
//! contents on both transports, a collector that is down (bounded queue, drops counted,
//! recovery after restart), a slow collector (export never waits on it), a failing collector
//! and flush on shutdown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use egret_proxy::otlp::{
    AttrValue, GRPC_EXPORT_PATH, OtlpConfig, OtlpEndpoint, OtlpExporter, OtlpProtocol, SpanData,
    SpanKind,
};
use egret_testkit::otlp::{OtlpReceiver, Transport};

const WAIT: Duration = Duration::from_secs(30);

fn span(trace: u8, id: u8, parent: Option<u8>) -> SpanData {
    let start = UNIX_EPOCH + Duration::from_nanos(1_750_000_000_000_000_000 + u64::from(id));
    SpanData {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: None,
        name: format!("span-{id}"),
        kind: SpanKind::Client,
        start,
        end: start + Duration::from_millis(3),
        attributes: Vec::new(),
        error: false,
    }
}

fn config(receiver: &OtlpReceiver, protocol: OtlpProtocol) -> OtlpConfig {
    let mut c = OtlpConfig::new(
        OtlpEndpoint::Addrs(vec![receiver.addr()]),
        protocol,
        "egress-gateway.istio-system",
    );
    c.flush_interval = Duration::from_millis(20);
    c
}

/// Polls `cond` until it holds or `WAIT` passes (the receiver records spans before it answers,
/// so the exporter counts them a moment after they are seen).
async fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn http() -> OtlpProtocol {
    OtlpProtocol::Http {
        path: "/v1/traces".into(),
    }
}

/// A CLIENT span with every field set, and its SERVER child.
fn detailed_pair() -> (SpanData, SpanData) {
    let start = SystemTime::now();
    let client = SpanData {
        trace_id: *b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36",
        span_id: *b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7",
        parent_span_id: Some(*b"\x11\x22\x33\x44\x55\x66\x77\x88"),
        trace_state: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
        name: "api.example.test:443/*".into(),
        kind: SpanKind::Client,
        start,
        end: start + Duration::from_millis(12),
        attributes: vec![
            ("http.method", AttrValue::Str("GET".into())),
            ("http.status_code", AttrValue::Int(503)),
            (
                "upstream_cluster",
                AttrValue::Str("outbound|443||api.example.test".into()),
            ),
            ("error", AttrValue::Bool(true)),
        ],
        error: true,
    };
    let server = SpanData {
        span_id: *b"\x0a\x0b\x0c\x0d\x0e\x0f\x10\x12",
        parent_span_id: Some(client.span_id),
        trace_state: None,
        name: "egress-gateway:443".into(),
        kind: SpanKind::Server,
        attributes: vec![("http.status_code", AttrValue::Int(200))],
        error: false,
        ..client.clone()
    };
    (client, server)
}

async fn exact_spans_arrive(protocol: OtlpProtocol, transport: Transport) -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let mut cfg = config(&rx, protocol.clone());
    cfg.resource = vec![("k8s.namespace.name", "istio-system".into())];
    cfg.headers = vec![("x-tenant".into(), "team-a".into())];
    let exp = OtlpExporter::start(cfg);
    let (client, server) = detailed_pair();
    exp.export(client.clone());
    exp.export(server.clone());
    let got = rx.wait_for_spans(2, WAIT).await?;
    ensure!(got.len() == 2, "{got:?}");

    let c = got
        .iter()
        .find(|s| s.span_id == client.span_id)
        .ok_or_else(|| anyhow::anyhow!("client span missing: {got:?}"))?;
    assert_eq!(c.transport, transport);
    match &protocol {
        OtlpProtocol::Grpc => assert_eq!(c.path, GRPC_EXPORT_PATH),
        OtlpProtocol::Http { path } => assert_eq!(&c.path, path),
    }
    assert_eq!(c.trace_id, client.trace_id);
    assert_eq!(
        c.parent_span_id,
        [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    );
    assert_eq!(c.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    assert_eq!(c.name, "api.example.test:443/*");
    assert_eq!(c.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(c.status_code, 2, "STATUS_CODE_ERROR");
    assert_eq!(c.flags & 0xff, 0x01, "sampled");
    assert_eq!(
        c.start_time_unix_nano,
        client.start.duration_since(UNIX_EPOCH)?.as_nanos() as u64
    );
    assert_eq!(
        c.end_time_unix_nano - c.start_time_unix_nano,
        12_000_000,
        "12ms"
    );
    assert_eq!(
        c.attributes,
        vec![
            ("http.method".to_string(), AttrValue::Str("GET".into())),
            ("http.status_code".to_string(), AttrValue::Int(503)),
            (
                "upstream_cluster".to_string(),
                AttrValue::Str("outbound|443||api.example.test".into())
            ),
            ("error".to_string(), AttrValue::Bool(true)),
        ]
    );
    assert_eq!(c.service_name(), Some("egress-gateway.istio-system"));
    assert!(
        c.resource.contains(&(
            "k8s.namespace.name".to_string(),
            AttrValue::Str("istio-system".into())
        )),
        "{:?}",
        c.resource
    );
    assert_eq!(c.scope_name, "egret");

    let s = got
        .iter()
        .find(|s| s.span_id == server.span_id)
        .ok_or_else(|| anyhow::anyhow!("server span missing: {got:?}"))?;
    assert_eq!(s.trace_id, client.trace_id);
    assert_eq!(
        s.parent_span_id, client.span_id,
        "child links to its parent"
    );
    assert_eq!(s.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(s.status_code, 0, "STATUS_CODE_UNSET");
    assert_eq!(s.trace_state, "");
    assert_eq!(s.name, "egress-gateway:443");
    assert_eq!(s.attribute("http.status_code"), Some(&AttrValue::Int(200)));

    // The configured headers travel with every request (gRPC metadata / HTTP headers).
    let reqs = rx.requests();
    ensure!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(
            r.headers.get("x-tenant").and_then(|v| v.to_str().ok()),
            Some("team-a")
        );
    }
    assert!(eventually(|| exp.exported() == 2).await, "{exp:?}");
    assert_eq!(exp.dropped(), 0);
    assert_eq!(exp.failed_batches(), 0);
    exp.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_delivers_exact_spans() -> Result<()> {
    exact_spans_arrive(OtlpProtocol::Grpc, Transport::Grpc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_delivers_exact_spans() -> Result<()> {
    exact_spans_arrive(
        OtlpProtocol::Http {
            path: "/otlp/v1/traces".into(),
        },
        Transport::Http,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_endpoint_is_resolved_and_connection_reused() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let mut cfg = config(&rx, OtlpProtocol::Grpc);
    cfg.endpoint = OtlpEndpoint::HostPort {
        host: "localhost".into(),
        port: rx.addr().port(),
    };
    // One span per request, so every span is its own export over the same connection.
    cfg.batch_size = 1;
    let exp = OtlpExporter::start(cfg);
    for i in 0..20 {
        exp.export(span(7, i, None));
    }
    rx.wait_for_spans(20, WAIT).await?;
    assert_eq!(rx.requests().len(), 20);
    assert!(eventually(|| exp.exported() == 20).await, "{exp:?}");
    assert_eq!(rx.connections(), 1, "one reused connection");
    exp.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_drops_and_counts_then_recovers() -> Result<()> {
    for protocol in [OtlpProtocol::Grpc, http()] {
        let mut rx = OtlpReceiver::start().await?;
        let mut cfg = config(&rx, protocol.clone());
        // Small, so that draining the queue through failing batches (each after a growing
        // backoff) takes few attempts.
        cfg.queue_size = 32;
        cfg.batch_size = 16;
        let exp = OtlpExporter::start(cfg);
        // A connection is up before the collector goes away.
        exp.export(span(1, 1, None));
        rx.wait_for_spans(1, WAIT).await?;
        assert!(eventually(|| exp.exported() == 1).await, "{exp:?}");
        rx.stop().await;

        const N: u64 = 10_000;
        for i in 0..N {
            exp.export(span(2, (i % 250) as u8, None));
        }
        // The queue is bounded: most spans are dropped at once, the rest when their batches
        // fail; nothing waits for a collector that is not there.
        assert!(
            exp.dropped() >= N - 32 - 16,
            "dropped {} of {N}",
            exp.dropped()
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while exp.dropped() < N && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(exp.dropped(), N, "{protocol:?}");
        assert_eq!(exp.exported(), 1);
        assert!(exp.failed_batches() >= 1);
        // No task per span or per attempt: the export task and at most one connection task.
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert!(alive <= 2, "{alive} tasks alive");

        rx.restart().await?;
        let marker = span(9, 99, Some(98));
        exp.export(marker.clone());
        let got = rx
            .wait_until(WAIT, |s| s.iter().any(|s| s.trace_id == marker.trace_id))
            .await?;
        let m = got
            .iter()
            .find(|s| s.trace_id == marker.trace_id)
            .ok_or_else(|| anyhow::anyhow!("marker"))?;
        assert_eq!(m.span_id, marker.span_id);
        assert_eq!(m.parent_span_id, [98; 8]);
        assert!(eventually(|| exp.exported() == 2).await, "{exp:?}");
        exp.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_collector_never_blocks_export() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    rx.set_delay(Duration::from_secs(5));
    let cfg = config(&rx, OtlpProtocol::Grpc);
    let (queue, batch) = (cfg.queue_size as u64, cfg.batch_size as u64);
    let exp = OtlpExporter::start(cfg);
    exp.export(span(3, 0, None));
    // The first export is now at the collector, which will answer only after 5 s.
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.requests_started() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rx.requests_started(), 1);

    const N: u64 = 10_000;
    for i in 0..N {
        exp.export(span(4, (i % 250) as u8, None));
    }
    // Ordering, not timing: all 10,000 calls returned while the first export still waits.
    assert_eq!(
        rx.requests_answered(),
        0,
        "export() waited for the collector"
    );
    // The export task is stuck on that one request, so exactly the queue's worth is kept.
    assert_eq!(exp.dropped(), N - queue);

    // Once the collector is fast again the queued spans go out in full batches.
    rx.set_delay(Duration::ZERO);
    let deadline = tokio::time::Instant::now() + WAIT;
    while exp.exported() < 1 + queue && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exp.exported(), 1 + queue);
    assert_eq!(exp.dropped(), N - queue);
    assert_eq!(exp.failed_batches(), 0);
    assert_eq!(rx.requests().len() as u64, 1 + queue / batch);
    exp.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_collector_counts_failed_batches() -> Result<()> {
    for protocol in [OtlpProtocol::Grpc, http()] {
        let rx = OtlpReceiver::start().await?;
        rx.set_failing(true);
        let exp = OtlpExporter::start(config(&rx, protocol.clone()));
        for i in 0..10 {
            exp.export(span(5, i, None));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while exp.dropped() < 10 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(exp.dropped(), 10, "{protocol:?}");
        assert!(exp.failed_batches() >= 1);
        assert_eq!(exp.exported(), 0);
        ensure!(!rx.requests().is_empty(), "the collector saw the attempts");

        rx.set_failing(false);
        exp.export(span(6, 1, None));
        rx.wait_for_spans(1, WAIT).await?;
        assert!(eventually(|| exp.exported() == 1).await, "{exp:?}");
        exp.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_spans() -> Result<()> {
    for protocol in [OtlpProtocol::Grpc, http()] {
        let rx = OtlpReceiver::start().await?;
        let mut cfg = config(&rx, protocol.clone());
        // Nothing is sent on a timer, and 700 spans are one full batch plus a partial one.
        cfg.flush_interval = Duration::from_secs(3600);
        let exp = OtlpExporter::start(cfg);
        for i in 0..700u32 {
            let mut s = span(8, (i % 250) as u8, None);
            s.span_id[..4].copy_from_slice(&i.to_be_bytes());
            exp.export(s);
        }
        exp.shutdown(Duration::from_secs(10)).await;
        assert_eq!(rx.spans().len(), 700, "{protocol:?}");
        assert_eq!(exp.exported(), 700);
        assert_eq!(exp.dropped(), 0);
        // After shutdown nothing is accepted, and a second shutdown returns at once.
        exp.export(span(8, 1, None));
        assert_eq!(exp.dropped(), 1);
        exp.shutdown(Duration::from_secs(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_at_the_deadline_when_the_collector_hangs() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    rx.set_delay(Duration::from_secs(3600));
    let mut cfg = config(&rx, OtlpProtocol::Grpc);
    // The export's own timeout is far away: only the shutdown deadline can end it.
    cfg.timeout = Duration::from_secs(3600);
    let exp = OtlpExporter::start(cfg);
    exp.export(span(10, 0, None));
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.requests_started() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rx.requests_started(),
        1,
        "the first export is at the collector"
    );
    for i in 1..100 {
        exp.export(span(10, i, None));
    }
    // The collector never answers; shutdown must still return (bounded by its deadline): the
    // export in flight is abandoned and every span counts as dropped. The outer timeout only
    // turns a hang into a failure.
    tokio::time::timeout(WAIT, exp.shutdown(Duration::from_millis(300))).await?;
    assert_eq!(rx.requests_answered(), 0);
    assert_eq!(exp.exported(), 0);
    assert_eq!(exp.dropped(), 100);
    assert_eq!(exp.failed_batches(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_reuses_one_connection() -> Result<()> {
    let rx = OtlpReceiver::start().await?;
    let mut cfg = config(&rx, http());
    cfg.batch_size = 1;
    let exp = OtlpExporter::start(cfg);
    for i in 0..20 {
        exp.export(span(7, i, None));
    }
    rx.wait_for_spans(20, WAIT).await?;
    assert!(eventually(|| exp.exported() == 20).await, "{exp:?}");
    assert_eq!(rx.requests().len(), 20);
    assert_eq!(rx.connections(), 1, "HTTP/1.1 keep-alive");
    exp.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_rejections_are_counted_as_dropped() -> Result<()> {
    for protocol in [OtlpProtocol::Grpc, http()] {
        let rx = OtlpReceiver::start().await?;
        rx.set_partial_rejects(3);
        let mut cfg = config(&rx, protocol.clone());
        cfg.flush_interval = Duration::from_secs(3600);
        let exp = OtlpExporter::start(cfg);
        for i in 0..10 {
            exp.export(span(11, i, None));
        }
        // One request of 10 spans, 3 of which the collector rejects: never retried.
        exp.shutdown(Duration::from_secs(10)).await;
        assert_eq!(rx.requests().len(), 1, "{protocol:?}");
        assert_eq!(exp.exported(), 7, "{protocol:?}");
        assert_eq!(exp.dropped(), 3);
        assert_eq!(exp.failed_batches(), 0);
    }
    Ok(())
}
