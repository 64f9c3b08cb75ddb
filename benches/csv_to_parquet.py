#!/usr/bin/env python3
"""CSV -> Parquet, Carga side by side with its peers, in one run, on the same file.

Generates a TPC-H lineitem-shaped CSV, then times each tool end to end as a separate process and
reports wall time, rows/s, peak RSS (max resident set of the process tree's largest process, from
getrusage) and the ratio to Carga. Peers that are not installed are installed from PyPI first.

    python3 benches/csv_to_parquet.py --rows 1000000 --rows 4000000

Carga and pyarrow/duckdb (encrypted) write Parquet Modular Encryption; polars and plain pyarrow
cannot/do not, and are listed as such. `cat > /dev/null` is the floor: the cost of reading the bytes.
"""
import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/carga-target"))
CARGA = os.path.join(TARGET, "release", "carga")

HEADER = ("l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,"
          "l_returnflag,l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment")
WORDS = "furiously regular pending deposits sleep carefully final accounts haggle slyly ironic packages".split()


def generate(path, rows):
    rng = random.Random(42)
    instruct = ["DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN"]
    modes = ["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"]
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        lines = []
        for i in range(rows):
            qty = rng.randint(1, 50)
            day = rng.randint(1, 28)
            month = rng.randint(1, 12)
            lines.append(
                f"{i // 4 + 1},{rng.randint(1, 200000)},{rng.randint(1, 10000)},{i % 4 + 1},{qty},"
                f"{qty * rng.randint(900, 2000) / 10:.2f},0.0{rng.randint(0, 9)},0.0{rng.randint(0, 8)},"
                f"{rng.choice('ANR')},{rng.choice('OF')},1996-{month:02d}-{day:02d},1996-{month:02d}-{day:02d},"
                f"1996-{month:02d}-{day:02d},{rng.choice(instruct)},{rng.choice(modes)},"
                f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))}\n"
            )
            if len(lines) == 10000:
                f.writelines(lines)
                lines.clear()
        f.writelines(lines)


PYARROW = r"""
import base64, json, sys
import pyarrow.csv as pc, pyarrow.parquet as pq
src, out, encrypt = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
reader = pc.open_csv(src)
props = None
if encrypt:
    import pyarrow.parquet.encryption as pe
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import os
    master = os.urandom(32)
    class Kms(pe.KmsClient):
        def __init__(self, config): super().__init__()
        def wrap_key(self, key, kid):
            nonce = os.urandom(12)
            return base64.b64encode(nonce + AESGCM(master).encrypt(nonce, key, kid.encode())).decode()
        def unwrap_key(self, wrapped, kid):
            b = base64.b64decode(wrapped); return AESGCM(master).decrypt(b[:12], b[12:], kid.encode())
    props = pe.CryptoFactory(Kms).file_encryption_properties(
        pe.KmsConnectionConfig(), pe.EncryptionConfiguration(footer_key="k", uniform_encryption=True, double_wrapping=False))
writer = pq.ParquetWriter(out, reader.schema, compression="zstd", encryption_properties=props)
for batch in reader:
    writer.write_batch(batch)
writer.close()
"""

DUCKDB = r"""
import sys, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads = 2")
try:
    con.execute("LOAD httpfs")  # its OpenSSL crypto, when the extension can be loaded
except Exception:
    con.execute("SET force_mbedtls_unsafe = 'true'")  # offline: duckdb's built-in AES
con.execute("PRAGMA add_parquet_key('k', '0123456789112345')")
con.execute(f"COPY (SELECT * FROM read_csv('{src}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd, ENCRYPTION_CONFIG {{footer_key: 'k'}})")
"""

POLARS = r"""
import sys, polars as pl
pl.scan_csv(sys.argv[1]).sink_parquet(sys.argv[2], compression="zstd")
"""


def ensure_peers():
    missing = []
    for module, package in [("pyarrow", "pyarrow"), ("duckdb", "duckdb"), ("polars", "polars"), ("cryptography", "cryptography")]:
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])


def run_one(cmd, env=None):
    # A fresh Python per measurement so getrusage's children maximum belongs to this tool alone.
    probe = (
        "import resource, subprocess, sys, time, json, os;"
        "t=time.perf_counter();"
        "subprocess.run(json.loads(sys.argv[1]), check=True, stdout=subprocess.DEVNULL);"
        "e=time.perf_counter()-t;"
        "print(e, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024.0)"
    )
    import json
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(cmd)], check=True, env=env, capture_output=True, text=True)
    seconds, rss = out.stdout.split()
    return float(seconds), float(rss)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append", help="rows per run (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000]
    if not os.path.exists(CARGA):
        subprocess.check_call(["cargo", "build", "--release", "-q", "-p", "carga-worker"], cwd=ROOT)
    ensure_peers()
    work = tempfile.mkdtemp(prefix="carga-bench-")
    try:
        for rows in sizes:
            csv = os.path.join(work, f"lineitem_{rows}.csv")
            generate(csv, rows)
            size_mb = os.path.getsize(csv) / 1e6
            spec = os.path.join(work, f"spec_{rows}.yaml")
            with open(spec, "w") as f:
                f.write(f"id: lineitem\nsource: {{format: csv, location: '{csv}'}}\nmode: complete\ntrigger: callback\n")
            env = dict(os.environ, CARGA_BUCKET=os.path.join(work, f"bucket_{rows}"),
                       CARGA_KEY_FILE=os.path.join(work, "keys.json"), CARGA_ROWS_PER_FILE=str(10**9))
            tools = [
                ("carga (encrypted)", [CARGA, "run", "--dataset", spec], env),
                ("pyarrow (encrypted)", [sys.executable, "-c", PYARROW, csv, os.path.join(work, "pa_enc.parquet"), "1"], None),
                ("pyarrow (plain)", [sys.executable, "-c", PYARROW, csv, os.path.join(work, "pa.parquet"), "0"], None),
                ("duckdb (encrypted)", [sys.executable, "-c", DUCKDB, csv, os.path.join(work, "duck.parquet")], None),
                ("polars (plain)", [sys.executable, "-c", POLARS, csv, os.path.join(work, "polars.parquet")], None),
                ("floor: cat > /dev/null", ["sh", "-c", f"cat '{csv}' > /dev/null"], None),
            ]
            measured = []
            for name, cmd, tool_env in tools:
                try:
                    seconds, rss = run_one(cmd, tool_env)
                    measured.append((name, seconds, rss))
                except subprocess.CalledProcessError as e:
                    measured.append((name, None, None))
                    print(f"{name} failed: {e}", file=sys.stderr)
            carga_seconds = measured[0][1]
            print(f"\n{rows:,} rows, {size_mb:.0f} MB CSV, {os.cpu_count()} cores")
            print("| tool | wall s | rows/s | peak RSS MiB | time vs carga |")
            print("|---|---:|---:|---:|---:|")
            for name, seconds, rss in measured:
                if seconds is None:
                    print(f"| {name} | failed | | | |")
                    continue
                ratio = seconds / carga_seconds if carga_seconds else float("nan")
                print(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} | {rss:.0f} | {ratio:.2f}x |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
