//! `egret validate` and `egret compile` as a user runs them: the real binary, real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn egret(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(args)
        .output()
        .expect("run egret")
}

fn samples_dir() -> PathBuf {
    match std::env::var_os("EGRET_SAMPLES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/conformance/istio-samples"),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("egret-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The README's main command for this stage: every conformance sample, as a directory.
/// (Sample 14's shell variables are substituted first, as its istio.io task does.)
#[test]
fn validate_every_sample_directory_is_clean() {
    let dir = TempDir::new("samples");
    for e in std::fs::read_dir(samples_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("$PROXY_IP", "203.0.113.10")
            .replace("$PROXY_PORT", "3128");
        dir.write(&name, &text);
    }
    let o = egret(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(" 0 errors"), "{}", stderr(&o));
    assert!(!stdout(&o).contains(": error:"), "{}", stdout(&o));
}

#[test]
fn validate_exit_1_with_exact_diagnostic() {
    let dir = TempDir::new("bad");
    let f = dir.write(
        "se.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: bad
spec:
  hosts: [\"*.example.test\"]
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
",
    );
    let o = egret(&["validate", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let want = format!(
        "{}:6: error: ServiceEntry default/bad: spec.hosts[0]: DNS resolution is not allowed with wildcard host \"*.example.test\"; use resolution NONE",
        f.display()
    );
    assert!(
        stdout(&o).lines().any(|l| l == want),
        "want {want}\ngot {}",
        stdout(&o)
    );
}

#[test]
fn validate_exit_2_on_unreadable_input() {
    let o = egret(&["validate", "/nonexistent/egret/config.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/egret/config.yaml: cannot read"));
}

#[test]
fn validate_malformed_yaml_is_an_error_not_a_crash() {
    let dir = TempDir::new("malformed");
    let f = dir.write("x.yaml", "kind: ServiceEntry\nspec: [unclosed\n");
    let o = egret(&["validate", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(": error: invalid YAML:"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn notes_for_kubernetes_kinds_only_on_request() {
    let f = samples_dir().join("07-egress-gateway-networkpolicy.yaml");
    let o = egret(&["validate", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!stdout(&o).contains("note:"));
    let o = egret(&["validate", "--notes", f.to_str().unwrap()]);
    assert!(
        stdout(&o).contains(": note: skipped NetworkPolicy"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn compile_sidecar_json_is_deterministic_and_complete() {
    let f = samples_dir().join("08-egress-tls-origination-sidecar.yaml");
    let args = [
        "compile",
        "--role",
        "sidecar",
        "--namespace",
        "default",
        f.to_str().unwrap(),
    ];
    let a = egret(&args);
    let b = egret(&args);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    let v: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    let cluster = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|80||edition.cnn.com")
        .unwrap();
    // Sample 08: port 80 -> targetPort 443 with TLS originated (SIMPLE), verified.
    assert_eq!(cluster["target_port"], 443);
    assert_eq!(cluster["policy"]["tls"]["mode"], "SIMPLE");
    assert_eq!(cluster["policy"]["tls"]["verify"], "system_roots");
}

#[test]
fn compile_gateway_yaml_format() {
    let f = samples_dir().join("06-egress-gateway-https-passthrough.yaml");
    let o = egret(&[
        "compile",
        "--role",
        "gateway",
        "--namespace",
        "istio-system",
        "--labels",
        "istio=egressgateway",
        "--format",
        "yaml",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("---\n"), "{out}");
    assert!(out.contains("role: gateway"));
    assert!(out.contains("outbound|443||edition.cnn.com"));
}

#[test]
fn compile_refuses_config_with_errors() {
    let dir = TempDir::new("compile-bad");
    let f = dir.write(
        "se.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: x
spec:
  hosts: [a.example.test]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 80, name: http2, protocol: HTTP}
",
    );
    let o = egret(&[
        "compile",
        "--role",
        "sidecar",
        "--namespace",
        "default",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("no snapshot"), "{}", stderr(&o));
}

#[test]
fn compile_rejects_bad_labels() {
    let f = samples_dir().join("02-egress-control-se-http-httpbin.yaml");
    let o = egret(&[
        "compile",
        "--role",
        "sidecar",
        "--namespace",
        "default",
        "--labels",
        "novalue",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--labels: label \"novalue\" is not key=value"));
}

#[test]
fn mesh_config_flag_sets_registry_only() {
    let dir = TempDir::new("mesh");
    let mesh = dir.write(
        "mesh.yaml",
        "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
    );
    let f = samples_dir().join("02-egress-control-se-http-httpbin.yaml");
    let o = egret(&[
        "compile",
        "--role",
        "sidecar",
        "--namespace",
        "default",
        "--mesh-config",
        mesh.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["outbound_traffic_policy"]["mode"], "REGISTRY_ONLY");
    assert_eq!(v["outbound_traffic_policy"]["source"], "MeshConfig");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `egret sidecar` becomes ready, serves, and on SIGTERM drains and exits 0.
#[test]
fn sidecar_binary_is_ready_then_exits_cleanly_on_sigterm() {
    let dir = TempDir::new("sigterm");
    let cfg = dir.write(
        "c.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
",
    );
    let (proxy, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args([
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--namespace",
            "default",
            "--outbound-port",
            "0",
            "--proxy-port",
            &proxy.to_string(),
            "--admin-port",
            &admin.to_string(),
            "--drain-seconds",
            "2",
            "--request-headers-timeout",
            "300ms",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let ready = loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", admin))
            .ok()
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .ok()?;
                let mut r = String::new();
                s.read_to_string(&mut r).ok()?;
                Some(r.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ok || std::time::Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(ready, "sidecar never became ready");
    // `--request-headers-timeout`: a head that never ends is answered 408 and closed.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        s.write_all(b"GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\n")
            .unwrap();
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        assert!(r.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{r}");
        assert!(r.ends_with("request header timeout"), "{r}");
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("egret sidecar ready") && err.contains("draining"),
        "{err}"
    );
    assert!(err.contains("reason=\"request_header_timeout\""), "{err}");
}

#[test]
fn timeout_flags_take_istio_durations() {
    let o = egret(&["sidecar", "--idle-timeout", "5x", "--namespace", "default"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--idle-timeout") && err.contains("5x"),
        "{err}"
    );
}

#[test]
fn gateway_needs_an_identity_or_allow_direct() {
    let f = samples_dir().join("05-egress-gateway-http.yaml");
    let o = egret(&[
        "gateway",
        "--config",
        f.to_str().unwrap(),
        "--namespace",
        "istio-system",
        "--labels",
        "istio=egressgateway",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--identity-dir"), "{}", stderr(&o));
    // A missing identity directory is a clear error too, not a panic.
    let o = egret(&[
        "gateway",
        "--config",
        f.to_str().unwrap(),
        "--namespace",
        "istio-system",
        "--labels",
        "istio=egressgateway",
        "--identity-dir",
        "/nonexistent/egret-identity",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/egret-identity"),
        "{}",
        stderr(&o)
    );
}
