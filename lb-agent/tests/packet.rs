//! Packet tests: the real programs run through BPF_PROG_TEST_RUN on packets built here, with
//! maps filled by the agent's own map writer. They check the verdict, the exact output bytes,
//! recomputed checksums and the counters. Each test loads its own programs and maps into a
//! private bpffs.

use std::net::{Ipv4Addr, SocketAddr};

use etherparse::{Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice};
use lb_agent::{
    dataplane::{Dataplane, HookKind, MapSizes, Pinned},
    entries::{self, Capacity, Entries, Ids},
    plan::{Frontend, FrontendKind, OnEmpty, Plan, Protocol},
};
use lb_common::{csum, verdict::Reason};
use lb_tests::BpffsGuard;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_PASS: u32 = -1i32 as u32;
const TC_DROP: u32 = 2;

const CLIENT: [u8; 4] = [10, 244, 0, 2];
const VIP: [u8; 4] = [10, 96, 0, 10];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

const HOOKS: [HookKind; 4] = [
    HookKind::Tc,
    HookKind::Xdp,
    HookKind::XdpVeth,
    HookKind::XdpPod,
];

fn pass(hook: HookKind) -> u32 {
    if hook == HookKind::Tc {
        TC_PASS
    } else {
        XDP_PASS
    }
}

fn drop_(hook: HookKind) -> u32 {
    if hook == HookKind::Tc {
        TC_DROP
    } else {
        XDP_DROP
    }
}

fn frontend(port: u16, protocol: Protocol, backends: &[&str]) -> Frontend {
    Frontend {
        service: "test/svc".into(),
        port_name: String::new(),
        kind: FrontendKind::ClusterIP,
        ip: Ipv4Addr::from(VIP).into(),
        port,
        protocol,
        backends: backends
            .iter()
            .map(|b| b.parse::<SocketAddr>().unwrap())
            .collect(),
        on_empty: backends.is_empty().then_some(OnEmpty::Reject),
        affinity_timeout_seconds: None,
        source_ranges: Vec::new(),
    }
}

/// Programs and maps in a private bpffs, programmed through the agent's map writer.
struct Fixture {
    bpffs: BpffsGuard,
    dp: Dataplane,
    ids: Ids,
    current: Entries,
}

impl Fixture {
    fn new(frontends: Vec<Frontend>) -> Self {
        let bpffs = BpffsGuard::new("pkt").expect("bpffs");
        let sizes = MapSizes {
            frontends: 64,
            slots: 1024,
            backends: 256,
            conntrack: 4096,
        };
        let dp = Dataplane::load(bpffs.path(), sizes, aya::programs::XdpMode::Default)
            .expect("load programs");
        let ids = Ids::new(Capacity {
            frontends: 64,
            backends: 256,
        });
        let mut f = Self {
            bpffs,
            dp,
            ids,
            current: Entries::default(),
        };
        f.program(frontends);
        f
    }

    fn program(&mut self, frontends: Vec<Frontend>) {
        let (desired, skipped) = entries::desired(&Plan { frontends }, &mut self.ids);
        assert!(skipped.is_empty(), "{skipped:?}");
        let ops = entries::diff(&self.current, &desired);
        self.dp.apply(&ops).expect("apply");
        self.current = desired;
    }

    fn run(&mut self, hook: HookKind, pkt: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len() + 256];
        let r = self.dp.test_run(hook, pkt, &mut out, 1).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn verdict(&self, reason: Reason) -> u64 {
        let p = Pinned::open(self.bpffs.path()).expect("pins");
        p.verdicts().expect("verdicts")[reason as usize].packets
    }

    fn verdict_total(&self) -> u64 {
        let p = Pinned::open(self.bpffs.path()).expect("pins");
        p.verdicts()
            .expect("verdicts")
            .iter()
            .map(|c| c.packets)
            .sum()
    }
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let payload = b"hello";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let payload = b"query";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// Asserts the IPv4 header checksum and the TCP/UDP checksum of an Ethernet frame are correct.
fn assert_checksums(frame: &[u8]) {
    let p = SlicedPacket::from_ethernet(frame).expect("parse output");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
        }
        Some(TransportSlice::Udp(u)) => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
        }
        other => panic!("unexpected transport {other:?}"),
    }
}

/// (destination address, destination port) of a frame.
fn dst_of(frame: &[u8]) -> SocketAddr {
    let p = SlicedPacket::from_ethernet(frame).expect("parse");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let port = match &p.transport {
        Some(TransportSlice::Tcp(t)) => t.destination_port(),
        Some(TransportSlice::Udp(u)) => u.destination_port(),
        other => panic!("unexpected transport {other:?}"),
    };
    SocketAddr::new(ip.header().destination_addr().into(), port)
}

fn octets(s: &str) -> ([u8; 4], u16) {
    let a: SocketAddr = s.parse().unwrap();
    let SocketAddr::V4(a) = a else { panic!() };
    (a.ip().octets(), a.port())
}

/// Test that a TCP SYN to a frontend is DNATed to one of its backends: exactly the bytes of
/// the same packet built for the backend, with correct checksums, on every hook.
#[test]
fn tcp_to_a_frontend_is_dnated_to_a_backend_with_exact_bytes() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &backends)]);
    for hook in HOOKS {
        let pkt = tcp(CLIENT, 40000, VIP, 80, true);
        let (verdict, out) = f.run(hook, &pkt);
        assert_eq!(verdict, pass(hook), "{hook:?}");
        let to = dst_of(&out);
        assert!(backends.contains(&to.to_string().as_str()), "{to}");
        let (ip, port) = octets(&to.to_string());
        assert_eq!(
            out,
            tcp(CLIENT, 40000, ip, port, true),
            "{hook:?}: exact bytes"
        );
        assert_checksums(&out);
    }
    assert_eq!(f.verdict(Reason::DnatNew), 1);
    assert_eq!(f.verdict(Reason::DnatEstablished), 3);
}

/// Test that a UDP datagram to a frontend is DNATed with exact bytes and checksums.
#[test]
fn udp_to_a_frontend_is_dnated_to_a_backend_with_exact_bytes() {
    let backends = ["10.244.0.11:5353", "10.244.0.12:5353"];
    let mut f = Fixture::new(vec![frontend(53, Protocol::Udp, &backends)]);
    for (i, hook) in HOOKS.into_iter().enumerate() {
        let pkt = udp(CLIENT, 50000 + i as u16, VIP, 53);
        let (verdict, out) = f.run(hook, &pkt);
        assert_eq!(verdict, pass(hook));
        let to = dst_of(&out);
        let (ip, port) = octets(&to.to_string());
        assert!(backends.contains(&to.to_string().as_str()));
        assert_eq!(out, udp(CLIENT, 50000 + i as u16, ip, port), "{hook:?}");
        assert_checksums(&out);
    }
    assert_eq!(f.verdict(Reason::DnatNew), 4);
}

/// Test that the backend's reply is reverse-NATed to come from the frontend, exact bytes.
#[test]
fn reply_from_the_backend_is_reverse_nated_to_the_frontend() {
    for hook in HOOKS {
        let mut f = Fixture::new(vec![
            frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]),
            frontend(53, Protocol::Udp, &["10.244.0.11:5353"]),
        ]);
        let (_, out) = f.run(hook, &tcp(CLIENT, 40001, VIP, 80, true));
        assert_eq!(dst_of(&out).to_string(), "10.244.0.11:8080");
        let reply = tcp([10, 244, 0, 11], 8080, CLIENT, 40001, false);
        let (verdict, out) = f.run(hook, &reply);
        assert_eq!(verdict, pass(hook));
        assert_eq!(out, tcp(VIP, 80, CLIENT, 40001, false), "{hook:?}");
        assert_checksums(&out);

        f.run(hook, &udp(CLIENT, 40002, VIP, 53));
        let (_, out) = f.run(hook, &udp([10, 244, 0, 11], 5353, CLIENT, 40002));
        assert_eq!(out, udp(VIP, 53, CLIENT, 40002), "{hook:?}");
        assert_checksums(&out);
        assert_eq!(f.verdict(Reason::RevNat), 2);
    }
}

/// Source (address, port) of a frame.
fn src_of(frame: &[u8]) -> ([u8; 4], u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("parse");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let port = match &p.transport {
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        Some(TransportSlice::Udp(u)) => u.source_port(),
        other => panic!("unexpected transport {other:?}"),
    };
    (ip.header().source_addr().octets(), port)
}

/// The second frontend's address in the tests of two frontends sharing a backend.
const VIP2: [u8; 4] = [10, 96, 0, 20];

/// Two TCP frontends, VIP:80 and VIP2:80, with the one backend 10.244.0.11:8080.
fn two_frontends_one_backend() -> Fixture {
    let mut second = frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]);
    second.service = "test/other".into();
    second.ip = Ipv4Addr::from(VIP2).into();
    Fixture::new(vec![
        frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]),
        second,
    ])
}

/// Test that two live flows from one client port to two Services sharing a backend stay apart:
/// the second one's source port is remapped (its reply key would be the first one's), both
/// replies are reverse-NATed to their own frontend and the client's own port, and the first
/// flow's retransmitted SYN is not remapped.
#[test]
fn flows_from_one_client_port_to_two_frontends_sharing_a_backend_stay_apart() {
    let backend = [10, 244, 0, 11];
    for hook in HOOKS {
        let mut f = two_frontends_one_backend();

        let (_, out) = f.run(hook, &tcp(CLIENT, 40000, VIP, 80, true));
        assert_eq!(out, tcp(CLIENT, 40000, backend, 8080, true), "{hook:?}");
        let (verdict, out) = f.run(hook, &tcp(CLIENT, 40000, VIP2, 80, true));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        let (src, port) = src_of(&out);
        assert_eq!(src, CLIENT, "{hook:?}: the source address stays");
        assert!(
            (lb_common::maps::SNAT_PORT_MIN..=lb_common::maps::SNAT_PORT_MAX).contains(&port),
            "{hook:?}: remapped port {port}"
        );
        assert_eq!(out, tcp(CLIENT, port, backend, 8080, true), "{hook:?}");
        assert_checksums(&out);
        assert_eq!(f.verdict(Reason::DnatNewPortRemap), 1, "{hook:?}");

        // The second flow's next packet takes the same port; the first flow's SYN again keeps
        // the client's own.
        let (_, out) = f.run(hook, &tcp(CLIENT, 40000, VIP2, 80, false));
        assert_eq!(out, tcp(CLIENT, port, backend, 8080, false), "{hook:?}");
        let (_, out) = f.run(hook, &tcp(CLIENT, 40000, VIP, 80, true));
        assert_eq!(out, tcp(CLIENT, 40000, backend, 8080, true), "{hook:?}");

        let (verdict, out) = f.run(hook, &tcp(backend, 8080, CLIENT, 40000, false));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(
            out,
            tcp(VIP, 80, CLIENT, 40000, false),
            "{hook:?}: first reply"
        );
        let (verdict, out) = f.run(hook, &tcp(backend, 8080, CLIENT, port, false));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(
            out,
            tcp(VIP2, 80, CLIENT, 40000, false),
            "{hook:?}: second reply"
        );
        assert_checksums(&out);
        assert_eq!(f.verdict(Reason::RevNat), 2, "{hook:?}");
    }
}

/// A TCP FIN (with ACK) from `src` to `dst`.
fn tcp_fin(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1001, 65535)
        .ack(1)
        .fin();
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, &[]).unwrap();
    v
}

/// Test how a new connection from a reused client port treats the reply key of an earlier one
/// to another Service sharing the backend: while the earlier one is closed only one way (the
/// client's FIN) it keeps the key, the new one is remapped and the backend's FIN still reaches
/// the earlier one's client; once closed both ways its key is taken over (as the kernel's NAT
/// reuses TIME_WAIT tuples), the client keeps its port and replies come from the new Service.
#[test]
fn a_new_connection_takes_over_the_reply_key_of_a_connection_closed_both_ways() {
    let backend = [10, 244, 0, 11];
    for hook in HOOKS {
        let mut f = two_frontends_one_backend();

        // Closed one way: remapped, and the earlier connection still gets its FIN.
        f.run(hook, &tcp(CLIENT, 41000, VIP, 80, true));
        f.run(hook, &tcp_fin(CLIENT, 41000, VIP, 80));
        let (_, out) = f.run(hook, &tcp(CLIENT, 41000, VIP2, 80, true));
        let (_, port) = src_of(&out);
        assert_ne!(port, 41000, "{hook:?}: remapped while half closed");
        let (_, out) = f.run(hook, &tcp_fin(backend, 8080, CLIENT, 41000));
        assert_eq!(
            out,
            tcp_fin(VIP, 80, CLIENT, 41000),
            "{hook:?}: the FIN of the first"
        );

        // Closed both ways: taken over.
        f.run(hook, &tcp(CLIENT, 41001, VIP, 80, true));
        f.run(hook, &tcp_fin(CLIENT, 41001, VIP, 80));
        f.run(hook, &tcp_fin(backend, 8080, CLIENT, 41001));
        let (_, out) = f.run(hook, &tcp(CLIENT, 41001, VIP2, 80, true));
        assert_eq!(
            out,
            tcp(CLIENT, 41001, backend, 8080, true),
            "{hook:?}: own port kept"
        );
        assert_eq!(f.verdict(Reason::DnatNewPortRemap), 1, "{hook:?}");
        let (_, out) = f.run(hook, &tcp(backend, 8080, CLIENT, 41001, false));
        assert_eq!(
            out,
            tcp(VIP2, 80, CLIENT, 41001, false),
            "{hook:?}: reply from the new one"
        );
    }
}

/// Test that a packet from a backend to a client with no tracked flow is not rewritten.
#[test]
fn reply_without_a_tracked_flow_passes_untouched() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let pkt = tcp([10, 244, 0, 11], 8080, CLIENT, 40001, false);
    for hook in HOOKS {
        let (verdict, out) = f.run(hook, &pkt);
        assert_eq!((verdict, &out), (pass(hook), &pkt));
    }
    assert_eq!(f.verdict(Reason::PassNoService), 4);
}

/// Test that tracked flows keep their backend when backends are added; that when their backend
/// is removed, TCP connections stay with it (as with kube-proxy: a terminating pod finishes its
/// connections) while UDP flows move to a live backend.
#[test]
fn conntrack_keeps_flows_on_their_backend_and_moves_udp_off_a_removed_one() {
    let two = ["10.244.0.11:8080", "10.244.0.12:8080"];
    let five = [
        "10.244.0.11:8080",
        "10.244.0.12:8080",
        "10.244.0.13:8080",
        "10.244.0.14:8080",
        "10.244.0.15:8080",
    ];
    let mut f = Fixture::new(vec![
        frontend(80, Protocol::Tcp, &two),
        frontend(80, Protocol::Udp, &two),
    ]);
    let pkt = |udp_: bool, port: u16| {
        if udp_ {
            udp(CLIENT, port, VIP, 80)
        } else {
            tcp(CLIENT, port, VIP, 80, true)
        }
    };
    // Many flows, so that some would hash elsewhere once the table changes.
    let mut chosen = Vec::new();
    for udp_ in [false, true] {
        for port in 41000..41040u16 {
            let (_, out) = f.run(HookKind::Tc, &pkt(udp_, port));
            chosen.push(dst_of(&out));
        }
    }
    f.program(vec![
        frontend(80, Protocol::Tcp, &five),
        frontend(80, Protocol::Udp, &five),
    ]);
    let mut i = 0;
    for udp_ in [false, true] {
        for port in 41000..41040u16 {
            let (_, out) = f.run(HookKind::Tc, &pkt(udp_, port));
            assert_eq!(dst_of(&out), chosen[i], "flow {port} moved");
            i += 1;
        }
    }
    assert_eq!(f.verdict(Reason::DnatEstablished), 80);
    // Remove 10.244.0.11.
    f.program(vec![
        frontend(80, Protocol::Tcp, &five[1..]),
        frontend(80, Protocol::Udp, &five[1..]),
    ]);
    let mut i = 0;
    for udp_ in [false, true] {
        for port in 41000..41040u16 {
            let (_, out) = f.run(HookKind::Tc, &pkt(udp_, port));
            let now = dst_of(&out);
            let was = chosen[i];
            i += 1;
            if udp_ && was.ip() == std::net::Ipv4Addr::new(10, 244, 0, 11) {
                assert_ne!(now.ip(), was.ip(), "UDP flow {port} kept a removed backend");
                assert!(five[1..]
                    .iter()
                    .any(|b| b.parse::<SocketAddr>().unwrap().ip() == now.ip()));
            } else {
                assert_eq!(now.ip(), was.ip(), "flow {port} (udp {udp_}) moved");
            }
        }
    }
}

/// Test that packets to an address or port that is no frontend pass untouched.
#[test]
fn unknown_frontend_passes_untouched() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    for pkt in [
        tcp(CLIENT, 1234, [10, 96, 0, 99], 80, true),
        tcp(CLIENT, 1234, VIP, 81, true),
        udp(CLIENT, 1234, VIP, 80),
    ] {
        for hook in HOOKS {
            let (verdict, out) = f.run(hook, &pkt);
            assert_eq!((verdict, &out), (pass(hook), &pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassNoService), 12);
}

/// Test that ARP, IPv6 and ICMP pass untouched, counted as not ours.
#[test]
fn arp_ipv6_and_icmp_pass_untouched() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let mut arp = vec![0xffu8; 6];
    arp.extend(MAC_A);
    arp.extend([0x08, 0x06]);
    arp.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend(MAC_A);
    arp.extend(CLIENT);
    arp.extend([0; 6]);
    arp.extend(VIP);
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(1, 80, 0, 1000);
    let mut v6 = Vec::new();
    b.write(&mut v6, b"x").unwrap();
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT, VIP, 64)
        .icmpv4_echo_request(1, 1);
    let mut icmp = Vec::new();
    b.write(&mut icmp, b"ping").unwrap();
    for hook in HOOKS {
        for pkt in [&arp, &v6, &icmp] {
            let (verdict, out) = f.run(hook, pkt);
            assert_eq!((verdict, &out), (pass(hook), pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassNotIpv4), 8);
    assert_eq!(f.verdict(Reason::PassNotL4), 4);
}

/// Test that every truncation of a TCP and a UDP packet to a frontend passes untouched as
/// malformed and never faults.
#[test]
fn truncated_packets_pass_untouched_and_are_counted() {
    let mut f = Fixture::new(vec![
        frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]),
        frontend(53, Protocol::Udp, &["10.244.0.11:5353"]),
    ]);
    let mut expected = 0;
    for full in [tcp(CLIENT, 1, VIP, 80, true), udp(CLIENT, 1, VIP, 53)] {
        let l4_min = if full.len() > 50 {
            14 + 20 + 20
        } else {
            14 + 20 + 8
        };
        // The test runner needs an Ethernet header, and for skb programs an IPv4 header.
        for len in 14..l4_min {
            for hook in HOOKS {
                if hook == HookKind::Tc && len < 34 {
                    continue;
                }
                let pkt = &full[..len];
                let (verdict, out) = f.run(hook, pkt);
                assert_eq!(
                    (verdict, out.as_slice()),
                    (pass(hook), pkt),
                    "{hook:?} len {len}"
                );
                expected += 1;
            }
        }
    }
    assert_eq!(f.verdict(Reason::PassMalformed), expected);
    assert_eq!(f.verdict(Reason::DnatNew), 0);
}

/// Test that bad IPv4 headers (version 6 with IPv4 ethertype, IHL below 5, total length
/// shorter than the header) pass untouched as malformed.
#[test]
fn bad_ipv4_headers_pass_untouched() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let good = tcp(CLIENT, 1, VIP, 80, true);
    let mut cases = Vec::new();
    let mut v = good.clone();
    v[14] = 0x65;
    cases.push(v);
    let mut v = good.clone();
    v[14] = 0x44;
    cases.push(v);
    let mut v = good.clone();
    v[16..18].copy_from_slice(&10u16.to_be_bytes());
    cases.push(v);
    let mut v = good.clone();
    v[16..18].copy_from_slice(&30u16.to_be_bytes());
    cases.push(v);
    for pkt in &cases {
        for hook in HOOKS {
            let (verdict, out) = f.run(hook, pkt);
            assert_eq!((verdict, &out), (pass(hook), pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassMalformed), 16);
}

/// Test that a packet with IP options is DNATed, the options kept, checksums right.
#[test]
fn packet_with_ip_options_is_dnated() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let build = |dst: [u8; 4], dport: u16| {
        let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, CLIENT, dst).unwrap();
        ip.options = [1u8, 1, 1, 0][..].try_into().unwrap(); // NOP NOP NOP EOL
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, dport, 1, 1000)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, b"opt").unwrap();
        v
    };
    let pkt = build(VIP, 80);
    assert_eq!(pkt[14], 0x46, "IHL 6");
    for hook in HOOKS {
        let (verdict, out) = f.run(hook, &pkt);
        assert_eq!(verdict, pass(hook));
        assert_eq!(out, build([10, 244, 0, 11], 8080), "{hook:?}");
        assert_checksums(&out);
    }
}

/// Test that fragments (first and later) pass untouched, counted as fragments.
#[test]
fn fragments_pass_untouched() {
    let mut f = Fixture::new(vec![frontend(53, Protocol::Udp, &["10.244.0.11:5353"])]);
    let good = udp(CLIENT, 1, VIP, 53);
    let mut first = good.clone();
    first[20] |= 0x20; // MF
    let mut later = good.clone();
    later[20..22].copy_from_slice(&(100u16).to_be_bytes()); // offset 800
    for pkt in [&first, &later] {
        for hook in HOOKS {
            let (verdict, out) = f.run(hook, pkt);
            assert_eq!((verdict, &out), (pass(hook), pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassFragment), 8);
}

/// Test that a frontend without backends whose plan says drop drops new flows, counted.
#[test]
fn frontend_without_backends_drops_when_the_plan_says_drop() {
    let mut fe = frontend(80, Protocol::Tcp, &[]);
    fe.on_empty = Some(OnEmpty::Drop);
    let mut f = Fixture::new(vec![fe]);
    for hook in HOOKS {
        let (verdict, _) = f.run(hook, &tcp(CLIENT, 1, VIP, 80, true));
        assert_eq!(verdict, drop_(hook));
    }
    assert_eq!(f.verdict(Reason::DropNoBackend), 4);
}

/// Test that a frontend without backends whose plan says reject answers a TCP SYN and a UDP
/// datagram with ICMP port unreachable from the frontend to the client, quoting the client's
/// IP header and its TCP header (20 bytes) or UDP header (8), checksums right, sent back out
/// (XDP_TX on node devices, redirect on tc). XDP on pod interfaces cannot send it: dropped.
#[test]
fn frontend_without_backends_rejects_with_icmp_port_unreachable() {
    const XDP_TX: u32 = 3;
    const TC_REDIRECT: u32 = 7;
    let mut f = Fixture::new(vec![
        frontend(80, Protocol::Tcp, &[]),
        frontend(53, Protocol::Udp, &[]),
    ]);
    for (pkt, l4_quote) in [
        (tcp(CLIENT, 4444, VIP, 80, true), 20),
        (udp(CLIENT, 4444, VIP, 53), 8),
    ] {
        let (verdict, _) = f.run(HookKind::XdpPod, &pkt);
        assert_eq!(verdict, XDP_DROP);
        for hook in [HookKind::Tc, HookKind::Xdp, HookKind::XdpVeth] {
            let (verdict, out) = f.run(hook, &pkt);
            let want = if hook == HookKind::Tc {
                TC_REDIRECT
            } else {
                XDP_TX
            };
            assert_eq!(verdict, want, "{hook:?}");
            assert_eq!(out.len(), 14 + 20 + 8 + 20 + l4_quote, "{hook:?}");
            assert_eq!(&out[0..6], &MAC_A, "to the sender's MAC");
            assert_eq!(&out[6..12], &MAC_B);
            let p = SlicedPacket::from_ethernet(&out).expect("parse reply");
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!("not IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!((h.source, h.destination), (VIP, CLIENT));
            let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
                panic!("not ICMP: {:?}", p.transport)
            };
            assert_eq!(
                icmp.icmp_type(),
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Port
                )
            );
            assert_eq!(
                icmp.checksum(),
                icmp.icmp_type().calc_checksum(icmp.payload()),
                "ICMP checksum"
            );
            assert_eq!(icmp.payload(), &pkt[14..14 + 20 + l4_quote], "quote");
        }
    }
    assert_eq!(f.verdict(Reason::RejectNoBackend), 6);
    assert_eq!(f.verdict(Reason::RejectDropped), 2);
}

/// Test that XDP on pod interfaces and on veth node devices updates a CHECKSUM_PARTIAL
/// pseudo-header seed as a seed (addresses only), while XDP on NICs treats every checksum as
/// full.
#[test]
fn xdp_pod_hook_updates_a_checksum_partial_seed_as_a_seed() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let mut pkt = tcp(CLIENT, 40000, VIP, 80, true);
    let l4_len = (pkt.len() - 34) as u16;
    let raw = |a: [u8; 4]| u32::from_ne_bytes(a);
    let seed = csum::pseudo_header_seed(raw(CLIENT), raw(VIP), 6, l4_len);
    pkt[50..52].copy_from_slice(&seed.to_ne_bytes());
    let want = csum::pseudo_header_seed(raw(CLIENT), raw([10, 244, 0, 11]), 6, l4_len);
    for hook in [HookKind::XdpPod, HookKind::XdpVeth] {
        let (verdict, out) = f.run(hook, &pkt);
        assert_eq!(verdict, XDP_PASS, "a seed is never sent with XDP_TX");
        assert_eq!(&out[50..52], &want.to_ne_bytes(), "{hook:?}");
        assert_eq!(dst_of(&out).to_string(), "10.244.0.11:8080");
    }
    // On a NIC the same value is a full checksum and is updated as one.
    let (_, out) = f.run(HookKind::Xdp, &pkt);
    assert_ne!(&out[50..52], &want.to_ne_bytes());
}

/// Test that a UDP datagram without a checksum (0) keeps none after DNAT on every hook.
#[test]
fn udp_without_checksum_keeps_none() {
    let mut f = Fixture::new(vec![frontend(53, Protocol::Udp, &["10.244.0.11:5353"])]);
    let mut pkt = udp(CLIENT, 1, VIP, 53);
    pkt[40..42].copy_from_slice(&[0, 0]);
    for hook in HOOKS {
        let (_, out) = f.run(hook, &pkt);
        assert_eq!(dst_of(&out).to_string(), "10.244.0.11:5353");
        assert_eq!(&out[40..42], &[0, 0], "{hook:?}");
    }
}

/// Test that every packet is counted under exactly one verdict, and per frontend.
#[test]
fn every_packet_is_counted_once() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let pkts = [
        tcp(CLIENT, 7, VIP, 80, true),
        tcp(CLIENT, 7, VIP, 80, false),
        tcp([10, 244, 0, 11], 8080, CLIENT, 7, false),
        tcp(CLIENT, 7, [1, 2, 3, 4], 80, false),
        udp(CLIENT, 7, VIP, 80),
    ];
    for p in &pkts {
        f.run(HookKind::Tc, p);
    }
    assert_eq!(f.verdict_total(), pkts.len() as u64);
    let pinned = Pinned::open(f.bpffs.path()).unwrap();
    let id = f.current.frontends.values().next().unwrap().id;
    let st = pinned.frontend_stats(id).unwrap();
    assert_eq!((st.packets, st.new_flows), (2, 1));
    assert_eq!(st.bytes, (pkts[0].len() + pkts[1].len()) as u64);
}

/// Test that with sessionAffinity ClientIP every new flow of a client goes to the client's
/// backend, other clients are still spread, and a removed backend ends the affinity.
#[test]
fn client_ip_affinity_keeps_a_clients_new_flows_on_one_backend() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut fe = frontend(80, Protocol::Tcp, &backends);
    fe.affinity_timeout_seconds = Some(10800);
    let mut f = Fixture::new(vec![fe.clone()]);
    for hook in HOOKS {
        let first = dst_of(&f.run(hook, &tcp(CLIENT, 30000, VIP, 80, true)).1);
        for port in 30001..30040u16 {
            let (_, out) = f.run(hook, &tcp(CLIENT, port, VIP, 80, true));
            assert_eq!(dst_of(&out), first, "{hook:?} port {port}");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in 1..=60u8 {
        let (_, out) = f.run(HookKind::Tc, &tcp([10, 244, 1, c], 1000, VIP, 80, true));
        seen.insert(dst_of(&out));
    }
    assert_eq!(seen.len(), 3, "other clients spread: {seen:?}");
    // Remove the client's backend: its next new flow goes elsewhere and sticks there.
    let mine = dst_of(&f.run(HookKind::Tc, &tcp(CLIENT, 31000, VIP, 80, true)).1);
    fe.backends.retain(|b| *b != mine);
    f.program(vec![fe]);
    let next = dst_of(&f.run(HookKind::Tc, &tcp(CLIENT, 31001, VIP, 80, true)).1);
    assert_ne!(next, mine);
    for port in 31002..31010u16 {
        let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, port, VIP, 80, true));
        assert_eq!(dst_of(&out), next);
    }
}

/// Test that without affinity one client's flows spread over the backends.
#[test]
fn without_affinity_one_clients_flows_spread() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &backends)]);
    let mut seen = std::collections::BTreeSet::new();
    for port in 30000..30060u16 {
        seen.insert(dst_of(
            &f.run(HookKind::Tc, &tcp(CLIENT, port, VIP, 80, true)).1,
        ));
    }
    assert_eq!(seen.len(), 3);
}

/// Test that a LoadBalancer frontend with loadBalancerSourceRanges admits sources inside the
/// ranges (longest-prefix matched) and drops the others, counted; a frontend without ranges
/// admits all.
#[test]
fn load_balancer_source_ranges_admit_listed_sources_only() {
    const LB_IP: [u8; 4] = [203, 0, 113, 7];
    let mut fe = frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]);
    fe.kind = FrontendKind::LoadBalancer;
    fe.ip = Ipv4Addr::from(LB_IP).into();
    fe.source_ranges = vec![
        lb_agent::plan::SourceRange::parse("192.168.7.0/24").unwrap(),
        lb_agent::plan::SourceRange::parse("10.1.2.3/32").unwrap(),
    ];
    let mut f = Fixture::new(vec![fe, frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    for hook in HOOKS {
        for (src, allowed) in [
            ([192, 168, 7, 200], true),
            ([10, 1, 2, 3], true),
            ([10, 1, 2, 4], false),
            ([192, 168, 8, 1], false),
        ] {
            let (verdict, out) = f.run(hook, &tcp(src, 5555, LB_IP, 80, true));
            if allowed {
                assert_eq!(
                    dst_of(&out).to_string(),
                    "10.244.0.11:8080",
                    "{hook:?} {src:?}"
                );
            } else {
                assert_eq!(verdict, drop_(hook), "{hook:?} {src:?}");
            }
        }
        // The ClusterIP frontend of the same backends has no ranges.
        let (_, out) = f.run(hook, &tcp([10, 1, 2, 4], 5556, VIP, 80, true));
        assert_eq!(dst_of(&out).to_string(), "10.244.0.11:8080");
    }
    assert_eq!(f.verdict(Reason::DropSourceRange), 2 * HOOKS.len() as u64);
}

/// Test that a client's affinity ends after its timeout: a new flow whose hash points at
/// another backend follows the affinity before the timeout, and its hash after.
#[test]
fn client_ip_affinity_expires_after_its_timeout() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut fe = frontend(80, Protocol::Tcp, &backends);
    fe.affinity_timeout_seconds = Some(1);
    let mut f = Fixture::new(vec![fe]);
    let first = dst_of(&f.run(HookKind::Tc, &tcp(CLIENT, 30000, VIP, 80, true)).1);
    // A client port whose own hash picks another backend than the affinity's.
    let slot_of = |port: u16| {
        let h = lb_common::hash::flow_hash(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(VIP),
            port.to_be(),
            80u16.to_be(),
            6,
        );
        backends[lb_common::hash::slot_of(h, 3) as usize]
            .parse::<SocketAddr>()
            .unwrap()
    };
    let (p1, p2) = {
        let mut others = (30001..31000u16).filter(|p| slot_of(*p) != first);
        (others.next().unwrap(), others.next().unwrap())
    };
    let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, p1, VIP, 80, true));
    assert_eq!(dst_of(&out), first, "within the timeout the affinity wins");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, p2, VIP, 80, true));
    assert_eq!(
        dst_of(&out),
        slot_of(p2),
        "after the timeout the flow's hash decides"
    );
}

/// A node device in a network namespace of its own, for the FIB-dependent paths: `eth0`
/// (172.18.0.10/24, MAC 02:00:00:00:00:10) with permanent neighbours for another node
/// (172.18.0.11) and an outside client (172.18.0.100), a route to the other node's pods
/// (10.244.1.0/24) through it, and a local pod interface `lxc1` (10.244.0.11/32).
struct NodeNetns {
    ns: lb_tests::NetNs,
    eth0: u32,
}

const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
const OTHER_NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const OUTSIDE_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0];
const NODE_IP: [u8; 4] = [172, 18, 0, 10];
const OUTSIDE_IP: [u8; 4] = [172, 18, 0, 100];

impl NodeNetns {
    fn new(tag: &str) -> Self {
        let ns = lb_tests::NetNs::new(tag).unwrap();
        for args in [
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "wire",
            ][..],
            &["link", "set", "eth0", "address", "02:00:00:00:00:10", "up"],
            &["link", "set", "wire", "up"],
            &["addr", "add", "172.18.0.10/24", "dev", "eth0"],
            &[
                "neigh",
                "add",
                "172.18.0.11",
                "lladdr",
                "02:00:00:00:00:11",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
            &[
                "neigh",
                "add",
                "172.18.0.100",
                "lladdr",
                "02:00:00:00:01:00",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
            &[
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                "172.18.0.11",
                "dev",
                "eth0",
            ],
            &[
                "link", "add", "lxc1", "type", "veth", "peer", "name", "pod1",
            ],
            &["link", "set", "lxc1", "up"],
            &["link", "set", "pod1", "up"],
            &["route", "add", "10.244.0.11/32", "dev", "lxc1"],
        ] {
            ns.ip(args).unwrap();
        }
        for key in ["ipv4/conf/all/forwarding", "ipv4/conf/eth0/forwarding"] {
            ns.set_sysctl(key, "1").unwrap();
        }
        let eth0 = ns.ifindex("eth0").unwrap();
        NodeNetns { ns, eth0 }
    }

    /// A `struct xdp_md` for a packet of `len` bytes arriving on eth0.
    fn xdp_ctx(&self, len: usize) -> Vec<u8> {
        [0u32, len as u32, 0, self.eth0, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }
}

fn frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    ttl: u8,
    syn: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .tcp(sport, dport, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    v
}

/// Test the NodePort paths that depend on the FIB, with exact bytes and checksums: a flow from
/// outside to a backend behind another node is SNATed to this node's address and a port from
/// the SNAT range and sent back out of the NIC by XDP_TX with the next hop's MACs and TTL - 1;
/// its reply is un-NATed to come from the NodePort and sent to the client the same way; a flow
/// to a backend on this node passes to the stack, unSNATed.
#[test]
fn nodeport_flows_are_snated_and_forwarded_by_the_fib() {
    const XDP_TX: u32 = 3;
    let node = NodeNetns::new("pkt-fib");
    let mut remote = frontend(30080, Protocol::Tcp, &["10.244.1.11:8080"]);
    remote.kind = FrontendKind::NodePort;
    remote.ip = Ipv4Addr::from(NODE_IP).into();
    let mut local = remote.clone();
    local.port = 30081;
    local.backends = vec!["10.244.0.11:8080".parse().unwrap()];
    node.ns.enter(|| {
        let mut f = Fixture::new(vec![remote, local]);
        let mut run = |pkt: &[u8]| {
            let ctx = node.xdp_ctx(pkt.len());
            let mut out = vec![0u8; pkt.len() + 256];
            let r =
                f.dp.test_run_ctx(HookKind::Xdp, pkt, &mut out, 1, Some(&ctx))
                    .expect("test run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        let client = (OUTSIDE_IP, 45678);
        let to_node = (OUTSIDE_MAC, NODE_MAC);
        let (verdict, out) = run(&frame(to_node, client, (NODE_IP, 30080), 64, true));
        assert_eq!(verdict, XDP_TX);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        let snat_port = t.source_port();
        assert!(
            (61_000..=65_535).contains(&snat_port),
            "SNAT port {snat_port}"
        );
        let want = frame(
            (NODE_MAC, OTHER_NODE_MAC),
            (NODE_IP, snat_port),
            ([10, 244, 1, 11], 8080),
            63,
            true,
        );
        assert_eq!(out, want, "SNATed, routed to the other node");
        assert_checksums(&out);

        let reply = frame(
            (OTHER_NODE_MAC, NODE_MAC),
            ([10, 244, 1, 11], 8080),
            (NODE_IP, snat_port),
            64,
            false,
        );
        let (verdict, out) = run(&reply);
        assert_eq!(verdict, XDP_TX);
        let want = frame((NODE_MAC, OUTSIDE_MAC), (NODE_IP, 30080), client, 63, false);
        assert_eq!(out, want, "reply from the NodePort to the client");
        assert_checksums(&out);

        let (verdict, out) = run(&frame(
            to_node,
            (OUTSIDE_IP, 45679),
            (NODE_IP, 30081),
            64,
            true,
        ));
        assert_eq!(
            verdict, XDP_PASS,
            "a local backend is reached through the stack"
        );
        let want = frame(
            to_node,
            (OUTSIDE_IP, 45679),
            ([10, 244, 0, 11], 8080),
            64,
            true,
        );
        assert_eq!(out, want, "DNAT only: the backend sees the client");
        assert_checksums(&out);

        let pinned = Pinned::open(f.bpffs.path()).unwrap();
        let paths = pinned.paths().unwrap();
        use lb_common::verdict::Path;
        assert_eq!(paths[Path::Tx as usize].packets, 2);
        assert_eq!(paths[Path::PassLocal as usize].packets, 1);
    });
}

/// Test that the program picks, for a frontend reached from outside, the backend the Maglev
/// table built by the agent names for the flow's hash: the kernel and the userspace reference
/// model (lb_common's flow hash over lb_agent's Maglev table) agree on every flow.
#[test]
fn external_frontends_choose_the_maglev_tables_backend() {
    const EXT_IP: [u8; 4] = [172, 18, 0, 200];
    let backends: Vec<String> = (1..=5).map(|i| format!("10.244.{i}.7:8080")).collect();
    let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let mut fe = frontend(80, Protocol::Tcp, &refs);
    fe.kind = FrontendKind::ExternalIP;
    fe.ip = Ipv4Addr::from(EXT_IP).into();
    let mut f = Fixture::new(vec![fe]);
    let m = lb_agent::maglev::table_size(backends.len());
    let table = lb_agent::maglev::build(&backends, m);
    for port in 20000..20200u16 {
        let h = lb_common::hash::flow_hash(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(EXT_IP),
            port.to_be(),
            80u16.to_be(),
            6,
        );
        let want = &backends[table[lb_common::hash::slot_of(h, m) as usize] as usize];
        let (ip, bport) = octets(want);
        let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, port, EXT_IP, 80, true));
        assert_eq!(
            out,
            tcp(CLIENT, port, ip, bport, true),
            "flow from port {port}"
        );
        assert_checksums(&out);
    }
}
