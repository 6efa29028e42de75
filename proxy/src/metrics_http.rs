//! A minimal HTTP/1 endpoint for Prometheus text: every request, whatever its path, gets what
//! the render function returns. Shared by `netlet-proxy --metrics-bind` and `netlet-agent
//! --metrics-addr`; small on purpose (one resource, no keep-alive), so no HTTP server stack.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Produces the metrics text at request time.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers connections on `listener` with `render()` until `cancel` fires.
pub async fn serve(listener: TcpListener, render: Render, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Read the request head (ignored: there is only one resource).
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let body = render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_request_gets_the_rendered_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(|| "m 1\n".into()), cancel.clone()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nm 1\n"), "{out}");
        cancel.cancel();
        server.await.unwrap();
    }
}
