//! A node in a network namespace of its own, for the paths that depend on the FIB: two node
//! devices on two networks, permanent neighbours, routes to other nodes' pods through each,
//! and a local pod interface; and the program contexts that name its interfaces.

use std::net::Ipv4Addr;

use crate::fixture::{frontend, Frontend, FrontendKind, Protocol};

/// This node's first device, `eth0`: 172.18.0.10/24.
pub const NODE_IP: [u8; 4] = [172, 18, 0, 10];
pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
/// Another node on eth0's network; its pods are 10.244.1.0/24.
pub const OTHER_NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
/// An outside client on eth0's network.
pub const OUTSIDE_IP: [u8; 4] = [172, 18, 0, 100];
pub const OUTSIDE_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0];
/// This node's second device, `eth1`: 192.168.50.10/24; behind it a third node whose pods are
/// 10.244.2.0/24.
pub const NODE_IP2: [u8; 4] = [192, 168, 50, 10];
/// A backend on the other node (through eth0), one on the third (through eth1), and the local
/// pod (on `lxc1`, whose host side holds the pod gateway 10.244.0.1).
pub const REMOTE_BACKEND: [u8; 4] = [10, 244, 1, 11];
pub const THIRD_NODE_BACKEND: [u8; 4] = [10, 244, 2, 11];
pub const LOCAL_POD: [u8; 4] = [10, 244, 0, 11];
pub const POD_GATEWAY: [u8; 4] = [10, 244, 0, 1];

/// The node's namespace and the indices of its interfaces.
pub struct NodeNetns {
    pub ns: lb_tests::NetNs,
    pub eth0: u32,
    pub eth1: u32,
    pub lxc1: u32,
}

impl NodeNetns {
    pub fn new(tag: &str) -> Self {
        let ns = lb_tests::NetNs::new(tag).unwrap();
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            &["link", "add", "eth0", "type", "veth", "peer", "name", "wire0"],
            &["link", "set", "eth0", "address", "02:00:00:00:00:10", "up"],
            &["link", "set", "wire0", "up"],
            &["addr", "add", "172.18.0.10/24", "dev", "eth0"],
            &["neigh", "add", "172.18.0.11", "lladdr", "02:00:00:00:00:11", "dev", "eth0", "nud", "permanent"],
            &["neigh", "add", "172.18.0.100", "lladdr", "02:00:00:00:01:00", "dev", "eth0", "nud", "permanent"],
            &["route", "add", "10.244.1.0/24", "via", "172.18.0.11", "dev", "eth0"],
            &["link", "add", "eth1", "type", "veth", "peer", "name", "wire1"],
            &["link", "set", "eth1", "address", "02:00:00:00:00:20", "up"],
            &["link", "set", "wire1", "up"],
            &["addr", "add", "192.168.50.10/24", "dev", "eth1"],
            &["neigh", "add", "192.168.50.12", "lladdr", "02:00:00:00:00:22", "dev", "eth1", "nud", "permanent"],
            &["route", "add", "10.244.2.0/24", "via", "192.168.50.12", "dev", "eth1"],
            &["link", "add", "lxc1", "type", "veth", "peer", "name", "pod1"],
            &["link", "set", "lxc1", "up"],
            &["link", "set", "pod1", "up"],
            &["addr", "add", "10.244.0.1/32", "dev", "lxc1"],
            &["route", "add", "10.244.0.11/32", "dev", "lxc1"],
        ];
        for args in steps {
            ns.ip(args).unwrap();
        }
        ns.set_sysctl("ipv4/ip_forward", "1").unwrap();
        NodeNetns {
            eth0: ns.ifindex("eth0").unwrap(),
            eth1: ns.ifindex("eth1").unwrap(),
            lxc1: ns.ifindex("lxc1").unwrap(),
            ns,
        }
    }
}

/// A `struct xdp_md` for a packet of `len` bytes arriving on interface `ifindex`.
pub fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    [0u32, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// A `struct __sk_buff` (up to `ifindex`) for a packet arriving on interface `ifindex`.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut words = [0u32; 11];
    words[9] = ifindex; // ingress_ifindex
    words[10] = ifindex; // ifindex
    words.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// A TCP NodePort frontend on this node's eth0 address, port `port`, to `backend`:8080,
/// which is on this node when `local`.
pub fn nodeport(port: u16, backend: [u8; 4], local: bool) -> Frontend {
    let addr = format!("{}:8080", Ipv4Addr::from(backend));
    let mut fe = frontend(port, Protocol::Tcp, &[&addr]);
    fe.kind = FrontendKind::NodePort;
    fe.ip = Ipv4Addr::from(NODE_IP).into();
    if local {
        fe.local_backends = fe.backends.clone();
    }
    fe
}
