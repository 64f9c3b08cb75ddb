//! Parquet Modular Encryption with envelope keys.
//!
//! Every file gets a fresh random data key (DEK). The DEK is wrapped by a master key and the wrapped
//! form is stored in the file footer as PKMT1 key material, the JSON format of the Parquet key
//! management tools that pyarrow's `pyarrow.parquet.encryption` and Spark read. Key generation and the
//! key material come from the `parquet-key-management` crate; this module supplies the master keys
//! (a local key file) and adapts the crate's keys to the `parquet` version we build with.
//!
//! Wrapped DEK format (what a pyarrow `KmsClient.unwrap_key` receives): base64 of
//! `nonce(12) || AES-GCM ciphertext || tag(16)`, AAD = the master key id, key = the master key
//! (16 or 32 bytes).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet_key_management::crypto_factory::{
    CryptoFactory, DecryptionConfiguration, EncryptionConfiguration,
};
use parquet_key_management::key_unwrapper::KeyUnwrapper;
use parquet_key_management::kms::{
    KmsClient, KmsClientRef, KmsConnectionConfig, KmsConnectionInfo,
};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{JobError, Result};

/// Master keys by id, read from a JSON key file `{"<key id>": "<base64 key>"}`.
#[derive(Clone)]
pub struct MasterKeyring {
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for MasterKeyring {
    // Key bytes never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&String> = self.keys.keys().collect();
        f.debug_struct("MasterKeyring")
            .field("key_ids", &ids)
            .finish()
    }
}

impl MasterKeyring {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| JobError::io(format!("master key file {}", path.display()), e))?;
        let encoded: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
            JobError::Encryption(format!(
                "master key file {} is not a JSON object of id -> base64 key: {e}",
                path.display()
            ))
        })?;
        let mut keys = HashMap::new();
        for (id, b64) in encoded {
            let key = BASE64.decode(b64.trim()).map_err(|_| {
                JobError::Encryption(format!(
                    "master key '{id}' in {} is not valid base64",
                    path.display()
                ))
            })?;
            if ![16, 32].contains(&key.len()) {
                return Err(JobError::Encryption(format!(
                    "master key '{id}' in {} is {} bytes; AES-GCM here needs 16 or 32",
                    path.display(),
                    key.len()
                )));
            }
            keys.insert(id, key);
        }
        Ok(Self { keys })
    }

    /// Writes a new key file holding one random 256-bit key, readable by its owner only.
    pub fn create_file(path: &Path, key_id: &str) -> Result<Self> {
        let mut key = vec![0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| JobError::Encryption("system random generator failed".into()))?;
        let body = serde_json::json!({ key_id: BASE64.encode(&key) });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| JobError::io(format!("creating {}", dir.display()), e))?;
        }
        write_private_file(path, body.to_string().as_bytes())?;
        Ok(Self {
            keys: HashMap::from([(key_id.to_owned(), key)]),
        })
    }

    pub fn from_file_or_create(path: &Path, key_id: &str, create: bool) -> Result<Self> {
        if create && !path.exists() {
            tracing::warn!(path = %path.display(), key_id, "created a new master key file; keep it safe, files written with it are unreadable without it");
            return Self::create_file(path, key_id);
        }
        Self::from_file(path)
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    fn key(&self, key_id: &str) -> parquet_key_management::errors::Result<&[u8]> {
        self.keys.get(key_id).map(Vec::as_slice).ok_or_else(|| {
            parquet_key_management::errors::Error::General(format!(
                "master key '{key_id}' is not in the key file"
            ))
        })
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| JobError::io(format!("creating master key file {}", path.display()), e))?;
    file.write_all(bytes)
        .map_err(|e| JobError::io(format!("writing {}", path.display()), e))
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| JobError::io(format!("writing {}", path.display()), e))
}

/// A KMS client backed by the local keyring: AES-GCM wraps data keys under a master key.
struct LocalKmsClient {
    keyring: MasterKeyring,
}

impl KmsClient for LocalKmsClient {
    fn wrap_key(
        &self,
        key_bytes: &[u8],
        master_key_identifier: &str,
    ) -> parquet_key_management::errors::Result<String> {
        let sealing = aead_key(self.keyring.key(master_key_identifier)?)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| general("system random generator failed"))?;
        let mut sealed = key_bytes.to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(master_key_identifier.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| general("wrapping a data key failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    fn unwrap_key(
        &self,
        wrapped_key: &str,
        master_key_identifier: &str,
    ) -> parquet_key_management::errors::Result<Vec<u8>> {
        let opening = aead_key(self.keyring.key(master_key_identifier)?)?;
        let bytes = BASE64
            .decode(wrapped_key)
            .map_err(|_| general("wrapped data key is not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(general("wrapped data key is truncated"));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| general("wrapped data key has a bad nonce"))?;
        let plain = opening
            .open_in_place(
                nonce,
                Aad::from(master_key_identifier.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| {
                general(&format!(
                    "data key cannot be unwrapped with master key '{master_key_identifier}' (wrong key?)"
                ))
            })?;
        Ok(plain.to_vec())
    }
}

fn aead_key(key: &[u8]) -> parquet_key_management::errors::Result<LessSafeKey> {
    let algorithm = match key.len() {
        16 => &AES_128_GCM,
        32 => &AES_256_GCM,
        n => {
            return Err(general(&format!(
                "master key of {n} bytes is not supported"
            )));
        }
    };
    let unbound = UnboundKey::new(algorithm, key).map_err(|_| general("bad master key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn general(message: &str) -> parquet_key_management::errors::Error {
    parquet_key_management::errors::Error::General(message.to_owned())
}

/// Hands out per-file encryption properties and the matching decryption properties.
#[derive(Clone)]
pub struct Encryptor {
    factory: Arc<CryptoFactory>,
    connection: Arc<KmsConnectionConfig>,
    master_key_id: String,
}

impl Encryptor {
    pub fn new(keyring: MasterKeyring, master_key_id: &str) -> Result<Self> {
        if !keyring.contains(master_key_id) {
            return Err(JobError::Encryption(format!(
                "master key '{master_key_id}' is not in the key file"
            )));
        }
        let client: KmsClientRef = Arc::new(LocalKmsClient { keyring });
        let factory = CryptoFactory::new(
            move |_: &KmsConnectionInfo| -> parquet_key_management::errors::Result<KmsClientRef> {
                Ok(client.clone())
            },
        );
        let connection = KmsConnectionConfig::builder()
            .set_kms_instance_id("carga-local".into())
            .set_kms_instance_url("local-key-file".into())
            .build();
        Ok(Self {
            factory: Arc::new(factory),
            connection: Arc::new(connection),
            master_key_id: master_key_id.to_owned(),
        })
    }

    /// Properties for one new file: a fresh data key encrypting footer and every column.
    pub fn file_encryption(&self) -> Result<Arc<FileEncryptionProperties>> {
        let config = EncryptionConfiguration::builder(self.master_key_id.clone())
            .set_double_wrapping(false)
            .build()
            .map_err(|e| JobError::Encryption(e.to_string()))?;
        let keys = self
            .factory
            .file_encryption_keys(self.connection.clone(), &config)
            .map_err(|e| JobError::Encryption(e.to_string()))?;
        let (footer_key, footer_key_metadata) = keys.footer_key().clone_parts();
        FileEncryptionProperties::builder(footer_key)
            .with_footer_key_metadata(footer_key_metadata)
            .build()
            .map_err(|e| JobError::parquet("building encryption properties", e))
    }

    /// Properties that unwrap any file's data key from its footer key material.
    pub fn file_decryption(&self) -> Result<Arc<FileDecryptionProperties>> {
        let unwrapper = self
            .factory
            .key_unwrapper(self.connection.clone(), DecryptionConfiguration::default())
            .map_err(|e| JobError::Encryption(e.to_string()))?;
        FileDecryptionProperties::with_key_retriever(Arc::new(FooterKeyRetriever(unwrapper)))
            .build()
            .map_err(|e| JobError::parquet("building decryption properties", e))
    }
}

/// Adapts the key management crate's unwrapper to the `parquet` crate's retriever trait.
struct FooterKeyRetriever(KeyUnwrapper);

impl KeyRetriever for FooterKeyRetriever {
    fn retrieve_key(&self, key_metadata: &[u8]) -> parquet::errors::Result<Vec<u8>> {
        self.0
            .unwrap_key(key_metadata)
            .map_err(|e| parquet::errors::ParquetError::General(e.to_string()))
    }
}

trait CloneParts {
    fn clone_parts(&self) -> (Vec<u8>, Vec<u8>);
}

impl CloneParts for parquet_key_management::encryption_keys::EncryptionKey {
    fn clone_parts(&self) -> (Vec<u8>, Vec<u8>) {
        (self.key().to_vec(), self.metadata().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> MasterKeyring {
        MasterKeyring {
            keys: HashMap::from([
                ("k1".to_owned(), vec![7u8; 32]),
                ("k2".to_owned(), vec![9u8; 16]),
            ]),
        }
    }

    #[test]
    fn wrap_then_unwrap_returns_the_data_key() {
        let client = LocalKmsClient { keyring: keyring() };
        for id in ["k1", "k2"] {
            let wrapped = client.wrap_key(b"0123456789abcdef", id).unwrap();
            assert_eq!(
                client.unwrap_key(&wrapped, id).unwrap(),
                b"0123456789abcdef"
            );
        }
    }

    #[test]
    fn unwrap_with_another_master_key_fails() {
        let client = LocalKmsClient { keyring: keyring() };
        let wrapped = client.wrap_key(b"0123456789abcdef", "k1").unwrap();
        let mut other = keyring();
        other.keys.insert("k1".into(), vec![8u8; 32]);
        let other = LocalKmsClient { keyring: other };
        assert!(other.unwrap_key(&wrapped, "k1").is_err());
    }

    #[test]
    fn key_metadata_is_pkmt1_json_naming_the_master_key() {
        let encryptor = Encryptor::new(keyring(), "k1").unwrap();
        let props = encryptor.file_encryption().unwrap();
        let metadata = props.footer_key_metadata().unwrap();
        let json: serde_json::Value = serde_json::from_slice(metadata).unwrap();
        assert_eq!(json["keyMaterialType"], "PKMT1");
        assert_eq!(json["masterKeyID"], "k1");
        assert_eq!(json["isFooterKey"], true);
        // Each file gets its own data key.
        let again = encryptor.file_encryption().unwrap();
        assert_ne!(props.footer_key(), again.footer_key());
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let shown = format!("{:?}", keyring());
        assert!(shown.contains("k1") && !shown.contains("7, 7"), "{shown}");
    }

    #[test]
    fn missing_master_key_is_a_clear_error() {
        let err = Encryptor::new(keyring(), "nope").err().unwrap();
        assert!(err.to_string().contains("'nope'"), "{err}");
    }
}
