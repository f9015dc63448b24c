//! What changed between two revisions of a bundle (`bundlectl diff`): routes (paired by name)
//! and upstreams (by key) field by field, the other `data.gateway` settings and the
//! `.manifest` as JSON values, Rego modules as unified diffs, data documents by size.
//!
//! Everything is compared from what the bundle holds: the raw `data.gateway` JSON (more faithful
//! than the typed [`crate::settings::GatewaySettings`], which fills in defaults) and the files
//! themselves. Other files (decision cases, `.signatures.json`) are not compared.
//!
//! A bundle can be hostile, so the work is bounded and never panics:
//!
//! * a Rego file over [`MAX_DIFF_FILE_BYTES`] (either side) is not diffed line by line: it is
//!   summarized as "N lines changed, too large to show", N counted in linear time as the lines
//!   one side has and the other has not;
//! * so is a diff whose unified text would be over [`MAX_DIFF_LINES`] lines, and every Rego file
//!   past the first [`MAX_DIFF_TOTAL_BYTES`] of Rego text diffed in one [`diff`];
//! * the line diffs of one [`diff`] share a deadline of [`DIFF_TIME`]: past it the diff
//!   algorithm stops looking for the shortest edit and reports the rest of a file as replaced
//!   (still a correct diff, only a longer one);
//! * [`BundleDiff::render_text`] shows at most [`MAX_SHOWN_VALUE`] characters of one value and
//!   escapes control characters, so that no bundle writes escape sequences to a terminal.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value as Json};
use similar::{Algorithm, DiffTag, TextDiff};

use crate::archive::Files;
use crate::bundle::{Bundle, MANIFEST};

/// A Rego file larger than this (either revision), in bytes, is summarized, not diffed: 1 MiB.
pub const MAX_DIFF_FILE_BYTES: usize = 1 << 20;
/// A unified diff of more lines than this is summarized: 20,000.
pub const MAX_DIFF_LINES: usize = 20_000;
/// Rego text (old plus new bytes) diffed line by line in one [`diff`], at most: 16 MiB.
pub const MAX_DIFF_TOTAL_BYTES: usize = 16 << 20;
/// The time the line diffs of one [`diff`] may take before they settle for a longer edit: 2 s.
pub const DIFF_TIME: Duration = Duration::from_secs(2);
/// Characters of one value that [`BundleDiff::render_text`] shows: 1,000.
pub const MAX_SHOWN_VALUE: usize = 1000;

/// Data documents, at any depth.
const DATA_FILES: [&str; 3] = ["data.json", "data.yaml", "data.yml"];

/// What changed from one bundle to another; each list ordered by name, key or path.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BundleDiff {
    /// `data.gateway.routes`, paired by name (a repeated name by name and occurrence:
    /// `orders#2` is the second route named `orders`).
    pub routes: Vec<ItemChange>,
    /// `data.gateway.upstreams`, by name.
    pub upstreams: Vec<ItemChange>,
    /// Every other `data.gateway` setting that changed (`jwt.issuers`, `rate_limits.per_user`:
    /// one level into a map), the routes' order (`routes.order`, which decides which route
    /// wins) and the `.manifest`'s keys (`manifest.revision`).
    pub settings: Vec<FieldChange>,
    /// Rego modules that differ; identical ones are omitted.
    pub rego: Vec<FileDiff>,
    /// Data documents (`data.json`, `data.yaml`, `data.yml`) that differ.
    pub data: Vec<DataChange>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// A route or upstream that was added, removed or changed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemChange {
    pub name: String,
    pub kind: ChangeKind,
    /// For [`ChangeKind::Changed`], each top-level key that differs; empty otherwise.
    pub fields: Vec<FieldChange>,
}

/// A value that differs; `None` where that side has no such key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldChange {
    pub key: String,
    /// Compact JSON text.
    pub old: Option<String>,
    /// Compact JSON text.
    pub new: Option<String>,
}

/// A Rego module that differs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileDiff {
    pub path: String,
    pub kind: ChangeKind,
    /// Unified diff, 3 lines of context, headers `--- a/PATH` and `+++ b/PATH` (an added file is
    /// diffed against nothing); or, past the bounds, the headers and
    /// `N lines changed, too large to show (why)`.
    pub unified: String,
}

/// A data document that differs, with its sizes in bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataChange {
    pub path: String,
    pub kind: ChangeKind,
    pub old_bytes: Option<u64>,
    pub new_bytes: Option<u64>,
}

/// What changed from `old` to `new`.
pub fn diff(old: &Bundle, new: &Bundle) -> BundleDiff {
    let (old_gw, new_gw) = (gateway(old), gateway(new));
    let (old_routes, new_routes) = (routes(old_gw), routes(new_gw));
    let mut settings = manifest_changes(&old.files, &new.files);
    settings.extend(settings_changes(old_gw, new_gw));
    settings.extend(route_order(&old_routes, &new_routes));
    settings.sort_by(|a, b| a.key.cmp(&b.key));
    BundleDiff {
        routes: item_changes(&old_routes.into_iter().collect(), &new_routes.into_iter().collect()),
        upstreams: item_changes(&upstreams(old_gw), &upstreams(new_gw)),
        settings,
        rego: rego_changes(&old.files, &new.files),
        data: data_changes(&old.files, &new.files),
    }
}

/// The raw `data.gateway` object.
fn gateway(bundle: &Bundle) -> Option<&Map<String, Json>> {
    bundle.data.get("gateway").and_then(Json::as_object)
}

/// The routes in order, each named by name and occurrence (`orders`, `orders#2`); a key made
/// for a repeat never equals a route's own name (`a`, `a`, `a#2` are `a`, `a#3`, `a#2`), so no
/// route can hide another.
fn routes(gw: Option<&Map<String, Json>>) -> Vec<(String, &Json)> {
    let list = gw.and_then(|g| g.get("routes")).and_then(Json::as_array);
    let name_of = |route: &Json| route.get("name").and_then(Json::as_str).unwrap_or("").to_owned();
    let names: HashSet<String> = list.into_iter().flatten().map(name_of).collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for route in list.into_iter().flatten() {
        let name = name_of(route);
        let n = seen.entry(name.clone()).or_default();
        *n += 1;
        let mut key = if *n == 1 { name.clone() } else { format!("{name}#{n}") };
        while *n > 1 && (names.contains(&key) || used.contains(&key)) {
            *n += 1;
            key = format!("{name}#{n}");
        }
        used.insert(key.clone());
        out.push((key, route));
    }
    out
}

fn upstreams(gw: Option<&Map<String, Json>>) -> BTreeMap<String, &Json> {
    let map = gw.and_then(|g| g.get("upstreams")).and_then(Json::as_object);
    map.into_iter().flatten().map(|(k, v)| (k.clone(), v)).collect()
}

/// Added, removed and changed items, by name.
fn item_changes(old: &BTreeMap<String, &Json>, new: &BTreeMap<String, &Json>) -> Vec<ItemChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (kind, fields) = match (old.get(name), new.get(name)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => (ChangeKind::Changed, field_changes("", Some(a), Some(b))),
            (Some(_), None) => (ChangeKind::Removed, Vec::new()),
            (None, _) => (ChangeKind::Added, Vec::new()),
        };
        out.push(ItemChange { name: name.clone(), kind, fields });
    }
    out
}

/// The keys of two objects whose values differ, each as `prefix` + key; two values that are not
/// both objects are one change, keyed `prefix` without its final dot (or `(value)`).
fn field_changes(prefix: &str, old: Option<&Json>, new: Option<&Json>) -> Vec<FieldChange> {
    let change = |key: String, a: Option<&Json>, b: Option<&Json>| FieldChange {
        key,
        old: a.map(Json::to_string),
        new: b.map(Json::to_string),
    };
    match (old, new) {
        (Some(Json::Object(a)), Some(Json::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let differ = keys.into_iter().filter(|k| a.get(*k) != b.get(*k));
            differ.map(|k| change(format!("{prefix}{k}"), a.get(k), b.get(k))).collect()
        }
        (a, b) if a == b => Vec::new(),
        (a, b) => {
            let key = prefix.strip_suffix('.').filter(|p| !p.is_empty()).unwrap_or("(value)");
            vec![change(key.to_owned(), a, b)]
        }
    }
}

/// Every `data.gateway` key but `routes` and `upstreams`; a map, one level in (`jwt.issuers`).
fn settings_changes(old: Option<&Map<String, Json>>, new: Option<&Map<String, Json>>) -> Vec<FieldChange> {
    let (old, new) = (old.into_iter().flatten(), new.into_iter().flatten());
    let mut both: BTreeMap<&str, (Option<&Json>, Option<&Json>)> = BTreeMap::new();
    for (k, v) in old {
        both.entry(k).or_default().0 = Some(v);
    }
    for (k, v) in new {
        both.entry(k).or_default().1 = Some(v);
    }
    both.into_iter()
        .filter(|(k, _)| *k != "routes" && *k != "upstreams")
        .flat_map(|(k, (a, b))| field_changes(&format!("{k}."), a, b))
        .collect()
}

/// `routes.order` when the routes both revisions have are in another order: the first match
/// wins, so a reorder changes which route decides.
fn route_order(old: &[(String, &Json)], new: &[(String, &Json)]) -> Option<FieldChange> {
    let names = |list: &[(String, &Json)]| list.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(old), names(new));
    // Sets, not lists: a hostile bundle may hold a million routes.
    let (in_old, in_new): (HashSet<&String>, HashSet<&String>) =
        (old_names.iter().collect(), new_names.iter().collect());
    let common_old: Vec<&String> = old_names.iter().filter(|n| in_new.contains(n)).collect();
    let common_new: Vec<&String> = new_names.iter().filter(|n| in_old.contains(n)).collect();
    (common_old != common_new).then(|| FieldChange {
        key: "routes.order".into(),
        old: Some(Json::from(old_names).to_string()),
        new: Some(Json::from(new_names).to_string()),
    })
}

/// The `.manifest`'s top-level keys that differ, as `manifest.KEY`.
fn manifest_changes(old: &Files, new: &Files) -> Vec<FieldChange> {
    let manifest = |files: &Files| {
        let parsed = files.get(MANIFEST).and_then(|b| serde_json::from_slice::<Json>(b).ok());
        parsed.filter(Json::is_object).unwrap_or_else(|| Json::Object(Map::new()))
    };
    field_changes("manifest.", Some(&manifest(old)), Some(&manifest(new)))
}

/// The data documents that differ, with their sizes.
fn data_changes(old: &Files, new: &Files) -> Vec<DataChange> {
    let is_data = |p: &&String| DATA_FILES.contains(&p.rsplit('/').next().unwrap_or(p));
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).filter(is_data).collect();
    let mut out = Vec::new();
    for path in paths {
        let (a, b) = (old.get(path), new.get(path));
        let Some(kind) = kind_of(a, b) else { continue };
        let size = |f: Option<&Vec<u8>>| f.map(|f| f.len() as u64);
        out.push(DataChange { path: path.clone(), kind, old_bytes: size(a), new_bytes: size(b) });
    }
    out
}

/// How a file changed, `None` when it did not.
fn kind_of(old: Option<&Vec<u8>>, new: Option<&Vec<u8>>) -> Option<ChangeKind> {
    match (old, new) {
        (Some(a), Some(b)) if a == b => None,
        (Some(_), Some(_)) => Some(ChangeKind::Changed),
        (Some(_), None) => Some(ChangeKind::Removed),
        (None, Some(_)) => Some(ChangeKind::Added),
        (None, None) => None,
    }
}

/// What the line diffs of one [`diff`] may still spend.
struct Budget {
    bytes_left: usize,
    deadline: Instant,
}

/// The Rego modules that differ, each as a unified diff.
fn rego_changes(old: &Files, new: &Files) -> Vec<FileDiff> {
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).filter(|p| p.ends_with(".rego")).collect();
    let mut budget = Budget { bytes_left: MAX_DIFF_TOTAL_BYTES, deadline: Instant::now() + DIFF_TIME };
    let mut out = Vec::new();
    for path in paths {
        let (a, b) = (old.get(path), new.get(path));
        let Some(kind) = kind_of(a, b) else { continue };
        let (a, b) = (a.map_or(&[][..], Vec::as_slice), b.map_or(&[][..], Vec::as_slice));
        out.push(FileDiff { path: path.clone(), kind, unified: unified(path, a, b, &mut budget) });
    }
    out
}

/// The unified diff of one file, or its summary past the bounds.
fn unified(path: &str, old: &[u8], new: &[u8], budget: &mut Budget) -> String {
    let (old, new) = (String::from_utf8_lossy(old), String::from_utf8_lossy(new));
    let size = old.len() + new.len();
    let summary = |lines: usize, why: &str| {
        format!("--- a/{path}\n+++ b/{path}\n{lines} lines changed, too large to show ({why})\n")
    };
    if old.len() > MAX_DIFF_FILE_BYTES || new.len() > MAX_DIFF_FILE_BYTES {
        return summary(lines_changed(&old, &new), &format!("a file over {} MiB", MAX_DIFF_FILE_BYTES >> 20));
    }
    if size > budget.bytes_left {
        let why = format!("past the {} MiB of Rego one diff shows", MAX_DIFF_TOTAL_BYTES >> 20);
        return summary(lines_changed(&old, &new), &why);
    }
    budget.bytes_left -= size;
    let diff = TextDiff::configure().algorithm(Algorithm::Myers).deadline(budget.deadline).diff_lines(&*old, &*new);
    let changed: usize = diff
        .ops()
        .iter()
        .filter(|op| op.tag() != DiffTag::Equal)
        .map(|op| op.old_range().len() + op.new_range().len())
        .sum();
    let text = diff.unified_diff().context_radius(3).header(&format!("a/{path}"), &format!("b/{path}")).to_string();
    if text.lines().count() > MAX_DIFF_LINES {
        return summary(changed, &format!("a diff over {MAX_DIFF_LINES} lines"));
    }
    if text.is_empty() {
        // The bytes differ where they are not UTF-8, which the text diff cannot show.
        return format!("--- a/{path}\n+++ b/{path}\nthe files differ in bytes that are not UTF-8\n");
    }
    text
}

/// The lines one text has and the other has not (counting repeats), in linear time: what a
/// summary reports instead of a line diff.
fn lines_changed(old: &str, new: &str) -> usize {
    let mut count: HashMap<&str, isize> = HashMap::new();
    for line in old.lines() {
        *count.entry(line).or_default() += 1;
    }
    for line in new.lines() {
        *count.entry(line).or_default() -= 1;
    }
    count.values().map(|c| c.unsigned_abs()).sum()
}

impl BundleDiff {
    /// Whether the two bundles are the same in everything compared.
    pub fn is_empty(&self) -> bool {
        let BundleDiff { routes, upstreams, settings, rego, data } = self;
        routes.is_empty() && upstreams.is_empty() && settings.is_empty() && rego.is_empty() && data.is_empty()
    }

    /// The diff as `bundlectl diff` prints it: a section per kind of change (`routes:`,
    /// `upstreams:`, `settings:`, `rego:`, `data:`), `+` added, `-` removed, `~` changed; or
    /// `no differences`.
    pub fn render_text(&self) -> String {
        if self.is_empty() {
            return "no differences\n".into();
        }
        let mut out = String::new();
        render_items(&mut out, "routes", &self.routes);
        render_items(&mut out, "upstreams", &self.upstreams);
        if !self.settings.is_empty() {
            out.push_str("settings:\n");
            self.settings.iter().for_each(|f| render_field(&mut out, "  ", f));
        }
        if !self.rego.is_empty() {
            out.push_str("rego:\n");
            for line in self.rego.iter().flat_map(|f| f.unified.lines()) {
                let _ = writeln!(out, "{}", shown(line));
            }
        }
        if !self.data.is_empty() {
            out.push_str("data:\n");
        }
        for d in &self.data {
            let path = shown(&d.path);
            let _ = match (d.old_bytes, d.new_bytes) {
                (Some(a), Some(b)) => writeln!(out, "  ~ {path}  {a} -> {b} bytes"),
                (Some(a), None) => writeln!(out, "  - {path}  {a} bytes"),
                (None, b) => writeln!(out, "  + {path}  {} bytes", b.unwrap_or(0)),
            };
        }
        out
    }
}

fn render_items(out: &mut String, title: &str, items: &[ItemChange]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}:");
    for item in items {
        let sign = match item.kind {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Changed => '~',
        };
        let _ = writeln!(out, "  {sign} {}", shown(&item.name));
        item.fields.iter().for_each(|f| render_field(out, "      ", f));
    }
}

fn render_field(out: &mut String, indent: &str, f: &FieldChange) {
    let value = |v: &Option<String>| match v {
        None => "(absent)".into(),
        Some(v) if v.chars().count() > MAX_SHOWN_VALUE => {
            let head: String = v.chars().take(MAX_SHOWN_VALUE).collect();
            format!("{}... ({} bytes)", shown(&head), v.len())
        }
        Some(v) => shown(v).into_owned(),
    };
    let _ = writeln!(out, "{indent}{}: {} -> {}", shown(&f.key), value(&f.old), value(&f.new));
}

/// `s` with control characters escaped (`\u{1b}`), but for tabs and a line's final `\r`: what a
/// bundle names or holds never reaches a terminal as an escape sequence.
fn shown(s: &str) -> Cow<'_, str> {
    // A CRLF file's `\r` stays at the end of its line, where it does no harm.
    let body = s.strip_suffix('\r').unwrap_or(s);
    match crate::printable::printable(body) {
        Cow::Borrowed(_) => Cow::Borrowed(s),
        Cow::Owned(mut out) => {
            out.push_str(&s[body.len()..]);
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "\
upstreams:
  api: { targets: [\"10.0.0.1:80\"] }
  legacy: { targets: [\"10.0.0.9:80\"] }
rate_limits:
  per_user: { key: jwt.sub, rate: 10/s }
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: api
    policy: data.http.orders.decision
  - name: legacy
    match: { path_prefix: /legacy }
    upstream: legacy
    policy: data.http.orders.decision
";

    /// [`SETTINGS`] with the route `legacy` removed, `orders-v2` added and `orders`' policy changed.
    const NEW_ROUTES: &str = "\
upstreams:
  api: { targets: [\"10.0.0.1:80\"] }
  legacy: { targets: [\"10.0.0.9:80\"] }
rate_limits:
  per_user: { key: jwt.sub, rate: 10/s }
routes:
  - name: orders-v2
    match: { path: /v2 }
    upstream: api
    policy: data.http.orders_v2.decision
  - name: orders
    match: { path_prefix: /orders }
    upstream: api
    policy: data.http.orders_v2.decision
";

    const ORDERS: &str = "package http.orders\n\nimport rego.v1\n\ndefault decision := false\n\n\
        decision if {\n\tinput.jwt.sub\n\t\"reader\" in input.jwt.claims.roles\n}\n";

    fn bundle(files: &[(&str, &str)]) -> Bundle {
        let files: Files = files.iter().map(|(p, t)| ((*p).to_owned(), t.as_bytes().to_vec())).collect();
        Bundle::from_files(files).unwrap_or_else(|e| panic!("{e}"))
    }

    fn base(settings: &str, rego: &str, users: &str) -> Bundle {
        bundle(&[
            (".manifest", r#"{"revision": "r1"}"#),
            ("gateway/data.yaml", settings),
            ("http/orders.rego", rego),
            ("users/data.json", users),
        ])
    }

    #[test]
    fn identical_bundles_have_no_differences() {
        let a = base(SETTINGS, ORDERS, "{}");
        let d = diff(&a, &a.clone());
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.render_text(), "no differences\n");
    }

    #[test]
    fn an_added_a_removed_and_a_changed_route_are_named_with_the_fields_that_changed() {
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(NEW_ROUTES, ORDERS, "{}"));
        let routes: Vec<(&str, ChangeKind)> = d.routes.iter().map(|r| (r.name.as_str(), r.kind)).collect();
        assert_eq!(
            routes,
            [("legacy", ChangeKind::Removed), ("orders", ChangeKind::Changed), ("orders-v2", ChangeKind::Added)]
        );
        assert_eq!(
            d.routes[1].fields,
            [FieldChange {
                key: "policy".into(),
                old: Some("\"data.http.orders.decision\"".into()),
                new: Some("\"data.http.orders_v2.decision\"".into()),
            }]
        );
        assert!(d.routes[0].fields.is_empty() && d.routes[2].fields.is_empty());
        assert!(d.upstreams.is_empty() && d.rego.is_empty(), "{d:?}");
        // The settings file is a data document too: its size is listed with the others.
        assert_eq!(d.data.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), ["gateway/data.yaml"]);
        assert!(d.settings.is_empty(), "orders is still the only common route: {:?}", d.settings);
        let text = d.render_text();
        let want = "routes:\n  - legacy\n  ~ orders\n      \
            policy: \"data.http.orders.decision\" -> \"data.http.orders_v2.decision\"\n  + orders-v2\n\
            data:\n  ~ gateway/data.yaml  369 -> 364 bytes\n";
        assert_eq!(text, want);
    }

    #[test]
    fn a_changed_upstream_shows_its_fields_and_a_removed_one_its_name() {
        let new = SETTINGS
            .replace("  legacy: { targets: [\"10.0.0.9:80\"] }\n", "")
            .replace("upstream: legacy", "upstream: api")
            .replace("10.0.0.1:80\"]", "10.0.0.1:80\", \"10.0.0.2:80\"], connect_timeout: 1s");
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(&new, ORDERS, "{}"));
        let keys: Vec<&str> = d.upstreams[0].fields.iter().map(|f| f.key.as_str()).collect();
        assert_eq!((d.upstreams[0].name.as_str(), d.upstreams[0].kind), ("api", ChangeKind::Changed));
        assert_eq!(keys, ["connect_timeout", "targets"]);
        assert_eq!(d.upstreams[0].fields[0].old, None);
        assert_eq!(d.upstreams[0].fields[1].new.as_deref(), Some(r#"["10.0.0.1:80","10.0.0.2:80"]"#));
        assert_eq!((d.upstreams[1].name.as_str(), d.upstreams[1].kind), ("legacy", ChangeKind::Removed));
        let text = d.render_text();
        assert!(text.contains("upstreams:\n  ~ api\n      connect_timeout: (absent) -> \"1s\"\n"), "{text}");
        assert!(text.contains("  - legacy\n"), "{text}");
    }

    #[test]
    fn settings_a_reorder_of_routes_and_the_manifest_revision_are_listed_by_key() {
        let new = SETTINGS.replace("rate: 10/s", "rate: 20/s").replace("routes:\n", "jwt: { issuers: [] }\nroutes:\n");
        let swapped = new.replace(
            "  - name: orders\n    match: { path_prefix: /orders }\n    upstream: api\n    policy: data.http.orders.decision\n",
            "",
        ) + "  - name: orders\n    match: { path_prefix: /orders }\n    upstream: api\n    policy: data.http.orders.decision\n";
        let old = base(SETTINGS, ORDERS, "{}");
        let mut files = base(&swapped, ORDERS, "{}").files;
        files.insert(MANIFEST.into(), br#"{"revision": "r2"}"#.to_vec());
        let d = diff(&old, &Bundle::from_files(files).unwrap_or_else(|e| panic!("{e}")));
        let keys: Vec<&str> = d.settings.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["jwt", "manifest.revision", "rate_limits.per_user", "routes.order"]);
        assert_eq!(d.settings[1].old.as_deref(), Some("\"r1\""));
        assert_eq!(d.settings[3].new.as_deref(), Some(r#"["legacy","orders"]"#));
        assert!(d.routes.is_empty(), "{:?}", d.routes);
        assert!(d.render_text().starts_with("settings:\n  jwt: (absent) -> {\"issuers\":[]}\n"), "{}", d.render_text());
    }

    #[test]
    fn repeated_route_names_are_paired_by_occurrence() {
        let twice = SETTINGS.replace("name: legacy", "name: orders");
        let changed = twice.replace("path_prefix: /legacy", "path_prefix: /old");
        let d = diff(&base(&twice, ORDERS, "{}"), &base(&changed, ORDERS, "{}"));
        assert_eq!(d.routes.len(), 1, "{:?}", d.routes);
        assert_eq!((d.routes[0].name.as_str(), d.routes[0].fields[0].key.as_str()), ("orders#2", "match"));
    }

    #[test]
    fn a_route_named_like_a_repeats_key_cannot_hide_an_added_route() {
        let new_routes = SETTINGS.replace(
            "routes:\n",
            "routes:\n  - name: orders\n    match: { path_prefix: /o2 }\n    upstream: api\n    policy: data.http.orders.decision\n  - name: \"orders#2\"\n    match: { path_prefix: /o3 }\n    upstream: api\n    policy: data.http.orders.decision\n",
        );
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(&new_routes, ORDERS, "{}"));
        let names: Vec<&str> = d.routes.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"orders#2") && names.contains(&"orders#3"), "both added routes are listed: {names:?}");
    }

    #[test]
    fn a_changed_rule_is_a_unified_diff_with_three_lines_of_context() {
        let new = ORDERS.replace("\"reader\"", "\"writer\"");
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(SETTINGS, &new, "{}"));
        assert_eq!(d.rego.len(), 1);
        assert_eq!((d.rego[0].path.as_str(), d.rego[0].kind), ("http/orders.rego", ChangeKind::Changed));
        let want =
            "--- a/http/orders.rego\n+++ b/http/orders.rego\n@@ -6,5 +6,5 @@\n \n decision if {\n \tinput.jwt.sub\n\
            -\t\"reader\" in input.jwt.claims.roles\n+\t\"writer\" in input.jwt.claims.roles\n }\n";
        assert_eq!(d.rego[0].unified, want);
        assert!(d.render_text().ends_with(&format!("rego:\n{want}")), "{}", d.render_text());
    }

    #[test]
    fn added_and_removed_modules_are_diffed_against_nothing() {
        let mut files = base(SETTINGS, ORDERS, "{}").files;
        files.remove("http/orders.rego");
        files.insert("http/a.rego".into(), b"package http.a\n".to_vec());
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &Bundle::from_files(files).unwrap_or_else(|e| panic!("{e}")));
        let got: Vec<(&str, ChangeKind)> = d.rego.iter().map(|f| (f.path.as_str(), f.kind)).collect();
        assert_eq!(got, [("http/a.rego", ChangeKind::Added), ("http/orders.rego", ChangeKind::Removed)]);
        assert_eq!(d.rego[0].unified, "--- a/http/a.rego\n+++ b/http/a.rego\n@@ -0,0 +1 @@\n+package http.a\n");
        assert!(d.rego[1].unified.contains("-default decision := false\n"));
    }

    #[test]
    fn a_grown_data_file_is_listed_with_both_sizes() {
        let d = diff(&base(SETTINGS, ORDERS, r#"{"users": {}}"#), &base(SETTINGS, ORDERS, r#"{"users": {"a": 1}}"#));
        assert_eq!(
            d.data,
            [DataChange {
                path: "users/data.json".into(),
                kind: ChangeKind::Changed,
                old_bytes: Some(13),
                new_bytes: Some(19)
            }]
        );
        assert_eq!(d.render_text(), "data:\n  ~ users/data.json  13 -> 19 bytes\n");
    }

    #[test]
    fn every_list_is_ordered_by_name_or_path_whatever_the_order_of_the_sources() {
        let old = base(SETTINGS, ORDERS, "{}");
        let mut files = old.files.clone();
        for p in ["z/data.json", "a/data.yaml", "m/data.yml"] {
            files.insert(p.into(), b"{}".to_vec());
        }
        for p in ["z.rego", "a/b.rego"] {
            files.insert(p.into(), format!("package {}\n", p.replace(['/', '.'], "_")).into_bytes());
        }
        let new = Bundle::from_files(files).unwrap_or_else(|e| panic!("{e}"));
        let d = diff(&old, &new);
        let data: Vec<&str> = d.data.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(data, ["a/data.yaml", "m/data.yml", "z/data.json"]);
        let rego: Vec<&str> = d.rego.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(rego, ["a/b.rego", "z.rego"]);
        assert_eq!(d, diff(&old, &new), "the same diff every time");
    }

    #[test]
    fn the_diff_serializes_with_snake_case_kinds() {
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(NEW_ROUTES, ORDERS, "{}"));
        let v = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(v["routes"][0], serde_json::json!({"name": "legacy", "kind": "removed", "fields": []}));
        assert_eq!(v["routes"][2]["kind"], "added");
        assert_eq!(
            v["data"],
            serde_json::json!([{"path": "gateway/data.yaml", "kind": "changed", "old_bytes": 369, "new_bytes": 364}])
        );
    }

    #[test]
    fn a_rego_file_over_a_mib_is_summarized_not_diffed() {
        let big = |tag: &str| {
            let mut s = String::from("package http.orders\n");
            (0..80_000).for_each(|i| s.push_str(&format!("# line {i} {tag}\n")));
            s
        };
        let (a, b) = (big("a"), big("a").replace("line 7 a", "line 7 b"));
        assert!(b.len() > MAX_DIFF_FILE_BYTES);
        let d = diff(&base(SETTINGS, &a, "{}"), &base(SETTINGS, &b, "{}"));
        assert_eq!(
            d.rego[0].unified,
            "--- a/http/orders.rego\n+++ b/http/orders.rego\n2 lines changed, too large to show (a file over 1 MiB)\n"
        );
    }

    #[test]
    fn a_diff_of_more_than_twenty_thousand_lines_is_summarized() {
        let mut b = ORDERS.to_owned();
        (0..MAX_DIFF_LINES).for_each(|i| b.push_str(&format!("# {i}\n")));
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(SETTINGS, &b, "{}"));
        assert!(d.rego[0].unified.ends_with("\n20000 lines changed, too large to show (a diff over 20000 lines)\n"));
    }

    #[test]
    fn rego_past_the_total_budget_is_summarized_file_by_file() {
        let mut old = base(SETTINGS, ORDERS, "{}").files;
        let mut new = old.clone();
        let body: String = (0..40_000).map(|i| format!("# {i:020}\n")).collect();
        for i in 0..20 {
            old.insert(format!("m/{i:02}.rego"), format!("package m{i}\n{body}").into_bytes());
            new.insert(format!("m/{i:02}.rego"), format!("package m{i}\n{body}# new\n").into_bytes());
        }
        let (old, new) = (Bundle::from_files(old), Bundle::from_files(new));
        let d = diff(&old.unwrap_or_else(|e| panic!("{e}")), &new.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(d.rego.len(), 20);
        assert!(d.rego[0].unified.contains("@@"), "{}", d.rego[0].unified);
        assert!(d.rego[19]
            .unified
            .ends_with("1 lines changed, too large to show (past the 16 MiB of Rego one diff shows)\n"));
    }

    #[test]
    fn control_characters_from_a_bundle_never_reach_the_terminal() {
        let evil = ORDERS.replace("import rego.v1", "import rego.v1 # \u{1b}[2J\u{1b}]0;pwned\u{7}");
        let settings =
            SETTINGS.replace("name: orders", "name: \"orders\\e[31m\"").replace("upstream: api", "upstream: legacy");
        let d = diff(&base(SETTINGS, ORDERS, "{}"), &base(&settings, &evil, "{}"));
        let text = d.render_text();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J"), "{text}");
        assert!(d.rego[0].unified.contains('\u{1b}'), "the JSON keeps the bytes as they are");
    }
}
