//! Debian's redis-server as the shared store of GLOBAL rate limits.
//!
//! Each instance listens on 127.0.0.1 at a free port, keeps nothing on disk
//! (`--save '' --appendonly no`, in its own temp dir) and is stopped on drop. [`Redis::stop`]
//! and [`Redis::start_again`] (same port, empty data) let tests take it away and bring it
//! back, as an outage would.
//!
//! Fails loudly: without `redis-server` [`Redis::start`] is an error naming the package, which
//! the test must turn into a failure, never a skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::process::{Process, TempDir, wait_until, which};

/// A running redis-server; stopped on drop.
#[derive(Debug)]
pub struct Redis {
    process: Option<Process>,
    port: u16,
    program: PathBuf,
    dir: TempDir,
    starts: u32,
}

impl Redis {
    /// Starts redis-server on 127.0.0.1 at a free port and waits until it answers PING.
    pub fn start() -> Result<Redis> {
        let program = which("redis-server").ok_or_else(|| {
            anyhow!(
                "required program `redis-server` not found (PATH and /usr/sbin, /sbin searched); \
                 install the Debian package `redis-server` (scripts/test installs it: \
                 apt-get install -y redis-server)"
            )
        })?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
            l.local_addr()?.port()
        };
        let mut r = Redis {
            process: None,
            port,
            program,
            dir: TempDir::new("redis")?,
            starts: 0,
        };
        r.start_again()?;
        Ok(r)
    }

    /// `127.0.0.1:<port>`, as RateLimitPolicy's `redis.address` takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM, then SIGKILL). Connections to it are closed; new ones are
    /// refused.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Starts the server again on the same port (with no data: nothing is saved). A no-op
    /// when it is running.
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        let mut p = Process::spawn(cmd, "redis-server", &log)?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let ready = wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                p.check_running()?;
                Ok(ping(addr).ok().filter(|ok| *ok))
            },
        );
        if let Err(e) = ready {
            let log = p.log();
            p.stop();
            bail!("{e:#}; redis-server log:\n{log}");
        }
        self.process = Some(p);
        Ok(())
    }

    /// One command, answered as raw RESP text (assertions on keys and TTLs).
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Everything the current (or last) server printed.
    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }
}

fn ping(addr: SocketAddr) -> Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf)?;
    Ok(buf[..n].starts_with(b"+PONG"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
