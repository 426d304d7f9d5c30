//! `egret-loadgen`: the two load shapes `bench/run` needs that Debian's wrk and h2load lack.
//!
//! `rate`: open-loop HTTP/1.1 at a fixed request rate over keep-alive connections, latency
//! corrected for coordinated omission: request *i* is due at `start + i/rate`; a connection
//! takes the next due request when it is free. When the request is already overdue (every
//! connection was busy: the proxy is behind), its latency counts from when it was due, as
//! wrk2/HdrHistogram do; when the connection was idle and only our timer woke late (tokio's
//! timer has 1 ms resolution), from when it was sent — so the timer's slack is not charged to
//! the subject. Prints one JSON object.
//!
//! `idle`: opens N keep-alive connections, sends one request on each (or none with
//! `--no-request`), prints `ready N` and holds them until stdin closes — for RSS per idle
//! connection.
//!
//! `connect`: CONNECT tunnels through a forward proxy for `--duration` over `--connections`
//! concurrent workers, each tunnel: CONNECT, a TLS handshake with the origin through it
//! (verified against `--ca`), one request, close. Prints tunnels per second as JSON.
//!
//! One thread (a current-thread runtime): the generator must not take the subject's core.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

const USAGE: &str = "\
usage: egret-loadgen rate --addr IP:PORT --target PATH-OR-URL --host HOST --rate RPS
                          --connections N --duration SECONDS
       egret-loadgen idle --addr IP:PORT --target PATH-OR-URL --host HOST --connections N
                          [--no-request]
       egret-loadgen connect --addr PROXY-IP:PORT --host ORIGIN-HOST:PORT --ca PEM
                          [--sni NAME] --target PATH --connections N --duration SECONDS";

struct Opts {
    mode: String,
    addr: SocketAddr,
    request: Arc<[u8]>,
    rate: f64,
    connections: usize,
    duration: Duration,
    no_request: bool,
    host: String,
    target: String,
    ca: Option<std::path::PathBuf>,
    sni: Option<String>,
}

fn parse() -> Result<Opts> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().context(USAGE)?;
    let (mut addr, mut target, mut host) = (None, "/".to_string(), "localhost".to_string());
    let (mut ca, mut sni) = (None, None);
    let (mut rate, mut connections, mut duration, mut no_request) =
        (1000.0f64, 16usize, 10.0f64, false);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--addr" => addr = Some(val()?.parse().context("--addr")?),
            "--target" => target = val()?,
            "--host" => host = val()?,
            "--rate" => rate = val()?.parse().context("--rate")?,
            "--connections" => connections = val()?.parse().context("--connections")?,
            "--duration" => duration = val()?.parse().context("--duration")?,
            "--no-request" => no_request = true,
            "--ca" => ca = Some(val()?.into()),
            "--sni" => sni = Some(val()?),
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if !rate.is_finite()
        || rate <= 0.0
        || connections == 0
        || !duration.is_finite()
        || duration <= 0.0
    {
        bail!("--rate, --connections and --duration must be positive");
    }
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: egret-loadgen\r\n\r\n");
    Ok(Opts {
        mode,
        addr: addr.context("--addr is required")?,
        request: request.into_bytes().into(),
        rate,
        connections,
        duration: Duration::from_secs_f64(duration),
        no_request,
        host,
        target,
        ca,
        sni,
    })
}

fn main() -> Result<()> {
    let o = parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match o.mode.as_str() {
        "rate" => rt.block_on(rate(o)),
        "idle" => rt.block_on(idle(o)),
        "connect" => rt.block_on(connect(o)),
        m => bail!("unknown mode {m}\n{USAGE}"),
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn<S = TcpStream> {
    io: BufReader<S>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::with_capacity(16 * 1024, s),
            line: String::new(),
            body: Vec::new(),
        })
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn<S> {
    /// Sends the request and reads the response; returns its status.
    async fn call(&mut self, request: &[u8]) -> Result<u16> {
        self.io.get_mut().write_all(request).await?;
        self.line.clear();
        if self.io.read_line(&mut self.line).await? == 0 {
            bail!("connection closed");
        }
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            self.line.clear();
            if self.io.read_line(&mut self.line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().context("content-length")?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if chunked {
            loop {
                self.line.clear();
                self.io.read_line(&mut self.line).await?;
                let n = usize::from_str_radix(self.line.trim(), 16).context("chunk size")?;
                self.body.resize(n + 2, 0);
                self.io.read_exact(&mut self.body).await?;
                if n == 0 {
                    break;
                }
            }
        } else {
            self.body.resize(length, 0);
            self.io.read_exact(&mut self.body).await?;
        }
        Ok(status)
    }
}

async fn rate(o: Opts) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / o.rate);
    let total = (o.rate * o.duration.as_secs_f64()) as u64;
    let mut conns = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        conns.push(Conn::open(o.addr).await.context("connect")?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for mut c in conns {
        let (next, request) = (next.clone(), o.request.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat_us: Vec<u32> = Vec::new();
            let (mut ok, mut bad) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + period.mul_f64(i as f64);
                let now = Instant::now();
                let from = if now >= due {
                    due
                } else {
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                };
                match c.call(&request).await {
                    Ok(200) => ok += 1,
                    Ok(_) => bad += 1,
                    Err(_) => {
                        bad += 1;
                        break;
                    }
                }
                lat_us.push(from.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            (lat_us, ok, bad)
        }));
    }
    let (mut all, mut ok, mut bad) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, o, b) = t.await?;
        all.extend(l);
        ok += o;
        bad += b;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
    };
    let out = serde_json::json!({
        "rate": o.rate,
        "connections": o.connections,
        "requests": total,
        "ok": ok,
        "errors": bad + (total - ok - bad),
        "achieved_rps": (ok as f64) / elapsed,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": all.last().copied().unwrap_or(0),
    });
    println!("{out}");
    Ok(())
}

async fn idle(o: Opts) -> Result<()> {
    let mut conns = Vec::with_capacity(o.connections);
    for i in 0..o.connections {
        let mut c = Conn::open(o.addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        if !o.no_request {
            let status = c
                .call(&o.request)
                .await
                .with_context(|| format!("request {i}"))?;
            if status != 200 {
                bail!("request {i}: status {status}");
            }
        }
        conns.push(c);
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", conns.len())?;
        out.flush()?;
    }
    // Hold until bench/run closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
    drop(conns);
    Ok(())
}

/// One CONNECT tunnel: CONNECT, TLS with the origin through it, one request, close.
async fn tunnel(o: &Opts, tls: &tokio_rustls::TlsConnector) -> Result<()> {
    let mut s = TcpStream::connect(o.addr).await?;
    s.set_nodelay(true)?;
    let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", o.host);
    s.write_all(connect.as_bytes()).await?;
    // The proxy's answer ends with an empty line; nothing else comes before the origin's bytes.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            bail!("proxy closed the CONNECT");
        }
        head.push(byte[0]);
        if head.len() > 8192 {
            bail!("CONNECT answer too long");
        }
    }
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
    }
    let name = match &o.sni {
        Some(s) => s.as_str(),
        None => o.host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&o.host),
    };
    let server = rustls::pki_types::ServerName::try_from(name.to_string())?;
    let stream = tls.connect(server, s).await?;
    let mut c = Conn {
        io: BufReader::with_capacity(4096, stream),
        line: String::new(),
        body: Vec::new(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n",
        o.target
    );
    let status = c.call(request.as_bytes()).await?;
    if status != 200 {
        bail!("origin answered {status}");
    }
    Ok(())
}

async fn connect(o: Opts) -> Result<()> {
    let ca = o.ca.as_ref().context("--ca is required")?;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).with_context(|| format!("{}", ca.display()))?;
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let c: rustls::pki_types::CertificateDer = c.context("--ca")?;
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let o = Arc::new(o);
    let end = Instant::now() + o.duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let (o, tls) = (o.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut last_error = None;
            while Instant::now() < end {
                match tunnel(&o, &tls).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        bad += 1;
                        last_error = Some(e.to_string());
                    }
                }
            }
            (ok, bad, last_error)
        }));
    }
    let (mut ok, mut bad, mut last_error) = (0, 0, None);
    for t in tasks {
        let (o, b, e) = t.await?;
        ok += o;
        bad += b;
        last_error = last_error.or(e);
    }
    let out = serde_json::json!({
        "connections": o.connections,
        "requests": ok + bad,
        "ok": ok,
        "errors": bad,
        "last_error": last_error,
        "tunnels_per_s": ok as f64 / start.elapsed().as_secs_f64(),
    });
    println!("{out}");
    Ok(())
}
