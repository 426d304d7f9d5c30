//! Golden snapshots: conformance samples compiled for the proxy each scenario is about, pinned
//! as JSON in tests/golden/. Each golden file was checked by hand against
//! shared/conformance/istio-samples/INDEX.md (see tests/golden/README.md).
//!
//! After an intended change: `EGRET_UPDATE_GOLDEN=1 cargo test -p egret-model --test golden`,
//! then read the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use egret_config::{LoadOptions, Loader};
use egret_model::{ProxyIdentity, Role, compile};

fn samples_dir() -> PathBuf {
    match std::env::var_os("EGRET_SAMPLES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/conformance/istio-samples"),
    }
}

fn here(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(p)
}

/// The istio.io http-proxy task substitutes these with its shell before applying sample 14.
fn substitute_task_variables(text: &str) -> String {
    text.replace("$PROXY_IP", "203.0.113.10")
        .replace("$PROXY_PORT", "3128")
}

struct Case {
    name: &'static str,
    samples: &'static [&'static str],
    fixtures: &'static [&'static str],
    role: Role,
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// Namespace changes the scenario's task makes with `kubectl apply -n` (kind, name, ns).
    moves: &'static [(&'static str, &'static str, &'static str)],
}

const GW: &str = "egress-gateway-service.yaml";

const CASES: &[Case] = &[
    Case {
        name: "01-02-registry-only-http-se.sidecar",
        samples: &["01", "02"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "03-https-se.sidecar",
        samples: &["03"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "04-vs-timeout.sidecar",
        samples: &["04"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "05-gateway-http.sidecar",
        samples: &["05"],
        fixtures: &[GW],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "05-gateway-http.gateway",
        samples: &["05"],
        fixtures: &[GW],
        role: Role::Gateway,
        namespace: "istio-system",
        labels: &[("istio", "egressgateway")],
        moves: &[],
    },
    Case {
        name: "06-gateway-passthrough.sidecar",
        samples: &["06"],
        fixtures: &[GW],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "06-gateway-passthrough.gateway",
        samples: &["06"],
        fixtures: &[GW],
        role: Role::Gateway,
        namespace: "istio-system",
        labels: &[("istio", "egressgateway")],
        moves: &[],
    },
    Case {
        name: "08-tls-origination.sidecar",
        samples: &["08"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "09-mtls-origination.sidecar-sleep",
        samples: &["09"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[("app", "sleep")],
        moves: &[],
    },
    Case {
        name: "10-gateway-tls-origination.sidecar",
        samples: &["10"],
        fixtures: &[GW],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "10-gateway-tls-origination.gateway",
        samples: &["10"],
        fixtures: &[GW],
        role: Role::Gateway,
        namespace: "istio-system",
        labels: &[("istio", "egressgateway")],
        moves: &[],
    },
    Case {
        name: "11-gateway-mtls-origination.gateway",
        samples: &["11"],
        fixtures: &[GW, "my-nginx-service.yaml"],
        role: Role::Gateway,
        namespace: "istio-system",
        labels: &[("istio", "egressgateway")],
        moves: &[(
            "DestinationRule",
            "originate-mtls-for-nginx",
            "istio-system",
        )],
    },
    Case {
        name: "12-wildcard-direct.sidecar",
        samples: &["01", "12"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "13-wildcard-gateway.gateway",
        samples: &["13"],
        fixtures: &[GW],
        role: Role::Gateway,
        namespace: "istio-system",
        labels: &[("istio", "egressgateway")],
        moves: &[],
    },
    Case {
        name: "14-http-proxy-tcp.sidecar",
        samples: &["14"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "15-sni-routing.sidecar",
        samples: &["15"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "16-exportto.sidecar-egress",
        samples: &["16"],
        fixtures: &[GW],
        role: Role::Sidecar,
        namespace: "egress",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "16-exportto.sidecar-other",
        samples: &["16"],
        fixtures: &[GW],
        role: Role::Sidecar,
        namespace: "other",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "17-dns-multi-endpoints.sidecar",
        samples: &["17"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "19-21-authz-allow.sidecar-foo-httpbin",
        samples: &["19", "21"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "foo",
        labels: &[("app", "httpbin")],
        moves: &[],
    },
    Case {
        name: "20-authz-deny.sidecar-foo",
        samples: &["20"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "foo",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "22-authz-custom.gateway-ingress",
        samples: &["22"],
        fixtures: &[],
        role: Role::Gateway,
        namespace: "istio-system",
        labels: &[("app", "istio-ingressgateway")],
        moves: &[],
    },
    Case {
        name: "23-requestauthn.sidecar-foo-httpbin",
        samples: &["23"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "foo",
        labels: &[("app", "httpbin")],
        moves: &[],
    },
    Case {
        name: "24-sidecar-scope.sidecar",
        samples: &["24"],
        fixtures: &["mesh-root-istio-config.yaml"],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "25-github.sidecar",
        samples: &["25"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "26-google-apis-port-rewrite.sidecar",
        samples: &["26"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "default",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "27-external-services.sidecar",
        samples: &["27"],
        fixtures: &[],
        role: Role::Sidecar,
        namespace: "testns",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "28-route-via-gateway.gateway",
        samples: &["28"],
        fixtures: &["egress-gateway-service-testns.yaml"],
        role: Role::Gateway,
        namespace: "testns",
        labels: &[("istio", "egressgateway")],
        moves: &[],
    },
    Case {
        name: "28-route-via-gateway.sidecar",
        samples: &["28"],
        fixtures: &["egress-gateway-service-testns.yaml"],
        role: Role::Sidecar,
        namespace: "testns",
        labels: &[],
        moves: &[],
    },
    Case {
        name: "30-asm.sidecar-sleep-a",
        samples: &["01", "30"],
        fixtures: &["asm-egressgateway-a-service.yaml"],
        role: Role::Sidecar,
        namespace: "mytest",
        labels: &[("app", "sleep-a")],
        moves: &[],
    },
    Case {
        name: "30-asm.sidecar-sleep-b",
        samples: &["01", "30"],
        fixtures: &["asm-egressgateway-a-service.yaml"],
        role: Role::Sidecar,
        namespace: "mytest",
        labels: &[("app", "sleep-b")],
        moves: &[],
    },
    Case {
        name: "30-asm.gateway",
        samples: &["01", "30"],
        fixtures: &["asm-egressgateway-a-service.yaml"],
        role: Role::Gateway,
        namespace: "istio-egress",
        labels: &[("istio", "egressgateway-a")],
        moves: &[],
    },
];

fn sample_path(prefix: &str) -> PathBuf {
    let dir = samples_dir();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance samples missing at {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(&format!("{prefix}-")) && n.ends_with(".yaml")
        })
        .collect();
    assert_eq!(found.len(), 1, "sample {prefix}");
    found.remove(0)
}

fn render(case: &Case) -> String {
    let mut l = Loader::new(LoadOptions::default());
    for s in case.samples {
        let p = sample_path(s);
        let text = substitute_task_variables(&std::fs::read_to_string(&p).unwrap());
        // Short names in diagnostics; the golden must not depend on where shared/ is.
        l.add_str(&p.file_name().unwrap().to_string_lossy(), &text);
    }
    for f in case.fixtures {
        let p = here(&format!("fixtures/{f}"));
        l.add_str(f, &std::fs::read_to_string(&p).unwrap());
    }
    let (mut set, load_diags) = l.finish();
    for (kind, name, ns) in case.moves {
        let mut moved = false;
        for dr in set.destination_rules.iter_mut() {
            if *kind == "DestinationRule" && dr.meta.name == *name {
                dr.meta.namespace = ns.to_string();
                moved = true;
            }
        }
        assert!(moved, "{}: nothing to move for {kind} {name}", case.name);
    }
    assert!(!load_diags.has_errors(), "{}: {load_diags:?}", case.name);
    let proxy = ProxyIdentity {
        role: case.role,
        namespace: case.namespace.to_string(),
        service_account: "default".to_string(),
        labels: case
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let (snap, diags) = compile(&set, &proxy);
    let errors: Vec<String> = diags.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{}: {errors:#?}", case.name);
    serde_json::to_string_pretty(&snap).unwrap() + "\n"
}

#[test]
fn golden_snapshots() {
    let update = std::env::var_os("EGRET_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in CASES {
        let got = render(case);
        let path = here(&format!("golden/{}.json", case.name));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or(0);
            failures.push(format!("{} (first difference at line {line})", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "snapshots differ from tests/golden: {failures:#?}\nrerun with EGRET_UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn compile_is_deterministic() {
    for case in CASES.iter().take(6) {
        assert_eq!(render(case), render(case), "{}", case.name);
    }
}
