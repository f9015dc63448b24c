//! `bundlectl eval` through the real binary, on the example bundle
//! (`policy-bundles/examples/api-gateway`) and demo tokens signed with the keys its JWKS trusts.

use std::process::{Command, Output};

use serde_json::{json, Value};
use test_support::bundles::example_dir;
use test_support::tokens;

/// Exit status of `eval` when the gateway would answer the request itself.
const DENIED: i32 = 3;
/// Exit status of a usage error.
const USAGE: i32 = 2;

fn bundlectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bundlectl")).args(args).output().expect("run bundlectl")
}

/// `bundlectl eval EXAMPLE ARGS...`.
fn eval(args: &[&str]) -> Output {
    let example = example_dir();
    let mut all = vec!["eval", example.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    bundlectl(&all)
}

/// `eval ARGS... --json`, parsed.
fn eval_json(args: &[&str]) -> (Option<i32>, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let o = eval(&all);
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o.status.code(), report)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

#[test]
fn a_public_get_is_allowed_and_exits_0() {
    let o = eval(&["--method", "GET", "--path", "/public/index.html"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("route:    public (rule data.http.public.allow, upstream backend)"), "{out}");
    assert!(out.contains("decision: allowed: forwarded to upstream backend"), "{out}");
    assert!(out.contains("evaluated in "), "{out}");
}

#[test]
fn orders_without_a_token_is_the_rules_401_with_its_reason() {
    let (code, r) = eval_json(&["--path", "/orders/7"]);
    assert_eq!(code, Some(DENIED), "{r:#}");
    assert_eq!(r["route"]["name"], "orders");
    assert_eq!(r["stage"], "policy");
    assert_eq!(r["evaluated"], true);
    assert_eq!(r["decision"]["allowed"], false);
    assert_eq!(r["decision"]["status"], 401);
    assert_eq!(r["decision"]["reason"], "a bearer token is required");
    assert!(r["took_us"].is_u64(), "{r:#}");
}

#[test]
fn a_valid_demo_token_is_allowed_with_the_user_passed_upstream() {
    let auth = bearer(&tokens::token("alice", &["reader"]));
    let (code, r) = eval_json(&["--method", "GET", "--path", "/orders/7", "-H", &auth, "-H", "x-a: b"]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["decision"]["allowed"], true);
    assert_eq!(r["decision"]["status"], Value::Null);
    assert_eq!(r["decision"]["headers"], json!({"x-user-id": "alice", "x-user-roles": "reader"}));
    assert_eq!(r["decision"]["response_headers"], json!({"x-decided-by": "http.orders"}));
    assert_eq!(r["decision"]["rate_limit"], Value::Null);
    // The text form says the same.
    let o = eval(&["--path", "/orders/7", "-H", &auth]);
    assert!(text(&o).contains("    x-user-id: alice"), "{}", text(&o));
}

#[test]
fn a_garbage_bearer_token_is_refused_with_401_before_the_rule_runs() {
    let (code, r) = eval_json(&["--path", "/orders/7", "-H", "authorization: Bearer garbage"]);
    assert_eq!(code, Some(DENIED), "{r:#}");
    assert_eq!(r["stage"], "authentication");
    assert_eq!(r["evaluated"], false);
    assert_eq!(r["took_us"], Value::Null);
    assert_eq!(r["decision"]["status"], 401);
    assert_eq!(r["decision"]["reason"], "malformed token");
    assert_eq!(r["decision"]["error"], "invalid bearer token");
    let o = eval(&["--path", "/orders/7", "-H", "authorization: Bearer garbage"]);
    assert!(text(&o).contains("denied 401 before the rule ran"), "{}", text(&o));
    assert!(text(&o).contains("not evaluated"), "{}", text(&o));
}

#[test]
fn an_expired_or_forged_token_is_refused_with_the_verifiers_reason() {
    let claims = json!({"iss": tokens::ISSUER, "aud": tokens::AUDIENCE, "sub": "alice", "roles": ["reader"],
        "iat": tokens::now() - 7200, "exp": tokens::now() - 3600});
    let expired = tokens::token_with("es256", claims);
    let (code, r) = eval_json(&["--path", "/orders/7", "-H", &bearer(&expired)]);
    assert_eq!(code, Some(DENIED), "{r:#}");
    assert_eq!(r["decision"]["status"], 401);
    let reason = r["decision"]["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("expired"), "{r:#}");

    // Alice's token with Mallory's claims: the signature no longer matches.
    let good = tokens::token("alice", &["reader"]);
    let forged_claims = tokens::token("mallory", &["writer"]);
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = forged_claims.split('.').nth(1).unwrap_or_default();
    let (code, r) = eval_json(&["--path", "/orders/7", "-H", &bearer(&parts.join("."))]);
    assert_eq!(code, Some(DENIED), "{r:#}");
    assert_eq!((r["stage"].as_str(), r["decision"]["status"].as_u64()), (Some("authentication"), Some(401)), "{r:#}");
}

#[test]
fn no_route_matched_says_so_and_the_gateways_404() {
    let o = eval(&["--path", "/nowhere"]);
    assert_eq!(o.status.code(), Some(DENIED), "{}", text(&o));
    assert!(text(&o).contains("route:    none matched"), "{}", text(&o));
    assert!(text(&o).contains("denied 404 by the gateway (no route): no route matches this request"), "{}", text(&o));
    let (_, r) = eval_json(&["--path", "/nowhere"]);
    assert_eq!(
        (r["route"].clone(), r["stage"].clone(), r["decision"]["status"].clone()),
        (Value::Null, json!("routing"), json!(404))
    );
}

#[test]
fn a_malformed_header_method_or_path_is_a_usage_error_naming_it() {
    let cases: [(&[&str], &str); 4] = [
        (&["--path", "/orders", "-H", "nocolon"], "`nocolon` has no `:`"),
        (&["--path", "/orders", "-H", "bad name: x"], "`bad name` is not a header name"),
        (&["--path", "/orders", "--method", "GE T"], "`GE T` is not a method"),
        (&["--path", "orders/7"], "`orders/7` does not start with `/`"),
    ];
    for (args, says) in cases {
        let o = eval(args);
        assert_eq!(o.status.code(), Some(USAGE), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
}

#[test]
fn input_shows_the_document_the_rule_saw() {
    let auth = bearer(&tokens::token("alice", &["reader"]));
    let (_, r) = eval_json(&["--path", "/orders/7?page=2", "-H", &auth, "--input"]);
    let input = &r["input"];
    assert_eq!(input["route"], "orders", "{r:#}");
    assert_eq!(input["request"]["path"], "/orders/7");
    assert_eq!(input["request"]["method"], "GET");
    assert_eq!(input["jwt"]["claims"]["sub"], "alice");
    assert_eq!(input["jwt"]["issuer"], tokens::ISSUER);
    let o = eval(&["--path", "/orders/7", "-H", &auth, "--input"]);
    assert!(text(&o).contains("input:\n{"), "{}", text(&o));
    // A request refused before the rule ran has no input to show.
    let (_, r) = eval_json(&["--path", "/orders/7", "-H", "authorization: Bearer garbage", "--input"]);
    assert_eq!(r["input"], Value::Null, "{r:#}");
}

/// The example plus a route `/echo` (bodies up to 16 bytes) whose rule tells what it saw: the
/// `x-user-id` header and the body, as headers to the upstream; its reason is `reason`.
fn echo_bundle(dir: &std::path::Path, reason: &str) -> std::path::PathBuf {
    let route = "  - name: echo\n    match: { path_prefix: /echo }\n    upstream: backend\n    policy: data.http.echo.decision\n    body: { max_bytes: 16 }\n";
    let rule = format!(
        "package http.echo\n\nimport rego.v1\n\ndecision := {{\"allow\": false, \"status\": 403, \"reason\": {}, \"headers\": {{\"x-seen\": object.get(input.request.headers, \"x-user-id\", \"none\"), \"x-body\": object.get(input.request, \"body\", \"absent\")}}}}\n",
        serde_json::to_string(reason).expect("a JSON string")
    );
    test_support::bundles::example_folder(dir, "127.0.0.1:9100", "", route, &[("http/echo.rego", &rule)])
}

fn eval_in(bundle: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["eval", bundle.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    bundlectl(&all)
}

#[test]
fn a_forged_identity_header_is_removed_before_the_rule_reads_it() {
    let (_, r) = eval_json(&["--path", "/orders/7", "-H", "x-user-id: admin", "--input"]);
    assert_eq!(r["request"]["removed_headers"][0]["name"], "x-user-id", "{r:#}");
    // A rule that reads the header sees none.
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = echo_bundle(dir.path(), "echo");
    let o = eval_in(&bundle, &["--path", "/echo", "-H", "x-user-id: admin", "--json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(r["decision"]["headers"]["x-seen"], "none", "{r:#}");
}

#[test]
fn a_route_that_reads_bodies_gives_its_rule_an_empty_one_and_refuses_a_declared_length_past_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = echo_bundle(dir.path(), "echo");
    let o = eval_in(&bundle, &["--path", "/echo", "--json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(r["decision"]["headers"]["x-body"], "", "as the gateway, an empty body: {r:#}");
    let o = eval_in(&bundle, &["-X", "POST", "--path", "/echo", "-H", "content-length: 17", "--json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(r["decision"]["status"], 413, "{r:#}");
}

#[test]
fn requests_with_two_readings_are_refused_as_the_gateway_refuses_them() {
    let (code, r) = eval_json(&["--path", "/public/x", "-H", "host: a.test", "-H", "host: b.test"]);
    assert_eq!((code, &r["decision"]["status"]), (Some(DENIED), &json!(400)), "{r:#}");
    let (_, r) = eval_json(&["--path", "/orders/7?access_token=abc"]);
    assert_eq!(r["decision"]["status"], 401, "a token in the query: {r:#}");
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("body");
    std::fs::write(&body, "{}").expect("body");
    let chunked = ["-X", "POST", "--path", "/orders", "-H", "transfer-encoding: chunked", "--body"];
    let (_, r) = eval_json(&[&chunked[..], &[body.to_str().expect("utf-8")]].concat());
    assert_ne!(r["decision"]["status"], 400, "a chunked body is no framing conflict: {r:#}");
}

#[test]
fn a_bundle_cannot_write_escape_sequences_to_the_authors_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = echo_bundle(dir.path(), "\u{1b}]0;pwned\u{7}\u{9b}31m");
    let o = eval_in(&bundle, &["--path", "/echo"]);
    let out = text(&o);
    assert!(out.contains("reason: \\u{1b}]0;pwned"), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{9b}') && !out.contains('\u{7}'), "{out:?}");
}

#[test]
fn a_dot_segment_path_is_decided_as_its_canonical_form() {
    let (code, r) = eval_json(&["--path", "/public/../orders/7"]);
    assert_eq!(code, Some(DENIED), "{r:#}");
    assert_eq!(r["request"]["path"], "/orders/7");
    assert_eq!(r["route"]["name"], "orders");
}

#[test]
fn a_tarball_bundle_is_evaluated_like_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tgz = dir.path().join("b.tar.gz");
    let example = example_dir();
    let o = bundlectl(&["build", example.to_str().expect("utf-8"), "-o", tgz.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bundlectl(&["eval", tgz.to_str().expect("utf-8"), "--path", "/public/x"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
