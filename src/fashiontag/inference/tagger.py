"""The Python API: photos in, tags out.

    from fashiontag import Tagger
    tagger = Tagger.load()                     # the shipped model; Tagger.load("runs/x/best") for another
    result = tagger("shirt.jpg")               # a path, bytes, PIL image or (H, W, 3) uint8 array of any size
    result["articleType"].label, result["articleType"].confidence, result.to_dict()

A Tagger is a model folder (model_folder.ModelFolder), an engine (engines.py: where the logits come from) and
the folder's decoding rules (decode.py: calibrated probabilities, optionally averaged with the mirror image, the
category hierarchy decoded jointly, the review threshold), plus runners-up. Every output (CSV and JSON rows, the
HTTP API, the web page, evaluation) renders the PhotoResult objects made here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from fashiontag.data.colours import dominant_colours, nearest_class
from fashiontag.data.photos import ImageError, PhotoInput
from fashiontag.data.text import tokenizer_of
from fashiontag.inference.decode import Decoder, needs_review
from fashiontag.inference.engines import Engine, load_engine
from fashiontag.inference.thresholds import MAX_CONFIDENCE, MIN_CONFIDENCE, MIN_TOP_K
from fashiontag.model_folder import MULTI, ModelFolder

# Photos prepared at a time by Tagger.__call__: bounds memory for long lists of paths.
CALL_CHUNK = 512
NOT_FINITE = "the model gave NaN or infinite outputs for this photo, so it has no tags: are the model's files damaged?"


@dataclass(frozen=True)
class Tag:
    """One task's answer for one photo: the label, its calibrated confidence, the runners-up (label, confidence)
    in order, and the threshold below which it needs review (the label is kept: it is still the best guess).

    A multi-label task's answer also lists each label it holds with its probability (`labels`); its `label` is them
    joined by the catalog's separator ("casual|party"), and its confidence that of its least sure class decision
    (present or absent)."""

    label: str
    confidence: float
    runners_up: tuple[tuple[str, float], ...] = ()
    threshold: float = 0.0
    labels: tuple[tuple[str, float], ...] | None = None

    @property
    def needs_review(self) -> bool:
        return needs_review(self.label, self.confidence, self.threshold)

    @property
    def status(self) -> str:
        """"auto" (auto-accepted: sure enough to go into the catalog without a person) or "needs_review": the words
        of the review queue, where "accepted" and "corrected" are what a person decided."""
        return "needs_review" if self.needs_review else "auto"

    def to_dict(self, top_k: int | None = None) -> dict:
        out = {"label": self.label, "confidence": round(self.confidence, 4), "needs_review": self.needs_review,
               "status": self.status, "threshold": round(self.threshold, 4)}
        if self.labels is not None:
            out["labels"] = [{"label": label, "confidence": round(conf, 4)} for label, conf in self.labels]
        runners = self._runners(top_k)
        if runners:
            out["top"] = [{"label": self.label, "confidence": out["confidence"]}] + [
                {"label": label, "confidence": round(conf, 4)} for label, conf in runners]
        return out

    def _runners(self, top_k: int | None) -> tuple[tuple[str, float], ...]:
        return self.runners_up if top_k is None else self.runners_up[:max(0, top_k - 1)]


@dataclass
class PhotoResult:
    """The tags of one photo (task -> Tag), or the reason it could not be tagged. `source` is the path given, if
    any."""

    tags: dict[str, Tag] = field(default_factory=dict)
    source: str | None = None
    error: str = ""
    # The product's dominant colours when asked for (colours=True): (hex, share of its area, nearest colour class)
    colours: tuple[tuple[str, float, str], ...] | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def needs_review(self) -> bool:
        """Whether a person should look at this photo: a tag of it needs review, or it could not be tagged."""
        return bool(self.error) or any(tag.needs_review for tag in self.tags.values())

    def __getitem__(self, task: str) -> Tag:
        if self.error:
            raise KeyError(f"{self.source or 'this photo'} has no tags: {self.error}")
        if task not in self.tags:
            raise KeyError(f"no task {task!r}; the model's tasks are {', '.join(self.tags)}")
        return self.tags[task]

    def labels(self) -> dict[str, str]:
        return {t: tag.label for t, tag in self.tags.items()}

    def with_min_confidence(self, min_confidence: float) -> PhotoResult:
        """The same tags judged against another review threshold."""
        return replace(self, tags={t: replace(tag, threshold=min_confidence) for t, tag in self.tags.items()})

    def to_dict(self, top_k: int | None = None, min_confidence: float | None = None) -> dict:
        """{"source", "tags": {task: {label, confidence, needs_review[, top]}}} or {"source", "error"};
        min_confidence, when given, replaces the review threshold the photo was tagged with."""
        if min_confidence is not None:
            return self.with_min_confidence(min_confidence).to_dict(top_k)
        if self.error:
            return {"source": self.source, "error": self.error}
        out = {"source": self.source, "tags": {t: tag.to_dict(top_k) for t, tag in self.tags.items()}}
        if self.colours is not None:
            out["colours"] = [{"hex": h, "share": round(share, 3), "class": c} for h, share, c in self.colours]
        return out

    def to_row(self, top_k: int | None = None, review: bool = False) -> dict:
        """Flat columns: <task>, <task>_confidence[, <task>_needs_review][, <task>_top2, <task>_top2_confidence...].
        Empty for a photo that could not be tagged (the caller's row carries the error)."""
        row: dict = {}
        for t, tag in self.tags.items():
            row[t] = tag.label
            row[f"{t}_confidence"] = round(tag.confidence, 4)
            if review:
                row[f"{t}_needs_review"] = tag.needs_review
            for r, (label, conf) in enumerate(tag._runners(top_k), start=2):
                row[f"{t}_top{r}"] = label
                row[f"{t}_top{r}_confidence"] = round(conf, 4)
        if self.colours is not None:
            row["colours"] = "; ".join(f"{h} {share:.0%} {c}".rstrip() for h, share, c in self.colours)
        return row

    def __repr__(self) -> str:
        if self.error:
            return f"PhotoResult(source={self.source!r}, error={self.error!r})"
        tags = ", ".join(f"{t}={tag.label!r} {tag.confidence:.2f}{' (needs review)' if tag.needs_review else ''}"
                         for t, tag in self.tags.items())
        return f"PhotoResult({tags})"


class Tagger:
    """A model ready to tag photos. Build it with Tagger.load(); calling it tags photos.

    flip averages each photo's probabilities with its mirror image's (test-time augmentation): a few tenths of
    a point more accuracy for half the speed.
    """

    def __init__(self, engine: Engine, model: ModelFolder | dict, flip: bool = False):
        """model: the folder (ModelFolder.open), or a model.json record for a model being trained."""
        self.engine, self.flip = engine, flip
        self.model = model if isinstance(model, ModelFolder) else ModelFolder.from_record(model)
        self.decoder = Decoder(self.model)
        self.vocabs, self.tasks, self.kinds = self.model.vocabs, self.model.tasks, self.model.kinds
        self.photo_input = PhotoInput(self.model.input_hw, self.model.framing)
        self.input_hw = self.photo_input.hw
        self.tokenizer = tokenizer_of(self.model.record)  # None: a photo-only model, which ignores titles
        self._said_titles_ignored = False
        # Dominant colours are named after the first colour task's classes (model.json colour_centroids).
        centroids = next(iter(self.model.colour_centroids.values()), {})
        self.colour_centroids = {c: np.asarray(lab, np.float32) for c, lab in centroids.items()}
        self._labels = {t: np.array(v, dtype=object) for t, v in self.vocabs.items()}

    @property
    def meta(self) -> dict:
        """model.json's record."""
        return self.model.record

    @property
    def model_dir(self) -> Path | None:
        return self.model.path

    @property
    def thresholds(self) -> dict[str, float]:
        """Each task's acceptance threshold for a photo with its title (every photo, for a photo-only model)."""
        return self.model.calibration.thresholds

    @property
    def photo_thresholds(self) -> dict[str, float]:
        """Each task's acceptance threshold for a photo alone."""
        return self.model.photo_alone.thresholds

    @classmethod
    def load(cls, model: str | Path | ModelFolder | None = None, engine: str = "torch", threads: int | None = None,
             flip: bool = False, bf16: bool | None = None, device: str = "cpu") -> Tagger:
        """The model folder `model` (default: $FASHIONTAG_MODEL, else the model shipped in the package) on engine
        torch, onnx or onnx-int8. threads: inference threads (torch's are process-wide); bf16: torch's precision
        (None: where the CPU has it)."""
        folder = ModelFolder.open(model)
        return cls(load_engine(folder, engine, threads=threads, bf16=bf16, device=device), folder, flip)

    # ------------------------------------------------------------------------------------------- photos in

    def __call__(self, images, top_k: int = 1, min_confidence: float | None = None,
                 title: str | Sequence[str | None] | None = None, colours: bool = False):
        """Tag one photo (a path, bytes, PIL image or (H, W, 3) uint8 array) -> PhotoResult, or a list of them
        (or an (N, H, W, 3) array) -> list[PhotoResult] in the same order.

        title: the product's title (for a list, one per photo, None or "" where there is none); a photo + title
        model reads it, a photo-only model ignores it. One photo that cannot be read raises ImageError; in a list it
        gets a result with `error` set and the rest are tagged. A photo for which the model's outputs are not finite
        (a damaged model) gets a result with `error` set, alone or in a list. A wrong type, dtype or shape raises
        ValueError either way. min_confidence: the review threshold of every task (default: the model's own thresholds).
        colours: also the product's dominant colours (PhotoResult.colours; about 1 ms a photo)."""
        check_options(top_k, min_confidence)
        self._say_if_titles_ignored(title)
        if _is_batch(images):
            results: list[PhotoResult] = []
            items = list(images)
            titles = check_titles(title, len(items))
            for s in range(0, len(items), CALL_CHUNK):
                results += self._tag_items(items[s:s + CALL_CHUNK], top_k, min_confidence,
                                           titles[s:s + CALL_CHUNK] if titles else None, colours)
            return results
        if title is not None and not isinstance(title, str):
            raise ValueError(f"one photo takes one title (a str), got {type(title).__name__}")
        titles = None if title is None else [title]
        result = self.tag_pixels(self.prepare(images)[None], top_k, min_confidence, titles, colours)[0]
        result.source = _source_name(images)
        return result

    def _say_if_titles_ignored(self, title) -> None:
        """Titles given to a photo-only model change nothing, which reads like a title that did not help: warn, once
        per Tagger rather than once a call."""
        given = [title] if isinstance(title, str) else list(title) if isinstance(title, Iterable) else []
        if self.tokenizer is None and any(given) and not self._said_titles_ignored:
            self._said_titles_ignored = True
            warnings.warn(f"{self.model_dir or 'this model'} is a photo-only model: it tags from the photo alone and "
                          "ignores titles (a photo + title model reads them: README, Photo and title)", UserWarning,
                          stacklevel=3)

    def prepare(self, image) -> np.ndarray:
        """The letterboxed (H, W, 3) uint8 model input for one photo; ImageError if it cannot be read."""
        return self.photo_input.load(image)

    def _tag_items(self, items: Sequence, top_k: int, min_confidence: float | None,
                   titles: Sequence[str | None] | None, colours: bool) -> list[PhotoResult]:
        pixels, errors = [], []
        for item in items:
            try:
                pixels.append(self.prepare(item))
                errors.append("")
            except ImageError as e:
                errors.append(str(e))
        kept = [t for t, e in zip(titles, errors) if not e] if titles is not None else None
        tagged = iter(self.tag_pixels(np.stack(pixels), top_k, min_confidence, kept, colours) if pixels else ())
        return [replace(next(tagged) if not err else PhotoResult(error=err), source=_source_name(item))
                for item, err in zip(items, errors)]

    # -------------------------------------------------------------------------------------- logits to tags

    def probabilities(self, pixels: np.ndarray, titles: Sequence[str | None] | None = None
                      ) -> dict[str, np.ndarray]:
        """Calibrated class probabilities per task for letterboxed uint8 (N, H, W, 3) photos (and their titles, one
        per photo, for a photo + title model): a distribution over the classes (single-label tasks), or each class's
        own probability (multi-label tasks); NaN where the model's outputs for the photo are not finite."""
        return self._probabilities(pixels, titles)[0]

    def _probabilities(self, pixels: np.ndarray, titles: Sequence[str | None] | None
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """probabilities, and per photo whether the model read a title with it (which calibration judges it by)."""
        views = [pixels, np.ascontiguousarray(pixels[:, :, ::-1])] if self.flip else [pixels]
        tokens = self.tokenizer(titles) if self.tokenizer is not None and titles is not None else None
        titled = tokens.any(1) if tokens is not None else np.zeros(len(pixels), bool)
        probs = [self.decoder.probabilities(self.engine.logits(view, tokens), titled) for view in views]
        return {t: sum(p[t] for p in probs) / len(probs) for t in self.tasks}, titled

    def choose(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See decode.Decoder.choose."""
        return self.decoder.choose(probs)

    def tag_pixels(self, pixels: np.ndarray, top_k: int = 1, min_confidence: float | None = None,
                   titles: Sequence[str | None] | None = None, colours: bool = False) -> list[PhotoResult]:
        """Tag letterboxed uint8 (N, H, W, 3) photos (see prepare), with their titles if given, into one
        PhotoResult each; with colours, each also gets the product's dominant colours."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (*self.input_hw, 3):
            raise ValueError(f"tag_pixels takes letterboxed uint8 photos of shape (N, {self.input_hw[0]}, "
                             f"{self.input_hw[1]}, 3), got {pixels.dtype} {pixels.shape}: use the Tagger itself "
                             "(tagger(photos)) for photos of any size")
        if len(pixels) == 0:
            return []
        probs, titled = self._probabilities(pixels, check_titles(titles, len(pixels)))
        chosen = self.choose(probs)
        idx = np.arange(len(pixels))
        thresholds = self.decoder.thresholds(titled, min_confidence)
        per_task = {}
        for t in self.tasks:  # a task at a time in numpy: per-photo Python work adds up at thousands a second
            if self.kinds[t] == MULTI:
                per_task[t] = self._multi_label_tags(probs[t], chosen[t], self._labels[t], top_k, thresholds[t])
                continue
            p, c, labels = probs[t], chosen[t], self._labels[t]
            runners: list = [()] * len(pixels)
            if top_k > 1:
                top = np.argsort(-p, axis=1)[:, :top_k]
                keep = top != c[:, None]
                keep[keep.all(1), -1] = False  # the chosen class is not among the top: drop the last instead
                ranks = top[keep].reshape(len(top), top.shape[1] - 1)
                runners = [tuple(zip(ls, cs)) for ls, cs in zip(labels[ranks].tolist(),
                                                                np.take_along_axis(p, ranks, 1).tolist())]
            per_task[t] = [Tag(label, conf, r, threshold) for label, conf, r, threshold
                           in zip(labels[c].tolist(), p[idx, c].tolist(), runners, thresholds[t])]
        # A damaged model (weights written over) gives NaN: an error for the photo, never a tag whose confidence
        # is NaN and which no review threshold flags.
        finite = np.logical_and.reduce([np.isfinite(p).all(1) for p in probs.values()])
        results = [PhotoResult(dict(zip(self.tasks, row))) if ok else PhotoResult(error=NOT_FINITE)
                   for ok, row in zip(finite, zip(*per_task.values()))]
        for result, photo in zip(results, pixels) if colours else ():
            result.colours = self.colours_of(photo)
        return results

    def colours_of(self, photo: np.ndarray) -> tuple[tuple[str, float, str], ...]:
        """The product's dominant colours in a letterboxed photo, largest first: (hex, share of the product's area,
        the nearest class of the model's colour task, or "" for a model without one)."""
        return tuple((h, share, nearest_class(h, self.colour_centroids) if self.colour_centroids else "")
                     for h, share in dominant_colours(photo))

    def _multi_label_tags(self, p: np.ndarray, chosen: np.ndarray, labels: np.ndarray, top_k: int,
                          thresholds: list[float]) -> list[Tag]:
        """One Tag per photo for a multi-label task: its labels most probable first, the classes left out as
        runners-up."""
        order = np.argsort(-p, axis=1)
        sure = np.where(chosen, p, 1 - p).min(1)
        tags = []
        for row, (o, c, threshold) in enumerate(zip(order, chosen, thresholds)):
            held = tuple((labels[i], float(p[row, i])) for i in o if c[i])
            runners = tuple((labels[i], float(p[row, i])) for i in o if not c[i])[:max(0, top_k - 1)]
            tags.append(Tag(self.model.separator.join(label for label, _ in held), float(sure[row]), runners,
                            threshold, held))
        return tags

    # ------------------------------------------------------------------------------------------ describing

    def columns(self, top_k: int = 1, review: bool = False) -> list[str]:
        return row_columns(self.tasks, top_k, review)

    def info(self) -> dict:
        """What the model is: version, architecture, tasks, classes, hierarchy, input size, validation metrics."""
        meta, hierarchy = self.meta, self.model.hierarchy
        calibration = meta.get("calibration_val", {})
        return _finite({
            "version": self.model.version[:12],
            "arch": self.model.arch, "arch_args": self.model.arch_args, "created": meta.get("created"),
            "fashiontag_version": meta.get("fashiontag_version"), "engine": self.engine.name,
            "input_hw": list(self.input_hw), "tasks": self.tasks, "kinds": self.kinds, "classes": self.vocabs,
            "takes_titles": self.tokenizer is not None,
            "hierarchy": {"tasks": hierarchy[0], "combinations": hierarchy[1]} if hierarchy else None,
            "thresholds": self.thresholds, "threshold_precision": self.model.calibration.precision,
            "photo_only_thresholds": self.photo_thresholds,
            "metrics": {"val_acc": meta.get("val_acc", {}),
                        "calibration_ece_val": {t: v.get("after") for t, v in calibration.items()
                                                if isinstance(v, dict)}},
        })

    def __repr__(self) -> str:
        return f"Tagger({str(self.model_dir)!r}, engine={self.engine.name!r}, tasks={self.tasks})"


def row_columns(tasks: list[str], top_k: int = 1, review: bool = False) -> list[str]:
    """The columns of a tag row (see PhotoResult.to_row), framed by path and id first and error last."""
    cols = ["path", "id"]
    for t in tasks:
        cols += [t, f"{t}_confidence"] + ([f"{t}_needs_review"] if review else [])
        for r in range(2, top_k + 1):
            cols += [f"{t}_top{r}", f"{t}_top{r}_confidence"]
    return cols + ["error"]


def has_review_columns(model: ModelFolder, min_confidence: float | None) -> bool:
    """Whether tags judged against min_confidence (None: the model's thresholds) can need review at all, i.e.
    whether outputs carry needs_review columns."""
    return any(model.calibration.thresholds.values()) if min_confidence is None else min_confidence > 0


def check_titles(titles, n: int) -> list[str | None] | None:
    """titles as a list of n str or None, or None; a ValueError for anything else."""
    if titles is None:
        return None
    if isinstance(titles, str) or len(titles) != n or not all(t is None or isinstance(t, str) for t in titles):
        raise ValueError(f"titles: one str (or None) per photo, {n} in all, got {titles!r:.200}")
    return list(titles)


def check_options(top_k: int, min_confidence: float | None) -> None:
    if not isinstance(top_k, int) or top_k < MIN_TOP_K:
        raise ValueError(f"top_k must be a whole number of {MIN_TOP_K} or more, got {top_k!r}")
    if min_confidence is not None and not MIN_CONFIDENCE <= min_confidence <= MAX_CONFIDENCE:
        raise ValueError(f"min_confidence must be from {MIN_CONFIDENCE:g} to {MAX_CONFIDENCE:g}, "
                         f"got {min_confidence!r}")


def _is_batch(images) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim == 4
    return isinstance(images, Iterable) and not isinstance(images, (str, bytes, bytearray, memoryview, Path,
                                                                    Image.Image))


def _source_name(image) -> str | None:
    return str(image) if isinstance(image, (str, Path)) else None


def _finite(obj):
    """JSON has no NaN: metrics of a task without validation labels become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
