//! The writes: POST create, PUT update, PATCH and DELETE, including the `status` and `scale`
//! subresources. Every check runs before the one storage write, so a rejected request stores
//! nothing.

use hyper::Response;
use serde_json::{json, Value};

use super::apply;
use super::defaults;
use super::error::ApiError;
use super::http::{self, Body};
use super::object;
use super::patch::{self, PatchType};
use super::path::{object_key, Subresource, Target};
use super::read::get_object;
use super::resources::Resource;
use super::services::ServiceAllocator;
use super::strict::{self, FieldValidation};
use super::validation::name_causes;
use super::{deletion, namespaces, service_account_admission};
use crate::storage::{KeyValue, Storage, StorageError};

/// The query options every write honours, and the allocator Service writes go through.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions<'a> {
    /// `fieldValidation` of creates and updates.
    pub validation: FieldValidation,
    /// `dryRun=All`: run every check, store nothing.
    pub dry_run: bool,
    /// Assigns cluster IPs and NodePorts to Services; `None` for callers that write no
    /// Services (they are then stored as given).
    pub services: Option<&'a ServiceAllocator>,
    /// The cluster CA (PEM), published in every new namespace as `kube-root-ca.crt`; `None`
    /// for callers that create no namespaces.
    pub root_ca: Option<&'a str>,
}

/// How many times a PATCH is retried when a concurrent write beats it.
const PATCH_RETRIES: usize = 5;

fn storage_error(resource: &Resource, name: &str, err: StorageError) -> ApiError {
    match err {
        StorageError::AlreadyExists { .. } => ApiError::AlreadyExists {
            group: resource.group,
            resource: resource.plural,
            name: name.into(),
        },
        StorageError::Conflict { .. } => ApiError::Conflict {
            group: resource.group,
            resource: resource.plural,
            name: name.into(),
        },
        StorageError::NotFound { .. } => ApiError::NotFound {
            group: resource.group,
            resource: resource.plural,
            name: name.into(),
        },
        other => ApiError::Storage(other),
    }
}

fn invalid_name(resource: &Resource, name: &str) -> Result<(), ApiError> {
    let causes = name_causes(name, resource.name_is_label);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            group: resource.group,
            kind: resource.kind,
            name: name.into(),
            causes,
        })
    }
}

/// Settles `metadata.namespace` against the URL's namespace.
fn settle_namespace(t: &Target, object: &mut Value) -> Result<(), ApiError> {
    let meta = &mut object["metadata"];
    if !t.resource.namespaced {
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        return Ok(());
    }
    let url_ns = t.namespace.as_deref().ok_or_else(|| {
        ApiError::BadRequest("a namespaced object must be created in a namespace path".into())
    })?;
    match meta["namespace"].as_str() {
        None | Some("") => meta["namespace"] = json!(url_ns),
        Some(ns) if ns == url_ns => {}
        Some(_) => return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
    Ok(())
}

/// POST to a collection.
pub async fn create(
    storage: &dyn Storage,
    t: &Target,
    mut object: Value,
    opts: WriteOptions<'_>,
) -> Result<Response<Body>, ApiError> {
    let r = t.resource;
    object::check_type_meta(r, &mut object, r.kind, &r.api_version())?;
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    // The generateName prefix, when the name is to be generated.
    let generate = match (
        object["metadata"]["name"].as_str(),
        object["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => None,
        (_, Some(g)) if !g.is_empty() => Some(g.to_string()),
        _ => None,
    };
    let name = match &generate {
        Some(prefix) => defaults::generated_name(prefix),
        None => object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    };
    invalid_name(r, &name)?;
    object["metadata"]["name"] = json!(name);
    settle_namespace(t, &mut object)?;
    if r.status && r.plural != "nodes" {
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
    }
    let input = object.clone();
    let mut object = object::decode(r, object)?;
    strict::check(opts.validation, &input, &object)?;
    defaults::on_create(&mut object, r.tracks_generation());
    defaults::apply_kind_defaults(r, &mut object);
    let epoch = namespaces::termination_epoch();
    let ns = t.namespace.as_deref().unwrap_or_default();
    if r.namespaced {
        namespaces::check_open(storage, r, ns, &name).await?;
    }
    if r.is_in("", "v1") && r.plural == "pods" {
        service_account_admission::admit(storage, ns, &mut object).await?;
    }
    // Held until the write is done, so no other Service write takes the same IP or ports.
    let _allocation = match (r.plural, opts.services) {
        ("services", Some(a)) => Some(a.allocate(storage, None, &mut object).await?),
        _ => None,
    };
    let mut name = name;
    let mut attempts = 0;
    let revision = loop {
        attempts += 1;
        let key = object_key(r, t.namespace.as_deref(), &name);
        let result = if opts.dry_run {
            match storage.get(&key).await? {
                Some(_) => Err(StorageError::AlreadyExists { key: key.clone() }),
                None => Ok(0),
            }
        } else {
            storage.create(&key, object::to_stored_as(r, &object)).await
        };
        match result {
            Ok(revision) => break revision,
            // A generated name that collided gets a fresh suffix, as in the apiserver.
            Err(StorageError::AlreadyExists { .. }) if attempts < 5 => match &generate {
                Some(prefix) => {
                    name = defaults::generated_name(prefix);
                    object["metadata"]["name"] = json!(name);
                }
                None => return Err(storage_error(r, &name, StorageError::AlreadyExists { key })),
            },
            Err(err) => return Err(storage_error(r, &name, err)),
        }
    };
    if opts.dry_run {
        // Nothing was written, so there is no revision to report.
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
    } else {
        object::set_resource_version(&mut object, revision);
        if r.plural == "namespaces" {
            namespaces::ensure_namespace_defaults(storage, &name, epoch, opts.root_ca).await?;
        }
        if r.namespaced && namespaces::termination_epoch() != epoch {
            let key = object_key(r, Some(ns), &name);
            namespaces::recheck_after_create(storage, r, ns, &key).await?;
        }
    }
    Ok(http::json(201, &object))
}

/// Writes `new` over `current` (read at `current_kv`), honouring the subresource rules; returns
/// the stored object. `expected` is the client's precondition, if any.
async fn replace(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    (current_kv, current): (&KeyValue, &Value),
    mut new: Value,
    expected: Option<u64>,
    opts: WriteOptions<'_>,
) -> Result<Value, ApiError> {
    let r = t.resource;
    if let Some(expected) = expected {
        if expected != current_kv.mod_revision {
            return Err(ApiError::Conflict {
                group: r.group,
                resource: r.plural,
                name: name.into(),
            });
        }
    }
    match t.subresource {
        Some(Subresource::Status) => {
            let status = new["status"].clone();
            new = current.clone();
            new["status"] = status;
        }
        Some(Subresource::Scale) => {
            let replicas = new["spec"]["replicas"].clone();
            if !replicas.is_i64() {
                return Err(ApiError::BadRequest(
                    "scale spec.replicas must be an integer".into(),
                ));
            }
            new = current.clone();
            new["spec"]["replicas"] = replicas;
        }
        // Served by `binding.rs`, `eviction.rs`, `pod_logs.rs`, `pod_stream.rs` and
        // `token_request.rs`; the router sends no writes of them here.
        Some(
            Subresource::Binding
            | Subresource::Eviction
            | Subresource::Log
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward
            | Subresource::Token,
        ) => return Err(ApiError::MethodNotAllowed),
        None if r.status => new["status"] = current["status"].clone(),
        None => {}
    }
    if new["status"].is_null() {
        if let Some(o) = new.as_object_mut() {
            o.remove("status");
        }
    }
    let input = new.clone();
    let mut new = object::decode(r, new)?;
    strict::check(opts.validation, &input, &new)?;
    defaults::on_update(current, &mut new, r.tracks_generation());
    defaults::apply_kind_defaults(r, &mut new);
    deletion::check_new_finalizers(r, current, &new)?;
    let _allocation = match (r.plural, opts.services, t.subresource) {
        ("services", Some(a), None) => Some(a.allocate(storage, Some(current), &mut new).await?),
        _ => None,
    };
    let mut unchanged = current.clone();
    if let Some(m) = unchanged["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    if unchanged == new {
        return Ok(current.clone());
    }
    if opts.dry_run {
        object::set_resource_version(&mut new, current_kv.mod_revision);
        return Ok(new);
    }
    // The last finalizer of an object being deleted is gone: the update removes it.
    if r.plural != "namespaces" && deletion::removed_by_update(&new) {
        deletion::remove_released(storage, t, name, current_kv.mod_revision).await?;
        object::set_resource_version(&mut new, current_kv.mod_revision);
        return Ok(new);
    }
    let key = object_key(r, t.namespace.as_deref(), name);
    let revision = storage
        .update(
            &key,
            object::to_stored_as(r, &new),
            Some(current_kv.mod_revision),
        )
        .await
        .map_err(|e| storage_error(r, name, e))?;
    object::set_resource_version(&mut new, revision);
    if r.plural == "namespaces" && deletion::is_deleting(&new) {
        namespaces::finalize(storage, name).await?;
    }
    Ok(new)
}

fn check_body_name(t: &Target, name: &str, object: &mut Value) -> Result<(), ApiError> {
    match object["metadata"]["name"].as_str() {
        None | Some("") => {
            if !object["metadata"].is_object() {
                object["metadata"] = json!({});
            }
            object["metadata"]["name"] = json!(name);
            Ok(())
        }
        Some(n) if n == name => Ok(()),
        Some(n) => Err(ApiError::BadRequest(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
    }
    .and_then(|()| settle_namespace(t, object))
}

fn render(t: &Target, object: &Value) -> Value {
    match t.subresource {
        Some(Subresource::Scale) => object::scale_of(object),
        _ => object.clone(),
    }
}

/// PUT an object or its subresource.
pub async fn update(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    mut body: Value,
    opts: WriteOptions<'_>,
) -> Result<Response<Body>, ApiError> {
    let r = t.resource;
    if t.subresource == Some(Subresource::Scale) {
        object::check_type_meta(r, &mut body, "Scale", "autoscaling/v1")?;
    } else {
        object::check_type_meta(r, &mut body, r.kind, &r.api_version())?;
    }
    check_body_name(t, name, &mut body)?;
    let expected = object::resource_version(&body)?;
    let (kv, current) = get_object(storage, t, name).await?;
    let stored = replace(storage, t, name, (&kv, &current), body, expected, opts).await?;
    Ok(http::json(200, &render(t, &stored)))
}

/// PATCH an object or its subresource, retrying when a concurrent write wins. With
/// `fieldValidation=Strict` (kubectl's default) the patched object may have no unknown fields;
/// since the stored object has none, any there came from the patch, as upstream reports them.
pub async fn patch(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    kind: PatchType,
    body: &[u8],
    opts: WriteOptions<'_>,
) -> Result<Response<Body>, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (kv, current) = get_object(storage, t, name).await?;
        let mut patched = render(t, &current);
        patch::apply(kind, &mut patched, body)?;
        // A patch that sets a different resourceVersion is a precondition; one that leaves it
        // alone is retried against the newest object when a concurrent write wins.
        let precondition = object::resource_version(&patched)?.filter(|rv| *rv != kv.mod_revision);
        check_body_name(t, name, &mut patched)?;
        match replace(
            storage,
            t,
            name,
            (&kv, &current),
            patched,
            precondition,
            opts,
        )
        .await
        {
            Err(ApiError::Conflict { .. }) if precondition.is_none() && attempt < PATCH_RETRIES => {
                continue
            }
            Err(err) => return Err(err),
            Ok(stored) => return Ok(http::json(200, &render(t, &stored))),
        }
    }
}

/// Server-side apply (`PATCH` with `application/apply-patch+yaml`) of `body` for `manager`:
/// creates the object when it does not exist, else merges it as `apply.rs` describes;
/// retried when a concurrent write wins.
pub async fn server_side_apply(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    body: &[u8],
    (manager, force): (&str, bool),
    opts: WriteOptions<'_>,
) -> Result<Response<Body>, ApiError> {
    if t.subresource.is_some() {
        return Err(ApiError::BadRequest(
            "server-side apply is supported on the main resource only".into(),
        ));
    }
    let mut config: Value = serde_saphyr::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding the YAML apply body: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::BadRequest(
            "the apply body must be an object".into(),
        ));
    }
    let r = t.resource;
    for field in ["apiVersion", "kind"] {
        if config[field].as_str().unwrap_or_default().is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{field} must be set in an apply request"
            )));
        }
    }
    object::check_type_meta(r, &mut config, r.kind, &r.api_version())?;
    check_body_name(t, name, &mut config)?;
    let names = (r.group, r.plural, name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (kv, current) = match get_object(storage, t, name).await {
            Ok(found) => found,
            Err(ApiError::NotFound { .. }) => {
                let object =
                    apply::apply(&json!({}), &config, manager, force, &defaults::now(), names)?;
                return create(storage, t, object, opts).await;
            }
            Err(e) => return Err(e),
        };
        let merged = apply::apply(&current, &config, manager, force, &defaults::now(), names)?;
        match replace(storage, t, name, (&kv, &current), merged, None, opts).await {
            Err(ApiError::Conflict { .. }) if attempt < PATCH_RETRIES => continue,
            Err(err) => return Err(err),
            Ok(stored) => return Ok(http::json(200, &render(t, &stored))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;
    use crate::storage::MemoryStorage;

    fn target(plural: &str, ns: Option<&str>, name: Option<&str>) -> Target {
        Target {
            resource: find("", "v1", plural).unwrap(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
            subresource: None,
            watch_path: false,
        }
    }

    const STRICT: WriteOptions = WriteOptions {
        validation: FieldValidation::Strict,
        dry_run: false,
        services: None,
        root_ca: None,
    };

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "1"}})
    }

    async fn create_ns(storage: &MemoryStorage, name: &str) {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        create(storage, &target("namespaces", None, None), ns, STRICT)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn rejected_creates_store_nothing() {
        let storage = MemoryStorage::new();
        let cms = target("configmaps", Some("n"), None);
        let err = create(&storage, &cms, cm("a"), STRICT).await.unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::NotFound {
                    resource: "namespaces",
                    ..
                }
            ),
            "{err}"
        );
        create_ns(&storage, "n").await;
        let before = storage.current_revision().await.unwrap();
        let err = create(&storage, &cms, cm("Bad_Name"), STRICT)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 422);
        let mut typo = cm("b");
        typo["dataa"] = json!({});
        let err = create(&storage, &cms, typo, STRICT).await.unwrap_err();
        assert_eq!(err.code(), 400);
        assert_eq!(storage.current_revision().await.unwrap(), before);
    }

    #[tokio::test]
    async fn updates_check_resource_version_and_skip_no_ops() {
        let storage = MemoryStorage::new();
        create_ns(&storage, "n").await;
        let cms = target("configmaps", Some("n"), None);
        create(&storage, &cms, cm("a"), STRICT).await.unwrap();
        let one = target("configmaps", Some("n"), Some("a"));
        let (_, current) = get_object(&storage, &one, "a").await.unwrap();
        let rev = storage.current_revision().await.unwrap();
        update(&storage, &one, "a", current.clone(), STRICT)
            .await
            .unwrap();
        assert_eq!(
            storage.current_revision().await.unwrap(),
            rev,
            "no-op update"
        );

        let mut changed = current.clone();
        changed["data"]["k"] = json!("2");
        update(&storage, &one, "a", changed.clone(), STRICT)
            .await
            .unwrap();
        changed["data"]["k"] = json!("3");
        let err = update(&storage, &one, "a", changed, STRICT)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Conflict { .. }), "{err}");

        patch(
            &storage,
            &one,
            "a",
            PatchType::Merge,
            br#"{"data":{"x":"y"}}"#,
            STRICT,
        )
        .await
        .unwrap();
        let (_, now) = get_object(&storage, &one, "a").await.unwrap();
        assert_eq!(now["data"], json!({"k": "2", "x": "y"}));
        assert_eq!(now["metadata"]["uid"], current["metadata"]["uid"]);
    }

    #[tokio::test]
    async fn deleting_a_namespace_deletes_its_objects() {
        let storage = MemoryStorage::new();
        create_ns(&storage, "n").await;
        create_ns(&storage, "m").await;
        for ns in ["n", "m"] {
            let cms = target("configmaps", Some(ns), None);
            create(&storage, &cms, cm("a"), STRICT).await.unwrap();
        }
        deletion::delete(
            &storage,
            &target("namespaces", None, Some("n")),
            "n",
            &deletion::DeleteOptions::default(),
            false,
        )
        .await
        .unwrap();
        let left = storage
            .list("/registry/configmaps/", None, 0, None)
            .await
            .unwrap();
        let keys: Vec<&str> = left.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/registry/configmaps/m/a"]);
    }
}
