//! Which service port each programmed frontend belongs to (the maps hold only addresses), with
//! an index by Service so a partial sync finds a Service's frontends without a scan, and a
//! dirty flag so the names file is rewritten only when a name changed, not on every endpoint
//! change.

use netlet_ebpf::SvcKey;
use std::collections::{BTreeMap, BTreeSet};

/// Frontend → `namespace/name:port`, and Service (`namespace/name`) → its frontends.
#[derive(Debug, Default)]
pub struct Names {
    by_frontend: BTreeMap<SvcKey, String>,
    by_service: BTreeMap<String, BTreeSet<SvcKey>>,
    dirty: bool,
}

/// The Service part (`namespace/name`) of a service port name `namespace/name:port`.
fn service_of(port_name: &str) -> &str {
    port_name.split(':').next().unwrap_or(port_name)
}

impl Names {
    /// Records that `fe` belongs to `port_name`.
    pub fn insert(&mut self, fe: SvcKey, port_name: String) {
        if self.by_frontend.get(&fe) == Some(&port_name) {
            return;
        }
        self.remove(&fe);
        self.by_service
            .entry(service_of(&port_name).to_owned())
            .or_default()
            .insert(fe);
        self.by_frontend.insert(fe, port_name);
        self.dirty = true;
    }

    /// Forgets `fe`.
    pub fn remove(&mut self, fe: &SvcKey) {
        let Some(old) = self.by_frontend.remove(fe) else {
            return;
        };
        let service = service_of(&old);
        if let Some(set) = self.by_service.get_mut(service) {
            set.remove(fe);
            if set.is_empty() {
                self.by_service.remove(service);
            }
        }
        self.dirty = true;
    }

    /// The frontends recorded for Service `namespace/name`.
    pub fn frontends_of(&self, service: &str) -> impl Iterator<Item = &SvcKey> {
        self.by_service.get(service).into_iter().flatten()
    }

    /// Number of frontends.
    pub fn len(&self) -> usize {
        self.by_frontend.len()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Every `(frontend, port name)`, in frontend order.
    pub fn iter(&self) -> impl Iterator<Item = (&SvcKey, &str)> {
        self.by_frontend.iter().map(|(k, v)| (k, v.as_str()))
    }

    /// Whether anything changed since the last call (and clears the flag).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the contents as not yet written (after a failed write).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlet_ebpf::Proto;
    use std::net::Ipv4Addr;

    fn fe(n: u8) -> SvcKey {
        SvcKey::new(Ipv4Addr::new(10, 96, 0, n), 80, Proto::Tcp)
    }

    #[test]
    fn index_follows_inserts_moves_and_removals() {
        let mut n = Names::default();
        n.insert(fe(1), "default/web:http".into());
        n.insert(fe(1).off_cluster(), "default/web:http".into());
        n.insert(fe(2), "default/db:sql".into());
        assert!(n.take_dirty());
        assert_eq!(n.frontends_of("default/web").count(), 2);
        // Unchanged names do not dirty the file.
        n.insert(fe(2), "default/db:sql".into());
        assert!(!n.take_dirty());
        // A frontend moving to another Service leaves the old one's index.
        n.insert(fe(2), "default/web:other".into());
        assert_eq!(n.frontends_of("default/db").count(), 0);
        assert_eq!(n.frontends_of("default/web").count(), 3);
        n.remove(&fe(1));
        assert_eq!(n.len(), 2);
        assert!(n.take_dirty());
        n.clear();
        assert_eq!((n.len(), n.frontends_of("default/web").count()), (0, 0));
    }
}
