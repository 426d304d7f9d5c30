//! Egress policy: who may call what, with which token, how often — and a record of every
//! decision (`istio-egress-spec.md` §6; DESIGN.md "Gateway").
//!
//! Order on the HTTP path (Envoy's filter order in an Istio proxy): path normalization ->
//! JWT (`jwt`, RequestAuthentication: an invalid token is 401) -> CUSTOM (`ext_authz`) ->
//! DENY -> ALLOW (`authz`) -> rate limits (`ratelimit`) -> route. TLS and TCP connections go
//! through the same authorization and rate limits with the attributes a connection has
//! (principal, addresses, port, SNI) when the connection is set up.
//!
//! Everything here is compiled once per configuration snapshot; a decision is a few hash
//! lookups and string comparisons, never a lock held across an `.await`.

pub mod attrs;
pub mod audit;
pub mod authz;
pub mod enforce;
pub mod ext_authz;
pub mod jwks;
pub mod jwt;
pub mod normalize;
pub mod ratelimit;
pub mod redis;

pub use attrs::{Attrs, Protocol, RequestAuth, istio_match, principal_of};
