"""From logits to decisions, the one place the rules live: calibrated probabilities (each input condition's
temperatures), the choice of classes (the hierarchy decoded jointly, multi-label classes at their own thresholds),
each photo's acceptance threshold and the review rule. The tagger, training's calibration, `calibrate`, evaluation,
the review queue and Ray all decode through here, so a threshold is fitted on exactly what tagging will compute.
"""

from __future__ import annotations

import numpy as np

from fashiontag.data.vocab import OTHER
from fashiontag.model_folder import MULTI, ModelFolder


def needs_review(label: str, confidence: float, threshold: float) -> bool:
    """The review rule (tags, the review queue's statuses): a tag less sure than its threshold needs a person, and
    so does the pooled class of rare labels, `Other`, however sure: it names no real class."""
    return label == OTHER or confidence < threshold


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in numpy: on a service's small batches torch's per-call cost (and its OpenMP threads
    spinning afterwards, stealing the cores from onnxruntime) was a tenth of the serving time."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class Decoder:
    """A model folder's decoding rules, prepared once (the hierarchy's label combinations as index arrays)."""

    def __init__(self, model: ModelFolder):
        self.model = model
        self.tasks, self.kinds = model.tasks, model.kinds
        self.class_thresholds = {t: np.asarray(v) for t, v in model.class_thresholds.items()}
        self.combos = None
        if model.hierarchy:
            tasks, rows = model.hierarchy
            index = {t: {c: i for i, c in enumerate(model.vocabs[t])} for t in tasks}
            self.combos = tasks, np.array([[index[t][label] for t, label in zip(tasks, row)] for row in rows])

    def probabilities(self, logits: dict[str, np.ndarray], titled: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated probabilities per task: a distribution over the classes (single-label tasks) or each class's
        own probability (multi-label ones). titled: per photo, whether the model read a title with it (a photo
        alone is scaled by the photo-alone temperatures). A photo's row is NaN where any of its logits for the task
        is not finite: a sigmoid or softmax would read an infinite logit as a sure 1.0 or 0.0."""
        out = {}
        for t in self.tasks:
            temps = np.where(titled, self.model.calibration.temperatures[t],
                             self.model.photo_alone.temperatures[t]).astype(np.float32)[:, None]
            lg = np.where(np.isfinite(logits[t]).all(1, keepdims=True), logits[t], np.nan)
            out[t] = (sigmoid if self.kinds[t] == MULTI else softmax)(lg / temps)
        return out

    def choose(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Class index per single-label task, and (N, classes) booleans per multi-label task (each class at its
        own threshold); the hierarchy's tasks take the most probable combination seen in training, so a photo is
        never Footwear + Topwear + Tshirts."""
        chosen = {t: p >= self.class_thresholds[t] if self.kinds[t] == MULTI else p.argmax(1)
                  for t, p in probs.items()}
        if self.combos is not None:
            tasks, combos = self.combos
            joint = sum(np.log(probs[t][:, combos[:, j]] + 1e-12) for j, t in enumerate(tasks))
            best = combos[joint.argmax(1)]
            for j, t in enumerate(tasks):
                chosen[t] = best[:, j]
        return chosen

    def thresholds(self, titled: np.ndarray, min_confidence: float | None = None) -> dict[str, list[float]]:
        """Each photo's acceptance threshold per task: its condition's (with or without a title), or
        min_confidence for every tag when given."""
        if min_confidence is not None:
            return {t: [min_confidence] * len(titled) for t in self.tasks}
        return {t: np.where(titled, self.model.calibration.thresholds[t],
                            self.model.photo_alone.thresholds[t]).tolist() for t in self.tasks}
