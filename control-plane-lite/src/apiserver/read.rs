//! GET of one object and LIST of a collection (selectors, `limit` + `continue`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::http::{self, Body, Query, Rendering};
use super::metadata;
use super::object;
use super::path::{collection_prefix, object_key, Subresource, Target};
use super::resources::{find, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use crate::storage::{KeyValue, Storage, StorageError};

/// Reads one object; 404 Status when absent.
pub async fn get_object(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
) -> Result<(KeyValue, Value), ApiError> {
    let key = object_key(t.resource, t.namespace.as_deref(), name);
    match storage.get(&key).await? {
        Some(kv) => {
            let obj = object::from_kv_as(t.resource, &kv)?;
            Ok((kv, obj))
        }
        None => Err(ApiError::NotFound {
            group: t.resource.group,
            resource: t.resource.plural,
            name: name.to_string(),
        }),
    }
}

/// Reads core/v1 `plural` `name` (in `namespace` when namespaced), for the apiserver's own
/// lookups (admission, token checks, node endpoints); 404 when absent.
pub async fn get_core(
    storage: &dyn Storage,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let t = Target {
        resource: find("", "v1", plural).expect("core kinds are in the table"),
        namespace: namespace.map(String::from),
        name: None,
        subresource: None,
        watch_path: false,
    };
    get_object(storage, &t, name).await.map(|(_, v)| v)
}

/// GET `…/<name>[/status|/scale]`.
pub async fn get(
    storage: &dyn Storage,
    t: &Target,
    name: &str,
    rendering: Rendering,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let (_, obj) = get_object(storage, t, name).await?;
    let body = match (t.subresource, rendering) {
        (Some(Subresource::Scale), _) => object::scale_of(&obj),
        (_, Rendering::Table) => {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            table::table(
                t.resource,
                std::slice::from_ref(&obj),
                &rv,
                None,
                IncludeObject::parse(query.get("includeObject")),
            )
        }
        (_, Rendering::Metadata) => metadata::partial(&obj),
        (_, Rendering::Json) => obj,
    };
    Ok(http::json(200, &body))
}

/// The opaque `continue` token: the snapshot revision and the last key returned.
fn encode_continue(revision: u64, last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!({"rv": revision, "start": last_key}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    match (v["rv"].as_u64(), v["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_string())),
        _ => Err(bad()),
    }
}

/// Selectors of a list or watch request.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Parses the selectors of `query`.
    pub fn from_query(query: &Query) -> Result<Self, ApiError> {
        Ok(Filter {
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
        })
    }

    /// Whether `object` passes both selectors.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// One snapshot page of a filtered list.
pub struct Page {
    /// Matching objects in key order.
    pub items: Vec<Value>,
    /// The snapshot revision.
    pub revision: u64,
    /// The token for the next page, if any.
    pub continue_token: Option<String>,
}

/// Where a scan ended: the page's snapshot and what comes after it.
pub struct ScanEnd {
    /// The snapshot revision.
    pub revision: u64,
    /// The token for the next page, if any.
    pub continue_token: Option<String>,
}

/// What a list scans: the objects under `prefix` that pass `filter`, at most `limit` (0: all),
/// in the snapshot `at` (`None`: the newest), starting after the key `start` (a continue
/// token's).
pub struct Scan<'a> {
    /// The collection's key prefix.
    pub prefix: &'a str,
    /// Label and field selectors.
    pub filter: &'a Filter,
    /// Most objects on the page (0: all).
    pub limit: usize,
    /// The snapshot revision.
    pub at: Option<u64>,
    /// The key the page starts after.
    pub start: Option<String>,
}

impl<'a> Scan<'a> {
    /// Every matching object under `prefix`, now.
    pub fn all(prefix: &'a str, filter: &'a Filter) -> Self {
        Self {
            prefix,
            filter,
            limit: 0,
            at: None,
            start: None,
        }
    }
}

/// Lists the objects `scan` selects, filling the page across storage pages when the
/// selectors drop objects.
pub async fn list_page(
    storage: &dyn Storage,
    resource: &Resource,
    scan: Scan<'_>,
) -> Result<Page, ApiError> {
    let mut items = Vec::new();
    let end = scan_page(storage, resource, scan, &mut |obj| items.push(obj)).await?;
    Ok(Page {
        items,
        revision: end.revision,
        continue_token: end.continue_token,
    })
}

/// [`list_page`], handing each matching object to `each` as it is decoded instead of keeping
/// them: a JSON LIST encodes them one by one, so its peak memory is the stored bytes and the
/// output, not every object as a `Value` at once (a `Value` is several times its JSON).
pub async fn scan_page(
    storage: &dyn Storage,
    resource: &Resource,
    scan: Scan<'_>,
    each: &mut (dyn FnMut(Value) + Send),
) -> Result<ScanEnd, ApiError> {
    let Scan {
        prefix,
        filter,
        limit,
        mut at,
        mut start,
    } = scan;
    let mut found = 0;
    loop {
        let want = if limit == 0 { 0 } else { limit - found };
        let page = storage
            .list(prefix, at, want, start.as_deref())
            .await
            .map_err(|err| match err {
                StorageError::Compacted {
                    requested,
                    compacted,
                } => ApiError::Expired {
                    requested,
                    compacted,
                },
                StorageError::FutureRevision { requested, current } => {
                    ApiError::TooLargeResourceVersion { requested, current }
                }
                other => ApiError::Storage(other),
            })?;
        at = Some(page.revision);
        for kv in &page.kvs {
            let obj = object::from_kv_as(resource, kv)?;
            if filter.matches(&obj) {
                found += 1;
                each(obj);
            }
        }
        let last = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more || last.is_none() {
            return Ok(ScanEnd {
                revision: page.revision,
                continue_token: None,
            });
        }
        if limit != 0 && found >= limit {
            let last = last.expect("checked above");
            return Ok(ScanEnd {
                revision: page.revision,
                continue_token: Some(encode_continue(page.revision, &last)),
            });
        }
        start = last;
    }
}

/// A list's `metadata`: its snapshot revision and, if more follows, the continue token.
fn list_meta(revision: u64, continue_token: Option<&str>) -> Value {
    let mut meta = json!({ "resourceVersion": revision.to_string() });
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    meta
}

/// A JSON LIST body whose items are encoded as the scan finds them.
async fn json_list(
    storage: &dyn Storage,
    t: &Target,
    scan: Scan<'_>,
) -> Result<Response<Body>, ApiError> {
    let mut items = b"[".to_vec();
    let end = scan_page(storage, t.resource, scan, &mut |obj| {
        if items.len() > 1 {
            items.push(b',');
        }
        // Writing a `Value` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut items, &obj);
    })
    .await?;
    items.push(b']');
    let head = json!({
        "kind": t.resource.list_kind(),
        "apiVersion": t.resource.api_version(),
        "metadata": list_meta(end.revision, end.continue_token.as_deref()),
    });
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    // `head` is an object: its last byte is the closing brace, reopened for the items.
    body.pop();
    body.extend_from_slice(b",\"items\":");
    body.extend_from_slice(&items);
    body.push(b'}');
    Ok(http::json_bytes(200, body))
}

/// LIST a collection (all namespaces when the path has none).
pub async fn list(
    storage: &dyn Storage,
    t: &Target,
    rendering: Rendering,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_query(query)?;
    let limit = query.number("limit")?.unwrap_or(0) as usize;
    let prefix = collection_prefix(t.resource, t.namespace.as_deref());
    let (at, start) = match query.get("continue") {
        Some(token) => {
            let (rv, start) = decode_continue(token)?;
            (Some(rv), Some(start))
        }
        // `resourceVersion=N&resourceVersionMatch=Exact` reads the snapshot at N; any other
        // resourceVersion ("0", "not older than N") is served from the newest revision.
        None if query.get("resourceVersionMatch") == Some("Exact") => {
            (query.number("resourceVersion")?, None)
        }
        None => (None, None),
    };
    let scan = Scan {
        prefix: &prefix,
        filter: &filter,
        limit,
        at,
        start,
    };
    if rendering == Rendering::Json {
        return json_list(storage, t, scan).await;
    }
    // Tables and metadata lists are made from every item at once.
    let page = list_page(storage, t.resource, scan).await?;
    let body = if rendering == Rendering::Table {
        table::table(
            t.resource,
            &page.items,
            &page.revision.to_string(),
            page.continue_token.as_deref(),
            IncludeObject::parse(query.get("includeObject")),
        )
    } else {
        let meta = list_meta(page.revision, page.continue_token.as_deref());
        metadata::partial_list(&page.items, meta)
    };
    Ok(http::json(200, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn a_json_list_streams_its_items_into_the_same_document_pages_and_all() {
        let storage = MemoryStorage::new();
        for (name, team) in [("a", "x"), ("b", "y"), ("c", "x"), ("d", "x")] {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "n", "labels": {"team": team}}});
            storage
                .create(
                    &format!("/registry/configmaps/n/{name}"),
                    object::to_stored(&cm),
                )
                .await
                .unwrap();
        }
        let t = Target {
            resource: find("", "v1", "configmaps").unwrap(),
            namespace: Some("n".into()),
            name: None,
            subresource: None,
            watch_path: false,
        };
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        let list = |q: &str| {
            let query = Query::parse(Some(q));
            let t = &t;
            let storage = &storage;
            async move {
                http::body_json(list(storage, t, Rendering::Json, &query).await.unwrap()).await
            }
        };

        let all = list("").await;
        assert_eq!(all["kind"], "ConfigMapList");
        assert_eq!(all["apiVersion"], "v1");
        assert_eq!(names(&all), ["a", "b", "c", "d"]);
        assert_eq!(all["items"][0]["metadata"]["labels"]["team"], "x");
        assert!(all["metadata"]["resourceVersion"].is_string());
        assert!(all["metadata"].get("continue").is_none());

        let first = list("labelSelector=team%3Dx&limit=2").await;
        assert_eq!(names(&first), ["a", "c"]);
        let token = first["metadata"]["continue"].as_str().unwrap().to_string();
        let rest = list(&format!("labelSelector=team%3Dx&limit=2&continue={token}")).await;
        assert_eq!(names(&rest), ["d"]);

        let none = list("labelSelector=team%3Dz").await;
        assert_eq!(none["items"], json!([]), "an empty list is [], not null");
    }

    #[test]
    fn continue_token_round_trips() {
        let t = encode_continue(42, "/registry/pods/a/b");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/pods/a/b".to_string())
        );
        assert!(decode_continue("!!").is_err());
    }
}
