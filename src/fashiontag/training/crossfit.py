"""Cross-fitted probabilities: every label judged by heads that never saw it (the audit of a model's own training
side, issue 24).

The model's network runs once over the rows and keeps what its linear heads read (the trunk's features, and a photo +
title model's title features beside them; model_outputs). Then k folds over the rows, duplicate photos kept in one
fold: per fold and task, a logistic regression (multinomial, or one sigmoid per class for a multi-label task) is
fitted on the other folds' features and catalog labels, and gives the fold's probabilities (cross_fit). The heads are
refit per fold; the features are shared, and the network that computes them did learn the training side's labels:
docs/audit.md says what that costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fashiontag.data.split import duplicate_groups
from fashiontag.inference.engines import TorchEngine, bf16_supported, fold_batch_norms, torch_input
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import MULTI
from fashiontag.models.checkpoint import load_model
from fashiontag.training.logistic import fit_logistic

FOLDS = 5
# The heads read the features' first DIMS principal components (128 of the shipped model's 512: a fit costs a
# quarter, and planted colour errors found in the top n fell from 89% to 86%), with L2 on their weights (on the
# mean cross-entropy): of 1e-4, 1e-3 and 1e-2, 1e-3 found the most planted errors in the top n on the real
# catalog's training side (benchmarks/audit.py --side train --seeds 1 --l2 ...: colour 83%, 86%, 79%).
DIMS = 128
L2 = 1e-3
STEPS = 50  # L-BFGS iterations per fold and task: 100 took twice as long and found as many (89.1% / 89.0% colour)
BATCH = 256


@dataclass
class ModelOutputs:
    """The model's own calibrated probabilities per task, and what its heads read (N, D) float32, for some rows."""
    probs: dict[str, np.ndarray]
    features: np.ndarray


@dataclass
class CrossFit:
    """Out-of-fold probabilities for `rows` (catalog rows), and which heads gave them."""
    rows: np.ndarray                 # catalog rows cross-fitted
    fold: np.ndarray                 # per row: the fold whose heads scored it
    fitted_on: list[np.ndarray]      # per fold: the catalog rows whose labels its heads learnt
    probs: dict[str, np.ndarray]     # per task: (len(rows), classes)


def model_outputs(tagger: Tagger, pixels, titles: list[str] | None, rows: np.ndarray) -> ModelOutputs:
    """One pass of the model's torch network over pixels[rows] (titles[rows] for a photo + title model, else None):
    its probabilities as Tagger.probabilities gives them, and its heads' inputs, caught on their way in."""
    net, bf16 = _network(tagger)
    inner = getattr(net, "inner", net)  # known heads (models/known_heads.py) wrap the network whose heads these are
    # Every head of a family reads the same input: the first one's is caught. A late-fusion title model adds its
    # title heads' input (the title's features, zero without a title).
    layers = [next(iter(inner.heads.heads.values()))]
    if getattr(inner, "title_heads", None) is not None:
        layers.append(next(iter(inner.title_heads.values())))
    caught: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda _m, args, k=k: caught.__setitem__(k, args[0]))
             for k, layer in enumerate(layers)]
    logits: dict[str, list[np.ndarray]] = {t: [] for t in tagger.tasks}
    features, titled = [], []
    try:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            for s in range(0, len(rows), BATCH):
                part = rows[s:s + BATCH]
                x = torch_input(torch.from_numpy(np.ascontiguousarray(pixels[part])), torch.device("cpu"))
                tokens = tagger.tokenizer([titles[i] for i in part]) if titles is not None else None
                caught.clear()
                out = net(x, torch.from_numpy(tokens)) if tokens is not None else net(x)
                for t in tagger.tasks:
                    logits[t].append(out[t].float().numpy())
                features.append(torch.cat([caught[k].float() for k in range(len(layers))], 1).numpy())
                titled.append(tokens.any(1) if tokens is not None else np.zeros(len(part), bool))
    finally:
        for h in hooks:
            h.remove()
    probs = tagger.decoder.probabilities({t: np.concatenate(v) for t, v in logits.items()}, np.concatenate(titled))
    return ModelOutputs(probs, np.concatenate(features))


def cross_fit(features: np.ndarray, targets: dict[str, np.ndarray], classes: dict[str, int], kinds: dict[str, str],
              rows: np.ndarray, hashes: np.ndarray, folds: int = FOLDS, seed: int = 0, l2: float = L2,
              dims: int = DIMS) -> CrossFit:
    """Out-of-fold probabilities per task for catalog `rows`, from their features and labels (both aligned with rows;
    targets[t]: class indices, -1 unknown, or for a multi-label task (N, classes) 0/1 rows, -1 unknown) and their
    photos' hashes (equal hashes, the same photo listed twice, land in one fold)."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs 2 folds or more, got {folds}")
    if len(rows) < folds:
        raise ValueError(f"{len(rows)} rows cannot be cut into {folds} folds")
    groups = duplicate_groups(hashes)
    fold_of_group = np.random.default_rng(seed).permutation(groups.max() + 1) % folds
    fold = fold_of_group[groups]
    x = torch.from_numpy(_compressed(features, dims))
    probs = {t: np.zeros((len(rows), classes[t]), np.float32) for t in targets}
    for k in range(folds):
        held, learnt = fold == k, fold != k
        for t, y in targets.items():
            probs[t][held] = _fit_and_predict(x[learnt], torch.from_numpy(np.asarray(y, np.int64)[learnt]),
                                              x[held], kinds[t], classes[t], l2)
    return CrossFit(rows, fold, [rows[fold != k] for k in range(folds)], probs)


def _fit_and_predict(x: torch.Tensor, y: torch.Tensor, x_new: torch.Tensor, kind: str, classes: int, l2: float
                     ) -> np.ndarray:
    """A logistic regression fitted on the rows of x whose label is known; its probabilities for x_new."""
    weight, bias = fit_logistic(x, y, kind, classes, l2, STEPS)
    logits = x_new @ weight.T + bias
    return (torch.sigmoid(logits) if kind == MULTI else torch.softmax(logits, 1)).numpy()


def _compressed(features: np.ndarray, dims: int) -> np.ndarray:
    """The features' first `dims` principal components, each scaled to unit variance, over all rows (no labels
    involved, so no fold learns from another's): fewer columns make each fit cheaper, and one L2 weight suits
    every column."""
    f = torch.from_numpy(np.asarray(features, np.float32))
    f = (f - f.mean(0)) / f.std(0).clamp(min=1e-6)
    _, _, v = torch.linalg.svd(f.T @ f / len(f))
    z = f @ v[:, :dims]
    return (z / z.std(0).clamp(min=1e-6)).numpy()


def _network(tagger: Tagger):
    """The tagger's torch network and whether it runs in bf16: its engine's own, else the folder's loaded."""
    if isinstance(tagger.engine, TorchEngine):
        return tagger.engine.model, tagger.engine.bf16
    return fold_batch_norms(load_model(tagger.model)[0]), bf16_supported(torch.device("cpu"))
