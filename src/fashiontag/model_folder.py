"""Model folders without torch: where they are, their model.json checked against their weights, their version.

A model folder holds model.safetensors (weights), model.json (architecture, vocabularies, hierarchy, temperatures,
thresholds, history) and split.json. Everything reads it through this module: ModelFolder.open is the typed view
the code uses (old folders' defaults filled in here only), load_meta the raw record that writers extend, so a
tampered or half-written folder fails here with one clear sentence instead of giving wrong labels later.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import platformdirs

from fashiontag.atomic import write_text
from fashiontag.data.framing import check_framing
from fashiontag.errors import FashiontagError

WEIGHTS, META = "model.safetensors", "model.json"
# Task kinds: one class per photo (softmax), or any number of them (a sigmoid per class, thresholds per class).
SINGLE, MULTI = "single-label", "multi-label"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
# Input size (height, width) of a folder that records none: the Kaggle catalog's photos are 60 wide and 80 high.
INPUT_HW = (80, 60)
# Written into the safetensors header at save time: a vocabulary permuted in model.json alone is then noticed.
VOCABS_KEY = "fashiontag_vocabs"
# The record of a photo + title model's calibration on the photo alone (training.calibrate.fit_calibration): the
# temperatures and thresholds a photo that comes without a title is judged by. Absent: the top level's.
PHOTO_ONLY = "photo_only"
_HEAD_WEIGHT = re.compile(r"(?:^|\.)heads\.(?P<task>[^.]+)\.weight$")


class ModelError(FashiontagError, ValueError):
    """A model folder that cannot be used as it is: missing files, or model.json disagreeing with the weights."""


def default_cache_dir() -> Path:
    """Where fashiontag keeps what it can rebuild (photo caches, ONNX exports of read-only models)."""
    return Path(os.environ.get("FASHIONTAG_CACHE") or platformdirs.user_cache_dir("fashiontag"))


def default_model_dir() -> Path:
    """$FASHIONTAG_MODEL, else the model shipped inside the package."""
    return Path(os.environ.get("FASHIONTAG_MODEL") or DEFAULT_MODEL_DIR)


def readable_folder(path: Path) -> Path:
    """The folder itself, or its previous version if a crash interrupted the swap (see checkpoint.py)."""
    old = path.with_name(f".{path.name}.old")
    return path if path.exists() or not old.exists() else old


def model_folder(path: str | Path | None = None) -> Path:
    """The readable version of a model folder (default: default_model_dir()); a clear error where it is not one."""
    path = readable_folder(Path(path) if path else default_model_dir())
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise ModelError(f"{path} is not a model folder (needs {WEIGHTS} and {META}): train one with "
                         "`fashiontag train` and pass its best/ folder")
    return path


def weight_header(path: str | Path) -> dict:
    """The safetensors header (tensor names, dtypes, shapes, and __metadata__), read without loading weights."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise ModelError(f"{path}: not a safetensors file (header of {n:,} bytes)")
        try:
            header = json.loads(f.read(n))
            body = max((spec["data_offsets"][1] for name, spec in header.items() if name != "__metadata__"),
                       default=0)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError):
            raise ModelError(f"{path}: not a safetensors file (unreadable header)") from None
        # A file cut short (a copy or download broken off) loads nowhere: say so here, in one line, rather than
        # in a SafetensorError traceback from whichever command reads the weights first.
        size, expected = os.fstat(f.fileno()).st_size, 8 + n + body
        if size != expected:
            raise ModelError(f"{path}: damaged: {size:,} bytes where its header describes {expected:,} "
                             f"({'cut short' if size < expected else 'bytes after the last tensor'}); copy or "
                             "train the model again")
        return header


def load_meta(path: str | Path | None = None) -> dict:
    """A model folder's model.json, checked against its weights (see validate_meta)."""
    folder = model_folder(path)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder / META}: unreadable ({e})") from None
    validate_meta(meta, weight_header(folder / WEIGHTS), folder)
    return meta


def write_meta(folder: str | Path, meta: dict) -> None:
    """Replace a model folder's model.json atomically (the weights stay), then check that it loads."""
    folder = Path(folder)
    write_text(folder / META, json.dumps(meta, indent=1))
    load_meta(folder)


def validate_meta(meta: dict, header: dict, folder: Path) -> None:
    """Tasks, class counts and order, temperatures, input size and hierarchy must agree with the weights."""
    where = folder / META
    vocabs = meta.get("vocabs")
    if not isinstance(vocabs, dict) or not vocabs or not all(
            isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in vocabs.values()):
        raise ModelError(f"{where}: 'vocabs' must map each task to a non-empty list of class names")
    for task, classes in vocabs.items():
        if len(set(classes)) != len(classes):
            raise ModelError(f"{where}: task {task!r} lists a class twice")
    heads = {m["task"]: shape[0] for name, spec in header.items() if name != "__metadata__"
             and (m := _HEAD_WEIGHT.search(name)) and (shape := spec.get("shape"))}
    if heads:  # every family in fashiontag.models names its heads heads.<task>
        if set(heads) != set(vocabs):
            raise ModelError(f"{where}: tasks {sorted(vocabs)} do not match the weights' heads {sorted(heads)}")
        for task, n in heads.items():
            if len(vocabs[task]) != n:
                raise ModelError(f"{where}: task {task!r} lists {len(vocabs[task])} classes but its head in "
                                 f"{WEIGHTS} has {n} outputs")
    recorded = header.get("__metadata__", {}).get(VOCABS_KEY)
    if recorded is not None and json.loads(recorded) != vocabs:
        raise ModelError(f"{where}: the class vocabularies differ from those the weights were saved with "
                         "(reordered or edited)")
    temps = meta.get("temperatures", {})
    for task in vocabs:
        t = temps.get(task, 1.0)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise ModelError(f"{where}: temperature of task {task!r} is {t!r}; it must be a positive number")
    kinds = meta.get("task_kinds", {})
    if not isinstance(kinds, dict) or not set(kinds) <= set(vocabs) or not set(kinds.values()) <= {SINGLE, MULTI}:
        raise ModelError(f"{where}: 'task_kinds' must map tasks to {SINGLE!r} or {MULTI!r}, got {kinds!r}")
    for task, thresholds in meta.get("class_thresholds", {}).items():
        if kinds.get(task) != MULTI or not isinstance(thresholds, list) or len(thresholds) != len(vocabs[task]) \
                or not all(isinstance(x, (int, float)) and 0 < x < 1 for x in thresholds):
            raise ModelError(f"{where}: class_thresholds of {task!r} must be one number between 0 and 1 per class "
                             "of a multi-label task")
    thresholds = meta.get("thresholds", {})
    if not isinstance(thresholds, dict) or not set(thresholds) <= set(vocabs) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in thresholds.values()):
        raise ModelError(f"{where}: 'thresholds' must map tasks of the model to numbers from 0 to 1, "
                         f"got {thresholds!r}")
    hw = meta.get("input_hw", list(INPUT_HW))
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(x, int) and 8 <= x <= 4096 for x in hw)):
        raise ModelError(f"{where}: input_hw must be [height, width] in pixels (8 to 4096), got {hw!r}")
    hierarchy = meta.get("hierarchy", [])
    if hierarchy:
        tasks = hierarchy[0]
        if not isinstance(tasks, list) or len(tasks) < 2 or not set(tasks) <= set(vocabs):
            raise ModelError(f"{where}: the hierarchy's first row must name two or more of the tasks, got {tasks!r}")
        known = [set(vocabs[t]) for t in tasks]
        for row in hierarchy[1:]:
            if len(row) != len(tasks) or not all(label in k for label, k in zip(row, known)):
                raise ModelError(f"{where}: hierarchy row {row!r} names a class the vocabularies do not have")


def task_kinds(meta: dict) -> dict[str, str]:
    """Each task's kind (models from before multi-label tasks have only single-label ones)."""
    return {t: meta.get("task_kinds", {}).get(t, SINGLE) for t in meta["vocabs"]}


def framing_of(meta: dict) -> bool | float:
    """How the model's photos are framed: model.json's preprocess.framing (framing.frame's `when`; absent: never)."""
    return check_framing(meta.get("preprocess", {}).get("framing", False))


def hierarchy_of(meta: dict) -> tuple[list[str], list[list[str]]] | None:
    """The hierarchy's tasks (finest first) and the label combinations seen in training; None without one.

    model.json stores it as a header row of task names followed by one row per combination; this is the only
    place that reads that format."""
    rows = meta.get("hierarchy", [])
    return (list(rows[0]), [list(r) for r in rows[1:]]) if len(rows) > 1 else None


def model_version(folder: str | Path) -> str:
    """SHA-256 of the weights and model.json: the model's identity, for exports, the API and reports."""
    folder = model_folder(folder)
    h = hashlib.sha256()
    for name in (WEIGHTS, META):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Calibration:
    """How the tags of one input condition are judged: temperatures scale each task's logits, and a tag at or above
    its task's threshold is accepted (0: always); `precision` is the promise each threshold was chosen for."""
    temperatures: dict[str, float]
    thresholds: dict[str, float]
    precision: dict[str, float]

    @classmethod
    def of(cls, record: dict, tasks: list[str]) -> Calibration:
        return cls({t: float(record.get("temperatures", {}).get(t, 1.0)) for t in tasks},
                   {t: float(record.get("thresholds", {}).get(t, 0.0)) for t in tasks},
                   dict(record.get("threshold_precision", {})))


@dataclass(frozen=True, eq=False)
class ModelFolder:
    """A model as the code uses it: model.json typed, with old folders' defaults filled in, read and checked against
    the weights once (open). `record` is model.json itself, for writers and reports; `path` is None for a model
    being trained (from_record)."""
    path: Path | None
    record: dict
    arch: str
    arch_args: dict
    vocabs: dict[str, list[str]]
    kinds: dict[str, str]
    input_hw: tuple[int, int]
    framing: bool | float  # framing.frame's `when`
    calibration: Calibration  # a photo with its title (and every photo, for a photo-only model)
    photo_alone: Calibration  # a photo + title model's photo without a title
    class_thresholds: dict[str, list[float]]  # multi-label tasks: each class's own
    hierarchy: tuple[list[str], list[list[str]]] | None
    colour_centroids: dict[str, dict[str, list[float]]]
    catalog: dict

    @classmethod
    def open(cls, path: str | Path | ModelFolder | None = None) -> ModelFolder:
        """The model folder at path (default: default_model_dir()), checked (load_meta)."""
        if isinstance(path, ModelFolder):
            return path
        folder = model_folder(path)
        return cls.from_record(load_meta(folder), folder)

    @classmethod
    def from_record(cls, record: dict, path: Path | None = None) -> ModelFolder:
        """A model.json record (checked by whoever wrote or read it) as a ModelFolder."""
        vocabs = record["vocabs"]
        tasks, kinds = list(vocabs), task_kinds(record)
        return cls(
            path=Path(path) if path is not None else None, record=record, arch=record.get("arch", ""),
            arch_args=dict(record.get("arch_args", {})), vocabs=vocabs, kinds=kinds,
            input_hw=tuple(record.get("input_hw", INPUT_HW)),
            framing=framing_of(record),
            calibration=Calibration.of(record, tasks),
            photo_alone=Calibration.of({**record, **record.get(PHOTO_ONLY, {})}, tasks),
            class_thresholds={t: list(record.get("class_thresholds", {}).get(t, [0.5] * len(vocabs[t])))
                              for t in tasks if kinds[t] == MULTI},
            hierarchy=hierarchy_of(record), colour_centroids=record.get("colour_centroids", {}),
            catalog=record.get("catalog", {}))

    @property
    def tasks(self) -> list[str]:
        return list(self.vocabs)

    @property
    def takes_titles(self) -> bool:
        return "title" in self.arch_args

    @property
    def separator(self) -> str:
        """What joins a multi-label tag's labels in a catalog cell."""
        return self.catalog.get("separator") or "|"

    @cached_property
    def version(self) -> str:
        """model_version of the folder (hashed once), or "unknown" for a model not saved yet."""
        return model_version(self.path) if self.path is not None else "unknown"
