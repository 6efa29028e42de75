//! The rendered rules against the real kernel, in throwaway namespaces: every golden fixture
//! is accepted by `iptables-restore` (nft and legacy, IPv4 and IPv6) and reads back with the
//! rule counts the backend relies on to recognise its own chains after a restart.

mod fixtures;

use integration::NetNs;
use netlet_proxy::backend::iptables::{render_restore, Variant};
use netlet_proxy::backend::{IptablesBackend, IptablesMode};
use netlet_proxy::model::IpFamily;
use netlet_proxy::{Backend, NetnsExec};
use std::io::Write;
use std::process::Stdio;

fn restore(ns: &NetNs, tool: &str, input: &str) {
    let mut child = ns
        .command(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} rejected:\n{input}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rule_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("-A NETLET-")).count()
}

#[test]
fn golden_rules_are_accepted_and_read_back_with_the_same_counts() {
    let ns = NetNs::new("golden");
    for case in fixtures::cases() {
        let table = case.table();
        for family in [IpFamily::V4, IpFamily::V6] {
            let input = render_restore(&table, &case.cfg, family);
            for variant in [Variant::Nft, Variant::Legacy] {
                restore(&ns, &variant.tool(family, "restore"), &input);
                let saved = ns.run_ok(&variant.tool(family, "save"), &[]);
                assert_eq!(
                    rule_count(&saved),
                    rule_count(&input),
                    "{} {family} {variant}:\n{saved}",
                    case.path.display()
                );
                // Without --noflush, restoring empty tables wipes them for the next round.
                let mut wipe = ns
                    .command(&variant.tool(family, "restore"))
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                let tables = b"*filter\nCOMMIT\n*nat\nCOMMIT\n";
                wipe.stdin.take().unwrap().write_all(tables).unwrap();
                assert!(wipe.wait().unwrap().success());
            }
        }
    }
}

#[test]
fn dual_stack_backend_syncs_both_families_and_cleans_both() {
    let case = fixtures::cases()
        .into_iter()
        .find(|c| c.path.ends_with("dualstack.json"))
        .expect("dualstack fixture");
    let ns = NetNs::new("dual");
    let netns = NetnsExec::Named(ns.name().to_string());
    let mut backend = IptablesBackend::new(case.cfg.clone(), netns, IptablesMode::Auto).unwrap();
    let table = case.table();
    let stats = backend.sync(&table).unwrap();
    assert_eq!(stats.transactions, 2, "{stats:?}");
    assert!(ns
        .run_ok("ip6tables-save", &[])
        .contains("fd00:10:96::31/128"));
    assert!(backend.sync(&table).unwrap().is_noop());
    backend.cleanup().unwrap();
    for tool in ["iptables-save", "ip6tables-save"] {
        let left = ns.run_ok(tool, &[]);
        assert!(!left.contains("NETLET"), "{tool}: {left}");
    }
}
