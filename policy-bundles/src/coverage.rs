//! Which lines of a bundle's Rego its own tests exercise (`bundlectl test --coverage`), in the
//! JSON shape of `opa test --coverage` (OPA's `v1/cover/cover.go`).
//!
//! The Rego `test_*` rules and the decision cases' rules (with each case's input) are evaluated
//! once more on regorus's interpreter with coverage on (the `coverage` feature; regorus's VM
//! records none); test modules are reported as OPA reports them. regorus marks every line on
//! which any sub-expression was evaluated; OPA marks the first row of each body expression it
//! evaluated and the head row of each rule that produced a value, and reports as not covered
//! the head rows and expression rows it did not mark. The report keeps only OPA's rows: the head
//! row of each rule and the first row of each body statement, covered when regorus evaluated
//! something on it, a rule's head when its value was evaluated or a body of it ran to its last
//! statement; a bodiless `else` through a marker body ([`with_else_bodies`])
//! (docs/src/reference/bundlectl.md, "Coverage").

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Ref, Rule};
use regorus::Value;
use serde_json::{json, Value as Json};

use crate::bundle::Bundle;
use crate::bundle_tests;
use crate::error::BundleErrors;
use crate::snapshot::{self, Snapshot};

/// Lines of one file: OPA's rows, each covered or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCoverage {
    pub covered: BTreeSet<u32>,
    pub not_covered: BTreeSet<u32>,
}

/// Every Rego file of a bundle, by its path in the bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub files: BTreeMap<String, FileCoverage>,
}

/// Evaluates the bundle's Rego tests and decision cases with coverage on.
pub fn run(bundle: &Bundle) -> Result<Coverage, BundleErrors> {
    let snapshot = Snapshot::compile(bundle)?;
    let cases = bundle_tests::load_cases(bundle)?;
    let (bundle, synthetic) = &with_else_bodies(bundle)?;
    let mut engine = snapshot::engine_for(bundle, true)?;
    engine.set_enable_coverage(true);
    for m in &bundle.modules {
        for (name, _) in bundle_tests::test_rule_candidates(&m.source) {
            if engine.has_declared_rule_rooted_at(&m.path, &name).unwrap_or(false) {
                // A failing test covers what it evaluated, as in OPA.
                let _ = engine.eval_rule(format!("{}.{name}", m.package));
            }
        }
    }
    for lc in &cases {
        if let Some((rule, input)) = bundle_tests::case_rule_and_input(&snapshot, &lc.case) {
            engine.set_input(Value::from(input));
            let _ = engine.eval_rule(rule);
        }
    }
    let hits = engine.get_coverage_report().map_err(|e| {
        BundleErrors(vec![crate::error::BundleError::new(
            crate::error::ErrorKind::Rego,
            None,
            format!("coverage: {e}"),
        )])
    })?;
    let hit: BTreeMap<String, BTreeSet<u32>> = hits.files.into_iter().map(|f| (f.path, f.covered)).collect();
    let mut files = BTreeMap::new();
    for module in engine.get_modules() {
        let path = module.package.span.source.file().clone();
        if path.starts_with("__gateway") {
            continue;
        }
        let empty = BTreeSet::new();
        let none = BTreeSet::new();
        let marks = synthetic.get(&path).unwrap_or(&none);
        files.insert(path.clone(), opa_rows(&module.policy, hit.get(&path).unwrap_or(&empty), marks));
    }
    Ok(Coverage { files })
}

/// What the marker body of a bodiless `else := V` is (see [`with_else_bodies`]): with `if` in
/// Rego v1, without in v0 (where `if` is a keyword only once imported).
const MARKER: &str = " if { true }";
const MARKER_V0: &str = " { true }";

/// The bundle with every bodiless `else := V` given the body ` if { true }`, right after `V`
/// (so on `V`'s last row, and no row moves), and, per module, the byte offsets of those `true`
/// statements. regorus evaluates an `else` only when the bodies before it failed, but records
/// nothing for one without a body; OPA marks its `else` row covered when it produced the value.
/// The marker statement tells when it did, and is itself no row of the report.
fn with_else_bodies(bundle: &Bundle) -> Result<(Bundle, BTreeMap<String, BTreeSet<u32>>), BundleErrors> {
    let mut engine = snapshot::engine_for(bundle, true)?;
    let mut ends: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for module in engine.get_modules() {
        let path = module.package.span.source.file().clone();
        for rule in &module.policy {
            let Rule::Spec { bodies, .. } = rule.as_ref() else { continue };
            for b in bodies.iter().filter(|b| b.is_else && b.query.stmts.is_empty() && b.assign.is_some()) {
                ends.entry(path.clone()).or_default().push(b.span.end as usize);
            }
        }
    }
    let mut out = bundle.clone();
    let mut markers = BTreeMap::new();
    for m in out.modules.iter_mut() {
        let Some(list) = ends.get_mut(&m.path) else { continue };
        list.sort_unstable();
        // The offsets are in the text regorus read: escaped as engine_for escapes it (escaping
        // again leaves it unchanged).
        let mut text = crate::rego_text::escape_raw_controls(&m.source).into_owned();
        let marker = if m.rego_v0 { MARKER_V0 } else { MARKER };
        let mut at = BTreeSet::new();
        for (i, end) in list.iter().enumerate() {
            let mut end = end + i * marker.len();
            // A string's span ends on its closing quote: the marker goes after it.
            if matches!(text.as_bytes().get(end), Some(b'"' | b'`')) {
                end += 1;
            }
            if !text.is_char_boundary(end) {
                continue;
            }
            text.insert_str(end, marker);
            at.insert(u32::try_from(end + marker.len() - "true }".len()).unwrap_or(u32::MAX));
        }
        m.source = text;
        markers.insert(m.path.clone(), at);
    }
    Ok((out, markers))
}

/// OPA's rows of a module's rules, covered where regorus evaluated something; `markers` are the
/// offsets of [`with_else_bodies`]'s statements.
fn opa_rows(rules: &[Ref<Rule>], hit: &BTreeSet<u32>, markers: &BTreeSet<u32>) -> FileCoverage {
    let mut out = FileCoverage::default();
    let mut mark = |row: u32, covered: bool| {
        if covered {
            out.not_covered.remove(&row);
            out.covered.insert(row);
        } else if !out.covered.contains(&row) {
            out.not_covered.insert(row);
        }
    };
    for rule in rules {
        let Rule::Spec { span, bodies, .. } = rule.as_ref() else {
            let row = rule.span().line;
            mark(row, hit.contains(&row));
            continue;
        };
        let mut head = hit.contains(&span.line);
        for body in bodies {
            let marker = body.query.stmts.iter().find(|s| markers.contains(&s.span.start)).map(|s| s.span.line);
            let rows: Vec<u32> =
                body.query.stmts.iter().filter(|s| !markers.contains(&s.span.start)).map(|s| s.span.line).collect();
            let valued = body.assign.as_ref().is_some_and(|a| hit.contains(&a.value.span().line));
            let ran = valued || rows.last().or(marker.as_ref()).is_some_and(|r| hit.contains(r));
            for &row in &rows {
                mark(row, hit.contains(&row));
            }
            if body.is_else {
                // An `else` is a rule of its own in OPA, its head on the `else` row.
                let row = body.span.line;
                mark(row, ran || hit.contains(&row));
            } else {
                head |= ran;
            }
        }
        mark(span.line, head);
    }
    out
}

impl Coverage {
    /// The report as `opa test --coverage` prints it: per file the covered and not covered row
    /// ranges, their counts and the percentage (fields that are zero or empty left out, as
    /// OPA's `omitempty`), and the totals.
    pub fn to_opa_json(&self) -> Json {
        let mut files = serde_json::Map::new();
        let (mut covered, mut not_covered) = (0usize, 0usize);
        for (path, f) in &self.files {
            let mut o = serde_json::Map::new();
            if !f.covered.is_empty() {
                o.insert("covered".into(), ranges_json(&f.covered));
            }
            if !f.not_covered.is_empty() {
                o.insert("not_covered".into(), ranges_json(&f.not_covered));
            }
            if !f.covered.is_empty() {
                o.insert("covered_lines".into(), json!(f.covered.len()));
            }
            if !f.not_covered.is_empty() {
                o.insert("not_covered_lines".into(), json!(f.not_covered.len()));
            }
            let pct = percent(f.covered.len(), f.not_covered.len());
            if pct != 0.0 {
                o.insert("coverage".into(), number(pct));
            }
            covered += f.covered.len();
            not_covered += f.not_covered.len();
            files.insert(path.clone(), Json::Object(o));
        }
        json!({
            "files": files,
            "covered_lines": covered,
            "not_covered_lines": not_covered,
            "coverage": number(percent(covered, not_covered)),
        })
    }

    /// One line per file: the percentage and the rows not covered (`12-14, 20`).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (path, f) in &self.files {
            let pct = percent(f.covered.len(), f.not_covered.len());
            let missing: Vec<String> = ranges(&f.not_covered)
                .into_iter()
                .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect();
            s.push_str(&format!("{}: {pct:.2}%", crate::printable::printable(path)));
            if !missing.is_empty() {
                s.push_str(&format!(", not covered: {}", missing.join(", ")));
            }
            s.push('\n');
        }
        let (c, n) = self.files.values().fold((0, 0), |(c, n), f| (c + f.covered.len(), n + f.not_covered.len()));
        s.push_str(&format!("total: {:.2}% ({c} of {} lines)\n", percent(c, n), c + n));
        s
    }
}

fn percent(covered: usize, not_covered: usize) -> f64 {
    let total = covered + not_covered;
    if total == 0 {
        0.0
    } else {
        100.0 * covered as f64 / total as f64
    }
}

/// A percentage as Go's encoding/json writes a float64: `100`, not `100.0`.
fn number(x: f64) -> Json {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn ranges(rows: &BTreeSet<u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &r in rows {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == r => *end = r,
            _ => out.push((r, r)),
        }
    }
    out
}

fn ranges_json(rows: &BTreeSet<u32>) -> Json {
    Json::Array(ranges(rows).into_iter().map(|(a, b)| json!({"start": {"row": a}, "end": {"row": b}})).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example bundle plus a rule whose last `else` has no body, and a test of it.
    fn with_else(test_input: &str) -> Coverage {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway");
        let mut files = crate::archive::read_dir(&dir, &crate::Limits::default()).expect("example");
        let rule =
            "package http.pick\n\nimport rego.v1\n\nd := 1 if {\n\tinput.x\n} else := {\n\t\"n\": count(input.y),\n}\n";
        files.insert("http/pick.rego".into(), rule.as_bytes().to_vec());
        let test = format!(
            "package http.pick_test\n\nimport rego.v1\n\ntest_pick if {{\n\tdata.http.pick.d with input as {test_input}\n}}\n"
        );
        files.insert("tests/pick_test.rego".into(), test.into_bytes());
        run(&Bundle::from_files(files).expect("bundle")).expect("coverage")
    }

    /// Coverage of `http/pick.rego` holding `rule`, tested with `test_input`, in Rego v0 or v1.
    fn pick(rule: &str, test_input: &str, v0: bool) -> FileCoverage {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/api-gateway");
        let mut files = crate::archive::read_dir(&dir, &crate::Limits::default()).expect("example");
        files.insert("http/pick.rego".into(), rule.as_bytes().to_vec());
        let (kw, v) = if v0 { ("", "0") } else { ("if ", "1") };
        let test =
            format!("package http.pick_test\n\ntest_pick {kw}{{\n\tdata.http.pick.d with input as {test_input}\n}}\n");
        files.insert("tests/pick_test.rego".into(), test.into_bytes());
        if v0 {
            let manifest = format!("{{\"revision\": \"t\", \"roots\": [\"http\", \"gateway\"], \"file_rego_versions\": {{\"http/pick.rego\": {v}, \"tests/pick_test.rego\": {v}}}}}");
            files.insert(".manifest".into(), manifest.into_bytes());
        }
        let c = run(&Bundle::from_files(files).expect("bundle")).expect("coverage");
        c.files.get("http/pick.rego").cloned().unwrap_or_default()
    }

    #[test]
    fn a_bodiless_else_whose_value_is_a_string_or_in_rego_v0_is_counted_too() {
        let string = "package http.pick\n\nimport rego.v1\n\nd := \"a\" if {\n\tinput.x\n} else := \"denied\"\n";
        assert!(pick(string, r#"{"x": false}"#, false).covered.contains(&7), "a string value");
        assert!(pick(string, r#"{"x": true}"#, false).not_covered.contains(&7));
        let raw = "package http.pick\n\nimport rego.v1\n\nd := 1 if {\n\tinput.x\n} else := `raw`\n";
        assert!(pick(raw, r#"{"x": false}"#, false).covered.contains(&7), "a raw string value");
        let v0 = "package http.pick\n\nd = 1 {\n\tinput.x\n} else = false\n";
        let c = pick(v0, r#"{"x": false}"#, true);
        assert!(c.covered.contains(&5), "Rego v0: {c:?}");
    }

    #[test]
    fn a_bodiless_else_is_covered_only_when_it_produced_the_value() {
        let taken = &with_else(r#"{"x": false, "y": [1]}"#).files["http/pick.rego"];
        assert!(taken.covered.contains(&7), "the else row (7) produced the value: {taken:?}");
        assert!(
            !taken.covered.contains(&8) && !taken.not_covered.contains(&8),
            "the value's rows are no rows of OPA's"
        );
        let skipped = &with_else(r#"{"x": true}"#).files["http/pick.rego"];
        assert!(skipped.not_covered.contains(&7), "the first body decided: the else is not covered: {skipped:?}");
        assert!(skipped.covered.contains(&5) && skipped.covered.contains(&6), "{skipped:?}");
    }

    #[test]
    fn rows_become_ranges_and_percentages_print_as_go_prints_them() {
        let f = FileCoverage { covered: [1, 2, 3, 7].into(), not_covered: [5].into() };
        let c = Coverage { files: [("a.rego".to_string(), f)].into() };
        let j = c.to_opa_json();
        assert_eq!(
            j["files"]["a.rego"]["covered"],
            json!([{"start": {"row": 1}, "end": {"row": 3}}, {"start": {"row": 7}, "end": {"row": 7}}])
        );
        assert_eq!(j["files"]["a.rego"]["coverage"], json!(80));
        assert_eq!(j["covered_lines"], json!(4));
        assert_eq!(number(200.0 / 3.0).to_string(), "66.66666666666667");
        assert!(c.to_text().contains("a.rego: 80.00%, not covered: 5"));
    }
}
