"""Robustness to seller photos: each model's accuracy per task on its test split, clean and under each kind of
change a seller's photo brings (framing, background, light, angle, blur, compression), at two strengths.

Run by hand (not a test); one command, a few minutes per model on 2 cores:

    .venv/bin/python benchmarks/robustness.py                                   # the shipped model
    .venv/bin/python benchmarks/robustness.py --model runs/robust/best --model src/fashiontag/default_model

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

from fashiontag.dataset import load_dataset
from fashiontag.model_meta import DEFAULT_MODEL_DIR
from fashiontag.tagger import Tagger

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


def background(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """The white studio background (near-white pixels connected to the border) replaced by a flat colour."""
    a = np.array(img)
    near_white = (a >= 235).all(2)
    labels, _ = ndimage.label(near_white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    a[np.isin(labels, border[border > 0])] = colour
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
}


def accuracies(tagger: Tagger, photos: list[Image.Image], targets: dict[str, np.ndarray]) -> dict[str, float]:
    pixels = np.stack([tagger.prepare(p) for p in photos])
    chosen = tagger.choose(tagger.probabilities(pixels))
    acc = {}
    for t in tagger.tasks:
        known = targets[t] >= 0
        acc[t] = 100 * float((chosen[t][known] == targets[t][known]).mean())
    return acc


def run_model(model: str, data: Path, limit: int | None) -> dict:
    tagger = Tagger.load(model)
    ds = load_dataset(data, split_path=Path(model) / "split.json", vocabs=tagger.vocabs, progress=False)
    rows = ds.rows["test"]
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
    return {"model": model, "framing": tagger.photo_input.framing, "photos": len(rows), "accuracy": results}


def print_table(run: dict) -> None:
    acc = run["accuracy"]
    clean = acc["clean"]
    tasks = list(clean)
    print(f"\n{run['model']} (framing {'on' if run['framing'] else 'off'}), {run['photos']:,} test photos; "
          "accuracy in %, change against clean in points\n")
    print("| change | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    print("| none (clean) | " + " | ".join(f"{clean[t]:.1f}" for t in tasks) + " |")
    for name, a in acc.items():
        if name != "clean":
            print(f"| {name} | " + " | ".join(f"{a[t]:.1f} ({a[t] - clean[t]:+.1f})" for t in tasks) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="model folder (repeatable; default: the shipped model)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the catalog the models were trained on")
    ap.add_argument("--photos", type=int, default=None, help="score at most this many test photos (default: all)")
    ap.add_argument("--out", default="reports/robustness.json")
    args = ap.parse_args()
    runs = []
    for model in args.model or [str(DEFAULT_MODEL_DIR)]:
        print(f"{model} ...", file=sys.stderr)
        runs.append(run_model(model, Path(args.data), args.photos))
        print_table(runs[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    sys.exit(main())
