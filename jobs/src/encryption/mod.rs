//! Parquet Modular Encryption with envelope keys.
//!
//! Every file gets a fresh random data key (DEK). The DEK is wrapped by a master key and the wrapped
//! form is stored in the file footer as PKMT1 key material, the JSON format of the Parquet key
//! management tools that pyarrow's `pyarrow.parquet.encryption` and Spark read. Key generation and the
//! key material come from the `parquet-key-management` crate; this module supplies the master keys
//! (a local key file) and adapts the crate's keys to the `parquet` version we build with.
//!
//! Two kinds of master key, chosen by `master_key_id`:
//!
//! - a key in the local key file (the embedded default). Wrapped DEK format (what a pyarrow
//!   `KmsClient.unwrap_key` receives): base64 of `nonce(12) || AES-GCM ciphertext || tag(16)`,
//!   AAD = the master key id, key = the master key (16 or 32 bytes). The key file is
//!   `{"<id>": "<base64>"}`, or after `carga keys rotate` `{"current": "<id>", "keys": {…}}`:
//!   new files use the current key, older files name the key that wrapped them.
//! - `kms://<key id or alias>`: a key in AWS KMS (`aws_kms`), with double wrapping so a run
//!   makes O(1) KMS calls.
//!
//! Reading routes each file's master key id to the key file when it holds that id, else to KMS,
//! so files written before a move from the key file to KMS stay readable.

mod aws_kms;
mod frames;
mod sealed;

pub use aws_kms::{AwsKms, KmsTarget};
pub use frames::{FRAME_BYTES, FrameOpener, FrameSealer, FrameSplitter};
pub use sealed::Sealed;

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

/// Master keys by id, read from a JSON key file `{"<key id>": "<base64 key>"}` (or its rotated
/// form `{"current": "<key id>", "keys": {…}}`).
#[derive(Clone, Default)]
pub struct MasterKeyring {
    keys: HashMap<String, Vec<u8>>,
    /// The key new files use, when the file names one (after a rotation).
    current: Option<String>,
}

/// The key file after a rotation.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotatedKeyFile {
    current: String,
    keys: BTreeMap<String, String>,
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
        let not_a_key_file = |e: serde_json::Error| {
            // Only where it failed: the message must not quote key material.
            JobError::Encryption(format!(
                "master key file {} is not a JSON object of id -> base64 key (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ))
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(not_a_key_file)?;
        let (current, encoded) = if value.get("keys").is_some_and(|k| k.is_object()) {
            let rotated: RotatedKeyFile = serde_json::from_value(value).map_err(not_a_key_file)?;
            (Some(rotated.current), rotated.keys)
        } else {
            let flat: BTreeMap<String, String> =
                serde_json::from_value(value).map_err(not_a_key_file)?;
            (None, flat)
        };
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
        if let Some(current) = current.as_deref().filter(|c| !keys.contains_key(*c)) {
            return Err(JobError::Encryption(format!(
                "master key file {} names '{current}' as current but holds no such key",
                path.display()
            )));
        }
        Ok(Self { keys, current })
    }

    /// Adds a new random 256-bit key named `key_id` to the key file and makes it the current
    /// one: new files use it; files written before keep naming (and reading with) their key.
    /// The file is replaced atomically and stays readable by its owner only.
    pub fn rotate_file(path: &Path, key_id: &str) -> Result<Self> {
        let mut ring = Self::from_file(path)?;
        if ring.keys.contains_key(key_id) {
            return Err(JobError::Encryption(format!(
                "master key file {} already holds a key '{key_id}'",
                path.display()
            )));
        }
        ring.keys.insert(key_id.to_owned(), random_key()?);
        ring.current = Some(key_id.to_owned());
        let file = RotatedKeyFile {
            current: key_id.to_owned(),
            keys: ring
                .keys
                .iter()
                .map(|(id, key)| (id.clone(), BASE64.encode(key)))
                .collect(),
        };
        let body = serde_json::to_vec_pretty(&file).expect("JSON always serializes");
        crate::private_file::replace(path, &body)?;
        Ok(ring)
    }

    /// The key new files use: the file's current key, else `configured` (the settings'
    /// `master_key_id`).
    pub fn current_or<'a>(&'a self, configured: &'a str) -> &'a str {
        self.current.as_deref().unwrap_or(configured)
    }

    /// Writes a new key file holding one random 256-bit key, readable by its owner only.
    pub fn create_file(path: &Path, key_id: &str) -> Result<Self> {
        let key = random_key()?;
        let body = serde_json::json!({ key_id: BASE64.encode(&key) });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| JobError::io(format!("creating {}", dir.display()), e))?;
        }
        write_private_file(path, body.to_string().as_bytes())?;
        Ok(Self {
            keys: HashMap::from([(key_id.to_owned(), key)]),
            current: None,
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

fn random_key() -> Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| JobError::Encryption("system random generator failed".into()))?;
    Ok(key)
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

/// Sends each master key id to where that key lives: the key file when it holds the id, else
/// AWS KMS when one is configured.
struct KeyRouter {
    local: LocalKmsClient,
    kms: Option<Arc<AwsKms>>,
}

impl KeyRouter {
    fn client_for(
        &self,
        master_key_identifier: &str,
    ) -> parquet_key_management::errors::Result<&dyn KmsClient> {
        if self.local.keyring.contains(master_key_identifier) {
            return Ok(&self.local);
        }
        match &self.kms {
            Some(kms) => Ok(kms.as_ref()),
            None => Err(general(&format!(
                "master key '{master_key_identifier}' is not in the key file (and no kms:// master key is configured)"
            ))),
        }
    }
}

impl KmsClient for KeyRouter {
    fn wrap_key(
        &self,
        key_bytes: &[u8],
        master_key_identifier: &str,
    ) -> parquet_key_management::errors::Result<String> {
        self.client_for(master_key_identifier)?
            .wrap_key(key_bytes, master_key_identifier)
    }

    fn unwrap_key(
        &self,
        wrapped_key: &str,
        master_key_identifier: &str,
    ) -> parquet_key_management::errors::Result<Vec<u8>> {
        self.client_for(master_key_identifier)?
            .unwrap_key(wrapped_key, master_key_identifier)
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
    /// The id in each file's key material (a KMS key id without `kms://`).
    master_key_id: String,
    /// KMS keys wrap a key-encryption key (cached), not every file's data key.
    double_wrapping: bool,
    kms: Option<Arc<AwsKms>>,
}

/// The prefix of a master key held by AWS KMS in `master_key_id`.
pub const KMS_SCHEME: &str = "kms://";

impl Encryptor {
    /// Local master keys only: `master_key_id` must be in `keyring`.
    pub fn new(keyring: MasterKeyring, master_key_id: &str) -> Result<Self> {
        let master_key_id = keyring.current_or(master_key_id).to_owned();
        if !keyring.contains(&master_key_id) {
            return Err(JobError::Encryption(format!(
                "master key '{master_key_id}' is not in the key file"
            )));
        }
        Ok(Self::build(keyring, None, master_key_id))
    }

    /// The master key the settings name: `kms://<key>` (AWS KMS at `kms_endpoint`, or AWS's for
    /// the region; the key file, when there is one, still reads older files), else the key
    /// file's current key (created when missing and allowed).
    pub fn from_settings(settings: &carga_config::Settings) -> Result<Self> {
        let Some(kms_key) = settings.master_key_id.strip_prefix(KMS_SCHEME) else {
            let keyring = MasterKeyring::from_file_or_create(
                &settings.key_file,
                &settings.master_key_id,
                settings.create_key_if_missing,
            )?;
            return Self::new(keyring, &settings.master_key_id);
        };
        if kms_key.is_empty() {
            return Err(JobError::Encryption(
                "master_key_id 'kms://' names no KMS key (kms://<key id, ARN or alias/name>)"
                    .into(),
            ));
        }
        let keyring = if settings.key_file.exists() {
            MasterKeyring::from_file(&settings.key_file)?
        } else {
            MasterKeyring::default()
        };
        let kms = AwsKms::start(KmsTarget {
            endpoint: settings.kms_endpoint.clone(),
            region: settings.s3.region.clone(),
        })?;
        Ok(Self::build(
            keyring,
            Some(Arc::new(kms)),
            kms_key.to_owned(),
        ))
    }

    fn build(keyring: MasterKeyring, kms: Option<Arc<AwsKms>>, master_key_id: String) -> Self {
        let double_wrapping = !keyring.contains(&master_key_id);
        let client: KmsClientRef = Arc::new(KeyRouter {
            local: LocalKmsClient { keyring },
            kms: kms.clone(),
        });
        let factory = CryptoFactory::new(
            move |_: &KmsConnectionInfo| -> parquet_key_management::errors::Result<KmsClientRef> {
                Ok(client.clone())
            },
        );
        let connection = KmsConnectionConfig::builder()
            .set_kms_instance_id("carga-local".into())
            .set_kms_instance_url("local-key-file".into())
            .build();
        Self {
            factory: Arc::new(factory),
            connection: Arc::new(connection),
            master_key_id,
            double_wrapping,
            kms,
        }
    }

    /// The master key new files use, as a manifest names it (`kms://…` for a KMS key).
    pub fn master_key_id(&self) -> String {
        if self.kms.is_some() && self.double_wrapping {
            format!("{KMS_SCHEME}{}", self.master_key_id)
        } else {
            self.master_key_id.clone()
        }
    }

    /// Calls made to AWS KMS so far (0 with local keys).
    pub fn kms_calls_made(&self) -> u64 {
        self.kms.as_ref().map_or(0, |kms| kms.calls_made())
    }

    /// A fresh data key and its PKMT1 key material (the key wrapped by the current master key).
    fn new_data_key(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let config = EncryptionConfiguration::builder(self.master_key_id.clone())
            .set_double_wrapping(self.double_wrapping)
            .build()
            .map_err(|e| JobError::Encryption(e.to_string()))?;
        let keys = self
            .factory
            .file_encryption_keys(self.connection.clone(), &config)
            .map_err(|e| JobError::Encryption(e.to_string()))?;
        Ok(keys.footer_key().clone_parts())
    }

    /// A fresh data key as an AES-GCM key, and its wrapped form (PKMT1 key material) to store
    /// beside what it seals.
    fn new_aead_key(&self) -> Result<(LessSafeKey, String)> {
        let (key, material) = self.new_data_key()?;
        let key = aead_key(&key).map_err(|e| JobError::Encryption(e.to_string()))?;
        let material = String::from_utf8(material)
            .map_err(|_| JobError::Encryption("key material is not UTF-8".into()))?;
        Ok((key, material))
    }

    /// The data key inside PKMT1 `key_material` (a sealed value's, a stream's), unwrapped by
    /// the master key it names.
    fn unwrap_data_key(&self, key_material: &str, context: &str) -> Result<Vec<u8>> {
        let refused = |e: &dyn std::fmt::Display| JobError::Encryption(format!("{context}: {e}"));
        let unwrapper = self
            .factory
            .key_unwrapper(self.connection.clone(), DecryptionConfiguration::default())
            .map_err(|e| refused(&e))?;
        unwrapper
            .unwrap_key(key_material.as_bytes())
            .map_err(|e| refused(&e))
    }

    /// Properties for one new file: a fresh data key encrypting footer and every column.
    pub fn file_encryption(&self) -> Result<Arc<FileEncryptionProperties>> {
        let (footer_key, footer_key_metadata) = self.new_data_key()?;
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
            current: None,
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
