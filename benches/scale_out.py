"""Scale-out benchmark: one partitioned PostgreSQL table (TPC-H lineitem) read by 1, 2, 4 and 8
`carga worker` processes (`--concurrency 1` each) through the Redis queue, the chunks spread
over them (`partitions.across_workers`). Runs the worker counts interleaved, `--repeat` times,
and reports the median time and rows/s per count, the workers' peak RSS, and the CPU the run
cost: the workers' (all processes, coordinator included) and the PostgreSQL server's (its
backends, reaped by the postmaster). The model: one worker is a pipeline (its backend's COPY,
its decode, encode and encryption) that keeps `u = CPU / T(1)` cores busy; N workers on P cores
take T(N) = c + max((T(1) - c) / N, CPU / P), c the part no worker count shortens (the plan,
the snapshot, the polls, the commit).

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


def postmaster_cpu():
    """CPU seconds of the PostgreSQL server: the postmaster's and its reaped children's
    (backends end with their connection) plus the live children's."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            procs[int(entry)] = (int(fields[1]), [int(x) for x in fields[11:15]])
        except (OSError, ValueError, IndexError):
            continue
    roots = [pid for pid, (ppid, _) in procs.items() if ppid not in procs]
    total = 0
    for pid, (ppid, (utime, stime, cutime, cstime)) in procs.items():
        total += utime + stime
        if pid in roots:
            total += cutime + cstime
    return total / tick


def one_run(driver, carga, table, workers, chunks):
    """One run with `workers` workers: its record, with the CPU of the workers and the server."""
    before_children = os.times()
    before_pg = postmaster_cpu()
    out = subprocess.run([driver, carga, table, "l_orderkey", str(workers), str(chunks), "1"],
                         check=True, capture_output=True, text=True).stdout
    after_children = os.times()
    run = next(json.loads(line) for line in out.splitlines() if line.startswith("{"))
    # The driver waits for its workers, so their CPU is in its children's times.
    run["workers_cpu_s"] = (after_children.children_user + after_children.children_system
                            - before_children.children_user - before_children.children_system)
    run["postgres_cpu_s"] = postmaster_cpu() - before_pg
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-build", action="store_true", help="use the driver already built")
    args = parser.parse_args()
    carga = os.environ.get("CARGA_BENCH_BIN", os.path.join(TARGET, "release", "carga"))
    table = postgres_extract.prepare(args.rows)
    driver = os.path.join(TARGET, "debug", "examples", "scale_out") if args.no_build else build()
    counts = [int(n) for n in args.workers.split(",")]
    runs = [one_run(driver, carga, table, n, args.chunks) | {"round": r}
            for r in range(args.repeat) for n in counts]
    med = lambda n, key: statistics.median(r[key] for r in runs if r["workers"] == n)  # noqa: E731
    medians = {n: med(n, "seconds") for n in counts}
    cores = os.cpu_count() or 1
    cpu = statistics.median(r["workers_cpu_s"] + r["postgres_cpu_s"] for r in runs)
    t1 = medians[counts[0]] if counts[0] == 1 else None
    saturated = min(medians.values())
    c = max(0.0, saturated - cpu / cores)
    print(f"\n{args.rows:,} rows, {args.chunks} chunks, {cores} cores, {args.repeat} repetitions (median)")
    print("| workers | wall s (median) | min s | rows/s | speed-up vs 1 | CPU s: workers + PostgreSQL | "
          "peak RSS per worker MiB | model s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        mine = [r for r in runs if r["workers"] == n]
        best = min(r["seconds"] for r in mine)
        rss = max(r["peak_worker_rss_mib"] for r in mine)
        model = c + max((t1 - c) / n, cpu / cores) if t1 else float("nan")
        print(f"| {n} | {medians[n]:.2f} | {best:.2f} | {args.rows / medians[n]:,.0f} | "
              f"{medians[counts[0]] / medians[n]:.2f}x | {med(n, 'workers_cpu_s'):.1f} + "
              f"{med(n, 'postgres_cpu_s'):.1f} | {rss} | {model:.2f} |")
    if t1:
        busy = cpu / t1
        print(f"\nmodel: CPU per run {cpu:.1f} s (median, workers + server); one worker keeps "
              f"{busy:.2f} cores busy; c = {c:.2f} s. With a core per worker pipeline "
              f"({busy:.2f} each) and a server that serves N streams: "
              + ", ".join(f"T({n}) = {c + (t1 - c) / n:.2f} s ({args.rows / (c + (t1 - c) / n):,.0f} rows/s)"
                          for n in (2, 4, 8, 16)))
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benches", "results", f"scale_out_{args.rows}_rows.json")
    with open(path, "w") as f:
        json.dump({"rows": args.rows, "chunks": args.chunks, "cores": cores, "runs": runs,
                   "median_seconds": medians, "model": {"c": c, "cpu": cpu, "t1": t1}}, f, indent=1)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
