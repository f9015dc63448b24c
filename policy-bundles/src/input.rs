//! The decision input document (DESIGN.md, "The decision contract"), built the same way by the
//! gateway, the benchmarks and the load tests' policy service.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regorus::Value;

use crate::input_reads::InputReads;
pub use crate::settings::InputFormat;

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
    /// The buffered request body, on a route with `body` whose rule reads it.
    pub body: Option<&'a [u8]>,
    /// `Content-Type`, for `parsed_body`.
    pub content_type: Option<&'a str>,
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
    body: Value,
    parsed_body: Value,
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
    body: s("body"),
    parsed_body: s("parsed_body"),
});

/// The parts of the input a rule can read, from [`InputReads`]: what it cannot read is left out
/// of its input, which then costs less to build and to key the decision cache on. Which
/// headers go in is the expensive part (every request carries a dozen); the query is parsed
/// only when read. The rest costs next to nothing and is always there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    headers: HeaderNeeds,
    query: bool,
    body: bool,
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
    pub const ALL: Needs = Needs { headers: HeaderNeeds::All, query: true, body: true };

    /// What a rule reading the input in `format` needs.
    pub fn of(reads: &InputReads, format: InputFormat) -> Needs {
        match format {
            InputFormat::Gateway => Needs::from_reads(reads),
            InputFormat::Envoy => Needs::from_envoy_reads(reads),
        }
    }

    pub fn from_reads(reads: &InputReads) -> Needs {
        let InputReads::Paths(paths) = reads else { return Needs::ALL };
        let mut needs = Needs { headers: HeaderNeeds::None, query: false, body: false };
        for p in paths {
            let key = |i: usize| p.get(i).and_then(|k| k.as_string().ok()).map(|s| s.to_string());
            if key(0).as_deref() != Some("request") {
                continue;
            }
            match (key(1).as_deref(), p.len()) {
                (_, 1) => return Needs::ALL,
                (Some("query"), _) => needs.query = true,
                (Some("body" | "parsed_body"), _) => needs.body = true,
                (Some("headers"), 2) => needs.headers = HeaderNeeds::All,
                (Some("headers"), _) => needs.add_header(key(2)),
                _ => {}
            }
        }
        needs
    }

    /// [`Needs::from_reads`] for the OPA-Envoy input ([`envoy`]): headers under
    /// `attributes.request.http.headers`, the query under `parsed_query` and in the `path`
    /// (and `:path`), the body under `attributes.request.http.body`, `parsed_body` and
    /// `truncated_body`.
    fn from_envoy_reads(reads: &InputReads) -> Needs {
        let InputReads::Paths(paths) = reads else { return Needs::ALL };
        let mut needs = Needs { headers: HeaderNeeds::None, query: false, body: false };
        const HTTP: [&str; 3] = ["attributes", "request", "http"];
        for p in paths {
            let key = |i: usize| p.get(i).and_then(|k| k.as_string().ok()).map(|s| s.to_string());
            let keys: Vec<Option<String>> = (0..p.len().min(5)).map(key).collect();
            let at = |i: usize| keys.get(i).cloned().flatten();
            match at(0).as_deref() {
                None => return Needs::ALL,
                Some("parsed_query") => needs.query = true,
                Some("parsed_body" | "truncated_body") => needs.body = true,
                Some("attributes") => {
                    // A prefix of `attributes.request.http`: the rule may read all of it.
                    if p.len() <= 3 && (0..p.len()).all(|i| at(i).as_deref() == Some(HTTP[i])) {
                        return Needs::ALL;
                    }
                    if (0..3).any(|i| at(i).as_deref() != Some(HTTP[i])) {
                        continue;
                    }
                    match at(3).as_deref() {
                        Some("path") => needs.query = true,
                        Some("body" | "raw_body" | "size") => needs.body = true,
                        Some("headers") if p.len() == 4 => {
                            needs.headers = HeaderNeeds::All;
                            needs.query = true;
                        }
                        Some("headers") => {
                            let name = at(4);
                            needs.query |= name.is_none() || name.as_deref() == Some(":path");
                            needs.add_header(name);
                        }
                        _ => {}
                    }
                }
                Some(_) => {}
            }
        }
        needs
    }

    fn add_header(&mut self, name: Option<String>) {
        match (&mut self.headers, name) {
            (HeaderNeeds::All, _) => {}
            (_, None) => self.headers = HeaderNeeds::All,
            (HeaderNeeds::Named(names), Some(name)) => names.push(name),
            (HeaderNeeds::None, Some(name)) => self.headers = HeaderNeeds::Named(vec![name]),
        }
    }

    /// Whether the body goes into the input (on a route that buffers it).
    pub fn body(&self) -> bool {
        self.body
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
    headers_joined(pairs, ", ")
}

/// [`headers`] with repeated headers joined by `separator` (Envoy joins them with `,`).
pub fn headers_joined<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>, separator: &str) -> Value {
    let mut map: BTreeMap<Value, Value> = BTreeMap::new();
    for (name, value) in pairs {
        let value = String::from_utf8_lossy(value);
        let key = s(name);
        match map.get_mut(&key) {
            Some(Value::String(prev)) => *prev = format!("{prev}{separator}{value}").into(),
            _ => {
                map.insert(key, s(&value));
            }
        }
    }
    Value::from(map)
}

/// `{"request": {...}, "route": NAME, "jwt": {"issuer", "claims"}}`; `jwt` is given (the
/// [`jwt_object`] of a verified token, made once per token) only when a bearer token was verified.
pub fn build(req: RequestParts<'_>, route: &str, jwt: Option<&Value>) -> Value {
    let k = &*KEYS;
    let mut input = BTreeMap::new();
    input.insert(k.request.clone(), request(&req, k));
    input.insert(k.route.clone(), s(route));
    if let Some(j) = jwt {
        input.insert(k.jwt.clone(), j.clone());
    }
    Value::from(input)
}

/// `input.jwt` of a verified token: `{"issuer": ISSUER, "claims": CLAIMS}`.
pub fn jwt_object(issuer: &str, claims: &Value) -> Value {
    let k = &*KEYS;
    let mut j = BTreeMap::new();
    j.insert(k.issuer.clone(), s(issuer));
    j.insert(k.claims.clone(), claims.clone());
    Value::from(j)
}

/// The decision cache's key for a rule that reads `paths` ([`InputReads::paths`]): the values
/// [`build`] would put at those paths, read from the request without building the input.
/// Equal to `reads.key(&build(parts, route, jwt))`, at a fraction of the cost.
pub fn key(parts: &RequestParts<'_>, route: &str, jwt: Option<&Value>, paths: &[Vec<Value>]) -> Vec<Value> {
    let k = &*KEYS;
    paths
        .iter()
        .map(|path| {
            let (Some(first), rest) = (path.first(), path.get(1..).unwrap_or_default()) else {
                return Value::Undefined;
            };
            let (second, tail) = (rest.first(), rest.get(1..).unwrap_or_default());
            let at = |v: Value, keys: &[Value]| crate::input_reads::descend(&v, keys);
            if *first == k.route {
                at(s(route), rest)
            } else if *first == k.jwt {
                jwt.map_or(Value::Undefined, |j| crate::input_reads::descend(j, rest))
            } else if *first == k.request {
                let field = match second {
                    None => return crate::input_reads::descend(&request(parts, k), rest),
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
                } else if *field == k.body {
                    parts.body.map_or(Value::Undefined, |b| s(&String::from_utf8_lossy(b)))
                } else if *field == k.parsed_body {
                    parsed_body(parts.body, parts.content_type)
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
    if let Some(body) = parts.body {
        request.insert(k.body.clone(), s(&String::from_utf8_lossy(body)));
        let parsed = parsed_body(Some(body), parts.content_type);
        if parsed != Value::Undefined {
            request.insert(k.parsed_body.clone(), parsed);
        }
    }
    Value::from(request)
}

/// The body as the policy reads it in `parsed_body`, as the OPA-Envoy plugin parses it: JSON
/// for a JSON content type (`application/json`, `application/*+json`), an object of value
/// lists for `application/x-www-form-urlencoded`; undefined otherwise, or when it does not
/// parse.
pub fn parsed_body(body: Option<&[u8]>, content_type: Option<&str>) -> Value {
    let (Some(body), Some(ct)) = (body, content_type) else { return Value::Undefined };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        std::str::from_utf8(body).ok().and_then(|t| Value::from_json_str(t).ok()).unwrap_or(Value::Undefined)
    } else if mime == "application/x-www-form-urlencoded" {
        std::str::from_utf8(body).map(query).unwrap_or(Value::Undefined)
    } else {
        Value::Undefined
    }
}

/// What the OPA-Envoy input holds beyond a [`RequestParts`]: where the request came from and
/// went to, its id and protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection<'a> {
    pub client_port: u16,
    /// The gateway's own address and port the request came in on, when known.
    pub destination: Option<(&'a str, u16)>,
    /// The request id (`x-request-id` as the gateway sends it upstream).
    pub id: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
}

impl Connection<'static> {
    pub const NONE: Connection<'static> =
        Connection { client_port: 0, destination: None, id: "", protocol: "HTTP/1.1" };
}

/// The input the OPA-Envoy plugin builds from Envoy's `CheckRequest` (ext_authz v3, protojson),
/// made of the same canonical request the gateway routes and proxies. `headers` is the headers
/// object ([`headers_joined`] with `,`, as Envoy joins repeated headers), without the pseudo
/// headers, which are added here when `needs` says so. Fields the gateway has no value for
/// (TLS client certificates, Envoy's metadata, the request's `time`) are absent.
pub fn envoy(req: &RequestParts<'_>, conn: &Connection<'_>, needs: &Needs) -> Value {
    let obj = |pairs: Vec<(&str, Value)>| {
        Value::from(pairs.into_iter().map(|(k, v)| (s(k), v)).collect::<BTreeMap<Value, Value>>())
    };
    let socket = |addr: &str, port: u16| {
        obj(vec![(
            "address",
            obj(vec![("socketAddress", obj(vec![("address", s(addr)), ("portValue", Value::from(u64::from(port)))]))]),
        )])
    };
    let full_path = match req.query {
        Some(q) if !q.is_empty() => format!("{}?{q}", req.path),
        _ => req.path.to_owned(),
    };
    let mut headers = req.headers.clone();
    if let Ok(map) = headers.as_object_mut() {
        for (name, value) in
            [(":authority", req.host), (":method", req.method), (":path", &full_path), (":scheme", req.scheme)]
        {
            if needs.header(name) {
                map.insert(s(name), s(value));
            }
        }
    }
    let mut http = vec![
        ("id", s(conn.id)),
        ("method", s(req.method)),
        ("headers", headers),
        ("path", s(&full_path)),
        ("host", s(req.host)),
        ("scheme", s(req.scheme)),
        ("protocol", s(conn.protocol)),
    ];
    let mut top = vec![
        ("parsed_path", parsed_path(req.path)),
        ("parsed_query", query(req.query.unwrap_or(""))),
        ("version", obj(vec![("encoding", s("protojson")), ("ext_authz", s("v3"))])),
    ];
    if let Some(body) = req.body {
        http.push(("body", s(&String::from_utf8_lossy(body))));
        http.push(("size", Value::from(body.len() as u64)));
        top.push(("truncated_body", Value::from(false)));
        let parsed = parsed_body(Some(body), req.content_type);
        if parsed != Value::Undefined {
            top.push(("parsed_body", parsed));
        }
    }
    let mut attributes =
        vec![("source", socket(req.client_ip, conn.client_port)), ("request", obj(vec![("http", obj(http))]))];
    if let Some((addr, port)) = conn.destination {
        attributes.push(("destination", socket(addr, port)));
    }
    top.push(("attributes", obj(attributes)));
    obj(top)
}

/// `parsed_path` as the OPA-Envoy plugin makes it: the path without its leading `/`, split at
/// `/`, each segment percent-decoded (`/` → `[""]`, `/a/b/` → `["a", "b", ""]`).
pub fn parsed_path(path: &str) -> Value {
    Value::from(path.trim_start_matches('/').split('/').map(|seg| s(&decode_path(seg))).collect::<Vec<_>>())
}

/// Percent-decoding of a path segment (`+` stays `+`); invalid escapes are kept as written.
fn decode_path(seg: &str) -> String {
    if !seg.contains('%') {
        return seg.to_owned();
    }
    decode(&seg.replace('+', "%2B"))
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
pub use http_canon::form_decode as decode;

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
        let object = jwt_object("https://id", &claims);
        for jwt in [Some(&object), None] {
            let parts = || RequestParts {
                method: "GET",
                path: "/orders/7",
                query: Some("tag=a&tag=b"),
                headers: headers([("x-a", &b"1"[..]), ("x-b", b"2")]),
                host: "api.example.com",
                scheme: "http",
                client_ip: "10.0.0.1",
                body: None,
                content_type: None,
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
            body: None,
            content_type: None,
        };
        let v = build(parts, "r", None);
        assert_eq!(v["request"]["headers"]["x-b"], Value::from("z"));
        assert_eq!(v["request"]["headers"]["x-a"], Value::from("1, 2"));
        assert_eq!(v["route"], Value::from("r"));
        assert_eq!(v["jwt"], Value::Undefined);
    }

    #[test]
    fn the_envoy_input_has_the_plugins_shape() {
        let parts = RequestParts {
            method: "POST",
            path: "/people/a%20b/",
            query: Some("tag=a&tag=b&q=x+y"),
            headers: headers_joined([("x-a", &b"1"[..]), ("x-a", b"2"), ("content-type", b"application/json")], ","),
            host: "api.example.test",
            scheme: "https",
            client_ip: "10.0.0.1",
            body: Some(br#"{"n": 1}"#),
            content_type: Some("application/json; charset=utf-8"),
        };
        let conn =
            Connection { client_port: 41000, destination: Some(("127.0.0.1", 8443)), id: "r-1", protocol: "HTTP/2" };
        let v = envoy(&parts, &conn, &Needs::ALL);
        let http = &v["attributes"]["request"]["http"];
        assert_eq!(http["method"], Value::from("POST"));
        assert_eq!(http["path"], Value::from("/people/a%20b/?tag=a&tag=b&q=x+y"));
        assert_eq!(http["headers"]["x-a"], Value::from("1,2"));
        assert_eq!(http["headers"][":authority"], Value::from("api.example.test"));
        assert_eq!(http["headers"][":path"], http["path"]);
        assert_eq!(http["headers"][":method"], Value::from("POST"));
        assert_eq!(http["headers"][":scheme"], Value::from("https"));
        assert_eq!((http["id"].clone(), http["protocol"].clone()), (Value::from("r-1"), Value::from("HTTP/2")));
        assert_eq!(http["body"], Value::from(r#"{"n": 1}"#));
        assert_eq!(http["size"], Value::from(8u64));
        let src = &v["attributes"]["source"]["address"]["socketAddress"];
        assert_eq!(
            (src["address"].clone(), src["portValue"].clone()),
            (Value::from("10.0.0.1"), Value::from(41000u64))
        );
        assert_eq!(v["attributes"]["destination"]["address"]["socketAddress"]["portValue"], Value::from(8443u64));
        assert_eq!(v["parsed_path"], Value::from(vec![Value::from("people"), Value::from("a b"), Value::from("")]));
        assert_eq!(v["parsed_query"]["tag"], Value::from(vec![Value::from("a"), Value::from("b")]));
        assert_eq!(v["parsed_query"]["q"], Value::from(vec![Value::from("x y")]));
        assert_eq!(v["parsed_body"]["n"], Value::from(1u64));
        assert_eq!(v["truncated_body"], Value::from(false));
        assert_eq!(v["version"]["ext_authz"], Value::from("v3"));
        // Without a body, no body fields; `/` is `[""]`.
        let parts = RequestParts { path: "/", query: None, body: None, ..parts };
        let v = envoy(&parts, &Connection::NONE, &Needs::ALL);
        assert_eq!(v["parsed_path"], Value::from(vec![Value::from("")]));
        assert_eq!(v["attributes"]["request"]["http"]["body"], Value::Undefined);
        assert_eq!(v["parsed_body"], Value::Undefined);
        assert_eq!(v["attributes"]["destination"], Value::Undefined);
    }

    #[test]
    fn parsed_body_follows_the_content_type() {
        assert_eq!(parsed_body(Some(b"[1]"), Some("application/vnd.api+json"))[0], Value::from(1u64));
        assert_eq!(parsed_body(Some(b"a=1&a=2"), Some("application/x-www-form-urlencoded"))["a"][1], Value::from("2"));
        assert_eq!(parsed_body(Some(b"{}"), Some("text/plain")), Value::Undefined);
        assert_eq!(parsed_body(Some(b"{not json"), Some("application/json")), Value::Undefined);
        assert_eq!(parsed_body(None, Some("application/json")), Value::Undefined);
    }
}
