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

/// What `bench` was asked: lb-bench's arguments (without `--no-build`), whether to build the
/// eBPF object and the agent first (not with `--no-build`, nor for help alone).
fn split(args: &[String]) -> (Vec<&str>, bool) {
    let no_build = args.iter().any(|a| a == NO_BUILD);
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != NO_BUILD)
        .collect();
    let help = args.first().is_none_or(|a| *a == "help")
        || args.iter().any(|a| matches!(*a, "-h" | "--help"));
    let build = !no_build && !help;
    (args, build)
}

/// Builds the eBPF object and the release agent (see [`split`]), then lb-bench, and runs it
/// with the arguments.
pub fn bench(opts: &BenchOpts) -> Result<()> {
    let (args, build) = split(&opts.args);
    if build {
        build::build_all()?;
    }
    run(build::cargo().args(["build", "--release", "-p", "lb-bench"]))?;
    run(Command::new(root().join("target/release/lb-bench")).args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_line(line: &str) -> (Vec<String>, bool) {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        let (rest, build) = split(&args);
        (rest.into_iter().map(String::from).collect(), build)
    }

    /// Test that `--no-build` is taken out wherever it stands and the rest passes through.
    #[test]
    fn no_build_is_taken_out_anywhere() {
        for line in [
            "--no-build e2e --rounds 1",
            "e2e --no-build --rounds 1",
            "e2e --rounds 1 --no-build",
        ] {
            assert_eq!(
                split_line(line),
                (vec!["e2e".into(), "--rounds".into(), "1".into()], false),
                "{line}"
            );
        }
    }

    /// Test that a benchmark is built for, and help alone is not.
    #[test]
    fn only_a_benchmark_run_builds() {
        assert!(split_line("packet --runs 1").1);
        for line in ["", "--help", "help packet", "packet -h"] {
            assert!(!split_line(line).1, "{line}");
        }
    }
}
