//! The WhatsApp wire framing below the Noise layer.
//!
//! A client opens the byte stream with an optional edge-routing pre-intro
//! (`ED\0\1` + 3-byte length + data), then the 4-byte connection header
//! `WA <magic> <dict version>`. After that, every message is a frame: a 3-byte
//! big-endian length followed by that many bytes. WebSocket message boundaries
//! carry no meaning, so the reader buffers bytes and cuts frames itself.

use thiserror::Error;

/// Largest frame payload: what a 3-byte length can express.
pub const MAX_FRAME_LEN: usize = 0xff_ffff;

const LEN_BYTES: usize = 3;
const EDGE_PREINTRO_MAGIC: &[u8; 4] = b"ED\x00\x01";
const CONN_HEADER_LEN: usize = 4;

/// A malformed byte stream.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The stream did not start with the `WA` connection header.
    #[error("bad connection header {0:02x?}")]
    BadHeader(Vec<u8>),
    /// A payload longer than [`MAX_FRAME_LEN`] cannot be framed.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
}

/// Buffers incoming bytes and yields complete frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    header_seen: bool,
}

impl FrameReader {
    /// A reader that expects the connection header first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if !self.header_seen && !self.strip_header()? {
            return Ok(None);
        }
        if self.buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = (usize::from(self.buf[0]) << 16)
            | (usize::from(self.buf[1]) << 8)
            | usize::from(self.buf[2]);
        if self.buf.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let frame = self.buf[LEN_BYTES..LEN_BYTES + len].to_vec();
        self.buf.drain(..LEN_BYTES + len);
        Ok(Some(frame))
    }

    /// Consumes the pre-intro and connection header; `Ok(false)` if incomplete.
    fn strip_header(&mut self) -> Result<bool, FrameError> {
        let mut start = 0;
        if self.buf.len() >= 2 && &self.buf[..2] == b"ED" {
            if self.buf.len() < EDGE_PREINTRO_MAGIC.len() + LEN_BYTES {
                return Ok(false);
            }
            if &self.buf[..4] != EDGE_PREINTRO_MAGIC {
                return Err(FrameError::BadHeader(self.buf[..4].to_vec()));
            }
            let len = (usize::from(self.buf[4]) << 16)
                | (usize::from(self.buf[5]) << 8)
                | usize::from(self.buf[6]);
            start = EDGE_PREINTRO_MAGIC.len() + LEN_BYTES + len;
        }
        if self.buf.len() < start + CONN_HEADER_LEN {
            return Ok(false);
        }
        if &self.buf[start..start + 2] != b"WA" {
            let end = (start + CONN_HEADER_LEN).min(self.buf.len());
            return Err(FrameError::BadHeader(self.buf[start..end].to_vec()));
        }
        self.buf.drain(..start + CONN_HEADER_LEN);
        self.header_seen = true;
        Ok(true)
    }
}

/// Prefixes `payload` with its 3-byte length.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if payload.len() <= MAX_FRAME_LEN => len,
        _ => return Err(FrameError::TooLarge(payload.len())),
    };
    let mut out = Vec::with_capacity(LEN_BYTES + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_across_arbitrary_chunks() {
        let mut wire = b"WA\x06\x03".to_vec();
        wire.extend(encode_frame(b"hello").unwrap());
        wire.extend(encode_frame(b"").unwrap());
        wire.extend(encode_frame(&[7u8; 300]).unwrap());
        let mut r = FrameReader::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(2) {
            r.push(chunk);
            while let Some(f) = r.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), vec![], vec![7u8; 300]]);
    }

    #[test]
    fn skips_edge_routing_preintro() {
        let mut wire = b"ED\x00\x01\x00\x00\x02xyWA\x06\x03".to_vec();
        wire.extend(encode_frame(b"hi").unwrap());
        let mut r = FrameReader::new();
        r.push(&wire);
        assert_eq!(r.next_frame().unwrap(), Some(b"hi".to_vec()));
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn rejects_garbage_header_and_oversized_frames() {
        let mut r = FrameReader::new();
        r.push(b"GET / HTTP/1.1");
        assert!(matches!(r.next_frame(), Err(FrameError::BadHeader(_))));

        assert_eq!(
            encode_frame(&vec![0u8; MAX_FRAME_LEN + 1]),
            Err(FrameError::TooLarge(MAX_FRAME_LEN + 1))
        );
    }
}
