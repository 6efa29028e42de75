//! Golden tests: each `testdata/<case>.json` (proxy config, Services, EndpointSlices) must
//! produce exactly `<case>.table.txt` (the service table), `<case>.iptables.txt` (the
//! iptables-restore input per family) and `<case>.nftables.txt` (the nftables map and set
//! elements per family). Run with `NETLET_UPDATE_GOLDEN=1` to rewrite the
//! expected files after an intended change, then review the diff.

mod fixtures;

use netlet_proxy::backend::iptables::render_restore;
use netlet_proxy::backend::nftables::render_elements;
use netlet_proxy::ServiceTable;
use std::path::Path;

fn check(path: &Path, got: &str, failures: &mut Vec<String>) {
    if std::env::var_os("NETLET_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (NETLET_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    if want != got {
        failures.push(format!("{} differs; got:\n{got}", path.display()));
    }
}

#[test]
fn fixtures_render_as_expected() {
    let mut failures = Vec::new();
    for case in fixtures::cases() {
        let table = case.table();

        // Input order must not matter.
        let mut services = case.services.clone();
        services.reverse();
        let mut slices = case.slices.clone();
        slices.reverse();
        assert_eq!(
            table,
            ServiceTable::build(&services, &slices, &case.cfg),
            "{}: order-dependent",
            case.path.display()
        );

        check(
            &case.path.with_extension("table.txt"),
            &table.to_string(),
            &mut failures,
        );
        let mut rules = String::new();
        for family in &case.cfg.families {
            rules += &format!("# {family}\n{}", render_restore(&table, &case.cfg, *family));
        }
        check(
            &case.path.with_extension("iptables.txt"),
            &rules,
            &mut failures,
        );
        let mut elements = String::new();
        for family in &case.cfg.families {
            elements += &format!(
                "# {family}\n{}",
                render_elements(&table, &case.cfg, *family)
            );
        }
        check(
            &case.path.with_extension("nftables.txt"),
            &elements,
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
