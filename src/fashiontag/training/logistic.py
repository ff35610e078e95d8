"""One logistic regression, fitted with L-BFGS, for the two places that fit linear heads on frozen inputs: the known
heads' maps (train.fit_known_maps) and the catalog audit's cross-fitted heads (crossfit.cross_fit)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fashiontag.model_folder import MULTI


def fit_logistic(x: torch.Tensor, y: torch.Tensor, kind: str, classes: int, l2: float, steps: int,
                 bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (classes, features) weights (and bias) of a logistic regression from x to the labels y on the rows whose
    label is known (-1: unknown): softmax, or a sigmoid per class for a multi-label task, whose row's loss is summed
    over its classes as a single-label row's is one per row; L2 on the weights."""
    known = y[:, 0] >= 0 if kind == MULTI else y >= 0
    x, y = x[known], y[known]
    weight = torch.zeros(classes, x.shape[1], requires_grad=True)
    offset = torch.zeros(classes, requires_grad=bias)
    opt = torch.optim.LBFGS([weight, offset] if bias else [weight], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ weight.T + offset
        fit = (F.binary_cross_entropy_with_logits(logits, y.float()) * classes if kind == MULTI
               else F.cross_entropy(logits, y))
        value = fit + l2 * weight.square().sum()
        value.backward()
        return value

    if len(x):
        opt.step(loss)
    return weight.detach(), offset.detach() if bias else None
