//! Every class of bundle the gateway must refuse, each refused with the right kind of error and
//! a message naming the file (and the line, where there is one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, Instant};

use policy_bundles::archive::{self, Files};
use policy_bundles::{Bundle, BundleError, BundleErrors, ErrorKind, Limits, Snapshot};

// ---------------------------------------------------------------------------------------------
// A per-thread allocation meter, so the bomb test can show it never inflates the whole bomb.

struct Metered;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + size;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static METERED: Metered = Metered;

/// Runs `f` and returns its result with the most bytes this thread held at once during it.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get).saturating_sub(base))
}

// ---------------------------------------------------------------------------------------------
// Bundles built in memory.

const MANIFEST: &str = r#"{"roots": ["http", "gateway"]}"#;

const SETTINGS: &str = "\
upstreams:
  backend:
    targets: [\"127.0.0.1:9100\"]
routes:
  - name: app
    match: { path_prefix: /app }
    upstream: backend
    policy: data.http.app.allow
";

const APP: &str =
    "package http.app\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.request.method == \"GET\"\n";

fn valid_files() -> Files {
    let mut f = Files::new();
    f.insert(".manifest".into(), MANIFEST.into());
    f.insert("gateway/data.yaml".into(), SETTINGS.into());
    f.insert("http/app.rego".into(), APP.into());
    f
}

fn with(mut files: Files, path: &str, content: &str) -> Files {
    files.insert(path.into(), content.as_bytes().to_vec());
    files
}

/// Reads and compiles, as the gateway does; the bundle must be refused.
fn refused(files: Files) -> BundleErrors {
    match Bundle::from_files(files) {
        Err(e) => e,
        Ok(bundle) => match Snapshot::compile(&bundle) {
            Err(e) => e,
            Ok(s) => panic!("bundle was accepted: {s:?}"),
        },
    }
}

/// The one error about `file`, checked for kind and (when given) line.
fn error_about(errs: &BundleErrors, kind: ErrorKind, file: &str, line: Option<usize>) -> BundleError {
    let e = errs
        .0
        .iter()
        .find(|e| e.file.as_deref() == Some(file))
        .unwrap_or_else(|| panic!("no error names `{file}`: {errs}"))
        .clone();
    assert_eq!(e.kind, kind, "wrong kind: {e}");
    if line.is_some() {
        assert_eq!(e.line, line, "wrong line: {e}");
    }
    let shown = e.to_string();
    assert!(shown.starts_with(file), "the message does not start with the file: {shown}");
    if let Some(l) = line {
        assert!(shown.starts_with(&format!("{file}:{l}:")), "the message does not name the line: {shown}");
    }
    e
}

#[test]
fn the_base_bundle_of_these_tests_is_accepted() {
    let bundle = Bundle::from_files(valid_files()).unwrap();
    Snapshot::compile(&bundle).unwrap();
    let bytes = archive::write_tar_gz(&valid_files()).unwrap();
    policy_bundles::compile_tar_gz(&bytes, &Limits::default()).unwrap();
}

#[test]
fn refuses_rego_that_does_not_compile_naming_file_and_line() {
    let bad = "package http.app\n\nimport rego.v1\n\nallow if {\n\tinput.x ==\n}\n";
    let errs = refused(with(valid_files(), "http/app.rego", bad));
    let e = error_about(&errs, ErrorKind::Rego, "http/app.rego", None);
    let line = e.line.expect("a parse error has a line");
    assert!((6..=7).contains(&line), "line {line}: {e}");
}

#[test]
fn refuses_rego_with_an_unknown_function_naming_file_and_line() {
    let bad = "package http.app\n\nimport rego.v1\n\nallow if {\n\tno_such_function(input.x)\n}\n";
    let errs = refused(with(valid_files(), "http/app.rego", bad));
    error_about(&errs, ErrorKind::Rego, "http/app.rego", Some(6));
}

#[test]
fn refuses_bad_json_data_naming_file_and_line() {
    let errs = refused(with(valid_files(), "http/data.json", "{\n  \"a\": 1,\n  \"b\": \n}\n"));
    let e = error_about(&errs, ErrorKind::Syntax, "http/data.json", Some(4));
    assert!(e.message.contains("JSON"), "{e}");
}

#[test]
fn refuses_bad_yaml_data_naming_file_and_line() {
    let errs = refused(with(valid_files(), "http/data.yaml", "a: 1\nb: [1, 2\nc: 3\n"));
    let e = error_about(&errs, ErrorKind::Syntax, "http/data.yaml", None);
    assert!(e.line.is_some_and(|l| (2..=4).contains(&l)), "{e}");
    assert!(e.message.contains("YAML"), "{e}");
}

#[test]
fn refuses_data_outside_the_manifest_roots() {
    let errs = refused(with(valid_files(), "other/data.json", "{\"x\": 1}"));
    let e = error_about(&errs, ErrorKind::Roots, "other/data.json", None);
    assert!(e.message.contains("other"), "{e}");
    // A root document reaching outside the roots is refused too.
    let errs = refused(with(valid_files(), "data.json", "{\"http\": {\"ok\": 1}, \"secrets\": {\"x\": 1}}"));
    let e = error_about(&errs, ErrorKind::Roots, "data.json", None);
    assert!(e.message.contains("secrets"), "{e}");
}

#[test]
fn refuses_a_package_outside_the_manifest_roots_naming_its_line() {
    let errs = refused(with(valid_files(), "http/other.rego", "# elsewhere\npackage other.place\n\nx := 1\n"));
    let e = error_about(&errs, ErrorKind::Roots, "http/other.rego", Some(2));
    assert!(e.message.contains("other.place"), "{e}");
}

#[test]
fn test_modules_are_exempt_from_the_roots() {
    let files = with(valid_files(), "tests/app_test.rego", "package app_test\n\nimport rego.v1\n\ntest_x if true\n");
    Snapshot::compile(&Bundle::from_files(files).unwrap()).unwrap();
}

#[test]
fn refuses_a_route_naming_a_missing_upstream() {
    let settings = SETTINGS.replace("upstream: backend", "upstream: nowhere");
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", Some(5));
    assert!(e.message.contains("nowhere"), "{e}");
}

#[test]
fn refuses_a_route_naming_a_rule_no_module_defines() {
    let settings = SETTINGS.replace("data.http.app.allow", "data.http.app.decision");
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", Some(8));
    assert!(e.message.contains("data.http.app.decision"), "{e}");
    // A rule in a package no module declares.
    let settings = SETTINGS.replace("data.http.app.allow", "data.http.nothing.allow");
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", Some(8));
}

#[test]
fn a_rule_written_with_a_ref_head_or_an_indented_head_is_found() {
    let ref_head = "package http\n\nimport rego.v1\n\napp.allow if input.request.method == \"GET\"\n";
    let files = with(valid_files(), "http/app.rego", ref_head);
    Snapshot::compile(&Bundle::from_files(files).unwrap()).unwrap();
    let indented = "package http.app\n\nimport rego.v1\n\n  allow if input.request.method == \"GET\"\n";
    let files = with(valid_files(), "http/app.rego", indented);
    Snapshot::compile(&Bundle::from_files(files).unwrap()).unwrap();
}

#[test]
fn refuses_duplicate_route_names_naming_the_duplicate() {
    let settings = format!(
        "{SETTINGS}  - name: app\n    match: {{ path_prefix: /other }}\n    upstream: backend\n    policy: data.http.app.allow\n"
    );
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", Some(9));
    assert!(e.message.contains("duplicate"), "{e}");
}

#[test]
fn refuses_an_unknown_gateway_settings_key_naming_its_line() {
    let settings = SETTINGS.replace("    upstream: backend\n", "    upstream: backend\n    timeout: 5s\n");
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", Some(8));
    assert!(e.message.contains("timeout"), "{e}");
}

#[test]
fn refuses_modules_using_http_send_because_network_builtins_are_not_compiled_in() {
    let bad = "package http.app\n\nimport rego.v1\n\nallow if {\n\tr := http.send({\"method\": \"GET\", \"url\": \"http://example.com\"})\n\tr.status_code == 200\n}\n";
    let errs = refused(with(valid_files(), "http/app.rego", bad));
    let e = error_about(&errs, ErrorKind::Rego, "http/app.rego", Some(6));
    assert!(e.message.contains("http.send"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Hostile archives, written by hand so that nothing sanitizes them on the way in.

use test_support::archives::{file, raw_entry, tar_gz};

/// The entries of the valid test bundle.
fn valid_entries() -> Vec<test_support::archives::Entry> {
    test_support::archives::entries(&valid_files())
}

fn archive_refused(bytes: &[u8], limits: &Limits) -> BundleErrors {
    match Bundle::from_tar_gz(bytes, limits) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Archive, "{e}");
            e
        }
        Ok(b) => panic!("archive was accepted with files {:?}", b.files.keys().collect::<Vec<_>>()),
    }
}

fn archive_error_about(bytes: &[u8], limits: &Limits, file: &str, needle: &str) {
    let errs = archive_refused(bytes, limits);
    let e = error_about(&errs, ErrorKind::Archive, file, None);
    assert!(e.message.contains(needle), "expected `{needle}` in: {e}");
}

#[test]
fn a_hand_built_archive_of_the_valid_bundle_is_accepted() {
    let bytes = tar_gz(&valid_entries());
    let bundle = Bundle::from_tar_gz(&bytes, &Limits::default()).unwrap();
    Snapshot::compile(&bundle).unwrap();
}

#[test]
fn refuses_path_traversal() {
    let mut entries = valid_entries();
    entries.push(file("../x.rego", b"package http.x\n"));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "../x.rego", "traversal");
    let mut entries = valid_entries();
    entries.push(file("http/../../x.rego", b"package http.x\n"));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "http/../../x.rego", "traversal");
}

#[test]
fn refuses_absolute_paths() {
    let mut entries = valid_entries();
    entries.push(file("/etc/x.rego", b"package http.x\n"));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "/etc/x.rego", "absolute");
}

#[test]
fn refuses_symlink_entries() {
    let mut entries = valid_entries();
    entries.push(raw_entry("http/link.rego", tar::EntryType::Symlink, b"", Some("/etc/passwd")));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "http/link.rego", "links");
}

#[test]
fn refuses_hard_link_entries() {
    let mut entries = valid_entries();
    entries.push(raw_entry("http/link.rego", tar::EntryType::Link, b"", Some("http/app.rego")));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "http/link.rego", "links");
}

#[test]
fn refuses_special_entries() {
    let mut entries = valid_entries();
    entries.push(raw_entry("http/fifo", tar::EntryType::Fifo, b"", None));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "http/fifo", "not allowed");
}

#[test]
fn refuses_duplicate_files() {
    let mut entries = valid_entries();
    entries.push(file("http/app.rego", b"package http.app\n\nallow := true\n"));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "http/app.rego", "duplicate");
    // The same file written two ways is still a duplicate.
    let mut entries = valid_entries();
    entries.push(file("./http/app.rego", b"package http.app\n\nallow := true\n"));
    archive_error_about(&tar_gz(&entries), &Limits::default(), "http/app.rego", "duplicate");
}

#[test]
fn refuses_a_file_over_the_per_file_limit() {
    let limits = Limits { max_file_bytes: 4096, ..Limits::default() };
    let mut entries = valid_entries();
    entries.push(file("http/big/data.json", &vec![b' '; 5000]));
    archive_error_about(&tar_gz(&entries), &limits, "http/big/data.json", "per-file limit");
}

#[test]
fn refuses_an_archive_over_the_archive_limit() {
    let bytes = tar_gz(&valid_entries());
    let limits = Limits { max_archive_bytes: bytes.len() as u64 - 1, ..Limits::default() };
    let errs = archive_refused(&bytes, &limits);
    assert!(errs.0[0].message.contains("over the limit"), "{errs}");
    let limits = Limits { max_archive_bytes: bytes.len() as u64, ..Limits::default() };
    Bundle::from_tar_gz(&bytes, &limits).unwrap();
}

/// 50 MiB of zeros as one file: about 50 KiB compressed.
fn bomb_of_one_file() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut b = tar::Builder::new(gz);
    for (h, data) in valid_entries() {
        b.append(&h, data.as_slice()).unwrap();
    }
    let (h, _) = raw_entry("http/bomb/data.json", tar::EntryType::Regular, b"", None);
    let mut h = h;
    h.set_size(50 << 20);
    h.set_cksum();
    b.append(&h, std::io::repeat(0).take_exact(50 << 20)).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// 50 files of 1 MiB of zeros each.
fn bomb_of_many_files() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut b = tar::Builder::new(gz);
    let zeros = vec![0u8; 1 << 20];
    for i in 0..50 {
        let (h, _) = file(&format!("http/bomb{i}/data.json"), &zeros);
        b.append(&h, zeros.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

#[test]
fn refuses_a_decompression_bomb_fast_without_inflating_it() {
    let limits = Limits { max_total_bytes: 8 << 20, max_file_bytes: 64 << 20, ..Limits::default() };
    for (what, bomb, file) in [
        ("one file", bomb_of_one_file(), "http/bomb/data.json"),
        ("many files", bomb_of_many_files(), "http/bomb8/data.json"),
    ] {
        assert!(bomb.len() < 1 << 20, "{what}: the bomb should be small compressed, is {} bytes", bomb.len());
        let started = Instant::now();
        let (result, peak) = peak_allocation(|| Bundle::from_tar_gz(&bomb, &limits));
        let took = started.elapsed();
        let errs = result.expect_err("the bomb was accepted");
        assert_eq!(errs.kind(), ErrorKind::Archive, "{what}: {errs}");
        let e = error_about(&errs, ErrorKind::Archive, file, None);
        assert!(e.message.contains("decompression bomb"), "{what}: {e}");
        assert!(peak < 16 << 20, "{what}: {peak} bytes were held at once while reading a bomb");
        assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
    }
}

#[test]
fn refuses_garbage_that_is_not_gzip() {
    let errs = archive_refused(b"this is not a bundle, just some text that goes on for a while", &Limits::default());
    assert!(errs.0[0].message.contains("not a gzip"), "{errs}");
    archive_refused(&[], &Limits::default());
    // gzip magic followed by garbage.
    archive_refused(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9], &Limits::default());
}

#[test]
fn refuses_a_truncated_gzip_wherever_it_is_cut() {
    let bytes = tar_gz(&valid_entries());
    for cut in 1..bytes.len() {
        match Bundle::from_tar_gz(&bytes[..cut], &Limits::default()) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Archive, "cut at {cut}: {e}"),
            Ok(b) => panic!(
                "archive cut at {cut} of {} bytes was accepted with {:?}",
                bytes.len(),
                b.files.keys().collect::<Vec<_>>()
            ),
        }
    }
}

#[test]
fn refuses_trailing_garbage_inside_the_gzip_stream_over_the_limit() {
    // A valid tar followed, inside the same gzip stream, by more than the total limit of zeros.
    let limits = Limits { max_total_bytes: 1 << 20, ..Limits::default() };
    let mut tar_bytes = {
        let mut b = tar::Builder::new(Vec::new());
        for (h, d) in valid_entries() {
            b.append(&h, d.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    };
    tar_bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar_bytes).unwrap();
    let bytes = gz.finish().unwrap();
    let errs = archive_refused(&bytes, &limits);
    assert!(errs.to_string().contains("past"), "{errs}");
}

// ---------------------------------------------------------------------------------------------
// Bundles read from a directory.

#[test]
fn refuses_a_directory_containing_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    for (p, d) in valid_files() {
        let path = dir.path().join(&p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    }
    Bundle::from_path(dir.path(), &Limits::default()).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("http/stolen.rego")).unwrap();
    let errs = Bundle::from_path(dir.path(), &Limits::default()).unwrap_err();
    let e = error_about(&errs, ErrorKind::Archive, "http/stolen.rego", None);
    assert!(e.message.contains("links"), "{e}");
}

#[test]
fn refuses_a_directory_containing_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    for (p, d) in valid_files() {
        let path = dir.path().join(&p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    }
    let fifo = dir.path().join("http/data.json");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let errs = Bundle::from_path(dir.path(), &Limits::default()).unwrap_err();
    error_about(&errs, ErrorKind::Archive, "http/data.json", None);
}

#[test]
fn refuses_a_bundle_without_gateway_settings_as_an_empty_routing_table() {
    // An OPA bundle for another service, pushed under this name by mistake.
    let mut files = valid_files();
    files.remove("gateway/data.yaml");
    files.insert(".manifest".into(), br#"{"revision": "r1"}"#.to_vec());
    files.insert("other/data.json".into(), br#"{"limits": {"rps": 10}}"#.to_vec());
    let errs = refused(files);
    let e = errs.0.iter().find(|e| e.message.contains("empty routing table")).unwrap_or_else(|| panic!("{errs}"));
    assert!(e.message.contains("no gateway settings") && e.message.contains("revision `r1`"), "{e}");
}

#[test]
fn refuses_gateway_settings_with_no_routes_naming_the_file() {
    let settings = format!("{}routes: []\n", &SETTINGS[..SETTINGS.find("routes:").unwrap()]);
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", None);
    assert!(e.message.contains("has no routes") && e.message.contains("404"), "{e}");
}

#[test]
fn refuses_an_issuer_without_audiences_unless_any_audience_is_said() {
    let jwt = "jwt:\n  issuers:\n    - issuer: https://id.example.test\n      AUD\n      jwks: { keys: [ { kty: OKP, crv: Ed25519, x: K6Qp7RFJPITJsvstvTQsWL0t6uzL1Q-OWWdq9BiLI04, kid: k, alg: EdDSA } ] }\n";
    let errs = refused(with(
        valid_files(),
        "gateway/data.yaml",
        &format!("{SETTINGS}{}", jwt.replace("AUD", "audiences: []")),
    ));
    let e = errs.0.iter().find(|e| e.message.contains("any_audience")).unwrap_or_else(|| panic!("{errs}"));
    assert!(e.message.contains("`audiences` is empty"), "{e}");
    let files =
        with(valid_files(), "gateway/data.yaml", &format!("{SETTINGS}{}", jwt.replace("AUD", "any_audience: true")));
    Snapshot::compile(&Bundle::from_files(files).unwrap()).unwrap();
}

#[test]
fn refuses_a_request_header_removal_that_is_not_a_header_name() {
    let settings = format!("request_headers:\n  remove: [\"x user\"]\n{SETTINGS}");
    let errs = refused(with(valid_files(), "gateway/data.yaml", &settings));
    let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", Some(2));
    assert!(e.message.contains("x user"), "{e}");
}

#[test]
fn refuses_rate_limits_that_cannot_be_kept_as_written() {
    let limited = |limits: &str, route_limits: &str| {
        let settings = SETTINGS
            .replace("routes:", &format!("rate_limits:\n{limits}\nroutes:"))
            .replace("    upstream: backend\n", &format!("    upstream: backend\n    rate_limits: [{route_limits}]\n"));
        refused(with(valid_files(), "gateway/data.yaml", &settings))
    };
    for (limits, route_limits, why) in [
        ("  a: { key: jwt.sub, rate: 1/s }", "b", "names rate limit `b`, which is not defined"),
        ("  a: { key: jwt.sub, rate: 1/s }", "a, a", "names rate limit `a` twice"),
        ("  a: { key: jwt.sub, rate: 5/s, burst: 2, scope: global }", "a", "`burst: 2` with `scope: global`"),
        ("  a: { key: jwt.sub, rate: 1/s, before_auth: true }", "a", "`before_auth` with key `jwt.sub`"),
        ("  a: { key: cookie.session, rate: 1/s }", "a", "`key: cookie.session` is not"),
        ("  a: { key: route, rate: 1/day }", "a", "`rate: 1/day` is not"),
        ("  a: { key: header.cookie, rate: 1/s }", "a", "a client chooses that header's value freely"),
        ("  a: { key: header.x-forwarded-for, rate: 1/s }", "a", "a client chooses that header's value freely"),
        ("  \"a b\": { key: route, rate: 1/s }", "\"a b\"", "a limit's name is 1 to 64"),
    ] {
        let errs = limited(limits, route_limits);
        let e = error_about(&errs, ErrorKind::Settings, "gateway/data.yaml", None);
        assert!(e.message.contains(why), "{limits} / [{route_limits}]: {e}");
    }
    let errs = limited("  a: { key: route, rate: 1/s, mode: block }", "a");
    assert!(errs.to_string().contains("mode"), "{errs}");
}
