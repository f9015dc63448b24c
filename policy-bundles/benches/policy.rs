//! Benchmarks of the bundle crate's hot and warm paths.
//!
//! * `decision/*`: one decision of the example bundle (orders GET by a reader with JWT claims),
//!   evaluated the ways regorus allows, so the gateway can use the fastest:
//!   `snapshot_decide` (what the gateway calls: the VM per thread, interpreter as fallback),
//!   `compiled_policy_interpret` (`CompiledPolicy::eval_with_input`),
//!   `engine_clone_eval_rule` (a per-thread clone of an `Engine` with `set_input` + `eval_rule`),
//!   `build_input` (input construction alone) and `build_input_and_decide` (both, per request).
//! * `route_lookup/{10,1000,10000}/{last,none}`: the route table with that many distinct
//!   `path_prefix` routes, looking up a path under the last route and one matching none.
//! * `compile/example_bundle`: `Bundle::from_files` + `Snapshot::compile` of the example bundle.
//! * `authorize/{pipeline,by_hand}`: a whole request as the gateway and the policy service decide
//!   it (route, cached token verification, pruned input, cached decision), through
//!   [`policy_bundles::authorize::authorize`] and through the same steps written out: the two
//!   must cost the same.
//!
//! * `opa_envoy/*`: whole requests (the `authorize` pipeline) side by side: the api-gateway
//!   example's orders request (`gateway_orders`: token verified in Rust before the rule, rule on
//!   the VM, decision cached), and the opa-envoy example's `/people` (`envoy_people_same_token`:
//!   the token verified in Rego with `io.jwt.decode_verify`, on the interpreter, uncacheable;
//!   the signature check remembered per thread) and with a new token each time
//!   (`envoy_people_new_tokens`: the signature checked every time), and its `/healthz`
//!   (`envoy_health`: a boolean rule on the Envoy input, on the VM, cached).
//!
//! Run: `cargo bench -p policy-bundles --bench policy -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use policy_bundles::archive::{self, Files};
use policy_bundles::router::{Methods, PathMatch, RouteMatch, RouteTable};
use policy_bundles::{input, snapshot, Bundle, Decision, Limits, Snapshot};
use regorus::Value;

const RULE: &str = "data.http.orders.decision";

fn example_files() -> Files {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway");
    archive::read_dir(&dir, &Limits::default()).expect("example bundle")
}

/// Per-request data: what the gateway has in hand before building the input.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(&'a str, &'a str)],
    host: &'a str,
    scheme: &'a str,
    client_ip: &'a str,
}

/// The decision input exactly as the gateway builds it (`policy_bundles::input`). The claims
/// are converted once per token (at verification), so they come in as a `Value`.
fn build_input(req: &Request<'_>, route: &str, issuer: &str, claims: &Value) -> Value {
    let parts = input::RequestParts {
        method: req.method,
        path: req.path,
        query: Some(req.query),
        headers: input::headers(req.headers.iter().map(|(n, v)| (*n, v.as_bytes()))),
        host: req.host,
        scheme: req.scheme,
        client_ip: req.client_ip,
        body: None,
        content_type: None,
    };
    input::build(parts, route, Some(&input::jwt_object(issuer, claims)))
}

const REQUEST: Request<'static> = Request {
    method: "GET",
    path: "/orders/7",
    query: "page=2",
    headers: &[
        ("accept", "application/json"),
        ("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig"),
        ("user-agent", "bench/1.0"),
        ("x-request-id", "0f8e2c4a-1b3d-4e5f-8a9b-0c1d2e3f4a5b"),
    ],
    host: "api.example.test",
    scheme: "http",
    client_ip: "127.0.0.1",
};

fn reader_claims() -> Value {
    Value::from(serde_json::json!({
        "iss": "https://id.example.test", "aud": "orders-api", "sub": "alice",
        "roles": ["reader"], "iat": 1_700_000_000, "exp": 4_000_000_000u64
    }))
}

fn decision(c: &mut Criterion) {
    let bundle = Bundle::from_files(example_files()).expect("example bundle");
    let snap = Snapshot::compile(&bundle).expect("example bundle compiles");
    let policy = snap.policy_index(RULE).expect("orders rule");
    let claims = reader_claims();
    let input = build_input(&REQUEST, "orders", "https://id.example.test", &claims);

    // Every way must give the same, allowing decision.
    let expected = snap.decide(policy, input.clone()).expect("decides");
    assert!(expected.allow, "{expected:?}");
    let mut engine = snapshot::engine_for(&bundle, false).expect("engine");
    engine.set_input(input.clone());
    let by_engine = Decision::from_value(&engine.eval_rule(RULE.into()).expect("eval_rule")).expect("decision");
    assert_eq!(by_engine, expected);
    let by_interpreter =
        Decision::from_value(&snap.interpret(policy, input.clone()).expect("interpret")).expect("decision");
    assert_eq!(by_interpreter, expected);

    let mut g = c.benchmark_group("decision");
    g.bench_function("snapshot_decide", |b| b.iter(|| snap.decide(policy, black_box(input.clone())).expect("decides")));
    // A repeated input: answered from this thread's decision cache (the rule does not run).
    g.bench_function("snapshot_decide_cached_hit", |b| {
        b.iter(|| snap.decide_cached(policy, black_box(input.clone())).expect("decides"))
    });
    g.bench_function("compiled_policy_interpret", |b| {
        b.iter(|| {
            Decision::from_value(&snap.interpret(policy, black_box(input.clone())).expect("eval")).expect("decision")
        })
    });
    g.bench_function("engine_clone_eval_rule", |b| {
        // One clone per worker thread, reused for every request on it.
        let mut engine = engine.clone();
        b.iter(|| {
            engine.set_input(black_box(input.clone()));
            Decision::from_value(&engine.eval_rule(RULE.into()).expect("eval")).expect("decision")
        })
    });
    g.bench_function("build_input", |b| {
        b.iter(|| build_input(black_box(&REQUEST), "orders", "https://id.example.test", &claims))
    });
    g.bench_function("build_input_and_decide", |b| {
        b.iter(|| {
            let input = build_input(black_box(&REQUEST), "orders", "https://id.example.test", &claims);
            snap.decide(policy, input).expect("decides")
        })
    });
    g.finish();
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let routes: Vec<RouteMatch> = (0..n)
            .map(|i| RouteMatch {
                host: None,
                path: PathMatch::Prefix(format!("/svc{i}")),
                methods: Methods::default(),
            })
            .collect();
        let table = RouteTable::new(&routes);
        let last = format!("/svc{}/items/7", n - 1);
        assert_eq!(table.lookup("api.example.test", &last, "GET"), Some(n - 1));
        assert_eq!(table.lookup("api.example.test", "/nothing/here/7", "GET"), None);
        g.bench_with_input(BenchmarkId::new(n.to_string(), "last"), &last, |b, path| {
            b.iter(|| table.lookup(black_box("api.example.test"), black_box(path), black_box("GET")))
        });
        g.bench_with_input(BenchmarkId::new(n.to_string(), "none"), "/nothing/here/7", |b, path| {
            b.iter(|| table.lookup(black_box("api.example.test"), black_box(path), black_box("GET")))
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let files = example_files();
    let mut g = c.benchmark_group("compile");
    g.bench_function("example_bundle", |b| {
        b.iter(|| {
            let bundle = Bundle::from_files(black_box(files.clone())).expect("bundle");
            Snapshot::compile(&bundle).expect("compiles")
        })
    });
    g.finish();
}

fn demo_token() -> String {
    let pem = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-support/keys/demo-es256.pem"))
        .expect("demo key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo-es256".into());
    let claims = serde_json::json!({
        "iss": "https://id.example.test", "aud": "orders-api", "sub": "alice", "roles": ["reader"],
        "iat": 1_700_000_000, "exp": 4_000_000_000u64
    });
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("key")).expect("sign")
}

fn authorize(c: &mut Criterion) {
    use policy_bundles::authorize::{self, Outcome, RequestView, Verdict};
    let snap = Snapshot::compile(&Bundle::from_files(example_files()).expect("bundle")).expect("compiles");
    let auth = format!("Bearer {}", demo_token());
    let parts = snapshot::Request {
        method: REQUEST.method,
        path: REQUEST.path,
        query: Some(REQUEST.query),
        host: REQUEST.host,
        scheme: REQUEST.scheme,
        client_ip: REQUEST.client_ip,
        body: None,
        content_type: None,
        conn: policy_bundles::input::Connection::NONE,
    };
    let headers = || REQUEST.headers.iter().map(|(n, v)| (*n, v.as_bytes()));
    let view = || RequestView { parts, authorization: Some(auth.as_bytes()), headers: headers() };
    let Outcome::Evaluated { verdict: Verdict::Allow(..), .. } = authorize::authorize(&snap, view()) else {
        panic!("the reader is not allowed")
    };
    let mut g = c.benchmark_group("authorize");
    g.bench_function("pipeline", |b| b.iter(|| authorize::authorize(&snap, black_box(view()))));
    g.bench_function("by_hand", |b| {
        b.iter(|| {
            let ix = snap.table.lookup(parts.host, parts.path, parts.method).expect("route");
            let route = &snap.routes[ix];
            let authorize::Credentials::Bearer(token) = authorize::credentials(black_box(auth.as_bytes())) else {
                panic!("not a bearer token")
            };
            let v = snap.jwt.as_ref().expect("issuers").verify_cached(token).expect("verifies");
            let jwt = Some(&v.input);
            snap.decide_request(
                route.policy,
                &route.name,
                parts,
                |needs| input::headers(headers().filter(|(n, _)| needs.header(n))),
                jwt,
            )
            .expect("decides")
        })
    });
    g.finish();
}

fn es256_token(aud: &str, sub: &str, roles: &[&str]) -> String {
    let pem = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-support/keys/demo-es256.pem"))
        .expect("demo key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo-es256".into());
    let claims = serde_json::json!({
        "iss": "https://id.example.test", "aud": aud, "sub": sub, "roles": roles,
        "iat": 1_700_000_000, "nbf": 1_700_000_000, "exp": 4_000_000_000u64
    });
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("key")).expect("sign")
}

fn opa_envoy(c: &mut Criterion) {
    use policy_bundles::authorize::{self, Outcome, RequestView, Verdict};
    let gateway = Snapshot::compile(&Bundle::from_files(example_files()).expect("bundle")).expect("compiles");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/opa-envoy");
    let envoy = Snapshot::compile(&Bundle::from_path(&dir, &Limits::default()).expect("bundle")).expect("compiles");
    let parts = |path: &'static str| snapshot::Request {
        method: "GET",
        path,
        query: None,
        host: REQUEST.host,
        scheme: "http",
        client_ip: "127.0.0.1",
        body: None,
        content_type: None,
        conn: policy_bundles::input::Connection {
            client_port: 40000,
            destination: Some(("127.0.0.1", 8080)),
            id: "0f8e2c4a1b3d4e5f",
            protocol: "HTTP/1.1",
        },
    };
    let orders_auth = format!("Bearer {}", demo_token());
    let people_auth = format!("Bearer {}", es256_token("people-api", "alice", &["reader"]));
    // Distinct tokens, more than a thread's signature-check memory holds.
    let fresh: Vec<String> =
        (0..3000).map(|i| format!("Bearer {}", es256_token("people-api", &format!("user{i}"), &["reader"]))).collect();
    let headers = [("accept", "application/json"), ("user-agent", "bench/1.0")];
    let ask = |snap: &Snapshot, path: &'static str, auth: &str| {
        let pairs = headers.iter().map(|(n, v)| (*n, v.as_bytes())).chain([("authorization", auth.as_bytes())]);
        authorize::authorize(
            snap,
            RequestView { parts: parts(path), authorization: Some(auth.as_bytes()), headers: pairs },
        )
    };
    for (snap, path, auth) in [(&gateway, "/orders/7", &orders_auth), (&envoy, "/people", &people_auth)] {
        let Outcome::Evaluated { verdict: Verdict::Allow(..), .. } = ask(snap, path, auth) else {
            panic!("{path} is not allowed")
        };
    }
    let Outcome::Evaluated { verdict: Verdict::Allow(..), .. } = ask(&envoy, "/people", &fresh[0]) else {
        panic!("a fresh token is not allowed")
    };
    let mut g = c.benchmark_group("opa_envoy");
    g.bench_function("gateway_orders", |b| b.iter(|| ask(&gateway, "/orders/7", black_box(&orders_auth))));
    g.bench_function("envoy_people_same_token", |b| b.iter(|| ask(&envoy, "/people", black_box(&people_auth))));
    let mut i = 0;
    g.bench_function("envoy_people_new_tokens", |b| {
        b.iter(|| {
            i = (i + 1) % fresh.len();
            ask(&envoy, "/people", black_box(&fresh[i]))
        })
    });
    g.bench_function("envoy_health", |b| b.iter(|| ask(&envoy, "/healthz", black_box(""))));
    g.finish();
}

criterion_group!(benches, decision, route_lookup, compile, authorize, opa_envoy);
criterion_main!(benches);
