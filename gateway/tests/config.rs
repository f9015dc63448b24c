//! `gateway --check-config` and start-up refusals, through the real binary.

mod common;

use common::*;
use std::process::Command;

fn check(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--check-config").arg(config).output().expect("run");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_config_accepts_every_shipped_config() {
    for name in ["gateway.yaml", "gateway-file.yaml"] {
        let (ok, out) = check(&repo_root().join("config").join(name));
        assert!(ok, "{name}: {out}");
        assert!(out.contains("ok"), "{name}: {out}");
    }
}

#[test]
fn check_config_accepts_the_shipped_tls_config_with_the_demo_certificates() {
    // config/gateway-tls.yaml reads ../run/certs: lay out a copy with the demo certificates there.
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo_root().join("config"), &dir.path().join("config"));
    let made = Command::new(repo_root().join("scripts/make-certs"))
        .arg(dir.path().join("run/certs"))
        .env("DEMO_CERTS", workspace_bin("demo-certs"))
        .output()
        .expect("make-certs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (ok, out) = check(&dir.path().join("config/gateway-tls.yaml"));
    assert!(ok, "{out}");
    assert!(out.contains("api.localhost") && out.contains("*.apps.localhost"), "{out}");
}

#[test]
fn the_alert_rules_read_metrics_the_gateway_exports() {
    let rules: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(repo_root().join("config/alerts.yaml")).expect("alerts.yaml"))
            .expect("alerts.yaml parses");
    let exported = [
        gateway::metrics::BUNDLE_STALE,
        gateway::metrics::BUNDLE_AGE,
        gateway::metrics::BUNDLE_INFO,
        gateway::metrics::ACTIVATION_FAILURES_TOTAL,
        gateway::metrics::TLS_CERT_EXPIRY,
        gateway::metrics::TLS_RELOADS_TOTAL,
        gateway::metrics::SIGNATURE_EXPIRED,
    ];
    let mut exprs = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            exprs += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("gateway_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(exported.contains(&n), "alert reads {n}, which the gateway does not export");
            }
        }
    }
    assert!(exprs >= 3);
}

#[test]
fn check_config_names_an_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = example_bundle(dir.path(), "127.0.0.1:9", "", "", &[]);
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:0\nbundle:\n  name: main\n  file: {}\n  max_stalenes: 5m\n", bundle.display()),
    )
    .expect("write");
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(out.contains("max_stalenes") && out.contains("bad.yaml:5"), "{out}");
}

#[test]
fn a_bundle_that_does_not_compile_is_refused_with_its_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = example_bundle(
        dir.path(),
        "127.0.0.1:9",
        "",
        "",
        &[("http/oops.rego", "package http.oops\n\nimport rego.v1\n\nallow if {\n  input.x ==\n}\n")],
    );
    let cfg = write_config(dir.path(), &bundle);
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(out.contains("http/oops.rego:"), "{out}");
    // Starting it fails the same way, with a non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--config").arg(&cfg).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http/oops.rego"));
}

#[test]
fn check_config_refuses_limits_that_would_refuse_every_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = example_bundle(dir.path(), "127.0.0.1:9", "", "", &[]);
    let cfg = dir.path().join("limits.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nbundle:\n  name: main\n  file: {}\nlimits:\n  max_in_flight: 0\n  queue_timeout: a while\n",
            bundle.display()
        ),
    )
    .expect("write");
    let (ok, out) = check(&cfg);
    assert!(!ok, "{out}");
    assert!(out.contains("limits.max_in_flight") && out.contains("limits.queue_timeout"), "{out}");
}

#[test]
fn version_names_the_binary_and_its_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("gateway {}", env!("CARGO_PKG_VERSION")));
}
