//! Checks of the fault suite's own bad bundles (kept out of the suite's binary so that they never
//! run alongside it and disturb its latency measurements).

#[path = "fault_suite/bundles.rs"]
#[allow(dead_code)]
mod bundles;

use std::io::Read;

use policy_bundles::archive::read_tar_gz;
use policy_bundles::Limits;

#[test]
fn the_bomb_is_a_valid_small_gzip_that_expands_past_the_gateways_limit() {
    let files = bundles::files("127.0.0.1:1", "b");
    let bomb = bundles::bomb(&files, 17, 16);
    assert!(bomb.len() < 512 << 10, "{} bytes", bomb.len());
    // The whole stream inflates; the decoder checks the CRC and length in the trailer.
    let mut n = 0u64;
    let mut d = flate2::read::GzDecoder::new(bomb.as_slice());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match d.read(&mut buf).expect("a valid gzip stream") {
            0 => break,
            k => n += k as u64,
        }
    }
    assert!(n > 256 << 20, "expands to {n} bytes");
    let err = read_tar_gz(&bomb, &Limits::default()).expect_err("refused");
    assert!(err.message.contains("decompression bomb"), "{err}");
    // Refused at the header of the file that would cross the limit, before inflating it.
    assert!(err.file.as_deref().is_some_and(|f| f.starts_with("http/bomb")), "{err}");
}

#[test]
fn hostile_archives_are_refused_for_the_reason_they_were_built_for() {
    let files = bundles::files("127.0.0.1:1", "h");
    for (what, extra, needle) in [
        ("traversal", bundles::file("../escape.rego", b"package http.x\n"), "traversal"),
        ("absolute", bundles::file("/etc/escape.rego", b"package http.x\n"), "absolute"),
        ("symlink", bundles::symlink("http/link.rego", "/etc/passwd"), "links"),
    ] {
        let bytes = bundles::hostile_tar_gz(&files, &[extra]);
        let err = read_tar_gz(&bytes, &Limits::default()).expect_err(what);
        assert!(err.message.contains(needle), "{what}: {err}");
    }
    // Without the hostile entry the same archive is fine.
    read_tar_gz(&bundles::hostile_tar_gz(&files, &[]), &Limits::default()).expect("valid");
}
