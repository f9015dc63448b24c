//! The example bundle (`policy-bundles/examples/api-gateway`), edited per test: its upstream
//! pointed at a test server, its revision set, routes, upstreams and modules added.

use std::path::{Path, PathBuf};

use policy_bundles::archive::Files;
use policy_bundles::archive::{read_dir, write_tar_gz};
use policy_bundles::Limits;

/// Where the example bundle's sources are.
pub fn example_dir() -> PathBuf {
    crate::paths::repo_root().join("policy-bundles/examples/api-gateway")
}

/// The example bundle's files, as read from its folder.
pub fn example_files() -> Files {
    read_dir(&example_dir(), &Limits::default()).expect("example bundle")
}

/// Sets the `.manifest` revision of a bundle's files (creating the manifest if needed).
pub fn set_revision(files: &mut Files, revision: &str) {
    let mut manifest: serde_json::Value = match files.get(".manifest") {
        Some(m) => serde_json::from_slice(m).expect("manifest JSON"),
        None => serde_json::json!({}),
    };
    manifest["revision"] = serde_json::Value::String(revision.to_owned());
    files.insert(".manifest".into(), serde_json::to_vec_pretty(&manifest).expect("manifest"));
}

/// Points the example's upstream (`127.0.0.1:9100`) at `upstream` and shortens its health
/// check interval to `interval` (the example says `2s`).
pub fn retarget(files: &mut Files, upstream: &str, interval: &str) {
    let settings = String::from_utf8(files["gateway/data.yaml"].clone()).expect("settings UTF-8");
    let settings =
        settings.replace("127.0.0.1:9100", upstream).replace("interval: 2s", &format!("interval: {interval}"));
    files.insert("gateway/data.yaml".into(), settings.into_bytes());
}

/// The example bundle as a tarball with this revision, edited by `edit`.
pub fn tarball_with(revision: &str, edit: impl FnOnce(&mut Files)) -> Vec<u8> {
    let mut files = example_files();
    set_revision(&mut files, revision);
    edit(&mut files);
    write_tar_gz(&files).expect("tarball")
}

/// The example bundle as a tarball, its upstream at `upstream`, with `revision` and `modules`.
pub fn tarball(upstream: &str, revision: &str, modules: &[(&str, &str)]) -> Vec<u8> {
    tarball_with(revision, |files| {
        retarget(files, upstream, "200ms");
        for (path, src) in modules {
            files.insert((*path).to_owned(), src.as_bytes().to_vec());
        }
    })
}

/// The example bundle copied into `dir/bundle`, its upstream pointed at `upstream`, plus extra
/// upstreams (YAML map entries), routes (YAML list items, put first so that they win) and
/// modules. Returns the bundle folder.
pub fn example_folder(
    dir: &Path,
    upstream: &str,
    extra_upstreams: &str,
    extra_routes: &str,
    modules: &[(&str, &str)],
) -> PathBuf {
    let b = dir.join("bundle");
    crate::paths::copy_dir(&example_dir(), &b);
    let settings = b.join("gateway/data.yaml");
    let mut text = std::fs::read_to_string(&settings).expect("settings");
    text = text.replace("127.0.0.1:9100", upstream).replace("interval: 2s", "interval: 200ms");
    if !extra_upstreams.is_empty() {
        text = text.replace("\nroutes:", &format!("{extra_upstreams}\nroutes:"));
    }
    if !extra_routes.is_empty() {
        text = text.replace(
            "routes:                       # matched in order; the first match wins\n",
            &format!("routes:\n{extra_routes}"),
        );
    }
    std::fs::write(&settings, text).expect("write settings");
    for (path, src) in modules {
        let p = b.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, src).expect("write module");
    }
    b
}
