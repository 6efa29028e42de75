//! Parsing resource URLs: `/api/v1[/watch]/namespaces/<ns>/<resource>[/<name>[/<sub>]]` and the
//! `/apis/<group>/<version>/…` equivalents.

use super::resources::{find, Resource};

/// A subresource addressed by the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `…/status`.
    Status,
    /// `…/scale`.
    Scale,
    /// `pods/<name>/binding` (and the `bindings` collection): assigning a pod to a node.
    Binding,
    /// `pods/<name>/eviction`: a delete that disruption budgets may refuse.
    Eviction,
    /// `pods/<name>/log`: the container log, proxied from the node's agent.
    Log,
    /// `pods/<name>/exec`: a command in a container, an upgraded stream relayed to the node.
    Exec,
    /// `pods/<name>/attach`: the streams of a container's main process, likewise.
    Attach,
    /// `pods/<name>/portforward`: TCP into the pod's network namespace, likewise.
    PortForward,
    /// `serviceaccounts/<name>/token`: a TokenRequest for a service account token.
    Token,
}

/// A parsed resource URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The resource from the table.
    pub resource: &'static Resource,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object name, if any.
    pub name: Option<String>,
    /// The subresource, if any.
    pub subresource: Option<Subresource>,
    /// Whether the path had the legacy `/watch/` prefix.
    pub watch_path: bool,
}

/// The outcome of parsing a resource path.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A resource URL.
    Target(Target),
    /// A known group/version but an unknown resource or subresource, or a malformed path.
    NotFound,
}

/// Parses `segments` after `/api/v1` or `/apis/<group>/<version>`.
pub fn parse(group: &str, version: &str, segments: &[&str]) -> Parsed {
    let (watch_path, segs) = match segments.split_first() {
        Some((&"watch", rest)) => (true, rest),
        _ => (false, segments),
    };
    let (namespace, rest) = match segs {
        ["namespaces", ns, resource, rest @ ..]
            if *resource != "status" && *resource != "finalize" =>
        {
            (Some((*ns).to_string()), {
                let mut v = vec![*resource];
                v.extend_from_slice(rest);
                v
            })
        }
        _ => (None, segs.to_vec()),
    };
    let Some(plural) = rest.first() else {
        return Parsed::NotFound;
    };
    // The core `bindings` collection: POST a Binding named after the pod it binds.
    if (group, version, *plural) == ("", "v1", "bindings") {
        return match (namespace, rest.len(), find("", "v1", "pods")) {
            (Some(namespace), 1, Some(pods)) => Parsed::Target(Target {
                resource: pods,
                namespace: Some(namespace),
                name: None,
                subresource: Some(Subresource::Binding),
                watch_path,
            }),
            _ => Parsed::NotFound,
        };
    }
    let Some(resource) = find(group, version, plural) else {
        return Parsed::NotFound;
    };
    if namespace.is_some() && !resource.namespaced {
        return Parsed::NotFound;
    }
    let name = rest.get(1).map(|s| (*s).to_string());
    if name.as_deref() == Some("") {
        return Parsed::NotFound;
    }
    let subresource = match rest.get(2) {
        None => None,
        Some(&"status") if resource.status => Some(Subresource::Status),
        Some(&"scale") if resource.scale => Some(Subresource::Scale),
        Some(&"binding") if is_core_pods(resource) => Some(Subresource::Binding),
        Some(&"eviction") if is_core_pods(resource) => Some(Subresource::Eviction),
        Some(&"log") if is_core_pods(resource) => Some(Subresource::Log),
        Some(&"exec") if is_core_pods(resource) => Some(Subresource::Exec),
        Some(&"attach") if is_core_pods(resource) => Some(Subresource::Attach),
        Some(&"portforward") if is_core_pods(resource) => Some(Subresource::PortForward),
        Some(&"token") if resource.is_in("", "v1") && resource.plural == "serviceaccounts" => {
            Some(Subresource::Token)
        }
        Some(_) => return Parsed::NotFound,
    };
    if rest.len() > 3 {
        return Parsed::NotFound;
    }
    Parsed::Target(Target {
        resource,
        namespace,
        name,
        subresource,
        watch_path,
    })
}

fn is_core_pods(resource: &Resource) -> bool {
    resource.is_in("", "v1") && resource.plural == "pods"
}

/// The storage key prefix of a collection (`/registry/<resource>/[<ns>/]`).
pub fn collection_prefix(resource: &Resource, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if resource.namespaced => format!("/registry/{}/{ns}/", resource.plural),
        _ => format!("/registry/{}/", resource.plural),
    }
}

/// The storage key of one object.
pub fn object_key(resource: &Resource, namespace: Option<&str>, name: &str) -> String {
    format!("{}{name}", collection_prefix(resource, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(g: &str, v: &str, path: &str) -> Parsed {
        let segs: Vec<&str> = path.split('/').collect();
        parse(g, v, &segs)
    }

    #[test]
    fn parses_collections_objects_and_subresources() {
        let Parsed::Target(t) = target("", "v1", "namespaces/t1/pods/p/status") else {
            panic!()
        };
        assert_eq!(t.resource.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("t1"));
        assert_eq!(t.name.as_deref(), Some("p"));
        assert_eq!(t.subresource, Some(Subresource::Status));

        let Parsed::Target(t) = target("", "v1", "namespaces/t1") else {
            panic!()
        };
        assert_eq!(t.resource.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("t1"));

        let Parsed::Target(t) = target("", "v1", "namespaces/t1/status") else {
            panic!()
        };
        assert_eq!(t.subresource, Some(Subresource::Status));

        let Parsed::Target(t) = target("apps", "v1", "watch/namespaces/d/deployments") else {
            panic!()
        };
        assert!(t.watch_path && t.name.is_none());

        let Parsed::Target(t) = target("", "v1", "namespaces/t1/pods/p/binding") else {
            panic!()
        };
        assert_eq!(t.subresource, Some(Subresource::Binding));
        let Parsed::Target(t) = target("", "v1", "namespaces/t1/bindings") else {
            panic!()
        };
        assert_eq!(
            (t.resource.plural, t.name, t.subresource),
            ("pods", None, Some(Subresource::Binding))
        );
        assert_eq!(target("", "v1", "bindings"), Parsed::NotFound);
        assert_eq!(
            target("", "v1", "namespaces/t1/bindings/p"),
            Parsed::NotFound
        );
        let Parsed::Target(t) = target("", "v1", "namespaces/t1/pods/p/eviction") else {
            panic!()
        };
        assert_eq!(t.subresource, Some(Subresource::Eviction));
        assert_eq!(
            target("", "v1", "namespaces/t1/configmaps/c/binding"),
            Parsed::NotFound
        );

        assert_eq!(target("", "v1", "namespaces/t1/nodes"), Parsed::NotFound);
        assert_eq!(target("", "v1", "configmaps/a/status"), Parsed::NotFound);
        assert_eq!(target("", "v1", "widgets"), Parsed::NotFound);
    }

    #[test]
    fn keys() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(object_key(pods, Some("n"), "p"), "/registry/pods/n/p");
        assert_eq!(collection_prefix(pods, None), "/registry/pods/");
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(object_key(nodes, None, "a"), "/registry/nodes/a");
    }
}
