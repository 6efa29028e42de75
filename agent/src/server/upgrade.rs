//! Handing an upgrade request (SPDY or websocket) on to the runtime's streaming server and
//! splicing the two connections once both sides have switched protocols.
//!
//! The runtime serves `exec`, `attach` and `port-forward` sessions itself at a one-time URL
//! (CRI `Exec`/`Attach`/`PortForward`); the agent, like the kubelet's redirect-less mode, only
//! relays bytes. The session's protocol is negotiated end to end between the client and the
//! runtime from the request's own `Upgrade`, `X-Stream-Protocol-Version` and
//! `Sec-WebSocket-*` headers, so every protocol version the runtime speaks works unchanged.

use super::handler::{text, Body};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends `req`'s method and headers to the streaming `url` (`http://host:port/path`) and, when
/// the runtime switches protocols, answers `101` and relays bytes both ways until either side
/// closes. Any other answer of the runtime is passed back as it is.
pub async fn proxy<B>(mut req: Request<B>, url: &str) -> Response<Body> {
    let Some((authority, path)) = split_url(url) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime returned a streaming URL this agent cannot reach: {url}"),
        );
    };
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} the runtime's streaming server at {authority}: {err}"),
        )
    };
    let stream = match TcpStream::connect(authority).await {
        Ok(stream) => stream,
        Err(err) => return fail("connecting to", &err),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(err) => return fail("starting HTTP with", &err),
    };
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "streaming server connection ended with an error");
        }
    });
    let mut forwarded = Request::builder().method(req.method().clone()).uri(path);
    for (name, value) in req.headers() {
        // The request goes on without a body (an upgrade request has none), so its framing
        // headers must not promise one.
        if name != HOST && name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = forwarded
        .header(
            HOST,
            HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("localhost")),
        )
        .body(Empty::<Bytes>::new())
        .expect("method, path and copied headers make a valid request");
    let resp = match sender.send_request(forwarded).await {
        Ok(resp) => resp,
        Err(err) => return fail("sending the request to", &err),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        // The body is passed on whole, so its framing is the response's own again.
        parts.headers.remove(TRANSFER_ENCODING);
        parts.headers.remove(CONTENT_LENGTH);
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Response::from_parts(parts, Full::new(body).boxed_unsync());
    }
    let client_side = hyper::upgrade::on(&mut req);
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in resp.headers() {
        answer = answer.header(name, value);
    }
    tokio::spawn(async move {
        let (client, runtime) = match tokio::join!(client_side, hyper::upgrade::on(resp)) {
            (Ok(client), Ok(runtime)) => (client, runtime),
            (Err(err), _) | (_, Err(err)) => {
                tracing::debug!(%err, "a streaming session did not switch protocols");
                return;
            }
        };
        let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            tracing::debug!(%err, "a streaming session ended with an error");
        }
    });
    answer
        .body(Empty::new().boxed_unsync())
        .expect("copied headers make a valid response")
}

/// `("127.0.0.1:port", "/exec/token")` of a streaming URL; `None` for anything but plain
/// `http://` (the agent configures the runtime's streaming server without TLS on loopback).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() {
        return None;
    }
    Some((authority, if path.is_empty() { "/" } else { path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_plain_http_urls_only() {
        assert_eq!(
            split_url("http://127.0.0.1:4011/exec/AbC"),
            Some(("127.0.0.1:4011", "/exec/AbC"))
        );
        assert_eq!(split_url("http://[::1]:80"), Some(("[::1]:80", "/")));
        assert_eq!(split_url("https://127.0.0.1:4011/exec/AbC"), None);
        assert_eq!(split_url("http:///exec"), None);
    }
}
