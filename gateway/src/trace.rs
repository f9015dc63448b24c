//! Request ids from W3C trace context: a request's id is its trace id, taken from a valid
//! incoming `traceparent` or generated. The upstream gets `traceparent` with the same trace id
//! and the gateway's own span id, and `x-request-id`; the client gets `x-request-id`; the access
//! log has it. A client's own `x-request-id` is replaced, never passed on.

/// One request's trace identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// 32 lower-case hex digits: the trace id, also the request id.
    pub id: String,
    /// What the upstream receives: `00-<trace id>-<the gateway's span id>-<flags>`.
    pub traceparent: String,
}

impl RequestId {
    /// Keeps the trace id (and flags) of a valid `traceparent`, or makes a new trace id.
    pub fn of(traceparent: Option<&[u8]>) -> RequestId {
        // Written by hand: `format!` with `{:032x}` cost about 2,000 instructions a request.
        let mut tp = String::with_capacity(55);
        tp.push_str("00-");
        let flags = match traceparent.and_then(parse) {
            Some((trace, flags)) => {
                tp.push_str(trace);
                flags
            }
            None => {
                push_hex(&mut tp, nonzero_u128(), 32);
                "00"
            }
        };
        let id = tp[3..].to_owned();
        tp.push('-');
        push_hex(&mut tp, u128::from(nonzero_u64()), 16);
        tp.push('-');
        tp.push_str(flags);
        RequestId { id, traceparent: tp }
    }
}

/// Appends the low `digits` hex digits of `v`, lower case, zero-padded.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
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
        assert_eq!(r.id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(r.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{}", r.traceparent);
        assert!(r.traceparent.ends_with("-01"));
        assert!(!r.traceparent.contains("00f067aa0ba902b7"), "the gateway's own span id: {}", r.traceparent);
        assert_eq!(parse(r.traceparent.as_bytes()).map(|p| p.0), Some(r.id.as_str()));
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
        ] {
            let r = RequestId::of(Some(bad.as_bytes()));
            assert_ne!(r.id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert!(is_hex(&r.id, 32) && r.id != "0".repeat(32), "{bad:?}: {}", r.id);
            assert!(parse(r.traceparent.as_bytes()).is_some(), "{}", r.traceparent);
        }
        // A later version is read by its first four fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(RequestId::of(Some(later.as_bytes())).id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(RequestId::of(None).id, RequestId::of(None).id);
    }

    #[test]
    fn hex_is_zero_padded_lower_case_and_as_long_as_asked() {
        let mut s = String::new();
        push_hex(&mut s, 0xab, 4);
        assert_eq!(s, "00ab");
        s.clear();
        push_hex(&mut s, u128::MAX, 32);
        assert_eq!(s, "f".repeat(32));
        s.clear();
        push_hex(&mut s, 0x0123_4567_89ab_cdef, 16);
        assert_eq!(s, format!("{:016x}", 0x0123_4567_89ab_cdef_u64));
        let r = RequestId::of(None);
        assert_eq!(r.traceparent.len(), 55, "{}", r.traceparent);
        assert!(r.traceparent.starts_with(&format!("00-{}-", r.id)) && r.traceparent.ends_with("-00"));
    }
}
