//! Packets that are not the load balancer's, or that it cannot read, pass untouched and are
//! counted: unknown frontends, ARP, IPv6, ICMP, truncations, bad IPv4 headers, fragments. On
//! every program; the XDP accelerator leaves the counting to the tc program behind it.

use etherparse::PacketBuilder;
use lb_common::verdict::Reason;

use crate::{
    fixture::{counts_passes, frontend, is_tc, pass, Fixture, Protocol, ALL_HOOKS},
    packets::{tcp, udp, CLIENT, MAC_A, MAC_B, VIP},
};

/// The programs that count what they pass: all but the XDP accelerator.
const COUNTING: u64 = 3;

/// Test that packets to an address or port that is no frontend pass untouched.
#[test]
fn unknown_frontend_passes_untouched() {
    assert_eq!(
        ALL_HOOKS.iter().filter(|h| counts_passes(**h)).count() as u64,
        COUNTING
    );
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &["10.244.0.11:8080"])]);
    for pkt in [
        tcp(CLIENT, 1234, [10, 96, 0, 99], 80, true),
        tcp(CLIENT, 1234, VIP, 81, true),
        udp(CLIENT, 1234, VIP, 80),
    ] {
        for hook in ALL_HOOKS {
            let (verdict, out) = f.run(hook, &pkt);
            assert_eq!((verdict, &out), (pass(hook), &pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassNoService), 3 * COUNTING);
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
    for hook in ALL_HOOKS {
        for pkt in [&arp, &v6, &icmp] {
            let (verdict, out) = f.run(hook, pkt);
            assert_eq!((verdict, &out), (pass(hook), pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassNotIpv4), 2 * COUNTING);
    assert_eq!(f.verdict(Reason::PassNotL4), COUNTING);
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
            for hook in ALL_HOOKS {
                if is_tc(hook) && len < 34 {
                    continue;
                }
                let pkt = &full[..len];
                let (verdict, out) = f.run(hook, pkt);
                assert_eq!(
                    (verdict, out.as_slice()),
                    (pass(hook), pkt),
                    "{hook:?} len {len}"
                );
                expected += u64::from(counts_passes(hook));
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
        for hook in ALL_HOOKS {
            let (verdict, out) = f.run(hook, pkt);
            assert_eq!((verdict, &out), (pass(hook), pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassMalformed), 4 * COUNTING);
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
        for hook in ALL_HOOKS {
            let (verdict, out) = f.run(hook, pkt);
            assert_eq!((verdict, &out), (pass(hook), pkt));
        }
    }
    assert_eq!(f.verdict(Reason::PassFragment), 2 * COUNTING);
}
