"""Load-test `fashiontag serve` on loopback: latency percentiles, throughput, errors, server memory.

Run by hand (not a test):

    .venv/bin/python benchmarks/serve.py --model runs/NAME/best            # ~30 s: single-photo, then batched
    .venv/bin/python benchmarks/serve.py --clients 32 --duration 10 --mode batch --batch-size 16

The server runs in its own process (`python -m fashiontag serve`, 127.0.0.1 only), so the clients here do not
share its interpreter; its resident memory is read from /proc at the start and the end. Every mode is bounded by
--duration seconds, and the whole run by start-up plus the modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT / ".." / "shared" / "data" / "fashion-small" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_photos(folder: Path, limit: int, seed: int = 0) -> list[tuple[str, bytes]]:
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not names:
        sys.exit(f"no photos in {folder}")
    random.Random(seed).shuffle(names)
    return [(n, (folder / n).read_bytes()) for n in names[:limit]]


def run_loop(coroutine):
    """asyncio.run on uvloop where installed (a dependency of the server): the load generator's own CPU time comes
    out of the same 2 cores as the server's, so the lighter it is the truer the server's figures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def tag_request(host: str, batch: list[tuple[str, bytes]]) -> bytes:
    """A whole POST /v1/tag request, bytes ready for the socket: built once, so the clients spend little CPU."""
    boundary = "fashiontag-bench-7d3c1f"
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                    f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in batch)
    body += f"--{boundary}--\r\n".encode()
    head = (f"POST /v1/tag HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection: the status and the body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if length is None:
        raise ValueError(f"response without a content-length: {head[:200]!r}")
    return int(head[9:12]), await reader.readexactly(int(length.group(1)))


async def run_mode(port: int, photos: list, clients: int, per_request: int, duration: float) -> dict:
    """`clients` keep-alive connections, each sending its next request as soon as the last one is answered.

    A plain asyncio client rather than httpx: at hundreds of requests a second an HTTP library's own CPU time on
    these 2 cores would be a large part of the latency measured."""
    host = f"127.0.0.1:{port}"
    requests = [tag_request(host, [photos[(i + j) % len(photos)] for j in range(per_request)])
                for i in range(0, len(photos), per_request)]
    latencies: list[float] = []
    errors: list[str] = []
    counts = {"requests": 0, "photos": 0}
    deadline = time.perf_counter() + duration

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k * 7919
        try:
            while time.perf_counter() < deadline:
                i += 1
                t0 = time.perf_counter()
                try:
                    status, body = await exchange(reader, writer, requests[i % len(requests)])
                    if status != 200 or len(json.loads(body)["results"]) != per_request:
                        errors.append(f"HTTP {status}: {body[:200]!r}")
                        continue
                except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                    errors.append(repr(e))
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += 1
                counts["photos"] += per_request
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    stats = httpx.get(f"http://{host}/v1/stats").json()
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"elapsed": elapsed, **counts, "errors": errors, "p50": np.percentile(ms, 50),
            "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99), "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: $FASHIONTAG_MODEL or the shipped model)")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos to send")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (16-32 is the intended range)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per mode (capped at 30)")
    ap.add_argument("--mode", choices=["single", "batch", "both", "soak"], default="both",
                    help="soak: both, three times over, to watch the server's memory")
    ap.add_argument("--batch-size", type=int, default=8, help="photos per request in batch mode")
    ap.add_argument("--engine", default="onnx", help="the server's engine: onnx (its default), torch or onnx-int8")
    ap.add_argument("--max-photos", type=int, default=512, help="photos loaded into memory and cycled through")
    args = ap.parse_args()
    duration = min(args.duration, 30.0)

    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "src"))
        from fashiontag.model_folder import default_model_dir
        try:
            model = str(default_model_dir())
        except FileNotFoundError as e:
            sys.exit(f"{e}\n(pass --model runs/NAME/best)")
    photos = load_photos(args.photos.resolve(), args.max_photos)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "fashiontag", "serve", "--host", "127.0.0.1", "--port",
                               str(port), "--model", model, "--no-access-log", "--engine", args.engine], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f"server exited with {server.returncode}:\n{server.stderr.read()[-3000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 60:
                sys.exit("server not ready after 60 s")
            time.sleep(0.1)
        rss_start = rss_mib(server.pid)
        print(f"server ready in {time.perf_counter() - t0:.1f} s; model {model}; {len(photos)} photos from "
              f"{args.photos}; {args.clients} clients; {os.cpu_count()} CPUs; RSS {rss_start:.0f} MiB")
        modes = {"single": [("single", 1)], "batch": [("batch", args.batch_size)],
                 "both": [("single", 1), ("batch", args.batch_size)],
                 "soak": [("single", 1), ("batch", args.batch_size)] * 3}[args.mode]
        header = (f"{'mode':8s} {'photos/req':>10s} {'requests':>9s} {'req/s':>8s} {'photos/s':>9s} {'p50 ms':>8s} "
                  f"{'p95 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'mean batch':>10s} {'RSS MiB':>8s}")
        rows = []
        for name, per_request in modes:
            before = httpx.get(url + "/v1/stats").json()
            r = run_loop(run_mode(port, photos, args.clients, per_request, duration))
            passes = r["stats"]["batches"] - before["batches"]
            mean_batch = (r["stats"]["photos"] - before["photos"]) / passes if passes else 0.0
            rows.append(f"{name:8s} {per_request:10d} {r['requests']:9d} {r['requests'] / r['elapsed']:8.1f} "
                        f"{r['photos'] / r['elapsed']:9.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
                        f"{len(r['errors']):6d} {mean_batch:10.1f} {rss_mib(server.pid):8.0f}")
            for e in r["errors"][:3]:
                print(f"  error ({name}): {e}")
        rss_end = rss_mib(server.pid)
        print(header)
        print("\n".join(rows))
        print(f"server RSS: {rss_start:.0f} MiB at start (before any request), {rss_end:.0f} MiB at the end; the RSS "
              "column is after each mode")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
