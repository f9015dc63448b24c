//! Where things are: the repository root and the binaries `cargo build --workspace --bins` made.

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The folder of the running test's profile (`target/debug`, `target/release`): a test binary
/// runs from `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("exe folder");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile folder").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A binary of a workspace crate, built by `cargo build --workspace --bins` (scripts/test does).
pub fn bin(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", p.display());
    p
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy");
        }
    }
}
