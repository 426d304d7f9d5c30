//! `egret sidecar`: argument parsing, logging, the runtime, signals. The engine itself is
//! `egret_proxy::sidecar`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use egret_model::{ProxyIdentity, Role};
use egret_proxy::config::SourceConfig;
use egret_proxy::sidecar::{self, SidecarOptions};
use egret_proxy::tls::CredentialStore;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[derive(Args, Debug)]
pub struct SidecarArgs {
    /// Configuration file or directory (watched for changes).
    #[arg(long)]
    config: Vec<PathBuf>,
    #[arg(long)]
    namespace: String,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Workload labels, `k=v,k2=v2`.
    #[arg(long, default_value = "")]
    labels: String,
    /// This proxy's locality, `region/zone/subzone` (for `localityLbSetting`): stored as the
    /// `istio-locality` label, as Istio reads a workload's locality.
    #[arg(long)]
    locality: Option<String>,
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Where `credentialName` credentials are read: DIR/<name>/{tls.crt,tls.key,ca.crt}.
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
    /// The mesh identity: `cert-chain.pem`, `key.pem`, `root-cert.pem` (from `egret ca issue`),
    /// watched and reloaded on change. Needed for the mutual-TLS tunnel to egress gateways.
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Port for captured (iptables-redirected) traffic; 0 disables capture.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Explicit HTTP proxy port (HTTP_PROXY/HTTPS_PROXY); 0 disables it.
    #[arg(long, default_value_t = 15080)]
    proxy_port: u16,
    /// Address the explicit proxy listens on.
    #[arg(long, default_value = "127.0.0.1")]
    proxy_bind: std::net::IpAddr,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Address of the admin endpoint; loopback by default (it exposes the configuration).
    #[arg(long, default_value = "127.0.0.1")]
    admin_bind: std::net::IpAddr,
    /// After SIGTERM, how long in-flight connections may take to finish.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Data-plane threads (Istio's `ProxyConfig.concurrency`); 0 = one per CPU core. Each
    /// thread accepts on its own `SO_REUSEPORT` socket and serves its connections start to end.
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// How long to wait for a client's first bytes before treating a connection as TCP.
    #[arg(long, default_value_t = 500)]
    detect_timeout_ms: u64,
    /// How often the configuration is checked for changes.
    #[arg(long, default_value_t = 1000)]
    config_poll_ms: u64,
    /// Log filter (tracing syntax); access logs are target `access`.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

/// Downstream HTTP timeouts, common to both roles (Envoy's HTTP connection manager; Istio
/// exposes none of them in its API). Durations as Istio writes them (`1h`, `300s`, `500ms`);
/// `0s` disables one.
#[derive(Args, Debug)]
pub struct TimeoutArgs {
    /// Close a client connection with no request in progress after this long (Envoy
    /// `idle_timeout`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Answer 408 and close when a request's head or body, or the client's taking of the
    /// response, makes no progress for this long (Envoy `stream_idle_timeout`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    stream_idle_timeout: Duration,
    /// Answer 408 and close when a request head takes longer than this in all (Envoy
    /// `request_headers_timeout`, disabled by default there; bounded here against slowloris).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_headers_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    egret_config::types::common::Duration::parse(s).map(|d| d.to_std())
}

impl TimeoutArgs {
    fn timeouts(&self) -> egret_proxy::h1::timeouts::Timeouts {
        let some = |d: Duration| (!d.is_zero()).then_some(d);
        egret_proxy::h1::timeouts::Timeouts {
            idle: some(self.idle_timeout),
            stream_idle: some(self.stream_idle_timeout),
            request_headers: some(self.request_headers_timeout),
        }
    }
}

/// Policy options common to both roles.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Write audit records (JSON lines: every denial, AUDIT matches, dry-run results) to this
    /// file instead of the log (target `audit`).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Also record allowed decisions (of a proxy that has policies).
    #[arg(long)]
    audit_allowed: bool,
    /// Extra CA certificates (PEM) trusted for `https` `jwksUri`s besides the system roots.
    #[arg(long)]
    jwks_ca_file: Option<PathBuf>,
    /// How often remote JWKS are fetched again (Istio's default: 20 minutes).
    #[arg(long, default_value_t = 1200)]
    jwks_refresh_seconds: u64,
}

/// The policy state shared by all configuration snapshots of this process.
fn policy_shared(a: &PolicyArgs) -> Result<Arc<egret_proxy::policy::enforce::Shared>, ExitCode> {
    let audit = match &a.audit_log {
        Some(path) => match egret_proxy::policy::audit::AuditLog::to_file(path, a.audit_allowed) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("egret: --audit-log {}: {e}", path.display());
                return Err(ExitCode::from(2));
            }
        },
        None => egret_proxy::policy::audit::AuditLog::to_log(a.audit_allowed),
    };
    let jwks = egret_proxy::policy::jwks::JwksCacheOptions {
        refresh_interval: Duration::from_secs(a.jwks_refresh_seconds.max(1)),
        extra_ca_file: a.jwks_ca_file.clone(),
        ..Default::default()
    };
    egret_proxy::policy::enforce::Shared::new(audit, jwks).map_err(|e| {
        eprintln!("egret: --jwks-ca-file: {e}");
        ExitCode::from(2)
    })
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Configuration file or directory (watched for changes).
    #[arg(long)]
    config: Vec<PathBuf>,
    /// The gateway's namespace.
    #[arg(long)]
    namespace: String,
    #[arg(long, default_value = "istio-egressgateway-service-account")]
    service_account: String,
    /// The gateway's labels, `k=v,...`: Gateway `selector`s match them.
    #[arg(long)]
    labels: String,
    /// This proxy's locality, `region/zone/subzone` (for `localityLbSetting`): stored as the
    /// `istio-locality` label, as Istio reads a workload's locality.
    #[arg(long)]
    locality: Option<String>,
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Where `credentialName` credentials are read: DIR/<name>/{tls.crt,tls.key,ca.crt}.
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
    /// The mesh identity: `cert-chain.pem`, `key.pem`, `root-cert.pem` (from `egret ca issue`),
    /// watched and reloaded on change. Needed for the mutual-TLS tunnel to egress gateways.
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Also serve clients that do not come through the mesh tunnel. They have no mesh
    /// identity: their traffic cannot be attributed to a workload. Off by default.
    #[arg(long)]
    allow_direct: bool,
    /// Address the server ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Listen for a server port elsewhere: `80=0.0.0.0:8080` (repeatable), like a Service's
    /// targetPort.
    #[arg(long = "listen")]
    listen: Vec<String>,
    /// Networks that names resolved at the gateway may not point into (the mesh's own
    /// ranges), e.g. `10.0.0.0/8,198.51.100.0/24`; loopback and link-local always are.
    #[arg(long, default_value = "")]
    deny_cidrs: String,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    admin_bind: std::net::IpAddr,
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Data-plane threads (Istio's `ProxyConfig.concurrency`); 0 = one per CPU core. Each
    /// thread accepts on its own `SO_REUSEPORT` socket and serves its connections start to end.
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    config_poll_ms: u64,
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

/// Labels from `--labels`, plus `--locality` as the `istio-locality` label.
fn with_locality(
    labels: Result<std::collections::BTreeMap<String, String>, String>,
    locality: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = labels.map_err(|e| format!("--labels: {e}"))?;
    if let Some(l) = locality {
        let parts: Vec<&str> = l.split('/').collect();
        if parts.is_empty()
            || parts.len() > 3
            || parts[0].is_empty()
            || parts.iter().any(|p| p.contains(char::is_whitespace))
        {
            return Err(format!(
                "--locality {l:?}: expected region[/zone[/subzone]]"
            ));
        }
        labels.insert(
            egret_model::locality::LOCALITY_LABEL.to_string(),
            l.to_string(),
        );
    }
    Ok(labels)
}

/// `egret gateway`: the same engine in gateway role.
pub fn gateway(a: GatewayArgs) -> ExitCode {
    let set_level = init_logging(&a.log_level, &a.log_format);
    let labels = match with_locality(egret_model::parse_labels(&a.labels), a.locality.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("egret: {e}");
            return ExitCode::from(2);
        }
    };
    let mut map = std::collections::BTreeMap::new();
    for l in &a.listen {
        let parsed = l
            .split_once('=')
            .and_then(|(p, addr)| Some((p.parse::<u16>().ok()?, addr.parse::<SocketAddr>().ok()?)));
        match parsed {
            Some((p, addr)) => {
                map.insert(p, addr);
            }
            None => {
                eprintln!("egret: --listen {l:?}: expected PORT=ADDR:PORT, e.g. 80=0.0.0.0:8080");
                return ExitCode::from(2);
            }
        }
    }
    if a.config.is_empty() {
        eprintln!("egret: --config PATH is required");
        return ExitCode::from(2);
    }
    let forbidden = match egret_proxy::capture::parse_cidrs(&a.deny_cidrs) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("egret: --deny-cidrs: {e}");
            return ExitCode::from(2);
        }
    };
    if a.identity_dir.is_none() && !a.allow_direct {
        eprintln!(
            "egret: a gateway needs --identity-dir (the mesh tunnel from sidecars) or --allow-direct (clients without a mesh identity)"
        );
        return ExitCode::from(2);
    }
    let mesh = match load_identity(a.identity_dir.as_deref(), &a.namespace, &a.service_account) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let policy = match policy_shared(&a.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let opts = SidecarOptions {
        source: SourceConfig {
            paths: a.config,
            mesh_config: a.mesh_config,
            mesh,
            proxy: ProxyIdentity {
                role: Role::Gateway,
                namespace: a.namespace,
                service_account: a.service_account,
                labels,
            },
            credentials: CredentialStore {
                dir: a.credentials_dir,
            },
            poll: Duration::from_millis(a.config_poll_ms.max(50)),
            policy,
        },
        outbound: None,
        explicit: None,
        admin: SocketAddr::new(a.admin_bind, a.admin_port),
        drain: Duration::from_secs(a.drain_seconds),
        detect_timeout: Duration::from_millis(500),
        timeouts: a.timeouts.timeouts(),
        gateway: Some(sidecar::GatewayListen {
            bind: a.bind,
            map,
            forbidden,
            allow_direct: a.allow_direct,
        }),
    };
    serve(opts, set_level, a.concurrency, "egret gateway ready")
}

fn init_logging(level: &str, format: &str) -> egret_proxy::admin::SetLogLevel {
    let (filter, handle) = tracing_subscriber::reload::Layer::new(
        EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
    );
    // Colours only on a terminal: logs written to files stay greppable.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    Arc::new(move |l: &str| {
        let f = EnvFilter::try_new(l).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// A data-plane thread's single-threaded runtime; it runs until `stop` fires (or is dropped).
fn worker(i: usize) -> Result<(tokio::runtime::Handle, Worker), String> {
    let (htx, hrx) = std::sync::mpsc::sync_channel(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = std::thread::Builder::new()
        .name(format!("egret-worker-{i}"))
        .spawn(move || {
            egret_proxy::shard::set(u16::try_from(i).unwrap_or(u16::MAX));
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = htx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = htx.send(Err(e.to_string()));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let handle = hrx.recv().map_err(|e| e.to_string())??;
    Ok((handle, Worker { stop, join }))
}

struct Worker {
    stop: tokio::sync::oneshot::Sender<()>,
    join: std::thread::JoinHandle<()>,
}

/// Run a proxy until SIGTERM, then drain.
///
/// Thread per core: `concurrency` single-threaded runtimes (this thread's and N-1 workers),
/// each accepting on its own `SO_REUSEPORT` socket, so a request is read, routed, forwarded
/// and answered on one thread with no work-stealing scheduler between its halves (Envoy's
/// worker model; ztunnel and pingora do the same). Control work (configuration, admin) has a
/// thread of its own (`sidecar::start_on`).
fn serve(
    opts: SidecarOptions,
    set_level: egret_proxy::admin::SetLogLevel,
    concurrency: usize,
    ready_msg: &'static str,
) -> ExitCode {
    let threads = match concurrency {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egret: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for i in 1..threads {
        match worker(i) {
            Ok((h, w)) => {
                handles.push(h);
                workers.push(w);
            }
            Err(e) => {
                eprintln!("egret: cannot start data-plane thread {i}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let code = rt.block_on(async move {
        let running = match sidecar::start_on(opts, Some(set_level), &handles).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            outbound = ?running.outbound,
            proxy = ?running.explicit,
            gateway = ?running.gateway_ports(),
            admin = %running.admin,
            "{ready_msg}"
        );
        wait_for_signal().await;
        tracing::info!("draining");
        let left = running.drain().await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline reached; closing the rest"
            );
        }
        ExitCode::SUCCESS
    });
    // The workers' runtimes end with what is left on them (the drain is over).
    for w in workers {
        let _ = w.stop.send(());
        let _ = w.join.join();
    }
    code
}

pub fn sidecar(a: SidecarArgs) -> ExitCode {
    let set_level = init_logging(&a.log_level, &a.log_format);
    let labels = match with_locality(egret_model::parse_labels(&a.labels), a.locality.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("egret: {e}");
            return ExitCode::from(2);
        }
    };
    if a.config.is_empty() {
        eprintln!("egret: --config PATH is required");
        return ExitCode::from(2);
    }
    let mesh = match load_identity(a.identity_dir.as_deref(), &a.namespace, &a.service_account) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let policy = match policy_shared(&a.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let opts = SidecarOptions {
        source: SourceConfig {
            paths: a.config,
            mesh_config: a.mesh_config,
            mesh,
            proxy: ProxyIdentity {
                role: Role::Sidecar,
                namespace: a.namespace,
                service_account: a.service_account,
                labels,
            },
            credentials: CredentialStore {
                dir: a.credentials_dir,
            },
            poll: Duration::from_millis(a.config_poll_ms.max(50)),
            policy,
        },
        outbound: (a.outbound_port != 0).then(|| SocketAddr::from(([0, 0, 0, 0], a.outbound_port))),
        explicit: (a.proxy_port != 0).then(|| SocketAddr::new(a.proxy_bind, a.proxy_port)),
        admin: SocketAddr::new(a.admin_bind, a.admin_port),
        drain: Duration::from_secs(a.drain_seconds),
        detect_timeout: Duration::from_millis(a.detect_timeout_ms),
        timeouts: a.timeouts.timeouts(),
        gateway: None,
    };
    serve(opts, set_level, a.concurrency, "egret sidecar ready")
}

/// Load `--identity-dir`. A proxy whose certificate names another workload than
/// `--namespace`/`--service-account` still starts (the certificate is what peers see), with a
/// warning.
fn load_identity(
    dir: Option<&std::path::Path>,
    namespace: &str,
    service_account: &str,
) -> Result<Option<Arc<egret_proxy::mesh::MeshTls>>, ExitCode> {
    let Some(dir) = dir else { return Ok(None) };
    let store = egret_identity::IdentityStore::load(dir).map_err(|e| {
        eprintln!("egret: --identity-dir {}: {e}", dir.display());
        ExitCode::from(1)
    })?;
    let id = store.spiffe_id();
    if id.namespace() != Some(namespace) || id.service_account() != Some(service_account) {
        tracing::warn!(
            identity = %id,
            namespace,
            service_account,
            "the identity certificate names another workload than --namespace/--service-account"
        );
    }
    tracing::info!(identity = %id, "mesh identity loaded");
    let mesh = egret_proxy::mesh::MeshTls::new(store).map_err(|e| {
        eprintln!("egret: --identity-dir {}: {e}", dir.display());
        ExitCode::from(1)
    })?;
    Ok(Some(Arc::new(mesh)))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(Args, Debug)]
pub struct IptablesArgs {
    /// `apply` (idempotent), `print` (show the commands) or `clean` (remove exactly what
    /// apply added).
    #[arg(value_parser = ["apply", "print", "clean"])]
    action: String,
    /// The proxy's user: its own connections are never captured.
    #[arg(long, default_value_t = egret_proxy::capture::DEFAULT_PROXY_UID)]
    proxy_uid: u32,
    /// The proxy's group (default: the uid).
    #[arg(long)]
    proxy_gid: Option<u32>,
    #[arg(long, default_value_t = egret_proxy::capture::DEFAULT_OUTBOUND_PORT)]
    outbound_port: u16,
    /// Destination ports never captured, e.g. `22,5432`.
    #[arg(long, default_value = "")]
    exclude_ports: String,
    /// Destination networks never captured, e.g. `10.0.0.0/8,fd00::/8`.
    #[arg(long, default_value = "")]
    exclude_cidrs: String,
    /// Leave IPv6 alone.
    #[arg(long)]
    no_ipv6: bool,
    /// Native nftables (`inet egret` table) instead of iptables.
    #[arg(long)]
    nft: bool,
}

pub fn iptables(a: IptablesArgs) -> ExitCode {
    use egret_proxy::capture::{self, CaptureConfig};
    let parse = || -> Result<CaptureConfig, String> {
        Ok(CaptureConfig {
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid,
            outbound_port: a.outbound_port,
            exclude_ports: capture::parse_ports(&a.exclude_ports).map_err(|e| e.to_string())?,
            exclude_cidrs: capture::parse_cidrs(&a.exclude_cidrs).map_err(|e| e.to_string())?,
            include_ipv6: !a.no_ipv6,
        })
    };
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egret iptables: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match (a.action.as_str(), a.nft) {
        ("print", false) => {
            print!("{}", cfg.print());
            Ok(())
        }
        ("print", true) => {
            print!("{}", cfg.nft_script());
            Ok(())
        }
        ("apply", false) => cfg.apply(),
        ("apply", true) => cfg.apply_nft(),
        ("clean", false) => capture::clean(),
        ("clean", true) => capture::clean_nft(),
        _ => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret iptables {}: {e}", a.action);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn locality_flag_becomes_the_istio_locality_label() {
        let labels =
            with_locality(egret_model::parse_labels("app=a"), Some("us-east/zone1/sz")).unwrap();
        assert_eq!(
            labels.get("istio-locality").map(String::as_str),
            Some("us-east/zone1/sz")
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("a"));
        assert!(with_locality(Ok(Default::default()), Some("")).is_err());
        assert!(with_locality(Ok(Default::default()), Some("a/b/c/d")).is_err());
        assert!(with_locality(Ok(Default::default()), Some("us east")).is_err());
        assert!(with_locality(egret_model::parse_labels("novalue"), None).is_err());
    }
}
