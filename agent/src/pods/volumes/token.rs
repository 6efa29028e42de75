//! Service account tokens of projected volumes (`serviceAccountToken` sources, such as the
//! `kube-api-access-…` volume every pod gets): requested from the apiserver's TokenRequest API
//! bound to the pod, kept per pod, audience and lifetime, and renewed once 80 % of the
//! lifetime has passed or the token is a day old, as the kubelet's token manager does. The
//! volume refresh that runs every few seconds therefore costs no request until then.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::api::PostParams;
use kube::{Api, Client};

use super::VolumeError;

/// Lifetime asked for when the projection names none, as in Kubernetes.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token older than this is renewed whatever its lifetime.
const MAX_AGE_SECONDS: i64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    service_account: String,
    pod_uid: String,
    audience: String,
    expiration: i64,
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    /// Unix seconds when it was received.
    issued: i64,
    /// Unix seconds when it expires.
    expires: i64,
}

/// Whether a token issued at `issued` and expiring at `expires` should be renewed at `now`.
fn needs_renewal(now: i64, issued: i64, expires: i64) -> bool {
    let ttl = (expires - issued).max(0);
    now >= issued + ttl * 8 / 10 || now - issued > MAX_AGE_SECONDS
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The tokens of this node's pods.
#[derive(Debug, Default)]
pub struct ServiceAccountTokens {
    cache: Mutex<HashMap<Key, Cached>>,
}

impl ServiceAccountTokens {
    /// The token for `source` of `pod`'s `volume`: the cached one while it is fresh, else a new
    /// one bound to the pod.
    pub async fn token(
        &self,
        client: &Client,
        pod: &Pod,
        source: &ServiceAccountTokenProjection,
        volume: &str,
    ) -> Result<String, VolumeError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = Key {
            namespace,
            service_account,
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            audience: source.audience.clone().unwrap_or_default(),
            expiration: source
                .expiration_seconds
                .unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        };
        let now = now_seconds();
        if let Some(c) = self.lock().get(&key) {
            if !needs_renewal(now, c.issued, c.expires) {
                return Ok(c.token.clone());
            }
        }
        let fresh = request(client, pod, &key)
            .await
            .map_err(|source| VolumeError::Token {
                volume: volume.to_string(),
                namespace: key.namespace.clone(),
                service_account: key.service_account.clone(),
                source: Box::new(source),
            })?;
        let token = fresh.token.clone();
        self.lock().insert(key, fresh);
        Ok(token)
    }

    /// Drops the tokens of pod `uid` (it is gone from the node).
    pub fn forget(&self, uid: &str) {
        self.lock().retain(|k, _| k.pod_uid != uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Asks the apiserver for a token of `key` bound to `pod`.
async fn request(client: &Client, pod: &Pod, key: &Key) -> Result<Cached, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &key.namespace);
    let body = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!key.audience.is_empty()).then(|| vec![key.audience.clone()]),
            expiration_seconds: Some(key.expiration),
            bound_object_ref: Some(BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = now_seconds();
    let answer: TokenRequest = api
        .create_subresource("token", &key.service_account, &PostParams::default(), &body)
        .await?;
    let status = answer.status.unwrap_or_default();
    // A missing expiry counts as expired: the next refresh asks again.
    let expires = status.expiration_timestamp.map_or(0, |t| t.0.as_second());
    Ok(Cached {
        token: status.token.unwrap_or_default(),
        issued,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_after_eighty_percent_or_a_day() {
        let t0 = 1_000_000;
        assert!(!needs_renewal(t0, t0, t0 + 3600));
        assert!(!needs_renewal(t0 + 2879, t0, t0 + 3600));
        assert!(needs_renewal(t0 + 2880, t0, t0 + 3600));
        // A year-long token is still renewed daily.
        let year = 365 * 24 * 3600;
        assert!(!needs_renewal(t0 + 3600, t0, t0 + year));
        assert!(needs_renewal(t0 + 24 * 3600 + 1, t0, t0 + year));
        // An answer without an expiry is renewed at once.
        assert!(needs_renewal(t0, t0, 0));
    }
}
