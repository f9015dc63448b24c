//! The decision input document (DESIGN.md, "The decision contract"), built the same way by the
//! gateway, the benchmarks and the load tests' policy service.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regorus::Value;

use crate::reads::InputReads;

/// The parts of a request the input is made of.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// An object of lower-cased header names, as [`headers`] builds it.
    pub headers: Value,
    pub host: &'a str,
    pub scheme: &'a str,
    pub client_ip: &'a str,
}

fn s(v: &str) -> Value {
    Value::from(v)
}

/// The input's fixed keys, allocated once: cloning a `Value` string is a reference-count bump.
struct Keys {
    request: Value,
    method: Value,
    path: Value,
    query: Value,
    headers: Value,
    host: Value,
    scheme: Value,
    client_ip: Value,
    route: Value,
    jwt: Value,
    issuer: Value,
    claims: Value,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    request: s("request"),
    method: s("method"),
    path: s("path"),
    query: s("query"),
    headers: s("headers"),
    host: s("host"),
    scheme: s("scheme"),
    client_ip: s("client_ip"),
    route: s("route"),
    jwt: s("jwt"),
    issuer: s("issuer"),
    claims: s("claims"),
});

/// The parts of the input a rule can read, from [`InputReads`]: what it cannot read is left out
/// of its input, which then costs less to build and to key the decision cache on. Which
/// headers go in is the expensive part (every request carries a dozen); the query is parsed
/// only when read. The rest costs next to nothing and is always there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    headers: HeaderNeeds,
    query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderNeeds {
    None,
    /// Lower-case names, as the rule reads them (`input.request.headers["x-tenant"]`).
    Named(Vec<String>),
    All,
}

impl Needs {
    /// Everything: for rules whose reads are not known.
    pub const ALL: Needs = Needs { headers: HeaderNeeds::All, query: true };

    pub fn from_reads(reads: &InputReads) -> Needs {
        let InputReads::Paths(paths) = reads else { return Needs::ALL };
        let mut needs = Needs { headers: HeaderNeeds::None, query: false };
        for p in paths {
            let key = |i: usize| p.get(i).and_then(|k| k.as_string().ok()).map(|s| s.to_string());
            if key(0).as_deref() != Some("request") {
                continue;
            }
            match (key(1).as_deref(), p.len()) {
                (_, 1) => return Needs::ALL,
                (Some("query"), _) => needs.query = true,
                (Some("headers"), 2) => needs.headers = HeaderNeeds::All,
                (Some("headers"), _) => match (&mut needs.headers, key(2)) {
                    (HeaderNeeds::All, _) => {}
                    (_, None) => needs.headers = HeaderNeeds::All,
                    (HeaderNeeds::Named(names), Some(name)) => names.push(name),
                    (HeaderNeeds::None, Some(name)) => needs.headers = HeaderNeeds::Named(vec![name]),
                },
                _ => {}
            }
        }
        needs
    }

    /// Whether the header (its name in lower case) goes into the input.
    pub fn header(&self, name: &str) -> bool {
        match &self.headers {
            HeaderNeeds::None => false,
            HeaderNeeds::Named(names) => names.iter().any(|n| n == name),
            HeaderNeeds::All => true,
        }
    }

    /// Whether the rule can read any header: when not, the input's headers object is empty.
    pub fn any_header(&self) -> bool {
        self.headers != HeaderNeeds::None
    }

    /// Whether the query string is parsed into the input.
    pub fn query(&self) -> bool {
        self.query
    }
}

/// The `headers` object from (name, value) pairs, names already lower case: repeated headers
/// are joined with ", " in the order given.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Value {
    let mut map: BTreeMap<Value, Value> = BTreeMap::new();
    for (name, value) in pairs {
        let value = String::from_utf8_lossy(value);
        let key = s(name);
        match map.get_mut(&key) {
            Some(Value::String(prev)) => *prev = format!("{prev}, {value}").into(),
            _ => {
                map.insert(key, s(&value));
            }
        }
    }
    Value::from(map)
}

/// `{"request": {...}, "route": NAME, "jwt": {"issuer", "claims"}}`; `jwt` is given (issuer,
/// claims) only when a bearer token was verified.
pub fn build(req: RequestParts<'_>, route: &str, jwt: Option<(&str, &Value)>) -> Value {
    let k = &*KEYS;
    let mut input = BTreeMap::new();
    input.insert(k.request.clone(), request(&req, k));
    input.insert(k.route.clone(), s(route));
    if let Some((issuer, claims)) = jwt {
        let mut j = BTreeMap::new();
        j.insert(k.issuer.clone(), s(issuer));
        j.insert(k.claims.clone(), claims.clone());
        input.insert(k.jwt.clone(), Value::from(j));
    }
    Value::from(input)
}

/// The decision cache's key for a rule that reads `paths` ([`InputReads::paths`]): the values
/// [`build`] would put at those paths, read from the request without building the input.
/// Equal to `reads.key(&build(parts, route, jwt))`, at a fraction of the cost.
pub fn key(parts: &RequestParts<'_>, route: &str, jwt: Option<(&str, &Value)>, paths: &[Vec<Value>]) -> Vec<Value> {
    let k = &*KEYS;
    paths
        .iter()
        .map(|path| {
            let (Some(first), rest) = (path.first(), path.get(1..).unwrap_or_default()) else {
                return Value::Undefined;
            };
            let (second, tail) = (rest.first(), rest.get(1..).unwrap_or_default());
            let at = |v: Value, keys: &[Value]| crate::reads::descend(&v, keys);
            if *first == k.route {
                at(s(route), rest)
            } else if *first == k.jwt {
                match (jwt, second) {
                    (None, _) => Value::Undefined,
                    (Some((issuer, _)), Some(s2)) if *s2 == k.issuer => at(s(issuer), tail),
                    (Some((_, claims)), Some(s2)) if *s2 == k.claims => crate::reads::descend(claims, tail),
                    (Some(_), Some(_)) => Value::Undefined,
                    (Some((issuer, claims)), None) => {
                        let mut j = BTreeMap::new();
                        j.insert(k.issuer.clone(), s(issuer));
                        j.insert(k.claims.clone(), claims.clone());
                        Value::from(j)
                    }
                }
            } else if *first == k.request {
                let field = match second {
                    None => return crate::reads::descend(&request(parts, k), rest),
                    Some(f) => f,
                };
                let v = if *field == k.method {
                    s(parts.method)
                } else if *field == k.path {
                    s(parts.path)
                } else if *field == k.query {
                    query(parts.query.unwrap_or(""))
                } else if *field == k.headers {
                    parts.headers.clone()
                } else if *field == k.host {
                    s(parts.host)
                } else if *field == k.scheme {
                    s(parts.scheme)
                } else if *field == k.client_ip {
                    s(parts.client_ip)
                } else {
                    Value::Undefined
                };
                at(v, tail)
            } else {
                Value::Undefined
            }
        })
        .collect()
}

fn request(parts: &RequestParts<'_>, k: &Keys) -> Value {
    let mut request = BTreeMap::new();
    request.insert(k.method.clone(), s(parts.method));
    request.insert(k.path.clone(), s(parts.path));
    request.insert(k.query.clone(), query(parts.query.unwrap_or("")));
    request.insert(k.headers.clone(), parts.headers.clone());
    request.insert(k.host.clone(), s(parts.host));
    request.insert(k.scheme.clone(), s(parts.scheme));
    request.insert(k.client_ip.clone(), s(parts.client_ip));
    Value::from(request)
}

/// A query string's (name, value) pairs in order, percent-decoded; empty pairs skipped.
pub fn query_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

/// Parses a query string into `{name: [values...]}`, percent-decoding names and values.
pub fn query(q: &str) -> Value {
    let mut map: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    for (k, v) in query_pairs(q) {
        map.entry(Value::from(k)).or_default().push(Value::from(v));
    }
    Value::from(map.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<BTreeMap<_, _>>())
}

/// `application/x-www-form-urlencoded` decoding; invalid escapes are kept as written.
pub fn decode(s: &str) -> String {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_strings_into_lists() {
        let q = query("page=2&tag=a&tag=b%20c&x=1+2&bad=%zz&empty");
        assert_eq!(q["page"], Value::from(vec![Value::from("2")]));
        assert_eq!(q["tag"], Value::from(vec![Value::from("a"), Value::from("b c")]));
        assert_eq!(q["x"], Value::from(vec![Value::from("1 2")]));
        assert_eq!(q["bad"], Value::from(vec![Value::from("%zz")]));
        assert_eq!(q["empty"], Value::from(vec![Value::from("")]));
        assert_eq!(decode("%4"), "%4");
    }

    #[test]
    fn the_key_read_from_the_request_is_the_key_of_the_built_input() {
        let paths: Vec<Vec<Value>> = [
            "route",
            "jwt",
            "jwt.issuer",
            "jwt.claims.sub",
            "jwt.claims.roles.#1",
            "jwt.claims.sub.x",
            "jwt.nope",
            "request",
            "request.method",
            "request.path",
            "request.headers",
            "request.headers.x-a",
            "request.headers.missing",
            "request.query.tag",
            "request.query.tag.#1",
            "request.host",
            "request.scheme",
            "request.client_ip",
            "request.nope",
            "nope",
        ]
        .iter()
        .map(|p| {
            p.split('.')
                .map(|k| match k.strip_prefix('#') {
                    Some(n) => Value::from(n.parse::<u64>().unwrap()),
                    None => Value::from(k),
                })
                .collect()
        })
        .collect();
        let claims = Value::from_json_str(r#"{"sub": "alice", "roles": ["reader", "writer"]}"#).unwrap();
        for jwt in [Some(("https://id", &claims)), None] {
            let parts = || RequestParts {
                method: "GET",
                path: "/orders/7",
                query: Some("tag=a&tag=b"),
                headers: headers([("x-a", &b"1"[..]), ("x-b", b"2")]),
                host: "api.example.com",
                scheme: "http",
                client_ip: "10.0.0.1",
            };
            let built = build(parts(), "orders", jwt);
            let reads = InputReads::Paths(paths.clone());
            let want = reads.key(&built).unwrap();
            let got = key(&parts(), "orders", jwt, &paths);
            for ((p, w), g) in paths.iter().zip(&want).zip(&got) {
                assert_eq!(w, g, "path {p:?} with jwt {}", jwt.is_some());
            }
            assert_ne!(want.iter().filter(|v| **v != Value::Undefined).count(), 0);
        }
    }

    #[test]
    fn needs_follow_the_reads() {
        let reads = |paths: &[&[&str]]| {
            InputReads::Paths(paths.iter().map(|p| p.iter().map(|k| Value::from(*k)).collect()).collect())
        };
        let n = Needs::from_reads(&reads(&[&["jwt"], &["request", "method"]]));
        assert!(!n.header("authorization") && !n.query() && !n.any_header());
        let n = Needs::from_reads(&reads(&[&["request", "headers", "x-tenant"], &["request", "query", "page"]]));
        assert!(n.header("x-tenant") && !n.header("authorization") && n.query() && n.any_header());
        let n = Needs::from_reads(&reads(&[&["request", "headers", "x-a"], &["request", "headers"]]));
        assert!(n.header("anything"));
        assert_eq!(Needs::from_reads(&reads(&[&["request"]])), Needs::ALL);
        assert_eq!(Needs::from_reads(&InputReads::Uncacheable("why".into())), Needs::ALL);
    }

    #[test]
    fn joins_repeated_headers() {
        let h = headers([("x-a", &b"1"[..]), ("x-b", b"z"), ("x-a", b"2")]);
        let parts = RequestParts {
            method: "GET",
            path: "/p",
            query: None,
            headers: h,
            host: "h",
            scheme: "http",
            client_ip: "127.0.0.1",
        };
        let v = build(parts, "r", None);
        assert_eq!(v["request"]["headers"]["x-b"], Value::from("z"));
        assert_eq!(v["request"]["headers"]["x-a"], Value::from("1, 2"));
        assert_eq!(v["route"], Value::from("r"));
        assert_eq!(v["jwt"], Value::Undefined);
    }
}
