//! The egress-gateway side of the network-namespace tests (`netns_gateway.rs`,
//! `netns_policy.rs`): a mesh CA from `egret ca`, `egret gateway` in the gateway namespace,
//! the sidecar with its SVID in front of it, and the gateway Service both proxies are given.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::netns::Netns;
use egret_testkit::process::{run_command, run_ok, wait_until};
use egret_testkit::{CmdOutput, Process, Topology, addrs, preflight};

use super::*;

/// Programs every test here needs (checked up front: a missing one fails the test).
pub const PROGRAMS: &[&str] = &[
    "ip",
    "sysctl",
    "iptables",
    "ip6tables",
    "curl",
    "setpriv",
    "nginx",
    "dnsmasq",
    "openssl",
];

pub const EXT_1: Ipv4Addr = addrs::EXTERNAL;
pub const EXT_2: Ipv4Addr = addrs::EXTERNAL_2;
pub const EXT_3: Ipv4Addr = addrs::EXTERNAL_3;

/// The host of the istio.io egress-gateway tasks (edition.cnn.com), adapted.
pub const CNN: &str = "edition.cnn.test";

/// The app's identity.
pub const SLEEP: (&str, &str) = ("default", "sleep");
pub const SLEEP_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";
/// The egress gateway's identity: Istio's `<service name>-service-account` in the Service's
/// namespace, which is what the sidecar expects from the gateway Service below.
pub const GATEWAY_ID: (&str, &str) = ("istio-system", "istio-egressgateway-service-account");

/// The gateway Service, the Istio way without Kubernetes (DESIGN.md; the compiler's fixture
/// `egress-gateway-service.yaml`), with the topology's gateway address as its endpoint.
pub const GATEWAY_SERVICE: &str = "\
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
  - number: 443
    name: https
    protocol: HTTPS
  resolution: STATIC
  endpoints:
  - address: 198.51.100.2
    labels:
      istio: egressgateway
";

/// Sample 01's IstioOperator fragment (REGISTRY_ONLY), for `--mesh-config`.
pub const REGISTRY_ONLY: &str = "\
spec:
  meshConfig:
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

/// Preflight, then a fresh app/gateway/external/dns topology in which only the gateway
/// egresses.
pub fn topology(tag: &str) -> Result<Topology> {
    preflight(PROGRAMS)?;
    Topology::new(tag)
}

/// The egret binary cargo built (run as root: `egret ca`, `egret iptables`, the gateway).
pub fn egret_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_egret"))
}

/// `egret <args>` on the host; a non-zero exit is an error.
pub fn egret(args: &[&str]) -> Result<CmdOutput> {
    let mut cmd = Command::new(egret_bin());
    cmd.args(args);
    run_ok(&mut cmd, Duration::from_secs(30))
}

/// curl arguments for a connection attempt that must fail: a short connect timeout, since the
/// gateway namespace's ICMP "unreachable" answers are rate-limited by the kernel (the third quick
/// attempt in a row typically gets no answer and times out instead of failing at once).
pub fn connect_fails(url: &str) -> [&str; 3] {
    ["--connect-timeout", "2", url]
}

/// True when curl could not connect at all: exit 7 (unreachable) or 28 (the connect timed
/// out), and no HTTP status.
pub fn cannot_connect(r: &Reply) -> bool {
    matches!(r.exit, Some(7) | Some(28)) && r.status == 0
}

/// Lines of `log` that contain every one of `needles`.
pub fn lines_with<'l>(log: &'l str, needles: &[&str]) -> Vec<&'l str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// Makes an identity directory readable by uid 1337 (`egret ca issue` writes key.pem 0600).
pub fn make_readable(dir: &Path) -> Result<()> {
    chmod(dir, 0o755)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            chmod(&path, 0o644)?;
        }
    }
    Ok(())
}

/// A mesh CA made by `egret ca init` in its own directory.
pub struct MeshCa {
    pub files: Files,
    pub dir: PathBuf,
}

impl MeshCa {
    pub fn new(tag: &str) -> Result<MeshCa> {
        let files = Files::new(tag)?;
        let dir = files.path().join("ca");
        egret(&["ca", "init", "--dir", path_str(&dir)]).context("egret ca init")?;
        Ok(MeshCa { files, dir })
    }

    /// `egret ca issue` for `ns`/`sa` into `out` (created or replaced), readable by uid 1337.
    pub fn issue(&self, (ns, sa): (&str, &str), out: &Path, ttl: &str) -> Result<()> {
        egret(&[
            "ca",
            "issue",
            "--dir",
            path_str(&self.dir),
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--out",
            path_str(out),
            "--ttl",
            ttl,
        ])
        .with_context(|| format!("egret ca issue {ns}/{sa}"))?;
        make_readable(out)
    }

    /// An identity directory of its own (in the CA's temp dir) for `ns`/`sa`.
    pub fn issue_dir(&self, name: &str, id: (&str, &str), ttl: &str) -> Result<PathBuf> {
        let out = self.files.path().join(name);
        self.issue(id, &out, ttl)?;
        Ok(out)
    }
}

/// How a gateway is started.
pub struct GatewayOptions<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub labels: &'a str,
    pub drain_seconds: u32,
    pub extra: &'a [&'a str],
}

impl Default for GatewayOptions<'_> {
    fn default() -> Self {
        GatewayOptions {
            namespace: GATEWAY_ID.0,
            service_account: GATEWAY_ID.1,
            labels: "istio=egressgateway",
            drain_seconds: 1,
            extra: &[],
        }
    }
}

/// `egret gateway` (root) in a gateway namespace with its SVID in `identity/` and
/// `credentialName` credentials in `credentials/` of its files. Stopped (SIGTERM) on drop, which
/// also prints its log (shown only for failing tests).
pub struct Gateway<'n> {
    pub ns: &'n Netns,
    pub process: Process,
    pub files: Files,
    pub args: Vec<String>,
}

impl<'n> Gateway<'n> {
    /// Writes `yaml` to `config/egret.yaml`, issues the gateway's SVID from `ca`, starts the
    /// gateway in `ns` and waits (bounded) until `/ready` answers 200.
    pub fn start(
        ns: &'n Netns,
        files: Files,
        ca: &MeshCa,
        yaml: &str,
        opts: GatewayOptions<'_>,
    ) -> Result<Gateway<'n>> {
        let config = files.write("config/egret.yaml", yaml)?;
        let config_dir = config.parent().context("config dir")?.to_path_buf();
        let credentials = files.mkdir("credentials")?;
        let identity = files.path().join("identity");
        ca.issue((opts.namespace, opts.service_account), &identity, "24h")?;
        let mut args: Vec<String> = [
            "gateway",
            "--config",
            path_str(&config_dir),
            "--namespace",
            opts.namespace,
            "--service-account",
            opts.service_account,
            "--labels",
            opts.labels,
            "--identity-dir",
            path_str(&identity),
            "--credentials-dir",
            path_str(&credentials),
            "--admin-port",
            "15000",
            "--config-poll-ms",
            "200",
            "--drain-seconds",
            &opts.drain_seconds.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(opts.extra.iter().map(|s| s.to_string()));
        let process = Gateway::spawn(ns, &files, &args)?;
        let mut gw = Gateway {
            ns,
            process,
            files,
            args,
        };
        gw.wait_ready(Duration::from_secs(20))?;
        Ok(gw)
    }

    pub fn spawn(ns: &Netns, files: &Files, args: &[String]) -> Result<Process> {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        ns.spawn(
            path_str(&egret_bin()),
            &args,
            &files.path().join("gateway.log"),
        )
    }

    /// Stops the gateway (SIGTERM, drain) and starts it again with the same arguments and
    /// files (its log continues).
    pub fn restart(&mut self) -> Result<()> {
        self.process.stop_with(Duration::from_secs(10));
        self.process = Gateway::spawn(self.ns, &self.files, &self.args)?;
        self.wait_ready(Duration::from_secs(20))
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            let r = self.ns.curl(&[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "http://127.0.0.1:15000/ready",
            ])?;
            if r.stdout.trim() == "200" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the gateway was not ready after {timeout:?} (last /ready: {r:?}); its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn identity_dir(&self) -> PathBuf {
        self.files.path().join("identity")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The admin endpoint's `/metrics` (from inside the gateway namespace).
    pub fn metrics(&self) -> Result<String> {
        let r = curl(self.ns, &["http://127.0.0.1:15000/metrics"])?;
        ensure!(r.status == 200, "GET /metrics on the gateway: {r:?}");
        Ok(r.body)
    }

    /// Replaces `config/egret.yaml` atomically and waits until the gateway has loaded it.
    pub fn reconfigure(&self, yaml: &str) -> Result<()> {
        let loaded = "egret_config_loaded_total";
        let before = series(&self.metrics()?, loaded);
        let tmp = self.files.write("egret.yaml.new", yaml)?;
        std::fs::rename(&tmp, self.files.path().join("config/egret.yaml"))
            .context("replace config/egret.yaml")?;
        wait_until(
            "the gateway to load the new configuration",
            Duration::from_secs(10),
            || Ok((series(&self.metrics()?, loaded) > before).then_some(())),
        )
        .with_context(|| format!("gateway log:\n{}", self.log()))
    }

    /// Waits (bounded) until one line of the log contains all of `needles` (access-log lines
    /// are written when the exchange ends, possibly just after curl has finished).
    pub fn wait_for_line(&self, needles: &[&str]) -> Result<String> {
        wait_until(
            &format!("a gateway log line with {needles:?}"),
            Duration::from_secs(5),
            || {
                Ok(lines_with(&self.log(), needles)
                    .first()
                    .map(|l| l.to_string()))
            },
        )
        .with_context(|| format!("gateway log:\n{}", self.log()))
    }
}

impl Drop for Gateway<'_> {
    fn drop(&mut self) {
        self.process.stop();
        eprintln!(
            "--- gateway log ({}) ---\n{}--- end of gateway log ---",
            self.process.label(),
            self.log()
        );
    }
}

/// The sidecar in `ns` for the workload `id`, its SVID issued from `ca` into `identity/` of its
/// files, started with `--identity-dir` (plus `extra`).
pub fn sidecar<'t>(
    ns: &'t Netns,
    files: Files,
    ca: &MeshCa,
    id: (&str, &str),
    yaml: &str,
    extra: &[&str],
) -> Result<Sidecar<'t>> {
    let identity = files.path().join("identity");
    ca.issue(id, &identity, "24h")?;
    let mut args = vec!["--identity-dir", path_str(&identity)];
    args.extend_from_slice(extra);
    Sidecar::start_in(ns, files, id, yaml, &args)
}

/// The usual pair: a fresh mesh CA, the gateway in `gateway` and the sidecar (default/sleep) in
/// `app`, both with `yaml`.
pub fn mesh<'t>(
    topo: &'t Topology,
    tag: &str,
    yaml: &str,
    sidecar_args: &[&str],
) -> Result<(MeshCa, Gateway<'t>, Sidecar<'t>)> {
    let ca = MeshCa::new(&format!("{tag}-ca"))?;
    let gw = Gateway::start(
        &topo.gateway,
        Files::new(&format!("{tag}-gw"))?,
        &ca,
        yaml,
        GatewayOptions::default(),
    )?;
    let app = sidecar(
        &topo.app,
        Files::new(&format!("{tag}-app"))?,
        &ca,
        SLEEP,
        yaml,
        sidecar_args,
    )?;
    Ok((ca, gw, app))
}

/// `openssl s_client` as uid 1337 in `ns` (not captured) against `addr`, offering the mesh
/// tunnel's ALPN `egret-tunnel` (curl cannot), optionally presenting the identity in `id_dir`
/// (`cert-chain.pem`, `key.pem`). stdin is closed: the handshake completes (or not) and the
/// client leaves.
pub fn tunnel_handshake(
    ns: &Netns,
    addr: SocketAddr,
    roots: &Path,
    id_dir: Option<&Path>,
) -> Result<CmdOutput> {
    let mut cmd = ns.command_as(PROXY_UID, PROXY_UID, "openssl")?;
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "istio-egressgateway.istio-system.svc.cluster.local",
        "-alpn",
        "egret-tunnel",
        "-CAfile",
        path_str(roots),
    ]);
    if let Some(dir) = id_dir {
        let chain = dir.join("cert-chain.pem");
        cmd.args([
            "-cert",
            path_str(&chain),
            "-cert_chain",
            path_str(&chain),
            "-key",
            path_str(&dir.join("key.pem")),
        ]);
    }
    run_command(&mut cmd, Duration::from_secs(20))
}
