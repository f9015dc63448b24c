//! Talking to control-api: one agent with timeouts, the token, bounded answers, and the
//! server's own message when it refuses.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::cli::Remote;

pub(crate) const MAX_ANSWER: u64 = 512 << 20;

pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

/// Sends a request; an error status becomes an error carrying the server's message.
pub(crate) fn call(
    req: ureq::Request,
    remote: &Remote,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (code, text) = send(req, remote, body)?;
    let json = if text.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text)? };
    Ok((code, json))
}

/// [`call`], answering the body as text.
pub(crate) fn send(req: ureq::Request, remote: &Remote, body: Option<&[u8]>) -> anyhow::Result<(u16, String)> {
    let req = match &remote.token {
        Some(t) => req.set("authorization", &format!("Bearer {t}")),
        None => req,
    };
    let url = req.url().to_owned();
    let result = match body {
        Some(b) => req.set("content-type", "application/gzip").send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            bail!("{url}: HTTP {code}: {}", server_message(&text));
        }
        Err(e) => bail!("{url}: {e}"),
    };
    let code = resp.status();
    // Not `into_string`, which stops at 10 MiB: 10,000 logged events can be more.
    let mut text = String::new();
    resp.into_reader()
        .take(MAX_ANSWER)
        .read_to_string(&mut text)
        .with_context(|| format!("{url}: reading the answer"))?;
    Ok((code, text))
}

/// The server's explanation: its `errors` list (file:line: message), `error`, or the raw body.
pub(crate) fn server_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return body.trim().to_owned() };
    if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| {
                let file = e.get("file").and_then(|f| f.as_str());
                let line = e.get("line").and_then(|l| l.as_u64());
                let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                match (file, line) {
                    (Some(f), Some(l)) => format!("{f}:{l}: {msg}"),
                    (Some(f), None) => format!("{f}: {msg}"),
                    _ => msg.to_owned(),
                }
            })
            .collect();
        return format!("bundle refused:\n  {}", lines.join("\n  "));
    }
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => e.to_owned(),
        None => body.trim().to_owned(),
    }
}

pub(crate) fn bundle_url(remote: &Remote, name: &str) -> String {
    format!("{}/v1/bundles/{name}", remote.server.trim_end_matches('/'))
}

/// What a path segment keeps as it is (RFC 3986's unreserved characters); the rest is escaped,
/// so that a revision named `../x` or `a/b` stays one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `GET /v1/bundles/{name}/revisions/{revision}`: that revision's tarball (read scope), at most
/// [`MAX_ANSWER`] bytes; an error status becomes an error carrying the server's message.
pub(crate) fn fetch_revision(name: &str, revision: &str, remote: &Remote) -> anyhow::Result<Vec<u8>> {
    let url = format!("{}/revisions/{}", bundle_url(remote, name), utf8_percent_encode(revision, SEGMENT));
    let mut req = agent().get(&url);
    if let Some(t) = &remote.token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => {
            let mut bytes = Vec::new();
            r.into_reader()
                .take(MAX_ANSWER)
                .read_to_end(&mut bytes)
                .with_context(|| format!("{url}: reading the answer"))?;
            Ok(bytes)
        }
        Err(ureq::Error::Status(code, r)) => {
            bail!("{url}: HTTP {code}: {}", server_message(&r.into_string().unwrap_or_default()))
        }
        // A transport error names the URL itself.
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
