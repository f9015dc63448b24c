//! Property checks over the code that reads what a client or a bundle source controls, for the
//! fuzz targets in `fuzz/` (cargo-fuzz, nightly) and the bounded pass of
//! `tests/fuzz_corpus.rs` (stable, in CI). Not an API.
//!
//! Each function takes arbitrary bytes and panics (`assert!`) when the code under test breaks
//! its contract; returning is a pass. The contracts are written out here as independent
//! reference models (a literal RFC 3986 `remove_dot_segments`, a PHP-style query-name reading,
//! the token68 grammar), so a check never asks the code under test what the answer should be.
//!
//! * [`canon_path`]: [`canon::path`] under all nine [`PathRules`], and [`canon::without_params`].
//! * [`canon_host`]: [`canon::authority`], [`canon::target_authority`] and [`canon::host`].
//! * [`canon_query`]: [`canon::method`], [`canon::query`] and [`canon::unambiguous_query`].
//! * [`credentials`]: [`authorize::credentials`].
//! * [`bundle_tar_gz`]: the bundle reader ([`archive::read_tar_gz`], [`Bundle`], then
//!   [`Snapshot::compile`]) on the bytes as a tarball.
//! * [`bundle_files`]: the same reader on a real gzipped tar built from the bytes read as
//!   (path, contents) pairs ([`tar_gz_of`]), so inputs reach the manifest, YAML, JSON and Rego.

use std::borrow::Cow;

use crate::archive::{self, Files, Limits};
use crate::authorize::{self, Credentials};
use crate::{Bundle, Snapshot};
use http_canon::{self as canon, EscapedSlashes, Host, PathParams, PathRules, Refusal};

/// Every combination of the two path settings.
pub const ALL_PATH_RULES: [PathRules; 9] = {
    let s = [EscapedSlashes::Reject, EscapedSlashes::Unescape, EscapedSlashes::Keep];
    let p = [PathParams::Reject, PathParams::Strip, PathParams::Keep];
    [
        PathRules { slashes: s[0], params: p[0] },
        PathRules { slashes: s[0], params: p[1] },
        PathRules { slashes: s[0], params: p[2] },
        PathRules { slashes: s[1], params: p[0] },
        PathRules { slashes: s[1], params: p[1] },
        PathRules { slashes: s[1], params: p[2] },
        PathRules { slashes: s[2], params: p[0] },
        PathRules { slashes: s[2], params: p[1] },
        PathRules { slashes: s[2], params: p[2] },
    ]
};

/// Small limits, so that a fuzz input can reach every one of them and memory stays bounded.
pub const LIMITS: Limits =
    Limits { max_archive_bytes: 256 << 10, max_file_bytes: 64 << 10, max_total_bytes: 256 << 10, max_entries: 64 };

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn any_hex(b: u8) -> Option<u8> {
    upper_hex(b.to_ascii_uppercase())
}

/// The characters the path contract refuses (decoded): every character whose NFKC form holds a
/// `.`, `/`, `\` or `%` (Unicode 14), which a normalizing backend reads as those, plus U+2215
/// DIVISION SLASH, which looks like one. Derived apart from `canon`'s own list on purpose.
pub const CONFUSABLE: [char; 41] = [
    '\u{2024}',
    '\u{2025}',
    '\u{2026}',
    '\u{2100}',
    '\u{2101}',
    '\u{2105}',
    '\u{2106}',
    '\u{2215}',
    '\u{2488}',
    '\u{2489}',
    '\u{248A}',
    '\u{248B}',
    '\u{248C}',
    '\u{248D}',
    '\u{248E}',
    '\u{248F}',
    '\u{2490}',
    '\u{2491}',
    '\u{2492}',
    '\u{2493}',
    '\u{2494}',
    '\u{2495}',
    '\u{2496}',
    '\u{2497}',
    '\u{2498}',
    '\u{2499}',
    '\u{249A}',
    '\u{249B}',
    '\u{33C2}',
    '\u{33C7}',
    '\u{33D8}',
    '\u{FE19}',
    '\u{FE30}',
    '\u{FE52}',
    '\u{FE68}',
    '\u{FE6A}',
    '\u{FF05}',
    '\u{FF0E}',
    '\u{FF0F}',
    '\u{FF3C}',
    '\u{1F100}',
];

// ----------------------------------------------------------------------------------- paths

/// [`canon::path`] on `data` (lossily as text) under every [`PathRules`]: never panics, every
/// `Ok` is canonical ([`assert_canonical_path`]) and a fixed point, a refusal names a rule that
/// is in force, a path accepted under the strictest rules reads the same under all, and plain
/// paths (`/` and unreserved characters) agree with [`reference_path`].
pub fn canon_path(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let strictest = canon::path(&raw, PathRules::default()).map(Cow::into_owned);
    for rules in ALL_PATH_RULES {
        let got = canon::path(&raw, rules);
        check_path(&raw, rules, &got);
        if let Ok(strict) = &strictest {
            assert_eq!(
                got.as_deref(),
                Ok(strict.as_str()),
                "{raw:?}: accepted under the strictest rules, read otherwise under {rules:?}"
            );
        }
    }
}

fn check_path(raw: &str, rules: PathRules, got: &Result<Cow<'_, str>, Refusal>) {
    let plain = raw.bytes().all(|b| b == b'/' || unreserved(b));
    let p = match got {
        Err(r) => {
            assert_eq!(*r == Refusal::NotOriginForm, !raw.starts_with('/'), "{raw:?} under {rules:?}: {r:?}");
            assert!(!plain || !raw.starts_with('/'), "{raw:?} under {rules:?}: a plain path refused ({r:?})");
            let applies = match r {
                Refusal::EscapedSlash => rules.slashes == EscapedSlashes::Reject,
                Refusal::PathParams => rules.params == PathParams::Reject,
                Refusal::DotSemicolon | Refusal::EmptyParamSegment => rules.params == PathParams::Keep,
                Refusal::NotOriginForm
                | Refusal::Backslash
                | Refusal::Nul
                | Refusal::BadEscape
                | Refusal::BadPathChar
                | Refusal::BadUtf8
                | Refusal::Confusable => true,
                _ => false,
            };
            assert!(applies, "{raw:?} under {rules:?}: refused as {r:?}, a rule not in force");
            return;
        }
        Ok(p) => p,
    };
    assert_canonical_path(p, rules, raw);
    let again = canon::path(p, rules);
    assert_eq!(again.as_deref(), Ok(&**p), "{raw:?} under {rules:?}: canonical {p:?} is not a fixed point");
    if plain {
        assert_eq!(&**p, reference_path(raw), "{raw:?} under {rules:?}: differs from RFC 3986 remove_dot_segments");
    }
    if rules.params == PathParams::Keep {
        // What routes match and the policy sees is itself a canonical path.
        let bare = canon::without_params(p);
        assert!(!bare.contains(';'), "{p:?}: without_params left a `;`: {bare:?}");
        assert_eq!(bare, reference_without_params(p), "{p:?}: without_params");
        let again = canon::path(&bare, rules);
        assert_eq!(again.as_deref(), Ok(&*bare), "{raw:?} under {rules:?}: {p:?} without params is not canonical");
    }
}

/// The path contract, checked on its own: starts with `/`; no `//`; no segment (nor, under
/// `params: keep`, the part of one before its `;`) that is `.` or `..`; visible ASCII only, no
/// `\`; every `%` followed by two upper-case hex digits that encode neither an unreserved
/// character nor NUL; `%2F`/`%5C` only under `slashes: keep`; `;` only under `params: keep`;
/// each segment decodes to UTF-8 holding no [`CONFUSABLE`].
pub fn assert_canonical_path(p: &str, rules: PathRules, raw: &str) {
    let ctx = || format!("{raw:?} under {rules:?} gave {p:?}");
    let b = p.as_bytes();
    assert_eq!(b.first(), Some(&b'/'), "{}: not absolute", ctx());
    assert!(!p.contains("//"), "{}: `//`", ctx());
    assert!(
        b.iter().all(|c| (0x21..=0x7e).contains(c) && *c != b'\\'),
        "{}: a byte outside visible ASCII or `\\`",
        ctx()
    );
    assert!(rules.params == PathParams::Keep || !p.contains(';'), "{}: `;` under {:?}", ctx(), rules.params);
    // RFC 3986 allows these only escaped in a path: one spelling, `%22` and never `"`.
    assert!(!b.iter().any(|c| b"\"<>`{}|^[]#".contains(c)), "{}: a character a path may not hold raw", ctx());
    for seg in p[1..].split('/') {
        let name = if rules.params == PathParams::Keep { seg.split(';').next().unwrap_or("") } else { seg };
        for s in [seg, name] {
            assert!(s != "." && s != "..", "{}: dot segment {seg:?}", ctx());
        }
        let mut decoded = Vec::new();
        let sb = seg.as_bytes();
        let mut i = 0;
        while i < sb.len() {
            if sb[i] != b'%' {
                decoded.push(sb[i]);
                i += 1;
                continue;
            }
            let (Some(h), Some(l)) =
                (sb.get(i + 1).and_then(|c| upper_hex(*c)), sb.get(i + 2).and_then(|c| upper_hex(*c)))
            else {
                panic!("{}: `%` not followed by two upper-case hex digits in {seg:?}", ctx());
            };
            let d = h * 16 + l;
            assert!(!unreserved(d), "{}: an escaped unreserved character in {seg:?}", ctx());
            assert!(d != 0, "{}: `%00`", ctx());
            if d == b'/' || d == b'\\' {
                assert_eq!(rules.slashes, EscapedSlashes::Keep, "{}: an escaped slash", ctx());
            }
            decoded.push(d);
            i += 3;
        }
        let text = std::str::from_utf8(&decoded);
        assert!(text.is_ok(), "{}: segment {seg:?} does not decode to UTF-8", ctx());
        let text = text.unwrap_or_default();
        assert!(!text.chars().any(|c| CONFUSABLE.contains(&c)), "{}: a confusable in {seg:?}", ctx());
    }
}

/// The canonical form of a plain path (`/` and unreserved characters only): runs of `/`
/// merged, then RFC 3986 5.2.4 `remove_dot_segments`, step by step as the RFC writes it.
pub fn reference_path(raw: &str) -> String {
    let mut merged = String::with_capacity(raw.len());
    for c in raw.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    remove_dot_segments(&merged)
}

/// RFC 3986 section 5.2.4, literally.
pub fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_owned();
    let mut output = String::new();
    let pop = |output: &mut String| {
        let cut = output.rfind('/').unwrap_or(0);
        output.truncate(cut);
    };
    while !input.is_empty() {
        if input.starts_with("../") {
            input.replace_range(..3, "");
        } else if input.starts_with("./") {
            input.replace_range(..2, "");
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            pop(&mut output);
        } else if input == "/.." {
            input = "/".into();
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input.replace_range(..end, "");
        }
    }
    output
}

fn reference_without_params(p: &str) -> String {
    p.split('/').map(|seg| seg.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/")
}

// ------------------------------------------------------------------------------------ hosts

/// The host readers on `data` split at `\n`: the first line is a request target
/// ([`canon::target_authority`]), the next ones (up to three) `Host` values. Every line is
/// also read alone by [`canon::authority`] for ports 80 and 443. Never panics; an accepted host
/// is lower-case, has no trailing dot nor default port, reads back as itself from its
/// authority, and [`canon::host`] refuses two `Host` values and any disagreement.
pub fn canon_host(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let headers: Vec<&[u8]> = lines.take(3).collect();
    for line in std::iter::once(target).chain(headers.iter().copied()) {
        let text = String::from_utf8_lossy(line);
        for port in [80, 443] {
            check_authority(&text, port);
        }
    }
    let authority = canon::target_authority(target);
    check_target_authority(target, &authority);
    let authority = authority.ok().flatten();
    for http11 in [true, false] {
        for port in [80, 443] {
            let got = canon::host(&headers, authority, http11, port);
            check_host(&headers, authority, http11, port, &got);
        }
    }
}

fn check_authority(raw: &str, default_port: u16) {
    let Ok(h) = canon::authority(raw, default_port) else { return };
    let name = &h.name;
    assert!(!name.is_empty(), "{raw:?}: empty host name");
    assert_eq!(*name, name.to_ascii_lowercase(), "{raw:?}: host name not lower-case");
    assert!(!name.ends_with('.'), "{raw:?}: trailing dot in {name:?}");
    assert_ne!(h.port, Some(default_port), "{raw:?}: the default port kept");
    if let Some(ip) = name.strip_prefix('[') {
        // An IPv6 literal in its one RFC 5952 spelling, of the address sent.
        let ip = ip.strip_suffix(']').and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok());
        let sent = raw.strip_prefix('[').and_then(|r| r.split_once(']')).and_then(|(ip, _)| ip.parse().ok());
        assert!(ip.is_some() && ip == sent, "{raw:?}: IP literal {name:?} is not the one sent");
        assert_eq!(*name, format!("[{}]", ip.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)), "{raw:?}: not RFC 5952");
    } else {
        assert!(raw.to_ascii_lowercase().starts_with(name.as_str()), "{raw:?}: host {name:?} is not the one sent");
        // A name ending in a number is an IPv4 address in dotted-decimal form.
        let last = name.rsplit('.').next().unwrap_or(name);
        if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
            assert!(
                name.parse::<std::net::Ipv4Addr>().is_ok(),
                "{raw:?}: numeric host {name:?} is not an IPv4 address"
            );
        }
        assert!(name.len() <= 253, "{raw:?}: host name longer than 253");
        for label in name.split('.') {
            assert!((1..=63).contains(&label.len()), "{raw:?}: label {label:?} of {name:?}");
            assert!(
                label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{raw:?}: label {label:?}"
            );
        }
    }
    let authority = h.authority();
    assert_eq!(
        canon::authority(&authority, default_port).as_ref(),
        Ok(&h),
        "{raw:?}: {authority:?} does not read back"
    );
    assert!(h.is(authority.as_bytes()), "{raw:?}: {h:?} is not its own authority {authority:?}");
    if h.is(raw.as_bytes()) {
        assert_eq!(raw, authority, "{raw:?}: taken as already canonical, but canonical is {authority:?}");
    }
}

fn check_target_authority(raw: &[u8], got: &Result<Option<&str>, Refusal>) {
    let scheme = [&b"http://"[..], b"https://"]
        .into_iter()
        .find(|s| raw.len() >= s.len() && raw[..s.len()].eq_ignore_ascii_case(s))
        .map(<[u8]>::len);
    match got {
        Ok(None) => assert_eq!(raw.first(), Some(&b'/'), "{raw:?}: origin form without `/`"),
        Ok(Some(a)) => {
            let Some(len) = scheme else { panic!("{raw:?}: an authority without an http(s) scheme") };
            assert!(raw[len..].starts_with(a.as_bytes()), "{raw:?}: authority {a:?} is not the one sent");
            assert!(!a.contains(['/', '?', '#']), "{raw:?}: authority {a:?} runs into the path");
        }
        Err(Refusal::NotOriginForm) => {
            assert!(raw.first() != Some(&b'/') && scheme.is_none(), "{raw:?}: refused as not origin form")
        }
        Err(Refusal::BadHost) => assert!(scheme.is_some(), "{raw:?}: bad host without a scheme"),
        Err(r) => panic!("{raw:?}: target refused as {r:?}"),
    }
}

fn check_host(headers: &[&[u8]], target: Option<&str>, http11: bool, port: u16, got: &Result<Option<Host>, Refusal>) {
    let ctx = || format!("host({headers:?}, {target:?}, {http11}, {port}) = {got:?}");
    if headers.len() > 1 {
        assert_eq!(*got, Err(Refusal::DuplicateHost), "{}", ctx());
        return;
    }
    let header = headers.first().map(|h| std::str::from_utf8(h).map(|h| canon::authority(h.trim(), port)));
    let from_target = target.map(|t| canon::authority(t, port));
    match got {
        Ok(Some(h)) => {
            let want = match &from_target {
                Some(t) => t.as_ref().ok(),
                None => header.as_ref().and_then(|h| h.as_ref().ok()).and_then(|h| h.as_ref().ok()),
            };
            assert_eq!(Some(h), want, "{}", ctx());
            if let (Some(_), Some(Ok(Ok(hh)))) = (&from_target, &header) {
                assert_eq!(h, hh, "{}: target and Host disagree", ctx());
            }
            assert!(!target.is_some_and(|t| t.contains('@')), "{}: userinfo accepted", ctx());
        }
        Ok(None) => assert!(!http11 && headers.is_empty() && target.is_none(), "{}", ctx()),
        Err(_) => {}
    }
}

// ---------------------------------------------------------------------------- method, query

/// [`canon::method`], [`canon::query`] and [`canon::unambiguous_query`] on `data` (lossily as
/// text). A method is refused exactly when it is a standard method in another case; a query
/// holding a parameter whose decoded name is `_method` or `access_token` is refused, and so is
/// one that PHP (Laravel, Symfony) reads under that name ([`php_name`], in any case, an array
/// of it included); [`canon::unambiguous_query`] agrees with
/// [`query_is_unambiguous`].
pub fn canon_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    let miscased = !METHODS.contains(&&*text) && METHODS.contains(&&*text.to_ascii_uppercase());
    let want = if miscased { Err(Refusal::MethodCase) } else { Ok(()) };
    assert_eq!(canon::method(&text), want, "method {text:?}");

    let got = canon::query(&text);
    let names: Vec<String> =
        text.split(['&', ';']).map(|pair| pair.split_once('=').map_or(pair, |(n, _)| n)).map(form_decode).collect();
    let override_names = names.iter().flat_map(|n| [n.clone(), php_name(n)]);
    let mut overrides = override_names.filter(|n| {
        let n = n.strip_suffix("[]").unwrap_or(n);
        n.eq_ignore_ascii_case("_method") || n.eq_ignore_ascii_case("access_token")
    });
    match got {
        Ok(()) => assert_eq!(overrides.next(), None, "query {text:?}: a `_method` or `access_token` parameter passed"),
        Err(Refusal::MethodOverride | Refusal::TokenInQuery) => {
            assert!(overrides.next().is_some(), "query {text:?}: refused without an override or token parameter")
        }
        Err(r) => panic!("query {text:?}: refused as {r:?}"),
    }

    let got = canon::unambiguous_query(&text);
    let want = if query_is_unambiguous(&text) { Ok(()) } else { Err(Refusal::AmbiguousQuery) };
    assert_eq!(got, want, "unambiguous_query {text:?}");
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, a malformed escape is kept),
/// lossily as text.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).and_then(|c| any_hex(*c)), b.get(i + 2).and_then(|c| any_hex(*c))) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
            (b'+', ..) => out.push(b' '),
            (c, ..) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name PHP gives a decoded query parameter (`php_register_variable_ex`): cut at a NUL
/// (the name's length is its `strlen`), leading spaces dropped, then ` ` and `.` read as `_`, and so is a `[` that no `]` closes; `a[b]` is the
/// array `a` (returned as `a[]`).
pub fn php_name(name: &str) -> String {
    let name = name.split('\0').next().unwrap_or(name);
    let name = name.trim_start_matches(' ');
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        match c {
            ' ' | '.' => out.push('_'),
            // `a[b]=` is an array named `a`: not a usable override.
            '[' if name[i..].contains(']') => return format!("{out}[]"),
            '[' => {
                out.push('_');
                out.push_str(&name[i + 1..]);
                return out;
            }
            c => out.push(c),
        }
    }
    out
}

/// The contract of [`canon::unambiguous_query`], on its own: no `;`; no NUL, raw or escaped;
/// every `%` followed by two hex digits; no `[`, `]`, `.` or space (raw, `+` or escaped) in a
/// name (up to the first `=` of a `&`-separated pair); each name and value decodes to UTF-8.
pub fn query_is_unambiguous(q: &str) -> bool {
    q.split('&').all(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| -> Option<Vec<u8>> {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b';' | 0 => return None,
                    b'%' => {
                        let d = any_hex(*b.get(i + 1)?)? * 16 + any_hex(*b.get(i + 2)?)?;
                        out.push(d);
                        i += 3;
                        continue;
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            (!out.contains(&0)).then_some(out)
        };
        match (decode(name), decode(value)) {
            (Some(n), Some(v)) => {
                !n.iter().any(|b| matches!(b, b'[' | b']' | b'.' | b' '))
                    && !name.contains('+')
                    && std::str::from_utf8(&n).is_ok()
                    && std::str::from_utf8(&v).is_ok()
            }
            _ => false,
        }
    })
}

// ------------------------------------------------------------------------------ credentials

/// [`authorize::credentials`] on `data`: never panics; `Bearer(t)` only for exactly `bearer`
/// (any case), one space and a token68 `t`, and always for that; a value that starts with
/// `bearer` followed by a byte that is not a `tchar` (or nothing) is never `Other`; `Other(s)`
/// only for a token `s` that is not `bearer`, at the start of the value, followed by nothing or
/// a space.
pub fn credentials(data: &[u8]) {
    let got = authorize::credentials(data);
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let bearer_prefix = data.len() >= 6 && data[..6].eq_ignore_ascii_case(b"bearer");
    let exact = bearer_prefix && data.get(6) == Some(&b' ') && is_token68(&data[7..]);
    match got {
        Credentials::Bearer(t) => {
            assert!(exact, "{data:?}: Bearer({t:?}) from a value that is not `Bearer <token68>`");
            assert_eq!(t.as_bytes(), &data[7..], "{data:?}: Bearer({t:?}) is not the token sent");
        }
        Credentials::Other(s) => {
            assert!(!s.is_empty() && s.bytes().all(tchar), "{data:?}: Other({s:?}) is not a token");
            assert!(!s.eq_ignore_ascii_case("bearer"), "{data:?}: Other({s:?}) is a bearer scheme");
            assert!(data.starts_with(s.as_bytes()), "{data:?}: Other({s:?}) is not the scheme sent");
            let rest = &data[s.len()..];
            assert!(rest.is_empty() || rest[0] == b' ', "{data:?}: Other({s:?}) followed by {rest:?}");
            assert!(
                !(bearer_prefix && data.get(6).is_none_or(|b| !tchar(*b))),
                "{data:?}: a bearer value read as Other({s:?})"
            );
        }
        Credentials::Malformed => assert!(!exact, "{data:?}: a well-formed bearer token read as malformed"),
    }
}

/// RFC 9110 11.2 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &[u8]) -> bool {
    let body = s.iter().take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b)).count();
    body > 0 && s[body..].iter().all(|b| *b == b'=')
}

// ---------------------------------------------------------------------------------- bundles

/// The bundle reader on `data` as a `.tar.gz`, under [`LIMITS`]: see [`check_bundle`].
pub fn bundle_tar_gz(data: &[u8]) {
    check_bundle(data);
}

/// The bundle reader on a real gzipped tar built from `data` ([`tar_gz_of`]): see
/// [`check_bundle`].
pub fn bundle_files(data: &[u8]) {
    if let Some(tgz) = tar_gz_of(data) {
        check_bundle(&tgz);
    }
}

/// Reads `tgz` as a bundle under [`LIMITS`], and compiles it when it reads: never panics;
/// the files read are within every limit, under normalized relative paths, and read back the
/// same from the archive [`archive::write_tar_gz`] makes of them; [`Bundle::from_tar_gz`]
/// agrees with reading the files then [`Bundle::from_files`]; a refusal names at least one
/// error.
pub fn check_bundle(tgz: &[u8]) {
    let read = archive::read_tar_gz(tgz, &LIMITS);
    let whole = Bundle::from_tar_gz(tgz, &LIMITS);
    let files = match read {
        Err(e) => {
            assert!(whole.is_err(), "the archive is refused ({e}) but the bundle read");
            return;
        }
        Ok(files) => files,
    };
    check_files(&files);
    if let Ok(again) = archive::write_tar_gz(&files) {
        if again.len() as u64 <= LIMITS.max_archive_bytes {
            let back = archive::read_tar_gz(&again, &LIMITS);
            assert_eq!(back.as_ref().ok(), Some(&files), "the files do not read back from their own archive: {back:?}");
        }
    }
    let bundle = Bundle::from_files(files.clone());
    match (&bundle, &whole) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.files, files);
            assert_eq!(b.files, files);
            assert_eq!(a.data, b.data);
        }
        (Err(a), Err(b)) => {
            assert!(!a.0.is_empty(), "a bundle refused with no error");
            assert_eq!(a, b, "from_tar_gz and from_files refuse differently");
        }
        _ => panic!("from_tar_gz and from_files disagree: {:?} / {:?}", bundle.is_ok(), whole.is_ok()),
    }
    let Ok(bundle) = bundle else { return };
    for m in &bundle.modules {
        assert!(m.path.ends_with(".rego") && files.contains_key(&m.path), "module {:?}", m.path);
        assert!(m.package.starts_with("data."), "module {:?}: package {:?}", m.path, m.package);
    }
    assert!(bundle.data.is_object(), "the data document is not an object");
    if let Err(e) = Snapshot::compile(&bundle) {
        assert!(!e.0.is_empty(), "a bundle that does not compile, with no error");
    }
}

fn check_files(files: &Files) {
    assert!(files.len() <= LIMITS.max_entries, "{} files", files.len());
    let mut total = 0u64;
    for (path, data) in files {
        assert!(data.len() as u64 <= LIMITS.max_file_bytes, "{path:?}: {} bytes", data.len());
        total += data.len() as u64;
        assert!(!path.is_empty() && !path.starts_with('/') && !path.contains(['\\', '\0']), "path {path:?}");
        for part in path.split('/') {
            assert!(!matches!(part, "" | "." | ".."), "path {path:?}: segment {part:?}");
            assert!(part.as_bytes().get(1) != Some(&b':'), "path {path:?}: drive letter");
        }
        assert_eq!(archive::normalize_path(path).ok().as_deref(), Some(path.as_str()), "path {path:?} not normal");
    }
    assert!(total <= LIMITS.max_total_bytes, "{total} bytes in all");
}

/// Entry kinds a path may ask for with its first byte (`\x01` to `\x06`); any other first byte
/// is a regular file.
const KINDS: [tar::EntryType; 6] = [
    tar::EntryType::Symlink,
    tar::EntryType::Link,
    tar::EntryType::Directory,
    tar::EntryType::Fifo,
    tar::EntryType::Char,
    tar::EntryType::GNUSparse,
];

/// A gzipped tar made from `data` read as `path \0 contents \0 path \0 contents ...`. A path
/// whose first byte is `\x01`..`\x06` makes a link, directory or special entry instead (see
/// [`KINDS`]; a link's contents are its target). Paths are written into the header as they are
/// (`..`, absolute, not UTF-8), longer ones as GNU long names. `None` if the archive is over
/// [`LIMITS`]`.max_archive_bytes`.
pub fn tar_gz_of(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut builder = tar::Builder::new(Vec::new());
    let mut chunks = data.split(|b| *b == 0);
    while let Some(path) = chunks.next() {
        let contents = chunks.next().unwrap_or_default();
        let (kind, path) = match path.first() {
            Some(k @ 1..=6) => (KINDS[usize::from(*k - 1)], &path[1..]),
            _ => (tar::EntryType::Regular, path),
        };
        append_raw(&mut builder, kind, path, contents).ok()?;
    }
    let tar = builder.into_inner().ok()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).ok()?;
    let tgz = gz.finish().ok()?;
    (tgz.len() as u64 <= LIMITS.max_archive_bytes).then_some(tgz)
}

fn append_raw(
    builder: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &[u8],
    contents: &[u8],
) -> std::io::Result<()> {
    let link = kind.is_symlink() || kind.is_hard_link();
    if path.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_mtime(0);
        long.set_size(path.len() as u64 + 1);
        long.set_cksum();
        builder.append(&long, [path, b"\0"].concat().as_slice())?;
    }
    let mut header = tar::Header::new_gnu();
    let n = path.len().min(100);
    header.as_old_mut().name[..n].copy_from_slice(&path[..n]);
    if link {
        let n = contents.len().min(100);
        header.as_old_mut().linkname[..n].copy_from_slice(&contents[..n]);
    }
    header.set_entry_type(kind);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_mtime(0);
    let body: &[u8] = if link || kind.is_dir() { &[] } else { contents };
    header.set_size(body.len() as u64);
    header.set_cksum();
    builder.append(&header, body)
}
