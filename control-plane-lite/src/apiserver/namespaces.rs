//! Namespace lifecycle: the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap of
//! every namespace, refusing creates in a
//! namespace that is being deleted (the NamespaceLifecycle admission), and termination.
//!
//! Kubernetes splits termination between the apiserver (mark the namespace Terminating) and
//! the namespace controller (delete its contents, then the namespace). Here the DELETE does
//! both: it marks the namespace, deletes every object in it with the usual rules (so bound
//! pods and objects with finalizers stay until released) and removes the namespace once it is
//! empty; [`finalize`] runs again whenever an object of a Terminating namespace goes away.
//! A create that passed its namespace check just before the namespace was marked can still
//! land after the contents were listed: when a termination began meanwhile ([`TERMINATIONS`]),
//! the create reads the namespace again and deletes what it wrote ([`recheck_after_create`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::defaults;
use super::deletion::{self, is_deleting};
use super::error::ApiError;
use super::object;
use super::path::{collection_prefix, object_key};
use super::resources::{find, namespaces, Resource, RESOURCES};
use crate::storage::{KeyValue, Storage, StorageError};

fn service_accounts() -> &'static Resource {
    find("", "v1", "serviceaccounts").expect("serviceaccounts is in the table")
}

/// Terminations this process has begun: bumped after a namespace is marked Terminating and
/// before its contents are listed. A create reads it before its namespace check and again
/// after its write; only when it moved can the write have raced a termination, and only then
/// does the create read the namespace again ([`recheck_after_create`]). The apiserver is the
/// only writer of namespaces, so no termination escapes this count.
static TERMINATIONS: AtomicU64 = AtomicU64::new(0);

/// The current [`TERMINATIONS`] count.
pub fn termination_epoch() -> u64 {
    TERMINATIONS.load(Ordering::SeqCst)
}

/// The ConfigMap in every namespace that holds the cluster CA (`ca.crt`), which pods' service
/// account volumes project next to their token, as Kubernetes' root-CA publisher keeps it.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

fn config_maps() -> &'static Resource {
    find("", "v1", "configmaps").expect("configmaps is in the table")
}

/// Creates what every namespace starts with unless it exists: the `default` ServiceAccount
/// (pods default to it) and, given the cluster CA, the [`ROOT_CA_CONFIG_MAP`] ConfigMap
/// (rewritten when it holds another CA). `epoch` is [`termination_epoch`] from before the
/// namespace was created.
pub async fn ensure_namespace_defaults(
    storage: &dyn Storage,
    ns: &str,
    epoch: u64,
    root_ca: Option<&str>,
) -> Result<(), ApiError> {
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": ns},
    });
    ensure_object(storage, service_accounts(), ns, sa, epoch).await?;
    let Some(ca) = root_ca else { return Ok(()) };
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CA_CONFIG_MAP, "namespace": ns,
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."},
        },
        "data": {"ca.crt": ca},
    });
    let key = object_key(config_maps(), Some(ns), ROOT_CA_CONFIG_MAP);
    if let Some(kv) = storage.get(&key).await? {
        let mut current = object::from_kv(&kv)?;
        if current["data"]["ca.crt"].as_str() == Some(ca) {
            return Ok(());
        }
        current["data"] = cm["data"].clone();
        return match storage
            .update(&key, object::to_stored(&current), Some(kv.mod_revision))
            .await
        {
            // Someone else wrote it meanwhile; the next start checks again.
            Ok(_) | Err(StorageError::Conflict { .. } | StorageError::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        };
    }
    ensure_object(storage, config_maps(), ns, cm, epoch).await
}

/// Creates `object` of `r` in `ns` unless one of its name exists.
async fn ensure_object(
    storage: &dyn Storage,
    r: &'static Resource,
    ns: &str,
    mut object: Value,
    epoch: u64,
) -> Result<(), ApiError> {
    defaults::on_create(&mut object, false);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let key = object_key(r, Some(ns), name);
    match storage.create(&key, object::to_stored(&object)).await {
        Ok(_) if termination_epoch() != epoch => recheck_after_create(storage, r, ns, &key).await,
        Ok(_) => Ok(()),
        Err(StorageError::AlreadyExists { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Checks that `ns` exists and is not being deleted before `name` of `r` is created in it.
pub async fn check_open(
    storage: &dyn Storage,
    r: &Resource,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let key = object_key(namespaces(), None, ns);
    let Some(kv) = storage.get(&key).await? else {
        return Err(ApiError::NotFound {
            group: "",
            resource: "namespaces",
            name: ns.into(),
        });
    };
    let namespace = object::from_kv(&kv)?;
    if is_deleting(&namespace) || namespace["status"]["phase"] == "Terminating" {
        return Err(ApiError::NamespaceTerminating {
            group: r.group,
            resource: r.plural,
            name: name.into(),
            namespace: ns.into(),
        });
    }
    Ok(())
}

/// Closes the race between [`check_open`] and the write: the object at `key` of `r` was just
/// created in `ns`; if `ns` was marked Terminating meanwhile, its termination may already have
/// listed the namespace's contents without this object, so the object is deleted here (with
/// the usual rules) and the namespace finalized. Either the mark comes before this read and
/// the object goes here, or after the create, and the termination's listing finds it.
pub async fn recheck_after_create(
    storage: &dyn Storage,
    r: &Resource,
    ns: &str,
    key: &str,
) -> Result<(), ApiError> {
    // A namespace already gone was Terminating too: finalize removes only those.
    let gone = match storage.get(&object_key(namespaces(), None, ns)).await? {
        Some(ns_kv) => {
            if !is_deleting(&object::from_kv(&ns_kv)?) {
                return Ok(());
            }
            false
        }
        None => true,
    };
    if let Some(kv) = storage.get(key).await? {
        let object = object::from_kv_as(r, &kv)?;
        match deletion::delete_object(storage, r, &kv, object, None, false).await {
            Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    if gone {
        return Ok(());
    }
    finalize(storage, ns).await
}

/// Starts (or continues) the termination of the namespace read at `kv`; returns the namespace
/// as left (its last state if it is already gone).
pub async fn terminate(
    storage: &dyn Storage,
    (kv, current): (&KeyValue, Value),
    dry_run: bool,
) -> Result<Value, ApiError> {
    let name = current["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut ns = current;
    if !is_deleting(&ns) {
        ns["metadata"]["deletionTimestamp"] = json!(defaults::now());
        ns["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        ns["status"]["phase"] = json!("Terminating");
        if dry_run {
            return Ok(ns);
        }
        let revision = storage
            .update(&kv.key, object::to_stored(&ns), Some(kv.mod_revision))
            .await
            .map_err(|e| match e {
                StorageError::Conflict { .. } => ApiError::Conflict {
                    group: "",
                    resource: "namespaces",
                    name: name.clone(),
                },
                other => other.into(),
            })?;
        object::set_resource_version(&mut ns, revision);
        TERMINATIONS.fetch_add(1, Ordering::SeqCst);
    } else if dry_run {
        return Ok(ns);
    }
    for r in RESOURCES.iter().filter(|r| r.namespaced) {
        let page = storage
            .list(&collection_prefix(r, Some(&name)), None, 0, None)
            .await?;
        for kv in page.kvs {
            let object = object::from_kv_as(r, &kv)?;
            match deletion::delete_object(storage, r, &kv, object, None, false).await {
                // Gone or changed meanwhile: whoever changed it owns its fate.
                Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
    }
    finalize(storage, &name).await?;
    Ok(ns)
}

/// Removes namespace `ns` if it is Terminating, has no finalizers left and is empty.
pub async fn finalize(storage: &dyn Storage, ns: &str) -> Result<(), ApiError> {
    let key = object_key(namespaces(), None, ns);
    let Some(kv) = storage.get(&key).await? else {
        return Ok(());
    };
    let namespace = object::from_kv(&kv)?;
    if !is_deleting(&namespace) || deletion::has_finalizers(&namespace) {
        return Ok(());
    }
    for r in RESOURCES.iter().filter(|r| r.namespaced) {
        let page = storage
            .list(&collection_prefix(r, Some(ns)), None, 1, None)
            .await?;
        if !page.kvs.is_empty() {
            return Ok(());
        }
    }
    match storage.delete(&key, Some(kv.mod_revision)).await {
        // A concurrent finalize won, or the namespace changed and will be looked at again.
        Ok(_) | Err(StorageError::NotFound { .. } | StorageError::Conflict { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::deletion::{delete, DeleteOptions};
    use crate::apiserver::path::Target;
    use crate::apiserver::strict::FieldValidation;
    use crate::apiserver::write::{create, update, WriteOptions};
    use crate::storage::MemoryStorage;

    const OPTS: WriteOptions = WriteOptions {
        validation: FieldValidation::Strict,
        dry_run: false,
        services: None,
        root_ca: None,
    };

    fn target(plural: &str, ns: Option<&str>, name: Option<&str>) -> Target {
        Target {
            resource: find("", "v1", plural).unwrap(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
            subresource: None,
            watch_path: false,
        }
    }

    /// Creates namespace `name` through the API path (so it gets its default ServiceAccount).
    async fn create_ns(storage: &MemoryStorage, name: &str) {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        create(storage, &target("namespaces", None, None), ns, OPTS)
            .await
            .unwrap();
    }

    async fn get(storage: &MemoryStorage, plural: &str, ns: Option<&str>, name: &str) -> Value {
        let t = target(plural, ns, Some(name));
        let kv = storage.get(&object_key(t.resource, ns, name)).await;
        kv.unwrap()
            .map_or(Value::Null, |kv| object::from_kv(&kv).unwrap())
    }

    #[tokio::test]
    async fn termination_waits_for_bound_pods_and_finalizers() {
        let storage = MemoryStorage::new();
        create_ns(&storage, "n").await;
        assert_eq!(
            get(&storage, "serviceaccounts", Some("n"), "default").await["metadata"]["name"],
            "default"
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}});
        create(&storage, &target("pods", Some("n"), None), pod, OPTS)
            .await
            .unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "finalizers": ["example.com/hold"]}});
        create(&storage, &target("configmaps", Some("n"), None), cm, OPTS)
            .await
            .unwrap();

        let none = DeleteOptions::default();
        let epoch = termination_epoch();
        delete(
            &storage,
            &target("namespaces", None, Some("n")),
            "n",
            &none,
            false,
        )
        .await
        .unwrap();
        assert!(
            termination_epoch() > epoch,
            "creates racing it will look again"
        );
        let ns = get(&storage, "namespaces", None, "n").await;
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!(get(&storage, "serviceaccounts", Some("n"), "default")
            .await
            .is_null());
        let cms = target("configmaps", Some("n"), None);
        let err = create(
            &storage,
            &cms,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "late"}}),
            OPTS,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), 403, "{err}");

        // The node agent's final delete, then the finalizer's release.
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        delete(
            &storage,
            &target("pods", Some("n"), Some("p")),
            "p",
            &now,
            false,
        )
        .await
        .unwrap();
        assert!(get(&storage, "pods", Some("n"), "p").await.is_null());
        assert!(!get(&storage, "namespaces", None, "n").await.is_null());
        let mut held = get(&storage, "configmaps", Some("n"), "c").await;
        assert!(is_deleting(&held));
        held["metadata"]["finalizers"] = json!([]);
        let one = target("configmaps", Some("n"), Some("c"));
        update(&storage, &one, "c", held, OPTS).await.unwrap();
        assert!(get(&storage, "configmaps", Some("n"), "c").await.is_null());
        assert!(get(&storage, "namespaces", None, "n").await.is_null());
    }

    #[tokio::test]
    async fn a_create_landing_after_termination_began_is_removed_with_the_namespace() {
        let storage = MemoryStorage::new();
        create_ns(&storage, "n").await;
        // A ConfigMap whose create passed the namespace check, held back while the namespace
        // was marked and its (then) contents deleted; it lands afterwards.
        let ns_key = object_key(namespaces(), None, "n");
        let kv = storage.get(&ns_key).await.unwrap().unwrap();
        let mut marked = object::from_kv(&kv).unwrap();
        marked["metadata"]["deletionTimestamp"] = json!(defaults::now());
        marked["status"]["phase"] = json!("Terminating");
        storage
            .update(&ns_key, object::to_stored(&marked), Some(kv.mod_revision))
            .await
            .unwrap();
        let sa_key = object_key(service_accounts(), Some("n"), "default");
        storage.delete(&sa_key, None).await.unwrap();
        let cms = find("", "v1", "configmaps").unwrap();
        let late = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "late", "namespace": "n", "uid": "u"}});
        let key = object_key(cms, Some("n"), "late");
        // The late create lands, looks again, and is gone; then again once "n" is gone.
        for then in ["n is Terminating", "n is gone"] {
            storage
                .create(&key, object::to_stored(&late))
                .await
                .unwrap();
            recheck_after_create(&storage, cms, "n", &key)
                .await
                .unwrap();
            assert!(storage.get(&key).await.unwrap().is_none(), "{then}");
            assert!(
                get(&storage, "namespaces", None, "n").await.is_null(),
                "finalized ({then})"
            );
        }

        // An open namespace keeps what is created in it.
        create_ns(&storage, "m").await;
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        create(&storage, &target("configmaps", Some("m"), None), cm, OPTS)
            .await
            .unwrap();
        assert_eq!(
            get(&storage, "configmaps", Some("m"), "c").await["metadata"]["name"],
            "c"
        );
    }
}
