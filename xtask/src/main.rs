//! Project tasks: `cargo xtask <command>`.

mod bench;
mod build;
mod demo;
mod setup;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo tasks for the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Build the eBPF object (lb-ebpf) for bpfel-unknown-none with BTF into target/bpf/.
    BuildEbpf(build::EbpfOpts),
    /// Build the eBPF object and the lb-agent binary that embeds it (release).
    Build,
    /// Set up, build, lint and run every test: the command CI runs.
    Test(build::TestOpts),
    /// Run the demo: a node of network namespaces, pods, a ClusterIP service, real traffic.
    Demo(demo::DemoOpts),
    /// Run a benchmark (lb-bench) and print medians and ratios: `cargo xtask bench --help`.
    Bench(bench::BenchOpts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::BuildEbpf(opts) => build::build_ebpf(&opts),
        Cmd::Build => build::build_all(),
        Cmd::Test(opts) => build::test(&opts),
        Cmd::Demo(opts) => demo::demo(&opts),
        Cmd::Bench(opts) => bench::bench(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
