//! Request ids from W3C trace context: a request's id is its trace id, taken from a valid
//! incoming `traceparent` or generated. The upstream gets `traceparent` with the same trace id
//! and the gateway's own span id, and `x-request-id`; the client gets `x-request-id`; the access
//! log has it. A client's own `x-request-id` is replaced, never passed on.

/// One request's trace identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// What the upstream receives: `00-<trace id>-<the gateway's span id>-<flags>`; the trace
    /// id in it is the request id. Private: only [`RequestId::of`] writes it, all ASCII.
    traceparent: String,
}

/// Where the trace id sits in a `traceparent` the gateway wrote.
const TRACE_ID: std::ops::Range<usize> = 3..35;

impl RequestId {
    /// The id of the request carrying `traceparent` (its raw value), or a new one.
    pub fn of(traceparent: Option<&[u8]>) -> RequestId {
        // Written in place and made a string once: one allocation, no formatting machinery.
        let mut tp = *b"00-................................-................-..";
        let flags = match traceparent.and_then(parse) {
            Some((trace, flags)) => {
                tp[TRACE_ID].copy_from_slice(trace.as_bytes());
                flags.as_bytes()
            }
            None => {
                hex_into(&mut tp[TRACE_ID], &nonzero::<16>());
                b"00"
            }
        };
        hex_into(&mut tp[36..52], &nonzero::<8>());
        tp[53..].copy_from_slice(flags);
        // Only ASCII is written (`parse` takes hex digits alone), so this never fails; the
        // check is the fast ASCII one (`from_utf8_lossy` cost four times as much).
        let traceparent = String::from_utf8(tp.to_vec()).unwrap_or_default();
        RequestId { traceparent }
    }

    /// What the upstream receives as `traceparent`.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// 32 lower-case hex digits: the trace id, also the request id.
    pub fn id(&self) -> &str {
        self.traceparent.get(TRACE_ID).unwrap_or_default()
    }

    /// The request id alone, reusing the string.
    pub fn into_id(self) -> String {
        let mut s = self.traceparent;
        if s.get(TRACE_ID).is_none() {
            return String::new();
        }
        s.truncate(TRACE_ID.end);
        s.drain(..TRACE_ID.start);
        s
    }
}

/// Two lower-case hex digits per byte of `bytes`, into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// `N` random bytes, not all zero (an all-zero trace or span id is invalid).
fn nonzero<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    if b.iter().all(|&x| x == 0) {
        b[N - 1] = 1;
    }
    b
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The trace id and flags of a `traceparent` that follows W3C Trace Context: version `00`
/// exactly (a later version: its first four fields), lower-case hex, ids not all zeros.
fn parse(value: &[u8]) -> Option<(&str, &str)> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let mut parts = v.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest_ok = match version {
        "00" => parts.next().is_none(),
        "ff" => false,
        _ => is_hex(version, 2),
    };
    let ok = rest_ok
        && is_hex(version, 2)
        && is_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && is_hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    ok.then_some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_and_flags_with_a_new_span() {
        let r = RequestId::of(Some(GOOD.as_bytes()));
        assert_eq!(r.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(r.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{}", r.traceparent);
        assert!(r.traceparent.ends_with("-01"));
        assert!(!r.traceparent.contains("00f067aa0ba902b7"), "the gateway's own span id: {}", r.traceparent);
        assert_eq!(parse(r.traceparent.as_bytes()).map(|p| p.0), Some(r.id()));
    }

    #[test]
    fn a_malformed_traceparent_gets_a_fresh_id() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-evil: 1",
            // Non-ASCII of the right byte lengths: two bytes of flags, 32 of trace id.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u{e9}",
            "00-\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}-00f067aa0ba902b7-01",
        ] {
            let r = RequestId::of(Some(bad.as_bytes()));
            assert_ne!(r.id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert!(is_hex(r.id(), 32) && r.id() != "0".repeat(32), "{bad:?}: {}", r.id());
            assert!(parse(r.traceparent.as_bytes()).is_some(), "{}", r.traceparent);
        }
        // A later version is read by its first four fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(RequestId::of(Some(later.as_bytes())).id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(RequestId::of(None).id(), RequestId::of(None).id());
    }

    #[test]
    fn hex_is_zero_padded_lower_case_and_as_long_as_asked() {
        let hex = |bytes: &[u8]| {
            let mut b = vec![0u8; bytes.len() * 2];
            hex_into(&mut b, bytes);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(hex(&[0x00, 0xab]), "00ab");
        assert_eq!(hex(&[0xff; 16]), "f".repeat(32));
        let v = 0x0123_4567_89ab_cdef_u64;
        assert_eq!(hex(&v.to_be_bytes()), format!("{v:016x}"));
        let r = RequestId::of(None);
        assert_eq!(r.traceparent.len(), 55, "{}", r.traceparent);
        assert!(r.traceparent.starts_with(&format!("00-{}-", r.id())) && r.traceparent.ends_with("-00"));
        assert!(!r.traceparent.contains('.'), "every placeholder written: {}", r.traceparent);
        let id = r.id().to_owned();
        assert_eq!(r.into_id(), id);
    }

    #[test]
    fn a_request_id_never_panics_on_a_short_traceparent() {
        for short in ["", "00-4bf9", "00-\u{e9}\u{e9}\u{e9}"] {
            let r = RequestId { traceparent: short.to_owned() };
            assert_eq!(r.id(), "", "{short:?}");
            assert_eq!(r.into_id(), "", "{short:?}");
        }
    }
}
