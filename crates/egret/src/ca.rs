//! `egret ca init|issue`: a file-based mesh CA (egret-identity) for standalone installs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use egret_identity::{Ca, DEFAULT_TRUST_DOMAIN};

#[derive(Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA (ECDSA P-256, 10 years) and a signing intermediate (1 year) in DIR.
    /// Refuses to overwrite an existing CA.
    Init {
        /// The CA directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Issue an X.509-SVID for spiffe://<trust-domain>/ns/<NS>/sa/<SA> and write Istio's
    /// cert-chain.pem, key.pem and root-cert.pem into OUT.
    Issue {
        /// The CA directory (from `egret ca init`).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// The identity directory to write (created if missing; files are replaced).
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime (Go duration syntax: 24h, 90m, 1h30m).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = egret_config::types::Duration::parse(s)?.to_std();
    if d.is_zero() {
        return Err("ttl must be positive".into());
    }
    Ok(d)
}

pub fn run(args: CaArgs) -> ExitCode {
    let result = match args.command {
        CaCommand::Init { dir, trust_domain } => init(&dir, &trust_domain),
        CaCommand::Issue {
            dir,
            namespace,
            service_account,
            out,
            ttl,
        } => issue(&dir, &namespace, &service_account, &out, ttl),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret ca: {e}");
            ExitCode::from(1)
        }
    }
}

fn init(dir: &Path, trust_domain: &str) -> Result<(), String> {
    let ca = Ca::init(dir, trust_domain).map_err(|e| e.to_string())?;
    println!(
        "created CA for trust domain {} in {}",
        ca.trust_domain(),
        dir.display()
    );
    for f in egret_identity::ca::CA_FILES {
        println!("  wrote {}", dir.join(f).display());
    }
    Ok(())
}

fn issue(
    dir: &Path,
    namespace: &str,
    service_account: &str,
    out: &Path,
    ttl: std::time::Duration,
) -> Result<(), String> {
    if out.join(egret_identity::ca::CA_KEY_FILE).exists() {
        return Err(format!(
            "--out {} is a CA directory; write identities elsewhere",
            out.display()
        ));
    }
    let ca = Ca::load(dir).map_err(|e| format!("loading the CA: {e}"))?;
    let svid = ca
        .issue(namespace, service_account, ttl)
        .map_err(|e| e.to_string())?;
    let written = svid.write(out).map_err(|e| e.to_string())?;
    println!(
        "issued {} (valid {}s, serial {})",
        svid.spiffe_id,
        ttl.as_secs(),
        svid.serial()
            .map(|s| s.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .unwrap_or_default()
    );
    for p in written {
        println!("  wrote {}", p.display());
    }
    Ok(())
}
