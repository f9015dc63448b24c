//! Request canonicalization: the one place that decides what request the gateway is handling.
//! It runs before routing, and its output is what the route table matches, what the policy sees
//! and what the upstream receives (DESIGN.md, "What the backend receives"). A request that has
//! no single meaning (an encoded `/`, a `..;` segment, two Host values that disagree) is
//! refused with 400 rather than guessed at, because the backend may guess differently.
//!
//! * Path: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!   escapes are kept with upper-case hex; dot segments (`.` and `..`, raw or encoded) are
//!   removed; repeated slashes are merged. Refused: an encoded `/` or `\` (unless configured,
//!   like Envoy's `path_with_escaped_slashes_action`), a raw `\`, a NUL, a malformed escape, a
//!   byte outside visible ASCII, and a segment that is `.` or `..` before a `;` (`/..;/`, which
//!   Tomcat and Spring read as `..`).
//! * Host: lower-cased, one trailing dot and the default port removed, checked to be a host
//!   name or IP literal; an absolute-form target's authority is the host and must agree with
//!   `Host`; more than one `Host`, or none on HTTP/1.1, is refused.

pub mod claims;
pub mod singles;

/// What to do with `%2F` and `%5C` in a path (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400: the request has two readings (a backend that decodes it sees another path).
    #[default]
    Reject,
    /// Decoded to `/` and then normalized like any other separator.
    Unescape,
    /// Kept encoded (`%2F`) inside its segment: for backends that never decode it.
    Keep,
}

impl EscapedSlashes {
    pub fn parse(s: &str) -> Option<EscapedSlashes> {
        match s {
            "reject" => Some(EscapedSlashes::Reject),
            "unescape" => Some(EscapedSlashes::Unescape),
            "keep" => Some(EscapedSlashes::Keep),
            _ => None,
        }
    }
}

/// Why a request was refused; [`Refusal::reason`] is the `reason` label of
/// `gateway_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    EscapedSlash,
    Backslash,
    Nul,
    DotSemicolon,
    BadEscape,
    BadPathChar,
    NotOriginForm,
    MissingHost,
    DuplicateHost,
    BadHost,
    HostMismatch,
    DuplicateAuthorization,
    Framing,
    UnderscoreHeader,
    /// On TLS: the Host is not covered by the certificate the connection's SNI chose (421).
    Misdirected,
    /// `;` parameters in a path under `path_params: reject`.
    PathParams,
    /// An empty segment with parameters (`/;/admin`) under `path_params: keep`.
    EmptyParamSegment,
    /// Percent-escapes that do not decode to UTF-8 (overlong forms included).
    BadUtf8,
    /// A character a normalizing backend reads as ASCII (`．`, `／`, fullwidth letters).
    Confusable,
    /// A standard method in another case (`delete`).
    MethodCase,
    /// A `_method` query parameter: a method override the policy never sees.
    MethodOverride,
    /// A query another parser reads differently, on a route whose rule reads the query.
    AmbiguousQuery,
    /// An `Authorization` value that is not one well-formed credential (401).
    MalformedCredentials,
    /// An `Authorization` scheme the route does not accept (401).
    AuthorizationScheme,
    /// A bearer token in the `access_token` query parameter (401).
    TokenInQuery,
}

impl Refusal {
    pub const ALL: [Refusal; 25] = [
        Refusal::EscapedSlash,
        Refusal::Backslash,
        Refusal::Nul,
        Refusal::DotSemicolon,
        Refusal::BadEscape,
        Refusal::BadPathChar,
        Refusal::NotOriginForm,
        Refusal::MissingHost,
        Refusal::DuplicateHost,
        Refusal::BadHost,
        Refusal::HostMismatch,
        Refusal::DuplicateAuthorization,
        Refusal::Framing,
        Refusal::UnderscoreHeader,
        Refusal::Misdirected,
        Refusal::PathParams,
        Refusal::EmptyParamSegment,
        Refusal::BadUtf8,
        Refusal::Confusable,
        Refusal::MethodCase,
        Refusal::MethodOverride,
        Refusal::AmbiguousQuery,
        Refusal::MalformedCredentials,
        Refusal::AuthorizationScheme,
        Refusal::TokenInQuery,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::EscapedSlash => "escaped_slash",
            Refusal::Backslash => "backslash",
            Refusal::Nul => "nul",
            Refusal::DotSemicolon => "dot_semicolon",
            Refusal::BadEscape => "bad_escape",
            Refusal::BadPathChar => "bad_path_char",
            Refusal::NotOriginForm => "bad_target",
            Refusal::MissingHost => "missing_host",
            Refusal::DuplicateHost => "duplicate_host",
            Refusal::BadHost => "bad_host",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::DuplicateAuthorization => "duplicate_authorization",
            Refusal::Framing => "framing",
            Refusal::UnderscoreHeader => "underscore_header",
            Refusal::Misdirected => "misdirected",
            Refusal::PathParams => "path_params",
            Refusal::EmptyParamSegment => "empty_param_segment",
            Refusal::BadUtf8 => "bad_utf8",
            Refusal::Confusable => "confusable",
            Refusal::MethodCase => "method_case",
            Refusal::MethodOverride => "method_override",
            Refusal::AmbiguousQuery => "ambiguous_query",
            Refusal::MalformedCredentials => "malformed_credentials",
            Refusal::AuthorizationScheme => "authorization_scheme",
            Refusal::TokenInQuery => "token_in_query",
        }
    }

    /// The message sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::EscapedSlash => "the path has an encoded `/` or `\\`",
            Refusal::Backslash => "the path has a `\\`",
            Refusal::Nul => "the path has a NUL",
            Refusal::DotSemicolon => "the path has a `.` or `..` segment with parameters (`..;`)",
            Refusal::BadEscape => "the path has a malformed percent-encoding",
            Refusal::BadPathChar => "the path has a byte outside visible ASCII",
            Refusal::NotOriginForm => "the request target is not a path",
            Refusal::MissingHost => "the request has no host",
            Refusal::DuplicateHost => "the request has more than one Host header",
            Refusal::BadHost => "the host is not a host name or IP address",
            Refusal::HostMismatch => "the request target's authority and the Host header disagree",
            Refusal::DuplicateAuthorization => "the request has more than one Authorization header",
            Refusal::Framing => "the request's Content-Length / Transfer-Encoding are ambiguous",
            Refusal::UnderscoreHeader => "a header name contains `_`",
            Refusal::Misdirected => "the certificate chosen for this connection (by SNI) does not cover this host",
            Refusal::PathParams => "the path has `;` parameters (path_params: reject)",
            Refusal::EmptyParamSegment => "the path has an empty segment with `;` parameters",
            Refusal::BadUtf8 => "the path has percent-escapes that are not UTF-8 (overlong forms included)",
            Refusal::Confusable => {
                "the path has a character a normalizing backend reads as ASCII (a fullwidth or compatibility form)"
            }
            Refusal::MethodCase => "the method is a standard method in another case",
            Refusal::MethodOverride => "the query has a `_method` override",
            Refusal::AmbiguousQuery => {
                "the query has a `;`, a `[` or `]` in a name, a NUL, a malformed escape or bytes that are not UTF-8"
            }
            Refusal::MalformedCredentials => {
                "the Authorization header is not one well-formed credential (`Bearer`, one space, one token)"
            }
            Refusal::AuthorizationScheme => "this route does not accept that Authorization scheme",
            Refusal::TokenInQuery => "bearer tokens are accepted only in the Authorization header",
        }
    }

    /// The status the client gets: 421 Misdirected Request when the Host is not one the
    /// connection's certificate covers (no fronting one tenant's name through another's
    /// connection), 400 for the rest.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Misdirected => 421,
            Refusal::MalformedCredentials | Refusal::AuthorizationScheme | Refusal::TokenInQuery => 401,
            _ => 400,
        }
    }

    /// The `error` of the gateway's answer: what [`Refusal::status`] means in words.
    pub fn error(self) -> &'static str {
        match self.status() {
            421 => "misdirected request",
            401 => "invalid credentials",
            _ => "bad request",
        }
    }
}

/// A `tchar` of RFC 9110 5.6.2: what methods, header names and auth schemes are made of.
pub fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is an RFC 9110 token (a method, a header name, an auth scheme).
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| tchar(*b))
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `application/x-www-form-urlencoded` decoding of one name or value (`+` is a space); invalid
/// escapes are kept as written.
pub fn form_decode(s: &str) -> String {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return s.to_owned();
    }
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

// The path's escapes are read by hand below, not with `percent-encoding`: canonicalization
// decodes only unreserved characters, keeps every other escape with upper-case hex, and refuses
// malformed ones, in one pass on the hot path (`percent_decode` decodes everything and passes
// a malformed escape through).
fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Visible ASCII that RFC 3986 does not allow raw in a path (`"<>`{}|^[]#`): written as it came,
/// `/a"b` and `/a%22b` would be two canonical paths a decoding backend reads as one, and a
/// backend that cuts at `#` would serve less than was matched. The canonical form escapes them.
fn not_pchar(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^' | b'[' | b']' | b'#')
}

/// Whether `path` is already canonical, checked in one pass without allocating: true for the
/// common request (`/orders/7`), which then costs no copy.
fn is_canonical(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'/' => {
                if prev_slash {
                    return false;
                }
                let seg = &path[seg_start..i];
                if seg == b"." || seg == b".." {
                    return false;
                }
                prev_slash = true;
                seg_start = i + 1;
            }
            b'%' | b'\\' | b';' => return false,
            b if not_pchar(b) => return false,
            0x21..=0x7e => prev_slash = false,
            _ => return false,
        }
    }
    let last = &path[seg_start..];
    last != b"." && last != b".."
}

/// What to do with `;` parameters in a path segment (`/orders;v=1/7`), which Tomcat and Spring
/// strip before matching (so `/;/admin` is their `/admin`) and most other servers keep as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParams {
    /// 400: the request has two readings.
    #[default]
    Reject,
    /// Removed from every segment before dot segments and empty segments are resolved: the
    /// gateway reads the path as Tomcat does and forwards that reading.
    Strip,
    /// Forwarded as sent; routes and the policy see the path without them ([`without_params`]);
    /// a segment that is empty, `.` or `..` before its `;` is refused.
    Keep,
}

impl PathParams {
    pub fn parse(s: &str) -> Option<PathParams> {
        match s {
            "reject" => Some(PathParams::Reject),
            "strip" => Some(PathParams::Strip),
            "keep" => Some(PathParams::Keep),
            _ => None,
        }
    }
}

/// How a path is made canonical: the gateway config's `path_with_escaped_slashes` and
/// `path_params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathRules {
    pub slashes: EscapedSlashes,
    pub params: PathParams,
}

/// Characters that best-fit mappings (IIS, Windows code pages) read as `/` or `\\` though NFKC
/// leaves them alone ([`confusable`]).
const BEST_FIT: [char; 3] = [
    '\u{2215}', // DIVISION SLASH
    '\u{2044}', // FRACTION SLASH
    '\u{29F5}', // REVERSE SOLIDUS OPERATOR
];

/// Whether a backend that normalizes the path (NFKC, as Python's `unicodedata`, Java's
/// `Normalizer` and IIS do, or a best-fit mapping) would read `c` (never ASCII itself: only
/// decoded escapes of bytes >= 0x80 get here) as something a route or a rule could match on:
/// an unreserved character (letters, digits, `-._~`) or a separator (`/\%;?#`). So `．` and `︰`
/// (`..`), `／`, `＼`, `％`, the fullwidth letters and digits (`／ａｄｍｉｎ` is `/admin` to such a
/// backend), `℀` (`a/c`), `ﬁ` (`fi`), `²`, `™`, plus [`BEST_FIT`]. Compatibility forms of other
/// punctuation and spaces stay (CJK titles hold fullwidth `（）` and U+3000).
fn confusable(c: char) -> bool {
    use unicode_normalization::UnicodeNormalization;
    let matters = |d: char| unreserved_char(d) || matches!(d, '/' | '\\' | '%' | ';' | '?' | '#');
    std::iter::once(c).nfkc().any(matters) || BEST_FIT.contains(&c)
}

fn unreserved_char(c: char) -> bool {
    c.is_ascii() && unreserved(c as u8)
}

/// Checks the bytes a run of `%XX` escapes (all >= 0x80) decodes to, and appends them to
/// `seg` escaped with upper-case hex: they must be UTF-8 (no overlong form, no surrogate, no
/// truncated sequence) and hold nothing [`confusable`].
fn flush_utf8(run: &mut Vec<u8>, seg: &mut Vec<u8>) -> Result<(), Refusal> {
    if run.is_empty() {
        return Ok(());
    }
    let text = std::str::from_utf8(run).map_err(|_| Refusal::BadUtf8)?;
    if text.chars().any(confusable) {
        return Err(Refusal::Confusable);
    }
    for b in run.drain(..) {
        push_escaped(seg, b);
    }
    Ok(())
}

/// Appends `b` as `%XX`, upper-case hex (RFC 3986 2.1's normal form).
fn push_escaped(seg: &mut Vec<u8>, b: u8) {
    seg.extend_from_slice(&[b'%', HEX_UPPER[usize::from(b >> 4)], HEX_UPPER[usize::from(b & 15)]]);
}

/// The byte `%XX` at `bytes[i]` (the `%`) encodes, if its two digits are hex.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Splits a raw path (after its leading `/`) into decoded segments; a decoded byte that is not
/// unreserved is kept escaped, so a segment's text is what any backend decodes to the same
/// bytes. `;` parameters follow `rules.params`.
fn segments(bytes: &[u8], rules: PathRules) -> Result<Vec<Vec<u8>>, Refusal> {
    let mut segments: Vec<Vec<u8>> = vec![Vec::new()];
    let mut run = Vec::new(); // decoded bytes >= 0x80, checked as UTF-8 when the run ends
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            let seg = segments.last_mut().ok_or(Refusal::BadEscape)?;
            flush_utf8(&mut run, seg)?;
        }
        match b {
            b'/' => segments.push(Vec::new()),
            b'\\' => return Err(Refusal::Backslash),
            b';' if rules.params == PathParams::Reject => return Err(Refusal::PathParams),
            b';' if rules.params == PathParams::Strip => {
                // The parameters are dropped unread, up to the next separator.
                let rest = bytes[i..].iter().position(|c| *c == b'/').unwrap_or(bytes.len() - i);
                i += rest;
                continue;
            }
            b'%' => {
                let d = escape_at(bytes, i).ok_or(Refusal::BadEscape)?;
                i += 2;
                let seg = segments.last_mut().ok_or(Refusal::BadEscape)?;
                if d >= 0x80 {
                    run.push(d);
                    i += 1;
                    continue;
                }
                flush_utf8(&mut run, seg)?;
                match d {
                    0 => return Err(Refusal::Nul),
                    b'/' | b'\\' => match rules.slashes {
                        EscapedSlashes::Reject => return Err(Refusal::EscapedSlash),
                        EscapedSlashes::Unescape => segments.push(Vec::new()),
                        EscapedSlashes::Keep => seg.extend_from_slice(if d == b'/' { b"%2F" } else { b"%5C" }),
                    },
                    d if unreserved(d) => seg.push(d),
                    d => push_escaped(seg, d),
                }
            }
            0x21..=0x7e => {
                if let Some(seg) = segments.last_mut() {
                    if not_pchar(b) {
                        push_escaped(seg, b);
                    } else {
                        seg.push(b)
                    }
                }
            }
            0 => return Err(Refusal::Nul),
            _ => return Err(Refusal::BadPathChar),
        }
        i += 1;
    }
    let seg = segments.last_mut().ok_or(Refusal::BadEscape)?;
    flush_utf8(&mut run, seg)?;
    Ok(segments)
}

/// The canonical form of a request path (no query string), or why it has none.
pub fn path(raw: &str, rules: PathRules) -> Result<std::borrow::Cow<'_, str>, Refusal> {
    let bytes = raw.as_bytes();
    if is_canonical(bytes) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    if bytes.first() != Some(&b'/') {
        return Err(Refusal::NotOriginForm);
    }
    let segments = segments(bytes, rules)?;
    // Remove dot segments and empty ones; a trailing slash (or a trailing dot segment) leaves
    // the path ending in `/`, as RFC 3986 5.2.4 does.
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    let mut trailing = false;
    for seg in &segments {
        let name = seg.split(|b| *b == b';').next().unwrap_or(&[]);
        if name.len() != seg.len() {
            // Only under `keep` does a segment still hold parameters here.
            if name == b"." || name == b".." {
                return Err(Refusal::DotSemicolon);
            }
            if name.is_empty() {
                return Err(Refusal::EmptyParamSegment);
            }
        }
        trailing = true;
        match seg.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut p = Vec::with_capacity(raw.len());
    for s in &out {
        p.push(b'/');
        p.extend_from_slice(s);
    }
    if trailing || out.is_empty() {
        p.push(b'/');
    }
    // Every byte pushed is visible ASCII.
    String::from_utf8(p).map(std::borrow::Cow::Owned).map_err(|_| Refusal::BadPathChar)
}

/// A canonical path without its segments' `;` parameters: what routes match and the policy
/// sees under `path_params: keep` (Tomcat's reading). Borrowed when there are none.
pub fn without_params(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    std::borrow::Cow::Owned(out)
}

/// The standard methods (RFC 9110 9.3, RFC 5789), matched case-sensitively.
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Refuses a standard method spelled in another case (`delete`): frameworks that upper-case the
/// method would serve a DELETE that routes and rules written for `DELETE` never saw. Other
/// tokens (`PURGE`, `PROPFIND`) are methods of their own, matched as sent.
pub fn method(m: &str) -> Result<(), Refusal> {
    if METHODS.contains(&m) || !METHODS.iter().any(|s| s.eq_ignore_ascii_case(m)) {
        Ok(())
    } else {
        Err(Refusal::MethodCase)
    }
}

/// The query parameters every route refuses: `_method` (a method override the policy never
/// sees: Rails, Laravel, Symfony and Express's method-override read it) and `access_token`
/// (RFC 6750 2.3: a bearer token the gateway does not verify, which Spring and others accept).
/// Names are compared as the most lenient reader reads them ([`php_name_is`]).
pub fn query(q: &str) -> Result<(), Refusal> {
    for pair in q.split(['&', ';']) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        // No spelling of the shorter name is shorter than it.
        if name.len() < "_method".len() {
            continue;
        }
        let decoded = if name.contains(['%', '+']) {
            std::borrow::Cow::Owned(form_decode(name))
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        if php_name_is(&decoded, "_method") {
            return Err(Refusal::MethodOverride);
        }
        if php_name_is(&decoded, "access_token") {
            return Err(Refusal::TokenInQuery);
        }
    }
    Ok(())
}

/// Whether PHP (the most lenient common reader: Laravel, Symfony) reads the decoded parameter
/// name `name` as `target`: cut at a NUL (PHP takes the name's length with `strlen`), leading
/// spaces dropped, ` ` and `.` read as `_`, a `[` with a `]` after it starting an array of the
/// name before it, a lone `[` read as `_`; compared without case (Rails and Express spell it in
/// lower case, nothing legitimate needs another case).
fn php_name_is(name: &str, target: &str) -> bool {
    let name = name.split('\0').next().unwrap_or(name);
    let name = name.trim_start_matches(' ');
    let name = match name.find('[') {
        Some(i) if name[i..].contains(']') => &name[..i],
        _ => name,
    };
    name.len() == target.len()
        && name.bytes().zip(target.bytes()).all(|(n, t)| {
            let n = if matches!(n, b' ' | b'.' | b'[') { b'_' } else { n };
            n.eq_ignore_ascii_case(&t)
        })
}

/// Refuses a query that another parser reads differently from the policy's input, for a route
/// whose rule reads `input.request.query`: a `;` (a separator to some parsers), a `[` or `]` in
/// a name (Rack and PHP read `a[]` as `a`), a `.` or a space in a name, raw, `+` or encoded (PHP
/// reads `a.b` and `a b` as `a_b`, and drops leading spaces), a NUL, a malformed escape, or
/// escapes that are not UTF-8 (the input would hold U+FFFD where the backend has bytes).
pub fn unambiguous_query(q: &str) -> Result<(), Refusal> {
    let bytes = q.as_bytes();
    let mut i = 0;
    let mut in_name = true;
    let mut decoded = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b';' | 0 => return Err(Refusal::AmbiguousQuery),
            b'[' | b']' | b'.' | b'+' | b' ' if in_name => return Err(Refusal::AmbiguousQuery),
            b'&' => {
                in_name = true;
                std::str::from_utf8(&decoded).map_err(|_| Refusal::AmbiguousQuery)?;
                decoded.clear();
            }
            b'=' if in_name => {
                in_name = false;
                std::str::from_utf8(&decoded).map_err(|_| Refusal::AmbiguousQuery)?;
                decoded.clear();
            }
            b'%' => {
                let d = escape_at(bytes, i).ok_or(Refusal::AmbiguousQuery)?;
                if d == 0 || (in_name && matches!(d, b'[' | b']' | b'.' | b' ')) {
                    return Err(Refusal::AmbiguousQuery);
                }
                decoded.push(d);
                i += 2;
            }
            b => decoded.push(b),
        }
        i += 1;
    }
    std::str::from_utf8(&decoded).map_err(|_| Refusal::AmbiguousQuery)?;
    Ok(())
}

/// A request's canonical host: `name` (no port) is what routes match and the policy sees;
/// [`Host::authority`] (with a non-default port) is the `Host` the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// A port other than the scheme's default.
    pub port: Option<u16>,
}

impl Host {
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.name),
            None => self.name.clone(),
        }
    }

    /// Whether `raw` (a `Host` value) is already this host's canonical authority.
    pub fn is(&self, raw: &[u8]) -> bool {
        match self.port {
            None => raw == self.name.as_bytes(),
            Some(p) => {
                raw.strip_prefix(self.name.as_bytes()).and_then(|r| r.strip_prefix(b":"))
                    == Some(p.to_string().as_bytes())
            }
        }
    }
}

/// Canonicalizes one authority (`API.Example.com.:80`), for a scheme whose default port is
/// `default_port`.
pub fn authority(raw: &str, default_port: u16) -> Result<Host, Refusal> {
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(Refusal::BadHost)?;
        // One spelling per address (RFC 5952): `[0:0::1]` is `[::1]`.
        let ip = ip.parse::<std::net::Ipv6Addr>().map_err(|_| Refusal::BadHost)?.to_string();
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(Refusal::BadHost)?),
        };
        (format!("[{}]", ip.to_ascii_lowercase()), port)
    } else {
        let (name, port) = match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // One pass: every label 1-63 bytes of letters, digits, `-` or `_`.
        let mut label = 0usize;
        for b in name.bytes() {
            match b {
                b'.' if label > 0 => label = 0,
                b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                    label += 1;
                    if label > 63 {
                        return Err(Refusal::BadHost);
                    }
                }
                _ => return Err(Refusal::BadHost),
            }
        }
        if label == 0 || name.len() > 253 {
            return Err(Refusal::BadHost);
        }
        // A name that ends in a number is an IPv4 address, in its one dotted-decimal spelling:
        // `127.1`, `2130706433`, `0x7f.1` and `0177.0.0.1` are all 127.0.0.1 to some resolver.
        let last = name.rsplit('.').next().unwrap_or(name);
        let numeric =
            last.bytes().all(|b| b.is_ascii_digit()) || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"));
        if numeric && name.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(Refusal::BadHost);
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Refusal::BadHost);
            }
            let n: u16 = p.parse().map_err(|_| Refusal::BadHost)?;
            (n != default_port).then_some(n)
        }
    };
    Ok(Host { name, port })
}

/// The authority of an absolute-form request target (`http://admin.example.test/x`), read
/// from the target as received; `None` for origin form (`/x`). Any other form (`*`, a
/// scheme other than http(s), authority-form) has no path to canonicalize and is refused.
pub fn target_authority(raw: &[u8]) -> Result<Option<&str>, Refusal> {
    if raw.first() == Some(&b'/') {
        return Ok(None);
    }
    let rest = [&b"http://"[..], b"https://"]
        .iter()
        .find_map(|scheme| {
            raw.get(..scheme.len()).filter(|p| p.eq_ignore_ascii_case(scheme)).map(|_| &raw[scheme.len()..])
        })
        .ok_or(Refusal::NotOriginForm)?;
    let end = rest.iter().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let authority = std::str::from_utf8(&rest[..end]).map_err(|_| Refusal::BadHost)?;
    Ok(Some(authority))
}

/// The request's host from its `Host` header values and its target's authority (absolute
/// form, or HTTP/2's `:authority`). `None` only for HTTP/1.0 without either.
pub fn host(
    host_headers: &[&[u8]],
    target_authority: Option<&str>,
    http11_or_later: bool,
    default_port: u16,
) -> Result<Option<Host>, Refusal> {
    let header = match host_headers {
        [] => None,
        [one] => Some(authority(
            std::str::from_utf8(one).map_err(|_| Refusal::BadHost)?.trim_matches([' ', '\t']),
            default_port,
        )?),
        _ => return Err(Refusal::DuplicateHost),
    };
    let target = match target_authority {
        None => None,
        Some(a) if a.contains('@') => return Err(Refusal::BadHost),
        Some(a) => Some(authority(a, default_port)?),
    };
    match (target, header) {
        (Some(t), Some(h)) if t != h => Err(Refusal::HostMismatch),
        (Some(t), _) => Ok(Some(t)),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if http11_or_later => Err(Refusal::MissingHost),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Result<String, Refusal> {
        path(raw, PathRules::default()).map(|c| c.into_owned())
    }

    fn with(raw: &str, params: PathParams) -> Result<String, Refusal> {
        path(raw, PathRules { params, ..PathRules::default() }).map(|c| c.into_owned())
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for raw in ["/", "/orders/7", "/orders/", "/a.b/c~d-e_f", "/x..y/.z"] {
            assert!(matches!(path(raw, PathRules::default()), Ok(std::borrow::Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn dot_segments_raw_or_encoded_are_removed() {
        assert_eq!(p("/public/../orders/7").unwrap(), "/orders/7");
        assert_eq!(p("/public/%2e%2e/orders/7").unwrap(), "/orders/7");
        assert_eq!(p("/public/%2E./orders/7").unwrap(), "/orders/7");
        assert_eq!(p("/./admin/x").unwrap(), "/admin/x");
        assert_eq!(p("/x/../admin/x").unwrap(), "/admin/x");
        assert_eq!(p("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(p("/a/b/..").unwrap(), "/a/");
        assert_eq!(p("/a/.").unwrap(), "/a/");
        assert_eq!(p("/..").unwrap(), "/");
    }

    #[test]
    fn slashes_merge_and_unreserved_escapes_decode() {
        assert_eq!(p("//orders/7").unwrap(), "/orders/7");
        assert_eq!(p("/orders///7//").unwrap(), "/orders/7/");
        assert_eq!(p("/%6frders/7").unwrap(), "/orders/7");
        assert_eq!(p("/a%20b/%7e").unwrap(), "/a%20b/~");
        assert_eq!(p("/a%3fb").unwrap(), "/a%3Fb");
        // Characters a path may not hold raw are written as their escapes: one spelling.
        assert_eq!(p("/a\"b").unwrap(), "/a%22b");
        assert_eq!(p("/a\"b").unwrap(), p("/a%22b").unwrap());
        assert_eq!(p("/x/[1]/{y}|^`<>").unwrap(), "/x/%5B1%5D/%7By%7D%7C%5E%60%3C%3E");
        assert_eq!(p("/public/..#").unwrap(), "/public/..%23");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(p("/public/..%2forders/7"), Err(Refusal::EscapedSlash));
        assert_eq!(p("/public/..%5corders/7"), Err(Refusal::EscapedSlash));
        assert_eq!(p("/public/..\\orders/7"), Err(Refusal::Backslash));
        assert_eq!(with("/public/..;/orders/7", PathParams::Keep), Err(Refusal::DotSemicolon));
        assert_eq!(with("/public/.;x=1/orders", PathParams::Keep), Err(Refusal::DotSemicolon));
        assert_eq!(with("/public/%2e%2e;/orders", PathParams::Keep), Err(Refusal::DotSemicolon));
        assert_eq!(p("/a%00b"), Err(Refusal::Nul));
        assert_eq!(p("/a%zz"), Err(Refusal::BadEscape));
        assert_eq!(p("/a%4"), Err(Refusal::BadEscape));
        assert_eq!(p("/a\u{e9}"), Err(Refusal::BadPathChar));
        assert_eq!(p("*"), Err(Refusal::NotOriginForm));
    }

    #[test]
    fn path_parameters_follow_the_configured_rule() {
        for raw in ["/;/admin/x", "/;x=1/orders/7", "/orders;v=1/7", "/public/..;/orders/7", "/a;"] {
            assert_eq!(p(raw), Err(Refusal::PathParams), "{raw}");
        }
        assert_eq!(with("/;/admin/x", PathParams::Strip).unwrap(), "/admin/x");
        assert_eq!(with("/;x=1/orders/7", PathParams::Strip).unwrap(), "/orders/7");
        assert_eq!(with("/public/..;/orders/7", PathParams::Strip).unwrap(), "/orders/7");
        assert_eq!(with("/orders;v=1;w=%2f/7;jsessionid=x", PathParams::Strip).unwrap(), "/orders/7");
        assert_eq!(with("/a%3Bb", PathParams::Reject).unwrap(), "/a%3Bb", "an encoded `;` is data");
        assert_eq!(with("/orders;v=1/7", PathParams::Keep).unwrap(), "/orders;v=1/7");
        assert_eq!(with("/;/admin/x", PathParams::Keep), Err(Refusal::EmptyParamSegment));
        assert_eq!(with("//;x/admin", PathParams::Keep), Err(Refusal::EmptyParamSegment));
        assert_eq!(without_params("/orders;v=1/7;x"), "/orders/7");
        assert_eq!(without_params("/orders/7"), "/orders/7");
    }

    #[test]
    fn overlong_and_fullwidth_forms_of_dot_and_slash_are_refused() {
        for raw in [
            "/a/%C0%AE%C0%AE/admin",
            "/%E0%80%AE",
            "/%C0%AF",
            "/%F0%80%80%AE",
            "/%80",
            "/%E2%82",
            "/%ED%A0%80",
            "/%C3a",
        ] {
            assert_eq!(p(raw), Err(Refusal::BadUtf8), "{raw}");
        }
        for raw in [
            "/public/%EF%B8%B0/admin",
            "/%E2%84%80",
            "/pro%EF%AC%81le",
            "/%E2%88%95admin",
            "/%EF%BC%8E%EF%BC%8E/admin",
            "/x%EF%BC%8Fadmin",
            "/%EF%BC%BC",
            "/%E2%80%A5",
            "/%ef%b9%92",
            "/%EF%BD%81dmin",
        ] {
            assert_eq!(p(raw), Err(Refusal::Confusable), "{raw}");
        }
        assert_eq!(p("/caf%c3%a9/%E2%82%AC").unwrap(), "/caf%C3%A9/%E2%82%AC");
        // Compatibility forms of punctuation and spaces are no way to another path: they stay.
        for raw in ["/wiki/%E6%9D%B1%E4%BA%AC%EF%BC%88%E9%83%BD%EF%BC%89", "/a%E3%80%80b", "/a%C2%A0b"] {
            assert!(p(raw).is_ok(), "{raw}");
        }
        for raw in ["/v%EF%BC%91", "/x%C2%B2", "/%E2%84%A2", "/admin%EF%BC%8Dpanel"] {
            assert_eq!(p(raw), Err(Refusal::Confusable), "{raw}");
        }
    }

    #[test]
    fn methods_are_case_sensitive_tokens() {
        for m in ["GET", "DELETE", "PATCH", "PURGE", "PROPFIND", "purge"] {
            assert_eq!(method(m), Ok(()), "{m}");
        }
        for m in ["delete", "Get", "pOST", "options"] {
            assert_eq!(method(m), Err(Refusal::MethodCase), "{m}");
        }
    }

    #[test]
    fn override_and_token_parameters_are_refused_and_ambiguous_queries_named() {
        assert_eq!(query("a=1&_method=DELETE"), Err(Refusal::MethodOverride));
        assert_eq!(query("%5Fmethod=DELETE"), Err(Refusal::MethodOverride));
        assert_eq!(query("x=1;access_token=abc"), Err(Refusal::TokenInQuery));
        assert_eq!(query("page=2&method=x&token=y"), Ok(()));
        // PHP's spellings of the same names.
        for q in [
            "+_method=DELETE",
            "%20_method=DELETE",
            ".method=DELETE",
            "[method=DELETE",
            "_method[]=DELETE",
            "_METHOD=x",
        ] {
            assert_eq!(query(q), Err(Refusal::MethodOverride), "{q}");
        }
        let long = format!("{}_method=DELETE", "+".repeat(40));
        assert_eq!(query(&long), Err(Refusal::MethodOverride));
        assert_eq!(query("_method%00=DELETE"), Err(Refusal::MethodOverride), "PHP's strlen stops at the NUL");
        for q in ["access.token=x", "access+token=x", "access_token[]=x", "access_token%00x=y"] {
            assert_eq!(query(q), Err(Refusal::TokenInQuery), "{q}");
        }
        assert_eq!(query("x_method=1&methods=2&_methodx=3"), Ok(()));
        for q in [
            "x=1;debug=1",
            "debug[]=1",
            "a%5Bb%5D=1",
            "a=%zz",
            "a=%00",
            "a=%C0%AE",
            "a=%E2%82",
            "a=%",
            "debug.mode=1",
            "debug+mode=1",
            "%20debug=1",
            "a%2Eb=1",
        ] {
            assert_eq!(unambiguous_query(q), Err(Refusal::AmbiguousQuery), "{q}");
        }
        for q in ["", "a=1&b=2", "a=[1]", "q=caf%C3%A9", "ab=c+d", "a=1&a=2", "a=x.y", "a=1+2"] {
            assert_eq!(unambiguous_query(q), Ok(()), "{q}");
        }
    }

    #[test]
    fn escaped_slashes_follow_the_configured_action() {
        let slashes = |raw, slashes| path(raw, PathRules { slashes, ..PathRules::default() });
        assert_eq!(slashes("/a%2fb/../c", EscapedSlashes::Unescape).unwrap(), "/a/c");
        assert_eq!(slashes("/a%2fb/../c", EscapedSlashes::Keep).unwrap(), "/c");
        assert_eq!(slashes("/a%2fb", EscapedSlashes::Keep).unwrap(), "/a%2Fb");
    }

    #[test]
    fn hosts_are_canonical_and_must_agree() {
        let h = |raw: &str| authority(raw, 80);
        assert_eq!(h("API.Example.test.").unwrap(), Host { name: "api.example.test".into(), port: None });
        assert_eq!(h("api.example.test:80").unwrap().authority(), "api.example.test");
        assert_eq!(h("api.example.test:8080").unwrap().authority(), "api.example.test:8080");
        assert!(h("api.example.test:8080").unwrap().is(b"api.example.test:8080"));
        assert!(!h("api.example.test:8080").unwrap().is(b"api.example.test:80800"));
        assert!(!h("API.example.test").unwrap().is(b"API.example.test"));
        assert_eq!(h("api.example.test:8080").unwrap().name, "api.example.test");
        assert_eq!(h("[::1]:8080").unwrap().name, "[::1]");
        assert_eq!(h("[0:0::1]").unwrap().name, "[::1]", "one spelling per IPv6 address");
        assert_eq!(h("[2001:DB8::0:7]").unwrap().name, "[2001:db8::7]");
        assert_eq!(h("127.0.0.1").unwrap().name, "127.0.0.1");
        for numeric in ["127.1", "2130706433", "0x7f.1", "0177.0.0.1", "1.2.3.0x4", "a.b.3"] {
            assert_eq!(h(numeric), Err(Refusal::BadHost), "{numeric}");
        }
        assert_eq!(h("a3.example").unwrap().name, "a3.example");
        assert_eq!(
            host(&[b"\xc2\xa0api.example.test"], None, true, 80),
            Err(Refusal::BadHost),
            "only SP and HTAB are trimmed"
        );
        assert_eq!(host(&[b" api.example.test\t"], None, true, 80).unwrap().unwrap().name, "api.example.test");
        for bad in ["", ":80", "a b", "a/b", "a@b", "a..b", "a:x", "a:99999", "[zz]", "a\\b", "."] {
            assert_eq!(h(bad), Err(Refusal::BadHost), "{bad:?}");
        }
        assert_eq!(host(&[], None, true, 80), Err(Refusal::MissingHost));
        assert_eq!(host(&[], None, false, 80), Ok(None));
        assert_eq!(host(&[b"a", b"b"], None, true, 80), Err(Refusal::DuplicateHost));
        assert_eq!(host(&[], Some("admin.example.test"), true, 80).unwrap().unwrap().name, "admin.example.test");
        assert_eq!(host(&[b"a.test"], Some("admin.example.test"), true, 80), Err(Refusal::HostMismatch));
        assert_eq!(host(&[b"A.test."], Some("a.test:80"), true, 80).unwrap().unwrap().name, "a.test");
        assert_eq!(host(&[], Some("user@a.test"), true, 80), Err(Refusal::BadHost));
        assert_eq!(target_authority(b"/x"), Ok(None));
        assert_eq!(target_authority(b"HTTP://Admin.test:80/x?y"), Ok(Some("Admin.test:80")));
        assert_eq!(target_authority(b"https://a.test"), Ok(Some("a.test")));
        assert_eq!(target_authority(b"*"), Err(Refusal::NotOriginForm));
        assert_eq!(target_authority(b"ftp://a.test/x"), Err(Refusal::NotOriginForm));
        assert_eq!(target_authority(b"a.test:443"), Err(Refusal::NotOriginForm));
    }
}
