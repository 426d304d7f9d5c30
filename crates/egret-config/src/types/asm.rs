//! Alibaba Cloud ASM `ASMEgressTrafficPolicy` (`istio.alibabacloud.com/v1beta1`,
//! `istio-egress-spec.md` §8). egret expands it into the Istio objects ASM generates; see
//! `egret_model::asm`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::networking::ServicePort;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsmEgressTrafficPolicy {
    pub by_egress_gateway: Option<EgressGatewayRef>,
    #[serde(default)]
    pub egress_rules: Vec<EgressRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewayRef {
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default)]
    pub from: Vec<EgressFrom>,
    #[serde(default)]
    pub to: Vec<EgressTo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressFrom {
    pub namespace: Option<String>,
    /// A plain label map (not `labels:` / `matchLabels:`), as in ASM's example.
    #[serde(default)]
    pub workload_selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressTo {
    pub name: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub port: Option<ServicePort>,
    pub by_egress_gateway: Option<EgressGatewayPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewayPort {
    pub port: Option<u32>,
}
