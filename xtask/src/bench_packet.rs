//! `bench packet`: per-packet cost through BPF_PROG_TEST_RUN. The measuring program is
//! lb-agent/examples/bench_packet.rs (it needs the agent's library: map writer and loader);
//! this builds it and runs it with the eBPF object.

use std::process::Command;

use anyhow::Result;

use crate::{
    build::{self, root},
    setup::run,
};

/// Options of `bench packet`.
#[derive(clap::Args, Clone)]
pub struct PacketOpts {
    /// Numbers of Services (10 backends each), ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    pub services: Vec<usize>,
    /// Established flows in the conntrack table.
    #[arg(long, default_value_t = 1_000_000)]
    pub flows: usize,
    /// Program runs per BPF_PROG_TEST_RUN call in `repeat` mode.
    #[arg(long, default_value_t = 200_000)]
    pub repeat: u32,
    /// Measurements per point (median).
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
    /// Calls per contender in `single` mode (one packet per call).
    #[arg(long, default_value_t = 20_000)]
    pub calls: usize,
}

/// Builds and runs the per-packet benchmark; results in target/bench/packet.json.
pub fn packet(opts: &PacketOpts) -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "lb-agent",
        "--example",
        "bench_packet",
    ]))?;
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let list = |v: &[usize]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    run(
        Command::new(root().join("target/release/examples/bench_packet"))
            .arg("--object")
            .arg(build::ebpf_object())
            .arg("--out")
            .arg(out.join("packet.json"))
            .args(["--services", &list(&opts.services)])
            .args(["--flows", &opts.flows.to_string()])
            .args(["--repeat", &opts.repeat.to_string()])
            .args(["--runs", &opts.runs.to_string()])
            .args(["--calls", &opts.calls.to_string()]),
    )?;
    println!("results in {}", out.join("packet.json").display());
    Ok(())
}
