//! `egret up` with the real binary (no root): start it as a subprocess on `examples/quickstart`
//! (its two fixed endpoint ports swapped for free ones, the rest passed as flags, so tests can
//! run side by side), run the commands it prints exactly as printed (`sh -c`, real curl), and
//! check each outcome; then SIGINT stops everything.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::process::{require_program, run_command, wait_until};
use egret_testkit::{Process, TempDir};

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `Try:` block: (comment, command) pairs.
fn printed_commands(out: &str) -> Vec<(String, String)> {
    let mut lines = out
        .lines()
        .skip_while(|l| l.trim() != "Try:")
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let mut pairs = Vec::new();
    while let (Some(c), Some(cmd)) = (lines.next(), lines.next()) {
        if !c.starts_with('#') {
            break;
        }
        pairs.push((c.trim_start_matches("# ").to_string(), cmd.to_string()));
    }
    pairs
}

fn sh(cmd: &str) -> Result<String> {
    let out = run_command(
        Command::new("sh").args(["-c", cmd]),
        Duration::from_secs(30),
    )?;
    ensure!(
        out.success(),
        "`{cmd}` failed: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

#[test]
fn egret_up_serves_the_printed_commands_and_stops_on_ctrl_c() -> Result<()> {
    require_program("curl")?;
    let dir = TempDir::new("egret-up")?;
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config)?;
    let (gw_port, api_port) = (free_port()?, free_port()?);
    let mut seen = (false, false);
    for entry in std::fs::read_dir(&example)? {
        let path = entry?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let yaml = std::fs::read_to_string(&path)?;
        seen.0 |= yaml.contains("15443");
        seen.1 |= yaml.contains("18443");
        let yaml = yaml
            .replace("15443", &gw_port.to_string())
            .replace("18443", &api_port.to_string());
        std::fs::write(config.join(name), yaml)?;
    }
    ensure!(seen == (true, true), "the example's endpoint ports changed");

    let (proxy, admin, gw_admin) = (free_port()?, free_port()?, free_port()?);
    let state = dir.path().join("state");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egret"));
    cmd.arg("up")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--proxy-port", &proxy.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .args(["--gateway-port", &gw_port.to_string()])
        .args(["--gateway-admin-port", &gw_admin.to_string()])
        .args(["--api-port", &api_port.to_string()]);
    let mut up = Process::spawn(cmd, "egret up", &dir.path().join("up.log"))?;

    let commands = wait_until(
        "egret up to print its commands",
        Duration::from_secs(60),
        || {
            up.check_running()?;
            let pairs = printed_commands(&up.log());
            Ok((pairs.len() >= 5).then_some(pairs))
        },
    )?;
    let find = |word: &str| -> Result<&str> {
        commands
            .iter()
            .find(|(c, _)| c.starts_with(word))
            .map(|(_, cmd)| cmd.as_str())
            .with_context(|| format!("no `# {word}...` command in:\n{}", up.log()))
    };

    // Allowed: 200 from the stand-in, reached over TLS from the gateway (TLS origination).
    let out = sh(find("allowed")?)?;
    ensure!(out.starts_with("HTTP/1.1 200"), "allowed: {out}");
    ensure!(
        out.contains(
            "hello from the api.example.test stand-in: GET / over TLS 1.3, SNI api.example.test"
        ),
        "not from the stand-in over TLS: {out}"
    );
    // Denied by AuthorizationPolicy at the gateway.
    let out = sh(find("denied")?)?;
    ensure!(out.starts_with("HTTP/1.1 403"), "denied: {out}");
    ensure!(out.contains("RBAC: access denied"), "denied: {out}");
    // Blocked by REGISTRY_ONLY at the sidecar.
    let out = sh(find("blocked")?)?;
    ensure!(out.starts_with("HTTP/1.1 502"), "blocked: {out}");
    // A request counter at the gateway counted them.
    let out = sh(find("metrics")?)?;
    let counted = out.lines().any(|l| {
        !l.starts_with('#')
            && l.contains("requests_total")
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
    });
    ensure!(counted, "no request counter ≥ 1 in the metrics:\n{out}");
    // The Istio access log (accessLogFile: /dev/stdout, in each proxy's log file): one line per
    // request on each proxy. Written after the response, so poll.
    let access = find("access logs")?.to_string();
    let logs = wait_until("the access log lines", Duration::from_secs(10), || {
        let out = sh(&access)?;
        // The sidecar's lines (HTTP/1.1 from curl) and the gateway's (HTTP/2: the mesh tunnel).
        let ok = out.contains("\"GET / HTTP/1.1\" 200 - via_upstream")
            && out.contains("\"GET / HTTP/2\" 200 - via_upstream")
            && out.contains("\"POST / HTTP/2\" 403 - rbac_access_denied")
            && out.contains("\"GET / HTTP/1.1\" 502 NR registry_only");
        Ok(ok.then_some(out))
    })?;
    ensure!(logs.contains("unknown.example.test"), "{logs}");
    ensure!(logs.contains("outbound|443||api.example.test"), "{logs}");
    // The caller's identity, in the gateway's own log.
    let callers = sh(find("caller identities")?)?;
    ensure!(
        callers.contains("peer=spiffe://cluster.local/ns/default/sa/sleep"),
        "{callers}"
    );

    // Ctrl-C: everything stops, cleanly.
    up.signal(nix::sys::signal::Signal::SIGINT)?;
    let status = wait_until("egret up to exit", Duration::from_secs(20), || {
        up.try_wait()
    })?;
    ensure!(
        status.success(),
        "egret up exited with {status}:\n{}",
        up.log()
    );
    for port in [proxy, admin, gw_port, gw_admin, api_port] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            bail!("{addr} still accepts connections after egret up stopped");
        }
    }
    Ok(())
}
