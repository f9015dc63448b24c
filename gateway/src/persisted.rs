//! The persisted last-known-good bundle: `cache_dir/NAME.DIGEST.tar.gz` plus `cache_dir/NAME.json`
//! (its metadata), each written crash-safely (temp file, fsync, rename, fsync of the directory).
//! The metadata is renamed into place only after its tarball is durable, and older tarballs are
//! removed only after that, so a crash at any point leaves a cache that boots: the old copy or
//! the new one, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheMeta {
    pub name: String,
    /// SHA-256 of the tarball.
    pub digest: String,
    /// The ETag the source gave it, sent again in `If-None-Match` after a restart.
    pub etag: Option<String>,
    pub revision: String,
    pub source: String,
    /// Unix seconds when it was fetched (the last confirmation a restarted gateway can claim).
    pub fetched_at: u64,
}

#[derive(Debug)]
pub struct Cached {
    pub bytes: Vec<u8>,
    pub meta: CacheMeta,
}

fn meta_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

fn bundle_path(dir: &Path, name: &str, digest: &str) -> PathBuf {
    dir.join(format!("{name}.{digest}.tar.gz"))
}

fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Persists a bundle that has just been activated.
pub fn persist(dir: &Path, bytes: &[u8], meta: &CacheMeta) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let bundle = bundle_path(dir, &meta.name, &meta.digest);
    write_durably(dir, &bundle, bytes)?;
    let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    write_durably(dir, &meta_path(dir, &meta.name), &json)?;
    // Only now may older copies go.
    let prefix = format!("{}.", meta.name);
    for entry in fs::read_dir(dir)?.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else { continue };
        if n.starts_with(&prefix) && n.ends_with(".tar.gz") && entry.path() != bundle {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Loads the persisted bundle, checking its digest. `Ok(None)`: nothing persisted.
pub fn load(dir: &Path, name: &str) -> Result<Option<Cached>, String> {
    let mp = meta_path(dir, name);
    let raw = match fs::read(&mp) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", mp.display())),
    };
    let meta: CacheMeta =
        serde_json::from_slice(&raw).map_err(|e| format!("{}: corrupt metadata: {e}", mp.display()))?;
    if meta.name != name || meta.digest.len() != 64 || !meta.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{}: metadata names another bundle or a bad digest", mp.display()));
    }
    let bp = bundle_path(dir, name, &meta.digest);
    let bytes = fs::read(&bp).map_err(|e| format!("{}: {e}", bp.display()))?;
    let digest = policy_bundles::digest(&bytes);
    if digest != meta.digest {
        return Err(format!("{}: corrupt (sha256 {digest}, expected {})", bp.display(), meta.digest));
    }
    Ok(Some(Cached { bytes, meta }))
}

/// `cache_dir/NAME.sequence`: the highest signed sequence activated (decimal), beside the cache.
fn sequence_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sequence"))
}

/// The highest signed sequence persisted for this bundle; 0 when none is (no `cache_dir`, or
/// never written). An unreadable file is 0 too, logged: a lower floor weakens replay protection
/// for one activation, it never stops serving.
pub fn load_sequence(bundle: &crate::config::BundleConfig) -> u64 {
    let Some(dir) = &bundle.cache_dir else { return 0 };
    match fs::read_to_string(sequence_path(dir, &bundle.name)) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(file = %sequence_path(dir, &bundle.name).display(), "unreadable signed sequence; starting from 0");
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the signed sequence; starting from 0");
            0
        }
    }
}

/// Persists the highest signed sequence (crash-safely); a no-op without `cache_dir`.
pub fn store_sequence(bundle: &crate::config::BundleConfig, sequence: u64) -> std::io::Result<()> {
    let Some(dir) = &bundle.cache_dir else { return Ok(()) };
    fs::create_dir_all(dir)?;
    write_durably(dir, &sequence_path(dir, &bundle.name), sequence.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(bytes: &[u8]) -> CacheMeta {
        CacheMeta {
            name: "main".into(),
            digest: policy_bundles::digest(bytes),
            etag: Some("\"x\"".into()),
            revision: "r1".into(),
            source: "http://s".into(),
            fetched_at: 1,
        }
    }

    #[test]
    fn persists_and_loads_and_replaces_older_copies() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "main").unwrap().is_none());
        persist(dir.path(), b"one", &meta(b"one")).unwrap();
        persist(dir.path(), b"two", &meta(b"two")).unwrap();
        let c = load(dir.path(), "main").unwrap().unwrap();
        assert_eq!(c.bytes, b"two");
        let tarballs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().map(|e| e.file_name().to_string_lossy().ends_with(".tar.gz")).unwrap_or(false));
        assert_eq!(tarballs.count(), 1);
    }

    #[test]
    fn corrupt_copies_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        persist(dir.path(), b"one", &meta(b"one")).unwrap();
        let m = meta(b"one");
        fs::write(bundle_path(dir.path(), "main", &m.digest), b"tampered").unwrap();
        assert!(load(dir.path(), "main").unwrap_err().contains("corrupt"));
        fs::write(meta_path(dir.path(), "main"), b"{").unwrap();
        assert!(load(dir.path(), "main").unwrap_err().contains("corrupt metadata"));
    }
}
