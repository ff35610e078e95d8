"""A product small in a corner of the frame (issue 25's most common seller photo): each model's accuracy on
validation photos as they are and pasted small into a corner of a light frame, prepared as the model prepares
photos (model.json's preprocess.framing), cropped to the product when it is small ("crop when small": framing.frame
with `share`: the product's box spans less than `share` of the photo in both directions) and with a second look
(the whole photo's tags unless the crop's are surer), and what each costs the studio shots it also crops.

Run by hand (a few minutes on 2 cores):

    PYTHONPATH=src .venv/bin/python benchmarks/small_products.py [--photos 1500] [--share 0.5 0.6] [--model DIR ...]
        [--frame 240,240,238]

--frame: the colour of the frame the photo is pasted into (a light table or wall by default).

Chosen on the validation side (the first --photos of it); prints one table per model and the CPU cost of
find_product.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fashiontag.data.framing import find_product
from fashiontag.data.photos import letterbox
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR, MULTI
from fashiontag.training.dataset import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "fashion-small"
FRAME = (240, 240, 238)  # a light table or wall


def in_corner(img: Image.Image, scale: int, colour: tuple[int, int, int] = FRAME) -> Image.Image:
    """The photo at 1/scale of a plain frame, near its top-left corner."""
    canvas = Image.new("RGB", (img.width * scale, img.height * scale), colour)
    canvas.paste(img, (round(0.05 * canvas.width), round(0.05 * canvas.height)))
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=1500)
    ap.add_argument("--share", type=float, nargs="+", default=[0.5, 0.6])
    ap.add_argument("--model", action="append", help="a model folder (repeatable; default: the shipped model)")
    ap.add_argument("--frame", default=",".join(map(str, FRAME)), help="the frame's colour, R,G,B")
    args = ap.parse_args()
    colour = tuple(int(c) for c in args.frame.split(","))
    taggers = {m: Tagger.load(m, engine="onnx") for m in args.model or [str(DEFAULT_MODEL_DIR)]}
    first = next(iter(taggers.values()))
    ds = load_dataset(DATA, split_path=DEFAULT_MODEL_DIR / "split.json", vocabs=first.vocabs, progress=False)
    rows = ds.rows["val"][:args.photos]
    photos = [Image.open(ds.catalog.photos[i]).convert("RGB") for i in rows]
    targets = {t: ds.targets[t][rows] for t in first.tasks}

    start = time.process_time()
    spans = []
    for p in photos:
        found = find_product(p)
        spans.append(1.0 if found is None else max((found.box[2] - found.box[0]) / p.width,
                                                   (found.box[3] - found.box[1]) / p.height))
    print(f"find_product: {(time.process_time() - start) / len(photos) * 1e3:.2f} ms CPU per {photos[0].width}x"
          f"{photos[0].height} photo")
    print(f"{len(photos):,} validation photos; studio shots cropped when small: " + ", ".join(
        f"{np.mean(np.array(spans) < s):.1%} at {s}" for s in args.share))
    inputs = [("studio shot", photos)] + [(f"in a corner at 1/{s}", [in_corner(p, s, colour) for p in photos]) for s in (2, 3)]
    for model, tagger in taggers.items():
        print(f"\n{model} (its own framing: {tagger.photo_input.framing})\n")
        print(f"| photos, input | {' | '.join(tagger.tasks)} |\n|---|{'---|' * len(tagger.tasks)}")
        for name, made in inputs:
            own = [tagger.prepare(p) for p in made]
            table = {f"{name}, as the model prepares it": accuracy(tagger, own, targets)}
            for share in args.share if tagger.photo_input.framing is False else ():
                cropped = [letterbox(p, framing=share) for p in made]
                table[f"{name}, crop when small ({share})"] = accuracy(tagger, cropped, targets)
                table[f"{name}, second look ({share})"] = second_look(tagger, own, cropped, targets)
            for row, acc in table.items():
                print(f"| {row} | {' | '.join(f'{acc[t]:.1f}' for t in tagger.tasks)} |")


def accuracy(tagger: Tagger, pixels: list[np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
    chosen = tagger.choose(tagger.probabilities(np.stack(pixels)))
    return {t: 100 * float((chosen[t] == y)[y >= 0].mean()) for t, y in targets.items()}


def second_look(tagger: Tagger, whole: list[np.ndarray], cropped: list[np.ndarray], targets: dict[str, np.ndarray]
                ) -> dict[str, float]:
    """Per photo, the whole photo's tags unless the crop is surer: its confidence, averaged over the single-label
    tasks, is higher."""
    first, second = (tagger.probabilities(np.stack(x)) for x in (whole, cropped))
    single = [t for t in tagger.tasks if tagger.kinds[t] != MULTI]
    surer = np.mean([second[t].max(1) - first[t].max(1) for t in single], 0) > 0
    chosen = tagger.choose({t: np.where(surer[:, None], second[t], first[t]) for t in first})
    return {t: 100 * float((chosen[t] == y)[y >= 0].mean()) for t, y in targets.items()}


if __name__ == "__main__":
    main()
