//! egret-config: the Istio and Alibaba ASM configuration egret reads, as typed Rust values,
//! and a loader that keeps the file and line of every field for diagnostics.
//!
//! This crate reads files and nothing else; it knows nothing about proxies. The compiler
//! (`egret-model`) turns a [`ConfigSet`] into a per-proxy snapshot.

pub mod diag;
pub mod load;
pub mod object;
pub mod types;
pub mod unsupported;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, ObjectRef, Origin, Severity};
pub use load::{LoadError, LoadOptions, Loader};
pub use object::{Kind, Meta, Object};

use types::*;

/// Everything read from a set of files.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    pub service_entries: Vec<Object<ServiceEntry>>,
    pub destination_rules: Vec<Object<DestinationRule>>,
    pub virtual_services: Vec<Object<VirtualService>>,
    pub gateways: Vec<Object<Gateway>>,
    pub sidecars: Vec<Object<Sidecar>>,
    pub workload_entries: Vec<Object<WorkloadEntry>>,
    pub authorization_policies: Vec<Object<AuthorizationPolicy>>,
    pub request_authentications: Vec<Object<RequestAuthentication>>,
    pub asm_egress_policies: Vec<Object<AsmEgressTrafficPolicy>>,
    /// egret's `egret.io/v1alpha1` RateLimitPolicy (docs/rate-limits.md).
    pub rate_limit_policies: Vec<Object<RateLimitPolicy>>,
    pub mesh: MeshConfig,
    /// Where the mesh config came from, when it was given.
    pub mesh_origin: Option<Origin>,
}

impl ConfigSet {
    /// Load files and directories (see [`Loader::add_path`]).
    pub fn load(
        paths: &[impl AsRef<std::path::Path>],
        opts: LoadOptions,
    ) -> Result<(ConfigSet, Diagnostics), LoadError> {
        let mut l = Loader::new(opts);
        for p in paths {
            l.add_path(p.as_ref())?;
        }
        Ok(l.finish())
    }

    /// Load YAML text as if it were the file `file` (tests, stdin).
    pub fn from_str(file: &str, text: &str) -> (ConfigSet, Diagnostics) {
        let mut l = Loader::new(LoadOptions::default());
        l.add_str(file, text);
        l.finish()
    }

    pub fn object_count(&self) -> usize {
        self.service_entries.len()
            + self.destination_rules.len()
            + self.virtual_services.len()
            + self.gateways.len()
            + self.sidecars.len()
            + self.workload_entries.len()
            + self.authorization_policies.len()
            + self.request_authentications.len()
            + self.asm_egress_policies.len()
            + self.rate_limit_policies.len()
    }
}
