//! [`Ruleset`] (chains and their rules, as we render them) and [`Transaction`] (one
//! `iptables-restore --noflush` input that moves the kernel from one ruleset to another).

use std::collections::BTreeMap;
use std::fmt;

/// The iptables tables we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`: reject and drop.
    Filter,
    /// `nat`: DNAT and masquerade.
    Nat,
}

impl Table {
    /// Both tables, in the order restore input lists them.
    pub const ALL: [Table; 2] = [Table::Filter, Table::Nat];

    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
        }
    }

    /// The table named `s`, if we use it.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "filter" => Some(Self::Filter),
            "nat" => Some(Self::Nat),
            _ => None,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chain: table and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainId {
    /// Its table.
    pub table: Table,
    /// Its name.
    pub name: String,
}

impl ChainId {
    /// A chain id.
    pub fn new(table: Table, name: impl Into<String>) -> Self {
        Self {
            table,
            name: name.into(),
        }
    }
}

/// Our chains and their rules (each rule is what follows `-A CHAIN `).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Chains in table, then name order.
    pub chains: BTreeMap<ChainId, Vec<String>>,
}

impl Ruleset {
    /// Declares a chain (possibly empty).
    pub fn chain(&mut self, id: ChainId) {
        self.chains.entry(id).or_default();
    }

    /// Appends a rule to a chain, declaring it if needed.
    pub fn push(&mut self, id: ChainId, rule: String) {
        self.chains.entry(id).or_default().push(rule);
    }

    /// The `iptables-restore` input installing exactly these chains (no hooks).
    pub fn to_restore(&self) -> String {
        let mut tx = Transaction::default();
        for (id, rules) in &self.chains {
            tx.write_chain(id, rules);
        }
        tx.render()
    }
}

/// One restore run: chains to (re)write, chains to delete, hook rules to insert or delete.
///
/// Declaring a chain in `--noflush` mode flushes it, so rewriting a chain replaces its rules in
/// the same atomic commit that other chains change in; nothing in between sees half a ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    write: BTreeMap<ChainId, Vec<String>>,
    delete: Vec<ChainId>,
    hook_delete: Vec<(Table, String, String)>,
    hook_insert: Vec<(Table, String, String)>,
}

impl Transaction {
    /// Replaces a chain's rules (creating the chain if needed).
    pub fn write_chain(&mut self, id: &ChainId, rules: &[String]) {
        self.write.insert(id.clone(), rules.to_vec());
    }

    /// Deletes one of our chains.
    pub fn delete_chain(&mut self, id: &ChainId) {
        self.delete.push(id.clone());
    }

    /// Inserts a rule first in a built-in chain.
    pub fn insert_hook(&mut self, table: Table, chain: &str, spec: &str) {
        self.hook_insert.push((table, chain.into(), spec.into()));
    }

    /// Deletes a rule, given as `iptables-save` printed it, from a built-in chain.
    pub fn delete_hook(&mut self, table: Table, chain: &str, spec: &str) {
        self.hook_delete.push((table, chain.into(), spec.into()));
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.write.is_empty()
            && self.delete.is_empty()
            && self.hook_delete.is_empty()
            && self.hook_insert.is_empty()
    }

    /// Chains written.
    pub fn chains_written(&self) -> usize {
        self.write.len()
    }

    /// Rules written.
    pub fn rules_written(&self) -> usize {
        self.write.values().map(Vec::len).sum()
    }

    /// Chains deleted.
    pub fn chains_deleted(&self) -> usize {
        self.delete.len()
    }

    /// Hook rules inserted or deleted.
    pub fn hooks_changed(&self) -> usize {
        self.hook_delete.len() + self.hook_insert.len()
    }

    /// The restore input. Per table: declare (and so flush) every chain written or deleted,
    /// unhook, hook, fill the written chains, then delete the dead ones, which by then nothing
    /// references.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for table in Table::ALL {
            let writes: Vec<_> = self
                .write
                .iter()
                .filter(|(id, _)| id.table == table)
                .collect();
            let deletes: Vec<_> = self.delete.iter().filter(|id| id.table == table).collect();
            let unhooks: Vec<_> = self.hook_delete.iter().filter(|h| h.0 == table).collect();
            let hooks: Vec<_> = self.hook_insert.iter().filter(|h| h.0 == table).collect();
            if writes.is_empty() && deletes.is_empty() && unhooks.is_empty() && hooks.is_empty() {
                continue;
            }
            s += &format!("*{table}\n");
            for (id, _) in &writes {
                s += &format!(":{} - [0:0]\n", id.name);
            }
            for id in &deletes {
                s += &format!(":{} - [0:0]\n", id.name);
            }
            for (_, chain, spec) in &unhooks {
                s += &format!("-D {chain} {spec}\n");
            }
            // Inserting each at position 1 reverses them; go backwards to keep the given order.
            for (_, chain, spec) in hooks.iter().rev() {
                s += &format!("-I {chain} 1 {spec}\n");
            }
            for (id, rules) in &writes {
                for r in rules.iter() {
                    s += &format!("-A {} {r}\n", id.name);
                }
            }
            for id in &deletes {
                s += &format!("-X {}\n", id.name);
            }
            s += "COMMIT\n";
        }
        s
    }
}
