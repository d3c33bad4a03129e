/work/main/lb-common/target/debug/deps/lb_common-6bdcacda6bc58d28.d: src/lib.rs src/csum.rs src/hash.rs src/maps.rs src/verdict.rs

/work/main/lb-common/target/debug/deps/lb_common-6bdcacda6bc58d28: src/lib.rs src/csum.rs src/hash.rs src/maps.rs src/verdict.rs

src/lib.rs:
src/csum.rs:
src/hash.rs:
src/maps.rs:
src/verdict.rs:
