//! `bench`: builds what the benchmarks need and runs the lb-bench binary, which defines the
//! benchmarks and their options; every argument after `bench` is passed through to it.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::{
    build::{self, root},
    setup::run,
};

/// Options of `bench`: lb-bench's arguments, and `--no-build`.
#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct BenchOpts {
    /// `<BENCHMARK> [OPTIONS]` for lb-bench (`cargo xtask bench --help` lists them); `--no-build`,
    /// anywhere, skips building the eBPF object and the agent (use the binaries already built).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

/// The flag `bench` keeps for itself.
const NO_BUILD: &str = "--no-build";

/// Builds the eBPF object and the release agent (unless `--no-build`, or only help is asked
/// for), then lb-bench, and runs it with the arguments.
pub fn bench(opts: &BenchOpts) -> Result<()> {
    let no_build = opts.args.iter().any(|a| a == NO_BUILD);
    let args: Vec<&str> = opts
        .args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != NO_BUILD)
        .collect();
    let help = args.first().is_none_or(|a| *a == "help")
        || args.iter().any(|a| matches!(*a, "-h" | "--help"));
    if !no_build && !help {
        build::build_all()?;
    }
    run(build::cargo().args(["build", "--release", "-p", "lb-bench"]))?;
    run(Command::new(root().join("target/release/lb-bench")).args(args))
}
