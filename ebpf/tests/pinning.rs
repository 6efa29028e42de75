//! Pinned maps in the loader's private bpffs (a temp dir here): a second load reuses them.

mod common;

use common::{packet, parse};
use netlet_ebpf::loader::verdict::TC_ACT_OK;
use netlet_ebpf::maps::CtKey;
use netlet_ebpf::{BpfFs, Direction, Proto, ServiceNat};
use std::net::Ipv4Addr;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 9);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 21), 8080);
const B2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 22), 8080);

#[test]
fn pinned_maps_survive_a_reload_and_the_mount_goes_with_its_guard() {
    integration::require_root();
    let state = tempfile::tempdir().unwrap();
    let fs = BpfFs::mount_under(state.path()).expect("mounting a private bpffs");
    assert!(fs.is_mounted());

    let (bip, bport);
    {
        let mut nat = ServiceNat::load_pinned(&fs).unwrap();
        nat.set_service(VIP, 80, Proto::Tcp, &[B1, B2]).unwrap();
        nat.set_service(VIP, 53, Proto::Udp, &[]).unwrap();
        let out = nat
            .test_run(
                Direction::Forward,
                &packet(Proto::Tcp, CLIENT, 41000, VIP, 80, b"x", false),
                1,
            )
            .unwrap();
        let p = parse(&out.packet);
        (bip, bport) = (p.dst, p.dport);
        assert!(fs
            .path()
            .join(format!("{}_services", netlet_ebpf::loader::PIN_PREFIX))
            .exists());
    }

    // A "restarted" loader finds the services, the slot layout and the conntrack entry.
    let mut nat = ServiceNat::load_pinned(&fs).unwrap();
    assert_eq!(
        nat.table().backends_of(VIP, 80, Proto::Tcp),
        Some(&[B1, B2][..])
    );
    assert_eq!(nat.table().backends_of(VIP, 53, Proto::Udp), Some(&[][..]));
    let ct = nat
        .conntrack_get(&CtKey::new(CLIENT, 41000, bip, bport, Proto::Tcp))
        .unwrap()
        .expect("conntrack survived the reload");
    assert_eq!((ct.vip(), ct.port()), (VIP, 80));
    let reply = packet(Proto::Tcp, bip, bport, CLIENT, 41000, b"y", false);
    let back = nat.test_run(Direction::Reverse, &reply, 1).unwrap();
    assert_eq!(back.verdict, TC_ACT_OK);
    assert_eq!(parse(&back.packet).src, VIP);
    // Incremental updates continue from the recovered state.
    nat.set_service(VIP, 80, Proto::Tcp, &[B2]).unwrap();
    assert_eq!(nat.table().backend_entries(), 1);
    // A new service does not reuse a live service id.
    nat.set_service(VIP, 443, Proto::Tcp, &[B1]).unwrap();
    assert_eq!(nat.table().backend_entries(), 2);
    let out = nat
        .test_run(
            Direction::Forward,
            &packet(Proto::Tcp, CLIENT, 41001, VIP, 80, b"x", false),
            1,
        )
        .unwrap();
    assert_eq!((parse(&out.packet).dst, parse(&out.packet).dport), B2);
    drop(nat);

    let path = fs.path().to_owned();
    fs.unmount().unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(path.to_str().unwrap()),
        "bpffs still mounted at {}",
        path.display()
    );
}
