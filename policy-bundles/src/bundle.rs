//! A bundle's contents, parsed and validated: manifest, Rego modules, the merged data document
//! and the gateway settings found at `data.gateway`.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::archive::{self, Files, Limits};
use crate::error::{BundleError, BundleErrors, ErrorKind};
use crate::settings::GatewaySettings;

pub const MANIFEST: &str = ".manifest";
pub const SIGNATURES: &str = ".signatures.json";
/// Folder of decision cases and other author material that the gateway ignores.
pub const TESTS_DIR: &str = "tests/";

/// `.manifest`, as in OPA.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub revision: String,
    /// Data and packages must live under one of these paths (`a/b`); absent means everything.
    #[serde(default)]
    pub roots: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Option<Json>,
    /// The Rego version of the bundle's modules, as OPA writes it: 0 (`allow { ... }`) or 1 (the
    /// default: `if` and `contains` required).
    #[serde(default)]
    pub rego_version: Option<u8>,
    /// Per-file Rego versions over `rego_version`: a path (from the bundle's root, with or
    /// without a leading `/`) or a glob of one (`*` within a folder, `**` across folders).
    #[serde(default)]
    pub file_rego_versions: Option<std::collections::BTreeMap<String, u8>>,
    /// Wasm modules (`opa build -t wasm`): the gateway has no Wasm engine, so a bundle listing any
    /// is refused; an empty list is accepted.
    #[serde(default)]
    pub wasm: Option<Vec<Json>>,
}

impl Manifest {
    /// Whether a module is Rego v0: its `file_rego_versions` entry (the longest matching pattern
    /// wins), else the manifest's `rego_version`, else v1.
    pub fn rego_v0(&self, path: &str) -> bool {
        // A pattern past MAX_GLOB is refused with the manifest (`read_manifest`) and never tried.
        let per_file = self.file_rego_versions.iter().flatten().filter(|(pattern, _)| {
            pattern.len() <= MAX_GLOB
                && glob_match(pattern.trim_start_matches('/').as_bytes(), path.trim_start_matches('/').as_bytes())
        });
        match per_file.max_by_key(|(pattern, _)| pattern.len()) {
            Some((_, v)) => *v == 0,
            None => self.rego_version == Some(0),
        }
    }
}

/// The longest `file_rego_versions` pattern accepted: a path, not a program ([`glob_match`]'s
/// work grows with the pattern's length times the path's).
const MAX_GLOB: usize = 1024;

/// `*` matches within one path segment, `**` across segments, anything else itself.
///
/// Each (pattern position, text position) is tried at most once: a pattern from a hostile
/// manifest (`*a*a*a*a*a*a*a*a*a*a*b` against a long name) took exponential time when every
/// split was tried again from each star.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    if !pattern.contains(&b'*') {
        return pattern == text;
    }
    let mut failed = Glob { pattern, text, width: text.len() + 1, failed: Vec::new() };
    failed.failed.resize((pattern.len() + 1) * failed.width, false);
    failed.at(0, 0)
}

/// [`glob_match`]'s state: which (pattern, text) positions are known not to match.
struct Glob<'a> {
    pattern: &'a [u8],
    text: &'a [u8],
    width: usize,
    failed: Vec<bool>,
}

impl Glob<'_> {
    fn at(&mut self, p: usize, t: usize) -> bool {
        if self.failed[p * self.width + t] {
            return false;
        }
        let (pattern, text) = (self.pattern, self.text);
        let matched = match &pattern[p..] {
            [] => t == text.len(),
            [b'*', b'*', rest @ ..] => {
                let next = if rest.first() == Some(&b'/') { p + 3 } else { p + 2 };
                (t..=text.len()).any(|i| self.at(next, i))
            }
            [b'*', ..] => {
                let seg = text[t..].iter().position(|&c| c == b'/').map_or(text.len(), |s| t + s);
                (t..=seg).any(|i| self.at(p + 1, i))
            }
            [c, ..] => text.get(t) == Some(c) && self.at(p + 1, t + 1),
        };
        if !matched {
            self.failed[p * self.width + t] = true;
        }
        matched
    }
}

/// A Rego module of the bundle.
#[derive(Debug, Clone)]
pub struct Module {
    pub path: String,
    pub source: String,
    /// `data.x.y` from the module's `package x.y` line.
    pub package: String,
    /// Parsed as Rego v0 ([`Manifest::rego_v0`]).
    pub rego_v0: bool,
}

/// A bundle read and checked for everything that does not need the Rego compiler.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub modules: Vec<Module>,
    /// All data documents merged, without `gateway` removed (policies may read it).
    pub data: Json,
    pub settings: GatewaySettings,
    /// The file the settings came from and its text, for line numbers in later checks.
    pub settings_source: Option<(String, String)>,
    pub files: Files,
}

/// The SHA-256 of a tarball, lowercase hex: a bundle's identity and ETag.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Bundle {
    /// Reads a `.tar.gz` file or a directory.
    pub fn from_path(path: &Path, limits: &Limits) -> Result<Bundle, BundleErrors> {
        let files = if path.is_dir() {
            archive::read_dir(path, limits)?
        } else {
            let bytes = std::fs::read(path).map_err(|e| {
                BundleError::new(ErrorKind::Archive, Some(path.display().to_string()), format!("cannot read: {e}"))
            })?;
            archive::read_tar_gz(&bytes, limits)?
        };
        Bundle::from_files(files)
    }

    pub fn from_tar_gz(bytes: &[u8], limits: &Limits) -> Result<Bundle, BundleErrors> {
        Bundle::from_files(archive::read_tar_gz(bytes, limits)?)
    }

    /// Parses and validates the files; collects every problem before failing.
    pub fn from_files(files: Files) -> Result<Bundle, BundleErrors> {
        let mut errors = Vec::new();
        let manifest = read_manifest(&files, &mut errors);
        let roots: Vec<Vec<String>> =
            manifest.roots.clone().unwrap_or_else(|| vec![String::new()]).iter().map(|r| split_path(r)).collect();
        let mut modules = Vec::new();
        let mut data = Json::Object(Map::new());
        let mut settings_source = None;
        for (path, bytes) in &files {
            let name = path.rsplit('/').next().unwrap_or(path);
            if path.ends_with(".rego") {
                match read_module(path, bytes, &roots, &manifest) {
                    Ok((module, outside)) => {
                        errors.extend(outside);
                        modules.push(module);
                    }
                    Err(e) => errors.push(e),
                }
            } else if (name == "data.json" || name == "data.yaml" || name == "data.yml") && !path.starts_with(TESTS_DIR)
            {
                let dir = path.strip_suffix(name).unwrap_or("").trim_end_matches('/');
                let base = split_path(dir);
                let doc = match read_data(path, bytes, &base, &roots, &manifest) {
                    Ok(doc) => doc,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                if base.len() == 1 && base[0] == "gateway" {
                    settings_source = Some((path.clone(), String::from_utf8_lossy(bytes).into_owned()));
                }
                if let Err(msg) = merge_at(&mut data, &base, doc) {
                    errors.push(BundleError::new(ErrorKind::Roots, Some(path.clone()), msg));
                }
            }
        }
        let settings = match data.get("gateway") {
            None => GatewaySettings::default(),
            Some(v) => parse_settings(v, settings_source.as_ref()).unwrap_or_else(|e| {
                errors.push(e);
                GatewaySettings::default()
            }),
        };
        if errors.is_empty() {
            Ok(Bundle { manifest, modules, data, settings, settings_source, files })
        } else {
            Err(BundleErrors(errors))
        }
    }

    /// The line of the `nth` (from 0) route named `name` in the settings file: a line reading
    /// `name: <name>` (quoted or not, after an optional `- `).
    pub fn route_line(&self, name: &str, nth: usize) -> (Option<String>, Option<usize>) {
        let Some((file, text)) = &self.settings_source else { return (Some("data.gateway".into()), None) };
        let is_route = |l: &str| {
            let l = l.trim_start();
            let l = l.strip_prefix("- ").unwrap_or(l).trim_start();
            let value = l.strip_prefix("name:").map(|v| v.split(" #").next().unwrap_or("").trim());
            value.map(|v| v.trim_matches(['"', '\''])) == Some(name)
        };
        let line = text.lines().enumerate().filter(|(_, l)| is_route(l)).nth(nth).map(|(i, _)| i + 1);
        (Some(file.clone()), line)
    }

    /// The line of `needle` in the settings file, for errors about a setting.
    pub fn settings_line(&self, needle: &str) -> (Option<String>, Option<usize>) {
        match &self.settings_source {
            Some((file, text)) => (Some(file.clone()), line_of(text, needle)),
            None => (Some("data.gateway".into()), None),
        }
    }
}

/// `.manifest`, or the default one when there is none (or, with an error, when it is invalid).
fn read_manifest(files: &Files, errors: &mut Vec<BundleError>) -> Manifest {
    let Some(bytes) = files.get(MANIFEST) else { return Manifest::default() };
    let manifest = serde_json::from_slice::<Manifest>(bytes).unwrap_or_else(|e| {
        errors.push(
            BundleError::new(ErrorKind::Syntax, Some(MANIFEST.into()), format!("invalid manifest: {e}"))
                .at_line(Some(e.line())),
        );
        Manifest::default()
    });
    let mut refuse = |msg: String| errors.push(BundleError::new(ErrorKind::Syntax, Some(MANIFEST.into()), msg));
    let versions = manifest.rego_version.iter().map(|v| ("rego_version".to_owned(), *v));
    let per_file =
        manifest.file_rego_versions.iter().flatten().map(|(k, v)| (format!("file_rego_versions[{k:?}]"), *v));
    for (what, v) in versions.chain(per_file) {
        if v > 1 {
            refuse(format!("{what} is {v}: Rego versions are 0 and 1"));
        }
    }
    for pattern in manifest.file_rego_versions.iter().flatten().map(|(k, _)| k) {
        if pattern.len() > MAX_GLOB {
            refuse(format!(
                "file_rego_versions: a pattern of {} bytes (`{}...`); patterns are paths of at most {MAX_GLOB} bytes",
                pattern.len(),
                pattern.chars().take(32).collect::<String>()
            ));
        }
    }
    if manifest.wasm.as_ref().is_some_and(|w| !w.is_empty()) {
        refuse(
            "the manifest lists `wasm` modules: this gateway evaluates Rego, not Wasm; build without `-t wasm`".into(),
        );
    }
    manifest
}

/// A Rego module and, beside it, the error of a package outside the manifest's roots (the
/// module is still read, so that later checks can name its rules).
fn read_module(
    path: &str,
    bytes: &[u8],
    roots: &[Vec<String>],
    manifest: &Manifest,
) -> Result<(Module, Option<BundleError>), BundleError> {
    let source = std::str::from_utf8(bytes)
        .map_err(|_| BundleError::new(ErrorKind::Rego, Some(path.to_owned()), "module is not UTF-8"))?
        .to_owned();
    let (package, line) = package_of(&source)
        .ok_or_else(|| BundleError::new(ErrorKind::Rego, Some(path.to_owned()), "module has no `package` line"))?;
    // `package tenants["acme-corp"]` is [tenants, acme-corp], as Rego reads it.
    let pkg_path: Vec<String> = crate::input_reads::rule_path(&format!("data.{package}"))
        .map(|p| p[1..].to_vec())
        .unwrap_or_else(|| package.split('.').map(str::to_owned).collect());
    let outside = (!path.starts_with(TESTS_DIR) && !under_roots(&pkg_path, roots)).then(|| {
        BundleError::new(
            ErrorKind::Roots,
            Some(path.to_owned()),
            format!("package `{package}` is outside the manifest's roots {:?}", manifest.roots),
        )
        .at_line(Some(line))
    });
    let rego_v0 = manifest.rego_v0(path);
    Ok((Module { path: path.to_owned(), source, package: format!("data.{package}"), rego_v0 }, outside))
}

/// A data document to be merged at `base` (its folder), every leaf of it under a root.
fn read_data(
    path: &str,
    bytes: &[u8],
    base: &[String],
    roots: &[Vec<String>],
    manifest: &Manifest,
) -> Result<Json, BundleError> {
    let doc = parse_data(path, bytes)?;
    let mut outside = Vec::new();
    collect_outside(base, &doc, roots, &mut outside);
    match outside.first() {
        Some(p) => Err(BundleError::new(
            ErrorKind::Roots,
            Some(path.to_owned()),
            format!("data at `{}` is outside the manifest's roots {:?}", p.join("."), manifest.roots),
        )),
        None => Ok(doc),
    }
}

fn parse_settings(v: &Json, source: Option<&(String, String)>) -> Result<GatewaySettings, BundleError> {
    // Parse the source text first where there is one: its errors carry line numbers.
    if let Some((file, text)) = source {
        let parsed: Result<GatewaySettings, (String, Option<usize>)> = if file.ends_with(".json") {
            serde_json::from_str(text).map_err(|e| (e.to_string(), Some(e.line())))
        } else {
            yaml_serde::from_str(text).map_err(|e| {
                let line = e.location().map(|l| l.line());
                (e.to_string(), line)
            })
        };
        if let Err((msg, line)) = parsed {
            return Err(BundleError::new(
                ErrorKind::Settings,
                Some(file.clone()),
                format!("invalid gateway settings: {msg}"),
            )
            .at_line(line));
        }
    }
    GatewaySettings::deserialize(v).map_err(|e| {
        BundleError::new(
            ErrorKind::Settings,
            Some(source.map(|s| s.0.clone()).unwrap_or_else(|| "data.gateway".into())),
            format!("invalid gateway settings: {e}"),
        )
    })
}

fn parse_data(path: &str, bytes: &[u8]) -> Result<Json, BundleError> {
    let doc: Json = if path.ends_with(".json") {
        serde_json::from_slice(bytes).map_err(|e| {
            BundleError::new(ErrorKind::Syntax, Some(path.to_owned()), format!("invalid JSON: {e}"))
                .at_line(Some(e.line()))
        })?
    } else {
        yaml_serde::from_slice(bytes).map_err(|e| {
            let line = e.location().map(|l| l.line());
            BundleError::new(ErrorKind::Syntax, Some(path.to_owned()), format!("invalid YAML: {e}")).at_line(line)
        })?
    };
    if !doc.is_object() {
        return Err(BundleError::new(ErrorKind::Syntax, Some(path.to_owned()), "a data document must be an object"));
    }
    Ok(doc)
}

fn split_path(p: &str) -> Vec<String> {
    p.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn under_roots(path: &[String], roots: &[Vec<String>]) -> bool {
    roots.iter().any(|r| path.len() >= r.len() && path[..r.len()] == r[..])
}

/// A path is acceptable when it is under a root; an object may also be an ancestor of roots,
/// in which case its children are checked one by one.
fn collect_outside(path: &[String], v: &Json, roots: &[Vec<String>], out: &mut Vec<Vec<String>>) {
    if under_roots(path, roots) {
        return;
    }
    let is_ancestor = roots.iter().any(|r| r.len() > path.len() && r[..path.len()] == path[..]);
    match v {
        Json::Object(m) if is_ancestor => {
            for (k, child) in m {
                let mut p = path.to_vec();
                p.push(k.clone());
                collect_outside(&p, child, roots, out);
            }
        }
        _ => out.push(path.to_vec()),
    }
}

fn merge_at(root: &mut Json, path: &[String], doc: Json) -> Result<(), String> {
    let mut cur = root;
    for seg in path {
        let obj = cur.as_object_mut().ok_or_else(|| format!("data at `{seg}` collides with a non-object value"))?;
        cur = obj.entry(seg.clone()).or_insert_with(|| Json::Object(Map::new()));
    }
    merge(cur, doc, &path.join("."))
}

fn merge(dst: &mut Json, src: Json, at: &str) -> Result<(), String> {
    match (dst, src) {
        (Json::Object(d), Json::Object(s)) => {
            for (k, v) in s {
                let here = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match d.get_mut(&k) {
                    Some(existing) => merge(existing, v, &here)?,
                    None => {
                        d.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        _ => Err(format!("data at `{at}` is defined by more than one document")),
    }
}

/// The package of a module and its 1-based line, read from its `package` line.
pub fn package_of(source: &str) -> Option<(String, usize)> {
    for (i, line) in source.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("package ") {
            let pkg = rest.split('#').next().unwrap_or("").trim();
            return Some((pkg.to_owned(), i + 1));
        }
    }
    None
}

/// The 1-based line of the first occurrence of `needle`.
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_segments() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("a/*.rego", "a/x.rego"));
        assert!(!m("a/*.rego", "a/b/x.rego"));
        assert!(m("a/**/x.rego", "a/b/c/x.rego"));
        assert!(m("a/**", "a/b/c"));
        assert!(m("**/x.rego", "x.rego"));
        assert!(!m("a/*", "b/x"));
        assert!(m("exact.rego", "exact.rego"));
    }

    #[test]
    fn a_hostile_pattern_of_many_stars_is_matched_without_backtracking_forever() {
        // Exponential before: every split was tried again from each star.
        let name = format!("{}.rego", "a".repeat(60));
        assert!(!glob_match(b"*a*a*a*a*a*a*a*a*a*a*a*a*b", name.as_bytes()));
        assert!(!glob_match(b"**a**a**a**a**a**a**a**a**a**a**b", format!("x/{name}").as_bytes()));
        assert!(glob_match(b"*a*a*a*a*a*a*a*a*a*a*a*a*.rego", name.as_bytes()));
    }

    #[test]
    fn an_oversized_pattern_is_refused_and_never_matched() {
        let pattern = format!("{}*", "a".repeat(MAX_GLOB));
        let manifest =
            Manifest { file_rego_versions: Some([(pattern, 0)].into_iter().collect()), ..Manifest::default() };
        assert!(!manifest.rego_v0(&format!("{}.rego", "a".repeat(MAX_GLOB))));
    }
}
