"""A large CSV uploaded to `carga serve` with tus, the connection cut twice, resumed, validated.

    python3 benches/upload_resume.py [size_mib=2048] [carga binary]

Builds nothing: pass the release binary (`cargo build --release -p carga-worker`; default
`$CARGO_TARGET_DIR/release/carga`). Prints the upload throughput (bytes sent / wall time of the
PATCHes, the cuts' reconnections included), the validation time (the last PATCH's answer waits
for it), and the server's peak RSS (VmHWM of `carga serve`, sampled by the kernel, so nothing
between samples is missed).
"""
import base64
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time

size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/carga-target"))
binary = sys.argv[2] if len(sys.argv) > 2 else f"{target}/release/carga"
port = 18480
work = tempfile.mkdtemp(prefix="carga-upload-bench-")
csv_path = os.path.join(work, "ventas.csv")

print(f"generating {size_mib} MiB of CSV in {csv_path} …", flush=True)
with open(csv_path, "w") as out:
    out.write("id,customer,amount,updated_at\n")
    written, row, target_bytes = 0, 0, size_mib << 20
    block = []
    while written < target_bytes:
        line = f"{row},cliente-{row % 999983:06},{row % 10000}.{row % 100:02},2026-11-{1 + row % 28:02}T10:00:00\n"
        block.append(line)
        written += len(line)
        row += 1
        if len(block) == 50_000:
            out.write("".join(block))
            block.clear()
    out.write("".join(block))
rows = row
length = os.path.getsize(csv_path)

# A local bucket unless CARGA_BUCKET names one (e.g. s3://… with CARGA_S3_ENDPOINT for moto).
env = dict(os.environ, CARGA_KEY_FILE=f"{work}/keys.json",
           CARGA_SECRETS_FILE=f"{work}/secrets.json", RUST_LOG="warn")
env.setdefault("CARGA_BUCKET", f"{work}/bucket")
server = subprocess.Popen([binary, "serve", "--state-dir", f"{work}/state", "--listen", f"127.0.0.1:{port}"],
                          env=env, stdout=subprocess.DEVNULL, stderr=open(f"{work}/serve.log", "w"))
token_file = f"{work}/state/admin-token"
for _ in range(300):
    if os.path.exists(token_file) and open(token_file).read().strip():
        break
    time.sleep(0.1)
token = open(token_file).read().strip()
auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}


def request(method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request(method, path, body=body, headers={**auth, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def offset_of(location):
    response, _ = request("HEAD", location)
    return int(response.getheader("Upload-Offset"))


def patch_then_cut(location, offset, stop):
    """Sends bytes offset..stop of a PATCH that announces the whole rest, then closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"PATCH {location} HTTP/1.1\r\nHost: carga\r\nAuthorization: Bearer {token}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {length - offset}\r\n\r\n")
    sock.sendall(head.encode())
    with open(csv_path, "rb") as f:
        f.seek(offset)
        left = stop - offset
        while left:
            piece = f.read(min(left, 1 << 20))
            sock.sendall(piece)
            left -= len(piece)
    sock.close()


def settled(location, expected):
    for _ in range(600):
        if offset_of(location) == expected:
            time.sleep(0.2)
            return offset_of(location)
        time.sleep(0.1)
    return offset_of(location)


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# Resident memory by phase: idle, receiving (the cut requests), the last request (bytes, then
# the validation's read).
phase = {"name": "idle"}
peaks = {}


def sample():
    while server.poll() is None:
        try:
            value = rss_mib(server.pid)
        except OSError:
            return
        peaks[phase["name"]] = max(peaks.get(phase["name"], 0.0), value)
        time.sleep(0.05)


import threading  # noqa: E402

threading.Thread(target=sample, daemon=True).start()
time.sleep(1)

metadata = f"dataset {base64.b64encode(b'ventas_bench').decode()},filename {base64.b64encode(b'ventas.csv').decode()}"
response, _ = request("POST", "/upload/dataset", {"Upload-Length": str(length), "Upload-Metadata": metadata})
assert response.status == 201, response.status
location = response.getheader("Location")

started = time.monotonic()
phase["name"] = "receiving"
offset = 0
for fraction in (0.3, 0.6):
    stop = int(length * fraction) + 7
    patch_then_cut(location, offset, stop)
    offset = settled(location, stop)
    print(f"cut at {stop} bytes; the server kept {offset}", flush=True)
    assert offset == stop, "bytes were lost at the cut"

sent_at = time.monotonic()
phase["name"] = "last request (receiving, then validating)"
with open(csv_path, "rb") as f:
    f.seek(offset)

    class Rest:
        """The rest of the file, read as http.client sends it (never whole in memory)."""

        def read(self, n=1 << 20):
            return f.read(n)

    response, body = request("PATCH", location, {"Content-Type": "application/offset+octet-stream",
                                                  "Upload-Offset": str(offset),
                                                  "Content-Length": str(length - offset)}, Rest())
answered = time.monotonic()
print(body.decode()[:400])
assert response.status == 200, response.status
peak = peak_rss_mib(server.pid)
server.terminate()
server.wait(timeout=30)

# The last PATCH's time includes the validation; its upload part is estimated at the rate of the
# first 60% (the cuts included), which had no validation.
upload_rate = offset / (sent_at - started)
total = answered - started
validation = max(0.0, total - length / upload_rate)
print(f"\nfile: {length / 2**20:.0f} MiB, {rows} rows; two cuts, resumed")
print(f"upload: {upload_rate / 2**20:.0f} MiB/s (encrypted into the bucket, cuts included)")
print(f"upload + validation: {total:.1f} s (validation ≈ {validation:.1f} s, {rows / max(validation, 1e-9):,.0f} rows/s)")
print(f"server peak RSS (VmHWM): {peak:.0f} MiB")
for name, value in peaks.items():
    print(f"  peak RSS while {name}: {value:.0f} MiB")
