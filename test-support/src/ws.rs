//! A blocking WebSocket client for tests: one HTTP/1.1 upgrade over plain TCP, one text
//! message out and its echo back; a refused upgrade is an `Err` that starts with the status
//! (`HTTP 401: ...`), so a test can assert on a gateway's refusal.

use std::net::TcpStream;
use std::time::Duration;

use tungstenite::client::IntoClientRequest as _;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::Message;

/// How long the connect, the handshake and each read or write may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url` (`ws://host:port/path`) with the extra request `headers`, sends `message`
/// as one text message and returns the first text message that comes back, then closes.
///
/// `Err` holds `HTTP <status>: <body>` when the server answered the upgrade with anything but
/// `101`, else what went wrong (connect, handshake, closed before an answer).
pub fn echo_once(url: &str, headers: &[(&str, &str)], message: &str) -> Result<String, String> {
    let mut request = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("header {name} value {value:?}: {e}"))?;
        request.headers_mut().append(name, value);
    }
    let stream = connect(request.uri())?;
    let (mut socket, _response) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            format!("HTTP {}: {}", resp.status().as_u16(), body.trim_end())
        }
        other => format!("WebSocket handshake with {url}: {other}"),
    })?;
    socket.send(Message::text(message)).map_err(|e| format!("sending: {e}"))?;
    let answer = loop {
        match socket.read().map_err(|e| match e {
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)
            | tungstenite::Error::ConnectionClosed => format!("{TORN_DOWN_AT_UPGRADE}: {e}"),
            e => format!("reading the echo: {e}"),
        })? {
            Message::Text(text) => break text.as_str().to_owned(),
            Message::Close(frame) => return Err(format!("closed before an echo: {frame:?}")),
            // Pings (answered by tungstenite), pongs, binary: not the echo.
            _ => {}
        }
    };
    // A polite close; the echo is what counts, so a failure here is not one.
    let _ = socket.close(None);
    let _ = socket.flush();
    Ok(answer)
}

/// How a [`exchange`] ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Messages that came back equal to what was sent.
    pub echoed: usize,
    /// The close code the server ended the connection with, if it sent a close frame.
    pub close: Option<u16>,
}

/// The start of [`exchange`]'s error when a tunnel ended without a word right after its `101`,
/// before anything went through: Pingora 0.9 tears an HTTP/1 upgrade down when it reads the
/// upstream's `101` before the upgrade request's own empty body end (cloudflare/pingora#946,
/// fixes proposed in #947 and #1016, none released). Tests retry that case, and only that one.
pub const TORN_DOWN_AT_UPGRADE: &str = "torn down right after the 101";

/// [`exchange`], tried again (up to `tries` times in all) only while the tunnel is
/// [`TORN_DOWN_AT_UPGRADE`]; the answer says how many tries it took.
pub fn exchange_retrying_pingora_946(
    url: &str,
    count: usize,
    size: usize,
    tries: usize,
) -> (Result<Exchange, String>, usize) {
    let mut tried = 0;
    loop {
        tried += 1;
        let done = exchange(url, count, size);
        match &done {
            Err(e) if e.starts_with(TORN_DOWN_AT_UPGRADE) && tried < tries => continue,
            _ => return (done, tried),
        }
    }
}

/// Connects to `url` and sends up to `count` binary messages of `size` bytes (each a
/// different pattern), reading each echo before sending the next. Stops at the first close
/// frame from the server; an echo that differs from what was sent, or anything else that is
/// not a WebSocket message (an HTTP answer written into the stream), is an `Err`.
pub fn exchange(url: &str, count: usize, size: usize) -> Result<Exchange, String> {
    let request = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
    let stream = connect(request.uri())?;
    let (mut socket, _) =
        tungstenite::client(request, stream).map_err(|e| format!("WebSocket handshake with {url}: {e}"))?;
    let mut echoed = 0;
    for i in 0..count {
        let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
        if let Err(e) = socket.send(Message::binary(payload.clone())) {
            return match socket.read() {
                Ok(Message::Close(frame)) => Ok(Exchange { echoed, close: frame.map(|f| u16::from(f.code)) }),
                _ => Err(format!("sending message {i}: {e}")),
            };
        }
        loop {
            let read = socket.read().map_err(|e| match e {
                tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)
                | tungstenite::Error::ConnectionClosed
                    if echoed == 0 =>
                {
                    format!("{TORN_DOWN_AT_UPGRADE}: {e}")
                }
                e => format!("reading echo {i} (after {echoed} echoes): {e}"),
            })?;
            match read {
                Message::Binary(b) if b.as_ref() == payload.as_slice() => break,
                Message::Binary(b) => return Err(format!("echo {i} differs: {} bytes", b.len())),
                Message::Close(frame) => return Ok(Exchange { echoed, close: frame.map(|f| u16::from(f.code)) }),
                Message::Text(t) => return Err(format!("text where echo {i} was due: {}", t.as_str())),
                _ => {}
            }
        }
        echoed += 1;
    }
    let _ = socket.close(None);
    let _ = socket.flush();
    Ok(Exchange { echoed, close: None })
}

fn connect(uri: &tungstenite::http::Uri) -> Result<TcpStream, String> {
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("{uri}: {e}"))?
        .next()
        .ok_or_else(|| format!("{uri}: no address"))?;
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    /// A server that answers the first request on its socket with `answer` and closes.
    fn answers_once(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(answer);
            }
        });
        format!("ws://{addr}/chat")
    }

    #[test]
    fn a_refused_upgrade_is_an_error_with_the_status_and_body() {
        let url = answers_once(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\ndenied\n");
        let err = echo_once(&url, &[("authorization", "Bearer x")], "hi").expect_err("refused");
        assert_eq!(err, "HTTP 403: denied");
    }

    #[test]
    fn a_bad_header_or_an_unreachable_server_is_an_error() {
        assert!(echo_once("ws://127.0.0.1:1/", &[("bad header", "v")], "hi").expect_err("bad").contains("header"));
        let port = crate::process::free_port();
        let err = echo_once(&format!("ws://127.0.0.1:{port}/"), &[], "hi").expect_err("nothing listens");
        assert!(err.starts_with("connecting to"), "{err}");
    }
}
