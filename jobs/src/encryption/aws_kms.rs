//! Master keys in AWS KMS. The key management tools call a KMS client synchronously, from inside
//! the Parquet writer and reader; KMS's SDK is async. The calls go to one thread of our own that
//! runs the SDK on its own small runtime, so they work from any caller (a tokio worker, a blocking
//! thread, a current-thread test runtime) without re-entering the caller's runtime.
//!
//! With double wrapping (the default for KMS keys), a file's data key is wrapped by a key
//! encryption key (KEK) made here, and only the KEK is wrapped by KMS; the key tools cache KEKs,
//! so a run makes one `Encrypt` call per master key, not one per file, and a reader one `Decrypt`
//! per KEK. Wrapped form: base64 of KMS's ciphertext blob (what a pyarrow `KmsClient` that calls
//! `kms.decrypt(CiphertextBlob=b64decode(wrapped))` unwraps).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use parquet_key_management::errors::{Error as KeyError, Result as KeyResult};
use parquet_key_management::kms::KmsClient;

use crate::error::{JobError, Result};

/// How long one KMS call may take (the SDK retries inside it).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where KMS is: AWS's endpoint for the region unless `endpoint` names another (a test server).
#[derive(Debug, Clone, Default)]
pub struct KmsTarget {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

enum Operation {
    Encrypt(Vec<u8>),
    Decrypt(Vec<u8>),
}

struct Call {
    key_id: String,
    operation: Operation,
    reply: mpsc::Sender<std::result::Result<Vec<u8>, String>>,
}

/// A KMS client for the key tools. Dropping the last clone ends its thread.
pub struct AwsKms {
    calls: mpsc::Sender<Call>,
    made: AtomicU64,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("calls_made", &self.calls_made())
            .finish()
    }
}

impl AwsKms {
    /// Starts the KMS thread; credentials come from the standard AWS chain (environment,
    /// profile, role) when the first call is made.
    pub fn start(target: KmsTarget) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Call>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| JobError::io("starting the KMS client's runtime", e))?;
        std::thread::Builder::new()
            .name("carga-kms".into())
            .spawn(move || serve(runtime, target, receiver))
            .map_err(|e| JobError::io("starting the KMS client's thread", e))?;
        Ok(Self {
            calls: sender,
            made: AtomicU64::new(0),
        })
    }

    /// How many calls this client has made to KMS (the KEK cache keeps it O(1) per run).
    pub fn calls_made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    fn call(&self, key_id: &str, operation: Operation) -> KeyResult<Vec<u8>> {
        let (reply, answer) = mpsc::channel();
        let call = Call {
            key_id: key_id.to_owned(),
            operation,
            reply,
        };
        self.made.fetch_add(1, Ordering::Relaxed);
        self.calls
            .send(call)
            .map_err(|_| KeyError::General("the KMS client's thread has stopped".into()))?;
        match answer.recv_timeout(CALL_TIMEOUT) {
            Ok(result) => result.map_err(KeyError::General),
            Err(_) => Err(KeyError::General(format!(
                "AWS KMS did not answer within {} s (key '{key_id}')",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }
}

fn serve(runtime: tokio::runtime::Runtime, target: KmsTarget, calls: mpsc::Receiver<Call>) {
    let client = runtime.block_on(async {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = &target.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &target.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        aws_sdk_kms::Client::new(&loader.load().await)
    });
    for call in calls {
        let result = runtime.block_on(perform(&client, &call.key_id, call.operation));
        let _ = call.reply.send(result);
    }
}

async fn perform(
    client: &aws_sdk_kms::Client,
    key_id: &str,
    operation: Operation,
) -> std::result::Result<Vec<u8>, String> {
    use aws_sdk_kms::primitives::Blob;
    // KMS's messages name the key and the reason; the plaintext never appears in them.
    let describe = |what: &str, e: &dyn std::fmt::Display| {
        format!("AWS KMS {what} with key '{key_id}' failed: {e}")
    };
    match operation {
        Operation::Encrypt(plain) => client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plain))
            .send()
            .await
            .map_err(|e| describe("Encrypt", &crate::aws_error::sdk_error_text(&e)))?
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| format!("AWS KMS Encrypt with key '{key_id}' returned no ciphertext")),
        Operation::Decrypt(blob) => client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(blob))
            .send()
            .await
            .map_err(|e| describe("Decrypt", &crate::aws_error::sdk_error_text(&e)))?
            .plaintext
            .map(Blob::into_inner)
            .ok_or_else(|| format!("AWS KMS Decrypt with key '{key_id}' returned no plaintext")),
    }
}

impl KmsClient for AwsKms {
    fn wrap_key(&self, key_bytes: &[u8], master_key_identifier: &str) -> KeyResult<String> {
        let blob = self.call(
            master_key_identifier,
            Operation::Encrypt(key_bytes.to_vec()),
        )?;
        Ok(BASE64.encode(blob))
    }

    fn unwrap_key(&self, wrapped_key: &str, master_key_identifier: &str) -> KeyResult<Vec<u8>> {
        let blob = BASE64
            .decode(wrapped_key)
            .map_err(|_| KeyError::General("a KMS-wrapped key is not base64".into()))?;
        self.call(master_key_identifier, Operation::Decrypt(blob))
    }
}
