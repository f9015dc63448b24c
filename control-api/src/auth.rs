//! Bearer tokens: known only by their SHA-256, compared in constant time; `publish`, `read` and
//! `logs` scopes (a publish token may also read; a logs token may only query decision logs), and
//! the bundles a token may touch.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A configured bearer token: only its SHA-256 is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub name: String,
    pub scope: Scope,
    pub sha256: [u8; 32],
    /// The only gateway instance this token may speak for (bundle GETs, status reports).
    pub instance: Option<String>,
    /// The only bundles this token may touch (fetch, publish, report on, log, query the logs
    /// of); `None`: any.
    pub bundles: Option<Vec<String>>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Download bundles, list revisions, report status, read the fleet.
    Read,
    /// Everything `Read` may, plus publish and roll back.
    Publish,
    /// Query decision logs (`GET /v1/logs`), and nothing else: no bundle, no fleet. Neither a
    /// read nor a publish token may query them (they hold requests' inputs).
    Logs,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Logs => "logs",
        }
    }

    /// Whether a token of this scope may do what `needed` requires.
    pub fn allows(self, needed: Scope) -> bool {
        matches!(
            (self, needed),
            (Scope::Publish, Scope::Publish | Scope::Read) | (Scope::Read, Scope::Read) | (Scope::Logs, Scope::Logs)
        )
    }
}

/// The caller a valid token identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name: what `published_by` records.
    pub name: String,
    pub scope: Scope,
    /// The only gateway instance the token may speak for, when bound to one.
    pub instance: Option<String>,
    /// The only bundles the token may touch, when limited to some.
    pub bundles: Option<Vec<String>>,
}

impl Principal {
    /// Whether the token may touch `bundle` (fetch, publish, report on, log or query it).
    pub fn may_touch(&self, bundle: &str) -> bool {
        self.bundles.as_ref().is_none_or(|list| list.iter().any(|b| b == bundle))
    }
}

/// Why a request is not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required (Authorization: Bearer TOKEN)")]
    Missing,
    #[error("unknown bearer token")]
    Unknown,
    #[error("token `{name}` has scope `{}`; this call needs `{}`", .has.as_str(), .needs.as_str())]
    Forbidden { name: String, has: Scope, needs: Scope },
}

/// The lowercase hex SHA-256 of a token: what the config's `sha256` holds.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why no token could be read to hash.
#[derive(Debug, thiserror::Error)]
pub enum TokenInputError {
    #[error("cannot read the token from standard input: {0}")]
    Read(#[from] std::io::Error),
    #[error("the token is empty: give it on standard input, as in `printf %s \"$TOKEN\" | control-api hash-token`")]
    Empty,
}

/// Reads one token from `input`: its first line, without the line ending. Reading it there
/// (not from the command line) keeps it out of shell history and the process list.
pub fn read_token(mut input: impl std::io::BufRead) -> Result<String, TokenInputError> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let token = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if token.is_empty() {
        return Err(TokenInputError::Empty);
    }
    Ok(token.to_owned())
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<TokenConfig>);

impl Tokens {
    pub fn new(tokens: Vec<TokenConfig>) -> Self {
        Tokens(tokens)
    }

    /// Identifies the bearer of an `Authorization` header value and checks its scope. Every
    /// configured hash is compared, in constant time, whatever matches.
    pub fn authorize(&self, authorization: Option<&[u8]>, needs: Scope) -> Result<Principal, AuthError> {
        let token = authorization.and_then(bearer).ok_or(AuthError::Missing)?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found: Option<&TokenConfig> = None;
        for t in &self.0 {
            if bool::from(t.sha256.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        let t = found.ok_or(AuthError::Unknown)?;
        if !t.scope.allows(needs) {
            return Err(AuthError::Forbidden { name: t.name.clone(), has: t.scope, needs });
        }
        Ok(Principal { name: t.name.clone(), scope: t.scope, instance: t.instance.clone(), bundles: t.bundles.clone() })
    }
}

/// The token of `Bearer TOKEN` (the scheme is case-insensitive); `None` for anything else.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let hash = |t: &str| <[u8; 32]>::from(Sha256::digest(t.as_bytes()));
        Tokens::new(vec![
            TokenConfig {
                name: "ci".into(),
                scope: Scope::Publish,
                sha256: hash("pub-secret"),
                instance: None,
                bundles: None,
            },
            TokenConfig {
                name: "gw".into(),
                scope: Scope::Read,
                sha256: hash("read-secret"),
                instance: None,
                bundles: None,
            },
            TokenConfig {
                name: "authors".into(),
                scope: Scope::Logs,
                sha256: hash("logs-secret"),
                instance: None,
                bundles: Some(vec!["main".into()]),
            },
        ])
    }

    #[test]
    fn hashes_tokens_as_lowercase_hex_sha256() {
        assert_eq!(hash_token("test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }

    #[test]
    fn a_token_is_read_as_its_first_line_without_the_line_ending() {
        assert_eq!(read_token(&b"s3cret\n"[..]).unwrap(), "s3cret");
        assert_eq!(read_token(&b"s3cret\r\nmore\n"[..]).unwrap(), "s3cret");
        assert_eq!(read_token(&b" spaced out "[..]).unwrap(), " spaced out ");
        assert!(matches!(read_token(&b""[..]), Err(TokenInputError::Empty)));
        assert!(matches!(read_token(&b"\n"[..]), Err(TokenInputError::Empty)));
    }

    #[test]
    fn a_publish_token_may_read_and_publish() {
        let t = tokens();
        assert_eq!(t.authorize(Some(b"Bearer pub-secret"), Scope::Publish).unwrap().name, "ci");
        assert_eq!(t.authorize(Some(b"bearer  pub-secret "), Scope::Read).unwrap().scope, Scope::Publish);
    }

    #[test]
    fn a_read_token_may_not_publish() {
        let t = tokens();
        assert!(t.authorize(Some(b"Bearer read-secret"), Scope::Read).is_ok());
        let e = t.authorize(Some(b"Bearer read-secret"), Scope::Publish).unwrap_err();
        assert_eq!(e, AuthError::Forbidden { name: "gw".into(), has: Scope::Read, needs: Scope::Publish });
    }

    #[test]
    fn only_a_logs_token_may_query_logs_and_it_may_do_nothing_else() {
        let t = tokens();
        let p = t.authorize(Some(b"Bearer logs-secret"), Scope::Logs).unwrap();
        assert_eq!((p.name.as_str(), p.scope), ("authors", Scope::Logs));
        for needs in [Scope::Read, Scope::Publish] {
            let e = t.authorize(Some(b"Bearer logs-secret"), needs).unwrap_err();
            assert_eq!(e, AuthError::Forbidden { name: "authors".into(), has: Scope::Logs, needs });
        }
        for (secret, has) in [("pub-secret", Scope::Publish), ("read-secret", Scope::Read)] {
            let header = format!("Bearer {secret}");
            let e = t.authorize(Some(header.as_bytes()), Scope::Logs).unwrap_err();
            assert!(matches!(e, AuthError::Forbidden { has: h, needs: Scope::Logs, .. } if h == has), "{e:?}");
        }
    }

    #[test]
    fn a_token_limited_to_bundles_may_touch_those_only() {
        let t = tokens();
        let limited = t.authorize(Some(b"Bearer logs-secret"), Scope::Logs).unwrap();
        assert!(limited.may_touch("main") && !limited.may_touch("other"));
        let any = t.authorize(Some(b"Bearer read-secret"), Scope::Read).unwrap();
        assert!(any.may_touch("main") && any.may_touch("other"));
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused() {
        let t = tokens();
        assert_eq!(t.authorize(None, Scope::Read), Err(AuthError::Missing));
        assert_eq!(t.authorize(Some(b"Basic cHViLXNlY3JldA=="), Scope::Read), Err(AuthError::Missing));
        assert_eq!(t.authorize(Some(b"Bearer "), Scope::Read), Err(AuthError::Missing));
        assert_eq!(t.authorize(Some(b"Bearer pub-secreT"), Scope::Read), Err(AuthError::Unknown));
    }
}
