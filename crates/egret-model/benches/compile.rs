//! Compile time and memory on a large, generated configuration: 10,000 ServiceEntries,
//! 2,000 VirtualServices, 2,000 DestinationRules and one egress Gateway over 20 namespaces.
//!
//! ```text
//! cargo bench -p egret-model --bench compile            # timings
//! cargo bench -p egret-model --bench compile -- --test  # each benchmark once (CI smoke)
//! ```
//!
//! Groups: `load/yaml` (parsing the generated text), `compile/sidecar` (`compile`: validation,
//! analysis and build, for a sidecar in `ns-03`), `compile/sidecar-build-only`
//! (`compile::build`) and `compile/gateway` (`compile` for the egress gateway). Flat sampling,
//! 10 samples in 3 s (the load: 10 s), so the whole run takes about half a minute; a routine that
//! cannot run 10 times in that budget runs 11 times (warm-up included). Before the benchmarks it
//! prints the wall time of one run of each and the heap the ConfigSet and a Snapshot hold; in
//! `--test` mode, where every benchmark runs once, those numbers come from that run and nothing
//! else is repeated but the load.
//!
//! Memory. A counting `#[global_allocator]` needs an `unsafe impl GlobalAlloc`, and the
//! workspace forbids `unsafe_code` (a `forbid` that no file can relax), so heap sizes are the
//! growth of the process's anonymous resident memory (`RssAnon`) over a step whose result is
//! kept alive. Growth alone is wrong in both directions: the allocator reuses memory earlier
//! steps freed (a Snapshot built on the main thread after the load grows RSS by almost
//! nothing) and keeps what the step itself freed (the first load grows it by 148 MiB). So
//! each is measured on its second occurrence, when the free memory the first left behind is
//! about what the second needs: the ConfigSet on a second load, the Snapshot on a build-only
//! run while a full compile's results are alive, on a thread of its own (a fresh glibc
//! arena). The figures include malloc's per-allocation overhead (headers, rounding), which a
//! counting allocator would not see. Checked against one in a scratch crate (commit 67d8788):
//! Snapshot 39.7 MiB here, 33.5 MiB requested; ConfigSet 82.2 MiB here, 65.3 MiB requested.
//!
//! The compiles run on that thread too: on the thread that loaded the configuration they take
//! 1.5-2.5x longer, because the load leaves the main arena fragmented.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use egret_config::{ConfigSet, Diagnostics, Severity};
use egret_model::{ProxyIdentity, Snapshot};

const SERVICE_ENTRIES: usize = 10_000;
const VIRTUAL_SERVICES: usize = 2_000;
const DESTINATION_RULES: usize = 2_000;
const NAMESPACES: usize = 20;
/// The namespace of the benchmarked sidecar.
const SIDECAR_NS: &str = "ns-03";
const GATEWAY_NS: &str = "istio-system";
const GATEWAY_LABELS: &[(&str, &str)] = &[("istio", "egressgateway")];
const GATEWAY_SERVICE: &str = "istio-egressgateway.istio-system.svc.cluster.local";
const TCP_PORTS: [u16; 4] = [3306, 5432, 6379, 9092];

// ===== The generated configuration =====
//
// ServiceEntry `i` lives in namespace `ns-(i % 20)`; its shape is chosen by `i % 10`:
//   0, 1  DNS, HTTP 80                         svc-i.ext.test
//   2, 3  DNS, HTTP 80 + HTTPS 443 (TLS origination by a DestinationRule)
//   4..=6 DNS, HTTPS 443
//   7     STATIC, HTTP 80, three endpoints labelled version v1/v2
//   8     NONE, TCP on one of TCP_PORTS, address 203.0.113.x/32 (unique per address and port)
//   9     wildcard *.wild-i.ext.test, resolution NONE (HTTP 80 or TLS 443, alternately)
// Every 50th entry is exported to its own namespace only.
//
// VirtualService `j` and DestinationRule `j` are about the same host, in that host's namespace:
//   j % 10 in 0..=6  HTTP routes for an HTTP service: a uri-prefix + header match to subsets
//                    v1/v2 (90/10) with a timeout, a /static prefix split 70/30 across two other
//                    services, and a default route with retries (port 443 for services that
//                    originate TLS); DR: subsets, connection pool, outlier detection, and
//                    portLevelSettings tls SIMPLE on 443
//   j % 10 in 7, 8   TLS passthrough routes on sniHosts for an HTTPS service; DR: connection
//                    pool and outlier detection on port 443
//   j % 10 == 9      bound to `mesh` and the egress Gateway: the mesh leg to the gateway
//                    service, the gateway leg to the external service; DR: subsets and pool

fn ns(i: usize) -> String {
    format!("ns-{:02}", i % NAMESPACES)
}

/// Index of the `k`-th ServiceEntry with an HTTP port 80 (shapes 0, 1, 2, 3, 7).
fn http_se(k: usize) -> usize {
    10 * (k / 5) + [0, 1, 2, 3, 7][k % 5]
}

/// Index of the `k`-th ServiceEntry with only an HTTPS port (shapes 4, 5, 6).
fn https_se(k: usize) -> usize {
    10 * (k / 3) + [4, 5, 6][k % 3]
}

fn se_host(i: usize) -> String {
    if i % 10 == 9 {
        format!("*.wild-{i}.ext.test")
    } else {
        format!("svc-{i}.ext.test")
    }
}

fn service_entry(out: &mut String, i: usize) {
    let host = se_host(i);
    let (resolution, ports): (&str, &[(u16, &str, &str)]) = match i % 10 {
        0 | 1 => ("DNS", &[(80, "http", "HTTP")]),
        2 | 3 => ("DNS", &[(80, "http", "HTTP"), (443, "https", "HTTPS")]),
        4..=6 => ("DNS", &[(443, "https", "HTTPS")]),
        7 => ("STATIC", &[(80, "http", "HTTP")]),
        8 => ("NONE", &[]),
        _ if i % 20 == 9 => ("NONE", &[(80, "http", "HTTP")]),
        _ => ("NONE", &[(443, "tls", "TLS")]),
    };
    writeln!(
        out,
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se-{i}\n  namespace: {}\nspec:\n  hosts:\n  - \"{host}\"\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n  ports:",
        ns(i)
    )
    .unwrap();
    if i % 10 == 8 {
        let j = i / 10;
        let port = TCP_PORTS[(j / 254) % TCP_PORTS.len()];
        writeln!(
            out,
            "  - number: {port}\n    name: tcp-{port}\n    protocol: TCP\n  addresses:\n  - 203.0.113.{}/32",
            j % 254 + 1
        )
        .unwrap();
    }
    for (number, name, protocol) in ports {
        writeln!(
            out,
            "  - number: {number}\n    name: {name}\n    protocol: {protocol}"
        )
        .unwrap();
    }
    if i % 10 == 7 {
        out.push_str("  endpoints:\n");
        for (e, version) in ["v1", "v1", "v2"].iter().enumerate() {
            writeln!(
                out,
                "  - address: 192.0.2.{}\n    labels:\n      version: {version}\n    weight: {}",
                (i / 10 + e) % 250 + 1,
                e + 1
            )
            .unwrap();
        }
    }
    if i % 50 == 1 {
        out.push_str("  exportTo:\n  - \".\"\n");
    }
}

fn virtual_service(out: &mut String, j: usize) {
    match j % 10 {
        0..=6 => {
            let i = http_se(j);
            let host = se_host(i);
            let port = if matches!(i % 10, 2 | 3) { 443 } else { 80 };
            let (a, b) = (se_host(http_se(j + 2000)), se_host(http_se(j + 3000)));
            writeln!(
                out,
                r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs-{j}
  namespace: {ns}
spec:
  hosts:
  - {host}
  http:
  - name: api
    match:
    - uri:
        prefix: /api/v{v}
      headers:
        x-tenant:
          exact: tenant-{t}
    - uri:
        prefix: /api/v{v}/admin
      headers:
        x-canary:
          exact: "true"
    route:
    - destination:
        host: {host}
        subset: v1
        port:
          number: 80
      weight: 90
    - destination:
        host: {host}
        subset: v2
        port:
          number: 80
      weight: 10
    timeout: 5s
  - name: static
    match:
    - uri:
        prefix: /static
    route:
    - destination:
        host: {a}
      weight: 70
    - destination:
        host: {b}
      weight: 30
    timeout: 2s
  - name: default
    route:
    - destination:
        host: {host}
        port:
          number: {port}
    timeout: 15s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: 5xx,connect-failure"#,
                ns = ns(i),
                v = j % 3 + 1,
                t = j % 7,
            )
            .unwrap();
        }
        7 | 8 => {
            let i = https_se(j);
            let host = se_host(i);
            writeln!(
                out,
                r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs-{j}
  namespace: {ns}
spec:
  hosts:
  - {host}
  tls:
  - match:
    - port: 443
      sniHosts:
      - {host}
    route:
    - destination:
        host: {host}
        port:
          number: 443"#,
                ns = ns(i),
            )
            .unwrap();
        }
        _ => {
            let i = http_se(j);
            let host = se_host(i);
            writeln!(
                out,
                r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs-{j}
  namespace: {ns}
spec:
  hosts:
  - {host}
  gateways:
  - {GATEWAY_NS}/egress-gw
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: {GATEWAY_SERVICE}
        port:
          number: 80
  - match:
    - gateways:
      - {GATEWAY_NS}/egress-gw
      port: 80
    route:
    - destination:
        host: {host}
        subset: v1
        port:
          number: 80
      weight: 80
    - destination:
        host: {host}
        subset: v2
        port:
          number: 80
      weight: 20
    timeout: 10s"#,
                ns = ns(i),
            )
            .unwrap();
        }
    }
}

fn destination_rule(out: &mut String, j: usize) {
    const POOL: &str = r#"
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 3s
      http:
        http1MaxPendingRequests: 64
        maxRequestsPerConnection: 10
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50"#;
    const SUBSETS: &str = r#"
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN"#;
    let (i, body) = match j % 10 {
        0..=6 => {
            let i = http_se(j);
            let body = format!(
                r#"
  trafficPolicy:{POOL}
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: SIMPLE
        sni: {host}{SUBSETS}"#,
                host = se_host(i)
            );
            (i, body)
        }
        7 | 8 => {
            let i = https_se(j);
            let body = format!(
                r#"
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 443{}"#,
                POOL.replace("\n    ", "\n      ")
            );
            (i, body)
        }
        _ => (http_se(j), format!("\n  trafficPolicy:{POOL}{SUBSETS}")),
    };
    writeln!(
        out,
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr-{j}\n  namespace: {}\nspec:\n  host: \"{}\"{body}",
        ns(i),
        se_host(i)
    )
    .unwrap();
}

fn gateway(out: &mut String) {
    writeln!(
        out,
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress-gw
  namespace: {GATEWAY_NS}
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "*.ext.test"
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - "*.ext.test"
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: istio-egressgateway
  namespace: {GATEWAY_NS}
spec:
  hosts:
  - {GATEWAY_SERVICE}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 443
    name: tls
    protocol: TLS
  endpoints:
  - address: 198.51.100.20
    labels:
      istio: egressgateway"#
    )
    .unwrap();
}

/// The whole configuration as one multi-document YAML text. Deterministic.
fn generate() -> String {
    let mut out = String::with_capacity(16 << 20);
    gateway(&mut out);
    for i in 0..SERVICE_ENTRIES {
        service_entry(&mut out, i);
    }
    for j in 0..VIRTUAL_SERVICES {
        virtual_service(&mut out, j);
    }
    for j in 0..DESTINATION_RULES {
        destination_rule(&mut out, j);
    }
    out
}

// ===== Measurements =====

/// Anonymous resident memory of this process, in bytes (Linux; `None` elsewhere).
fn rss_anon() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let kb = l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim();
            kb.parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    field("RssAnon:").or_else(|| field("VmRSS:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Run `f` once, keeping its result: (result, wall time, growth of resident memory).
fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration, Option<u64>) {
    let before = rss_anon();
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    let after = rss_anon();
    let grew = before.zip(after).map(|(b, a)| a.saturating_sub(b));
    (out, took, grew)
}

fn fmt_mem(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".to_string(), |b| format!("{:.1} MiB", mib(b)))
}

fn describe(s: &Snapshot) -> String {
    let vhosts: usize = s.listeners.iter().map(|l| l.virtual_hosts.len()).sum();
    let chains: usize = s
        .listeners
        .iter()
        .map(|l| l.tls_chains.len() + l.tcp_chains.len())
        .sum();
    format!(
        "{} listeners, {} clusters; {vhosts} virtual hosts, {chains} L4 chains",
        s.listeners.len(),
        s.clusters.len()
    )
}

fn sidecar() -> ProxyIdentity {
    ProxyIdentity::sidecar(SIDECAR_NS)
}

fn egress_gateway() -> ProxyIdentity {
    ProxyIdentity::gateway(GATEWAY_NS, GATEWAY_LABELS)
}

fn errors(d: &Diagnostics) -> usize {
    d.iter().filter(|d| d.severity == Severity::Error).count()
}

fn load(yaml: &str) -> (ConfigSet, Diagnostics) {
    ConfigSet::from_str("bench.yaml", yaml)
}

fn print_time(name: &str, took: Duration, what: &str) {
    let line = format!("one run of {name:<26} {took:>9.1?}  {what}");
    println!("{}", line.trim_end());
}

fn print_config(set: &ConfigSet, diags: &Diagnostics, yaml: &str) {
    assert_eq!(
        errors(diags),
        0,
        "the generated configuration must load cleanly: {diags:?}"
    );
    println!(
        "config: {} objects ({} ServiceEntries, {} VirtualServices, {} DestinationRules, {} Gateways), {:.1} MiB of YAML",
        set.object_count(),
        set.service_entries.len(),
        set.virtual_services.len(),
        set.destination_rules.len(),
        set.gateways.len(),
        mib(yaml.len() as u64),
    );
}

fn print_config_heap(grew: Option<u64>) {
    println!("ConfigSet heap: {}", fmt_mem(grew));
}

fn print_compile(name: &str, took: Duration, s: &Snapshot, diags: Option<&Diagnostics>) {
    let diags = diags
        .map(|d| format!("; {} diagnostics, {} errors", d.len(), errors(d)))
        .unwrap_or_default();
    print_time(name, took, &format!("({}{diags})", describe(s)));
}

fn print_snapshot_heap(s: &Snapshot, grew: Option<u64>) {
    println!(
        "snapshot heap: {} ({} listeners, {} clusters)",
        fmt_mem(grew),
        s.listeners.len(),
        s.clusters.len()
    );
}

/// One run of each compile with its wall time, and the Snapshot's memory: the growth over the
/// build-only run, made while the full compile's results are still alive. On the compile
/// thread.
fn report_compiles(set: &ConfigSet) {
    let proxy = sidecar();
    let ((full, diags), took, _) = measure(|| egret_model::compile(set, &proxy));
    print_compile("compile/sidecar", took, &full, Some(&diags));
    for d in diags.errors().take(3) {
        println!("    {d}");
    }
    let (built, took, grew) = measure(|| egret_model::compile::build(set, &proxy, Vec::new()));
    print_compile("compile/sidecar-build-only", took, &built, None);
    let ((gw, gw_diags), took, _) = measure(|| egret_model::compile(set, &egress_gateway()));
    print_compile("compile/gateway", took, &gw, Some(&gw_diags));
    print_snapshot_heap(&built, grew);
    drop((full, diags, built, gw, gw_diags));
}

/// Run `f` on a new thread, which glibc gives an allocator arena of its own, free of the
/// fragments the load left in the main thread's.
fn on_compile_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).expect("compile thread panicked")
}

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test");
    let listing = args.iter().any(|a| a == "--list");

    // The report. In --test mode only what the benchmarks' single runs cannot give.
    let start = Instant::now();
    let yaml = generate();
    let set = if listing {
        ConfigSet::default()
    } else {
        println!("generated the configuration in {:.1?}", start.elapsed());
        let ((set, diags), took, _) = measure(|| load(&yaml));
        print_config(&set, &diags, &yaml);
        print_time("load/yaml", took, "");
        if !test_mode {
            // A second load, kept while measured (see the top).
            let (again, _, grew) = measure(|| load(&yaml));
            print_config_heap(grew);
            drop(again);
            on_compile_thread(|| report_compiles(&set));
        }
        set
    };

    let mut c = criterion();
    let mut g = c.benchmark_group("load");
    g.sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10));
    g.bench_function("yaml", |b| {
        b.iter_with_large_drop(|| {
            if !test_mode {
                return load(black_box(&yaml));
            }
            let (out, _, grew) = measure(|| load(&yaml));
            print_config_heap(grew);
            out
        })
    });
    g.finish();

    on_compile_thread(|| {
        let proxy = sidecar();
        let gw = egress_gateway();
        // --test: the full compile's results, alive while the build-only run is measured.
        let kept: RefCell<Option<(Snapshot, Diagnostics)>> = RefCell::new(None);
        let mut c = criterion();
        let mut g = c.benchmark_group("compile");
        g.sampling_mode(SamplingMode::Flat);
        g.bench_function("sidecar", |b| {
            b.iter_with_large_drop(|| {
                if !test_mode {
                    return Some(egret_model::compile(black_box(&set), &proxy));
                }
                let (out, took, _) = measure(|| egret_model::compile(&set, &proxy));
                print_compile("compile/sidecar", took, &out.0, Some(&out.1));
                *kept.borrow_mut() = Some(out);
                None
            })
        });
        g.bench_function("sidecar-build-only", |b| {
            b.iter_with_large_drop(|| {
                if !test_mode {
                    return egret_model::compile::build(black_box(&set), &proxy, Vec::new());
                }
                let (out, took, grew) =
                    measure(|| egret_model::compile::build(&set, &proxy, Vec::new()));
                print_compile("compile/sidecar-build-only", took, &out, None);
                print_snapshot_heap(&out, grew);
                out
            })
        });
        drop(kept.take());
        g.bench_function("gateway", |b| {
            b.iter_with_large_drop(|| {
                if !test_mode {
                    return egret_model::compile(black_box(&set), &gw);
                }
                let (out, took, _) = measure(|| egret_model::compile(&set, &gw));
                print_compile("compile/gateway", took, &out.0, Some(&out.1));
                out
            })
        });
        g.finish();
        c.final_summary();
    });
}
