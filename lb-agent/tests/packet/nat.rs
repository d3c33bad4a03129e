//! ClusterIP DNAT and reverse NAT on every hook: exact output bytes, checksums of every kind
//! (full, CHECKSUM_PARTIAL seeds, UDP without checksum, IP options) and the counters.

use etherparse::{Ipv4Header, PacketBuilder};
use lb_common::{csum, verdict::Reason};

use crate::{
    fixture::{
        counts_passes, frontend, pass, Fixture, HookKind, Pinned, Protocol, ALL_HOOKS, HOOKS,
        XDP_PASS,
    },
    packets::{assert_checksums, dst_of, octets, tcp, udp, CLIENT, MAC_A, MAC_B, VIP},
};

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
    assert_eq!(f.verdict(Reason::DnatEstablished), HOOKS.len() as u64 - 1);
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
    assert_eq!(f.verdict(Reason::DnatNew), HOOKS.len() as u64);
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

/// Test that a packet from a backend to a client with no tracked flow is not rewritten, on
/// every program (counted by all but the XDP accelerator, which leaves that to tc).
#[test]
fn reply_without_a_tracked_flow_passes_untouched() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let pkt = tcp([10, 244, 0, 11], 8080, CLIENT, 40001, false);
    for hook in ALL_HOOKS {
        let (verdict, out) = f.run(hook, &pkt);
        assert_eq!((verdict, &out), (pass(hook), &pkt));
    }
    let counting = ALL_HOOKS.iter().filter(|h| counts_passes(**h)).count();
    assert_eq!(f.verdict(Reason::PassNoService), counting as u64);
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

/// Test that XDP on pod interfaces updates a CHECKSUM_PARTIAL pseudo-header seed as a seed
/// (addresses only), while the XDP accelerator on node devices leaves a packet carrying a seed
/// untouched for tc (XDP_TX would hand the seed on as a full checksum), counted on its path.
#[test]
fn xdp_pod_hook_updates_a_checksum_partial_seed_as_a_seed() {
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    let mut pkt = tcp(CLIENT, 40000, VIP, 80, true);
    let l4_len = (pkt.len() - 34) as u16;
    let raw = |a: [u8; 4]| u32::from_ne_bytes(a);
    let seed = csum::pseudo_header_seed(raw(CLIENT), raw(VIP), 6, l4_len);
    pkt[50..52].copy_from_slice(&seed.to_ne_bytes());
    let want = csum::pseudo_header_seed(raw(CLIENT), raw([10, 244, 0, 11]), 6, l4_len);
    let (verdict, out) = f.run(HookKind::XdpPod, &pkt);
    assert_eq!(verdict, XDP_PASS, "a seed is never sent with XDP_TX");
    assert_eq!(&out[50..52], &want.to_ne_bytes());
    assert_eq!(dst_of(&out).to_string(), "10.244.0.11:8080");
    let (verdict, out) = f.run(HookKind::Xdp, &pkt);
    assert_eq!((verdict, &out), (XDP_PASS, &pkt), "left untouched for tc");
    assert_eq!(f.path(lb_common::verdict::Path::XdpPassPartial), 1);
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
