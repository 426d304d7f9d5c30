//! What the proxies report, in network namespaces (issue 6): Istio's standard metrics on the
//! admin endpoint's `/stats/prometheus`, egret's own series and Istio's access log, checked
//! against the exact traffic each test sends, the way Istio's own integration tests check them
//! (`istio-egress-spec.md` §7, last paragraph, and §9):
//!
//! - REGISTRY_ONLY: HTTP to an unknown host → `destination_service_name="BlackHoleCluster"`,
//!   `response_code="502"`; TLS → `istio_tcp_connections_closed_total` for `BlackHoleCluster`;
//! - ALLOW_ANY: `destination_service_name="PassthroughCluster"`, and per-SNI series for the TLS;
//! - through the egress gateway: the sidecar reports `istio-egressgateway`, the gateway reports
//!   `reporter="source"` towards the external host as itself;
//! - `promtool check metrics` accepts every scrape (its only complaint is Istio's own
//!   millisecond histogram name);
//! - one access-log line per request / connection (allowed, denied, passthrough, timed out,
//!   reset), TEXT and JSON, with no credential the client sent.
//!
//! Topologies as in `netns_sidecar.rs` ([`Topology::direct`]: the sidecar egresses itself) and
//! `netns_gateway.rs` ([`Topology::new`]: only the gateway reaches "the internet").
//! The tests need root, iproute2, iptables, curl, setpriv, nginx, dnsmasq, openssl and
//! promtool (Debian package `prometheus`); without them they FAIL naming what is missing,
//! never skip.

mod netns_common;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::netns::Netns;
use egret_testkit::process::{run_command, wait_until};
use egret_testkit::{Nginx, NginxConfig, TestCa, Topology, preflight};
use netns_common::gateway::*;
use netns_common::*;

/// [`PROGRAMS`] plus promtool.
fn programs() -> Vec<&'static str> {
    let mut p = PROGRAMS.to_vec();
    p.push("promtool");
    p
}

/// Credentials the client sends; none may appear in an access log.
const TOKEN: &str = "s3cr3t-bearer-6f1d2a";
const COOKIE: &str = "s3cr3t-cookie-9b7c4e";
const QUERY_TOKEN: &str = "s3cr3t-query-1e8a0f";

/// curl arguments that carry every kind of secret, for `url` (whose query gets the token).
fn secret_args(url: &str) -> Vec<String> {
    vec![
        "-H".into(),
        format!("Authorization: Bearer {TOKEN}"),
        "-H".into(),
        format!("Cookie: session={COOKIE}"),
        format!("{url}?x=1&access_token={QUERY_TOKEN}"),
    ]
}

fn curl_secret(ns: &Netns, url: &str, extra: &[&str]) -> Result<Reply> {
    let args = secret_args(url);
    let mut all: Vec<&str> = extra.to_vec();
    all.extend(args.iter().map(String::as_str));
    curl(ns, &all)
}

/// The mesh config for `--mesh-config`: the access log and, optionally, REGISTRY_ONLY.
fn mesh_config(log: &Path, json: bool, registry_only: bool) -> String {
    let mut s = format!(
        "spec:\n  meshConfig:\n    accessLogFile: {}\n",
        path_str(log)
    );
    if json {
        s.push_str("    accessLogEncoding: JSON\n");
    }
    if registry_only {
        s.push_str("    outboundTrafficPolicy:\n      mode: REGISTRY_ONLY\n");
    }
    s
}

/// An empty access-log file in `files` that uid 1337 (the sidecar) may append to.
fn access_log_file(files: &Files) -> Result<PathBuf> {
    let path = files.write("access.log", "")?;
    std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID))
        .with_context(|| format!("chown {}", path.display()))?;
    Ok(path)
}

/// The series of `name` (exactly: `name{`) whose labels contain every one of `needles`.
fn matching<'m>(metrics: &'m str, name: &str, needles: &[&str]) -> Vec<(&'m str, u64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            needles.iter().all(|n| labels.contains(n)).then(|| {
                (
                    l,
                    value.trim().parse::<f64>().map_or(u64::MAX, |v| v as u64),
                )
            })
        })
        .collect()
}

/// The value of the ONE series of `name` matching `needles` (an error when none or several).
fn one(metrics: &str, name: &str, needles: &[&str]) -> Result<u64> {
    let m = matching(metrics, name, needles);
    match m.as_slice() {
        [(_, v)] => Ok(*v),
        _ => bail!(
            "expected exactly one {name} series with {needles:?}, found {}:\n{}\n--- scrape ---\n{metrics}",
            m.len(),
            m.iter().map(|(l, _)| *l).collect::<Vec<_>>().join("\n")
        ),
    }
}

/// Scrapes with `scrape` until the one series of `name` matching `needles` reaches `want`
/// (records are finished when a connection closes, possibly just after curl returned), then
/// checks it is exactly `want`. Returns the scrape.
fn expect_series(
    what: &str,
    scrape: &dyn Fn() -> Result<String>,
    name: &str,
    needles: &[&str],
    want: u64,
) -> Result<String> {
    let m = wait_until(
        &format!("{what}: {name} {needles:?} to reach {want}"),
        Duration::from_secs(5),
        || {
            let m = scrape()?;
            Ok(matches!(one(&m, name, needles), Ok(v) if v >= want).then_some(m))
        },
    )
    .or_else(|e| {
        scrape()
            .map(|m| (e, m))
            .and_then(|(e, m)| Err(e.context(m)))
    })?;
    let v = one(&m, name, needles)?;
    ensure!(
        v == want,
        "{what}: {name} {needles:?} = {v}, want {want}\n{m}"
    );
    Ok(m)
}

/// `promtool check metrics` on a scrape: it must parse, and the only lint allowed is the one
/// about Istio's own histogram name in milliseconds.
fn promtool_check(what: &str, metrics: &str) -> Result<()> {
    let dir = egret_testkit::TempDir::new("promtool")?;
    let file = dir.path().join("scrape.prom");
    std::fs::write(&file, metrics).context("write scrape")?;
    let stdin = std::fs::File::open(&file).context("open scrape")?;
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "metrics"]).stdin(stdin);
    let out = run_command(&mut cmd, Duration::from_secs(30))?;
    let complaints: Vec<&str> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let allowed =
        "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"";
    let ok = match out.code {
        Some(0) => complaints.is_empty(),
        Some(3) => complaints == [allowed],
        _ => false,
    };
    ensure!(
        ok,
        "promtool check metrics on the {what}'s scrape: exit {:?}, output {complaints:#?}",
        out.code
    );
    Ok(())
}

/// The lines of an access log, once it has exactly `want` of them (the writer thread appends
/// shortly after each exchange ends); more than `want` is an error.
fn log_lines(path: &Path, want: usize) -> Result<Vec<String>> {
    let read = || -> Result<Vec<String>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Ok(text.lines().map(str::to_string).collect())
    };
    let lines = wait_until(
        &format!("{want} lines in {}", path.display()),
        Duration::from_secs(5),
        || {
            let l = read()?;
            Ok((l.len() >= want).then_some(l))
        },
    )
    .map_err(|e| e.context(format!("{:#?}", read().unwrap_or_default())))?;
    // Anything late would be a line too many.
    std::thread::sleep(Duration::from_millis(300));
    let lines = if lines.len() == want { read()? } else { lines };
    ensure!(
        lines.len() == want,
        "{} has {} lines, want {want}:\n{}",
        path.display(),
        lines.len(),
        lines.join("\n")
    );
    Ok(lines)
}

/// No line carries a credential the client sent.
fn no_secrets(what: &str, lines: &[String]) -> Result<()> {
    for l in lines {
        for s in [TOKEN, COOKIE, QUERY_TOKEN] {
            ensure!(!l.contains(s), "the {what} access log leaks {s:?}: {l}");
        }
    }
    Ok(())
}

/// TEXT lines with all of `needles`.
fn count_text(lines: &[String], needles: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// An upstream that reads a request's head and closes the connection without answering
/// (Envoy: `503 UC`, "upstream_reset_before_response_started"). Counts the requests it cut.
struct ResetServer {
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ResetServer {
    fn start(ns: &Netns, addr: SocketAddr) -> Result<ResetServer> {
        let listener = ns.bind_tcp(addr)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicU64::new(0));
        let (stop2, cut2) = (stop.clone(), cut.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if read_head(s).unwrap_or(false) {
                            cut2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(ResetServer {
            stop,
            cut,
            thread: Some(thread),
        })
    }

    fn cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }
}

/// Reads until the end of the request head (bounded), then drops (closes) the stream.
fn read_head(mut s: TcpStream) -> std::io::Result<bool> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < 64 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Drop for ResetServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The gateway's labels: Istio's two conventions, so its workload is `istio-egressgateway`.
const GATEWAY_LABELS: &str = "istio=egressgateway,app=istio-egressgateway";

/// The sidecar's source labels (no `app` label: the workload is the service account).
const SIDECAR_SOURCE: &[&str] = &[
    "reporter=\"source\"",
    "source_workload=\"sleep\"",
    "source_workload_namespace=\"default\"",
];

/// The sidecar's principal when it has a mesh identity (without one Istio's value is
/// `unknown`).
const SLEEP_PRINCIPAL: &str = "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"";

/// The gateway's source labels.
const GATEWAY_SOURCE: &[&str] = &[
    "reporter=\"source\"",
    "source_workload=\"istio-egressgateway\"",
    "source_workload_namespace=\"istio-system\"",
    "source_principal=\"spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account\"",
    "source_app=\"istio-egressgateway\"",
];

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

/// A mesh CA, the gateway (labels [`GATEWAY_LABELS`], `gw_mesh` as its mesh config) and the
/// sidecar (`app_mesh`), both with `yaml`.
fn observed_mesh<'t>(
    topo: &'t Topology,
    tag: &str,
    yaml: &str,
    gw_files: Files,
    gw_mesh: &Path,
    app_files: Files,
    app_mesh: &Path,
) -> Result<(MeshCa, Gateway<'t>, Sidecar<'t>)> {
    let ca = MeshCa::new(&format!("{tag}-ca"))?;
    let gw = Gateway::start(
        &topo.gateway,
        gw_files,
        &ca,
        yaml,
        GatewayOptions {
            labels: GATEWAY_LABELS,
            extra: &["--mesh-config", path_str(gw_mesh)],
            ..GatewayOptions::default()
        },
    )?;
    let app = sidecar(
        &topo.app,
        app_files,
        &ca,
        SLEEP,
        yaml,
        &["--mesh-config", path_str(app_mesh)],
    )?;
    Ok((ca, gw, app))
}

// ---------------------------------------------------------------------------------------------
// 1. REGISTRY_ONLY: BlackHoleCluster
// ---------------------------------------------------------------------------------------------

/// Istio's REGISTRY_ONLY telemetry test: HTTP to an unknown host is answered 502 by the sidecar
/// and counted as `BlackHoleCluster`/`502`/`NR`; TLS to it is closed and counted in
/// `istio_tcp_connections_closed_total` for `BlackHoleCluster`. Nothing reaches the gateway,
/// whose scrape has no Istio series at all. One TEXT access-log line per request and per
/// connection, without the client's credentials.
#[test]
fn observability_registry_only_black_hole() -> Result<()> {
    preflight(&programs())?;
    let topo = Topology::new("obsbh")?;
    let _dns = start_dns(&topo, &[("unknown.test", EXT_3)])?;
    let (gw_files, app_files) = (Files::new("obsbh-gw")?, Files::new("obsbh-app")?);
    let gw_log = gw_files.path().join("access.log");
    let gw_mesh = gw_files.write("mesh.yaml", &mesh_config(&gw_log, false, true))?;
    let app_log = access_log_file(&app_files)?;
    let app_mesh = app_files.write("mesh.yaml", &mesh_config(&app_log, false, true))?;
    let (_ca, gw, app) = observed_mesh(
        &topo,
        "obsbh",
        GATEWAY_SERVICE,
        gw_files,
        &gw_mesh,
        app_files,
        &app_mesh,
    )?;

    const HTTP: u64 = 3;
    const TLS: u64 = 2;
    for _ in 0..HTTP {
        let r = curl_secret(&topo.app, "http://unknown.test/blocked", &[])?;
        ensure!(r.status == 502, "http://unknown.test: {r:?}");
    }
    for _ in 0..TLS {
        let r = curl(&topo.app, &["https://unknown.test/"])?;
        ensure!(
            r.exit == Some(35) && r.status == 0,
            "https://unknown.test must be closed: {r:?}"
        );
    }

    let scrape = || app.metrics();
    let bh = with(
        SIDECAR_SOURCE,
        &[
            SLEEP_PRINCIPAL,
            "destination_service=\"unknown.test\"",
            "destination_service_name=\"BlackHoleCluster\"",
            "destination_service_namespace=\"unknown\"",
            "request_protocol=\"http\"",
            "response_code=\"502\"",
            "response_flags=\"NR\"",
            "connection_security_policy=\"unknown\"",
        ],
    );
    expect_series("sidecar", &scrape, "istio_requests_total", &bh, HTTP)?;
    let tcp = with(
        SIDECAR_SOURCE,
        &[
            SLEEP_PRINCIPAL,
            "destination_service=\"unknown.test\"",
            "destination_service_name=\"BlackHoleCluster\"",
            "request_protocol=\"tcp\"",
            "response_flags=\"NR\"",
        ],
    );
    expect_series(
        "sidecar",
        &scrape,
        "istio_tcp_connections_closed_total",
        &tcp,
        TLS,
    )?;
    let m = scrape()?;
    ensure!(
        one(&m, "istio_tcp_connections_opened_total", &tcp)? == TLS
            && one(&m, "istio_request_duration_milliseconds_count", &bh)? == HTTP
            && one(&m, "istio_response_bytes_count", &bh)? == HTTP,
        "{m}"
    );
    // Nothing else was counted: every Istio series is one of the two above.
    for name in ["istio_requests_total", "istio_tcp_connections_closed_total"] {
        ensure!(
            matching(&m, name, &[]).len() == 1,
            "one {name} series expected:\n{m}"
        );
    }
    ensure!(series(&m, "egret_access_log_dropped_total") == 0, "{m}");
    promtool_check("sidecar", &m)?;

    // The gateway saw nothing.
    let g = gw.metrics()?;
    for name in [
        "istio_requests_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        ensure!(matching(&g, name, &[]).is_empty(), "gateway {name}:\n{g}");
    }
    promtool_check("gateway", &g)?;

    let lines = log_lines(&app_log, (HTTP + TLS) as usize)?;
    no_secrets("sidecar", &lines)?;
    ensure!(
        count_text(
            &lines,
            &[
                "\"GET /blocked?x=1&access_token=REDACTED HTTP/1.1\" 502 NR ",
                "\"unknown.test\"",
                " BlackHoleCluster ",
            ]
        ) == HTTP as usize,
        "{lines:#?}"
    );
    ensure!(
        count_text(&lines, &["\"- - -\" 0 NR ", " unknown.test "]) == TLS as usize,
        "{lines:#?}"
    );
    let m = app.metrics()?;
    ensure!(
        series(&m, "egret_access_log_lines_total") == HTTP + TLS,
        "{m}"
    );
    ensure!(
        !gw_log.exists() || std::fs::read_to_string(&gw_log)?.is_empty(),
        "the gateway logged traffic it never saw"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2 + 5. ALLOW_ANY passthrough, and every kind of access-log line (JSON)
// ---------------------------------------------------------------------------------------------

/// A ServiceEntry for the delaying test server (with a VirtualService timeout of 1 s, sample 04
/// shortened) and one for the server that cuts requests.
const SIDECAR_SERVICES: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.test
  http:
  - timeout: 1s
    route:
    - destination:
        host: httpbin.test
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reset-ext
spec:
  hosts:
  - reset.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
";

/// ALLOW_ANY (the default): HTTP and TLS to a host no ServiceEntry names are counted as
/// `PassthroughCluster` (requests, and TCP connections for the TLS), and egret's per-SNI series
/// count the TLS connections with their bytes both ways. The JSON access log has one line per
/// request/connection with Istio's keys: allowed (200), passthrough (HTTP and TLS), timed out
/// (`504 UT`, a VirtualService timeout against a server that answers late) and reset (`503 UC`,
/// a server that closes after reading the request), and no credential of the client's.
#[test]
fn observability_allow_any_passthrough_and_log_kinds() -> Result<()> {
    preflight(&programs())?;
    let topo = Topology::direct("obspt")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(
        &topo,
        &[
            ("httpbin.test", EXT_1),
            ("other.test", EXT_2),
            ("reset.test", EXT_3),
        ],
    )?;
    let httpbin = test_server(&topo, "httpbin", sa(EXT_1, 80))?;
    let other = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("other", IpAddr::V4(EXT_2), &["other.test"]),
    )?;
    let reset = ResetServer::start(&topo.external, sa(EXT_3, 80))?;

    let files = Files::new("obspt")?;
    let ca_file = files.write("ca.pem", ca.ca_pem())?;
    let log = access_log_file(&files)?;
    let mesh = files.write("mesh.yaml", &mesh_config(&log, true, false))?;
    let app = Sidecar::start(
        &topo,
        files,
        SIDECAR_SERVICES,
        &["--mesh-config", path_str(&mesh)],
    )?;

    const ALLOWED: u64 = 1;
    const PT_HTTP: u64 = 2;
    const PT_TLS: u64 = 2;
    const TIMED_OUT: u64 = 1;
    const RESET: u64 = 1;
    for _ in 0..ALLOWED {
        let r = curl_secret(&topo.app, "http://httpbin.test/status/200", &[])?;
        ensure!(r.status == 200, "allowed: {r:?}");
    }
    for _ in 0..PT_HTTP {
        let r = curl_secret(&topo.app, "http://other.test/pt", &[])?;
        ensure!(
            r.status == 200 && r.body.contains("nginx other http other.test"),
            "passthrough HTTP: {r:?}"
        );
    }
    for _ in 0..PT_TLS {
        let r = curl_secret(
            &topo.app,
            "https://other.test/tls",
            &["--cacert", path_str(&ca_file)],
        )?;
        ensure!(
            r.status == 200 && r.body.contains("nginx other https other.test"),
            "passthrough TLS: {r:?}"
        );
    }
    for _ in 0..TIMED_OUT {
        let r = curl_secret(&topo.app, "http://httpbin.test/delay/4", &[])?;
        ensure!(r.status == 504, "timed out: {r:?}");
    }
    for _ in 0..RESET {
        let r = curl_secret(&topo.app, "http://reset.test/cut", &[])?;
        ensure!(r.status == 503, "reset: {r:?}");
    }
    // Istio's default retry policy does not retry a reset (`retryOn` has no `reset`).
    ensure!(
        reset.cut() == RESET,
        "the reset server cut {} requests",
        reset.cut()
    );
    ensure!(httpbin.requests() == ALLOWED + TIMED_OUT, "httpbin");
    other.wait_for_requests((PT_HTTP + PT_TLS) as usize, Duration::from_secs(5))?;
    ensure!(
        other.requests() == (PT_HTTP + PT_TLS) as usize,
        "nginx: {}",
        other.access_log()
    );

    let scrape = || app.metrics();
    let pt = |more: &[&'static str]| {
        with(
            SIDECAR_SOURCE,
            &[
                &[
                    "source_principal=\"unknown\"",
                    "destination_service=\"other.test\"",
                    "destination_service_name=\"PassthroughCluster\"",
                    "destination_service_namespace=\"unknown\"",
                ][..],
                more,
            ]
            .concat(),
        )
    };
    let http_pt = pt(&[
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
    ]);
    expect_series(
        "sidecar",
        &scrape,
        "istio_requests_total",
        &http_pt,
        PT_HTTP,
    )?;
    let tcp_pt = pt(&["request_protocol=\"tcp\"", "response_flags=\"-\""]);
    expect_series(
        "sidecar",
        &scrape,
        "istio_tcp_connections_closed_total",
        &tcp_pt,
        PT_TLS,
    )?;
    let sni = "sni=\"other.test\"";
    let m = expect_series(
        "sidecar",
        &scrape,
        "egret_tls_passthrough_connections_total",
        &[sni],
        PT_TLS,
    )?;
    ensure!(
        one(&m, "istio_tcp_connections_opened_total", &tcp_pt)? == PT_TLS
            && one(&m, "istio_tcp_sent_bytes_total", &tcp_pt)? > 0
            && one(&m, "istio_tcp_received_bytes_total", &tcp_pt)? > 0
            && one(&m, "egret_tls_passthrough_sent_bytes_total", &[sni])? > 0
            && one(&m, "egret_tls_passthrough_received_bytes_total", &[sni])? > 0
            && one(&m, "egret_tls_passthrough_duration_seconds_count", &[sni])? == PT_TLS,
        "{m}"
    );
    // The routed requests, by their ServiceEntry.
    let se = |host: &'static str, code: &'static str, flags: &'static str| {
        with(
            SIDECAR_SOURCE,
            &[
                host,
                "destination_service_namespace=\"default\"",
                code,
                flags,
            ],
        )
    };
    for (needles, want) in [
        (
            se(
                "destination_service_name=\"httpbin.test\"",
                "response_code=\"200\"",
                "response_flags=\"-\"",
            ),
            ALLOWED,
        ),
        (
            se(
                "destination_service_name=\"httpbin.test\"",
                "response_code=\"504\"",
                "response_flags=\"UT\"",
            ),
            TIMED_OUT,
        ),
        (
            se(
                "destination_service_name=\"reset.test\"",
                "response_code=\"503\"",
                "response_flags=\"UC\"",
            ),
            RESET,
        ),
    ] {
        ensure!(one(&m, "istio_requests_total", &needles)? == want, "{m}");
    }
    ensure!(
        matching(&m, "istio_requests_total", &[]).len() == 4
            && matching(&m, "istio_tcp_connections_closed_total", &[]).len() == 1,
        "unexpected series:\n{m}"
    );
    promtool_check("sidecar", &m)?;

    // The JSON access log: one object per request / connection, with Istio's keys.
    let total = ALLOWED + PT_HTTP + PT_TLS + TIMED_OUT + RESET;
    let lines = log_lines(&log, total as usize)?;
    no_secrets("sidecar", &lines)?;
    let keys = [
        "start_time",
        "route_name",
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "response_code_details",
        "connection_termination_details",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_service_time",
        "x_forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_host",
        "upstream_cluster",
        "upstream_local_address",
        "downstream_local_address",
        "downstream_remote_address",
        "requested_server_name",
        "upstream_transport_failure_reason",
    ];
    type Kind = (String, i64, String, String, String, String);
    let mut kinds: Vec<Kind> = Vec::new();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
        let obj = v
            .as_object()
            .with_context(|| format!("not an object: {l}"))?;
        let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = keys.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        ensure!(got == want, "keys of {l}");
        let s = |k: &str| obj[k].as_str().unwrap_or("-").to_string();
        let code = obj["response_code"]
            .as_i64()
            .with_context(|| format!("response_code is not a number: {l}"))?;
        kinds.push((
            s("authority"),
            code,
            s("response_flags"),
            s("path"),
            s("upstream_cluster"),
            s("response_code_details"),
        ));
        if s("requested_server_name") == "other.test" {
            ensure!(
                obj["bytes_received"].as_u64() > Some(0) && obj["bytes_sent"].as_u64() > Some(0),
                "{l}"
            );
        }
    }
    let q = "?x=1&access_token=REDACTED";
    let se = |host: &str| format!("outbound|80||{host}");
    for (want, kind) in [
        (
            ALLOWED,
            (
                "httpbin.test",
                200,
                "-",
                format!("/status/200{q}"),
                se("httpbin.test"),
                "via_upstream",
            ),
        ),
        (
            PT_HTTP,
            (
                "other.test",
                200,
                "-",
                format!("/pt{q}"),
                "PassthroughCluster".into(),
                "passthrough",
            ),
        ),
        (
            PT_TLS,
            ("-", 0, "-", "-".into(), "PassthroughCluster".into(), "-"),
        ),
        (
            TIMED_OUT,
            (
                "httpbin.test",
                504,
                "UT",
                format!("/delay/4{q}"),
                se("httpbin.test"),
                "upstream_response_timeout",
            ),
        ),
        (
            RESET,
            (
                "reset.test",
                503,
                "UC",
                format!("/cut{q}"),
                se("reset.test"),
                "upstream_reset_before_response_started",
            ),
        ),
    ] {
        let kind: Kind = (
            kind.0.into(),
            kind.1,
            kind.2.into(),
            kind.3,
            kind.4,
            kind.5.into(),
        );
        let n = kinds.iter().filter(|k| **k == kind).count() as u64;
        ensure!(n == want, "{want} line(s) {kind:?} expected in {lines:#?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3 + 5. Through the egress gateway
// ---------------------------------------------------------------------------------------------

/// Samples 05 + 06 (HTTP and TLS passthrough through the gateway) and a DENY policy at the
/// gateway on `/admin`.
const THROUGH_GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
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
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [edition.cnn.test]
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [edition.cnn.test]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts: [edition.cnn.test]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {number: 80}
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination:
        host: edition.cnn.test
        port: {number: 80}
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [edition.cnn.test]}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {number: 443}
  - match: [{gateways: [istio-egressgateway], port: 443, sniHosts: [edition.cnn.test]}]
    route:
    - destination:
        host: edition.cnn.test
        port: {number: 443}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {ports: ['80'], paths: ['/admin*']}}]
";

/// Sidecar → (mesh mTLS) → gateway → nginx. The sidecar reports its requests to
/// `istio-egressgateway` (200, and the gateway's 403), and its TLS connections to it; the gateway
/// reports `reporter="source"` as itself towards `edition.cnn.test` (200 and the 403 it gave),
/// `istio_tcp_*` and the per-SNI series for the passed-through TLS. Both access logs (sidecar
/// JSON, gateway TEXT) have one line per request / connection.
#[test]
fn observability_through_the_egress_gateway() -> Result<()> {
    preflight(&programs())?;
    let topo = Topology::new("obsgw")?;
    let ca = TestCa::new("egret netns CA")?;
    let _dns = start_dns(&topo, &[(CNN, EXT_1)])?;
    let cnn = Nginx::start(
        &topo.external,
        &ca,
        NginxConfig::new("cnn", IpAddr::V4(EXT_1), &[CNN]),
    )?;
    let (gw_files, app_files) = (Files::new("obsgw-gw")?, Files::new("obsgw-app")?);
    let gw_log = gw_files.path().join("access.log");
    let gw_mesh = gw_files.write("mesh.yaml", &mesh_config(&gw_log, false, false))?;
    let app_log = access_log_file(&app_files)?;
    let app_mesh = app_files.write("mesh.yaml", &mesh_config(&app_log, true, false))?;
    let ca_file = app_files.write("ca.pem", ca.ca_pem())?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{THROUGH_GATEWAY}");
    let (_mesh_ca, gw, app) = observed_mesh(
        &topo, "obsgw", &yaml, gw_files, &gw_mesh, app_files, &app_mesh,
    )?;

    const ALLOWED: u64 = 3;
    const DENIED: u64 = 1;
    const TLS: u64 = 2;
    for _ in 0..ALLOWED {
        let r = curl_secret(&topo.app, "http://edition.cnn.test/politics", &[])?;
        ensure!(
            r.status == 200
                && r.body
                    .starts_with("nginx cnn http edition.cnn.test /politics"),
            "allowed: {r:?}"
        );
    }
    for _ in 0..DENIED {
        let r = curl_secret(&topo.app, "http://edition.cnn.test/admin", &[])?;
        ensure!(r.status == 403, "denied: {r:?}");
    }
    for _ in 0..TLS {
        let r = curl_secret(
            &topo.app,
            "https://edition.cnn.test/tls",
            &["--cacert", path_str(&ca_file)],
        )?;
        ensure!(
            r.status == 200 && r.body.starts_with("nginx cnn https edition.cnn.test /tls"),
            "TLS via the gateway: {r:?}"
        );
    }
    cnn.wait_for_requests((ALLOWED + TLS) as usize, Duration::from_secs(5))?;
    ensure!(
        cnn.requests() == (ALLOWED + TLS) as usize,
        "nginx: {}",
        cnn.access_log()
    );

    // The sidecar: everything goes to the gateway Service.
    let scrape = || app.metrics();
    let to_gw = |more: &[&'static str]| {
        with(
            SIDECAR_SOURCE,
            &[
                &[
                    SLEEP_PRINCIPAL,
                    "destination_service=\"istio-egressgateway.istio-system.svc.cluster.local\"",
                    "destination_service_name=\"istio-egressgateway\"",
                    "destination_service_namespace=\"istio-system\"",
                ][..],
                more,
            ]
            .concat(),
        )
    };
    expect_series(
        "sidecar",
        &scrape,
        "istio_requests_total",
        &to_gw(&["response_code=\"200\"", "response_flags=\"-\""]),
        ALLOWED,
    )?;
    expect_series(
        "sidecar",
        &scrape,
        "istio_requests_total",
        &to_gw(&["response_code=\"403\""]),
        DENIED,
    )?;
    let m = expect_series(
        "sidecar",
        &scrape,
        "istio_tcp_connections_closed_total",
        &to_gw(&["request_protocol=\"tcp\""]),
        TLS,
    )?;
    ensure!(
        matching(&m, "istio_requests_total", &[]).len() == 2
            && matching(&m, "istio_tcp_connections_closed_total", &[]).len() == 1,
        "unexpected series:\n{m}"
    );
    promtool_check("sidecar", &m)?;

    // The gateway: reporter="source", as itself, towards the external host.
    let gscrape = || gw.metrics();
    let ext = |more: &[&'static str]| {
        with(
            GATEWAY_SOURCE,
            &[
                &[
                    "destination_service=\"edition.cnn.test\"",
                    "destination_service_name=\"edition.cnn.test\"",
                ][..],
                more,
            ]
            .concat(),
        )
    };
    expect_series(
        "gateway",
        &gscrape,
        "istio_requests_total",
        &ext(&[
            "destination_service_namespace=\"default\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
        ]),
        ALLOWED,
    )?;
    expect_series(
        "gateway",
        &gscrape,
        "istio_requests_total",
        &ext(&["response_code=\"403\""]),
        DENIED,
    )?;
    let tcp = ext(&["request_protocol=\"tcp\"", "response_flags=\"-\""]);
    expect_series(
        "gateway",
        &gscrape,
        "istio_tcp_connections_closed_total",
        &tcp,
        TLS,
    )?;
    let sni = "sni=\"edition.cnn.test\"";
    let g = expect_series(
        "gateway",
        &gscrape,
        "egret_tls_passthrough_connections_total",
        &[sni],
        TLS,
    )?;
    ensure!(
        one(&g, "istio_tcp_connections_opened_total", &tcp)? == TLS
            && one(&g, "istio_tcp_sent_bytes_total", &tcp)? > 0
            && one(&g, "istio_tcp_received_bytes_total", &tcp)? > 0
            && one(&g, "egret_tls_passthrough_sent_bytes_total", &[sni])? > 0
            && one(&g, "egret_tls_passthrough_received_bytes_total", &[sni])? > 0
            && matching(&g, "istio_requests_total", &[]).len() == 2
            && matching(&g, "istio_tcp_connections_closed_total", &[]).len() == 1,
        "{g}"
    );
    promtool_check("gateway", &g)?;

    // egret's own series: the gateway's pooled HTTP/1.1 connections to nginx served each
    // allowed request once; it resolved edition.cnn.test; both proxies name their SVID's
    // expiry (issued for 24 h) and the one configuration in force.
    let new = one(
        &g,
        "egret_upstream_connections_total",
        &["protocol=\"http1\"", "reused=\"false\""],
    )?;
    let reused = one(
        &g,
        "egret_upstream_connections_total",
        &["protocol=\"http1\"", "reused=\"true\""],
    )?;
    ensure!(new >= 1 && new + reused == ALLOWED, "{g}");
    ensure!(
        series(&g, "egret_dns_lookups_total") >= 1
            && series(&g, "egret_dns_failures_total") == 0
            && series(&g, "egret_dns_cache_entries") == 1,
        "{g}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock")?
        .as_secs();
    for (what, scrape, id) in [
        ("sidecar", &m, SLEEP_ID.to_string()),
        (
            "gateway",
            &g,
            format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                GATEWAY_ID.0, GATEWAY_ID.1
            ),
        ),
    ] {
        let expiry = one(
            scrape,
            "egret_certificate_expiry_timestamp_seconds",
            &["kind=\"workload\"", &format!("id=\"{id}\"")],
        )?;
        ensure!(
            expiry > now + 23 * 3600 && expiry <= now + 24 * 3600 + 300,
            "{what}: certificate expiry {expiry} (now {now})"
        );
        ensure!(
            matching(scrape, "egret_config_info", &["version=\""]).len() == 1
                && one(scrape, "egret_config_info", &[])? == 1,
            "{what}: egret_config_info\n{scrape}"
        );
    }

    // Access logs: the gateway's TEXT, the sidecar's JSON.
    let glines = log_lines(&gw_log, (ALLOWED + DENIED + TLS) as usize)?;
    no_secrets("gateway", &glines)?;
    let q = "?x=1&access_token=REDACTED";
    ensure!(
        count_text(
            &glines,
            &[
                &format!("\"GET /politics{q} HTTP/2\" 200 - via_upstream "),
                "\"edition.cnn.test\" \"203.0.113.10:80\" outbound|80||edition.cnn.test ",
            ]
        ) == ALLOWED as usize,
        "{glines:#?}"
    );
    ensure!(
        count_text(
            &glines,
            &[&format!(
                "\"GET /admin{q} HTTP/2\" 403 - rbac_access_denied"
            )]
        ) == DENIED as usize,
        "{glines:#?}"
    );
    ensure!(
        count_text(
            &glines,
            &[
                "\"- - -\" 0 - ",
                "\"203.0.113.10:443\" outbound|443||edition.cnn.test ",
                " edition.cnn.test ",
            ]
        ) == TLS as usize,
        "{glines:#?}"
    );
    let alines = log_lines(&app_log, (ALLOWED + DENIED + TLS) as usize)?;
    no_secrets("sidecar", &alines)?;
    let mut codes: Vec<i64> = Vec::new();
    for l in &alines {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
        codes.push(v["response_code"].as_i64().with_context(|| l.clone())?);
        ensure!(
            v["upstream_cluster"]
                .as_str()
                .is_some_and(|c| c.contains("istio-egressgateway.istio-system.svc.cluster.local")),
            "the sidecar's line names the gateway cluster: {l}"
        );
    }
    codes.sort_unstable();
    let mut want = vec![0; TLS as usize];
    want.extend(vec![200; ALLOWED as usize]);
    want.extend(vec![403; DENIED as usize]);
    ensure!(codes == want, "{alines:#?}");
    Ok(())
}
