//! egret-test-server: a small HTTP/1.1 + HTTP/2 server (plain and TLS) for behaviours nginx
//! cannot show. Routes:
//!
//! - `/delay/<secs>` — answers `200 "delayed <secs>"` after that many seconds (fractions ok).
//! - `/status/<code>` — answers with that status code.
//! - `/headers` — echoes the request line and headers as text (`name: value` per line).
//! - `/echo` — echoes the request body.
//! - anything else — `200 "hello from <name>\n"`.
//!
//! Every response carries `x-server-name`, `x-connection-id` (a per-server serial), and
//! `x-peer` (the client's address as the server saw it).
//!
//! Three ways to run it: [`TestServer::spawn`] runs the `egret-test-server` binary inside a
//! namespace with `ip netns exec` (its stdout, one line per accepted connection and per
//! request, is the log); [`InProcessServer::start`] binds inside a namespace (or on loopback)
//! and serves from a thread of the test process; the binary itself takes
//! `--name N [--listen ADDR]... [--tls-listen ADDR]... [--cert F --key F] [--client-ca F]`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::ca::CertPair;
use crate::netns::Netns;
use crate::process::{Process, TempDir, read_lossy, wait_until};

/// What a test server listens on and how it presents itself.
#[derive(Clone, Debug, Default)]
pub struct TestServerConfig {
    /// Appears in bodies and `x-server-name`.
    pub name: String,
    /// Plain HTTP (h1 and h2c prior knowledge) listeners. Port 0 is allowed in-process.
    pub plain: Vec<SocketAddr>,
    /// TLS listeners (ALPN h2, http/1.1); need `cert`.
    pub tls: Vec<SocketAddr>,
    /// Server certificate for the TLS listeners.
    pub cert: Option<CertPair>,
    /// When set, TLS clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<String>,
}

impl TestServerConfig {
    pub fn new(name: &str) -> TestServerConfig {
        TestServerConfig {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn plain(mut self, addr: SocketAddr) -> Self {
        self.plain.push(addr);
        self
    }

    pub fn tls(mut self, addr: SocketAddr, cert: CertPair) -> Self {
        self.tls.push(addr);
        self.cert = Some(cert);
        self
    }

    pub fn client_ca(mut self, ca_pem: &str) -> Self {
        self.client_ca_pem = Some(ca_pem.to_string());
        self
    }
}

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    name: Arc<str>,
    stats: Arc<Stats>,
    log: bool,
}

/// A rustls acceptor for `cert` (and client verification against `client_ca_pem`).
pub fn tls_acceptor(cert: &CertPair, client_ca_pem: Option<&str>) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.context("client CA PEM")?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).context("key PEM")?;
    let mut config = builder
        .with_single_cert(chain, key)
        .context("server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves on already-bound listeners until the future is dropped. `log` prints one line per
/// connection (`accept conn=N peer=.. local=.. tls=..`) and per request
/// (`request conn=N METHOD URI -> STATUS`) on stdout.
pub async fn serve(
    name: &str,
    plain: Vec<tokio::net::TcpListener>,
    tls: Vec<tokio::net::TcpListener>,
    acceptor: Option<TlsAcceptor>,
    stats: Arc<Stats>,
    log: bool,
) -> Result<()> {
    if !tls.is_empty() && acceptor.is_none() {
        bail!("TLS listeners need a certificate");
    }
    let name: Arc<str> = Arc::from(name);
    let mut tasks = tokio::task::JoinSet::new();
    let all = plain
        .into_iter()
        .map(|l| (l, None))
        .chain(tls.into_iter().map(|l| (l, acceptor.clone())));
    for (listener, acceptor) in all {
        let name = name.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let id = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                if log {
                    let local = stream
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    println!(
                        "accept conn={id} peer={peer} local={local} tls={}",
                        acceptor.is_some()
                    );
                }
                let conn = Arc::new(Conn {
                    id,
                    peer,
                    name: name.clone(),
                    stats: stats.clone(),
                    log,
                });
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match acceptor {
                        Some(acceptor) => {
                            let tls = match tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    if log {
                                        println!("tls-error conn={} {e}", conn.id);
                                    }
                                    return;
                                }
                                Err(_) => return,
                            };
                            serve_conn(TokioIo::new(tls), conn).await;
                        }
                        None => serve_conn(TokioIo::new(stream), conn).await,
                    }
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn serve_conn<I>(io: I, conn: Arc<Conn>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

async fn handle(req: Request<Incoming>, conn: Arc<Conn>) -> Response<Full<Bytes>> {
    conn.stats.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let mut resp = if let Some(secs) = path.strip_prefix("/delay/") {
        match secs.parse::<f64>() {
            Ok(s) if (0.0..=300.0).contains(&s) => {
                tokio::time::sleep(Duration::from_secs_f64(s)).await;
                text(StatusCode::OK, format!("delayed {secs}\n"))
            }
            _ => text(StatusCode::BAD_REQUEST, "bad delay\n"),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, format!("status {}\n", status.as_u16())),
            None => text(StatusCode::BAD_REQUEST, "bad status\n"),
        }
    } else if path == "/headers" {
        let mut s = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            s.push_str(&format!(
                "{}: {}\n",
                k,
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        text(StatusCode::OK, s)
    } else if path == "/echo" {
        let body = tokio::time::timeout(Duration::from_secs(30), req.into_body().collect()).await;
        match body {
            Ok(Ok(b)) => text(StatusCode::OK, b.to_bytes()),
            _ => text(StatusCode::BAD_REQUEST, "body error\n"),
        }
    } else {
        text(StatusCode::OK, format!("hello from {}\n", conn.name))
    };
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&conn.name) {
        h.insert("x-server-name", v);
    }
    h.insert("x-connection-id", http::HeaderValue::from(conn.id));
    if let Ok(v) = http::HeaderValue::from_str(&conn.peer.to_string()) {
        h.insert("x-peer", v);
    }
    if conn.log {
        println!(
            "request conn={} {method} {uri} -> {}",
            conn.id,
            resp.status().as_u16()
        );
    }
    resp
}

/// Runs the binary's command line (`--name`, `--listen`, `--tls-listen`, `--cert`, `--key`,
/// `--client-ca`) until killed.
pub fn run_from_args(args: &[String]) -> Result<()> {
    let mut name = "egret-test-server".to_string();
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--name" => name = value()?,
            "--listen" => plain.push(value()?.parse::<SocketAddr>().context("--listen")?),
            "--tls-listen" => tls.push(value()?.parse::<SocketAddr>().context("--tls-listen")?),
            "--cert" => cert = Some(std::fs::read_to_string(value()?).context("--cert")?),
            "--key" => key = Some(std::fs::read_to_string(value()?).context("--key")?),
            "--client-ca" => {
                client_ca = Some(std::fs::read_to_string(value()?).context("--client-ca")?)
            }
            other => bail!(
                "unknown argument {other}; usage: egret-test-server --name N [--listen ADDR]... \
                 [--tls-listen ADDR]... [--cert F --key F] [--client-ca F]"
            ),
        }
    }
    if plain.is_empty() && tls.is_empty() {
        bail!("nothing to listen on (--listen / --tls-listen)");
    }
    let acceptor = match (cert, key) {
        (Some(cert_pem), Some(key_pem)) => Some(tls_acceptor(
            &CertPair { cert_pem, key_pem },
            client_ca.as_deref(),
        )?),
        (None, None) if tls.is_empty() => None,
        _ => bail!("--tls-listen needs both --cert and --key"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bind = |addrs: Vec<SocketAddr>| async move {
            let mut out = Vec::new();
            for a in addrs {
                out.push(
                    tokio::net::TcpListener::bind(a)
                        .await
                        .with_context(|| format!("bind {a}"))?,
                );
            }
            anyhow::Ok(out)
        };
        let plain = bind(plain).await?;
        let tls = bind(tls).await?;
        println!("listening name={name}");
        serve(
            &name,
            plain,
            tls,
            acceptor,
            Arc::new(Stats::default()),
            true,
        )
        .await
    })
}

/// Where the `egret-test-server` binary is: `$EGRET_TEST_SERVER`, else next to the running
/// test executable (`target/<profile>/`, which `cargo test` fills for workspace members with
/// binaries; otherwise build it with `cargo build -p egret-testkit --bins`).
pub fn test_server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("EGRET_TEST_SERVER") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("EGRET_TEST_SERVER={} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(|p| p.to_path_buf());
    for _ in 0..3 {
        let Some(d) = dir else { break };
        let candidate = d.join("egret-test-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(|p| p.to_path_buf());
    }
    bail!(
        "egret-test-server binary not found near {}; build it with \
         `cargo build -p egret-testkit --bins` or set EGRET_TEST_SERVER",
        exe.display()
    )
}

/// The `egret-test-server` binary running inside a namespace; stopped on drop.
#[derive(Debug)]
pub struct TestServer {
    process: Process,
    config: TestServerConfig,
    dir: TempDir,
}

impl TestServer {
    /// Spawns the binary in `netns` and waits until every listener accepts connections.
    pub fn spawn(netns: &Netns, config: &TestServerConfig) -> Result<TestServer> {
        let bin = test_server_binary()?;
        let dir = TempDir::new(&format!("server-{}", config.name))?;
        let d = dir.path();
        let mut args: Vec<String> = vec!["--name".into(), config.name.clone()];
        for a in &config.plain {
            args.extend(["--listen".into(), a.to_string()]);
        }
        for a in &config.tls {
            args.extend(["--tls-listen".into(), a.to_string()]);
        }
        if let Some(cert) = &config.cert {
            std::fs::write(d.join("cert.pem"), &cert.cert_pem)?;
            std::fs::write(d.join("key.pem"), &cert.key_pem)?;
            args.extend(["--cert".into(), d.join("cert.pem").display().to_string()]);
            args.extend(["--key".into(), d.join("key.pem").display().to_string()]);
        }
        if let Some(ca) = &config.client_ca_pem {
            std::fs::write(d.join("client-ca.pem"), ca)?;
            args.extend([
                "--client-ca".into(),
                d.join("client-ca.pem").display().to_string(),
            ]);
        }
        let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut process = netns.spawn(&bin.to_string_lossy(), &args_ref, &d.join("server.log"))?;
        for addr in config.plain.iter().chain(&config.tls) {
            let ready = wait_until(
                &format!("egret-test-server on {addr}"),
                Duration::from_secs(10),
                || {
                    process.check_running()?;
                    Ok(netns
                        .connect_tcp(*addr, Duration::from_millis(500))
                        .ok()
                        .map(|_| ()))
                },
            );
            if let Err(e) = ready {
                bail!("{e:#}\nserver log:\n{}", process.log());
            }
        }
        Ok(TestServer {
            process,
            config: config.clone(),
            dir,
        })
    }

    pub fn config(&self) -> &TestServerConfig {
        &self.config
    }

    /// stdout of the server: `accept conn=..` and `request conn=..` lines.
    pub fn log(&self) -> String {
        read_lossy(self.process.log_path())
    }

    /// Connections accepted so far (including the readiness probes' one per listener).
    pub fn connections(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("accept "))
            .count()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("request "))
            .count()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The server running on a thread of the test process, its listeners bound inside a
/// namespace (or wherever the addresses are, for `None`). Stopped on drop.
#[derive(Debug)]
pub struct InProcessServer {
    stats: Arc<Stats>,
    plain: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessServer {
    pub fn start(netns: Option<&Netns>, config: TestServerConfig) -> Result<InProcessServer> {
        let acceptor = match (&config.cert, config.tls.is_empty()) {
            (Some(cert), _) => Some(tls_acceptor(cert, config.client_ca_pem.as_deref())?),
            (None, true) => None,
            (None, false) => bail!("TLS listeners need a certificate"),
        };
        let bind = |addrs: &[SocketAddr]| -> Result<Vec<std::net::TcpListener>> {
            addrs
                .iter()
                .map(|a| {
                    let l = match netns {
                        Some(ns) => ns.bind_tcp(*a)?,
                        None => {
                            std::net::TcpListener::bind(a).with_context(|| format!("bind {a}"))?
                        }
                    };
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect()
        };
        let plain = bind(&config.plain)?;
        let tls = bind(&config.tls)?;
        let addrs = |ls: &[std::net::TcpListener]| -> Result<Vec<SocketAddr>> {
            ls.iter().map(|l| Ok(l.local_addr()?)).collect()
        };
        let (plain_addrs, tls_addrs) = (addrs(&plain)?, addrs(&tls)?);
        let stats = Arc::new(Stats::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stats2 = stats.clone();
        let name = config.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{name}"))
            .spawn(move || {
                rt.block_on(async move {
                    let conv = |ls: Vec<std::net::TcpListener>| {
                        ls.into_iter()
                            .filter_map(|l| tokio::net::TcpListener::from_std(l).ok())
                            .collect::<Vec<_>>()
                    };
                    let (plain, tls) = (conv(plain), conv(tls));
                    tokio::select! {
                        _ = serve(&name, plain, tls, acceptor, stats2, false) => {}
                        _ = rx => {}
                    }
                });
            })?;
        Ok(InProcessServer {
            stats,
            plain: plain_addrs,
            tls: tls_addrs,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Bound plain addresses (with the real port when 0 was asked for).
    pub fn plain_addrs(&self) -> &[SocketAddr] {
        &self.plain
    }

    /// Bound TLS addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
