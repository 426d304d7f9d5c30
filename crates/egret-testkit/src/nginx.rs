//! Debian's nginx as the "external" HTTPS service (optionally requiring client certificates).
//!
//! Each instance runs from its own temp prefix (`nginx -p DIR -c DIR/nginx.conf -g 'daemon
//! off;'`) with one worker, so `$connection` in the access log is a unique per-connection
//! serial number and tests can count upstream connections ([`Nginx::connections`]).
//!
//! Locations: `/` answers `200 "nginx <name> <scheme> <host> <uri>"`; every response carries
//! `X-Served-By: <name>`. With the echo module (Debian's `nginx-light` ships it):
//! `/delay/<secs>` answers after that many seconds and `/headers` echoes the request headers
//! (HTTP/1 only). `extra_server_config` is pasted into the `server {}` block.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::ca::TestCa;
use crate::netns::Netns;
use crate::process::{Process, TempDir, preflight, read_lossy, require_program, wait_until};

/// Where Debian installs the echo module.
const ECHO_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_echo_module.so";

/// What one nginx instance serves.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    /// Appears in bodies and the `X-Served-By` header.
    pub name: String,
    /// Addresses to listen on (must exist in the namespace).
    pub addrs: Vec<IpAddr>,
    /// Plain HTTP port (`None`: no plain listener). Default 80.
    pub http_port: Option<u16>,
    /// HTTPS port (`None`: no TLS listener). Default 443. Offers h2 and http/1.1.
    pub https_port: Option<u16>,
    /// DNS names for the server certificate (the listen addresses are added as IP SANs).
    pub server_names: Vec<String>,
    /// When set, the HTTPS listener requires a client certificate signed by this CA
    /// (`ssl_verify_client on`); without one nginx answers 400.
    pub client_ca_pem: Option<String>,
    /// Raw nginx directives added inside the `server {}` block.
    pub extra_server_config: String,
}

impl NginxConfig {
    /// HTTP on 80 and HTTPS on 443 at `addr`, certificate for `server_names`.
    pub fn new(name: &str, addr: IpAddr, server_names: &[&str]) -> NginxConfig {
        NginxConfig {
            name: name.to_string(),
            addrs: vec![addr],
            http_port: Some(80),
            https_port: Some(443),
            server_names: server_names.iter().map(|s| s.to_string()).collect(),
            client_ca_pem: None,
            extra_server_config: String::new(),
        }
    }

    /// Require client certificates signed by `ca_pem` on the HTTPS listener.
    pub fn with_client_ca(mut self, ca_pem: &str) -> NginxConfig {
        self.client_ca_pem = Some(ca_pem.to_string());
        self
    }
}

/// A running nginx; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    process: Process,
    config: NginxConfig,
    dir: TempDir,
    echo_module: bool,
}

impl Nginx {
    /// Writes the config and a certificate from `ca`, starts nginx inside `netns` and waits
    /// until every listener accepts connections.
    pub fn start(netns: &Netns, ca: &TestCa, config: NginxConfig) -> Result<Nginx> {
        preflight(&["nginx"])?;
        let nginx = require_program("nginx")?;
        let dir = TempDir::new(&format!("nginx-{}", config.name))?;
        let d = dir.path();
        for sub in ["tmp", "logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let mut sans: Vec<String> = config.server_names.clone();
        sans.extend(config.addrs.iter().map(|a| a.to_string()));
        let sans_ref: Vec<&str> = sans.iter().map(|s| s.as_str()).collect();
        let pair = ca.issue_server(&sans_ref)?;
        ca.write_to_dir(&pair, d)?;
        if let Some(client_ca) = &config.client_ca_pem {
            std::fs::write(d.join("client-ca.pem"), client_ca)?;
        }
        let echo_module = Path::new(ECHO_MODULE).is_file();
        let conf = render_config(&config, d, echo_module);
        std::fs::write(d.join("nginx.conf"), &conf).context("write nginx.conf")?;

        let prefix = format!("{}/", d.display());
        let conf_path = d.join("nginx.conf").display().to_string();
        let error_log = d.join("error.log").display().to_string();
        // Check the configuration first: a clear error beats a process that exits at once.
        let check = netns.exec(
            &nginx.to_string_lossy(),
            &[
                "-t", "-q", "-p", &prefix, "-c", &conf_path, "-e", &error_log,
            ],
        )?;
        if !check.success() {
            bail!(
                "nginx rejected its configuration:\n{}{}\n--- nginx.conf ---\n{conf}",
                check.stderr,
                read_lossy(&d.join("error.log"))
            );
        }
        let mut process = netns.spawn(
            &nginx.to_string_lossy(),
            &[
                "-p",
                &prefix,
                "-c",
                &conf_path,
                "-e",
                &error_log,
                "-g",
                "daemon off;",
            ],
            &d.join("stdout.log"),
        )?;
        let mut ports = Vec::new();
        ports.extend(config.http_port);
        ports.extend(config.https_port);
        for addr in &config.addrs {
            for port in &ports {
                let sa = SocketAddr::new(*addr, *port);
                let ready = wait_until(&format!("nginx on {sa}"), Duration::from_secs(10), || {
                    process.check_running()?;
                    Ok(netns
                        .connect_tcp(sa, Duration::from_millis(500))
                        .ok()
                        .map(|_| ()))
                });
                if let Err(e) = ready {
                    bail!(
                        "{e:#}\nnginx error log:\n{}",
                        read_lossy(&d.join("error.log"))
                    );
                }
            }
        }
        Ok(Nginx {
            process,
            config,
            dir,
            echo_module,
        })
    }

    pub fn config(&self) -> &NginxConfig {
        &self.config
    }

    /// True when `/delay/N` and `/headers` are available (echo module loaded).
    pub fn has_echo_module(&self) -> bool {
        self.echo_module
    }

    /// The prefix directory: `cert.pem`, `key.pem`, `ca.pem`, `nginx.conf`, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA-signed server certificate's CA (`ca.pem`), for `curl --cacert`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The access log: one line per request,
    /// `peer conn=<serial> req=<n on conn> host=.. sni=.. tls=.. verify=.. client=".." "request" status bytes time`.
    pub fn access_log(&self) -> String {
        read_lossy(&self.access_log_path())
    }

    pub fn error_log(&self) -> String {
        read_lossy(&self.dir.path().join("error.log"))
    }

    /// Requests logged so far.
    pub fn requests(&self) -> usize {
        self.access_log().lines().count()
    }

    /// Distinct client connections that carried at least one logged request.
    pub fn connections(&self) -> usize {
        self.access_log()
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("conn="))
                    .map(|s| s.to_string())
            })
            .collect::<HashSet<_>>()
            .len()
    }

    /// Waits (bounded) until at least `n` requests are in the access log (nginx writes the
    /// line just after the response, so a client may finish first).
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{n} requests in nginx's access log"),
            timeout,
            || Ok((self.requests() >= n).then_some(())),
        )
    }

    /// Stops nginx now (also done on drop).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

fn render_config(c: &NginxConfig, d: &Path, echo: bool) -> String {
    let d = d.display();
    let mut listen = String::new();
    for addr in &c.addrs {
        let a = match addr {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if let Some(p) = c.http_port {
            listen.push_str(&format!("        listen {a}:{p};\n"));
        }
        if let Some(p) = c.https_port {
            listen.push_str(&format!("        listen {a}:{p} ssl http2;\n"));
        }
    }
    let mtls = if c.client_ca_pem.is_some() {
        format!(
            "        ssl_client_certificate {d}/client-ca.pem;\n        ssl_verify_client on;\n        ssl_verify_depth 3;\n"
        )
    } else {
        String::new()
    };
    let (load, echo_locations) = if echo {
        (
            format!("load_module {ECHO_MODULE};\n"),
            r#"        location ~ ^/delay/(?<secs>[0-9]+(\.[0-9]+)?)$ {
            echo_sleep $secs;
            echo "delayed $secs";
        }
        location = /headers {
            echo -n $echo_client_request_headers;
        }
"#
            .to_string(),
        )
    } else {
        (String::new(), String::new())
    };
    let name = c.name.replace(['"', '\\', '$', ';'], "_");
    format!(
        r#"{load}user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    default_type text/plain;
    log_format egret '$remote_addr:$remote_port conn=$connection req=$connection_requests host=$host sni=$ssl_server_name tls=$ssl_protocol verify=$ssl_client_verify client="$ssl_client_s_dn" "$request" $status $body_bytes_sent $request_time';
    access_log {d}/access.log egret;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_timeout 65s;
    keepalive_requests 10000;
    server {{
{listen}        server_name _;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
{mtls}        add_header X-Served-By "{name}" always;
        location / {{
            return 200 "nginx {name} $scheme $host $request_uri\n";
        }}
{echo_locations}{extra}
    }}
}}
"#,
        extra = c.extra_server_config
    )
}
