//! egret-model: the compiler from Istio configuration to a per-proxy [`Snapshot`].
//!
//! `compile(&ConfigSet, &ProxyIdentity) -> (Snapshot, Diagnostics)` is pure and deterministic:
//! no I/O, no clocks, no randomness. The data plane only ever serves a `Snapshot`; everything
//! Istio-specific (short names, exportTo, DestinationRule lookup and merge, gateway binding,
//! Sidecar scoping, outbound policy) is decided here, once, and indexed so that a request costs
//! a couple of hash lookups.
//!
//! Reading order: `compile` (the pipeline) -> `scope` (what a proxy sees) -> `routes`
//! (VirtualService) -> `clusters` (ServiceEntry endpoints, DestinationRule) -> `policy`
//! (outbound policy, authorization) -> `snapshot` (the output types and lookups).
//! `validate` checks objects one by one, `analyze` checks references between them, `asm`
//! expands Alibaba ASM's ASMEgressTrafficPolicy.

pub mod analyze;
pub mod asm;
pub mod clusters;
pub mod compile;
pub mod fastmap;
pub mod host;
pub mod identity;
pub mod locality;
pub mod policy;
pub mod ratelimit;
pub mod routes;
pub mod scope;
pub mod snapshot;
pub mod validate;

pub use compile::compile;
pub use identity::{ProxyIdentity, Role, parse_labels};
pub use snapshot::Snapshot;

/// Validation and analysis of a whole configuration, independent of any proxy
/// (`egret validate`).
pub fn check(set: &egret_config::ConfigSet) -> egret_config::Diagnostics {
    let (expanded, _) = asm::expand(set);
    let mut d = validate::validate(&expanded);
    d.extend(analyze::analyze(&expanded));
    d.sort();
    d
}
