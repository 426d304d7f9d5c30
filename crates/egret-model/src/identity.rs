//! Who the snapshot is compiled for.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Beside a workload: captures its outbound traffic; bound to the `mesh` gateway.
    Sidecar,
    /// An egress gateway: serves the Gateway servers whose selector matches its labels.
    Gateway,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "sidecar" => Ok(Role::Sidecar),
            "gateway" => Ok(Role::Gateway),
            _ => Err(format!("unknown role {s:?}: expected sidecar or gateway")),
        }
    }
}

/// The proxy a snapshot is for: its role, namespace, workload labels and service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyIdentity {
    pub role: Role,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl ProxyIdentity {
    pub fn sidecar(namespace: &str) -> ProxyIdentity {
        ProxyIdentity {
            role: Role::Sidecar,
            namespace: namespace.to_string(),
            service_account: "default".to_string(),
            labels: BTreeMap::new(),
        }
    }

    pub fn gateway(namespace: &str, labels: &[(&str, &str)]) -> ProxyIdentity {
        ProxyIdentity {
            role: Role::Gateway,
            namespace: namespace.to_string(),
            service_account: "default".to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn with_labels(mut self, labels: &[(&str, &str)]) -> ProxyIdentity {
        for (k, v) in labels {
            self.labels.insert(k.to_string(), v.to_string());
        }
        self
    }

    /// Do this proxy's labels include every `key: value` of `selector`? (An empty selector
    /// selects everything, as in Kubernetes.)
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// Parse `k=v,k2=v2` (the `--labels` flag).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not key=value"))?;
        if k.is_empty() {
            return Err(format!("label {part:?} has an empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}
