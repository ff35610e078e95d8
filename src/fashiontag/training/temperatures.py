"""Temperature scaling per head (Guo et al. 2017), fitted on the validation split."""

from __future__ import annotations

import math
import sys

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


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature minimising the NLL of labels y; may be NaN when the logits are.

    With a line search: without one, L-BFGS's fixed steps stopped far from the minimum when it lies far from 1 (on
    logits a fifth as large as they should be, T 0.10 where 0.16 was best, and 0.05 where 0.29 was)."""
    if not torch.isfinite(logits).all():
        return math.nan  # the line search cannot start from a loss that is not a number
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20))


def fit_temperatures(logits: dict[str, torch.Tensor], targets: dict[str, np.ndarray]
                     ) -> tuple[dict[str, float], dict[str, dict]]:
    """One temperature per task minimising validation NLL; returns the temperatures and, per task, what happened.

    A fitted temperature is kept only when it is finite, positive, and lowers the validation NLL or ECE; otherwise
    the task keeps 1.0, with a warning line naming it. The record per task: ECE and NLL before and after (with the
    temperature kept), the fitted temperature, whether it was kept and, if not, why. Values that are not numbers
    are None, so the record stays valid JSON."""
    temps, record = {}, {}
    for t, lg in logits.items():
        y = torch.from_numpy(targets[t])
        known = y >= 0
        lg, y = lg[known].float(), y[known]
        if len(y) == 0:
            temps[t], record[t] = 1.0, {"before": None, "after": None, "nll_before": None, "nll_after": None,
                                        "fitted": None, "kept": False, "why": "no labelled validation photos"}
            continue
        fitted = fit_temperature(lg, y)
        nll, ece = _scores(lg, y)
        why = None
        if not (math.isfinite(fitted) and fitted > 0):
            why = f"the fitted temperature {fitted} is not a positive number"
        else:
            nll_t, ece_t = _scores(lg / fitted, y)
            if nll_t > nll and ece_t > ece:
                why = (f"T={fitted:.3g} lowers neither the validation NLL ({nll:.4f} -> {nll_t:.4f}) "
                       f"nor the ECE ({ece:.4f} -> {ece_t:.4f})")
        temps[t] = fitted if why is None else 1.0
        if why:
            print(f"warning: calibration of {t}: {why}; keeping temperature 1.0", file=sys.stderr)
        nll_after, ece_after = _scores(lg / temps[t], y)
        record[t] = {"before": _number(ece), "after": _number(ece_after), "nll_before": _number(nll),
                     "nll_after": _number(nll_after), "fitted": _number(fitted), "kept": why is None, "why": why}
    return temps, record


def _scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Validation NLL and ECE."""
    return float(F.cross_entropy(logits, y)), expected_calibration_error(logits.softmax(1), y)


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def fit_class_thresholds(probs: np.ndarray, y: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class of a multi-label task, the probability threshold with the best validation F1 for that class.

    probs and y are (rows, classes); rows whose label is unknown (-1) are left out. A class without a positive
    validation row keeps `default`: there is nothing to choose it on."""
    known = y[:, 0] >= 0
    probs, y = probs[known], y[known] > 0
    grid = np.linspace(0.05, 0.95, 19)
    thresholds = []
    for c in range(y.shape[1]):
        if not y[:, c].any():
            thresholds.append(default)
            continue
        pred = probs[:, c][None, :] >= grid[:, None]                  # (candidates, rows)
        tp = (pred & y[:, c]).sum(1)
        f1 = 2 * tp / np.maximum(pred.sum(1) + y[:, c].sum(), 1)
        thresholds.append(round(float(grid[f1.argmax()]), 2))
    return thresholds


# Length slopes are kept small: on a few validation photos that the parts separate, the loss falls without end as
# they grow (a tiny catalog's reached the clamp), and a title twice the typical length must not weigh a part 100x.
SLOPE_L2, MAX_SLOPE = 1e-3, 2.0
# A factor outside [MIN_FACTOR, MAX_FACTOR] (a slope outside +-MAX_SLOPE) costs a steep quadratic, and the exponents
# are clamped while fitting: where the parts separate a few validation photos, the loss falls without end as the
# factors grow, a line-search probe far out overflowed exp() into a NaN loss, and L-BFGS then stepped on past what a
# float holds (a RuntimeError on a tiny catalog). Inside the ranges the loss is untouched.
MIN_FACTOR, MAX_FACTOR, EXPONENT_LIMIT = 1e-3, 20.0, 30.0


def fit_fusion_weights(parts: dict[str, dict[str, torch.Tensor]], targets: dict[str, np.ndarray],
                       lengths: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """Per task, a factor on each part of the logits ({"photo": {task: logits}, "title": ..., ["linear": ...]})
    minimising the validation loss of their weighted sum (cross-entropy; binary cross-entropy for a multi-label
    task, whose targets are rows): {part: {task: factor}}. With `lengths` (N,), each row's ln(title ids) - center
    (0 without a title), the factor of a part is exp(a + slope x length) (models.title.LengthSlopes), and the
    slopes come back too, under "<part> slope".

    A factor on every part, not on the title alone: the photo model is surer of itself than it is right on photos
    it never saw (its factor comes out near 0.4), and with the photo's factor held at 1 the loss could only be
    lowered by leaning on the title less than its accuracy deserves (validation articleType 97.0% against 97.3%,
    season 84.3 against 85.6)."""
    names = list(parts)
    weights: dict[str, dict[str, float]] = {name: {} for name in names}
    weights.update({f"{name} slope": {} for name in names if lengths is not None})
    for t in parts[names[0]]:
        y = torch.from_numpy(targets[t])
        known = (y[:, 0] if y.ndim == 2 else y) >= 0
        logits = [parts[name][t][known].float() for name in names]
        z = lengths[known].float()[:, None] if lengths is not None else None
        factors, slopes = _fit_factors(logits, y[known], z)
        for name, factor, slope in zip(names, factors, slopes):
            weights[name][t] = factor if math.isfinite(factor) else 1.0
            if lengths is not None:
                weights[f"{name} slope"][t] = slope if math.isfinite(slope) else 0.0
    return weights


def _fit_factors(logits: list[torch.Tensor], y: torch.Tensor, z: torch.Tensor | None
                 ) -> tuple[list[float], list[float]]:
    """One task's factor and length slope per part (1 and 0 where there is nothing to fit on)."""
    log_factors = torch.zeros(len(logits), requires_grad=True)
    slopes = torch.zeros(len(logits), requires_grad=z is not None)
    if len(y) and all(torch.isfinite(lg).all() for lg in logits):
        opt = torch.optim.LBFGS([log_factors, slopes] if z is not None else [log_factors], max_iter=100,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            exponents = [a + b * z if z is not None else a for a, b in zip(log_factors, slopes)]
            mixed = sum(e.clamp(-EXPONENT_LIMIT, EXPONENT_LIMIT).exp() * lg for e, lg in zip(exponents, logits))
            outside = torch.cat([F.relu(log_factors - math.log(MAX_FACTOR)),
                                 F.relu(math.log(MIN_FACTOR) - log_factors), F.relu(slopes.abs() - MAX_SLOPE)])
            loss = ((F.binary_cross_entropy_with_logits(mixed, y.float()) if y.ndim == 2
                     else F.cross_entropy(mixed, y)) + SLOPE_L2 * slopes.square().sum() + outside.square().sum())
            loss.backward()
            return loss

        opt.step(closure)
    return (log_factors.detach().exp().clamp(0.0, MAX_FACTOR).tolist(),
            slopes.detach().clamp(-MAX_SLOPE, MAX_SLOPE).tolist())
