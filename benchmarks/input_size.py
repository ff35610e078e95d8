"""What the shipped trunk does at an input size other than its own (issue 27: a shop's photo size is a setting).

The shipped model was trained on 80x60 photos. rescnn built for a larger input pools after its stem back to about
80x60 (models/rescnn.py), so its weights would run at 160x120; this measures what they give there, on the shipped
model's validation photos (photo alone) scaled up to each size. The catalog's photos are 80x60, so a larger input
holds no more detail here: the figures are the cost of the mismatch alone, not what a shop's full-size photos could
gain. Run by hand (about a minute):

    PYTHONPATH=src .venv/bin/python benchmarks/input_size.py [--photos 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta
from fashiontag.models import create_model
from fashiontag.training.dataset import load_dataset

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-small"
SIZES = [(80, 60), (120, 90), (160, 120), (240, 180)]


def shipped_at(hw: tuple[int, int]) -> torch.nn.Module:
    """The shipped model's weights in the layout rescnn has at hw (its pooling after the stem added in place, so the
    layers keep their names)."""
    meta = load_meta(DEFAULT_MODEL_DIR)
    model = create_model(meta["arch"], {t: len(v) for t, v in meta["vocabs"].items()}, tuple(meta["input_hw"]),
                         **meta["arch_args"])
    model.load_state_dict(load_file(str(DEFAULT_MODEL_DIR / "model.safetensors")))
    pool = max(1, round(min(hw[0] / 80, hw[1] / 60)))  # as rescnn chooses it
    if pool > 1:
        model.trunk[2] = torch.nn.Sequential(model.trunk[2], torch.nn.MaxPool2d(pool))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=2000)
    args = ap.parse_args()
    meta = load_meta(DEFAULT_MODEL_DIR)
    ds = load_dataset(DATA, split_path=DEFAULT_MODEL_DIR / "split.json", vocabs=meta["vocabs"], progress=False)
    rows = ds.rows["val"][:args.photos]
    photos = [Image.open(ds.catalog.photos[i]).convert("RGB") for i in rows]
    targets = {t: ds.targets[t][rows] for t in meta["vocabs"]}
    print(f"| input | {' | '.join(targets)} |\n|---|{'---|' * len(targets)}")
    for hw in SIZES:
        model = shipped_at(hw)
        x = torch.from_numpy(np.stack([np.asarray(p.resize((hw[1], hw[0]), Image.BICUBIC)) for p in photos]))
        x = x.permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            logits = [model(x[s:s + 250], None) for s in range(0, len(x), 250)]
        cells = []
        for t, y in targets.items():
            chosen = torch.cat([lg[t] for lg in logits]).argmax(1).numpy()
            cells.append(f"{100 * float((chosen == y)[y >= 0].mean()):.2f}")
        print(f"| {hw[0]}x{hw[1]} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
