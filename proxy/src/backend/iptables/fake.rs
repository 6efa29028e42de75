//! An in-memory [`IptablesCli`] that interprets restore input the way `iptables-restore
//! --noflush` does (declare flushes, all-or-nothing commit, `-X` only of unreferenced chains),
//! so the backend's reconcile logic is tested without root.

use super::cli::IptablesCli;
use crate::error::{Error, Result};
use crate::model::IpFamily;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};

type Tables = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[derive(Debug, Default)]
struct State {
    families: BTreeMap<IpFamily, Tables>,
    restores: Vec<String>,
    fail_next: bool,
}

/// Shared handle: the test keeps a clone to look inside after handing one to the backend.
#[derive(Debug, Clone, Default)]
pub struct FakeIptables(Arc<Mutex<State>>);

fn fresh() -> Tables {
    let mut t = Tables::new();
    for c in ["INPUT", "FORWARD", "OUTPUT"] {
        t.entry("filter".into())
            .or_default()
            .insert(c.into(), Vec::new());
    }
    for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        t.entry("nat".into())
            .or_default()
            .insert(c.into(), Vec::new());
    }
    t
}

fn fail(line: &str, why: &str) -> Error {
    Error::Command {
        op: "fake restore".into(),
        program: "iptables-restore".into(),
        status: std::process::ExitStatus::from_raw(256),
        stderr: format!("{why}: {line}"),
    }
}

fn apply(tables: &mut Tables, input: &str) -> Result<()> {
    let mut table = String::new();
    for line in input.lines() {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let chains = tables.entry(table.clone()).or_default();
        match cmd {
            "COMMIT" => {}
            c if c.starts_with('*') => table = c[1..].to_string(),
            c if c.starts_with(':') => {
                chains.insert(c[1..].to_string(), Vec::new());
            }
            "-A" | "-I" | "-D" => {
                let (chain, spec) = rest.split_once(' ').ok_or_else(|| fail(line, "syntax"))?;
                let rules = chains
                    .get_mut(chain)
                    .ok_or_else(|| fail(line, "no chain"))?;
                match cmd {
                    "-A" => rules.push(spec.to_string()),
                    "-I" => {
                        let spec = spec
                            .strip_prefix("1 ")
                            .ok_or_else(|| fail(line, "position"))?;
                        rules.insert(0, spec.to_string());
                    }
                    _ => {
                        let at = rules.iter().position(|r| r == spec);
                        rules.remove(at.ok_or_else(|| fail(line, "no such rule"))?);
                    }
                }
            }
            "-X" => {
                let target = format!("-j {rest}");
                let used = chains.values().flatten().any(|r| r.ends_with(&target));
                if used || chains.get(rest).is_none_or(|r| !r.is_empty()) {
                    return Err(fail(line, "chain in use, not empty or missing"));
                }
                chains.remove(rest);
            }
            _ => return Err(fail(line, "unknown command")),
        }
    }
    for chains in tables.values() {
        for r in chains.values().flatten() {
            if let Some(t) = r.rsplit(" -j ").next().and_then(|t| t.split(' ').next()) {
                if t.starts_with("NETLET-") && !chains.contains_key(t) {
                    return Err(fail(r, "jump to missing chain"));
                }
            }
        }
    }
    Ok(())
}

impl FakeIptables {
    /// Restore inputs applied so far.
    pub fn restores(&self) -> Vec<String> {
        self.0.lock().unwrap().restores.clone()
    }

    /// Makes the next restore fail (as a lock timeout or a kernel error would).
    pub fn fail_next_restore(&self) {
        self.0.lock().unwrap().fail_next = true;
    }

    /// Rules of one chain, if it exists.
    pub fn chain(&self, family: IpFamily, table: &str, chain: &str) -> Option<Vec<String>> {
        let st = self.0.lock().unwrap();
        st.families.get(&family)?.get(table)?.get(chain).cloned()
    }

    /// Changes the kernel behind the backend's back (as another tool or a restart would).
    pub fn tamper(&self, family: IpFamily, input: &str) {
        let mut st = self.0.lock().unwrap();
        let tables = st.families.entry(family).or_insert_with(fresh);
        apply(tables, input).unwrap();
    }
}

impl IptablesCli for FakeIptables {
    fn save(&self, family: IpFamily) -> Result<String> {
        let mut st = self.0.lock().unwrap();
        let tables = st.families.entry(family).or_insert_with(fresh);
        let mut s = String::new();
        for (table, chains) in tables.iter() {
            s += &format!("*{table}\n");
            for name in chains.keys() {
                let builtin = name.chars().all(|c| c.is_ascii_uppercase());
                s += &format!(":{name} {} [0:0]\n", if builtin { "ACCEPT" } else { "-" });
            }
            for (name, rules) in chains {
                for r in rules {
                    s += &format!("-A {name} {r}\n");
                }
            }
            s += "COMMIT\n";
        }
        Ok(s)
    }

    fn restore(&self, family: IpFamily, input: &str) -> Result<()> {
        let mut st = self.0.lock().unwrap();
        if std::mem::take(&mut st.fail_next) {
            return Err(fail("", "injected failure"));
        }
        let mut next = st.families.get(&family).cloned().unwrap_or_else(fresh);
        apply(&mut next, input)?;
        st.families.insert(family, next);
        st.restores.push(input.to_string());
        Ok(())
    }
}
