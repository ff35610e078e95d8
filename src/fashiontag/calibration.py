"""Temperature scaling per head (Guo et al. 2017), fitted on the validation split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins weighted by size."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    return ece


def fit_temperatures(logits: dict[str, torch.Tensor], targets: dict[str, np.ndarray]
                     ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One temperature per task minimising validation NLL; returns temperatures and ECE before/after."""
    temps, ece = {}, {}
    for t, lg in logits.items():
        y = torch.from_numpy(targets[t])
        known = y >= 0
        lg, y = lg[known].float(), y[known]
        if len(y) == 0:
            temps[t], ece[t] = 1.0, {"before": float("nan"), "after": float("nan")}
            continue
        log_t = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(lg / log_t.exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
        temps[t] = float(log_t.detach().exp().clamp(0.05, 20))
        ece[t] = {"before": expected_calibration_error(lg.softmax(1), y),
                  "after": expected_calibration_error((lg / temps[t]).softmax(1), y)}
    return temps, ece
