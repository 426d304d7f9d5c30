//! The egret binary: one command per job (DESIGN.md "Command line").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use egret_config::{ConfigSet, Diagnostics, LoadOptions, Loader, Severity};
use egret_model::{ProxyIdentity, Role};

mod ca;
mod output;
mod proxy_config;
mod run;
mod up;

#[derive(Parser)]
#[command(
    name = "egret",
    version,
    about = "A Rust service-mesh egress system that reads Istio configuration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole egress path on this machine, without root: a mesh CA, an egress
    /// gateway, a sidecar (explicit proxy) and a local stand-in for an external HTTPS API;
    /// prints the commands to try. Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Check Istio / ASM YAML: print diagnostics as `file:line: severity: Kind ns/name: field:
    /// message`. Exit 0 when clean, 1 on errors, 2 when input cannot be read.
    Validate {
        /// Files or directories (read recursively, .yaml/.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// MeshConfig file (plain MeshConfig YAML, an IstioOperator or the `istio` ConfigMap).
        #[arg(long)]
        mesh_config: Option<PathBuf>,
        /// Also print notes (skipped Kubernetes kinds).
        #[arg(long)]
        notes: bool,
    },
    /// Run the sidecar proxy in standalone mode: compile PATH itself, watch it, serve.
    Sidecar(run::SidecarArgs),
    /// Run an egress gateway: serve the Gateway servers whose selector matches --labels.
    Gateway(run::GatewayArgs),
    /// Traffic capture rules for the workload's network namespace (Istio's istio-iptables
    /// shape): `apply`, `print` or `clean`.
    Iptables(run::IptablesArgs),
    /// The mesh CA: `init` creates a root and signing intermediate, `issue` writes a workload
    /// identity (cert-chain.pem, key.pem, root-cert.pem).
    Ca(ca::CaArgs),
    /// What a running proxy serves, read from its admin endpoint (like `istioctl
    /// proxy-config`): listeners, routes, clusters, endpoints, secrets, version or all.
    ProxyConfig(proxy_config::ProxyConfigArgs),
    /// Compile the configuration for one proxy and print its snapshot.
    Compile {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The proxy's namespace.
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "default")]
        service_account: String,
        /// Workload labels, `k=v,k2=v2`.
        #[arg(long, default_value = "")]
        labels: String,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        #[arg(long)]
        mesh_config: Option<PathBuf>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Sidecar(args) => run::sidecar(args),
        Command::Gateway(args) => run::gateway(args),
        Command::Iptables(args) => run::iptables(args),
        Command::Ca(args) => ca::run(args),
        Command::ProxyConfig(args) => proxy_config::run(args),
        Command::Validate {
            paths,
            mesh_config,
            notes,
        } => {
            let (set, diags) = match load(&paths, mesh_config.as_ref()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("egret: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut all = diags;
            all.extend(egret_model::check(&set));
            all.sort();
            print_diagnostics(&all, notes, false);
            let errors = all.errors().count();
            let warnings = all
                .iter()
                .filter(|d| d.severity == Severity::Warning)
                .count();
            eprintln!(
                "{} objects, {errors} errors, {warnings} warnings",
                set.object_count()
            );
            if errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Compile {
            role,
            namespace,
            service_account,
            labels,
            format,
            mesh_config,
            paths,
        } => {
            let labels = match egret_model::parse_labels(&labels) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("egret: --labels: {e}");
                    return ExitCode::from(2);
                }
            };
            let (set, load_diags) = match load(&paths, mesh_config.as_ref()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("egret: {e}");
                    return ExitCode::from(2);
                }
            };
            let proxy = ProxyIdentity {
                role,
                namespace,
                service_account,
                labels,
            };
            let (snapshot, diags) = egret_model::compile(&set, &proxy);
            let mut all = load_diags;
            all.extend(diags);
            all.sort();
            print_diagnostics(&all, false, true);
            if all.has_errors() {
                eprintln!("egret: configuration has errors; no snapshot");
                return ExitCode::from(1);
            }
            let text = match format {
                Format::Json => output::json(&snapshot),
                Format::Yaml => output::yaml(&snapshot),
            };
            match text {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("egret: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn load(
    paths: &[PathBuf],
    mesh_config: Option<&PathBuf>,
) -> Result<(ConfigSet, Diagnostics), egret_config::LoadError> {
    let mut l = Loader::new(LoadOptions::default());
    for p in paths {
        l.add_path(p)?;
    }
    if let Some(m) = mesh_config {
        l.add_mesh_config_file(m)?;
    }
    Ok(l.finish())
}

fn print_diagnostics(diags: &Diagnostics, notes: bool, to_stderr: bool) {
    for d in diags.iter() {
        if d.severity == Severity::Note && !notes {
            continue;
        }
        if to_stderr {
            eprintln!("{d}");
        } else {
            println!("{d}");
        }
    }
}
