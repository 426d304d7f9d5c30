//! dnsmasq answering `.test` names inside a namespace, plus a tiny DNS client for checks.
//!
//! Exact names are served from a hosts file (several addresses per name are returned
//! together, and [`Dns::set_records`] changes them at run time: rewrite + SIGHUP). A name
//! written `*.zone.test` becomes `--address=/zone.test/<ip>`: `zone.test` and every name
//! below it (static for the life of the server). Every other `.test` name gets NXDOMAIN;
//! nothing is ever forwarded anywhere (`--no-resolv`, no servers).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::netns::Netns;
use crate::process::{Process, TempDir, preflight, read_lossy, wait_until};

/// An owned DNS record set entry.
#[derive(Clone, Debug)]
pub struct DnsRecord {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

impl DnsRecord {
    pub fn new(name: &str, addrs: &[IpAddr]) -> DnsRecord {
        DnsRecord {
            name: name.to_string(),
            addrs: addrs.to_vec(),
        }
    }
}

/// Options for [`Dns::start_with`].
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// TTL (seconds) of every answer. Default 1, so resolvers notice changes quickly.
    pub ttl: u32,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions { ttl: 1 }
    }
}

/// A running dnsmasq; stopped on drop.
#[derive(Debug)]
pub struct Dns {
    process: Process,
    ip: IpAddr,
    netns: String,
    hosts: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Dns {
    /// Starts dnsmasq in `netns` listening on `ip`:53 (the address must already be
    /// configured there) with `records`, and waits until it answers.
    pub fn start(netns: &Netns, ip: IpAddr, records: &[(&str, &[IpAddr])]) -> Result<Dns> {
        Dns::start_with(netns, ip, records, DnsOptions::default())
    }

    /// [`Dns::start`] with options.
    pub fn start_with(
        netns: &Netns,
        ip: IpAddr,
        records: &[(&str, &[IpAddr])],
        options: DnsOptions,
    ) -> Result<Dns> {
        preflight(&["dnsmasq"])?;
        let dir = TempDir::new("dnsmasq")?;
        let hosts = dir.path().join("hosts");
        let log = dir.path().join("dnsmasq.log");
        std::fs::write(&hosts, hosts_file(records)).context("write dnsmasq hosts file")?;
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            format!("--addn-hosts={}", hosts.display()),
            format!("--listen-address={ip}"),
            "--bind-interfaces".into(),
            "--port=53".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--local=/test/".into(),
            format!("--local-ttl={}", options.ttl),
            format!("--auth-ttl={}", options.ttl),
            format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()),
            format!("--log-facility={}", log.display()),
            "--log-queries".into(),
        ];
        for (name, ips) in records {
            if let Some(zone) = name.strip_prefix("*.") {
                for ip in *ips {
                    args.push(format!("--address=/{zone}/{ip}"));
                }
            }
        }
        let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut process = netns.spawn("dnsmasq", &args_ref, &dir.path().join("stdout.log"))?;
        // Ready when it answers (any rcode) from inside its own namespace.
        let server = SocketAddr::new(ip, 53);
        let probe = wait_until("dnsmasq to answer", Duration::from_secs(10), || {
            process.check_running()?;
            netns
                .run_in(|| query(server, "egret-probe.test", QTYPE_A))?
                .map(|_| Some(()))
        });
        if let Err(e) = probe {
            bail!("{e:#}\ndnsmasq log:\n{}", read_lossy(&log));
        }
        Ok(Dns {
            process,
            ip,
            netns: netns.name().to_string(),
            hosts,
            log,
            dir,
        })
    }

    /// The address it listens on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The namespace it runs in.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// Replaces the exact-name records (wildcards are static) and waits until dnsmasq has
    /// re-read them (SIGHUP also clears its cache).
    pub fn set_records(&self, records: &[(&str, &[IpAddr])]) -> Result<()> {
        let needle = format!("read {}", self.hosts.display());
        let before = self.log().matches(&needle).count();
        std::fs::write(&self.hosts, hosts_file(records)).context("rewrite hosts file")?;
        self.process.signal(Signal::SIGHUP)?;
        wait_until(
            "dnsmasq to re-read its hosts file",
            Duration::from_secs(10),
            || Ok((self.log().matches(&needle).count() > before).then_some(())),
        )
    }

    /// dnsmasq's log (with `--log-queries`: one line per query).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// How many queries for `name` dnsmasq has logged.
    pub fn query_count(&self, name: &str) -> usize {
        let needle = format!(" {name} from ");
        self.log()
            .lines()
            .filter(|l| l.contains("query[") && l.contains(&needle))
            .count()
    }

    /// The temp directory holding its config and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn hosts_file(records: &[(&str, &[IpAddr])]) -> String {
    let mut s = String::new();
    for (name, ips) in records {
        if name.starts_with("*.") {
            continue;
        }
        for ip in *ips {
            s.push_str(&format!("{ip} {name}\n"));
        }
    }
    s
}

const QTYPE_A: u16 = 1;
const QTYPE_AAAA: u16 = 28;

/// Asks `server` for the A records of `name` from inside `from`. NXDOMAIN / no data is an
/// empty list; no answer within 2 s is an error.
pub fn resolve_a(from: &Netns, server: IpAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let addr = SocketAddr::new(server, 53);
    let ips = from.run_in(|| query(addr, name, QTYPE_A))??;
    Ok(ips
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// Asks `server` for the AAAA records of `name` from inside `from`.
pub fn resolve_aaaa(from: &Netns, server: IpAddr, name: &str) -> Result<Vec<IpAddr>> {
    let addr = SocketAddr::new(server, 53);
    from.run_in(|| query(addr, name, QTYPE_AAAA))?
}

/// One UDP DNS query; returns the addresses in the answer section.
fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Vec<IpAddr>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("bind UDP socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    static NEXT_ID: AtomicU16 = AtomicU16::new(1);
    let id: u16 = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("bad DNS name {name:?}");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    loop {
        sock.send_to(&q, server)
            .with_context(|| format!("send DNS query to {server}"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                return parse_answers(&buf[..n]);
            }
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("no DNS answer from {server}"));
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("no DNS answer from {server}");
        }
    }
}

fn skip_name(msg: &[u8], mut i: usize) -> Result<usize> {
    loop {
        let Some(&len) = msg.get(i) else {
            bail!("truncated DNS name")
        };
        if len == 0 {
            return Ok(i + 1);
        }
        if len & 0xC0 == 0xC0 {
            return Ok(i + 2);
        }
        i += 1 + len as usize;
    }
}

fn parse_answers(msg: &[u8]) -> Result<Vec<IpAddr>> {
    let be16 = |i: usize| -> Result<u16> {
        match msg.get(i..i + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => bail!("truncated DNS message"),
        }
    };
    let qd = be16(4)?;
    let an = be16(6)?;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let ty = be16(i)?;
        let rdlen = be16(i + 8)? as usize;
        let rdata = msg
            .get(i + 10..i + 10 + rdlen)
            .context("truncated DNS record")?;
        match (ty, rdlen) {
            (QTYPE_A, 4) => out.push(IpAddr::from([rdata[0], rdata[1], rdata[2], rdata[3]])),
            (QTYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                out.push(IpAddr::from(b));
            }
            _ => {}
        }
        i += 10 + rdlen;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_answers() -> Result<()> {
        // id, flags, qd=1, an=2; question api.test A IN; two answers with name pointers.
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(&[
            3, b'a', b'p', b'i', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
        ]);
        for last in [10u8, 11] {
            m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 203, 0, 113, last]);
        }
        let ips = parse_answers(&m)?;
        assert_eq!(
            ips,
            vec![
                IpAddr::from([203, 0, 113, 10]),
                IpAddr::from([203, 0, 113, 11])
            ]
        );
        Ok(())
    }

    #[test]
    fn hosts_file_skips_wildcards() {
        let a: &[IpAddr] = &[IpAddr::from([203, 0, 113, 10])];
        assert_eq!(
            hosts_file(&[("api.test", a), ("*.w.test", a)]),
            "203.0.113.10 api.test\n"
        );
    }
}
