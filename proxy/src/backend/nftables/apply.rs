//! Elements in and out of the kernel: reading what is installed (`NFT_MSG_GETSETELEM` dumps),
//! diffing it with the desired state, and batching the difference.

#[cfg(doc)]
use super::base::ELEMENT_SETS;
use super::base::{set, Family, TABLE};
use super::netlink::{find, msg, parse_attrs, Attrs, Batch, NftSocket, F_CREATE};
use super::render::{Desired, Encoded};
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet};

/// One element as read back: key bytes and what the kernel holds for it.
pub type RawElement = (Vec<u8>, Encoded);

/// Elements by set and key bytes: what the kernel holds, or what we want it to hold.
pub type Elements = BTreeMap<(&'static str, Vec<u8>), Encoded>;

/// The desired state in the kernel's terms.
pub fn encode(d: &Desired) -> Elements {
    d.elements
        .iter()
        .map(|(k, e)| (k.clone(), e.encoded()))
        .collect()
}

/// What turns `have` into `want`: keys to delete (also changed ones: the kernel does not
/// replace an element's value in place) and elements to add.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff<'a> {
    /// Deleted keys.
    pub delete: Vec<(&'static str, &'a [u8])>,
    /// Added elements.
    pub add: Vec<(&'static str, &'a [u8], &'a Encoded)>,
}

impl Diff<'_> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

/// Compares installed and desired elements (one merge pass over both sorted maps).
pub fn diff<'a>(have: &'a Elements, want: &'a Elements) -> Diff<'a> {
    use std::cmp::Ordering;
    let mut d = Diff::default();
    let mut h = have.iter().peekable();
    let mut w = want.iter().peekable();
    loop {
        let order = match (h.peek(), w.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((hk, _)), Some((wk, _))) => hk.cmp(wk),
        };
        match order {
            Ordering::Less => {
                let ((set, key), _) = h.next().expect("peeked");
                d.delete.push((set, key));
            }
            Ordering::Greater => {
                let ((set, key), enc) = w.next().expect("peeked");
                d.add.push((set, key, enc));
            }
            Ordering::Equal => {
                let ((set, key), he) = h.next().expect("peeked");
                let (_, we) = w.next().expect("peeked");
                if he != we {
                    d.delete.push((set, key));
                    d.add.push((set, key, we));
                }
            }
        }
    }
    d
}

/// Largest `NFTA_SET_ELEM_LIST_ELEMENTS` we build (its length must fit 16 bits).
const MAX_LIST: usize = 48 * 1024;

fn element_attrs(key: &[u8], enc: Option<&Encoded>) -> Attrs {
    let mut e = Attrs::new();
    e.nest(1, |k| {
        k.put(1, key);
    });
    if let Some(enc) = enc {
        if !enc.data.is_empty() {
            e.nest(2, |d| {
                d.put(1, &enc.data);
            });
        }
        if !enc.userdata.is_empty() {
            e.put(6, &enc.userdata);
        }
    }
    e
}

/// Adds `NEWSETELEM` (with values) or `DELSETELEM` (without) messages for elements grouped by
/// set, split so each message stays under netlink's attribute size limit.
fn push_elements<'a>(
    b: &mut Batch,
    f: Family,
    ty: u8,
    elems: impl Iterator<Item = (&'static str, &'a [u8], Option<&'a Encoded>)>,
) {
    let verb = if ty == msg::NEWSETELEM {
        "adding"
    } else {
        "deleting"
    };
    let flush = |b: &mut Batch, set: &str, list: &mut Attrs, n: &mut usize| {
        if *n == 0 {
            return;
        }
        let mut a = Attrs::new();
        a.str(1, TABLE).str(2, set);
        a.nest(3, |l| {
            l.extend(list);
        });
        let flags = if ty == msg::NEWSETELEM { F_CREATE } else { 0 };
        b.push(
            ty,
            flags,
            f.nfproto(),
            &a,
            format!("{verb} {n} elements of set {set}"),
        );
        *list = Attrs::new();
        *n = 0;
    };
    let mut current: &'static str = "";
    let mut list = Attrs::new();
    let mut n = 0;
    for (set, key, enc) in elems {
        if set != current || list.len() > MAX_LIST {
            flush(b, current, &mut list, &mut n);
            current = set;
        }
        let e = element_attrs(key, enc);
        list.nest(1, |l| {
            l.extend(&e);
        });
        n += 1;
    }
    flush(b, current, &mut list, &mut n);
}

/// Adds a diff to a batch: deletions first.
pub fn push_diff(b: &mut Batch, f: Family, d: &Diff<'_>) {
    push_elements(
        b,
        f,
        msg::DELSETELEM,
        d.delete.iter().map(|(s, k)| (*s, *k, None)),
    );
    push_elements(
        b,
        f,
        msg::NEWSETELEM,
        d.add.iter().map(|(s, k, e)| (*s, *k, Some(*e))),
    );
}

/// Adds every element of `want` to a batch (after a rebuild).
pub fn push_all(b: &mut Batch, f: Family, want: &Elements) {
    push_elements(
        b,
        f,
        msg::NEWSETELEM,
        want.iter().map(|((s, k), e)| (*s, k.as_slice(), Some(e))),
    );
}

/// Parses the elements of one `NEWSETELEM` dump answer.
pub fn parse_elements(payload: &[u8]) -> Vec<RawElement> {
    let top = parse_attrs(payload);
    let Some(list) = find(&top, 3) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for elem in parse_attrs(list).into_iter().filter(|a| a.ty == 1) {
        let attrs = parse_attrs(elem.data);
        let value = |ty| {
            find(&attrs, ty)
                .and_then(|n| find(&parse_attrs(n), 1))
                .map(<[u8]>::to_vec)
        };
        let Some(key) = value(1) else { continue };
        out.push((
            key,
            Encoded {
                data: value(2).unwrap_or_default(),
                userdata: find(&attrs, 6).map(<[u8]>::to_vec).unwrap_or_default(),
            },
        ));
    }
    out
}

/// Reads the elements of one of our sets; `None` when it (or our table) does not exist.
pub fn read_set(sock: &mut NftSocket, f: Family, set: &str) -> Result<Option<Vec<RawElement>>> {
    let mut a = Attrs::new();
    a.str(1, TABLE).str(2, set);
    let op = format!("reading the elements of set {set}");
    let Some(answers) = sock.dump(msg::GETSETELEM, f.nfproto(), &a, &op)? else {
        return Ok(None);
    };
    Ok(Some(
        answers.iter().flat_map(|p| parse_elements(p)).collect(),
    ))
}

/// Reads every element of the given sets of ours (e.g. [`ELEMENT_SETS`]) in one family;
/// `None` when our table (or one of its sets) does not exist.
pub fn read_installed(
    sock: &mut NftSocket,
    f: Family,
    sets: &[&'static str],
) -> Result<Option<Elements>> {
    let mut out = Elements::new();
    for &set in sets {
        let Some(elems) = read_set(sock, f, set)? else {
            return Ok(None);
        };
        out.extend(elems.into_iter().map(|(key, enc)| ((set, key), enc)));
    }
    Ok(Some(out))
}

/// Does the desired state hold any ClientIP-affine frontend?
pub fn has_affinity(want: &Elements) -> bool {
    // Range scans: a linear walk over tens of thousands of endpoint elements would cost
    // about a millisecond on every partial sync.
    [set::AFFINITY_IPS, set::AFFINITY_NODEPORTS]
        .iter()
        .any(|s| {
            want.range((*s, Vec::new())..)
                .next()
                .is_some_and(|((found, _), _)| found == s)
        })
}

/// The remembered choices (`client . addr . proto . port : endpoint`) that `want` no longer
/// allows: the frontend lost its affinity or the endpoint left it. Their keys.
pub fn stale_affinity(f: Family, want: &Elements, remembered: &[RawElement]) -> Vec<Vec<u8>> {
    // Frontend bytes (address frontends: addr . proto . port; node ports: proto . port),
    // which is every affine or endpoint key without its last field (timeout or slot).
    let frontend = |key: &[u8]| key[..key.len() - 4].to_vec();
    let mut affine_ips = BTreeSet::new();
    let mut affine_ports = BTreeSet::new();
    for (set, key) in want.keys() {
        match *set {
            set::AFFINITY_IPS => affine_ips.insert(frontend(key)),
            set::AFFINITY_NODEPORTS => affine_ports.insert(frontend(key)),
            _ => false,
        };
    }
    let mut valid: BTreeSet<(bool, Vec<u8>, &[u8])> = BTreeSet::new();
    for ((set, key), enc) in want {
        let (node_port, affine) = match *set {
            set::SERVICE_ENDPOINTS | set::LOCAL_POLICY_CLUSTER_ENDPOINTS => (false, &affine_ips),
            set::NODEPORT_ENDPOINTS | set::LOCAL_POLICY_CLUSTER_NODEPORT_ENDPOINTS => {
                (true, &affine_ports)
            }
            _ => continue,
        };
        let fe = frontend(key);
        if affine.contains(&fe) {
            valid.insert((node_port, fe, &enc.data));
        }
    }
    let a = f.addr_len() as usize;
    remembered
        .iter()
        .filter(|(key, enc)| {
            let ok = |node_port: bool, fe: &[u8]| {
                valid.contains(&(node_port, fe.to_vec(), &enc.data[..]))
            };
            key.len() >= 2 * a && !ok(false, &key[a..]) && !ok(true, &key[2 * a..])
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Adds the deletion of remembered choices to a batch.
pub fn push_affinity_deletions(b: &mut Batch, f: Family, keys: &[Vec<u8>]) {
    push_elements(
        b,
        f,
        msg::DELSETELEM,
        keys.iter().map(|k| (set::AFFINITY, k.as_slice(), None)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(data: &[u8]) -> Encoded {
        Encoded {
            data: data.to_vec(),
            userdata: vec![],
        }
    }

    #[test]
    fn diff_replaces_changed_values() {
        let have: Elements = [
            (("m", vec![1]), enc(&[1])),
            (("m", vec![2]), enc(&[2])),
            (("m", vec![3]), enc(&[3])),
        ]
        .into();
        let want: Elements = [
            (("m", vec![1]), enc(&[1])),
            (("m", vec![2]), enc(&[9])),
            (("m", vec![4]), enc(&[4])),
        ]
        .into();
        let d = diff(&have, &want);
        let del: Vec<_> = d.delete.iter().map(|(_, k)| k.to_vec()).collect();
        let add: Vec<_> = d.add.iter().map(|(_, k, _)| k.to_vec()).collect();
        assert_eq!(del, [vec![2], vec![3]]);
        assert_eq!(add, [vec![2], vec![4]]);
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn stale_affinity_is_a_removed_endpoint_or_a_lost_affinity() {
        use super::super::render::{concat_bytes, Field};
        use crate::model::Protocol;
        let ip = |s: &str| Field::Addr(s.parse().unwrap());
        let tcp = Field::Proto(Protocol::Tcp);
        let vip = [ip("10.96.0.1"), tcp, Field::Port(80)];
        let other = [ip("10.96.0.2"), tcp, Field::Port(80)];
        let ep = |a: &str| concat_bytes(&[ip(a), Field::Port(8080)]);
        let mut want = Elements::new();
        let with = |f: &[Field], extra: Field| concat_bytes(&[f, &[extra]].concat());
        want.insert((set::AFFINITY_IPS, with(&vip, Field::Id(60))), enc(&[]));
        for slot in 0..2 {
            want.insert(
                (set::SERVICE_ENDPOINTS, with(&vip, Field::Id(slot))),
                enc(&ep("10.244.1.10")),
            );
            want.insert(
                (set::SERVICE_ENDPOINTS, with(&other, Field::Id(slot))),
                enc(&ep("10.244.1.10")),
            );
        }
        let client = ip("10.244.200.2");
        let remembered =
            |fe: &[Field], to: &str| (concat_bytes(&[&[client], fe].concat()), enc(&ep(to)));
        let all = [
            remembered(&vip, "10.244.1.10"),
            remembered(&vip, "10.244.1.11"),
            remembered(&other, "10.244.1.10"),
        ];
        let stale = stale_affinity(Family::V4, &want, &all);
        assert_eq!(stale, [all[1].0.clone(), all[2].0.clone()]);
    }

    #[test]
    fn elements_round_trip_through_a_message() {
        let want: Elements = [
            (("endpoints", vec![1, 0, 0, 0]), enc(&[10, 0, 0, 1])),
            (
                ("endpoints", vec![2, 0, 0, 0]),
                Encoded {
                    data: vec![10, 0, 0, 2],
                    userdata: super::super::render::comment_udata("a/b"),
                },
            ),
        ]
        .into();
        let mut b = Batch::new(1);
        push_all(&mut b, Family::V4, &want);
        assert_eq!(b.len(), 1);
        let (bytes, _, _) = b.finish();
        // Skip batch begin (20 bytes), the message header (16) and nfgenmsg (4).
        let len = u32::from_ne_bytes(bytes[20..24].try_into().unwrap()) as usize;
        let parsed = parse_elements(&bytes[40..20 + len]);
        let got: Elements = parsed
            .into_iter()
            .map(|(k, e)| (("endpoints", k), e))
            .collect();
        assert_eq!(got, want);
    }
}
