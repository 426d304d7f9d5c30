//! The cost of observability on the data path (issue 6): what one HTTP request pays for
//! Istio's standard metrics, Istio's access log and a trace span. The macro benchmark (two
//! real `egret gateway` processes under load, telemetry off and on) is `bench/telemetry.sh`;
//! this one takes the per-request work apart.
//!
//! ```text
//! cargo bench -p egret-proxy --bench telemetry            # timings (about half a minute)
//! cargo bench -p egret-proxy --bench telemetry -- --test  # each benchmark once (smoke)
//! ```
//!
//! The telemetry is configured the way a gateway gets it: an `IstioOperator` whose
//! `meshConfig` sets `accessLogFile` (here `/dev/null`, TEXT) and tracing at 100% sampling to an
//! `opentelemetry` provider over OTLP/HTTP, compiled by `egret_model::compile` for the gateway
//! `istio-system` / `istio=egressgateway` and turned into sinks by
//! `TelemetryRuntime::for_snapshot`. The collector address is a loopback port nothing listens
//! on: the spans are built and queued exactly as with a live collector, and the exporter's
//! failed batches (off the request path, on its own task) are dropped and counted.
//!
//! The request is the one `bench/telemetry.sh` sends: `GET /v1/orders/42` to `api.test` with a
//! `user-agent`, routed to `outbound|80||api.test` at 127.0.0.1:18580, answered `200` with a
//! 3-byte body.
//!
//! Benchmarks:
//! - `istio/destination+http`: the Istio metric update of one request
//!   (`IstioMetrics::destination`, a hash lookup of the cluster's rendered labels, and
//!   `IstioMetrics::http`: the series lookup, the counter and three histograms).
//! - `accesslog/{text,json}`: rendering Istio's default TEXT / JSON line for the request's
//!   record (`LogFormat::render`), without the write (a queue push to the writer thread).
//! - `trace/parse/{traceparent,b3}`: reading an incoming W3C / B3 multi-header context;
//!   `trace/start/{new,traceparent,b3}`: `Tracer::start` — parse, decide sampling, new span
//!   id, rewrite the headers the upstream sees.
//! - `record/{off,on}`: the whole telemetry of one request as the data path runs it:
//!   `HttpRecord::start` (request id, span start, header capture), `responded`, the response
//!   body polled through `Recorded` to its end, which finishes the record: metrics, plus with
//!   `on` the access-log line queued to the writer and the span queued to the exporter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use egret_config::ConfigSet;
use egret_model::ProxyIdentity;
use egret_proxy::proxy::{ConnInfo, Mode};
use egret_proxy::telemetry::istio::DestinationKind;
use egret_proxy::telemetry::record::HttpOutcome;
use egret_proxy::telemetry::trace::{parse_b3, parse_traceparent};
use egret_proxy::telemetry::{
    HttpRecord, LogFormat, Recorded, SourceLabels, Telemetry, TelemetryRuntime,
};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;

const HOST: &str = "api.test";
const SERVICE: &str = "default/api";
const CLUSTER: &str = "outbound|80||api.test";
const ROUTE: &str = "api-through-egress-gateway";

/// The gateway's configuration: routing as `bench/telemetry.sh` writes it, telemetry on.
fn config(collector_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: 18580}}}}]
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: telemetry-on, namespace: istio-system}}
spec:
  meshConfig:
    accessLogFile: /dev/null
    accessLogEncoding: TEXT
    defaultConfig: {{tracing: {{sampling: 100}}}}
    defaultProviders: {{tracing: [otel]}}
    extensionProviders:
    - name: otel
      opentelemetry:
        service: 127.0.0.1
        port: {collector_port}
        http: {{path: /v1/traces}}
"
    )
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn request() -> Request<()> {
    Request::get("/v1/orders/42")
        .header("host", HOST)
        .header("user-agent", "wrk/4.2.0")
        .body(())
        .unwrap()
}

fn outcome() -> HttpOutcome {
    HttpOutcome {
        status: 200,
        flags: "-",
        details: "-",
        cluster: CLUSTER.to_string(),
        upstream: Some(SocketAddr::from(([127, 0, 0, 1], 18580))),
        route: ROUTE.to_string(),
    }
}

/// One request's telemetry from start to finish, as `http.rs` drives it.
fn one_request(tel: &Arc<Telemetry>, rt: &Arc<TelemetryRuntime>, conn: &Arc<ConnInfo>) {
    let mut req = request();
    let mut rec = HttpRecord::start(tel, rt, conn, &mut req);
    rec.responded(outcome(), HOST.to_string(), Some((HOST, Some(SERVICE))));
    let body = http_body_util::Full::new(Bytes::from_static(b"ok\n"))
        .map_err(|never| match never {})
        .boxed();
    let mut body = Recorded::new(body, Box::new(rec), (None, None));
    let mut cx = Context::from_waker(Waker::noop());
    // The body's only frame; being the end of the stream, it finishes the record.
    let polled = std::pin::Pin::new(&mut body).poll_frame(&mut cx);
    assert!(matches!(polled, Poll::Ready(Some(Ok(_)))));
    black_box(body.is_end_stream());
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The exporter's batcher is a tokio task: the sinks are built inside the runtime.
    let _guard = runtime.enter();

    let (set, diags) = ConfigSet::from_str("bench.yaml", &config(closed_port()));
    assert!(!diags.has_errors(), "{diags:?}");
    let proxy = ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]);
    let (snap, diags) = egret_model::compile(&set, &proxy);
    assert!(!diags.has_errors(), "{diags:?}");
    let rt_on = Arc::new(TelemetryRuntime::for_snapshot(&snap).unwrap());
    let rt_off = Arc::new(TelemetryRuntime::default());
    let access_log = rt_on.access_log.clone().expect("access log configured");
    let tracer = rt_on.tracer.clone().expect("tracer configured");

    let source = SourceLabels::from_workload(
        "istio-egressgateway",
        "istio-system",
        None,
        &proxy.labels,
        "Kubernetes",
    );
    let tel = Arc::new(Telemetry::new(&source));
    let conn = Arc::new(ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        orig_dst: None,
        mode: Mode::Gateway,
        default_port: 80,
        sni: None,
        peer_identity: None,
        tunnel_host: None,
    });

    // A finished record to render (the TEXT and JSON default formats read the same headers).
    let mut req = request();
    let mut rec = HttpRecord::start(&tel, &rt_on, &conn, &mut req);
    rec.responded(outcome(), HOST.to_string(), Some((HOST, Some(SERVICE))));
    let text = access_log.format.clone();
    let json = LogFormat::new(true, None).unwrap();
    assert_eq!(text.headers, json.headers);
    let line = text.render(&rec);
    assert!(
        line.contains("\"GET /v1/orders/42 HTTP/1.1\" 200 - via_upstream")
            && line.contains("\"wrk/4.2.0\"")
            && line.contains(CLUSTER),
        "{line}"
    );
    let line = json.render(&rec);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["response_code"], 200, "{line}");
    assert_eq!(v["upstream_cluster"], CLUSTER, "{line}");

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let mut g = c.benchmark_group("istio");
    g.bench_function("destination+http", |b| {
        b.iter(|| {
            let d = tel.istio.destination(DestinationKind::Cluster {
                host: black_box(HOST),
                service: Some(SERVICE),
            });
            tel.istio.http(&d, 200, "-", false, black_box(1.7), 0, 3);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("accesslog");
    g.bench_function("text", |b| b.iter(|| text.render(black_box(&rec))));
    g.bench_function("json", |b| b.iter(|| json.render(black_box(&rec))));
    g.finish();

    let mut traceparent = HeaderMap::new();
    traceparent.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let mut b3 = HeaderMap::new();
    for (k, v) in [
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ] {
        b3.insert(k, HeaderValue::from_static(v));
    }
    assert!(parse_traceparent(&traceparent).is_some());
    assert!(parse_b3(&b3).is_some());
    let mut g = c.benchmark_group("trace");
    g.bench_function("parse/traceparent", |b| {
        b.iter(|| parse_traceparent(black_box(&traceparent)))
    });
    g.bench_function("parse/b3", |b| b.iter(|| parse_b3(black_box(&b3))));
    for (name, incoming) in [
        ("new", request().headers().clone()),
        ("traceparent", traceparent.clone()),
        ("b3", b3.clone()),
    ] {
        g.bench_function(format!("start/{name}"), |b| {
            b.iter_batched_ref(
                || incoming.clone(),
                |h| tracer.start(h),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("record");
    g.bench_function("off", |b| b.iter(|| one_request(&tel, &rt_off, &conn)));
    g.bench_function("on", |b| b.iter(|| one_request(&tel, &rt_on, &conn)));
    g.finish();

    c.final_summary();
}
