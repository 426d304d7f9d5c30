#![allow(clippy::unwrap_used, clippy::expect_used)]
//! docs/configuration.md and `egret_config::unsupported::UNSUPPORTED` stay in step: every field
//! egret warns about as "not supported, ignored" is documented as such, with the same reason,
//! in the table of its kind, and the doc marks no other field that way.

use std::path::PathBuf;

use egret_config::unsupported::UNSUPPORTED;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `http[].corsPolicy` -> `corsPolicy`
fn last_segment(path: &str) -> &str {
    path.rsplit('.').next().unwrap().trim_end_matches("[]")
}

/// Table rows of the doc with the `### <Kind>` section they sit in: (kind, first cell without
/// backticks, whole line).
fn table_rows(doc: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut rows = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix('#') {
            section = h.trim_start_matches('#').trim().to_string();
            continue;
        }
        if let Some(rest) = line.strip_prefix('|') {
            let first = rest.split('|').next().unwrap_or("").trim().replace('`', "");
            rows.push((section.clone(), first, line.to_string()));
        }
    }
    rows
}

#[test]
fn every_unsupported_field_is_documented_as_not_supported() {
    let doc = doc();
    let mut missing = Vec::new();
    for (kind, path, _why) in UNSUPPORTED {
        let seg = last_segment(path);
        if !doc
            .lines()
            .any(|l| l.contains(seg) && l.contains("not supported"))
        {
            missing.push(format!(
                "{kind} {path}: no line mentions {seg:?} with \"not supported\""
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md is out of step:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_unsupported_field_has_a_row_with_its_reason() {
    let doc = doc();
    let rows = table_rows(&doc);
    let mut missing = Vec::new();
    for (kind, path, why) in UNSUPPORTED {
        let expected = format!("not supported, ignored (warning): {why}");
        let found = rows.iter().any(|(section, field, line)| {
            section == kind.as_str() && field == path && line.contains(&expected)
        });
        if !found {
            missing.push(format!(
                "{kind}: no row `{path}` under \"### {kind}\" containing {expected:?}"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md is out of step:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_doc_marks_no_other_field_as_warned() {
    let doc = doc();
    let mut extra = Vec::new();
    for (section, field, line) in table_rows(&doc) {
        if !line.contains("not supported, ignored (warning)") {
            continue;
        }
        let known = UNSUPPORTED
            .iter()
            .any(|(kind, path, _)| kind.as_str() == section && *path == field);
        if !known {
            extra.push(format!("{section}: `{field}` is not in UNSUPPORTED"));
        }
    }
    assert!(
        extra.is_empty(),
        "docs/configuration.md claims warnings the code does not emit:\n{}",
        extra.join("\n")
    );
}
