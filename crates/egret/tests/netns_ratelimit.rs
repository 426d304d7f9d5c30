//! Rate limits at the egress gateway, in network namespaces, with the real `egret` binary
//! (docs/rate-limits.md): a GLOBAL `RateLimitPolicy` quota shared by **two gateway replicas
//! through one real redis-server**, Redis going away under `failureModeDeny: false` and
//! `true`, Redis coming back, and a LOCAL token bucket.
//!
//! Topology as in `netns_gateway.rs` (see `netns_common::gateway`): the app namespace has no
//! way out but the gateway namespace. Here the gateway namespace runs two `egret gateway`
//! processes — replica A serves the gateway Service's port 80 on :80 (admin :15000), replica B
//! on :8080 (`--listen 80=0.0.0.0:8080`, admin :15001) — and redis-server on 127.0.0.1:6379.
//! The gateway Service has one endpoint per replica (198.51.100.2 port 80 and port 8080), so the
//! sidecar spreads the app's requests over both. "The internet" (external) has an HTTP server
//! for `api.test` that always answers 200.
//!
//! The app's requests come from a small blocking HTTP/1.1 keep-alive client in this file, run
//! inside the app namespace as root: captured by iptables, they go through the sidecar and the
//! mesh tunnel, exactly as curl's would, but thousands of them in a few seconds.
//!
//! The tests need root, iproute2, iptables, curl, setpriv (util-linux), dnsmasq and
//! redis-server; without them they FAIL naming what is missing, never skip.

mod netns_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::fn_server::{FnServer, Seen, respond};
use egret_testkit::netns::Netns;
use egret_testkit::process::{require_program, wait_until};
use egret_testkit::{Process, TempDir, Topology, addrs, preflight};
use netns_common::gateway::*;
use netns_common::*;

/// The GLOBAL quota: requests per window.
const N: u64 = 20;
/// Windows (of 1 s) the load runs through.
const WINDOWS: u64 = 10;
/// Where redis-server listens, inside the gateway namespace.
const REDIS_PORT: u16 = 6379;

fn redis_addr() -> SocketAddr {
    sa(std::net::Ipv4Addr::LOCALHOST, REDIS_PORT)
}

/// api.test as the app reaches it (the client connects to the address dnsmasq would give).
fn api_addr() -> SocketAddr {
    sa(addrs::EXTERNAL, 80)
}

/// Programs these tests need (checked up front: a missing one fails the test, naming it).
const RATELIMIT_PROGRAMS: &[&str] = &[
    "ip",
    "sysctl",
    "iptables",
    "ip6tables",
    "curl",
    "setpriv",
    "dnsmasq",
    "redis-server",
];

fn ratelimit_topology(tag: &str) -> Result<Topology> {
    preflight(RATELIMIT_PROGRAMS)?;
    Topology::new(tag)
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The gateway Service (as [`GATEWAY_SERVICE`]) with one endpoint per replica: replica A at
/// 198.51.100.2:80, replica B at 198.51.100.2:8080 (the endpoint's `ports` map, Istio's
/// targetPort of a ServiceEntry endpoint).
const GATEWAY_SERVICE_TWO_REPLICAS: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  hosts:
  - istio-egressgateway.istio-system.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 198.51.100.2
    labels:
      istio: egressgateway
  - address: 198.51.100.2
    ports:
      http: 8080
    labels:
      istio: egressgateway
";

/// istio.io's egress-gateway pattern for plain HTTP to `api.test`: the mesh leg to the gateway
/// Service's port 80, the gateway leg to api.test:80.
const API_THROUGH_GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress-api, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-through-gateway, namespace: default}
spec:
  hosts: [api.test]
  gateways: [mesh, istio-system/egress-api]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 80}}}]
  - match: [{gateways: [istio-system/egress-api], port: 80}]
    route: [{destination: {host: api.test, port: {number: 80}}}]
";

/// N requests a second to api.test per calling principal, shared by every replica through the
/// Redis in the gateway namespace.
/// The Redis timeout is generous (2 s): the exact-count assertion must not depend on a loaded CI
/// machine answering a local Redis call within a production-sized budget (a call over budget
/// fails open and lets one extra request through). Redis going away is a refused connection,
/// which fails at once whatever the timeout.
fn global_policy(deny: bool) -> String {
    format!(
        "\
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: api-quota, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  redis: {{address: \"127.0.0.1:{REDIS_PORT}\", timeout: 2s, failureModeDeny: {deny}}}
  limits:
  - name: per-caller
    scope: GLOBAL
    quota: {N}
    fillInterval: 1s
    match: {{hosts: [api.test]}}
    by: [principal]
"
    )
}

fn global_config(deny: bool) -> String {
    format!(
        "{GATEWAY_SERVICE_TWO_REPLICAS}---\n{API_THROUGH_GATEWAY}---\n{}",
        global_policy(deny)
    )
}

/// 5 requests per 10 s, in each replica's own token bucket.
const LOCAL_POLICY: &str = "\
apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-local, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  limits:
  - name: local-burst
    scope: LOCAL
    quota: 5
    fillInterval: 10s
    by: [principal]
";

// ---------------------------------------------------------------------------------------------
// redis-server inside the gateway namespace
// ---------------------------------------------------------------------------------------------

/// redis-server on 127.0.0.1:6379 inside a namespace, keeping nothing on disk; stoppable and
/// restartable (same port, empty data), stopped on drop.
struct NsRedis<'n> {
    ns: &'n Netns,
    program: PathBuf,
    dir: TempDir,
    process: Option<Process>,
    starts: u32,
}

impl<'n> NsRedis<'n> {
    fn start(ns: &'n Netns) -> Result<NsRedis<'n>> {
        let program = require_program("redis-server")
            .context("install the Debian package redis-server (apt-get install -y redis-server)")?;
        let mut r = NsRedis {
            ns,
            program,
            dir: TempDir::new("rl-redis")?,
            process: None,
            starts: 0,
        };
        r.start_again()?;
        Ok(r)
    }

    fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let port = REDIS_PORT.to_string();
        let args = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            path_str(self.dir.path()),
        ];
        let mut p = self
            .ns
            .spawn(path_str(&self.program), &args, &log)
            .context("start redis-server in the gateway namespace")?;
        let ns = self.ns;
        let ready = wait_until(
            "redis-server to answer PING in the gateway namespace",
            Duration::from_secs(10),
            || {
                p.check_running()?;
                Ok(ns.run_in(|| ping(redis_addr()))?.ok().filter(|ok| *ok))
            },
        );
        if let Err(e) = ready {
            let log = p.log();
            p.stop();
            bail!("{e:#}; redis-server log:\n{log}");
        }
        self.process = Some(p);
        Ok(())
    }

    /// SIGTERM (then SIGKILL): connections are closed, new ones refused.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        let ns = self.ns;
        wait_until("redis-server to go away", Duration::from_secs(5), || {
            Ok(ns
                .run_in(|| TcpStream::connect_timeout(&redis_addr(), Duration::from_millis(200)))?
                .is_err()
                .then_some(()))
        })
    }
}

fn ping(addr: SocketAddr) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf)?;
    Ok(buf[..n].starts_with(b"+PONG"))
}

// ---------------------------------------------------------------------------------------------
// Gateway replicas with their own admin port
// ---------------------------------------------------------------------------------------------

/// One `egret gateway` process (its own files, SVID and log) whose admin endpoint is on
/// `admin` (the [`Gateway`] helper assumes 15000). Stopped on drop (through [`Gateway`]'s
/// drop, which prints its log).
struct Replica<'n> {
    name: &'static str,
    gw: Gateway<'n>,
    admin: u16,
}

impl<'n> Replica<'n> {
    fn start(
        ns: &'n Netns,
        name: &'static str,
        files: Files,
        ca: &MeshCa,
        yaml: &str,
        admin: u16,
        extra: &[&str],
    ) -> Result<Replica<'n>> {
        let config = files.write("config/egret.yaml", yaml)?;
        let config_dir = config.parent().context("config dir")?.to_path_buf();
        let credentials = files.mkdir("credentials")?;
        let identity = files.path().join("identity");
        ca.issue(GATEWAY_ID, &identity, "24h")?;
        let admin_port = admin.to_string();
        let mut args: Vec<String> = [
            "gateway",
            "--config",
            path_str(&config_dir),
            "--namespace",
            GATEWAY_ID.0,
            "--service-account",
            GATEWAY_ID.1,
            "--labels",
            "istio=egressgateway,app=istio-egressgateway",
            "--identity-dir",
            path_str(&identity),
            "--credentials-dir",
            path_str(&credentials),
            "--admin-port",
            &admin_port,
            "--config-poll-ms",
            "200",
            "--drain-seconds",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Gateway::spawn(ns, &files, &args)?;
        let mut r = Replica {
            name,
            gw: Gateway {
                ns,
                process,
                files,
                args,
            },
            admin,
        };
        r.wait_ready(Duration::from_secs(20))?;
        Ok(r)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.gw.process.check_running()?;
            let r = curl(self.gw.ns, &["--max-time", "2", &self.url("/ready")])?;
            if r.status == 200 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "gateway replica {} was not ready after {timeout:?} (last /ready: {r:?}); its log:\n{}",
                    self.name,
                    self.gw.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn metrics(&self) -> Result<String> {
        let r = curl(self.gw.ns, &[&self.url("/metrics")])?;
        ensure!(
            r.status == 200,
            "GET /metrics on gateway replica {}: {r:?}",
            self.name
        );
        Ok(r.body)
    }

    fn counts(&self) -> Result<Counts> {
        Ok(Counts::of(&self.metrics()?))
    }

    /// Replaces `config/egret.yaml` atomically and waits until the replica has loaded it.
    fn reconfigure(&self, yaml: &str) -> Result<()> {
        let loaded = "egret_config_loaded_total";
        let before = series(&self.metrics()?, loaded);
        let tmp = self.gw.files.write("egret.yaml.new", yaml)?;
        std::fs::rename(&tmp, self.gw.files.path().join("config/egret.yaml"))
            .context("replace config/egret.yaml")?;
        wait_until(
            &format!(
                "gateway replica {} to load the new configuration",
                self.name
            ),
            Duration::from_secs(10),
            || Ok((series(&self.metrics()?, loaded) > before).then_some(())),
        )
        .with_context(|| format!("replica {} log:\n{}", self.name, self.gw.log()))
    }
}

/// The rate-limit counters of one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    allowed: u64,
    limited: u64,
    failed_open: u64,
    failed_closed: u64,
    redis_errors: u64,
    /// `egret_policy_decisions_total{decision="deny",reason="rate_limited",protocol="http"}`.
    policy_rate_limited: u64,
    /// `egret_outbound_requests_total{outcome="rate_limited",protocol="http"}`.
    outbound_rate_limited: u64,
}

impl Counts {
    fn of(m: &str) -> Counts {
        let decision = |d: &str| {
            series(
                m,
                &format!("egret_ratelimit_decisions_total{{decision=\"{d}\"}}"),
            )
        };
        Counts {
            allowed: decision("allowed"),
            limited: decision("limited"),
            failed_open: decision("failed_open"),
            failed_closed: decision("failed_closed"),
            redis_errors: series(m, "egret_ratelimit_redis_errors_total"),
            policy_rate_limited: series(
                m,
                "egret_policy_decisions_total{decision=\"deny\",reason=\"rate_limited\",protocol=\"http\"}",
            ),
            outbound_rate_limited: series(m, &requests("rate_limited")),
        }
    }

    fn minus(self, o: Counts) -> Counts {
        Counts {
            allowed: self.allowed - o.allowed,
            limited: self.limited - o.limited,
            failed_open: self.failed_open - o.failed_open,
            failed_closed: self.failed_closed - o.failed_closed,
            redis_errors: self.redis_errors - o.redis_errors,
            policy_rate_limited: self.policy_rate_limited - o.policy_rate_limited,
            outbound_rate_limited: self.outbound_rate_limited - o.outbound_rate_limited,
        }
    }

    fn plus(self, o: Counts) -> Counts {
        Counts {
            allowed: self.allowed + o.allowed,
            limited: self.limited + o.limited,
            failed_open: self.failed_open + o.failed_open,
            failed_closed: self.failed_closed + o.failed_closed,
            redis_errors: self.redis_errors + o.redis_errors,
            policy_rate_limited: self.policy_rate_limited + o.policy_rate_limited,
            outbound_rate_limited: self.outbound_rate_limited + o.outbound_rate_limited,
        }
    }
}

/// Both replicas' counters now.
fn snapshot(replicas: &[&Replica<'_>]) -> Result<Vec<Counts>> {
    replicas.iter().map(|r| r.counts()).collect()
}

/// What each replica counted since `before`, and the sum.
fn since(replicas: &[&Replica<'_>], before: &[Counts]) -> Result<(Vec<Counts>, Counts)> {
    let now = snapshot(replicas)?;
    let each: Vec<Counts> = now.iter().zip(before).map(|(n, b)| n.minus(*b)).collect();
    let sum = each.iter().fold(Counts::default(), |s, c| s.plus(*c));
    Ok((each, sum))
}

// ---------------------------------------------------------------------------------------------
// A blocking HTTP/1.1 keep-alive client inside the app namespace
// ---------------------------------------------------------------------------------------------

/// One response: the status and the headers (names in lower case).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name)?.trim().parse().ok()
    }

    /// A 429 as docs/rate-limits.md describes it for a limit of `quota`.
    fn is_rate_limited(&self, quota: u64) -> bool {
        self.status == 429
            && self.header_u64("retry-after").is_some_and(|s| s >= 1)
            && self.header_u64("x-ratelimit-limit") == Some(quota)
            && self.header_u64("x-ratelimit-remaining") == Some(0)
            && self.header_u64("x-ratelimit-reset").is_some_and(|s| s >= 1)
    }
}

/// `GET <path>` to api.test over one kept-alive connection made from inside the app namespace
/// (captured by iptables: served by the sidecar).
struct Client<'n> {
    ns: &'n Netns,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened (for the report).
    connects: u64,
}

impl<'n> Client<'n> {
    fn new(ns: &'n Netns) -> Client<'n> {
        Client {
            ns,
            conn: None,
            connects: 0,
        }
    }

    fn get(&mut self, path: &str) -> Result<Answer> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nUser-Agent: egret-rl-test\r\n\r\n");
        // A kept-alive connection the proxy has just closed fails before any byte of an answer:
        // then (only then) the request is sent again on a new connection.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            if self.conn.is_none() {
                let s = self.ns.connect_tcp(api_addr(), Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                self.connects += 1;
                self.conn = Some(BufReader::new(s));
            }
            let conn = self.conn.as_mut().context("connection")?;
            let sent = conn.get_mut().write_all(request.as_bytes());
            let answer = match sent {
                Ok(()) => read_answer(conn),
                Err(e) => Err(ReadError::nothing(e)),
            };
            match answer {
                Ok((answer, keep)) => {
                    if !keep {
                        self.conn = None;
                    }
                    return Ok(answer);
                }
                Err(e) if e.nothing_read && reused && attempt == 0 => {
                    self.conn = None;
                }
                Err(e) => {
                    self.conn = None;
                    bail!("GET http://api.test{path}: {}", e.what);
                }
            }
        }
        bail!("GET http://api.test{path}: no answer on a new connection")
    }
}

/// Why no answer was read; `nothing_read`: the connection failed before its first byte.
#[derive(Debug)]
struct ReadError {
    nothing_read: bool,
    what: String,
}

impl ReadError {
    fn nothing(what: impl ToString) -> ReadError {
        ReadError {
            nothing_read: true,
            what: what.to_string(),
        }
    }

    fn broken(what: impl ToString) -> ReadError {
        ReadError {
            nothing_read: false,
            what: what.to_string(),
        }
    }
}

/// Reads one HTTP/1.1 response; also says whether the connection can be used again.
fn read_answer(r: &mut BufReader<TcpStream>) -> std::result::Result<(Answer, bool), ReadError> {
    let broken = |e: std::io::Error| ReadError::broken(e);
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Err(ReadError::nothing("closed")),
        Ok(_) => {}
        Err(e) => return Err(ReadError::nothing(e)),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ReadError::broken(format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(broken)? == 0 {
            return Err(ReadError::broken("closed in the headers"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let answer = Answer { status, headers };
    let mut keep = !answer
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(broken)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ReadError::broken(format!("chunk size {size:?}")))?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).map_err(broken)?;
            if n == 0 {
                break;
            }
        }
    } else if let Some(n) = answer.header_u64("content-length") {
        let mut body = vec![0u8; n as usize];
        r.read_exact(&mut body).map_err(broken)?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).map_err(broken)?;
        keep = false;
    }
    Ok((answer, keep))
}

/// What the client side saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    limited: u64,
    /// Anything but a 200 or a well-formed 429 (a few, described).
    other: u64,
    other_examples: Vec<String>,
    /// 200s by the wall-clock second the request was sent in.
    ok_by_second: BTreeMap<u64, u64>,
    connects: u64,
}

impl Tally {
    fn add(&mut self, sent: SystemTime, r: Result<Answer>, quota: u64) {
        match r {
            Ok(a) if a.status == 200 => {
                self.ok += 1;
                let s = sent
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                *self.ok_by_second.entry(s).or_default() += 1;
            }
            Ok(a) if a.is_rate_limited(quota) => self.limited += 1,
            other => {
                self.other += 1;
                if self.other_examples.len() < 5 {
                    self.other_examples.push(format!("{other:?}"));
                }
            }
        }
    }

    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.limited += o.limited;
        self.other += o.other;
        for e in o.other_examples {
            if self.other_examples.len() < 5 {
                self.other_examples.push(e);
            }
        }
        for (s, n) in o.ok_by_second {
            *self.ok_by_second.entry(s).or_default() += n;
        }
        self.connects += o.connects;
    }
}

/// `threads` clients, each sending a request, then pausing `pace`, until `end` (a request is
/// never started at or after `end`).
fn load(ns: &Netns, threads: usize, pace: Duration, end: Instant, quota: u64) -> Result<Tally> {
    let results: Vec<Result<Tally>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || -> Result<Tally> {
                    let mut client = Client::new(ns);
                    let mut t = Tally::default();
                    while Instant::now() < end {
                        let sent = SystemTime::now();
                        t.add(sent, client.get("/load"), quota);
                        std::thread::sleep(pace);
                    }
                    t.connects = client.connects;
                    Ok(t)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a load thread panicked")))
            })
            .collect()
    });
    let mut total = Tally::default();
    for r in results {
        total.merge(r?);
    }
    Ok(total)
}

/// `count` requests, one after the other on one connection.
fn sequential(ns: &Netns, count: usize) -> Result<Vec<Answer>> {
    let mut c = Client::new(ns);
    (0..count).map(|_| c.get("/seq")).collect()
}

/// Sleeps until `lead` after the next whole second of the wall clock (the clock redis-server's
/// TIME reads, so these seconds are the GLOBAL windows), at least `min_wait` from now. Returns
/// that whole second.
fn align_to_second(min_wait: Duration, lead: Duration) -> Result<SystemTime> {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH)?;
    let mut second = since.as_secs() + 1;
    while Duration::from_secs(second) < since + min_wait {
        second += 1;
    }
    let boundary = UNIX_EPOCH + Duration::from_secs(second);
    std::thread::sleep(boundary.duration_since(now)? + lead);
    Ok(boundary)
}

/// The external api.test: 200 to everything.
fn api_server(topo: &Topology) -> Result<FnServer> {
    FnServer::start(
        Some(&topo.external),
        api_addr(),
        Arc::new(|_s: &Seen| respond(200, "api.test ok\n", &[])),
    )
}

// ---------------------------------------------------------------------------------------------
// GLOBAL: two replicas, one Redis
// ---------------------------------------------------------------------------------------------

/// Two gateway replicas share one GLOBAL quota of N a second through one redis-server: ten
/// whole windows of load from the app (spread over both replicas by the sidecar) are allowed
/// N × 10 in total. Then Redis goes away: with `failureModeDeny: false` the traffic flows
/// (counted `failed_open`, a warning logged); reconfigured to `true`, it is refused with 429
/// (`failed_closed`). Redis comes back: limiting works again by itself, N of a 2N burst.
#[test]
fn ratelimit_global_quota_shared_by_two_replicas_through_redis() -> Result<()> {
    let test_start = Instant::now();
    let topo = ratelimit_topology("rlglob")?;
    let _dns = start_dns(&topo, &[("api.test", addrs::EXTERNAL)])?;
    let api = api_server(&topo)?;
    let mut redis = NsRedis::start(&topo.gateway)?;

    let ca = MeshCa::new("rlglob-ca")?;
    let yaml = global_config(false);
    let a = Replica::start(
        &topo.gateway,
        "A",
        Files::new("rlglob-gwa")?,
        &ca,
        &yaml,
        15000,
        &[],
    )?;
    let b = Replica::start(
        &topo.gateway,
        "B",
        Files::new("rlglob-gwb")?,
        &ca,
        &yaml,
        15001,
        &["--listen", "80=0.0.0.0:8080"],
    )?;
    let _app = sidecar(&topo.app, Files::new("rlglob-app")?, &ca, SLEEP, &yaml, &[])?;
    let replicas = [&a, &b];

    // The route works, through both replicas (both endpoints of the gateway Service), and the
    // limit applies on both.
    let mut probe = Client::new(&topo.app);
    wait_until(
        "requests from the app to reach both gateway replicas",
        Duration::from_secs(15),
        || {
            let r = probe.get("/warm-up")?;
            ensure!(
                r.status == 200 || r.is_rate_limited(N),
                "warm-up request: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(60));
            let c = snapshot(&replicas)?;
            Ok(c.iter().all(|c| c.allowed + c.limited > 0).then_some(()))
        },
    )?;
    drop(probe);

    // --- Ten whole windows of load, from a window boundary.
    let before = snapshot(&replicas)?;
    let api_before = api.requests();
    let boundary = align_to_second(Duration::from_millis(200), Duration::from_millis(5))?;
    let end = Instant::now()
        + (boundary + Duration::from_millis(WINDOWS * 1000 - 200))
            .duration_since(SystemTime::now())?;
    let tally = load(&topo.app, 3, Duration::from_millis(3), end, N)?;
    let finished = SystemTime::now().duration_since(boundary)?;
    let (each, sum) = since(&replicas, &before)?;
    let api_seen = api.requests() - api_before;
    eprintln!(
        "load: {} requests over {finished:?} on {} connections: {} × 200, {} × 429, {} other; \
         200s by second: {:?}; replica A {:?}; replica B {:?}; api.test saw {api_seen}",
        tally.ok + tally.limited + tally.other,
        tally.connects,
        tally.ok,
        tally.limited,
        tally.other,
        tally.ok_by_second.values().collect::<Vec<_>>(),
        each[0],
        each[1],
    );
    ensure!(
        finished < Duration::from_millis(WINDOWS * 1000),
        "the load ran past its last window ({finished:?} after the first boundary)"
    );
    ensure!(
        tally.other == 0,
        "every answer must be a 200 or a 429 with retry-after and x-ratelimit-limit: {N}; \
         {} were not, e.g. {:?}",
        tally.other,
        tally.other_examples
    );
    ensure!(
        tally.limited > tally.ok,
        "the load did not exceed the quota (it must, for the test to mean anything): {tally:?}"
    );
    ensure!(
        each.iter().all(|c| c.allowed > 0 && c.limited > 0),
        "both replicas must have allowed and limited requests (the load was shared): {each:?}"
    );
    ensure!(
        sum.failed_open == 0 && sum.failed_closed == 0 && sum.redis_errors == 0,
        "Redis answered every decision during the load: {each:?}"
    );
    let expected = N * WINDOWS;
    ensure!(
        sum.allowed.abs_diff(expected) * 20 <= expected,
        "the replicas together allowed {} in {WINDOWS} windows of {N}: more than 5% off {expected} \
         ({each:?})",
        sum.allowed
    );
    ensure!(
        tally.ok == sum.allowed,
        "the app got {} × 200, the replicas allowed {}",
        tally.ok,
        sum.allowed
    );
    ensure!(
        tally.limited == sum.limited
            && sum.policy_rate_limited == sum.limited
            && sum.outbound_rate_limited == sum.limited,
        "429s: the app got {}, the replicas counted {:?}",
        tally.limited,
        sum
    );
    ensure!(
        api_seen == tally.ok,
        "api.test saw {api_seen} requests; only the {} allowed ones may reach it",
        tally.ok
    );

    // --- Redis goes away; failureModeDeny: false lets the traffic through.
    redis.stop()?;
    let before = snapshot(&replicas)?;
    let answers = sequential(&topo.app, 2 * N as usize)?;
    ensure!(
        answers.iter().all(|r| r.status == 200),
        "with Redis down and failureModeDeny: false, {} requests in a row must all succeed: {:?}",
        2 * N,
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let (each, sum) = since(&replicas, &before)?;
    eprintln!(
        "Redis down, fail open: replica A {:?}; replica B {:?}",
        each[0], each[1]
    );
    ensure!(
        sum.failed_open == 2 * N && sum.allowed == 0 && sum.limited == 0,
        "every decision failed open: {each:?}"
    );
    ensure!(
        sum.redis_errors == sum.failed_open,
        "every failed decision is a Redis error: {each:?}"
    );
    for (r, c) in replicas.iter().zip(&each) {
        if c.failed_open > 0 {
            let line = r.gw.wait_for_line(&[
                "rate limit: Redis did not answer",
                "127.0.0.1:6379",
                "allowing",
            ])?;
            eprintln!("replica {}: {line}", r.name);
        }
    }

    // --- failureModeDeny: true: refused with 429, counted failed_closed.
    let deny = global_config(true);
    for r in replicas {
        r.reconfigure(&deny)?;
    }
    let before = snapshot(&replicas)?;
    let api_before = api.requests();
    let answers = sequential(&topo.app, 10)?;
    for r in &answers {
        ensure!(
            r.is_rate_limited(N) && r.header("retry-after") == Some("1"),
            "with Redis down and failureModeDeny: true: 429, retry-after: 1, \
             x-ratelimit-limit: {N}: {r:?}"
        );
    }
    eprintln!("fail closed, the app got: {:?}", answers[0]);
    let (each, sum) = since(&replicas, &before)?;
    eprintln!(
        "Redis down, fail closed: replica A {:?}; replica B {:?}",
        each[0], each[1]
    );
    ensure!(
        sum.failed_closed == 10 && sum.allowed == 0 && sum.failed_open == 0,
        "every decision failed closed: {each:?}"
    );
    ensure!(
        sum.redis_errors == 10 && sum.outbound_rate_limited == 10,
        "Redis errors and rate-limited requests: {each:?}"
    );
    ensure!(
        api.requests() == api_before,
        "a refused request reached api.test"
    );
    // The warning is logged at most once a second per replica: keep asking until both said so.
    let mut refusals = 0;
    wait_until(
        "both replicas to log that they refuse while Redis is down",
        Duration::from_secs(10),
        || {
            let r = sequential(&topo.app, 1)?;
            ensure!(r[0].status == 429, "fail closed: {:?}", r[0]);
            refusals += 1;
            std::thread::sleep(Duration::from_millis(100));
            Ok(replicas
                .iter()
                .all(|r| {
                    !lines_with(
                        &r.gw.log(),
                        &[
                            "rate limit: Redis did not answer",
                            "refusing (failureModeDeny)",
                        ],
                    )
                    .is_empty()
                })
                .then_some(()))
        },
    )?;
    eprintln!("{refusals} more refusals until both replicas logged fail-closed warnings");

    // --- Redis is back: limits work again, with nothing restarted or reloaded.
    redis.start_again()?;
    let mut probe = Client::new(&topo.app);
    wait_until(
        "an allowed request once Redis is back",
        Duration::from_secs(10),
        || Ok((probe.get("/probe")?.status == 200).then_some(())),
    )?;
    drop(probe);
    // 2N requests at once, from four connections, inside one window.
    let before = snapshot(&replicas)?;
    let mut clients: Vec<Client<'_>> = (0..4).map(|_| Client::new(&topo.app)).collect();
    for c in &mut clients {
        // Connected (and counted) in the window before the burst's.
        c.get("/connect")?;
    }
    let warm = since(&replicas, &before)?.1;
    let before = snapshot(&replicas)?;
    let boundary = align_to_second(Duration::from_millis(100), Duration::from_millis(20))?;
    let per_client = (2 * N as usize) / clients.len();
    let answers: Vec<Result<Vec<Answer>>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|c| s.spawn(move || (0..per_client).map(|_| c.get("/burst")).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a burst thread panicked")))
            })
            .collect()
    });
    let took = SystemTime::now().duration_since(boundary)?;
    let mut burst = Vec::new();
    for a in answers {
        burst.extend(a?);
    }
    let (each, sum) = since(&replicas, &before)?;
    let ok = burst.iter().filter(|r| r.status == 200).count() as u64;
    eprintln!(
        "Redis back: a burst of {} ({} before it to connect: {warm:?}) got {ok} × 200 within \
         {took:?} of the window's start; replica A {:?}; replica B {:?}",
        burst.len(),
        clients.len(),
        each[0],
        each[1]
    );
    ensure!(
        took < Duration::from_millis(950),
        "the burst did not fit in one window ({took:?})"
    );
    ensure!(
        burst
            .iter()
            .all(|r| r.status == 200 || r.is_rate_limited(N)),
        "200 or 429 with the headers: {burst:?}"
    );
    ensure!(
        ok == N && sum.allowed == N && sum.limited == N,
        "a burst of {} in one window: exactly {N} allowed ({ok} × 200; {each:?})",
        2 * N
    );
    ensure!(
        sum.failed_closed == 0 && sum.redis_errors == 0,
        "Redis answered every decision of the burst: {each:?}"
    );
    eprintln!("test took {:?}", test_start.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// LOCAL: one replica's token bucket
// ---------------------------------------------------------------------------------------------

/// A LOCAL limit of 5 per 10 s on one replica: 5 × 200 (with `x-ratelimit-*` counting down),
/// then 429 with `retry-after` (one token is back in 2 s), `x-ratelimit-limit: 5`,
/// `x-ratelimit-remaining: 0`, `x-ratelimit-reset` (full again in 10 s). The refused requests
/// never reach api.test; no Redis is involved.
#[test]
fn ratelimit_local_token_bucket_on_one_replica() -> Result<()> {
    let topo = ratelimit_topology("rlloc")?;
    let _dns = start_dns(&topo, &[("api.test", addrs::EXTERNAL)])?;
    let api = api_server(&topo)?;
    let ca = MeshCa::new("rlloc-ca")?;
    let yaml = format!("{GATEWAY_SERVICE}---\n{API_THROUGH_GATEWAY}---\n{LOCAL_POLICY}");
    let gw = Replica::start(
        &topo.gateway,
        "A",
        Files::new("rlloc-gw")?,
        &ca,
        &yaml,
        15000,
        &[],
    )?;
    let _app = sidecar(&topo.app, Files::new("rlloc-app")?, &ca, SLEEP, &yaml, &[])?;

    let answers = sequential(&topo.app, 7)?;
    let took: Vec<u16> = answers.iter().map(|a| a.status).collect();
    eprintln!("LOCAL: the 5th request got {:?}", answers.get(4));
    eprintln!("LOCAL: the 6th request got {:?}", answers.get(5));
    ensure!(
        took == [200, 200, 200, 200, 200, 429, 429],
        "statuses: {took:?}"
    );
    for (i, a) in answers[..5].iter().enumerate() {
        ensure!(
            a.header_u64("x-ratelimit-limit") == Some(5)
                && a.header_u64("x-ratelimit-remaining") == Some(4 - i as u64),
            "allowed request {i}: the tightest limit's headers: {a:?}"
        );
    }
    for a in &answers[5..] {
        ensure!(
            a.is_rate_limited(5)
                && a.header_u64("retry-after") == Some(2)
                && a.header_u64("x-ratelimit-reset") == Some(10),
            "429 with retry-after: 2, x-ratelimit-limit: 5, x-ratelimit-remaining: 0, \
             x-ratelimit-reset: 10: {a:?}"
        );
    }
    ensure!(
        api.requests() == 5,
        "api.test saw {} requests; the refused ones must not reach it",
        api.requests()
    );
    let c = gw.counts()?;
    ensure!(
        c.allowed == 5
            && c.limited == 2
            && c.policy_rate_limited == 2
            && c.outbound_rate_limited == 2
            && c.failed_open + c.failed_closed + c.redis_errors == 0,
        "replica counters: {c:?}"
    );
    gw.gw.wait_for_line(&[
        "\" 429 RL rate_limited \"api.test\"",
        "peer=spiffe://cluster.local/ns/default/sa/sleep",
    ])?;
    gw.gw.wait_for_line(&[
        "rate limited: 429",
        "istio-system/api-local/local-burst",
        "cluster.local/ns/default/sa/sleep",
    ])?;
    Ok(())
}
