//! Packet tests: the real programs run through BPF_PROG_TEST_RUN on packets built here, with
//! maps filled by the agent's own map writer. They check the verdict, the exact output bytes,
//! recomputed checksums and the counters. Each test loads its own programs and maps into a
//! private bpffs.
//!
//! `fixture` holds the fixture and every `lb_agent` import, `packets` the packet builders and
//! readers, `node_netns` the node namespace of the FIB-dependent tests; the other modules hold
//! the tests, by concern (`nodeport`: the XDP accelerator on a node device; `node_device`: tc's
//! SNAT decision and forwarding).

mod addresses;
mod choice;
mod conntrack;
mod fixture;
mod nat;
mod node_device;
mod node_netns;
mod nodeport;
mod packets;
mod passthrough;
mod policy;
mod probe;
