//! A bundle's rate limits (`data.gateway.rate_limits`), compiled: what a limit keys on, its rate
//! and burst, and whether it is enforced or only counted. The gateway keeps the counts
//! (`gateway::rate_limit`); a bundle only says what they are.

use std::time::Duration;

use crate::settings::RateLimitSpec;
pub use crate::settings::{LimitMode, LimitScope};

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The verified bearer token's `sub`.
    JwtSub,
    /// A claim of the verified bearer token (its JSON text when it is not a string).
    JwtClaim(String),
    /// The client's address, as the security contract defines it (the connection's peer).
    ClientIp,
    /// A request header (lower case), such as an API key.
    Header(String),
    /// One count for the whole route.
    Route,
}

impl LimitKey {
    /// Whether the key is known before credentials are verified.
    pub fn before_auth(&self) -> bool {
        !matches!(self, LimitKey::JwtSub | LimitKey::JwtClaim(_))
    }
}

/// One compiled limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub key: LimitKey,
    /// `quota` requests per `window`: the sustained rate.
    pub quota: u32,
    pub window: Duration,
    /// Requests a key may send at once after being idle.
    pub burst: u32,
    pub mode: LimitMode,
    pub before_auth: bool,
    /// `local`: this gateway's own count; `global`: a fleet-wide quota, counted through the
    /// gateway's quota store (a sliding window of `quota` per `window`).
    pub scope: LimitScope,
}

impl RateLimit {
    /// The time one request's share of the rate takes (GCRA's emission interval).
    pub fn emission(&self) -> Duration {
        self.window / self.quota.max(1)
    }
}

/// The largest burst a limit may allow.
const MAX_BURST: u32 = 1_000_000;

/// The most limits a bundle may define: each is a table of `limits.rate_limit_keys` keys on
/// every gateway.
pub const MAX_LIMITS: usize = 64;

/// Headers a limit may not count by: the host (on HTTP/2 it is `:authority`), credentials and
/// cookies (a client rotates them at will), and the forwarding claims (a client writes them).
const UNKEYABLE: [&str; 8] =
    ["host", "authorization", "cookie", "x-forwarded-for", "forwarded", "x-real-ip", "true-client-ip", "x-client-ip"];

/// Compiles one limit; the message says what is wrong.
pub fn compile(name: &str, spec: &RateLimitSpec) -> Result<RateLimit, String> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(
            "a limit's name is 1 to 64 letters, digits, `_`, `.` or `-` (it is sent in the RateLimit headers)".into()
        );
    }
    let key = parse_key(&spec.key)?;
    if let LimitKey::Header(h) = &key {
        if UNKEYABLE.contains(&h.as_str()) {
            return Err(format!(
                "`key: header.{h}`: a client chooses that header's value freely; use client_ip or a verified claim"
            ));
        }
    }
    let (quota, window) = parse_rate(&spec.rate)?;
    let burst = spec.burst.unwrap_or(quota);
    if burst == 0 || burst > MAX_BURST {
        return Err(format!("`burst` must be 1 to {MAX_BURST}"));
    }
    if spec.scope == LimitScope::Global && burst != quota {
        return Err(format!(
            "`burst: {burst}` with `scope: global`: a fleet quota admits up to {quota} in any window of the rate \
             (a sliding window), so its burst is the rate itself; leave `burst` out"
        ));
    }
    if spec.before_auth && !key.before_auth() {
        return Err(format!(
            "`before_auth` with key `{}`: a token's claims are known only after it is verified",
            spec.key
        ));
    }
    Ok(RateLimit {
        name: name.to_owned(),
        key,
        quota,
        window,
        burst,
        mode: spec.mode,
        before_auth: spec.before_auth,
        scope: spec.scope,
    })
}

fn parse_key(key: &str) -> Result<LimitKey, String> {
    let header = |n: &str| !n.is_empty() && http_canon::is_token(n.as_bytes());
    match key {
        "jwt.sub" => Ok(LimitKey::JwtSub),
        "client_ip" => Ok(LimitKey::ClientIp),
        "route" => Ok(LimitKey::Route),
        k => match (k.strip_prefix("jwt.claims."), k.strip_prefix("header.")) {
            (Some(c), _) if !c.is_empty() => Ok(LimitKey::JwtClaim(c.to_owned())),
            (_, Some(h)) if header(h) => Ok(LimitKey::Header(h.to_ascii_lowercase())),
            _ => Err(format!("`key: {k}` is not jwt.sub, jwt.claims.<name>, client_ip, header.<name> or route")),
        },
    }
}

/// `100/s`, `1000/min`, `5000/h`.
fn parse_rate(rate: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("`rate: {rate}` is not N/s, N/min or N/h with N from 1 to {MAX_BURST}");
    let (n, per) = rate.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let window = match per.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if n == 0 || n > MAX_BURST {
        return Err(bad());
    }
    Ok((n, window))
}

/// A claim's key: the token's issuer, a type tag and the value's text, so that one subject of
/// two issuers, or a claim `42` and a claim `"42"`, are two keys; `null` is no key.
pub fn claim_key(issuer: &str, value: &serde_json::Value) -> Option<Vec<u8>> {
    let (tag, text) = match value {
        serde_json::Value::Null => return None,
        serde_json::Value::String(s) => (b's', std::borrow::Cow::Borrowed(s.as_str())),
        other => (b'j', std::borrow::Cow::Owned(other.to_string())),
    };
    let mut key = Vec::with_capacity(issuer.len() + 2 + text.len());
    key.extend_from_slice(issuer.as_bytes());
    key.extend_from_slice(&[0, tag]);
    key.extend_from_slice(text.as_bytes());
    Some(key)
}

/// What a limit counts a logged decision event by (its input, either format).
fn event_key(key: &LimitKey, event: &serde_json::Value, route: &str) -> Option<Vec<u8>> {
    let input = &event["input"];
    let envoy = input["attributes"].is_object();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        other => Some(other.to_string().into_bytes()),
    };
    let issuer = input["jwt"]["issuer"].as_str().unwrap_or_default();
    match key {
        LimitKey::JwtSub => claim_key(issuer, &input["jwt"]["claims"]["sub"]),
        LimitKey::JwtClaim(c) => claim_key(issuer, &input["jwt"]["claims"][c.as_str()]),
        LimitKey::ClientIp if envoy => text(&input["attributes"]["source"]["address"]["socketAddress"]["address"]),
        LimitKey::ClientIp => text(&input["request"]["client_ip"]).filter(|s| !s.is_empty()),
        LimitKey::Header(h) if envoy => text(&input["attributes"]["request"]["http"]["headers"][h.as_str()]),
        LimitKey::Header(h) => text(&input["request"]["headers"][h.as_str()]),
        LimitKey::Route => Some(route.as_bytes().to_vec()),
    }
}

/// Nanoseconds since the epoch of an event's RFC 3339 `timestamp`.
fn event_time(event: &serde_json::Value) -> Option<i128> {
    let t = event["timestamp"].as_str()?;
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// How many of the logged requests (`events`: each with the candidate's route, whether its
/// rule allowed, and a limit its decision named) each of the candidate's limits would have
/// refused, replayed in time order with the gateway's algorithm (GCRA), each gateway's events
/// (`labels.id`) apart: a local limit is each gateway's own (a global one is the fleet's, replayed
/// over every gateway's events together, as a bucket the size of its quota). Only allowed requests spend a key's
/// quota, except under a limit applied before authentication. Logs are often sampled, and
/// requests refused before a decision (401, 429 before authentication) are not logged: the
/// counts are then a floor.
#[allow(clippy::type_complexity)]
pub fn replay(
    snap: &crate::Snapshot,
    events: &mut [(&serde_json::Value, (usize, bool, Option<usize>))],
) -> std::collections::BTreeMap<String, usize> {
    use std::collections::{BTreeMap, HashMap};
    events.sort_by_cached_key(|(e, _)| event_time(e).unwrap_or(0));
    let mut tat: HashMap<(String, usize, Vec<u8>), i128> = HashMap::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for (event, (route_ix, allowed, named)) in events.iter() {
        let Some(now) = event_time(event) else { continue };
        let instance = event["labels"]["id"].as_str().unwrap_or_default().to_owned();
        let route = &snap.routes[*route_ix];
        let extra = named.filter(|i| !route.rate_limits.contains(i));
        for &i in route.rate_limits.iter().chain(extra.iter()) {
            let limit = &snap.rate_limits[i];
            if !(*allowed || limit.before_auth) {
                continue;
            }
            let Some(key) = event_key(&limit.key, event, &route.name) else { continue };
            let emission = limit.emission().as_nanos() as i128;
            let tolerance = emission * i128::from(limit.burst);
            let counted_by = if limit.scope == LimitScope::Global { String::new() } else { instance.clone() };
            let t = tat.entry((counted_by, i, key)).or_insert(i128::MIN);
            let next = (*t).max(now) + emission;
            if next - now > tolerance {
                *refused.entry(limit.name.clone()).or_default() += 1;
            } else {
                *t = next;
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, rate: &str) -> RateLimitSpec {
        RateLimitSpec {
            key: key.into(),
            rate: rate.into(),
            burst: None,
            scope: LimitScope::Local,
            mode: LimitMode::Enforce,
            before_auth: false,
        }
    }

    #[test]
    fn limits_compile_with_their_key_rate_and_burst() {
        let l = compile("per_user", &spec("jwt.sub", "100/s")).unwrap();
        assert_eq!((l.quota, l.window, l.burst), (100, Duration::from_secs(1), 100));
        assert_eq!(l.emission(), Duration::from_millis(10));
        assert_eq!(
            compile("k", &spec("header.X-Api-Key", "60/min")).unwrap().key,
            LimitKey::Header("x-api-key".into())
        );
        assert_eq!(compile("k", &spec("jwt.claims.tenant", "1/h")).unwrap().key, LimitKey::JwtClaim("tenant".into()));
        assert_eq!(compile("k", &spec("client_ip", "5/s")).unwrap().emission(), Duration::from_millis(200));
    }

    #[test]
    fn bad_limits_are_refused_with_what_is_wrong() {
        for (key, rate, why) in [
            ("jwt.subject", "1/s", "is not jwt.sub"),
            ("header.", "1/s", "is not jwt.sub"),
            ("header.a b", "1/s", "is not jwt.sub"),
            ("route", "0/s", "N/s"),
            ("route", "10/day", "N/s"),
            ("route", "ten/s", "N/s"),
        ] {
            let e = compile("l", &spec(key, rate)).unwrap_err();
            assert!(e.contains(why), "{key} {rate}: {e}");
        }
        let mut s = spec("jwt.sub", "1/s");
        s.before_auth = true;
        assert!(compile("l", &s).unwrap_err().contains("before_auth"));
        let mut s = spec("route", "300/s");
        s.scope = LimitScope::Global;
        assert_eq!(compile("l", &s).unwrap().scope, LimitScope::Global);
        s.burst = Some(20);
        assert!(compile("l", &s).unwrap_err().contains("`burst: 20` with `scope: global`"));
        let mut s = spec("route", "1/s");
        s.burst = Some(0);
        assert!(compile("l", &s).unwrap_err().contains("burst"));
    }
}
