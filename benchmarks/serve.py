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
import os
import random
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


async def run_mode(url: str, photos: list, clients: int, per_request: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    counts = {"requests": 0, "photos": 0}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def client(k: int) -> None:
            i = k * 7919
            while time.perf_counter() < deadline:
                batch = [photos[(i + j) % len(photos)] for j in range(per_request)]
                i += per_request
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/tag", files=[("files", (n, d, "image/jpeg")) for n, d in batch])
                    if r.status_code != 200 or len(r.json()["results"]) != per_request:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += 1
                counts["photos"] += per_request

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
        stats = (await http.get("/v1/stats")).json()
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"elapsed": elapsed, **counts, "errors": errors, "p50": np.percentile(ms, 50),
            "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99), "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: $FASHIONTAG_MODEL or the shipped model)")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos to send")
    ap.add_argument("--clients", type=int, default=24, help="concurrent clients (16-32 is the intended range)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per mode (capped at 30)")
    ap.add_argument("--mode", choices=["single", "batch", "both"], default="both")
    ap.add_argument("--batch-size", type=int, default=8, help="photos per request in batch mode")
    ap.add_argument("--max-photos", type=int, default=512, help="photos loaded into memory and cycled through")
    args = ap.parse_args()
    duration = min(args.duration, 30.0)

    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "src"))
        from fashiontag.predict import default_model_dir
        try:
            model = str(default_model_dir())
        except FileNotFoundError as e:
            sys.exit(f"{e}\n(pass --model runs/NAME/best)")
    photos = load_photos(args.photos.resolve(), args.max_photos)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "fashiontag", "serve", "--host", "127.0.0.1", "--port",
                               str(port), "--model", model], env=env, stdout=subprocess.DEVNULL,
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
                 "both": [("single", 1), ("batch", args.batch_size)]}[args.mode]
        header = (f"{'mode':8s} {'photos/req':>10s} {'requests':>9s} {'req/s':>8s} {'photos/s':>9s} {'p50 ms':>8s} "
                  f"{'p95 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'mean batch':>10s}")
        rows = []
        for name, per_request in modes:
            before = httpx.get(url + "/v1/stats").json()
            r = asyncio.run(run_mode(url, photos, args.clients, per_request, duration))
            passes = r["stats"]["batches"] - before["batches"]
            mean_batch = (r["stats"]["photos"] - before["photos"]) / passes if passes else 0.0
            rows.append(f"{name:8s} {per_request:10d} {r['requests']:9d} {r['requests'] / r['elapsed']:8.1f} "
                        f"{r['photos'] / r['elapsed']:9.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
                        f"{len(r['errors']):6d} {mean_batch:10.1f}")
            for e in r["errors"][:3]:
                print(f"  error ({name}): {e}")
        rss_end = rss_mib(server.pid)
        print(header)
        print("\n".join(rows))
        print(f"server RSS: {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at the end")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
