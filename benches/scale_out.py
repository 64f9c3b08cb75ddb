"""Scale-out benchmark: one partitioned PostgreSQL table (TPC-H lineitem) read by 1, 2, 4 and 8
`carga worker` processes (`--concurrency 1` each) through the Redis queue, the chunks spread
over them (`partitions.across_workers`). Runs the worker counts interleaved, `--repeat` times,
and reports the median time and rows/s per count, the workers' peak RSS, and a fitted model of
the curve: T(N) = c + W / min(N, P), c the coordinator's own time (plan, snapshot, enqueue,
notes, commit), W the reading work, P the cores the workers really get.

    python3 benches/scale_out.py [--rows 10000000] [--workers 1,2,4,8] [--chunks 16] [--repeat 3]

Needs the local PostgreSQL and Redis, and the release `carga` (`CARGA_BENCH_BIN` or the target
dir). Results: benches/results/scale_out_<rows>_rows.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import postgres_extract  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/carga-target"))


def build():
    """The example that drives the workers: it only starts processes, enqueues and waits, so the
    dev build (`--workspace`: the features the tests build with, nothing rebuilds) is enough; the
    workers are the release `carga`."""
    subprocess.run(["cargo", "build", "-q", "--locked", "--workspace", "--example", "scale_out"],
                   cwd=ROOT, check=True, env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    return os.path.join(TARGET, "debug", "examples", "scale_out")


def fit(medians, cores):
    """Least squares of T = c + W * x with x = 1 / min(N, cores)."""
    xs = [1.0 / min(n, cores) for n in medians]
    ys = list(medians.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    w = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - w * mx, w


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    carga = os.environ.get("CARGA_BENCH_BIN", os.path.join(TARGET, "release", "carga"))
    table = postgres_extract.prepare(args.rows)
    driver = build()
    out = subprocess.run([driver, carga, table, "l_orderkey", args.workers, str(args.chunks), str(args.repeat)],
                         check=True, capture_output=True, text=True).stdout
    runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    counts = [int(n) for n in args.workers.split(",")]
    medians = {n: statistics.median(r["seconds"] for r in runs if r["workers"] == n) for n in counts}
    cores = os.cpu_count() or 1
    c, w = fit(medians, cores)
    print(f"\n{args.rows:,} rows, {args.chunks} chunks, {cores} cores, {args.repeat} repetitions (median)")
    print("| workers | wall s (median) | min s | rows/s | speed-up vs 1 | peak RSS per worker MiB | model s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        mine = [r for r in runs if r["workers"] == n]
        best = min(r["seconds"] for r in mine)
        rss = max(r["peak_worker_rss_mib"] for r in mine)
        model = c + w / min(n, cores)
        print(f"| {n} | {medians[n]:.2f} | {best:.2f} | {args.rows / medians[n]:,.0f} | "
              f"{medians[counts[0]] / medians[n]:.2f}x | {rss} | {model:.2f} |")
    print(f"\nmodel: T(N) = {c:.2f} s + {w:.2f} s / min(N, {cores}); on a machine with N free cores "
          f"(and a database serving N streams): T(8) = {c + w / 8:.2f} s, T(16) = {c + w / 16:.2f} s")
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benches", "results", f"scale_out_{args.rows}_rows.json")
    with open(path, "w") as f:
        json.dump({"rows": args.rows, "chunks": args.chunks, "cores": cores, "runs": runs,
                   "median_seconds": medians, "model": {"c": c, "w": w}}, f, indent=1)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
