//! In-process end-to-end harness: a real sidecar (`egret_proxy::sidecar::start`) on loopback,
//! real test servers, and a "capture shim" standing in for iptables: a local listener whose
//! connections are served as if they had been redirected from a given original destination
//! (linkerd's MockOrigDst idea). No root needed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod mesh;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use egret_model::{ProxyIdentity, Role};
use egret_proxy::config::SourceConfig;
use egret_proxy::sidecar::{self, Running, SidecarOptions};
use egret_proxy::tls::CredentialStore;
use egret_testkit::server::{InProcessServer, TestServerConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

pub struct Sidecar {
    pub running: Running,
    pub dir: DirGuard,
    pub config: PathBuf,
}

/// Removes a temporary directory when dropped.
pub struct DirGuard(pub PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Another data-plane thread (shard `i`) with its own runtime, as `--concurrency` starts;
/// it runs until the sender is dropped or used.
pub fn worker_thread(i: u16) -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>) {
    let (htx, hrx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        egret_proxy::shard::set(i);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        htx.send(rt.handle().clone()).unwrap();
        rt.block_on(async {
            let _ = stopped.await;
        });
    });
    (hrx.recv().unwrap(), stop)
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("egret-e2e-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Sidecar {
    pub async fn start(yaml: &str) -> Sidecar {
        Self::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, labels: &[(&str, &str)]) -> Sidecar {
        Self::start_mesh(yaml, labels, None).await
    }

    /// A sidecar with a mesh identity (`--identity-dir`).
    pub async fn start_mesh(
        yaml: &str,
        labels: &[(&str, &str)],
        identity: Option<&std::path::Path>,
    ) -> Sidecar {
        Self::start_workers(yaml, labels, identity, &[]).await
    }

    /// A sidecar whose listeners are also served on `workers` (other threads' runtimes), as
    /// `egret sidecar --concurrency` runs.
    pub async fn start_workers(
        yaml: &str,
        labels: &[(&str, &str)],
        identity: Option<&std::path::Path>,
        workers: &[tokio::runtime::Handle],
    ) -> Sidecar {
        Self::start_full(yaml, labels, identity, workers, Default::default()).await
    }

    /// A sidecar with these downstream HTTP timeouts.
    pub async fn start_timeouts(
        yaml: &str,
        timeouts: egret_proxy::h1::timeouts::Timeouts,
    ) -> Sidecar {
        Self::start_full(yaml, &[], None, &[], timeouts).await
    }

    async fn start_full(
        yaml: &str,
        labels: &[(&str, &str)],
        identity: Option<&std::path::Path>,
        workers: &[tokio::runtime::Handle],
        timeouts: egret_proxy::h1::timeouts::Timeouts,
    ) -> Sidecar {
        let dir = temp_dir("sidecar");
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let opts = SidecarOptions {
            source: SourceConfig {
                paths: vec![config.clone()],
                mesh_config: None,
                mesh: identity.map(mesh_tls),
                proxy: ProxyIdentity {
                    role: Role::Sidecar,
                    namespace: "default".into(),
                    service_account: "sleep".into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
                credentials: CredentialStore {
                    dir: Some(dir.join("credentials")),
                },
                poll: Duration::from_millis(50),
                policy: Default::default(),
            },
            outbound: None,
            explicit: Some("127.0.0.1:0".parse().unwrap()),
            admin: "127.0.0.1:0".parse().unwrap(),
            drain: Duration::from_secs(2),
            detect_timeout: Duration::from_millis(200),
            timeouts,
            gateway: None,
        };
        let running = sidecar::start_on(opts, None, workers)
            .await
            .expect("sidecar starts");
        Sidecar {
            running,
            dir: DirGuard(dir),
            config,
        }
    }

    /// An egress gateway (same engine, gateway role) whose server ports `ports` listen on
    /// ephemeral loopback ports; `addr(port)` says where.
    pub async fn gateway(yaml: &str, labels: &[(&str, &str)], ports: &[u16]) -> Sidecar {
        Self::gateway_mesh(yaml, labels, ports, None, true).await
    }

    /// A gateway with a mesh identity (the tunnel from sidecars); `allow_direct` also admits
    /// clients without one.
    pub async fn gateway_mesh(
        yaml: &str,
        labels: &[(&str, &str)],
        ports: &[u16],
        identity: Option<&std::path::Path>,
        allow_direct: bool,
    ) -> Sidecar {
        Self::gateway_workers(yaml, labels, ports, identity, allow_direct, &[]).await
    }

    /// [`Sidecar::gateway_mesh`] whose listeners are also served on `workers`.
    pub async fn gateway_workers(
        yaml: &str,
        labels: &[(&str, &str)],
        ports: &[u16],
        identity: Option<&std::path::Path>,
        allow_direct: bool,
        workers: &[tokio::runtime::Handle],
    ) -> Sidecar {
        let dir = temp_dir("gateway");
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let opts = SidecarOptions {
            source: SourceConfig {
                paths: vec![config.clone()],
                mesh_config: None,
                mesh: identity.map(mesh_tls),
                proxy: ProxyIdentity {
                    role: Role::Gateway,
                    namespace: "istio-system".into(),
                    service_account: "istio-egressgateway-service-account".into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
                credentials: CredentialStore {
                    dir: Some(dir.join("credentials")),
                },
                poll: Duration::from_millis(50),
                policy: Default::default(),
            },
            outbound: None,
            explicit: None,
            admin: "127.0.0.1:0".parse().unwrap(),
            drain: Duration::from_secs(2),
            detect_timeout: Duration::from_millis(200),
            timeouts: Default::default(),
            gateway: Some(sidecar::GatewayListen {
                bind: "127.0.0.1".parse().unwrap(),
                map: ports
                    .iter()
                    .map(|p| (*p, "127.0.0.1:0".parse().unwrap()))
                    .collect(),
                forbidden: Vec::new(),
                allow_direct,
            }),
        };
        let running = sidecar::start_on(opts, None, workers)
            .await
            .expect("gateway starts");
        Sidecar {
            running,
            dir: DirGuard(dir),
            config,
        }
    }

    /// Where the gateway serves server port `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        self.running
            .gateway_ports()
            .into_iter()
            .find(|(p, _)| *p == port)
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("no gateway listener for port {port}"))
    }

    /// A local address whose connections the sidecar serves as captured traffic to `orig_dst`.
    pub async fn capture(&self, orig_dst: SocketAddr) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let proxy = self.running.proxy.clone();
        tokio::spawn(async move {
            while let Ok((s, peer)) = l.accept().await {
                tokio::spawn(proxy.clone().serve_captured(s, peer, orig_dst));
            }
        });
        addr
    }

    /// Rewrite the configuration and wait until the sidecar serves a new version (or the
    /// rejection counter moves).
    pub async fn reconfigure(&self, yaml: &str) {
        let before = self.running.proxy.state.load().snapshot.version.clone();
        let rejected = self.running.proxy.metrics.config_rejected.get();
        // Replace the file atomically, as Kubernetes ConfigMap updates do.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        for _ in 0..250 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.running.proxy.state.load().snapshot.version != before
                || self.running.proxy.metrics.config_rejected.get() != rejected
            {
                return;
            }
        }
        panic!(
            "configuration change not picked up: version {} (was {before}), loaded {}, rejected {}",
            self.running.proxy.state.load().snapshot.version,
            self.running.proxy.metrics.config_loaded.get(),
            self.running.proxy.metrics.config_rejected.get()
        );
    }

    pub fn explicit(&self) -> SocketAddr {
        self.running.explicit.unwrap()
    }
}

/// The mesh TLS of an identity directory written by `egret_identity::Ca`.
pub fn mesh_tls(dir: &std::path::Path) -> Arc<egret_proxy::mesh::MeshTls> {
    let store = egret_identity::IdentityStore::load(dir).expect("identity loads");
    Arc::new(egret_proxy::mesh::MeshTls::new(store).expect("mesh TLS"))
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 GET over a fresh connection to `addr`, with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut c = Client::connect(addr).await;
    c.request("GET", host, path, headers).await
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.try_request(method, host, path, headers).await.unwrap()
    }

    pub async fn try_request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::<Bytes>::new()).unwrap();
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.sender.send_request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        })
    }
}

/// Run curl with arguments; (exit code, stdout).
pub async fn curl(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// A plain-HTTP test server on an ephemeral loopback port.
pub fn server(name: &str) -> InProcessServer {
    InProcessServer::start(
        None,
        TestServerConfig::new(name).plain("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap()
}

/// Its plain-HTTP port.
pub fn port(s: &InProcessServer) -> u16 {
    s.plain_addrs()[0].port()
}

/// A STATIC ServiceEntry `host` on port 80 whose endpoint is the test server.
pub fn se(name: &str, host: &str, srv: &InProcessServer) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        port(srv)
    )
}
