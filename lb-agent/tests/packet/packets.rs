//! Packets built for the tests and read back from their output: TCP and UDP frames, the
//! addresses they carry, and checksum checks.

use std::net::SocketAddr;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

/// The client pod's address.
pub const CLIENT: [u8; 4] = [10, 244, 0, 2];
/// The frontend's address (a ClusterIP).
pub const VIP: [u8; 4] = [10, 96, 0, 10];
/// Source and destination MACs of the frames built here.
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

/// A TCP SYN (`syn`) or ACK from `src` to `dst` with a 5-byte payload.
pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let payload = b"hello";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// A UDP datagram from `src` to `dst` with a 5-byte payload.
pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let payload = b"query";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// A TCP FIN (with ACK) from `src` to `dst`.
pub fn tcp_fin(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1001, 65535)
        .ack(1)
        .fin();
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, &[]).unwrap();
    v
}

/// A TCP SYN (`syn`) or ACK between MAC and IP endpoints of its own, with a given TTL.
pub fn frame(
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

/// Asserts the IPv4 header checksum and the TCP/UDP checksum of an Ethernet frame are correct.
pub fn assert_checksums(frame: &[u8]) {
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
pub fn dst_of(frame: &[u8]) -> SocketAddr {
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

/// Source (address, port) of a frame.
pub fn src_of(frame: &[u8]) -> ([u8; 4], u16) {
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

/// The address and port of `"a.b.c.d:port"`.
pub fn octets(s: &str) -> ([u8; 4], u16) {
    let a: SocketAddr = s.parse().unwrap();
    let SocketAddr::V4(a) = a else { panic!() };
    (a.ip().octets(), a.port())
}
