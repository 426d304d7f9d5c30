//! The README's second quickstart, run for real with the `egret` binary (no root): a mesh CA, two
//! identities, an egress gateway and a sidecar (explicit-proxy mode) joined by the mutual-TLS
//! tunnel, reading `examples/gateway-quickstart/mesh.yaml` — with its fixed ports swapped for
//! free ones so tests can run side by side.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use egret_testkit::{InProcessServer, Process, TempDir, TestServerConfig};

fn egret() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egret"))
}

fn run(args: &[&str]) -> Result<()> {
    let o = egret().args(args).output().context("run egret")?;
    ensure!(
        o.status.success(),
        "egret {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// Polls `url`-ish readiness: a TCP connect to `addr` succeeding.
fn wait_listening(addr: SocketAddr, proc_: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        proc_.check_running()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not listen on {addr}:\n{}",
        proc_.label(),
        proc_.log()
    )
}

/// `curl -x proxy url` in Rust: one absolute-form HTTP/1.1 request through the explicit proxy.
fn via_proxy(proxy: SocketAddr, url: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    write!(
        s,
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn quickstart_through_the_egress_gateway() -> Result<()> {
    let dir = TempDir::new("quickstart-gw")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/gateway-quickstart");
    let yaml = std::fs::read_to_string(root.join("mesh.yaml"))?;
    let api = InProcessServer::start(
        None,
        TestServerConfig::new("api").plain("127.0.0.1:0".parse()?),
    )?;
    let (gw_port, api_port) = (free_port()?, api.plain_addrs()[0].port());
    ensure!(
        yaml.contains("15443") && yaml.contains("18080"),
        "example ports changed"
    );
    let yaml = yaml
        .replace("15443", &gw_port.to_string())
        .replace("18080", &api_port.to_string());
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, yaml)?;

    // The README's commands.
    let (ca, gw_id, sleep_id) = (
        dir.path().join("ca"),
        dir.path().join("gw-id"),
        dir.path().join("sleep-id"),
    );
    run(&["ca", "init", "--dir", p(&ca)])?;
    run(&[
        "ca",
        "issue",
        "--dir",
        p(&ca),
        "--namespace",
        "istio-system",
        "--service-account",
        "istio-egressgateway-service-account",
        "--out",
        p(&gw_id),
    ])?;
    run(&[
        "ca",
        "issue",
        "--dir",
        p(&ca),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--out",
        p(&sleep_id),
    ])?;
    let (gw_admin, sc_admin, sc_proxy) = (free_port()?, free_port()?, free_port()?);
    let mut gw_cmd = egret();
    gw_cmd.args([
        "gateway",
        "--config",
        p(&config),
        "--namespace",
        "istio-system",
        "--labels",
        "istio=egressgateway",
        "--identity-dir",
        p(&gw_id),
        "--listen",
        &format!("80=127.0.0.1:{gw_port}"),
        "--admin-port",
        &gw_admin.to_string(),
    ]);
    let mut gw = Process::spawn(gw_cmd, "egret gateway", &dir.path().join("gateway.log"))?;
    let mut sc_cmd = egret();
    sc_cmd.args([
        "sidecar",
        "--config",
        p(&config),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--identity-dir",
        p(&sleep_id),
        "--outbound-port",
        "0",
        "--proxy-port",
        &sc_proxy.to_string(),
        "--admin-port",
        &sc_admin.to_string(),
    ]);
    let mut sc = Process::spawn(sc_cmd, "egret sidecar", &dir.path().join("sidecar.log"))?;
    wait_listening(SocketAddr::from(([127, 0, 0, 1], gw_port)), &mut gw)?;
    wait_listening(SocketAddr::from(([127, 0, 0, 1], sc_proxy)), &mut sc)?;

    let proxy = SocketAddr::from(([127, 0, 0, 1], sc_proxy));
    let out = via_proxy(proxy, "http://api.example.test/headers")?;
    ensure!(out.starts_with("HTTP/1.1 200"), "{out}\n{}", gw.log());
    ensure!(
        out.contains("x-egress: through-egret-gateway"),
        "the request did not pass the gateway: {out}"
    );
    // The gateway knows who called: the sidecar's SPIFFE id is in its access log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw
        .log()
        .contains("peer=spiffe://cluster.local/ns/default/sa/sleep")
    {
        ensure!(
            Instant::now() < deadline,
            "no caller identity in:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Going to the gateway without the tunnel: refused (no mesh identity).
    let direct = via_proxy(
        SocketAddr::from(([127, 0, 0, 1], gw_port)),
        "http://api.example.test/headers",
    )
    .unwrap_or_default();
    ensure!(direct.is_empty(), "direct client was served: {direct}");
    ensure!(gw.log().contains("not_mesh_tunnel"), "{}", gw.log());
    Ok(())
}
