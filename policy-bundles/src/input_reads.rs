//! Which parts of the input a bundle's policies can read, found by walking their AST before they
//! run. A rule's result is a function of `data` (fixed for a snapshot) and of the input values
//! at these paths, unless the bundle calls a builtin whose answer changes from call to call
//! (`time.now_ns`, `rand.intn`, `uuid.rfc4122`, `opa.runtime`) or rewrites the input with
//! `with`. The snapshot keys its decision cache on exactly those values
//! ([`crate::snapshot::Snapshot::decide_cached`]).
//!
//! The analysis is conservative. It follows a route's rule through every rule and function it
//! may reference (by name in its package, through `data.` paths and imports; a reference to a
//! package reaches every rule under it). A reference whose key is not a constant
//! (`input.request.headers[name]`) counts as reading everything under its constant prefix
//! (`input.request.headers`). A bare `input`, an `import input`, a `with` modifier or a call to
//! one of those builtins, anywhere the rule reaches, turns the cache off for that rule, and the
//! reason is reported.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Ref, Rule, RuleHead, WithModifier};
use regorus::utils::get_path_string;
use regorus::{Engine, Value};

/// Builtins whose result differs between two calls with the same arguments.
/// `io.jwt.decode_verify` is one: without a `time` constraint it checks `exp` and `nbf` against
/// the clock.
const NONDETERMINISTIC: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "http.send",
    "net.lookup_ip_addr",
    "io.jwt.decode_verify",
];

/// The input paths a bundle reads, or why its decisions cannot be cached.
#[derive(Debug, Clone, PartialEq)]
pub enum InputReads {
    /// Each path is a list of keys from the root of the input; none is a prefix of another.
    Paths(Vec<Vec<Value>>),
    Uncacheable(String),
}

impl InputReads {
    /// The values at the read paths of `input` (`Undefined` where absent): two inputs with the
    /// same key give the same decision. `None` when the bundle's decisions are not cacheable.
    pub fn key(&self, input: &Value) -> Option<Vec<Value>> {
        let InputReads::Paths(paths) = self else { return None };
        Some(paths.iter().map(|path| descend(input, path)).collect())
    }

    /// The read paths, when the decisions are cacheable.
    pub fn paths(&self) -> Option<&[Vec<Value>]> {
        match self {
            InputReads::Paths(p) => Some(p),
            InputReads::Uncacheable(_) => None,
        }
    }

    /// The read paths as Rego references (`input.request.method`), for logs and tests.
    pub fn describe(&self) -> Vec<String> {
        match self {
            InputReads::Uncacheable(why) => vec![format!("uncacheable: {why}")],
            InputReads::Paths(paths) => paths
                .iter()
                .map(|p| {
                    let mut s = String::from("input");
                    for k in p {
                        match k.as_string() {
                            Ok(name) if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                                s.push('.');
                                s.push_str(name);
                            }
                            _ => s.push_str(&format!("[{k}]")),
                        }
                    }
                    s
                })
                .collect(),
        }
    }
}

/// The value at `path` under `v`, as a key. Only objects and arrays are looked into; anything
/// else (a set, a string) keys as a whole, which is exact whatever Rego makes of `v[k]`.
pub fn descend(v: &Value, path: &[Value]) -> Value {
    let mut v = v;
    for k in path {
        match (v, k) {
            (Value::Object(_), _) | (Value::Array(_), Value::Number(_)) => v = &v[k],
            _ => break,
        }
        if *v == Value::Undefined {
            break;
        }
    }
    v.clone()
}

/// The constant leading keys of a reference, and its base expression:
/// `input.a["b"][x].c` → (`input`, [a, b]): `x` is not a constant, so the rest is cut.
fn unwind(e: &Ref<Expr>) -> (&Ref<Expr>, Vec<Value>) {
    let mut keys: Vec<Option<Value>> = Vec::new();
    let mut base = e;
    loop {
        match base.as_ref() {
            Expr::RefDot { refr, field, .. } => {
                keys.push(Some(field.1.clone()));
                base = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                keys.push(constant(index));
                base = refr;
            }
            _ => break,
        }
    }
    keys.reverse();
    (base, keys.into_iter().map_while(|k| k).collect())
}

fn var_name(e: &Ref<Expr>) -> Option<String> {
    match e.as_ref() {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        _ => None,
    }
}

fn segment(v: &Value) -> String {
    match v.as_string() {
        Ok(s) => s.to_string(),
        Err(_) => v.to_string(),
    }
}

/// A rule's path as segments (`data.http.orders.decision` → [data, http, orders, decision]),
/// cut at its first non-constant key.
fn head_path(pkg: &[String], refr: &Ref<Expr>) -> Vec<String> {
    let (base, keys) = unwind(refr);
    let mut path = pkg.to_vec();
    if let Some(name) = var_name(base) {
        path.push(name);
        path.extend(keys.iter().map(segment));
    }
    path
}

/// One rule definition: its path, and what its own head and body read and reference.
struct RuleReads {
    path: Vec<String>,
    reads: Reads,
}

/// What the rule at each of `entrypoints` (`data.http.orders.decision`) reads from the input,
/// through every rule and function it references, in the same order. `engine` holds the
/// bundle's modules (tests excluded).
pub fn analyze(engine: &mut Engine, entrypoints: &[&str]) -> Vec<InputReads> {
    let modules = engine.get_modules().clone();
    let mut rules: Vec<RuleReads> = Vec::new();
    for m in &modules {
        let file = m.package.span.source.file().clone();
        let (base, keys) = unwind(&m.package.refr);
        let mut pkg = vec!["data".to_string()];
        pkg.extend(var_name(base));
        pkg.extend(keys.iter().map(segment));
        // `import data.lib as l`, `import input.request as req`: alias → (root, keys).
        let mut module = Reads { file: file.clone(), pkg: pkg.clone(), ..Reads::default() };
        for imp in &m.imports {
            let (base, keys) = unwind(&imp.refr);
            let Some(root) = var_name(base) else { continue };
            if root != "input" && root != "data" {
                continue; // rego.v1, future.keywords
            }
            let alias = imp.r#as.as_ref().map(|s| s.text().to_owned());
            let alias = alias.or_else(|| keys.last().map(segment)).unwrap_or_else(|| root.clone());
            if root == "input" {
                // Every rule of the module may read what the import names.
                module.read(keys.clone(), imp.span.line);
            }
            module.aliases.insert(alias, (root, keys));
        }
        for rule in &m.policy {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } | RuleHead::Func { refr, .. },
                    ..
                } => refr,
                Rule::Default { refr, .. } => refr,
            };
            let mut reads = Reads {
                file: file.clone(),
                pkg: pkg.clone(),
                aliases: module.aliases.clone(),
                paths: module.paths.clone(),
                refs: Vec::new(),
                uncacheable: module.uncacheable.clone(),
            };
            crate::ast::rule(&mut reads, rule);
            rules.push(RuleReads { path: head_path(&pkg, refr), reads });
        }
    }
    entrypoints.iter().map(|e| closure(&rules, e)).collect()
}

/// Whether one path is a prefix of the other: a reference to `data.http` reaches every rule
/// under it, one to `data.http.admin.tenants` reaches a rule `data.http.admin`.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// A rule path as segments, parsed as Rego reads a reference: `data.tenants["acme-corp"].allow`
/// → [data, tenants, acme-corp, allow]. `None` when it is not a reference rooted at `data` with
/// constant keys only.
pub fn rule_path(entrypoint: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let b = entrypoint.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    let mut first = true;
    while i < b.len() {
        if b[i] == b'[' {
            // `["quoted"]` (JSON string escapes) or `[123]`.
            let close = i + 1 + entrypoint.get(i + 1..)?.find(']')?;
            let inner = entrypoint.get(i + 1..close)?.trim();
            let key = if inner.starts_with('"') {
                // A `]` inside the string: find the closing quote properly.
                let (key, len) = json_string_prefix(entrypoint.get(i + 1..)?)?;
                let after = i + 1 + len;
                if b.get(after) != Some(&b']') {
                    return None;
                }
                i = after + 1;
                key
            } else if !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()) {
                i = close + 1;
                inner.to_owned()
            } else {
                return None;
            };
            out.push(key);
            first = false;
            continue;
        }
        if !first {
            if b[i] != b'.' {
                return None;
            }
            i += 1;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        if start == i || b[start].is_ascii_digit() {
            return None;
        }
        out.push(entrypoint.get(start..i)?.to_owned());
        first = false;
    }
    (out.first().map(String::as_str) == Some("data") && out.len() > 1).then_some(out)
}

/// A JSON string at the start of `s`: its value and its length in bytes.
fn json_string_prefix(s: &str) -> Option<(String, usize)> {
    let mut de = serde_json::Deserializer::from_str(s).into_iter::<String>();
    let v = de.next()?.ok()?;
    Some((v, de.byte_offset()))
}

fn closure(rules: &[RuleReads], entrypoint: &str) -> InputReads {
    let Some(start) = rule_path(entrypoint) else {
        return InputReads::Uncacheable(format!("`{entrypoint}` is not a rule path the analysis can read"));
    };
    let mut seen = vec![false; rules.len()];
    let mut todo: Vec<Vec<String>> = vec![start];
    let mut paths: BTreeSet<Vec<Value>> = BTreeSet::new();
    let mut first = true;
    while let Some(reference) = todo.pop() {
        if std::mem::take(&mut first) && !rules.iter().any(|r| overlaps(&r.path, &reference)) {
            // Nothing is known of what it reads: evaluate it on the full input, uncached.
            return InputReads::Uncacheable(format!("`{entrypoint}` reaches no rule the analysis found"));
        }
        for (i, r) in rules.iter().enumerate() {
            if seen[i] || !overlaps(&r.path, &reference) {
                continue;
            }
            seen[i] = true;
            if let Some(why) = &r.reads.uncacheable {
                return InputReads::Uncacheable(why.clone());
            }
            paths.extend(r.reads.paths.iter().cloned());
            todo.extend(r.reads.refs.iter().cloned());
        }
    }
    // Keep only the shortest paths: reading `input.jwt` covers `input.jwt.claims.sub`.
    let mut minimal: Vec<Vec<Value>> = Vec::new();
    for p in paths {
        if !minimal.iter().any(|q| p.starts_with(q)) {
            minimal.push(p);
        }
    }
    InputReads::Paths(minimal)
}

#[derive(Default)]
struct Reads {
    file: String,
    pkg: Vec<String>,
    aliases: BTreeMap<String, (String, Vec<Value>)>,
    /// Sorted, so that a prefix comes before the paths it covers.
    paths: BTreeSet<Vec<Value>>,
    /// References that may name rules or functions (`data.lib.f`, a local `allowed`).
    refs: Vec<Vec<String>>,
    uncacheable: Option<String>,
}

impl Reads {
    fn refuse(&mut self, why: String) {
        self.uncacheable.get_or_insert(why);
    }

    fn read(&mut self, path: Vec<Value>, line: u32) {
        if path.is_empty() {
            self.refuse(format!("{}:{line} reads the whole input", self.file));
        } else {
            self.paths.insert(path);
        }
    }

    /// A reference rooted at a name: the input, `data`, an import's alias, or a name that may
    /// be a rule of this package (else a local variable, which costs a lookup that finds nothing).
    fn reference(&mut self, root: &str, keys: &[Value], line: u32) {
        let (root, keys): (String, Vec<Value>) = match self.aliases.get(root) {
            Some((target, prefix)) => (target.clone(), prefix.iter().chain(keys).cloned().collect()),
            None => (root.to_owned(), keys.to_vec()),
        };
        if root == "input" {
            self.read(keys, line);
            return;
        }
        let mut path: Vec<String> =
            if root == "data" { vec![root] } else { self.pkg.iter().cloned().chain([root]).collect() };
        path.extend(keys.iter().map(segment));
        self.refs.push(path);
    }
}

/// A constant key of a reference (`["x-tenant"]`, `[0]`).
fn constant(e: &Ref<Expr>) -> Option<Value> {
    match e.as_ref() {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.clone()),
        _ => None,
    }
}

impl crate::ast::Visitor for Reads {
    fn enter(&mut self, e: &Ref<Expr>) -> bool {
        match e.as_ref() {
            Expr::Var { span, value, .. } => {
                if let Ok(name) = value.as_string() {
                    self.reference(name.as_ref(), &[], span.line);
                }
                false
            }
            Expr::RefDot { span, .. } | Expr::RefBrack { span, .. } => {
                let (base, keys) = unwind(e);
                let Some(root) = var_name(base) else { return true };
                self.reference(&root, &keys, span.line);
                // The non-constant keys are expressions of their own, which may read more.
                let mut node = e;
                loop {
                    match node.as_ref() {
                        Expr::RefDot { refr, .. } => node = refr,
                        Expr::RefBrack { refr, index, .. } => {
                            if constant(index).is_none() {
                                crate::ast::expr(self, index);
                            }
                            node = refr;
                        }
                        _ => break,
                    }
                }
                false
            }
            Expr::Call { span, fcn, .. } => {
                if let Ok(name) = get_path_string(fcn, None) {
                    if NONDETERMINISTIC.contains(&name.as_str()) {
                        self.refuse(format!("{}:{} calls `{name}`", self.file, span.line));
                    }
                }
                true
            }
            _ => true,
        }
    }

    fn with_modifier(&mut self, w: &WithModifier) {
        self.refuse(format!("{}:{} uses `with`", self.file, w.span.line));
    }

    fn unknown(&mut self, what: &str) {
        self.refuse(format!("{}: uses {what}, which the analysis does not know", self.file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `entry` reads, given the modules.
    fn reads(modules: &[(&str, &str)], entry: &str) -> Vec<String> {
        let mut engine = Engine::new();
        for (path, src) in modules {
            engine.add_policy(path.to_string(), src.to_string()).unwrap();
        }
        analyze(&mut engine, &[entry]).remove(0).describe()
    }

    #[test]
    fn finds_the_constant_paths_a_rule_reads_through_the_rules_it_uses() {
        let src = "package p\nimport rego.v1\n\
                   allow if { input.request.method == \"GET\"; \"admin\" in roles; tenant }\n\
                   roles contains r if some r in input.jwt.claims.roles\n\
                   tenant := input.request.headers[\"x-tenant\"]\n\
                   unused := input.request.path\n";
        assert_eq!(
            reads(&[("p.rego", src)], "data.p.allow"),
            ["input.jwt.claims.roles", "input.request.headers[\"x-tenant\"]", "input.request.method"]
        );
        assert_eq!(reads(&[("p.rego", src)], "data.p.unused"), ["input.request.path"]);
    }

    #[test]
    fn follows_functions_packages_and_imports_across_modules() {
        let lib = "package lib\nimport rego.v1\nis_get(r) if r.method == input.request.method\n\
                   owner := input.jwt.claims.sub\nother := input.request.path\n";
        let app = "package app\nimport rego.v1\nimport data.lib as l\n\
                   a if l.is_get(input.request)\n\
                   b if data.lib.owner == \"x\"\n\
                   c if { x := data.lib; x.owner }\n\
                   d if count(data.app) > 0\n";
        let m = [("lib.rego", lib), ("app.rego", app)];
        assert_eq!(reads(&m, "data.app.a"), ["input.request"]);
        assert_eq!(reads(&m, "data.app.b"), ["input.jwt.claims.sub"]);
        assert_eq!(reads(&m, "data.app.c"), ["input.jwt.claims.sub", "input.request.method", "input.request.path"]);
        // `data.app` names every rule of the package, itself included.
        assert_eq!(reads(&m, "data.app.d"), ["input.jwt.claims.sub", "input.request"]);
    }

    #[test]
    fn a_variable_key_reads_everything_under_its_prefix_and_its_own_reads() {
        let src = "package p\nimport rego.v1\n\
                   h := input.request.headers[input.route]\n\
                   j := [input.jwt.claims.sub, input.jwt]\n";
        assert_eq!(reads(&[("p.rego", src)], "data.p.h"), ["input.request.headers", "input.route"]);
        assert_eq!(reads(&[("p.rego", src)], "data.p.j"), ["input.jwt"]);
    }

    #[test]
    fn imports_of_the_input_read_their_whole_subtree_or_what_follows_the_alias() {
        let src = "package p\nimport rego.v1\nimport input.request as req\nallow if req.method == \"GET\"\n";
        assert_eq!(reads(&[("p.rego", src)], "data.p.allow"), ["input.request"]);
    }

    #[test]
    fn refuses_what_makes_a_decision_depend_on_more_than_its_reads() {
        for (src, why) in [
            ("package p\nimport rego.v1\nx := input\n", "p.rego:3 reads the whole input"),
            ("package p\nimport rego.v1\nx if { some k in input; k }\n", "p.rego:3 reads the whole input"),
            ("package p\nimport rego.v1\nimport input\nx := 1\n", "p.rego:3 reads the whole input"),
            ("package p\nimport rego.v1\nx if time.now_ns() > 0\n", "p.rego:3 calls `time.now_ns`"),
            ("package p\nimport rego.v1\nf(n) := rand.intn(\"k\", n)\nx := f(3)\n", "p.rego:3 calls `rand.intn`"),
            ("package p\nimport rego.v1\ny := 1\nx if { y with input.a as 1 }\n", "p.rego:4 uses `with`"),
        ] {
            assert_eq!(reads(&[("p.rego", src)], "data.p.x"), [format!("uncacheable: {why}")], "{src}");
        }
        // What a rule does not reach does not matter to it.
        let src = "package p\nimport rego.v1\nx := input.a\nclock := time.now_ns()\n";
        assert_eq!(reads(&[("p.rego", src)], "data.p.x"), ["input.a"]);
    }

    #[test]
    fn bracketed_packages_and_entrypoints_are_followed() {
        let src = "package tenants[\"acme-corp\"]\nimport rego.v1\nallow if not input.request.headers[\"x-banned\"]\n";
        assert_eq!(
            reads(&[("t.rego", src)], "data.tenants[\"acme-corp\"].allow"),
            ["input.request.headers[\"x-banned\"]"]
        );
        assert_eq!(
            reads(&[("t.rego", src)], "data.tenants.acme-corp.allow"),
            ["uncacheable: `data.tenants.acme-corp.allow` is not a rule path the analysis can read"]
        );
        assert_eq!(
            reads(&[("t.rego", src)], "data.tenants[\"other\"].allow"),
            ["uncacheable: `data.tenants[\"other\"].allow` reaches no rule the analysis found"]
        );
    }

    #[test]
    fn rule_paths_parse_as_rego_references() {
        let p = |s: &str| rule_path(s);
        assert_eq!(p("data.a.b").unwrap(), ["data", "a", "b"]);
        assert_eq!(p("data.tenants[\"acme-corp\"].allow").unwrap(), ["data", "tenants", "acme-corp", "allow"]);
        assert_eq!(p("data[\"a.b\"][0].c").unwrap(), ["data", "a.b", "0", "c"]);
        assert_eq!(p("data.x[\"a]b\"]").unwrap(), ["data", "x", "a]b"]);
        for bad in ["", "data", "input.a", "data..a", "data.a[b]", "data.a[\"b\"", "data.a.", "data.1a", "data.a b"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_on_the_values_read() {
        let src = "package a\nimport rego.v1\nx if { input.request.method; input.jwt.claims.sub }\n";
        let mut engine = Engine::new();
        engine.add_policy("a.rego".into(), src.into()).unwrap();
        let r = analyze(&mut engine, &["data.a.x"]).remove(0);
        let input = |method: &str, sub: &str, other: &str| {
            Value::from_json_str(&format!(
                r#"{{"request": {{"method": "{method}", "path": "{other}"}}, "jwt": {{"claims": {{"sub": "{sub}", "iat": "{other}"}}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(r.key(&input("GET", "alice", "1")), r.key(&input("GET", "alice", "2")), "unread fields vary");
        assert_ne!(r.key(&input("GET", "alice", "1")), r.key(&input("PUT", "alice", "1")));
        assert_ne!(r.key(&input("GET", "alice", "1")), r.key(&input("GET", "bob", "1")));
        let no_jwt = Value::from_json_str(r#"{"request": {"method": "GET"}}"#).unwrap();
        assert_eq!(r.key(&no_jwt), Some(vec![Value::Undefined, Value::from("GET")]));
        // A value that is not an object keys as a whole: whatever `jwt.claims` is, it is exact.
        let odd = Value::from_json_str(r#"{"request": {"method": "GET"}, "jwt": {"claims": "sub"}}"#).unwrap();
        assert_eq!(r.key(&odd), Some(vec![Value::from("sub"), Value::from("GET")]));
    }
}
