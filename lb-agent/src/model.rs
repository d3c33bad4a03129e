//! A snapshot of the Kubernetes objects the agent plans from, and the diagnostics reported about them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

/// Every object the plan depends on, as read from manifests or the API.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
}

/// A problem with one object (or one manifest document) that was skipped, in whole or in part.
///
/// Diagnostics are values: the pure steps return them and the caller decides how to show them
/// (`lb-agent plan` prints `warning: {diagnostic}` on stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The object's kind ("Service", "EndpointSlice", "Node"), when known.
    pub kind: Option<String>,
    /// "namespace/name" for namespaced objects, "name" for Nodes, when it could be read.
    pub object: Option<String>,
    /// The manifest file the object came from (loader diagnostics only).
    pub file: Option<PathBuf>,
    /// What is wrong and what was skipped because of it.
    pub reason: String,
}

impl Diagnostic {
    /// A diagnostic about a named object.
    pub fn object(kind: &str, object: impl Into<String>, reason: impl Into<String>) -> Self {
        Diagnostic {
            kind: Some(kind.to_owned()),
            object: Some(object.into()),
            file: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `NAMESPACE/NAME: Kind in FILE: reason`, leaving out the parts that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote_subject = false;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
            wrote_subject = true;
        }
        match (&self.kind, &self.file) {
            (Some(kind), Some(file)) => write!(f, "{kind} in {}: ", file.display())?,
            (None, Some(file)) => write!(f, "{}: ", file.display())?,
            (Some(kind), None) if !wrote_subject => write!(f, "{kind}: ")?,
            _ => {}
        }
        write!(f, "{}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a diagnostic prints the object first, as `warning: NAMESPACE/NAME: reason` needs.
    #[test]
    fn diagnostic_display_starts_with_the_object() {
        let d = Diagnostic::object("Service", "default/web", "invalid clusterIP \"x\"");
        assert_eq!(d.to_string(), "default/web: invalid clusterIP \"x\"");
        let d = Diagnostic {
            kind: Some("Service".into()),
            object: Some("default/web".into()),
            file: Some(PathBuf::from("/m/a.yaml")),
            reason: "bad".into(),
        };
        assert_eq!(d.to_string(), "default/web: Service in /m/a.yaml: bad");
        let d = Diagnostic {
            kind: None,
            object: None,
            file: Some(PathBuf::from("/m/a.yaml")),
            reason: "document 2: not YAML".into(),
        };
        assert_eq!(d.to_string(), "/m/a.yaml: document 2: not YAML");
    }
}
