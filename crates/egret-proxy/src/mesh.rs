//! The mesh tunnel: how a sidecar reaches an egress gateway, always over mutual TLS with
//! SPIFFE identities in both directions (issue "sidecar→gateway is always mTLS").
//!
//! Istio sends sidecar→gateway traffic in plaintext unless a DestinationRule says
//! `ISTIO_MUTUAL`, and tunnels raw TCP only by putting the destination into the SNI
//! (`outbound_.443_._.host`). egret does what Istio ambient's HBONE does instead:
//!
//! - the sidecar opens TLS 1.3 to the gateway endpoint (the gateway Service's address and
//!   port, exactly where Istio would connect), offering ALPN [`MESH_ALPN`], presenting its
//!   X.509-SVID and accepting only the gateway identity it expects;
//! - inside runs HTTP/2, one connection per gateway endpoint, pooled and multiplexed;
//! - an HTTP request the sidecar routed to the gateway is one HTTP/2 request (`:authority` is
//!   the request's host);
//! - a TLS or TCP connection is one HTTP/2 `CONNECT` stream whose `:authority` is the
//!   destination (the SNI for TLS); the application's bytes flow inside it untouched.
//!
//! The gateway recognises the tunnel by the ALPN in the ClientHello, requires a client SVID of
//! its trust domain, and so knows the caller's principal for every request and stream. Whatever
//! arrives on a gateway port without the tunnel is refused unless the gateway runs with
//! `--allow-direct` (non-mesh clients: no caller identity).

use std::sync::{Arc, Mutex};

use egret_identity::{IdentityStore, SpiffeId};
use egret_model::snapshot::Cluster;
use rustls::{ClientConfig, ServerConfig};

/// ALPN protocol of the mesh tunnel (TLS 1.3, HTTP/2 inside).
pub const MESH_ALPN: &str = "egret-tunnel";

/// The proxy's mesh identity and the TLS configurations built from it. The configurations
/// read the current certificate and trust bundle through the store at every handshake, so a
/// rotation needs no rebuild and established connections are untouched.
pub struct MeshTls {
    store: IdentityStore,
    server: Arc<ServerConfig>,
    /// Client configurations by the set of identities they accept, shared across config
    /// reloads so that pooled tunnel connections (keyed by configuration) survive them.
    clients: Mutex<Vec<(Vec<SpiffeId>, Arc<ClientConfig>)>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    pub fn new(store: IdentityStore) -> Result<MeshTls, egret_identity::IdentityError> {
        let server = Arc::new(store.server_config(&[MESH_ALPN.as_bytes()])?);
        Ok(MeshTls {
            store,
            server,
            clients: Mutex::new(Vec::new()),
        })
    }

    pub fn store(&self) -> &IdentityStore {
        &self.store
    }

    /// The gateway's tunnel listener: client SVIDs of our trust domain required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client configuration for a tunnel to `cluster`, accepting only the identities
    /// [`expected_identities`] names.
    pub fn client_config(&self, cluster: &Cluster) -> Result<Arc<ClientConfig>, String> {
        let expected = expected_identities(cluster, self.store.spiffe_id().trust_domain())?;
        let mut cache = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, c)) = cache.iter().find(|(ids, _)| *ids == expected) {
            return Ok(c.clone());
        }
        let config = Arc::new(
            self.store
                .client_config(expected.clone(), &[MESH_ALPN.as_bytes()])
                .map_err(|e| e.to_string())?,
        );
        cache.push((expected, config.clone()));
        Ok(config)
    }
}

/// Which SPIFFE identities a sidecar accepts from the gateway behind `cluster`, in Istio's
/// order for `ISTIO_MUTUAL`: the DestinationRule's `subjectAltNames`, else the ServiceEntry's
/// `subjectAltNames` (both merged into the cluster policy by the compiler), else the endpoints'
/// `serviceAccount`s, else Istio's installation convention for gateways,
/// `<service name>-service-account` in the service's namespace
/// (`istio-egressgateway-service-account` in `istio-system`).
pub fn expected_identities(cluster: &Cluster, trust_domain: &str) -> Result<Vec<SpiffeId>, String> {
    let mut ids = Vec::new();
    for san in &cluster.policy.tls.subject_alt_names {
        let id = SpiffeId::parse(san)
            .map_err(|e| format!("subjectAltNames entry {san:?} is not a SPIFFE ID: {e}"))?;
        ids.push(id);
    }
    let namespace = cluster
        .service
        .as_deref()
        .and_then(|s| s.split_once('/'))
        .map(|(ns, _)| ns.to_string())
        .or_else(|| cluster.host.split('.').nth(1).map(str::to_string))
        .unwrap_or_else(|| "default".to_string());
    if ids.is_empty() {
        for ep in &cluster.endpoints {
            if let Some(sa) = &ep.service_account {
                let id = SpiffeId::workload(trust_domain, &namespace, sa)
                    .map_err(|e| format!("endpoint serviceAccount {sa:?}: {e}"))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    if ids.is_empty() {
        let name = cluster.host.split('.').next().unwrap_or(&cluster.host);
        let sa = format!("{name}-service-account");
        ids.push(
            SpiffeId::workload(trust_domain, &namespace, &sa)
                .map_err(|e| format!("default gateway identity {sa:?}: {e}"))?,
        );
    }
    Ok(ids)
}
