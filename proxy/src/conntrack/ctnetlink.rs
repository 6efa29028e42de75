//! ctnetlink: the conntrack table over `NETLINK_NETFILTER` (subsystem `NFNL_SUBSYS_CTNETLINK`),
//! the same messages `conntrack -L` / `conntrack -D` send, without the CLI.
//!
//! Deleting by filter is portable only as "dump, match in userspace, delete each by its
//! original tuple" (kernel-side flush filters by tuple exist only in recent kernels), which is
//! also what kube-proxy's netlink library does. Numbers are the kernel's uapi
//! (`linux/netfilter/nfnetlink_conntrack.h`); addresses and ports are big endian.
//!
//! The attribute encoder and message splitting are shared with the nftables backend
//! ([`crate::backend::nftables::netlink`]); a crate (`netlink-packet-netfilter` 0.4 has the
//! conntrack types) would have added a second netlink representation for a few dozen bytes.

use super::{ConntrackTable, Filter, Flow, Tuple};
use crate::backend::nftables::netlink::{
    error_code, find, parse_attrs, split_messages, Attrs, Received, F_ACK, F_DUMP, F_REQUEST,
    NETLINK_NETFILTER, NLMSG_DONE, NLMSG_ERROR,
};
use crate::error::{Error, Result};
use crate::exec::NetnsExec;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `NFNL_SUBSYS_CTNETLINK`.
const SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: what dump answers are.
const MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
const MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
const MSG_CT_DELETE: u8 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ENOENT: i32 = 2;
/// Deletes sent per datagram; their acknowledgements must fit the receive buffer.
const DELETES_PER_SEND: usize = 256;

/// One ctnetlink message: `nlmsghdr` + `nfgenmsg` + attributes.
pub fn message(ty: u8, flags: u16, seq: u32, family: u8, attrs: &Attrs) -> Vec<u8> {
    let len = u32::try_from(20 + attrs.len()).expect("netlink message over 4 GiB");
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&((SUBSYS_CTNETLINK << 8) | u16::from(ty)).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(0); // NFNETLINK_V0
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(attrs.bytes());
    b
}

fn family_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// The request listing every entry of one family.
pub fn dump_request(seq: u32, ipv6: bool) -> Vec<u8> {
    let family = if ipv6 { AF_INET6 } else { AF_INET };
    message(MSG_CT_GET, F_REQUEST | F_DUMP, seq, family, &Attrs::new())
}

fn put_tuple(a: &mut Attrs, ty: u16, t: &Tuple) {
    a.nest(ty, |a| {
        a.nest(CTA_TUPLE_IP, |a| match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                a.put(CTA_IP_V4_SRC, &s.octets());
                a.put(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                a.put(CTA_IP_V6_SRC, &v6(s).octets());
                a.put(CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        a.nest(CTA_TUPLE_PROTO, |a| {
            a.put(CTA_PROTO_NUM, &[t.proto]);
            a.put(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            a.put(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        });
    });
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The request deleting exactly `flow` (by original tuple, zone and id).
pub fn delete_request(seq: u32, flow: &Flow) -> Vec<u8> {
    let mut a = Attrs::new();
    put_tuple(&mut a, CTA_TUPLE_ORIG, &flow.orig);
    if let Some(zone) = flow.zone {
        a.put(CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = flow.id {
        a.u32(CTA_ID, id);
    }
    message(
        MSG_CT_DELETE,
        F_REQUEST | F_ACK,
        seq,
        family_of(&flow.orig.src),
        &a,
    )
}

fn parse_ip(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?))),
        _ => None,
    }
}

fn parse_port(data: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_be_bytes(data?.try_into().ok()?))
}

fn parse_tuple(data: &[u8]) -> Option<Tuple> {
    let attrs = parse_attrs(data);
    let ip = parse_attrs(find(&attrs, CTA_TUPLE_IP)?);
    let proto = parse_attrs(find(&attrs, CTA_TUPLE_PROTO)?);
    let src = find(&ip, CTA_IP_V4_SRC).or_else(|| find(&ip, CTA_IP_V6_SRC))?;
    let dst = find(&ip, CTA_IP_V4_DST).or_else(|| find(&ip, CTA_IP_V6_DST))?;
    Some(Tuple {
        src: parse_ip(src)?,
        dst: parse_ip(dst)?,
        proto: *find(&proto, CTA_PROTO_NUM)?.first()?,
        // Protocols without ports (ICMP carries id/type instead) read as port 0.
        sport: parse_port(find(&proto, CTA_PROTO_SRC_PORT)).unwrap_or(0),
        dport: parse_port(find(&proto, CTA_PROTO_DST_PORT)).unwrap_or(0),
    })
}

/// The entry one dump answer describes (its attributes, after `nfgenmsg`).
pub fn parse_flow(attrs: &[u8]) -> Option<Flow> {
    let attrs = parse_attrs(attrs);
    Some(Flow {
        orig: parse_tuple(find(&attrs, CTA_TUPLE_ORIG)?)?,
        reply: parse_tuple(find(&attrs, CTA_TUPLE_REPLY)?)?,
        zone: parse_port(find(&attrs, CTA_ZONE)).filter(|z| *z != 0),
        id: find(&attrs, CTA_ID).and_then(|d| Some(u32::from_be_bytes(d.try_into().ok()?))),
    })
}

/// The conntrack table of one network namespace, over ctnetlink. Opens a socket per cleanup
/// (cleanups are rare: only when UDP endpoints change).
#[derive(Debug, Clone, Default)]
pub struct NetlinkConntrack {
    netns: NetnsExec,
}

impl NetlinkConntrack {
    /// The table of `netns` (the proxy's own namespace in production).
    pub fn new(netns: NetnsExec) -> Self {
        Self { netns }
    }

    /// Every entry of one family.
    pub fn list(&self, ipv6: bool) -> Result<Vec<Flow>> {
        let mut sock = CtSocket::open(&self.netns)?;
        sock.dump(ipv6)
    }
}

impl ConntrackTable for NetlinkConntrack {
    fn delete_matching(&mut self, filters: &[Filter]) -> Result<usize> {
        let mut sock = CtSocket::open(&self.netns)?;
        let mut deleted = 0;
        for ipv6 in [false, true] {
            let of_family: Vec<&Filter> = filters.iter().filter(|f| f.is_ipv6() == ipv6).collect();
            if of_family.is_empty() {
                continue;
            }
            let doomed: Vec<Flow> = sock
                .dump(ipv6)?
                .into_iter()
                .filter(|flow| of_family.iter().any(|f| f.matches(flow)))
                .collect();
            for chunk in doomed.chunks(DELETES_PER_SEND) {
                deleted += sock.delete(chunk)?;
            }
        }
        Ok(deleted)
    }
}

struct CtSocket {
    sock: netlink_sys::Socket,
    seq: u32,
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Netlink {
        op: op.to_string(),
        source,
    }
}

impl CtSocket {
    fn open(netns: &NetnsExec) -> Result<Self> {
        const OP: &str = "opening the ctnetlink socket";
        let sock = netns.enter(|| {
            let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(io(OP))?;
            sock.bind_auto().map_err(io(OP))?;
            sock.set_cap_ack(true).map_err(io(OP))?;
            use nix::sys::socket::{setsockopt, sockopt};
            // A node's table can be large; more buffer means fewer dump round trips.
            let _ = setsockopt(&sock, sockopt::RcvBufForce, &(8 << 20));
            let timeout = nix::sys::time::TimeVal::new(30, 0);
            setsockopt(&sock, sockopt::ReceiveTimeout, &timeout)
                .map_err(|e| io(OP)(std::io::Error::from(e)))?;
            Ok(sock)
        })?;
        Ok(Self { sock, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&self, op: &'static str) -> Result<Vec<Received>> {
        let mut buf = Vec::with_capacity(256 * 1024);
        self.sock.recv(&mut buf, 0).map_err(io(op))?;
        Ok(split_messages(&buf))
    }

    fn dump(&mut self, ipv6: bool) -> Result<Vec<Flow>> {
        const OP: &str = "listing conntrack entries";
        let seq = self.next_seq();
        self.sock
            .send(&dump_request(seq, ipv6), 0)
            .map_err(io(OP))?;
        let mut flows = Vec::new();
        loop {
            for m in self.recv(OP)? {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(flows),
                    NLMSG_ERROR => {
                        return Err(Error::Netlink {
                            op: OP.to_string(),
                            source: std::io::Error::from_raw_os_error(error_code(&m.payload)),
                        })
                    }
                    ty if ty == (SUBSYS_CTNETLINK << 8) | u16::from(MSG_CT_NEW) => {
                        flows.extend(m.payload.get(4..).and_then(parse_flow));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Deletes `flows` in one datagram; entries already gone (ENOENT) are not counted.
    fn delete(&mut self, flows: &[Flow]) -> Result<usize> {
        const OP: &str = "deleting conntrack entries";
        let mut bytes = Vec::new();
        let mut waiting = std::collections::BTreeMap::new();
        for flow in flows {
            let seq = self.next_seq();
            bytes.extend(delete_request(seq, flow));
            waiting.insert(seq, flow);
        }
        self.sock.send(&bytes, 0).map_err(io(OP))?;
        let mut deleted = 0;
        while !waiting.is_empty() {
            for m in self.recv(OP)? {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let Some(flow) = waiting.remove(&m.seq) else {
                    continue;
                };
                match error_code(&m.payload) {
                    0 => deleted += 1,
                    ENOENT => {}
                    code => {
                        return Err(Error::NetlinkRefused {
                            op: OP.to_string(),
                            what: format!("deleting conntrack entry {:?}", flow.orig),
                            source: std::io::Error::from_raw_os_error(code),
                        })
                    }
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::IPPROTO_UDP;

    fn flow() -> Flow {
        let t = |s: &str, d: &str, sp, dp| Tuple {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            proto: IPPROTO_UDP,
            sport: sp,
            dport: dp,
        };
        Flow {
            orig: t("10.244.200.2", "10.96.0.10", 40000, 53),
            reply: t("10.244.1.10", "10.244.200.2", 5353, 40000),
            zone: None,
            id: Some(0x0102_0304),
        }
    }

    #[test]
    fn delete_request_byte_layout() {
        let bytes = delete_request(9, &flow());
        let want: Vec<u8> = [
            // nlmsghdr: length 80, type CTNETLINK<<8|DELETE, REQUEST|ACK, seq 9, pid 0.
            &80u32.to_ne_bytes()[..],
            &0x0102u16.to_ne_bytes(),
            &5u16.to_ne_bytes(),
            &9u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            // nfgenmsg: AF_INET, version 0, res_id 0.
            &[2, 0, 0, 0],
            // CTA_TUPLE_ORIG (nested, 52 bytes).
            &52u16.to_ne_bytes(),
            &(0x8000u16 | 1).to_ne_bytes(),
            // CTA_TUPLE_IP (nested, 20 bytes): V4_SRC, V4_DST.
            &20u16.to_ne_bytes(),
            &(0x8000u16 | 1).to_ne_bytes(),
            &8u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &[10, 244, 200, 2],
            &8u16.to_ne_bytes(),
            &2u16.to_ne_bytes(),
            &[10, 96, 0, 10],
            // CTA_TUPLE_PROTO (nested, 28 bytes): NUM (u8, padded), SRC_PORT, DST_PORT (be16).
            &28u16.to_ne_bytes(),
            &(0x8000u16 | 2).to_ne_bytes(),
            &5u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &[17, 0, 0, 0],
            &6u16.to_ne_bytes(),
            &2u16.to_ne_bytes(),
            &[0x9c, 0x40, 0, 0],
            &6u16.to_ne_bytes(),
            &3u16.to_ne_bytes(),
            &[0, 53, 0, 0],
            // CTA_ID (be32).
            &8u16.to_ne_bytes(),
            &12u16.to_ne_bytes(),
            &[1, 2, 3, 4],
        ]
        .concat();
        assert_eq!(bytes, want);
    }

    #[test]
    fn dump_request_asks_one_family() {
        let v4 = dump_request(3, false);
        assert_eq!(v4.len(), 20);
        assert_eq!(u16::from_ne_bytes([v4[4], v4[5]]), 0x0101);
        assert_eq!(u16::from_ne_bytes([v4[6], v4[7]]), F_REQUEST | F_DUMP);
        assert_eq!(v4[16], AF_INET);
        assert_eq!(dump_request(3, true)[16], AF_INET6);
    }

    #[test]
    fn dump_answer_parses_back_including_ipv6_and_zone() {
        let f = flow();
        let mut a = Attrs::new();
        put_tuple(&mut a, CTA_TUPLE_ORIG, &f.orig);
        put_tuple(&mut a, CTA_TUPLE_REPLY, &f.reply);
        a.u32(CTA_ID, 0x0102_0304);
        assert_eq!(parse_flow(a.bytes()), Some(f));

        let mut v6 = f;
        v6.orig.src = "fd00::2".parse().unwrap();
        v6.orig.dst = "fd00:96::10".parse().unwrap();
        v6.reply.src = "fd00:244::10".parse().unwrap();
        v6.reply.dst = "fd00::2".parse().unwrap();
        v6.zone = Some(7);
        v6.id = None;
        let mut a = Attrs::new();
        put_tuple(&mut a, CTA_TUPLE_ORIG, &v6.orig);
        put_tuple(&mut a, CTA_TUPLE_REPLY, &v6.reply);
        a.put(CTA_ZONE, &7u16.to_be_bytes());
        assert_eq!(parse_flow(a.bytes()), Some(v6));
        assert_eq!(delete_request(1, &v6)[16], AF_INET6);
    }
}
