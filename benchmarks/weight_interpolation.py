"""Weight interpolation between the seller photo model and the studio model it was fine-tuned from (WiSE-FT,
Wortsman et al. 2022), with and without batch-norm statistics recomputed on clean training photos: does a point
between the two keep the seller model's robustness and win back the studio model's accuracy on studio shots?
(issue 25, photo alone).

For each alpha the photo part (trunk and heads) of --model becomes (1 - alpha) x its own + alpha x --toward's; the
title parts, preprocessing and calibration stay --model's. Prints photo-alone accuracy on the validation side per
alpha. Run by hand (not a test), about a minute per folder on 2 cores:

    PYTHONPATH=src .venv/bin/python benchmarks/weight_interpolation.py --toward STUDIO --alpha 0 0.3 0.5 0.7

STUDIO is the studio model's folder (`git show 4e72645:src/fashiontag/default_model/<file>` for model.json,
model.safetensors and split.json). --toward may also be a sibling: another seller model fine-tuned from the same
photo part (a "model soup" of the two). The folders stay in --out, for `benchmarks/robustness.py --side val
--model ...`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fashiontag.inference.engines import torch_input
from fashiontag.model_folder import DEFAULT_MODEL_DIR, framing_of, load_meta
from fashiontag.models.checkpoint import load_model
from fashiontag.training.dataset import load_dataset
from fashiontag.training.evaluate import evaluate

PHOTO_PART = ("trunk", "heads")


def interpolate(model: Path, toward: Path, alpha: float, out: Path) -> None:
    """A copy of `model` (weights, model.json, split.json) whose photo part lies `alpha` of the way to `toward`'s."""
    ours, theirs = load_file(str(model / "model.safetensors")), load_file(str(toward / "model.safetensors"))
    for k, v in ours.items():
        if k.split(".")[0] in PHOTO_PART and v.is_floating_point():
            ours[k] = ((1 - alpha) * v.float() + alpha * theirs[k].float()).to(v.dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(ours, str(out / "model.safetensors"))
    for name in ("model.json", "split.json"):
        shutil.copy(model / name, out / name)


def refresh_batch_norms(folder: Path, data: str, photos: int, seed: int = 0) -> None:
    """Recompute the trunk's batch-norm statistics on `photos` clean training photos (an average over all of them,
    not a running one), in place."""
    net, meta = load_model(folder)
    ds = load_dataset(data, split_path=folder / "split.json", vocabs=meta["vocabs"], framing=framing_of(meta),
                      hw=tuple(meta["input_hw"]), progress=False)
    rows = ds.rows["train"]
    rows = np.sort(np.random.default_rng(seed).choice(rows, min(photos, len(rows)), replace=False))
    norms = [m for m in net.trunk.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.trunk.train()
    with torch.no_grad():
        for start in range(0, len(rows), 256):
            batch = torch.from_numpy(np.asarray(ds.cache.pixels[rows[start:start + 256]]))
            net.trunk(torch_input(batch, torch.device("cpu"), channels_last=False))
    weights, fresh = load_file(str(folder / "model.safetensors")), net.state_dict()
    for k in weights:
        if k.startswith("trunk.") and (".running_" in k or k.endswith("num_batches_tracked")):
            weights[k] = fresh[k].to(weights[k].dtype)
    save_file(weights, str(folder / "model.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="the seller model (default: shipped)")
    ap.add_argument("--toward", type=Path, required=True, help="the other photo model (the studio model, a sibling)")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--bn-photos", type=int, default=8000, help="training photos for the batch-norm statistics")
    ap.add_argument("--data", default="../shared/data/fashion-small")
    ap.add_argument("--out", type=Path, default=Path("runs/interpolation"))
    args = ap.parse_args()
    tasks = list(load_meta(args.model)["vocabs"])
    print("| alpha | batch norms | " + " | ".join(tasks) + " |\n|---|---|" + "---|" * len(tasks))
    for alpha in args.alpha:
        for refresh in (False, True):
            folder = args.out / f"alpha{alpha:g}{'-bn' if refresh else ''}"
            interpolate(args.model, args.toward, alpha, folder)
            if refresh:
                refresh_batch_norms(folder, args.data, args.bn_photos)
            s = evaluate(args.data, model=folder, out=folder / "report", side="val", progress=False, plot=False,
                         titles=False)
            accuracy = " | ".join(f"{100 * s['tasks'][t]['accuracy']:.2f}" for t in tasks)
            print(f"| {alpha:g} | {'clean photos' if refresh else 'interpolated'} | {accuracy} |", flush=True)


if __name__ == "__main__":
    main()
