"""Shared benchmark plumbing: run a command, sample the whole process tree's resident memory,
and print a results table with ratios to Carga."""
import os
import shutil
import subprocess
import time


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def _tree_rss_kib(root):
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
        stack.extend(_children(pid))
    return total


def measure(cmd, env=None, cwd=None):
    """Runs `cmd`; returns (wall seconds, peak RSS MiB summed over the process tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, peak / 1024.0


def report(title, rows, results, baseline="carga"):
    """results: list of (name, seconds or None, rss or None, note)."""
    base = next((s for n, s, _, _ in results if n.startswith(baseline) and s), None)
    print(f"\n{title}")
    print("| tool | wall s | rows/s | peak RSS MiB (process tree) | time vs carga | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, seconds, rss, note in results:
        if seconds is None:
            print(f"| {name} | — | — | — | — | {note} |")
            continue
        ratio = f"{seconds / base:.2f}x" if base else "—"
        print(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} | {rss:.0f} | {ratio} | {note} |")


def rivet_tool(work, source_type, table, url, note, compression=None):
    """rivet-cli exporting `table` to Parquet, as a tool entry, or None when it is not installed."""
    rivet = shutil.which("rivet")
    if not rivet:
        return None
    folder = os.path.join(work, "rivet")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "rivet.yaml"), "w") as f:
        f.write(f"source:\n  type: {source_type}\n  url_env: DATABASE_URL\nexports:\n"
                f"  - name: lineitem\n    table: {table}\n    mode: full\n    format: parquet\n"
                + (f"    compression: {compression}\n" if compression else "")
                + f"    destination:\n      type: local\n      path: {folder}/out/\n")
    return ("rivet-cli", [rivet, "run", "-c", "rivet.yaml"], dict(os.environ, DATABASE_URL=url), folder, note)


def run_listed(title, rows, listed, only=None):
    """Runs each (name, command, environment, folder, note) once and prints the table."""
    if only:
        listed = [t for t in listed if any(t[0].startswith(w) for w in only.split(","))]
    results = []
    for name, cmd, env, cwd, note in listed:
        try:
            seconds, rss = measure(cmd, env, cwd)
            results.append((name, seconds, rss, note))
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            results.append((name, None, None, f"failed: {str(e).splitlines()[-1][:120]}"))
    report(title, rows, results)
