//! [`NoneBackend`]: programs nothing; for dry runs and for tests of the layers above.

use super::{Backend, SyncStats};
use crate::error::Result;
use crate::model::{ServiceKey, ServiceTable};

/// A backend that only counts: every sync succeeds and changes nothing in the kernel.
#[derive(Debug, Default, Clone)]
pub struct NoneBackend {
    /// The last table synced, for callers (tests) that want to see what they were given.
    pub last: Option<ServiceTable>,
    /// Number of sync calls (full and partial).
    pub syncs: usize,
}

impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }

    fn sync(&mut self, table: &ServiceTable) -> Result<SyncStats> {
        self.syncs += 1;
        self.last = Some(table.clone());
        Ok(SyncStats {
            service_ports: table.len(),
            ..SyncStats::default()
        })
    }

    fn sync_changed(&mut self, table: &ServiceTable, _changed: &[ServiceKey]) -> Result<SyncStats> {
        self.sync(table)
    }

    fn cleanup(&mut self) -> Result<SyncStats> {
        self.last = None;
        Ok(SyncStats::default())
    }
}
