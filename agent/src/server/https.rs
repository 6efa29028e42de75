//! The node API on HTTPS (kubelet's port 10250), the way the apiserver reaches agents it can
//! route to.
//!
//! Authentication is the client certificate, which rustls has already checked against the
//! cluster CA (`tls.rs`). Authorisation: members of `system:masters` (the apiserver's kubelet
//! client certificate, and admins) may use every path. Kubelet asks the apiserver per request
//! (SubjectAccessReview); this control plane has no authorisation API, so the group is the
//! rule. No certificate → 401, another identity → 403, both as plain text like the other errors.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::StatusCode;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::handler::{self, Handler};

/// The group allowed to use the node API.
pub const ALLOWED_GROUP: &str = "system:masters";

/// The answer every request on a connection gets when its client may not use the node API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 401 or 403.
    pub code: StatusCode,
    /// Why.
    pub message: String,
}

/// Who `peer` (the verified client chain, leaf first) is, and whether it may use the node API.
pub fn authorize(peer: Option<&[CertificateDer<'_>]>) -> Result<(), Denial> {
    let Some(leaf) = peer.and_then(<[_]>::first) else {
        return Err(Denial {
            code: StatusCode::UNAUTHORIZED,
            message: "Unauthorized: the node API needs a client certificate signed by the \
                      cluster CA"
                .to_string(),
        });
    };
    let (user, groups) = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => {
            fn strings<'a>(
                it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
            ) -> Vec<String> {
                it.filter_map(|a| a.as_str().ok().map(str::to_string))
                    .collect()
            }
            let subject = cert.subject();
            (
                strings(subject.iter_common_name()).join(","),
                strings(subject.iter_organization()),
            )
        }
        Err(_) => (String::new(), Vec::new()),
    };
    if groups.iter().any(|g| g == ALLOWED_GROUP) {
        return Ok(());
    }
    Err(Denial {
        code: StatusCode::FORBIDDEN,
        message: format!(
            "Forbidden (user={user}, groups={groups:?}): the node API admits only {ALLOWED_GROUP}"
        ),
    })
}

/// Serves `handler` over TLS on `listener` until `cancel` fires; each connection runs on its
/// own task and a failed handshake ends only that connection.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Handler,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accepting a node API connection");
                    continue;
                }
            },
        };
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "node API TLS handshake failed");
                    return;
                }
            };
            let verdict = authorize(stream.get_ref().1.peer_certificates());
            if let Err(denial) = &verdict {
                tracing::info!(%peer, code = denial.code.as_u16(), message = %denial.message, "node API request refused");
            }
            handler::serve_connection(stream, handler, verdict.err()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(cn: &str, org: Option<&str>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn masters_may_others_are_told_who_they_are_and_anonymous_is_unauthorized() {
        let apiserver = cert("kube-apiserver-kubelet-client", Some(ALLOWED_GROUP));
        assert_eq!(authorize(Some(&[apiserver])), Ok(()));

        let node = cert("system:node:n1", Some("system:nodes"));
        let denied = authorize(Some(&[node])).unwrap_err();
        assert_eq!(denied.code, StatusCode::FORBIDDEN);
        assert!(
            denied.message.contains("user=system:node:n1")
                && denied.message.contains("system:nodes"),
            "{}",
            denied.message
        );

        assert_eq!(authorize(None).unwrap_err().code, StatusCode::UNAUTHORIZED);
        assert_eq!(
            authorize(Some(&[])).unwrap_err().code,
            StatusCode::UNAUTHORIZED
        );
    }
}
