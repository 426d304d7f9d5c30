//! Running a sidecar: load the first snapshot, bind the listeners, serve, watch the
//! configuration, and drain on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};

use crate::admin::{Admin, SetLogLevel};
use crate::config::{self, SourceConfig};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub source: SourceConfig,
    /// Captured traffic (iptables REDIRECT). `None` = explicit-proxy mode only.
    pub outbound: Option<SocketAddr>,
    /// Explicit HTTP proxy (`HTTP_PROXY` / `HTTPS_PROXY`).
    pub explicit: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// How long in-flight connections may take to finish after SIGTERM.
    pub drain: Duration,
    pub detect_timeout: Duration,
    /// Downstream HTTP connections: idle, stream-idle and request-headers timeouts (Envoy's
    /// HTTP connection manager defaults, request headers bounded too).
    pub timeouts: crate::h1::timeouts::Timeouts,
    /// Gateway role: serve the Gateway servers' ports of the snapshot.
    pub gateway: Option<GatewayListen>,
}

/// Where a gateway listens: each server port on `bind`, unless `map` says otherwise (tests, or
/// a pod whose Service maps port 80 to a target port).
#[derive(Debug, Clone)]
pub struct GatewayListen {
    pub bind: std::net::IpAddr,
    pub map: std::collections::BTreeMap<u16, SocketAddr>,
    /// Ranges that resolved names may not point into (the mesh's own networks), besides
    /// loopback and link-local which are always refused.
    pub forbidden: Vec<ipnet::IpNet>,
    /// Serve clients that do not come through the mesh tunnel (they have no identity).
    pub allow_direct: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration rejected:\n{0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running sidecar (used by the binary and by in-process tests).
pub struct Running {
    pub proxy: Arc<Proxy>,
    pub ready: Arc<AtomicBool>,
    pub outbound: Option<SocketAddr>,
    pub explicit: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// Gateway role: (server port, bound address) now, see [`Running::gateway_ports`].
    gateway_bound: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, SocketAddr>>>,
    shutdown: watch::Sender<bool>,
    active: Arc<Active>,
    drain: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// In-flight connections, for draining.
#[derive(Default)]
struct Active {
    n: AtomicUsize,
    zero: Notify,
}

struct ActiveGuard(Arc<Active>, Arc<Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.1.active_connections.dec();
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

fn track(active: &Arc<Active>, metrics: &Arc<Metrics>) -> ActiveGuard {
    active.n.fetch_add(1, Ordering::AcqRel);
    metrics.active_connections.inc();
    ActiveGuard(active.clone(), metrics.clone())
}

fn bind_v6_only(port: u16, reuse_port: bool) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        reuse_port,
    )?)
}

/// A listening socket; with `reuse_port` (`SO_REUSEPORT`), one of several on the same address,
/// among which the kernel spreads new connections — one per data-plane thread, as Envoy's
/// listeners do by default on Linux (`enable_reuse_port`).
fn bind_std(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// What a listener's connections are.
#[derive(Clone, Copy)]
enum Accepted {
    Captured,
    Explicit,
    Gateway(u16),
}

/// Accept until shutdown; each connection is tracked for draining and served on its own task.
/// An accept error (out of file descriptors, say) is logged and counted, and the loop backs
/// off briefly instead of spinning.
async fn accept_loop(
    l: TcpListener,
    kind: Accepted,
    p: Arc<Proxy>,
    active: Arc<Active>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let r = tokio::select! {
            _ = stop.changed() => break,
            r = l.accept() => r,
        };
        let (s, peer) = match r {
            Ok(x) => x,
            Err(e) => {
                metrics.connection("accept_error", "tcp");
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let guard = track(&active, &metrics);
        let p = p.clone();
        // Each kind's future is boxed: inline, every connection's task would be as large as
        // the largest of the three (captured: detection, TLS, HTTP; gateway: the mesh TLS
        // accept and HTTP/2), and that memory is copied, so resident, per connection — idle
        // connections included (issue 8: RSS per 1,000 idle keep-alive connections).
        tokio::spawn(async move {
            let _guard = guard;
            match kind {
                Accepted::Captured => match original_dst(&s) {
                    Some(dst) => Box::pin(p.serve_captured(s, peer, dst)).await,
                    None => tracing::warn!(
                        %peer,
                        "no original destination (not redirected by iptables?): closed"
                    ),
                },
                Accepted::Explicit => Box::pin(p.serve_explicit(s, peer)).await,
                Accepted::Gateway(port) => Box::pin(p.serve_gateway(s, peer, port)).await,
            }
        });
    }
}

/// This proxy's `source_*` labels (Istio's stats plugin): the workload is the `app` label, else
/// the service account (a gateway deployed as Istio's is `istio-egressgateway`); the principal
/// is the mesh identity; the cluster is Istio's default cluster name.
fn source_labels(src: &config::SourceConfig) -> crate::telemetry::SourceLabels {
    let p = &src.proxy;
    let workload = p
        .labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| p.service_account.clone());
    let principal = src.mesh.as_ref().map(|m| m.store().spiffe_id().to_string());
    crate::telemetry::SourceLabels::from_workload(
        &workload,
        &p.namespace,
        principal.as_deref(),
        &p.labels,
        "Kubernetes",
    )
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// A data-plane listener: shared by every data-plane thread (`SO_REUSEPORT` when there are
/// worker runtimes besides the current one).
fn bind_data(addr: SocketAddr, workers: &[Handle]) -> Result<TcpListener, StartError> {
    bind_std(addr, !workers.is_empty())
        .and_then(TcpListener::from_std)
        .map_err(|source| StartError::Bind { addr, source })
}

/// Serve a data-plane listener: its accept loop on this runtime, and on each worker runtime an
/// accept loop of its own on another `SO_REUSEPORT` socket of the same address. A connection
/// then lives on the thread that accepted it, with everything it does (thread per core, as
/// Envoy's workers and pingora's: no work stealing, no cross-thread wake-ups per request).
fn spawn_accepts<F, Fut>(
    l: TcpListener,
    kind: Accepted,
    accept: &F,
    workers: &[Handle],
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), StartError>
where
    F: Fn(TcpListener, Accepted) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = l.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    tasks.push(tokio::spawn(accept(l, kind)));
    for h in workers {
        let std_l = bind_std(addr, true).map_err(|source| StartError::Bind { addr, source })?;
        let accept = accept.clone();
        tasks.push(h.spawn(async move {
            match TcpListener::from_std(std_l) {
                Ok(l) => accept(l, kind).await,
                Err(e) => tracing::error!(%addr, "worker cannot listen: {e}"),
            }
        }));
    }
    Ok(())
}

/// The original destination of a redirected connection (`SO_ORIGINAL_DST`, IPv4 or IPv6).
pub fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(s);
    let local = s.local_addr().ok()?;
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    addr.ok()?.as_socket()
}

pub async fn start(
    opts: SidecarOptions,
    set_log_level: Option<SetLogLevel>,
) -> Result<Running, StartError> {
    start_on(opts, set_log_level, &[]).await
}

/// [`start`], serving the data-plane listeners also on `workers`: runtimes of other threads
/// (`egret sidecar --concurrency`). Control work stays off all of them (see below).
pub async fn start_on(
    opts: SidecarOptions,
    set_log_level: Option<SetLogLevel>,
    workers: &[Handle],
) -> Result<Running, StartError> {
    let mut metrics = Metrics::new();
    opts.source.policy.register(&mut metrics.registry);
    let metrics = Arc::new(metrics);
    let baseline = {
        let src = opts.source.clone();
        tokio::task::spawn_blocking(move || config::fingerprint(&src))
            .await
            .map_err(|e| StartError::Config(e.to_string()))?
    };
    let first = {
        let src = opts.source.clone();
        tokio::task::spawn_blocking(move || config::load(&src))
            .await
            .map_err(|e| StartError::Config(e.to_string()))?
            .map_err(|errors| StartError::Config(errors.join("\n")))?
    };
    tracing::info!(target: "config", version = %first.snapshot.version, "configuration loaded");
    metrics.config_loaded.inc();
    let state = Arc::new(ArcSwap::from_pointee(first));
    let mut proxy = Proxy::new(state.clone(), metrics.clone());
    proxy.detect_timeout = opts.detect_timeout;
    proxy.timeouts = opts.timeouts;
    proxy.mesh = opts.source.mesh.clone();
    proxy.policy = opts.source.policy.clone();
    if opts.gateway.is_none() {
        proxy.own_identity = opts
            .source
            .mesh
            .as_ref()
            .map(|m| Arc::from(m.store().spiffe_id().to_string()));
    }
    proxy.telemetry = Arc::new(crate::telemetry::Telemetry::new(&source_labels(
        &opts.source,
    )));
    if let Some(g) = &opts.gateway {
        proxy.allow_direct = g.allow_direct;
        let mut up = crate::upstream::Upstreams::new();
        up.gateway = true;
        up.forbidden = g.forbidden.clone();
        proxy.upstreams = Arc::new(up);
    }

    let outbound = match opts.outbound {
        Some(a) => Some(bind_data(a, workers)?),
        None => None,
    };
    // IPv6 capture: a v6-only socket on the same port beside 0.0.0.0 (REDIRECT of IPv6
    // traffic lands on [::1]:port). Best effort: hosts without IPv6 just skip it.
    let outbound_v6 = match opts.outbound {
        Some(a) if a.ip().is_unspecified() && a.is_ipv4() => {
            match bind_v6_only(a.port(), !workers.is_empty()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!("no IPv6 capture listener on [::]:{}: {e}", a.port());
                    None
                }
            }
        }
        _ => None,
    };
    let explicit = match opts.explicit {
        Some(a) => Some(bind_data(a, workers)?),
        None => None,
    };
    let mut gateway_ls = Vec::new();
    if let Some(g) = &opts.gateway {
        let ports: Vec<u16> = state
            .load()
            .snapshot
            .listeners
            .iter()
            .map(|l| l.port)
            .collect();
        for port in ports {
            let addr = g
                .map
                .get(&port)
                .copied()
                .unwrap_or(SocketAddr::new(g.bind, port));
            gateway_ls.push((port, bind_data(addr, workers)?));
        }
    }
    let admin_l = bind(opts.admin).await?;
    let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let (outbound_addr, explicit_addr) = (local(&outbound), local(&explicit));
    let admin_addr = admin_l.local_addr().map_err(|source| StartError::Bind {
        addr: opts.admin,
        source,
    })?;
    let gateway_addrs: Vec<(u16, SocketAddr)> = gateway_ls
        .iter()
        .filter_map(|(p, l)| Some((*p, l.local_addr().ok()?)))
        .collect();
    proxy.own_ports = [outbound_addr, explicit_addr, Some(admin_addr)]
        .into_iter()
        .flatten()
        .chain(gateway_addrs.iter().map(|(_, a)| *a))
        .map(|a| a.port())
        .collect();
    let proxy = Arc::new(proxy);
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown, _) = watch::channel(false);
    let active = Arc::new(Active::default());
    let mut tasks = Vec::new();

    let accept = {
        let (proxy, active, metrics, shutdown) = (
            proxy.clone(),
            active.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        move |l: TcpListener, kind: Accepted| {
            accept_loop(
                l,
                kind,
                proxy.clone(),
                active.clone(),
                metrics.clone(),
                shutdown.subscribe(),
            )
        }
    };
    for l in outbound.into_iter().chain(outbound_v6) {
        spawn_accepts(l, Accepted::Captured, &accept, workers, &mut tasks)?;
    }
    if let Some(l) = explicit {
        spawn_accepts(l, Accepted::Explicit, &accept, workers, &mut tasks)?;
    }
    let gateway_bound = Arc::new(std::sync::Mutex::new(
        gateway_addrs
            .iter()
            .copied()
            .collect::<std::collections::BTreeMap<_, _>>(),
    ));
    if let Some(g) = opts.gateway.clone() {
        let mut handles = std::collections::BTreeMap::new();
        for ((port, l), (_, addr)) in gateway_ls.into_iter().zip(&gateway_addrs) {
            // Every Gateway server port is served on every data-plane thread, the ports of
            // the first snapshot and those a reload adds alike.
            let mut loops = Vec::new();
            spawn_accepts(l, Accepted::Gateway(port), &accept, workers, &mut loops)?;
            handles.insert(port, (*addr, loops));
        }
        // Hot reload of Gateway servers: a snapshot that adds a server port gets a listener,
        // one that removes a port stops accepting there (its open connections finish).
        let mut stop = shutdown.subscribe();
        let state = state.clone();
        let poll = opts.source.poll;
        let bound = gateway_bound.clone();
        let accept = accept.clone();
        let workers = workers.to_vec();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Ok(mut b) = bound.lock() {
                    *b = handles.iter().map(|(p, (a, _))| (*p, *a)).collect();
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
                let want: std::collections::BTreeSet<u16> =
                    state.load().snapshot.listeners.iter().map(|l| l.port).collect();
                handles.retain(|port, (addr, loops)| {
                    let keep = want.contains(port);
                    if !keep {
                        loops.iter().for_each(|h| h.abort());
                        tracing::info!(target: "config", port, %addr, "Gateway server port removed: listener closed");
                    }
                    keep
                });
                for port in want {
                    if handles.contains_key(&port) {
                        continue;
                    }
                    let addr = g
                        .map
                        .get(&port)
                        .copied()
                        .unwrap_or(SocketAddr::new(g.bind, port));
                    // As at start: this runtime's socket, and one `SO_REUSEPORT` socket per
                    // worker thread on the same address.
                    let mut loops = Vec::new();
                    let listening = bind_data(addr, &workers).and_then(|l| {
                        let local = l.local_addr().unwrap_or(addr);
                        spawn_accepts(l, Accepted::Gateway(port), &accept, &workers, &mut loops)
                            .map(|()| local)
                    });
                    match listening {
                        Ok(local) => {
                            tracing::info!(target: "config", port, addr = %local, threads = loops.len(), "Gateway server port added: listening");
                            handles.insert(port, (local, loops));
                        }
                        // Retried on the next poll; the rest of the snapshot is served.
                        Err(e) => {
                            loops.iter().for_each(|h| h.abort());
                            tracing::warn!(target: "config", port, %addr, "cannot listen for the Gateway server port: {e}");
                        }
                    }
                }
            }
        }));
    }
    let admin = Arc::new(Admin {
        proxy: proxy.clone(),
        ready: ready.clone(),
        set_log_level,
        info: crate::inspect::ProxyInfo {
            started: std::time::SystemTime::now(),
            outbound: outbound_addr,
            explicit: explicit_addr,
            admin: Some(admin_addr),
            gateway: opts.gateway.is_some().then(|| gateway_bound.clone()),
            credentials: opts.source.credentials.clone(),
            data_runtime: Some(tokio::runtime::Handle::current()),
        },
    });
    // Control work (watching the configuration, the admin endpoint) runs on a runtime of its
    // own, in its own thread, as ztunnel does: a saturated data plane cannot delay a config
    // reload or a readiness probe, and control work never takes data-plane time.
    let admin_std = admin_l.into_std().map_err(|source| StartError::Bind {
        addr: admin_addr,
        source,
    })?;
    let source = opts.source.clone();
    let mesh = opts.source.mesh.clone();
    let identity_poll = opts.source.poll;
    let mut stop = shutdown.subscribe();
    std::thread::Builder::new()
        .name("egret-control".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("cannot start the control runtime");
                return;
            };
            rt.block_on(async move {
                let Ok(admin_l) = TcpListener::from_std(admin_std) else {
                    tracing::error!("cannot serve the admin endpoint");
                    return;
                };
                let identity = async {
                    match mesh {
                        Some(m) => m.store().clone().watch(identity_poll).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = identity => {}
                    _ = admin.serve(admin_l) => {}
                    _ = config::watch(source, state, metrics, baseline) => {}
                    _ = stop.changed() => {}
                }
            });
        })
        .map_err(|source| StartError::Bind {
            addr: admin_addr,
            source,
        })?;
    // The first snapshot is in and every listener is bound.
    ready.store(true, Ordering::Release);
    Ok(Running {
        proxy,
        ready,
        outbound: outbound_addr,
        explicit: explicit_addr,
        admin: admin_addr,
        gateway_bound,
        shutdown,
        active,
        drain: opts.drain,
        tasks,
    })
}

impl Running {
    /// Gateway role: the server ports listened on now (reloads add and remove them).
    pub fn gateway_ports(&self) -> Vec<(u16, SocketAddr)> {
        self.gateway_bound
            .lock()
            .map(|b| b.iter().map(|(p, a)| (*p, *a)).collect())
            .unwrap_or_default()
    }

    /// Stop accepting, fail readiness, let in-flight connections finish within the drain
    /// deadline. Returns how many were still open at the deadline.
    pub async fn drain(self) -> usize {
        self.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + self.drain;
        loop {
            let notified = self.active.zero.notified();
            let n = self.active.n.load(Ordering::Acquire);
            if n == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        self.active.n.load(Ordering::Acquire)
    }
}
