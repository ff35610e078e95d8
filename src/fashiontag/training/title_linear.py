"""Fitting a photo + title model's linear title part (models.title.TitleLinear): a linear SVM per task on the
TF-IDF of the training titles' ids, the shape of issue 25's title baseline (char 2-5-gram TF-IDF + LinearSVC),
which beat the title encoder alone. On the shipped model's validation side the SVM over the Tokenizer's ids scored
99.65 / 99.70 / 99.34 / 97.40 / 90.62 / 82.51 / 95.64 against the baseline's 99.67 / 99.70 / 99.22 / 97.30 / 89.36 /
81.30 / 94.96 (docs/results.md); C = 3 was chosen there among 0.2 to 6.

The features are built here with scipy from the same ids and idf as TitleLinear computes them in the model, so
the model's scores are the SVM's decision function (tests/models/test_title.py checks that they are)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from fashiontag.data.text import Tokenizer, tokenizer_of
from fashiontag.model_folder import INPUT_HW
from fashiontag.models import TitleFusion, create_model
from fashiontag.models.checkpoint import load_model, save_model
from fashiontag.models.title import TitleLinear

DEFAULT_C = 3.0
# The score of a class no training title has: the SVM never learnt it, so it must not win on the title's word.
UNSEEN = -10.0


def idf_of(tokens: np.ndarray, buckets: int) -> np.ndarray:
    """Smoothed idf per id over the titled rows of (N, L) ids, as TfidfVectorizer(smooth_idf=True) computes it:
    ln((1 + n) / (1 + df)) + 1."""
    rows = tokens[(tokens > 0).any(1)]
    df = np.zeros(buckets)
    for row in rows:
        df[np.unique(row[row > 0])] += 1
    return (np.log((1 + len(rows)) / (1 + df)) + 1).astype(np.float32)


def tfidf(tokens: np.ndarray, idf: np.ndarray) -> sp.csr_matrix:
    """(N, buckets) sparse rows: each id's (1 + ln count) x idf, each row scaled to unit length (0 if untitled)."""
    n, length = tokens.shape
    rows, cols = np.repeat(np.arange(n), length), tokens.ravel()
    keep = cols > 0
    counts = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, len(idf)))
    counts.sum_duplicates()
    x = counts.astype(np.float64)
    x.data = (1 + np.log(x.data)) * idf[x.indices]
    norm = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sp.diags(1 / np.where(norm > 0, norm, 1)) @ x


def add_title_linear(folder: Path, titles: list[str | None], targets: dict[str, np.ndarray], c: float | None = None,
                     progress: bool = True) -> float:
    """Fit a late-fusion photo + title model folder's linear title part on the titles and labels of its training
    side and save it into the folder; a model without one gets one (arch_args.title.linear: {"C": c}). c: the
    SVM's C, default the folder's own, else DEFAULT_C. Returns the C used. Its weight beside the photo and the
    title encoder is fitted after, with theirs (training.calibrate.weigh_fusion)."""
    model, meta = load_model(folder)
    title = meta["arch_args"].get("title") or {}
    if not (isinstance(model, TitleFusion) and model.fusion == "late"):
        raise ValueError(f"{folder}: a linear title part is for a photo + title model with late fusion")
    c = float(c if c is not None else (title.get("linear") or {}).get("C", DEFAULT_C))
    if c <= 0:
        raise ValueError(f"the linear title part's C must be above 0, got {c}")
    meta["arch_args"]["title"] = {**title, "linear": {"C": c}}
    if model.linear is None:
        grown = create_model(meta["arch"], {t: len(v) for t, v in meta["vocabs"].items()},
                             meta.get("input_hw", INPUT_HW), **meta["arch_args"])
        grown.load_state_dict(model.state_dict(), strict=False)  # all but the new part's buffers
        model = grown.eval()
    fit_title_linear(model.linear, titles, targets, tokenizer_of(meta), c, progress)
    split = folder / "split.json"
    save_model(folder, model, meta, json.loads(split.read_text()) if split.exists() else None)
    return c


def fit_title_linear(part: TitleLinear, titles: list[str | None], targets: dict[str, np.ndarray],
                     tokenizer: Tokenizer, c: float = DEFAULT_C, progress: bool = True) -> None:
    """Fit a TitleLinear on the training rows' titles and labels (-1, or a row of -1 when multi-label: unknown),
    one LinearSVC per task (per class of a multi-label task), and write idf, weights and bias into it."""
    tokens = tokenizer(titles)
    idf = idf_of(tokens, tokenizer.buckets)
    x = tfidf(tokens, idf)
    titled = (tokens > 0).any(1)
    weight = np.zeros((tokenizer.buckets, sum(part.sizes.values())), dtype=np.float32)
    bias = np.full(weight.shape[1], UNSEEN, dtype=np.float32)
    start = 0
    for task, size in tqdm(part.sizes.items(), desc="linear title part", disable=not progress):
        y = targets[task]
        if y.ndim == 2:  # multi-label: a binary SVM per class, its decision for "1"
            rows = titled & (y[:, 0] >= 0)
            for k in range(size):
                if (y[rows, k] == 1).any():
                    coef, intercept = _svm(x[rows], y[rows, k], c)
                    weight[:, start + k], bias[start + k] = coef[:, -1], intercept[-1]
        else:
            rows = titled & (y >= 0)
            classes = start + np.unique(y[rows])
            if len(classes):
                weight[:, classes], bias[classes] = _svm(x[rows], y[rows], c)
        start += size
    part.set_weights(torch.from_numpy(idf), torch.from_numpy(weight), torch.from_numpy(bias))


def _svm(x: sp.csr_matrix, labels: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """A LinearSVC's (features, classes) weights and (classes,) bias, one column per class in `labels`, sorted:
    with two classes, one decision function split into two opposite halves (their difference is the decision);
    with one, nothing to separate: a weight of zeros and a bias of 1 (every titled row is that class)."""
    from sklearn.svm import LinearSVC

    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros((x.shape[1], 1), np.float32), np.ones(1, np.float32)
    svm = LinearSVC(C=c).fit(x, labels)
    coef, intercept = svm.coef_.T, svm.intercept_
    if coef.shape[1] == 1:
        coef, intercept = np.hstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef.astype(np.float32), intercept.astype(np.float32)
