//! Packet crafting and checksum verification shared by the datapath tests.

#![allow(dead_code)]

use netlet_ebpf::Proto;
use std::net::Ipv4Addr;

/// Ethernet header length.
pub const ETH: usize = 14;
/// IPv4 header length (no options) of crafted packets.
pub const IP: usize = 20;

/// A parsed view of an Ethernet + IPv4 + TCP/UDP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub l4_csum: u16,
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum16(&p, 0)
}

/// Builds Ethernet + IPv4 + TCP (SYN) or UDP carrying `payload`, with correct checksums
/// (or a zero UDP checksum when `udp_zero_csum`).
pub fn packet(
    proto: Proto,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    udp_zero_csum: bool,
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    let csum_at = match proto {
        Proto::Tcp => {
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0u32.to_be_bytes()); // ack
            l4.extend_from_slice(&[5 << 4, 0x02]); // data offset, SYN
            l4.extend_from_slice(&64240u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0, 0, 0]); // csum, urg
            16
        }
        Proto::Udp => {
            l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            6
        }
    };
    l4.extend_from_slice(payload);
    let pn = proto.number();
    if !(proto == Proto::Udp && udp_zero_csum) {
        let mut c = !fold(sum16(&l4, pseudo(src, dst, pn, l4.len())));
        if proto == Proto::Udp && c == 0 {
            c = 0xffff;
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((IP + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, pn, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = !fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

/// Parses a frame built like [`packet`]; panics on anything else.
pub fn parse(f: &[u8]) -> Parsed {
    assert_eq!(&f[12..14], &[0x08, 0x00], "not IPv4");
    let ip = &f[ETH..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let l4 = &ip[ihl..];
    let proto = ip[9];
    let csum_at = if proto == 6 { 16 } else { 6 };
    Parsed {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        proto,
        l4_csum: u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]),
    }
}

/// Asserts the IPv4 header checksum and the TCP/UDP checksum (pseudo header included) verify.
/// A zero UDP checksum ("none") is accepted only when `allow_udp_zero`.
pub fn assert_checksums(f: &[u8], allow_udp_zero: bool) {
    let ip = &f[ETH..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(fold(sum16(&ip[..ihl], 0)), 0xffff, "IPv4 header checksum");
    let p = parse(f);
    if p.proto == 17 && p.l4_csum == 0 {
        assert!(allow_udp_zero, "UDP checksum became 0");
        return;
    }
    let l4 = &ip[ihl..total];
    assert_eq!(
        fold(sum16(l4, pseudo(p.src, p.dst, p.proto, l4.len()))),
        0xffff,
        "L4 checksum of {p:?}"
    );
}

/// The folded one's complement sum of `data` (0xffff when a checksum inside it verifies).
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// Recomputes the TCP/UDP checksum of an option-less IPv4 frame in place.
pub fn fix_l4_checksum(f: &mut [u8]) {
    let p = parse(f);
    let l4 = ETH + IP;
    let at = l4 + if p.proto == 6 { 16 } else { 6 };
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let c = !fold(sum16(&f[l4..], pseudo(p.src, p.dst, p.proto, f.len() - l4)));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}
