//! What the upstream receives beyond the canonical request: forwarding headers, the path without
//! the route's `strip_prefix`, and the query as the decision changed it.

use std::fmt::Write;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::prelude::*;

/// `X-Forwarded-For` and the rest, after [`HeaderRules::doomed`] removed a client's copies: from a trusted
/// proxy the peer is appended to `X-Forwarded-For` and `Forwarded` and the proxy's
/// `X-Real-IP` and `X-Forwarded-Proto` are kept; from anyone else they are the gateway's own.
/// A client's `X-Real-IP` is replaced with the peer; none is added where none was sent.
pub(super) fn forwarding(req: &mut RequestHeader, ip: &str, trusted: bool, real_ip: bool, scheme: &str) {
    let append = |req: &RequestHeader, name: &str, node: &str| -> Option<String> {
        let mut all = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).peekable();
        all.peek()?;
        Some(all.chain([node]).collect::<Vec<_>>().join(", "))
    };
    let xff = if trusted { append(req, "x-forwarded-for", ip) } else { None };
    let _ = req.insert_header("x-forwarded-for", xff.as_deref().unwrap_or(ip));
    if trusted {
        let node = if ip.contains(':') { format!("for=\"[{ip}]\"") } else { format!("for={ip}") };
        if let Some(fwd) = append(req, "forwarded", &node) {
            let _ = req.insert_header("forwarded", fwd);
        }
    } else if real_ip {
        let _ = req.insert_header("x-real-ip", ip);
    }
    if !trusted || !req.headers.contains_key("x-forwarded-proto") {
        let _ = req.insert_header("x-forwarded-proto", scheme);
    }
}

/// An IP address as text, as `Display` writes it; IPv4 by hand (the formatting machinery cost
/// about 1,300 instructions a request).
pub(super) fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push((b'0' + octet / 100) as char);
        }
        if octet >= 10 {
            out.push((b'0' + octet / 10 % 10) as char);
        }
        out.push((b'0' + octet % 10) as char);
    }
    out
}

/// `path` without the route's `strip_prefix`. The route table matched the prefix on whole
/// segments; under `path_params: keep` those segments may carry parameters (`/orders;v=1/7`
/// for the prefix `/orders`), and are then dropped by count, parameters and all.
pub(super) fn without_prefix<'p>(path: &'p str, prefix: &str) -> &'p str {
    match path.strip_prefix(prefix) {
        Some(rest) if !path.contains(';') => rest,
        _ => {
            let segments = prefix.split('/').filter(|s| !s.is_empty()).count();
            path.match_indices('/').nth(segments).map_or("", |(i, _)| &path[i..])
        }
    }
}

/// The URI with the decision's query changes: parameters named in `remove` dropped, those in
/// `set` replaced (every earlier value of the name goes) and appended, percent-encoded.
pub(super) fn with_query(
    uri: &http::Uri,
    set: &[(String, Vec<String>)],
    remove: &[String],
) -> std::result::Result<http::Uri, http::uri::InvalidUri> {
    let replaced = |name: &str| remove.iter().any(|r| r == name) || set.iter().any(|(k, _)| k == name);
    let mut out = uri.path().to_owned();
    let mut sep = '?';
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !replaced(&policy_bundles::input::decode(name)) {
            out.push(sep);
            out.push_str(pair);
            sep = '&';
        }
    }
    for (k, values) in set {
        for v in values {
            out.push(sep);
            let _ = write!(out, "{}={}", query_escape(k), query_escape(v));
            sep = '&';
        }
    }
    out.parse()
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn query_escape(s: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(s, NOT_UNRESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_stripped_by_whole_segments_parameters_and_all() {
        assert_eq!(without_prefix("/orders/7", "/orders"), "/7");
        assert_eq!(without_prefix("/orders", "/orders"), "");
        assert_eq!(without_prefix("/orders;v=1/7", "/orders"), "/7");
        assert_eq!(without_prefix("/api;x/v1;y/items", "/api/v1"), "/items");
        assert_eq!(without_prefix("/orders;v=1", "/orders"), "");
    }

    #[test]
    fn query_changes_are_encoded_and_replace_every_earlier_value() {
        let uri: http::Uri = "/p?a=1&b=2&a=3&c=%20".parse().expect("uri");
        let set = vec![("a".to_owned(), vec!["x y".to_owned(), "é/&".to_owned()])];
        let out = with_query(&uri, &set, &["c".to_owned()]).expect("uri");
        assert_eq!(out.to_string(), "/p?b=2&a=x%20y&a=%C3%A9%2F%26");
    }

    #[test]
    fn ip_text_writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.0.100.9",
            "192.168.1.100",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("an IP");
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in (0..=u32::MAX).step_by(7_919_993) {
            let ip = std::net::IpAddr::V4(n.into());
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
