//! WATCH: a chunked stream of newline-delimited `{"type": …, "object": …}` events fed by
//! [`Storage::watch`].
//!
//! Without a `resourceVersion` (or with `0`) the stream starts with an ADDED event per existing
//! object, as the apiserver does. Compacted history becomes an ERROR event carrying a 410
//! Expired `Status`, after which the stream ends and the client re-lists. With selectors, objects
//! that an update moves out of (into) the selection are reported DELETED (ADDED).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::event_cache::{EventCache, Slot};
use super::http::{Body, Query, Rendering};
use super::metadata;
use super::object;
use super::path::{collection_prefix, Target};
use super::read::{list_page, Filter, Scan};
use super::resources::Resource;
use super::table::{self, IncludeObject};
use crate::storage::{Event, EventKind, KeyValue, Storage, StorageError};

/// Default watch length when the client gives no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a BOOKMARK is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// What one watch request asked for.
struct Request {
    resource: &'static Resource,
    prefix: String,
    filter: Filter,
    name: Option<String>,
    from: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
    rendering: Rendering,
    include: IncludeObject,
    cache: Arc<EventCache>,
}

impl Request {
    fn event(&self, kind: &str, object: &Value) -> Bytes {
        let object = match (self.rendering, kind) {
            (Rendering::Table, "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
                table::table(
                    self.resource,
                    std::slice::from_ref(object),
                    rv,
                    None,
                    self.include,
                )
            }
            (Rendering::Metadata, "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK") => {
                metadata::partial(object)
            }
            _ => object.clone(),
        };
        let mut line =
            serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn wanted(&self, object: &Value) -> bool {
        self.filter.matches(object)
            && self
                .name
                .as_deref()
                .is_none_or(|n| object["metadata"]["name"].as_str() == Some(n))
    }

    /// The watch event a storage event becomes for this request, if any.
    ///
    /// With selectors, an update that moves an object into the selection is ADDED and one
    /// that moves it out is DELETED, as the apiserver reports them. The decoded objects and
    /// JSON lines come from the apiserver's [`EventCache`], shared with the other watches.
    fn translate(&self, event: &Event) -> Option<Bytes> {
        let revision = event.revision();
        let decode = |kv: &KeyValue, slot| {
            self.cache.object(self.resource, revision, slot, || {
                object::from_stored_as(self.resource, &kv.value, revision).ok()
            })
        };
        let prev = event
            .prev_kv
            .as_ref()
            .and_then(|kv| decode(kv, Slot::Previous));
        let was = prev.as_ref().is_some_and(|p| self.wanted(p));
        let (kind, obj) = match event.kind {
            EventKind::Delete => ("DELETED", prev.filter(|_| was)?),
            EventKind::Put => {
                let obj = decode(&event.kv, Slot::Current)?;
                let now = self.wanted(&obj);
                let created = event.kv.create_revision == event.kv.mod_revision;
                let kind = match (created, prev.is_some(), was, now) {
                    (true, _, _, true) => "ADDED",
                    // Without the previous value, a matching update is a plain MODIFIED.
                    (false, false, _, true) | (false, true, true, true) => "MODIFIED",
                    (false, true, false, true) => "ADDED",
                    (false, true, true, false) => "DELETED",
                    _ => return None,
                };
                (kind, obj)
            }
        };
        Some(match self.rendering {
            Rendering::Json => self
                .cache
                .line(self.resource, revision, kind, || self.event(kind, &obj)),
            Rendering::Table | Rendering::Metadata => self.event(kind, &obj),
        })
    }

    fn bookmark(&self, revision: u64) -> Bytes {
        self.event(
            "BOOKMARK",
            &json!({
                "kind": self.resource.kind,
                "apiVersion": self.resource.api_version(),
                "metadata": { "resourceVersion": revision.to_string() },
            }),
        )
    }

    fn error(&self, err: &ApiError) -> Bytes {
        self.event("ERROR", &err.status())
    }
}

fn storage_to_api(err: StorageError) -> ApiError {
    match err {
        StorageError::Compacted {
            requested,
            compacted,
        } => ApiError::Expired {
            requested,
            compacted,
        },
        other => ApiError::Storage(other),
    }
}

/// Starts a watch; the response streams until the timeout, an error, or the client leaves.
pub fn watch(
    storage: Arc<dyn Storage>,
    cache: Arc<EventCache>,
    t: &Target,
    rendering: Rendering,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let from = match query.get("resourceVersion") {
        None | Some("0") => None,
        Some(_) => query.number("resourceVersion")?,
    };
    let req = Request {
        resource: t.resource,
        prefix: collection_prefix(t.resource, t.namespace.as_deref()),
        filter: Filter::from_query(query)?,
        name: t.name.clone(),
        from,
        timeout: query
            .number("timeoutSeconds")?
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        bookmarks: query.flag("allowWatchBookmarks"),
        rendering,
        include: IncludeObject::parse(query.get("includeObject")),
        cache,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let timeout = req.timeout;
        let _ = tokio::time::timeout(timeout, run(storage, req, tx)).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(Frame::data(bytes)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Feeds `tx` until the client goes away (send fails) or the store ends the watch.
async fn run(storage: Arc<dyn Storage>, req: Request, tx: mpsc::Sender<Bytes>) {
    let start = match req.from {
        Some(rev) => rev,
        None => match list_page(
            storage.as_ref(),
            req.resource,
            Scan::all(&req.prefix, &req.filter),
        )
        .await
        {
            Ok(page) => {
                for obj in page.items.iter().filter(|o| req.wanted(o)) {
                    if tx.send(req.event("ADDED", obj)).await.is_err() {
                        return;
                    }
                }
                page.revision
            }
            Err(err) => {
                let _ = tx.send(req.error(&err)).await;
                return;
            }
        },
    };
    let mut events = match storage.watch(&req.prefix, start).await {
        Ok(events) => events,
        Err(err) => {
            let _ = tx.send(req.error(&storage_to_api(err))).await;
            return;
        }
    };
    let mut last = start;
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        let line = tokio::select! {
            _ = tx.closed() => return,
            _ = ticker.tick(), if req.bookmarks => req.bookmark(last),
            event = events.next() => match event {
                None => return,
                Some(Err(err)) => {
                    let _ = tx.send(req.error(&storage_to_api(err))).await;
                    return;
                }
                Some(Ok(event)) => {
                    last = event.revision();
                    match req.translate(&event) {
                        Some(line) => line,
                        None => continue,
                    }
                }
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    fn request(selector: &str) -> Request {
        let query = Query::parse(Some(&format!("labelSelector={selector}")));
        Request {
            resource: find("", "v1", "configmaps").unwrap(),
            prefix: "/registry/configmaps/".into(),
            filter: Filter::from_query(&query).unwrap(),
            name: None,
            from: None,
            timeout: DEFAULT_TIMEOUT,
            bookmarks: false,
            rendering: Rendering::Json,
            cache: Arc::default(),
            include: IncludeObject::Metadata,
        }
    }

    fn kv(labels: Value, create: u64, rev: u64) -> KeyValue {
        KeyValue {
            key: "/registry/configmaps/n/c".into(),
            value: serde_json::to_vec(&json!({"metadata":{"name":"c","labels":labels}})).unwrap(),
            create_revision: create,
            mod_revision: rev,
        }
    }

    fn kind_of(line: Option<Bytes>) -> Option<String> {
        let v: Value = serde_json::from_slice(&line?).unwrap();
        Some(v["type"].as_str().unwrap().to_string())
    }

    #[test]
    fn updates_across_the_selector_become_added_and_deleted() {
        // Each case reuses revisions 2 and 3 with other values, which a real store never does
        // (the event cache keys by revision): a fresh request, and cache, per case.
        let translate = |event: &Event| request("w=1").translate(event);
        let put = |prev: Option<KeyValue>, now: KeyValue| Event {
            kind: EventKind::Put,
            kv: now,
            prev_kv: prev,
        };
        let on = || kv(json!({"w": "1"}), 2, 2);
        let off = || kv(json!({"w": "0"}), 2, 2);
        let at3 = |k: KeyValue| KeyValue {
            mod_revision: 3,
            ..k
        };
        assert_eq!(
            kind_of(translate(&put(None, on()))).as_deref(),
            Some("ADDED")
        );
        assert_eq!(kind_of(translate(&put(None, off()))), None);
        let moved_in = put(Some(off()), at3(on()));
        assert_eq!(kind_of(translate(&moved_in)).as_deref(), Some("ADDED"));
        let moved_out = put(Some(on()), at3(off()));
        assert_eq!(kind_of(translate(&moved_out)).as_deref(), Some("DELETED"));
        let stayed = put(Some(on()), at3(on()));
        assert_eq!(kind_of(translate(&stayed)).as_deref(), Some("MODIFIED"));
        let deleted = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                value: Vec::new(),
                create_revision: 0,
                ..at3(on())
            },
            prev_kv: Some(on()),
        };
        let line = translate(&deleted).unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "DELETED");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "3");
    }
}
