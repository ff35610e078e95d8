"""Tagging on Ray against single-process predict, on the same photos in the same run.

Run by hand (not a test; about 2 minutes on 2 cores for 20,000 photos):

    .venv/bin/python benchmarks/batch.py                          # 20,000 photos of ../shared/data/fashion-small
    .venv/bin/python benchmarks/batch.py --photos 40000 --engine torch --actors 1

Both run as processes of their own on the same --photos photos (symlinks in a temporary folder):
- `fashiontag predict FOLDER --out single.csv --engine E`: photos/s over the whole process, start-up included;
- a driver that starts a local Ray instance on every core and calls fashiontag.inference.ray_backend.tag_on_ray: photos/s over
  the whole job (from tag_on_ray's call), the steady rate between the first and the last shard, and the time
  from ray.init to the first shard written (the first rows on disk).
Peak memory per process is each process's high-water mark (VmHWM), read from /proc while it runs: for Ray, every
process of the instance (driver, GCS, raylet, actors, task workers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT / ".." / "shared" / "data" / "fashion-small" / "images"

# The Ray driver: a local instance on loopback with every core, then the job; prints its figures as JSON.
DRIVER = """
import json, os, sys, time
import ray
from fashiontag.inference.ray_backend import tag_on_ray
t0 = time.time()
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
init_s = time.time() - t0
actors = int(sys.argv[4]) if sys.argv[4] else None
summary = tag_on_ray([sys.argv[1]], sys.argv[2], engine=sys.argv[3], actors=actors)
print(json.dumps({"init_at": t0, "init_s": init_s, **summary}))
"""


def watch(sessions: set[int], peaks: dict[int, list]) -> None:
    """Records [role, VmHWM in KiB] of every live process whose session is in sessions. A Ray worker's title
    names the task it runs, and it goes idle between tasks: the last busy role is kept."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            sid = int((status.parent / "stat").read_text().rsplit(")", 1)[1].split()[3])
            cmd = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if sid not in sessions or "VmHWM" not in fields:
            continue
        seen = peaks.setdefault(int(status.parent.name), ["idle worker", 0])
        seen[1] = max(seen[1], int(fields["VmHWM"].split()[0]))
        if (name := role(cmd)) != "idle worker":
            seen[0] = name


def role(cmd: str) -> str:
    """What a process of the run is, from its command line (a Ray worker's is its title, ray::TASK)."""
    for key, name in (("_TagActor", "tagging actor"), ("_read_photos", "read task worker"),
                      ("_write_shard", "write task worker"), ("import tag_on_ray", "driver"),
                      ("fashiontag predict", "predict")):
        if key in cmd:
            return name
    words = cmd.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return "idle worker" if words[0] == "ray::IDLE" else words[0][5:]
    if "python" in Path(words[0]).name:  # the script, past the interpreter's flags
        words = [w for w in words[1:] if not w.startswith("-")] or words
    program = Path(words[0]).name
    return "idle worker" if program == "default_worker.py" else program


def run_watched(cmd: list[str], env: dict, shards: Path | None = None) -> tuple[float, str, dict, float | None]:
    """Runs cmd in a session of its own; wall seconds, its stdout, [role, peak RSS] of each of its processes,
    and when (time.time()) a first shard appeared in shards."""
    peaks: dict[int, list] = {}
    first_shard = None
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, text=True, env=env,
                                start_new_session=True)
        while proc.poll() is None:
            watch({proc.pid}, peaks)
            if shards and first_shard is None and any(shards.glob("tags-*.parquet")):
                first_shard = time.time()
            time.sleep(0.25)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode}")
    return seconds, text, peaks, first_shard


def steady_rate(out: Path) -> float | None:
    """Rows of every shard after the first over the time between the first and the last shard's writing."""
    shards = sorted(out.glob("tags-*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(shards) < 2:
        return None
    span = shards[-1].stat().st_mtime - shards[0].stat().st_mtime
    return sum(pq.read_metadata(p).num_rows for p in shards[1:]) / span


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=20_000, help="how many photos of --data (sorted by name)")
    ap.add_argument("--data", default=str(DEFAULT_PHOTOS), help="a folder of photos")
    ap.add_argument("--engine", default="onnx", help="torch, onnx or onnx-int8, for both")
    ap.add_argument("--actors", type=int, default=None, help="Ray tagging actors (default: tag_on_ray's)")
    args = ap.parse_args()

    names = sorted(os.listdir(args.data))[:args.photos]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory(prefix="ftbatch") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for name in names:
            (folder / name).symlink_to(Path(args.data).resolve() / name)
        print(f"{len(names):,} photos of {Path(args.data).resolve()}, engine {args.engine}, {os.cpu_count()} cores")

        seconds, _, peaks, _ = run_watched([sys.executable, "-m", "fashiontag", "predict", str(folder), "--out",
                                         f"{tmp}/single.csv", "--engine", args.engine, "--no-progress"], env)
        single = len(names) / seconds
        print(f"single-process predict: {single:,.0f} photos/s ({seconds:.1f} s, start-up included); "
              f"peak RSS {max(kib for _, kib in peaks.values()) / 1024:,.0f} MiB")

        out = Path(tmp) / "shards"
        seconds, text, peaks, first_shard = run_watched([sys.executable, "-c", DRIVER, str(folder), str(out),
                                                         args.engine, str(args.actors or "")], env, out)
        s = json.loads(text.strip().splitlines()[-1])
        steady = steady_rate(out)
        print(f"ray, local instance: {s['photos_per_s']:,.0f} photos/s over the job ({s['seconds']:.1f} s from "
              f"tag_on_ray's call, {s['shards']} shards), {s['photos_per_s'] / single:.0%} of single-process; "
              + (f"steady {steady:,.0f} photos/s between the first and the last shard; " if steady else "")
              + f"ray.init {s['init_s']:.1f} s; ray.init to the first shard {first_shard - s['init_at']:.1f} s; "
              f"driver process {seconds:.1f} s in all ({len(names) / seconds:,.0f} photos/s)")
        print(f"  tagged {s['tagged']:,}, errors {s['errors']:,}")
        roles: dict[str, list[int]] = {}
        for name, kib in peaks.values():
            roles.setdefault(name, []).append(kib)
        print("  peak RSS per process, MiB (processes of that kind):")
        for name, kibs in sorted(roles.items(), key=lambda r: -max(r[1])):
            print(f"    {name:34s} {max(kibs) / 1024:6,.0f}" + (f" ({len(kibs)})" if len(kibs) > 1 else ""))
        print(f"    {'all of them together (sum of peaks)':34s} {sum(kib for _, kib in peaks.values()) / 1024:6,.0f}")


if __name__ == "__main__":
    main()
