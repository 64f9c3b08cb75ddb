//! Carga's Parquet encryption as a DataFusion `EncryptionFactory`: DataFusion asks it for the
//! decryption properties of each file it opens, and Carga's key provider unwraps each file's data
//! key from the file's own key material (as pyarrow and Spark do with the key file).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::EncryptionFactoryOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::parquet_encryption::EncryptionFactory;
use object_store::path::Path;
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;

use crate::encryption::Encryptor;

/// The name the factory is registered under in a session.
pub const ENCRYPTION_FACTORY_ID: &str = "carga";

pub(crate) struct CargaEncryption {
    encryptor: Encryptor,
}

impl CargaEncryption {
    pub fn new(encryptor: Encryptor) -> Self {
        Self { encryptor }
    }
}

impl std::fmt::Debug for CargaEncryption {
    // Keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CargaEncryption").finish_non_exhaustive()
    }
}

#[async_trait]
impl EncryptionFactory for CargaEncryption {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        _file_path: &Path,
    ) -> Result<Option<Arc<FileEncryptionProperties>>> {
        self.encryptor
            .file_encryption()
            .map(Some)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _file_path: &Path,
    ) -> Result<Option<Arc<FileDecryptionProperties>>> {
        self.encryptor
            .file_decryption()
            .map(Some)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}
