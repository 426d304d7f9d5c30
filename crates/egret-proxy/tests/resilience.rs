//! In-process end-to-end: resilience towards external services (issue 7) — outlier
//! detection, locality failover, retries and timeouts, weighted splits, consistent hashing,
//! circuit breaking, mirroring and fault injection. Every request the client sends is counted
//! and accounted for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Answer 200 with the backend's name.
const OK: u8 = 0;
/// Answer 503.
const FAIL: u8 = 1;
/// Never answer.
const HANG: u8 = 2;
/// Answer 200 after a second.
const SLOW: u8 = 3;

/// A real HTTP/1.1 server on loopback whose behaviour a test switches, counting requests and
/// the bytes of their bodies. `stop` closes the listener and every open connection (the
/// endpoint is dead: connections are refused); `restart` binds the same port again.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let b = Backend {
            name,
            addr,
            mode: Arc::new(AtomicU8::new(OK)),
            requests: Arc::new(AtomicU64::new(0)),
            body_bytes: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicU64::new(0)),
            tasks: Default::default(),
        };
        b.serve(l);
        b
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let (mode, requests, body_bytes, tasks) = (
            self.mode.clone(),
            self.requests.clone(),
            self.body_bytes.clone(),
            self.tasks.clone(),
        );
        let name = self.name;
        let tasks2 = tasks.clone();
        let connections = self.connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (mode, requests, body_bytes) =
                    (mode.clone(), requests.clone(), body_bytes.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (mode, requests, body_bytes) =
                            (mode.clone(), requests.clone(), body_bytes.clone());
                        async move {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let body = req.into_body().collect().await.map(|c| c.to_bytes());
                            body_bytes.fetch_add(
                                body.map(|b| b.len() as u64).unwrap_or(0),
                                Ordering::SeqCst,
                            );
                            let (status, text) = match mode.load(Ordering::SeqCst) {
                                FAIL => (503, "failing".to_string()),
                                HANG => {
                                    tokio::time::sleep(Duration::from_secs(10)).await;
                                    (200, name.to_string())
                                }
                                SLOW => {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    (200, name.to_string())
                                }
                                _ => (200, name.to_string()),
                            };
                            let mut r = http::Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    // HTTP/1.1, or HTTP/2 with prior knowledge.
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                });
                tasks2.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restart(&self) {
        let mut tries = 0;
        let l = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(l);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

const HOST: &str = "api.example.test";

/// A ServiceEntry for `HOST` port 80 with these endpoints (`extra` is YAML for each, e.g.
/// `locality: us-east/zone1`).
fn service_entry(eps: &[(&Backend, &str)]) -> String {
    let mut s = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
"
    );
    for (b, extra) in eps {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        s.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{http: {}}}{extra}}}\n",
            b.addr.port()
        ));
    }
    s
}

fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: {HOST}
  trafficPolicy: {traffic_policy}
"
    )
}

fn virtual_service(http_route: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  http:
  - {http_route}
"
    )
}

fn dialed() -> SocketAddr {
    "203.0.113.80:80".parse().unwrap()
}

fn cluster() -> String {
    format!("outbound|80||{HOST}")
}

/// Send `n` GETs over one keep-alive connection; (status counts by status, bodies).
async fn run(cap: SocketAddr, n: usize) -> Vec<Resp> {
    let mut c = Client::connect(cap).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = match c.try_request("GET", HOST, "/", &[]).await {
            Ok(r) => r,
            Err(_) => {
                c = Client::connect(cap).await;
                c.request("GET", HOST, "/", &[]).await
            }
        };
        out.push(r);
    }
    out
}

fn ok(rs: &[Resp]) -> usize {
    rs.iter().filter(|r| r.status == 200).count()
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_readmitted_and_retries_hide_it() {
    let (a, b, bad) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("bad").await,
    );
    bad.set(FAIL);
    let yaml = service_entry(&[(&a, ""), (&b, ""), (&bad, "")])
        + &destination_rule(
            "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}}",
        )
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    retries: {{attempts: 3, retryOn: 5xx}}"
        ));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let m = &sc.running.proxy.metrics;

    let first = run(cap, 60).await;
    assert_eq!(ok(&first), 60, "every request the client sent succeeded");
    // Three consecutive 503s eject the endpoint; nothing reaches it afterwards.
    assert_eq!(
        bad.count(),
        3,
        "the failing endpoint saw exactly consecutive5xxErrors requests"
    );
    assert_eq!(a.count() + b.count(), 60, "each success was served once");
    let (ejections, _, retries) = m.resilience_counts(&cluster());
    assert_eq!(ejections, 1);
    assert_eq!(retries, 3, "each 503 was retried on another endpoint");

    // After baseEjectionTime (× 1 ejection) it is re-admitted: it gets requests again, fails
    // them three times and is ejected again; the client still sees only successes.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let second = run(cap, 60).await;
    assert_eq!(ok(&second), 60);
    assert_eq!(
        bad.count(),
        6,
        "re-admitted, then ejected after three more 503s"
    );
    assert_eq!(a.count() + b.count(), 120);
    assert_eq!(m.resilience_counts(&cluster()).0, 2);

    // Healthy again: once re-admitted (2 ejections: 4 s) it takes its share.
    bad.set(OK);
    tokio::time::sleep(Duration::from_millis(4300)).await;
    let third = run(cap, 30).await;
    assert_eq!(ok(&third), 30);
    assert_eq!(bad.count(), 16, "round robin over three healthy endpoints");
}

#[tokio::test]
async fn locality_failover_to_backups_and_back() {
    let (p1, p2, b1, b2) = (
        Backend::start("p1").await,
        Backend::start("p2").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    );
    let yaml = service_entry(&[
        (&p1, "locality: us-east/zone1"),
        (&p2, "locality: us-east/zone1"),
        (&b1, "locality: us-west/zone1"),
        (&b2, "locality: us-west/zone1"),
    ]) + &destination_rule(
        "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true, failover: [{from: us-east, to: us-west}]}}, outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}",
    ) + &virtual_service(&format!(
        "route: [{{destination: {{host: {HOST}}}}}]\n    retries: {{attempts: 3, retryOn: 'connect-failure,5xx,reset'}}"
    ));
    let sc = Sidecar::start_with(&yaml, &[("istio-locality", "us-east/zone1")]).await;
    let cap = sc.capture(dialed()).await;
    let primaries = || p1.count() + p2.count();
    let backups = || b1.count() + b2.count();

    // Healthy primaries take everything.
    let r = run(cap, 40).await;
    assert_eq!(ok(&r), 40);
    assert_eq!((primaries(), backups()), (40, 0));

    // Primaries die: their connect failures eject them and traffic moves to the backups;
    // retries on another endpoint mean no request is lost.
    p1.stop();
    p2.stop();
    let r = run(cap, 40).await;
    assert_eq!(ok(&r), 40, "no request lost while failing over");
    assert_eq!(backups(), 40);
    let (ejections, _, _) = sc.running.proxy.metrics.resilience_counts(&cluster());
    assert!(ejections >= 2, "both primaries ejected ({ejections})");

    // Primaries come back: once re-admitted, traffic returns to them.
    p1.restart().await;
    p2.restart().await;
    let mut sent = 0;
    let before = primaries();
    while primaries() == before {
        assert!(sent < 2000, "traffic never returned to the primaries");
        let r = run(cap, 10).await;
        assert_eq!(ok(&r), 10);
        sent += 10;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the other primary time to be re-admitted as well, then all traffic is back.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (p_before, b_before) = (primaries(), backups());
    let r = run(cap, 40).await;
    assert_eq!(ok(&r), 40);
    assert_eq!(
        primaries() - p_before,
        40,
        "everything back on the primaries"
    );
    assert_eq!(backups(), b_before);
}

#[tokio::test]
async fn retries_replay_small_bodies_on_another_endpoint_but_not_large_ones() {
    let (good, bad) = (Backend::start("good").await, Backend::start("bad").await);
    bad.set(FAIL);
    let yaml = service_entry(&[(&good, ""), (&bad, "")])
        + &destination_rule("{loadBalancer: {simple: ROUND_ROBIN}}")
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    retries: {{attempts: 2, retryOn: 'gateway-error'}}"
        ));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let body = "x".repeat(1000);
    for i in 0..20 {
        let (code, out) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {HOST}"),
            "--data-binary",
            &body,
            &format!("http://{cap}/post{i}"),
        ])
        .await;
        assert_eq!((code, out.as_str()), (0, "200"), "small POST {i} retried");
    }
    assert_eq!(good.count(), 20);
    assert_eq!(
        good.body_bytes.load(Ordering::SeqCst),
        20 * 1000,
        "the replayed body arrived whole"
    );
    assert_eq!(
        bad.count(),
        10,
        "round robin sent every other first attempt to the failing endpoint"
    );
    // A body above the replay bound is streamed and not retried: the 503 reaches the client.
    let big = "y".repeat(100 * 1024);
    let path = std::env::temp_dir().join(format!("egret-big-{}", std::process::id()));
    std::fs::write(&path, &big).unwrap();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (_, out) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {HOST}"),
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("http://{cap}/big"),
        ])
        .await;
        codes.push(out);
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(codes.iter().filter(|c| *c == "503").count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), 2, "{codes:?}");
    assert_eq!(
        good.count() + bad.count(),
        34,
        "no large request was sent twice"
    );
}

#[tokio::test]
async fn per_try_timeout_moves_on_and_route_timeout_answers_504() {
    let (good, slow) = (Backend::start("good").await, Backend::start("slow").await);
    slow.set(HANG);
    let yaml = service_entry(&[(&good, ""), (&slow, "")])
        + &destination_rule("{loadBalancer: {simple: ROUND_ROBIN}}")
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    timeout: 3s\n    retries: {{attempts: 2, perTryTimeout: 200ms, retryOn: 'reset,5xx'}}"
        ));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let r = run(cap, 10).await;
    assert_eq!(ok(&r), 10, "a hanging endpoint is left after perTryTimeout");
    assert!(r.iter().all(|r| r.body == "good"));
    assert_eq!(good.count(), 10);
    assert_eq!(slow.count(), 5);

    // Without retries, the route timeout answers 504 (UT).
    let yaml = service_entry(&[(&slow, "")])
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    timeout: 300ms\n    retries: {{attempts: 0}}"
        ));
    sc.reconfigure(&yaml).await;
    let r = get(cap, HOST, "/", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "upstream request timeout");
}

#[tokio::test]
async fn default_retries_cover_connect_failures() {
    // No `retries`: Istio's default (2 attempts on connect-failure, ...) still moves a
    // refused connection to another endpoint.
    let good = Backend::start("good").await;
    let dead = Backend::start("dead").await;
    dead.stop();
    let yaml = service_entry(&[(&good, ""), (&dead, "")])
        + &destination_rule("{loadBalancer: {simple: ROUND_ROBIN}}");
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let r = run(cap, 20).await;
    assert_eq!(ok(&r), 20);
    assert_eq!(good.count(), 20);
}

#[tokio::test]
async fn weighted_split_80_20_over_10000_requests() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let yaml = service_entry(&[
        (&v1, "labels: {version: v1}"),
        (&v2, "labels: {version: v2}"),
    ]) + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.test
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
" + &virtual_service(&format!(
        "route: [{{destination: {{host: {HOST}, subset: v1}}, weight: 80}}, {{destination: {{host: {HOST}, subset: v2}}, weight: 20}}]"
    ));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(run(cap, 1000)));
    }
    let mut total_ok = 0;
    for t in tasks {
        total_ok += ok(&t.await.unwrap());
    }
    assert_eq!(total_ok, 10_000);
    assert_eq!(v1.count() + v2.count(), 10_000);
    let v1n = v1.count();
    assert!((7_800..=8_200).contains(&v1n), "80% ± 2%: {v1n}");
}

async fn hash_keeps_keys_on_one_endpoint(
    lb: &str,
    key: impl Fn(u32) -> (String, Vec<(String, String)>),
) {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let yaml = service_entry(&[(&a, ""), (&b, ""), (&c, "")])
        + &destination_rule(&format!("{{loadBalancer: {lb}}}"));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut cl = Client::connect(cap).await;
    let mut used = std::collections::BTreeSet::new();
    let mut sent = 0;
    for k in 0..60 {
        let (path, headers) = key(k);
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let first = cl.request("GET", HOST, &path, &h).await;
        assert_eq!(first.status, 200);
        for _ in 0..5 {
            let r = cl.request("GET", HOST, &path, &h).await;
            assert_eq!(r.body, first.body, "key {k} stays on one endpoint");
        }
        sent += 6;
        used.insert(first.body);
    }
    assert_eq!(a.count() + b.count() + c.count(), sent);
    assert_eq!(used.len(), 3, "keys spread over every endpoint: {used:?}");
}

#[tokio::test]
async fn consistent_hash_by_header_ring_hash() {
    hash_keeps_keys_on_one_endpoint("{consistentHash: {httpHeaderName: x-user}}", |k| {
        ("/".into(), vec![("x-user".into(), format!("user-{k}"))])
    })
    .await;
}

#[tokio::test]
async fn consistent_hash_maglev_by_cookie_and_query() {
    hash_keeps_keys_on_one_endpoint(
        "{consistentHash: {httpCookie: {name: session, ttl: 0s}, maglev: {tableSize: 65537}}}",
        |k| {
            (
                "/".into(),
                vec![("cookie".into(), format!("a=b; session=s{k}"))],
            )
        },
    )
    .await;
    hash_keeps_keys_on_one_endpoint(
        "{consistentHash: {httpQueryParameterName: u, ringHash: {minimumRingSize: 2048}}}",
        |k| (format!("/x?u={k}&z=1"), vec![]),
    )
    .await;
}

#[tokio::test]
async fn circuit_breaker_overflow_is_503_uo_at_once() {
    let slow = Backend::start("slow").await;
    slow.set(SLOW);
    let yaml = service_entry(&[(&slow, "")])
        + &destination_rule(
            "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}",
        );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move { get(cap, HOST, "/", &[]).await }));
    }
    let mut ok_n = 0;
    let mut uo = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok_n += 1,
            503 => {
                assert_eq!(
                    r.headers
                        .get("x-envoy-overloaded")
                        .map(|v| v.to_str().unwrap()),
                    Some("true")
                );
                uo += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    // One on the connection, one pending; the other four overflow.
    assert_eq!((ok_n, uo), (2, 4));
    assert_eq!(
        slow.count(),
        2,
        "overflowing requests never reached the upstream"
    );
    assert_eq!(sc.running.proxy.metrics.resilience_counts(&cluster()).1, 4);
    assert_eq!(sc.running.proxy.metrics.request_count("overflow"), 4);
}

#[tokio::test]
async fn mirror_half_of_requests_and_a_hanging_mirror_adds_no_latency() {
    let main = Backend::start("main").await;
    let shadow = Backend::start("shadow").await;
    let mirror_se = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mirror}}
spec:
  hosts: [mirror.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        shadow.addr.port()
    );
    let yaml = service_entry(&[(&main, "")])
        + &mirror_se
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    mirror: {{host: mirror.example.test}}\n    mirrorPercentage: {{value: 50.0}}"
        ));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let r = run(cap, 2000).await;
    assert_eq!(ok(&r), 2000);
    assert!(
        r.iter().all(|r| r.body == "main"),
        "the mirror's answer never reaches the caller"
    );
    assert_eq!(main.count(), 2000);
    // Mirrors are asynchronous: wait until they have all arrived.
    let mut last = u64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if shadow.count() == last && egret_proxy::resilience::mirrors_in_flight() == 0 {
            break;
        }
        last = shadow.count();
    }
    let mirrored = shadow.count();
    assert!(
        (900..=1100).contains(&mirrored),
        "about half mirrored: {mirrored}"
    );

    // A mirror that hangs (10 s) does not slow the caller: 20 requests, all mirrored, finish
    // well within one mirror's hang.
    shadow.set(HANG);
    let yaml = service_entry(&[(&main, "")])
        + &mirror_se
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    mirror: {{host: mirror.example.test}}"
        ));
    sc.reconfigure(&yaml).await;
    let before = shadow.count();
    let t0 = Instant::now();
    let r = run(cap, 20).await;
    let took = t0.elapsed();
    assert_eq!(ok(&r), 20);
    assert!(
        took < Duration::from_secs(5),
        "hanging mirror added latency: {took:?}"
    );
    for _ in 0..50 {
        if shadow.count() - before == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shadow.count() - before, 20, "every request was mirrored");
}

#[tokio::test]
async fn fault_delay_and_abort_at_their_percentages() {
    let main = Backend::start("main").await;
    let yaml = service_entry(&[(&main, "")])
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    fault: {{delay: {{fixedDelay: 1ms, percentage: {{value: 20}}}}, abort: {{httpStatus: 418, percentage: {{value: 30}}}}}}"
        ));
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(run(cap, 500)));
    }
    let mut aborted = 0u64;
    let mut passed = 0u64;
    for t in tasks {
        for r in t.await.unwrap() {
            match r.status {
                418 => aborted += 1,
                200 => passed += 1,
                s => panic!("unexpected {s}"),
            }
        }
    }
    assert_eq!(aborted + passed, 5000);
    assert_eq!(
        main.count(),
        passed,
        "aborted requests never reached the upstream"
    );
    assert!(
        (1350..=1650).contains(&aborted),
        "30% ± 3% aborted: {aborted}"
    );
    let delayed = sc.running.proxy.metrics.fault_count("delay");
    assert!(
        (850..=1150).contains(&delayed),
        "20% ± 3% delayed: {delayed}"
    );
    assert_eq!(sc.running.proxy.metrics.fault_count("abort"), aborted);
}

#[tokio::test]
async fn tcp_connect_failures_eject_the_endpoint() {
    let good = Backend::start("good").await;
    let dead = Backend::start("dead").await;
    dead.stop();
    let yaml = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example.test]
  addresses: [203.0.113.90]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp: {}}}}}
  - {{address: 127.0.0.1, ports: {{tcp: {}}}}}
",
        dead.addr.port(),
        good.addr.port()
    ) + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db.example.test
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
";
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture("203.0.113.90:5432".parse().unwrap()).await;
    let mut failed = 0;
    for _ in 0..20 {
        // The backend speaks HTTP: a request through the TCP proxy is answered by it.
        match Client::connect(cap)
            .await
            .try_request("GET", "db.example.test", "/", &[])
            .await
        {
            Ok(r) if r.status == 200 => {}
            _ => failed += 1,
        }
    }
    assert_eq!(
        failed, 1,
        "only the first connection to the dead endpoint failed"
    );
    assert_eq!(good.count(), 19);
    assert_eq!(
        sc.running
            .proxy
            .metrics
            .resilience_counts("outbound|5432||db.example.test")
            .0,
        1
    );
}

#[tokio::test]
async fn connection_pool_max_requests_per_connection_and_idle_timeout() {
    let b = Backend::start("b").await;
    let yaml = service_entry(&[(&b, "")])
        + &destination_rule("{connectionPool: {http: {maxRequestsPerConnection: 1}}}");
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let r = run(cap, 10).await;
    assert_eq!(ok(&r), 10);
    assert_eq!(
        b.connections.load(Ordering::SeqCst),
        10,
        "one request per upstream connection"
    );

    // Default pool: one connection carries them all.
    sc.reconfigure(&service_entry(&[(&b, "")])).await;
    let before = b.connections.load(Ordering::SeqCst);
    let r = run(cap, 10).await;
    assert_eq!(ok(&r), 10);
    assert_eq!(b.connections.load(Ordering::SeqCst) - before, 1, "pooled");

    // `http.idleTimeout`: a connection idle longer than it is not reused.
    sc.reconfigure(
        &(service_entry(&[(&b, "")])
            + &destination_rule("{connectionPool: {http: {idleTimeout: 100ms}, tcp: {tcpKeepalive: {time: 60s, interval: 10s, probes: 3}}}}")),
    )
    .await;
    let before = b.connections.load(Ordering::SeqCst);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = run(cap, 1).await;
        assert_eq!(ok(&r), 1);
    }
    assert_eq!(
        b.connections.load(Ordering::SeqCst) - before,
        3,
        "idle connections expired"
    );
    assert_eq!(b.count(), 23);
}

#[tokio::test]
async fn generated_hash_cookie_keeps_a_client_on_one_endpoint() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let yaml = service_entry(&[(&a, ""), (&b, ""), (&c, "")])
        + &destination_rule(
            "{loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}}}",
        );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture(dialed()).await;
    let mut used = std::collections::BTreeSet::new();
    for client in 0..30 {
        // No cookie yet: the proxy makes one and sets it.
        let first = get(cap, HOST, "/", &[]).await;
        assert_eq!(first.status, 200);
        let set = first
            .headers
            .get("set-cookie")
            .unwrap_or_else(|| panic!("client {client}: no cookie set"))
            .to_str()
            .unwrap()
            .to_string();
        assert!(set.contains("; Path=/; Max-Age=60"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        for _ in 0..4 {
            let r = get(cap, HOST, "/", &[("cookie", &cookie)]).await;
            assert_eq!(r.body, first.body, "client {client} stays on its endpoint");
            assert!(r.headers.get("set-cookie").is_none());
        }
        used.insert(first.body);
    }
    assert_eq!(a.count() + b.count() + c.count(), 150);
    assert!(used.len() >= 2, "clients spread: {used:?}");
}

#[tokio::test]
async fn locality_distribute_weights_and_failover_priority_labels() {
    let (east, west, eu) = (
        Backend::start("east").await,
        Backend::start("west").await,
        Backend::start("eu").await,
    );
    let eps = service_entry(&[
        (&east, "locality: us-east/zone1, labels: {tier: primary}"),
        (&west, "locality: us-west/zone1, labels: {tier: backup}"),
        (&eu, "locality: eu/zone1, labels: {tier: backup}"),
    ]);
    let yaml = eps.clone()
        + &destination_rule(
            "{loadBalancer: {simple: RANDOM, localityLbSetting: {distribute: [{from: 'us-east/*', to: {'us-east/*': 70, 'us-west/*': 30}}]}}}",
        );
    let sc = Sidecar::start_with(&yaml, &[("istio-locality", "us-east/zone1")]).await;
    let cap = sc.capture(dialed()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(run(cap, 500)));
    }
    for t in tasks {
        assert_eq!(ok(&t.await.unwrap()), 500);
    }
    assert_eq!(east.count() + west.count(), 4000);
    assert_eq!(eu.count(), 0, "a locality no `to` key names gets nothing");
    let e = east.count();
    assert!((2_680..=2_920).contains(&e), "70% ± 3%: {e}");

    // failoverPriority by label: everything to `tier=primary` while it is healthy, then to
    // the backups once it is ejected.
    let yaml = eps
        + &destination_rule(
            "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failoverPriority: [tier=primary]}}, outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}}",
        )
        + &virtual_service(&format!(
            "route: [{{destination: {{host: {HOST}}}}}]\n    retries: {{attempts: 2, retryOn: 5xx}}"
        ));
    sc.reconfigure(&yaml).await;
    let before = (east.count(), west.count(), eu.count());
    let r = run(cap, 20).await;
    assert_eq!(ok(&r), 20);
    assert_eq!(east.count() - before.0, 20, "the primary takes everything");
    east.set(FAIL);
    let r = run(cap, 20).await;
    assert_eq!(ok(&r), 20, "retries hide the failing primary");
    assert_eq!(east.count() - before.0, 22, "ejected after two 503s");
    assert_eq!(
        west.count() + eu.count() - before.1 - before.2,
        20,
        "backups served the rest"
    );
}

#[tokio::test]
async fn tcp_idle_timeout_closes_quiet_relays_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let yaml = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.example.test]
  addresses: [203.0.113.91]
  ports: [{{number: 7, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo.example.test
  trafficPolicy: {{connectionPool: {{tcp: {{idleTimeout: 300ms}}}}}}
"
    );
    let sc = Sidecar::start(&yaml).await;
    let cap = sc.capture("203.0.113.91:7".parse().unwrap()).await;
    // Busy: a message every 100 ms for 1.2 s keeps the relay open.
    let mut busy = tokio::net::TcpStream::connect(cap).await.unwrap();
    for _ in 0..12 {
        echo_once(&mut busy).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echo_once(&mut busy).await;
    // Quiet: closed after the idle timeout.
    let mut quiet = tokio::net::TcpStream::connect(cap).await.unwrap();
    echo_once(&mut quiet).await;
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), quiet.read(&mut b))
        .await
        .expect("the idle relay was closed");
    assert!(matches!(r, Ok(0) | Err(_)), "closed: {r:?}");
}

async fn echo_once(s: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
}

#[tokio::test]
async fn http2_upstream_connections_honour_max_requests_per_connection() {
    let b = Backend::start("h2").await;
    let se = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http2, protocol: HTTP2}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http2: {}}}}}]
",
        b.addr.port()
    );
    let sc = Sidecar::start(
        &(se.clone()
            + &destination_rule("{connectionPool: {http: {maxRequestsPerConnection: 2}}}")),
    )
    .await;
    let cap = sc.capture(dialed()).await;
    let r = run(cap, 10).await;
    assert_eq!(ok(&r), 10);
    assert_eq!(
        b.connections.load(Ordering::SeqCst),
        5,
        "two requests per HTTP/2 connection"
    );
    sc.reconfigure(&se).await;
    let before = b.connections.load(Ordering::SeqCst);
    let r = run(cap, 10).await;
    assert_eq!(ok(&r), 10);
    assert!(
        b.connections.load(Ordering::SeqCst) - before <= 1,
        "one shared connection"
    );
    assert_eq!(b.count(), 20);
}
