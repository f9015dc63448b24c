//! Reading a bundle's files from a gzipped tarball or a directory, defending against hostile
//! archives: path traversal, absolute paths, links and other special entries, duplicates,
//! oversize files and decompression bombs are refused with the entry named.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{BundleError, ErrorKind};

/// Size limits applied while reading; every one is checked while bytes are read, never after.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest compressed archive accepted, in bytes.
    pub max_archive_bytes: u64,
    /// Largest single file inside the bundle, in bytes (uncompressed).
    pub max_file_bytes: u64,
    /// Largest sum of all files, uncompressed: what stops decompression bombs.
    pub max_total_bytes: u64,
    /// Most entries (files and directories) in one bundle.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 64 << 20,
            max_file_bytes: 16 << 20,
            max_total_bytes: 256 << 20,
            max_entries: 10_000,
        }
    }
}

/// The files of a bundle by normalized relative path (`a/b/data.json`, no leading `./` or `/`).
pub type Files = BTreeMap<String, Vec<u8>>;

fn archive_err(file: Option<&str>, msg: impl Into<String>) -> BundleError {
    BundleError::new(ErrorKind::Archive, file.map(str::to_owned), msg)
}

/// Normalizes an entry path, refusing absolute paths, `..`, and anything that is not plain UTF-8.
pub fn normalize_path(raw: &str) -> Result<String, BundleError> {
    if raw.starts_with('/') || raw.starts_with('\\') || raw.contains('\\') || raw.contains('\0') {
        return Err(archive_err(Some(raw), "absolute or non-portable path in bundle"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(archive_err(Some(raw), "path traversal (`..`) in bundle")),
            p if p.len() >= 2 && p.as_bytes()[1] == b':' => {
                return Err(archive_err(Some(raw), "absolute (drive-letter) path in bundle"))
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Reads a gzipped tarball held in memory.
pub fn read_tar_gz(bytes: &[u8], limits: &Limits) -> Result<Files, BundleError> {
    if bytes.len() as u64 > limits.max_archive_bytes {
        return Err(archive_err(
            None,
            format!("archive is {} bytes, over the limit of {} bytes", bytes.len(), limits.max_archive_bytes),
        ));
    }
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Err(archive_err(None, "not a gzip file (a bundle is a .tar.gz)"));
    }
    // The decompressed stream is capped a little past the total limit (room for tar headers and
    // padding) so that a bomb is detected without ever being inflated beyond it.
    let gz = flate2::read::GzDecoder::new(bytes);
    let capped = gz.take(limits.max_total_bytes.saturating_add(1024 * 1024));
    let mut archive = tar::Archive::new(capped);
    let mut files = Files::new();
    let mut total: u64 = 0;
    let entries = archive.entries().map_err(|e| archive_err(None, format!("unreadable tar: {e}")))?;
    for (count, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| archive_err(None, format!("unreadable tar or gzip stream: {e}")))?;
        if count >= limits.max_entries {
            return Err(archive_err(None, format!("more than {} entries in archive", limits.max_entries)));
        }
        let Some((path, data)) = read_entry(entry, limits, total)? else { continue };
        total += data.len() as u64;
        if files.insert(path.clone(), data).is_some() {
            return Err(archive_err(Some(&path), "duplicate file in archive"));
        }
    }
    read_to_trailer(archive.into_inner(), limits)?;
    Ok(files)
}

/// One tar entry: `None` for a directory, the file's normalized path and bytes for a regular
/// file; links and other special entries are refused, and so is a file over the per-file
/// limit or one that would take the bundle past `max_total_bytes` after `total` bytes so far.
fn read_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    limits: &Limits,
    total: u64,
) -> Result<Option<(String, Vec<u8>)>, BundleError> {
    let raw_path =
        String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| archive_err(None, "entry path is not UTF-8"))?;
    let kind = entry.header().entry_type();
    if kind.is_dir() {
        normalize_path(&raw_path)?;
        return Ok(None);
    }
    if kind.is_symlink() || kind.is_hard_link() {
        return Err(archive_err(Some(&raw_path), "links are not allowed in bundles"));
    }
    if !kind.is_file() {
        return Err(archive_err(Some(&raw_path), format!("special entry of type {kind:?} is not allowed")));
    }
    let path = normalize_path(&raw_path)?;
    if path.is_empty() {
        return Err(archive_err(Some(&raw_path), "file entry with an empty path"));
    }
    let declared = entry.header().size().unwrap_or(u64::MAX);
    if declared > limits.max_file_bytes {
        return Err(archive_err(
            Some(&path),
            format!("file is {declared} bytes, over the per-file limit of {} bytes", limits.max_file_bytes),
        ));
    }
    // Refused from its header, before a byte of it is inflated.
    if declared > limits.max_total_bytes.saturating_sub(total) {
        return Err(archive_err(
            Some(&path),
            format!("bundle expands past {} bytes (decompression bomb?)", limits.max_total_bytes),
        ));
    }
    let mut data = Vec::with_capacity(declared.min(1 << 20) as usize);
    (&mut entry)
        .take(declared)
        .read_to_end(&mut data)
        .map_err(|e| archive_err(Some(&path), format!("truncated or corrupt entry: {e}")))?;
    if data.len() as u64 != declared {
        return Err(archive_err(Some(&path), "truncated entry"));
    }
    Ok(Some((path, data)))
}

/// Reads the stream to its end: the gzip trailer's checksum and length are what show that the
/// archive is complete (tar alone would accept one cut at an entry boundary).
fn read_to_trailer<R: Read>(mut rest: std::io::Take<R>, limits: &Limits) -> Result<(), BundleError> {
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| archive_err(None, format!("truncated or corrupt gzip stream: {e}")))?;
    if rest.limit() == 0 {
        return Err(archive_err(
            None,
            format!("archive expands past {} bytes (decompression bomb?)", limits.max_total_bytes),
        ));
    }
    Ok(())
}

/// Reads a bundle laid out in a directory (the authors' source form). Links are refused.
pub fn read_dir(root: &Path, limits: &Limits) -> Result<Files, BundleError> {
    let mut files = Files::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| archive_err(Some(&dir.display().to_string()), format!("cannot read directory: {e}")))?;
        for ent in rd {
            let ent = ent.map_err(|e| archive_err(Some(&dir.display().to_string()), e.to_string()))?;
            let p = ent.path();
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            let meta = std::fs::symlink_metadata(&p).map_err(|e| archive_err(Some(&rel), e.to_string()))?;
            if meta.file_type().is_symlink() {
                return Err(archive_err(Some(&rel), "links are not allowed in bundles"));
            }
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            if !meta.is_file() {
                // A FIFO or device would block or never end when read.
                return Err(archive_err(Some(&rel), "special files are not allowed in bundles"));
            }
            if meta.len() > limits.max_file_bytes {
                return Err(archive_err(
                    Some(&rel),
                    format!("file is {} bytes, over the per-file limit of {} bytes", meta.len(), limits.max_file_bytes),
                ));
            }
            total += meta.len();
            if total > limits.max_total_bytes || files.len() >= limits.max_entries {
                return Err(archive_err(Some(&rel), "bundle directory exceeds the size or entry limits"));
            }
            let data = std::fs::read(&p).map_err(|e| archive_err(Some(&rel), e.to_string()))?;
            files.insert(normalize_path(&rel)?, data);
        }
    }
    Ok(files)
}

/// Writes files as a deterministic gzipped tarball (sorted paths, zero mtimes, fixed modes),
/// so the same sources always give the same digest.
pub fn write_tar_gz(files: &Files) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_slice())?;
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dot_prefixes_and_refuses_traversal() {
        assert_eq!(normalize_path("./a/b.rego").unwrap(), "a/b.rego");
        assert!(normalize_path("../x").unwrap_err().message.contains("traversal"));
        assert!(normalize_path("a/../../x").is_err());
        assert!(normalize_path("/etc/passwd").unwrap_err().message.contains("absolute"));
        assert!(normalize_path("C:/x").is_err());
    }

    #[test]
    fn round_trips_a_deterministic_archive() {
        let mut files = Files::new();
        files.insert("a/data.json".into(), b"{}".to_vec());
        let one = write_tar_gz(&files).unwrap();
        let two = write_tar_gz(&files).unwrap();
        assert_eq!(one, two);
        assert_eq!(read_tar_gz(&one, &Limits::default()).unwrap(), files);
    }
}
