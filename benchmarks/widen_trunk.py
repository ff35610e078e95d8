"""A wider copy of a photo model that tags exactly as it does: the start folder for a capacity run (issue 25).

Every tensor of the photo part (trunk and heads) is copied into the top-left corner of the wider model's; the weights
by which an old channel would read a new one are zeroed, so the old channels, and the heads, compute what they did,
while the new channels start from the wider model's own initialisation and the zeroed weights learn from the first
step. Run by hand, then train from the folder with the same width:

    PYTHONPATH=src .venv/bin/python benchmarks/widen_trunk.py --model PHOTO5 --width 40 --out runs/PHOTO5-w40
    fashiontag train ... --set init=runs/PHOTO5-w40 --set model_args='{"width": 40, "stem_stride": 2}'
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fashiontag.model_folder import load_meta
from fashiontag.models import create_model


def widened(narrow: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """wide with narrow in its corner; for a weight (outputs x inputs x ...), the old outputs' new inputs zeroed."""
    out = wide.clone()
    if narrow.ndim == 0:
        return narrow.clone()
    corner = tuple(slice(0, n) for n in narrow.shape)
    out[corner] = narrow
    if narrow.ndim >= 2:
        out[:narrow.shape[0], narrow.shape[1]:] = 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a photo-only rescnn model folder")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    meta = load_meta(args.model)
    if meta["arch"] != "rescnn" or "title" in meta["arch_args"]:
        raise SystemExit(f"{args.model}: a photo-only rescnn model is needed, this one is {meta['arch']} "
                         f"{meta['arch_args']}")
    torch.manual_seed(args.seed)
    heads = {t: len(v) for t, v in meta["vocabs"].items()}
    arch_args = {**meta["arch_args"], "width": args.width}
    wide = create_model("rescnn", heads, tuple(meta["input_hw"]), **arch_args).state_dict()
    narrow = load_file(str(args.model / "model.safetensors"))
    if set(narrow) != set(wide):
        raise SystemExit(f"{args.model}: its tensors are not those of a rescnn with {arch_args}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: widened(v, wide[k]).contiguous() for k, v in narrow.items()}, str(args.out / "model.safetensors"))
    (args.out / "model.json").write_text(json.dumps({**meta, "arch_args": arch_args}, indent=1))
    shutil.copy(args.model / "split.json", args.out / "split.json")
    print(f"{args.out}: width {meta['arch_args'].get('width')} -> {args.width}, {len(narrow)} tensors")


if __name__ == "__main__":
    main()
