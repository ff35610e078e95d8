"""Auto-accept thresholds: per task, the lowest confidence above which the model's tags reach a target precision.

A catalog team accepts the tags at or above a task's threshold as they are and reviews the rest. The threshold is
chosen on the validation photos (calibration time, or `fashiontag calibrate`) and stored in model.json; tagging
judges each tag against it (decode.needs_review). numpy only: the inference side imports this module.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_PRECISION = 0.98
# The tagging options' bounds, declared once for the Python API (tagger.check_options), the CLI, the HTTP API and
# the review service: top_k counts the answer and its runners-up (the HTTP API answers at most MAX_TOP_K);
# min_confidence, a threshold given by hand, is a probability.
MIN_TOP_K, MAX_TOP_K = 1, 20
MIN_CONFIDENCE, MAX_CONFIDENCE = 0.0, 1.0
# The precisions whose coverage evaluation reports.
REPORTED_PRECISIONS = (0.90, 0.95, 0.98, 0.99)
# Where no confidence reaches the target, nothing is auto-accepted: no calibrated probability exceeds 1.
UNREACHABLE = 1.0
# Auto-accept thresholds promise their precision at 95% confidence (one-sided): z of the normal distribution.
PROMISE_Z = 1.6449


def ranked(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every candidate threshold (each distinct confidence, highest first): the threshold, the share of photos
    at or above it (coverage) and the precision of those photos."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.asarray(correct, float)[order]
    # A threshold accepts every photo at or above it, so only the last photo of a run of equal confidences ends a
    # candidate set.
    ends = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True])
    taken = ends + 1
    return conf[ends], taken / len(conf), np.cumsum(hits)[ends] / taken


def precision_lower_bound(hits: np.ndarray, n: np.ndarray, z: float = PROMISE_Z) -> np.ndarray:
    """Wilson's lower bound of a precision measured as hits of n (z = 0: the measured precision itself)."""
    hits, n = np.asarray(hits, float), np.maximum(np.asarray(n, float), 1)
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def precision_upper_bound(hits: np.ndarray, n: np.ndarray, z: float = PROMISE_Z) -> np.ndarray:
    """Wilson's upper bound of a precision measured as hits of n: the lower bound of the misses' share, mirrored."""
    hits, n = np.asarray(hits, float), np.asarray(n, float)
    return 1 - precision_lower_bound(n - hits, n, z)


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float, z: float = 0.0) -> dict:
    """The lowest threshold whose accepted photos reach `precision`, with its coverage and measured precision.

    z > 0: the accepted photos' precision must reach the target with that much confidence (its Wilson lower bound,
    `lower` in the record), so a promise fitted on a few hundred validation photos still holds on new ones; where
    no set of them can show it, nothing is accepted and `why` says so. Precision is not monotone in the threshold;
    the largest accepted set that still reaches the target is taken, which is what a team wants: as much automatic
    as the target allows."""
    n = len(confidence)
    refused = {"threshold": UNREACHABLE, "coverage": 0.0, "precision": None, "lower": None, "n": n}
    if n == 0:
        return {**refused, "why": "no labelled validation photos"}
    thresholds, coverage, prec = ranked(np.asarray(confidence, float), correct)
    taken = np.rint(coverage * n)
    lower = precision_lower_bound(np.rint(prec * taken), taken, z)
    ok = np.flatnonzero(lower >= precision)
    if len(ok) == 0:
        best = int(np.argmax(lower))
        return {**refused, "why": f"the best any threshold shows on {n} validation photos is "
                                  f"{lower[best]:.3f}{' at 95% confidence' if z else ''}, below {precision}"}
    i = ok[-1]
    return {"threshold": float(thresholds[i]), "coverage": float(coverage[i]), "precision": float(prec[i]),
            "lower": float(lower[i]), "n": n}


def coverage_table(confidence: np.ndarray, correct: np.ndarray,
                   precisions: tuple[float, ...] = REPORTED_PRECISIONS) -> dict[str, dict]:
    """Per target precision ("0.98"): the threshold and the share of photos auto-accepted at it."""
    return {f"{p:.2f}": choose_threshold(confidence, correct, p) for p in precisions}


def precision_targets(config: dict, tasks: list[str]) -> dict[str, float]:
    """Each task's target: the config's `task_precision` entry, else its `precision`, else DEFAULT_PRECISION."""
    default = config.get("precision", DEFAULT_PRECISION)
    per_task = config.get("task_precision") or {}
    targets = {t: float(per_task.get(t, default)) for t in tasks}
    for t, p in targets.items():
        if not (math.isfinite(p) and 0 < p <= 1):
            raise ValueError(f"the precision target of {t} is {p}; it must be above 0 and at most 1")
    return targets


def fit_thresholds(confidence: dict[str, np.ndarray], correct: dict[str, np.ndarray], targets: dict[str, float]
                   ) -> dict:
    """model.json's record: "thresholds" {task: float}, "threshold_precision" {task: target} and
    "thresholds_val" {task: {threshold, coverage, precision, lower, n[, why]}} measured on the photos given, each
    threshold promising its target at 95% confidence."""
    chosen = {t: choose_threshold(confidence[t], correct[t], targets[t], PROMISE_Z) for t in targets}
    return {"thresholds": {t: c["threshold"] for t, c in chosen.items()}, "threshold_precision": dict(targets),
            "thresholds_val": chosen}


def decoded_confidence(probs: dict[str, np.ndarray], chosen: dict[str, np.ndarray], targets: dict[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per task, over photos whose label is known: the confidence of the tag given (after joint decoding, as
    tagging reports it) and whether it was right. A multi-label tag (chosen: a row of booleans) is right when its
    set is, and as sure as its least sure class decision (tagger.Tagger._multi_label_tags)."""
    conf, correct = {}, {}
    for t, p in probs.items():
        y = targets[t]
        if y.ndim == 2:
            known = y[:, 0] >= 0
            c = chosen[t][known]
            conf[t] = np.where(c, p[known], 1 - p[known]).min(1)
            correct[t] = (c == (y[known] > 0)).all(1)
            continue
        known = y >= 0
        c = chosen[t][known]
        conf[t] = p[known][np.arange(len(c)), c]
        correct[t] = c == y[known]
    return conf, correct


def at_threshold(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict:
    """What a given threshold does on these photos: the share accepted and their precision (None: none)."""
    accepted = np.asarray(confidence) >= threshold
    n = int(accepted.sum())
    return {"threshold": float(threshold), "coverage": n / max(len(accepted), 1),
            "precision": float(np.asarray(correct)[accepted].mean()) if n else None}
