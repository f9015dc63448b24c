//! The OPA-Envoy example bundle (`policy-bundles/examples/opa-envoy`) through the real gateway
//! over HTTP: the decisions its `_test.rego` files expect, on real requests, and what the
//! backend receives (the policies' headers, removals and query rewrites; the body the policy
//! read). Tokens are verified in Rego with `io.jwt.decode_verify`, as beside Envoy.

mod common;

use common::*;
use serde_json::json;

struct Env {
    dir: tempfile::TempDir,
    _up: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    env_with("")
}

/// The example bundle behind a gateway with `extra` top-level config lines.
fn env_with(extra: &str) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let b = dir.path().join("bundle");
    copy_dir(&repo_root().join("policy-bundles/examples/opa-envoy"), &b);
    let settings = b.join("gateway/data.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings").replace("127.0.0.1:9100", &up.addr.to_string());
    std::fs::write(&settings, text).expect("write settings");
    let gw = start_gateway_with(dir.path(), &b, extra);
    Env { dir, _up: up, gw }
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
    // /admin: a boolean rule on parsed_path and the method, with the same token check.
    assert_eq!(get(&url("/admin/status"), &[("authorization", &auth(&alice))]).status, 200);
    assert_eq!(get(&url("/admin/users"), &[("authorization", &auth(&alice))]).status, 403);
    assert_eq!(get(&url("/admin/users"), &[("authorization", &auth(&admin))]).status, 200);
    assert_eq!(get(&url("/admin/status"), &[]).status, 403);
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
        ("not a JWT at all", Some("Bearer garbage".to_owned())),
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

const READER: &str = "gateway-reader-token-for-opa-envoy-tests";
const AUTHORS: &str = "authors-logs-token-for-opa-envoy-tests";

/// Decision events of Envoy-format routes carry the input the policy saw, in the plugin's
/// shape, with the bearer token erased at its place there; replaying them against a candidate
/// that lowers the transfer limit flips exactly the transfers over the new limit, and reports
/// the JWT route's events (whose rule reads the erased token) as not replayable.
#[test]
fn envoy_decisions_are_logged_in_the_plugins_shape_and_replay_exactly() {
    let cp = tempfile::tempdir().expect("tempdir");
    let api = test_support::control_api::ControlApi::start(
        cp.path(),
        &[("gateways", "read", READER), ("authors", "logs", AUTHORS)],
    );
    let token_file = cp.path().join("reader.token");
    std::fs::write(&token_file, READER).expect("token");
    let e = env_with(&format!(
        "decision_logs:\n  sinks: [\"{}/v1/logs\"]\n  token_file: {}\n  flush_interval: 200ms\n",
        api.base,
        token_file.display()
    ));
    let url = format!("{}/transfers", e.gw.base);
    let json_ct = [("content-type", "application/json")];
    let mut over_100 = Vec::new();
    for amount in [50, 250, 999, 20, 5000] {
        let body = format!(r#"{{"amount": {amount}, "to": "acct-{amount}"}}"#);
        let r = request("POST", &url, &json_ct, Some(body.as_bytes()));
        let id = match r.header("x-decision-id") {
            Some(id) => id.to_owned(),
            None => r.json()["headers"]["x-decision-id"].as_str().expect("decision id upstream").to_owned(),
        };
        if (101..=1000).contains(&amount) {
            over_100.push(id);
        }
    }
    let alice = people_token("alice", &["reader"], "people-api", now() + 600);
    assert_eq!(get(&format!("{}/people", e.gw.base), &[("authorization", &auth(&alice))]).status, 200);
    let mut events = Vec::new();
    eventually(std::time::Duration::from_secs(20), "6 events in control-api", || {
        events = api.logs(AUTHORS, "bundle=main&limit=100");
        events.len() >= 6
    });
    let people = events.iter().find(|e| e["route"] == "people").expect("the people event");
    let http = &people["input"]["attributes"]["request"]["http"];
    assert_eq!(http["method"], "GET");
    assert_eq!(http["headers"][":path"], "/people");
    assert!(http["headers"].get("authorization").is_none(), "{people:#}");
    assert!(
        people["erased"]
            .as_array()
            .expect("erased")
            .iter()
            .any(|p| p == "/input/attributes/request/http/headers/authorization"),
        "{people:#}"
    );
    assert_eq!(people["input"]["parsed_path"], json!(["people"]));
    assert_eq!(people["result"]["allow"], true);
    let big = events.iter().find(|e| e["input"]["parsed_body"]["amount"] == 5000).expect("the 5000 transfer");
    assert_eq!(big["status"], 422);
    assert_eq!(big["result"]["status"], 422);
    assert!(big["result"]["body"].as_str().expect("the deny body").contains("over limit"), "{big:#}");

    let candidate = e.dir.path().join("candidate");
    copy_dir(&e.dir.path().join("bundle"), &candidate);
    let rules = candidate.join("envoy/transfers.rego");
    let text = std::fs::read_to_string(&rules).expect("rules");
    std::fs::write(&rules, text.replace("limit := 1000", "limit := 100")).expect("candidate");
    let out = std::process::Command::new(workspace_bin("bundlectl"))
        .args(["replay", candidate.to_str().expect("utf-8"), "--server", &api.base, "--since", "1h", "--json"])
        .env("BUNDLECTL_TOKEN", AUTHORS)
        .output()
        .expect("run bundlectl replay");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["replayed"], 6, "{report:#}");
    assert_eq!(report["changed"], 3, "{report:#}");
    assert_eq!(report["not_replayable"], 1, "the people rule reads the erased token: {report:#}");
    let ids = |kind: &str| {
        let mut ids: Vec<String> = report["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["kind"] == kind)
            .filter_map(|c| c["decision_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };
    over_100.sort();
    assert_eq!(ids("allow→deny"), over_100, "{report:#}");
    // The 5000 transfer stays a 422, but its body names the new limit.
    assert_eq!(ids("body"), vec![big["decision_id"].as_str().expect("id").to_owned()], "{report:#}");
}
