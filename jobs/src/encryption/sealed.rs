//! Metadata sealed with the master key: the watermark values in a manifest and the whole validation
//! report hold data values (a cursor's timestamp and key, rejected rows, per-column statistics),
//! so beside encrypted Parquet they must not be plaintext. A sealed value has its own random data
//! key, wrapped by the same key tools (and master key, and KEK cache) as a Parquet footer's key,
//! and AES-GCM with a context (which document and which field) as associated data, so a sealed
//! value copied into another manifest or report does not open there.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Encryptor, aead_key};
use crate::error::{JobError, Result};

pub const SEALED_ALGORITHM: &str = "AES_GCM";

/// A sealed value as stored: readable by whoever has the master key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    pub algorithm: String,
    /// PKMT1 key material (the same JSON as a Parquet footer's): names the master key and
    /// holds the wrapped data key.
    pub key_material: String,
    /// base64(nonce(12) ‖ ciphertext ‖ tag(16)).
    pub ciphertext: String,
}

impl Encryptor {
    /// Seals `plaintext` for `context` (e.g. `manifest raw/ventas/…/00000000000000000003`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Sealed> {
        let (sealing, key_material) = self.new_aead_key()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| JobError::Encryption("system random generator failed".into()))?;
        let mut sealed = plaintext.to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| JobError::Encryption("sealing metadata failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(Sealed {
            algorithm: SEALED_ALGORITHM.into(),
            key_material,
            ciphertext: BASE64.encode(out),
        })
    }

    /// Opens what `seal` sealed for the same `context`.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Vec<u8>> {
        let refused = |why: &str| JobError::Encryption(format!("{context}: {why}"));
        if sealed.algorithm != SEALED_ALGORITHM {
            return Err(refused(&format!(
                "sealed with '{}', which this version does not know",
                sealed.algorithm
            )));
        }
        let key = self.unwrap_data_key(&sealed.key_material, context)?;
        let opening = aead_key(&key).map_err(|e| refused(&e.to_string()))?;
        let bytes = BASE64
            .decode(&sealed.ciphertext)
            .map_err(|_| refused("the sealed value is not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(refused("the sealed value is truncated"));
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = opening
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| {
                refused(
                    "the sealed value does not open (another document's, altered, or another key)",
                )
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::MasterKeyring;

    fn encryptor_in(dir: &std::path::Path) -> Encryptor {
        let keyring = MasterKeyring::create_file(&dir.join("keys.json"), "k1").unwrap();
        Encryptor::new(keyring, "k1").unwrap()
    }

    #[test]
    fn sealed_values_open_in_their_own_context_only() {
        let dir = tempfile::tempdir().unwrap();
        let encryptor = encryptor_in(dir.path());
        let sealed = encryptor
            .seal(b"2026-03-14T15:09:26 / CUST-7", "manifest a 1")
            .unwrap();
        let shown = serde_json::to_string(&sealed).unwrap();
        assert!(
            !shown.contains("CUST-7") && shown.contains("\"masterKeyID\\\":\\\"k1\\\""),
            "{shown}"
        );
        assert_eq!(
            encryptor.open(&sealed, "manifest a 1").unwrap(),
            b"2026-03-14T15:09:26 / CUST-7"
        );
        let moved = encryptor
            .open(&sealed, "manifest b 1")
            .unwrap_err()
            .to_string();
        assert!(moved.contains("does not open"), "{moved}");
        let other = tempfile::tempdir().unwrap();
        let stranger = encryptor_in(other.path());
        assert!(stranger.open(&sealed, "manifest a 1").is_err());
    }
}
