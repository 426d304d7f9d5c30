//! Where snapshots come from (standalone mode): the configuration path, compiled by the same
//! `egret-model` the CLI uses, watched for changes.
//!
//! A change is compiled off the data path (`spawn_blocking`). If it has errors, the
//! diagnostics are logged, `egret_config_rejected` counts it, and the last good snapshot keeps
//! serving. Otherwise the new [`Runtime`] is swapped in: new connections and requests use it,
//! established connections keep the one they started with.

use egret_model::fastmap::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use arc_swap::ArcSwap;
use egret_config::{LoadOptions, Loader};
use egret_model::{ProxyIdentity, Snapshot};
use rustls::ClientConfig;
use tracing::{info, warn};

use crate::mesh::MeshTls;
use crate::metrics::Metrics;
use crate::tls::{self, CredentialStore};

/// A snapshot plus what the data plane derives from it once: TLS client configurations and
/// load-balancing state per cluster.
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub clusters: HashMap<String, ClusterRuntime>,
    /// Gateway servers' TLS termination, by (listener port, server index).
    pub servers: HashMap<(u16, usize), Arc<rustls::ServerConfig>>,
    /// `uriRegexRewrite` patterns, compiled once per snapshot.
    pub regexes: HashMap<String, regex::Regex>,
    /// `uriRegexRewrite.rewrite` strings in the regex crate's syntax (`\1` -> `${1}`).
    pub substitutions: HashMap<String, String>,
    /// AuthorizationPolicies, RequestAuthentications, external authorizers and rate limits.
    pub policy: crate::policy::enforce::PolicyRuntime,
    /// Where this snapshot's access log and spans go.
    pub telemetry: Arc<crate::telemetry::TelemetryRuntime>,
    /// When this runtime was built (the admin's `/server_info`: when the config was loaded).
    pub loaded_at: std::time::SystemTime,
}

/// Envoy/RE2 substitution (`\1` is group 1) to the regex crate's (`${1}`, `$$` for `$`).
pub fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
pub struct ClusterRuntime {
    /// TLS origination, when the cluster's DestinationRule asks for SIMPLE or MUTUAL.
    pub tls: Option<Arc<ClientConfig>>,
    /// The mesh tunnel (`ISTIO_MUTUAL`: a sidecar's egress gateways), when this proxy has an
    /// identity; `None` with ISTIO_MUTUAL means requests answer 503 (`UH`).
    pub mesh: Option<Arc<ClientConfig>>,
    /// Round-robin position over endpoints.
    pub next: AtomicUsize,
    /// Rotation over the addresses a DNS endpoint resolves to (kept apart from `next`, so
    /// the two round robins do not skip each other's slots).
    pub next_ip: AtomicUsize,
    /// Requests (or connections) in flight per endpoint, for LEAST_REQUEST.
    pub active: Arc<[AtomicUsize]>,
    /// Outlier detection state, when the DestinationRule has `outlierDetection`.
    pub health: Option<crate::outlier::Health>,
    /// The consistent-hash table (`consistentHash`), built once per snapshot.
    pub hash_table: Option<crate::balancer::HashTable>,
    /// `connectionPool` limits (circuit breaking).
    pub breaker: crate::circuit::Breaker,
    /// Each endpoint's address when it is an IP literal, parsed once per snapshot: the data
    /// path neither parses nor resolves it per request.
    pub endpoint_ips: Box<[Option<std::net::IpAddr>]>,
}

impl ClusterRuntime {
    /// The data-plane state of one cluster of a new snapshot.
    pub fn for_cluster(
        c: &egret_model::snapshot::Cluster,
        tls: Option<Arc<ClientConfig>>,
        mesh: Option<Arc<ClientConfig>>,
    ) -> ClusterRuntime {
        ClusterRuntime {
            tls,
            mesh,
            next: AtomicUsize::new(0),
            next_ip: AtomicUsize::new(0),
            active: (0..c.endpoints.len())
                .map(|_| AtomicUsize::new(0))
                .collect(),
            health: c
                .policy
                .outlier_detection
                .as_ref()
                .map(|od| crate::outlier::Health::new(od, c.endpoints.len())),
            hash_table: crate::balancer::HashTable::build(c),
            breaker: crate::circuit::Breaker::new(&c.policy.connection_pool),
            endpoint_ips: c
                .endpoints
                .iter()
                .map(|e| e.address.trim_matches(['[', ']']).parse().ok())
                .collect(),
        }
    }
}

impl Runtime {
    /// Build the per-cluster state. Fails if a certificate or key file named by the
    /// configuration cannot be used: such a snapshot is rejected like a config error.
    pub fn new(
        snapshot: Snapshot,
        creds: &CredentialStore,
        mesh: Option<&MeshTls>,
        policy: &crate::policy::enforce::Shared,
    ) -> Result<Runtime, Vec<String>> {
        let mut clusters =
            HashMap::with_capacity_and_hasher(snapshot.clusters.len(), Default::default());
        let mut errors = Vec::new();
        for c in &snapshot.clusters {
            let tls = match c.policy.tls.unusable {
                Some(_) => Ok(None),
                None => tls::client_config(&c.policy.tls, creds, c.http2),
            };
            let tls = match tls {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("cluster {}: tls: {e}", c.name));
                    None
                }
            };
            let mut mesh_config = None;
            if c.policy.tls.mode == egret_config::types::ClientTlsMode::IstioMutual {
                match mesh {
                    Some(m) => match m.client_config(c) {
                        Ok(cfg) => mesh_config = Some(cfg),
                        Err(e) => errors.push(format!("cluster {}: mesh identity: {e}", c.name)),
                    },
                    None => warn!(
                        cluster = %c.name,
                        "ISTIO_MUTUAL (mesh tunnel) needs --identity-dir: requests to this cluster will fail"
                    ),
                }
            }
            if c.policy.tls.verify == egret_model::snapshot::Verify::InsecureSkip {
                warn!(cluster = %c.name, "insecureSkipVerify: the upstream certificate is not verified");
            }
            clusters.insert(
                c.name.clone(),
                ClusterRuntime::for_cluster(c, tls, mesh_config),
            );
        }
        let mut servers = HashMap::default();
        for l in &snapshot.listeners {
            for (i, srv) in l.servers.iter().enumerate() {
                let Some(t) = &srv.tls else { continue };
                let http = matches!(srv.protocol.as_str(), "HTTPS" | "HTTP" | "HTTP2" | "GRPC");
                match tls::server_config(t, creds, http) {
                    Ok(Some(c)) => {
                        servers.insert((l.port, i), c);
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(format!(
                        "gateway server {} (port {}): tls: {e}",
                        srv.name, l.port
                    )),
                }
            }
        }
        let mut regexes = HashMap::default();
        let rewrites = snapshot
            .listeners
            .iter()
            .flat_map(|l| &l.virtual_hosts)
            .flat_map(|v| &v.routes)
            .filter_map(|r| r.rewrite.as_ref()?.uri_regex.as_ref());
        let mut substitutions = HashMap::default();
        for (pattern, rewrite) in rewrites {
            substitutions
                .entry(rewrite.clone())
                .or_insert_with(|| re2_substitution(rewrite));
            if regexes.contains_key(pattern) {
                continue;
            }
            match regex::Regex::new(pattern) {
                Ok(re) => {
                    regexes.insert(pattern.clone(), re);
                }
                Err(e) => errors.push(format!("uriRegexRewrite.match {pattern:?}: {e}")),
            }
        }
        let telemetry = match crate::telemetry::TelemetryRuntime::for_snapshot(&snapshot) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                errors.push(e);
                Default::default()
            }
        };
        let activate = errors.is_empty();
        let policy = match crate::policy::enforce::PolicyRuntime::new(&snapshot, policy, activate) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        let (Some(policy), true) = (policy, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(Runtime {
            snapshot: Arc::new(snapshot),
            clusters,
            servers,
            regexes,
            substitutions,
            policy,
            telemetry,
            loaded_at: std::time::SystemTime::now(),
        })
    }
}

/// What a proxy is configured from.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub paths: Vec<PathBuf>,
    pub mesh_config: Option<PathBuf>,
    pub proxy: ProxyIdentity,
    pub credentials: CredentialStore,
    /// The proxy's mesh identity (`--identity-dir`), for the tunnel to/at egress gateways.
    pub mesh: Option<Arc<MeshTls>>,
    /// How often the files are checked for changes.
    pub poll: Duration,
    /// Policy state kept across snapshots (audit log, JWKS cache, rate-limit buckets).
    pub policy: Arc<crate::policy::enforce::Shared>,
}

/// Load and compile once. `Err` carries the messages to log (diagnostics or file errors).
pub fn load(cfg: &SourceConfig) -> Result<Runtime, Vec<String>> {
    let mut l = Loader::new(LoadOptions::default());
    for p in &cfg.paths {
        l.add_path(p).map_err(|e| vec![e.to_string()])?;
    }
    if let Some(m) = &cfg.mesh_config {
        l.add_mesh_config_file(m).map_err(|e| vec![e.to_string()])?;
    }
    let (set, mut diags) = l.finish();
    let (snapshot, more) = egret_model::compile(&set, &cfg.proxy);
    diags.extend(more);
    for d in diags.iter().filter(|d| !d.is_error()) {
        if d.severity == egret_config::Severity::Warning {
            warn!(target: "config", "{d}");
        }
    }
    if diags.has_errors() {
        return Err(diags.errors().map(|d| d.to_string()).collect());
    }
    Runtime::new(snapshot, &cfg.credentials, cfg.mesh.as_deref(), &cfg.policy)
}

/// A cheap fingerprint of the configuration files: their paths and contents.
pub fn fingerprint(cfg: &SourceConfig) -> u64 {
    let mut files = Vec::new();
    for p in cfg.paths.iter().chain(cfg.mesh_config.iter()) {
        collect(p, &mut files);
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        match std::fs::read(&f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

fn collect(p: &std::path::Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                collect(&e.path(), out);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
}

/// Watch the files; swap in each new valid snapshot. Runs until the task is dropped.
/// `baseline` is the fingerprint taken *before* the running snapshot was loaded, so a change
/// made while it was loading (or before this task first runs) is never missed.
pub async fn watch(
    cfg: SourceConfig,
    state: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    baseline: u64,
) {
    let mut last = baseline;
    let mut rejected_at: Option<u64> = None;
    loop {
        tokio::time::sleep(cfg.poll).await;
        let c = cfg.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&c)).await else {
            continue;
        };
        if now == last || rejected_at == Some(now) {
            continue;
        }
        let c = cfg.clone();
        let Ok(result) = tokio::task::spawn_blocking(move || load(&c)).await else {
            continue;
        };
        match result {
            Ok(rt) => {
                let version = rt.snapshot.version.clone();
                if version == state.load().snapshot.version {
                    info!(target: "config", %version, "configuration changed on disk; snapshot unchanged");
                } else {
                    state.store(Arc::new(rt));
                    metrics.config_loaded.inc();
                    info!(target: "config", %version, "configuration reloaded");
                }
                last = now;
                rejected_at = None;
            }
            Err(errors) => {
                metrics.config_rejected.inc();
                for e in &errors {
                    warn!(target: "config", "{e}");
                }
                warn!(
                    target: "config",
                    errors = errors.len(),
                    version = %state.load().snapshot.version,
                    "configuration rejected; the last good snapshot keeps serving"
                );
                rejected_at = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn re2_substitutions() {
        use super::re2_substitution as r;
        assert_eq!(r("/\\1"), "/${1}");
        assert_eq!(r("/a/\\12/b\\2"), "/a/${12}/b${2}");
        assert_eq!(r("/cost$5"), "/cost$$5");
        assert_eq!(r("/plain\\x"), "/plain\\x");
    }
}
