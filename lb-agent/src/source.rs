//! Where objects come from: a directory of manifests (later: the Kubernetes API).
