"""Robustness to seller photos: each model's accuracy per task on its test split, clean and under each kind of
change a seller's photo brings (framing, background, light, angle, blur, compression), at two strengths.

Run by hand (not a test); one command, a few minutes per model on 2 cores:

    .venv/bin/python benchmarks/robustness.py                                   # the shipped model
    .venv/bin/python benchmarks/robustness.py --model OLD_MODEL --model runs/robust/best

Ends with issue 15's targets per model: the drops allowed under framing, background and exposure changes, and
clean accuracy against the first model named (today's).

Each photo is changed at its original size (the catalog's 60x80 JPEGs), then goes through the model's own
preprocessing (Tagger.prepare: framing where the model was trained with it, letterboxing), so what is measured is
what a user gets. The category hierarchy is decoded jointly, as in `predict`. Prints one table per model (points;
change against clean) and writes them as JSON beside --out.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR
from fashiontag.training import plots
from fashiontag.training.dataset import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "fashion-small"


def pad(img: Image.Image, factor: float) -> Image.Image:
    """The product smaller in a larger white frame: a square canvas `factor` times the photo's longer side."""
    side = round(max(img.size) * factor)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def crop(img: Image.Image, share: float) -> Image.Image:
    """`share` of the width and height cut off each side: the product cut at the edges."""
    dx, dy = round(img.width * share), round(img.height * share)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def rotate(img: Image.Image, degrees: float) -> Image.Image:
    return img.rotate(degrees, Image.BILINEAR, expand=True, fillcolor=(255, 255, 255))


def studio_white(a: np.ndarray) -> np.ndarray:
    """(H, W) bool: the white studio background, i.e. near-white pixels connected to the border."""
    labels, _ = ndimage.label((a >= 235).all(2))
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def background(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """The white studio background replaced by a flat colour."""
    a = np.array(img)
    a[studio_white(a)] = colour
    return Image.fromarray(a)


def exposure(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


def warm(img: Image.Image, strength: float) -> Image.Image:
    """A warm white balance (tungsten light): red up, blue down."""
    a = np.asarray(img, dtype=np.float32)
    a = a * np.array([1 + strength, 1.0, 1 - 1.5 * strength])
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def blur(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def phone_jpeg(img: Image.Image, quality: int) -> Image.Image:
    """Upscaled 8x as a phone's photo would be, then saved as a low-quality JPEG."""
    big = img.resize((img.width * 8, img.height * 8), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def striped(img: Image.Image, colours: tuple[tuple[int, int, int], tuple[int, int, int]]) -> Image.Image:
    """The studio white replaced by diagonal stripes of two colours (a bedspread, a tablecloth). The seller
    augmentation draws stripes and checks too, at random angles, periods and colours."""
    yy, xx = np.mgrid[:img.height, :img.width]
    return _on_pattern(img, colours, ((yy + xx) // 4) % 2)


def dotted(img: Image.Image, colours: tuple[tuple[int, int, int], tuple[int, int, int]]) -> Image.Image:
    """The studio white replaced by dots of the second colour on the first (a polka-dot sheet): a pattern the seller
    augmentation never draws, to see how far what it learnt from stripes and checks carries."""
    yy, xx = np.mgrid[:img.height, :img.width]
    return _on_pattern(img, colours, ((yy % 8 - 3.5) ** 2 + (xx % 8 - 3.5) ** 2 <= 6.25).astype(int))


def _on_pattern(img: Image.Image, colours: tuple[tuple[int, int, int], tuple[int, int, int]], which: np.ndarray
                ) -> Image.Image:
    a = np.array(img)
    pattern = np.array(colours, np.uint8)[which]
    mask = studio_white(a)
    a[mask] = pattern[mask]
    return Image.fromarray(a)


def shadow(img: Image.Image, darkest: float) -> Image.Image:
    """Light falling off across the photo (a window on one side): full brightness on the left, `darkest` on the
    right. Not in training, which relights a photo evenly."""
    a = np.asarray(img, dtype=np.float32)
    ramp = np.linspace(1.0, darkest, a.shape[1], dtype=np.float32)[None, :, None]
    return Image.fromarray(np.clip(a * ramp, 0, 255).astype(np.uint8))


def sensor_noise(img: Image.Image, sigma: float) -> Image.Image:
    """A phone's sensor noise in dim light: Gaussian, `sigma` levels per channel (same seed for every photo)."""
    a = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, sigma, a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a + noise, 0, 255).astype(np.uint8))


# name -> (change, mild strength, strong strength)
CHANGES = {
    "padded (product smaller)": (pad, 1.0, 4 / 3),
    "cropped at the edges": (crop, 0.06, 0.12),
    "rotated": (rotate, 7, 14),
    "light grey background": (background, (215, 215, 215), (185, 185, 185)),
    "beige background": (background, (235, 222, 200), (215, 195, 165)),
    "darker": (exposure, 0.85, 0.7),
    "brighter": (exposure, 1.15, 1.3),
    "warm light": (warm, 0.06, 0.12),
    "blurred": (blur, 0.6, 1.2),
    "upscaled 8x, JPEG": (phone_jpeg, 50, 20),
    "striped background": (striped, ((236, 228, 214), (214, 204, 190)), ((226, 214, 196), (150, 120, 110))),
    # Changes that training does not simulate: how far the robustness carries beyond what was taught.
    "dotted background (not trained)": (dotted, ((236, 228, 214), (214, 204, 190)), ((226, 214, 196), (150, 120, 110))),
    "shadow across (not trained)": (shadow, 0.8, 0.6),
    "sensor noise (not trained)": (sensor_noise, 6, 12),
}


def accuracies(tagger: Tagger, photos: list[Image.Image], targets: dict[str, np.ndarray]) -> dict[str, float]:
    pixels = np.stack([tagger.prepare(p) for p in photos])
    chosen = tagger.choose(tagger.probabilities(pixels))
    acc = {}
    for t in tagger.tasks:
        known = targets[t] >= 0
        acc[t] = 100 * float((chosen[t][known] == targets[t][known]).mean())
    return acc


def run_model(model: str, data: Path, limit: int | None, side: str = "test") -> dict:
    tagger = Tagger.load(model)
    ds = load_dataset(data, split_path=Path(model) / "split.json", vocabs=tagger.vocabs, progress=False)
    rows = ds.rows[side]
    if limit and len(rows) > limit:
        rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
    photos = [Image.open(ds.catalog.photos[i]).convert("RGB") for i in rows]
    targets = {t: ds.targets[t][rows] for t in tagger.tasks}
    started = time.perf_counter()
    results = {"clean": accuracies(tagger, photos, targets)}
    for name, (change, mild, strong) in CHANGES.items():
        for label, strength in (("mild", mild), ("strong", strong)):
            results[f"{name}, {label}"] = accuracies(tagger, [change(p, strength) for p in photos], targets)
        print(f"  {name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return {"model": model, "framing": tagger.photo_input.framing, "photos": len(rows), "side": side,
            "accuracy": results}


def print_table(run: dict) -> None:
    acc = run["accuracy"]
    clean = acc["clean"]
    tasks = list(clean)
    framing = {True: "on", False: "off"}.get(run["framing"], f"when the product spans under {run['framing']:.0%}")
    print(f"\n{run['model']} (framing {framing}), {run['photos']:,} {run['side']} photos; "
          "accuracy in %, change against clean in points\n")
    print("| change | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    print("| none (clean) | " + " | ".join(f"{clean[t]:.1f}" for t in tasks) + " |")
    for name, a in acc.items():
        if name != "clean":
            print(f"| {name} | " + " | ".join(f"{a[t]:.1f} ({a[t] - clean[t]:+.1f})" for t in tasks) + " |")


# Issue 15's targets: the largest drop from clean (points) per task under each group of changes.
FRAMING_AND_BACKGROUND = ("padded (product smaller)", "cropped at the edges", "rotated", "light grey background",
                          "beige background")
TARGETS = [(FRAMING_AND_BACKGROUND, {"articleType": 3, "gender": 2, "subCategory": 2, "baseColour": 3}),
           (("darker", "brighter"), {"articleType": 8, "gender": 5, "subCategory": 5})]
CLEAN_TOLERANCE = 0.3  # points below the baseline model's clean accuracy


def target_report(run: dict, baseline: dict | None) -> list[str]:
    """One line per target that the run misses (by how much), then a count of those it meets."""
    acc, missed, met = run["accuracy"], [], 0
    clean = acc["clean"]
    for changes, limits in TARGETS:
        for name in (f"{c}, {s}" for c in changes for s in ("mild", "strong")):
            for task, limit in limits.items():
                if task not in clean or name not in acc:
                    continue
                drop = clean[task] - acc[name][task]
                if drop > limit:
                    missed.append(f"{name}: {task} {-drop:+.1f} (target within {limit}, missed by {drop - limit:.1f})")
                else:
                    met += 1
    if baseline is not None and baseline is not run:
        for task, value in clean.items():
            below = baseline["accuracy"]["clean"].get(task, value) - value
            if below > CLEAN_TOLERANCE:
                missed.append(f"clean: {task} {value:.1f} against the baseline's {value + below:.1f} "
                              f"(target at most {CLEAN_TOLERANCE} below, missed by {below - CLEAN_TOLERANCE:.1f})")
            else:
                met += 1
    return missed + [f"{met} of {met + len(missed)} targets met"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="model folder (repeatable; default: the shipped model)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the catalog the models were trained on")
    ap.add_argument("--photos", type=int, default=None, help="score at most this many photos (default: all)")
    ap.add_argument("--side", choices=("test", "val"), default="test",
                    help="the split side scored: val to choose between recipes, test to report (default: test)")
    ap.add_argument("--out", default="reports/robustness.json", help="the figures as JSON (default: %(default)s)")
    ap.add_argument("--plot", default="reports/robustness.png", help="accuracy per change and model, as a figure "
                    "(default: %(default)s)")
    args = ap.parse_args()
    runs = []
    for model in args.model or [str(DEFAULT_MODEL_DIR)]:
        print(f"{model} ...", file=sys.stderr)
        runs.append(run_model(model, Path(args.data), args.photos, args.side))
        print_table(runs[-1])
    print(f"\nissue 15's targets (clean accuracy against the first model, {runs[0]['model']}):")
    for run in runs:
        print(f"\n{run['model']}:")
        for line in target_report(run, runs[0]):
            print(f"- {line}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(runs, indent=1))
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plots.robustness(Path(args.plot), runs)
    print(f"\nwrote {args.out} and {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
