//! The plan: what kube-proxy would program for a snapshot, as frontends with backend lists.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Everything the dataplane must serve, and nothing else. `lb-agent plan` prints it as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub frontends: Vec<Frontend>,
}

/// One address:port:protocol a Service answers on, and where new connections to it go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// "namespace/name".
    pub service: String,
    /// The ServicePort's name, "" if unnamed.
    pub port_name: String,
    #[serde(rename = "type")]
    pub kind: FrontendKind,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Sorted by their string form.
    pub backends: Vec<SocketAddr>,
    /// What to do when `backends` is empty; None when it is not.
    pub on_empty: Option<OnEmpty>,
    pub affinity_timeout_seconds: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    Reject,
    Drop,
}
