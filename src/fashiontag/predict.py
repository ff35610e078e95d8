"""Tagging: photos in, one row of labels and confidences per photo out, with a consistent category hierarchy."""

from __future__ import annotations

import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from fashiontag.checkpoint import load_model
from fashiontag.images import ImageError, decode
from fashiontag.train import bf16_supported, predict_logits

UNKNOWN_LABEL = "unknown"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def default_model_dir() -> Path:
    env = os.environ.get("FASHIONTAG_MODEL")
    path = Path(env) if env else DEFAULT_MODEL_DIR
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"no model at {path}: train one with `fashiontag train` and pass --model DIR")
    return path


class Tagger:
    """A loaded model plus everything needed to turn its logits into catalog tags."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", bf16: bool | None = None):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.device = torch.device(device)
        self.model, self.meta = load_model(self.model_dir, device=device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.bf16 = bf16_supported(self.device) if bf16 is None else bf16
        self.vocabs: dict[str, list[str]] = self.meta["vocabs"]
        self.tasks = list(self.vocabs)
        self.temperatures = self.meta.get("temperatures", {})
        self.input_hw = tuple(self.meta.get("input_hw", (80, 60)))
        self._combos = self._hierarchy_index(self.meta.get("hierarchy", []))

    def _hierarchy_index(self, hierarchy: list) -> tuple[list[str], np.ndarray] | None:
        if len(hierarchy) < 2:
            return None
        tasks, rows = hierarchy[0], hierarchy[1:]
        index = {t: {c: i for i, c in enumerate(self.vocabs[t])} for t in tasks}
        return tasks, np.array([[index[t][label] for t, label in zip(tasks, row)] for row in rows])

    def probabilities(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated class probabilities per task for uint8 (N, H, W, 3) photos."""
        logits = predict_logits(self.model, pixels, self.device, bf16=self.bf16)
        return {t: (lg / self.temperatures.get(t, 1.0)).softmax(1).numpy() for t, lg in logits.items()}

    def choose(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Class index per task; the hierarchy tasks take the most probable combination seen in training."""
        chosen = {t: p.argmax(1) for t, p in probs.items()}
        if self._combos is not None:
            tasks, combos = self._combos
            joint = sum(np.log(probs[t][:, combos[:, j]] + 1e-12) for j, t in enumerate(tasks))
            best = combos[joint.argmax(1)]
            for j, t in enumerate(tasks):
                chosen[t] = best[:, j]
        return chosen

    def tags(self, pixels: np.ndarray, top_k: int = 1, min_confidence: float = 0.0) -> list[dict]:
        """One flat dict per photo: <task>, <task>_confidence and, for top_k > 1, the runners-up."""
        probs = self.probabilities(pixels)
        chosen = self.choose(probs)
        rows: list[dict] = [{} for _ in range(len(pixels))]
        for t in self.tasks:
            p, vocab = probs[t], self.vocabs[t]
            order = np.argsort(-p, axis=1)[:, :top_k]
            for i, row in enumerate(rows):
                c = int(chosen[t][i])
                conf = float(p[i, c])
                row[t] = vocab[c] if conf >= min_confidence else UNKNOWN_LABEL
                row[f"{t}_confidence"] = round(conf, 4)
                runners = [int(k) for k in order[i] if k != c][: top_k - 1]
                for r, k in enumerate(runners, start=2):
                    row[f"{t}_top{r}"] = vocab[k]
                    row[f"{t}_top{r}_confidence"] = round(float(p[i, k]), 4)
        return rows

    def columns(self, top_k: int = 1) -> list[str]:
        cols = ["path", "id"]
        for t in self.tasks:
            cols += [t, f"{t}_confidence"]
            for r in range(2, top_k + 1):
                cols += [f"{t}_top{r}", f"{t}_top{r}_confidence"]
        return cols + ["error"]


def iter_image_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively (sorted) for image files. A missing path is yielded as is,
    so its row reports the error."""
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    if Path(f).suffix.lower() in IMAGE_SUFFIXES:
                        yield Path(root) / f
        else:
            yield p


def _load(path: Path, hw) -> tuple[np.ndarray | None, str]:
    try:
        return decode(str(path), hw), ""
    except ImageError as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read file ({e.strerror or e})"


def tag_paths(tagger: Tagger, paths: Iterable[str | Path], batch_size: int = 512, top_k: int = 1,
              min_confidence: float = 0.0, progress: bool = False) -> Iterator[dict]:
    """Stream tag rows for image files and folders, in constant memory. Unreadable files give a row with `error`."""
    files = iter_image_paths(paths)
    bar = tqdm(desc="tagging", unit="img", disable=not progress, file=sys.stderr)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        while batch := list(islice(files, batch_size)):
            loaded = list(pool.map(lambda p: _load(p, tagger.input_hw), batch))
            good = [i for i, (arr, _) in enumerate(loaded) if arr is not None]
            tags = tagger.tags(np.stack([loaded[i][0] for i in good]), top_k, min_confidence) if good else []
            by_index = dict(zip(good, tags))
            for i, path in enumerate(batch):
                yield {"path": str(path), "id": path.stem, **by_index.get(i, {}), "error": loaded[i][1]}
            bar.update(len(batch))
    bar.close()


def write_rows(rows: Iterable[dict], columns: list[str], out: IO[str], fmt: str = "csv") -> int:
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n += 1
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row) + "\n")
            n += 1
    else:
        raise ValueError(f"unknown format {fmt!r}: use csv or jsonl")
    return n


def predict(paths: list[str], out: str | None = None, model: str | None = None, fmt: str | None = None,
            top_k: int = 1, min_confidence: float = 0.0, batch_size: int = 512, progress: bool = True) -> dict:
    """The `fashiontag predict` command: tag files and folders into CSV or JSON lines (stdout without `out`)."""
    if fmt is None:
        fmt = "jsonl" if out and Path(out).suffix in (".jsonl", ".json") else "csv"
    tagger = Tagger(model)
    rows = tag_paths(tagger, paths, batch_size, top_k, min_confidence, progress)
    counts = {"rows": 0, "errors": 0}

    def counted(rs):
        for r in rs:
            counts["errors"] += bool(r["error"])
            if r["error"]:
                print(f"warning: {r['path']}: {r['error']}", file=sys.stderr)
            yield r

    if out:
        tmp = Path(out).with_name(f".{Path(out).name}.partial")
        with open(tmp, "w", newline="") as f:
            counts["rows"] = write_rows(counted(rows), tagger.columns(top_k), f, fmt)
        os.replace(tmp, out)
    else:
        counts["rows"] = write_rows(counted(rows), tagger.columns(top_k), sys.stdout, fmt)
    return counts
