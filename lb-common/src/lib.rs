//! The contract between the kernel programs (lb-ebpf) and the node agent (lb-agent).
//!
//! Everything here is `#![no_std]` and shared by both sides: map keys and values (`#[repr(C)]`,
//! explicit padding, a size assertion each), verdict reasons, and the algorithms both sides must
//! compute identically (flow hash, checksum updates). With the `user` feature every map type also
//! implements `aya::Pod` and `bytemuck::Pod`, which makes hidden padding a compile error.
#![no_std]

pub mod csum;
pub mod hash;
pub mod maps;
pub mod verdict;
