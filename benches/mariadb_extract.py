#!/usr/bin/env python3
"""MariaDB table -> Parquet: Carga side by side with pyspark JDBC and peers, in one run, on the same
TPC-H-lineitem-shaped table in the local MariaDB.

    python3 benches/mariadb_extract.py --rows 1000000

Tools: Carga (encrypted Parquet), pyspark JDBC (numPartitions=2, local[2]; a `jdbc:mysql:` URL so that
Spark quotes identifiers the MySQL way), connectorx + pyarrow,
rivet-cli, and `mariadb --quick -e 'SELECT ...' > /dev/null` as the floor (the server's text
protocol, no decoding). Peak RSS is summed over the process tree.
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
URL = os.environ.get("CARGA_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
JDBC_JAR = "/usr/share/java/mariadb-java-client.jar"

TABLE_SQL = """
DROP TABLE IF EXISTS test.lineitem_{rows};
CREATE TABLE test.lineitem_{rows} (
  l_orderkey BIGINT NOT NULL, l_partkey BIGINT NOT NULL, l_suppkey BIGINT NOT NULL, l_linenumber INT NOT NULL,
  l_quantity DECIMAL(15,2) NOT NULL, l_extendedprice DECIMAL(15,2) NOT NULL, l_discount DECIMAL(15,2) NOT NULL,
  l_tax DECIMAL(15,2) NOT NULL, l_returnflag CHAR(1) NOT NULL, l_linestatus CHAR(1) NOT NULL,
  l_shipdate DATE NOT NULL, l_commitdate DATE NOT NULL, l_receiptdate DATE NOT NULL,
  l_shipinstruct CHAR(25) NOT NULL, l_shipmode CHAR(10) NOT NULL, l_comment VARCHAR(44) NOT NULL,
  PRIMARY KEY (l_orderkey, l_linenumber)) ENGINE=InnoDB;
INSERT INTO test.lineitem_{rows}
SELECT g DIV 4 + 1, (g * 7919) % 200000 + 1, (g * 104729) % 10000 + 1, g % 4 + 1,
       g % 50 + 1, (g % 50 + 1) * (900 + g % 1100) / 10.0, (g % 10) / 100.0, (g % 9) / 100.0,
       ELT(g % 3 + 1, 'A', 'N', 'R'), ELT(g % 2 + 1, 'O', 'F'),
       DATE '1992-01-01' + INTERVAL (g % 2500) DAY, DATE '1992-01-01' + INTERVAL (g % 2500 + 30) DAY,
       DATE '1992-01-01' + INTERVAL (g % 2500 + 45) DAY,
       ELT(g % 4 + 1, 'DELIVER IN PERSON', 'COLLECT COD', 'NONE', 'TAKE BACK RETURN'),
       ELT(g % 7 + 1, 'AIR', 'FOB', 'MAIL', 'RAIL', 'REG AIR', 'SHIP', 'TRUCK'),
       SUBSTR(MD5(g), 1, 10 + g % 30)
FROM (SELECT seq AS g FROM seq_0_to_{last}) AS s;
ANALYZE TABLE test.lineitem_{rows};
"""

SPARK = r"""
import sys
from pyspark.sql import SparkSession
url, table, out, jar, rows = sys.argv[1:6]
spark = (SparkSession.builder.master("local[2]").appName("carga-bench")
         .config("spark.jars", jar).config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "2g").getOrCreate())
df = spark.read.jdbc(url, table, column="l_orderkey", lowerBound=1, upperBound=int(rows) // 4 + 1, numPartitions=2,
                     properties={"user": "root", "password": "", "driver": "org.mariadb.jdbc.Driver"})
df.write.mode("overwrite").option("compression", "zstd").parquet(out)
spark.stop()
"""

CONNECTORX = r"""
import sys
import connectorx as cx, pyarrow.parquet as pq
url, table, out = sys.argv[1:4]
t = cx.read_sql(url, f"SELECT * FROM {table}", return_type="arrow", partition_on="l_orderkey", partition_num=2)
pq.write_table(t, out, compression="zstd")
"""


def mariadb(sql):
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-D", "test"], input=sql, text=True, check=True)


def prepare(rows):
    """The table `test.lineitem_<rows>`, created once."""
    table = f"test.lineitem_{rows}"
    count = subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-N", "-e", f"SELECT COUNT(*) FROM {table}"],
                           capture_output=True, text=True)
    if count.returncode != 0 or count.stdout.strip() != str(rows):
        mariadb(TABLE_SQL.format(rows=rows, last=rows - 1))
    return table


def tools(rows, work, carga=CARGA):
    """(name, command, environment, working folder, note) of every tool, Carga first."""
    table = f"test.lineitem_{rows}"
    secrets = os.path.join(work, "secrets.json")
    with open(secrets, "w") as f:
        json.dump({"bench": {"url": URL}}, f)
    spec = os.path.join(work, "spec.yaml")
    with open(spec, "w") as f:
        f.write(f"id: lineitem\nsource: {{format: mariadb, table: {table}}}\nconnection_id: bench\n"
                "mode: complete\ntrigger: callback\n")
    env = dict(os.environ, CARGA_BUCKET=os.path.join(work, "bucket"), CARGA_KEY_FILE=os.path.join(work, "keys.json"),
               CARGA_SECRETS_FILE=secrets, CARGA_ROWS_PER_FILE=str(10**9))
    listed = [
        ("carga (encrypted)", [carga, "run", "--dataset", spec], env, None, "zstd, Parquet modular encryption"),
        ("pyspark JDBC", [sys.executable, "-c", SPARK, "jdbc:mysql://127.0.0.1:3306/test?permitMysqlScheme", table,
                          os.path.join(work, "spark"), JDBC_JAR, str(rows)], None, None, "numPartitions=2, local[2], not encrypted"),
        ("connectorx + pyarrow", [sys.executable, "-c", CONNECTORX, URL, table, os.path.join(work, "cx.parquet")], None, None,
         "partition_num=2, whole table in memory, not encrypted"),
        ("floor: mariadb --quick > /dev/null", ["sh", "-c", f"mariadb -h 127.0.0.1 -u root --quick -N -e 'SELECT * FROM {table}' > /dev/null"],
         None, None, "text protocol, no decoding"),
    ]
    rivet = rivet_tool(work, "mysql", table, URL, "not encrypted", compression=None)
    if rivet:
        listed.insert(3, rivet)
    return listed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--only")
    args = parser.parse_args()
    subprocess.check_call(["cargo", "build", "--release", "--locked", "-q", "--bin", "carga"], cwd=ROOT)
    work = tempfile.mkdtemp(prefix="carga-mysql-bench-")
    try:
        for rows in args.rows or [1_000_000]:
            table = prepare(rows)
            run_listed(f"{rows:,} rows of {table} (MariaDB), 2 cores", rows, tools(rows, work), args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
