"""Training and tagging speed on this machine: photos/s, the gain over fp32 eager, FLOP/s against the peak.

Run by hand (not a test):

    .venv/bin/python benchmarks/speed.py                              # random-init default model, ~2-3 minutes
    .venv/bin/python benchmarks/speed.py --model runs/NAME/best --photos 5000     # also accuracy per engine
    .venv/bin/python benchmarks/speed.py --no-compile --skip-training

Training: photos/s of `fashiontag.training.train.train` itself on --train-photos photos of the catalog (its second epoch,
validation pass included) in fp32 eager, the baseline; in channels_last with bf16 autocast; and torch.compiled,
with what compiling costs (the first epoch's extra time).
Tagging, model only: uint8 photos in memory to calibrated probabilities, per engine. Tagging end to end: JPEG files
in, CSV out (`fashiontag predict`'s pipeline: read-ahead decoding threads, inference threads, vectorised rows), in
this process once warm (the steady state), and as a whole `fashiontag predict` process (start-up included), with
the time from starting the process to the first photo's row.
The forward pass's FLOPs come from torch.utils.flop_counter; the peaks from large matmuls timed in the same run,
on the same threads. Peak RSS is the process's high-water mark after each part. Everything runs in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from fashiontag import INPUT_HW
from fashiontag.data.photos import PhotoInput, iter_image_paths, load_batch
from fashiontag.inference.engines import TorchEngine
from fashiontag.inference.onnx_export import export_onnx
from fashiontag.inference.predict import tag_paths, thread_split, write_rows
from fashiontag.inference.tagger import Tagger
from fashiontag.models import create_model, family_args
from fashiontag.models.checkpoint import load_model, save_model
from fashiontag.training.config import TrainConfig
from fashiontag.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT / ".." / "shared" / "data" / "fashion-small" / "images"
# Class counts of the real catalog's tasks, for a random-init model shaped like a trained one.
CLASSES = {"gender": 5, "masterCategory": 6, "subCategory": 36, "articleType": 96, "baseColour": 44, "season": 4,
           "usage": 7}

HEADER = f"  {'':44s} {'photos/s':>9s} {'ratio':>6s} {'GFLOP/s':>8s} {'of peak':>7s}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, min_seconds: float = 1.0, min_reps: int = 2) -> float:
    """Seconds per call: one warm-up call, then repeats until min_seconds have passed; the best of them."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """FLOP/s of an n x n matmul: the practical peak for dense math at this dtype on these threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / timed(lambda: torch.mm(a, b), min_seconds=1.0, min_reps=3)


def make_model_dir(args, tmp: Path) -> Path:
    """A private copy of --model, or a random-init model of the default architecture: exports land here."""
    dest = tmp / "model"
    if args.model:
        shutil.copytree(Path(args.model), dest, ignore=shutil.ignore_patterns("*.onnx"))
        return dest
    cfg = TrainConfig()
    args = family_args(cfg.model, cfg.model_args)
    model = create_model(cfg.model, CLASSES, **args).eval()
    vocabs = {t: [f"{t}-{i}" for i in range(n)] for t, n in CLASSES.items()}
    meta = {"arch": cfg.model, "arch_args": args, "input_hw": list(INPUT_HW), "vocabs": vocabs,
            "hierarchy": [], "temperatures": {t: 1.0 for t in vocabs}, "config": {"data": ""}}
    save_model(dest, model, meta)
    return dest


def photo_paths(args, tmp: Path) -> list[Path]:
    """The first --photos image files of --images; where there are none, random JPEGs written to a temp folder."""
    folder = Path(args.images)
    paths = list(islice(iter_image_paths([folder]), args.photos)) if folder.is_dir() else []
    if paths:
        return paths
    print(f"(no photos in {folder}: tagging {args.photos} random JPEGs instead)")
    rng = np.random.default_rng(0)
    (tmp / "photos").mkdir()
    for i in range(args.photos):
        px = np.full((*INPUT_HW, 3), 255, np.uint8)
        px[10:70, 10:50] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(px).save(tmp / "photos" / f"{i}.jpg", quality=90)
    return sorted((tmp / "photos").iterdir())


def row(label: str, rate: float, base: float | None, flops: float | None = None, peak: float | None = None,
        note: str = "") -> None:
    ratio = f"{rate / base:5.2f}x" if base else "     "
    gf = f"{rate * flops / 1e9:8.1f}" if flops else " " * 8
    pct = f"{100 * rate * flops / peak:6.1f}%" if flops and peak else " " * 7
    print(f"  {label:44s} {rate:9.0f} {ratio} {gf} {pct}  {note}", flush=True)


def bench_training(model_dir: Path, args, peaks: dict, tmp: Path) -> None:
    """The real training loop, a short run per recipe: photos/s of its second epoch, and the first epoch's extra
    time (compiling, for the compiled run)."""
    if not (Path(args.data) / "styles.csv").exists():
        print(f"\n(training timings skipped: no catalog at --data {args.data})")
        return
    _, meta = load_model(model_dir)
    heads = {t: len(v) for t, v in meta["vocabs"].items()}
    model = create_model(meta["arch"], heads, **meta.get("arch_args", {}))
    with FlopCounterMode(display=False) as fc:
        sum(v.sum() for v in model(torch.rand(2, 3, *INPUT_HW)).values()).backward()
    flops = fc.get_total_flops() / 2
    n = args.train_photos
    print(f"\ntraining (fashiontag.training.train.train, {n:,} photos of {args.data}, 2 epochs; the second timed, its "
          f"validation pass included): {flops / 1e6:.0f} MFLOP/photo (forward + backward); "
          f"{torch.get_num_threads()} threads\n{HEADER}")
    base = None
    recipes = [("fp32 eager (baseline)", dict(bf16=False, channels_last=False, compile=False), "fp32"),
               ("channels_last + bf16 autocast", dict(compile=False), "bf16")]
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")  # a cold cache: the first compile's cost
        recipes.append(("the same, torch.compiled (long runs)", dict(compile=True), "bf16"))
    for i, (label, changes, peak) in enumerate(recipes):
        cfg = TrainConfig(data=args.data, out=str(tmp / f"train{i}"), max_train=n, epochs=2, patience=99,
                          progress=False, **changes)
        best = train(cfg)
        first, second = json.loads((best / "model.json").read_text())["history"][:2]
        rate = n / second["seconds"]
        base = base or rate
        row(label, rate, None if i == 0 else base, flops, peaks[peak],
            f"first epoch {first['seconds'] - second['seconds']:+.0f} s" if changes.get("compile") else "")
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")


def whole_process(model_dir: Path, paths: list[Path], engine: str, tmp: Path) -> tuple[float, float]:
    """Seconds for a whole `fashiontag predict` process tagging one photo (the time to the first tag), and
    photos/s of a whole process tagging `paths` into a CSV file."""
    cmd = [sys.executable, "-m", "fashiontag", "predict", "--model", str(model_dir), "--engine", engine]
    t = time.perf_counter()
    subprocess.run(cmd + [str(paths[0])], check=True, capture_output=True)
    first = time.perf_counter() - t
    listing = tmp / "paths"
    listing.mkdir(exist_ok=True)
    for i, p in enumerate(paths):  # one folder of links: the command line of a shell user, not 4,000 arguments
        (listing / f"{i}{p.suffix}").symlink_to(p.resolve())
    t = time.perf_counter()
    subprocess.run(cmd + [str(listing), "--out", str(tmp / "whole.csv")], check=True, stderr=subprocess.DEVNULL)
    rate = len(paths) / (time.perf_counter() - t)
    shutil.rmtree(listing)
    return first, rate


def bench_tagging(model_dir: Path, paths: list[Path], args, peaks: dict, tmp: Path) -> None:
    cores = os.cpu_count() or 1
    infer_threads, decode_threads = thread_split()
    t = time.perf_counter()
    export_onnx(model_dir)
    onnx_s = time.perf_counter() - t
    t = time.perf_counter()
    export_onnx(model_dir, quantize=True, calibration=paths[:256])
    int8_s = time.perf_counter() - t
    print(f"\nexport: onnx {onnx_s:.1f} s, int8 with calibration {int8_s:.1f} s")

    model, meta = load_model(model_dir)
    with FlopCounterMode(display=False) as fc:
        model(torch.rand(1, 3, *INPUT_HW))
    flops = fc.get_total_flops()
    pixels, _ = load_batch(paths[:args.model_photos], PhotoInput.of(meta))
    engines = [("torch fp32", "torch", False, "fp32"), ("torch bf16", "torch", True, "bf16"),
               ("onnx", "onnx", None, "fp32"), ("onnx-int8", "onnx-int8", None, None)]

    torch.set_num_threads(cores)
    print(f"\ntagging, model only: {len(pixels)} photos in memory -> probabilities; {flops / 1e6:.0f} MFLOP/photo "
          f"forward; {cores} threads\n{HEADER}")
    eager = TorchEngine(model.to(memory_format=torch.channels_last), list(meta["vocabs"]), batch_size=512)
    base = len(pixels) / timed(lambda: eager.logits(pixels), args.seconds)
    row("torch fp32 eager, batch 512 (baseline)", base, None, flops, peaks["fp32"])
    for label, engine, bf16, peak in engines:
        tagger = Tagger.load(model_dir, engine=engine, bf16=bf16, threads=cores)
        rate = len(pixels) / timed(lambda: tagger.probabilities(pixels), args.seconds)
        row(label + (" (BatchNorm folded)" if engine == "torch" else ""), rate, base, flops,
            peaks[peak] if peak else None, "int8: approximate; no int8 peak measured" if peak is None else "")
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")

    print(f"\ntagging end to end: {len(paths)} JPEG files -> CSV; {infer_threads} inference + {decode_threads} "
          f"decoding threads (as `fashiontag predict`). steady: in this process, warm; whole process: "
          f"`fashiontag predict` from start to exit, and the seconds to its first row\n"
          f"  {'':24s} {'steady photos/s':>16s} {'whole process':>14s} {'of steady':>10s} {'first row':>10s}")
    for label, engine, bf16, _ in engines:
        tagger = Tagger.load(model_dir, engine=engine, bf16=bf16, threads=infer_threads)
        list(tag_paths(tagger, paths[:64], workers=decode_threads))  # warm up
        t = time.perf_counter()
        with open(tmp / "tags.csv", "w", newline="") as f:
            n = write_rows(tag_paths(tagger, paths, workers=decode_threads), tagger.columns(), f)
        steady = n / (time.perf_counter() - t)
        if bf16 is False:  # the CLI has no fp32 switch for torch: its whole-process figure is the bf16 row's
            print(f"  {label:24s} {steady:16.0f}", flush=True)
            continue
        first, whole = whole_process(model_dir, paths, engine, tmp)
        print(f"  {label:24s} {steady:16.0f} {whole:14.0f} {whole / steady:9.0%} {first:9.2f}s", flush=True)
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")


def bench_engine_accuracy(model_dir: Path, args) -> None:
    """Test-split accuracy per task for each engine, and what each loses against torch fp32: quantizing is approximate."""
    from fashiontag.training.evaluate import evaluate
    data = Path(args.data)
    if not (data / "styles.csv").exists() or not (model_dir / "split.json").exists():
        print(f"\n(accuracy per engine skipped: needs --model with a split.json and the catalog --data {data})")
        return
    runs = [("torch fp32", "torch", False), ("torch bf16", "torch", True), ("onnx", "onnx", None),
            ("onnx-int8", "onnx-int8", None)]
    scores = {}
    for label, engine, bf16 in runs:
        report = model_dir.parent / "reports" / label.replace(" ", "_")
        summary = evaluate(data, model=model_dir, out=report, engine=engine, bf16=bf16, plot=False, progress=False)
        scores[label] = {t: 100 * m["accuracy"] for t, m in summary["tasks"].items()}
    tasks = list(scores["torch fp32"])
    print(f"\naccuracy per engine on the test split of {data} ({summary['n']:,} photos), in points; "
          f"(change against torch fp32)\n  {'':12s} " + " ".join(f"{t[:13]:>16s}" for t in tasks))
    for label, acc in scores.items():
        print(f"  {label:12s} " + " ".join(f"{acc[t]:7.2f} ({acc[t] - scores['torch fp32'][t]:+5.2f})" for t in tasks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a model folder (default: a random-init model of the default architecture)")
    ap.add_argument("--images", default=str(DEFAULT_PHOTOS), help="photos to tag [../shared/data/fashion-small/images]")
    ap.add_argument("--photos", type=int, default=4408, help="how many files to tag end to end")
    ap.add_argument("--train-photos", type=int, default=4096, help="photos per epoch of the training timings")
    ap.add_argument("--model-photos", type=int, default=1024, help="photos for the model-only timings")
    ap.add_argument("--seconds", type=float, default=3.0, help="time each training / model-only figure this long")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also time torch.compile for training (compiling takes a minute or so)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--data", default=str(DEFAULT_PHOTOS.parent),
                    help="catalog for the accuracy of each engine on --model's test split [../shared/data/fashion-small]")
    args = ap.parse_args()

    import onnxruntime
    cores = os.cpu_count() or 1
    print(f"{cores} CPU cores; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"bf16 on CPU: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    torch.set_num_threads(cores)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"peak (2048^2 matmul, {cores} threads): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="fashiontag-speed-") as tmp:
        tmp = Path(tmp)
        model_dir = make_model_dir(args, tmp)
        meta = json.loads((model_dir / "model.json").read_text())
        print(f"model: {meta['arch']} {json.dumps(meta.get('arch_args', {}))}"
              + (f" from {args.model}" if args.model else " (random init)"))
        if not args.skip_training:
            bench_training(model_dir, args, peaks, tmp)
        torch.set_num_threads(cores)
        bench_tagging(model_dir, photo_paths(args, tmp), args, peaks, tmp)
        if args.model:
            bench_engine_accuracy(model_dir, args)


if __name__ == "__main__":
    sys.exit(main())
