//! A typed Kubernetes-style object (metadata + spec) that remembers where it was written.

use std::collections::BTreeMap;
use std::fmt;

use crate::diag::{Diagnostic, ObjectRef, Origin, Severity};

/// The kinds egret reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ServiceEntry,
    DestinationRule,
    VirtualService,
    Gateway,
    Sidecar,
    WorkloadEntry,
    AuthorizationPolicy,
    RequestAuthentication,
    AsmEgressTrafficPolicy,
    /// egret's own `egret.io/v1alpha1` RateLimitPolicy.
    RateLimitPolicy,
    MeshConfig,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::AsmEgressTrafficPolicy => "ASMEgressTrafficPolicy",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::MeshConfig => "MeshConfig",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of Kubernetes `ObjectMeta` egret uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Object<S> {
    pub kind: Kind,
    pub api_version: String,
    pub meta: Meta,
    pub spec: S,
    pub origin: Origin,
    /// Set on objects egret generated (ASM expansion): the object they came from.
    pub generated_from: Option<ObjectRef>,
}

impl<S> Object<S> {
    pub fn obj_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind.as_str().to_string(),
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
        }
    }

    /// A diagnostic about `field` (a path such as `spec.hosts[0]`) of this object.
    pub fn diag(&self, severity: Severity, field: &str, message: impl Into<String>) -> Diagnostic {
        let mut message = message.into();
        if let Some(src) = &self.generated_from {
            message.push_str(&format!(" (generated from {src})"));
        }
        Diagnostic {
            severity,
            file: self.origin.file.to_string(),
            line: self.origin.line_of(field),
            object: Some(self.obj_ref()),
            field: field.to_string(),
            message,
        }
    }

    pub fn error(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Error, field, message)
    }

    pub fn warning(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Warning, field, message)
    }

    /// `namespace/name`, the key Istio uses for most references.
    pub fn key(&self) -> String {
        format!("{}/{}", self.meta.namespace, self.meta.name)
    }
}
