//! The gateway's own answers: a small JSON body (or a deny's own body), a gRPC status for gRPC
//! callers, a WebSocket close frame for a tunnel it ends, and the lingering close after an
//! early 413.

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use super::Ctx;

/// How much of a refused body is read and thrown away after a 413, and for how long.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// After answering before the body was read (a 413), reads and discards what the client is
/// still sending, up to [`LINGER_BYTES`] within [`LINGER_TIME`] (nginx's lingering close): a
/// socket closed with unread data sends a reset, and a client still writing its body then loses
/// the 413 to `connection reset` or `broken pipe`. Past either bound the connection just closes.
pub(super) async fn linger(session: &mut Session) {
    let drain = async {
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Writes the gateway's own answer (a small JSON body; for gRPC, a gRPC status) and ends the request.
pub(super) async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    error: &str,
    reason: Option<&str>,
    extra: &[(String, String)],
) -> Result<()> {
    if ctx.logging {
        ctx.reason = reason.map(str::to_owned);
    }
    if ctx.grpc {
        return respond_grpc(session, ctx, status, reason.unwrap_or(error), extra).await;
    }
    let body = match reason {
        Some(r) => serde_json::json!({ "error": error, "reason": r }),
        None => serde_json::json!({ "error": error }),
    };
    let body = Bytes::from(body.to_string());
    let mut resp = own_head(ctx, status, 5 + extra.len())?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    for (k, v) in extra {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    send(session, resp, body).await
}

/// A response head of the gateway's own, with the request's `x-request-id` and, when the
/// decision is logged, its `x-decision-id`.
fn own_head(ctx: &Ctx, status: u16, headers: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(headers))?;
    resp.insert_header("x-request-id", ctx.id.as_ref().map(crate::trace::RequestId::id).unwrap_or_default())?;
    if let Some(p) = &ctx.decision_log {
        resp.insert_header("x-decision-id", p.decision_id.as_str())?;
    }
    Ok(resp)
}

async fn send(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Answers with a deny's own body (OPA-Envoy's `body`): `text/plain` unless the decision's
/// headers say otherwise.
pub(super) async fn respond_body(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: &str,
    extra: &[(String, String)],
) -> Result<()> {
    let body = Bytes::from(body.to_owned());
    let mut resp = own_head(ctx, status, 4 + extra.len())?;
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        resp.append_header(k.clone(), v.as_str())?;
    }
    send(session, resp, body).await
}

/// Answers a gRPC call: a gRPC client reads `grpc-status`, not the HTTP status, so the answer
/// is "trailers-only" (HTTP 200, one header block that ends the stream) with the status the
/// HTTP one maps to and the reason as `grpc-message`.
async fn respond_grpc(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    message: &str,
    extra: &[(String, String)],
) -> Result<()> {
    let mut resp = own_head(ctx, 200, 6 + extra.len())?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", grpc_status(status).to_string())?;
    resp.insert_header("grpc-message", grpc_message(message))?;
    for (k, v) in extra {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    if session.req_header().version != http::Version::HTTP_2 {
        resp.insert_header("content-length", "0")?;
    }
    // Not `write_response_header`: on h2 it never ends the stream with the headers, and a
    // gRPC client reads a status in headers only from a block that does.
    let header = pingora::protocols::http::HttpTask::Header(Box::new(resp), true);
    session.response_duplex_vec(vec![header]).await.map(|_| ())
}

/// gRPC's mapping of HTTP statuses (doc/http-grpc-status-mapping.md), with 401 and 403 as the
/// statuses they mean: UNAUTHENTICATED and PERMISSION_DENIED.
fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 13, // INTERNAL
        401 => 16, // UNAUTHENTICATED
        403 => 7,  // PERMISSION_DENIED
        404 => 12, // UNIMPLEMENTED
        // A rate limit is RESOURCE_EXHAUSTED, as Envoy's `rate_limited_as_resource_exhausted`
        // makes it: gRPC clients retry UNAVAILABLE at once, and read no `Retry-After`.
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502..=504 => 14, // UNAVAILABLE
        _ => 2,          // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

fn grpc_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

/// The error a tunnel past `limits.tunnel_max_bytes` fails with.
pub(super) const TUNNEL_LIMIT: ErrorType = ErrorType::Custom("tunnel_max_bytes");

/// Closes a failed WebSocket tunnel the way its client understands: a close frame (RFC 6455
/// 5.5.1, unmasked from the server side) with 1009 "message too big" past
/// `limits.tunnel_max_bytes`, 1011 "internal error" when the upstream side failed. Called only
/// between two of the upstream's frames (`ws_frames`); a tunnel of another protocol, or one cut
/// inside a frame, is closed without a word.
pub(super) async fn close_tunnel(session: &mut Session, e: &Error) {
    let websocket = session
        .req_header()
        .headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return;
    }
    let (code, reason): (u16, &[u8]) =
        if e.etype() == &TUNNEL_LIMIT { (1009, b"tunnel byte limit") } else { (1011, b"upstream failed") };
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    if let Err(err) = session.write_response_body(Some(Bytes::from(frame)), true).await {
        tracing::debug!(error = %err, "cannot send the WebSocket close frame");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_escape_non_printable_bytes_and_percent() {
        assert_eq!(grpc_message("no route"), "no route");
        assert_eq!(grpc_message("100% é\n"), "100%25 %C3%A9%0A");
        assert_eq!(grpc_status(401), 16);
        assert_eq!(grpc_status(503), 14);
        assert_eq!(grpc_status(429), 8);
    }
}
