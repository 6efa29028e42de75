//! Decoding of `application/vnd.kubernetes.protobuf` request bodies into JSON, for the kinds
//! that kubectl (1.32 and later) creates through its typed, protobuf-speaking clients:
//! `create namespace|configmap|secret|serviceaccount|deployment|service|job|token`.
//!
//! The body is the `k8s\0` magic and a `runtime.Unknown` envelope whose `raw` field holds the
//! object's protobuf. Each supported message is described by a small schema (field number →
//! JSON name and type) taken from the Kubernetes `generated.proto` files. Only the fields those
//! commands set are described (a deployment's pod template covers containers, ports, env,
//! command, node selection); others are skipped. Other kinds answer 415.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::error::ApiError;

/// How one protobuf field maps to JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    Int,
    /// An integer whose zero means unset (Go's non-pointer fields).
    Int0,
    Bool,
    IntOrString,
    Msg(&'static [Field]),
    RepStr,
    RepMsg(&'static [Field]),
    MapStr,
    MapBytes,
}

type Field = (u64, &'static str, Ty);

const OWNER_REFERENCE: &[Field] = &[
    (1, "kind", Ty::Str),
    (3, "name", Ty::Str),
    (4, "uid", Ty::Str),
    (5, "apiVersion", Ty::Str),
    (6, "controller", Ty::Bool),
    (7, "blockOwnerDeletion", Ty::Bool),
];
const OBJECT_META: &[Field] = &[
    (1, "name", Ty::Str),
    (2, "generateName", Ty::Str),
    (3, "namespace", Ty::Str),
    (5, "uid", Ty::Str),
    (6, "resourceVersion", Ty::Str),
    (7, "generation", Ty::Int0),
    (11, "labels", Ty::MapStr),
    (12, "annotations", Ty::MapStr),
    (13, "ownerReferences", Ty::RepMsg(OWNER_REFERENCE)),
    (14, "finalizers", Ty::RepStr),
];
const NAMESPACE: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "spec", Ty::Msg(&[(1, "finalizers", Ty::RepStr)])),
];
const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "data", Ty::MapStr),
    (3, "binaryData", Ty::MapBytes),
    (4, "immutable", Ty::Bool),
];
const SECRET: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "data", Ty::MapBytes),
    (3, "type", Ty::Str),
    (4, "stringData", Ty::MapStr),
    (5, "immutable", Ty::Bool),
];
const OBJECT_REFERENCE: &[Field] = &[
    (1, "kind", Ty::Str),
    (2, "namespace", Ty::Str),
    (3, "name", Ty::Str),
    (4, "uid", Ty::Str),
    (5, "apiVersion", Ty::Str),
    (6, "resourceVersion", Ty::Str),
    (7, "fieldPath", Ty::Str),
];
const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "secrets", Ty::RepMsg(OBJECT_REFERENCE)),
    (3, "imagePullSecrets", Ty::RepMsg(&[(1, "name", Ty::Str)])),
    (4, "automountServiceAccountToken", Ty::Bool),
];
const CONTAINER: &[Field] = &[
    (1, "name", Ty::Str),
    (2, "image", Ty::Str),
    (3, "command", Ty::RepStr),
    (4, "args", Ty::RepStr),
    (5, "workingDir", Ty::Str),
    (
        6,
        "ports",
        Ty::RepMsg(&[
            (1, "name", Ty::Str),
            (2, "hostPort", Ty::Int0),
            (3, "containerPort", Ty::Int),
            (4, "protocol", Ty::Str),
            (5, "hostIP", Ty::Str),
        ]),
    ),
    (
        7,
        "env",
        Ty::RepMsg(&[(1, "name", Ty::Str), (2, "value", Ty::Str)]),
    ),
    (14, "imagePullPolicy", Ty::Str),
];
const POD_SPEC: &[Field] = &[
    (2, "containers", Ty::RepMsg(CONTAINER)),
    (3, "restartPolicy", Ty::Str),
    (7, "nodeSelector", Ty::MapStr),
    (8, "serviceAccountName", Ty::Str),
    (10, "nodeName", Ty::Str),
];
const LABEL_SELECTOR: &[Field] = &[
    (1, "matchLabels", Ty::MapStr),
    (
        2,
        "matchExpressions",
        Ty::RepMsg(&[
            (1, "key", Ty::Str),
            (2, "operator", Ty::Str),
            (3, "values", Ty::RepStr),
        ]),
    ),
];
const DEPLOYMENT: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Ty::Msg(&[
            (1, "replicas", Ty::Int),
            (2, "selector", Ty::Msg(LABEL_SELECTOR)),
            (
                3,
                "template",
                Ty::Msg(&[
                    (1, "metadata", Ty::Msg(OBJECT_META)),
                    (2, "spec", Ty::Msg(POD_SPEC)),
                ]),
            ),
            (5, "minReadySeconds", Ty::Int0),
        ]),
    ),
];
const POD_TEMPLATE: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (2, "spec", Ty::Msg(POD_SPEC)),
];
const JOB: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Ty::Msg(&[
            (1, "parallelism", Ty::Int),
            (2, "completions", Ty::Int),
            (3, "activeDeadlineSeconds", Ty::Int),
            (4, "selector", Ty::Msg(LABEL_SELECTOR)),
            (5, "manualSelector", Ty::Bool),
            (6, "template", Ty::Msg(POD_TEMPLATE)),
            (7, "backoffLimit", Ty::Int),
            (8, "ttlSecondsAfterFinished", Ty::Int),
            (9, "completionMode", Ty::Str),
            (10, "suspend", Ty::Bool),
        ]),
    ),
];
const SERVICE: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Ty::Msg(&[
            (
                1,
                "ports",
                Ty::RepMsg(&[
                    (1, "name", Ty::Str),
                    (2, "protocol", Ty::Str),
                    (3, "port", Ty::Int),
                    (4, "targetPort", Ty::IntOrString),
                    (5, "nodePort", Ty::Int0),
                ]),
            ),
            (2, "selector", Ty::MapStr),
            (3, "clusterIP", Ty::Str),
            (4, "type", Ty::Str),
            (5, "externalIPs", Ty::RepStr),
        ]),
    ),
];
const TOKEN_REQUEST: &[Field] = &[
    (1, "metadata", Ty::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Ty::Msg(&[
            (1, "audiences", Ty::RepStr),
            (
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    (1, "kind", Ty::Str),
                    (2, "apiVersion", Ty::Str),
                    (3, "name", Ty::Str),
                    (4, "uid", Ty::Str),
                ]),
            ),
            (4, "expirationSeconds", Ty::Int),
        ]),
    ),
];
const INT_OR_STRING: &[Field] = &[
    (1, "type", Ty::Int),
    (2, "intVal", Ty::Int),
    (3, "strVal", Ty::Str),
];
const TYPE_META: &[Field] = &[(1, "apiVersion", Ty::Str), (2, "kind", Ty::Str)];
const UNKNOWN: &[Field] = &[(1, "typeMeta", Ty::Msg(TYPE_META)), (2, "raw", Ty::Bytes)];

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

fn malformed(what: &str) -> ApiError {
    ApiError::BadRequest(format!("malformed protobuf body: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| malformed("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(malformed("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field: number and, for length-delimited ones, the bytes (else the varint).
    fn field(&mut self) -> Result<(u64, Result<&'a [u8], u64>), ApiError> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Err(self.varint()?),
            1 => Err(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed("length"))?;
                Ok(self.take(len)?)
            }
            5 => Err(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            ))),
            _ => return Err(malformed("unsupported wire type")),
        };
        Ok((key >> 3, value))
    }
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed("string is not UTF-8"))
}

fn map_entry(b: &[u8], bytes: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader { buf: b };
    let (mut key, mut value) = (String::new(), json!(""));
    while !r.buf.is_empty() {
        match r.field()? {
            (1, Ok(k)) => key = text(k)?,
            (2, Ok(v)) if bytes => value = json!(STANDARD.encode(v)),
            (2, Ok(v)) => value = json!(text(v)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn message(b: &[u8], schema: &[Field]) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf: b };
    while !r.buf.is_empty() {
        let (number, value) = r.field()?;
        let Some(&(_, name, ty)) = schema.iter().find(|f| f.0 == number) else {
            continue;
        };
        let wrong = || malformed(name);
        match (ty, value) {
            // Go's protobuf writes empty strings; JSON omits them.
            (Ty::Str, Ok([])) => {}
            (Ty::Str, Ok(b)) => {
                out.insert(name.into(), json!(text(b)?));
            }
            (Ty::Bytes, Ok(b)) => {
                out.insert(name.into(), json!(STANDARD.encode(b)));
            }
            (Ty::Int, Err(v)) => {
                out.insert(name.into(), json!(v as i64));
            }
            (Ty::Int0, Err(0)) => {}
            (Ty::Int0, Err(v)) => {
                out.insert(name.into(), json!(v as i64));
            }
            (Ty::IntOrString, Ok(b)) => {
                let v = message(b, INT_OR_STRING)?;
                let value = if v["type"] == 1 {
                    v.get("strVal").cloned().unwrap_or(json!(""))
                } else {
                    v.get("intVal").cloned().unwrap_or(json!(0))
                };
                out.insert(name.into(), value);
            }
            (Ty::Bool, Err(v)) => {
                out.insert(name.into(), json!(v != 0));
            }
            (Ty::Msg(s), Ok(b)) => {
                out.insert(name.into(), message(b, s)?);
            }
            (Ty::RepStr, Ok(b)) => push(&mut out, name, json!(text(b)?)),
            (Ty::RepMsg(s), Ok(b)) => push(&mut out, name, message(b, s)?),
            (Ty::MapStr | Ty::MapBytes, Ok(b)) => {
                let (k, v) = map_entry(b, matches!(ty, Ty::MapBytes))?;
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(k, v);
                }
            }
            _ => return Err(wrong()),
        }
    }
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    if let Some(a) = out.entry(name).or_insert_with(|| json!([])).as_array_mut() {
        a.push(v);
    }
}

/// Decodes a protobuf body (`k8s\0` + `runtime.Unknown`) into a JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| malformed("missing k8s magic"))?;
    let unknown = message(envelope, UNKNOWN)?;
    let type_meta = &unknown["typeMeta"];
    let (api_version, kind) = (
        type_meta["apiVersion"].as_str().unwrap_or(""),
        type_meta["kind"].as_str().unwrap_or(""),
    );
    let schema = match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Service") => SERVICE,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("batch/v1", "Job") => JOB,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        _ => {
            return Err(ApiError::UnsupportedMediaType {
                accepted: "application/json",
            })
        }
    };
    let raw = STANDARD
        .decode(unknown["raw"].as_str().unwrap_or(""))
        .map_err(|_| malformed("raw"))?;
    let mut object = message(&raw, schema)?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let meta = [field(1, b"cm1"), field(3, b"t1")].concat();
        let entry = [field(1, b"a"), field(2, b"b")].concat();
        let cm = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let unknown = [field(1, &type_meta), field(2, &cm)].concat();
        let body = [b"k8s\0".as_slice(), &unknown].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm1","namespace":"t1"},"data":{"a":"b"}})
        );
    }

    #[test]
    fn unsupported_kinds_are_415_and_garbage_is_400() {
        let type_meta = [field(1, b"batch/v1"), field(2, b"CronJob")].concat();
        let body = [b"k8s\0".as_slice(), &field(1, &type_meta)].concat();
        assert_eq!(decode(&body).unwrap_err().code(), 415);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code(), 400);
        assert_eq!(decode(b"nope").unwrap_err().code(), 400);
    }
}
