//! Running programs with hard deadlines, long-running children that die with their handle,
//! temporary directories, and the "fail loudly" preflight checks.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Default deadline for short commands (`ip`, `sysctl`, `getent`, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished command printed and how it ended.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    /// Exit code; `None` if the program was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// True when the program exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A readable rendering of a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn reader<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured; kills it and
/// returns an error if it is still running after `timeout`. A non-zero exit is not an error
/// (look at [`CmdOutput::code`]).
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn `{what}`"))?;
    let out_rx = child.stdout.take().map(reader);
    let err_rx = child.stderr.take().map(reader);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("wait `{what}`"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
                rx.and_then(|rx| rx.recv_timeout(Duration::from_millis(200)).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            bail!(
                "`{what}` did not finish within {timeout:?} (killed); stdout: {}; stderr: {}",
                collect(out_rx),
                collect(err_rx)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A grandchild may keep the pipes open; never wait for it for long.
    let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
        rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(CmdOutput {
        code: status.code(),
        stdout: collect(out_rx),
        stderr: collect(err_rx),
    })
}

/// Like [`run_command`], but a non-zero exit is an error carrying the output.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput> {
    let what = describe(cmd);
    let out = run_command(cmd, timeout)?;
    if !out.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.code
                .map(|c| format!("exit {c}"))
                .unwrap_or_else(|| "killed by a signal".into()),
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" (stdout: {})", out.stdout.trim())
            }
        );
    }
    Ok(out)
}

/// A long-running child process, stopped (SIGTERM, then SIGKILL after a grace period) when
/// the handle is dropped. Its stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    label: String,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(mut cmd: Command, label: &str, log: &Path) -> Result<Process> {
        let what = describe(&cmd);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        let file2 = file.try_clone().context("clone log handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .with_context(|| format!("spawn {label}: `{what}`"))?;
        Ok(Process {
            child: Some(child),
            label: label.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// The process id (of the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The label given at spawn time.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Path of the stdout/stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// An error (with the log) if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!(
                "{} exited early ({status}); its log {}:\n{}",
                self.label,
                self.log.display(),
                self.log()
            );
        }
        Ok(())
    }

    /// Sends a signal (e.g. SIGHUP to reload).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("send {sig} to {}", self.label))
    }

    /// Stops the process: SIGTERM, up to `grace` to exit, then SIGKILL. Idempotent.
    pub fn stop_with(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// [`Process::stop_with`] with a 3 s grace period.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_with(Duration::from_secs(3))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temp dir, removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `$TMPDIR/egret-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<TempDir> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "egret-{}-{}-{n}",
            sanitize(tag, 24),
            std::process::id()
        ));
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the directory behind on drop (for post-mortem debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Lower-case ASCII letters, digits and '-' only, at most `max` characters.
pub(crate) fn sanitize(tag: &str, max: usize) -> String {
    let s: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    if s.is_empty() { "t".into() } else { s }
}

/// The Debian package that provides each program the harness uses.
fn package_for(program: &str) -> &'static str {
    match program {
        "ip" | "ss" => "iproute2",
        "nginx" => "nginx-light",
        "dnsmasq" => "dnsmasq-base",
        "curl" => "curl",
        "iptables" | "ip6tables" | "iptables-save" | "iptables-restore" => "iptables",
        "openssl" => "openssl",
        "sysctl" | "pgrep" | "ps" => "procps",
        "setpriv" => "util-linux",
        "getent" => "libc-bin",
        _ => "?",
    }
}

/// Finds `program` in `$PATH`, then in the sbin directories (which a non-login `PATH` may
/// lack).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Like [`which`], but an error naming the Debian package when the program is missing.
pub fn require_program(program: &str) -> Result<PathBuf> {
    which(program).ok_or_else(|| {
        anyhow!(
            "required program `{program}` not found (PATH and /usr/sbin, /sbin searched); \
             install the Debian package `{}` (scripts/test installs it: apt-get install -y {})",
            package_for(program),
            package_for(program)
        )
    })
}

/// The network-namespace tests' entry check: root, and every program in `programs` present.
/// Returns an error (the test must fail, never skip) otherwise.
pub fn preflight(programs: &[&str]) -> Result<()> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        bail!(
            "network-namespace tests need root (running as uid {uid}); they never skip: \
             run them as root (scripts/test, CI)"
        );
    }
    for p in programs {
        require_program(p)?;
    }
    Ok(())
}

/// `Command::new` for a program resolved with [`require_program`].
pub fn command(program: &str) -> Result<Command> {
    Ok(Command::new(require_program(program)?))
}

/// Reads a whole file, empty if it does not exist.
pub fn read_lossy(path: &Path) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// Polls `f` every 20 ms until it returns `Ok(Some(_))` or `timeout` passes; the error says
/// what was awaited and the last error seen.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<anyhow::Error> = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_command_times_out_and_captures() -> Result<()> {
        let out = run_command(
            Command::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]),
            COMMAND_TIMEOUT,
        )?;
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
        let start = Instant::now();
        let err = run_command(Command::new("sleep").arg("10"), Duration::from_millis(200));
        assert!(err.is_err());
        assert!(start.elapsed() < Duration::from_secs(3));
        Ok(())
    }

    #[test]
    fn sanitize_tags() {
        assert_eq!(sanitize("My_Test.1", 20), "my-test-1");
        assert_eq!(sanitize("", 20), "t");
        assert_eq!(sanitize("abcdef", 3), "abc");
    }
}
