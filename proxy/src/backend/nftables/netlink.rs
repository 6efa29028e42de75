//! The nf_tables netlink edge: attribute encoding, batches, the socket (opened inside the
//! target namespace) and the one dump we read back (set elements).
//!
//! Numbers are the kernel's uapi (`linux/netfilter/nf_tables.h`, `nfnetlink.h`); nf_tables
//! attributes carry integers in network byte order, netlink headers in host order.

use crate::error::{Error, Result};
use crate::exec::NetnsExec;

/// `NETLINK_NETFILTER`.
pub(crate) const NETLINK_NETFILTER: isize = 12;
/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
/// Receive buffer: more than the kernel's largest dump datagram (32 KiB) or error message.
const RECV_BUFFER: usize = 128 * 1024;

/// `NLM_F_REQUEST`.
pub const F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`ROOT | MATCH`).
pub const F_DUMP: u16 = 0x300;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub const F_APPEND: u16 = 0x800;

/// `nf_tables_msg_types` we send.
#[allow(missing_docs)]
pub mod msg {
    pub const NEWTABLE: u8 = 0;
    pub const GETTABLE: u8 = 1;
    pub const DELTABLE: u8 = 2;
    pub const NEWCHAIN: u8 = 3;
    pub const NEWRULE: u8 = 6;
    pub const NEWSET: u8 = 9;
    pub const NEWSETELEM: u8 = 12;
    pub const GETSETELEM: u8 = 13;
    pub const DELSETELEM: u8 = 14;
}

/// Netlink attributes being written; nests close themselves.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    /// An empty attribute list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Number of bytes written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// An attribute with raw bytes, padded to 4.
    pub fn put(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// A big-endian `u32` attribute.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A big-endian `u64` attribute.
    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }

    /// A nested attribute whose content `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.buf)
    }

    /// Appends already encoded attributes.
    pub fn extend(&mut self, other: &Attrs) -> &mut Self {
        self.buf.extend_from_slice(&other.buf);
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// One nf_tables message: `nlmsghdr` + `nfgenmsg` + attributes.
pub fn message(ty: u8, flags: u16, seq: u32, family: u8, attrs: &Attrs) -> Vec<u8> {
    frame(
        (SUBSYS_NFTABLES << 8) | u16::from(ty),
        flags,
        seq,
        family,
        0,
        attrs,
    )
}

fn frame(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
    let len = u32::try_from(20 + attrs.len()).expect("netlink message over 4 GiB");
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(0); // NFNETLINK_V0
    b.extend_from_slice(&res_id.to_be_bytes());
    b.extend_from_slice(attrs.bytes());
    b
}

/// A transaction: messages between `BATCH_BEGIN` and `BATCH_END`, applied all or nothing.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    /// Per acknowledged message: its sequence number and what it does, for error reports.
    pending: Vec<(u32, String)>,
    next_seq: u32,
}

impl Batch {
    /// A batch whose messages are numbered from `first_seq`.
    pub fn new(first_seq: u32) -> Self {
        let begin = frame(
            NFNL_MSG_BATCH_BEGIN,
            F_REQUEST,
            first_seq,
            0,
            SUBSYS_NFTABLES,
            &Attrs::new(),
        );
        Self {
            buf: begin,
            pending: Vec::new(),
            next_seq: first_seq.wrapping_add(1),
        }
    }

    /// Adds a message (acknowledged, so every failure is reported with `what`).
    pub fn push(&mut self, ty: u8, flags: u16, family: u8, attrs: &Attrs, what: String) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.buf
            .extend(message(ty, flags | F_REQUEST | F_ACK, seq, family, attrs));
        self.pending.push((seq, what));
    }

    /// Number of messages (without begin and end).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No message.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The bytes to send, and the acknowledged messages.
    pub fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>, u32) {
        let end = frame(
            NFNL_MSG_BATCH_END,
            F_REQUEST,
            self.next_seq,
            0,
            SUBSYS_NFTABLES,
            &Attrs::new(),
        );
        self.buf.extend(end);
        (self.buf, self.pending, self.next_seq.wrapping_add(1))
    }
}

/// One parsed attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// Type without flags.
    pub ty: u16,
    /// Payload.
    pub data: &'a [u8],
}

/// Parses a run of attributes (stops at the first malformed one).
pub fn parse_attrs(mut b: &[u8]) -> Vec<Attr<'_>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push(Attr {
            ty,
            data: &b[4..len],
        });
        let padded = (len + 3) & !3;
        b = &b[padded.min(b.len())..];
    }
    out
}

/// The payload of the first attribute of type `ty`.
pub fn find<'a>(attrs: &[Attr<'a>], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|a| a.ty == ty).map(|a| a.data)
}

/// A netlink message as received.
#[derive(Debug)]
pub(crate) struct Received {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after `nlmsghdr`.
    pub payload: Vec<u8>,
}

/// Splits a datagram into its netlink messages (stops at the first malformed one).
pub(crate) fn split_messages(mut b: &[u8]) -> Vec<Received> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        out.push(Received {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            payload: b[16..len].to_vec(),
        });
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 is an acknowledgement).
pub(crate) fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(libc_eproto())
}

fn libc_eproto() -> i32 {
    71
}

/// A NETLINK_NETFILTER socket living in the backend's namespace.
pub struct NftSocket {
    sock: netlink_sys::Socket,
    seq: u32,
}

impl std::fmt::Debug for NftSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftSocket").field("seq", &self.seq).finish()
    }
}

fn io(op: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Netlink {
        op: op.to_string(),
        source,
    }
}

fn open_here() -> Result<netlink_sys::Socket> {
    let op = "opening the nf_tables netlink socket";
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(io(op))?;
    sock.bind_auto().map_err(io(op))?;
    // Large batches and their acknowledgements exceed the default buffers; as root we may
    // force bigger ones (what nft does too). Failing that, the defaults still work for small
    // batches.
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(&sock, sockopt::SndBufForce, &(256 << 20));
    let _ = setsockopt(&sock, sockopt::RcvBufForce, &(64 << 20));
    // Acknowledgements without a copy of the (large) request.
    sock.set_cap_ack(true).map_err(io(op))?;
    // Never wait forever on the kernel; a 640,000-element commit takes seconds, not minutes.
    let timeout = nix::sys::time::TimeVal::new(120, 0);
    setsockopt(&sock, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| io(op)(std::io::Error::from(e)))?;
    Ok(sock)
}

impl NftSocket {
    /// Opens the socket in `netns`: a thread enters the namespace, creates the socket and
    /// ends; the socket keeps operating on that namespace from any thread.
    pub fn open(netns: &NetnsExec) -> Result<Self> {
        let sock = netns.enter(open_here)?;
        Ok(Self { sock, seq: 1 })
    }

    /// A batch numbered after everything this socket sent.
    pub fn batch(&self) -> Batch {
        Batch::new(self.seq)
    }

    fn recv_messages(&self, op: &str) -> Result<Vec<Received>> {
        // A large buffer also makes the kernel fill dump datagrams up to its 32 KiB limit:
        // fewer round trips, and fewer restarts of the set walk a dump continues with.
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        self.sock.recv(&mut buf, 0).map_err(io(op))?;
        Ok(split_messages(&buf))
    }

    /// Sends a batch and waits for every acknowledgement; any refusal fails the whole
    /// transaction (the kernel applies nothing), reported with the first refused message.
    pub fn apply(&mut self, batch: Batch, op: &str) -> Result<()> {
        let (bytes, pending, next) = batch.finish();
        self.seq = next;
        self.sock.send(&bytes, 0).map_err(io(op))?;
        let mut waiting: std::collections::BTreeMap<u32, String> = pending.into_iter().collect();
        let mut first_error: Option<(String, i32)> = None;
        while !waiting.is_empty() {
            for m in self.recv_messages(op)? {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let Some(what) = waiting.remove(&m.seq) else {
                    continue;
                };
                let code = error_code(&m.payload);
                if code != 0 && first_error.is_none() {
                    first_error = Some((what, code));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some((what, errno)) => Err(Error::NetlinkRefused {
                op: op.to_string(),
                what,
                source: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }

    /// Runs a dump request; returns each answer's attributes area (after `nfgenmsg`), or
    /// `None` when the kernel says the object does not exist.
    pub fn dump(
        &mut self,
        ty: u8,
        family: u8,
        attrs: &Attrs,
        op: &str,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        let req = message(ty, F_REQUEST | F_DUMP, seq, family, attrs);
        self.sock.send(&req, 0).map_err(io(op))?;
        let mut out = Vec::new();
        loop {
            for m in self.recv_messages(op)? {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(Some(out)),
                    NLMSG_ERROR => {
                        let code = error_code(&m.payload);
                        if code == 2 {
                            return Ok(None); // ENOENT
                        }
                        return Err(Error::Netlink {
                            op: op.to_string(),
                            source: std::io::Error::from_raw_os_error(code),
                        });
                    }
                    _ => out.push(m.payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }

    /// Asks for one object (e.g. a table); `false` when the kernel has no such object.
    pub fn exists(&mut self, ty: u8, family: u8, attrs: &Attrs, op: &str) -> Result<bool> {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        let req = message(ty, F_REQUEST | F_ACK, seq, family, attrs);
        self.sock.send(&req, 0).map_err(io(op))?;
        loop {
            for m in self.recv_messages(op)? {
                if m.seq != seq || m.ty != NLMSG_ERROR {
                    continue;
                }
                return match error_code(&m.payload) {
                    0 => Ok(true),
                    2 => Ok(false),
                    code => Err(Error::Netlink {
                        op: op.to_string(),
                        source: std::io::Error::from_raw_os_error(code),
                    }),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::new();
        a.str(1, "ab").nest(2, |n| {
            n.u32(1, 0x0102_0304);
        });
        let want: Vec<u8> = [
            &7u16.to_ne_bytes()[..],
            &1u16.to_ne_bytes(),
            b"ab\0\0",
            &12u16.to_ne_bytes(),
            &(2u16 | NLA_F_NESTED).to_ne_bytes(),
            &8u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &[1, 2, 3, 4],
        ]
        .concat();
        assert_eq!(a.bytes(), want.as_slice());
        let parsed = parse_attrs(a.bytes());
        assert_eq!(parsed.len(), 2);
        assert_eq!(find(&parsed, 1), Some(&b"ab\0"[..]));
        let inner = parse_attrs(find(&parsed, 2).unwrap());
        assert_eq!(find(&inner, 1), Some(&[1, 2, 3, 4][..]));
    }

    #[test]
    fn batch_frames_begin_messages_and_end() {
        let mut attrs = Attrs::new();
        attrs.str(1, "netlet");
        let mut b = Batch::new(7);
        b.push(msg::NEWTABLE, F_CREATE, 2, &attrs, "table".into());
        let (bytes, pending, next) = b.finish();
        assert_eq!(pending, [(8, "table".to_string())]);
        assert_eq!(next, 10);
        let msgs = split_messages(&bytes);
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        assert_eq!(types, [0x10, 0x0a00, 0x11]);
        // Batch begin names the subsystem in nfgenmsg's res_id (big endian).
        assert_eq!(msgs[0].payload, [0, 0, 0, 10]);
        let table = &msgs[1];
        assert_eq!(table.seq, 8);
        assert_eq!(&table.payload[..4], &[2, 0, 0, 0]);
        assert_eq!(
            find(&parse_attrs(&table.payload[4..]), 1),
            Some(&b"netlet\0"[..])
        );
        let flags = u16::from_ne_bytes([bytes[20 + 6], bytes[20 + 7]]);
        assert_eq!(flags, F_REQUEST | F_ACK | F_CREATE);
    }
}
