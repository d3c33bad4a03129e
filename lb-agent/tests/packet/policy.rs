//! Frontend policies: a frontend without backends drops or rejects (ICMP port unreachable),
//! and loadBalancerSourceRanges admit listed sources only.

use std::net::Ipv4Addr;

use etherparse::{SlicedPacket, TransportSlice};
use lb_common::verdict::Reason;

use crate::{
    fixture::{
        drop_, frontend, is_tc, pass, Fixture, FrontendKind, HookKind, OnEmpty, Protocol,
        SourceRange, ALL_HOOKS, TC_REDIRECT, XDP_DROP, XDP_TX,
    },
    packets::{dst_of, tcp, udp, CLIENT, MAC_A, MAC_B, VIP},
};

/// Test that a frontend without backends whose plan says drop drops new flows, counted.
#[test]
fn frontend_without_backends_drops_when_the_plan_says_drop() {
    let mut fe = frontend(80, Protocol::Tcp, &[]);
    fe.on_empty = Some(OnEmpty::Drop);
    let mut f = Fixture::new(vec![fe]);
    for hook in ALL_HOOKS {
        let (verdict, _) = f.run(hook, &tcp(CLIENT, 1, VIP, 80, true));
        assert_eq!(verdict, drop_(hook));
    }
    assert_eq!(f.verdict(Reason::DropNoBackend), 4);
}

/// Test that a frontend without backends whose plan says reject answers a TCP SYN and a UDP
/// datagram with ICMP port unreachable from the frontend to the client, quoting the client's
/// IP header and its TCP header (20 bytes) or UDP header (8), checksums right, sent back out
/// (XDP_TX from the XDP accelerator, redirect from tc on pod interfaces and node devices). XDP on
/// pod interfaces cannot send it: dropped.
#[test]
fn frontend_without_backends_rejects_with_icmp_port_unreachable() {
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
        for hook in [HookKind::Tc, HookKind::TcNic, HookKind::Xdp] {
            let (verdict, out) = f.run(hook, &pkt);
            let want = if is_tc(hook) { TC_REDIRECT } else { XDP_TX };
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

/// Test that a LoadBalancer frontend with loadBalancerSourceRanges admits sources inside the
/// ranges (longest-prefix matched) and drops the others, counted; a frontend without ranges
/// admits all. The XDP accelerator drops the same, and leaves the admitted untouched for tc
/// (it cannot send them back out of its device here).
#[test]
fn load_balancer_source_ranges_admit_listed_sources_only() {
    const LB_IP: [u8; 4] = [203, 0, 113, 7];
    let mut fe = frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]);
    fe.kind = FrontendKind::LoadBalancer;
    fe.ip = Ipv4Addr::from(LB_IP).into();
    fe.source_ranges = vec![
        SourceRange::parse("192.168.7.0/24").unwrap(),
        SourceRange::parse("10.1.2.3/32").unwrap(),
    ];
    let mut f = Fixture::new(vec![fe, frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    for hook in ALL_HOOKS {
        let admitted = |out: &[u8], pkt: &[u8], what: &str| {
            if hook == HookKind::Xdp {
                assert_eq!(out, pkt, "{what}: left for tc");
            } else {
                assert_eq!(
                    dst_of(out).to_string(),
                    "10.244.0.11:8080",
                    "{hook:?} {what}"
                );
            }
        };
        for (src, allowed) in [
            ([192, 168, 7, 200], true),
            ([10, 1, 2, 3], true),
            ([10, 1, 2, 4], false),
            ([192, 168, 8, 1], false),
        ] {
            let pkt = tcp(src, 5555, LB_IP, 80, true);
            let (verdict, out) = f.run(hook, &pkt);
            if allowed {
                assert_eq!(verdict, pass(hook), "{hook:?} {src:?}");
                admitted(&out, &pkt, &format!("{src:?}"));
            } else {
                assert_eq!(verdict, drop_(hook), "{hook:?} {src:?}");
            }
        }
        // The ClusterIP frontend of the same backends has no ranges.
        let pkt = tcp([10, 1, 2, 4], 5556, VIP, 80, true);
        let (_, out) = f.run(hook, &pkt);
        admitted(&out, &pkt, "ClusterIP");
    }
    assert_eq!(
        f.verdict(Reason::DropSourceRange),
        2 * ALL_HOOKS.len() as u64
    );
}
