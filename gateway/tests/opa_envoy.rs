//! The OPA-Envoy example bundle (`policy-bundles/examples/opa-envoy`) through the real gateway
//! over HTTP: the decisions its `_test.rego` files expect, on real requests, and what the
//! backend receives (the policies' headers, removals and query rewrites; the body the policy
//! read). Tokens are verified in Rego with `io.jwt.decode_verify`, as beside Envoy.

mod common;

use common::*;
use serde_json::json;

struct Env {
    _dir: tempfile::TempDir,
    _up: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let b = dir.path().join("bundle");
    copy_dir(&repo_root().join("policy-bundles/examples/opa-envoy"), &b);
    let settings = b.join("gateway/data.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings").replace("127.0.0.1:9100", &up.addr.to_string());
    std::fs::write(&settings, text).expect("write settings");
    let gw = start_gateway(dir.path(), &b);
    Env { _dir: dir, _up: up, gw }
}

/// A token for the example's audience (`people-api`), valid for ten minutes unless `exp` says.
fn people_token(sub: &str, roles: &[&str], aud: &str, exp: u64) -> String {
    token_with(
        "es256",
        json!({"iss": ISSUER, "aud": aud, "sub": sub, "roles": roles, "iat": now(), "nbf": now() - 5, "exp": exp}),
    )
}

fn auth(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn a_boolean_result_allows_and_denies() {
    let e = env();
    let r = get(&format!("{}/healthz", e.gw.base), &[]);
    // The echo upstream answers its health path itself.
    assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{r:?}");
    let r = request("DELETE", &format!("{}/healthz", e.gw.base), &[], None);
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn a_jwt_checked_in_rego_with_path_rbac_decides_people() {
    let e = env();
    let url = |p: &str| format!("{}{p}", e.gw.base);
    let alice = people_token("alice", &["reader"], "people-api", now() + 600);
    let r = get(&url("/people"), &[("authorization", &auth(&alice)), ("x-user", "mallory")]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    // The policy's headers, over the client's forged copy.
    assert_eq!(body["headers"]["x-user"], "alice");
    assert_eq!(body["headers"]["x-user-roles"], "reader");
    assert_eq!(r.header("x-policy"), Some("envoy.authz"));
    assert_eq!(get(&url("/people/bob"), &[("authorization", &auth(&alice))]).status, 200);
    assert_eq!(request("DELETE", &url("/people/bob"), &[("authorization", &auth(&alice))], None).status, 403);
    assert_eq!(request("PUT", &url("/people/alice"), &[("authorization", &auth(&alice))], Some(b"{}")).status, 200);
    assert_eq!(request("PUT", &url("/people/bob"), &[("authorization", &auth(&alice))], Some(b"{}")).status, 403);
    let admin = people_token("bob", &["admin"], "people-api", now() + 600);
    assert_eq!(request("DELETE", &url("/people/alice"), &[("authorization", &auth(&admin))], None).status, 200);
}

#[test]
fn a_missing_forged_expired_or_foreign_token_gets_the_policys_401_and_body() {
    let e = env();
    let url = format!("{}/people", e.gw.base);
    let alice = people_token("alice", &["reader"], "people-api", now() + 600);
    let mut forged = alice.rsplit_once('.').expect("jwt").0.to_owned();
    forged.push_str(".AAAA");
    let expired = people_token("alice", &["reader"], "people-api", now() - 60);
    let foreign = people_token("alice", &["reader"], "orders-api", now() + 600);
    let alg_none = {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"iss": ISSUER, "aud": "people-api", "sub": "root", "roles": ["admin"], "exp": now() + 600}))
        )
    };
    for (what, header) in [
        ("no token", None),
        ("forged signature", Some(auth(&forged))),
        ("expired", Some(auth(&expired))),
        ("another audience", Some(auth(&foreign))),
        ("alg none", Some(auth(&alg_none))),
    ] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        let r = get(&url, &headers);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(r.text(), "a valid bearer token is required", "{what}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"people\""), "{what}");
    }
}

#[test]
fn repeated_query_keys_reach_the_policy_as_lists() {
    let e = env();
    let url = |q: &str| format!("{}/search?{q}", e.gw.base);
    let r = get(&url("tag=books&tag=music"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/search?tag=books&tag=music");
    let r = get(&url("tag=books&tag=zzz&tag=aaa"), &[]);
    assert_eq!((r.status, r.text()), (400, "unknown tags: aaa, zzz".to_string()));
    let r = get(&url("tag=books&tag=music&tag=films&tag=games"), &[]);
    assert_eq!((r.status, r.text()), (400, "at most three tags".to_string()));
    // Encoded the ways a client may: the policy sees the decoded values.
    assert_eq!(get(&url("tag=b%6Foks&tag=%6Dusic"), &[]).status, 200);
}

#[test]
fn a_rule_reading_parsed_body_decides_and_the_body_still_reaches_the_backend() {
    let e = env();
    let url = format!("{}/transfers", e.gw.base);
    let json_ct = [("content-type", "application/json")];
    let ok = br#"{"amount": 250, "to": "acct-2"}"#;
    let r = request("POST", &url, &json_ct, Some(ok));
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["body_len"], ok.len());
    assert_eq!(body["headers"]["x-transfer-checked"], "true");
    let r = request("POST", &url, &json_ct, Some(br#"{"amount": 5000, "to": "acct-2"}"#));
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["limit"], 1000);
    // Not JSON to the policy: no parsed_body, so the default (400) holds.
    let r = request("POST", &url, &[("content-type", "text/plain")], Some(ok));
    assert_eq!(r.status, 400, "{r:?}");
    // Past the route's body.max_bytes: 413 before the policy runs, declared or not.
    let big = vec![b' '; 20_000];
    let r = request("POST", &url, &json_ct, Some(&big));
    assert_eq!(r.status, 413, "{r:?}");
}

#[test]
fn a_v0_policy_rewrites_headers_and_query_on_the_way_upstream() {
    let e = env();
    let r = get(
        &format!("{}/legacy/items?trace=1&version=1&keep=a%20b", e.gw.base),
        &[("x-debug", "1"), ("x-other", "kept")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["path"], "/legacy/items?keep=a%20b&version=2");
    assert_eq!(body["headers"]["x-legacy"], "yes");
    assert_eq!(body["headers"]["x-other"], "kept");
    assert!(body["headers"].get("x-debug").is_none(), "{body}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = request("DELETE", &format!("{}/legacy/items", e.gw.base), &[], None);
    assert_eq!((r.status, r.text()), (405, "only GET under /legacy".to_string()));
}
