//! The fuzz targets' contracts (`policy_bundles::fuzzing`), bounded for CI on the stable
//! toolchain: every input kept in `fuzz/corpus/<target>/` is replayed, then a few thousand
//! generated inputs per target (arbitrary bytes, and inputs shaped like what each reader is
//! sent). The unbounded runs are cargo-fuzz's, on nightly: see fuzz/README.md.

use std::path::{Path, PathBuf};

use policy_bundles::fuzzing;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Every file of `fuzz/corpus/<target>/`, in name order.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} is empty", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Replays `target`'s corpus through `check`, naming the file that breaks the contract.
fn replay(target: &str, check: fn(&[u8])) {
    for (path, data) in corpus(target) {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{}: the contract does not hold", path.display());
        }
    }
}

/// Runs `check` on `cases` inputs drawn from `strategy`, without persisting failures (the
/// failing input is printed; a minimized one belongs in the corpus).
fn generated<S: Strategy<Value = Vec<u8>>>(cases: u32, strategy: S, check: fn(&[u8])) {
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, |data| {
        check(&data);
        Ok(())
    }) {
        panic!("{e}");
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Concatenations of `pieces` and of strings from `free` (a regex), up to `max` parts.
fn joined(pieces: &'static [&'static str], free: &'static str, max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![3 => prop::sample::select(pieces).prop_map(str::to_owned), 1 => free];
    prop::collection::vec(piece, 0..max).prop_map(|parts| parts.concat().into_bytes())
}

const PATH_PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    ";",
    ";x=1",
    "%3B",
    "%00",
    "%",
    "%4",
    "%zz",
    "%C0%AE",
    "%E0%80%AE",
    "%EF%BC%8E",
    "%EF%BC%8F",
    "%ef%b9%92",
    "%c3%a9",
    "%C3",
    "%A9",
    "%E2%82%AC",
    "%41",
    "%7e",
    "%25",
    "a",
    "b",
    "~",
    "-",
    "_",
    "admin",
    "\u{e9}",
    "\t",
    " ",
];

/// Strings a path reader is sent: dot segments, escapes (of unreserved characters, slashes,
/// UTF-8, overlong and fullwidth forms), parameters, and stray bytes.
fn path_like() -> impl Strategy<Value = Vec<u8>> {
    joined(PATH_PIECES, "[\\x20-\\x7e]{1,3}|%[0-9a-fA-F]{2}", 24)
}

#[test]
fn canonical_paths_are_idempotent_and_hold_no_dot_segment_for_any_bytes() {
    replay("canon_path", fuzzing::canon_path);
    generated(1500, bytes(48), fuzzing::canon_path);
    generated(3000, path_like(), fuzzing::canon_path);
}

#[test]
fn plain_paths_read_as_rfc3986_remove_dot_segments_after_merging_slashes() {
    // The reference itself, on RFC 3986 5.4's examples.
    assert_eq!(fuzzing::remove_dot_segments("/a/b/c/./../../g"), "/a/g");
    assert_eq!(fuzzing::remove_dot_segments("mid/content=5/../6"), "mid/6");
    assert_eq!(fuzzing::remove_dot_segments("/b/c/d;p/../../../g"), "/g");
    assert_eq!(fuzzing::reference_path("//a//..//b/."), "/b/");
    generated(2000, "/(/|\\.|\\.\\.|[ab]|~|-){0,24}".prop_map(String::into_bytes), fuzzing::canon_path);
}

const HOST_PIECES: &[&str] = &[
    "http://",
    "HTTPS://",
    "/",
    "*",
    "\n",
    "\n",
    "a",
    "B",
    ".",
    "..",
    ":",
    ":80",
    ":443",
    ":0080",
    ":99999",
    "[",
    "]",
    "::1",
    "[::1]",
    "[::FFFF:1.2.3.4]",
    "@",
    "_",
    "-",
    " ",
    "\u{a0}",
    "?",
    "#",
    "%",
    "example.test",
    "xn--bcher-kva",
];

#[test]
fn accepted_hosts_are_lower_case_without_trailing_dot_and_read_back_from_their_authority() {
    replay("canon_host", fuzzing::canon_host);
    generated(1500, bytes(48), fuzzing::canon_host);
    generated(3000, joined(HOST_PIECES, "[a-zA-Z0-9]{1,8}|[\\x20-\\x7e]", 16), fuzzing::canon_host);
}

const QUERY_PIECES: &[&str] = &[
    "_method",
    "access_token",
    "method",
    "token",
    "access",
    "=",
    "=",
    "&",
    "&",
    ";",
    "%5F",
    "%5f",
    "_",
    ".",
    "+",
    "%20",
    " ",
    "[",
    "]",
    "%5B",
    "%5D",
    "[]",
    "%00",
    "%",
    "%zz",
    "%C3%A9",
    "%C3",
    "%FF",
    "\u{e9}",
    "DELETE",
    "delete",
    "GeT",
];

#[test]
fn override_and_token_parameters_are_refused_however_spelled_and_ambiguous_queries_named() {
    replay("canon_query", fuzzing::canon_query);
    generated(1500, bytes(48), fuzzing::canon_query);
    generated(3000, joined(QUERY_PIECES, "[a-z0-9]{1,4}|[\\x20-\\x7e]", 12), fuzzing::canon_query);
}

#[test]
fn php_reads_these_query_names_as_override_names() {
    assert_eq!(fuzzing::php_name(".method"), "_method");
    assert_eq!(fuzzing::php_name("  [method"), "_method");
    assert_eq!(fuzzing::php_name("access token"), "access_token");
    assert_eq!(fuzzing::php_name("_method[x]"), "_method[]");
}

const CREDENTIAL_PIECES: &[&str] = &[
    "Bearer",
    "bearer",
    "BEARER",
    "Basic",
    "Negotiate",
    " ",
    " ",
    "  ",
    "\t",
    "\u{a0}",
    ":",
    ",",
    "\"",
    "=",
    "==",
    "abc",
    "eyJhbGciOiJFUzI1NiJ9",
    ".",
    "+/",
    "-_~",
    "\0",
    "\x0b",
];

#[test]
fn only_bearer_space_token68_is_a_bearer_token_and_no_bearer_spelling_reads_as_another_scheme() {
    replay("credentials", fuzzing::credentials);
    generated(1500, bytes(32), fuzzing::credentials);
    generated(3000, joined(CREDENTIAL_PIECES, "[\\x20-\\x7e]|[a-zA-Z0-9]{1,6}", 8), fuzzing::credentials);
}

#[test]
fn bundle_archives_are_read_within_their_limits_or_refused_without_panicking() {
    replay("bundle_tar_gz", fuzzing::bundle_tar_gz);
    generated(1000, bytes(256), fuzzing::bundle_tar_gz);
    generated(1000, bytes(256).prop_map(|b| [&[0x1f, 0x8b, 8, 0][..], &b].concat()), fuzzing::bundle_tar_gz);
}

const BUNDLE_PATHS: &[&str] = &[
    ".manifest",
    "data.json",
    "data.yaml",
    "gateway/data.yaml",
    "gateway/data.json",
    "a/data.json",
    "a/b/data.yml",
    "p.rego",
    "a/q.rego",
    "tests/t_test.rego",
    "tests/data.yaml",
    "../x.rego",
    "/abs.rego",
    "C:/x",
    "a\\b",
    "./a/./data.json",
    "\u{1}link",
    "\u{2}hard",
    "\u{3}dir/",
    "\u{4}fifo",
];

const BUNDLE_CONTENTS: &[&str] = &[
    "{}", "{\"a\": {\"b\": [1, 2]}}", "[1]", "{\"revision\": \"r\", \"roots\": [\"a\", \"gateway\"]}",
    "{\"rego_version\": 0, \"file_rego_versions\": {\"*.rego\": 1, \"**/q.rego\": 0}}", "{\"wasm\": [{}]}", "a: 1\n",
    "a: &x [1]\nb: *x\n", "routes: []\n", "routes:\n  - name: r\n    match: { path_prefix: /r }\n    upstream: u\n    policy: data.p.allow\nupstreams:\n  u: { targets: [\"127.0.0.1:9\"] }\n",
    "package p\n", "package p\nallow if input.request.method == \"GET\"\n", "package p\nallow { true }\n",
    "package a.q\ndefault allow := false\n", "package tenants[\"x\"]\nallow := true\n", "p.rego", "",
];

/// Bundles as (path, contents) pairs in the `\0`-separated form `fuzzing::tar_gz_of` reads.
fn bundle_like() -> impl Strategy<Value = Vec<u8>> {
    let path = prop_oneof![4 => prop::sample::select(BUNDLE_PATHS).prop_map(str::to_owned), 1 => "[a-z./]{1,12}"];
    let contents =
        prop_oneof![4 => prop::sample::select(BUNDLE_CONTENTS).prop_map(str::to_owned), 1 => "[\\x20-\\x7e\n]{0,40}"];
    prop::collection::vec((path, contents), 0..5)
        .prop_map(|files| files.into_iter().flat_map(|(p, c)| [p, c]).collect::<Vec<_>>().join("\0").into_bytes())
}

#[test]
fn bundles_built_from_any_files_are_read_and_compiled_or_refused_without_panicking() {
    replay("bundle_files", fuzzing::bundle_files);
    generated(300, bytes(128), fuzzing::bundle_files);
    generated(1200, bundle_like(), fuzzing::bundle_files);
}

/// Found by fuzzing (fuzz/README.md), fixed: characters whose NFKC form holds `..` or `/` passed
/// `canon::path`, so a normalizing backend read `/public/︰/admin` as `/admin`. Every
/// character of the fuzzing model's list is refused now.
#[test]
fn nfkc_confusables_of_dot_and_slash_are_refused() {
    use http_canon::{path, PathRules, Refusal};
    for raw in ["/public/%EF%B8%B0/admin", "/%E2%84%80ontrol", "/x/%E2%92%88", "/%EF%B8%99"] {
        assert_eq!(path(raw, PathRules::default()), Err(Refusal::Confusable), "{raw}");
    }
    for c in policy_bundles::fuzzing::CONFUSABLE {
        let raw: String = c.to_string().bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(path(&format!("/{raw}"), PathRules::default()), Err(Refusal::Confusable), "{c:?}");
    }
}

/// Found by fuzzing (fuzz/README.md), fixed: PHP reads ` _method`, `.method` and `[method` (and
/// `access.token`) as `_method` (`access_token`), so Laravel and Symfony take a method override
/// that `canon::query` let through; it reads names as PHP does now.
#[test]
fn php_spellings_of_override_and_token_parameters_are_refused() {
    use http_canon::query;
    for q in [" _method=DELETE", "+_method=DELETE", "%20%20_method=DELETE", ".method=DELETE", "[method=DELETE"] {
        assert!(query(q).is_err(), "{q}");
    }
    for q in ["access.token=x", "access+token=x", "access[token=x", &format!("{}_method=PUT", "+".repeat(40))] {
        assert!(query(q).is_err(), "{q}");
    }
}

/// Found while fuzzing (fuzz/README.md), fixed: `file_rego_versions` globs were matched by backtracking,
/// exponential in the number of `*`, so a 175-byte bundle holds the reader for hours
/// (`Bundle::from_files` → `Manifest::rego_v0` → `glob_match`); each (pattern, path) position
/// is tried once now. Bounded here at 5 s on a thread of its own.
#[test]
fn a_manifest_glob_is_matched_in_bounded_time() {
    let pattern = format!("{}*b", "*a".repeat(12));
    let manifest = format!("{{\"file_rego_versions\": {{\"{pattern}\": 0}}}}");
    let mut files = policy_bundles::archive::Files::new();
    files.insert(".manifest".into(), manifest.into_bytes());
    files.insert(format!("{}.rego", "a".repeat(60)), b"package p\n".to_vec());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(policy_bundles::Bundle::from_files(files).is_ok()));
    let read = rx.recv_timeout(std::time::Duration::from_secs(5));
    assert!(read.is_ok(), "reading a bundle of two small files took more than 5 s");
}
