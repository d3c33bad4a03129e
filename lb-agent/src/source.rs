//! Objects from a directory of manifests (the Kubernetes API source is `kube_source`).
//!
//! `load_dir` reads what `kubectl get -o yaml` prints (single objects, multi-document files and
//! `kind: List` documents) into a [`Snapshot`]. A document that cannot be read is reported as a
//! [`Diagnostic`] and the rest is still loaded; only an unreadable directory is an error.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::Value;

use crate::model::{Diagnostic, Snapshot};

/// Errors that stop loading altogether.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The manifests directory (or one of its entries) could not be listed.
    #[error("cannot read manifests directory {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir` (not in subdirectories;
/// hidden files and editor temporaries are skipped), in file-name order.
///
/// Services, discovery.k8s.io/v1 EndpointSlices and Nodes are kept; other kinds are ignored.
/// Namespaced objects without a namespace are put in "default", as `kubectl apply` would.
pub fn load_dir(dir: &Path) -> Result<(Snapshot, Vec<Diagnostic>), SourceError> {
    let read_dir_error = |source| SourceError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
        let entry = entry.map_err(read_dir_error)?;
        let path = entry.path();
        if is_manifest_name(&entry.file_name().to_string_lossy()) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();

    let mut snapshot = Snapshot::default();
    let mut diagnostics = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => load_text(&text, file, &mut snapshot, &mut diagnostics),
            Err(e) => diagnostics.push(file_diagnostic(file, format!("cannot read file: {e}"))),
        }
    }
    Ok((snapshot, diagnostics))
}

/// Loads the objects in one manifest's text into `snapshot`. `file` names the source in
/// diagnostics; a `.json` extension selects the JSON parser, anything else YAML.
pub fn load_text(
    text: &str,
    file: &Path,
    snapshot: &mut Snapshot,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let is_json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => load_value(value, file, "", snapshot, diagnostics),
            Err(e) => diagnostics.push(file_diagnostic(file, format!("not valid JSON: {e}"))),
        }
        return;
    }
    let documents = split_yaml_documents(text);
    let many = documents.len() > 1;
    for (index, (line, document)) in documents.into_iter().enumerate() {
        let place = if many {
            format!("document {} (line {line}): ", index + 1)
        } else {
            String::new()
        };
        let value = match serde_norway::from_str::<serde_norway::Value>(&document) {
            Ok(serde_norway::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                diagnostics.push(file_diagnostic(file, format!("{place}not valid YAML: {e}")));
                continue;
            }
        };
        match serde_json::to_value(&value) {
            Ok(value) => load_value(value, file, &place, snapshot, diagnostics),
            Err(e) => diagnostics.push(file_diagnostic(
                file,
                format!("{place}not a Kubernetes object: {e}"),
            )),
        }
    }
}

/// True for names of files `load_dir` reads: a manifest extension, not hidden, not an editor
/// temporary (`.#x.yaml`, `#x.yaml#`, `x.yaml~`).
fn is_manifest_name(name: &str) -> bool {
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Splits a YAML stream at `---` document markers, keeping each document's first line number.
/// Each document is parsed on its own so one broken document does not hide the others.
fn split_yaml_documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let is_start_marker =
            line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end_marker = line == "..." || line.starts_with("... ");
        if is_start_marker || is_end_marker {
            if !is_blank_document(&current) {
                documents.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = number + 1;
            if is_start_marker {
                // Content after the marker on the same line ("--- !tag" or "--- {a: b}") belongs
                // to the new document.
                let rest = line[3..].trim_start();
                if !rest.is_empty() && !rest.starts_with('#') {
                    current.push_str(rest);
                    current.push('\n');
                    start = number;
                }
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    if !is_blank_document(&current) {
        documents.push((start, current));
    }
    documents
}

/// A document holding only blank lines, comments and directives carries no object.
fn is_blank_document(document: &str) -> bool {
    document.lines().all(|l| {
        let l = l.trim_start();
        l.is_empty() || l.starts_with('#') || l.starts_with('%')
    })
}

/// Dispatches one parsed document on apiVersion/kind; `List` documents recurse into `items`.
fn load_value(
    value: Value,
    file: &Path,
    place: &str,
    snapshot: &mut Snapshot,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !value.is_object() || kind.is_empty() {
        diagnostics.push(file_diagnostic(
            file,
            format!("{place}not a Kubernetes object (no kind)"),
        ));
        return;
    }
    if let Some(item_kind) = list_item_kind(&kind) {
        let Some(Value::Array(items)) = value.get("items").cloned() else {
            if value.get("items").is_some_and(|i| !i.is_null()) {
                diagnostics.push(file_diagnostic(
                    file,
                    format!("{place}{kind} items is not a list"),
                ));
            }
            return;
        };
        for (i, mut item) in items.into_iter().enumerate() {
            // Typed lists (ServiceList ...) as the API returns them leave kind out of each item.
            if let (Some(item_kind), Some(object)) = (item_kind, item.as_object_mut()) {
                object
                    .entry("kind")
                    .or_insert_with(|| Value::from(item_kind));
                object
                    .entry("apiVersion")
                    .or_insert_with(|| Value::from(api_version.as_str()));
            }
            let place = format!("{place}item {}: ", i + 1);
            load_value(item, file, &place, snapshot, diagnostics);
        }
        return;
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            if let Some(mut service) = decode::<Service>(value, &kind, file, place, diagnostics) {
                default_namespace(&mut service.metadata);
                snapshot.services.push(service.into());
            }
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            if let Some(mut slice) = decode::<EndpointSlice>(value, &kind, file, place, diagnostics)
            {
                default_namespace(&mut slice.metadata);
                snapshot.endpoint_slices.push(slice.into());
            }
        }
        ("v1", "Node") => {
            if let Some(node) = decode::<Node>(value, &kind, file, place, diagnostics) {
                snapshot.nodes.push(node.into());
            }
        }
        // Other kinds (Deployments, Pods, Endpoints, ...) are not the proxy's business.
        _ => {}
    }
}

/// For list kinds, `Some(item kind to fill in)`: `None` inside for a generic `List`.
fn list_item_kind(kind: &str) -> Option<Option<&'static str>> {
    match kind {
        "List" => Some(None),
        "ServiceList" => Some(Some("Service")),
        "EndpointSliceList" => Some(Some("EndpointSlice")),
        "NodeList" => Some(Some("Node")),
        _ => None,
    }
}

/// Deserializes a typed object, turning a failure into a diagnostic naming the object if its
/// metadata can be read.
fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    kind: &str,
    file: &Path,
    place: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    let object = object_name(&value, kind);
    match serde_json::from_value::<T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            diagnostics.push(Diagnostic {
                kind: Some(kind.to_owned()),
                object,
                file: Some(file.to_owned()),
                reason: format!("{place}invalid {kind}, skipped: {e}"),
            });
            None
        }
    }
}

/// "namespace/name" (or "name" for Nodes) read from raw metadata, if present.
fn object_name(value: &Value, kind: &str) -> Option<String> {
    let metadata = value.get("metadata")?;
    let name = metadata.get("name").and_then(Value::as_str)?;
    if kind == "Node" {
        return Some(name.to_owned());
    }
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}

fn default_namespace(metadata: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    if metadata.namespace.as_deref().is_none_or(str::is_empty) {
        metadata.namespace = Some("default".to_owned());
    }
}

fn file_diagnostic(file: &Path, reason: String) -> Diagnostic {
    Diagnostic {
        kind: None,
        object: None,
        file: Some(file.to_owned()),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, name: &str) -> (Snapshot, Vec<Diagnostic>) {
        let mut snapshot = Snapshot::default();
        let mut diagnostics = Vec::new();
        load_text(text, Path::new(name), &mut snapshot, &mut diagnostics);
        (snapshot, diagnostics)
    }

    /// Test that a multi-document file with a broken document still loads the others.
    #[test]
    fn broken_document_does_not_stop_the_rest() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: ns}
spec: {ports: [{port: \"eighty\"}]}
---
: : not yaml [
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
# only a comment
---
apiVersion: v1
kind: Node
metadata: {name: n1}
";
        let (snapshot, diagnostics) = load(text, "m.yaml");
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(snapshot.nodes.len(), 1);
        assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
        assert_eq!(diagnostics[0].object.as_deref(), Some("ns/b"));
        assert!(
            diagnostics[1].reason.contains("document 3"),
            "{}",
            diagnostics[1]
        );
    }

    /// Test that `kind: List` (kubectl get -o yaml) and typed lists are unpacked.
    #[test]
    fn lists_are_unpacked() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {clusterIP: 10.96.0.1}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-x, namespace: ns}
  addressType: IPv4
  endpoints: []
metadata: {resourceVersion: \"\"}
";
        let (snapshot, diagnostics) = load(text, "m.yaml");
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(
            snapshot.services[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(snapshot.endpoint_slices.len(), 1);

        let json = r#"{"apiVersion":"v1","kind":"NodeList","items":[{"metadata":{"name":"n1"}}]}"#;
        let (snapshot, diagnostics) = load(json, "nodes.json");
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(snapshot.nodes.len(), 1);
    }

    /// Test that hidden files and editor temporaries are not read.
    #[test]
    fn editor_files_are_skipped() {
        assert!(is_manifest_name("svc.yaml"));
        assert!(is_manifest_name("svc.YML"));
        assert!(is_manifest_name("svc.json"));
        assert!(!is_manifest_name(".svc.yaml"));
        assert!(!is_manifest_name(".#svc.yaml"));
        assert!(!is_manifest_name("#svc.yaml#"));
        assert!(!is_manifest_name("svc.yaml~"));
        assert!(!is_manifest_name("svc.yaml.swp"));
        assert!(!is_manifest_name("README.md"));
    }
}
