"""What a deeper or wider `rescnn` trunk costs: FLOPs, parameters and the model's photos/s for each depth list and
width, with the ratio to the first (issue 25, capacity). Model only, random weights, random 80x60 photos, fp32
channels-last.

Run by hand (not a test), about 30 seconds:

    PYTHONPATH=src .venv/bin/python benchmarks/trunk_depth.py --depths 1,1,2,1 1,1,2,2
    PYTHONPATH=src .venv/bin/python benchmarks/trunk_depth.py --widths 32 40
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fashiontag.models.rescnn import ResCNN

# The Kaggle catalog's class counts per task (the shipped model's heads).
HEADS = {"gender": 5, "masterCategory": 6, "subCategory": 36, "articleType": 98, "baseColour": 44, "season": 4,
         "usage": 7}


def rate(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    """Photos per second over `seconds` after one warm-up pass."""
    with torch.no_grad():
        model(x)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", nargs="+", default=["1,1,2,1", "1,1,2,2"], help="blocks per stage, e.g. 1,1,2,2")
    ap.add_argument("--widths", nargs="+", type=int, default=[32], help="channels of the first stage")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    x = torch.rand(args.batch, 3, 80, 60).contiguous(memory_format=torch.channels_last)
    first = None
    for text in args.depths:
        depths = tuple(int(d) for d in text.split(","))
        for width in args.widths:
            model = ResCNN(HEADS, width=width, stem_stride=2, depths=depths).eval()
            model = model.to(memory_format=torch.channels_last)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(x[:1])
            photos_s = rate(model, x, args.seconds)
            first = first or photos_s
            print(f"depths {text}, width {width}: {counter.get_total_flops() / 1e6:.1f} MFLOP a photo, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {photos_s:,.0f} photos/s "
                  f"({photos_s / first:.3f}x the first)")


if __name__ == "__main__":
    main()
