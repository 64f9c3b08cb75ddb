#!/usr/bin/env python3
"""PostgreSQL table -> Parquet: Carga side by side with the system it replaces (pyspark JDBC) and
its peers, in one run, on the same TPC-H-lineitem-shaped table in the local PostgreSQL.

    python3 benches/postgres_extract.py --rows 1000000 [--rows 10000000]

Tools: Carga (encrypted Parquet), pyspark JDBC (numPartitions=2, local[2]), connectorx + pyarrow,
duckdb's postgres extension (if it can be loaded offline), rivet-cli, and
`COPY ... TO STDOUT (FORMAT binary)` to /dev/null as the floor. Reports wall time, rows/s and the
peak RSS of the whole process tree (JVM included), and the ratio to Carga.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import rivet_tool, run_listed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/carga-target"))
CARGA = os.path.join(TARGET, "release", "carga")
URL = os.environ.get("CARGA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
JDBC_JAR = "/usr/share/java/postgresql.jar"

TABLE_SQL = """
DROP TABLE IF EXISTS bench.lineitem_{rows};
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE bench.lineitem_{rows} (
  l_orderkey bigint NOT NULL, l_partkey bigint NOT NULL, l_suppkey bigint NOT NULL, l_linenumber int NOT NULL,
  l_quantity numeric(15,2) NOT NULL, l_extendedprice numeric(15,2) NOT NULL, l_discount numeric(15,2) NOT NULL,
  l_tax numeric(15,2) NOT NULL, l_returnflag char(1) NOT NULL, l_linestatus char(1) NOT NULL,
  l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
  l_shipinstruct char(25) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44) NOT NULL,
  PRIMARY KEY (l_orderkey, l_linenumber));
INSERT INTO bench.lineitem_{rows}
SELECT g / 4 + 1, (g * 7919) % 200000 + 1, (g * 104729) % 10000 + 1, (g % 4 + 1)::int,
       (g % 50 + 1)::numeric(15,2), ((g % 50 + 1) * (900 + g % 1100) / 10.0)::numeric(15,2),
       ((g % 10) / 100.0)::numeric(15,2), ((g % 9) / 100.0)::numeric(15,2),
       (ARRAY['A','N','R'])[(g % 3 + 1)::int], (ARRAY['O','F'])[(g % 2 + 1)::int],
       date '1992-01-01' + (g % 2500)::int, date '1992-01-01' + (g % 2500)::int + 30,
       date '1992-01-01' + (g % 2500)::int + 45,
       (ARRAY['DELIVER IN PERSON','COLLECT COD','NONE','TAKE BACK RETURN'])[(g % 4 + 1)::int],
       (ARRAY['AIR','FOB','MAIL','RAIL','REG AIR','SHIP','TRUCK'])[(g % 7 + 1)::int],
       substr(md5(g::text), 1, (10 + g % 30)::int)
FROM generate_series(0::bigint, {last}) g;
ANALYZE bench.lineitem_{rows};
"""

SPARK = r"""
import sys
from pyspark.sql import SparkSession
url, table, out, jar, rows = sys.argv[1:6]
spark = (SparkSession.builder.master("local[2]").appName("carga-bench")
         .config("spark.jars", jar).config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "2g").getOrCreate())
df = spark.read.jdbc(url, table, column="l_orderkey", lowerBound=1, upperBound=int(rows) // 4 + 1,
                     numPartitions=2, properties={"user": "postgres", "driver": "org.postgresql.Driver", "fetchsize": "10000"})
df.write.mode("overwrite").option("compression", "zstd").parquet(out)
spark.stop()
"""

CONNECTORX = r"""
import sys
import connectorx as cx, pyarrow.parquet as pq
url, table, out, rows = sys.argv[1:5]
t = cx.read_sql(url, f"SELECT * FROM {table}", return_type="arrow", partition_on="l_orderkey", partition_num=2)
pq.write_table(t, out, compression="zstd")
"""

DUCKDB = r"""
import sys, duckdb
url, table, out = sys.argv[1:4]
con = duckdb.connect()
con.execute("SET threads = 2")
# duckdb-extension-postgres-scanner (PyPI) carries the extension: loaded from its file, offline.
import duckdb_extension_postgres_scanner as ext, glob, os
con.execute(f"LOAD '{glob.glob(os.path.join(os.path.dirname(ext.__file__), 'extensions', '*', 'postgres_scanner.duckdb_extension'))[0]}'")
con.execute(f"ATTACH '{url}' AS pg (TYPE postgres, READ_ONLY)")
con.execute(f"COPY (SELECT * FROM pg.{table}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
"""


def psql(sql):
    subprocess.run(["psql", "-q", URL, "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, stdout=subprocess.DEVNULL)


def prepare(rows):
    """The table `bench.lineitem_<rows>`, created once."""
    table = f"bench.lineitem_{rows}"
    exists = subprocess.run(["psql", "-tA", URL, "-c", f"SELECT count(*) FROM {table}"], capture_output=True, text=True)
    if exists.returncode != 0 or exists.stdout.strip() != str(rows):
        psql(TABLE_SQL.format(rows=rows, last=rows - 1))
    return table


def tools(rows, work, carga=CARGA):
    """(name, command, environment, working folder, note) of every tool, Carga first."""
    table = f"bench.lineitem_{rows}"
    secrets = os.path.join(work, "secrets.json")
    with open(secrets, "w") as f:
        json.dump({"bench": {"url": URL.replace("postgresql://", "postgres://")}}, f)
    spec = os.path.join(work, f"spec_{rows}.yaml")
    with open(spec, "w") as f:
        f.write(f"id: lineitem\nsource: {{format: postgres, table: {table}}}\nconnection_id: bench\n"
                "mode: complete\ntrigger: callback\n")
    chunked = os.path.join(work, f"spec_{rows}_chunked.yaml")
    with open(chunked, "w") as f:
        f.write(f"id: lineitem_chunked\nsource:\n  format: postgres\n  table: {table}\n"
                "  partitions: {column: l_orderkey, count: 4, parallel: 2}\n"
                "connection_id: bench\nmode: complete\ntrigger: callback\n")
    env = dict(os.environ, CARGA_BUCKET=os.path.join(work, "bucket"), CARGA_KEY_FILE=os.path.join(work, "keys.json"),
               CARGA_SECRETS_FILE=secrets, CARGA_ROWS_PER_FILE=str(10**9))
    jdbc_url = "jdbc:" + URL.replace("postgresql://postgres@", "postgresql://")
    listed = [
        ("carga (encrypted)", [carga, "run", "--dataset", spec], env, None, "zstd, Parquet modular encryption"),
        ("carga (4 chunks)", [carga, "run", "--dataset", chunked], env, None,
         "partitions on l_orderkey, 2 in parallel, one exported snapshot"),
        ("pyspark JDBC", [sys.executable, "-c", SPARK, jdbc_url, table, os.path.join(work, "spark"), JDBC_JAR, str(rows)], None, None,
         "numPartitions=2, local[2], zstd, not encrypted"),
        ("connectorx + pyarrow", [sys.executable, "-c", CONNECTORX, URL, table, os.path.join(work, "cx.parquet"), str(rows)], None, None,
         "partition_num=2, whole table in memory, not encrypted"),
        ("duckdb postgres", [sys.executable, "-c", DUCKDB, URL, table, os.path.join(work, "duck.parquet")], None, None,
         "duckdb 1.5.5 + postgres_scanner, threads=2, zstd, not encrypted"),
        ("floor: COPY binary > /dev/null", ["sh", "-c", f"psql '{URL}' -c 'COPY (SELECT * FROM {table}) TO STDOUT (FORMAT binary)' > /dev/null"],
         None, None, "no decoding, no Parquet"),
    ]
    rivet = rivet_tool(work, "postgres", table, URL, "not encrypted", compression="zstd")
    if rivet:
        listed.insert(5, rivet)
    return listed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--only", help="comma-separated tool names to run")
    args = parser.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--locked", "-q", "--bin", "carga"], cwd=ROOT)
    work = tempfile.mkdtemp(prefix="carga-pg-bench-")
    try:
        for rows in args.rows or [1_000_000]:
            table = prepare(rows)
            run_listed(f"{rows:,} rows of {table}, 2 cores", rows, tools(rows, work), args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
