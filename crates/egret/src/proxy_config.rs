//! `egret proxy-config`: what a running proxy is serving, read from its admin endpoint
//! (`istioctl proxy-config`'s views: listeners, routes, clusters, endpoints, secrets, plus the
//! config version). Tables are aligned like istioctl's; `-o json` prints the admin JSON.
//! The JSON types are `egret_proxy::inspect`'s; this file only fetches and renders.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use egret_proxy::inspect::{
    CertView, CertsView, ClustersView, ListenersView, RoutesView, ServerInfo,
};
use serde::de::DeserializeOwned;

#[derive(Args, Debug)]
pub struct ProxyConfigArgs {
    /// What to show.
    #[arg(value_enum)]
    view: View,
    /// The proxy's admin endpoint, `host:port`.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: String,
    /// `table` (aligned columns) or `json` (the admin endpoint's JSON).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum View {
    #[value(alias = "listener")]
    Listeners,
    #[value(alias = "route")]
    Routes,
    #[value(alias = "cluster")]
    Clusters,
    #[value(alias = "endpoint")]
    Endpoints,
    #[value(alias = "secret", alias = "certs")]
    Secrets,
    Version,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// How long to wait for the admin endpoint (`/clusters` resolves DNS names, 2 s at most each).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(a: ProxyConfigArgs) -> ExitCode {
    match render(&a) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret proxy-config: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn render(a: &ProxyConfigArgs) -> Result<String> {
    let admin = Admin::new(&a.admin)?;
    let path = |v: View| match v {
        View::Listeners => "/listeners",
        View::Routes => "/routes",
        View::Clusters | View::Endpoints => "/clusters",
        View::Secrets => "/certs",
        View::Version | View::All => "/server_info",
    };
    if a.output == Output::Json {
        if a.view != View::All {
            let body = admin.get(path(a.view))?;
            // Re-indent so the output is the same whatever the server's formatting.
            let v: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{}: not JSON", path(a.view)))?;
            return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
        }
        let mut all = serde_json::Map::new();
        for (key, p) in [
            ("server_info", "/server_info"),
            ("listeners", "/listeners"),
            ("routes", "/routes"),
            ("clusters", "/clusters"),
            ("certs", "/certs"),
        ] {
            let v: serde_json::Value =
                serde_json::from_str(&admin.get(p)?).with_context(|| format!("{p}: not JSON"))?;
            all.insert(key.to_string(), v);
        }
        return Ok(format!("{}\n", serde_json::to_string_pretty(&all)?));
    }
    let now = SystemTime::now();
    Ok(match a.view {
        View::Listeners => listeners_table(&admin.json("/listeners")?),
        View::Routes => routes_table(&admin.json("/routes")?),
        View::Clusters => clusters_table(&admin.json("/clusters")?),
        View::Endpoints => endpoints_table(&admin.json("/clusters")?),
        View::Secrets => secrets_table(&admin.json("/certs")?, now),
        View::Version => version_table(&admin.json("/server_info")?),
        View::All => {
            let clusters: ClustersView = admin.json("/clusters")?;
            [
                version_table(&admin.json("/server_info")?),
                listeners_table(&admin.json("/listeners")?),
                routes_table(&admin.json("/routes")?),
                clusters_table(&clusters),
                endpoints_table(&clusters),
                secrets_table(&admin.json("/certs")?, now),
            ]
            .join("\n")
        }
    })
}

// ===== fetching =====

/// The admin endpoint: one plain HTTP/1.1 GET per view (it is loopback-only by default and
/// speaks nothing else).
struct Admin {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Admin {
    fn new(admin: &str) -> Result<Admin> {
        let host = admin
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let addrs: Vec<SocketAddr> = host
            .to_socket_addrs()
            .with_context(|| format!("--admin {admin:?}: expected HOST:PORT"))?
            .collect();
        if addrs.is_empty() {
            bail!("--admin {admin:?}: no address");
        }
        Ok(Admin { host, addrs })
    }

    fn json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.get(path)?;
        serde_json::from_str(&body).with_context(|| {
            format!(
                "{}{path}: unexpected answer (is this an egret admin endpoint of the same version?)",
                self.host
            )
        })
    }

    fn get(&self, path: &str) -> Result<String> {
        let mut last = None;
        let mut stream = None;
        for a in &self.addrs {
            match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut s) = stream else {
            let why = last.map_or_else(|| "no address".to_string(), |e| e.to_string());
            bail!(
                "cannot reach the admin endpoint at {}: {why} (is the proxy running? see --admin)",
                self.host
            );
        };
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_write_timeout(Some(READ_TIMEOUT))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.host
        )
        .with_context(|| format!("{}{path}: send", self.host))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("{}{path}: no complete answer", self.host))?;
        let (status, body) =
            parse_response(&raw).with_context(|| format!("{}{path}", self.host))?;
        if status == 404 {
            bail!(
                "{}{path}: not found (the proxy's admin endpoint has no such view; is it an older egret?)",
                self.host
            );
        }
        if status != 200 {
            bail!("{}{path}: HTTP {status}: {}", self.host, body.trim());
        }
        Ok(body)
    }
}

/// Status and body of an HTTP/1.1 response read to EOF (`Connection: close`): Content-Length
/// or chunked.
fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response"))?;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("not an HTTP response"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => bail!("body cut short: {} of {n} bytes", rest.len()),
            None => rest.to_vec(),
        }
    };
    Ok((
        status,
        String::from_utf8(body).context("body is not UTF-8")?,
    ))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or_else(|| anyhow!("bad chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("chunked body cut short");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ===== tables =====

/// Columns padded to the widest cell plus five spaces, as istioctl's tabwriter does; no
/// trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            l.push_str(c);
            let w = widths.get(i).copied().unwrap_or(0);
            l.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(c.chars().count()) + 5,
            ));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn version_table(s: &ServerInfo) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let rows = vec![
        vec!["EGRET VERSION".into(), s.egret_version.clone()],
        vec!["ROLE".into(), s.role.clone()],
        vec!["NAMESPACE".into(), s.namespace.clone()],
        vec!["SERVICE ACCOUNT".into(), s.service_account.clone()],
        vec![
            "LABELS".into(),
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
        ],
        vec!["SPIFFE ID".into(), opt(&s.spiffe_id)],
        vec!["CONFIG VERSION".into(), s.config_version.clone()],
        vec!["CONFIG LOADED AT".into(), s.config_loaded_at.clone()],
        vec!["CONFIG LOADS".into(), s.config_loads.to_string()],
        vec![
            "REJECTED RELOADS".into(),
            s.config_rejected_reloads.to_string(),
        ],
        vec!["OUTBOUND POLICY".into(), opt(&s.outbound_traffic_policy)],
        vec!["STARTED AT".into(), s.started_at.clone()],
        vec!["UPTIME".into(), human(s.uptime_seconds as i64)],
    ];
    table(&["FIELD", "VALUE"], &rows)
}

fn listeners_table(v: &ListenersView) -> String {
    let mut rows = Vec::new();
    for l in &v.listeners {
        let address = opt(&l.address);
        for c in &l.chains {
            rows.push(vec![
                l.name.clone(),
                address.clone(),
                l.port.to_string(),
                l.kind.clone(),
                l.protocol.clone(),
                c.matches.clone(),
                c.destination.clone(),
            ]);
        }
        if l.chains.is_empty() {
            rows.push(vec![
                l.name.clone(),
                address,
                l.port.to_string(),
                l.kind.clone(),
                l.protocol.clone(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    table(
        &[
            "NAME",
            "ADDRESS",
            "PORT",
            "KIND",
            "PROTOCOL",
            "MATCH",
            "DESTINATION",
        ],
        &rows,
    )
}

/// Like istioctl: the first domains, then `+ N more...`.
fn domains(d: &[String]) -> String {
    const SHOWN: usize = 2;
    if d.len() <= SHOWN + 1 {
        return d.join(", ");
    }
    format!("{} + {} more...", d[..SHOWN].join(", "), d.len() - SHOWN)
}

fn destinations(ds: &[egret_proxy::inspect::DestinationView]) -> String {
    match ds {
        [] => "-".into(),
        [one] => one.cluster.clone(),
        many => many
            .iter()
            .map(|d| format!("{} ({})", d.cluster, d.weight))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn routes_table(v: &RoutesView) -> String {
    let mut rows = Vec::new();
    for rc in &v.routes {
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                let dest = match r.action.as_str() {
                    "route" => destinations(&r.destinations),
                    other => format!("{other} {}", r.detail.clone().unwrap_or_default()),
                };
                rows.push(vec![
                    rc.name.clone(),
                    vh.name.clone(),
                    domains(&vh.domains),
                    r.matches.clone(),
                    dest,
                    r.name.clone(),
                ]);
            }
        }
        for (kind, list) in [("tls", &rc.tls_routes), ("tcp", &rc.tcp_routes)] {
            for r in list {
                rows.push(vec![
                    rc.name.clone(),
                    kind.into(),
                    "-".into(),
                    r.matches.clone(),
                    destinations(&r.destinations),
                    r.source.clone(),
                ]);
            }
        }
    }
    table(
        &[
            "NAME",
            "VHOST NAME",
            "DOMAINS",
            "MATCH",
            "DESTINATION",
            "ROUTE",
        ],
        &rows,
    )
}

fn clusters_table(v: &ClustersView) -> String {
    let rows: Vec<Vec<String>> = v
        .clusters
        .iter()
        .map(|c| {
            let mut tls = c.tls.mode.clone();
            if c.tls.auto_mtls {
                tls.push_str(" (auto)");
            }
            if c.tls.unusable.is_some() || !c.tls.ready {
                tls.push_str(" (unusable)");
            }
            vec![
                c.host.clone(),
                c.port.to_string(),
                c.subset.clone().unwrap_or_else(|| "-".into()),
                c.kind.clone(),
                c.lb_policy.clone(),
                tls,
                opt(&c.destination_rule),
                c.endpoints.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "TYPE",
            "LB POLICY",
            "TLS",
            "DESTINATION RULE",
            "ENDPOINTS",
        ],
        &rows,
    )
}

fn endpoints_table(v: &ClustersView) -> String {
    let mut rows = Vec::new();
    for c in &v.clusters {
        for e in &c.endpoints {
            rows.push(vec![
                e.address.clone(),
                e.health.clone(),
                opt(&e.hostname),
                opt(&e.locality),
                e.weight.to_string(),
                c.name.clone(),
                opt(&e.resolution_error),
            ]);
        }
    }
    table(
        &[
            "ENDPOINT", "STATUS", "HOSTNAME", "LOCALITY", "WEIGHT", "CLUSTER", "NOTE",
        ],
        &rows,
    )
}

fn secrets_table(v: &CertsView, now: SystemTime) -> String {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let row = |name: String, kind: &str, c: &CertView| {
        let expired = c.not_after_unix <= now;
        let identity = c.sans.first().cloned().unwrap_or_else(|| c.subject.clone());
        vec![
            name,
            kind.to_string(),
            if expired { "EXPIRED" } else { "ACTIVE" }.to_string(),
            (!expired).to_string(),
            identity,
            c.serial.clone(),
            c.not_after.clone(),
            c.not_before.clone(),
            if expired {
                format!("expired {} ago", human(-c.seconds_until_expiry))
            } else {
                human(c.seconds_until_expiry)
            },
        ]
    };
    let mut rows = Vec::new();
    if let Some(w) = &v.workload {
        rows.push(row("default".into(), "Cert Chain", &w.certificate));
    }
    for r in &v.trust_bundle {
        rows.push(row("ROOTCA".into(), "CA", r));
    }
    for c in &v.client_certificates {
        match &c.certificate {
            Some(cert) => rows.push(row(c.name.clone(), "Cert Chain", cert)),
            None => rows.push(vec![
                c.name.clone(),
                "Cert Chain".into(),
                format!("ERROR: {}", c.error.clone().unwrap_or_default()),
                "false".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    table(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "IDENTITY",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
            "EXPIRES IN",
        ],
        &rows,
    )
}

/// `3d4h`, `5h2m`, `42s`: the two largest units.
fn human(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{}s", s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use egret_proxy::inspect::{
        ChainView, ClientCertView, ClusterView, DestinationView, EndpointView, ListenerView,
        RouteConfigView, RouteView, TlsView, VirtualHostView,
    };

    use super::*;

    /// A rendered row's cells (columns are separated by at least five spaces).
    fn cells(line: &str) -> Vec<&str> {
        line.split("     ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn table_columns_are_aligned_without_trailing_spaces() {
        let t = table(
            &["NAME", "PORT"],
            &[
                vec!["a".into(), "80".into()],
                vec!["ünïcode-long".into(), "".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME             PORT");
        assert_eq!(lines[1], "a                80");
        assert_eq!(lines[2], "ünïcode-long");
        // The second column starts at the same character offset on every line.
        let col = |l: &str| l.chars().position(|c| c == 'P' || c == '8');
        assert_eq!(col(lines[0]), col(lines[1]));
    }

    #[test]
    fn response_parsing_handles_length_chunked_and_errors() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        let (s, b) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (200, "{\"a\":1}"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn routes_table_shows_matches_and_destinations() {
        let v = RoutesView {
            config_version: "v1".into(),
            routes: vec![RouteConfigView {
                name: "80".into(),
                port: 80,
                protocol: "HTTP".into(),
                virtual_hosts: vec![VirtualHostView {
                    name: "api.example.test:80".into(),
                    domains: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                    routes: vec![RouteView {
                        name: "default.api.0".into(),
                        matches: "/v1*".into(),
                        action: "route".into(),
                        destinations: vec![
                            DestinationView {
                                cluster: "outbound|80|v1|api".into(),
                                weight: 90,
                            },
                            DestinationView {
                                cluster: "outbound|80|v2|api".into(),
                                weight: 10,
                            },
                        ],
                        detail: None,
                        timeout: None,
                        retry_attempts: 2,
                    }],
                }],
                tls_routes: vec![],
                tcp_routes: vec![],
            }],
        };
        let t = routes_table(&v);
        assert_eq!(
            cells(t.lines().nth(1).unwrap()),
            vec![
                "80",
                "api.example.test:80",
                "a, b + 2 more...",
                "/v1*",
                "outbound|80|v1|api (90), outbound|80|v2|api (10)",
                "default.api.0"
            ]
        );
    }

    #[test]
    fn listeners_endpoints_and_secrets_tables() {
        let l = ListenersView {
            config_version: "v".into(),
            listeners: vec![ListenerView {
                name: "0.0.0.0_443".into(),
                kind: "port".into(),
                address: None,
                port: 443,
                protocol: "TLS".into(),
                chains: vec![ChainView {
                    matches: "SNI: a.test".into(),
                    destination: "Cluster: outbound|443||a.test".into(),
                }],
            }],
        };
        let t = listeners_table(&l);
        assert_eq!(
            cells(t.lines().nth(1).unwrap()),
            vec![
                "0.0.0.0_443",
                "-",
                "443",
                "port",
                "TLS",
                "SNI: a.test",
                "Cluster: outbound|443||a.test"
            ]
        );

        let c = ClustersView {
            config_version: "v".into(),
            clusters: vec![ClusterView {
                name: "outbound|80||d.test".into(),
                host: "d.test".into(),
                port: 80,
                subset: None,
                service: Some("default/d".into()),
                destination_rule: None,
                location: "MESH_EXTERNAL".into(),
                resolution: "DNS".into(),
                kind: "STRICT_DNS".into(),
                lb_policy: "LEAST_REQUEST".into(),
                http2: false,
                tls: TlsView {
                    mode: "DISABLE".into(),
                    auto_mtls: false,
                    sni: None,
                    verify: "system_roots".into(),
                    client_certificate: None,
                    ready: true,
                    unusable: None,
                },
                endpoints: vec![EndpointView {
                    address: "missing.invalid:80".into(),
                    hostname: Some("missing.invalid".into()),
                    locality: None,
                    weight: 1,
                    health: "UNHEALTHY".into(),
                    resolution_error: Some("NXDOMAIN".into()),
                }],
                endpoint_note: None,
            }],
        };
        let t = endpoints_table(&c);
        assert_eq!(
            cells(t.lines().nth(1).unwrap()),
            vec![
                "missing.invalid:80",
                "UNHEALTHY",
                "missing.invalid",
                "-",
                "1",
                "outbound|80||d.test",
                "NXDOMAIN"
            ]
        );
        let t = clusters_table(&c);
        assert!(t.lines().nth(1).unwrap().contains("STRICT_DNS"));

        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cert = |not_after: i64| CertView {
            subject: "CN=x".into(),
            issuer: "CN=ca".into(),
            sans: vec![],
            serial: "0a".into(),
            not_before: "b".into(),
            not_after: "a".into(),
            not_after_unix: not_after,
            seconds_until_expiry: not_after - 1_000_000,
        };
        let s = CertsView {
            workload: None,
            trust_bundle: vec![cert(1_000_000 + 90_000)],
            client_certificates: vec![
                ClientCertView {
                    name: "file-cert:/c~/k".into(),
                    path: "/c".into(),
                    clusters: vec![],
                    destination_rules: vec![],
                    certificate: Some(cert(1_000_000 - 7200)),
                    error: None,
                },
                ClientCertView {
                    name: "kubernetes://gone".into(),
                    path: "".into(),
                    clusters: vec![],
                    destination_rules: vec![],
                    certificate: None,
                    error: Some("no such file".into()),
                },
            ],
        };
        let t = secrets_table(&s, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("ROOTCA")
                && lines[1].contains("ACTIVE")
                && lines[1].ends_with("1d1h"),
            "{t}"
        );
        assert!(
            lines[2].contains("EXPIRED") && lines[2].ends_with("expired 2h0m ago"),
            "{t}"
        );
        assert!(lines[3].contains("ERROR: no such file"), "{t}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(125), "2m5s");
        assert_eq!(human(3 * 3600 + 120), "3h2m");
        assert_eq!(human(2 * 86_400 + 3600), "2d1h");
        assert_eq!(human(-5), "0s");
    }
}
