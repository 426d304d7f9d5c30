#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Negative tests for the loader: malformed YAML, wrong types, unknown and unsupported fields,
//! unknown kinds, bad metadata, `kind: List`, mesh config sources, directory loading, and
//! garbage that must never panic. Every test asserts the exact diagnostics (rendered as
//! `file:line: severity: Kind ns/name: field: message`), not merely that something failed.

use std::path::{Path, PathBuf};

use egret_config::types::*;
use egret_config::unsupported::UNSUPPORTED;
use egret_config::{
    ConfigSet, Diagnostic, Kind, LoadError, LoadOptions, Loader, ObjectRef, Severity,
};

const FILE: &str = "test.yaml";

/// The lines joined into a file: line N of the text is `lines[N - 1]`.
fn y(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// Load `lines` as `test.yaml`; diagnostics rendered.
fn load(lines: &[&str]) -> (ConfigSet, Vec<String>) {
    load_text(&y(lines))
}

fn load_text(text: &str) -> (ConfigSet, Vec<String>) {
    let (set, diags) = ConfigSet::from_str(FILE, text);
    (set, diags.iter().map(ToString::to_string).collect())
}

fn diags(lines: &[&str]) -> Vec<String> {
    load(lines).1
}

// ===================================================================================
// 1. Malformed YAML
// ===================================================================================

#[test]
fn yaml_unclosed_flow_sequence() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "spec:",
        "  hosts: [a.example.com, b.example.com",
        "  resolution: DNS",
    ]);
    assert_eq!(
        d,
        ["test.yaml:7: error: invalid YAML: illegal placement of ':' indicator"]
    );
}

#[test]
fn yaml_unclosed_flow_sequence_at_end_of_file() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "spec:",
        "  hosts: [a.example.com, b.example.com",
    ]);
    assert_eq!(
        d,
        ["test.yaml:7: error: invalid YAML: while parsing a flow sequence, expected ',' or ']'"]
    );
}

#[test]
fn yaml_bad_indentation() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        " namespace: ns",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:5: error: invalid YAML: while parsing a block mapping, did not find expected key"
        ]
    );
}

#[test]
fn yaml_over_indented_key() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "    namespace: ns",
    ]);
    assert_eq!(
        d,
        ["test.yaml:5: error: invalid YAML: mapping values are not allowed in this context"]
    );
}

#[test]
fn yaml_tab_indentation() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "\tname: se",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:4: error: invalid YAML: tabs disallowed within this context (block indentation)"
        ]
    );
}

#[test]
fn yaml_duplicate_key_has_path_and_line() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "spec:",
        "  hosts: [a.example.com]",
        "  resolution: DNS",
        "  resolution: STATIC",
    ]);
    assert_eq!(
        d,
        ["test.yaml:8: error: invalid YAML: duplicate key \"spec.resolution\""]
    );
}

#[test]
fn yaml_duplicate_key_with_block_value_points_at_the_key() {
    // The second `ports:` is on line 9; its value ends much later (line 13 is the next key).
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "spec:",
        "  ports:",
        "  - number: 80",
        "    name: http",
        "  ports:",
        "  - number: 443",
        "    name: https",
        "",
        "  hosts: [a.example.com]",
    ]);
    assert_eq!(
        d,
        ["test.yaml:9: error: invalid YAML: duplicate key \"spec.ports\""]
    );
}

#[test]
fn yaml_duplicate_key_in_flow_mapping_and_at_top_level() {
    assert_eq!(
        diags(&["kind: ServiceEntry", "metadata: {name: a, name: b}"]),
        ["test.yaml:2: error: invalid YAML: duplicate key \"metadata.name\""]
    );
    assert_eq!(
        diags(&["apiVersion: v1", "kind: Secret", "kind: ConfigMap"]),
        ["test.yaml:3: error: invalid YAML: duplicate key \"kind\""]
    );
}

#[test]
fn yaml_error_in_a_later_document_rejects_the_whole_file() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: good",
        "spec:",
        "  hosts: [a.example.com]",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: bad",
        "  name: worse",
    ]);
    assert_eq!(
        d,
        ["test.yaml:12: error: invalid YAML: duplicate key \"metadata.name\""]
    );
    assert_eq!(set.object_count(), 0);
}

#[test]
fn yaml_complex_keys_are_rejected() {
    assert_eq!(
        diags(&["? [a, b]", ": value"]),
        ["test.yaml:1: error: invalid YAML: mapping keys must be scalars"]
    );
    assert_eq!(
        diags(&["apiVersion: v1", "{a: 1}: value"]),
        ["test.yaml:2: error: invalid YAML: mapping keys must be scalars"]
    );
}

#[test]
fn yaml_unknown_alias() {
    assert_eq!(
        diags(&["apiVersion: v1", "kind: *nope"]),
        ["test.yaml:2: error: invalid YAML: while parsing node, found unknown anchor"]
    );
}

#[test]
fn yaml_alias_to_an_anchor_of_an_earlier_document() {
    // Anchors do not carry across documents.
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: a",
        "spec:",
        "  hosts: &h [a.example.com]",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: b",
        "spec:",
        "  hosts: *h",
    ]);
    assert_eq!(
        d,
        ["test.yaml:13: error: invalid YAML: alias to an anchor not defined in this document"]
    );
}

#[test]
fn yaml_anchors_and_aliases_within_a_document_work() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: a",
        "  labels: &l",
        "    app_name: x",
        "  annotations: *l",
        "spec:",
        "  hosts: &h [a.example.com, b.example.com]",
        "  subjectAltNames: *h",
        "  ports:",
        "  - &p {number: 80, name: http, protocol: HTTP}",
        "  - *p",
    ]);
    assert_eq!(d, Vec::<String>::new());
    let se = &set.service_entries[0];
    assert_eq!(
        se.spec.subject_alt_names,
        ["a.example.com", "b.example.com"]
    );
    assert_eq!(se.spec.ports.len(), 2);
    assert_eq!(se.spec.ports[1].number, Some(80));
    assert_eq!(
        se.meta.annotations.get("app_name").map(String::as_str),
        Some("x")
    );
}

#[test]
fn yaml_alias_bomb_is_rejected() {
    // Ten levels of ten aliases each would be 10^10 values.
    let mut lines = vec!["a0: &a0 [x, x, x, x, x, x, x, x, x, x]".to_string()];
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        lines.push(format!("a{i}: &a{i} [{refs}]"));
    }
    let text = lines.join("\n");
    let (set, d) = load_text(&text);
    // a4 expands a3 (1111 values) ten times: the budget of 100000 runs out on line 5.
    assert_eq!(
        d,
        ["test.yaml:5: error: invalid YAML: aliases expand to more than 100000 values"]
    );
    assert_eq!(set.object_count(), 0);
}

#[test]
fn yaml_nesting_too_deep_is_rejected() {
    let mut text = y(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: deep",
        "spec:",
        "  junk:",
    ]);
    for i in 0..1000 {
        text.push_str(&" ".repeat(2 * i + 2));
        text.push_str("-\n");
    }
    // The root mapping is level 1, `spec` level 2, the sequence under `junk` (line 7) level 3:
    // the sequence starting on line 7 + 126 would be level 129.
    let (_, d) = load_text(&text);
    assert_eq!(
        d,
        ["test.yaml:133: error: invalid YAML: nested deeper than 128 levels"]
    );
}

#[test]
fn yaml_deep_flow_nesting_is_rejected() {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: deep\nspec:\n  hosts: {}{}\n",
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let (_, d) = load_text(&text);
    assert_eq!(
        d,
        ["test.yaml:6: error: invalid YAML: recursion limit exceeded"]
    );
}

#[test]
fn yaml_byte_order_mark_is_not_content() {
    let (set, d) = load_text(
        "\u{feff}apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bom\nspec:\n  hosts: [a.example.com]\n",
    );
    assert_eq!(d, Vec::<String>::new());
    assert_eq!(set.service_entries[0].meta.name, "bom");
}

#[test]
fn documents_that_are_not_objects() {
    assert_eq!(
        diags(&["- a", "- b"]),
        ["test.yaml:1: error: document is not a mapping (expected a Kubernetes object)"]
    );
    // The document starts at its content, not at the `---` before it.
    assert_eq!(
        diags(&["---", "just a string"]),
        ["test.yaml:2: error: document is not a mapping (expected a Kubernetes object)"]
    );
    assert_eq!(
        diags(&[
            "apiVersion: v1",
            "kind: Secret",
            "metadata: {name: a}",
            "---",
            "# c",
            "",
            "- x"
        ]),
        [
            "test.yaml:1: note: skipped Secret a (v1): not a kind egret reads",
            "test.yaml:7: error: document is not a mapping (expected a Kubernetes object)",
        ]
    );
    assert_eq!(
        diags(&["metadata:", "  name: x"]),
        ["test.yaml:1: error: document has no apiVersion and kind"]
    );
    assert_eq!(
        diags(&[
            "# comment",
            "apiVersion: networking.istio.io/v1",
            "metadata: {name: x}"
        ]),
        ["test.yaml:2: error: document has no kind"]
    );
    assert_eq!(
        diags(&["kind: ServiceEntry", "metadata: {name: x}"]),
        ["test.yaml:1: error: document has no apiVersion"]
    );
    // kind and apiVersion that are not strings count as missing.
    assert_eq!(
        diags(&["apiVersion: 5", "kind: 5"]),
        ["test.yaml:1: error: document has no apiVersion and kind"]
    );
}

#[test]
fn empty_documents_are_dropped_silently() {
    for text in [
        "",
        "---",
        "---\n---\n",
        "# only a comment\n",
        "~\n",
        "---\nnull\n---\n",
    ] {
        let (set, d) = load_text(text);
        assert_eq!(d, Vec::<String>::new(), "{text:?}");
        assert_eq!(set.object_count(), 0);
    }
}

// ===================================================================================
// 2. Wrong types
// ===================================================================================

const SE_HEAD: &[&str] = &[
    "apiVersion: networking.istio.io/v1",
    "kind: ServiceEntry",
    "metadata:",
    "  name: se",
    "  namespace: egress",
    "spec:",
];

fn se(spec: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = SE_HEAD.iter().chain(spec).copied().collect();
    diags(&lines)
}

#[test]
fn port_number_as_a_word() {
    let d = se(&[
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: \"eighty\"",
        "    name: http",
        "    protocol: HTTP",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:9: error: ServiceEntry egress/se: spec.ports[0].number: invalid type: string \"eighty\", expected u32"
        ]
    );
}

#[test]
fn port_number_in_the_second_port() {
    let d = se(&[
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: 80",
        "    name: http",
        "  - name: https",
        "    number: 4.43",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:12: error: ServiceEntry egress/se: spec.ports[1].number: invalid type: floating point `4.43`, expected u32"
        ]
    );
}

#[test]
fn port_number_negative() {
    let d = se(&[
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: -1",
        "    name: http",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:9: error: ServiceEntry egress/se: spec.ports[0].number: invalid value: integer `-1`, expected u32"
        ]
    );
}

#[test]
fn port_number_unsubstituted_shell_variable() {
    let d = se(&[
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: $PROXY_PORT",
        "    name: tcp",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:9: error: ServiceEntry egress/se: spec.ports[0].number: invalid type: string \"$PROXY_PORT\", expected u32 (an unsubstituted shell variable?)"
        ]
    );
    assert!(d[0].ends_with("(an unsubstituted shell variable?)"));
}

#[test]
fn address_unsubstituted_shell_variable_is_fine_as_a_string() {
    // A string field holding `$PROXY_IP` is not a type error (the compiler validates it).
    let d = se(&["  hosts: [api.example.com]", "  addresses: [$PROXY_IP/32]"]);
    assert_eq!(d, Vec::<String>::new());
}

#[test]
fn hosts_as_a_string_instead_of_a_list() {
    let d = se(&["  hosts: api.example.com", "  resolution: DNS"]);
    assert_eq!(
        d,
        [
            "test.yaml:7: error: ServiceEntry egress/se: spec.hosts: invalid type: string \"api.example.com\", expected a sequence"
        ]
    );
}

#[test]
fn unknown_enum_value_lists_allowed_values() {
    let d = se(&["  hosts: [api.example.com]", "  resolution: MAYBE"]);
    assert_eq!(
        d,
        [
            "test.yaml:8: error: ServiceEntry egress/se: spec.resolution: unknown value \"MAYBE\", expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS"
        ]
    );
    let d = se(&["  hosts: [api.example.com]", "  location: OUTSIDE"]);
    assert_eq!(
        d,
        [
            "test.yaml:8: error: ServiceEntry egress/se: spec.location: unknown value \"OUTSIDE\", expected one of MESH_EXTERNAL, MESH_INTERNAL"
        ]
    );
}

#[test]
fn enum_given_a_number() {
    let d = se(&["  hosts: [api.example.com]", "  resolution: 5"]);
    assert_eq!(
        d,
        [
            "test.yaml:8: error: ServiceEntry egress/se: spec.resolution: invalid type: integer `5`, expected a string"
        ]
    );
}

#[test]
fn spec_that_is_not_a_mapping() {
    for spec in ["[a.example.com]", "[[a.example.com]]", "5", "a.example.com"] {
        let s = format!("spec: {spec}");
        let (set, d) = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata:",
            "  name: se",
            &s,
        ]);
        // `[[a.example.com]]` must not be read as `{hosts: [a.example.com]}`.
        assert_eq!(
            d,
            ["test.yaml:5: error: ServiceEntry default/se: spec: must be a mapping"],
            "{spec}"
        );
        assert_eq!(set.object_count(), 0);
    }
}

const VS_HEAD: &[&str] = &[
    "apiVersion: networking.istio.io/v1",
    "kind: VirtualService",
    "metadata:",
    "  name: vs",
    "  namespace: egress",
    "spec:",
    "  hosts: [api.example.com]",
    "  http:",
];

fn vs_timeout(timeout: &str) -> Vec<String> {
    let t = format!("  - timeout: {timeout}");
    let mut lines: Vec<&str> = VS_HEAD.to_vec();
    lines.extend([
        t.as_str(),
        "    route:",
        "    - destination:",
        "        host: api.example.com",
    ]);
    diags(&lines)
}

#[test]
fn duration_without_unit() {
    assert_eq!(
        vs_timeout("5"),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: duration 5 has no unit; write e.g. \"5s\""
        ]
    );
    assert_eq!(
        vs_timeout("\"5\""),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: duration \"5\" is missing a unit (e.g. \"5s\")"
        ]
    );
}

#[test]
fn duration_with_unknown_unit() {
    assert_eq!(
        vs_timeout("5x"),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: invalid duration \"5x\": unknown unit \"x\""
        ]
    );
    assert_eq!(
        vs_timeout("1h5"),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: duration \"1h5\" is missing a unit (e.g. \"5s\")"
        ]
    );
}

#[test]
fn duration_negative_or_float_or_bad_number() {
    assert_eq!(
        vs_timeout("-1s"),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: invalid duration \"-1s\""
        ]
    );
    assert_eq!(
        vs_timeout("1.5"),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: invalid type: floating point `1.5`, expected a duration such as \"5s\" or \"100ms\""
        ]
    );
    assert_eq!(
        vs_timeout("1..5s"),
        [
            "test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: invalid duration \"1..5s\""
        ]
    );
    assert_eq!(
        vs_timeout("\"\""),
        ["test.yaml:9: error: VirtualService egress/vs: spec.http[0].timeout: empty duration"]
    );
}

#[test]
fn duration_zero_and_valid_forms_are_fine() {
    for t in ["0", "0s", "1h30m", "0.5s", "100ms", "250us"] {
        assert_eq!(vs_timeout(t), Vec::<String>::new(), "{t}");
    }
}

#[test]
fn an_object_with_a_type_error_is_dropped_but_its_neighbours_load() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: bad",
        "spec:",
        "  hosts: [a.example.com]",
        "  ports:",
        "  - number: eighty",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: good",
        "spec:",
        "  hosts: [b.example.com]",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:8: error: ServiceEntry default/bad: spec.ports[0].number: invalid type: string \"eighty\", expected u32"
        ]
    );
    let names: Vec<_> = set
        .service_entries
        .iter()
        .map(|o| o.meta.name.as_str())
        .collect();
    assert_eq!(names, ["good"]);
}

#[test]
fn diagnostic_fields_are_structured() {
    let (_, d) = ConfigSet::from_str(
        "dir/se.yaml",
        &y(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata:",
            "  name: se",
            "  namespace: egress",
            "spec:",
            "  hosts: [a.example.com]",
            "  ports:",
            "  - number: eighty",
        ]),
    );
    assert_eq!(
        d.0,
        [Diagnostic {
            severity: Severity::Error,
            file: "dir/se.yaml".into(),
            line: 9,
            object: Some(ObjectRef {
                kind: "ServiceEntry".into(),
                namespace: "egress".into(),
                name: "se".into(),
            }),
            field: "spec.ports[0].number".into(),
            message: "invalid type: string \"eighty\", expected u32".into(),
        }]
    );
    assert!(d.has_errors());
    assert_eq!(d.errors().count(), 1);
}

// ===================================================================================
// 3. Enums are case-insensitive
// ===================================================================================

#[test]
fn enums_accept_any_case() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "spec:",
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: 5432",
        "    name: tcp-postgres",
        "    protocol: tcp",
        "  resolution: dns",
        "  location: mesh_external",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se2",
        "spec:",
        "  hosts: [other.example.com]",
        "  resolution: Dns_Round_Robin",
        "  location: Mesh_Internal",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: DestinationRule",
        "metadata:",
        "  name: dr",
        "spec:",
        "  host: api.example.com",
        "  trafficPolicy:",
        "    tls:",
        "      mode: simple",
        "---",
        "spec:",
        "  meshConfig:",
        "    outboundTrafficPolicy:",
        "      mode: registry_only",
    ]);
    assert_eq!(d, Vec::<String>::new());
    let se = &set.service_entries[0].spec;
    assert_eq!(se.resolution, Some(Resolution::Dns));
    assert_eq!(se.location, Some(Location::MeshExternal));
    // protocol is kept as written (an unknown protocol means "sniff", not an error).
    assert_eq!(se.ports[0].protocol.as_deref(), Some("tcp"));
    let se2 = &set.service_entries[1].spec;
    assert_eq!(se2.resolution, Some(Resolution::DnsRoundRobin));
    assert_eq!(se2.location, Some(Location::MeshInternal));
    let tls = set.destination_rules[0]
        .spec
        .traffic_policy
        .as_ref()
        .and_then(|t| t.tls.as_ref())
        .expect("tls");
    assert_eq!(tls.mode, Some(ClientTlsMode::Simple));
    assert_eq!(
        set.mesh.outbound_traffic_policy.and_then(|p| p.mode),
        Some(OutboundMode::RegistryOnly)
    );
}

// ===================================================================================
// 4. snake_case field names
// ===================================================================================

#[test]
fn snake_case_field_is_accepted_with_a_warning_and_used() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata:",
        "  name: vs",
        "  namespace: egress",
        "spec:",
        "  hosts: [api.example.com]",
        "  tls:",
        "  - match:",
        "    - port: 443",
        "      sni_hosts:",
        "      - api.example.com",
        "    route:",
        "    - destination:",
        "        host: api.example.com",
        "        port:",
        "          number: 443",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:11: warning: VirtualService egress/vs: spec.tls[0].match[0].sni_hosts: snake_case field name accepted; Istio's CRD schema spells it \"sniHosts\""
        ]
    );
    let m = &set.virtual_services[0].spec.tls[0].matches[0];
    assert_eq!(m.sni_hosts, ["api.example.com"]);
    assert_eq!(m.port, Some(443));
}

#[test]
fn snake_case_name_that_is_not_a_field_is_unknown_under_its_own_spelling() {
    let d = se(&[
        "  hosts: [api.example.com]",
        "  foo_bar: 1",
        "  export_to_all: true",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:8: warning: ServiceEntry egress/se: spec.foo_bar: unknown field, ignored",
            "test.yaml:9: warning: ServiceEntry egress/se: spec.export_to_all: unknown field, ignored",
        ]
    );
}

#[test]
fn snake_case_and_camel_case_both_given_keeps_camel_case() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata:",
        "  name: vs",
        "spec:",
        "  hosts: [api.example.com]",
        "  exportTo: [\".\"]",
        "  export_to: [\"*\"]",
    ]);
    assert_eq!(
        d,
        ["test.yaml:8: warning: VirtualService default/vs: spec.export_to: unknown field, ignored"]
    );
    assert_eq!(set.virtual_services[0].spec.export_to, ["."]);
}

#[test]
fn type_error_under_a_snake_case_key_is_reported_as_written() {
    let d = se(&[
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: 80",
        "    name: http",
        "    target_port: http",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:11: error: ServiceEntry egress/se: spec.ports[0].target_port: invalid type: string \"http\", expected u32",
            "test.yaml:11: warning: ServiceEntry egress/se: spec.ports[0].target_port: snake_case field name accepted; Istio's CRD schema spells it \"targetPort\"",
        ]
    );
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata:",
        "  name: vs",
        "spec:",
        "  tls:",
        "  - match:",
        "    - sni_hosts:",
        "      - a.example.com",
        "      - [b.example.com]",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:8: warning: VirtualService default/vs: spec.tls[0].match[0].sni_hosts: snake_case field name accepted; Istio's CRD schema spells it \"sniHosts\"",
            "test.yaml:10: error: VirtualService default/vs: spec.tls[0].match[0].sni_hosts[1]: invalid type: sequence, expected a string",
        ]
    );
}

#[test]
fn label_keys_with_underscores_are_not_renamed() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata:",
        "  name: vs",
        "  labels:",
        "    team_name: egress",
        "  annotations:",
        "    my_note: hello",
        "spec:",
        "  hosts: [api.example.com]",
        "  tcp:",
        "  - match:",
        "    - sourceLabels:",
        "        app_name: billing",
        "        app: billing",
        "    route:",
        "    - destination:",
        "        host: api.example.com",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: Gateway",
        "metadata:",
        "  name: gw",
        "spec:",
        "  selector:",
        "    istio_gateway: egress",
        "  servers:",
        "  - port: {number: 443, name: tls, protocol: TLS}",
        "    hosts: [api.example.com]",
        "    tls: {mode: PASSTHROUGH}",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "spec:",
        "  hosts: [api.example.com]",
        "  endpoints:",
        "  - address: 192.0.2.1",
        "    labels:",
        "      zone_id: a",
        "    ports:",
        "      https_port: 443",
        "  workloadSelector:",
        "    labels:",
        "      app_tier: db",
    ]);
    assert_eq!(d, Vec::<String>::new());
    let vs = &set.virtual_services[0];
    assert_eq!(
        vs.meta.labels.get("team_name").map(String::as_str),
        Some("egress")
    );
    assert_eq!(
        vs.meta.annotations.get("my_note").map(String::as_str),
        Some("hello")
    );
    let labels = &vs.spec.tcp[0].matches[0].source_labels;
    assert_eq!(labels.get("app_name").map(String::as_str), Some("billing"));
    assert!(!labels.contains_key("appName"));
    let gw = &set.gateways[0].spec;
    assert_eq!(
        gw.selector.get("istio_gateway").map(String::as_str),
        Some("egress")
    );
    let se = &set.service_entries[0].spec;
    assert_eq!(
        se.endpoints[0].labels.get("zone_id").map(String::as_str),
        Some("a")
    );
    assert_eq!(se.endpoints[0].ports.get("https_port"), Some(&443));
    let sel = se.workload_selector.as_ref().expect("selector");
    assert_eq!(sel.labels.get("app_tier").map(String::as_str), Some("db"));
}

#[test]
fn snake_case_spelling_of_an_unsupported_field_is_still_reported_unsupported() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata:",
        "  name: vs",
        "spec:",
        "  hosts: [api.example.com]",
        "  http:",
        "  - cors_policy:",
        "      allowOrigins: [{exact: \"https://a.example.com\"}]",
        "    route:",
        "    - destination: {host: api.example.com}",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:8: warning: VirtualService default/vs: spec.http[0].corsPolicy: not supported, ignored: CORS is a browser concern of ingress, not egress",
            "test.yaml:8: warning: VirtualService default/vs: spec.http[0].cors_policy: snake_case field name accepted; Istio's CRD schema spells it \"corsPolicy\"",
        ]
    );
}

// ===================================================================================
// 5. Unknown fields
// ===================================================================================

#[test]
fn unknown_fields_are_warned_with_path_and_line() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "  namespace: egress",
        "spec:",
        "  hosts: [api.example.com]",
        "  ports:",
        "  - number: 443",
        "    nmae: https",
        "    protocol: TLS",
        "  resolutoin: DNS",
        "  endpoints:",
        "  - address: 192.0.2.1",
        "  - address: 192.0.2.2",
        "    wieght: 3",
        "status: {}",
        "extra: 1",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:10: warning: ServiceEntry egress/se: spec.ports[0].nmae: unknown field, ignored",
            "test.yaml:12: warning: ServiceEntry egress/se: spec.resolutoin: unknown field, ignored",
            "test.yaml:16: warning: ServiceEntry egress/se: spec.endpoints[1].wieght: unknown field, ignored",
            "test.yaml:18: warning: ServiceEntry egress/se: extra: unknown field, ignored",
        ]
    );
    // Warnings do not drop the object.
    assert_eq!(set.service_entries.len(), 1);
    assert_eq!(set.service_entries[0].spec.resolution, None);
}

#[test]
fn unknown_field_in_each_kind() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "networking.istio.io/v1",
            "DestinationRule",
            "DestinationRule",
        ),
        ("networking.istio.io/v1beta1", "Gateway", "Gateway"),
        ("networking.istio.io/v1alpha3", "Sidecar", "Sidecar"),
        ("networking.istio.io/v1", "WorkloadEntry", "WorkloadEntry"),
        (
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "AuthorizationPolicy",
        ),
        (
            "security.istio.io/v1beta1",
            "RequestAuthentication",
            "RequestAuthentication",
        ),
        (
            "istio.alibabacloud.com/v1beta1",
            "ASMEgressTrafficPolicy",
            "ASMEgressTrafficPolicy",
        ),
    ];
    for (api, kind, shown) in cases {
        let a = format!("apiVersion: {api}");
        let k = format!("kind: {kind}");
        let (set, d) = load(&[&a, &k, "metadata:", "  name: x", "spec:", "  bogusField: 1"]);
        assert_eq!(
            d,
            [format!(
                "test.yaml:6: warning: {shown} default/x: spec.bogusField: unknown field, ignored"
            )]
        );
        assert_eq!(set.object_count(), 1, "{kind}");
    }
}

// ===================================================================================
// 6. Kinds and apiVersions
// ===================================================================================

#[test]
fn unknown_known_unread_and_foreign_kinds() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1", // 1
        "kind: VirtualServic",
        "metadata: {name: a}",
        "---",
        "apiVersion: networking.istio.io/v1alpha3", // 5
        "kind: EnvoyFilter",
        "metadata: {name: b}",
        "---",
        "apiVersion: networking.istio.io/v2", // 9
        "kind: VirtualService",
        "metadata: {name: c}",
        "---",
        "apiVersion: networking.k8s.io/v1", // 13
        "kind: NetworkPolicy",
        "metadata: {name: d}",
        "---",
        "apiVersion: v1", // 17
        "kind: Secret",
        "metadata: {name: e}",
        "---",
        "apiVersion: apps/v1", // 21
        "kind: Deployment",
        "metadata: {name: f}",
        "---",
        "apiVersion: security.istio.io/v1", // 25
        "kind: PeerAuthentication",
        "metadata: {name: g}",
        "---",
        "apiVersion: security.istio.io/v1alpha1", // 29
        "kind: AuthorizationPolicy",
        "metadata: {name: h}",
        "---",
        "apiVersion: telemetry.istio.io/v1", // 33
        "kind: Telemetry",
        "metadata: {name: i}",
        "---",
        "apiVersion: extensions.istio.io/v1alpha1", // 37
        "kind: WasmPlugins",
        "metadata: {name: j}",
        "---",
        "apiVersion: istio.alibabacloud.com/v1beta1", // 41
        "kind: ASMLocalRateLimiter",
        "metadata: {name: k}",
        "---",
        "apiVersion: istio.alibabacloud.com/v1beta1", // 45
        "kind: ASMEgressTrafficPolicyy",
        "metadata: {name: l}",
        "---",
        "apiVersion: istio.alibabacloud.com/v1", // 49
        "kind: ASMEgressTrafficPolicy",
        "metadata: {name: m}",
        "---",
        "apiVersion: gateway.networking.k8s.io/v1", // 53
        "kind: Gateway",
        "metadata: {name: n}",
        "---",
        "apiVersion: v1", // 57
        "kind: Namespace",
        "metadata: {labels: {istio-injection: enabled}}",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:2: error: kind: unknown kind \"VirtualServic\" in networking.istio.io/v1",
            "test.yaml:6: warning: EnvoyFilter (networking.istio.io/v1alpha3) is not supported by egret, ignored",
            "test.yaml:9: error: VirtualService: apiVersion: unsupported apiVersion \"networking.istio.io/v2\"",
            "test.yaml:13: note: skipped NetworkPolicy d (networking.k8s.io/v1): not a kind egret reads",
            "test.yaml:17: note: skipped Secret e (v1): not a kind egret reads",
            "test.yaml:21: note: skipped Deployment f (apps/v1): not a kind egret reads",
            "test.yaml:26: warning: PeerAuthentication (security.istio.io/v1) is not supported by egret, ignored",
            "test.yaml:29: error: AuthorizationPolicy: apiVersion: unsupported apiVersion \"security.istio.io/v1alpha1\"",
            "test.yaml:34: warning: Telemetry (telemetry.istio.io/v1) is not supported by egret, ignored",
            "test.yaml:38: error: kind: unknown kind \"WasmPlugins\" in extensions.istio.io/v1alpha1",
            "test.yaml:42: warning: ASMLocalRateLimiter (istio.alibabacloud.com/v1beta1) is not supported by egret, ignored",
            "test.yaml:46: error: kind: unknown kind \"ASMEgressTrafficPolicyy\" in istio.alibabacloud.com/v1beta1",
            "test.yaml:49: error: ASMEgressTrafficPolicy: apiVersion: unsupported apiVersion \"istio.alibabacloud.com/v1\"",
            "test.yaml:53: note: skipped Gateway n (gateway.networking.k8s.io/v1): not a kind egret reads",
            "test.yaml:57: note: skipped Namespace <unnamed> (v1): not a kind egret reads",
        ]
    );
    assert_eq!(set.object_count(), 0);
}

#[test]
fn kubernetes_kinds_are_never_errors() {
    let (set, d) = ConfigSet::from_str(
        FILE,
        &y(&[
            "apiVersion: v1",
            "kind: Secret",
            "metadata: {name: creds}",
            "data: {tls.crt: AAAA}",
            "---",
            "apiVersion: networking.k8s.io/v1",
            "kind: NetworkPolicy",
            "metadata: {name: deny-all}",
            "spec: {podSelector: {}, policyTypes: [Egress]}",
        ]),
    );
    assert!(!d.has_errors());
    assert!(d.iter().all(|d| d.severity == Severity::Note));
    assert_eq!(d.len(), 2);
    assert_eq!(set.object_count(), 0);
}

#[test]
fn every_supported_networking_version_is_read() {
    for v in ["v1alpha3", "v1beta1", "v1"] {
        let a = format!("apiVersion: networking.istio.io/{v}");
        let (set, d) = load(&[
            &a,
            "kind: ServiceEntry",
            "metadata: {name: x}",
            "spec: {hosts: [a.example.com]}",
        ]);
        assert_eq!(d, Vec::<String>::new(), "{v}");
        assert_eq!(
            set.service_entries[0].api_version,
            format!("networking.istio.io/{v}")
        );
        assert_eq!(set.service_entries[0].kind, Kind::ServiceEntry);
    }
}

// ===================================================================================
// 7. Metadata
// ===================================================================================

#[test]
fn missing_metadata_name() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  namespace: egress",
        "spec:",
        "  hosts: [api.example.com]",
    ]);
    assert_eq!(
        d,
        ["test.yaml:3: error: ServiceEntry egress/: metadata.name: required field is missing"]
    );
    assert_eq!(set.object_count(), 0);
}

#[test]
fn missing_metadata_entirely_or_empty_or_non_string_name() {
    assert_eq!(
        diags(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "spec: {hosts: [a]}"
        ]),
        ["test.yaml:1: error: ServiceEntry default/: metadata.name: required field is missing"]
    );
    assert_eq!(
        diags(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata:",
            "  name: \"\""
        ]),
        ["test.yaml:4: error: ServiceEntry default/: metadata.name: required field is missing"]
    );
    assert_eq!(
        diags(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata:",
            "  name: 42"
        ]),
        ["test.yaml:4: error: ServiceEntry default/: metadata.name: must be a string"]
    );
    assert_eq!(
        diags(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata: 5"
        ]),
        ["test.yaml:3: error: ServiceEntry default/: metadata.name: required field is missing"]
    );
}

#[test]
fn missing_namespace_lands_in_default() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: a",
        "spec: {hosts: [a.example.com]}",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: b",
        "  namespace:",
        "spec: {hosts: [b.example.com]}",
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: c",
        "  namespace: \"\"",
        "spec: {hosts: [c.example.com]}",
    ]);
    assert_eq!(d, Vec::<String>::new());
    let keys: Vec<String> = set.service_entries.iter().map(|o| o.key()).collect();
    assert_eq!(keys, ["default/a", "default/b", "default/c"]);
}

#[test]
fn default_namespace_is_configurable() {
    let mut l = Loader::new(LoadOptions {
        default_namespace: "egress".into(),
    });
    l.add_str(
        FILE,
        &y(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata: {name: a}",
            "spec: {hosts: [x]}",
        ]),
    );
    let (set, d) = l.finish();
    assert!(d.is_empty());
    assert_eq!(set.service_entries[0].key(), "egress/a");
}

#[test]
fn bad_namespace_labels_and_annotations() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        "metadata:",
        "  name: se",
        "  namespace: [egress]",
        "  labels:",
        "    app: billing",
        "    version: 2",
        "    enabled: true",
        "  annotations:",
        "    sidecar.istio.io/inject: false",
        "spec:",
        "  hosts: [api.example.com]",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:5: error: ServiceEntry default/se: metadata.namespace: must be a string",
            "test.yaml:8: error: ServiceEntry default/se: metadata.labels.version: must be a string (quote it)",
            "test.yaml:9: error: ServiceEntry default/se: metadata.labels.enabled: must be a string (quote it)",
            "test.yaml:11: error: ServiceEntry default/se: metadata.annotations.sidecar.istio.io/inject: must be a string (quote it)",
        ]
    );
    assert_eq!(set.object_count(), 0);
    assert_eq!(
        diags(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata:",
            "  name: se",
            "  labels: [app]"
        ]),
        ["test.yaml:5: error: ServiceEntry default/se: metadata.labels: must be a map"]
    );
}

// ===================================================================================
// 8. kind: List
// ===================================================================================

#[test]
fn list_items_are_loaded_with_their_own_lines() {
    let (set, d) = load(&[
        "apiVersion: v1",
        "kind: List",
        "items:",
        "- apiVersion: networking.istio.io/v1",
        "  kind: ServiceEntry",
        "  metadata:",
        "    name: first",
        "  spec:",
        "    hosts: [a.example.com]",
        "- apiVersion: networking.istio.io/v1", // items[1]
        "  kind: ServiceEntry",
        "  metadata:",
        "    name: second",
        "  spec:",
        "    hosts: [b.example.com]",
        "    ports:",
        "    - number: eighty",
        "      name: http",
        "- apiVersion: networking.istio.io/v1",
        "  kind: VirtualService",
        "  metadata:",
        "    name: third",
        "  spec:",
        "    hosts: [c.example.com]",
        "    tpc: []",
        "- 5",
        "- kind: ServiceEntry",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:17: error: ServiceEntry default/second: spec.ports[0].number: invalid type: string \"eighty\", expected u32",
            "test.yaml:25: warning: VirtualService default/third: spec.tpc: unknown field, ignored",
            "test.yaml:26: error: document is not a mapping (expected a Kubernetes object)",
            "test.yaml:27: error: document has no apiVersion",
        ]
    );
    let names: Vec<_> = set
        .service_entries
        .iter()
        .map(|o| o.meta.name.as_str())
        .collect();
    assert_eq!(names, ["first"]);
    assert_eq!(set.virtual_services[0].meta.name, "third");
    // Positions of list items are rebased: the item's own paths resolve to its lines.
    assert_eq!(set.virtual_services[0].origin.line_of("spec.hosts"), 24);
    assert_eq!(set.virtual_services[0].origin.line_of("metadata.name"), 22);
}

#[test]
fn list_item_1_is_not_confused_with_item_10() {
    let mut lines = vec![
        "apiVersion: v1".to_string(),
        "kind: List".into(),
        "items:".into(),
    ];
    let mut expected = Vec::new();
    for i in 0..12 {
        lines.push("- apiVersion: networking.istio.io/v1".into());
        lines.push("  kind: ServiceEntry".into());
        lines.push(format!("  metadata: {{name: se-{i}}}"));
        lines.push("  spec:".into());
        if i == 1 || i == 10 || i == 11 {
            lines.push(format!("    unknown{i}: x"));
            expected.push(format!(
                "test.yaml:{}: warning: ServiceEntry default/se-{i}: spec.unknown{i}: unknown field, ignored",
                lines.len()
            ));
        }
        lines.push(format!("    hosts: [h{i}.example.com]"));
    }
    let (set, d) = load_text(&(lines.join("\n") + "\n"));
    assert_eq!(d, expected);
    assert_eq!(set.service_entries.len(), 12);
}

#[test]
fn list_with_items_that_are_not_a_list() {
    assert_eq!(
        diags(&["apiVersion: v1", "kind: List", "items: {a: 1}"]),
        ["test.yaml:3: error: List: items: must be a list of objects"]
    );
    // An empty list is fine.
    assert_eq!(
        diags(&["apiVersion: v1", "kind: List", "items: []"]),
        Vec::<String>::new()
    );
    assert_eq!(
        diags(&["apiVersion: v1", "kind: List"]),
        Vec::<String>::new()
    );
}

// ===================================================================================
// 9. Mesh config
// ===================================================================================

#[test]
fn mesh_config_from_istio_operator() {
    let (set, d) = load(&[
        "apiVersion: install.istio.io/v1alpha1",
        "kind: IstioOperator",
        "metadata:",
        "  name: control-plane",
        "  namespace: istio-system",
        "spec:",
        "  profile: default",
        "  meshConfig:",
        "    outboundTrafficPolicy:",
        "      mode: REGISTRY_ONLY",
        "    enablePrometheusMerge: true",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:11: warning: MeshConfig /mesh: enablePrometheusMerge: not supported by egret, ignored"
        ]
    );
    assert_eq!(
        set.mesh.outbound_traffic_policy.and_then(|p| p.mode),
        Some(OutboundMode::RegistryOnly)
    );
    let origin = set.mesh_origin.expect("mesh origin");
    assert_eq!(&*origin.file, FILE);
    assert_eq!(origin.line_of("outboundTrafficPolicy.mode"), 10);
}

#[test]
fn mesh_config_from_operator_fragment_without_kind() {
    let (set, d) = load(&[
        "# istioctl install -f fragment.yaml",
        "spec:",
        "  meshConfig:",
        "    accessLogFile: /dev/stdout",
        "    outboundTrafficPolicy:",
        "      mode: ALLOW_ANY",
        "    connectTimeout: 10",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:7: error: MeshConfig /mesh: connectTimeout: duration 10 has no unit; write e.g. \"10s\""
        ]
    );
    // A mesh document with an error is not applied at all.
    assert_eq!(set.mesh, MeshConfig::default());
    let (set, d) = load(&[
        "spec:",
        "  meshConfig:",
        "    accessLogFile: /dev/stdout",
        "    outboundTrafficPolicy:",
        "      mode: ALLOW_ANY",
    ]);
    assert_eq!(d, Vec::<String>::new());
    assert_eq!(set.mesh.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(
        set.mesh.outbound_traffic_policy.and_then(|p| p.mode),
        Some(OutboundMode::AllowAny)
    );
}

#[test]
fn mesh_config_from_istio_configmap_with_lines_inside_the_block() {
    let (set, d) = load(&[
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: istio",
        "  namespace: istio-system",
        "data:",
        "  meshNetworks: 'networks: {}'",
        "  mesh: |", // line 8
        "    accessLogFile: /dev/stdout",
        "    outboundTrafficPolicy:",
        "      mode: REGISTRY_ONLY",
        "",
        "    discoverySelectors:", // line 13 = 8 + 5
        "    - matchLabels: {egress: enabled}",
        "    defaultConfig:", // line 15
        "      holdApplicationUntilProxyStarts: true",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:13: warning: MeshConfig /mesh: discoverySelectors: not supported by egret, ignored",
            "test.yaml:15: warning: MeshConfig /mesh: defaultConfig: not supported, ignored: ProxyConfig is Envoy/istio-agent configuration; egret reads only `tracing.sampling` from it and takes the rest from the command line",
        ]
    );
    assert_eq!(
        set.mesh.outbound_traffic_policy.and_then(|p| p.mode),
        Some(OutboundMode::RegistryOnly)
    );
    assert_eq!(set.mesh.access_log_file.as_deref(), Some("/dev/stdout"));
}

#[test]
fn mesh_configmap_type_error_points_inside_the_block() {
    let d = diags(&[
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata: {name: istio, namespace: istio-system}",
        "data:",
        "  mesh: |-", // line 5
        "    outboundTrafficPolicy:",
        "      mode: bogus", // line 7
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:7: error: MeshConfig /mesh: outboundTrafficPolicy.mode: unknown value \"bogus\", expected one of REGISTRY_ONLY, ALLOW_ANY, ALLOW_ANY_DYNAMIC_DNS"
        ]
    );
}

#[test]
fn mesh_configmap_problems() {
    // Invalid YAML inside the string.
    assert_eq!(
        diags(&[
            "apiVersion: v1",
            "kind: ConfigMap",
            "metadata: {name: istio}",
            "data:",
            "  mesh: |",
            "    outboundTrafficPolicy:",
            "      mode: ALLOW_ANY",
            "     trustDomain: x",
        ]),
        [
            "test.yaml:8: error: ConfigMap istio: data.mesh: invalid YAML: while parsing a block mapping, did not find expected key"
        ]
    );
    // data.mesh that is not a string.
    assert_eq!(
        diags(&[
            "apiVersion: v1",
            "kind: ConfigMap",
            "metadata: {name: istio}",
            "data:",
            "  mesh:",
            "    trustDomain: x",
        ]),
        [
            "test.yaml:5: error: ConfigMap istio: data.mesh: must be a string holding MeshConfig YAML"
        ]
    );
    // Any other ConfigMap is a note.
    assert_eq!(
        diags(&[
            "apiVersion: v1",
            "kind: ConfigMap",
            "metadata: {name: my-app-config}",
            "data:",
            "  mesh: |",
            "    trustDomain: x",
        ]),
        [
            "test.yaml:1: note: skipped ConfigMap my-app-config: only the `istio` ConfigMap's data.mesh is read"
        ]
    );
}

#[test]
fn istio_operator_without_mesh_config_is_a_note() {
    assert_eq!(
        diags(&[
            "apiVersion: install.istio.io/v1alpha1",
            "kind: IstioOperator",
            "spec:",
            "  profile: demo"
        ]),
        ["test.yaml:1: note: IstioOperator without spec.meshConfig: nothing for egret to read"]
    );
}

#[test]
fn mesh_config_given_twice_is_merged_later_wins() {
    let (set, d) = load(&[
        "spec:",
        "  meshConfig:",
        "    trustDomain: first.local",
        "    accessLogFile: /dev/stdout",
        "---",
        "apiVersion: install.istio.io/v1alpha1",
        "kind: IstioOperator",
        "spec:",
        "  meshConfig:",
        "    trustDomain: second.local",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:2: warning: mesh config given 2 times (test.yaml:2, test.yaml:9); they are merged in that order, later values win"
        ]
    );
    assert_eq!(set.mesh.trust_domain.as_deref(), Some("second.local"));
    assert_eq!(set.mesh.access_log_file.as_deref(), Some("/dev/stdout"));
}

#[test]
fn mesh_document_with_an_error_does_not_override_earlier_ones() {
    let (set, d) = load(&[
        "spec:",
        "  meshConfig:",
        "    trustDomain: first.local",
        "---",
        "spec:",
        "  meshConfig:",
        "    trustDomain: [second.local]",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:2: warning: mesh config given 2 times (test.yaml:2, test.yaml:6); they are merged in that order, later values win",
            "test.yaml:7: error: MeshConfig /mesh: trustDomain: invalid type: sequence, expected a string",
        ]
    );
    assert_eq!(set.mesh.trust_domain.as_deref(), Some("first.local"));
}

#[test]
fn mesh_config_that_is_not_a_mapping() {
    assert_eq!(
        diags(&["spec:", "  meshConfig: [[x.local]]"]),
        ["test.yaml:2: error: MeshConfig /mesh: must be a mapping"]
    );
    assert_eq!(
        diags(&[
            "apiVersion: install.istio.io/v1alpha1",
            "kind: IstioOperator",
            "spec:",
            "  meshConfig: 5",
        ]),
        ["test.yaml:4: error: MeshConfig /mesh: must be a mapping"]
    );
    assert_eq!(
        diags(&[
            "apiVersion: v1",
            "kind: ConfigMap",
            "metadata: {name: istio}",
            "data:",
            "  mesh: |",
            "    - outboundTrafficPolicy",
        ]),
        ["test.yaml:6: error: MeshConfig /mesh: must be a mapping"]
    );
    // An empty meshConfig is an empty mesh config, not an error.
    let (set, d) = load(&[
        "apiVersion: install.istio.io/v1alpha1",
        "kind: IstioOperator",
        "spec:",
        "  meshConfig:",
    ]);
    assert_eq!(d, Vec::<String>::new());
    assert_eq!(set.mesh, MeshConfig::default());
}

#[test]
fn mesh_config_snake_case_top_level_and_nested_fields_are_used() {
    let (set, d) = load(&[
        "spec:",
        "  meshConfig:",
        "    outbound_traffic_policy:",
        "      mode: REGISTRY_ONLY",
        "    trust_domain: corp.local",
        "    extensionProviders:",
        "    - name: authz",
        "      envoy_ext_authz_http:",
        "        service: authz.example.com",
        "        port: 8000",
        "    not_a_field: 1",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:3: warning: MeshConfig /mesh: outbound_traffic_policy: snake_case field name accepted; Istio's CRD schema spells it \"outboundTrafficPolicy\"",
            "test.yaml:5: warning: MeshConfig /mesh: trust_domain: snake_case field name accepted; Istio's CRD schema spells it \"trustDomain\"",
            "test.yaml:8: warning: MeshConfig /mesh: extensionProviders[0].envoy_ext_authz_http: snake_case field name accepted; Istio's CRD schema spells it \"envoyExtAuthzHttp\"",
            "test.yaml:11: warning: MeshConfig /mesh: not_a_field: not supported by egret, ignored",
        ]
    );
    assert_eq!(
        set.mesh.outbound_traffic_policy.and_then(|p| p.mode),
        Some(OutboundMode::RegistryOnly)
    );
    assert_eq!(set.mesh.trust_domain.as_deref(), Some("corp.local"));
    let http = set.mesh.extension_providers[0]
        .envoy_ext_authz_http
        .as_ref()
        .expect("snake_case envoy_ext_authz_http must be used");
    assert_eq!(http.service.as_deref(), Some("authz.example.com"));
    assert_eq!(http.port, Some(8000));
}

// ===================================================================================
// 10. Unsupported fields
// ===================================================================================

#[test]
fn cors_policy_is_not_supported() {
    let (set, d) = load(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata:",
        "  name: vs",
        "  namespace: egress",
        "spec:",
        "  hosts: [api.example.com]",
        "  http:",
        "  - route:",
        "    - destination: {host: api.example.com}",
        "  - corsPolicy:",
        "      allowOrigins:",
        "      - exact: https://a.example.com",
        "    route:",
        "    - destination: {host: api.example.com}",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:11: warning: VirtualService egress/vs: spec.http[1].corsPolicy: not supported, ignored: CORS is a browser concern of ingress, not egress"
        ]
    );
    assert!(d[0].contains("warning: ") && d[0].contains(": not supported, ignored:"));
    // The object is still loaded.
    assert_eq!(set.virtual_services[0].spec.http.len(), 2);
}

#[test]
fn unsupported_fields_in_several_kinds() {
    let d = diags(&[
        "apiVersion: networking.istio.io/v1", // 1
        "kind: Sidecar",
        "metadata: {name: default, namespace: egress}",
        "spec:",
        "  ingress:",
        "  - port: {number: 8080, protocol: HTTP, name: http}",
        "    defaultEndpoint: 127.0.0.1:8080",
        "  outboundTrafficPolicy:",
        "    mode: REGISTRY_ONLY",
        "    egressProxy: {host: proxy.example.com}", // 10
        "---",
        "apiVersion: networking.istio.io/v1",
        "kind: DestinationRule",
        "metadata: {name: dr}",
        "spec:",
        "  host: api.example.com",
        "  trafficPolicy:",
        "    tunnel: {protocol: CONNECT, targetHost: a, targetPort: 443}", // 18
        "---",
        "apiVersion: security.istio.io/v1",
        "kind: AuthorizationPolicy",
        "metadata: {name: ap}",
        "spec:",
        "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: egress}", // 24
        "  rules: [{}]",
    ]);
    assert_eq!(
        d,
        [
            "test.yaml:5: warning: Sidecar egress/default: spec.ingress: not supported, ignored: egret handles outbound (egress) traffic only; inbound listeners are not configured",
            "test.yaml:10: warning: Sidecar egress/default: spec.outboundTrafficPolicy.egressProxy: not supported, ignored: sending unknown traffic to an egress proxy is not implemented; route through an egress gateway instead",
            "test.yaml:18: warning: DestinationRule default/dr: spec.trafficPolicy.tunnel: not supported, ignored: HTTP CONNECT/POST tunnelling to the upstream is not implemented",
            "test.yaml:24: warning: AuthorizationPolicy default/ap: spec.targetRef: not supported, ignored: Gateway-API policy attachment is not implemented; use selector",
        ]
    );
}

/// Every row of the UNSUPPORTED table is reported at the line of the field, for a document
/// built from the row's path (one item per `[]`, each segment on its own line).
#[test]
fn every_unsupported_table_row_is_reported_at_its_line() {
    for (kind, pattern, why) in UNSUPPORTED {
        let mut lines: Vec<String> = Vec::new();
        let mut indent;
        let prefix;
        if *kind == Kind::MeshConfig {
            lines.push("spec:".into());
            lines.push("  meshConfig:".into());
            indent = 4;
            prefix = String::new();
        } else {
            let api = match kind {
                Kind::AuthorizationPolicy | Kind::RequestAuthentication => "security.istio.io/v1",
                _ => "networking.istio.io/v1",
            };
            lines.push(format!("apiVersion: {api}"));
            lines.push(format!("kind: {}", kind.as_str()));
            lines.push("metadata: {name: t, namespace: ns}".into());
            lines.push("spec:".into());
            indent = 2;
            prefix = "spec.".to_string();
        }
        let segments: Vec<&str> = pattern.split('.').collect();
        for (i, seg) in segments.iter().enumerate() {
            let sp = " ".repeat(indent);
            match seg.strip_suffix("[]") {
                Some(key) => {
                    lines.push(format!("{sp}{key}:"));
                    lines.push(format!("{sp}-"));
                    indent += 2;
                }
                None if i + 1 == segments.len() => lines.push(format!("{sp}{seg}: {{}}")),
                None => {
                    lines.push(format!("{sp}{seg}:"));
                    indent += 2;
                }
            }
        }
        let field = format!("{prefix}{}", pattern.replace("[]", "[0]"));
        let obj = if *kind == Kind::MeshConfig {
            "MeshConfig /mesh".to_string()
        } else {
            format!("{} ns/t", kind.as_str())
        };
        let expected = format!(
            "test.yaml:{}: warning: {obj}: {field}: not supported, ignored: {why}",
            lines.len()
        );
        let (_, d) = load_text(&(lines.join("\n") + "\n"));
        assert!(
            d.contains(&expected),
            "{kind:?} {pattern}: expected {expected:?} in {d:#?}\n{}",
            lines.join("\n")
        );
        assert!(
            d.iter().all(|l| !l.contains("invalid YAML")),
            "{pattern}: {d:#?}"
        );
    }
}

// ===================================================================================
// 11. Never panics
// ===================================================================================

#[test]
fn garbage_never_panics() {
    let random_bytes: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let deep_block = {
        let mut s = String::from("a:\n");
        for i in 0..1000 {
            s.push_str(&" ".repeat(2 * i + 2));
            s.push_str("-\n");
        }
        s
    };
    let deep_map = {
        let mut s = String::new();
        for i in 0..1000 {
            s.push_str(&" ".repeat(i));
            s.push_str("k:\n");
        }
        s
    };
    let many_docs = "---\n".repeat(10_000);
    let inputs: Vec<String> = vec![
        String::new(),
        "---".into(),
        "...".into(),
        "[]".into(),
        "{}".into(),
        "- a".into(),
        "kind: 5".into(),
        "apiVersion: 5\nkind: [a]\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: [a]}\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {http: 5, tls: [5], tcp: [{match: 5}]}\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {trafficPolicy: {tunnel: null, loadBalancer: {warmup: [[]]}}}\n".into(),
        "apiVersion: v1\nkind: List\nitems: [[], {}, 5, {kind: List, apiVersion: v1, items: [{kind: List, apiVersion: v1}]}]\n".into(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata: {mesh: \"[\"}\n".into(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata: {mesh: \"- 1\\n- 2\"}\n".into(),
        "spec: {meshConfig: 5}\n".into(),
        "spec: {meshConfig: [1, 2]}\n---\nspec: {meshConfig: {defaultConfig: 1}}\n".into(),
        String::from_utf8_lossy(&random_bytes).into_owned(),
        "\u{0}\u{1}\u{2}: \u{7f}".into(),
        "\u{feff}\u{feff}kind: x".into(),
        "'unterminated".into(),
        "\"unterminated".into(),
        "a: |\n  b\n c: d\n".into(),
        "&a [*a]".into(),
        "a: &x 1\nb: *x\nc: &x 2\nd: *x\n".into(),
        "a: !!binary aGVsbG8=\nb: !custom {x: 1}\n".into(),
        "? a\n? b\n".into(),
        "%YAML 1.2\n---\na: 1\n".into(),
        "%BOGUS directive\n---\n".into(),
        "a:\tb\n\t- c\n".into(),
        "spec:\n  meshConfig:\n    a_: 1\n    _: 2\n    __x__: 3\n    \"a.b_c\": 4\n    \"x[0]_y\": 5\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  http:\n  - match:\n    - headers: {\"a.b\": {ex_act: 1}, \"x[0\": {\"y_[1]\": 2}}\n      \"_\": 1\n".into(),
        format!("[{}]", "[".repeat(300)),
        format!("{}{}", "{a: ".repeat(300), "}".repeat(300)),
        deep_block,
        deep_map,
        many_docs,
        "a: 99999999999999999999999999\nb: -99999999999999999999999\nc: 1e99999\nd: .nan\ne: -.inf\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {ports: [{number: 1e99999}, {number: 18446744073709551616}]}\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {http: [{timeout: 99999999999999999999h}, {timeout: 1µs}, {timeout: µ}]}\n".into(),
    ];
    assert!(inputs.len() >= 30);
    for (i, text) in inputs.iter().enumerate() {
        let (set, d) = ConfigSet::from_str("garbage.yaml", text);
        for diag in d.iter() {
            let rendered = diag.to_string();
            assert!(
                rendered.starts_with("garbage.yaml:"),
                "input {i}: {rendered}"
            );
            assert!(diag.line >= 1, "input {i}: {rendered}");
        }
        let _ = set.object_count();
    }
}

#[test]
fn garbage_with_every_byte_prefix_never_panics() {
    // Every prefix of a realistic file: truncated documents must give diagnostics, not panics.
    let text = y(&[
        "apiVersion: networking.istio.io/v1",
        "kind: VirtualService",
        "metadata: {name: vs, namespace: egress, labels: {a_b: \"1\"}}",
        "spec:",
        "  hosts: [api.example.com]",
        "  http:",
        "  - match: [{uri: {prefix: /v1}, source_labels: {app: x}}]",
        "    timeout: 5s",
        "    corsPolicy: {allowOrigins: [{exact: x}]}",
        "    route:",
        "    - destination: {host: api.example.com, port: {number: 443}}",
        "      weight: 100",
        "---",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata: {name: istio}",
        "data:",
        "  mesh: |",
        "    outboundTrafficPolicy: {mode: REGISTRY_ONLY}",
    ]);
    for end in 0..=text.len() {
        if text.is_char_boundary(end) {
            let _ = ConfigSet::from_str("prefix.yaml", &text[..end]);
        }
    }
}

// ===================================================================================
// Loading files and directories
// ===================================================================================

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "egret-config-negative-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn se_yaml(name: &str) -> String {
    y(&[
        "apiVersion: networking.istio.io/v1",
        "kind: ServiceEntry",
        &format!("metadata: {{name: {name}}}"),
        "spec:",
        &format!("  hosts: [{name}.example.com]"),
    ])
}

#[test]
fn load_directory_tree_recursively_yaml_only_dotfiles_skipped() {
    let t = TempDir::new("tree");
    t.write("a.yaml", se_yaml("a"));
    t.write("sub/b.yml", se_yaml("b"));
    let bad = t.write("sub/bad.yaml", se_yaml("bad") + "  unknownField: 1\n");
    t.write("sub/deeper/c.yaml", se_yaml("c"));
    // Not read: other extensions, dotfiles, dot-directories (Kubernetes' ..data links).
    let garbage = "{[: this is not yaml";
    t.write("notes.txt", garbage);
    t.write("README.md", garbage);
    t.write("a.yaml.bak", garbage);
    t.write(".hidden.yaml", garbage);
    t.write(".git/config.yaml", garbage);
    t.write("..data/x.yaml", garbage);
    t.write("sub/.swp.yml", garbage);

    let (set, d) = ConfigSet::load(&[t.path()], LoadOptions::default()).unwrap();
    let d: Vec<String> = d.iter().map(ToString::to_string).collect();
    // `hosts` is on line 5; the unknown field follows on line 6.
    assert_eq!(
        d,
        [format!(
            "{}:6: warning: ServiceEntry default/bad: spec.unknownField: unknown field, ignored",
            bad.display()
        )]
    );
    let names: Vec<_> = set
        .service_entries
        .iter()
        .map(|o| o.meta.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b", "bad", "c"]);
    assert_eq!(
        &*set.service_entries[3].origin.file,
        t.path().join("sub/deeper/c.yaml").display().to_string()
    );
}

#[test]
fn load_explicit_file_with_any_extension() {
    let t = TempDir::new("explicit");
    let p = t.write("config.txt", se_yaml("x"));
    let (set, d) = ConfigSet::load(&[&p], LoadOptions::default()).unwrap();
    assert!(d.is_empty());
    assert_eq!(set.service_entries[0].meta.name, "x");
}

#[test]
fn load_reports_yaml_errors_with_the_file_path() {
    let t = TempDir::new("badyaml");
    let p = t.write("x.yaml", "apiVersion: v1\nkind: [\n");
    let (_, d) = ConfigSet::load(&[t.path()], LoadOptions::default()).unwrap();
    let d: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        d,
        [format!(
            "{}:3: error: invalid YAML: while parsing a node, did not find expected node content",
            p.display()
        )]
    );
}

#[test]
fn load_missing_path_is_unreadable() {
    let t = TempDir::new("missing");
    let missing = t.path().join("does-not-exist");
    let err = ConfigSet::load(&[&missing], LoadOptions::default()).expect_err("error");
    match &err {
        LoadError::Unreadable { path, source } => {
            assert_eq!(path, &missing.display().to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Unreadable, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}

#[test]
fn load_non_utf8_file_is_an_error() {
    let t = TempDir::new("utf8");
    let p = t.write("latin1.yaml", b"kind: \xe9t\xe9\n");
    let err = ConfigSet::load(&[t.path()], LoadOptions::default()).expect_err("error");
    assert!(matches!(&err, LoadError::NotUtf8 { path } if path == &p.display().to_string()));
    assert_eq!(err.to_string(), format!("{}: not valid UTF-8", p.display()));
}

#[cfg(unix)]
#[test]
fn load_directory_with_a_symlink_cycle_reads_each_file_once() {
    let t = TempDir::new("cycle");
    t.write("a/se.yaml", se_yaml("once"));
    std::os::unix::fs::symlink("..", t.path().join("a/up")).unwrap();
    let (set, d) = ConfigSet::load(&[t.path()], LoadOptions::default()).unwrap();
    assert!(d.is_empty(), "{d:?}");
    let names: Vec<_> = set
        .service_entries
        .iter()
        .map(|o| o.meta.name.as_str())
        .collect();
    assert_eq!(names, ["once"]);
}

#[cfg(unix)]
#[test]
fn load_follows_configmap_style_symlinked_files() {
    // A ConfigMap volume: `se.yaml -> ..data/se.yaml`, `..data -> ..2024_01_01`.
    let t = TempDir::new("configmap");
    t.write("..2024_01_01/se.yaml", se_yaml("mounted"));
    std::os::unix::fs::symlink("..2024_01_01", t.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/se.yaml", t.path().join("se.yaml")).unwrap();
    let (set, d) = ConfigSet::load(&[t.path()], LoadOptions::default()).unwrap();
    assert!(d.is_empty(), "{d:?}");
    let names: Vec<_> = set
        .service_entries
        .iter()
        .map(|o| o.meta.name.as_str())
        .collect();
    assert_eq!(names, ["mounted"]);
}

#[test]
fn mesh_config_file_plain_and_broken() {
    let t = TempDir::new("meshfile");
    let plain = t.write(
        "mesh.yaml",
        "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\nenableAutoMtls: true\nholdApplicationUntilProxyStarts: true\n",
    );
    let mut l = Loader::new(LoadOptions::default());
    l.add_mesh_config_file(&plain).unwrap();
    let (set, d) = l.finish();
    let d: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        d,
        [format!(
            "{}:4: warning: MeshConfig /mesh: holdApplicationUntilProxyStarts: not supported by egret, ignored",
            plain.display()
        )]
    );
    assert_eq!(
        set.mesh.outbound_traffic_policy.and_then(|p| p.mode),
        Some(OutboundMode::RegistryOnly)
    );
    assert_eq!(set.mesh.enable_auto_mtls, Some(true));

    let broken = t.write("broken.yaml", "outboundTrafficPolicy:\n  mode: [\n");
    let mut l = Loader::new(LoadOptions::default());
    l.add_mesh_config_file(&broken).unwrap();
    let (_, d) = l.finish();
    let d: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        d,
        [format!(
            "{}:3: error: invalid YAML: while parsing a node, did not find expected node content",
            broken.display()
        )]
    );

    let mut l = Loader::new(LoadOptions::default());
    let err = l
        .add_mesh_config_file(&t.path().join("nope.yaml"))
        .expect_err("error");
    assert!(matches!(err, LoadError::Unreadable { .. }));
}
