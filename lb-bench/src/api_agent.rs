//! Our agent as the benchmarks run it: in a node namespace, against the fake API server (the real
//! list/watch protocol), with its pins in a bpffs of its own; and how they stop it.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{Frontend, FrontendKey, MAP_FRONTENDS};
use lb_tests::{agent_bin, fakeapi::FakeApi, BpffsGuard, Child, NetNs, TempDir};

/// The pinned `LB_FRONTENDS`, read directly.
pub type Frontends = HashMap<MapData, FrontendKey, Frontend>;

/// An agent ready to start: its command, kubeconfig and bpffs.
pub struct ApiAgent {
    cmd: Command,
    bpffs: BpffsGuard,
    // Holds the kubeconfig.
    _dir: TempDir,
}

impl ApiAgent {
    /// `lb-agent run` for node `node` against `api`, no health or metrics listeners, and `extra`
    /// arguments.
    pub fn new(api: &FakeApi, node: &str, tag: &str, extra: &[&str]) -> Result<Self> {
        let dir = TempDir::new(tag)?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let bpffs = BpffsGuard::new(tag)?;
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--node", node, "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--bpffs")
            .arg(bpffs.path())
            .args(["--healthz-bind-address", "", "--metrics-bind-address", ""])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Ok(Self {
            cmd,
            bpffs,
            _dir: dir,
        })
    }

    /// Where it pins.
    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    /// Starts it in `ns` and waits, until `deadline`, for its pinned `LB_FRONTENDS` (pinned
    /// before it lists anything).
    pub fn spawn(&self, ns: &NetNs, deadline: Instant) -> Result<(Child, Frontends)> {
        let mut child = ns.spawn("agent", &self.cmd)?;
        let pin = self.bpffs().join("maps").join(MAP_FRONTENDS);
        let map = loop {
            if let Ok(data) = MapData::from_pin(&pin) {
                break Map::from_map_data(data).context("pinned LB_FRONTENDS")?;
            }
            if Instant::now() > deadline || !child.is_running() {
                bail!("the agent did not pin its maps\n{}", child.logs());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let frontends = HashMap::try_from(map).context("LB_FRONTENDS is a hash map")?;
        Ok((child, frontends))
    }
}

/// Stops an agent and removes its programs and pins under `bpffs` (`lb-agent cleanup`).
pub fn stop_agent(mut child: Child, bpffs: &Path) -> Result<()> {
    child.stop()?;
    let out = Command::new(agent_bin())
        .args(["cleanup", "--bpffs"])
        .arg(bpffs)
        .output()?;
    if !out.status.success() {
        bail!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
