//! nf_tables expressions: the few the fixed ruleset uses, each encoded as the kernel's
//! `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`.
//!
//! Registers are the 32-bit ones (`NFT_REG32_00` = 8 …); a value longer than 4 bytes spans
//! consecutive registers, which is how concatenated set keys are built.

use super::netlink::Attrs;

/// `NFT_REG32_00`: the first 32-bit register.
pub const REG32_00: u32 = 8;

/// `NFT_PAYLOAD_NETWORK_HEADER`.
pub const NETWORK: u32 = 1;
/// `NFT_PAYLOAD_TRANSPORT_HEADER`.
pub const TRANSPORT: u32 = 2;

/// `NFT_META_MARK`.
pub const META_MARK: u32 = 3;
/// `NFT_META_L4PROTO`.
pub const META_L4PROTO: u32 = 16;

/// `NFT_CT_STATE`.
pub const CT_STATE: u32 = 0;
/// `NFT_CT_STATUS`.
pub const CT_STATUS: u32 = 2;
/// `NFT_CT_PROTO_DST`: the destination port (2 bytes).
pub const CT_PROTO_DST: u32 = 12;
/// `NFT_CT_DST_IP`.
pub const CT_DST_IP: u32 = 20;
/// `NFT_CT_DST_IP6`.
pub const CT_DST_IP6: u32 = 22;

/// `NFTA_FIB_F_SADDR`.
pub const FIB_SADDR: u32 = 1;
/// `NFTA_FIB_F_DADDR`.
pub const FIB_DADDR: u32 = 2;
/// `RTN_LOCAL`, what `fib … type` yields for the node's own addresses.
pub const RTN_LOCAL: u32 = 2;

/// `NFT_CMP_EQ`.
pub const CMP_EQ: u32 = 0;
/// `NFT_CMP_NEQ`.
pub const CMP_NEQ: u32 = 1;

/// `NFT_DYNSET_OP_UPDATE`: add, or refresh the timeout of, an element.
pub const DYNSET_UPDATE: u32 = 1;

/// `NF_ACCEPT`, `NF_DROP`, `NFT_JUMP`, `NFT_GOTO`, `NFT_RETURN` as verdict codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump <chain>`.
    Jump(&'static str),
    /// `goto <chain>`.
    Goto(&'static str),
}

impl Verdict {
    fn code(self) -> i32 {
        match self {
            Self::Drop => 0,
            Self::Accept => 1,
            Self::Jump(_) => -3,
            Self::Goto(_) => -4,
            Self::Return => -5,
        }
    }
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of header `base` into `dreg`.
    Payload {
        /// Header base.
        base: u32,
        /// Byte offset in the header.
        offset: u32,
        /// Byte count.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// Loads a meta key into `dreg`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// Sets a meta key from `sreg`.
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// Loads a conntrack key into `dreg`.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// Loads a conntrack key of the original direction (as the client sent it, before NAT).
    CtOriginal {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// Compares `sreg` with `data`; the rule stops when false.
    Cmp {
        /// Source register.
        sreg: u32,
        /// `NFT_CMP_*`.
        op: u32,
        /// The constant.
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// And-mask.
        mask: Vec<u8>,
        /// Xor value (same length).
        xor: Vec<u8>,
    },
    /// Looks `sreg…` up in a set; with `dreg`, a map lookup storing the value there.
    Lookup {
        /// The set's name.
        set: &'static str,
        /// First key register.
        sreg: u32,
        /// Destination of a map's value.
        dreg: Option<u32>,
    },
    /// Adds or refreshes `sreg_key… : sreg_data…` in a dynamic map, with a timeout.
    Dynset {
        /// The map's name.
        set: &'static str,
        /// `NFT_DYNSET_OP_*`.
        op: u32,
        /// First key register.
        sreg_key: u32,
        /// First value register.
        sreg_data: u32,
        /// Element timeout.
        timeout_ms: u64,
    },
    /// A random number in `0..modulus` into `dreg`.
    NumgenRandom {
        /// Destination register.
        dreg: u32,
        /// Exclusive upper bound.
        modulus: u32,
    },
    /// A constant into `dreg`.
    Immediate {
        /// Destination register.
        dreg: u32,
        /// The constant.
        data: Vec<u8>,
    },
    /// A verdict.
    Verdict(Verdict),
    /// Destination NAT to the address in `addr_reg…` and the port in `port_reg`.
    Dnat {
        /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
        family: u8,
        /// First register of the address.
        addr_reg: u32,
        /// Register of the port.
        port_reg: u32,
    },
    /// Masquerade with fully random source ports.
    MasqueradeFullyRandom,
    /// `reject with tcp reset`.
    RejectTcpReset,
    /// `reject with icmp(v6) port-unreachable`, `code` the family's port unreachable code.
    RejectIcmp {
        /// ICMP code.
        code: u8,
    },
    /// `fib <saddr|daddr> type` into `dreg`.
    FibAddrType {
        /// `NFTA_FIB_F_SADDR` or `NFTA_FIB_F_DADDR`.
        flags: u32,
        /// Destination register.
        dreg: u32,
    },
    /// Packet and byte counter.
    Counter,
}

fn value(a: &mut Attrs, ty: u16, data: &[u8]) {
    a.nest(ty, |n| {
        n.put(1, data); // NFTA_DATA_VALUE
    });
}

impl Expr {
    /// The kernel's name for the expression type.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Payload { .. } => "payload",
            Self::Meta { .. } | Self::MetaSet { .. } => "meta",
            Self::Ct { .. } | Self::CtOriginal { .. } => "ct",
            Self::Cmp { .. } => "cmp",
            Self::Bitwise { .. } => "bitwise",
            Self::Lookup { .. } => "lookup",
            Self::Dynset { .. } => "dynset",
            Self::NumgenRandom { .. } => "numgen",
            Self::Immediate { .. } | Self::Verdict(_) => "immediate",
            Self::Dnat { .. } => "nat",
            Self::MasqueradeFullyRandom => "masq",
            Self::RejectTcpReset | Self::RejectIcmp { .. } => "reject",
            Self::FibAddrType { .. } => "fib",
            Self::Counter => "counter",
        }
    }

    /// The expression's `NFTA_EXPR_DATA` attributes.
    pub fn data(&self) -> Attrs {
        let mut a = Attrs::new();
        match self {
            Self::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                a.u32(1, *dreg).u32(2, *base).u32(3, *offset).u32(4, *len);
            }
            Self::Meta { key, dreg } => {
                a.u32(1, *dreg).u32(2, *key);
            }
            Self::MetaSet { key, sreg } => {
                a.u32(2, *key).u32(3, *sreg);
            }
            Self::Ct { key, dreg } => {
                a.u32(1, *dreg).u32(2, *key);
            }
            Self::CtOriginal { key, dreg } => {
                a.u32(1, *dreg).u32(2, *key).put(3, &[0]); // IP_CT_DIR_ORIGINAL
            }
            Self::Cmp { sreg, op, data } => {
                a.u32(1, *sreg).u32(2, *op);
                value(&mut a, 3, data);
            }
            Self::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let len = u32::try_from(mask.len()).expect("short mask");
                a.u32(1, *sreg).u32(2, *dreg).u32(3, len);
                value(&mut a, 4, mask);
                value(&mut a, 5, xor);
            }
            Self::Lookup { set, sreg, dreg } => {
                a.str(1, set).u32(2, *sreg);
                if let Some(d) = dreg {
                    a.u32(3, *d);
                }
            }
            Self::Dynset {
                set,
                op,
                sreg_key,
                sreg_data,
                timeout_ms,
            } => {
                a.str(1, set)
                    .u32(3, *op)
                    .u32(4, *sreg_key)
                    .u32(5, *sreg_data)
                    .u64(6, *timeout_ms);
            }
            Self::NumgenRandom { dreg, modulus } => {
                a.u32(1, *dreg).u32(2, *modulus).u32(3, 1); // NFT_NG_RANDOM
            }
            Self::Immediate { dreg, data } => {
                a.u32(1, *dreg);
                value(&mut a, 2, data);
            }
            Self::Verdict(v) => {
                a.u32(1, 0); // NFT_REG_VERDICT
                a.nest(2, |d| {
                    d.nest(2, |vd| {
                        vd.put(1, &v.code().to_be_bytes());
                        if let Verdict::Jump(c) | Verdict::Goto(c) = v {
                            vd.str(2, c);
                        }
                    });
                });
            }
            Self::Dnat {
                family,
                addr_reg,
                port_reg,
            } => {
                a.u32(1, 1) // NFT_NAT_DNAT
                    .u32(2, u32::from(*family))
                    .u32(3, *addr_reg)
                    .u32(5, *port_reg);
            }
            Self::MasqueradeFullyRandom => {
                a.u32(1, 1 << 4); // NF_NAT_RANGE_PROTO_RANDOM_FULLY
            }
            Self::RejectTcpReset => {
                a.u32(1, 1).put(2, &[0]); // NFT_REJECT_TCP_RST
            }
            Self::RejectIcmp { code } => {
                a.u32(1, 0).put(2, &[*code]); // NFT_REJECT_ICMP_UNREACH
            }
            Self::FibAddrType { flags, dreg } => {
                a.u32(1, *dreg).u32(2, 3).u32(3, *flags); // NFT_FIB_RESULT_ADDRTYPE
            }
            Self::Counter => {}
        }
        a
    }

    /// Writes the expression as one `NFTA_LIST_ELEM`.
    pub fn encode(&self, list: &mut Attrs) {
        let data = self.data();
        list.nest(1, |e| {
            e.str(1, self.name());
            e.nest(2, |d| {
                d.extend(&data);
            });
        });
    }
}

/// A rule's expressions as `NFTA_RULE_EXPRESSIONS` content.
pub fn encode_all(exprs: &[Expr]) -> Attrs {
    let mut list = Attrs::new();
    for e in exprs {
        e.encode(&mut list);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{find, parse_attrs};
    use super::*;

    #[test]
    fn cmp_encodes_like_libnftnl() {
        // `meta l4proto tcp` second half: cmp eq reg 8 0x06, as libnftnl builds it.
        let e = Expr::Cmp {
            sreg: 8,
            op: CMP_EQ,
            data: vec![6],
        };
        let mut list = Attrs::new();
        e.encode(&mut list);
        let want: Vec<u8> = [
            &[44u8, 0, 0x01, 0x80][..], // LIST_ELEM (nested), 44 bytes
            &[8, 0, 1, 0],
            b"cmp\0",                  // NFTA_EXPR_NAME
            &[32, 0, 0x02, 0x80],      // NFTA_EXPR_DATA (nested)
            &[8, 0, 1, 0, 0, 0, 0, 8], // NFTA_CMP_SREG = 8
            &[8, 0, 2, 0, 0, 0, 0, 0], // NFTA_CMP_OP = EQ
            &[12, 0, 0x03, 0x80],      // NFTA_CMP_DATA (nested)
            &[5, 0, 1, 0, 6, 0, 0, 0], // NFTA_DATA_VALUE 0x06, padded
        ]
        .concat();
        assert_eq!(list.bytes(), want.as_slice());
    }

    #[test]
    fn verdict_round_trips() {
        let e = Expr::Verdict(Verdict::Goto("reject"));
        let mut list = Attrs::new();
        e.encode(&mut list);
        let elem = parse_attrs(list.bytes());
        let expr = parse_attrs(find(&elem, 1).unwrap());
        assert_eq!(find(&expr, 1), Some(&b"immediate\0"[..]));
        let data = parse_attrs(find(&expr, 2).unwrap());
        assert_eq!(find(&data, 1), Some(&[0, 0, 0, 0][..]));
        let verdict = parse_attrs(find(&parse_attrs(find(&data, 2).unwrap()), 2).unwrap());
        assert_eq!(find(&verdict, 1), Some(&(-4i32).to_be_bytes()[..]));
        assert_eq!(find(&verdict, 2), Some(&b"reject\0"[..]));
    }
}
