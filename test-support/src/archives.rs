//! Hostile archives written by hand, so that nothing sanitizes them on the way in: entries with
//! raw names (`../x`, `/etc/x`), links, FIFOs, duplicates, as the bundle reader must refuse.

use std::io::Write;

/// One raw tar entry: its header (name copied byte for byte into the old header) and data.
pub type Entry = (tar::Header, Vec<u8>);

/// An entry of `kind` named `name` exactly as given, with `data` and, for links, a target.
pub fn raw_entry(name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Entry {
    let mut h = tar::Header::new_gnu();
    let bytes = name.as_bytes();
    assert!(bytes.len() < 100, "raw names must fit the old header");
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        assert!(l.len() < 100, "raw link targets must fit the old header");
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    (h, data.to_vec())
}

/// A regular file entry with a raw name.
pub fn file(name: &str, data: &[u8]) -> Entry {
    raw_entry(name, tar::EntryType::Regular, data, None)
}

/// A symbolic link entry with a raw name.
pub fn symlink(name: &str, target: &str) -> Entry {
    raw_entry(name, tar::EntryType::Symlink, b"", Some(target))
}

/// Entries for each of `files`, in order.
pub fn entries<'a>(files: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>) -> Vec<Entry> {
    files.into_iter().map(|(p, d)| file(p, d)).collect()
}

/// The tar stream (not compressed) of `entries`.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, data) in entries {
        b.append(h, data.as_slice()).expect("tar");
    }
    b.into_inner().expect("tar")
}

/// `bytes` gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// A gzipped tarball of `entries`.
pub fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    gzip(&tar(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_names_reach_the_archive_unchanged() {
        let bytes = tar(&[file("../x.rego", b"p"), symlink("l", "/etc/passwd")]);
        let mut a = ::tar::Archive::new(bytes.as_slice());
        let names: Vec<(String, Option<String>)> = a
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
                (name, link)
            })
            .collect();
        assert_eq!(names, vec![("../x.rego".into(), None), ("l".into(), Some("/etc/passwd".into()))]);
        assert_eq!(&tar_gz(&[])[..2], &[0x1f, 0x8b]);
    }
}
