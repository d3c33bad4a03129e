//! Installs what building and testing need, saying what it does; names what it cannot install.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Debian packages the tests and the demo use, with a command each provides.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("bpftool", "bpftool"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    ("tcpdump", "tcpdump"),
    ("ethtool", "ethtool"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("conntrack", "conntrack"),
];

/// The pinned bpf-linker version.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs `cmd`, echoing it, and fails with context if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have_command(name: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ]
    .iter()
    .any(|d| Path::new(d).join(name).exists())
}

/// Everything: Debian packages, rust-src for nightly, bpf-linker.
pub fn setup() -> Result<()> {
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// Installs the missing Debian packages with apt-get.
pub fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, cmd)| !have_command(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {}", missing.join(" "));
    if !have_command("apt-get") {
        bail!("apt-get not found: install {} by hand", missing.join(" "));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed (run as root: sudo apt-get update)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| {
        format!(
            "could not install packages; run: sudo apt-get install -y {}",
            missing.join(" ")
        )
    })
}

/// Adds rust-src to the installed nightly toolchain if it is missing.
pub fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("xtask: the nightly toolchain lacks rust-src (needed by -Z build-std); adding it");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("run: rustup component add rust-src --toolchain nightly")
}

/// Adds a rustup component (clippy, rustfmt) to the nightly toolchain if it is missing.
pub fn nightly_component(name: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed
        .lines()
        .any(|l| l.starts_with(&format!("{name}-")))
    {
        return Ok(());
    }
    eprintln!("xtask: adding {name} to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))
        .with_context(|| format!("run: rustup component add {name} --toolchain nightly"))
}

/// The nightly toolchain's sysroot.
pub fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "no nightly toolchain: run `rustup toolchain install nightly --component rust-src`",
    )?;
    Ok(PathBuf::from(out.trim()))
}

/// Where xtask keeps the tools it builds.
fn tools_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("xdplb")
}

/// Returns the directory holding a working bpf-linker, building one if needed.
///
/// A bpf-linker on PATH is used as it is. Otherwise xtask builds bpf-linker against the
/// nightly toolchain's own libLLVM (Debian's LLVM is too old), into its cache directory.
pub fn bpf_linker() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("bpf-linker").exists())
    {
        return Ok(dir);
    }
    let root = tools_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}"));
    let bin = root.join("bin");
    if bin.join("bpf-linker").exists() {
        return Ok(bin);
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib.display()))?;
    let llvm = llvm
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_owned();
    eprintln!(
        "xtask: bpf-linker not found; building bpf-linker {BPF_LINKER_VERSION} against the \
         nightly toolchain's {llvm} into {} (about a minute)",
        root.display()
    );
    let rustflags = format!(
        "-L {lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    run(Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--version"])
        .arg(BPF_LINKER_VERSION)
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .arg("--root")
        .arg(&root)
        .env("RUSTFLAGS", rustflags))
    .with_context(|| {
        format!(
            "building bpf-linker failed; to do it by hand: RUSTFLAGS=\"-L {lib} -l dylib={llvm} \
             -C link-arg=-Wl,-rpath,{lib}\" cargo +nightly install bpf-linker --version \
             {BPF_LINKER_VERSION} --no-default-features --features llvm-{major},no-llvm-linking",
            lib = lib.display()
        )
    })?;
    Ok(bin)
}
