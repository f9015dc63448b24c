//! Validation of a published tarball with the very code the gateway runs
//! ([`Bundle::from_tar_gz`] then [`Snapshot::compile`]), followed by the bundle's own tests
//! ([`policy_bundles::bundle_tests`]: Rego `test_` rules and decision cases). CPU-bound: callers run
//! it on a blocking thread.

use policy_bundles::budget::{self, Budget, Figures, Validator};
use policy_bundles::bundle_tests::{self, TestKind, TestResult};
use policy_bundles::{Bundle, BundleError, BundleErrors, ErrorKind, Limits, Snapshot};
use serde::Serialize;

/// Longest revision name accepted from a manifest.
pub const MAX_REVISION_LEN: usize = 128;

/// A bundle that would activate on a gateway and passes its own tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The manifest's `revision`, when it sets one.
    pub manifest_revision: Option<String>,
    /// How many Rego tests and decision cases passed.
    pub tests_passed: usize,
    /// What the bundle costs, measured within the budget: what the growth guard compares.
    pub figures: Figures,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It would not load or compile on a gateway (or its tests cannot even run).
    #[error("{0}")]
    Invalid(BundleErrors),
    /// It compiles, but some of its own tests or decision cases fail.
    #[error("{} of the bundle's tests failed", .0.len())]
    TestsFailed(Vec<TestResult>),
}

impl Rejection {
    /// The `reason` label of `control_api_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Invalid(e) => e.kind().as_str(),
            Rejection::TestsFailed(_) => "tests",
        }
    }

    /// Every problem, in the API's error shape.
    pub fn errors(&self) -> Vec<ErrorItem> {
        match self {
            Rejection::Invalid(errors) => errors.0.iter().map(ErrorItem::from).collect(),
            Rejection::TestsFailed(failures) => failures.iter().map(ErrorItem::from).collect(),
        }
    }
}

impl From<BundleErrors> for Rejection {
    fn from(e: BundleErrors) -> Self {
        Rejection::Invalid(e)
    }
}

/// One problem as the API reports it: `{"file", "line", "message", "kind"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorItem {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub message: String,
    /// A bundle error kind (`archive`, `syntax`, `roots`, `rego`, `settings`, `jwks`) or `tests`.
    pub kind: &'static str,
}

impl From<&BundleError> for ErrorItem {
    fn from(e: &BundleError) -> Self {
        ErrorItem { file: e.file.clone(), line: e.line, message: e.message.clone(), kind: e.kind.as_str() }
    }
}

impl From<&TestResult> for ErrorItem {
    fn from(t: &TestResult) -> Self {
        // `location` is `file:line` (or just `file`).
        let (file, line) = match t.location.rsplit_once(':') {
            Some((f, l)) => match l.parse() {
                Ok(n) => (f.to_owned(), Some(n)),
                Err(_) => (t.location.clone(), None),
            },
            None => (t.location.clone(), None),
        };
        let what = match t.kind {
            TestKind::Rego => "Rego test",
            TestKind::Case => "decision case",
        };
        let why = t.failure.as_deref().unwrap_or("failed");
        ErrorItem { file: Some(file), line, message: format!("{what} `{}` failed: {why}", t.name), kind: "tests" }
    }
}

/// Checks a tarball against the budget (in a child process, as a gateway does), then reads,
/// compiles and tests it as a gateway would load it.
pub fn validate(bytes: &[u8], limits: &Limits, budget: &Budget, validator: &Validator) -> Result<Validated, Rejection> {
    let figures = budget::check(bytes, limits, budget, validator)?;
    let bundle = Bundle::from_tar_gz(bytes, limits)?;
    let manifest_revision = match bundle.manifest.revision.as_str() {
        "" => None,
        r => Some(check_revision(r)?),
    };
    let snapshot = Snapshot::compile(&bundle)?;
    let mut results = bundle_tests::run_rego_tests(&bundle)?;
    let cases = bundle_tests::load_cases(&bundle)?;
    results.extend(bundle_tests::run_cases(&bundle, &snapshot, &cases));
    let failures: Vec<TestResult> = results.iter().filter(|r| !r.passed()).cloned().collect();
    if !failures.is_empty() {
        return Err(Rejection::TestsFailed(failures));
    }
    Ok(Validated { manifest_revision, tests_passed: results.len(), figures })
}

/// A revision names a bundle version in URLs, headers and logs: printable ASCII, bounded.
fn check_revision(r: &str) -> Result<String, BundleErrors> {
    let ok = r.len() <= MAX_REVISION_LEN && r.trim() == r && r.bytes().all(|b| (0x20..0x7f).contains(&b));
    if ok {
        return Ok(r.to_owned());
    }
    Err(BundleError::new(
        ErrorKind::Syntax,
        Some(policy_bundles::bundle::MANIFEST.to_owned()),
        format!(
            "`revision` must be printable ASCII without leading or trailing spaces, at most {MAX_REVISION_LEN} characters"
        ),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_bundles::archive::{read_dir, write_tar_gz, Files};
    use std::path::Path;

    fn example() -> Files {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-bundles/examples/api-gateway");
        read_dir(&dir, &Limits::default()).expect("example bundle")
    }

    fn tar(files: &Files) -> Vec<u8> {
        write_tar_gz(files).expect("tar")
    }

    fn check(bytes: &[u8]) -> Result<Validated, Rejection> {
        validate(bytes, &Limits::default(), &Budget::default(), &Validator::InProcess)
    }

    #[test]
    fn a_bundle_over_the_compiled_budget_is_refused_with_the_figure() {
        let mut files = example();
        let big: Vec<String> = (0..20_000).map(|i| format!("value-{i}")).collect();
        files.insert(
            "http/big/data.json".into(),
            serde_json::to_vec(&serde_json::json!({ "values": big })).expect("json"),
        );
        let tight = Budget { max_compiled: 1 << 20, ..Budget::default() };
        let e = validate(&tar(&files), &Limits::default(), &tight, &Validator::InProcess).unwrap_err();
        assert_eq!(e.reason(), "budget");
        let msg = e.to_string();
        assert!(msg.contains("compiled bundle") && msg.contains("max_compiled"), "{msg}");
        let ok = check(&tar(&files)).expect("within the default budget");
        assert!(ok.figures.compiled_bytes > 1 << 20, "{:?}", ok.figures);
        assert_eq!(ok.figures.routes, 3);
    }

    #[test]
    fn accepts_the_example_bundle_and_runs_its_tests() {
        let v = check(&tar(&example())).unwrap();
        assert_eq!(v.manifest_revision, None);
        assert!(v.tests_passed > 3, "{v:?}");
    }

    #[test]
    fn a_failing_decision_case_is_named_with_its_file_and_line() {
        let mut files = example();
        let cases = files.get_mut("tests/cases.yaml").expect("cases");
        let text = String::from_utf8(cases.clone()).expect("utf-8");
        // The first case expects allow: true; make it expect a deny.
        let text = text.replacen("  expect:\n    allow: true", "  expect:\n    allow: false", 1);
        *cases = text.into_bytes();
        let e = check(&tar(&files)).unwrap_err();
        assert_eq!(e.reason(), "tests");
        let items = e.errors();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].file.as_deref(), Some("tests/cases.yaml"));
        assert!(items[0].line.is_some());
        assert!(items[0].message.contains("public GET is allowed without a token"), "{}", items[0].message);
    }

    #[test]
    fn refuses_bad_rego_with_file_and_line() {
        let mut files = example();
        files.insert("http/broken.rego".into(), b"package http.broken\n\nallow if {\n  input.x ==\n".to_vec());
        let e = check(&tar(&files)).unwrap_err();
        assert_eq!(e.reason(), "rego");
        let items = e.errors();
        assert!(items.iter().any(|i| i.file.as_deref() == Some("http/broken.rego") && i.line.is_some()), "{items:?}");
    }

    #[test]
    fn refuses_a_manifest_revision_with_control_characters() {
        let mut files = example();
        files.insert(".manifest".into(), br#"{"revision": "v1\nx", "roots": ["http", "gateway"]}"#.to_vec());
        let e = check(&tar(&files)).unwrap_err();
        assert_eq!(e.errors()[0].file.as_deref(), Some(".manifest"));
    }
}
