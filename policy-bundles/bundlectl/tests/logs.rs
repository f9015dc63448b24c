//! `bundlectl logs` and `bundlectl replay` end to end: a real `control-api` on loopback (its
//! binary, built beside this one by `cargo build --workspace --bins`), decision events shipped to
//! it as a gateway ships them, then read back (and replayed) through the real `bundlectl`. The
//! replay of real gateway traffic is in gateway/tests/decision_logs.rs.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use test_support::control_api::ControlApi;
use test_support::decision_logs::{decision_id, error_event, event, gzip_batch, timestamp_ago};

const READ: &str = "gateways-token-for-bundlectl-tests";
const LOGS: &str = "authors-token-for-bundlectl-tests";

/// A control-api on an in-memory store with a read and a logs token, holding `events`.
fn control_api(dir: &std::path::Path, events: &[Value]) -> (ControlApi, String) {
    let api = ControlApi::start(dir, &[("gateways", "read", READ), ("authors", "logs", LOGS)]);
    let base = api.base.clone();
    let auth = test_support::http::bearer(READ);
    let headers = [("authorization", auth.as_str()), ("content-encoding", "gzip")];
    let r = test_support::http::request("POST", &format!("{base}/v1/logs"), &headers, Some(&gzip_batch(events)));
    assert_eq!(r.status, 200, "{}", r.text());
    (api, base)
}

fn bundlectl(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bundlectl"));
    cmd.args(args).env_remove("BUNDLECTL_TOKEN").env_remove("BUNDLECTL_SERVER").env_remove("BUNDLECTL_NAME");
    if let Some(t) = token {
        cmd.env("BUNDLECTL_TOKEN", t);
    }
    cmd.output().expect("run bundlectl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Three events of `main` (a deny 3 minutes ago, an allow of `public` 2 minutes ago, an
/// evaluation error 1 minute ago) and one of `shop`.
fn events() -> Vec<Value> {
    let mut deny = event(&decision_id(1), "main");
    deny["timestamp"] = json!(timestamp_ago(Duration::from_secs(180)));
    let mut allow = event(&decision_id(2), "main");
    allow["timestamp"] = json!(timestamp_ago(Duration::from_secs(120)));
    allow["decision"] = json!("allow");
    allow["status"] = json!(200);
    allow["route"] = json!("public");
    allow["result"] = json!(true);
    allow["input"]["request"]["path"] = json!("/public/hello");
    let mut error = error_event(&decision_id(3), "main");
    error["timestamp"] = json!(timestamp_ago(Duration::from_secs(60)));
    let shop = event(&decision_id(4), "shop");
    vec![deny, allow, error, shop]
}

#[test]
fn logs_prints_one_line_per_event_of_the_bundle_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events();
    let (_server, base) = control_api(dir.path(), &evs);
    let o = bundlectl(&["logs", "--server", &base, "--name", "main", "--token", LOGS], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "main's events only: {out}");
    let ts = |i: usize| evs[i]["timestamp"].as_str().unwrap().to_owned();
    assert_eq!(
        lines[0],
        format!("{} error 403 orders GET /orders/7 {} rego_type_error: undefined function", ts(2), decision_id(3))
    );
    assert_eq!(lines[1], format!("{} allow 200 public GET /public/hello {}", ts(1), decision_id(2)));
    assert_eq!(lines[2], format!("{} deny  403 orders GET /orders/7 {} not your order", ts(0), decision_id(1)));
}

#[test]
fn logs_filters_and_prints_raw_json_with_the_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events();
    let (_server, base) = control_api(dir.path(), &evs);
    let args = ["logs", "--server", &base, "--decision", "deny", "--route", "orders", "--since", "1h", "--json"];
    let o = bundlectl(&args, Some(LOGS));
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value = serde_json::from_str(&stdout(&o)).expect("a JSON array");
    assert_eq!(got, json!([evs[0]]), "the event exactly as shipped");

    let o = bundlectl(&["logs", "--server", &base, "--name", "main", "--limit", "1"], Some(LOGS));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);
    assert!(stdout(&o).contains(&decision_id(3)), "{}", stdout(&o));

    let o = bundlectl(&["logs", "--server", &base, "--name", "main", "--revision", "r9"], Some(LOGS));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("no decision events"), "{}", stderr(&o));
}

#[test]
fn logs_errors_exit_2_with_the_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = control_api(dir.path(), &events());
    let o = bundlectl(&["logs", "--server", &base], Some(READ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 403") && stderr(&o).contains("`logs`"), "{}", stderr(&o));

    let o = bundlectl(&["logs", "--server", &base, "--since", "3600"], Some(LOGS));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 400") && stderr(&o).contains("`since`"), "{}", stderr(&o));

    let o = bundlectl(&["logs", "--server", &base, "--decision", "maybe"], Some(LOGS));
    assert_eq!(o.status.code(), Some(2), "clap refuses it before any call: {}", stderr(&o));
}

#[test]
fn replay_reports_masked_inputs_as_not_replayable_rather_than_guessing() {
    let dir = tempfile::tempdir().unwrap();
    let mut evs = events();
    evs[1].as_object_mut().unwrap().remove("masked");
    let (_server, base) = control_api(dir.path(), &evs);
    let example = test_support::bundles::example_dir();
    let args = ["replay", example.to_str().unwrap(), "--server", &base, "--since", "1h", "--json"];
    let o = bundlectl(&args, Some(LOGS));
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("a JSON report");
    // main's three events: the public allow replays unchanged; the other two masked /input/token/sub.
    assert_eq!(
        (r["replayed"].as_u64(), r["unchanged"].as_u64(), r["changed"].as_u64()),
        (Some(3), Some(1), Some(0)),
        "{r:#}"
    );
    assert_eq!(r["not_replayable"], 2, "{r:#}");
    assert!(r["not_replayable_events"][0]["why"].as_str().is_some_and(|w| w.contains("/input/token/sub")), "{r:#}");
}

#[test]
fn replay_errors_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = control_api(dir.path(), &events());
    let example = test_support::bundles::example_dir();
    let candidate = example.to_str().unwrap();
    let o = bundlectl(&["replay", candidate, "--server", &base], Some(READ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 403"), "a read token may not read logs: {}", stderr(&o));

    let nowhere = format!("http://127.0.0.1:{}", test_support::process::free_port());
    let o = bundlectl(&["replay", candidate, "--server", &nowhere], Some(LOGS));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&nowhere), "names the server it could not reach: {}", stderr(&o));

    let missing = dir.path().join("no-such-bundle");
    let o = bundlectl(&["replay", missing.to_str().unwrap(), "--server", &base], Some(LOGS));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-bundle"), "names the candidate: {}", stderr(&o));
}

/// The example bundle written to `dir/REV` with `"revision": REV` in its manifest and one data
/// file naming it (so that each revision has its own content).
fn example_at(dir: &std::path::Path, rev: &str) -> std::path::PathBuf {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/api-gateway");
    let src = dir.join(rev);
    let mut files = policy_bundles::archive::read_dir(&example, &policy_bundles::Limits::default()).unwrap();
    files.insert(".manifest".into(), format!(r#"{{"revision": "{rev}"}}"#).into_bytes());
    files.insert("extra/data.json".into(), format!(r#"{{"built": "{rev}"}}"#).into_bytes());
    for (path, bytes) in &files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    src
}

/// The active tarball of bundle `main`.
fn active_tarball(api: &ControlApi) -> Vec<u8> {
    let auth = test_support::http::bearer(READ);
    let r =
        test_support::http::request("GET", &format!("{}/v1/bundles/main", api.base), &[("authorization", &auth)], None);
    assert_eq!(r.status, 200);
    r.body
}

/// An author who writes `"revision": "r1"` in `.manifest` gets r1 from `build` and `push`, as
/// with `opa build`, and can roll back to it by that name.
#[test]
fn the_manifest_revision_is_kept_and_rollback_to_it_works() {
    let dir = tempfile::tempdir().unwrap();
    const PUBLISH: &str = "publishers-token-for-bundlectl-tests";
    let api = ControlApi::start(dir.path(), &[("gateways", "read", READ), ("authors", "publish", PUBLISH)]);
    for rev in ["r1", "r2"] {
        let src = example_at(dir.path(), rev);
        let out_file = dir.path().join(format!("{rev}.tar.gz"));
        let o = bundlectl(&["build", src.to_str().unwrap(), "-o", out_file.to_str().unwrap()], None);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!("revision {rev},")), "{}", stdout(&o));
        let o = bundlectl(&["push", out_file.to_str().unwrap(), "--server", &api.base], Some(PUBLISH));
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains(&format!("revision {rev}")), "{}", stdout(&o));
    }
    let o = bundlectl(&["rollback", "--to", "r1", "--server", &api.base], Some(PUBLISH));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let active = active_tarball(&api);
    let bundle = policy_bundles::Bundle::from_tar_gz(&active, &policy_bundles::Limits::default()).unwrap();
    assert_eq!(bundle.manifest.revision, "r1");
}

/// `rollback --sign-key`: the old revision's content, signed again for the same bundle with a
/// sequence above every earlier one, published as a new revision and active.
#[test]
fn a_signed_rollback_re_signs_the_old_content_with_a_higher_sequence() {
    let dir = tempfile::tempdir().unwrap();
    const PUBLISH: &str = "publishers-token-for-signed-rollback";
    let api = ControlApi::start(dir.path(), &[("gateways", "read", READ), ("authors", "publish", PUBLISH)]);
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-support/keys/demo-es256.pem");
    let sign = ["--sign-key", key.to_str().unwrap(), "--sign-kid", "k1"];
    for (rev, seq) in [("r1", "100"), ("r2", "200")] {
        let src = example_at(dir.path(), rev);
        let mut args = vec!["push", src.to_str().unwrap(), "--server", &api.base, "--sign-sequence", seq];
        args.extend(sign);
        let o = bundlectl(&args, Some(PUBLISH));
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    }
    let mut args = vec!["rollback", "--to", "r1", "--server", &api.base];
    args.extend(sign);
    let o = bundlectl(&args, Some(PUBLISH));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("r1-resigned-"), "{}", stdout(&o));
    let active = active_tarball(&api);
    let files = policy_bundles::archive::read_tar_gz(&active, &policy_bundles::Limits::default()).unwrap();
    let public = std::fs::read(key.with_file_name("demo-es256.pub.pem")).unwrap();
    let keys = [policy_bundles::signing::VerificationKey::from_pem("k1", "ES256", &public).unwrap()];
    policy_bundles::signing::verify(&files, &keys, true).unwrap();
    let id = policy_bundles::signing::check_identity(&files, "main", 201, 0, false).unwrap();
    assert!(id.sequence > 200, "{id:?}");
    assert_eq!(files["extra/data.json"], br#"{"built": "r1"}"#.to_vec(), "r1's content");
    let bundle = policy_bundles::Bundle::from_files(files).unwrap();
    assert!(bundle.manifest.revision.starts_with("r1-resigned-"), "{}", bundle.manifest.revision);
}
