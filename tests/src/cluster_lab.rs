//! The two-node lab: a [`Cluster`] whose every node runs its own agent (`--devices eth0` unless
//! [`Devices`] says otherwise, the pod interfaces, a private bpffs), all reading one manifests
//! directory; the logs and
//! `lb-agent inspect` of each; and, for the one topology that keeps XDP on the wire, the
//! fabric's pass-through programs.
//!
//! The default is what a new user meets on kind or docker nodes: node devices that are veths on
//! a Linux bridge with nothing attached on the bridge side, so the agents' default acceleration
//! (best-effort) puts no XDP on them and tc alone serves them. [`Wire::Xdp`] attaches XDP on the
//! fabric's side of every wire (so XDP_TX into a node's veth is received) and starts the agents
//! with `--lb-acceleration native`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::agent::{self, AgentRun};
use crate::bpffs::BpffsGuard;
use crate::paths::ebpf_object;
use crate::proc::Child;
use crate::topo::{Cluster, NODE_NIC, POD_IFACE_GLOB};

/// How long an agent may take to start.
const AGENT_START: Duration = Duration::from_secs(20);

/// What the far side of the nodes' wires runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// Nothing (as kind/docker nodes' bridge ports): the agents run tc alone on the veths.
    #[default]
    Plain,
    /// XDP pass-through programs, and the agents' `--lb-acceleration native`: XDP on every
    /// node device, in front of tc.
    Xdp,
}

/// The node devices the agents are given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Devices {
    /// `--devices eth0`: the NIC of the fabric.
    #[default]
    Nic,
    /// No `--devices`: every agent detects its node's devices.
    Detect,
    /// `--devices` with these names and globs (comma-separated).
    Named(String),
}

/// How the agents of a [`ClusterLab`] run.
#[derive(Debug, Clone, Default)]
pub struct Agents<'a> {
    /// What the far side of the wires runs (and so the acceleration).
    pub wire: Wire,
    /// The node devices.
    pub devices: Devices,
    /// Flags added to every agent's command line.
    pub flags: &'a [(&'a str, &'a str)],
}

/// A cluster with one agent per node.
#[derive(Debug)]
pub struct ClusterLab {
    // Drop order: agents first, then the cluster and the bpffs mounts.
    agents: Vec<Child>,
    cluster: Cluster,
    bpffs: Vec<BpffsGuard>,
    _wire: Option<BpffsGuard>,
}

impl ClusterLab {
    /// Starts an agent in every node of `cluster`, reading `manifests`, as `node-<i>`, with
    /// `--devices eth0`; `flags` are added to every agent's command line.
    pub fn start(
        tag: &str,
        cluster: Cluster,
        manifests: &Path,
        wire: Wire,
        flags: &[(&str, &str)],
    ) -> Result<ClusterLab> {
        let agents = Agents {
            wire,
            devices: Devices::Nic,
            flags,
        };
        ClusterLab::start_with(tag, cluster, manifests, &agents)
    }

    /// Starts an agent in every node of `cluster`, reading `manifests`, as `node-<i>`, as
    /// `agents` says.
    pub fn start_with(
        tag: &str,
        cluster: Cluster,
        manifests: &Path,
        agents: &Agents<'_>,
    ) -> Result<ClusterLab> {
        let wire = agents.wire;
        let wire_pins = match wire {
            Wire::Plain => None,
            Wire::Xdp => {
                let fs = BpffsGuard::new(&format!("{tag}-wire"))?;
                cluster.attach_wire_xdp(&ebpf_object(), &fs)?;
                Some(fs)
            }
        };
        let mut lab = ClusterLab {
            agents: Vec::new(),
            cluster,
            bpffs: Vec::new(),
            _wire: wire_pins,
        };
        for (i, node) in lab.cluster.nodes().iter().enumerate() {
            let fs = BpffsGuard::new(&format!("{tag}-n{i}"))?;
            let mut run = AgentRun::new(&format!("node-{i}"), fs.path());
            run.manifests(manifests)
                .pod_interfaces(POD_IFACE_GLOB)
                .without_http()
                .name(&format!("agent{i}"));
            match &agents.devices {
                Devices::Nic => {
                    run.devices(NODE_NIC);
                }
                Devices::Detect => {}
                Devices::Named(names) => {
                    run.devices(names);
                }
            }
            if wire == Wire::Xdp {
                run.flag("--lb-acceleration", "native");
            }
            for (flag, value) in agents.flags {
                run.flag(flag, value);
            }
            lab.agents.push(run.start(node.ns(), AGENT_START)?);
            lab.bpffs.push(fs);
        }
        Ok(lab)
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Every agent's logs, one after the other.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| a.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `lb-agent inspect --json` of node `i`.
    pub fn inspect(&self, i: u8) -> Result<Value> {
        agent::inspect_json(self.cluster.node(i).ns(), self.bpffs[usize::from(i)].path())
    }

    /// `lb-agent inspect` (text) of node `i`, with at most `conntrack_limit` conntrack entries.
    pub fn inspect_text(&self, i: u8, conntrack_limit: Option<usize>) -> Result<String> {
        agent::inspect_text(
            self.cluster.node(i).ns(),
            self.bpffs[usize::from(i)].path(),
            conntrack_limit,
        )
    }

    /// Stops every agent and removes what it pinned (`lb-agent cleanup`).
    pub fn stop(mut self) -> Result<()> {
        for (i, (a, fs)) in self.agents.iter_mut().zip(&self.bpffs).enumerate() {
            a.stop()?;
            agent::cleanup(self.cluster.node(i as u8).ns(), fs.path())?;
        }
        Ok(())
    }
}
