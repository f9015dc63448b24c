//! `bundlectl test --coverage` through the binary, on the api-gateway example.

use std::path::Path;
use std::process::Command;

fn rows(v: &serde_json::Value) -> Vec<(u64, u64)> {
    v.as_array()
        .map(|a| {
            a.iter().map(|r| (r["start"]["row"].as_u64().unwrap_or(0), r["end"]["row"].as_u64().unwrap_or(0))).collect()
        })
        .unwrap_or_default()
}

#[test]
fn coverage_reports_the_rows_opa_would_on_the_example_bundle() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/api-gateway");
    let out = Command::new(env!("CARGO_BIN_EXE_bundlectl"))
        .args(["test", example.to_str().expect("utf-8"), "--coverage"])
        .output()
        .expect("run bundlectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("OPA's JSON on stdout");
    let orders = &j["files"]["http/orders.rego"];
    // Derived by hand from OPA's cover.go: rule heads (7, 9, 11, 13, 19, 24, the elses at 33 and
    // 39) and the first row of each body expression; every case path is exercised, the 403
    // case takes the last `else := {...}` (row 39, which has no body of its own).
    assert_eq!(
        rows(&orders["covered"]),
        vec![(7, 7), (9, 9), (11, 11), (13, 16), (19, 21), (24, 24), (32, 33), (38, 39)]
    );
    assert!(orders.get("not_covered").is_none(), "{orders}");
    assert_eq!(rows(&j["files"]["http/admin.rego"]["covered"]), vec![(6, 9)]);
    assert_eq!(rows(&j["files"]["http/public.rego"]["covered"]), vec![(6, 6), (8, 8)]);
    assert_eq!(j["files"]["tests/orders_test.rego"]["coverage"], serde_json::json!(100));
    assert_eq!(j["covered_lines"], serde_json::json!(45));
    assert_eq!(j["not_covered_lines"], serde_json::json!(0));
    assert_eq!(j["coverage"], serde_json::json!(100));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http/orders.rego: 100.00%"));
}
