//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent binary. Without the
//! object (a fresh clone) it embeds an empty stub instead, so `cargo check` and clippy work, and
//! warns: an agent built so refuses to load (`DataplaneError::NoObject`).

use std::path::PathBuf;

fn main() {
    let object = match std::env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/lb-ebpf.o"),
    };
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let embedded = match object.canonicalize() {
        Ok(object) => object,
        Err(_) => {
            println!(
                "cargo:warning=the eBPF object {} is missing: this lb-agent embeds an empty stub \
                 and will refuse to load; run `cargo xtask build-ebpf` first (or set \
                 LB_EBPF_OBJECT to an object built elsewhere)",
                object.display()
            );
            let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
            let stub = out.join("lb-ebpf-missing.o");
            std::fs::write(&stub, []).expect("OUT_DIR is writable");
            stub
        }
    };
    println!("cargo:rustc-env=LB_EBPF_OBJECT={}", embedded.display());
}
