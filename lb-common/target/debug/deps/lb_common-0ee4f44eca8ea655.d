/work/main/lb-common/target/debug/deps/lb_common-0ee4f44eca8ea655.d: src/lib.rs src/csum.rs src/hash.rs src/maps.rs src/verdict.rs

/work/main/lb-common/target/debug/deps/liblb_common-0ee4f44eca8ea655.rlib: src/lib.rs src/csum.rs src/hash.rs src/maps.rs src/verdict.rs

/work/main/lb-common/target/debug/deps/liblb_common-0ee4f44eca8ea655.rmeta: src/lib.rs src/csum.rs src/hash.rs src/maps.rs src/verdict.rs

src/lib.rs:
src/csum.rs:
src/hash.rs:
src/maps.rs:
src/verdict.rs:
