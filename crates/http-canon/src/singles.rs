//! The headers a request may carry once at most, and the framing headers' values: what has two
//! readings is refused ([`Refusal::DuplicateHost`], [`Refusal::DuplicateAuthorization`],
//! [`Refusal::Framing`]), so that the gateway, its policy and the backend cannot each pick a
//! different one (request smuggling, a second `Authorization` read by the backend alone). The
//! gateway's header scan and `bundlectl eval` both count with [`Singles`].

use crate::Refusal;

/// Counts `Host`, `Authorization`, `Content-Length` and `Transfer-Encoding` over one pass of a
/// request's headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Singles {
    hosts: u8,
    auths: u8,
    lengths: u8,
    encodings: u8,
}

impl Singles {
    /// Notes one header by its lower-case name. Refuses at once a `Content-Length` that is not
    /// a number and a `Transfer-Encoding` other than exactly `chunked`. `true` when the name is
    /// one of the four.
    pub fn see(&mut self, name: &str, value: &[u8]) -> Result<bool, Refusal> {
        let count = match name {
            "host" => &mut self.hosts,
            "authorization" => &mut self.auths,
            "content-length" => {
                if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return Err(Refusal::Framing);
                }
                &mut self.lengths
            }
            "transfer-encoding" => {
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(Refusal::Framing);
                }
                &mut self.encodings
            }
            _ => return Ok(false),
        };
        *count = count.saturating_add(1);
        Ok(true)
    }

    /// After every header: more than one `Host` or `Authorization`, more than one length or
    /// encoding, or a length beside an encoding, is refused.
    pub fn check(&self) -> Result<(), Refusal> {
        if self.hosts > 1 {
            Err(Refusal::DuplicateHost)
        } else if self.auths > 1 {
            Err(Refusal::DuplicateAuthorization)
        } else if self.lengths > 1 || self.encodings > 1 || (self.lengths > 0 && self.encodings > 0) {
            Err(Refusal::Framing)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(headers: &[(&str, &str)]) -> Result<(), Refusal> {
        let mut s = Singles::default();
        for (n, v) in headers {
            s.see(n, v.as_bytes())?;
        }
        s.check()
    }

    #[test]
    fn what_has_two_readings_is_refused() {
        assert_eq!(scan(&[("host", "a"), ("accept", "*/*")]), Ok(()));
        assert_eq!(scan(&[("host", "a"), ("host", "b")]), Err(Refusal::DuplicateHost));
        assert_eq!(scan(&[("authorization", "a"), ("authorization", "b")]), Err(Refusal::DuplicateAuthorization));
        assert_eq!(scan(&[("content-length", "1"), ("content-length", "1")]), Err(Refusal::Framing));
        assert_eq!(scan(&[("content-length", "1"), ("transfer-encoding", "chunked")]), Err(Refusal::Framing));
        assert_eq!(scan(&[("content-length", "1x")]), Err(Refusal::Framing));
        assert_eq!(scan(&[("content-length", "")]), Err(Refusal::Framing));
        assert_eq!(scan(&[("transfer-encoding", "gzip, chunked")]), Err(Refusal::Framing));
        assert_eq!(scan(&[("transfer-encoding", "Chunked")]), Ok(()));
    }

    #[test]
    fn three_hundred_host_headers_are_refused_not_overflowed() {
        let many: Vec<(&str, &str)> = (0..300).map(|_| ("host", "a")).collect();
        assert_eq!(scan(&many), Err(Refusal::DuplicateHost));
    }
}
