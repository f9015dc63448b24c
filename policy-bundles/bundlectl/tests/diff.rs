//! `bundlectl diff` through the real binary: directories, tarballs, `--json`, and revisions
//! published to a real `control-api` on loopback (its binary built beside this one by
//! `cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use test_support::bundles::example_dir;
use test_support::control_api::ControlApi;
use test_support::paths::copy_dir;

const READ: &str = "gateways-token-for-bundlectl-diff";
const PUBLISH: &str = "authors-token-for-bundlectl-diff";

fn bundlectl(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bundlectl"));
    cmd.args(args).env_remove("BUNDLECTL_TOKEN").env_remove("BUNDLECTL_SERVER").env_remove("BUNDLECTL_NAME");
    cmd.output().expect("run bundlectl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

/// Two copies of the example bundle: `old` with an extra upstream `legacy`; `new` with a route
/// `orders-v2` added, the orders write rule changed (writers → admins) and the admin data grown.
fn old_and_new(dir: &Path) -> (PathBuf, PathBuf) {
    let (old, new) = (dir.join("old"), dir.join("new"));
    copy_dir(&example_dir(), &old);
    copy_dir(&example_dir(), &new);
    edit(&old.join("gateway/data.yaml"), "\nroutes:", "  legacy:\n    targets: [\"127.0.0.1:9200\"]\n\nroutes:");
    let v2 = "  - name: orders-v2\n    match: { path_prefix: /v2/orders }\n    upstream: backend\n    \
              policy: data.http.orders.decision\n\njwt:";
    edit(&new.join("gateway/data.yaml"), "\njwt:", &format!("\n{v2}"));
    edit(&new.join("http/orders.rego"), "\"writer\" in roles\n}", "\"admin\" in roles\n}");
    edit(&new.join("http/admin/data.yaml"), "[acme, globex]", "[acme, globex, initech, umbrella]");
    (old, new)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

#[test]
fn diff_of_two_directories_names_each_route_upstream_rule_and_data_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = old_and_new(dir.path());
    let o = bundlectl(&["diff", old.to_str().expect("utf-8"), new.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("routes:\n  + orders-v2\n"), "{out}");
    assert!(out.contains("upstreams:\n  - legacy\n"), "{out}");
    assert!(out.contains("rego:\n--- a/http/orders.rego\n+++ b/http/orders.rego\n@@ "), "{out}");
    assert!(out.contains("\n-\t\"writer\" in roles\n+\t\"admin\" in roles\n"), "{out}");
    let admin = "http/admin/data.yaml";
    let sizes = |p: &str| format!("  ~ {p}  {} -> {} bytes\n", size(&old.join(p)), size(&new.join(p)));
    // The settings file is a data document too.
    assert!(out.ends_with(&format!("data:\n{}{}", sizes("gateway/data.yaml"), sizes(admin))), "{out}");
    assert!(!out.contains("settings:"), "the routes' order and other settings are unchanged: {out}");

    let same = bundlectl(&["diff", old.to_str().expect("utf-8"), old.to_str().expect("utf-8")]);
    assert_eq!((same.status.code(), stdout(&same).as_str()), (Some(0), "no differences\n"), "{}", stderr(&same));
}

#[test]
fn diff_reads_tarballs_and_shows_the_revisions_they_were_built_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = old_and_new(dir.path());
    let (a, b) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
    for (src, out, rev) in [(&old, &a, "r1"), (&new, &b, "r2")] {
        let o =
            bundlectl(&["build", src.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8"), "--revision", rev]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = bundlectl(&["diff", a.to_str().expect("utf-8"), b.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("settings:\n  manifest.revision: \"r1\" -> \"r2\"\n"), "{out}");
    for part in ["  + orders-v2\n", "  - legacy\n", "+++ b/http/orders.rego\n", "  ~ http/admin/data.yaml  "] {
        assert!(out.contains(part), "no {part:?} in {out}");
    }
    // A tarball against a directory: only the revision the build wrote differs.
    let o = bundlectl(&["diff", a.to_str().expect("utf-8"), old.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("settings:\n  manifest.revision: \"r1\" -> (absent)\n"), "{}", stdout(&o));
}

#[test]
fn diff_json_is_the_bundle_diff_with_every_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = old_and_new(dir.path());
    let o = bundlectl(&["diff", "--json", old.to_str().expect("utf-8"), new.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let keys: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["data", "rego", "routes", "settings", "upstreams"]);
    assert_eq!(v["routes"], json!([{"name": "orders-v2", "kind": "added", "fields": []}]));
    assert_eq!(v["upstreams"], json!([{"name": "legacy", "kind": "removed", "fields": []}]));
    assert_eq!(v["settings"], json!([]));
    assert_eq!(
        (v["rego"][0]["path"].as_str(), v["rego"][0]["kind"].as_str()),
        (Some("http/orders.rego"), Some("changed"))
    );
    assert!(v["rego"][0]["unified"].as_str().is_some_and(|u| u.contains("+\t\"admin\" in roles\n")), "{v}");
    let admin = "http/admin/data.yaml";
    let want = json!({"path": admin, "kind": "changed", "old_bytes": size(&old.join(admin)), "new_bytes": size(&new.join(admin))});
    assert!(v["data"].as_array().is_some_and(|d| d.contains(&want)), "{v}");
}

#[test]
fn an_operand_that_is_neither_a_path_nor_a_revision_is_named_and_exits_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let server = format!("http://127.0.0.1:{port}");
    let example = example_dir();
    let o = bundlectl(&["diff", example.to_str().expect("utf-8"), "no-such-thing", "--server", &server]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("`no-such-thing` is no file or directory here") && err.contains(&server), "{err}");
}

#[test]
fn diff_compares_revisions_published_to_control_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = old_and_new(dir.path());
    // control-api runs a bundle's tests before it publishes, and the example's pin the rule
    // that `new` changes: neither copy carries them here.
    for b in [&old, &new] {
        std::fs::remove_dir_all(b.join("tests")).expect("remove tests/");
    }
    let api = ControlApi::start(dir.path(), &[("authors", "publish", PUBLISH), ("gateways", "read", READ)]);
    let base = api.base.clone();
    // Removing one of two upstreams is past the growth guard: r2 is published with a reason.
    for (src, rev, force) in [(&old, "r1", &[][..]), (&new, "r2", &["--force", "--reason", "diff test"][..])] {
        let mut args = vec!["push", src.to_str().expect("utf-8"), "--revision", rev, "--server", &base];
        args.extend(["--token", PUBLISH]);
        args.extend(force);
        let o = bundlectl(&args);
        assert!(o.status.success(), "push {rev}: {}", stderr(&o));
    }
    let o = bundlectl(&["diff", "r1", "r2", "--server", &base, "--token", READ, "--name", "main"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("manifest.revision: \"r1\" -> \"r2\""), "{out}");
    for part in ["  + orders-v2\n", "  - legacy\n", "+++ b/http/orders.rego\n", "  ~ http/admin/data.yaml  "] {
        assert!(out.contains(part), "no {part:?} in {out}");
    }
    // A revision against a local directory: the revision is what differs.
    let o = bundlectl(&["diff", "r2", new.to_str().expect("utf-8"), "--server", &base, "--token", READ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "settings:\n  manifest.revision: \"r2\" -> (absent)\n");

    let o = bundlectl(&["diff", "r1", "r9", "--server", &base, "--token", READ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("HTTP 404") && stderr(&o).contains("has no revision `r9`"), "{}", stderr(&o));
}
