//! `/openapi/v2`: one Swagger 2.0 document of every served kind, as JSON or in the protobuf
//! encoding of gnostic's `openapi.v2.Document` that kubectl asks for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
//!
//! kubectl 1.27 and 1.28 load this document before every `apply` or `create -f` and refuse to
//! go on without it. It is derived from the v3 documents (`openapi.rs`): the same schemas with
//! references rewritten to `#/definitions/`, `allOf: [{$ref}]` folded back into `$ref` and
//! OpenAPI 3's `nullable` dropped, and the same operations with `fieldValidation` as a query
//! parameter, so kubectl leaves validation to the server here too. Built once, on first use.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::discovery::MINOR;
use super::openapi::{operations, schemas};
use super::resources::{Resource, RESOURCES};

/// The media type kubectl asks for the protobuf rendition with.
pub const PROTOBUF_ACCEPT: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The media type of the protobuf answer: `@` is not allowed in a `Content-Type` (Go's mime
/// parser, and so kubectl, rejects it), so upstream answers with this spelling, and so do we.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The JSON document.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// The document as gnostic protobuf.
pub fn protobuf() -> &'static [u8] {
    &PROTOBUF_DOCUMENT
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
static PROTOBUF_DOCUMENT: LazyLock<Vec<u8>> = LazyLock::new(|| encode_document(&DOCUMENT));

const V3_PREFIX: &str = "#/components/schemas/";
const V2_PREFIX: &str = "#/definitions/";

fn build() -> Value {
    let all: Vec<&Resource> = RESOURCES.iter().collect();
    let (components, names) = schemas(&all);
    let definitions: Map<String, Value> = components
        .into_iter()
        .map(|(name, schema)| (name, to_v2(schema)))
        .collect();
    let mut paths = Map::new();
    for (path, mut item) in operations(&all, &names) {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            v2_operation(op);
        }
        paths.insert(path, item);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
        "paths": paths,
        "definitions": definitions,
    })
}

/// A v3 schema in v2 form.
fn to_v2(schema: Value) -> Value {
    match schema {
        Value::Object(mut map) => {
            map.remove("nullable");
            let single_ref = match map.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 && all[0].get("$ref").is_some() => {
                    all[0].get("$ref").cloned()
                }
                _ => None,
            };
            if let Some(reference) = single_ref {
                map.remove("allOf");
                map.insert("$ref".into(), reference);
            }
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(V3_PREFIX) {
                    *r = format!("{V2_PREFIX}{name}");
                }
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, to_v2(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(to_v2).collect()),
        other => other,
    }
}

/// A v3 operation in v2 form: parameters carry their type themselves, and responses their
/// schema directly instead of per media type.
fn v2_operation(op: &mut Value) {
    if let Some(params) = op["parameters"].as_array_mut() {
        for p in params {
            let ty = p["schema"]["type"].clone();
            if let Some(p) = p.as_object_mut() {
                p.remove("schema");
                p.insert("type".into(), ty);
                p.insert("uniqueItems".into(), json!(true));
            }
        }
    }
    if let Some(responses) = op["responses"].as_object_mut() {
        for response in responses.values_mut() {
            let schema = response["content"]["application/json"]["schema"].take();
            if let Some(r) = response.as_object_mut() {
                r.remove("content");
                if !schema.is_null() {
                    r.insert("schema".into(), to_v2(schema));
                }
            }
        }
    }
}

/// Protobuf wire encoding, just what gnostic's messages need.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, field: u64, wire: u64) {
        self.varint((field << 3) | wire);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u64, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u64, m: Message) {
        self.bytes(field, &m.0);
    }

    fn int(&mut self, field: u64, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }

    fn boolean(&mut self, field: u64, v: bool) {
        if v {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn double(&mut self, field: u64, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `openapi.v2.Any` with the value as YAML text (JSON is YAML), as kube-openapi reads it.
    fn any(&mut self, field: u64, v: &Value) {
        let mut any = Message::default();
        any.string(2, &v.to_string());
        self.message(field, any);
    }

    /// The `x-…` keys of `object` as repeated `NamedAny` in `field`.
    fn extensions(&mut self, field: u64, object: &Map<String, Value>) {
        for (k, v) in object.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Message::default();
            named.string(1, k);
            named.any(2, v);
            self.message(field, named);
        }
    }
}

fn encode_document(doc: &Value) -> Vec<u8> {
    let mut m = Message::default();
    m.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Message::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
    info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    m.message(2, info);
    let mut paths = Message::default();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut named = Message::default();
        named.string(1, path);
        named.message(2, encode_path_item(item));
        paths.message(2, named);
    }
    m.message(8, paths);
    let mut definitions = Message::default();
    for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
        definitions.message(1, named_schema(name, schema));
    }
    m.message(9, definitions);
    m.0
}

fn encode_path_item(item: &Value) -> Message {
    let mut m = Message::default();
    for (field, method) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (8, "patch"),
    ] {
        if let Some(op) = item.get(method).and_then(Value::as_object) {
            m.message(field, encode_operation(op));
        }
    }
    m
}

fn encode_operation(op: &Map<String, Value>) -> Message {
    let mut m = Message::default();
    m.string(
        5,
        op.get("operationId").and_then(Value::as_str).unwrap_or(""),
    );
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut query = Message::default();
        query.string(2, p["in"].as_str().unwrap_or("query"));
        query.string(4, p["name"].as_str().unwrap_or_default());
        query.string(6, p["type"].as_str().unwrap_or("string"));
        query.boolean(20, p["uniqueItems"].as_bool().unwrap_or(false));
        let mut non_body = Message::default();
        non_body.message(3, query);
        let mut parameter = Message::default();
        parameter.message(2, non_body);
        let mut item = Message::default();
        item.message(1, parameter);
        m.message(8, item);
    }
    let mut responses = Message::default();
    for (code, r) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut response = Message::default();
        response.string(1, r["description"].as_str().unwrap_or_default());
        if r["schema"].is_object() {
            let mut item = Message::default();
            item.message(1, encode_schema(&r["schema"]));
            response.message(2, item);
        }
        let mut value = Message::default();
        value.message(1, response);
        let mut named = Message::default();
        named.string(1, code);
        named.message(2, value);
        responses.message(1, named);
    }
    m.message(9, responses);
    m.extensions(13, op);
    m
}

fn named_schema(name: &str, schema: &Value) -> Message {
    let mut named = Message::default();
    named.string(1, name);
    named.message(2, encode_schema(schema));
    named
}

/// gnostic's `Schema`; keys it has no field for (OpenAPI 3's `anyOf`, …) are left out.
fn encode_schema(schema: &Value) -> Message {
    let mut m = Message::default();
    let Some(s) = schema.as_object() else {
        return m;
    };
    let str_of = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
    let int_of = |k: &str| s.get(k).and_then(Value::as_i64).unwrap_or(0);
    let num_of = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let bool_of = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    let list = |k: &str| s.get(k).and_then(Value::as_array).into_iter().flatten();
    // Scalar fields by type (protobuf readers take fields in any order).
    for (field, key) in [
        (1, "$ref"),
        (2, "format"),
        (3, "title"),
        (4, "description"),
        (13, "pattern"),
        (26, "discriminator"),
    ] {
        m.string(field, str_of(key));
    }
    for (field, key) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        m.double(field, num_of(key));
    }
    for (field, key) in [
        (8, "exclusiveMaximum"),
        (10, "exclusiveMinimum"),
        (16, "uniqueItems"),
        (27, "readOnly"),
    ] {
        m.boolean(field, bool_of(key));
    }
    for (field, key) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ] {
        m.int(field, int_of(key));
    }
    if let Some(d) = s.get("default") {
        m.any(5, d);
    }
    for r in list("required") {
        m.string(19, r.as_str().unwrap_or_default());
    }
    for e in list("enum") {
        m.any(20, e);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Message::default();
            item.key(2, 0);
            item.varint(u64::from(*b));
            m.message(21, item);
        }
        Some(sub @ Value::Object(_)) => {
            let mut item = Message::default();
            item.message(1, encode_schema(sub));
            m.message(21, item);
        }
        _ => {}
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut item = Message::default();
        for t in types {
            item.string(1, t);
        }
        m.message(22, item);
    }
    // `items` is one schema or (tuple form) several.
    let items: Vec<&Value> = match s.get("items") {
        Some(sub @ Value::Object(_)) => vec![sub],
        _ => list("items").collect(),
    };
    if !items.is_empty() {
        let mut item = Message::default();
        for sub in items {
            item.message(1, encode_schema(sub));
        }
        m.message(23, item);
    }
    for sub in list("allOf") {
        m.message(24, encode_schema(sub));
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut properties = Message::default();
        for (name, sub) in props {
            properties.message(1, named_schema(name, sub));
        }
        m.message(25, properties);
    }
    if let Some(e) = s.get("example") {
        m.any(30, e);
    }
    m.extensions(31, s);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_v2_shaped() {
        let doc = document();
        let pod = &doc["definitions"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        assert!(pod["properties"]["spec"].get("allOf").is_none());
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        let text = doc.to_string();
        assert!(!text.contains(V3_PREFIX) && !text.contains("\"nullable\""));
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["type"] == "string"));
        assert_eq!(
            patch["responses"]["200"]["schema"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.Deployment"
        );
        // Every reference resolves.
        let refs = text.split("\"$ref\":\"#/definitions/").skip(1);
        for r in refs {
            let name = &r[..r.find('"').unwrap()];
            assert!(doc["definitions"].get(name).is_some(), "{name}");
        }
    }

    #[test]
    fn protobuf_wire_format() {
        let mut m = Message::default();
        m.string(1, "2.0");
        m.int(11, 300);
        m.boolean(16, true);
        m.double(7, 1.5);
        let mut expected = vec![
            0x0a, 3, b'2', b'.', b'0', 0x58, 0xac, 0x02, 0x80, 0x01, 1, 0x39,
        ];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        assert_eq!(m.0, expected);
        let bytes = protobuf();
        // Field 1 (swagger) first, then info.
        assert_eq!(&bytes[..5], &[0x0a, 3, b'2', b'.', b'0']);
        assert_eq!(bytes[5], 0x12);
    }
}
