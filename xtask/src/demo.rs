//! The demo: a node of network namespaces, pods, a ClusterIP service and real traffic.

use anyhow::Result;
use clap::Args;

/// Options of `demo`.
#[derive(Args, Default)]
pub struct DemoOpts {}

/// Runs the demo.
pub fn demo(_opts: &DemoOpts) -> Result<()> {
    anyhow::bail!("the demo is not written yet")
}
