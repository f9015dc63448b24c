//! The request made canonical in place before anything reads it: the path and host the route
//! table matches, the policy sees and the upstream receives are the same bytes (`http_canon`);
//! ambiguous framing and duplicate identity headers refused; headers the gateway does not
//! believe removed; forwarding headers the gateway's own, on the routes that want them.

use std::sync::Arc;

use pingora::prelude::*;

use super::forwarding::forwarding;
use http_canon::{self as canon, Refusal};

/// What the connection under a request is: TLS (with the certificate its SNI chose) or not.
pub(super) struct Link {
    /// The certificate the connection's SNI chose; None on plaintext.
    pub(super) tls: Option<Arc<crate::tls::Certificate>>,
}

impl Link {
    pub(super) fn of(session: &Session) -> Link {
        let conn =
            session.digest().and_then(|d| d.ssl_digest.as_ref()).and_then(|s| s.extension.get::<crate::tls::Conn>());
        Link { tls: conn.map(|c| c.certificate.clone()) }
    }

    pub(super) fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls.is_some() {
            443
        } else {
            80
        }
    }
}

/// Makes the request canonical in place (`http_canon`), before routing: the path and host
/// the route table matches, the policy sees and the upstream receives; identity headers
/// (`request_headers.remove`) and header names with `_` removed; forwarding headers removed
/// unless the peer is a trusted proxy (the gateway's own are added once the route is known:
/// [`Canonical::forward`]).
pub(super) fn canonicalize(
    session: &mut Session,
    bundle: &policy_bundles::Snapshot,
    rules: &crate::config::RequestRules,
    peer: Option<std::net::IpAddr>,
    link: &Link,
) -> std::result::Result<Canonical, Refusal> {
    let req = session.req_header_mut();
    canon::method(req.method.as_str())?;
    if let Some(q) = req.uri.query() {
        canon::query(q)?;
    }
    let trusted = peer.is_some_and(|ip| rules.trusts(ip));
    let headers = HeaderRules { removals: &bundle.header_removals, allowed: &bundle.header_allowed, rules, trusted };
    let seen = Scan::of(&req.headers, &headers)?;
    // HTTP/2's `:authority` is the URI's; HTTP/1.1's absolute form is kept only in the raw target.
    let absolute = match req.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => canon::target_authority(req.raw_path())?,
    };
    let absolute_form = absolute.is_some();
    let http11 = req.version != http::Version::HTTP_10 && req.version != http::Version::HTTP_09;
    let host = canon::host(seen.host.as_slice(), absolute, http11, link.default_port())?;
    // On TLS the host must be one the connection's certificate covers: no fronting one
    // tenant's name through a connection made (SNI) for another's.
    if let (Some(cert), Some(h)) = (&link.tls, &host) {
        if !cert.covers(&h.name) {
            return Err(Refusal::Misdirected);
        }
    }
    let set_host = host.as_ref().filter(|h| !seen.host.is_some_and(|raw| h.is(raw))).map(canon::Host::authority);
    let (doomed_any, real_ip) = (seen.doomed, seen.real_ip);
    let path = canon::path(req.uri.path(), rules.path)?;
    // Origin form, canonical path: also drops an absolute-form target's scheme and authority.
    if matches!(path, std::borrow::Cow::Owned(_)) || absolute_form {
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let uri = target.parse::<http::Uri>().map_err(|_| Refusal::BadPathChar)?;
        req.set_uri(uri);
    }
    if let Some(authority) = set_host {
        req.insert_header(http::header::HOST, authority).map_err(|_| Refusal::BadHost)?;
    }
    if doomed_any {
        let doomed: Vec<http::HeaderName> =
            req.headers.keys().filter(|n| headers.doomed(n.as_str())).cloned().collect();
        for n in &doomed {
            req.remove_header(n);
        }
    }
    Ok(Canonical { host: host.map(|h| h.name).unwrap_or_default(), trusted, real_ip })
}

/// A canonical request's host, and what adding the forwarding headers needs to know of it.
pub(super) struct Canonical {
    /// The host name routes match (`""` for an HTTP/1.0 request without one).
    pub(super) host: String,
    trusted: bool,
    /// The client sent an `X-Real-IP`.
    real_ip: bool,
}

impl Canonical {
    /// Adds the gateway's forwarding headers for a route that wants them (`upstream_headers.
    /// forwarding`, on by default), before its rule reads the request.
    pub(super) fn forward(&self, session: &mut Session, ip: &str, link: &Link) {
        forwarding(session.req_header_mut(), ip, self.trusted, self.real_ip, link.scheme());
    }
}

/// What one pass over the request's headers found.
struct Scan<'a> {
    host: Option<&'a [u8]>,
    /// Some header must be removed ([`HeaderRules::doomed`]).
    doomed: bool,
    real_ip: bool,
}

impl<'a> Scan<'a> {
    /// Reads every header once. Refuses what has two readings: more than one `Host` or
    /// `Authorization`; more than one `Content-Length`, or one that is not a number; a
    /// `Transfer-Encoding` other than exactly `chunked`, or beside a length (request
    /// smuggling). `Content-Length` beside `Transfer-Encoding` rarely gets here: Pingora
    /// removes the length and closes the connection after the response, as RFC 9112 6.3 says.
    fn of(headers: &'a http::HeaderMap, rules: &HeaderRules) -> std::result::Result<Scan<'a>, Refusal> {
        let mut scan = Scan { host: None, doomed: false, real_ip: false };
        let mut singles = http_canon::singles::Singles::default();
        for (name, value) in headers {
            let n = name.as_str();
            if singles.see(n, value.as_bytes())? {
                match n {
                    "host" => scan.host = Some(value.as_bytes()),
                    // A bundle may keep credentials from its backends: removed before anything reads them.
                    "authorization" => scan.doomed |= rules.removals.iter().any(|r| r == "authorization"),
                    _ => {}
                }
                continue;
            }
            scan.real_ip |= n == "x-real-ip";
            if rules.doomed(n) {
                if rules.rules.underscores == crate::config::Underscores::Reject && n.contains('_') {
                    return Err(Refusal::UnderscoreHeader);
                }
                scan.doomed = true;
            }
        }
        singles.check()?;
        Ok(scan)
    }
}

/// Which client headers never reach the policy or the upstream as sent: the gateway config's
/// rules, the bundle's `request_headers`, and whether the peer is a trusted proxy.
struct HeaderRules<'a> {
    removals: &'a [String],
    allowed: &'a [String],
    rules: &'a crate::config::RequestRules,
    trusted: bool,
}

impl HeaderRules<'_> {
    /// Whether header `n` must go: a name with `_` (unless allowed), one of the bundle's
    /// `request_headers.remove`, a forwarding or client-address claim from a peer that is not a
    /// trusted proxy (the gateway sets its own), or a target or method override from anyone
    /// (`policy_bundles::claims`), unless the bundle's `request_headers.allow` names it.
    fn doomed(&self, n: &str) -> bool {
        let underscores = self.rules.underscores == crate::config::Underscores::Allow;
        http_canon::claims::removed(n, self.removals, self.allowed, underscores, self.trusted).is_some()
    }
}
