//! Every sample in ../shared/conformance/istio-samples parses without errors.

use std::path::PathBuf;

use egret_config::{ConfigSet, LoadOptions, Loader, Severity};

fn samples_dir() -> PathBuf {
    match std::env::var_os("EGRET_SAMPLES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/conformance/istio-samples"),
    }
}

/// The istio.io http-proxy task substitutes `$PROXY_IP` / `$PROXY_PORT` with its shell before
/// applying sample 14; we do the same with documentation addresses.
pub fn substitute_task_variables(text: &str) -> String {
    text.replace("$PROXY_IP", "203.0.113.10")
        .replace("$PROXY_PORT", "3128")
}

#[test]
fn every_sample_parses_without_errors() {
    let dir = samples_dir();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance samples missing at {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 29,
        "expected the 29 YAML samples, found {}",
        entries.len()
    );
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let text = substitute_task_variables(&text);
        let mut l = Loader::new(LoadOptions::default());
        l.add_str(&path.display().to_string(), &text);
        let (set, diags): (ConfigSet, _) = l.finish();
        for d in diags.iter() {
            eprintln!("{d}");
        }
        let errors: Vec<_> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !name.starts_with("01-") {
            assert!(set.object_count() > 0, "{name}: no objects read");
        }
    }
}
