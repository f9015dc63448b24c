//! OPA's bundle conventions: `.manifest` `rego_version` and `file_rego_versions`, rules read at
//! any path OPA can query (objects built from ref-head rules, packages), and the manifest fields
//! `opa build` writes.

use policy_bundles::archive::Files;
use policy_bundles::{Bundle, Snapshot};
use regorus::Value;

const SETTINGS: &str = "\
upstreams:
  backend: { targets: [\"127.0.0.1:9100\"] }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: backend
    policy: POLICY
";

fn files(policy: &str, modules: &[(&str, &str)], manifest: Option<&str>) -> Files {
    let mut f = Files::new();
    f.insert("gateway/data.yaml".into(), SETTINGS.replace("POLICY", policy).into_bytes());
    for (path, src) in modules {
        f.insert((*path).into(), src.as_bytes().to_vec());
    }
    if let Some(m) = manifest {
        f.insert(".manifest".into(), m.as_bytes().to_vec());
    }
    f
}

fn compile(policy: &str, modules: &[(&str, &str)], manifest: Option<&str>) -> Result<Snapshot, String> {
    let bundle = Bundle::from_files(files(policy, modules, manifest)).map_err(|e| e.to_string())?;
    Snapshot::compile(&bundle).map_err(|e| e.to_string())
}

fn input(method: &str) -> Value {
    Value::from_json_str(&format!(r#"{{"request": {{"method": "{method}"}}}}"#)).unwrap()
}

/// Evaluates the route's rule with the interpreter and, when it compiled for it, the VM.
fn decide(snap: &Snapshot, method: &str) -> bool {
    let d = snap.decide(0, input(method)).unwrap();
    assert_eq!(snap.interpret(0, input(method)).unwrap(), snap.evaluate(0, input(method)).unwrap());
    d.allow
}

const V0: &str = "package p\n\ndefault allow = false\n\nallow { input.request.method == \"GET\" }\n";
const V1: &str = "package q\n\nallow if input.request.method == \"GET\"\n";

#[test]
fn a_v0_module_is_refused_unless_the_manifest_says_v0() {
    let e = compile("data.p.allow", &[("p.rego", V0)], None).unwrap_err();
    assert!(e.contains("p.rego") && e.contains("if"), "{e}");
    let snap = compile("data.p.allow", &[("p.rego", V0)], Some(r#"{"rego_version": 0}"#)).unwrap();
    assert!(decide(&snap, "GET"));
    assert!(!decide(&snap, "POST"));
}

#[test]
fn file_rego_versions_set_each_files_version_over_the_bundles() {
    let modules = [("legacy/p.rego", V0), ("q.rego", V1)];
    let manifest = r#"{"rego_version": 1, "file_rego_versions": {"/legacy/*.rego": 0}}"#;
    let snap = compile("data.p.allow", &modules, Some(manifest)).unwrap();
    assert!(decide(&snap, "GET"));
    // The other way round: a v1 file in a v0 bundle.
    let manifest = r#"{"rego_version": 0, "file_rego_versions": {"q.rego": 1}}"#;
    let snap = compile("data.q.allow", &modules, Some(manifest)).unwrap();
    assert!(decide(&snap, "GET"));
    // Without the per-file entry the v1 file does not parse as v0 (`if` is not a keyword there).
    let e = compile("data.q.allow", &modules, Some(r#"{"rego_version": 0}"#)).unwrap_err();
    assert!(e.contains("q.rego"), "{e}");
}

#[test]
fn a_rego_version_other_than_0_or_1_and_wasm_modules_are_refused_by_name() {
    let e = compile("data.q.allow", &[("q.rego", V1)], Some(r#"{"rego_version": 2}"#)).unwrap_err();
    assert!(e.contains("rego_version is 2"), "{e}");
    let wasm = r#"{"wasm": [{"entrypoint": "q/allow", "module": "/policy.wasm"}]}"#;
    let e = compile("data.q.allow", &[("q.rego", V1)], Some(wasm)).unwrap_err();
    assert!(e.contains("wasm"), "{e}");
}

#[test]
fn the_manifest_fields_opa_build_writes_are_accepted() {
    let manifest = r#"{"revision": "r1", "roots": ["q", "gateway"], "rego_version": 1, "wasm": [],
        "metadata": {"owner": "team-a"}, "file_rego_versions": {}}"#;
    let snap = compile("data.q.allow", &[("q.rego", V1)], Some(manifest)).unwrap();
    assert_eq!(snap.revision, "r1");
}

const REF_HEADS: &str = r#"package envoy.authz

default allow := false

allow if input.request.method == "GET"

result.allowed := allow

result.headers := {"x-checked": "yes"}

result.http_status := 403 if not allow
"#;

#[test]
fn a_route_may_name_an_object_built_from_ref_head_rules() {
    let snap = compile("data.envoy.authz.result", &[("authz.rego", REF_HEADS)], None).unwrap();
    let v = snap.evaluate(0, input("GET")).unwrap();
    assert_eq!(v, Value::from_json_str(r#"{"allowed": true, "headers": {"x-checked": "yes"}}"#).unwrap());
    let v = snap.interpret(0, input("POST")).unwrap();
    assert_eq!(v["allowed"], Value::from(false));
    assert_eq!(v["http_status"], Value::from(403u64));
    // The rule's reads are followed through the alias: decisions stay cached on the method only.
    assert_eq!(snap.describe_reads(), "data.envoy.authz.result: input.request.method");
    assert_eq!(snap.policy_index("data.envoy.authz.result"), Some(0));
}

#[test]
fn a_route_may_name_a_package_and_a_path_nobody_defines_is_still_refused() {
    let snap = compile("data.envoy.authz", &[("authz.rego", REF_HEADS)], None).unwrap();
    let v = snap.interpret(0, input("GET")).unwrap();
    assert_eq!(v["result"]["allowed"], Value::from(true));
    assert_eq!(v["allow"], Value::from(true));
    let e = compile("data.envoy.authz.nothing", &[("authz.rego", REF_HEADS)], None).unwrap_err();
    assert!(e.contains("no module defines"), "{e}");
}
