//! The decision cache and input pruning never change a decision: for a corpus of policies
//! written the ways real bundles are (bracketed packages, import aliases, `walk`, `object.get`,
//! `json.filter`, comprehensions, `every`, `some k, v in`, functions over the input, `with`,
//! the input aliased through locals and other rules, default rules), and generated requests,
//! the decision the gateway reaches (pruned input, through the per-thread cache, twice so that
//! the second is a hit where cacheable) equals the decision on the full input, uncached.

use policy_bundles::archive::Files;
use policy_bundles::input;
use policy_bundles::snapshot::{Request, Snapshot};
use policy_bundles::Bundle;
use proptest::prelude::*;
use regorus::Value;

/// (package as written, rule, body): the route's policy is `data.<package>.<rule>`.
const CORPUS: &[(&str, &str, &str)] = &[
    ("tenants[\"acme-corp\"]", "allow", "allow if not input.request.headers[\"x-banned\"]"),
    ("tenants[\"acme-corp\"].strict", "allow", "allow if input.request.headers[\"x-tenant\"] == \"acme\""),
    ("p01", "allow", "allow if input.request.method == \"GET\""),
    ("p02", "decision", "default decision := {\"allow\": false, \"status\": 401}\ndecision := {\"allow\": true, \"headers\": {\"x-user-id\": input.jwt.claims.sub}} if input.jwt.claims.sub"),
    ("p03", "allow", "import input.request as req\nallow if req.headers[\"x-role\"] == \"admin\""),
    ("p04", "allow", "import input.request.headers as h\nallow if not h[\"x-banned\"]"),
    ("p05", "allow", "import data.lib.helpers as hp\nallow if hp.is_admin(input.request.headers)"),
    ("p06", "allow", "allow if { some k, v in input.request.headers; k == \"x-tenant\"; v == \"acme\" }"),
    ("p07", "allow", "allow if count([k | some k, _ in input.request.headers; startswith(k, \"x-\")]) < 2"),
    ("p08", "allow", "allow if object.get(input.request.headers, \"x-tenant\", \"none\") != \"other\""),
    ("p09", "allow", "allow if object.get(input, [\"request\", \"headers\", \"x-banned\"], false) == false"),
    ("p10", "allow", "allow if { f := json.filter(input, [\"request/headers/x-banned\"]); not f.request }"),
    ("p11", "allow", "allow if { not banned }\nbanned if { walk(input, [path, value]); path[count(path) - 1] == \"x-banned\" }"),
    ("p12", "allow", "allow if every k, _ in input.request.headers { k != \"x-banned\" }"),
    ("p13", "allow", "allow if { r := input.request; r.headers[\"x-role\"] == \"admin\" }"),
    ("p14", "allow", "allow if { x := input; not x.request.headers[\"x-banned\"] }"),
    ("p15", "allow", "req := input.request\nallow if not req.headers[\"x-banned\"]"),
    ("p16", "allow", "hdrs := input.request.headers\nbanned if hdrs[\"x-banned\"]\nallow if not banned"),
    ("p17", "allow", "is_banned(r) if r.headers[\"x-banned\"]\nallow if not is_banned(input.request)"),
    ("p18", "allow", "banned_in(i) if i.request.headers[\"x-banned\"]\nallow if not banned_in(input)"),
    ("p19", "allow", "name(h, k) := h[k]\nallow if name(input.request.headers, \"x-tenant\") == \"acme\""),
    ("p20", "allow", "allow if { not banned with input.request.headers as {} ; not input.request.headers[\"x-banned\"] }\nbanned if input.request.headers[\"x-banned\"]"),
    ("p21", "allow", "default allow := false\nallow if { input.request.method == \"GET\"; input.request.query.page[0] == \"2\" }"),
    ("p22", "allow", "allow if { some name in object.keys(input.request.headers); name == \"x-role\" }"),
    ("p23", "allow", "allow if { some r in input.jwt.claims.roles; r == \"admin\" }"),
    ("p24", "allow", "allow if { startswith(input.request.path, \"/admin\") == false; not input.request.headers[\"x-banned\"] }"),
    ("p25", "decision", "decision := {\"allow\": true} if input.request.host == \"api.example.test\"\nelse := {\"allow\": false, \"status\": 404, \"reason\": input.request.host}"),
    ("p26", "allow", "k := \"x-banned\"\nallow if not input.request.headers[k]"),
    ("p27", "allow", "keys := {\"x-banned\", \"x-role\"}\nallow if count({k | some k in keys; input.request.headers[k]}) == 0"),
    ("p28", "allow", "allow if { h := {k: v | some k, v in input.request.headers}; not h[\"x-banned\"] }"),
    ("p29", "allow", "allow if data.lib.helpers.clean"),
    ("p30", "allow", "allow if not data.p30_other.flag\n"),
    ("p31", "allow", "allow if { input[\"request\"][\"headers\"][\"x-tenant\"] == \"acme\" }"),
    ("p32", "allow", "allow if input.route == \"r32\"\nallow if input.request.client_ip == \"10.0.0.1\""),
    ("p33", "allow", "allow if { parts := split(input.request.path, \"/\"); parts[1] != \"admin\" }"),
    ("p34", "allow", "allow if { x := input.request.headers; y := x; not y[\"x-banned\"] }"),
    ("p35", "allow", "allow if input.request.parsed_body.amount < 100\nallow if contains(input.request.body, \"admin\")"),
    // Rules that read the query and the method (the round-two bypasses were method and query
    // readings): whole objects, iteration, defaults, sets of methods, functions over them.
    ("p36", "allow", "allow if { not input.request.query.debug; input.request.method == \"GET\" }"),
    ("p37", "allow", "allow if count(input.request.query) == 0"),
    ("p38", "allow", "allow if { some k, vs in input.request.query; k == \"page\"; vs[_] == \"3\" }"),
    ("p39", "allow", "writes := {\"POST\", \"PUT\", \"PATCH\", \"DELETE\"}\nallow if not writes[input.request.method]"),
    ("p40", "allow", "allow if lower(input.request.method) != \"delete\""),
    ("p41", "allow", "allow if { q := input.request.query; not q.admin; input.request.method != \"PATCH\" }"),
    ("p42", "allow", "allow if object.get(input.request.query, \"page\", [\"1\"])[0] == \"2\""),
    ("p43", "decision", "decision := {\"allow\": true, \"headers\": {\"x-method\": input.request.method}} if count(input.request.query.page) < 2\nelse := {\"allow\": false, \"status\": 400, \"reason\": concat(\",\", input.request.query.page)}"),
    ("p44", "allow", "allow if { m := input.request; startswith(m.method, \"G\"); not m.query[\"debug[]\"] }"),
    ("p45", "allow", "allow if { not writing with input.request.method as \"GET\"; input.request.method != \"POST\" }\nwriting if input.request.method == \"POST\""),
];

/// Policies written against the OPA-Envoy input (routes with `input_format: envoy`, and a
/// buffered `body`): headers, pseudo-headers, `parsed_path`, `parsed_query`, `path` with its
/// query, the source address, `parsed_body`, whole sub-objects, and result objects.
const ENVOY_CORPUS: &[(&str, &str, &str)] = &[
    ("e01", "allow", "allow if input.attributes.request.http.method == \"GET\""),
    ("e02", "allow", "allow if not input.attributes.request.http.headers[\"x-banned\"]"),
    ("e03", "allow", "allow if input.attributes.request.http.headers[\":path\"] == \"/r00?page=2\""),
    ("e04", "allow", "allow if input.parsed_path[0] == \"r00\"\nallow if input.parsed_query.page == [\"3\"]"),
    ("e05", "allow", "allow if count(input.parsed_query) == 1"),
    ("e06", "allow", "allow if input.attributes.request.http.path == \"/r00\""),
    ("e07", "allow", "import input.attributes.request.http as http_request\nallow if http_request.headers[\"x-role\"] == \"admin\""),
    ("e08", "allow", "allow if { some k, _ in input.attributes.request.http.headers; k == \"x-tenant\" }"),
    ("e09", "allow", "allow if input.attributes.source.address.socketAddress.address == \"10.0.0.1\""),
    ("e10", "allow", "allow if input.parsed_body.amount < 100"),
    ("e11", "allow", "allow if { b := input.attributes.request.http.body; contains(b, \"admin\") }"),
    ("e12", "allow", "allow if count(input.attributes.request) == 1\nallow if input.attributes.request.http.headers[\":authority\"] == \"admin.example.test\""),
    ("e13", "result", "result := {\"allowed\": true, \"headers\": {\"x-path\": input.attributes.request.http.path}} if input.attributes.request.http.method != \"DELETE\"\nelse := {\"allowed\": false, \"http_status\": 405, \"body\": input.parsed_path[0]}"),
    ("e14", "allow", "allow if not input.truncated_body\nallow if input.attributes.request.http.size > 10"),
    ("e15", "allow", "allow if { h := input.attributes.request.http.headers; not h[\"x-banned\"]; input.parsed_query.debug }"),
];

const LIB: &str = "package lib.helpers\nimport rego.v1\n\
    is_admin(h) if h[\"x-role\"] == \"admin\"\n\
    clean if not input.request.headers[\"x-banned\"]\n";
const P30_OTHER: &str = "package p30_other\nimport rego.v1\nflag if input.request.headers[\"x-banned\"]\n";

fn snapshot() -> Snapshot {
    let mut files = Files::new();
    let mut routes = String::new();
    for (i, (pkg, rule, body)) in CORPUS.iter().enumerate() {
        files.insert(format!("corpus/m{i:02}.rego"), format!("package {pkg}\nimport rego.v1\n{body}\n").into_bytes());
        let policy = format!("data.{pkg}.{rule}");
        routes.push_str(&format!(
            "  - name: r{i:02}\n    match: {{ path_prefix: /r{i:02} }}\n    upstream: backend\n    policy: '{policy}'\n    body: {{ max_bytes: 1024 }}\n"
        ));
    }
    for (i, (pkg, rule, body)) in ENVOY_CORPUS.iter().enumerate() {
        files.insert(format!("envoy/m{i:02}.rego"), format!("package {pkg}\nimport rego.v1\n{body}\n").into_bytes());
        routes.push_str(&format!(
            "  - name: e{i:02}\n    match: {{ path_prefix: /e{i:02} }}\n    upstream: backend\n    policy: 'data.{pkg}.{rule}'\n    input_format: envoy\n    body: {{ max_bytes: 1024 }}\n"
        ));
    }
    files.insert("lib/helpers.rego".into(), LIB.as_bytes().to_vec());
    files.insert("p30_other/m.rego".into(), P30_OTHER.as_bytes().to_vec());
    files.insert(
        "gateway/data.yaml".into(),
        format!("upstreams:\n  backend:\n    targets: [\"127.0.0.1:9\"]\nroutes:\n{routes}").into_bytes(),
    );
    let bundle = Bundle::from_files(files).expect("corpus bundle reads");
    Snapshot::compile(&bundle).expect("corpus bundle compiles")
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    host: &'static str,
    client_ip: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    jwt: Option<(&'static str, Vec<&'static str>)>,
    body: Option<&'static str>,
}

fn request() -> impl Strategy<Value = Req> {
    let header = prop_oneof![
        Just(("x-banned", "1")),
        Just(("x-tenant", "acme")),
        Just(("x-tenant", "other")),
        Just(("x-role", "admin")),
        Just(("x-a", "1")),
        Just(("accept", "*/*")),
    ];
    (
        prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("PATCH"), Just("HEAD"), Just("PURGE")],
        prop_oneof![Just("/r00"), Just("/admin/x"), Just("/orders/7")],
        prop_oneof![
            Just(None),
            Just(Some("page=2")),
            Just(Some("page=3&debug=1")),
            Just(Some("page=2&page=3")),
            Just(Some("admin=1&page=%32")),
            Just(Some("debug%5B%5D=1")),
            Just(Some("a+b=c%20d&page=")),
            Just(Some(""))
        ],
        prop_oneof![Just("api.example.test"), Just("admin.example.test")],
        prop_oneof![Just("127.0.0.1"), Just("10.0.0.1")],
        proptest::collection::vec(header, 0..4),
        proptest::option::of((
            prop_oneof![Just("alice"), Just("bob")],
            proptest::collection::vec(prop_oneof![Just("admin"), Just("reader")], 0..3),
        )),
        prop_oneof![
            Just(None),
            Just(Some(r#"{"amount": 50}"#)),
            Just(Some(r#"{"amount": 500, "who": "admin"}"#)),
            Just(Some("not json"))
        ],
    )
        .prop_map(|(method, path, query, host, client_ip, headers, jwt, body)| Req {
            method,
            path,
            query,
            host,
            client_ip,
            headers,
            jwt,
            body,
        })
}

fn outcome(
    r: Result<policy_bundles::Decision, policy_bundles::snapshot::EvalError>,
) -> Result<policy_bundles::Decision, String> {
    // Errors compare by kind: the message may name a different place for a pruned input.
    r.map_err(|e| if e.to_string().contains("undefined") { "undefined".into() } else { "error".into() })
}

fn check(snap: &Snapshot, policy: usize, route: &str, r: &Req) -> Result<(), TestCaseError> {
    let claims = r.jwt.as_ref().map(|(sub, roles)| {
        Value::from_json_str(&serde_json::json!({"sub": sub, "roles": roles}).to_string()).expect("claims")
    });
    let jwt = claims.as_ref().map(|c| input::jwt_object("https://id.example.test", c));
    let jwt = jwt.as_ref();
    let pairs: Vec<(&str, &[u8])> = r.headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let envoy = snap.format(policy) == input::InputFormat::Envoy;
    let sep = if envoy { "," } else { ", " };
    // Bodies reach routes that buffer them, and only those.
    let body = r.body.filter(|_| snap.routes.iter().any(|x| x.name == route && x.body.is_some())).map(str::as_bytes);
    let content_type = Some("application/json");
    let conn = input::Connection {
        client_port: 40000,
        destination: Some(("127.0.0.1", 8080)),
        id: "req-1",
        protocol: "HTTP/1.1",
    };
    let parts = input::RequestParts {
        method: r.method,
        path: r.path,
        query: r.query,
        headers: input::headers_joined(pairs.iter().copied(), sep),
        host: r.host,
        scheme: "http",
        client_ip: r.client_ip,
        body,
        content_type,
    };
    let full = if envoy { input::envoy(&parts, &conn, &input::Needs::ALL) } else { input::build(parts, route, jwt) };
    let want = outcome(snap.decide(policy, full));
    let req = Request {
        method: r.method,
        path: r.path,
        query: r.query,
        host: r.host,
        scheme: "http",
        client_ip: r.client_ip,
        body,
        content_type,
        conn,
    };
    for attempt in ["first", "second"] {
        let got = snap.decide_request(
            policy,
            route,
            req,
            |needs| input::headers_joined(pairs.iter().copied().filter(|(n, _)| needs.header(n)), sep),
            jwt,
        );
        let got = outcome(got.map(|(d, _)| (*d).clone()));
        prop_assert_eq!(
            &got,
            &want,
            "{} ({}), {} decision, reads {:?}, request {:?}",
            route,
            snap.rule(policy).unwrap_or("?"),
            attempt,
            snap.reads[policy].describe(),
            r
        );
    }
    Ok(())
}

#[test]
fn pruned_and_cached_decisions_equal_full_uncached_ones() {
    let snap = snapshot();
    assert!(CORPUS.len() >= 30);
    let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(r in request(), which in 0..CORPUS.len() + ENVOY_CORPUS.len())| {
        let route = &snap.routes[which];
        check(&snap, route.policy, &route.name, &r)?;
    });
}

#[test]
fn every_policy_of_the_corpus_is_tried_on_every_request_shape() {
    // Exhaustive over a small grid, so each policy meets the requests that tell it apart.
    let snap = snapshot();
    let grid = [
        vec![],
        vec![("x-banned", "1")],
        vec![("x-tenant", "acme")],
        vec![("x-tenant", "other"), ("x-role", "admin")],
        vec![("x-a", "1"), ("x-banned", "1")],
    ];
    for route in &snap.routes {
        for headers in &grid {
            for jwt in [None, Some(("alice", vec!["admin"]))] {
                for (method, query) in [
                    ("GET", Some("page=2")),
                    ("POST", None),
                    ("DELETE", Some("page=3&debug=1")),
                    ("PATCH", Some("page=2&page=3&admin=")),
                    ("PURGE", Some("")),
                ] {
                    let r = Req {
                        method,
                        path: "/r00",
                        query,
                        host: "api.example.test",
                        client_ip: "10.0.0.1",
                        headers: headers.clone(),
                        jwt: jwt.clone(),
                        body: Some(r#"{"amount": 50, "who": "admin"}"#),
                    };
                    if let Err(e) = check(&snap, route.policy, &route.name, &r) {
                        panic!("{e}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_bracketed_package_block_list_reads_its_header() {
    let snap = snapshot();
    let reads = snap.reads[snap.routes[0].policy].describe();
    assert_eq!(reads, ["input.request.headers[\"x-banned\"]"], "acme-corp reads");
}
