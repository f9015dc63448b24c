//! `echo-upstream`'s WebSocket echo: the HTTP/1.1 upgrade handshake (RFC 6455 section 4.2)
//! and, once upgraded, every text or binary message sent back unchanged. tungstenite answers
//! pings with pongs and a close with a close.

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

/// Whether `req` asks for a WebSocket: HTTP/1.1 with `Upgrade: websocket` and `Connection`
/// naming `upgrade` (case-insensitive tokens).
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && has_token(req.headers(), UPGRADE, "websocket")
        && has_token(req.headers(), CONNECTION, "upgrade")
}

/// Answers a WebSocket upgrade request: `101` with the accept key (and the first subprotocol
/// offered, if any), then echoes on the upgraded connection; `400` when the request lacks a
/// `Sec-WebSocket-Key` or is not `Sec-WebSocket-Version: 13`. `x-upstream` is on either.
pub fn accept(mut req: Request<Incoming>, x_upstream: HeaderValue) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let key = headers.get(SEC_WEBSOCKET_KEY).filter(|k| !k.is_empty());
    let version_ok = headers.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let (Some(key), true) = (key, version_ok) else {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
        )));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut().insert("x-upstream", x_upstream);
        return resp;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
        .and_then(|p| HeaderValue::from_str(p).ok());

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // An upgrade that never happens is the client going away.
        if let Ok(upgraded) = on_upgrade.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            echo_messages(ws).await;
        }
    });

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = resp.headers_mut();
    out.insert(UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    // The accept key is base64: always a valid header value.
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        out.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        out.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    out.insert("x-upstream", x_upstream);
    resp
}

/// Sends every text and binary message back until the peer closes or the connection fails.
/// Reading on after a ping or a close lets tungstenite flush its pong or closing reply.
async fn echo_messages<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// Whether any `name` header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
