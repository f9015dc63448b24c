//! Bundles the hostile source serves: the example bundle at a given revision, and every kind of
//! bad bundle, hostile archives written by hand so that nothing sanitizes them on the way.

use policy_bundles::archive::{read_tar_gz, write_tar_gz, Files};
use policy_bundles::Limits;

/// The example bundle's files, upstream pointed at `upstream`, with `revision`.
pub fn files(upstream: &str, revision: &str) -> Files {
    read_tar_gz(&e2e::example_tarball(upstream, revision), &Limits::default()).expect("example bundle")
}

pub fn tar_gz(files: &Files) -> Vec<u8> {
    write_tar_gz(files).expect("tar.gz")
}

/// `files` with one more file (or one replaced).
pub fn with(mut files: Files, path: &str, content: &str) -> Files {
    files.insert(path.into(), content.as_bytes().to_vec());
    files
}

/// `files` with the first `from` in `gateway/data.yaml` replaced by `to`.
pub fn settings_replace(mut files: Files, from: &str, to: &str) -> Files {
    let text = String::from_utf8(files["gateway/data.yaml"].clone()).expect("utf8");
    assert!(text.contains(from), "gateway/data.yaml has no {from:?}");
    files.insert("gateway/data.yaml".into(), text.replacen(from, to, 1).into_bytes());
    files
}

/// `files` signed with a demo key (`test-support/keys/KEY`) as key id `k1`, bound to bundle
/// `main` with a sequence higher than every earlier call's (made later, served later).
pub fn signed(mut files: Files, key: &str, alg: &str) -> Vec<u8> {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identity = policy_bundles::signing::Identity { bundle: "main".into(), sequence, expires: None };
    policy_bundles::signing::bind(&mut files, &identity).expect("bind");
    let pem = std::fs::read(test_support::paths::repo_root().join("test-support/keys").join(key)).expect("demo key");
    let sig = policy_bundles::signing::sign(&files, &pem, alg, "k1").expect("sign");
    files.insert(".signatures.json".into(), sig);
    tar_gz(&files)
}

use test_support::archives;
pub use test_support::archives::{file, symlink, Entry};

/// A gzipped tarball of `files` plus hostile raw entries (path traversal, absolute paths, links).
pub fn hostile_tar_gz(files: &Files, extra: &[Entry]) -> Vec<u8> {
    let mut entries = archives::entries(files);
    entries.extend(extra.iter().cloned());
    archives::tar_gz(&entries)
}

/// A piece of a raw deflate stream from a fresh compressor, ended by a sync flush: it refers to
/// nothing before it and ends on a byte boundary, so pieces concatenate into one valid stream.
fn deflate_piece(data: &[u8], last: bool) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::new();
    let flush = if last { flate2::FlushCompress::Finish } else { flate2::FlushCompress::Sync };
    loop {
        out.reserve(64 * 1024);
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, flush).expect("deflate");
        let all_in = c.total_in() as usize == data.len();
        // Done when every byte went in and the compressor had room to spare (or ended the stream).
        let done = if last { status == flate2::Status::StreamEnd } else { all_in && out.len() < out.capacity() };
        if done {
            return out;
        }
    }
}

/// A decompression bomb: the valid bundle's files, then `count` files of `mib` MiB of zeros each,
/// as a correct gzip (CRC and length included) of a few hundred KiB, built without ever holding
/// or compressing the expanded bytes: one compressed MiB of zeros is repeated.
pub fn bomb(files: &Files, count: usize, mib: usize) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let zeros = vec![0u8; MIB];
    let zero_piece = deflate_piece(&zeros, false);
    let mut zero_crc = flate2::Crc::new();
    zero_crc.update(&zeros);

    let mut crc = flate2::Crc::new();
    let mut deflate = Vec::new();
    let plain = |bytes: &[u8], crc: &mut flate2::Crc, deflate: &mut Vec<u8>, last: bool| {
        crc.update(bytes);
        deflate.extend_from_slice(&deflate_piece(bytes, last));
    };
    // The valid files, without the end-of-archive blocks.
    let head = archives::tar(&archives::entries(files));
    let body_len = head.len() - 1024;
    plain(&head[..body_len], &mut crc, &mut deflate, false);
    let mut total = body_len as u64;
    for i in 0..count {
        let (mut h, _) = archives::file(&format!("http/bomb{i}/data.json"), b"");
        h.set_size((mib * MIB) as u64);
        h.set_cksum();
        plain(h.as_bytes(), &mut crc, &mut deflate, false);
        total += 512;
        for _ in 0..mib {
            deflate.extend_from_slice(&zero_piece);
            crc.combine(&zero_crc);
            total += MIB as u64;
        }
    }
    // End of archive: two zero blocks.
    plain(&[0u8; 1024], &mut crc, &mut deflate, true);
    total += 1024;

    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    gz.extend_from_slice(&deflate);
    gz.extend_from_slice(&crc.sum().to_le_bytes());
    gz.extend_from_slice(&(total as u32).to_le_bytes());
    gz
}
