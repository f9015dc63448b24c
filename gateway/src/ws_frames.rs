//! Where an upgraded WebSocket tunnel's server-to-client byte stream stands: inside a frame, or
//! between frames. The gateway does not frame the tunnel (Pingora copies its bytes), so it may
//! write a close frame of its own only between two of the upstream's, never inside one's payload
//! (RFC 6455 5.2), and not after the upstream's own close frame.

/// A reader of frame headers (RFC 6455 5.2) that skips payloads; fed every chunk the upstream
/// sends to the client, in order.
#[derive(Debug, Default)]
pub struct Frames {
    /// The bytes of a frame header read so far (at most 14).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The upstream sent a close frame: the closing handshake is its own.
    closed: bool,
}

impl Frames {
    /// Reads one chunk of the server-to-client stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let n = chunk.len().min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            self.header.push(chunk[0]);
            chunk = &chunk[1..];
            if self.header_len() == Some(self.header.len()) {
                self.closed |= self.header[0] & 0x0f == 0x8;
                self.payload_left = self.payload_len();
                self.header.clear();
            }
        }
    }

    /// Whether a frame of the gateway's own may be written now: between frames, and before any
    /// close frame of the upstream's.
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload_left == 0 && !self.closed
    }

    /// The whole header's length, once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        let second = *self.header.get(1)?;
        let ext = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// The payload length of the complete header held.
    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => self.header[2..10].iter().fold(0u64, |n, b| n << 8 | u64::from(*b)),
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 1 << 16 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_boundary_is_known_whatever_the_chunks_are_cut_at() {
        let stream: Vec<u8> = [frame(2, &[7; 5]), frame(2, &[1; 300]), frame(1, &[2; 70_000])].concat();
        for cut in [1, 2, 3, 7, 100, 4096] {
            let mut f = Frames::default();
            let mut boundaries = Vec::new();
            let mut at = 0;
            for chunk in stream.chunks(cut) {
                f.feed(chunk);
                at += chunk.len();
                if f.at_boundary() {
                    boundaries.push(at);
                }
            }
            // Every frame end that falls on a chunk end is seen, and no other point.
            for b in &boundaries {
                assert!([7, 7 + 304, stream.len()].contains(b), "cut {cut}: {b} is no frame end");
            }
            assert_eq!(boundaries.last(), Some(&stream.len()), "cut {cut}");
        }
    }

    #[test]
    fn inside_a_payload_or_after_the_upstreams_close_no_frame_may_be_written() {
        let mut f = Frames::default();
        let big = frame(2, &[0; 1000]);
        f.feed(&big[..500]);
        assert!(!f.at_boundary());
        f.feed(&big[500..]);
        assert!(f.at_boundary());
        f.feed(&frame(8, &[0x03, 0xe8]));
        assert!(!f.at_boundary(), "the upstream closed first");
    }
}
