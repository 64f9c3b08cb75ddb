#!/usr/bin/env python3
"""Two builds of carga side by side (before and after a change) on the same inputs, interleaved
in one sitting, medians of N: a 1M-row CSV plain and with a transform, and the PostgreSQL table
of postgres_extract.py when the local server answers. Numbers from different days or machines
are not comparable; these are.

    cp $CARGO_TARGET_DIR/release/carga /tmp/carga-new      # after the change
    (git worktree add /tmp/old <commit> && cd /tmp/old && cargo build --release -p carga-worker)
    cp $CARGO_TARGET_DIR/release/carga /tmp/carga-old
    python3 benches/ab.py /tmp/carga-old /tmp/carga-new --repeat 5
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from csv_to_parquet import generate, run_one  # noqa: E402
from transform import TRANSFORM  # noqa: E402

PG_URL = os.environ.get("CARGA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_table(rows):
    """postgres_extract.py's table of `rows` rows, created if missing; None without a server."""
    table = f"bench.lineitem_{rows}"
    try:
        out = subprocess.run(["psql", "-tA", PG_URL, "-c", f"SELECT count(*) FROM {table}"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() == str(rows):
            return table
        from postgres_extract import TABLE_SQL, psql  # noqa: E402
        psql(TABLE_SQL.format(rows=rows, last=rows - 1))
        return table
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="carga-ab-")
    csv = os.path.join(work, "lineitem.csv")
    generate(csv, args.rows)
    sources = {
        "CSV": f"source: {{format: csv, location: '{csv}'}}\n",
        "CSV + transform": f"source: {{format: csv, location: '{csv}'}}\ntransform: \"{TRANSFORM}\"\n",
    }
    table = pg_table(args.rows)
    if table:
        sources["PostgreSQL"] = f"source: {{format: postgres, table: {table}}}\nconnection_id: bench\n"
    secrets = os.path.join(work, "secrets.json")
    with open(secrets, "w") as f:
        json.dump({"bench": {"url": PG_URL.replace("postgresql://", "postgres://")}}, f)
    specs = {}
    for i, (name, source) in enumerate(sources.items()):
        specs[name] = os.path.join(work, f"spec{i}.yaml")
        with open(specs[name], "w") as f:
            f.write(f"id: ds{i}\n{source}mode: complete\ntrigger: callback\nallow_empty: true\n")
    env = dict(os.environ, CARGA_BUCKET=os.path.join(work, "bucket"), CARGA_KEY_FILE=os.path.join(work, "keys.json"),
               CARGA_SECRETS_FILE=secrets, CARGA_ROWS_PER_FILE=str(10**9), CARGA_LOCAL_ROOTS=work)
    builds = {"before": args.old, "after": args.new}
    seconds = {(s, b): [] for s in specs for b in builds}
    peak = {(s, b): [] for s in specs for b in builds}
    for _ in range(args.repeat):
        for name, spec in specs.items():
            for build, binary in builds.items():
                wall, rss = run_one([binary, "run", "--dataset", spec], env)
                seconds[(name, build)].append(wall)
                peak[(name, build)].append(rss)
    print(f"| {args.rows:,} rows, medians of {args.repeat} | before s (min) | MiB | after s (min) | MiB | after/before |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in specs:
        cells = []
        for build in builds:
            runs = seconds[(name, build)]
            cells.append(f"{statistics.median(runs):.2f} ({min(runs):.2f}) | {max(peak[(name, build)]):.0f}")
        ratio = statistics.median(seconds[(name, "after")]) / statistics.median(seconds[(name, "before")])
        print(f"| {name} | {' | '.join(cells)} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
