//! Checksums of rewritten packets: every DNATed and reverse-NATed packet that arrives in a pod,
//! captured there, carries the IPv4 and L4 checksums it must, with either pod hook.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd};
use std::thread;
use std::time::Duration;

use lb_common::csum::{checksum, pseudo_header_seed};
use lb_tests::capture::{Capture, Frame};
use lb_tests::lab::{backend_ip, echo_service, CLIENT_IP, TCP_TARGET, UDP_TARGET};
use lb_tests::objects::Service;
use lb_tests::{check_reply, Lab, NetNs, PodHook};

/// What a rewritten packet's L4 checksum field held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Csum {
    /// A correct full checksum over pseudo-header and segment.
    Full,
    /// Exactly the pseudo-header seed for the packet's own addresses and length
    /// (what a CHECKSUM_PARTIAL packet carries).
    Seed,
    /// Zero in a UDP header: no checksum.
    Zero,
    /// None of these.
    Wrong,
}

/// One class of checked packets: which capture, protocol, whether the kernel marked them
/// CHECKSUM_PARTIAL, what their L4 checksum field held, what it had to hold, and whether the
/// IPv4 header checksum was right.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CsumKey {
    side: &'static str,
    proto: u8,
    partial: bool,
    kind: Csum,
    want: Csum,
    ip_ok: bool,
}

/// Source ports of the UDP datagrams the checksum tests send without a checksum (field 0).
const NO_CSUM_PORTS: std::ops::Range<u16> = 40_500..40_600;

/// Classify the checksums of an IPv4 TCP/UDP frame for which `keep(src, dst, proto)` holds;
/// `None` for other frames. What the L4 field must hold: the seed in a CHECKSUM_PARTIAL packet
/// (the stack completes the sum from it), zero in a UDP datagram sent without a checksum, a full
/// checksum otherwise.
fn classify(
    side: &'static str,
    frame: &Frame,
    keep: &dyn Fn(SocketAddrV4, SocketAddrV4, u8) -> bool,
) -> Option<(CsumKey, String)> {
    let eth = etherparse::Ethernet2HeaderSlice::from_slice(&frame.data).ok()?;
    if eth.ether_type() != etherparse::EtherType::IPV4 {
        return None;
    }
    let l3 = &frame.data[eth.slice().len()..];
    let ip = etherparse::Ipv4HeaderSlice::from_slice(l3).ok()?;
    let proto = ip.protocol().0;
    let csum_at = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let l4 = l3.get(ip.slice().len()..usize::from(ip.total_len()))?;
    if l4.len() < csum_at + 2 {
        return None;
    }
    let src = SocketAddrV4::new(ip.source_addr(), u16::from_be_bytes([l4[0], l4[1]]));
    let dst = SocketAddrV4::new(ip.destination_addr(), u16::from_be_bytes([l4[2], l4[3]]));
    if !keep(src, dst, proto) {
        return None;
    }
    let seed = pseudo_header_seed(
        u32::from_ne_bytes(src.ip().octets()),
        u32::from_ne_bytes(dst.ip().octets()),
        proto,
        l4.len() as u16,
    );
    let field = u16::from_ne_bytes([l4[csum_at], l4[csum_at + 1]]);
    let udp = proto == 17;
    let partial = frame.status & libc::TP_STATUS_CSUMNOTREADY != 0;
    // A seed is also a valid full checksum for 1 segment in 65,536: in a CHECKSUM_PARTIAL packet,
    // where the seed is what must be there, it is read as the seed.
    let kind = if udp && field == 0 {
        Csum::Zero
    } else if partial && field == seed {
        Csum::Seed
    } else if checksum(u32::from(seed), l4) == 0 {
        Csum::Full
    } else if field == seed {
        Csum::Seed
    } else {
        Csum::Wrong
    };
    let want = if partial {
        Csum::Seed
    } else if udp && NO_CSUM_PORTS.contains(&src.port()) && side == "backend" {
        Csum::Zero
    } else {
        Csum::Full
    };
    let key = CsumKey {
        side,
        proto,
        partial,
        kind,
        want,
        ip_ok: checksum(0, ip.slice()) == 0,
    };
    let text = format!(
        "{side} proto {proto} {src} -> {dst} len {} field {:#06x} seed {:#06x} status {:#x}",
        l4.len(),
        u16::from_be(field),
        u16::from_be(seed),
        frame.status
    );
    Some((key, text))
}

/// Send raw IPv4 packets (header checksum and length filled in by the kernel) from `ns`: they
/// carry exactly the L4 checksum given, and the stack marks them CHECKSUM_NONE.
fn send_raw(ns: &NetNs, packets: &[(Ipv4Addr, Vec<u8>)]) {
    ns.enter(|| {
        // SAFETY: plain syscalls on a socket owned here; buffers are live for each call.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            );
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            for (dst, p) in packets {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
                let n = libc::sendto(
                    fd.as_raw_fd(),
                    p.as_ptr() as *const libc::c_void,
                    p.len(),
                    0,
                    &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(
                    n,
                    p.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// An IPv4 packet `src -> dst` carrying `l4` (protocol `proto`, checksum field at `csum_at`),
/// with a full L4 checksum unless `no_csum`.
fn raw_packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
    no_csum: bool,
) -> Vec<u8> {
    l4[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    if !no_csum {
        let seed = pseudo_header_seed(
            u32::from_ne_bytes(src.ip().octets()),
            u32::from_ne_bytes(dst.ip().octets()),
            proto,
            l4.len() as u16,
        );
        let c = match checksum(u32::from(seed), &l4) {
            0 if proto == 17 => 0xffff,
            c => c,
        };
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
    }
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&l4);
    p
}

/// UDP datagrams (full checksum, and none) and TCP SYNs with full checksums from the client pod
/// to the Service, sent on a raw socket: packets that are not CHECKSUM_PARTIAL.
fn raw_requests(svc: &Service) -> Vec<(Ipv4Addr, Vec<u8>)> {
    let (SocketAddr::V4(udp_vip), SocketAddr::V4(tcp_vip)) = (svc.vip(53), svc.vip(80)) else {
        unreachable!("IPv4 VIPs")
    };
    let mut out = Vec::new();
    for i in 0..10u16 {
        let payload = vec![b'r'; 1 + usize::from(i)];
        for (sport, no_csum) in [(40_000, false), (NO_CSUM_PORTS.start, true)] {
            let src = SocketAddrV4::new(CLIENT_IP, sport + i);
            let mut udp = Vec::new();
            udp.extend_from_slice(&src.port().to_be_bytes());
            udp.extend_from_slice(&udp_vip.port().to_be_bytes());
            udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&payload);
            out.push((*udp_vip.ip(), raw_packet(src, udp_vip, 17, udp, 6, no_csum)));
        }
        let src = SocketAddrV4::new(CLIENT_IP, 41_000 + i);
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&tcp_vip.port().to_be_bytes());
        tcp.extend_from_slice(&(0x1000_0000u32 + u32::from(i)).to_be_bytes()); // seq
        tcp.extend_from_slice(&[0, 0, 0, 0]); // ack
        tcp.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // 20 bytes, SYN, window
        out.push((*tcp_vip.ip(), raw_packet(src, tcp_vip, 6, tcp, 16, false)));
    }
    out
}

/// Test body: capture what arrives in the backend pods (DNATed) and in the client pod (reverse
/// NATed) during TCP and UDP traffic from sockets (CHECKSUM_PARTIAL) and from a raw socket
/// (complete checksums, and UDP without one), and check every checksum.
fn rewritten_packets_have_valid_checksums(hook: PodHook) {
    let lab = Lab::with_echo("csum", 3, hook, &[1, 2, 3]);
    let svc = echo_service();
    let captures: Vec<(&'static str, Capture)> = ["b1", "b2", "b3", "client"]
        .into_iter()
        .map(|p| {
            let side = if p == "client" { "client" } else { "backend" };
            (side, Capture::start(lab.node.pod(p).ns(), "eth0").unwrap())
        })
        .collect();
    let (conns, lines) = (20, 3);
    for c in 0..conns {
        let mut conn = lab.client().tcp_conn(svc.vip(80)).unwrap();
        for l in 0..lines {
            // Odd and even lengths: the last byte of an odd segment is summed alone.
            let msg = "x".repeat(1 + c + l);
            check_reply(svc.vip(80), Some(CLIENT_IP), &msg, conn.request(&msg)).unwrap();
        }
    }
    for i in 0..conns {
        let msg = "u".repeat(1 + i);
        let r = lab.client().udp(svc.vip(53), &msg);
        check_reply(svc.vip(53), Some(CLIENT_IP), &msg, r).unwrap();
    }
    send_raw(lab.client_ns(), &raw_requests(&svc));
    // Let the answers to the raw packets and the last FIN/ACK exchanges land.
    thread::sleep(Duration::from_millis(200));
    let client_ip = CLIENT_IP;
    let vip_ip = match svc.vip(80) {
        SocketAddr::V4(v) => *v.ip(),
        SocketAddr::V6(_) => unreachable!(),
    };
    let dnated = move |src: SocketAddrV4, dst: SocketAddrV4, proto: u8| {
        *src.ip() == client_ip
            && dst.ip().octets()[..3] == [10, 244, 0]
            && dst.port() == if proto == 6 { TCP_TARGET } else { UDP_TARGET }
    };
    let reverse_nated = move |src: SocketAddrV4, dst: SocketAddrV4, _: u8| {
        *src.ip() == vip_ip && *dst.ip() == client_ip
    };
    let mut counts: BTreeMap<CsumKey, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (side, cap) in captures {
        let keep: &dyn Fn(SocketAddrV4, SocketAddrV4, u8) -> bool = if side == "client" {
            &reverse_nated
        } else {
            &dnated
        };
        for frame in cap.stop() {
            let Some((key, text)) = classify(side, &frame, keep) else {
                continue;
            };
            if !key.ip_ok || key.kind != key.want {
                bad.push(format!("{key:?}: {text}"));
            }
            *counts.entry(key).or_default() += 1;
        }
    }
    println!("{hook:?} hook, checksums seen: {counts:#?}");
    let total = |side: &str, proto: u8, partial: bool, want: Csum| {
        counts
            .iter()
            .filter(|(k, _)| {
                k.side == side && k.proto == proto && k.partial == partial && k.want == want
            })
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    // From sockets, per TCP connection at least SYN, ACK, 3 requests and FIN reach the backend;
    // SYN-ACK, 3 answers and FIN reach the client.
    assert!(
        total("backend", 6, true, Csum::Seed) >= conns * 6,
        "{counts:#?}"
    );
    assert!(
        total("client", 6, true, Csum::Seed) >= conns * 5,
        "{counts:#?}"
    );
    assert!(
        total("backend", 17, true, Csum::Seed) >= conns,
        "{counts:#?}"
    );
    assert!(
        total("client", 17, true, Csum::Seed) >= conns,
        "{counts:#?}"
    );
    // From the raw socket: 10 SYNs, 10 UDP datagrams with a checksum and 10 without.
    assert!(total("backend", 6, false, Csum::Full) >= 10, "{counts:#?}");
    assert!(total("backend", 17, false, Csum::Full) >= 10, "{counts:#?}");
    assert!(total("backend", 17, false, Csum::Zero) >= 10, "{counts:#?}");
    assert!(
        bad.is_empty(),
        "{} packets with a wrong checksum (of {}): {:#?}",
        bad.len(),
        counts.values().sum::<usize>(),
        &bad[..bad.len().min(20)]
    );
}

/// Test that with the tc pod hook every DNATed and reverse-NATed TCP/UDP packet that arrives
/// in a pod has a correct IPv4 header checksum and the L4 checksum it must have: exactly the
/// pseudo-header seed of its own rewritten addresses when the kernel marks it CHECKSUM_PARTIAL
/// (packets from sockets), a complete and correct one otherwise (packets from a raw socket), and
/// zero in a UDP datagram sent without a checksum. Offloads stay at their defaults.
#[test]
fn rewritten_packets_carry_valid_checksums_with_the_tc_hook() {
    rewritten_packets_have_valid_checksums(PodHook::Tc);
}

/// Test that with the XDP pod hook every DNATed and reverse-NATed TCP/UDP packet that arrives
/// in a pod has a correct IPv4 header checksum and the L4 checksum it must have: exactly the
/// pseudo-header seed of its own rewritten addresses when the kernel marks it CHECKSUM_PARTIAL
/// (packets from sockets), a complete and correct one otherwise (packets from a raw socket), and
/// zero in a UDP datagram sent without a checksum. Offloads stay at their defaults.
#[test]
fn rewritten_packets_carry_valid_checksums_with_the_xdp_hook() {
    rewritten_packets_have_valid_checksums(PodHook::Xdp);
}

/// Test that the checksum classifier of the tests above tells a full checksum, a seed, a zero UDP
/// checksum and a wrong one apart, and what each packet must carry (no namespaces needed).
#[test]
fn the_checksum_classifier_tells_full_seed_zero_and_wrong_apart() {
    let dst = SocketAddrV4::new(backend_ip(1), UDP_TARGET);
    let udp = |src: SocketAddrV4| {
        let mut l4 = [&src.port().to_be_bytes()[..], &dst.port().to_be_bytes()].concat();
        l4.extend_from_slice(&11u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(b"abc");
        l4
    };
    // An Ethernet frame around a raw packet, with the IPv4 length and checksum the kernel fills.
    let frame = |src: SocketAddrV4, no_csum: bool, status: u32| {
        let mut ip = raw_packet(src, dst, 17, udp(src), 6, no_csum);
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = checksum(0, &ip[..20]);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut data = vec![0u8; 12];
        data.extend_from_slice(&[0x08, 0x00]);
        data.extend_from_slice(&ip);
        Frame { data, status }
    };
    let keep = |_: SocketAddrV4, _: SocketAddrV4, _: u8| true;
    let kinds = |f: &Frame| {
        let (k, _) = classify("backend", f, &keep).expect("a UDP frame");
        assert!(k.ip_ok);
        (k.kind, k.want)
    };
    let src = SocketAddrV4::new(CLIENT_IP, 40_000);
    let at = 14 + 20 + 6;
    let full = frame(src, false, 0);
    assert_eq!(kinds(&full), (Csum::Full, Csum::Full));
    let mut wrong = full.clone();
    wrong.data[at] ^= 1;
    assert_eq!(kinds(&wrong), (Csum::Wrong, Csum::Full));
    let partial = libc::TP_STATUS_CSUMNOTREADY;
    let mut seed = frame(src, true, partial);
    let s = pseudo_header_seed(
        u32::from_ne_bytes(src.ip().octets()),
        u32::from_ne_bytes(dst.ip().octets()),
        17,
        11,
    );
    seed.data[at..at + 2].copy_from_slice(&s.to_ne_bytes());
    assert_eq!(kinds(&seed), (Csum::Seed, Csum::Seed));
    // A CHECKSUM_PARTIAL packet must carry the seed: the stack adds the segment's sum to it.
    assert_eq!(
        kinds(&Frame {
            status: partial,
            ..full
        }),
        (Csum::Full, Csum::Seed)
    );
    // A seed that is also a valid full checksum (1 segment in 65,536; the payload is chosen
    // here to make it one) is what a CHECKSUM_PARTIAL packet must carry: read as the seed.
    let mut l4 = [&src.port().to_be_bytes()[..], &dst.port().to_be_bytes()].concat();
    l4.extend_from_slice(&12u16.to_be_bytes());
    let s12 = pseudo_header_seed(
        u32::from_ne_bytes(src.ip().octets()),
        u32::from_ne_bytes(dst.ip().octets()),
        17,
        12,
    );
    l4.extend_from_slice(&s12.to_ne_bytes());
    l4.extend_from_slice(&[0; 4]);
    let fill = checksum(u32::from(s12), &l4);
    l4[10..12].copy_from_slice(&fill.to_ne_bytes());
    assert_eq!(
        checksum(u32::from(s12), &l4),
        0,
        "the seed is a full checksum too"
    );
    let mut both = seed.clone();
    both.data.truncate(at - 6);
    both.data.extend_from_slice(&l4);
    both.data[14 + 2..14 + 4].copy_from_slice(&(20u16 + 12).to_be_bytes());
    both.data[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = checksum(0, &both.data[14..14 + 20]);
    both.data[14 + 10..14 + 12].copy_from_slice(&c.to_ne_bytes());
    assert_eq!(kinds(&both), (Csum::Seed, Csum::Seed));
    assert_eq!(
        kinds(&Frame {
            status: 0,
            ..both.clone()
        }),
        (Csum::Full, Csum::Full)
    );
    assert_eq!(kinds(&frame(src, true, 0)), (Csum::Zero, Csum::Full));
    let no_csum_src = SocketAddrV4::new(CLIENT_IP, NO_CSUM_PORTS.start);
    assert_eq!(
        kinds(&frame(no_csum_src, true, 0)),
        (Csum::Zero, Csum::Zero)
    );
}
