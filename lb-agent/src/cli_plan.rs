//! `lb-agent plan`: load a manifests directory, plan it for one node, print the plan as JSON.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::model::Diagnostic;
use crate::plan::{plan, Plan};

/// Loads `manifests`, plans it for node `node`, prints the plan as one pretty JSON object on
/// stdout and each diagnostic as `warning: NAMESPACE/NAME: reason` on stderr.
///
/// Warnings do not fail the command: a plan is printed whenever the directory could be read. An
/// unreadable directory, or a plan that cannot be written to stdout, is an error.
pub fn run_plan_command(manifests: &Path, node: &str) -> anyhow::Result<()> {
    let (plan, diagnostics) = plan_dir(manifests, node)?;
    let mut stderr = std::io::stderr().lock();
    for diagnostic in &diagnostics {
        // A closed stderr must not stop the plan from being printed.
        let _ = writeln!(stderr, "warning: {diagnostic}");
    }
    let json = serde_json::to_string_pretty(&plan).context("serializing the plan")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json}").context("writing the plan to stdout")?;
    stdout.flush().context("writing the plan to stdout")?;
    Ok(())
}

/// Loads `manifests` and plans it for node `node`: the loader's diagnostics, then the plan's.
/// This is the same plan the dataplane is programmed from.
pub fn plan_dir(manifests: &Path, node: &str) -> anyhow::Result<(Plan, Vec<Diagnostic>)> {
    let (snapshot, mut diagnostics) = crate::source::load_dir(manifests)
        .with_context(|| format!("loading manifests from {}", manifests.display()))?;
    let output = plan(&snapshot, node);
    diagnostics.extend(output.diagnostics);
    Ok((output.plan, diagnostics))
}
