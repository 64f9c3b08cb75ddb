#!/usr/bin/env python3
"""Every benchmark in one run: Carga and its peers on the same inputs, interleaved (repetition 1 of
every tool, then repetition 2, ...), so a slow minute of the machine hits every tool alike.

    python3 benches/suite.py                      # PostgreSQL 1M and 10M, CSV 1M/4M/8M, NDJSON 1M, MariaDB 1M
    python3 benches/suite.py --works csv --csv-rows 1000000 --repeat 3
    python3 benches/suite.py --write-readme       # also replaces the README's generated tables
    python3 benches/suite.py --readme-only        # the README's tables from benches/results/*.json

Works and peers:
- PostgreSQL table -> Parquet (`postgres_extract.tools`): COPY binary floor, duckdb 1.5.5 with its
  postgres extension, connectorx + pyarrow, pyspark JDBC, rivet-cli.
- CSV -> Parquet, the same table exported with `COPY ... (FORMAT csv, HEADER)`: polars, duckdb,
  pyarrow (plain and encrypted), pyspark, `cat > /dev/null` as the floor; Carga with inferred and
  with declared types.
- NDJSON -> Parquet, the same table as one JSON object per line (`row_to_json`): polars, duckdb,
  pyarrow, `cat > /dev/null`; Carga on every core and on one parse thread (`CARGA_PARSE_THREADS=1`).
- MariaDB table -> Parquet (`mariadb_extract.tools`): `mariadb --quick` floor, connectorx,
  pyspark JDBC, rivet-cli.

Each measurement is a separate process; wall time and the peak resident memory of its whole
process tree (JVMs included) are taken by `harness.measure`, the 1-minute load average before it.
Reported: median and minimum of the repetitions, rows/s at the median, the median peak RSS, and
the median time as a ratio to Carga's. Peers install themselves from PyPI and Debian.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mariadb_extract  # noqa: E402
import postgres_extract  # noqa: E402
from csv_to_parquet import DUCKDB as DUCKDB_CSV, POLARS, PYARROW  # noqa: E402
from harness import measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/carga-target"))
CARGA = os.environ.get("CARGA_BENCH_BIN", os.path.join(TARGET, "release", "carga"))
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "benches", "results")
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

PIP_PEERS = ["pyarrow", "polars", "duckdb==1.5.5", "duckdb-extension-postgres-scanner==1.5.5", "connectorx",
             "pyspark", "rivet-cli", "cryptography"]
APT_PEERS = ["default-jre-headless", "libpostgresql-jdbc-java", "libmariadb-java"]

SPARK_CSV = r"""
import sys
from pyspark.sql import SparkSession
src, out = sys.argv[1:3]
spark = (SparkSession.builder.master("local[2]").appName("carga-bench").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "2g").getOrCreate())
spark.read.csv(src, header=True, inferSchema=True).write.mode("overwrite").option("compression", "zstd").parquet(out)
spark.stop()
"""

DECLARED = {"l_quantity": "decimal(15,2)", "l_extendedprice": "decimal(15,2)", "l_discount": "decimal(15,2)",
            "l_tax": "decimal(15,2)", "l_shipdate": "date", "l_commitdate": "date", "l_receiptdate": "date"}


def install_peers():
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PIP_PEERS], check=True)
    if shutil.which("java") is None or not os.path.exists(postgres_extract.JDBC_JAR):
        subprocess.run(["apt-get", "install", "-y", "-q", *APT_PEERS], check=False, stdout=subprocess.DEVNULL)


def csv_export(rows, work):
    """The PostgreSQL lineitem table's first `rows` rows as CSV (`char(25)` padding included)."""
    source = postgres_extract.prepare(1_000_000 if rows <= 1_000_000 else 10_000_000)
    path = os.path.join(work, f"lineitem_{rows}.csv")
    if not os.path.exists(path):
        query = f"SELECT * FROM {source} ORDER BY l_orderkey, l_linenumber LIMIT {rows}"
        subprocess.run(["psql", "-q", postgres_extract.URL, "-c", f"\\copy ({query}) TO '{path}' (FORMAT csv, HEADER true)"],
                       check=True)
    return path


def csv_tools(rows, work):
    csv = csv_export(rows, work)
    env = dict(os.environ, CARGA_BUCKET=os.path.join(work, "bucket"), CARGA_KEY_FILE=os.path.join(work, "keys.json"),
               CARGA_ROWS_PER_FILE=str(10**9))
    specs = {}
    for name, extra in [("inferred", ""), ("declared", "schema:\n" + "".join(f"  {c}: {t}\n" for c, t in DECLARED.items()))]:
        specs[name] = os.path.join(work, f"csv_{name}_{rows}.yaml")
        with open(specs[name], "w") as f:
            f.write(f"id: lineitem_csv_{name}\nsource: {{format: csv, location: '{csv}'}}\nmode: complete\n"
                    f"trigger: callback\n{extra}")
    out = lambda name: os.path.join(work, name)  # noqa: E731
    return csv, [
        ("carga (inferred types)", [CARGA, "run", "--dataset", specs["inferred"]], env, None, "zstd, encrypted"),
        ("carga (declared types)", [CARGA, "run", "--dataset", specs["declared"]], env, None,
         "decimals and dates declared; zstd, encrypted"),
        ("polars", [sys.executable, "-c", POLARS, csv, out("polars.parquet")], None, None, "sink_parquet, zstd, not encrypted"),
        ("duckdb", [sys.executable, "-c", DUCKDB_CSV, csv, out("duck.parquet")], None, None, "threads=2, zstd, encrypted"),
        ("pyarrow (encrypted)", [sys.executable, "-c", PYARROW, csv, out("pa_enc.parquet"), "1"], None, None, "zstd"),
        ("pyarrow", [sys.executable, "-c", PYARROW, csv, out("pa.parquet"), "0"], None, None, "zstd, not encrypted"),
        ("pyspark", [sys.executable, "-c", SPARK_CSV, csv, out("spark_csv")], None, None,
         "inferSchema, local[2], zstd, not encrypted"),
        ("floor: cat > /dev/null", ["sh", "-c", f"cat '{csv}' > /dev/null"], None, None, "reading the bytes"),
    ]


POLARS_NDJSON = r"""
import sys, polars as pl
pl.scan_ndjson(sys.argv[1]).sink_parquet(sys.argv[2], compression="zstd")
"""

DUCKDB_NDJSON = DUCKDB_CSV.replace("read_csv('{src}')", "read_json('{src}', format = 'newline_delimited')")

PYARROW_NDJSON = r"""
import sys, pyarrow.json as pj, pyarrow.parquet as pq
pq.write_table(pj.read_json(sys.argv[1]), sys.argv[2], compression="zstd")
"""


def ndjson_export(rows, work):
    """The PostgreSQL lineitem table's first `rows` rows, one JSON object per line."""
    source = postgres_extract.prepare(1_000_000 if rows <= 1_000_000 else 10_000_000)
    path = os.path.join(work, f"lineitem_{rows}.ndjson")
    if not os.path.exists(path):
        query = f"SELECT row_to_json(t) FROM (SELECT * FROM {source} ORDER BY l_orderkey, l_linenumber LIMIT {rows}) t"
        # psql -A -t prints each row's text as is (COPY's text format would escape backslashes).
        with open(path, "w") as out:
            subprocess.run(["psql", "-q", "-A", "-t", postgres_extract.URL, "-c", query], stdout=out, check=True)
    return path


def ndjson_tools(rows, work):
    ndjson = ndjson_export(rows, work)
    env = dict(os.environ, CARGA_BUCKET=os.path.join(work, "bucket"), CARGA_KEY_FILE=os.path.join(work, "keys.json"),
               CARGA_ROWS_PER_FILE=str(10**9))
    spec = os.path.join(work, f"ndjson_{rows}.yaml")
    with open(spec, "w") as f:
        f.write(f"id: lineitem_ndjson\nsource: {{format: json, location: '{ndjson}'}}\nmode: complete\ntrigger: callback\n")
    out = lambda name: os.path.join(work, name)  # noqa: E731
    return ndjson, [
        ("carga", [CARGA, "run", "--dataset", spec], env, None, "every core; zstd, encrypted"),
        ("carga (1 parse thread)", [CARGA, "run", "--dataset", spec], dict(env, CARGA_PARSE_THREADS="1"), None,
         "records decoded on one thread beside the splitter; zstd, encrypted"),
        ("polars", [sys.executable, "-c", POLARS_NDJSON, ndjson, out("polars.parquet")], None, None,
         "scan_ndjson, sink_parquet, zstd, not encrypted"),
        ("duckdb", [sys.executable, "-c", DUCKDB_NDJSON, ndjson, out("duck.parquet")], None, None,
         "threads=2, zstd, encrypted"),
        ("pyarrow", [sys.executable, "-c", PYARROW_NDJSON, ndjson, out("pa.parquet")], None, None,
         "whole file in memory, zstd, not encrypted"),
        ("floor: cat > /dev/null", ["sh", "-c", f"cat '{ndjson}' > /dev/null"], None, None, "reading the bytes"),
    ]


def works(args, work):
    """(title, rows, tools) of every work asked for."""
    for name in args.works.split(","):
        if name == "pg":
            for rows in args.pg_rows:
                table = postgres_extract.prepare(rows)
                yield f"PostgreSQL {rows:,} rows (`{table}`)", rows, postgres_extract.tools(rows, work, CARGA)
        elif name == "csv":
            for rows in args.csv_rows:
                csv, listed = csv_tools(rows, work)
                yield f"CSV {rows:,} rows ({os.path.getsize(csv) / 1e6:.0f} MB)", rows, listed
        elif name == "ndjson":
            for rows in args.ndjson_rows:
                ndjson, listed = ndjson_tools(rows, work)
                yield f"NDJSON {rows:,} rows ({os.path.getsize(ndjson) / 1e6:.0f} MB)", rows, listed
        elif name == "mariadb":
            for rows in args.mariadb_rows:
                table = mariadb_extract.prepare(rows)
                yield f"MariaDB {rows:,} rows (`{table}`)", rows, mariadb_extract.tools(rows, work, CARGA)
        else:
            raise SystemExit(f"unknown work {name!r}: pg, csv, ndjson, mariadb")


def run_work(title, rows, listed, repeat, only):
    if only:
        listed = [t for t in listed if t[0].startswith("carga") or any(t[0].startswith(w) for w in only)]
    runs = {t[0]: [] for t in listed}
    loads = []
    for rep in range(repeat):
        loads.append(os.getloadavg()[0])
        for name, cmd, env, cwd, _ in listed:
            try:
                seconds, rss = measure(cmd, env, cwd)
                runs[name].append((seconds, rss))
                print(f"  {title} | rep {rep + 1} | {name}: {seconds:.2f} s, {rss:.0f} MiB", file=sys.stderr)
            except Exception as e:  # a peer that cannot run here is reported, not fatal
                runs[name].append((None, str(e).strip().splitlines()[-1][:160] if str(e).strip() else "failed"))
                print(f"  {title} | rep {rep + 1} | {name}: failed: {runs[name][-1][1]}", file=sys.stderr)
    results = []
    for name, _, _, _, note in listed:
        ok = [(s, r) for s, r in runs[name] if s is not None]
        failure = next((r for s, r in runs[name] if s is None), None)
        if not ok:
            results.append({"tool": name, "note": note, "failed": failure})
            continue
        times = [s for s, _ in ok]
        results.append({"tool": name, "note": note, "median_s": statistics.median(times), "min_s": min(times),
                        "rss_mib": statistics.median(r for _, r in ok), "runs": len(ok), "times": times,
                        "failed": failure})
    return {"title": title, "rows": rows, "loads": loads, "results": results}


def markdown(work):
    base = next((r["median_s"] for r in work["results"] if r["tool"].startswith("carga") and "median_s" in r), None)
    lines = [f"**{work['title']}** — load average before each repetition: "
             + ", ".join(f"{x:.2f}" for x in work["loads"]), "",
             "| tool | median s | min s | rows/s | peak RSS MiB | vs carga | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in work["results"]:
        if "median_s" not in r:
            lines.append(f"| {r['tool']} | — | — | — | — | — | failed here: {r['failed']} |")
            continue
        ratio = f"{r['median_s'] / base:.2f}x" if base else "—"
        note = r["note"] + (f"; {r['runs']} of the runs succeeded" if r["failed"] else "")
        lines.append(f"| {r['tool']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {work['rows'] / r['median_s']:,.0f} | "
                     f"{r['rss_mib']:.0f} | {ratio} | {note} |")
    return "\n".join(lines)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, carga {commit}"


def write_readme(text):
    with open(README) as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} section")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(README, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--works", default="pg,csv,ndjson,mariadb", help="comma-separated: pg, csv, ndjson, mariadb")
    parser.add_argument("--pg-rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--csv-rows", type=int, nargs="+", default=[1_000_000, 4_000_000, 8_000_000])
    parser.add_argument("--ndjson-rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--mariadb-rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="comma-separated peers to run beside Carga (name prefixes)")
    parser.add_argument("--no-install", action="store_true", help="do not install the peers")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--readme-only", action="store_true",
                        help="measure nothing: rewrite the README's tables from the stored measurements")
    args = parser.parse_args()
    if args.readme_only:
        write_readme(readme_text())
        return
    if "CARGA_BENCH_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "--bin", "carga"], cwd=ROOT, check=True)
    if not args.no_install:
        install_peers()
    only = args.only.split(",") if args.only else None
    work = tempfile.mkdtemp(prefix="carga-suite-")
    today = datetime.date.today().isoformat()
    command = f"python3 benches/suite.py {' '.join(sys.argv[1:])}".strip()
    os.makedirs(RESULTS, exist_ok=True)
    try:
        for title, rows, listed in works(args, work):
            measured = run_work(title, rows, listed, args.repeat, only)
            measured.update({"date": today, "machine": machine(), "command": command, "repeat": args.repeat})
            # One file per work: a later run of some works keeps the others' latest measurements.
            slug = "".join(c if c.isalnum() else "_" for c in title.split("(")[0].strip().lower())
            with open(os.path.join(RESULTS, f"{slug}.json"), "w") as f:
                json.dump(measured, f, indent=1)
            print(markdown(measured) + "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.write_readme:
        write_readme(readme_text())


ORDER = ["postgresql", "csv", "ndjson", "mariadb"]


def readme_text():
    """The README's generated section: every work's latest measurements, in a fixed order."""
    stored = []
    for name in os.listdir(RESULTS):
        if name.endswith(".json"):
            with open(os.path.join(RESULTS, name)) as f:
                measured = json.load(f)
            if "title" in measured:  # scale_out.py's results have their own table
                stored.append(measured)
    stored.sort(key=lambda w: (next((i for i, k in enumerate(ORDER) if w["title"].lower().startswith(k)), 99), w["rows"]))
    parts = []
    for w in stored:
        parts.append(f"{markdown(w)}\n\n<sub>{w['date']}, {w['machine']}; `{w['command']}`, "
                     f"{w['repeat']} interleaved repetitions.</sub>")
    return "\n\n".join(parts)

if __name__ == "__main__":
    main()
