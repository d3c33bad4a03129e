//! Test harness: network namespaces, topologies, real servers and clients.
