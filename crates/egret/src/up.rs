//! `egret up [PATH]`: the whole egress path on one machine, without root, in one command.
//!
//! It creates a mesh CA and two SPIFFE identities, starts an egress gateway and a sidecar in
//! explicit-proxy mode reading PATH (default `examples/quickstart`), serves a local stand-in for
//! the external HTTPS API (its certificate from a second CA that only the gateway's
//! `credentialName` trusts, so TLS origination verifies it — secure by default, and offline),
//! then prints the commands to try. SIGINT/SIGTERM stops everything.
//!
//! The two proxies are child processes (this binary's own `gateway` and `sidecar`
//! subcommands), not tasks in this process: each has its own runtime, logging, admin port and
//! drain exactly as in production, their logs are separate files a user can `tail`, and the
//! printed commands behave the same against `egret up` as against proxies started by hand. The
//! stand-in API is a task here: it is not part of egret, only something to call.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use egret_identity::{Ca, DEFAULT_TRUST_DOMAIN};

const GATEWAY_NS: &str = "istio-system";
const GATEWAY_SA: &str = "istio-egressgateway-service-account";
const GATEWAY_LABELS: &str = "istio=egressgateway";

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Istio configuration (file or directory) for both proxies.
    #[arg(default_value = "examples/quickstart")]
    path: PathBuf,
    /// Keep the CA, identities and logs here (created if missing). Default: a temporary
    /// directory removed on exit.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The sidecar's explicit HTTP proxy port (the app's HTTP_PROXY).
    #[arg(long, default_value_t = 15080)]
    proxy_port: u16,
    /// The sidecar's admin port.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The gateway's mesh port: must be the endpoint of the gateway's ServiceEntry in PATH.
    #[arg(long, default_value_t = 15443)]
    gateway_port: u16,
    /// The Gateway server port (in PATH) that `--gateway-port` serves.
    #[arg(long, default_value_t = 443)]
    gateway_server_port: u16,
    /// The gateway's admin port.
    #[arg(long, default_value_t = 15100)]
    gateway_admin_port: u16,
    /// The stand-in API's host name; its CA is written for `credentialName: <host with '.'
    /// replaced by '-'>` (e.g. `api-example-test`).
    #[arg(long, default_value = "api.example.test")]
    api_host: String,
    /// The stand-in API's HTTPS port: must be the endpoint of the API's ServiceEntry in PATH.
    #[arg(long, default_value_t = 18443)]
    api_port: u16,
    /// The workload the sidecar belongs to.
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "sleep")]
    service_account: String,
}

pub fn run(a: UpArgs) -> ExitCode {
    match up(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("egret up: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The state directory, removed on drop when it is a temporary one.
struct State {
    dir: PathBuf,
    remove: bool,
}

impl Drop for State {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A proxy child process: SIGTERM (then SIGKILL after a grace period) when dropped.
struct Proxy {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proxy {
    fn spawn(name: &'static str, args: &[&str], log: &Path) -> Result<Proxy> {
        let exe = std::env::current_exe().context("locating the egret binary")?;
        let file = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Proxy {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// An error with the end of its log if it has exited.
    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the {} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn up(a: UpArgs) -> Result<ExitCode> {
    if !a.path.exists() {
        bail!(
            "{}: no such file or directory (run from the repository root, or give the configuration: egret up PATH)",
            a.path.display()
        );
    }
    // Refuse a broken configuration before starting anything: the proxies would refuse it too,
    // less visibly (in their logs).
    let (set, mut diags) = crate::load(std::slice::from_ref(&a.path), None)?;
    diags.extend(egret_model::check(&set));
    if diags.has_errors() {
        diags.sort();
        crate::print_diagnostics(&diags, false, true);
        bail!("{} has errors; nothing started", a.path.display());
    }

    let state = match &a.state_dir {
        Some(d) => State {
            dir: d.clone(),
            remove: false,
        },
        None => State {
            dir: std::env::temp_dir().join(format!("egret-up-{}", std::process::id())),
            remove: true,
        },
    };
    std::fs::create_dir_all(&state.dir)
        .with_context(|| format!("creating {}", state.dir.display()))?;
    let dir = std::fs::canonicalize(&state.dir)?;

    // The mesh: a CA (reused when --state-dir already holds one) and the two workloads.
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join(egret_identity::ca::CA_KEY_FILE).exists() {
        Ca::load(&ca_dir)?
    } else {
        Ca::init(&ca_dir, DEFAULT_TRUST_DOMAIN)?
    };
    let day = Duration::from_secs(24 * 3600);
    let gw_id = dir.join("gateway-id");
    ca.issue(GATEWAY_NS, GATEWAY_SA, day)?.write(&gw_id)?;
    let app_id = dir.join("sidecar-id");
    ca.issue(&a.namespace, &a.service_account, day)?
        .write(&app_id)?;

    // "The external API": its own CA, trusted by the gateway through credentialName only.
    let credential = a.api_host.replace('.', "-");
    let creds = dir.join("credentials");
    let api_ca_file = creds.join(&credential).join("ca.crt");
    let api = ApiCerts::generate(&a.api_host)?;
    std::fs::create_dir_all(creds.join(&credential))?;
    std::fs::write(&api_ca_file, &api.ca_pem)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let api_addr = SocketAddr::from(([127, 0, 0, 1], a.api_port));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(api_addr))
        .with_context(|| format!("the stand-in API cannot listen on {api_addr} (--api-port)"))?;
    let acceptor = api.acceptor()?;
    rt.spawn(serve_api(listener, acceptor, a.api_host.clone()));

    let path = a.path.display().to_string();
    let (gw_id, app_id, creds_s) = (
        gw_id.display().to_string(),
        app_id.display().to_string(),
        creds.display().to_string(),
    );
    let listen = format!("{}=127.0.0.1:{}", a.gateway_server_port, a.gateway_port);
    let (gw_admin, proxy_port, admin_port) = (
        a.gateway_admin_port.to_string(),
        a.proxy_port.to_string(),
        a.admin_port.to_string(),
    );
    #[rustfmt::skip]
    let mut gateway = Proxy::spawn("gateway", &[
        "gateway", "--config", &path,
        "--namespace", GATEWAY_NS, "--service-account", GATEWAY_SA, "--labels", GATEWAY_LABELS,
        "--identity-dir", &gw_id, "--credentials-dir", &creds_s,
        "--listen", &listen, "--admin-port", &gw_admin, "--drain-seconds", "1",
    ], &dir.join("gateway.log"))?;
    #[rustfmt::skip]
    let mut sidecar = Proxy::spawn("sidecar", &[
        "sidecar", "--config", &path,
        "--namespace", &a.namespace, "--service-account", &a.service_account,
        "--identity-dir", &app_id,
        "--outbound-port", "0", "--proxy-port", &proxy_port, "--admin-port", &admin_port,
        "--drain-seconds", "1",
    ], &dir.join("sidecar.log"))?;
    wait_ready(&mut gateway, a.gateway_admin_port)?;
    wait_ready(&mut sidecar, a.admin_port)?;

    print_instructions(&a, &dir, &api_ca_file);

    // Run until a signal, or until a proxy dies (then say why and stop the other).
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = int.recv() => return Ok(None),
                _ = tick.tick() => {
                    for p in [&mut gateway, &mut sidecar] {
                        if let Err(e) = p.check() {
                            return Ok(Some(e));
                        }
                    }
                }
            }
        }
    })?;
    eprintln!("egret up: stopping");
    sidecar.stop(Duration::from_secs(5));
    gateway.stop(Duration::from_secs(5));
    rt.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!("egret up: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Polls the admin `/ready` until it answers 200 (first snapshot loaded, listeners bound).
fn wait_ready(p: &mut Proxy, admin_port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        p.check()?;
        if http_get(addr, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the {} was not ready within 30 s (admin {addr}); see {}",
                p.name,
                p.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The commands to try. `crates/egret/tests/up.rs` runs exactly these lines (each `curl`/`grep`
/// line after a `# <what>` comment), so keep the shape: one comment line, one command line.
fn print_instructions(a: &UpArgs, dir: &Path, api_ca: &Path) {
    let proxy = format!("http://127.0.0.1:{}", a.proxy_port);
    let host = &a.api_host;
    let out = format!(
        "\
egret is up. Ctrl-C stops everything.
  sidecar   {ns}/{sa}: explicit proxy {proxy}, admin http://127.0.0.1:{admin}
  gateway   {GATEWAY_NS}/{GATEWAY_SA}: mesh port 127.0.0.1:{gw} (mutual TLS only), admin http://127.0.0.1:{gwadmin}
  {host} stand-in: https://127.0.0.1:{api} (its CA: {api_ca})
  state     {dir} (CA, identities, logs){removed}

Try:
  # allowed: sidecar -> mTLS tunnel -> gateway -> TLS origination -> the API (200)
  curl -sS -i -x {proxy} http://{host}/
  # denied by AuthorizationPolicy at the gateway: only GET is allowed (403 RBAC: access denied)
  curl -sS -i -x {proxy} -X POST http://{host}/
  # blocked by REGISTRY_ONLY at the sidecar: not a registered service (502)
  curl -sS -i -x {proxy} http://unknown.example.test/
  # metrics (Prometheus text) of the gateway; the sidecar's are on port {admin}
  curl -sS http://127.0.0.1:{gwadmin}/stats/prometheus
  # access logs (Istio's format, meshConfig.accessLogFile: /dev/stdout): one line per request on each proxy
  grep -h '^[[]' {dir}/gateway.log {dir}/sidecar.log
  # caller identities: the gateway's own log names the SPIFFE id behind every request
  grep -h ' access: ' {dir}/gateway.log
",
        ns = a.namespace,
        sa = a.service_account,
        admin = a.admin_port,
        gw = a.gateway_port,
        gwadmin = a.gateway_admin_port,
        api = a.api_port,
        api_ca = api_ca.display(),
        dir = dir.display(),
        removed = if a.state_dir.is_none() {
            " — removed on exit; --state-dir DIR keeps it"
        } else {
            ""
        },
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// The stand-in API's certificate (for `host`) and the CA that signed it.
struct ApiCerts {
    ca_pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl ApiCerts {
    fn generate(host: &str) -> Result<ApiCerts> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "egret up: stand-in external API CA");
        ca_params.distinguished_name = dn;
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf_key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![host.to_string()])?;
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name.push(DnType::CommonName, host);
        let cert = leaf.signed_by(&leaf_key, &ca)?;
        Ok(ApiCerts {
            ca_pem: ca.pem(),
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        })
    }

    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// The stand-in: answers every request with 200 and a line saying what it saw (method, path,
/// TLS version and SNI), so a response that came from it is unmistakable.
async fn serve_api(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    host: String,
) {
    let host: Arc<str> = host.into();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let (_, conn) = tls.get_ref();
            let version = match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
                _ => "TLS",
            };
            let seen = format!("{version}, SNI {}", conn.server_name().unwrap_or("-"));
            let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                let body = format!(
                    "hello from the {host} stand-in: {} {} over {seen}\n",
                    req.method(),
                    req.uri().path()
                );
                async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}
