//! Transparent capture of outbound TCP with iptables (`egret iptables apply|print|clean`).
//!
//! The rules have the shape of Istio's `istio-iptables` sidecar rules, in egret's own chains of
//! the `nat` table:
//!
//! ```text
//! -A OUTPUT -p tcp -j EGRET_OUTPUT
//! -A EGRET_OUTPUT -m owner --uid-owner 1337 -j RETURN      # the proxy's own traffic
//! -A EGRET_OUTPUT -m owner --gid-owner 1337 -j RETURN
//! -A EGRET_OUTPUT -d 127.0.0.0/8 -j RETURN                 # ::1/128 for IPv6
//! -A EGRET_OUTPUT -o lo -j RETURN                          # anything else over loopback
//! -A EGRET_OUTPUT -p tcp -m tcp --dport P -j RETURN        # each excluded port
//! -A EGRET_OUTPUT -d CIDR -j RETURN                        # each excluded CIDR of the family
//! -A EGRET_OUTPUT -j EGRET_REDIRECT
//! -A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 15001
//! ```
//!
//! The same shape goes into `ip6tables` when IPv6 is included. Istio returns traffic to the
//! pod's own IP over `lo` only in some cases (inbound redirection); egret is egress-only, so every
//! packet leaving through `lo` is returned.
//!
//! [`CaptureConfig::apply`] is idempotent: it loads our two chains with
//! `iptables-restore --noflush` (which creates or flushes and refills them in one transaction, so
//! re-applying never leaves a window with half the rules), then appends the `OUTPUT` jump only
//! when `iptables -C` says it is absent. [`clean`] removes the jump and our two chains and nothing
//! else. Both run commands through an [`Executor`], so tests (and callers that manage other
//! network namespaces) can run them under a prefix such as `ip netns exec NS`.
//!
//! A native nftables alternative ([`CaptureConfig::nft_script`], [`CaptureConfig::apply_nft`],
//! [`clean_nft`]) writes the same logic as one `inet egret` table, for hosts without the
//! iptables tools (the way Istio's nftables backend writes an `inet istio-proxy-nat` table).

use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, ExitStatus, Output, Stdio};

use ipnet::IpNet;

/// The `nat` table, where all of egret's rules live.
pub const NAT_TABLE: &str = "nat";
/// The chain the built-in `OUTPUT` chain jumps to (Istio: `ISTIO_OUTPUT`).
pub const OUTPUT_CHAIN: &str = "EGRET_OUTPUT";
/// The chain that redirects to the outbound port (Istio: `ISTIO_REDIRECT`).
pub const REDIRECT_CHAIN: &str = "EGRET_REDIRECT";
/// The nftables table (family `inet`) of the native nftables mode.
pub const NFT_TABLE: &str = "egret";
/// Istio's proxy uid and gid.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Istio's outbound capture port.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;

/// How many copies of our `OUTPUT` jump [`clean`] removes at most (someone may have run the
/// printed commands by hand more than once).
const MAX_JUMP_COPIES: usize = 64;

/// An IP family: which of `iptables` / `ip6tables` a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4, `iptables`.
    V4,
    /// IPv6, `ip6tables`.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The rule command: `iptables` or `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The restore command: `iptables-restore` or `ip6tables-restore`.
    pub fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The save command: `iptables-save` or `ip6tables-save`.
    pub fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// The loopback network that is never captured: `127.0.0.0/8` or `::1/128`.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Whether `net` is of this family.
    pub fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One rule of the `nat` table, as `-A CHAIN SPEC...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which of `iptables` / `ip6tables` it goes to.
    pub family: Family,
    /// `OUTPUT`, [`OUTPUT_CHAIN`] or [`REDIRECT_CHAIN`].
    pub chain: &'static str,
    /// Matches and target, one argument per element, in the canonical form `iptables-save`
    /// prints (so a saved table can be compared with [`Rule`]'s `Display` line by line).
    pub spec: Vec<String>,
}

impl Rule {
    fn new(family: Family, chain: &'static str, spec: &[&str]) -> Rule {
        Rule {
            family,
            chain,
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The arguments that append this rule: `-t nat -A CHAIN SPEC...`.
    pub fn append_args(&self) -> Vec<String> {
        self.args_with("-A")
    }

    /// The full shell command that appends this rule: `iptables -t nat -A CHAIN SPEC...`.
    pub fn command(&self) -> String {
        format!(
            "{} {}",
            self.family.iptables(),
            self.append_args().join(" ")
        )
    }

    fn args_with(&self, op: &str) -> Vec<String> {
        let mut args = vec![
            "-t".to_owned(),
            NAT_TABLE.to_owned(),
            op.to_owned(),
            self.chain.to_owned(),
        ];
        args.extend(self.spec.iter().cloned());
        args
    }
}

/// The `iptables-restore` / `iptables-save` line: `-A CHAIN SPEC...`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        for arg in &self.spec {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// The jump from the built-in `OUTPUT` chain into ours.
fn output_jump(family: Family) -> Rule {
    Rule::new(family, "OUTPUT", &["-p", "tcp", "-j", OUTPUT_CHAIN])
}

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Connections made by this uid (the proxy's) are never captured. Default 1337.
    pub proxy_uid: u32,
    /// Connections made with this gid are never captured. `None` = the same number as the uid.
    pub proxy_gid: Option<u32>,
    /// Where captured connections go: `127.0.0.1:PORT` / `[::1]:PORT`. Default 15001.
    pub outbound_port: u16,
    /// Destination ports that are never captured.
    pub exclude_ports: Vec<u16>,
    /// Destination networks that are never captured (each goes to the family it belongs to).
    pub exclude_cidrs: Vec<IpNet>,
    /// Also install the rules with `ip6tables`. Default true.
    pub include_ipv6: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            include_ipv6: true,
        }
    }
}

impl CaptureConfig {
    /// The gid whose traffic is not captured.
    pub fn proxy_gid(&self) -> u32 {
        self.proxy_gid.unwrap_or(self.proxy_uid)
    }

    /// The families [`apply`](Self::apply) installs rules for.
    pub fn families(&self) -> Vec<Family> {
        if self.include_ipv6 {
            Family::ALL.to_vec()
        } else {
            vec![Family::V4]
        }
    }

    /// Every rule of every family [`apply`](Self::apply) installs, in installation order.
    pub fn rules(&self) -> Vec<Rule> {
        self.families()
            .into_iter()
            .flat_map(|family| self.rules_for(family))
            .collect()
    }

    /// The rules of one family, in installation order: the redirect chain, our output chain,
    /// and last the jump from `OUTPUT` that switches capture on.
    pub fn rules_for(&self, family: Family) -> Vec<Rule> {
        let mut rules = self.chain_rules(family);
        rules.push(output_jump(family));
        rules
    }

    /// The rules inside our two chains (everything but the `OUTPUT` jump).
    fn chain_rules(&self, family: Family) -> Vec<Rule> {
        let port = self.outbound_port.to_string();
        let uid = self.proxy_uid.to_string();
        let gid = self.proxy_gid().to_string();
        let mut rules = vec![
            Rule::new(
                family,
                REDIRECT_CHAIN,
                &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &port],
            ),
            Rule::new(
                family,
                OUTPUT_CHAIN,
                &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
            ),
            Rule::new(
                family,
                OUTPUT_CHAIN,
                &["-m", "owner", "--gid-owner", &gid, "-j", "RETURN"],
            ),
            Rule::new(
                family,
                OUTPUT_CHAIN,
                &["-d", family.loopback(), "-j", "RETURN"],
            ),
            Rule::new(family, OUTPUT_CHAIN, &["-o", "lo", "-j", "RETURN"]),
        ];
        for port in &self.exclude_ports {
            let port = port.to_string();
            rules.push(Rule::new(
                family,
                OUTPUT_CHAIN,
                &["-p", "tcp", "-m", "tcp", "--dport", &port, "-j", "RETURN"],
            ));
        }
        for net in self.exclude_cidrs.iter().filter(|n| family.contains(n)) {
            let net = net.trunc().to_string();
            rules.push(Rule::new(
                family,
                OUTPUT_CHAIN,
                &["-d", &net, "-j", "RETURN"],
            ));
        }
        rules.push(Rule::new(family, OUTPUT_CHAIN, &["-j", REDIRECT_CHAIN]));
        rules
    }

    /// The `iptables-restore` input for one family, in the form Istio's dry run prints: the
    /// `nat` table as `iptables-save` shows it after [`apply`](Self::apply) (our rules only).
    /// Fed to `iptables-restore --noflush` on a table without egret's rules it does what
    /// `apply` does. Produced for either family whatever `include_ipv6` says.
    pub fn script(&self, family: Family) -> String {
        restore_script(&self.rules_for(family))
    }

    /// The commands that install the rules on a table without them, one per line, as
    /// `egret iptables print` shows them: `iptables -t nat -N ...`, `iptables -t nat -A ...`,
    /// then the same for `ip6tables` when IPv6 is included.
    pub fn print(&self) -> String {
        let mut out = String::new();
        for family in self.families() {
            for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
                out.push_str(&format!(
                    "{} -t {NAT_TABLE} -N {chain}\n",
                    family.iptables()
                ));
            }
            for rule in self.rules_for(family) {
                out.push_str(&rule.command());
                out.push('\n');
            }
        }
        out
    }

    /// Installs the rules in this process's network namespace (see [`apply_in`](Self::apply_in)).
    pub fn apply(&self) -> Result<(), CaptureError> {
        self.apply_in(&DirectExecutor)
    }

    /// Installs the rules through `exec`. Idempotent: our chains are created or flushed and
    /// refilled (one `iptables-restore --noflush` transaction per family), and the `OUTPUT` jump
    /// is appended only when `iptables -t nat -C OUTPUT -p tcp -j EGRET_OUTPUT` says it is absent.
    pub fn apply_in(&self, exec: &dyn Executor) -> Result<(), CaptureError> {
        for family in self.families() {
            let script = restore_script(&self.chain_rules(family));
            run_ok(
                exec,
                family.restore(),
                &["--noflush".to_owned()],
                Some(&script),
            )?;
            let jump = output_jump(family);
            if !rule_exists(exec, &jump)? {
                run_ok(exec, family.iptables(), &jump.append_args(), None)?;
            }
        }
        Ok(())
    }

    /// The native nftables form of the same rules: one `inet egret` table whose `output` chain
    /// hooks nat output at priority -100 (where iptables' nat `OUTPUT` sits). Written exactly as
    /// `nft list table inet egret` prints it back. Without IPv6, IPv6 packets return at once.
    pub fn nft_script(&self) -> String {
        let mut rules = vec!["meta l4proto != tcp return".to_owned()];
        if !self.include_ipv6 {
            rules.push("meta nfproto ipv6 return".to_owned());
        }
        rules.push(format!("meta skuid {} return", self.proxy_uid));
        rules.push(format!("meta skgid {} return", self.proxy_gid()));
        rules.push("ip daddr 127.0.0.0/8 return".to_owned());
        if self.include_ipv6 {
            rules.push("ip6 daddr ::1 return".to_owned());
        }
        rules.push("oifname \"lo\" return".to_owned());
        for port in &self.exclude_ports {
            rules.push(format!("tcp dport {port} return"));
        }
        for net in &self.exclude_cidrs {
            let net = net.trunc();
            let (match_, is_v6) = match net {
                IpNet::V4(_) => ("ip daddr", false),
                IpNet::V6(_) => ("ip6 daddr", true),
            };
            if is_v6 && !self.include_ipv6 {
                continue;
            }
            // nft lists a host prefix as the bare address.
            if net.prefix_len() == net.max_prefix_len() {
                rules.push(format!("{match_} {} return", net.addr()));
            } else {
                rules.push(format!("{match_} {net} return"));
            }
        }
        rules.push(format!(
            "meta l4proto tcp redirect to :{}",
            self.outbound_port
        ));
        let mut out = format!(
            "table inet {NFT_TABLE} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n"
        );
        for rule in rules {
            out.push_str("\t\t");
            out.push_str(&rule);
            out.push('\n');
        }
        out.push_str("\t}\n}\n");
        out
    }

    /// Installs the native nftables rules in this process's network namespace.
    pub fn apply_nft(&self) -> Result<(), CaptureError> {
        self.apply_nft_in(&DirectExecutor)
    }

    /// Installs the native nftables rules through `exec`: one `nft -f -` transaction that
    /// creates the `inet egret` table if missing, deletes it and writes it anew, so applying
    /// twice leaves one copy and there is never a moment without the rules.
    pub fn apply_nft_in(&self, exec: &dyn Executor) -> Result<(), CaptureError> {
        let script = format!(
            "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{}",
            self.nft_script()
        );
        run_ok(
            exec,
            "nft",
            &["-f".to_owned(), "-".to_owned()],
            Some(&script),
        )?;
        Ok(())
    }
}

/// `*nat`, our chain declarations (which create or flush them), the rules, `COMMIT`.
fn restore_script(rules: &[Rule]) -> String {
    let mut out = format!("*{NAT_TABLE}\n");
    for chain in [OUTPUT_CHAIN, REDIRECT_CHAIN] {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    // iptables-save lists rules chain by chain: OUTPUT, then ours.
    for chain in ["OUTPUT", OUTPUT_CHAIN, REDIRECT_CHAIN] {
        for rule in rules.iter().filter(|r| r.chain == chain) {
            out.push_str(&rule.to_string());
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Removes egret's rules from this process's network namespace (see [`clean_in`]).
pub fn clean() -> Result<(), CaptureError> {
    clean_in(&DirectExecutor)
}

/// Removes, for both families, exactly what [`CaptureConfig::apply`] adds: every copy of the
/// `OUTPUT -p tcp -j EGRET_OUTPUT` jump, then our two chains (flushed, then deleted). Other
/// rules and chains are left alone. Cleaning when nothing is installed succeeds, as does
/// cleaning IPv6 where the kernel has no IPv6 `nat` table.
pub fn clean_in(exec: &dyn Executor) -> Result<(), CaptureError> {
    for family in Family::ALL {
        let mut present = Vec::new();
        for chain in [OUTPUT_CHAIN, REDIRECT_CHAIN] {
            if chain_exists(exec, family, chain)? {
                present.push(chain);
            }
        }
        // Without our chain there can be no jump to it (and `-C` would fail with status 2).
        if present.contains(&OUTPUT_CHAIN) {
            let jump = output_jump(family);
            for _ in 0..MAX_JUMP_COPIES {
                if !rule_exists(exec, &jump)? {
                    break;
                }
                run_ok(exec, family.iptables(), &jump.args_with("-D"), None)?;
            }
        }
        // Flush both before deleting either: EGRET_OUTPUT refers to EGRET_REDIRECT.
        for op in ["-F", "-X"] {
            for chain in &present {
                let args = ["-t", NAT_TABLE, op, chain].map(str::to_owned);
                run_ok(exec, family.iptables(), &args, None)?;
            }
        }
    }
    Ok(())
}

/// Removes the native nftables rules from this process's network namespace.
pub fn clean_nft() -> Result<(), CaptureError> {
    clean_nft_in(&DirectExecutor)
}

/// Removes the `inet egret` table through `exec`, and nothing else. Idempotent: the table is
/// created (if missing) and deleted in one `nft -f -` transaction.
pub fn clean_nft_in(exec: &dyn Executor) -> Result<(), CaptureError> {
    let script = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    run_ok(
        exec,
        "nft",
        &["-f".to_owned(), "-".to_owned()],
        Some(&script),
    )?;
    Ok(())
}

/// `iptables -t nat -C ...`: status 0 = present, 1 = absent, anything else is an error.
fn rule_exists(exec: &dyn Executor, rule: &Rule) -> Result<bool, CaptureError> {
    let program = rule.family.iptables();
    let args = rule.args_with("-C");
    let output = run(exec, program, &args, None)?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(CaptureError::failed(program, &args, &output)),
    }
}

/// `iptables -t nat -S CHAIN`: status 0 = present; 1 = no such chain (or no `nat` table yet);
/// 3 = the kernel has no such table (legacy backend without the module). Anything else, such as
/// 4 for "permission denied", is an error.
fn chain_exists(exec: &dyn Executor, family: Family, chain: &str) -> Result<bool, CaptureError> {
    let program = family.iptables();
    let args = ["-t", NAT_TABLE, "-S", chain].map(str::to_owned);
    let output = run(exec, program, &args, None)?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1 | 3) => Ok(false),
        _ => Err(CaptureError::failed(program, &args, &output)),
    }
}

fn run(
    exec: &dyn Executor,
    program: &str,
    args: &[String],
    stdin: Option<&str>,
) -> Result<Output, CaptureError> {
    exec.run(program, args, stdin)
        .map_err(|source| CaptureError::Spawn {
            command: command_line(program, args),
            source,
        })
}

fn run_ok(
    exec: &dyn Executor,
    program: &str,
    args: &[String],
    stdin: Option<&str>,
) -> Result<Output, CaptureError> {
    let output = run(exec, program, args, stdin)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CaptureError::failed(program, args, &output))
    }
}

fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// A failure to install or remove the rules.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The command could not be started (not installed, not executable, ...).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line (without any executor prefix).
        command: String,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line (without any executor prefix).
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
}

impl CaptureError {
    fn failed(program: &str, args: &[String], output: &Output) -> CaptureError {
        CaptureError::Failed {
            command: command_line(program, args),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
    }
}

/// Runs the `iptables` family of commands. [`DirectExecutor`] runs them in this process's
/// network namespace; [`PrefixExecutor`] puts a prefix such as `ip netns exec NS` in front.
pub trait Executor {
    /// Runs `program args...`, writing `stdin` to its standard input when given (otherwise
    /// stdin is empty), and returns its status, stdout and stderr. A non-zero status is not an
    /// error here; only failing to run the program is.
    fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> io::Result<Output>;
}

/// Runs commands directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectExecutor;

impl Executor for DirectExecutor {
    fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> io::Result<Output> {
        let mut command = Command::new(program);
        command.args(args);
        spawn_and_wait(command, stdin)
    }
}

/// Runs every command as `PREFIX... program args...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixExecutor {
    prefix: Vec<String>,
}

impl PrefixExecutor {
    /// A prefix of one or more words; the first is the program that is run. An empty prefix
    /// behaves like [`DirectExecutor`].
    pub fn new<I, S>(prefix: I) -> PrefixExecutor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PrefixExecutor {
            prefix: prefix.into_iter().map(Into::into).collect(),
        }
    }

    /// `ip netns exec NAME`: run inside the named network namespace.
    pub fn netns(name: &str) -> PrefixExecutor {
        PrefixExecutor::new(["ip", "netns", "exec", name])
    }

    /// The prefix words.
    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }
}

impl Executor for PrefixExecutor {
    fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> io::Result<Output> {
        let Some((first, rest)) = self.prefix.split_first() else {
            return DirectExecutor.run(program, args, stdin);
        };
        let mut command = Command::new(first);
        command.args(rest).arg(program).args(args);
        spawn_and_wait(command, stdin)
    }
}

fn spawn_and_wait(mut command: Command, stdin: Option<&str>) -> io::Result<Output> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The scripts are a few hundred bytes: far below the pipe buffer, so writing before
        // reading the output cannot deadlock. A child that exits early closes the pipe; its
        // status then tells what went wrong, so a write error is not reported on its own.
        let _ = pipe.write_all(input.as_bytes());
    }
    child.wait_with_output()
}

/// A bad `--exclude-ports` / `--exclude-cidrs` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// One entry of a port list is not a port.
    #[error(
        "invalid port {item:?}: {reason} (expected comma-separated ports 1-65535, like \"80,443\")"
    )]
    Port {
        /// The offending entry.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One entry of a CIDR list is not a network or address.
    #[error(
        "invalid CIDR {item:?}: {reason} (expected comma-separated networks or addresses, like \"10.0.0.0/8,fd00::/8\")"
    )]
    Cidr {
        /// The offending entry.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Parses a comma-separated port list such as `"80,443"` (spaces around entries allowed,
/// duplicates dropped, order kept). An empty or all-blank string is an empty list.
pub fn parse_ports(list: &str) -> Result<Vec<u16>, ParseError> {
    let mut ports = Vec::new();
    for item in split_list(list) {
        let error = |reason: &str| ParseError::Port {
            item: item.to_owned(),
            reason: reason.to_owned(),
        };
        if item.is_empty() {
            return Err(error("empty entry"));
        }
        if !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error("not a number"));
        }
        let port = match item.parse::<u16>() {
            Ok(0) => return Err(error("port 0 cannot be a destination port")),
            Ok(port) => port,
            Err(_) => return Err(error("out of range (largest port is 65535)")),
        };
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Parses a comma-separated list of IPv4/IPv6 networks such as `"10.0.0.0/8,::1/128"`. A bare
/// address is a single host (`/32`, `/128`); host bits are cleared (`10.1.2.3/8` →
/// `10.0.0.0/8`, as iptables would store it). Duplicates are dropped, order kept; an empty or
/// all-blank string is an empty list.
pub fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, ParseError> {
    let mut nets = Vec::new();
    for item in split_list(list) {
        let error = |reason: String| ParseError::Cidr {
            item: item.to_owned(),
            reason,
        };
        if item.is_empty() {
            return Err(error("empty entry".to_owned()));
        }
        let net = if item.contains('/') {
            item.parse::<IpNet>()
                .map_err(|e| error(format!("{e} (not ADDRESS/PREFIX-LENGTH)")))?
        } else {
            IpNet::from(
                item.parse::<IpAddr>()
                    .map_err(|e| error(format!("{e} (not an IPv4 or IPv6 address)")))?,
            )
        };
        let net = net.trunc();
        if !nets.contains(&net) {
            nets.push(net);
        }
    }
    Ok(nets)
}

/// The trimmed entries of a comma-separated list; none for a blank string.
fn split_list(list: &str) -> Vec<&str> {
    if list.trim().is_empty() {
        Vec::new()
    } else {
        list.split(',').map(str::trim).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::process::ExitStatusExt;

    const DEFAULT_PRINT: &str = "\
iptables -t nat -N EGRET_REDIRECT
iptables -t nat -N EGRET_OUTPUT
iptables -t nat -A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 15001
iptables -t nat -A EGRET_OUTPUT -m owner --uid-owner 1337 -j RETURN
iptables -t nat -A EGRET_OUTPUT -m owner --gid-owner 1337 -j RETURN
iptables -t nat -A EGRET_OUTPUT -d 127.0.0.0/8 -j RETURN
iptables -t nat -A EGRET_OUTPUT -o lo -j RETURN
iptables -t nat -A EGRET_OUTPUT -j EGRET_REDIRECT
iptables -t nat -A OUTPUT -p tcp -j EGRET_OUTPUT
ip6tables -t nat -N EGRET_REDIRECT
ip6tables -t nat -N EGRET_OUTPUT
ip6tables -t nat -A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 15001
ip6tables -t nat -A EGRET_OUTPUT -m owner --uid-owner 1337 -j RETURN
ip6tables -t nat -A EGRET_OUTPUT -m owner --gid-owner 1337 -j RETURN
ip6tables -t nat -A EGRET_OUTPUT -d ::1/128 -j RETURN
ip6tables -t nat -A EGRET_OUTPUT -o lo -j RETURN
ip6tables -t nat -A EGRET_OUTPUT -j EGRET_REDIRECT
ip6tables -t nat -A OUTPUT -p tcp -j EGRET_OUTPUT
";

    #[test]
    fn default_print_is_istio_shape() {
        assert_eq!(CaptureConfig::default().print(), DEFAULT_PRINT);
    }

    #[test]
    fn script_lists_chains_then_rules_like_iptables_save() {
        let config = CaptureConfig {
            proxy_uid: 1000,
            proxy_gid: Some(2000),
            outbound_port: 16001,
            exclude_ports: vec![22, 8443],
            exclude_cidrs: parse_cidrs("10.1.2.3/8, 2001:db8::/32,192.0.2.7").unwrap(),
            include_ipv6: true,
        };
        assert_eq!(
            config.script(Family::V4),
            "\
*nat
:EGRET_OUTPUT - [0:0]
:EGRET_REDIRECT - [0:0]
-A OUTPUT -p tcp -j EGRET_OUTPUT
-A EGRET_OUTPUT -m owner --uid-owner 1000 -j RETURN
-A EGRET_OUTPUT -m owner --gid-owner 2000 -j RETURN
-A EGRET_OUTPUT -d 127.0.0.0/8 -j RETURN
-A EGRET_OUTPUT -o lo -j RETURN
-A EGRET_OUTPUT -p tcp -m tcp --dport 22 -j RETURN
-A EGRET_OUTPUT -p tcp -m tcp --dport 8443 -j RETURN
-A EGRET_OUTPUT -d 10.0.0.0/8 -j RETURN
-A EGRET_OUTPUT -d 192.0.2.7/32 -j RETURN
-A EGRET_OUTPUT -j EGRET_REDIRECT
-A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 16001
COMMIT
"
        );
        let v6 = config.script(Family::V6);
        assert!(v6.contains("-A EGRET_OUTPUT -d 2001:db8::/32 -j RETURN\n"));
        assert!(v6.contains("-A EGRET_OUTPUT -d ::1/128 -j RETURN\n"));
        assert!(!v6.contains("10.0.0.0/8"));
        assert!(!v6.contains("127.0.0.0/8"));
        assert!(!config.script(Family::V4).contains("2001:db8"));
    }

    #[test]
    fn without_ipv6_only_iptables() {
        let config = CaptureConfig {
            include_ipv6: false,
            ..CaptureConfig::default()
        };
        assert!(config.rules().iter().all(|r| r.family == Family::V4));
        assert!(!config.print().contains("ip6tables"));
        assert_eq!(
            config.print(),
            DEFAULT_PRINT
                .lines()
                .take(9)
                .fold(String::new(), |s, l| s + l + "\n")
        );
    }

    #[test]
    fn nft_script_mirrors_the_iptables_rules() {
        assert_eq!(
            CaptureConfig::default().nft_script(),
            "\
table inet egret {
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta l4proto != tcp return
\t\tmeta skuid 1337 return
\t\tmeta skgid 1337 return
\t\tip daddr 127.0.0.0/8 return
\t\tip6 daddr ::1 return
\t\toifname \"lo\" return
\t\tmeta l4proto tcp redirect to :15001
\t}
}
"
        );
        let config = CaptureConfig {
            proxy_gid: Some(7),
            exclude_ports: vec![8443],
            exclude_cidrs: parse_cidrs("10.1.0.0/16,192.0.2.7,2001:db8::/32").unwrap(),
            include_ipv6: false,
            ..CaptureConfig::default()
        };
        let script = config.nft_script();
        for line in [
            "\t\tmeta nfproto ipv6 return\n",
            "\t\tmeta skgid 7 return\n",
            "\t\ttcp dport 8443 return\n",
            "\t\tip daddr 10.1.0.0/16 return\n",
            "\t\tip daddr 192.0.2.7 return\n",
        ] {
            assert!(script.contains(line), "{line:?} missing from\n{script}");
        }
        assert!(!script.contains("ip6 daddr"), "{script}");
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_ports("80,443").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports(" 80 , 443,80 ").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        assert_eq!(parse_ports("  ").unwrap(), Vec::<u16>::new());
        for (bad, item) in [
            ("80,,443", ""),
            ("80,", ""),
            ("http", "http"),
            ("0", "0"),
            ("65536", "65536"),
            ("-1", "-1"),
            ("80:90", "80:90"),
        ] {
            match parse_ports(bad) {
                Err(ParseError::Port { item: got, .. }) => assert_eq!(got, item, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let message = parse_ports("80,abc").unwrap_err().to_string();
        assert!(message.contains("\"abc\""), "{message}");
        assert!(message.contains("not a number"), "{message}");
    }

    #[test]
    fn cidrs_parse() {
        let nets = parse_cidrs("10.0.0.0/8,::1/128").unwrap();
        assert_eq!(
            nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.0/8", "::1/128"]
        );
        let nets = parse_cidrs(" 192.0.2.1 , fd00::1 ,10.9.8.7/16,192.0.2.1/32").unwrap();
        assert_eq!(
            nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["192.0.2.1/32", "fd00::1/128", "10.9.0.0/16"]
        );
        assert!(parse_cidrs("").unwrap().is_empty());
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/8,",
            "::1/129",
            "/8",
        ] {
            let err = parse_cidrs(bad).unwrap_err();
            assert!(matches!(err, ParseError::Cidr { .. }), "{bad}: {err:?}");
        }
        let message = parse_cidrs("10.0.0.0/8,nope").unwrap_err().to_string();
        assert!(message.contains("\"nope\""), "{message}");
    }

    /// Given a command line, the exit code and stderr a [`Fake`] answers with.
    type Answer = Box<dyn Fn(&str) -> (i32, &'static str)>;

    /// Records commands (and their stdin); answers through an [`Answer`].
    struct Fake {
        calls: RefCell<Vec<(String, Option<String>)>>,
        answer: Answer,
    }

    impl Fake {
        fn new(answer: impl Fn(&str) -> (i32, &'static str) + 'static) -> Fake {
            Fake {
                calls: RefCell::new(Vec::new()),
                answer: Box::new(answer),
            }
        }

        fn lines(&self) -> Vec<String> {
            self.calls.borrow().iter().map(|(c, _)| c.clone()).collect()
        }
    }

    impl Executor for Fake {
        fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> io::Result<Output> {
            let line = command_line(program, args);
            let (code, stderr) = (self.answer)(&line);
            self.calls
                .borrow_mut()
                .push((line, stdin.map(str::to_owned)));
            Ok(Output {
                status: ExitStatus::from_raw(code << 8),
                stdout: Vec::new(),
                stderr: stderr.as_bytes().to_vec(),
            })
        }
    }

    #[test]
    fn apply_adds_the_jump_only_when_absent() {
        let config = CaptureConfig {
            include_ipv6: false,
            ..CaptureConfig::default()
        };
        let absent = Fake::new(|line| (i32::from(line.contains(" -C ")), ""));
        config.apply_in(&absent).unwrap();
        assert_eq!(
            absent.lines(),
            [
                "iptables-restore --noflush",
                "iptables -t nat -C OUTPUT -p tcp -j EGRET_OUTPUT",
                "iptables -t nat -A OUTPUT -p tcp -j EGRET_OUTPUT",
            ]
        );
        let script = absent.calls.borrow()[0].1.clone().unwrap();
        assert!(!script.contains("-A OUTPUT"), "{script}");
        assert!(script.starts_with("*nat\n:EGRET_OUTPUT - [0:0]\n:EGRET_REDIRECT - [0:0]\n"));

        let present = Fake::new(|_| (0, ""));
        config.apply_in(&present).unwrap();
        assert_eq!(present.lines().len(), 2);
    }

    #[test]
    fn errors_name_the_command_and_its_stderr() {
        let fake = Fake::new(|line| {
            if line.starts_with("ip6tables-restore") {
                (2, "ip6tables-restore: line 3 failed\n")
            } else {
                (0, "")
            }
        });
        let err = CaptureConfig::default().apply_in(&fake).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("`ip6tables-restore --noflush`"),
            "{message}"
        );
        assert!(
            message.contains("ip6tables-restore: line 3 failed"),
            "{message}"
        );
        assert!(message.contains("exit status: 2"), "{message}");

        let denied = Fake::new(|_| (4, "Permission denied (you must be root)"));
        let message = clean_in(&denied).unwrap_err().to_string();
        assert!(
            message.contains("iptables -t nat -S EGRET_OUTPUT"),
            "{message}"
        );
        assert!(message.contains("you must be root"), "{message}");

        let missing = PrefixExecutor::new(["/nonexistent/egret-test-prefix"]);
        let err = CaptureConfig::default().apply_in(&missing).unwrap_err();
        assert!(matches!(err, CaptureError::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn clean_removes_every_jump_and_both_chains() {
        // Two copies of the jump in IPv4; nothing at all in IPv6.
        let jumps = RefCell::new(2);
        let fake = Fake::new(move |line| {
            if line.starts_with("ip6tables") {
                return (1, "");
            }
            if line.ends_with("-C OUTPUT -p tcp -j EGRET_OUTPUT") {
                return (i32::from(*jumps.borrow() == 0), "");
            }
            if line.ends_with("-D OUTPUT -p tcp -j EGRET_OUTPUT") {
                *jumps.borrow_mut() -= 1;
            }
            (0, "")
        });
        clean_in(&fake).unwrap();
        assert_eq!(
            fake.lines(),
            [
                "iptables -t nat -S EGRET_OUTPUT",
                "iptables -t nat -S EGRET_REDIRECT",
                "iptables -t nat -C OUTPUT -p tcp -j EGRET_OUTPUT",
                "iptables -t nat -D OUTPUT -p tcp -j EGRET_OUTPUT",
                "iptables -t nat -C OUTPUT -p tcp -j EGRET_OUTPUT",
                "iptables -t nat -D OUTPUT -p tcp -j EGRET_OUTPUT",
                "iptables -t nat -C OUTPUT -p tcp -j EGRET_OUTPUT",
                "iptables -t nat -F EGRET_OUTPUT",
                "iptables -t nat -F EGRET_REDIRECT",
                "iptables -t nat -X EGRET_OUTPUT",
                "iptables -t nat -X EGRET_REDIRECT",
                "ip6tables -t nat -S EGRET_OUTPUT",
                "ip6tables -t nat -S EGRET_REDIRECT",
            ]
        );
    }
}
