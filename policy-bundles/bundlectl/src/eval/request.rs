//! The request `bundlectl eval` describes, made canonical as the gateway makes a request it
//! receives before anything reads it (`http_canon`, with the gateway's default request rules:
//! escaped slashes and path parameters refused, header names with `_` dropped, the client not
//! a trusted proxy): the method, query, host and path; headers with two readings refused; the
//! headers the gateway removes removed; its own forwarding headers added on routes that want
//! them.

use http_canon::{PathRules, Refusal};
use policy_bundles::snapshot::Route;
use policy_bundles::Snapshot;

/// The request as routes, the bearer-token check and the rule read it.
pub struct Canonical {
    pub method: String,
    /// Canonical, without the query.
    pub path: String,
    pub query: Option<String>,
    /// The host name routes match (no port).
    pub host: String,
    /// Lower-case names, in the order given; `Host` is the canonical authority.
    pub headers: Vec<(String, String)>,
    /// Headers the gateway removes before anything reads them, and why.
    pub removed: Vec<(String, &'static str)>,
    /// The client sent an `X-Real-IP` (the gateway then sets its own).
    real_ip: bool,
}

impl Canonical {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The gateway's forwarding headers, on a route whose upstream wants them
    /// (`upstream_headers.forwarding`), for a client that is not a trusted proxy: its rule reads
    /// the request as the upstream will receive it.
    pub fn forward(&mut self, route: &Route, client_ip: &str, scheme: &str) {
        if !route.adds.forwarding {
            return;
        }
        let mut set = |name: &str, value: &str| {
            self.headers.retain(|(n, _)| n != name);
            self.headers.push((name.to_owned(), value.to_owned()));
        };
        set("x-forwarded-for", client_ip);
        if self.real_ip {
            set("x-real-ip", client_ip);
        }
        set("x-forwarded-proto", scheme);
    }
}

/// Makes the described request canonical, in the gateway's order; a refusal is what the
/// gateway answers (400, or 401 for a token in the query). `body_len` adds a `Content-Length`
/// when none was given.
pub fn canonicalize(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    https: bool,
    body_len: Option<usize>,
    snap: &Snapshot,
) -> Result<Canonical, Refusal> {
    http_canon::method(method)?;
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if let Some(q) = query {
        http_canon::query(q)?;
    }
    let mut headers = headers.to_vec();
    if !headers.iter().any(|(n, _)| n == "host") {
        headers.insert(0, ("host".into(), "localhost".into()));
    }
    let framed = headers.iter().any(|(n, _)| n == "content-length" || n == "transfer-encoding");
    if let Some(len) = body_len.filter(|_| !framed) {
        headers.push(("content-length".into(), len.to_string()));
    }
    scan(&headers)?;
    let hosts: Vec<&[u8]> = headers.iter().filter(|(n, _)| n == "host").map(|(_, v)| v.as_bytes()).collect();
    let host = http_canon::host(&hosts, None, true, if https { 443 } else { 80 })?.ok_or(Refusal::MissingHost)?;
    let path = http_canon::path(raw_path, PathRules::default())?.into_owned();
    for (_, v) in headers.iter_mut().filter(|(n, _)| n == "host") {
        *v = host.authority();
    }
    let real_ip = headers.iter().any(|(n, _)| n == "x-real-ip");
    let (kept, removed) = headers.into_iter().partition::<Vec<_>, _>(|(n, _)| removal(n, snap).is_none());
    let removed = removed.into_iter().filter_map(|(n, _)| removal(&n, snap).map(|why| (n, why))).collect();
    Ok(Canonical {
        method: method.to_owned(),
        path,
        query: query.map(str::to_owned),
        host: host.name,
        headers: kept,
        removed,
        real_ip,
    })
}

/// Refuses what has two readings, as the gateway does ([`http_canon::singles`]).
fn scan(headers: &[(String, String)]) -> Result<(), Refusal> {
    let mut singles = http_canon::singles::Singles::default();
    for (name, value) in headers {
        singles.see(name, value.as_bytes())?;
    }
    singles.check()
}

/// Why the gateway removes header `name` before anything reads it, if it does, with its default
/// request rules (`underscores: drop`) and the client not a trusted proxy
/// ([`http_canon::claims::removed`], the gateway's own rule).
fn removal(name: &str, snap: &Snapshot) -> Option<&'static str> {
    http_canon::claims::removed(name, &snap.header_removals, &snap.header_allowed, false, false).map(|r| r.why())
}
