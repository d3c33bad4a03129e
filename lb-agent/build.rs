//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent binary.

use std::path::PathBuf;

fn main() {
    let object = match std::env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/lb-ebpf.o"),
    };
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (or set LB_EBPF_OBJECT to an object built elsewhere)",
            object.display()
        );
    }
    let object = object.canonicalize().expect("object path resolves");
    println!("cargo:rustc-env=LB_EBPF_OBJECT={}", object.display());
}
