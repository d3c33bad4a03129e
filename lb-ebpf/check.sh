#!/bin/sh
# Dev helper: build and load the object with bpftool into a scratch bpffs to see verifier output.
set -e
cd "$(dirname "$0")"
PATH=/root/.cache/xdplb/bpf-linker/bin:$PATH RUSTFLAGS="-C debuginfo=2 -C link-arg=--btf" cargo +nightly build --release --target bpfel-unknown-none -Z build-std=core 2>&1 | grep -E "^(error|warning)|-->" || true
D=$(mktemp -d); mount -t bpf bpf $D
bpftool prog loadall target/bpfel-unknown-none/release/lb-ebpf $D/p > /tmp/verifier.log 2>&1 && echo LOADED || { grep -B30 "END PROG LOAD LOG" /tmp/verifier.log | head -60; }
ls $D/p 2>/dev/null; bpftool prog show pinned $D/p/lb_tc 2>/dev/null | head -3
rm -rf $D/p; umount $D; rmdir $D
