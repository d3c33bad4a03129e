//! Our agent as the benchmarks run it, through [`lb_tests::AgentRun`]: against the fake API
//! server ([`ApiAgent`]: the real list/watch protocol, its pins in a bpffs of its own), its
//! pinned `LB_FRONTENDS` read directly (what the benchmarks poll), and how they stop it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{Frontend, FrontendKey, MAP_FRONTENDS};
use lb_tests::{agent, fakeapi::FakeApi, AgentRun, BpffsGuard, Child, NetNs, TempDir};

/// The pinned `LB_FRONTENDS`, read directly.
pub type Frontends = HashMap<MapData, FrontendKey, Frontend>;

/// Where `LB_FRONTENDS` is pinned under `bpffs`.
fn pin(bpffs: &Path) -> PathBuf {
    bpffs.join("maps").join(MAP_FRONTENDS)
}

/// The `LB_FRONTENDS` pinned under `bpffs`.
pub fn frontends(bpffs: &Path) -> Result<Frontends> {
    let pin = pin(bpffs);
    let data = MapData::from_pin(&pin).with_context(|| format!("open {}", pin.display()))?;
    open(data)
}

/// `data` as `LB_FRONTENDS`.
fn open(data: MapData) -> Result<Frontends> {
    let map = Map::from_map_data(data).context("pinned LB_FRONTENDS")?;
    HashMap::try_from(map).context("LB_FRONTENDS is a hash map")
}

/// An agent ready to start against a fake API server: how it runs, its kubeconfig and bpffs.
pub struct ApiAgent {
    /// `lb-agent run` for the node, watching the server, no health or metrics listeners; add
    /// flags before [`ApiAgent::spawn`].
    pub run: AgentRun,
    bpffs: BpffsGuard,
    // Holds the kubeconfig.
    _dir: TempDir,
}

impl ApiAgent {
    /// The agent of node `node` watching `api`, in a fresh bpffs.
    pub fn new(api: &FakeApi, node: &str, tag: &str) -> Result<Self> {
        let dir = TempDir::new(tag)?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let bpffs = BpffsGuard::new(tag)?;
        let mut run = AgentRun::new(node, bpffs.path());
        run.kubeconfig(&kubeconfig).without_http();
        Ok(Self {
            run,
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
        let mut child = self.run.spawn(ns)?;
        let pin = pin(self.bpffs());
        let data = loop {
            if let Ok(data) = MapData::from_pin(&pin) {
                break data;
            }
            if Instant::now() > deadline || !child.is_running() {
                bail!("the agent did not pin its maps\n{}", child.logs());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok((child, open(data)?))
    }
}

/// Stops an agent running in `ns` and removes its programs and pins under `bpffs`
/// (`lb-agent cleanup`).
pub fn stop(mut child: Child, ns: &NetNs, bpffs: &Path) -> Result<()> {
    child.stop()?;
    agent::cleanup(ns, bpffs)?;
    Ok(())
}
