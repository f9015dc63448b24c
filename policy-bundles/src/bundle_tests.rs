//! Running a bundle's own tests, as `bundlectl test` and CI do: every Rego rule named `test_*`
//! (test modules under `tests/` included) and the decision cases kept as data in
//! `tests/cases.yaml` and `tests/**/*.cases.yaml`.
//!
//! A Rego test passes when its rule evaluates to `true`. A decision case evaluates a rule with
//! an input document through [`Snapshot::compile`] and [`Snapshot::decide`], exactly as the
//! gateway does, and compares the decision with a partial expectation:
//!
//! ```yaml
//! - name: a reader may list orders          # unique within the file
//!   route: orders                           # the route whose policy decides; or
//!   # policy: data.http.orders.decision     # a rule path
//!   input:                                  # the decision input (DESIGN.md, "The decision contract")
//!     request: { method: GET, path: /orders }
//!     jwt: { issuer: https://id.example.test, claims: { sub: alice, roles: [reader] } }
//!   expect:
//!     allow: true                           # required
//!     status: 403                           # optional; compared only when given
//!     reason: "..."                         # optional
//!     headers: { x-user-id: alice }         # optional; every header given must be present
//!     response_headers: { x-decided-by: http.orders }  # optional, as `headers`
//! ```
//!
//! When a case names a `route` and its input has no `route` key, the route's name is filled in,
//! as the gateway does. An evaluation error or undefined result is what the gateway makes of it:
//! a deny (an allow on `fail_open` routes) with nothing else defined, so such a case passes only
//! when it expects nothing but `allow`.
//!
//! Case files are read strictly: unknown keys, a missing `allow`, both or neither of
//! `route`/`policy`, and duplicate names are errors naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regorus::{CompiledPolicy, Value};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::bundle::{line_of, Bundle, TESTS_DIR};
use crate::decision::Decision;
use crate::error::{BundleError, BundleErrors, ErrorKind};
use crate::snapshot::{self, Snapshot};

/// The main decision cases file of a bundle.
pub const CASES_FILE: &str = "tests/cases.yaml";
/// Suffix of further case files anywhere under `tests/`.
pub const CASES_SUFFIX: &str = ".cases.yaml";
/// Prefix of the rules run as Rego tests.
pub const TEST_PREFIX: &str = "test_";

/// What sort of test a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    /// A Rego rule named `test_*`.
    Rego,
    /// A decision case from a cases file.
    Case,
}

/// The result of one test or case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The rule path (`data.http.orders_test.test_x`) or the case's `name`.
    pub name: String,
    pub kind: TestKind,
    /// `file:line` where the test is written.
    pub location: String,
    /// Why it failed: expected against got. `None` when it passed.
    pub failure: Option<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Every test and case of a bundle, in the order they are written (Rego tests first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// True when there is no failure (an empty report is a success).
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }

    pub fn failures(&self) -> impl Iterator<Item = &TestResult> {
        self.results.iter().filter(|r| !r.passed())
    }
}

impl fmt::Display for TestReport {
    /// One line per test (`PASS name` / `FAIL name: message`) and a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            match &r.failure {
                None => writeln!(f, "PASS {}", r.name)?,
                Some(m) => writeln!(f, "FAIL {}: {}: {m}", r.name, r.location)?,
            }
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

/// One decision case as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    pub input: Json,
    pub expect: Expect,
}

/// A partial decision: only the fields given are compared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub allow: bool,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Subset match: each header given must be in the decision with this value (names are
    /// compared without regard to case).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub response_headers: Option<BTreeMap<String, String>>,
}

/// A case with the place it was read from.
#[derive(Debug, Clone)]
pub struct LocatedCase {
    pub file: String,
    pub line: Option<usize>,
    pub case: Case,
}

impl LocatedCase {
    fn location(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{l}", self.file),
            None => self.file.clone(),
        }
    }
}

/// Whether a bundle file is a decision cases file.
pub fn is_cases_file(path: &str) -> bool {
    path == CASES_FILE || (path.starts_with(TESTS_DIR) && path.ends_with(CASES_SUFFIX))
}

/// Reads every cases file of a bundle; reports every problem of every file before failing.
pub fn load_cases(bundle: &Bundle) -> Result<Vec<LocatedCase>, BundleErrors> {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (path, bytes) in bundle.files.iter().filter(|(p, _)| is_cases_file(p)) {
        match parse_cases(path, bytes) {
            Ok(mut c) => cases.append(&mut c),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(BundleErrors(errors))
    }
}

/// Parses one cases file: a YAML list of cases.
pub fn parse_cases(file: &str, bytes: &[u8]) -> Result<Vec<LocatedCase>, Vec<BundleError>> {
    let err = |msg: String, line: Option<usize>| {
        BundleError::new(ErrorKind::Syntax, Some(file.to_owned()), msg).at_line(line)
    };
    let text = std::str::from_utf8(bytes).map_err(|_| vec![err("cases file is not UTF-8".into(), None)])?;
    let parsed: Option<Vec<Case>> = yaml_serde::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        vec![err(format!("invalid decision cases: {e}"), line)]
    })?;
    let parsed = parsed.unwrap_or_default();
    let starts = item_lines(text);
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(parsed.len());
    for (i, case) in parsed.into_iter().enumerate() {
        let line = starts.get(i).copied().or_else(|| line_of(text, &case.name));
        let name = &case.name;
        if name.trim().is_empty() {
            errors.push(err("case has an empty `name`".into(), line));
        }
        if !names.insert(name.clone()) {
            errors.push(err(format!("case `{name}`: duplicate case name"), line));
        }
        match (&case.route, &case.policy) {
            (Some(_), Some(_)) => errors.push(err(format!("case `{name}`: give `route` or `policy`, not both"), line)),
            (None, None) => {
                errors.push(err(format!("case `{name}`: give the `route` or the `policy` that decides"), line))
            }
            (None, Some(p)) if !p.starts_with("data.") => errors.push(err(
                format!("case `{name}`: policy `{p}` must be a rule path such as data.http.orders.decision"),
                line,
            )),
            _ => {}
        }
        if !case.input.is_object() {
            errors.push(err(format!("case `{name}`: `input` must be an object"), line));
        }
        out.push(LocatedCase { file: file.to_owned(), line, case });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The 1-based lines where the items of a top-level block sequence start (`- name: ...`).
fn item_lines(text: &str) -> Vec<usize> {
    let mut indent = None;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let trimmed = l.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let ind = l.len() - trimmed.len();
        if trimmed == "-" || trimmed.starts_with("- ") {
            match indent {
                None => indent = Some(ind),
                Some(x) if x != ind => continue,
                _ => {}
            }
            out.push(i + 1);
        } else if indent.is_some_and(|x| ind < x) || (indent.is_none() && ind == 0 && !trimmed.starts_with("---")) {
            // Not a block sequence at the top level: give up on positions.
            return Vec::new();
        }
    }
    out
}

/// Runs every Rego test and decision case of a bundle. Fails only when the tests cannot run:
/// the bundle (or a test module) does not compile, or a cases file is invalid.
pub fn run(bundle: &Bundle) -> Result<TestReport, BundleErrors> {
    let snapshot = Snapshot::compile(bundle)?;
    let mut results = run_rego_tests(bundle)?;
    let cases = load_cases(bundle)?;
    results.extend(run_cases(bundle, &snapshot, &cases));
    Ok(TestReport { results })
}

/// Evaluates every `test_*` rule of every module, test modules included.
pub fn run_rego_tests(bundle: &Bundle) -> Result<Vec<TestResult>, BundleErrors> {
    let mut engine = snapshot::engine_for(bundle, true)?;
    let mut results = Vec::new();
    for m in &bundle.modules {
        for (name, line) in test_rule_candidates(&m.source) {
            // The text scan proposes; the parser decides whether a rule of that name is declared.
            if !engine.has_declared_rule_rooted_at(&m.path, &name).unwrap_or(false) {
                continue;
            }
            let rule = format!("{}.{name}", m.package);
            let failure = match engine.eval_rule(rule.clone()) {
                Ok(Value::Bool(true)) => None,
                Ok(Value::Undefined) => {
                    Some("expected true, got undefined (a test passes only when it evaluates to true)".to_owned())
                }
                Ok(v) => Some(format!("expected true, got {v}")),
                Err(e) => Some(format!("evaluation error: {}", e.to_string().trim())),
            };
            results.push(TestResult {
                name: rule,
                kind: TestKind::Rego,
                location: format!("{}:{line}", m.path),
                failure,
            });
        }
    }
    Ok(results)
}

/// Names of rules that look like `test_*` rule heads, each with the line of its first head.
pub(crate) fn test_rule_candidates(source: &str) -> Vec<(String, usize)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, l) in source.lines().enumerate() {
        let t = l.trim_start();
        if !t.starts_with(TEST_PREFIX) {
            continue;
        }
        let end = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(t.len());
        let name = &t[..end];
        if seen.insert(name.to_owned()) {
            out.push((name.to_owned(), i + 1));
        }
    }
    out
}

/// Runs decision cases against a compiled snapshot of the same bundle.
pub fn run_cases(bundle: &Bundle, snapshot: &Snapshot, cases: &[LocatedCase]) -> Vec<TestResult> {
    // Rules named by cases but by no route are compiled on demand, once each, as routes' are.
    let mut extra: BTreeMap<String, Result<CompiledPolicy, String>> = BTreeMap::new();
    let mut engine = None;
    cases
        .iter()
        .map(|lc| {
            let failure = run_case(bundle, snapshot, lc, &mut extra, &mut engine).err();
            TestResult { name: lc.case.name.clone(), kind: TestKind::Case, location: lc.location(), failure }
        })
        .collect()
}

/// The rule a case asks and the input it is asked with (the route's name filled in, as
/// [`run_cases`] does); `None` when the case names a route the bundle does not define.
pub fn case_rule_and_input(snapshot: &Snapshot, case: &Case) -> Option<(String, Json)> {
    let mut input = case.input.clone();
    match (&case.route, &case.policy) {
        (Some(route), _) => {
            let r = snapshot.routes.iter().find(|r| r.name == *route)?;
            fill_route(&mut input, route, r.format);
            Some((snapshot.rule(r.policy)?.to_owned(), input))
        }
        (None, Some(rule)) => Some((rule.clone(), input)),
        (None, None) => None,
    }
}

/// The gateway's input names the route; the OPA-Envoy input has no such field.
fn fill_route(input: &mut Json, route: &str, format: crate::input::InputFormat) {
    if let (Some(obj), crate::input::InputFormat::Gateway) = (input.as_object_mut(), format) {
        obj.entry("route").or_insert_with(|| Json::String(route.to_owned()));
    }
}

/// What the gateway ends up doing with a request.
enum Got {
    Decision(Decision),
    /// Evaluation failed or was undefined; `allow` is what the route's fail mode makes of it.
    Error {
        allow: bool,
        message: String,
    },
}

fn run_case(
    bundle: &Bundle,
    snapshot: &Snapshot,
    lc: &LocatedCase,
    extra: &mut BTreeMap<String, Result<CompiledPolicy, String>>,
    engine: &mut Option<Result<regorus::Engine, String>>,
) -> Result<(), String> {
    let case = &lc.case;
    let mut input = case.input.clone();
    let (policy, fail_open) = match (&case.route, &case.policy) {
        (Some(route), _) => {
            let r = snapshot
                .routes
                .iter()
                .find(|r| r.name == *route)
                .ok_or_else(|| format!("route `{route}` is not defined in the bundle"))?;
            fill_route(&mut input, route, r.format);
            (Some(r.policy), r.fail_open)
        }
        (None, Some(rule)) => (snapshot.policy_index(rule), false),
        (None, None) => return Err("the case names neither a route nor a policy".into()),
    };
    // What the gateway gives the rule: only the headers and query it reads.
    let pruned = policy.map(|i| Value::from(pruned(&input, snapshot.needs(i))));
    let input = Value::from(input);
    let result = match (policy, &case.policy) {
        (Some(i), _) => {
            let result = snapshot.decide(i, input.clone()).map_err(|e| e.to_string());
            if let Some(pruned) = pruned {
                let got = snapshot.decide(i, pruned).map_err(|e| e.to_string());
                if got != result {
                    return Err(format!(
                        "on the input the gateway builds (only what the rule reads: {}) the rule answers {got:?}, on the whole input {result:?}",
                        snapshot.reads.get(i).map(|r| r.describe().join(", ")).unwrap_or_default()
                    ));
                }
            }
            // The gateway answers through its decision cache: what it holds for this input's
            // read values (from this case, or an earlier one with the same values) must be
            // what the rule answers.
            for _ in 0..2 {
                if let (Ok(rule), Ok((cached, _))) = (&result, snapshot.decide_cached(i, input.clone())) {
                    if *cached != *rule {
                        return Err(format!(
                            "the decision cache answered {cached:?} where the rule answers {rule:?} (the cache keys on {})",
                            snapshot.reads.get(i).map(|r| r.describe().join(", ")).unwrap_or_default()
                        ));
                    }
                }
            }
            result
        }
        (None, Some(rule)) => {
            let compiled = extra.entry(rule.clone()).or_insert_with(|| compile_rule(bundle, rule, engine));
            let compiled = compiled.as_ref().map_err(Clone::clone)?;
            compiled
                .eval_with_input(input)
                .map_err(|e| format!("policy evaluation failed: {e}"))
                .and_then(|v| Decision::from_value(&v).map_err(|e| e.to_string()))
        }
        (None, None) => return Err("the case's route has no policy".into()),
    };
    let got = match result {
        Ok(d) => Got::Decision(d),
        Err(message) => Got::Error { allow: fail_open, message },
    };
    compare(&case.expect, &got)
}

/// The case's input as the gateway would build it for a rule with these needs.
fn pruned(input: &Json, needs: &crate::input::Needs) -> Json {
    let mut input = input.clone();
    if let Some(request) = input.get_mut("request").and_then(Json::as_object_mut) {
        if let Some(headers) = request.get_mut("headers").and_then(Json::as_object_mut) {
            headers.retain(|name, _| needs.header(name));
        }
        if !needs.query() {
            if let Some(q) = request.get_mut("query") {
                *q = Json::Object(Default::default());
            }
        }
    }
    input
}

fn compile_rule(
    bundle: &Bundle,
    rule: &str,
    engine: &mut Option<Result<regorus::Engine, String>>,
) -> Result<CompiledPolicy, String> {
    let engine = engine.get_or_insert_with(|| snapshot::engine_for(bundle, false).map_err(|e| e.to_string()));
    let engine = engine.as_mut().map_err(|e| e.clone())?;
    let entry = snapshot::entrypoint(engine, rule)?;
    engine
        .compile_with_entrypoint(&entry.into())
        .map_err(|e| format!("policy `{rule}` does not compile: {}", e.to_string().trim()))
}

/// Compares a decision with a partial expectation; the error lists every mismatch.
fn compare(expect: &Expect, got: &Got) -> Result<(), String> {
    let mut diffs = Vec::new();
    match got {
        Got::Error { allow, message } => {
            if expect.allow != *allow {
                diffs.push(format!("allow: expected {}, got {allow}", expect.allow));
            }
            let mut undefined = Vec::new();
            if expect.status.is_some() {
                undefined.push("status");
            }
            if expect.reason.is_some() {
                undefined.push("reason");
            }
            if expect.headers.as_ref().is_some_and(|h| !h.is_empty()) {
                undefined.push("headers");
            }
            if expect.response_headers.as_ref().is_some_and(|h| !h.is_empty()) {
                undefined.push("response_headers");
            }
            if !undefined.is_empty() {
                diffs.push(format!("expected {} but the rule gave no decision", undefined.join(", ")));
            }
            if diffs.is_empty() {
                return Ok(());
            }
            Err(format!(
                "{} (got: {message}; the gateway {})",
                diffs.join("; "),
                if *allow { "fails open" } else { "denies" }
            ))
        }
        Got::Decision(d) => {
            if expect.allow != d.allow {
                diffs.push(format!("allow: expected {}, got {}", expect.allow, d.allow));
            }
            if let Some(s) = expect.status {
                if s != d.status {
                    diffs.push(format!("status: expected {s}, got {}", d.status));
                }
            }
            if let Some(r) = &expect.reason {
                if Some(r) != d.reason.as_ref() {
                    diffs.push(format!(
                        "reason: expected {r:?}, got {}",
                        d.reason.as_ref().map_or("none".into(), |g| format!("{g:?}"))
                    ));
                }
            }
            compare_headers("headers", expect.headers.as_ref(), &d.headers, &mut diffs);
            compare_headers("response_headers", expect.response_headers.as_ref(), &d.response_headers, &mut diffs);
            if diffs.is_empty() {
                return Ok(());
            }
            Err(format!("{} (got: {})", diffs.join("; "), describe(d)))
        }
    }
}

fn compare_headers(
    what: &str,
    expect: Option<&BTreeMap<String, String>>,
    got: &[(String, String)],
    diffs: &mut Vec<String>,
) {
    for (name, want) in expect.into_iter().flatten() {
        match got.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, have)) if have == want => {}
            Some((_, have)) => diffs.push(format!("{what}.{name}: expected {want:?}, got {have:?}")),
            None => diffs.push(format!("{what}.{name}: expected {want:?}, got none")),
        }
    }
}

fn describe(d: &Decision) -> String {
    let mut s = format!("allow={}", d.allow);
    if !d.allow {
        s.push_str(&format!(", status={}", d.status));
    }
    if let Some(r) = &d.reason {
        s.push_str(&format!(", reason={r:?}"));
    }
    let list = |h: &[(String, String)]| h.iter().map(|(k, v)| format!("{k}: {v:?}")).collect::<Vec<_>>().join(", ");
    if !d.headers.is_empty() {
        s.push_str(&format!(", headers={{{}}}", list(&d.headers)));
    }
    if !d.response_headers.is_empty() {
        s.push_str(&format!(", response_headers={{{}}}", list(&d.response_headers)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line_of_each_case() {
        let text = "# cases\n- name: a\n  route: x\n\n- name: b\n  route: y\n";
        assert_eq!(item_lines(text), vec![2, 5]);
        assert_eq!(item_lines("cases: []\n"), Vec::<usize>::new());
    }

    #[test]
    fn refuses_unknown_keys_with_file_and_line() {
        let text = "- name: a\n  route: x\n  input: {}\n  expect: {allow: true, stauts: 403}\n";
        let errs = parse_cases("tests/cases.yaml", text.as_bytes()).unwrap_err();
        assert_eq!(errs[0].file.as_deref(), Some("tests/cases.yaml"));
        assert_eq!(errs[0].line, Some(4));
        assert!(errs[0].message.contains("stauts"), "{}", errs[0].message);
    }

    #[test]
    fn refuses_cases_naming_both_or_neither_decider_and_duplicates() {
        let text = "- name: a\n  input: {}\n  expect: {allow: true}\n- name: a\n  route: r\n  policy: data.p.q\n  input: {}\n  expect: {allow: true}\n";
        let errs = parse_cases("tests/x.cases.yaml", text.as_bytes()).unwrap_err();
        let msgs: Vec<_> = errs.iter().map(|e| (e.line, e.message.clone())).collect();
        assert!(msgs.iter().any(|(l, m)| *l == Some(1) && m.contains("give the `route` or the `policy`")), "{msgs:?}");
        assert!(msgs.iter().any(|(l, m)| *l == Some(4) && m.contains("duplicate")), "{msgs:?}");
        assert!(msgs.iter().any(|(l, m)| *l == Some(4) && m.contains("not both")), "{msgs:?}");
    }

    #[test]
    fn compares_partial_decisions_and_names_every_mismatch() {
        let d = Decision {
            allow: true,
            status: 403,
            headers: vec![("X-User-Id".into(), "alice".into())],
            response_headers: vec![],
            reason: None,
            ..Decision::default()
        };
        let ok = Expect {
            allow: true,
            status: None,
            reason: None,
            headers: Some([("x-user-id".to_string(), "alice".to_string())].into()),
            response_headers: None,
        };
        assert!(compare(&ok, &Got::Decision(d.clone())).is_ok());
        let bad = Expect {
            allow: false,
            reason: Some("no".into()),
            headers: Some([("x-user-id".to_string(), "bob".to_string())].into()),
            ..ok
        };
        let msg = compare(&bad, &Got::Decision(d)).unwrap_err();
        assert!(msg.contains("allow: expected false, got true"), "{msg}");
        assert!(msg.contains("reason: expected \"no\", got none"), "{msg}");
        assert!(msg.contains("headers.x-user-id: expected \"bob\", got \"alice\""), "{msg}");
    }

    #[test]
    fn an_evaluation_error_is_a_deny_with_nothing_else_defined() {
        let got = Got::Error { allow: false, message: "undefined".into() };
        let only_allow = Expect { allow: false, status: None, reason: None, headers: None, response_headers: None };
        assert!(compare(&only_allow, &got).is_ok());
        let with_status = Expect { status: Some(403), ..only_allow };
        assert!(compare(&with_status, &got).unwrap_err().contains("gave no decision"));
    }

    #[test]
    fn finds_test_rule_candidates_once_each() {
        let src = "package p\ntest_a if true\n\ntest_a if false\n  test_b := true\nnot_test_c := 1\n";
        assert_eq!(test_rule_candidates(src), vec![("test_a".to_string(), 2), ("test_b".to_string(), 5)]);
    }
}
