//! Rego that OPA accepts runs in `bundlectl test` (docs/src/authors/regorus-parse-gap.md).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/opa-primer")
}

#[test]
fn an_envoy_input_literal_from_the_opa_primer_parses_in_bundlectl_test() {
    let test = std::fs::read_to_string(fixture().join("envoy/primer_test.rego")).expect("fixture");
    // What made regorus 0.14 answer "expecting `}` while parsing set": a raw tab in a string.
    assert!(test.lines().any(|l| l.trim_start().starts_with("\"x-forwarded-client-cert\"") && l.contains("d6\t1eaa")));
    let out = Command::new(env!("CARGO_BIN_EXE_bundlectl"))
        .args(["test", fixture().to_str().expect("utf-8 path")])
        .output()
        .expect("run bundlectl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PASS data.envoy.authz_test.test_get_profile_from_frontend_allowed"), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
}
