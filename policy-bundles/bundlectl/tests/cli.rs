//! `bundlectl`'s local commands through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/api-gateway")
}

fn bundlectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bundlectl")).args(args).output().expect("run bundlectl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn test_passes_on_the_example_and_fails_with_a_named_case_when_a_rule_breaks() {
    let out = bundlectl(&["test", example().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(" passed, 0 failed"), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let orders = dir.path().join("http/orders.rego");
    let src = std::fs::read_to_string(&orders).unwrap().replace("\"writer\" in roles\n}", "\"admin\" in roles\n}");
    std::fs::write(&orders, src).unwrap();
    let out = bundlectl(&["test", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("FAIL"), "{}", text(&out));
}

#[test]
fn build_is_deterministic_and_names_the_revision_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
    for out in [&a, &b] {
        let o = bundlectl(&["build", example().to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(x, y);
    let bundle = policy_bundles::Bundle::from_tar_gz(&x, &policy_bundles::Limits::default()).unwrap();
    assert_eq!(bundle.manifest.revision.len(), 12);
    let o = bundlectl(&["check", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn sign_produces_a_bundle_that_verifies_against_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-support/keys");
    let (plain, signed) = (dir.path().join("p.tar.gz"), dir.path().join("s.tar.gz"));
    assert!(bundlectl(&["build", example().to_str().unwrap(), "-o", plain.to_str().unwrap()]).status.success());
    let key = keys.join("demo-ed25519.pem");
    let o = bundlectl(&[
        "sign",
        plain.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
        "--sign-key",
        key.to_str().unwrap(),
        "--sign-alg",
        "EdDSA",
        "--sign-kid",
        "k1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let files =
        policy_bundles::archive::read_tar_gz(&std::fs::read(&signed).unwrap(), &policy_bundles::Limits::default())
            .unwrap();
    let pem = std::fs::read(keys.join("demo-ed25519.pub.pem")).unwrap();
    let vk = policy_bundles::signing::VerificationKey::from_pem("k1", "EdDSA", &pem).unwrap();
    policy_bundles::signing::verify(&files, &[vk], true).unwrap();
}

/// `build --sign-*` used to replace a `metadata.gateway` the author wrote in `.manifest` with
/// the flags' identity, silently: the author's is kept, and a flag that disagrees is refused.
#[test]
fn signing_never_silently_replaces_the_metadata_gateway_the_author_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("b");
    copy_dir(&example(), &src);
    let manifest =
        r#"{"roots": ["http", "gateway"], "metadata": {"owner": "a", "gateway": {"bundle": "main", "sequence": 7}}}"#;
    std::fs::write(src.join(".manifest"), manifest).unwrap();
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-support/keys/demo-ed25519.pem");
    let out = dir.path().join("s.tar.gz");
    let build = |extra: &[&str]| {
        let mut args = vec!["build", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--sign-key"];
        args.extend([key.to_str().unwrap(), "--sign-alg", "EdDSA", "--sign-kid", "k1"]);
        args.extend(extra);
        bundlectl(&args)
    };
    // No identity flags: the author's identity is what the signature binds.
    let o = build(&[]);
    assert!(o.status.success(), "{}", text(&o));
    let files = policy_bundles::archive::read_tar_gz(&std::fs::read(&out).unwrap(), &policy_bundles::Limits::default())
        .unwrap();
    let id = policy_bundles::signing::identity(&files).unwrap().expect("an identity");
    assert_eq!((id.bundle.as_str(), id.sequence, id.expires), ("main", 7, None));
    let v: serde_json::Value = serde_json::from_slice(&files[".manifest"]).unwrap();
    assert_eq!(v["metadata"]["owner"], "a", "the manifest's other fields are kept");
    // A flag that agrees is fine; one that disagrees is refused, naming both values.
    assert!(build(&["--sign-sequence", "7", "--sign-bundle", "main"]).status.success());
    for (flag, value, written) in [("--sign-sequence", "9", "7"), ("--sign-bundle", "staging", "`main`")] {
        let o = build(&[flag, value]);
        assert!(!o.status.success(), "{flag} {value} was accepted: {}", text(&o));
        let t = text(&o);
        assert!(t.contains(flag) && t.contains(value) && t.contains(written), "{t}");
    }
}

#[test]
fn push_to_an_unreachable_server_fails_with_a_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = bundlectl(&[
        "push",
        example().to_str().unwrap(),
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        "t",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains(&format!("127.0.0.1:{port}")), "{}", text(&o));
}

#[test]
fn version_names_the_binary_and_its_version() {
    let o = bundlectl(&["--version"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("bundlectl {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_failing_case_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let wrong = "\
- name: a reader may delete an order (wrong)
  route: orders
  input:
    jwt: { issuer: https://id.example.test, claims: { sub: bob, roles: [reader] } }
    request: { method: DELETE, path: /orders/7, headers: {} }
  expect: { allow: true }
";
    std::fs::write(dir.path().join("tests/wrong.cases.yaml"), wrong).unwrap();
    let o = bundlectl(&["test", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL"), "{}", text(&o));
}

#[test]
fn usage_io_bundle_and_server_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.tar.gz");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    let not_a_bundle = dir.path().join("garbage.tar.gz");
    std::fs::write(&not_a_bundle, b"not a tarball").unwrap();
    for args in [
        vec!["test", missing.to_str().unwrap()],
        vec!["check", missing.to_str().unwrap()],
        vec!["test", "--no-such-flag", example().to_str().unwrap()],
        vec!["frobnicate"],
        vec!["sign", not_a_bundle.to_str().unwrap(), "-o", missing.to_str().unwrap()],
        vec!["test", not_a_bundle.to_str().unwrap()],
        vec!["fleet", "--server", &server],
        vec!["revisions", "--server", &server],
    ] {
        let o = bundlectl(&args);
        assert_eq!(o.status.code(), Some(2), "bundlectl {args:?}: {}", text(&o));
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let o = bundlectl(&["--help"]);
    assert!(o.status.success());
    let help = text(&o);
    assert!(help.contains("Exit status:") && help.contains("1  `bundlectl test`"), "{help}");
}
