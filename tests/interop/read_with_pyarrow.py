"""Decrypts a Carga Parquet file with pyarrow's Parquet Modular Encryption API.

Usage: read_with_pyarrow.py KEY_FILE PARQUET_FILE [PARQUET_FILE ...]
Prints every file's rows as JSON lines (one object per row) on stdout, file after file (a shell
glob over a dataset's parts expands to several).

The KmsClient below is the whole contract between Carga and a reader: the wrapped data key in the
file's PKMT1 key material is base64(nonce[12] || AES-GCM ciphertext+tag), with the master key id
as associated data.
"""
import base64
import json
import sys
from datetime import timedelta

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class LocalKeyFileKms(pe.KmsClient):
    def __init__(self, master_keys):
        super().__init__()
        self.master_keys = master_keys

    def wrap_key(self, key_bytes, master_key_identifier):
        raise NotImplementedError("this reader only decrypts")

    def unwrap_key(self, wrapped_key, master_key_identifier):
        blob = base64.b64decode(wrapped_key)
        key = self.master_keys[master_key_identifier]
        return AESGCM(key).decrypt(blob[:12], blob[12:], master_key_identifier.encode())


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: read_with_pyarrow.py KEY_FILE PARQUET_FILE [PARQUET_FILE ...]")
    key_file, parquet_files = sys.argv[1], sys.argv[2:]
    with open(key_file) as f:
        master_keys = {k: base64.b64decode(v) for k, v in json.load(f).items()}
    factory = pe.CryptoFactory(lambda config: LocalKeyFileKms(master_keys))
    decryption = factory.file_decryption_properties(
        pe.KmsConnectionConfig(), pe.DecryptionConfiguration(cache_lifetime=timedelta(minutes=1))
    )
    for parquet_file in parquet_files:
        table = pq.ParquetFile(parquet_file, decryption_properties=decryption).read()
        for row in table.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))


if __name__ == "__main__":
    main()
