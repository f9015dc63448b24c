//! JSON written by hand for the log lines (the access log's and the decision log's): keys are
//! constants, a value is escaped only when it needs to be (it seldom does), numbers go through
//! `itoa`, and a timestamp's date and seconds are formatted once per second. `serde_json` on a
//! derived struct cost the access log's writer 5,800 instructions a line, most of them escaping
//! keys and values that need none (`loadtest/instructions.sh`). Escaping itself is
//! `serde_json`'s, so every line is valid JSON whatever a client sent.

use std::io::Write;
use std::time::{Duration, SystemTime};

/// Whether a JSON string of these bytes needs an escape: a control character, `"` or `\`.
/// Eight bytes at a time (the classic "has a byte less than n / equal to c" bit tricks): about
/// a quarter of the instructions of a byte loop on a kilobyte of text.
pub fn needs_escaping(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // A byte below 0x20 (with its high bit clear), `"` (0x22) or `\` (0x5c).
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if control || has_zero(x ^ (ONES * 0x22)) || has_zero(x ^ (ONES * 0x5c)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string; most need no escaping (ids, names, paths) and are copied as they are.
pub fn str(out: &mut Vec<u8>, s: &str) {
    if needs_escaping(s.as_bytes()) {
        // Writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// A string, or `null`.
pub fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

pub fn uint(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// RFC 3339 in UTC with nanoseconds (`2026-12-03T06:11:41.906078171Z`), the date and time of
/// the current second formatted once.
#[derive(Default)]
pub struct Timestamp {
    second: Option<(u64, String)>,
}

impl Timestamp {
    /// Writes `at` (without quotes).
    pub fn write(&mut self, at: SystemTime, out: &mut Vec<u8>) {
        let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.second.as_ref().is_none_or(|(s, _)| *s != secs) {
            let t = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(secs);
            let text = t
                .format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"))
                .unwrap_or_default();
            self.second = Some((secs, text));
        }
        out.extend_from_slice(self.second.as_ref().map_or("", |(_, t)| t.as_str()).as_bytes());
        let _ = write!(out, ".{:09}Z", since.subsec_nanos());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_escape_check_agrees_with_a_byte_loop() {
        let slow = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        let mut samples: Vec<Vec<u8>> = Vec::new();
        for special in 0u8..=255 {
            for at in 0..17 {
                let mut v = vec![b'a'; 17];
                v[at] = special;
                samples.push(v);
            }
        }
        samples.push("caf\u{e9} d\u{e9}j\u{e0} vu \u{7f}\u{80}".as_bytes().to_vec());
        for s in &samples {
            assert_eq!(needs_escaping(s), slow(s), "{s:?}");
        }
    }

    #[test]
    fn strings_are_valid_json_whatever_they_hold() {
        for s in ["plain", "q\"uote", "back\\slash", "new\nline", "\u{1b}[31m", "é"] {
            let mut out = Vec::new();
            str(&mut out, s);
            assert_eq!(serde_json::from_slice::<String>(&out).ok().as_deref(), Some(s));
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds_and_each_second_is_formatted_afresh() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_796_280_701, 906_078);
        let (mut t, mut out) = (Timestamp::default(), Vec::new());
        t.write(at, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "2026-12-03T06:51:41.000906078Z");
        out.clear();
        t.write(at + Duration::from_secs(1), &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "2026-12-03T06:51:42.000906078Z");
    }
}
