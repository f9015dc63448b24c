//! A blocking HTTP client for tests. Every status is a response; a transport failure (refused,
//! reset, timed out) is a response with status 0 and the error in [`Resp::error`], so a test
//! can assert on either without matching on client error types. Redirects are not followed.

use std::io::Read;
use std::time::Duration;

/// How long one request may take before it counts as a transport failure.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// An HTTP response; header names are lower case.
#[derive(Debug, Clone, Default)]
pub struct Resp {
    /// 0 when no response arrived.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What went wrong when `status` is 0.
    pub error: Option<String>,
}

impl Resp {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).redirects(0).build()
}

/// One request with headers and an optional body.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    request_within(TIMEOUT, method, url, headers, body)
}

/// [`request`] with its own time limit.
pub fn request_within(
    timeout: Duration,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut req = agent(timeout).request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => read(r),
        Err(e) => Resp { error: Some(format!("{method} {url}: {e}")), ..Resp::default() },
    }
}

/// `GET url` with headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, None)
}

/// The `authorization` header value for a bearer token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn read(r: ureq::Response) -> Resp {
    let status = r.status();
    let headers = r
        .headers_names()
        .iter()
        .flat_map(|n| r.all(n).into_iter().map(move |v| (n.to_ascii_lowercase(), v.to_owned())))
        .collect();
    let mut body = Vec::new();
    let error = r.into_reader().read_to_end(&mut body).err().map(|e| format!("reading the body: {e}"));
    Resp { status, headers, body, error }
}
