//! The OPA-Envoy example bundle and `io.jwt` rules at the snapshot: which engine runs each rule,
//! what its decisions are cached on, and that a token is always part of the key of a cached
//! decision that depends on it.

use std::path::PathBuf;

use policy_bundles::archive::Files;
use policy_bundles::input::{self, Connection, Needs};
use policy_bundles::snapshot::CacheOutcome;
use policy_bundles::{Bundle, Limits, Snapshot};
use regorus::Value;

fn example() -> Snapshot {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/opa-envoy");
    Snapshot::compile(&Bundle::from_path(&dir, &Limits::default()).expect("bundle")).expect("compiles")
}

#[test]
fn the_example_passes_its_own_tests() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/opa-envoy");
    let bundle = Bundle::from_path(&dir, &Limits::default()).expect("bundle");
    let report = policy_bundles::bundle_tests::run(&bundle).expect("runs");
    assert!(report.passed() >= 17, "{report:?}");
    assert_eq!(report.failed(), 0, "{report:?}");
}

#[test]
fn jwt_rules_run_on_the_interpreter_uncached_and_the_rest_on_the_vm_cached() {
    let snap = example();
    let policy = |route: &str| snap.routes.iter().find(|r| r.name == route).expect("route").policy;
    // decode_verify reads the clock: never cached.
    assert!(snap.reads[policy("people")].describe()[0].starts_with("uncacheable"), "{}", snap.describe_reads());
    assert!(!snap.uses_vm(policy("people")));
    assert!(snap.uses_vm(policy("health")));
    assert_eq!(snap.reads[policy("health")].describe(), vec!["input.attributes.request.http.method"]);
    assert_eq!(snap.reads[policy("search")].describe(), vec!["input.parsed_query"]);
}

const DECODE_ONLY: &str = r#"package p

import rego.v1

# Trusts the token without verifying it (a gateway in front did): pure, so cacheable, and the
# token is read from the input, so it is part of the key.
claims := io.jwt.decode(substring(input.attributes.request.http.headers.authorization, 7, -1))[1]

default allow := false

allow if claims.sub == "alice"
"#;

fn decode_only() -> Snapshot {
    let mut f = Files::new();
    f.insert(
        "gateway/data.yaml".into(),
        b"input_format: envoy\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: b\n    policy: data.p.allow\n"
            .to_vec(),
    );
    f.insert("p.rego".into(), DECODE_ONLY.as_bytes().to_vec());
    Snapshot::compile(&Bundle::from_files(f).expect("bundle")).expect("compiles")
}

fn unsigned(sub: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.c2ln", b64(r#"{"alg":"HS256"}"#.into()), b64(format!(r#"{{"sub":"{sub}"}}"#)))
}

#[test]
fn a_decision_that_depends_on_a_token_is_never_served_for_another_token() {
    let snap = decode_only();
    assert_eq!(snap.describe_reads(), "data.p.allow: input.attributes.request.http.headers.authorization");
    let ask = |token: &str| {
        let auth = format!("Bearer {token}");
        let headers = input::headers_joined([("authorization", auth.as_bytes())], ",");
        let parts = input::RequestParts {
            method: "GET",
            path: "/x",
            query: None,
            headers,
            host: "h",
            scheme: "http",
            client_ip: "10.0.0.1",
            body: None,
            content_type: None,
        };
        let v = input::envoy(&parts, &Connection::NONE, &Needs::ALL);
        let (d, how) = snap.decide_cached(0, v).expect("decides");
        (d.allow, how)
    };
    let (alice, bob) = (unsigned("alice"), unsigned("bob"));
    assert_eq!(ask(&alice), (true, CacheOutcome::Miss));
    assert_eq!(ask(&alice), (true, CacheOutcome::Hit));
    assert_eq!(ask(&bob), (false, CacheOutcome::Miss), "bob must not get alice's cached allow");
    assert_eq!(ask(&bob), (false, CacheOutcome::Hit));
}

#[test]
fn an_envoy_result_that_sets_a_framing_header_fails_closed() {
    let mut f = Files::new();
    f.insert(
        "gateway/data.yaml".into(),
        b"upstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: b\n    policy: data.p.result\n    input_format: envoy\n"
            .to_vec(),
    );
    f.insert(
        "p.rego".into(),
        br#"package p

result := {"allowed": true, "headers": {"transfer-encoding": "chunked"}}
"#
        .to_vec(),
    );
    let snap = Snapshot::compile(&Bundle::from_files(f).expect("bundle")).expect("compiles");
    let e = snap.decide(0, Value::new_object()).expect_err("a framing header is refused");
    assert!(e.to_string().contains("framing"), "{e}");
}
