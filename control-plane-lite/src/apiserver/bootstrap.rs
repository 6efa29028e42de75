//! Objects every cluster starts with: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces (kubectl uses `default` when no namespace is given; agents put
//! their Leases in `kube-node-lease`).

use serde_json::json;

use super::error::ApiError;
use super::path::Target;
use super::resources::namespaces;
use super::strict::FieldValidation;
use super::write::{self, WriteOptions};
use crate::storage::Storage;

/// The namespaces created at startup.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces that do not exist yet (idempotent; run at every start).
pub async fn ensure_system_namespaces(storage: &dyn Storage) -> Result<(), ApiError> {
    let target = Target {
        resource: namespaces(),
        namespace: None,
        name: None,
        subresource: None,
        watch_path: false,
    };
    let opts = WriteOptions {
        validation: FieldValidation::Strict,
        dry_run: false,
    };
    for name in SYSTEM_NAMESPACES {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match write::create(storage, &target, ns, opts).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn creates_once() {
        let storage = MemoryStorage::new();
        ensure_system_namespaces(&storage).await.unwrap();
        let rev = storage.current_revision().await.unwrap();
        assert_eq!(rev, 4);
        ensure_system_namespaces(&storage).await.unwrap();
        assert_eq!(storage.current_revision().await.unwrap(), rev);
    }
}
