//! Helpers shared by the network-namespace tests of the `egret` binary (`netns_sidecar.rs`,
//! `netns_gateway.rs`): files uid 1337 can read, the sidecar as uid 1337 behind `egret
//! iptables apply`, curl with the status split from the body, Prometheus series.
//!
//! Every test crate uses a different subset.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::netns::Netns;
use egret_testkit::process::{run_command, wait_until};
use egret_testkit::{
    CmdOutput, DnsRecord, InProcessServer, Process, TempDir, TestServerConfig, Topology,
};

/// The proxy's uid and gid: `egret iptables apply` never captures its connections.
pub const PROXY_UID: u32 = 1337;

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// dnsmasq for `names` (each with one address); app's resolver points at it.
pub fn start_dns(topo: &Topology, names: &[(&str, Ipv4Addr)]) -> Result<egret_testkit::Dns> {
    let records: Vec<DnsRecord> = names
        .iter()
        .map(|(name, ip)| DnsRecord::new(name, &[IpAddr::V4(*ip)]))
        .collect();
    topo.start_dns_records(&records)
}

/// An egret test server (in-process, listening inside `external`) answering plain HTTP.
pub fn test_server(topo: &Topology, name: &str, addr: SocketAddr) -> Result<InProcessServer> {
    InProcessServer::start(
        Some(&topo.external),
        TestServerConfig::new(name).plain(addr),
    )
}

pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// The sidecar's files in a temp dir that uid 1337 can read (dirs 0755, files 0644):
/// `config/` (watched), `mesh.yaml`, `credentials/<name>/…`, CA files, `sidecar.log`.
pub struct Files {
    dir: TempDir,
}

impl Files {
    pub fn new(tag: &str) -> Result<Files> {
        let dir = TempDir::new(tag)?;
        chmod(dir.path(), 0o755)?;
        ensure!(
            executable_by_others(dir.path()),
            "uid {PROXY_UID} cannot reach {}: a directory above it is closed to other users \
             (set TMPDIR to a world-traversable directory)",
            dir.path().display()
        );
        Ok(Files { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates `rel` (a directory path relative to the temp dir) with mode 0755 at every level.
    pub fn mkdir(&self, rel: &str) -> Result<PathBuf> {
        let mut dir = self.path().to_path_buf();
        for part in Path::new(rel).components() {
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            }
            chmod(&dir, 0o755)?;
        }
        Ok(dir)
    }

    /// Writes `rel` (mode 0644), creating its directories.
    pub fn write(&self, rel: &str, text: &str) -> Result<PathBuf> {
        if let Some(parent) = Path::new(rel)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            self.mkdir(path_str(parent))?;
        }
        let path = self.path().join(rel);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        chmod(&path, 0o644)?;
        Ok(path)
    }

    /// `credentialName: <name>` for `--credentials-dir DIR/credentials`:
    /// `credentials/<name>/{tls.crt,tls.key,ca.crt}` (the Kubernetes secret's keys).
    pub fn credential(
        &self,
        name: &str,
        cert: &egret_testkit::CertPair,
        ca_pem: &str,
    ) -> Result<()> {
        self.write(&format!("credentials/{name}/tls.crt"), &cert.cert_pem)?;
        self.write(&format!("credentials/{name}/tls.key"), &cert.key_pem)?;
        self.write(&format!("credentials/{name}/ca.crt"), ca_pem)?;
        Ok(())
    }
}

/// True when a process that is neither the owner nor in the group (uid 1337 vs root-owned
/// files) may execute `bin`: o+x on the file and on every directory above it.
pub fn executable_by_others(bin: &Path) -> bool {
    let others_x = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    };
    others_x(bin) && bin.ancestors().skip(1).all(others_x)
}

/// The egret binary, as uid 1337 can run it: the one cargo built, or a 0755 copy in `files`
/// when the build directory is closed to other users.
pub fn egret_binary_for_proxy(files: &Files) -> Result<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_egret"));
    if executable_by_others(&bin) {
        return Ok(bin);
    }
    let copy = files.path().join("egret");
    std::fs::copy(&bin, &copy)
        .with_context(|| format!("copy {} to {}", bin.display(), copy.display()))?;
    chmod(&copy, 0o755)?;
    Ok(copy)
}

/// What one curl run got. `status` is 0 when no HTTP response arrived.
#[derive(Debug)]
pub struct Reply {
    /// curl's exit code (7 = could not connect, 35 = TLS handshake failed, 28 = timeout).
    pub exit: Option<i32>,
    pub status: u16,
    pub body: String,
    /// curl's error message; read through `Debug` in failure messages.
    pub stderr: String,
}

/// `-w` format appended to every curl run: the status after the body.
pub const STATUS_MARK: &str = "\n@@egret-status=";

pub fn write_out() -> String {
    format!("{STATUS_MARK}%{{http_code}}")
}

pub fn reply(out: CmdOutput) -> Result<Reply> {
    let (body, status) = out
        .stdout
        .rsplit_once(STATUS_MARK)
        .with_context(|| format!("curl printed no status: {out:?}"))?;
    Ok(Reply {
        exit: out.code,
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: out.stderr.clone(),
    })
}

/// curl as root inside `ns` (captured by the sidecar in `app`).
pub fn curl(ns: &Netns, args: &[&str]) -> Result<Reply> {
    let w = write_out();
    let mut all = vec!["-w", w.as_str()];
    all.extend_from_slice(args);
    reply(ns.curl(&all)?)
}

/// curl inside `ns` as `uid`/`gid` (uid 1337 is not captured), with the same bounded defaults
/// as [`Netns::curl`].
pub fn curl_as(ns: &Netns, uid: u32, args: &[&str]) -> Result<Reply> {
    let mut cmd = ns.command_as(uid, uid, "curl")?;
    cmd.args(["-sS", "--connect-timeout", "5", "--max-time", "20", "-w"])
        .arg(write_out())
        .args(args);
    reply(run_command(&mut cmd, Duration::from_secs(60))?)
}

/// The value of one Prometheus series (`name{labels}` exactly as printed), 0 when absent.
pub fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn requests(outcome: &str) -> String {
    format!("egret_outbound_requests_total{{outcome=\"{outcome}\",protocol=\"http\"}}")
}

pub fn connections(outcome: &str, protocol: &str) -> String {
    format!("egret_outbound_connections_total{{outcome=\"{outcome}\",protocol=\"{protocol}\"}}")
}

/// The sidecar running in `app` as uid 1337 behind `egret iptables apply`. Stopped (SIGTERM)
/// on drop, which also prints its log (shown by the test harness only when the test failed).
pub struct Sidecar<'t> {
    /// The workload's namespace (`app` unless started with [`Sidecar::start_in`]).
    pub ns: &'t Netns,
    pub process: Process,
    pub files: Files,
}

impl<'t> Sidecar<'t> {
    /// Writes `yaml` to `config/egret.yaml`, applies the capture rules in `app`, starts
    /// `egret sidecar` (namespace `default`, service account `sleep`) as uid/gid 1337 and
    /// waits (bounded) until `/ready` answers 200.
    pub fn start(
        topo: &'t Topology,
        files: Files,
        yaml: &str,
        extra_args: &[&str],
    ) -> Result<Sidecar<'t>> {
        Sidecar::start_in(&topo.app, files, ("default", "sleep"), yaml, extra_args)
    }

    /// [`Sidecar::start`] in the workload namespace `ns` with the workload's (Kubernetes
    /// namespace, service account).
    pub fn start_in(
        ns: &'t Netns,
        files: Files,
        (namespace, service_account): (&str, &str),
        yaml: &str,
        extra_args: &[&str],
    ) -> Result<Sidecar<'t>> {
        let config = files.write("config/egret.yaml", yaml)?;
        let config_dir = config.parent().context("config dir")?.to_path_buf();
        let credentials = files.mkdir("credentials")?;
        let log = files.path().join("sidecar.log");

        let egret = PathBuf::from(env!("CARGO_BIN_EXE_egret"));
        let proxy_uid = PROXY_UID.to_string();
        ns.exec_ok(
            path_str(&egret),
            &["iptables", "apply", "--proxy-uid", &proxy_uid],
        )
        .context("egret iptables apply")?;

        let bin = egret_binary_for_proxy(&files)?;
        let mut args = vec![
            "sidecar",
            "--config",
            path_str(&config_dir),
            "--namespace",
            namespace,
            "--service-account",
            service_account,
            "--credentials-dir",
            path_str(&credentials),
            "--outbound-port",
            "15001",
            "--proxy-port",
            "15080",
            "--admin-port",
            "15000",
            "--config-poll-ms",
            "200",
            "--drain-seconds",
            "1",
        ];
        args.extend_from_slice(extra_args);
        let process = ns.spawn_as(PROXY_UID, PROXY_UID, path_str(&bin), &args, &log)?;
        let mut sidecar = Sidecar { ns, process, files };
        sidecar.wait_ready(Duration::from_secs(20))?;
        Ok(sidecar)
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
                    "the sidecar was not ready after {timeout:?} (last /ready: {r:?}); its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl as root in the workload's namespace: captured by iptables, served by the sidecar.
    pub fn curl(&self, args: &[&str]) -> Result<Reply> {
        curl(self.ns, args)
    }

    /// The admin endpoint's `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        let r = self.curl(&["http://127.0.0.1:15000/metrics"])?;
        ensure!(r.status == 200, "GET /metrics: {r:?}");
        Ok(r.body)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits (bounded) until the log contains `needle` (access-log lines are written when the
    /// exchange ends, possibly just after curl has finished).
    pub fn wait_for_log(&self, needle: &str) -> Result<()> {
        wait_until(
            &format!("{needle:?} in the sidecar log"),
            Duration::from_secs(5),
            || Ok(self.log().contains(needle).then_some(())),
        )
        .with_context(|| format!("sidecar log:\n{}", self.log()))
    }

    /// Replaces `config/egret.yaml` atomically and waits until the sidecar has loaded it.
    pub fn reconfigure(&self, yaml: &str) -> Result<()> {
        let loaded = "egret_config_loaded_total";
        let before = series(&self.metrics()?, loaded);
        let tmp = self.files.write("egret.yaml.new", yaml)?;
        std::fs::rename(&tmp, self.files.path().join("config/egret.yaml"))
            .context("replace config/egret.yaml")?;
        wait_until(
            "the sidecar to load the new configuration",
            Duration::from_secs(10),
            || Ok((series(&self.metrics()?, loaded) > before).then_some(())),
        )
        .with_context(|| format!("sidecar log:\n{}", self.log()))
    }
}

impl Drop for Sidecar<'_> {
    fn drop(&mut self) {
        self.process.stop();
        eprintln!(
            "--- sidecar log ({}) ---\n{}--- end of sidecar log ---",
            self.process.label(),
            self.log()
        );
    }
}
pub mod gateway;
