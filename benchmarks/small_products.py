"""A product small in a corner of the frame (issue 25's most common seller photo): the shipped model's accuracy on
validation photos as they are and pasted small into a corner of a light frame, tagged whole and with the photo
cropped to its product when the product is small ("crop when small": framing.find_product's box spans less than
`share` of the photo in both directions), and what that rule costs the studio shots it also crops.

Run by hand (a few minutes on 2 cores):

    PYTHONPATH=src .venv/bin/python benchmarks/small_products.py [--photos 1500] [--share 0.5 0.6] [--margin 0 0.1 0.2]

Chosen on the validation side (the first --photos of it); prints one table and the CPU cost of find_product.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fashiontag.data.framing import find_product
from fashiontag.data.photos import BACKGROUND, letterbox
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR, INPUT_HW, MULTI
from fashiontag.training.dataset import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "fashion-small"
FRAME = (240, 240, 238)  # a light table or wall


def in_corner(img: Image.Image, scale: int) -> Image.Image:
    """The photo at 1/scale of a light frame, near its top-left corner."""
    frame = Image.new("RGB", (img.width * scale, img.height * scale), FRAME)
    frame.paste(img, (round(0.05 * frame.width), round(0.05 * frame.height)))
    return frame


def crop_when_small(img: Image.Image, share: float, margin: float) -> np.ndarray:
    """The model's input: the photo cropped to its product's box widened by `margin` of its size on each side
    (studio shots leave a margin around the product), padded with its background, when the box spans less than
    `share` of the photo both ways; else the photo letterboxed whole."""
    found = find_product(img)
    if found is None:
        return letterbox(img)
    left, top, right, bottom = found.box
    if max((right - left) / img.width, (bottom - top) / img.height) >= share:
        return letterbox(img)
    mx, my = round(margin * (right - left)), round(margin * (bottom - top))
    product = img.crop((max(0, left - mx), max(0, top - my), min(img.width, right + mx), min(img.height, bottom + my)))
    h, w = INPUT_HW
    scale = min(w / product.width, h / product.height)
    size = (max(1, round(product.width * scale)), max(1, round(product.height * scale)))
    out = Image.new("RGB", (w, h), found.background or BACKGROUND)
    out.paste(product.resize(size, Image.BILINEAR, reducing_gap=2.0), ((w - size[0]) // 2, (h - size[1]) // 2))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=1500)
    ap.add_argument("--share", type=float, nargs="+", default=[0.5, 0.6])
    ap.add_argument("--margin", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    args = ap.parse_args()
    tagger = Tagger.load(engine="onnx")
    ds = load_dataset(DATA, split_path=DEFAULT_MODEL_DIR / "split.json", vocabs=tagger.vocabs, progress=False)
    rows = ds.rows["val"][:args.photos]
    photos = [Image.open(ds.catalog.photos[i]).convert("RGB") for i in rows]
    targets = {t: ds.targets[t][rows] for t in tagger.tasks}

    def accuracy(pixels: list[np.ndarray]) -> dict[str, float]:
        chosen = tagger.choose(tagger.probabilities(np.stack(pixels)))
        return {t: 100 * float((chosen[t] == y)[y >= 0].mean()) for t, y in targets.items()}

    def second_look(whole: list[np.ndarray], cropped: list[np.ndarray]) -> dict[str, float]:
        """Per photo, the whole photo's tags unless the crop is surer: its confidence, averaged over the
        single-label tasks, is higher."""
        first, second = (tagger.probabilities(np.stack(x)) for x in (whole, cropped))
        single = [t for t in tagger.tasks if tagger.kinds[t] != MULTI]
        surer = np.mean([second[t].max(1) - first[t].max(1) for t in single], 0) > 0
        chosen = tagger.choose({t: np.where(surer[:, None], second[t], first[t]) for t in first})
        return {t: 100 * float((chosen[t] == y)[y >= 0].mean()) for t, y in targets.items()}

    start = time.process_time()
    spans = []
    for p in photos:
        found = find_product(p)
        spans.append(1.0 if found is None else max((found.box[2] - found.box[0]) / p.width,
                                                   (found.box[3] - found.box[1]) / p.height))
    print(f"find_product: {(time.process_time() - start) / len(photos) * 1e3:.2f} ms CPU per {photos[0].width}x"
          f"{photos[0].height} photo")
    rows_out = {}
    for name, made in [("studio shot", photos)] + [(f"in a corner at 1/{s}", [in_corner(p, s) for p in photos])
                                                   for s in (2, 3)]:
        rows_out[f"{name}, whole"] = accuracy([letterbox(p) for p in made])
        for share in args.share:
            for margin in args.margin:
                cropped = [crop_when_small(p, share, margin) for p in made]
                rows_out[f"{name}, crop when small ({share}, margin {margin})"] = accuracy(cropped)
                rows_out[f"{name}, second look ({share}, margin {margin})"] = second_look(
                    [letterbox(p) for p in made], cropped)
    print(f"\n{len(photos):,} validation photos; studio shots the rule crops: " + ", ".join(
        f"{np.mean(np.array(spans) < s):.1%} at {s}" for s in args.share) + "\n")
    print(f"| photos, input | {' | '.join(tagger.tasks)} |\n|---|{'---|' * len(tagger.tasks)}")
    for name, acc in rows_out.items():
        print(f"| {name} | {' | '.join(f'{acc[t]:.1f}' for t in tagger.tasks)} |")


if __name__ == "__main__":
    main()
