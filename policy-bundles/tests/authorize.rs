//! The decision pipeline the gateway and the policy service share, on the example bundle and on
//! small bundles written here: route, bearer token, pruned input, rule, `fail_open`.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use policy_bundles::archive::Files;
use policy_bundles::authorize::{authorize, error_reason, AuthError, Outcome, RequestView, Verdict};
use policy_bundles::jwt::JwtError;
use policy_bundles::snapshot::Request;
use policy_bundles::{Bundle, Limits, Snapshot};

fn example() -> Snapshot {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway");
    Snapshot::compile(&Bundle::from_path(&dir, &Limits::default()).unwrap()).unwrap()
}

fn token(roles: &[&str]) -> String {
    let pem =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-support/keys/demo-es256.pem")).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": "https://id.example.test", "aud": "orders-api", "sub": "alice",
        "roles": roles, "iat": now, "exp": now + 600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo-es256".into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

fn parts<'a>(method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        method,
        path,
        query: None,
        host: "api.example.test",
        scheme: "http",
        client_ip: "127.0.0.1",
        body: None,
        content_type: None,
        conn: policy_bundles::input::Connection::NONE,
    }
}

/// Asks with no headers beyond `Authorization`.
fn ask(snap: &Snapshot, method: &str, path: &str, authorization: Option<&str>) -> Outcome {
    let headers: [(&str, &[u8]); 0] = [];
    authorize(
        snap,
        RequestView { parts: parts(method, path), authorization: authorization.map(str::as_bytes), headers },
    )
}

fn decision(outcome: Outcome) -> (bool, policy_bundles::Decision) {
    match outcome {
        Outcome::Evaluated { verdict: Verdict::Allow(d, _), .. } => (true, (*d).clone()),
        Outcome::Evaluated { verdict: Verdict::Deny(d, _), .. } => (false, (*d).clone()),
        other => panic!("expected a decision, got {other:?}"),
    }
}

#[test]
fn a_reader_is_allowed_to_read_orders_with_the_decisions_headers() {
    let snap = example();
    let auth = format!("Bearer {}", token(&["reader"]));
    let outcome = ask(&snap, "GET", "/orders/7", Some(&auth));
    assert_eq!(outcome.route(), snap.table.lookup("api.example.test", "/orders/7", "GET"));
    let (allow, d) = decision(outcome);
    assert!(allow);
    assert!(d.headers.contains(&("x-user-id".into(), "alice".into())), "{:?}", d.headers);
    assert_eq!(d.response_headers, vec![("x-decided-by".to_string(), "http.orders".to_string())]);
}

#[test]
fn a_deny_carries_the_rules_status_and_reason() {
    let snap = example();
    let auth = format!("bearer {}", token(&["reader"]));
    let (allow, d) = decision(ask(&snap, "POST", "/orders", Some(&auth)));
    assert!(!allow);
    assert_eq!((d.status, d.reason.as_deref()), (403, Some("alice may not post orders")));
    let (allow, d) = decision(ask(&snap, "GET", "/orders/7", None));
    assert!(!allow);
    assert_eq!(d.status, 401);
}

#[test]
fn a_bad_bearer_token_is_refused_before_any_policy_runs() {
    let snap = example();
    match ask(&snap, "GET", "/orders/7", Some("Bearer not.a.jwt")) {
        Outcome::Unauthenticated { route, error } => {
            assert_eq!(snap.routes[route].name, "orders");
            assert!(matches!(error, AuthError::Token(JwtError::Malformed)), "{error:?}");
        }
        other => panic!("expected a refused token, got {other:?}"),
    }
}

#[test]
fn a_scheme_the_route_does_not_list_is_refused_not_treated_as_no_token() {
    let snap = example();
    match ask(&snap, "GET", "/orders/7", Some("Basic YWxpY2U6cHc=")) {
        Outcome::Unauthenticated { error: AuthError::Scheme(s), .. } => assert_eq!(s, "Basic"),
        other => panic!("expected a refused scheme, got {other:?}"),
    }
}

#[test]
fn every_other_spelling_of_a_bearer_token_is_malformed_never_no_token() {
    let snap = example();
    let t = token(&["reader"]);
    for auth in [
        format!("Bearer\t{t}"),
        format!("Bearer\u{a0}{t}"),
        format!("Bearer  {t}"),
        format!("Bearer {t} "),
        format!("Bearer {t} x"),
        format!("Bearer \"{t}\""),
        format!("Bearer {t},x"),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        format!(" Bearer {t}"),
        String::new(),
    ] {
        match ask(&snap, "GET", "/public/x", Some(&auth)) {
            Outcome::Unauthenticated { error: AuthError::Malformed, .. } => {}
            other => panic!("{auth:?}: expected a malformed credential, got {other:?}"),
        }
    }
    // Any case of the scheme, and padding, are one well-formed token.
    let (allow, _) = decision(ask(&snap, "GET", "/orders/7", Some(&format!("bEaReR {t}"))));
    assert!(allow);
}

#[test]
fn a_request_no_route_matches_is_no_route() {
    assert!(matches!(ask(&example(), "GET", "/nowhere", None), Outcome::NoRoute));
    assert_eq!(Outcome::NoRoute.route(), None);
}

#[test]
fn headers_are_not_read_for_a_rule_that_does_not_read_them() {
    let snap = example();
    let auth = format!("Bearer {}", token(&["reader"]));
    let walked = Cell::new(false);
    let headers = std::iter::from_fn(|| {
        walked.set(true);
        None::<(&str, &[u8])>
    });
    let outcome = authorize(
        &snap,
        RequestView { parts: parts("GET", "/orders/7"), authorization: Some(auth.as_bytes()), headers },
    );
    assert!(decision(outcome).0);
    assert!(!walked.get(), "the orders rule reads no header, yet the headers were walked");
}

#[test]
fn only_the_headers_a_rule_reads_reach_it() {
    let snap = example();
    let auth = format!("Bearer {}", token(&["admin"]));
    let ask_admin = |headers: &[(&str, &[u8])]| {
        let view = RequestView {
            parts: parts("GET", "/admin/x"),
            authorization: Some(auth.as_bytes()),
            headers: headers.to_vec(),
        };
        decision(authorize(&snap, view)).0
    };
    assert!(ask_admin(&[("x-tenant", b"acme"), ("accept", b"*/*")]));
    assert!(!ask_admin(&[("x-tenant", b"initech")]));
    assert!(!ask_admin(&[("x-tenant-id", b"acme")]));
}

/// A bundle of two routes onto a rule that is undefined for every request.
fn undefined_rule_bundle() -> Snapshot {
    let mut files = Files::new();
    let settings = "\
upstreams:
  backend: { targets: [\"127.0.0.1:9100\"] }
routes:
  - name: open
    match: { path_prefix: /open }
    upstream: backend
    policy: data.p.decision
    fail_open: true
  - name: closed
    match: { path_prefix: /closed }
    upstream: backend
    policy: data.p.decision
";
    files.insert("gateway/data.yaml".into(), settings.as_bytes().to_vec());
    files.insert("p.rego".into(), b"package p\n\ndecision if input.request.method == \"NEVER\"\n".to_vec());
    Snapshot::compile(&Bundle::from_files(files).unwrap()).unwrap()
}

#[test]
fn a_failing_rule_denies_unless_the_route_is_fail_open() {
    let snap = undefined_rule_bundle();
    match ask(&snap, "GET", "/open/x", None) {
        Outcome::Evaluated { verdict: Verdict::FailedOpen(e), .. } => {
            assert_eq!(error_reason(&e), "policy result undefined")
        }
        other => panic!("expected a fail-open allow, got {other:?}"),
    }
    match ask(&snap, "GET", "/closed/x", None) {
        Outcome::Evaluated { verdict: Verdict::Failed(e), .. } => {
            assert_eq!(error_reason(&e), "policy result undefined")
        }
        other => panic!("expected a fail-closed deny, got {other:?}"),
    }
}

#[test]
fn credentials_read_one_bearer_token_or_name_the_scheme_or_are_malformed() {
    use policy_bundles::authorize::{credentials, Credentials::*};
    assert_eq!(credentials(b"Bearer abc"), Bearer("abc"));
    assert_eq!(credentials(b"bearer a-b.c_d~e+f/g=="), Bearer("a-b.c_d~e+f/g=="));
    assert_eq!(credentials(b"Basic YTpi"), Other("Basic"));
    assert_eq!(credentials(b"Negotiate"), Other("Negotiate"));
    assert_eq!(credentials(b"Bearerx.y.z"), Other("Bearerx.y.z"));
    for bad in [
        &b"BEARER  abc"[..],
        b"Bearer abc ",
        b"Bearer\tabc",
        b"Bearer\xc2\xa0abc",
        b"Bearer",
        b"Bearer =abc",
        b"Bearer a=b",
        b"Bearer:abc",
        b"Basic\tYTpi",
        b"Basic Y\xffTpi",
        b"",
        b" Bearer abc",
    ] {
        assert_eq!(credentials(bad), Malformed, "{:?}", String::from_utf8_lossy(bad));
    }
}
