//! Building the eBPF object and the agent, and running every check.

use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::setup::{self, run};

/// Options of `build-ebpf`.
#[derive(Args, Default)]
pub struct EbpfOpts {
    /// Build the debug profile (still optimised: the verifier needs it).
    #[arg(long)]
    pub debug: bool,
}

/// Options of `test`.
#[derive(Args, Default)]
pub struct TestOpts {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// The workspace root, and where `build-ebpf` puts the object (lb-agent's build script embeds it
/// from there): the same paths the tests use.
pub use lb_tests::{ebpf_object, workspace_root as root};

/// `cargo +nightly <subcommand>` in lb-ebpf for the BPF target, with bpf-linker on PATH.
fn ebpf_cargo(subcommand: &str) -> Result<Command> {
    setup::nightly_rust_src()?;
    let linker_dir = setup::bpf_linker()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_dir];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("lb-ebpf"))
        .args(["+nightly", subcommand, "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .env("PATH", std::env::join_paths(paths)?)
        // BTF from DWARF: bpftool prints every map's key and value fields by name.
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    Ok(cmd)
}

/// Builds lb-ebpf with BTF and copies the object to [`ebpf_object`].
pub fn build_ebpf(opts: &EbpfOpts) -> Result<()> {
    let dir = root().join("lb-ebpf");
    let profile = if opts.debug { "debug" } else { "release" };
    let mut cmd = ebpf_cargo("build")?;
    if !opts.debug {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building lb-ebpf")?;
    let built = dir
        .join("target/bpfel-unknown-none")
        .join(profile)
        .join("lb-ebpf");
    let dest = ebpf_object();
    std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
    let object = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Rewritten only when it changed: lb-agent's build script watches its mtime, and a copy of
    // the same bytes would rebuild the agent on every `cargo xtask build`, `test` and `bench`.
    if std::fs::read(&dest).ok().as_ref() != Some(&object) {
        std::fs::write(&dest, &object).with_context(|| format!("writing {}", dest.display()))?;
    }
    eprintln!("xtask: eBPF object at {}", dest.display());
    Ok(())
}

/// `cargo` (the one running xtask) in the workspace root, without the package variables
/// `cargo run` set for xtask itself (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...): build scripts
/// such as ring's rerun when those change, so they and every crate above them (kube, lb-agent)
/// would be rebuilt each time the workspace is built by hand after `cargo xtask`, and back.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*k)
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Builds the eBPF object and the release agent binary.
pub fn build_all() -> Result<()> {
    build_ebpf(&EbpfOpts::default())?;
    run(cargo().args(["build", "--release", "-p", "lb-agent"]))?;
    eprintln!(
        "xtask: agent at {}",
        root().join("target/release/lb-agent").display()
    );
    Ok(())
}

/// rustfmt and clippy on the workspace and on the kernel crate.
fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"])).context("run `cargo fmt --all`")?;
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(root().join("lb-ebpf/Cargo.toml")))
    .context("run `cargo fmt` in lb-ebpf")?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    setup::nightly_component("clippy")?;
    run(ebpf_cargo("clippy")?.args(["--release", "--", "-D", "warnings"]))
        .context("clippy on lb-ebpf")
}

/// The README's test command: set-up, build, lint, unit, packet and namespace tests.
pub fn test(opts: &TestOpts) -> Result<()> {
    setup::setup()?;
    build_all()?;
    if !opts.no_lint {
        lint()?;
    }
    // Integration tests run the release agent binary built above.
    run(cargo()
        .args(["test", "--workspace", "--release", "--"])
        .args(&opts.cargo_test_args)
        .env("LB_AGENT_BIN", root().join("target/release/lb-agent")))
}
