//! `egret iptables` capture rules, installed for real inside network namespaces.
//!
//! These tests need root (network namespaces, iptables), iproute2, iptables, `setpriv`,
//! `timeout` and `/usr/bin/python3`. They fail loudly when any of that is missing: they never
//! skip. Every test creates its own namespaces (`egret-cap-<pid>-<n>`), deleted on drop, and never
//! touches the host's own network namespace or tables. Servers and clients are small Python
//! programs with bounded lifetimes; traffic stays inside the test's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use egret_proxy::capture::{
    self, CaptureConfig, CaptureError, Family, PrefixExecutor, parse_cidrs, parse_ports,
};

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

const PYTHON: &str = "/usr/bin/python3";

fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` (is it installed?): {e}"))
}

fn must(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace of our own, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "egret-cap-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::SeqCst)
        );
        let out = output("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed ({}): {} -- these tests need root",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self) -> PrefixExecutor {
        PrefixExecutor::netns(&self.name)
    }

    /// `ip -n NS ARGS...`
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        must("ip", &all);
    }

    /// `ip netns exec NS ARGS...`
    fn output(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        output("ip", &all)
    }

    fn must(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// The `nat` table as `iptables-save` shows it, without comments and counters.
    fn save(&self, family: Family) -> String {
        normalize(&self.must(&[family.save(), "-t", "nat"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: `ip netns del {}`: {e}", self.name),
        }
    }
}

fn normalize(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]\n", &l[..i]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// A saved `nat` table: chain declarations, and each chain's rules in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Table {
    chains: BTreeSet<String>,
    rules: BTreeMap<String, Vec<String>>,
}

impl Table {
    fn parse(save: &str) -> Table {
        let mut table = Table::default();
        for line in save.lines() {
            if line.starts_with(':') {
                table.chains.insert(line.to_owned());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split(' ').next().unwrap().to_owned();
                table.rules.entry(chain).or_default().push(line.to_owned());
            } else {
                assert!(
                    line == "*nat" || line == "COMMIT",
                    "unexpected line in iptables-save output: {line:?}"
                );
            }
        }
        table
    }

    /// This table with `config`'s rules for `family` added the way `apply` adds them.
    fn with(&self, config: &CaptureConfig, family: Family) -> Table {
        let mut table = self.clone();
        if table.chains.is_empty() {
            for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
                table.chains.insert(format!(":{builtin} ACCEPT [0:0]"));
            }
        }
        for chain in [capture::OUTPUT_CHAIN, capture::REDIRECT_CHAIN] {
            table.chains.insert(format!(":{chain} - [0:0]"));
        }
        for rule in config.rules_for(family) {
            table
                .rules
                .entry(rule.chain.to_owned())
                .or_default()
                .push(rule.to_string());
        }
        table
    }
}

/// Rules and chains that are not ours, to show that apply and clean leave them alone.
fn add_foreign_rules(ns: &Netns) {
    for ipt in ["iptables", "ip6tables"] {
        ns.must(&[ipt, "-t", "nat", "-N", "FOREIGN"]);
        ns.must(&[
            ipt, "-t", "nat", "-A", "FOREIGN", "-p", "udp", "-j", "RETURN",
        ]);
        ns.must(&[
            ipt, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-m", "udp", "--dport", "53", "-j",
            "FOREIGN",
        ]);
        ns.must(&[
            ipt, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", "25", "-j",
            "RETURN",
        ]);
    }
}

fn busy_config() -> CaptureConfig {
    CaptureConfig {
        proxy_uid: 1337,
        proxy_gid: Some(1338),
        outbound_port: 15001,
        exclude_ports: parse_ports("22,8443").unwrap(),
        exclude_cidrs: parse_cidrs("10.0.0.0/8,2001:db8::/32,192.0.2.7,fd00::1").unwrap(),
        include_ipv6: true,
    }
}

fn assert_applied(ns: &Netns, pristine: &[(Family, String)], config: &CaptureConfig) {
    for (family, before) in pristine {
        let expected = Table::parse(before).with(config, *family);
        let saved = ns.save(*family);
        assert_eq!(
            Table::parse(&saved),
            expected,
            "{family} after apply:\n{saved}"
        );
        // Every line of our script appears verbatim in what iptables-save prints.
        for line in config.script(*family).lines() {
            assert!(
                saved.lines().any(|l| l == line),
                "{family}: {line:?} missing from\n{saved}"
            );
        }
    }
}

fn assert_pristine(ns: &Netns, pristine: &[(Family, String)], when: &str) {
    for (family, before) in pristine {
        let saved = ns.save(*family);
        assert_eq!(&saved, before, "{family} {when}");
        assert!(!saved.contains("EGRET"), "{family} {when}:\n{saved}");
    }
}

fn apply_clean_roundtrip(config: &CaptureConfig) {
    let ns = Netns::new();
    add_foreign_rules(&ns);
    let pristine: Vec<(Family, String)> = Family::ALL.iter().map(|f| (*f, ns.save(*f))).collect();
    let exec = ns.exec();

    config.apply_in(&exec).unwrap();
    assert_applied(&ns, &pristine, config);
    let once: Vec<String> = Family::ALL.iter().map(|f| ns.save(*f)).collect();

    config.apply_in(&exec).unwrap();
    let twice: Vec<String> = Family::ALL.iter().map(|f| ns.save(*f)).collect();
    assert_eq!(once, twice, "applying twice must not duplicate anything");

    capture::clean_in(&exec).unwrap();
    assert_pristine(&ns, &pristine, "after clean");
    capture::clean_in(&exec).unwrap();
    assert_pristine(&ns, &pristine, "after a second clean");

    // And it can be applied again after cleaning.
    config.apply_in(&exec).unwrap();
    assert_applied(&ns, &pristine, config);
    capture::clean_in(&exec).unwrap();
    assert_pristine(&ns, &pristine, "after the last clean");
}

#[test]
fn default_rules_apply_exactly_idempotently_and_clean_away() {
    apply_clean_roundtrip(&CaptureConfig::default());
}

#[test]
fn exclusions_apply_exactly_idempotently_and_clean_away() {
    apply_clean_roundtrip(&busy_config());
}

#[test]
fn default_rules_as_iptables_save_prints_them() {
    let ns = Netns::new();
    CaptureConfig::default().apply_in(&ns.exec()).unwrap();
    let saved = ns.save(Family::V4);
    let ours: Vec<&str> = saved.lines().filter(|l| l.contains("EGRET")).collect();
    assert_eq!(
        ours,
        [
            ":EGRET_OUTPUT - [0:0]",
            ":EGRET_REDIRECT - [0:0]",
            "-A OUTPUT -p tcp -j EGRET_OUTPUT",
            "-A EGRET_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A EGRET_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A EGRET_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A EGRET_OUTPUT -o lo -j RETURN",
            "-A EGRET_OUTPUT -j EGRET_REDIRECT",
            "-A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ],
        "{saved}"
    );
    assert!(
        ns.save(Family::V6)
            .contains("-A EGRET_OUTPUT -d ::1/128 -j RETURN\n")
    );
}

#[test]
fn reapplying_a_changed_config_replaces_the_old_rules() {
    let ns = Netns::new();
    add_foreign_rules(&ns);
    let pristine: Vec<(Family, String)> = Family::ALL.iter().map(|f| (*f, ns.save(*f))).collect();
    busy_config().apply_in(&ns.exec()).unwrap();
    let changed = CaptureConfig {
        proxy_uid: 999,
        outbound_port: 16001,
        exclude_ports: vec![5432],
        ..CaptureConfig::default()
    };
    changed.apply_in(&ns.exec()).unwrap();
    assert_applied(&ns, &pristine, &changed);
    capture::clean_in(&ns.exec()).unwrap();
    assert_pristine(&ns, &pristine, "after clean");
}

#[test]
fn without_ipv6_ip6tables_is_untouched() {
    let ns = Netns::new();
    add_foreign_rules(&ns);
    let pristine: Vec<(Family, String)> = Family::ALL.iter().map(|f| (*f, ns.save(*f))).collect();
    let config = CaptureConfig {
        include_ipv6: false,
        ..busy_config()
    };
    config.apply_in(&ns.exec()).unwrap();
    assert_applied(&ns, &pristine[..1], &config);
    assert_eq!(ns.save(Family::V6), pristine[1].1);
    capture::clean_in(&ns.exec()).unwrap();
    assert_pristine(&ns, &pristine, "after clean");
}

#[test]
fn clean_with_nothing_installed_is_ok() {
    let ns = Netns::new();
    capture::clean_in(&ns.exec()).unwrap();
    capture::clean_in(&ns.exec()).unwrap();
    for family in Family::ALL {
        assert!(!ns.save(family).contains("EGRET"));
    }
}

#[test]
fn clean_removes_jumps_added_by_hand_twice() {
    let ns = Netns::new();
    add_foreign_rules(&ns);
    let pristine: Vec<(Family, String)> = Family::ALL.iter().map(|f| (*f, ns.save(*f))).collect();
    // Someone pasted `egret iptables print` twice (the second -N lines fail; the -A lines stick).
    let printed = CaptureConfig::default().print();
    for _ in 0..2 {
        for line in printed.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let _ = ns.output(&words);
        }
    }
    let saved = ns.save(Family::V4);
    assert_eq!(
        saved.matches("-A OUTPUT -p tcp -j EGRET_OUTPUT\n").count(),
        2,
        "{saved}"
    );
    capture::clean_in(&ns.exec()).unwrap();
    assert_pristine(&ns, &pristine, "after clean");
}

#[test]
fn printed_commands_build_the_same_table_as_apply() {
    let config = busy_config();
    let by_apply = Netns::new();
    config.apply_in(&by_apply.exec()).unwrap();
    let by_print = Netns::new();
    for line in config.print().lines() {
        let words: Vec<&str> = line.split(' ').collect();
        by_print.must(&words);
    }
    for family in Family::ALL {
        assert_eq!(
            Table::parse(&by_print.save(family)),
            Table::parse(&by_apply.save(family)),
            "{family}"
        );
    }
}

#[test]
fn failures_report_the_command_and_its_stderr() {
    let ns = Netns::new();
    CaptureConfig::default().apply_in(&ns.exec()).unwrap();
    // A foreign reference to our chain makes deleting it fail.
    ns.must(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-j",
        "EGRET_REDIRECT",
    ]);
    let err = capture::clean_in(&ns.exec()).unwrap_err();
    match &err {
        CaptureError::Failed {
            command, stderr, ..
        } => {
            assert_eq!(command, "iptables -t nat -X EGRET_REDIRECT");
            assert!(!stderr.is_empty());
        }
        other => panic!("expected a failed command, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("`iptables -t nat -X EGRET_REDIRECT` failed"),
        "{message}"
    );
    // Removing the foreign reference lets a second clean finish the job.
    ns.must(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-j",
        "EGRET_REDIRECT",
    ]);
    capture::clean_in(&ns.exec()).unwrap();
    for family in Family::ALL {
        assert!(!ns.save(family).contains("EGRET"));
    }
}

// ---------------------------------------------------------------------------------------------
// Real capture, end to end.

/// Accepts connections until killed (or 60 s), answering each with one line: `proxy ORIGDST`
/// for listeners tagged `proxy` (the SO_ORIGINAL_DST the kernel reports), `TAG LOCALADDR`
/// otherwise. Prints `ready` once every listener is bound.
const SERVER: &str = r#"
import selectors, socket, struct, sys, time

def fmt(family, host, port):
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"

def original_dst(conn):
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)  # IP6T_SO_ORIGINAL_DST, sockaddr_in6
        return fmt(conn.family, socket.inet_ntop(socket.AF_INET6, raw[8:24]),
                   struct.unpack("!H", raw[2:4])[0])
    raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST, sockaddr_in
    return fmt(conn.family, socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])

sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    tag, host, port = spec.split(",")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ, tag)
print("ready", flush=True)

deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        conn, _ = key.fileobj.accept()
        with conn:
            conn.settimeout(5)
            try:
                if key.data == "proxy":
                    seen = original_dst(conn)
                else:
                    seen = fmt(conn.family, *conn.getsockname()[:2])
                conn.sendall(f"{key.data} {seen}\n".encode())
            except OSError as e:
                print(f"server error: {e}", file=sys.stderr, flush=True)
"#;

/// Connects to HOST PORT (5 s timeout) and prints the line the server sends.
const CLIENT: &str = r#"
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    print(data.decode().strip())
except OSError as e:
    print(f"client error: {e}", file=sys.stderr)
    sys.exit(1)
"#;

fn python() -> &'static str {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is needed (apt-get install -y python3)"
    );
    PYTHON
}

/// A listener process inside a namespace; killed on drop.
struct Server {
    child: Child,
}

impl Server {
    /// `listeners`: (tag, host, port).
    fn start(ns: &Netns, listeners: &[(&str, &str, u16)]) -> Server {
        let specs: Vec<String> = listeners
            .iter()
            .map(|(tag, host, port)| format!("{tag},{host},{port}"))
            .collect();
        // `ip netns exec` execs python, so the child's pid is python's and kill() reaches it.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, python(), "-u", "-c", SERVER])
            .args(&specs)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python listener");
        let stdout = child.stdout.take().unwrap();
        let server = Server { child };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("listeners {specs:?} in {} not ready in 10 s", ns.name));
        assert_eq!(
            line.trim(),
            "ready",
            "listeners {specs:?} in {} failed to start",
            ns.name
        );
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from `ns`, as root or as `(uid, gid)`; returns the server's line or the error.
fn connect(ns: &Netns, user: Option<(u32, u32)>, host: &str, port: u16) -> String {
    let (uid, gid) = user.map_or((String::new(), String::new()), |(u, g)| {
        (u.to_string(), g.to_string())
    });
    let port = port.to_string();
    let mut args: Vec<&str> = Vec::new();
    if user.is_some() {
        args.extend([
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--clear-groups",
        ]);
    }
    args.extend(["timeout", "10", python(), "-c", CLIENT, host, &port]);
    let out = ns.output(&args);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

struct Addresses {
    /// A's own address.
    local: &'static str,
    /// B's address, "the internet".
    far: &'static str,
    /// B's second address, excluded from capture.
    excluded: &'static str,
    loopback: &'static str,
    prefix: &'static str,
}

const V4: Addresses = Addresses {
    local: "203.0.113.1",
    far: "203.0.113.10",
    excluded: "203.0.113.20",
    loopback: "127.0.0.1",
    prefix: "24",
};

const V6: Addresses = Addresses {
    local: "2001:db8:113::1",
    far: "2001:db8:113::10",
    excluded: "2001:db8:113::20",
    loopback: "::1",
    prefix: "64",
};

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Namespaces A (the workload) and B (the far side), joined by a veth pair created inside A,
/// with both address families configured.
fn workload_and_far_side() -> (Netns, Netns) {
    let a = Netns::new();
    let b = Netns::new();
    a.ip(&[
        "link", "add", "egret0", "type", "veth", "peer", "name", "egret1", "netns", &b.name,
    ]);
    for (ns, dev, v4, v6) in [
        (&a, "egret0", V4.local, V6.local),
        (&b, "egret1", V4.far, V6.far),
    ] {
        ns.ip(&["addr", "add", &format!("{v4}/{}", V4.prefix), "dev", dev]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/{}", V6.prefix),
            "dev",
            dev,
            "nodad",
        ]);
    }
    b.ip(&[
        "addr",
        "add",
        &format!("{}/32", V4.excluded),
        "dev",
        "egret1",
    ]);
    b.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/128", V6.excluded),
        "dev",
        "egret1",
        "nodad",
    ]);
    a.ip(&["link", "set", "egret0", "up"]);
    b.ip(&["link", "set", "egret1", "up"]);
    (a, b)
}

/// Which rules a test installs: iptables (the default) or native nftables.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Iptables,
    Nft,
}

impl Mode {
    fn apply(self, config: &CaptureConfig, ns: &Netns) {
        match self {
            Mode::Iptables => config.apply_in(&ns.exec()).unwrap(),
            Mode::Nft => config.apply_nft_in(&ns.exec()).unwrap(),
        }
    }

    fn clean(self, ns: &Netns) {
        match self {
            Mode::Iptables => capture::clean_in(&ns.exec()).unwrap(),
            Mode::Nft => capture::clean_nft_in(&ns.exec()).unwrap(),
        }
    }
}

fn capture_end_to_end(addrs: &Addresses, mode: Mode) {
    let (a, b) = workload_and_far_side();
    let config = CaptureConfig {
        exclude_ports: vec![8443],
        exclude_cidrs: parse_cidrs(addrs.excluded).unwrap(),
        ..CaptureConfig::default()
    };
    // Declared after the namespaces, so dropped (killed) before they are deleted.
    let _far = Server::start(
        &b,
        &[
            ("direct", addrs.far, 443),
            ("direct", addrs.far, 8443),
            ("direct", addrs.excluded, 443),
        ],
    );
    let _near = Server::start(
        &a,
        &[
            ("proxy", addrs.loopback, 15001),
            ("local", addrs.loopback, 9001),
            ("local", addrs.local, 9000),
        ],
    );
    let far_443 = endpoint(addrs.far, 443);
    let direct = format!("direct {far_443}");
    let captured = format!("proxy {far_443}");

    // Before capture the far side answers itself.
    assert_eq!(connect(&a, None, addrs.far, 443), direct);

    mode.apply(&config, &a);
    // Root and ordinary app users are captured; the redirect listener sees the original dst.
    assert_eq!(connect(&a, None, addrs.far, 443), captured);
    assert_eq!(connect(&a, Some((4242, 4242)), addrs.far, 443), captured);
    // Any port: B has no listener on 80, the proxy still gets the connection.
    assert_eq!(
        connect(&a, None, addrs.far, 80),
        format!("proxy {}", endpoint(addrs.far, 80))
    );
    // The proxy's own uid, or its gid alone, is not captured.
    assert_eq!(connect(&a, Some((1337, 1337)), addrs.far, 443), direct);
    assert_eq!(connect(&a, Some((4242, 1337)), addrs.far, 443), direct);
    // Excluded port and excluded destination are not captured.
    assert_eq!(
        connect(&a, None, addrs.far, 8443),
        format!("direct {}", endpoint(addrs.far, 8443))
    );
    assert_eq!(
        connect(&a, None, addrs.excluded, 443),
        format!("direct {}", endpoint(addrs.excluded, 443))
    );
    // Loopback, and the workload's own address (over lo), are not captured.
    assert_eq!(
        connect(&a, None, addrs.loopback, 9001),
        format!("local {}", endpoint(addrs.loopback, 9001))
    );
    assert_eq!(
        connect(&a, None, addrs.local, 9000),
        format!("local {}", endpoint(addrs.local, 9000))
    );

    // Applying again changes nothing; cleaning switches capture off.
    mode.apply(&config, &a);
    assert_eq!(connect(&a, None, addrs.far, 443), captured);
    mode.clean(&a);
    assert_eq!(connect(&a, None, addrs.far, 443), direct);
}

#[test]
fn captures_ipv4_outbound_tcp() {
    capture_end_to_end(&V4, Mode::Iptables);
}

#[test]
fn captures_ipv6_outbound_tcp() {
    capture_end_to_end(&V6, Mode::Iptables);
}

#[test]
fn nft_captures_ipv4_outbound_tcp() {
    capture_end_to_end(&V4, Mode::Nft);
}

#[test]
fn nft_captures_ipv6_outbound_tcp() {
    capture_end_to_end(&V6, Mode::Nft);
}

#[test]
fn ipv6_is_not_captured_when_excluded_from_the_config() {
    let (a, b) = workload_and_far_side();
    let _far = Server::start(&b, &[("direct", V6.far, 443), ("direct", V4.far, 443)]);
    let _near = Server::start(
        &a,
        &[("proxy", V6.loopback, 15001), ("proxy", V4.loopback, 15001)],
    );
    let config = CaptureConfig {
        include_ipv6: false,
        ..CaptureConfig::default()
    };
    for mode in [Mode::Iptables, Mode::Nft] {
        mode.apply(&config, &a);
        assert_eq!(
            connect(&a, None, V6.far, 443),
            format!("direct {}", endpoint(V6.far, 443)),
            "{mode:?}"
        );
        assert_eq!(
            connect(&a, None, V4.far, 443),
            format!("proxy {}", endpoint(V4.far, 443)),
            "{mode:?}"
        );
        mode.clean(&a);
    }
}

fn nft_ruleset(ns: &Netns) -> String {
    ns.must(&["nft", "list", "ruleset"])
}

#[test]
fn nft_table_applies_exactly_idempotently_and_cleans_away() {
    let ns = Netns::new();
    add_foreign_rules(&ns);
    ns.must(&["nft", "add", "table", "inet", "foreign"]);
    let pristine = nft_ruleset(&ns);
    for config in [CaptureConfig::default(), busy_config()] {
        let script = config.nft_script();
        config.apply_nft_in(&ns.exec()).unwrap();
        assert_eq!(ns.must(&["nft", "list", "table", "inet", "egret"]), script);
        assert_eq!(nft_ruleset(&ns), format!("{pristine}{script}"));
        config.apply_nft_in(&ns.exec()).unwrap();
        assert_eq!(nft_ruleset(&ns), format!("{pristine}{script}"));
        capture::clean_nft_in(&ns.exec()).unwrap();
        assert_eq!(nft_ruleset(&ns), pristine);
        capture::clean_nft_in(&ns.exec()).unwrap();
        assert_eq!(nft_ruleset(&ns), pristine);
    }
}
