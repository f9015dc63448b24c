//! A check regorus does not make when it compiles: that every function a module calls exists.
//! regorus resolves a call only when it runs, so a call to an unknown function (a typo, or a
//! builtin this build leaves out, such as the network-reaching `http.send`) would otherwise be
//! activated and then fail every request that reaches it. The check walks the AST regorus
//! parsed (`regorus::unstable`, pinned by the lock file) and resolves calls as its interpreter
//! does: through the module's imports, then user functions, then builtins.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Module, Ref, Rule, RuleHead, BUILTINS};
use regorus::utils::get_path_string;
use regorus::Engine;

/// Builtins that reach the network: never compiled into the gateway.
const NETWORK_BUILTINS: &[&str] = &["http.send", "net.lookup_ip_addr"];

/// A call to a function that neither the bundle nor this build's builtins define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCall {
    /// The module's path in the bundle.
    pub file: String,
    /// 1-based line of the call.
    pub line: usize,
    /// The function as written (`http.send`, `lib.f`).
    pub name: String,
}

impl UnknownCall {
    pub fn message(&self) -> String {
        if NETWORK_BUILTINS.contains(&self.name.as_str()) {
            format!("calls `{}`: network builtins are not available to gateway policies", self.name)
        } else {
            format!("calls `{}`, which is neither a builtin nor a function defined in the bundle", self.name)
        }
    }
}

/// Every call in the engine's modules that resolves to no function, in module order.
pub fn unknown_calls(engine: &mut Engine) -> Vec<UnknownCall> {
    let modules = engine.get_modules().clone();
    let mut functions = BTreeSet::new();
    for m in &modules {
        let Ok(pkg) = get_path_string(&m.package.refr, Some("data")) else { continue };
        for rule in &m.policy {
            let head = match rule.as_ref() {
                Rule::Spec { head: RuleHead::Func { refr, .. }, .. } => refr,
                Rule::Default { refr, args, .. } if !args.is_empty() => refr,
                _ => continue,
            };
            if let Ok(path) = get_path_string(head, Some(&pkg)) {
                functions.insert(path);
            }
        }
    }
    let mut out = Vec::new();
    for m in &modules {
        let Ok(pkg) = get_path_string(&m.package.refr, Some("data")) else { continue };
        let mut checker = Checker { module: m, pkg, imports: imports_of(m), functions: &functions, out: &mut out };
        for rule in &m.policy {
            crate::ast::rule(&mut checker, rule);
        }
    }
    out
}

/// `alias → data.path` for a module's `import data....` lines.
fn imports_of(m: &Module) -> BTreeMap<String, String> {
    let mut imports = BTreeMap::new();
    for imp in &m.imports {
        let Ok(target) = get_path_string(&imp.refr, None) else { continue };
        if !target.starts_with("data.") {
            continue;
        }
        let alias = match &imp.r#as {
            Some(span) => span.text().to_owned(),
            None => target.rsplit('.').next().unwrap_or_default().to_owned(),
        };
        imports.insert(alias, target);
    }
    imports
}

struct Checker<'a> {
    module: &'a Module,
    pkg: String,
    imports: BTreeMap<String, String>,
    functions: &'a BTreeSet<String>,
    out: &'a mut Vec<UnknownCall>,
}

impl Checker<'_> {
    fn known(&self, path: &str) -> bool {
        let (root, rest) = path.split_once('.').map_or((path, ""), |(r, s)| (r, s));
        if let Some(target) = self.imports.get(root) {
            let via_import = if rest.is_empty() { target.clone() } else { format!("{target}.{rest}") };
            if self.functions.contains(&via_import) {
                return true;
            }
        }
        if path.starts_with("data.") {
            return self.functions.contains(path);
        }
        self.functions.contains(&format!("{}.{path}", self.pkg))
            || path == "print"
            || BUILTINS.get(path).is_some()
            || regorus_jwt::BUILTINS.iter().any(|(name, _)| *name == path)
    }
}

impl crate::ast::Visitor for Checker<'_> {
    fn enter(&mut self, e: &Ref<Expr>) -> bool {
        if let Expr::Call { span, fcn, .. } = e.as_ref() {
            if let Ok(path) = get_path_string(fcn, None) {
                if !self.known(&path) {
                    self.out.push(UnknownCall {
                        file: self.module.package.span.source.file().clone(),
                        line: span.line as usize,
                        name: path,
                    });
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(modules: &[(&str, &str)]) -> Vec<(String, usize, String)> {
        let mut engine = Engine::new();
        for (path, src) in modules {
            engine.add_policy(path.to_string(), src.to_string()).unwrap();
        }
        unknown_calls(&mut engine).into_iter().map(|c| (c.file, c.line, c.name)).collect()
    }

    #[test]
    fn finds_unknown_and_network_functions_with_their_lines() {
        let src = "package p\nimport rego.v1\nx if {\n  count([1]) == 1\n  http.send({})\n}\ny := [v | v := nope(1)]\n";
        assert_eq!(
            calls(&[("p.rego", src)]),
            vec![("p.rego".into(), 5, "http.send".into()), ("p.rego".into(), 7, "nope".into())]
        );
    }

    #[test]
    fn resolves_calls_through_packages_imports_and_defaults() {
        let lib = "package lib\nimport rego.v1\nf(x) := x\ndefault g(_) := 1\n";
        let app = "package app\nimport rego.v1\nimport data.lib\nimport data.lib as l\n\
                   h(x) := x\n\
                   a := [lib.f(1), l.g(2), data.lib.f(3), h(4), sprintf(\"%v\", [1]), walk({}), print(1)]\n\
                   b if { every x in [1] { lib.f(x) } }\n\
                   c := f(1)\n";
        assert_eq!(calls(&[("lib.rego", lib), ("app.rego", app)]), vec![("app.rego".into(), 8, "f".into())]);
    }
}
