//! The HTTPS listener: TLS handshakes, HTTP/1.1 and HTTP/2 connections, the authentication
//! verdict per connection, and periodic compaction of storage history.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::identity::Identity;
use super::router::Router;
use crate::storage::Storage;

/// Serves the API on `listener` until the process ends.
///
/// Each connection is handled on its own task; a failed handshake or broken connection only
/// ends that connection.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
            };
            // The verifier only lets through certificates that chain to the CA, so any peer
            // certificate here is an authenticated admin; other requests may still carry a
            // bearer token, checked per request by the router.
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| Identity::from_certificate(c))
                .map(Arc::new);
            let service = service_fn(move |req| {
                let router = router.clone();
                let user = user.clone();
                async move { Ok::<_, std::convert::Infallible>(router.handle(req, user).await) }
            });
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}

/// Every `interval`, compacts storage to the revision seen one interval earlier (the
/// apiserver's scheme: watchers get at least one interval to catch up).
pub async fn compact_periodically(storage: Arc<dyn Storage>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut previous = 0;
    loop {
        ticker.tick().await;
        if previous > 0 {
            match storage.compact(previous).await {
                Ok(()) => tracing::debug!(revision = previous, "compacted"),
                Err(err) => tracing::debug!(%err, "compaction skipped"),
            }
        }
        match storage.current_revision().await {
            Ok(rev) => previous = rev,
            Err(err) => tracing::warn!(%err, "reading the current revision"),
        }
    }
}
