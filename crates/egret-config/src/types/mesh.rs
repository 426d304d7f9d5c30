//! MeshConfig: the mesh-wide settings egret reads (`istio-egress-spec.md` §0, §5, §6, §9).
//!
//! It arrives as `spec.meshConfig` of an `IstioOperator`, as the `mesh` key (a YAML string) of
//! the `istio` ConfigMap, or as a file given with `--mesh-config`. Fields not listed here are
//! reported as "not supported, ignored".

use serde::Deserialize;
use serde_json::Value;

use super::common::Duration;
use super::networking::{LocalityLbSetting, OutboundTrafficPolicy};
use crate::istio_enum;

istio_enum!(
    /// `accessLogEncoding`. Default TEXT.
    AccessLogEncoding { Text = "TEXT", Json = "JSON" }
);

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    pub root_namespace: Option<String>,
    pub access_log_file: Option<String>,
    pub access_log_encoding: Option<AccessLogEncoding>,
    pub access_log_format: Option<String>,
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    #[serde(default)]
    pub default_service_export_to: Vec<String>,
    #[serde(default)]
    pub default_virtual_service_export_to: Vec<String>,
    #[serde(default)]
    pub default_destination_rule_export_to: Vec<String>,
    pub connect_timeout: Option<Duration>,
    pub dns_refresh_rate: Option<Duration>,
    pub enable_auto_mtls: Option<bool>,
    pub enable_tracing: Option<bool>,
    pub default_http_retry_policy: Option<super::networking::HttpRetry>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub default_config: Option<Value>,
    /// `defaultProviders`: which extension providers are on for every workload (tracing,
    /// access logging); the built-in `envoy` access-log provider writes TEXT to /dev/stdout.
    pub default_providers: Option<DefaultProviders>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    #[serde(default)]
    pub tracing: Vec<String>,
    #[serde(default)]
    pub metrics: Vec<String>,
    #[serde(default)]
    pub access_logging: Vec<String>,
}

/// One `extensionProviders[]` entry. Exactly one provider block is expected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: Option<String>,
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    pub opentelemetry: Option<OpenTelemetryProvider>,
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    pub prometheus: Option<Value>,
    pub zipkin: Option<Value>,
    pub datadog: Option<Value>,
    pub skywalking: Option<Value>,
    pub stackdriver: Option<Value>,
    pub lightstep: Option<Value>,
    pub envoy_otel_als: Option<Value>,
    pub envoy_http_als: Option<Value>,
    pub envoy_tcp_als: Option<Value>,
    pub sds: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzHttp {
    pub service: Option<String>,
    pub port: Option<u32>,
    pub timeout: Option<Duration>,
    pub path_prefix: Option<String>,
    pub fail_open: Option<bool>,
    pub clear_route_cache: Option<bool>,
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: std::collections::BTreeMap<String, String>,
    pub include_request_body_in_check: Option<Value>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Deprecated spelling kept by older meshes.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzGrpc {
    pub service: Option<String>,
    pub port: Option<u32>,
    pub timeout: Option<Duration>,
    pub fail_open: Option<bool>,
    pub clear_route_cache: Option<bool>,
    pub status_on_error: Option<String>,
    pub include_request_body_in_check: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    pub service: Option<String>,
    pub port: Option<u32>,
    pub max_tag_length: Option<u32>,
    pub http: Option<Value>,
    pub resource_detectors: Option<Value>,
    pub dynatrace_sampler: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAccessLogProvider {
    pub path: Option<String>,
    pub log_format: Option<Value>,
}
