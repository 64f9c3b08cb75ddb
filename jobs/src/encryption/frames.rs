//! A byte stream encrypted as it arrives (an upload's segments): AES-GCM frames of at most
//! `FRAME_BYTES` plaintext under one fresh data key per stream, wrapped by the master key like a
//! Parquet file's. Each frame is `len: u32 BE ‖ ciphertext ‖ tag`; its nonce is its index and its
//! associated data names the stream, the index and whether it is the last frame, so frames cannot
//! be reordered, moved to another stream, dropped from the end or appended to unnoticed.

use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};

use super::{Encryptor, aead_key};
use crate::error::{JobError, Result};

/// Plaintext bytes per frame: small enough to hold a few per stream, large enough that the
/// 20 bytes of framing and tag cost nothing.
pub const FRAME_BYTES: usize = 64 * 1024;

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn associated(context: &str, index: u64, last: bool) -> Vec<u8> {
    format!(
        "{context}\u{0}{index}\u{0}{}",
        if last { "last" } else { "more" }
    )
    .into_bytes()
}

/// Seals one stream's frames in order.
pub struct FrameSealer {
    key: LessSafeKey,
    context: String,
    next: u64,
}

impl FrameSealer {
    /// Appends the sealed frame of `plaintext` (at most `FRAME_BYTES`) to `out`.
    pub fn seal(&mut self, plaintext: &[u8], last: bool, out: &mut Vec<u8>) -> Result<()> {
        debug_assert!(plaintext.len() <= FRAME_BYTES);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                nonce(self.next),
                Aad::from(associated(&self.context, self.next, last)),
                &mut body,
            )
            .map_err(|_| JobError::Encryption("sealing a frame failed".into()))?;
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        self.next += 1;
        Ok(())
    }
}

/// Opens one stream's frames in order.
pub struct FrameOpener {
    key: LessSafeKey,
    context: String,
    next: u64,
}

impl FrameOpener {
    /// The plaintext of the next frame's `body` (ciphertext and tag, without the length prefix).
    pub fn open<'a>(&mut self, body: &'a mut [u8], last: bool) -> Result<&'a [u8]> {
        let index = self.next;
        let plain = self
            .key
            .open_in_place(
                nonce(index),
                Aad::from(associated(&self.context, index, last)),
                body,
            )
            .map_err(|_| {
                JobError::Encryption(format!(
                    "{}: frame {index} does not open (altered, truncated, reordered or another key)",
                    self.context
                ))
            })?;
        self.next += 1;
        Ok(plain)
    }
}

impl Encryptor {
    /// A sealer for a new stream named `context`, and the key material (PKMT1 JSON) to store
    /// beside it.
    pub fn frame_sealer(&self, context: &str) -> Result<(FrameSealer, String)> {
        let (key, material) = self.new_aead_key()?;
        Ok((
            FrameSealer {
                key,
                context: context.to_owned(),
                next: 0,
            },
            material,
        ))
    }

    /// An opener for the stream `frame_sealer` made with `key_material` for `context`.
    pub fn frame_opener(&self, key_material: &str, context: &str) -> Result<FrameOpener> {
        let key = self.unwrap_data_key(key_material, context)?;
        let key = aead_key(&key).map_err(|e| JobError::Encryption(format!("{context}: {e}")))?;
        Ok(FrameOpener {
            key,
            context: context.to_owned(),
            next: 0,
        })
    }
}

/// Splits a sealed stream arriving in pieces back into frame bodies.
#[derive(Default)]
pub struct FrameSplitter {
    buffer: Vec<u8>,
    /// Where the next frame starts in `buffer`: frames are taken without moving what follows
    /// them; the consumed front is dropped when more bytes arrive.
    start: usize,
}

impl FrameSplitter {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.drain(..self.start);
        self.start = 0;
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame body, if buffered; `Err` for a length no sealer writes.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        let pending = &self.buffer[self.start..];
        if pending.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(pending[..4].try_into().expect("4 bytes")) as usize;
        if !(16..=FRAME_BYTES + 16).contains(&len) {
            return Err(JobError::Encryption(format!(
                "a frame of {len} bytes: not a sealed stream, or corrupted"
            )));
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let body = pending[4..4 + len].to_vec();
        self.start += 4 + len;
        Ok(Some(body))
    }

    /// Bytes left over that do not make a frame.
    pub fn leftover(&self) -> usize {
        self.buffer.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::MasterKeyring;

    fn encryptor(dir: &std::path::Path) -> Encryptor {
        let keyring = MasterKeyring::create_file(&dir.join("keys.json"), "k1").unwrap();
        Encryptor::new(keyring, "k1").unwrap()
    }

    fn sealed(encryptor: &Encryptor, frames: &[&[u8]]) -> (Vec<u8>, String) {
        let (mut sealer, material) = encryptor.frame_sealer("upload u1 segment 0").unwrap();
        let mut out = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            sealer.seal(frame, i + 1 == frames.len(), &mut out).unwrap();
        }
        (out, material)
    }

    fn opened(
        encryptor: &Encryptor,
        bytes: &[u8],
        material: &str,
        context: &str,
    ) -> Result<Vec<u8>> {
        let mut opener = encryptor.frame_opener(material, context)?;
        let mut splitter = FrameSplitter::default();
        // Arrives in odd pieces, as a network stream does.
        let mut frames = Vec::new();
        for piece in bytes.chunks(7) {
            splitter.push(piece);
            while let Some(frame) = splitter.next_frame()? {
                frames.push(frame);
            }
        }
        assert_eq!(splitter.leftover(), 0);
        let mut plain = Vec::new();
        let count = frames.len();
        for (i, mut frame) in frames.into_iter().enumerate() {
            plain.extend_from_slice(opener.open(&mut frame, i + 1 == count)?);
        }
        Ok(plain)
    }

    #[test]
    fn frames_round_trip_and_hold_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let encryptor = encryptor(dir.path());
        let (bytes, material) = sealed(&encryptor, &[b"id,email\n1,ana@x.mx\n", b"2,luis@y.mx\n"]);
        assert!(!bytes.windows(6).any(|w| w == b"ana@x."));
        let plain = opened(&encryptor, &bytes, &material, "upload u1 segment 0").unwrap();
        assert_eq!(plain, b"id,email\n1,ana@x.mx\n2,luis@y.mx\n");
    }

    #[test]
    fn a_dropped_last_frame_a_moved_stream_or_a_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let encryptor = encryptor(dir.path());
        let (bytes, material) = sealed(&encryptor, &[b"first frame", b"second frame"]);
        let first_len = 4 + u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        let truncated = opened(
            &encryptor,
            &bytes[..first_len],
            &material,
            "upload u1 segment 0",
        );
        assert!(
            truncated.is_err(),
            "a stream cut at a frame boundary must not open"
        );
        let moved = opened(&encryptor, &bytes, &material, "upload u2 segment 0");
        assert!(moved.is_err());
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        let error = opened(&encryptor, &flipped, &material, "upload u1 segment 0").unwrap_err();
        assert!(error.to_string().contains("does not open"), "{error}");
    }
}
