//! Network namespaces (root only): [`Netns`] and the four-namespace [`Topology`] of DESIGN.md
//! "Testing layers", item 5.
//!
//! Every namespace is named `egret-<tag>-<pid>-<counter>`, so tests run in parallel, and is
//! deleted on drop (processes inside it are killed first), also when a test panics. Namespaces
//! left behind by a test process that died (SIGKILL) are removed by the next process that
//! creates one. veth pairs are created with both ends directly inside their namespaces, so
//! interface names only need to be unique per namespace and never touch the host's.
//!
//! # The topology
//!
//! Four namespaces joined by veth pairs (each a /30; `name@ns address`):
//!
//! ```text
//! app ── gateway   gw0@app   198.51.100.1   ↔  app0@gateway  198.51.100.2
//! app ── dns       dns0@app  198.51.100.9   ↔  app0@dns      198.51.100.10
//! gateway ── dns   dns0@gw   198.51.100.13  ↔  gw0@dns       198.51.100.14
//! gateway ── ext   ext0@gw   203.0.113.1    ↔  gw0@external  203.0.113.2
//! app ── ext       ext0@app  203.0.113.5    ↔  app0@external 203.0.113.6   (Topology::direct only)
//!
//! dns      lo: 198.51.100.53/32            (dnsmasq, Topology::start_dns)
//! external lo: 203.0.113.10, .11, .12 /32  (the external services; add more at will)
//! ```
//!
//! Optional extras: a second workload namespace ([`Topology::add_workload`]) and a second
//! gateway with its own external namespace on 192.0.2.0/24 ([`Topology::add_gateway`]).
//!
//! Routes:
//! - app: `198.51.100.53/32 via 198.51.100.10` (DNS) and a default route — via the gateway
//!   (198.51.100.2) in [`Topology::new`], via external (203.0.113.6) in [`Topology::direct`].
//!   The default route is needed so that iptables REDIRECT capture works at all: without any
//!   route, `connect()` fails with ENETUNREACH before the nat table is consulted.
//! - gateway: `203.0.113.0/24 via 203.0.113.2`, `198.51.100.53/32 via 198.51.100.14`. The gateway
//!   namespace never forwards the app's packets: a policy rule (`iif app0 → unreachable`) makes
//!   it answer ICMP host-unreachable, so an app connection that escaped the proxies fails at
//!   once with "Couldn't connect to server" (curl exit 7) instead of hanging. Only a process in
//!   the gateway namespace (the egress gateway) reaches 203.0.113.0/24.
//! - external: only its connected /30s; the service addresses (203.0.113.10–12, more with
//!   [`Topology::add_external_address`]) are /32s on its loopback.
//! - dns: only its connected /30s; it does not forward.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::CloneFlags;

use crate::dns::{Dns, DnsRecord};
use crate::process::{
    COMMAND_TIMEOUT, CmdOutput, Process, describe, os, preflight, require_program, run_command,
    run_ok, sanitize,
};

/// Where `ip netns` keeps its bind mounts.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds per-namespace files to bind over /etc.
const NETNS_ETC_DIR: &str = "/etc/netns";

/// Fixed addresses of the [`Topology`] (the same in every topology: namespaces are isolated).
pub mod addrs {
    use std::net::Ipv4Addr;

    /// app side of the app↔gateway link.
    pub const APP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// gateway side of the app↔gateway link: where sidecars reach the egress gateway.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    /// app side of the app↔dns link.
    pub const APP_DNS_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
    /// dns side of the app↔dns link.
    pub const DNS_APP_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// gateway side of the gateway↔dns link.
    pub const GATEWAY_DNS_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 13);
    /// dns side of the gateway↔dns link.
    pub const DNS_GATEWAY_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 14);
    /// The DNS server (a /32 on the dns namespace's loopback), reachable from app and gateway.
    pub const DNS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
    /// gateway side of the gateway↔external link: the egress source address.
    pub const GATEWAY_EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// external side of the gateway↔external link.
    pub const EXTERNAL_GATEWAY_LINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    /// app side of the app↔external link (direct topology only).
    pub const APP_EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    /// external side of the app↔external link (direct topology only).
    pub const EXTERNAL_APP_LINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 6);
    /// The external services' addresses (/32s on external's loopback).
    pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const EXTERNAL_2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
    pub const EXTERNAL_3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
    /// The "internet" range routed to the external namespace.
    pub const INTERNET_CIDR: &str = "203.0.113.0/24";

    // A second workload namespace ([`super::Topology::add_workload`]).
    /// The second workload's side of its link to the gateway.
    pub const WORKLOAD_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 25);
    /// The gateway's side of the second workload's link.
    pub const GATEWAY_WORKLOAD_2_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 26);
    /// The second workload's side of its link to dns.
    pub const WORKLOAD_2_DNS_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 29);
    /// dns's side of the second workload's link.
    pub const DNS_WORKLOAD_2_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);

    // A second egress gateway with its own "internet" ([`super::Topology::add_gateway`]).
    /// app's side of the app↔second-gateway link.
    pub const APP_SECOND_GATEWAY_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 17);
    /// The second gateway's address as seen from app.
    pub const SECOND_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 18);
    /// The second gateway's side of its link to dns.
    pub const SECOND_GATEWAY_DNS_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
    /// dns's side of the second gateway's link.
    pub const DNS_SECOND_GATEWAY_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 22);
    /// The second gateway's egress address (its side of the link to the second external).
    pub const SECOND_GATEWAY_EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// The second external namespace's side of that link.
    pub const SECOND_EXTERNAL_GATEWAY_LINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    /// The service address of the second external namespace (/32 on its loopback).
    pub const SECOND_EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    /// The range only the second gateway reaches.
    pub const SECOND_INTERNET_CIDR: &str = "192.0.2.0/24";
}

static NETNS_COUNTER: AtomicU32 = AtomicU32::new(0);
static GC: Once = Once::new();

/// One network namespace. Deleted on drop, after killing every process inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `egret-<tag>-<pid>-<counter>` with its loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        preflight(&["ip"])?;
        GC.call_once(collect_stale_namespaces);
        let n = NETNS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("egret-{}-{}-{n}", sanitize(tag, 24), std::process::id());
        run_ok(ip_cmd()?.args(["netns", "add", &name]), COMMAND_TIMEOUT)
            .with_context(|| format!("create network namespace {name}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`: add arguments and run or spawn it. `program` is
    /// resolved to an absolute path first when it can be.
    pub fn command(&self, program: &str) -> Result<Command> {
        command_in(&self.name, program)
    }

    /// Runs `program args` inside the namespace with the default 30 s deadline; a non-zero
    /// exit is not an error.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<CmdOutput> {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        run_command(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Like [`Netns::exec`], but a non-zero exit is an error.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Result<CmdOutput> {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        run_ok(&mut cmd, COMMAND_TIMEOUT)
    }

    /// `ip -n <name> <args>`; a non-zero exit is an error.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run_ok(
            ip_cmd()?.arg("-n").arg(&self.name).args(args),
            COMMAND_TIMEOUT,
        )?;
        Ok(())
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec_ok("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Spawns a long-running `program args` inside the namespace; stdout and stderr go to
    /// `log`. The process is stopped when the returned handle drops (and killed, at the
    /// latest, when the namespace is deleted).
    pub fn spawn(&self, program: &str, args: &[&str], log: &std::path::Path) -> Result<Process> {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        Process::spawn(cmd, &format!("{program} in {}", self.name), log)
    }

    /// `ip netns exec <name> setpriv --reuid=<uid> --regid=<gid> --clear-groups -- <program>`:
    /// a command that runs as another user inside the namespace.
    pub fn command_as(&self, uid: u32, gid: u32, program: &str) -> Result<Command> {
        require_program("setpriv")?;
        let mut cmd = self.command("setpriv")?;
        let program_path = crate::process::which(program)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.to_string());
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
            &program_path,
        ]);
        Ok(cmd)
    }

    /// Spawns `program args` inside the namespace as `uid`/`gid` (via `setpriv`), e.g. the
    /// proxy as uid 1337 so that iptables capture excludes it.
    pub fn spawn_as(
        &self,
        uid: u32,
        gid: u32,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> Result<Process> {
        let mut cmd = self.command_as(uid, gid, program)?;
        cmd.args(args);
        Process::spawn(cmd, &format!("{program} (uid {uid}) in {}", self.name), log)
    }

    /// Points the namespace's resolver at `nameserver`: writes
    /// `/etc/netns/<name>/resolv.conf`, which `ip netns exec` bind-mounts over
    /// `/etc/resolv.conf` for the programs it runs (removed when the namespace drops).
    /// In-process code running via [`Netns::run_in`] does not see it.
    pub fn set_resolver(&self, nameserver: IpAddr) -> Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("resolv.conf");
        std::fs::write(
            &path,
            format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
        )
        .with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from(NETNS_ETC_DIR).join(&self.name)
    }

    /// Runs `f` on a fresh OS thread that has joined this namespace (`setns`). Sockets
    /// created there stay in this namespace wherever they are used afterwards, so an
    /// in-process server can bind its listener here and serve from any runtime.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = PathBuf::from(NETNS_RUN_DIR).join(&self.name);
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", path.display()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("closure panicked inside namespace"))?
        })
    }

    /// A TCP listener bound inside the namespace.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener> {
        let l = self
            .run_in(|| TcpListener::bind(addr))?
            .with_context(|| format!("bind {addr} in {}", self.name))?;
        Ok(l)
    }

    /// A TCP connection made from inside the namespace.
    pub fn connect_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let s = self
            .run_in(|| TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connect to {addr} from {}", self.name))?;
        Ok(s)
    }

    /// Waits until something accepts TCP connections on `addr`, as seen from this namespace.
    pub fn wait_for_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.connect_tcp(addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(err.context(format!(
                    "nothing listening on {addr} in {} after {timeout:?}",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs curl inside the namespace: `curl -sS --connect-timeout 5 --max-time 20 <args>`
    /// (later `--max-time`/`--connect-timeout` in `args` override), killed after 60 s at the
    /// latest. A non-zero curl exit is not an error: look at `code` (7 = could not connect,
    /// 28 = timeout, 35 = TLS handshake, 60 = certificate, 22 = HTTP error with `-f`).
    pub fn curl(&self, args: &[&str]) -> Result<CmdOutput> {
        curl_in(&self.name, args)
    }

    /// [`Netns::curl`] for async tests (runs on tokio's blocking pool).
    pub async fn curl_async(&self, args: &[&str]) -> Result<CmdOutput> {
        let name = self.name.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            curl_in(&name, &args)
        })
        .await
        .context("curl task")?
    }

    /// The ids of all processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        namespace_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

fn command_in(ns: &str, program: &str) -> Result<Command> {
    let mut cmd = ip_cmd()?;
    let resolved = crate::process::which(program)
        .map(|p| p.into_os_string())
        .unwrap_or_else(|| os(program).to_os_string());
    cmd.args(["netns", "exec", ns]).arg(resolved);
    Ok(cmd)
}

fn curl_in(ns: &str, args: &[&str]) -> Result<CmdOutput> {
    require_program("curl")?;
    let mut cmd = command_in(ns, "curl")?;
    cmd.args(["-sS", "--connect-timeout", "5", "--max-time", "20"])
        .args(args);
    run_command(&mut cmd, Duration::from_secs(60))
}

fn ip_cmd() -> Result<Command> {
    Ok(Command::new(require_program("ip")?))
}

fn namespace_pids(name: &str) -> Vec<i32> {
    let Ok(mut cmd) = ip_cmd() else {
        return Vec::new();
    };
    run_command(cmd.args(["netns", "pids", name]), COMMAND_TIMEOUT)
        .map(|o| {
            o.stdout
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills everything inside `name`, then deletes it. Best effort, bounded.
fn delete_namespace(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = namespace_pids(name);
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(mut cmd) = ip_cmd() {
        let _ = run_command(cmd.args(["netns", "delete", name]), COMMAND_TIMEOUT);
    }
}

/// All `egret-*` namespaces currently present (names only).
pub fn list_egret_namespaces() -> Result<Vec<String>> {
    let out = run_ok(ip_cmd()?.args(["netns", "list"]), COMMAND_TIMEOUT)?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("egret-"))
        .map(|s| s.to_string())
        .collect())
}

/// Removes `egret-<tag>-<pid>-<n>` namespaces (and their /etc/netns dirs) whose creating
/// process no longer exists: left behind by a test process that was killed.
fn collect_stale_namespaces() {
    let Ok(names) = list_egret_namespaces() else {
        return;
    };
    for name in names {
        let mut parts = name.rsplit('-');
        let _counter = parts.next();
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(&name);
        let _ = std::fs::remove_dir_all(PathBuf::from(NETNS_ETC_DIR).join(&name));
    }
}

/// Which way the app namespace reaches 203.0.113.0/24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only the gateway egresses; the app's packets to the internet are rejected.
    Gateway,
    /// The app has its own link to external (sidecar-only tests).
    Direct,
}

/// The four namespaces of DESIGN.md layer 5, wired as described in the [module docs](self).
/// Fields drop (and namespaces are deleted) in declaration order.
#[derive(Debug)]
pub struct Topology {
    pub app: Netns,
    pub gateway: Netns,
    pub external: Netns,
    pub dns: Netns,
    mode: Mode,
}

impl Topology {
    /// app → gateway → external; app has no path to the internet except through a process
    /// in the gateway namespace.
    pub fn new(tag: &str) -> Result<Topology> {
        Topology::build(tag, Mode::Gateway)
    }

    /// Like [`Topology::new`], plus an app↔external link and the app's default route over
    /// it, for sidecar-only tests where the sidecar talks to external itself.
    pub fn direct(tag: &str) -> Result<Topology> {
        Topology::build(tag, Mode::Direct)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The four namespace names (app, gateway, external, dns).
    pub fn names(&self) -> Vec<String> {
        [&self.app, &self.gateway, &self.external, &self.dns]
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }

    fn build(tag: &str, mode: Mode) -> Result<Topology> {
        preflight(&["ip", "sysctl"])?;
        let tag = sanitize(tag, 18);
        let topo = Topology {
            app: Netns::new(&format!("{tag}-app"))?,
            gateway: Netns::new(&format!("{tag}-gw"))?,
            external: Netns::new(&format!("{tag}-ext"))?,
            dns: Netns::new(&format!("{tag}-dns"))?,
            mode,
        };
        topo.wire().context("wire the test topology")?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        use addrs::*;
        let (app, gw, ext, dns) = (&self.app, &self.gateway, &self.external, &self.dns);
        let mut links = vec![
            (app, "gw0", APP, gw, "app0", GATEWAY),
            (app, "dns0", APP_DNS_LINK, dns, "app0", DNS_APP_LINK),
            (gw, "dns0", GATEWAY_DNS_LINK, dns, "gw0", DNS_GATEWAY_LINK),
            (
                gw,
                "ext0",
                GATEWAY_EXTERNAL,
                ext,
                "gw0",
                EXTERNAL_GATEWAY_LINK,
            ),
        ];
        if self.mode == Mode::Direct {
            links.push((app, "ext0", APP_EXTERNAL, ext, "app0", EXTERNAL_APP_LINK));
        }
        for (a, a_if, a_ip, b, b_if, b_ip) in &links {
            veth(a, a_if, *a_ip, b, b_if, *b_ip)?;
        }
        // Service addresses: /32s on the loopback of dns and external.
        dns.ip(&["addr", "add", &format!("{DNS}/32"), "dev", "lo"])?;
        for ip in [EXTERNAL, EXTERNAL_2, EXTERNAL_3] {
            ext.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        // Routes.
        let dns32 = format!("{DNS}/32");
        app.ip(&["route", "add", &dns32, "via", &DNS_APP_LINK.to_string()])?;
        gw.ip(&["route", "add", &dns32, "via", &DNS_GATEWAY_LINK.to_string()])?;
        gw.ip(&[
            "route",
            "add",
            INTERNET_CIDR,
            "via",
            &EXTERNAL_GATEWAY_LINK.to_string(),
        ])?;
        let app_default = match self.mode {
            Mode::Gateway => GATEWAY,
            Mode::Direct => EXTERNAL_APP_LINK,
        };
        app.ip(&["route", "add", "default", "via", &app_default.to_string()])?;
        // The gateway namespace answers the app's forwarded packets with ICMP unreachable
        // (forwarding must be on for the kernel to send ICMP at all; nothing is forwarded).
        gw.ip(&["rule", "add", "iif", "app0", "pref", "100", "table", "100"])?;
        gw.ip(&["route", "add", "unreachable", "default", "table", "100"])?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        for (a, a_if, _, b, b_if, _) in &links {
            wait_link_up(a, a_if)?;
            wait_link_up(b, b_if)?;
        }
        Ok(())
    }

    /// Adds another /32 service address on the external namespace's loopback.
    pub fn add_external_address(&self, ip: Ipv4Addr) -> Result<()> {
        self.external
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
    }

    /// Starts dnsmasq in the dns namespace on [`addrs::DNS`] with `records` (see
    /// [`Dns::start`]) and points the app's and the gateway's resolvers at it.
    pub fn start_dns(&self, records: &[(&str, &[IpAddr])]) -> Result<Dns> {
        let dns = Dns::start(&self.dns, IpAddr::V4(addrs::DNS), records)?;
        self.app.set_resolver(IpAddr::V4(addrs::DNS))?;
        self.gateway.set_resolver(IpAddr::V4(addrs::DNS))?;
        Ok(dns)
    }

    /// [`Topology::start_dns`] with owned records.
    pub fn start_dns_records(&self, records: &[DnsRecord]) -> Result<Dns> {
        let borrowed: Vec<(&str, &[IpAddr])> = records
            .iter()
            .map(|r| (r.name.as_str(), r.addrs.as_slice()))
            .collect();
        self.start_dns(&borrowed)
    }

    /// A second workload namespace, wired like `app` in [`Topology::new`]: a link to the
    /// gateway (`gw0` [`addrs::WORKLOAD_2`] ↔ `app2@gateway` [`addrs::GATEWAY_WORKLOAD_2_LINK`]),
    /// a link to dns, the default route via the gateway (which does not forward its packets
    /// either) and its resolver pointed at [`addrs::DNS`]. The gateway's own addresses,
    /// [`addrs::GATEWAY`] included, are reachable from it. At most one per topology.
    pub fn add_workload(&self, tag: &str) -> Result<Netns> {
        use addrs::*;
        let ns = Netns::new(&format!("{}-app2", sanitize(tag, 18)))?;
        let (gw, dns) = (&self.gateway, &self.dns);
        let links = [
            (&ns, "gw0", WORKLOAD_2, gw, "app2", GATEWAY_WORKLOAD_2_LINK),
            (
                &ns,
                "dns0",
                WORKLOAD_2_DNS_LINK,
                dns,
                "app2",
                DNS_WORKLOAD_2_LINK,
            ),
        ];
        for (a, a_if, a_ip, b, b_if, b_ip) in &links {
            veth(a, a_if, *a_ip, b, b_if, *b_ip)?;
        }
        ns.ip(&[
            "route",
            "add",
            &format!("{DNS}/32"),
            "via",
            &DNS_WORKLOAD_2_LINK.to_string(),
        ])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_WORKLOAD_2_LINK.to_string(),
        ])?;
        // Like app: whatever the gateway namespace would forward is answered unreachable.
        gw.ip(&["rule", "add", "iif", "app2", "pref", "101", "table", "100"])?;
        ns.set_resolver(IpAddr::V4(DNS))?;
        for (a, a_if, _, b, b_if, _) in &links {
            wait_link_up(a, a_if)?;
            wait_link_up(b, b_if)?;
        }
        Ok(ns)
    }

    /// A second egress path: a gateway namespace reachable from app
    /// (`gw2@app` [`addrs::APP_SECOND_GATEWAY_LINK`] ↔ `app0` [`addrs::SECOND_GATEWAY`]) with
    /// its own link to dns and to its own external namespace, which holds
    /// [`addrs::SECOND_EXTERNAL`] in [`addrs::SECOND_INTERNET_CIDR`] (192.0.2.0/24). Only a
    /// process in the second gateway reaches that range; the first gateway does not, and the
    /// second gateway does not reach 203.0.113.0/24. Its resolver points at [`addrs::DNS`]. At
    /// most one per topology.
    pub fn add_gateway(&self, tag: &str) -> Result<SecondGateway> {
        use addrs::*;
        let tag = sanitize(tag, 18);
        let second = SecondGateway {
            gateway: Netns::new(&format!("{tag}-gw2"))?,
            external: Netns::new(&format!("{tag}-ext2"))?,
        };
        let (app, dns, gw2, ext2) = (&self.app, &self.dns, &second.gateway, &second.external);
        let links = [
            (
                app,
                "gw2",
                APP_SECOND_GATEWAY_LINK,
                gw2,
                "app0",
                SECOND_GATEWAY,
            ),
            (
                gw2,
                "dns0",
                SECOND_GATEWAY_DNS_LINK,
                dns,
                "gw2",
                DNS_SECOND_GATEWAY_LINK,
            ),
            (
                gw2,
                "ext0",
                SECOND_GATEWAY_EXTERNAL,
                ext2,
                "gw0",
                SECOND_EXTERNAL_GATEWAY_LINK,
            ),
        ];
        for (a, a_if, a_ip, b, b_if, b_ip) in &links {
            veth(a, a_if, *a_ip, b, b_if, *b_ip)?;
        }
        ext2.ip(&["addr", "add", &format!("{SECOND_EXTERNAL}/32"), "dev", "lo"])?;
        gw2.ip(&[
            "route",
            "add",
            &format!("{DNS}/32"),
            "via",
            &DNS_SECOND_GATEWAY_LINK.to_string(),
        ])?;
        gw2.ip(&[
            "route",
            "add",
            SECOND_INTERNET_CIDR,
            "via",
            &SECOND_EXTERNAL_GATEWAY_LINK.to_string(),
        ])?;
        gw2.ip(&["rule", "add", "iif", "app0", "pref", "100", "table", "100"])?;
        gw2.ip(&["route", "add", "unreachable", "default", "table", "100"])?;
        gw2.sysctl("net.ipv4.ip_forward", "1")?;
        gw2.set_resolver(IpAddr::V4(DNS))?;
        for (a, a_if, _, b, b_if, _) in &links {
            wait_link_up(a, a_if)?;
            wait_link_up(b, b_if)?;
        }
        Ok(second)
    }
}

/// The namespaces of [`Topology::add_gateway`]; deleted on drop.
#[derive(Debug)]
pub struct SecondGateway {
    /// Where the second egress gateway runs.
    pub gateway: Netns,
    /// Its "internet": [`addrs::SECOND_EXTERNAL`] on the loopback.
    pub external: Netns,
}

fn veth(
    a: &Netns,
    a_if: &str,
    a_ip: Ipv4Addr,
    b: &Netns,
    b_if: &str,
    b_ip: Ipv4Addr,
) -> Result<()> {
    if a_if.len() > 15 || b_if.len() > 15 {
        bail!("interface names are limited to 15 characters: {a_if}, {b_if}");
    }
    let mut cmd = ip_cmd()?;
    cmd.args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
    ])
    .args([b_if, "netns", b.name()]);
    run_ok(&mut cmd, COMMAND_TIMEOUT).with_context(|| describe(&cmd))?;
    a.ip(&["addr", "add", &format!("{a_ip}/30"), "dev", a_if])?;
    b.ip(&["addr", "add", &format!("{b_ip}/30"), "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

fn wait_link_up(ns: &Netns, dev: &str) -> Result<()> {
    crate::process::wait_until(
        &format!("{dev} up in {}", ns.name()),
        Duration::from_secs(5),
        || {
            let out = run_ok(
                ip_cmd()?.args(["-n", ns.name(), "-o", "link", "show", "dev", dev]),
                COMMAND_TIMEOUT,
            )?;
            Ok(out.stdout.contains("LOWER_UP").then_some(()))
        },
    )
}
