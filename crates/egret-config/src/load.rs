//! Loading: files and directories -> YAML documents -> typed objects in a [`ConfigSet`], with a
//! diagnostic (file, line, object, field) for everything that is wrong or ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ConfigSet;
use crate::diag::{Diagnostic, Diagnostics, ObjectRef, Origin, Severity};
use crate::object::{Kind, Meta, Object};
use crate::types::MeshConfig;
use crate::unsupported;
use crate::yaml::{self, Positions};

/// Input that could not be read at all (exit code 2 in `egret validate`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: String },
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Namespace for objects without `metadata.namespace` (kubectl's default: `default`).
    pub default_namespace: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            default_namespace: "default".to_string(),
        }
    }
}

/// Accumulates objects and diagnostics while reading.
pub struct Loader {
    opts: LoadOptions,
    set: ConfigSet,
    diags: Diagnostics,
    mesh_docs: Vec<(Value, Origin)>,
}

const NETWORKING_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const SECURITY_VERSIONS: &[&str] = &["v1beta1", "v1"];
/// egret's own kinds (`egret.io`): RateLimitPolicy.
const EGRET_VERSIONS: &[&str] = &["v1alpha1"];

/// Istio kinds that exist but egret does not read: a warning, not an error.
const KNOWN_UNREAD_ISTIO_KINDS: &[&str] = &[
    "EnvoyFilter",
    "WorkloadGroup",
    "ProxyConfig",
    "PeerAuthentication",
    "Telemetry",
    "WasmPlugin",
];
const KNOWN_UNREAD_ASM_KINDS: &[&str] = &[
    "ASMLocalRateLimiter",
    "ASMGlobalRateLimiter",
    "ASMAdaptiveConcurrency",
    "ASMSwimLaneGroup",
    "ASMSwimLane",
];

impl Loader {
    pub fn new(opts: LoadOptions) -> Loader {
        Loader {
            opts,
            set: ConfigSet::default(),
            diags: Diagnostics::default(),
            mesh_docs: Vec::new(),
        }
    }

    /// Read a file, or every `.yaml`/`.yml` file below a directory (sorted, recursively;
    /// entries whose names start with `.` are skipped, which also skips Kubernetes'
    /// `..data` ConfigMap mount links).
    pub fn add_path(&mut self, path: &Path) -> Result<(), LoadError> {
        let meta = std::fs::metadata(path).map_err(|source| LoadError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_yaml_files(path, &mut files, &mut Default::default()).map_err(|source| {
                LoadError::Unreadable {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            for f in files {
                self.add_file(&f)?;
            }
            Ok(())
        } else {
            self.add_file(path)
        }
    }

    fn add_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8 {
            path: path.display().to_string(),
        })?;
        self.add_str(&path.display().to_string(), &text);
        Ok(())
    }

    /// Read YAML text as if it were the file `file`.
    pub fn add_str(&mut self, file: &str, text: &str) {
        match yaml::parse_documents(text) {
            Ok(docs) => {
                for d in docs {
                    self.add_document(file, d.value, d.positions);
                }
            }
            Err(e) => self.diags.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                line: e.line,
                object: None,
                field: String::new(),
                message: format!("invalid YAML: {}", e.message),
            }),
        }
    }

    /// A MeshConfig file (`--mesh-config`): plain MeshConfig YAML, or an IstioOperator /
    /// `istio` ConfigMap document.
    pub fn add_mesh_config_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        let file = path.display().to_string();
        match yaml::parse_documents(&text) {
            Ok(docs) => {
                for d in docs {
                    if d.value.get("kind").is_some() || d.value.get("spec").is_some() {
                        self.add_document(&file, d.value, d.positions);
                    } else {
                        self.mesh_docs
                            .push((d.value, Origin::new(file.as_str(), d.positions)));
                    }
                }
            }
            Err(e) => self.diags.push(file_diag(
                &file,
                e.line,
                Severity::Error,
                format!("invalid YAML: {}", e.message),
            )),
        }
        Ok(())
    }

    /// Finish: merge the mesh config documents and return everything read.
    pub fn finish(mut self) -> (ConfigSet, Diagnostics) {
        self.finish_mesh();
        let d = &mut self.diags;
        dedupe(&mut self.set.service_entries, d);
        dedupe(&mut self.set.destination_rules, d);
        dedupe(&mut self.set.virtual_services, d);
        dedupe(&mut self.set.gateways, d);
        dedupe(&mut self.set.sidecars, d);
        dedupe(&mut self.set.workload_entries, d);
        dedupe(&mut self.set.authorization_policies, d);
        dedupe(&mut self.set.request_authentications, d);
        dedupe(&mut self.set.asm_egress_policies, d);
        dedupe(&mut self.set.rate_limit_policies, d);
        self.diags.sort();
        (self.set, self.diags)
    }

    fn add_document(&mut self, file: &str, value: Value, positions: Positions) {
        let origin = Origin::new(file, positions);
        let Value::Object(map) = &value else {
            self.diags.push(file_diag(
                file,
                origin.positions.start(),
                Severity::Error,
                "document is not a mapping (expected a Kubernetes object)".into(),
            ));
            return;
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");

        // An IstioOperator fragment with no apiVersion/kind (istio.io's `istioctl install -f`
        // snippets, sample 01) carries the mesh config at spec.meshConfig.
        if kind.is_empty() && api_version.is_empty() {
            if let Some(mc) = value.get("spec").and_then(|s| s.get("meshConfig")) {
                let o = Origin::new(file, origin.positions.subtree("spec.meshConfig"));
                self.mesh_docs.push((mc.clone(), o));
                return;
            }
            self.diags.push(file_diag(
                file,
                origin.positions.start(),
                Severity::Error,
                "document has no apiVersion and kind".into(),
            ));
            return;
        }
        if kind.is_empty() || api_version.is_empty() {
            let missing = if kind.is_empty() {
                "kind"
            } else {
                "apiVersion"
            };
            self.diags.push(file_diag(
                file,
                origin.positions.start(),
                Severity::Error,
                format!("document has no {missing}"),
            ));
            return;
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };

        match (group, kind) {
            ("", "List") => {
                let items = match value.get("items") {
                    Some(Value::Array(items)) => items,
                    None | Some(Value::Null) => return,
                    Some(_) => {
                        self.diags.push(file_diag(
                            file,
                            origin.line_of("items"),
                            Severity::Error,
                            "List: items: must be a list of objects".into(),
                        ));
                        return;
                    }
                };
                for (i, item) in items.iter().enumerate() {
                    let p = origin.positions.subtree(&format!("items[{i}]"));
                    self.add_document(file, item.clone(), p);
                }
            }
            ("", "ConfigMap") => self.add_configmap(file, &value, &origin),
            ("install.istio.io", "IstioOperator") => {
                match value.get("spec").and_then(|s| s.get("meshConfig")) {
                    Some(mc) => {
                        let o = Origin::new(file, origin.positions.subtree("spec.meshConfig"));
                        self.mesh_docs.push((mc.clone(), o));
                    }
                    None => self.diags.push(file_diag(
                        file,
                        origin.positions.start(),
                        Severity::Note,
                        "IstioOperator without spec.meshConfig: nothing for egret to read".into(),
                    )),
                }
            }
            ("networking.istio.io", _) => {
                if !NETWORKING_VERSIONS.contains(&version) {
                    self.unsupported_version(file, &origin, api_version, kind);
                    return;
                }
                match kind {
                    "ServiceEntry" => {
                        let o = self.typed(Kind::ServiceEntry, api_version, &value, origin);
                        self.set.service_entries.extend(o);
                    }
                    "DestinationRule" => {
                        let o = self.typed(Kind::DestinationRule, api_version, &value, origin);
                        self.set.destination_rules.extend(o);
                    }
                    "VirtualService" => {
                        let o = self.typed(Kind::VirtualService, api_version, &value, origin);
                        self.set.virtual_services.extend(o);
                    }
                    "Gateway" => {
                        let o = self.typed(Kind::Gateway, api_version, &value, origin);
                        self.set.gateways.extend(o);
                    }
                    "Sidecar" => {
                        let o = self.typed(Kind::Sidecar, api_version, &value, origin);
                        self.set.sidecars.extend(o);
                    }
                    "WorkloadEntry" => {
                        let o = self.typed(Kind::WorkloadEntry, api_version, &value, origin);
                        self.set.workload_entries.extend(o);
                    }
                    _ => self.unknown_kind(
                        file,
                        &origin,
                        api_version,
                        kind,
                        KNOWN_UNREAD_ISTIO_KINDS,
                    ),
                }
            }
            ("security.istio.io", _) => {
                if !SECURITY_VERSIONS.contains(&version) {
                    self.unsupported_version(file, &origin, api_version, kind);
                    return;
                }
                match kind {
                    "AuthorizationPolicy" => {
                        let o = self.typed(Kind::AuthorizationPolicy, api_version, &value, origin);
                        self.set.authorization_policies.extend(o);
                    }
                    "RequestAuthentication" => {
                        let o =
                            self.typed(Kind::RequestAuthentication, api_version, &value, origin);
                        self.set.request_authentications.extend(o);
                    }
                    _ => self.unknown_kind(
                        file,
                        &origin,
                        api_version,
                        kind,
                        KNOWN_UNREAD_ISTIO_KINDS,
                    ),
                }
            }
            ("istio.alibabacloud.com", _) => match (version, kind) {
                ("v1beta1", "ASMEgressTrafficPolicy") => {
                    let o = self.typed(Kind::AsmEgressTrafficPolicy, api_version, &value, origin);
                    self.set.asm_egress_policies.extend(o);
                }
                (_, "ASMEgressTrafficPolicy") => {
                    self.unsupported_version(file, &origin, api_version, kind)
                }
                _ => self.unknown_kind(file, &origin, api_version, kind, KNOWN_UNREAD_ASM_KINDS),
            },
            ("egret.io", _) => {
                if !EGRET_VERSIONS.contains(&version) {
                    self.unsupported_version(file, &origin, api_version, kind);
                    return;
                }
                match kind {
                    "RateLimitPolicy" => {
                        let o = self.typed(Kind::RateLimitPolicy, api_version, &value, origin);
                        self.set.rate_limit_policies.extend(o);
                    }
                    _ => self.unknown_kind(file, &origin, api_version, kind, &[]),
                }
            }
            (g, _) if g.ends_with(".istio.io") => {
                self.unknown_kind(file, &origin, api_version, kind, KNOWN_UNREAD_ISTIO_KINDS)
            }
            _ => {
                // Kubernetes kinds (NetworkPolicy, Secret, Deployment, Gateway API ...) are
                // not egret's to read: say so once, as a note, never as an error.
                let name = meta_name(&value);
                self.diags.push(file_diag(
                    file,
                    origin.positions.start(),
                    Severity::Note,
                    format!("skipped {kind} {name} ({api_version}): not a kind egret reads"),
                ));
            }
        }
    }

    fn add_configmap(&mut self, file: &str, value: &Value, origin: &Origin) {
        let name = meta_name(value);
        let mesh = value.get("data").and_then(|d| d.get("mesh"));
        let is_istio = name == "istio" || name.starts_with("istio-");
        match (is_istio, mesh) {
            (true, Some(Value::String(text))) => {
                // The mesh config is YAML inside a string. Lines inside it are offset from the
                // line after `mesh: |`.
                let base = origin.line_of("data.mesh");
                match yaml::parse_documents(text) {
                    Ok(docs) => {
                        for d in docs {
                            let mut p = d.positions.clone();
                            p.shift(base);
                            self.mesh_docs.push((d.value, Origin::new(file, p)));
                        }
                    }
                    Err(e) => self.diags.push(file_diag(
                        file,
                        base + e.line,
                        Severity::Error,
                        format!("ConfigMap {name}: data.mesh: invalid YAML: {}", e.message),
                    )),
                }
            }
            (true, Some(_)) => self.diags.push(file_diag(
                file,
                origin.line_of("data.mesh"),
                Severity::Error,
                format!("ConfigMap {name}: data.mesh: must be a string holding MeshConfig YAML"),
            )),
            _ => self.diags.push(file_diag(
                file,
                origin.positions.start(),
                Severity::Note,
                format!("skipped ConfigMap {name}: only the `istio` ConfigMap's data.mesh is read"),
            )),
        }
    }

    fn unsupported_version(&mut self, file: &str, origin: &Origin, api_version: &str, kind: &str) {
        self.diags.push(file_diag(
            file,
            origin.line_of("apiVersion"),
            Severity::Error,
            format!("{kind}: apiVersion: unsupported apiVersion {api_version:?}"),
        ));
    }

    fn unknown_kind(
        &mut self,
        file: &str,
        origin: &Origin,
        api_version: &str,
        kind: &str,
        known: &[&str],
    ) {
        let (severity, message) = if known.contains(&kind) {
            (
                Severity::Warning,
                format!("{kind} ({api_version}) is not supported by egret, ignored"),
            )
        } else {
            (
                Severity::Error,
                format!("kind: unknown kind {kind:?} in {api_version}"),
            )
        };
        self.diags
            .push(file_diag(file, origin.line_of("kind"), severity, message));
    }

    /// Deserialize metadata + spec into `Object<S>`; push diagnostics. `None` on errors.
    fn typed<S: DeserializeOwned + 'static>(
        &mut self,
        kind: Kind,
        api_version: &str,
        value: &Value,
        origin: Origin,
    ) -> Option<Object<S>>
    where
        Object<S>: Sized,
    {
        let obj_ref = |name: &str, ns: &str| ObjectRef {
            kind: kind.as_str().to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let (meta, meta_errors) = read_meta(value, &self.opts.default_namespace);
        let oref = obj_ref(&meta.name, &meta.namespace);
        let mut ok = true;
        for (field, msg) in meta_errors {
            ok = false;
            self.diags.push(Diagnostic {
                severity: Severity::Error,
                file: origin.file.to_string(),
                line: origin.line_of(&field),
                object: Some(oref.clone()),
                field,
                message: msg,
            });
        }
        let spec_value = match value.get("spec") {
            Some(v) if !v.is_null() => v.clone(),
            _ => Value::Object(Default::default()),
        };
        if !spec_value.is_object() {
            // serde would read a struct from a sequence, field by field in order.
            self.diags.push(Diagnostic {
                severity: Severity::Error,
                file: origin.file.to_string(),
                line: origin.line_of("spec"),
                object: Some(oref),
                field: "spec".into(),
                message: "must be a mapping".into(),
            });
            return None;
        }
        let outcome = deserialize_reporting::<S>(spec_value, "spec");
        for (severity, field, message) in outcome.diags {
            if severity == Severity::Error {
                ok = false;
            }
            self.diags.push(Diagnostic {
                severity,
                file: origin.file.to_string(),
                line: origin.line_of(&field),
                object: Some(oref.clone()),
                field,
                message,
            });
        }
        // Top-level fields other than the Kubernetes envelope are unknown.
        if let Value::Object(m) = value {
            for k in m.keys() {
                if !matches!(
                    k.as_str(),
                    "apiVersion" | "kind" | "metadata" | "spec" | "status"
                ) {
                    self.diags.push(Diagnostic {
                        severity: Severity::Warning,
                        file: origin.file.to_string(),
                        line: origin.line_of(k),
                        object: Some(oref.clone()),
                        field: k.clone(),
                        message: "unknown field, ignored".into(),
                    });
                }
            }
        }
        // Checked on the spec as deserialized (snake_case keys renamed), so `cors_policy` is
        // reported like `corsPolicy`.
        for (field, message) in unsupported::check(kind, &outcome.normalized) {
            self.diags.push(Diagnostic {
                severity: Severity::Warning,
                file: origin.file.to_string(),
                line: origin.line_of(&field),
                object: Some(oref.clone()),
                field,
                message,
            });
        }
        let spec = outcome.value?;
        if !ok {
            return None;
        }
        Some(Object {
            kind,
            api_version: api_version.to_string(),
            meta,
            spec,
            origin,
            generated_from: None,
        })
    }

    fn finish_mesh(&mut self) {
        if self.mesh_docs.is_empty() {
            return;
        }
        if self.mesh_docs.len() > 1 {
            let (_, first) = &self.mesh_docs[0];
            let places: Vec<String> = self
                .mesh_docs
                .iter()
                .map(|(_, o)| format!("{}:{}", o.file, o.positions.start()))
                .collect();
            self.diags.push(file_diag(
                &first.file,
                first.positions.start(),
                Severity::Warning,
                format!(
                    "mesh config given {} times ({}); they are merged in that order, later values win",
                    places.len(),
                    places.join(", ")
                ),
            ));
        }
        let mut merged = Value::Object(Default::default());
        let mut last_origin = None;
        for (v, o) in std::mem::take(&mut self.mesh_docs) {
            let oref = ObjectRef {
                kind: "MeshConfig".into(),
                namespace: String::new(),
                name: "mesh".into(),
            };
            // An empty `meshConfig:` is an empty mesh config; anything else must be a mapping
            // (serde would read a struct from a sequence, field by field in order).
            let v = if v.is_null() {
                Value::Object(Default::default())
            } else {
                v
            };
            if !v.is_object() {
                self.diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: o.file.to_string(),
                    line: o.positions.start(),
                    object: Some(oref),
                    field: String::new(),
                    message: "must be a mapping".into(),
                });
                continue;
            }
            // Each document is checked against its own lines.
            let outcome = deserialize_reporting::<MeshConfig>(v, "");
            for (severity, field, message) in outcome.diags {
                // Unknown MeshConfig fields are the many Istio settings egret does not use.
                let message = if message == "unknown field, ignored" {
                    "not supported by egret, ignored".to_string()
                } else {
                    message
                };
                self.diags.push(Diagnostic {
                    severity,
                    file: o.file.to_string(),
                    line: o.line_of(&field),
                    object: Some(oref.clone()),
                    field,
                    message,
                });
            }
            for (field, message) in unsupported::check(Kind::MeshConfig, &outcome.normalized) {
                self.diags.push(Diagnostic {
                    severity: Severity::Warning,
                    file: o.file.to_string(),
                    line: o.line_of(&field),
                    object: Some(oref.clone()),
                    field,
                    message,
                });
            }
            if outcome.value.is_some() {
                // The normalized document: snake_case keys reported as accepted must be used.
                merge_json(&mut merged, outcome.normalized);
                last_origin = Some(o);
            }
        }
        if let Ok(mc) = serde_json::from_value::<MeshConfig>(merged) {
            self.set.mesh = mc;
            self.set.mesh_origin = last_origin;
        }
    }
}

/// `visited` holds the canonical directories already walked, so a symlink cycle (`a/up -> ..`)
/// neither loops nor reads the same files again under longer names.
/// Objects are identified by kind, namespace and name: a later definition replaces an earlier
/// one, as `kubectl apply` of the files in order would. Said with a warning, since two files
/// defining the same object is usually a mistake.
fn dedupe<S>(objects: &mut Vec<Object<S>>, diags: &mut Diagnostics) {
    let mut slot: std::collections::HashMap<String, usize> =
        std::collections::HashMap::with_capacity(objects.len());
    let mut keep: Vec<Option<Object<S>>> = Vec::with_capacity(objects.len());
    for o in objects.drain(..) {
        let key = o.key();
        if let Some(&i) = slot.get(&key)
            && let Some(earlier) = keep[i].take()
        {
            diags.push(o.warning(
                "metadata.name",
                format!(
                    "replaces the {} defined at {}:{} (the later definition wins, as with kubectl apply)",
                    earlier.kind,
                    earlier.origin.file,
                    earlier.origin.positions.start()
                ),
            ));
        }
        slot.insert(key, keep.len());
        keep.push(Some(o));
    }
    *objects = keep.into_iter().flatten().collect();
}

fn collect_yaml_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visited: &mut std::collections::HashSet<PathBuf>,
) -> std::io::Result<()> {
    if !visited.insert(std::fs::canonicalize(dir)?) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            collect_yaml_files(&p, out, visited)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(p);
        }
    }
    Ok(())
}

fn file_diag(file: &str, line: usize, severity: Severity, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: file.to_string(),
        line,
        object: None,
        field: String::new(),
        message,
    }
}

fn meta_name(value: &Value) -> String {
    value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string()
}

/// Read `metadata`. Errors are (field, message).
fn read_meta(value: &Value, default_ns: &str) -> (Meta, Vec<(String, String)>) {
    let mut errors = Vec::new();
    let md = value.get("metadata");
    let name = md.and_then(|m| m.get("name"));
    let name = match name {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => {
            errors.push(("metadata.name".into(), "required field is missing".into()));
            String::new()
        }
        Some(_) => {
            errors.push(("metadata.name".into(), "must be a string".into()));
            String::new()
        }
    };
    let namespace = match md.and_then(|m| m.get("namespace")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        // `namespace: ""` means the default namespace, as in kubectl.
        None | Some(Value::Null) | Some(Value::String(_)) => default_ns.to_string(),
        Some(_) => {
            errors.push(("metadata.namespace".into(), "must be a string".into()));
            default_ns.to_string()
        }
    };
    let mut string_map = |field: &str| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match md.and_then(|m| m.get(field)) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        _ => errors.push((
                            format!("metadata.{field}.{k}"),
                            "must be a string (quote it)".into(),
                        )),
                    }
                }
            }
            Some(_) => errors.push((format!("metadata.{field}"), "must be a map".into())),
        }
        out
    };
    let labels = string_map("labels");
    let annotations = string_map("annotations");
    (
        Meta {
            name,
            namespace,
            labels,
            annotations,
        },
        errors,
    )
}

/// The outcome of a typed deserialization: the value (if it had no type errors) and
/// diagnostics as (severity, field path, message).
pub(crate) struct Deserialized<T> {
    pub value: Option<T>,
    pub diags: Vec<(Severity, String, String)>,
    /// The input with accepted snake_case keys renamed to their camelCase spelling.
    pub normalized: Value,
}

/// Deserialize `value` as `T`, reporting type errors with their field path, unknown fields as
/// warnings, and accepting snake_case spellings of camelCase fields with a warning
/// (protobuf-JSON accepts the original proto names; Istio's CRD schema does not —
/// `istio-egress-spec.md` §0).
pub(crate) fn deserialize_reporting<T: DeserializeOwned>(
    mut value: Value,
    prefix: &str,
) -> Deserialized<T> {
    let mut diags = Vec::new();
    let (mut result, mut ignored) = try_deserialize::<T>(&value, prefix);

    // Rename ignored snake_case keys whose camelCase form is free, then try again.
    let mut renamed = Vec::new();
    for path in &ignored {
        let (parent, key) = split_last(path);
        if !key.contains('_') {
            continue;
        }
        let camel = snake_to_camel(key);
        if let Some(Value::Object(m)) = lookup_mut(&mut value, prefix, parent)
            && !m.contains_key(&camel)
            && let Some(v) = m.remove(key)
        {
            m.insert(camel.clone(), v);
            renamed.push((path.clone(), join_path(parent, &camel), camel));
        }
    }
    if !renamed.is_empty() {
        (result, ignored) = try_deserialize::<T>(&value, prefix);
        // A type error below a renamed key is reported under the spelling the user wrote
        // (and so at its line).
        if let Err((path, _)) = &mut result {
            for (old, new, _) in &renamed {
                if let Some(rest) = path.strip_prefix(new.as_str())
                    && (rest.is_empty() || rest.starts_with(['.', '[']))
                {
                    *path = format!("{old}{rest}");
                    break;
                }
            }
        }
        for (old, new, camel) in renamed {
            if ignored.contains(&new) {
                // Still unknown under its camelCase name: report the original spelling.
                ignored.retain(|p| p != &new);
                ignored.push(old);
            } else {
                diags.push((
                    Severity::Warning,
                    old,
                    format!(
                        "snake_case field name accepted; Istio's CRD schema spells it {camel:?}"
                    ),
                ));
            }
        }
    }
    for path in ignored {
        diags.push((Severity::Warning, path, "unknown field, ignored".into()));
    }
    let value_json = value;
    let value = match result {
        Ok(v) => Some(v),
        Err((path, msg)) => {
            diags.push((Severity::Error, path, msg));
            None
        }
    };
    Deserialized {
        value,
        diags,
        normalized: value_json,
    }
}

type TryResult<T> = (Result<T, (String, String)>, Vec<String>);

fn try_deserialize<T: DeserializeOwned>(value: &Value, prefix: &str) -> TryResult<T> {
    let mut ignored = Vec::new();
    let mut record = |p: serde_ignored::Path<'_>| ignored.push(ignored_path(&p));
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let result = serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
        let path = error_path(e.path());
        let mut msg = e.inner().to_string();
        if msg.contains("string \"$") {
            msg.push_str(" (an unsubstituted shell variable?)");
        }
        (join_path(prefix, &path), msg)
    });
    let ignored = ignored.into_iter().map(|p| join_path(prefix, &p)).collect();
    (result, ignored)
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => join_path(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn error_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = join_path(&out, key),
            Segment::Enum { variant } => out = join_path(&out, variant),
            Segment::Unknown => {}
        }
    }
    out
}

fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// `a.b[0].c` -> (`a.b[0]`, `c`); `c` -> (``, `c`) (a top-level MeshConfig field).
fn split_last(path: &str) -> (&str, &str) {
    match path.rfind('.') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Walk a path (relative to the deserialized root, which sits at `prefix`).
fn lookup_mut<'a>(root: &'a mut Value, prefix: &str, path: &str) -> Option<&'a mut Value> {
    let rel = if prefix.is_empty() {
        path
    } else {
        path.strip_prefix(prefix)?
    };
    let mut cur = root;
    for seg in rel.split('.').filter(|s| !s.is_empty()) {
        let (key, indices) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !key.is_empty() {
            cur = cur.get_mut(key)?;
        }
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let n: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.get_mut(n)?;
        }
    }
    Some(cur)
}

fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn merge_json(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_json(existing, v)
                    }
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_conversion() {
        assert_eq!(snake_to_camel("sni_hosts"), "sniHosts");
        assert_eq!(snake_to_camel("target_port"), "targetPort");
    }

    #[test]
    fn path_helpers() {
        assert_eq!(join_path("spec", "[0].a"), "spec[0].a");
        assert_eq!(join_path("spec", "a"), "spec.a");
        assert_eq!(
            split_last("spec.tls[0].match[0].sni_hosts"),
            ("spec.tls[0].match[0]", "sni_hosts")
        );
        assert_eq!(
            split_last("outbound_traffic_policy"),
            ("", "outbound_traffic_policy")
        );
        let mut v: Value = serde_json::json!({"tls": [{"match": [{"x": 1}]}]});
        assert!(lookup_mut(&mut v, "spec", "spec.tls[0].match[0]").is_some());
    }
}
