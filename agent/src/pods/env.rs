//! A container's environment: the Service variables (`service_env.rs`), literal values,
//! `valueFrom` (pod fields, ConfigMap and Secret keys read through the API) and `envFrom`, with
//! `$(VAR)` references expanded as the kubelet does.
//!
//! A missing ConfigMap, Secret or key that is not `optional` is an error naming it: the
//! container then waits with `CreateContainerConfigError` instead of starting without it.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Why a container's environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A referenced ConfigMap or Secret could not be read.
    #[error("reading {kind} {namespace}/{name} for env: {source}")]
    Read {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error (404 when it does not exist), boxed: it is large.
        #[source]
        source: Box<kube::Error>,
    },
    /// A referenced key is not in the ConfigMap or Secret.
    #[error("key {key:?} not found in {kind} {name} (env {var})")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
        /// The variable that wanted it.
        var: String,
    },
    /// A `fieldRef` path this agent does not support.
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedField(String),
    /// The Services have not been listed yet, so their variables are unknown.
    #[error("services have not yet been read at least once, cannot construct envvars")]
    ServicesNotSynced,
}

/// The pod facts `fieldRef` can read besides the pod object itself.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its IP (from the sandbox), empty for none.
    pub pod_ip: &'a str,
    /// The node's IP, empty when not configured.
    pub host_ip: &'a str,
}

/// The value of `fieldRef` `path` for the pod.
pub fn field_value(facts: PodFacts<'_>, path: &str) -> Result<String, EnvError> {
    let m = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    let map_key = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let v = match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(facts.pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(facts.host_ip.to_string()),
        _ => {
            let found = map_key("metadata.labels", &m.labels)
                .or_else(|| map_key("metadata.annotations", &m.annotations));
            return found.ok_or_else(|| EnvError::UnsupportedField(path.into()));
        }
    };
    Ok(v.unwrap_or_default())
}

/// Expands `$(NAME)` from `vars` (unknown names stay as written; `$$` is a literal `$`).
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(t) = tail.strip_prefix('$') {
            out.push('$');
            rest = t;
        } else if let Some(body) = tail.strip_prefix('(') {
            match body.find(')') {
                Some(end) if vars.contains_key(&body[..end]) => {
                    out.push_str(&vars[&body[..end]]);
                    rest = &body[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 3 + end]);
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Reads ConfigMaps and Secrets of one namespace, each at most once per environment.
struct Sources {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
    namespace: String,
    cache: HashMap<(&'static str, String), Option<BTreeMap<String, String>>>,
}

impl Sources {
    /// The data of `kind` `name`; `None` when it does not exist and `optional`.
    async fn data(
        &mut self,
        kind: &'static str,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, String>>, EnvError> {
        let key = (kind, name.to_string());
        if !self.cache.contains_key(&key) {
            let read = if kind == "ConfigMap" {
                self.configmaps
                    .get(name)
                    .await
                    .map(|c| c.data.unwrap_or_default())
            } else {
                self.secrets.get(name).await.map(|s| {
                    let mut d: BTreeMap<String, String> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect();
                    d.extend(s.string_data.unwrap_or_default());
                    d
                })
            };
            let value = match read {
                Ok(d) => Some(d),
                Err(kube::Error::Api(e)) if e.code == 404 && optional => None,
                Err(source) => {
                    return Err(EnvError::Read {
                        kind,
                        namespace: self.namespace.clone(),
                        name: name.into(),
                        source: Box::new(source),
                    })
                }
            };
            self.cache.insert(key.clone(), value);
        }
        Ok(self.cache[&key].clone())
    }

    /// One key of `kind` `name`, `None` if optional and missing.
    async fn key(
        &mut self,
        kind: &'static str,
        name: &str,
        key: &str,
        optional: bool,
        var: &str,
    ) -> Result<Option<String>, EnvError> {
        let Some(data) = self.data(kind, name, optional).await? else {
            return Ok(None);
        };
        match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::MissingKey {
                kind,
                name: name.into(),
                key: key.into(),
                var: var.into(),
            }),
        }
    }
}

/// The environment of `container`, in order, with later definitions overriding earlier ones:
/// `base` (the Service variables) first, then `envFrom`, then `env`.
pub async fn container_env(
    client: &Client,
    facts: PodFacts<'_>,
    container: &Container,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = facts.pod.metadata.namespace.clone().unwrap_or_default();
    let mut sources = Sources {
        configmaps: Api::namespaced(client.clone(), &namespace),
        secrets: Api::namespaced(client.clone(), &namespace),
        namespace,
        cache: HashMap::new(),
    };
    let mut vars: Vec<(String, String)> = base;
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(n, _)| *n != k);
        vars.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(c), _) => ("ConfigMap", c.name.clone(), c.optional.unwrap_or(false)),
            (None, Some(s)) => ("Secret", s.name.clone(), s.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        if let Some(data) = sources.data(kind, &name, optional).await? {
            for (k, v) in data {
                set(&mut vars, format!("{prefix}{k}"), v);
            }
        }
    }
    for e in container.env.iter().flatten() {
        let known: HashMap<String, String> = vars.iter().cloned().collect();
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or_default(), &known)),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field_value(facts, &f.field_path)?)
                } else if let Some(c) = &from.config_map_key_ref {
                    let optional = c.optional.unwrap_or(false);
                    sources
                        .key("ConfigMap", &c.name, &c.key, optional, &e.name)
                        .await?
                } else if let Some(s) = &from.secret_key_ref {
                    let optional = s.optional.unwrap_or(false);
                    sources
                        .key("Secret", &s.name, &s.key, optional, &e.name)
                        .await?
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn references_expand() {
        let vars: HashMap<String, String> = [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string()),
        ]
        .into();
        assert_eq!(expand("$(A)-$(B)", &vars), "1-x y");
        assert_eq!(expand("$(C) $$(A) $", &vars), "$(C) $(A) $");
        assert_eq!(expand("tail $(A", &vars), "tail $(A");
    }

    #[test]
    fn field_refs() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u".into());
        pod.metadata.labels = Some([("app".to_string(), "w".to_string())].into());
        pod.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        });
        let facts = PodFacts {
            pod: &pod,
            pod_ip: "10.0.0.5",
            host_ip: "192.0.2.1",
        };
        let v = |p: &str| field_value(facts, p).unwrap();
        assert_eq!(v("metadata.name"), "web");
        assert_eq!(v("metadata.namespace"), "ns");
        assert_eq!(v("metadata.uid"), "u");
        assert_eq!(v("spec.nodeName"), "n1");
        assert_eq!(v("status.podIP"), "10.0.0.5");
        assert_eq!(v("status.hostIP"), "192.0.2.1");
        assert_eq!(v("metadata.labels['app']"), "w");
        assert!(field_value(facts, "spec.bogus").is_err());
    }
}
