//! The network-namespace harness, exercised for real (root; never skipped: without root or
//! the Debian packages every test here fails with a message saying what is missing).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use egret_testkit::dns::resolve_a;
use egret_testkit::netns::list_egret_namespaces;
use egret_testkit::{
    InProcessServer, Nginx, NginxConfig, TestCa, TestServer, TestServerConfig, Topology, addrs,
};

const API: &str = "api.test";

fn ext() -> IpAddr {
    IpAddr::V4(addrs::EXTERNAL)
}

/// Asserts that none of `names` is still a namespace (or has an /etc/netns directory).
fn assert_gone(names: &[String]) -> Result<()> {
    let left = list_egret_namespaces()?;
    for n in names {
        ensure!(!left.contains(n), "namespace {n} left behind: {left:?}");
        ensure!(
            !std::path::Path::new("/etc/netns").join(n).exists(),
            "/etc/netns/{n} left behind"
        );
    }
    Ok(())
}

fn nginx_api(topo: &Topology, ca: &TestCa) -> Result<Nginx> {
    Nginx::start(&topo.external, ca, NginxConfig::new("api", ext(), &[API]))
}

/// `curl -o /dev/null -w %{http_code}` style status of a curl run.
fn status(out: &egret_testkit::CmdOutput) -> String {
    out.stdout.trim().to_string()
}

#[test]
fn topology_is_wired_and_torn_down() -> Result<()> {
    let topo = Topology::new("wire")?;
    let names = topo.names();
    let listed = list_egret_namespaces()?;
    for n in &names {
        ensure!(listed.contains(n), "{n} not in {listed:?}");
    }
    let routes = topo.app.exec_ok("ip", &["route"])?.stdout;
    ensure!(routes.contains("default via 198.51.100.2"), "{routes}");
    ensure!(!routes.contains("203.0.113."), "{routes}");
    let ext_addrs = topo
        .external
        .exec_ok("ip", &["-4", "addr", "show", "lo"])?
        .stdout;
    for a in ["203.0.113.10/32", "203.0.113.11/32", "203.0.113.12/32"] {
        ensure!(ext_addrs.contains(a), "{ext_addrs}");
    }
    // A long-running process as uid 1337 (the proxy's uid), stopped with its handle.
    let tmp = egret_testkit::TempDir::new("spawn-as")?;
    let mut sleeper =
        topo.app
            .spawn_as(1337, 1337, "sleep", &["30"], &tmp.path().join("sleep.log"))?;
    let status =
        egret_testkit::process::wait_until("sleep to exec", Duration::from_secs(5), || {
            let s = std::fs::read_to_string(format!("/proc/{}/status", sleeper.pid()))?;
            Ok(s.contains("Name:\tsleep\n").then_some(s))
        })?;
    ensure!(status.contains("Uid:\t1337\t"), "{status}");
    ensure!(topo.app.pids().contains(&(sleeper.pid() as i32)));
    let t = Instant::now();
    sleeper.stop();
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    ensure!(topo.app.pids().is_empty(), "{:?}", topo.app.pids());
    // Two topologies at once use the same interface names and addresses without clashing.
    let second = Topology::direct("wire2")?;
    let names2 = second.names();
    ensure!(names.iter().all(|n| !names2.contains(n)));
    topo.add_external_address("203.0.113.20".parse()?)?;
    drop(second);
    drop(topo);
    assert_gone(&names)?;
    assert_gone(&names2)
}

#[test]
fn nginx_serves_https_with_the_test_ca() -> Result<()> {
    let topo = Topology::new("nginx")?;
    let names = topo.names();
    {
        let ca = TestCa::new("nginx test CA")?;
        let nginx = nginx_api(&topo, &ca)?;
        let cacert = nginx.ca_path().display().to_string();
        let resolve = format!("{API}:443:{}", addrs::EXTERNAL);
        // From external itself.
        let out = topo.external.curl(&[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code}",
            "https://api.test/hello",
        ])?;
        ensure!(out.success(), "curl failed: {out:?}");
        ensure!(out.stdout.ends_with("\n200"), "{out:?}");
        ensure!(
            out.stdout.contains("nginx api https api.test /hello"),
            "{out:?}"
        );
        // From the gateway, over the routed link; plain HTTP too; h2 is offered.
        let out = topo.gateway.curl(&[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "https://api.test/",
        ])?;
        ensure!(out.stdout.trim() == "200 2", "{out:?}");
        let out = topo.gateway.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://203.0.113.10/",
        ])?;
        ensure!(status(&out) == "200", "{out:?}");
        // An untrusted CA fails verification (curl 60).
        let out = topo
            .gateway
            .curl(&["--resolve", &resolve, "https://api.test/"])?;
        ensure!(out.code == Some(60), "{out:?}");
        // The access log has the egress source address and connection serials.
        nginx.wait_for_requests(3, Duration::from_secs(5))?;
        let log = nginx.access_log();
        ensure!(log.contains("203.0.113.1:"), "{log}");
        ensure!(nginx.connections() == 3, "{log}");
        // nginx-light ships the echo module: /delay/N and /headers.
        ensure!(
            nginx.has_echo_module(),
            "nginx echo module missing (install nginx-light)"
        );
        let t = Instant::now();
        let out = topo.gateway.curl(&["http://203.0.113.10/delay/1"])?;
        ensure!(out.stdout == "delayed 1\n", "{out:?}");
        ensure!(
            t.elapsed() >= Duration::from_millis(950),
            "{:?}",
            t.elapsed()
        );
        let out = topo
            .gateway
            .curl(&["-H", "x-egret-test: yes", "http://203.0.113.10/headers"])?;
        ensure!(out.stdout.starts_with("GET /headers HTTP/1.1"), "{out:?}");
        ensure!(out.stdout.contains("x-egret-test: yes"), "{out:?}");
    }
    drop(topo);
    assert_gone(&names)
}

#[test]
fn nginx_requires_client_certificates_for_mtls() -> Result<()> {
    let topo = Topology::new("mtls")?;
    let names = topo.names();
    {
        let ca = TestCa::new("mtls server CA")?;
        let client_ca = TestCa::new("mtls client CA")?;
        let config = NginxConfig::new("secure", ext(), &[API]).with_client_ca(client_ca.ca_pem());
        let nginx = Nginx::start(&topo.external, &ca, config)?;
        let cacert = nginx.ca_path().display().to_string();
        let resolve = format!("{API}:443:{}", addrs::EXTERNAL);
        let base = [
            "--cacert",
            cacert.as_str(),
            "--resolve",
            resolve.as_str(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        let out = topo
            .gateway
            .curl(&[&base[..], &["https://api.test/"]].concat())?;
        ensure!(status(&out) == "400", "no client cert: {out:?}");

        let client = client_ca.issue_client("sidecar.test")?;
        let dir = egret_testkit::TempDir::new("mtls-client")?;
        client_ca.write_to_dir(&client, dir.path())?;
        let cert = dir.path().join("cert.pem").display().to_string();
        let key = dir.path().join("key.pem").display().to_string();
        let with_cert = [
            &base[..],
            &["--cert", &cert, "--key", &key, "https://api.test/"],
        ]
        .concat();
        let out = topo.gateway.curl(&with_cert)?;
        ensure!(status(&out) == "200", "client cert: {out:?}");

        // A client certificate from another CA is refused too.
        let stranger = ca.issue_client("stranger.test")?;
        let dir2 = egret_testkit::TempDir::new("mtls-stranger")?;
        ca.write_to_dir(&stranger, dir2.path())?;
        let cert2 = dir2.path().join("cert.pem").display().to_string();
        let key2 = dir2.path().join("key.pem").display().to_string();
        let out = topo.gateway.curl(
            &[
                &base[..],
                &["--cert", &cert2, "--key", &key2, "https://api.test/"],
            ]
            .concat(),
        )?;
        ensure!(status(&out) == "400", "foreign client cert: {out:?}");
        nginx.wait_for_requests(3, Duration::from_secs(5))?;
        ensure!(
            nginx.access_log().contains("CN=sidecar.test"),
            "{}",
            nginx.access_log()
        );
    }
    drop(topo);
    assert_gone(&names)
}

#[test]
fn dnsmasq_answers_test_names() -> Result<()> {
    let topo = Topology::new("dns")?;
    let names = topo.names();
    {
        let ca = TestCa::new("dns CA")?;
        let _nginx = nginx_api(&topo, &ca)?;
        let two: [IpAddr; 2] = [ext(), IpAddr::V4(addrs::EXTERNAL_2)];
        let dns = topo.start_dns(&[
            (API, &[ext()][..]),
            ("multi.test", &two[..]),
            ("*.wild.test", &[IpAddr::V4(addrs::EXTERNAL_3)][..]),
        ])?;
        // Through the namespace's resolv.conf (ip netns exec binds /etc/netns/<ns>/resolv.conf).
        let out = topo.gateway.exec_ok("getent", &["ahostsv4", API])?;
        ensure!(out.stdout.starts_with("203.0.113.10 "), "{out:?}");
        let out = topo.app.exec_ok("getent", &["ahostsv4", "x.y.wild.test"])?;
        ensure!(out.stdout.starts_with("203.0.113.12 "), "{out:?}");
        // Directly, from both sides.
        let dns_ip = IpAddr::V4(addrs::DNS);
        let mut multi = resolve_a(&topo.app, dns_ip, "multi.test")?;
        multi.sort();
        ensure!(
            multi == vec![addrs::EXTERNAL, addrs::EXTERNAL_2],
            "{multi:?}"
        );
        ensure!(resolve_a(&topo.gateway, dns_ip, "nope.test")?.is_empty());
        // curl by name from the gateway.
        let out =
            topo.gateway
                .curl(&["-o", "/dev/null", "-w", "%{http_code}", "http://api.test/"])?;
        ensure!(status(&out) == "200", "{out:?}");
        // Records change at run time.
        dns.set_records(&[(API, &[IpAddr::V4(addrs::EXTERNAL_3)][..])])?;
        let now = resolve_a(&topo.gateway, dns_ip, API)?;
        ensure!(now == vec![addrs::EXTERNAL_3], "{now:?}");
        ensure!(dns.query_count(API) >= 2, "{}", dns.log());
        // The external namespace cannot reach the DNS server (no route).
        ensure!(resolve_a(&topo.external, dns_ip, API).is_err());
    }
    drop(topo);
    assert_gone(&names)
}

#[test]
fn app_cannot_egress_except_in_the_direct_topology() -> Result<()> {
    let ca = TestCa::new("egress CA")?;
    let topo = Topology::new("noegress")?;
    let names = topo.names();
    {
        let _nginx = nginx_api(&topo, &ca)?;
        let t = Instant::now();
        let out = topo.app.curl(&["http://203.0.113.10/"])?;
        ensure!(out.code == Some(7), "app reached external: {out:?}");
        ensure!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        let out = topo.gateway.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://203.0.113.10/",
        ])?;
        ensure!(status(&out) == "200", "{out:?}");
    }
    drop(topo);
    assert_gone(&names)?;

    let topo = Topology::direct("direct")?;
    let names = topo.names();
    {
        let nginx = nginx_api(&topo, &ca)?;
        let resolve = format!("{API}:443:{}", addrs::EXTERNAL);
        let cacert = nginx.ca_path().display().to_string();
        let out = topo.app.curl(&[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://api.test/",
        ])?;
        ensure!(status(&out) == "200", "{out:?}");
        nginx.wait_for_requests(1, Duration::from_secs(5))?;
        ensure!(
            nginx.access_log().starts_with("203.0.113.5:"),
            "{}",
            nginx.access_log()
        );
    }
    drop(topo);
    assert_gone(&names)
}

#[test]
fn test_server_delays_echoes_and_serves_tls() -> Result<()> {
    let topo = Topology::new("server")?;
    let names = topo.names();
    {
        let ca = TestCa::new("server CA")?;
        let ip = IpAddr::V4(addrs::EXTERNAL_2);
        let config = TestServerConfig::new("slow")
            .plain(SocketAddr::new(ip, 8080))
            .tls(
                SocketAddr::new(ip, 8443),
                ca.issue_server(&["slow.test", "203.0.113.11"])?,
            );
        let server = TestServer::spawn(&topo.external, &config)?;
        let base = "http://203.0.113.11:8080";

        let t = Instant::now();
        let out = topo.gateway.curl(&[&format!("{base}/delay/1")])?;
        let took = t.elapsed();
        ensure!(out.stdout == "delayed 1\n", "{out:?}");
        ensure!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(3),
            "/delay/1 took {took:?}"
        );

        let out = topo
            .gateway
            .curl(&["-H", "x-egret-test: yes", &format!("{base}/headers")])?;
        ensure!(out.stdout.contains("x-egret-test: yes"), "{out:?}");
        ensure!(out.stdout.starts_with("GET /headers"), "{out:?}");

        let out = topo.gateway.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/status/503"),
        ])?;
        ensure!(status(&out) == "503", "{out:?}");

        let out = topo.gateway.curl(&["-i", &format!("{base}/")])?;
        ensure!(out.stdout.contains("hello from slow"), "{out:?}");
        ensure!(out.stdout.contains("x-peer: 203.0.113.1:"), "{out:?}");

        // TLS with the test CA, HTTP/2 by ALPN.
        let ca_dir = egret_testkit::TempDir::new("server-ca")?;
        let ca_file = ca_dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.ca_pem())?;
        let out = topo.gateway.curl(&[
            "--cacert",
            &ca_file.display().to_string(),
            "--resolve",
            "slow.test:8443:203.0.113.11",
            "-w",
            " %{http_version}",
            "https://slow.test:8443/",
        ])?;
        ensure!(out.stdout == "hello from slow\n 2", "{out:?}");
        ensure!(server.requests() >= 5, "{}", server.log());

        // The in-process variant, listening inside external, reached from the gateway.
        let inproc = InProcessServer::start(
            Some(&topo.external),
            TestServerConfig::new("inproc")
                .plain(SocketAddr::new(IpAddr::V4(addrs::EXTERNAL_3), 9090)),
        )?;
        let out = topo.gateway.curl(&["http://203.0.113.12:9090/"])?;
        ensure!(out.stdout == "hello from inproc\n", "{out:?}");
        ensure!(inproc.requests() == 1 && inproc.connections() == 1);
    }
    drop(topo);
    assert_gone(&names)
}

/// The app's default route exists so that iptables REDIRECT can capture traffic to the
/// internet (with no route, connect() fails before the nat table is consulted).
#[test]
fn iptables_redirect_captures_app_traffic() -> Result<()> {
    egret_testkit::preflight(&["iptables"])?;
    let topo = Topology::new("capture")?;
    let names = topo.names();
    {
        let _capture = InProcessServer::start(
            Some(&topo.app),
            TestServerConfig::new("capture").plain("127.0.0.1:15001".parse()?),
        )?;
        topo.app
            .exec_ok(
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-d",
                    "203.0.113.0/24",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "15001",
                ],
            )
            .context("install REDIRECT rule")?;
        let out = topo.app.curl(&["http://203.0.113.10/"])?;
        ensure!(out.stdout == "hello from capture\n", "{out:?}");
    }
    drop(topo);
    assert_gone(&names)
}

/// A test that panics half-way still leaves no namespace, /etc/netns entry or process behind.
#[test]
fn panicking_test_cleans_up() -> Result<()> {
    let names = std::sync::Mutex::new(Vec::new());
    let dirs = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
        let topo = Topology::new("panic")?;
        *names.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = topo.names();
        let ca = TestCa::new("panic CA")?;
        let nginx = nginx_api(&topo, &ca)?;
        let dns = topo.start_dns(&[(API, &[ext()][..])])?;
        dirs.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .extend([nginx.dir().to_path_buf(), dns.dir().to_path_buf()]);
        panic!("deliberate panic with nginx and dnsmasq running");
    }));
    ensure!(result.is_err(), "the closure should have panicked");
    let names = names
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(names.len() == 4, "topology was not built: {names:?}");
    assert_gone(&names)?;
    for d in dirs.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))? {
        ensure!(!d.exists(), "{} left behind", d.display());
        // No process still runs from that prefix.
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()?;
        let ps = String::from_utf8_lossy(&ps.stdout);
        ensure!(!ps.contains(&d.display().to_string()), "process left: {ps}");
    }
    Ok(())
}

/// The optional extras: a second workload that reaches the gateway (also at [`addrs::GATEWAY`])
/// and DNS but not the internet, and a second gateway whose own "internet" (192.0.2.0/24) only
/// it reaches, while it cannot reach the first one's (and the first gateway cannot reach its).
#[test]
fn second_workload_and_second_gateway_are_wired_and_isolated() -> Result<()> {
    let ca = TestCa::new("extras CA")?;
    let topo = Topology::new("extras")?;
    let mut names = topo.names();
    {
        let app2 = topo.add_workload("extras")?;
        let second = topo.add_gateway("extras")?;
        names
            .extend([app2.name(), second.gateway.name(), second.external.name()].map(String::from));
        let _dns = topo.start_dns(&[(API, &[ext()])])?;
        let _nginx = nginx_api(&topo, &ca)?;
        let private = SocketAddr::new(IpAddr::V4(addrs::SECOND_EXTERNAL), 80);
        let _private = InProcessServer::start(
            Some(&second.external),
            TestServerConfig::new("private").plain(private),
        )?;
        let on_gateway = SocketAddr::new(IpAddr::V4(addrs::GATEWAY), 8080);
        let _gw_server = InProcessServer::start(
            Some(&topo.gateway),
            TestServerConfig::new("gw").plain(on_gateway),
        )?;
        let on_second = SocketAddr::new(IpAddr::V4(addrs::SECOND_GATEWAY), 8080);
        let _gw2_server = InProcessServer::start(
            Some(&second.gateway),
            TestServerConfig::new("gw2").plain(on_second),
        )?;
        let code = |ns: &egret_testkit::Netns, url: &str| -> Result<egret_testkit::CmdOutput> {
            ns.curl(&[
                "--connect-timeout",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
        };

        // The second workload: the gateway (its address on the app link too) and DNS, no
        // internet.
        let out = code(&app2, "http://198.51.100.2:8080/")?;
        ensure!(status(&out) == "200", "app2 -> gateway: {out:?}");
        let out = code(&app2, "http://203.0.113.10/")?;
        ensure!(out.code == Some(7), "app2 reached external: {out:?}");
        let resolved = |ns: &egret_testkit::Netns| -> Result<bool> {
            let out = ns.exec_ok("getent", &["ahostsv4", API])?;
            Ok(out.stdout.contains("203.0.113.10"))
        };
        ensure!(resolved(&app2)?, "app2 does not resolve {API}");
        let out = code(&app2, &format!("http://{API}/"))?;
        ensure!(out.code == Some(7), "app2 reached {API}: {out:?}");

        // app reaches the second gateway; the second gateway reaches only its own external.
        let out = code(&topo.app, "http://198.51.100.18:8080/")?;
        ensure!(status(&out) == "200", "app -> second gateway: {out:?}");
        let out = code(&second.gateway, "http://192.0.2.10/")?;
        ensure!(
            status(&out) == "200",
            "second gateway -> 192.0.2.10: {out:?}"
        );
        ensure!(
            resolved(&second.gateway)?,
            "the second gateway does not resolve {API}"
        );
        let out = code(&second.gateway, &format!("http://{API}/"))?;
        ensure!(out.code == Some(7), "second gateway reached {API}: {out:?}");
        let out = code(&topo.gateway, "http://192.0.2.10/")?;
        ensure!(
            out.code == Some(7),
            "first gateway reached 192.0.2.10: {out:?}"
        );
        let out = code(&topo.app, "http://192.0.2.10/")?;
        ensure!(out.code == Some(7), "app reached 192.0.2.10: {out:?}");
        let out = code(&topo.gateway, &format!("http://{API}/"))?;
        ensure!(status(&out) == "200", "first gateway -> {API}: {out:?}");
    }
    drop(topo);
    assert_gone(&names)
}
