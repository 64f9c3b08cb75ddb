"""Decrypts Carga Parquet files with pyarrow's Parquet Modular Encryption API.

Usage: read_with_pyarrow.py KEY_FILE PARQUET_FILE [PARQUET_FILE ...]
Prints every file's rows as JSON lines (one object per row) on stdout, file after file (a shell
glob over a dataset's parts expands to several). KEY_FILE may be "-" when every file's master key
is in AWS KMS.

The KmsClient below is the whole contract between Carga and a reader:
- a master key from Carga's key file (`{"<id>": "<base64>"}`, or `{"current": …, "keys": {…}}`
  after `carga keys rotate`): the wrapped key is base64(nonce[12] || AES-GCM ciphertext+tag),
  with the master key id as associated data;
- any other master key id is an AWS KMS key (`kms://<id>` in Carga's settings): the wrapped key
  is base64 of KMS's ciphertext blob, unwrapped with KMS Decrypt. Set CARGA_KMS_ENDPOINT for a
  test server; credentials and region come from the usual AWS variables.
Double wrapping (what Carga uses with KMS keys) is pyarrow's own: it asks this client to unwrap
the key-encryption key once and caches it.
"""
import base64
import json
import os
import sys
from datetime import timedelta

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class CargaKeys(pe.KmsClient):
    def __init__(self, master_keys):
        super().__init__()
        self.master_keys = master_keys
        self.kms = None

    def wrap_key(self, key_bytes, master_key_identifier):
        raise NotImplementedError("this reader only decrypts")

    def unwrap_key(self, wrapped_key, master_key_identifier):
        blob = base64.b64decode(wrapped_key)
        key = self.master_keys.get(master_key_identifier)
        if key is not None:
            return AESGCM(key).decrypt(blob[:12], blob[12:], master_key_identifier.encode())
        if self.kms is None:
            import boto3

            self.kms = boto3.client(
                "kms",
                endpoint_url=os.environ.get("CARGA_KMS_ENDPOINT") or None,
                region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            )
        answer = self.kms.decrypt(CiphertextBlob=blob, KeyId=master_key_identifier)
        return answer["Plaintext"]


def load_master_keys(key_file):
    if key_file == "-":
        return {}
    with open(key_file) as f:
        data = json.load(f)
    if isinstance(data.get("keys"), dict):
        data = data["keys"]
    return {k: base64.b64decode(v) for k, v in data.items()}


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: read_with_pyarrow.py KEY_FILE PARQUET_FILE [PARQUET_FILE ...]")
    key_file, parquet_files = sys.argv[1], sys.argv[2:]
    master_keys = load_master_keys(key_file)
    factory = pe.CryptoFactory(lambda config: CargaKeys(master_keys))
    decryption = factory.file_decryption_properties(
        pe.KmsConnectionConfig(), pe.DecryptionConfiguration(cache_lifetime=timedelta(minutes=1))
    )
    for parquet_file in parquet_files:
        table = pq.ParquetFile(parquet_file, decryption_properties=decryption).read()
        for row in table.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))


if __name__ == "__main__":
    main()
