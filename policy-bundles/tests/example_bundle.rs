//! The example bundle is tested as data (house convention 8): it compiles exactly as the
//! gateway compiles it, and its own Rego tests and decision cases pass.

use std::path::PathBuf;

use policy_bundles::archive::{self, Files};
use policy_bundles::bundle_tests::{self, TestKind};
use policy_bundles::{Bundle, ErrorKind, Limits, Snapshot};

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway")
}

fn example_files() -> Files {
    archive::read_dir(&example_dir(), &Limits::default()).unwrap()
}

fn with(mut files: Files, path: &str, content: &str) -> Files {
    files.insert(path.into(), content.as_bytes().to_vec());
    files
}

#[test]
fn the_example_bundle_compiles_with_its_three_routes() {
    let bundle = Bundle::from_path(&example_dir(), &Limits::default()).unwrap();
    let snap = Snapshot::compile(&bundle).unwrap();
    let names: Vec<_> = snap.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["public", "orders", "admin"]);
    assert!(snap.jwt.is_some());
    assert_eq!(snap.route_for("api.example.test", "/orders/7", "GET").map(|r| r.name.as_str()), Some("orders"));
    assert!(snap.route_for("api.example.test", "/nothing", "GET").is_none());
}

#[test]
fn the_example_bundle_passes_its_own_tests_and_cases() {
    let bundle = Bundle::from_path(&example_dir(), &Limits::default()).unwrap();
    let report = bundle_tests::run(&bundle).unwrap();
    let rego = report.results.iter().filter(|r| r.kind == TestKind::Rego).count();
    let cases = report.results.iter().filter(|r| r.kind == TestKind::Case).count();
    assert!(rego >= 5, "expected the Rego tests of tests/orders_test.rego, found {rego}:\n{report}");
    assert!(cases >= 7, "expected the decision cases of tests/cases.yaml, found {cases}:\n{report}");
    assert_eq!(report.failed(), 0, "\n{report}");
    assert_eq!(report.passed(), rego + cases);
    assert!(report.is_success());
}

#[test]
fn the_example_bundle_passes_its_tests_when_read_from_its_tarball() {
    let bytes = archive::write_tar_gz(&example_files()).unwrap();
    let bundle = Bundle::from_tar_gz(&bytes, &Limits::default()).unwrap();
    let report = bundle_tests::run(&bundle).unwrap();
    assert!(report.results.len() >= 12, "\n{report}");
    assert_eq!(report.failed(), 0, "\n{report}");
}

#[test]
fn a_wrong_case_is_reported_as_a_failure_with_expected_and_got() {
    let wrong = "\
- name: a reader may post orders (wrong)
  route: orders
  input:
    request: { method: POST, path: /orders, headers: {} }
    jwt: { issuer: https://id.example.test, claims: { sub: alice, roles: [reader] } }
  expect:
    allow: true
    headers: { x-user-id: alice }
- name: the no-token status is 403 (wrong)
  route: orders
  input:
    request: { method: GET, path: /orders, headers: {} }
  expect: { allow: false, status: 403 }
";
    let bundle = Bundle::from_files(with(example_files(), "tests/wrong.cases.yaml", wrong)).unwrap();
    let report = bundle_tests::run(&bundle).unwrap();
    assert_eq!(report.failed(), 2, "\n{report}");
    assert!(!report.is_success());
    let failures: Vec<_> = report.failures().collect();
    let first = &failures[0];
    assert_eq!(first.name, "a reader may post orders (wrong)");
    assert_eq!(first.location, "tests/wrong.cases.yaml:1");
    let msg = first.failure.as_deref().unwrap();
    assert!(msg.contains("allow: expected true, got false"), "{msg}");
    assert!(msg.contains("headers.x-user-id: expected \"alice\", got none"), "{msg}");
    assert!(msg.contains("alice may not post orders"), "the got decision is shown: {msg}");
    let second = failures[1].failure.as_deref().unwrap();
    assert!(second.contains("status: expected 403, got 401"), "{second}");
    assert_eq!(failures[1].location, "tests/wrong.cases.yaml:9");
    // Everything else still passes.
    assert!(report.passed() >= 12, "\n{report}");
}

#[test]
fn a_failing_rego_test_is_reported_as_a_failure() {
    let wrong = "package http.wrong_test\n\nimport rego.v1\n\ntest_readers_may_delete if {\n\tdata.http.orders.allowed with input as {\"request\": {\"method\": \"DELETE\"}, \"jwt\": {\"claims\": {\"roles\": [\"reader\"]}}}\n}\n\ntest_true if true\n";
    let bundle = Bundle::from_files(with(example_files(), "tests/wrong_test.rego", wrong)).unwrap();
    let report = bundle_tests::run(&bundle).unwrap();
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1, "\n{report}");
    assert_eq!(failures[0].name, "data.http.wrong_test.test_readers_may_delete");
    assert_eq!(failures[0].location, "tests/wrong_test.rego:5");
    assert!(failures[0].failure.as_deref().unwrap().contains("expected true"), "\n{report}");
    assert!(report.results.iter().any(|r| r.name == "data.http.wrong_test.test_true" && r.passed()));
}

#[test]
fn a_cases_file_with_an_unknown_key_is_refused_naming_file_and_line() {
    let bad = "\
- name: typo
  route: orders
  input: {}
  expect:
    allow: false
    stauts: 401
";
    let bundle = Bundle::from_files(with(example_files(), "tests/typo.cases.yaml", bad)).unwrap();
    let errs = bundle_tests::run(&bundle).unwrap_err();
    let e = &errs.0[0];
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(e.file.as_deref(), Some("tests/typo.cases.yaml"));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.message.contains("stauts"), "{e}");
}

#[test]
fn a_case_naming_an_unknown_route_fails() {
    let bad = "- name: ghost\n  route: ghost\n  input: {}\n  expect: { allow: false }\n";
    let bundle = Bundle::from_files(with(example_files(), "tests/ghost.cases.yaml", bad)).unwrap();
    let report = bundle_tests::run(&bundle).unwrap();
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1, "\n{report}");
    assert!(failures[0].failure.as_deref().unwrap().contains("route `ghost` is not defined"), "\n{report}");
}

#[test]
fn the_vm_and_the_interpreter_agree_on_every_example_case() {
    let bundle = Bundle::from_path(&example_dir(), &Limits::default()).unwrap();
    let snap = Snapshot::compile(&bundle).unwrap();
    let cases = bundle_tests::load_cases(&bundle).unwrap();
    assert!(!cases.is_empty());
    for lc in &cases {
        let policy = match (&lc.case.route, &lc.case.policy) {
            (Some(route), _) => snap.routes.iter().find(|r| r.name == *route).unwrap().policy,
            (None, Some(rule)) => snap.policy_index(rule).unwrap(),
            (None, None) => unreachable!(),
        };
        let input = regorus::Value::from(lc.case.input.clone());
        let vm = snap.evaluate(policy, input.clone()).unwrap();
        let interpreted = snap.interpret(policy, input).unwrap();
        assert_eq!(vm, interpreted, "case `{}`", lc.case.name);
    }
}

#[test]
fn the_example_bundles_decisions_are_cached_on_the_input_it_reads() {
    use policy_bundles::snapshot::CacheOutcome;
    let bundle = Bundle::from_path(&example_dir(), &Limits::default()).unwrap();
    let snap = Snapshot::compile(&bundle).unwrap();
    let policy = |route: &str| snap.routes.iter().find(|r| r.name == route).unwrap().policy;
    let orders = policy("orders");
    assert_eq!(snap.reads[orders].describe(), ["input.jwt", "input.request.method"]);
    assert_eq!(
        snap.reads[policy("admin")].describe(),
        ["input.jwt.claims.roles", "input.jwt.claims.sub", "input.request.headers[\"x-tenant\"]"]
    );
    assert_eq!(snap.reads[policy("public")].describe(), ["input.request.method"]);
    let input = |method: &str, roles: &str, agent: &str| {
        regorus::Value::from_json_str(&format!(
            r#"{{"request": {{"method": "{method}", "path": "/orders/7", "headers": {{"user-agent": "{agent}"}}}},
                "route": "orders", "jwt": {{"issuer": "https://id.example.test", "claims": {{"sub": "carol", "roles": {roles}}}}}}}"#
        ))
        .unwrap()
    };
    let (first, how) = snap.decide_cached(orders, input("GET", r#"["reader"]"#, "a")).unwrap();
    assert!(first.allow);
    assert_eq!(how, CacheOutcome::Miss);
    // Another user agent: not read by any rule, so the same decision, from the cache.
    let (again, how) = snap.decide_cached(orders, input("GET", r#"["reader"]"#, "b")).unwrap();
    assert_eq!((again.as_ref(), how), (first.as_ref(), CacheOutcome::Hit));
    // What the rules do read changes the answer, and is not answered from the cache.
    let (put, how) = snap.decide_cached(orders, input("PUT", r#"["reader"]"#, "a")).unwrap();
    assert_eq!((put.allow, put.status, how), (false, 403, CacheOutcome::Miss));
    let (writer, how) = snap.decide_cached(orders, input("PUT", r#"["writer"]"#, "a")).unwrap();
    assert_eq!((writer.allow, how), (true, CacheOutcome::Miss));
    assert_eq!(
        writer.headers,
        [("x-user-id".to_string(), "carol".to_string()), ("x-user-roles".into(), "writer".into())]
    );
    // Every decision the cache gives is the rule's own.
    for (m, roles) in [("GET", "[]"), ("DELETE", r#"["writer"]"#), ("GET", r#"["reader"]"#), ("PUT", r#"["reader"]"#)] {
        let (cached, _) = snap.decide_cached(orders, input(m, roles, "z")).unwrap();
        assert_eq!(*cached, snap.decide(orders, input(m, roles, "z")).unwrap(), "{m} {roles}");
    }
}

#[test]
fn a_bundle_that_reads_the_clock_is_never_answered_from_the_cache() {
    use policy_bundles::snapshot::CacheOutcome;
    let rego = "package http.orders\nimport rego.v1\ndecision := {\"allow\": time.now_ns() > 0}\n";
    let bundle = Bundle::from_files(with(example_files(), "http/orders.rego", rego)).unwrap();
    let snap = Snapshot::compile(&bundle).unwrap();
    let orders = snap.routes.iter().find(|r| r.name == "orders").unwrap().policy;
    assert_eq!(snap.reads[orders].describe(), ["uncacheable: http/orders.rego:3 calls `time.now_ns`"]);
    let input = regorus::Value::from_json_str(r#"{"request": {"method": "GET"}}"#).unwrap();
    for _ in 0..2 {
        assert_eq!(snap.decide_cached(orders, input.clone()).unwrap().1, CacheOutcome::Bypass);
    }
}
