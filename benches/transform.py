#!/usr/bin/env python3
"""The cost of a SQL transform on ingest: the same CSV run plain and with a transform (a filter
and `sha256` of one column), interleaved, three repetitions each, medians and the ratio.

    python3 benches/transform.py --rows 1000000

Uses the release binary (built if missing) and the lineitem generator of csv_to_parquet.py.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from csv_to_parquet import CARGA, ROOT, generate, run_one  # noqa: E402

TRANSFORM = ("SELECT l_orderkey, l_partkey, l_quantity, l_extendedprice, l_shipdate, "
             "sha256(l_comment) AS l_comment FROM source WHERE l_returnflag <> 'R'")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(CARGA):
        subprocess.check_call(["cargo", "build", "--release", "-q", "-p", "carga-worker"], cwd=ROOT)
    work = tempfile.mkdtemp(prefix="carga-transform-")
    csv = os.path.join(work, "lineitem.csv")
    generate(csv, args.rows)
    specs = {}
    for name, extra in [("plain", ""), ("transform", f'transform: "{TRANSFORM}"\n')]:
        path = os.path.join(work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(f"id: {name}\nsource: {{format: csv, location: '{csv}'}}\nmode: complete\n"
                    f"trigger: callback\nallow_empty: true\n{extra}")
        specs[name] = path
    env = dict(os.environ, CARGA_BUCKET=os.path.join(work, "bucket"),
               CARGA_KEY_FILE=os.path.join(work, "keys.json"), CARGA_ROWS_PER_FILE=str(10**9),
               CARGA_LOCAL_ROOTS=work)
    times = {name: [] for name in specs}
    rss = {name: [] for name in specs}
    for _ in range(args.repeat):
        for name, spec in specs.items():
            seconds, peak = run_one([CARGA, "run", "--dataset", spec], env)
            times[name].append(seconds)
            rss[name].append(peak)
    plain = statistics.median(times["plain"])
    print(f"| {args.rows:,} rows, {os.path.getsize(csv) / 1e6:.0f} MB CSV | median s | min s | peak RSS MiB | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for name in specs:
        median = statistics.median(times[name])
        print(f"| carga {name} | {median:.2f} | {min(times[name]):.2f} | {max(rss[name]):.0f} | {median / plain:.2f}x |")


if __name__ == "__main__":
    main()
