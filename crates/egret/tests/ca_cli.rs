//! `egret ca init|issue` end to end through the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("egret-ca-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn egret(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn init_issue_and_refuse_reinit() {
    let tmp = TempDir::new("flow");
    let ca = tmp.0.join("ca");
    let out = tmp.0.join("identity");
    let ca_s = ca.to_str().unwrap();
    let out_s = out.to_str().unwrap();

    let o = egret(&["ca", "init", "--dir", ca_s, "--trust-domain", "mesh.test"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("mesh.test"), "{}", text(&o));
    for f in ["root-cert.pem", "root-key.pem", "ca-cert.pem", "ca-key.pem"] {
        assert!(stdout.contains(f), "{f} not reported\n{}", text(&o));
    }
    assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
    assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);
    assert!(ca.join("root-cert.pem").is_file());
    assert!(ca.join("ca-cert.pem").is_file());
    assert_eq!(
        std::fs::read_to_string(ca.join("trust-domain")).unwrap(),
        "mesh.test\n"
    );

    // Re-init refuses and leaves the CA alone.
    let key_before = std::fs::read(ca.join("ca-key.pem")).unwrap();
    let o = egret(&["ca", "init", "--dir", ca_s]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("already exists"), "{}", text(&o));
    assert_eq!(std::fs::read(ca.join("ca-key.pem")).unwrap(), key_before);

    let o = egret(&[
        "ca",
        "issue",
        "--dir",
        ca_s,
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--out",
        out_s,
        "--ttl",
        "2h",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("spiffe://mesh.test/ns/default/sa/sleep"),
        "{}",
        text(&o)
    );
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(out.join(f).is_file(), "{f} missing");
        assert!(stdout.contains(f), "{f} not reported\n{}", text(&o));
    }
    assert_eq!(mode(&out.join("key.pem")), 0o600);

    let chain_pem = std::fs::read(out.join("cert-chain.pem")).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(
        uri_sans(&chain[0]),
        vec!["spiffe://mesh.test/ns/default/sa/sleep".to_string()]
    );
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    let v = leaf.validity();
    let life = v.not_after.timestamp() - v.not_before.timestamp();
    assert_eq!(life, 2 * 3600 + 60, "2h ttl plus 1m backdating");
    assert_eq!(
        std::fs::read(out.join("root-cert.pem")).unwrap(),
        std::fs::read(ca.join("root-cert.pem")).unwrap()
    );
    let key = std::fs::read_to_string(out.join("key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
}

#[test]
fn errors_exit_1_with_a_message() {
    let tmp = TempDir::new("errors");
    let missing = tmp.0.join("no-such-ca");
    let out = tmp.0.join("out");
    let o = egret(&[
        "ca",
        "issue",
        "--dir",
        missing.to_str().unwrap(),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("egret ca:"), "{}", text(&o));
    assert!(stderr.contains("no-such-ca"), "{}", text(&o));
    assert!(!out.exists());

    let ca = tmp.0.join("ca");
    let o = egret(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(ca.join("trust-domain")).unwrap(),
        "cluster.local\n"
    );
    // A bad trust domain.
    let o = egret(&[
        "ca",
        "init",
        "--dir",
        tmp.0.join("ca2").to_str().unwrap(),
        "--trust-domain",
        "Bad_Domain:1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A ttl that the intermediate cannot cover, and a malformed one.
    let issue = |ttl: &str| {
        egret(&[
            "ca",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--namespace",
            "default",
            "--service-account",
            "sleep",
            "--out",
            out.to_str().unwrap(),
            "--ttl",
            ttl,
        ])
    };
    let o = issue("20000h");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("outlives"),
        "{}",
        text(&o)
    );
    let o = issue("soon");
    assert!(!o.status.success(), "{}", text(&o));
    // Writing an identity into the CA directory is refused.
    let o = egret(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--out",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
