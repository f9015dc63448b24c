//! Claim headers: what popular backend frameworks read as the request's scheme, host, client
//! address, path or method (Rack, Spring's `ForwardedHeaderFilter`, Werkzeug's `ProxyFix`,
//! Django's `USE_X_FORWARDED_*`, Symfony, IIS URL Rewrite, ASP.NET's forwarded headers). The
//! gateway owns those facts, so a client's copy never reaches a backend (DESIGN.md, "What the
//! backend receives"), unless the bundle names it in `request_headers.allow`.

/// Which rule a claim header follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Scheme, host, port, prefix and client-address claims: kept from a peer in
    /// `trusted_proxies` (a proxy that sets them), removed from anyone else.
    Forwarding,
    /// Request-target and method overrides: removed from every peer, trusted or not, since a
    /// proxy passes its own client's copy along and the policy never sees what they override.
    Override,
}

/// Why a client's header is removed before the policy or the upstream reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The bundle's `request_headers.remove` names it.
    Bundle,
    /// A claim header ([`claim`]): an override from anyone, a forwarding claim from a peer that
    /// is not a trusted proxy; unless the bundle's `request_headers.allow` names it.
    Claim,
    /// A name with `_`, which some frameworks read as `-` (unless the gateway allows them).
    Underscore,
}

impl Removed {
    /// In words, for tools that list what was removed.
    pub fn why(self) -> &'static str {
        match self {
            Removed::Bundle => "the bundle's request_headers.remove",
            Removed::Claim => "a forwarding or override header from a client that is not a trusted proxy",
            Removed::Underscore => "a name with `_` (the gateway's default `underscores: drop`)",
        }
    }
}

/// Whether the gateway removes the client's header `name` (lower case), and why: the one rule
/// of the gateway's header scan and of `bundlectl eval`. `removals` and `allowed` are the
/// bundle's `request_headers`; `underscores` whether names with `_` are allowed; `trusted`
/// whether the peer is a trusted proxy.
pub fn removed(
    name: &str,
    removals: &[String],
    allowed: &[String],
    underscores: bool,
    trusted: bool,
) -> Option<Removed> {
    if let Some(c) = claim(name) {
        if (c == Claim::Override || !trusted) && !allowed.iter().any(|a| a == name) {
            return Some(Removed::Claim);
        }
    }
    if !underscores && name.contains('_') {
        return Some(Removed::Underscore);
    }
    removals.iter().any(|r| r == name).then_some(Removed::Bundle)
}

/// The claim headers, lower case, and their rule.
pub const CLAIMS: [(&str, Claim); 46] = [
    // Forwarding: the gateway sets its own X-Forwarded-For / -Proto / X-Real-IP.
    ("x-forwarded-for", Claim::Forwarding),
    ("x-real-ip", Claim::Forwarding),
    ("forwarded", Claim::Forwarding),
    ("x-forwarded-proto", Claim::Forwarding),
    ("x-forwarded-host", Claim::Forwarding),
    ("x-forwarded-ssl", Claim::Forwarding),
    ("x-forwarded-scheme", Claim::Forwarding),
    ("x-forwarded-protocol", Claim::Forwarding),
    ("x-forwarded-port", Claim::Forwarding),
    ("x-forwarded-prefix", Claim::Forwarding),
    ("x-forwarded-server", Claim::Forwarding),
    ("x-forwarded-path", Claim::Forwarding),
    ("x-forwarded", Claim::Forwarding),
    ("x-original-forwarded-for", Claim::Forwarding),
    ("front-end-https", Claim::Forwarding),
    ("x-url-scheme", Claim::Forwarding),
    ("x-scheme", Claim::Forwarding),
    // Client address.
    ("true-client-ip", Claim::Forwarding),
    ("x-client-ip", Claim::Forwarding),
    ("cf-connecting-ip", Claim::Forwarding),
    ("x-originating-ip", Claim::Forwarding),
    ("client-ip", Claim::Forwarding),
    ("x-cluster-client-ip", Claim::Forwarding),
    ("fastly-client-ip", Claim::Forwarding),
    ("x-remote-ip", Claim::Forwarding),
    ("x-remote-addr", Claim::Forwarding),
    ("forwarded-for", Claim::Forwarding),
    // Host.
    ("x-host", Claim::Forwarding),
    ("x-original-host", Claim::Forwarding),
    // Client certificates, as a proxy that terminated mutual TLS passes them on (Envoy's XFCC,
    // nginx set-ups): a caller's identity.
    ("x-forwarded-client-cert", Claim::Forwarding),
    ("ssl-client-cert", Claim::Forwarding),
    ("x-ssl-client-cert", Claim::Forwarding),
    ("x-client-cert", Claim::Forwarding),
    ("x-ssl-client-verify", Claim::Forwarding),
    ("x-ssl-client-dn", Claim::Forwarding),
    ("x-ssl-client-s-dn", Claim::Forwarding),
    // Request target and method.
    ("x-original-url", Claim::Override),
    ("x-rewrite-url", Claim::Override),
    ("x-original-uri", Claim::Override),
    ("x-envoy-original-path", Claim::Override),
    ("x-forwarded-uri", Claim::Override),
    ("x-http-method-override", Claim::Override),
    ("x-http-method", Claim::Override),
    ("x-method-override", Claim::Override),
    ("x-original-method", Claim::Override),
    ("x-forwarded-method", Claim::Override),
];

/// The claim a (lower-case) header name makes, if any. Names that start with another byte than
/// the claims' (`accept`, `user-agent`, `authorization`...) are ruled out by it; an `x-` header
/// is compared with the list (a length check each, mostly).
pub fn claim(name: &str) -> Option<Claim> {
    match name.as_bytes().first()? {
        b'x' | b'f' | b't' | b'c' | b's' => {}
        _ => return None,
    }
    CLAIMS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Every claim header name (for messages and documentation).
pub fn names() -> impl Iterator<Item = &'static str> {
    CLAIMS.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_gateway_removes_from_a_client_and_why() {
        let (remove, allow) = (vec!["x-user-id".to_string()], vec!["x-forwarded-host".to_string()]);
        let r = |name: &str, underscores: bool, trusted: bool| removed(name, &remove, &allow, underscores, trusted);
        assert_eq!(r("x-user-id", false, false), Some(Removed::Bundle));
        assert_eq!(r("x-forwarded-for", false, false), Some(Removed::Claim));
        assert_eq!(r("x-forwarded-for", false, true), None, "a trusted proxy's forwarding claims pass");
        assert_eq!(r("x-http-method-override", false, true), Some(Removed::Claim), "overrides from anyone");
        assert_eq!(r("x-forwarded-host", false, false), None, "the bundle allows it");
        assert_eq!(r("x_user", false, false), Some(Removed::Underscore));
        assert_eq!(r("x_user", true, false), None);
        assert_eq!(r("accept", false, false), None);
    }

    #[test]
    fn claims_are_found_by_name_and_ordinary_headers_are_not() {
        assert_eq!(claim("x-original-url"), Some(Claim::Override));
        assert_eq!(claim("x-original-method"), Some(Claim::Override));
        assert_eq!(claim("true-client-ip"), Some(Claim::Forwarding));
        assert_eq!(claim("cf-connecting-ip"), Some(Claim::Forwarding));
        for ordinary in ["accept", "x-request-id", "content-type", "traceparent", "x-tenant", "forwardedx", ""] {
            assert_eq!(claim(ordinary), None, "{ordinary}");
        }
        for n in names() {
            assert!(claim(n).is_some(), "{n}");
            assert_eq!(n, n.to_ascii_lowercase());
        }
    }
}
