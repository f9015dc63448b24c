//! The gateway's per-request work without the network: route lookup, bearer-token verification,
//! input construction and policy evaluation, for the example bundle.
//!
//! `cargo bench -p gateway --bench hot_path`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use policy_bundles::input::{self, RequestParts};
use policy_bundles::{Bundle, Limits, Snapshot};

fn example() -> Snapshot {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-bundles/examples/api-gateway");
    let bundle = Bundle::from_path(&dir, &Limits::default()).expect("example bundle reads");
    Snapshot::compile(&bundle).expect("example bundle compiles")
}

fn token() -> String {
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-support/keys/demo-es256.pem");
    let pem = std::fs::read(key).expect("demo key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo-es256".into());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let claims = serde_json::json!({"iss": "https://id.example.test", "aud": "orders-api", "sub": "alice", "roles": ["reader"], "exp": exp});
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("key")).expect("sign")
}

fn bench(c: &mut Criterion) {
    let snap = example();
    let token = token();
    let verified = snap.jwt.as_ref().expect("issuers").verify(&token).expect("token verifies");
    let mut headers = HeaderMap::new();
    for (k, v) in [("host", "api.example.com"), ("user-agent", "bench/1.0"), ("accept", "*/*"), ("x-tenant", "acme")] {
        headers.insert(k, v.parse().expect("header"));
    }
    let parts = || RequestParts {
        method: "GET",
        path: "/orders/7",
        query: Some("page=2"),
        headers: input::headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))),
        host: "api.example.com",
        scheme: "http",
        client_ip: "127.0.0.1",
        body: None,
        content_type: None,
    };
    let route = snap.route_for("api.example.com", "/orders/7", "GET").expect("route").clone();

    let mut g = c.benchmark_group("hot_path");
    g.bench_function("route_lookup", |b| {
        b.iter(|| snap.table.lookup(black_box("api.example.com"), black_box("/orders/7"), "GET"))
    });
    g.bench_function("jwt_verify_es256", |b| b.iter(|| snap.jwt.as_ref().map(|j| j.verify(black_box(&token)))));
    g.bench_function("jwt_verify_es256_cached", |b| {
        b.iter(|| snap.jwt.as_ref().map(|j| j.verify_cached(black_box(&token))))
    });
    g.bench_function("input_build", |b| b.iter(|| input::build(parts(), &route.name, Some(&verified.input))));
    g.bench_function("decide", |b| {
        b.iter(|| {
            snap.decide(route.policy, input::build(parts(), &route.name, Some(&verified.input))).expect("decides")
        })
    });
    g.bench_function("whole_request_decision", |b| {
        b.iter(|| {
            let ix = snap.table.lookup("api.example.com", "/orders/7", "GET").expect("route");
            let r = &snap.routes[ix];
            let v = snap.jwt.as_ref().expect("issuers").verify_cached(&token).expect("verifies");
            snap.decide(r.policy, input::build(parts(), &r.name, Some(&v.input))).expect("decides")
        })
    });
    // What the gateway runs: the same, through the decision cache (a repeated user and method).
    g.bench_function("whole_request_decision_cached", |b| {
        b.iter(|| {
            let ix = snap.table.lookup("api.example.com", "/orders/7", "GET").expect("route");
            let r = &snap.routes[ix];
            let v = snap.jwt.as_ref().expect("issuers").verify_cached(&token).expect("verifies");
            snap.decide_cached(r.policy, input::build(parts(), &r.name, Some(&v.input))).expect("decides")
        })
    });
    // The alternatives for evaluating a rule with regorus, side by side in one run.
    let bundle = Bundle::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-bundles/examples/api-gateway"),
        &Limits::default(),
    )
    .expect("bundle");
    let rule = "data.http.orders.decision";
    let mut engine = policy_bundles::snapshot::engine_for(&bundle, false).expect("engine");
    let compiled = engine.compile_with_entrypoint(&rule.into()).expect("compiles");
    let doc = input::build(parts(), &route.name, Some(&verified.input));
    g.bench_function("regorus_compiled_policy_eval", |b| {
        b.iter(|| compiled.eval_with_input(doc.clone()).expect("eval"))
    });
    let mut per_thread = engine.clone();
    g.bench_function("regorus_prepared_engine_eval_rule", |b| {
        b.iter(|| {
            per_thread.set_input(doc.clone());
            per_thread.eval_rule(rule.to_string()).expect("eval")
        })
    });
    let program =
        regorus::languages::rego::compiler::Compiler::compile_from_policy(&compiled, &[rule]).expect("rvm compiles");
    let mut vm = regorus::rvm::vm::RegoVM::new();
    vm.load_program(program.clone());
    vm.set_data(regorus::Value::from(bundle.data.clone())).expect("data");
    g.bench_function("regorus_rvm_execute", |b| {
        b.iter(|| {
            vm.set_input(doc.clone());
            vm.execute().expect("eval")
        })
    });
    vm.set_input(doc.clone());
    assert_eq!(
        vm.execute().expect("eval"),
        compiled.eval_with_input(doc.clone()).expect("eval"),
        "the VM must agree with the interpreter"
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
