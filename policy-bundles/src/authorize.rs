//! The decision pipeline, once for every caller (the gateway's `request_filter` and the load
//! tests' policy service): route match → bearer-token verification → input → the route's rule
//! → an [`Outcome`]. What the caller answers (a status, headers, a body) stays the caller's.
//!
//! Callers describe their request with a [`RequestView`] of borrowed parts, already canonical
//! (`crate::canon`): building one copies nothing. The rule's input holds only what the rule can
//! read, its decision cache key is read from the request rather than from a built input, and the
//! headers are walked only for a rule that reads headers ([`Snapshot::decide_request`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decision::{Decision, DecisionError};
use crate::jwt::{JwtError, Verified};
use crate::snapshot::{CacheOutcome, EvalError, Request, Snapshot};

/// One request as the pipeline reads it, borrowed from the caller's own representation.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a, H> {
    /// Method, canonical path and host, query, scheme and client address.
    pub parts: Request<'a>,
    /// The `Authorization` header's value, as received.
    pub authorization: Option<&'a [u8]>,
    /// The headers that may go into the input as (lower-case name, value) pairs, repeated names
    /// in order. Iterated at most once, and not at all for a rule that reads no header.
    pub headers: H,
}

/// What the pipeline made of a request.
#[derive(Debug)]
pub enum Outcome {
    /// No route matches the host, path and method.
    NoRoute,
    /// The route's rule reads something of the request that a backend could read another way
    /// (`http_canon::unambiguous_query`); no policy ran.
    Refused { route: usize, refusal: http_canon::Refusal },
    /// The request's `Authorization` is malformed, of a scheme the route does not accept, or a
    /// bearer token that does not verify; no policy ran.
    Unauthenticated { route: usize, error: AuthError },
    /// The route's rule was asked (or its cached decision used), in `took`; `jwt` is the
    /// verified bearer token the input held, if any (decision logs rebuild the input from it).
    Evaluated { route: usize, verdict: Verdict, took: Duration, jwt: Option<Arc<Verified>> },
}

/// The route's rule's answer, with the route's `fail_open` applied.
#[derive(Debug)]
pub enum Verdict {
    /// The rule allowed: the decision's `headers` go upstream, `response_headers` to the client.
    Allow(Arc<Decision>, CacheOutcome),
    /// The rule denied with the decision's status, reason and `response_headers`.
    Deny(Arc<Decision>, CacheOutcome),
    /// The rule failed and the route is `fail_open`: allowed, with no decision headers.
    FailedOpen(EvalError),
    /// The rule failed: denied (fail closed).
    Failed(EvalError),
}

impl Outcome {
    /// The matched route's index in [`Snapshot::routes`], when one matched.
    pub fn route(&self) -> Option<usize> {
        match self {
            Outcome::NoRoute => None,
            Outcome::Unauthenticated { route, .. }
            | Outcome::Evaluated { route, .. }
            | Outcome::Refused { route, .. } => Some(*route),
        }
    }
}

/// How a route's shadow rule's answer compares with its enforced rule's, for the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// The same effect: both allow with the same headers, or both deny with the same status.
    Same,
    /// A different effect (or the enforced rule failed where the shadow decided).
    Differ,
    /// The shadow rule failed.
    Error,
}

impl Agreement {
    /// The `agreement` label of `gateway_shadow_decisions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Agreement::Same => "same",
            Agreement::Differ => "differ",
            Agreement::Error => "error",
        }
    }

    /// Compares a shadow rule's answer with the enforced verdict.
    pub fn of(enforced: &Verdict, shadow: &Result<Arc<Decision>, EvalError>) -> Agreement {
        match (enforced, shadow) {
            (_, Err(_)) => Agreement::Error,
            (Verdict::Allow(d, _) | Verdict::Deny(d, _), Ok(s)) if same_effect(d, s) => Agreement::Same,
            _ => Agreement::Differ,
        }
    }
}

/// Whether two decisions do the same to a request: both allow with the same upstream and
/// response headers, or both deny with the same status and response headers. The `reason` text
/// is not compared.
pub fn same_effect(a: &Decision, b: &Decision) -> bool {
    a.allow == b.allow
        && (a.allow || a.status == b.status)
        && a.headers == b.headers
        && a.response_headers == b.response_headers
        && a.remove_headers == b.remove_headers
        && (a.allow || a.body == b.body)
        && a.query_set == b.query_set
        && a.query_remove == b.query_remove
}

/// A short, fixed description of why a rule gave no decision: what a client may be told.
pub fn error_reason(e: &EvalError) -> &'static str {
    match e {
        EvalError::Decision(DecisionError::Undefined) => "policy result undefined",
        _ => "policy error",
    }
}

/// Why a request's `Authorization` was not accepted (401, before any policy runs).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not one well-formed credential: a `Bearer` that is not exactly `Bearer`, one space and
    /// one token68, or a value that does not start with a scheme.
    #[error("the Authorization header is not one well-formed credential (`Bearer`, one space, one token)")]
    Malformed,
    /// A scheme other than `Bearer` that the route does not list in `authorization_schemes`.
    #[error("this route does not accept the Authorization scheme `{0}`")]
    Scheme(String),
    /// A bearer token that does not verify.
    #[error(transparent)]
    Token(#[from] JwtError),
}

impl AuthError {
    /// The `reason` label it is counted under in `gateway_requests_refused_total`, for the
    /// errors that are about the header's shape rather than a token's verification.
    pub fn refusal(&self) -> Option<http_canon::Refusal> {
        match self {
            AuthError::Malformed => Some(http_canon::Refusal::MalformedCredentials),
            AuthError::Scheme(_) => Some(http_canon::Refusal::AuthorizationScheme),
            AuthError::Token(_) => None,
        }
    }
}

/// What an `Authorization` header value carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// `Bearer` (any case), exactly one space, one token68 (RFC 6750 2.1) and nothing else.
    Bearer(&'a str),
    /// Another scheme: its name as sent (what follows it is the rule's to read).
    Other(&'a str),
    /// Anything else, including every other spelling of a bearer token (a tab or a no-break
    /// space after the scheme, two spaces, two tokens, a quoted token, no token): never
    /// "no credentials", since a backend that splits on any whitespace would read a token in it.
    Malformed,
}

/// The bytes of a token68's body (RFC 9110 11.2), as a table: a bearer token that does not
/// verify is read through it, a few hundred bytes at one load each.
static TOKEN68: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// Whether `s` is a token68: `[A-Za-z0-9-._~+/]+` then any `=` padding.
fn is_token68(s: &[u8]) -> bool {
    let padding = s.iter().rev().take_while(|b| **b == b'=').count();
    let body = &s[..s.len() - padding];
    !body.is_empty() && body.iter().all(|b| TOKEN68[usize::from(*b)])
}

/// Reads an `Authorization` value, as bytes: a value that is not text is [`Credentials::Malformed`].
pub fn credentials(value: &[u8]) -> Credentials<'_> {
    let scheme_len = value.iter().position(|b| !http_canon::tchar(*b)).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_len);
    let Ok(scheme) = std::str::from_utf8(scheme) else { return Credentials::Malformed };
    if scheme.eq_ignore_ascii_case("bearer") {
        // A token68 is ASCII, so the check below is the only pass over the token.
        return match rest.strip_prefix(b" ") {
            Some(token) if is_token68(token) => {
                std::str::from_utf8(token).map_or(Credentials::Malformed, Credentials::Bearer)
            }
            _ => Credentials::Malformed,
        };
    }
    if scheme.is_empty() || !rest.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
        return Credentials::Malformed;
    }
    if rest.is_empty() || rest.starts_with(b" ") {
        Credentials::Other(scheme)
    } else {
        Credentials::Malformed
    }
}

/// Routes, authenticates and decides one request against `snap`.
pub fn authorize<'a, H>(snap: &Snapshot, req: RequestView<'a, H>) -> Outcome
where
    H: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let parts = &req.parts;
    match snap.table.lookup(parts.host, parts.path, parts.method) {
        Some(route_ix) => authorize_route(snap, route_ix, req),
        None => Outcome::NoRoute,
    }
}

/// [`authorize`] on a route already matched (`snap.table.lookup`): for a caller that acts
/// between matching and authenticating (a rate limit applied before credentials are verified).
pub fn authorize_route<'a, H>(snap: &Snapshot, route_ix: usize, req: RequestView<'a, H>) -> Outcome
where
    H: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let parts = req.parts;
    let route = &snap.routes[route_ix];
    if let Some(q) = parts.query {
        if snap.needs(route.policy).query() && http_canon::unambiguous_query(q).is_err() {
            return Outcome::Refused { route: route_ix, refusal: http_canon::Refusal::AmbiguousQuery };
        }
    }
    let verified = match req.authorization {
        None => None,
        Some(value) => match authenticate(snap, route, value) {
            Ok(v) => v,
            Err(error) => return Outcome::Unauthenticated { route: route_ix, error },
        },
    };
    let start = Instant::now();
    let jwt = verified.as_deref().map(|v| &v.input);
    let headers = req.headers;
    let sep = separator(snap, route.policy);
    let result = snap.decide_request(route.policy, &route.name, parts, |needs| input_headers(headers, needs, sep), jwt);
    let took = start.elapsed();
    let verdict = match result {
        Ok((d, how)) if d.allow => Verdict::Allow(d, how),
        Ok((d, how)) => Verdict::Deny(d, how),
        Err(e) if route.fail_open => Verdict::FailedOpen(e),
        Err(e) => Verdict::Failed(e),
    };
    Outcome::Evaluated { route: route_ix, verdict, took, jwt: verified }
}

/// The input [`authorize_route`] gave route `route_ix`'s rule for `req` (`jwt`: the token it
/// verified, [`Outcome::Evaluated`]'s): the same headers, the same pruning to what the rule
/// reads. For tools that show it (`bundlectl eval --input`), never on the request path.
pub fn input<'a, H>(snap: &Snapshot, route_ix: usize, req: RequestView<'a, H>, jwt: Option<&Verified>) -> regorus::Value
where
    H: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let Some(route) = snap.routes.get(route_ix) else { return regorus::Value::Undefined };
    let headers = req.headers;
    let sep = separator(snap, route.policy);
    let jwt = jwt.map(|v| &v.input);
    snap.request_input(route.policy, &route.name, req.parts, |needs| input_headers(headers, needs, sep), jwt)
}

/// What an `Authorization` value proves on `route`: a verified bearer token, nothing the gateway
/// verifies (a scheme the route leaves to its rule; any credential on an Envoy route whose rule
/// verifies its own), or an [`AuthError`]. A credential is left to a rule only if the rule reads
/// the `Authorization` header (the read analysis says so): one that no rule looks at would
/// reach the backend unverified.
///
/// The common request, `Bearer <a token verified before>`, is checked without reading the token
/// byte by byte: a token that verifies is JWS compact serialization (base64url and dots), a
/// token68 by construction, so [`credentials`]'s full reading is needed only for the others.
fn authenticate(
    snap: &Snapshot,
    route: &crate::snapshot::Route,
    value: &[u8],
) -> Result<Option<Arc<Verified>>, AuthError> {
    // Only decided when the value is not a bearer token the bundle's roots verify.
    let rule_reads = || snap.needs(route.policy).header("authorization");
    // An OPA-Envoy policy checks its credentials itself (`io.jwt.decode_verify`, Basic in
    // Rego): without trust roots in the bundle, a well-formed one is left to the rule.
    let envoy_rule = snap.jwt.is_none() && route.format == crate::input::InputFormat::Envoy;
    let rule_verifies = envoy_rule && rule_reads();
    let verify = |token: &str| snap.jwt.as_ref().map_or(Err(JwtError::UnknownIssuer), |r| r.verify_cached(token));
    if !rule_verifies {
        if let Some(token) = bearer_candidate(value) {
            return match verify(token) {
                Ok(v) => Ok(Some(v)),
                Err(_) if credentials(value) == Credentials::Malformed => Err(AuthError::Malformed),
                Err(e) => Err(e.into()),
            };
        }
    }
    match credentials(value) {
        Credentials::Malformed => Err(AuthError::Malformed),
        Credentials::Other(scheme) if !(rule_verifies || (route.accepts_scheme(scheme) && rule_reads())) => {
            Err(AuthError::Scheme(scheme.to_owned()))
        }
        Credentials::Other(_) => Ok(None),
        Credentials::Bearer(_) if rule_verifies => Ok(None),
        Credentials::Bearer(token) => verify(token).map(Some).map_err(AuthError::from),
    }
}

/// What follows `bearer ` (scheme in any case, one space) when it is text: the token to try,
/// not yet read as a token68.
fn bearer_candidate(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme[..6].eq_ignore_ascii_case(b"bearer") || scheme[6] != b' ' {
        return None;
    }
    std::str::from_utf8(rest).ok()
}

/// How repeated headers are joined in a policy's input: `, ` in the gateway's, `,` in Envoy's.
fn separator(snap: &Snapshot, policy: usize) -> &'static str {
    match snap.format(policy) {
        crate::input::InputFormat::Gateway => ", ",
        crate::input::InputFormat::Envoy => ",",
    }
}

/// The input's headers object: the headers the rule reads, none when it reads none.
fn input_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    needs: &crate::input::Needs,
    separator: &str,
) -> regorus::Value {
    if needs.any_header() {
        crate::input::headers_joined(headers.into_iter().filter(|(name, _)| needs.header(name)), separator)
    } else {
        crate::input::headers([])
    }
}

/// Asks route `route`'s shadow rule (`shadow:` in the bundle) about the same request that
/// [`authorize`] decided: the same input (built the same way, holding what the shadow rule
/// reads), the same evaluation bounds, its own cache entries. `jwt` is the token `authorize`
/// verified. `None` when the route has no shadow rule.
pub fn shadow<'a, H>(
    snap: &Snapshot,
    route: usize,
    req: RequestView<'a, H>,
    jwt: Option<&Verified>,
) -> Option<Result<Arc<Decision>, EvalError>>
where
    H: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let r = snap.routes.get(route)?;
    let rule = r.shadow?;
    let jwt = jwt.map(|v| &v.input);
    let headers = req.headers;
    let sep = separator(snap, rule);
    let result = snap.decide_request(rule, &r.name, req.parts, |needs| input_headers(headers, needs, sep), jwt);
    Some(result.map(|(d, _)| d))
}
