"""Full-size photos against thumbnails (issue 26): Pillow alone against the fast decoders of data/photos.py.

Run by hand (not a test; about 10 minutes on 2 cores the first time, which makes the photos, 7 after):

    .venv/bin/python benchmarks/decode.py                    # 4,000 products of ../shared/data/fashion-small
    .venv/bin/python benchmarks/decode.py --photos 1000 --engine torch

The photos: the catalog's first --photos products as they are (80x60 JPEG) and upscaled (bicubic) to 1200x1600
JPEG (quality 90), 600x800 WebP (quality 80) and 600x800 PNG, made once under ~/.cache/fashiontag/bench (never in
the catalog or the repository).
- photos/s: a whole `fashiontag predict FOLDER --engine E` process per format and decoder (start-up included), the
  decoder chosen in the process by emptying photos.FAST_READERS for Pillow; ratio: to the 80x60 JPEGs' rate with
  the same decoder in the same run. Each process runs --rounds times, the rounds interleaved, and the best rate
  counts: on a machine shared with other work it is the run least slowed by it (the load average before and after
  is printed). CPU ms per photo: the fast decoders' predict process, user + system time over the photos (the best
  round's), which another process's load hardly changes; 2 cores / that is the rate the process would reach if it
  kept both cores busy.
- bare decode: CPU ms per photo (process time, one thread) of photos.decode / photos.decode_with_pillow, file to
  the model's letterboxed input, on the first 300 photos.
- same tags: on those 300 photos, the mean absolute pixel difference (levels 0-255) between the two decoders'
  model inputs, and the shipped model's tags of both: the share of (photo, task) labels that agree and the largest
  confidence difference.
- cache: photos/s of fashiontag.data.cache.build_cache (training's photo cache, threads on every core) for a
  catalog of those photos, into a fresh cache folder.

With --held-back (about 6 minutes more): the shipped model's held-back (test) side of the catalog made in each
full-size format the same way (under ~/.cache/fashiontag/bench/held-back), tagged through Pillow and through the
fast decoders: the share of labels equal to the catalog's, per task, and its largest difference (issue 26: under
0.1 point).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from fashiontag import Tagger
from fashiontag.data import photos
from fashiontag.data.vocab import OTHER

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / ".." / "shared" / "data" / "fashion-small" / "images"
BENCH = Path.home() / ".cache" / "fashiontag" / "bench"
FORMATS = {  # folder -> (label, suffix, size (w, h), save options); None: the catalog's own file
    "small": ("80x60 JPEG", ".jpg", None, {}),
    "jpeg": ("1200x1600 JPEG", ".jpg", (1200, 1600), {"quality": 90}),
    "webp": ("600x800 WebP", ".webp", (600, 800), {"quality": 80}),
    "png": ("600x800 PNG", ".png", (600, 800), {}),
}
# A whole predict process, with Pillow alone when asked: the fast decoders are looked up in FAST_READERS per photo.
DRIVER = """
import sys
from fashiontag.data import photos
if sys.argv.pop(1) == "pillow":
    photos.FAST_READERS.clear()
from fashiontag.cli import app
app(prog_name="fashiontag")
"""


def make(task: tuple[Path, Path]) -> None:
    src, folder = task
    _, suffix, size, options = FORMATS[folder.name]
    out = folder / (src.stem + suffix)
    if out.exists():
        return
    if size is None:
        out.symlink_to(src.resolve())
        return
    tmp = out.with_suffix(f".{os.getpid()}.tmp{suffix}")  # two runs making the same photo do not collide
    Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(tmp, **options)
    os.replace(tmp, out)  # a run cut short leaves no half-written photo behind


def make_photos(source: Path, n: int) -> Path:
    base = BENCH / f"decode-{n}"
    files = sorted(source.glob("*.jpg"), key=lambda p: p.name)[:n]
    if len(files) < n:
        sys.exit(f"{source} has {len(files)} photos, fewer than --photos {n}")
    tasks = []
    for name in FORMATS:
        (base / name).mkdir(parents=True, exist_ok=True)
        tasks += [(f, base / name) for f in files]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make, tasks, chunksize=64))
    return base


def predict_rate(folder: Path, decoder: str, engine: str, n: int) -> tuple[float, float]:
    """photos/s of a whole predict process, and its CPU ms per photo."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", DRIVER, decoder, "predict", str(folder), "--out", f"{tmp}/tags.csv",
               "--engine", engine, "--no-progress"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            sys.exit(f"predict failed ({decoder}, {folder}):\n{done.stderr}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return n / wall, cpu / n * 1e3


def bare_ms(files: list[str], decode) -> float:
    decode(files[0])  # imports and first-call set-up are not per photo
    t0 = time.process_time()
    for f in files:
        decode(f)
    return (time.process_time() - t0) / len(files) * 1e3


def agreement(files: list[str], tagger) -> tuple[float, float, float]:
    """Mean absolute pixel difference, share of labels agreeing, largest confidence difference: fast vs Pillow."""
    fast = np.stack([photos.decode(f) for f in files])
    pillow = np.stack([photos.decode_with_pillow(f) for f in files])
    same, total, worst = 0, 0, 0.0
    for a, b in zip(tagger.tag_pixels(fast), tagger.tag_pixels(pillow)):
        for task, tag in a.tags.items():
            same += tag.label == b.tags[task].label
            total += 1
            worst = max(worst, abs(tag.confidence - b.tags[task].confidence))
    return float(np.abs(fast.astype(np.int16) - pillow).mean()), same / total, worst


def cache_rate(folder: Path, suffix: str, n: int) -> float:
    from fashiontag.data.cache import build_cache
    from fashiontag.data.catalog import read_catalog
    with tempfile.TemporaryDirectory() as sheets, tempfile.TemporaryDirectory() as cache:
        sheet = Path(sheets) / "catalog.csv"
        sheet.write_text("id,photo\n" + "".join(f"{p.stem},{p}\n" for p in sorted(folder.glob("*" + suffix))))
        catalog = read_catalog(sheet, image_column="photo")
        t0 = time.perf_counter()
        build_cache(catalog, cache, progress=False)
        return n / (time.perf_counter() - t0)


def held_back_accuracy(source: Path) -> list[str]:
    """Table lines: per full-size format, each decoder's accuracy on the shipped model's test side, per task."""
    from fashiontag.data.catalog import read_catalog
    tagger = Tagger.load(engine="onnx")
    catalog = read_catalog(source.parent)
    test = set(json.loads((tagger.model_dir / "split.json").read_text())["test"])
    rows = [i for i, id_ in enumerate(catalog.ids) if id_ in test and catalog.photos[i].exists()]
    base = BENCH / "held-back"
    tasks = tagger.tasks
    lines = [f"| photos ({len(rows):,}) | decoder | " + " | ".join(tasks) + " | largest difference, points |",
             "|---|---|" + "---|" * (len(tasks) + 1)]
    for name, (label, suffix, size, _) in FORMATS.items():
        if size is None:
            continue
        (base / name).mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(make, [(catalog.photos[i], base / name) for i in rows], chunksize=64))
        files = [str(base / name / (catalog.photos[i].stem + suffix)) for i in rows]
        accuracy = {}
        for decoder, decode in (("Pillow", photos.decode_with_pillow), ("fast", photos.decode)):
            with ThreadPoolExecutor(os.cpu_count()) as pool:  # both decoders release the GIL or are Pillow's
                pixels = np.stack(list(pool.map(decode, files, chunksize=64)))
            results = tagger.tag_pixels(pixels)
            accuracy[decoder] = {}
            for t in tasks:
                pairs = [(r.tags[t].label, _target(catalog.columns[t][i], tagger.vocabs[t]))
                         for r, i in zip(results, rows)]
                accuracy[decoder][t] = 100 * np.mean([got == want for got, want in pairs if want is not None])
        worst = max(abs(accuracy["fast"][t] - accuracy["Pillow"][t]) for t in tasks)
        for decoder, acc in accuracy.items():
            lines.append(f"| {label} | {decoder} | " + " | ".join(f"{acc[t]:.2f}" for t in tasks)
                         + f" | {worst:.2f} |")
    return lines


def _target(label: str, vocab: list[str]) -> str | None:
    """The class evaluation scores a catalog label as: a rare class is Other where the model has it; an empty
    cell or a class the model does not know is not scored."""
    if label in vocab:
        return label
    return OTHER if label and OTHER in vocab else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=4000)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of catalog JPEGs (read only)")
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--rounds", type=int, default=2, help="predict runs per format and decoder; the best counts")
    ap.add_argument("--held-back", action="store_true", help="also the accuracy on the model's test side")
    args = ap.parse_args()
    base = make_photos(args.source, args.photos)
    decoders = {"pillow": photos.decode_with_pillow, "fast": photos.decode}
    load_before = os.getloadavg()[0]
    rows = {(decoder, name): {"rate": 0.0, "cpu": float("inf")} for decoder in decoders for name in FORMATS}
    for _ in range(args.rounds):
        for (decoder, name), row in rows.items():
            rate, cpu = predict_rate(base / name, decoder, args.engine, args.photos)
            if rate > row["rate"]:
                row.update(rate=rate, cpu=cpu)
    for (decoder, name), row in rows.items():
        row["bare"] = bare_ms(sorted(str(p) for p in (base / name).iterdir())[:300], decoders[decoder])
    tagger = Tagger.load(engine="onnx")
    for name, (label, suffix, _, _) in FORMATS.items():
        rows["fast", name]["cache"] = cache_rate(base / name, suffix, args.photos)
        rows["fast", name]["same"] = agreement(sorted(str(p) for p in (base / name).iterdir())[:300], tagger)
    print(f"\n{args.photos:,} photos per format, `fashiontag predict --engine {args.engine}` as a whole process, "
          f"{os.cpu_count()} cores, best of {args.rounds} rounds; load average {load_before:.1f} before the predict "
          f"runs, {os.getloadavg()[0]:.1f} after all\n")
    print("| photos | Pillow: photos/s | ratio | bare decode, ms per core | fast: photos/s | ratio | bare decode, ms "
          "per core | fast: CPU ms per photo, whole process | cache build, photos/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (label, *_) in FORMATS.items():
        cells = []
        for decoder in decoders:
            r = rows[decoder, name]
            cells += [f"{r['rate']:,.0f}", f"{r['rate'] / rows[decoder, 'small']['rate']:.2f}", f"{r['bare']:.2f}"]
        cells += [f"{rows['fast', name]['cpu']:.2f}", f"{rows['fast', name]['cache']:,.0f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n| photos (first 300) | mean abs pixel difference, fast vs Pillow | labels agreeing | largest confidence "
          "difference |\n|---|---|---|---|")
    for name, (label, *_) in FORMATS.items():
        diff, agree, worst = rows["fast", name]["same"]
        print(f"| {label} | {diff:.4f} | {agree:.2%} | {worst:.2g} |")
    if args.held_back:
        print("\nAccuracy (%) on the shipped model's held-back side, each photo made in the format\n")
        print("\n".join(held_back_accuracy(args.source)))


if __name__ == "__main__":
    main()
