"""Tagging: photos in, one row of labels and confidences per photo out, with a consistent category hierarchy."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from fashiontag.checkpoint import load_meta, load_model
from fashiontag.images import ImageError, decode
from fashiontag.train import bf16_supported, predict_logits

UNKNOWN_LABEL = "unknown"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
# torch: the PyTorch model (bf16 where the CPU or GPU supports it); onnx: onnxruntime on the exported fp32 graph;
# onnx-int8: onnxruntime on the int8-quantized graph. All share the calibration and decoding below.
ENGINES = ("torch", "onnx", "onnx-int8")
DEFAULT_ENGINE = "torch"  # measured faster end to end than onnx on CPUs with bf16 (see benchmarks/speed.py)
INFER_BATCH = 128  # photos per forward pass: activations stay in cache; larger batches are slower on CPU


def default_model_dir() -> Path:
    env = os.environ.get("FASHIONTAG_MODEL")
    path = Path(env) if env else DEFAULT_MODEL_DIR
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"no model at {path}: train one with `fashiontag train` and pass --model DIR")
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in numpy: on a service's small batches torch's per-call cost (and its OpenMP threads
    spinning afterwards, stealing the cores from onnxruntime) was a tenth of the serving time."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class Tagger:
    """A loaded model plus everything needed to turn its logits into catalog tags.

    engine picks where the logits come from (see ENGINES; the onnx ones run on the CPU); everything after the logits
    is shared. threads, when given, is the number of inference threads: onnxruntime's for this session, torch's for
    the whole process. flip averages each photo's probabilities with its mirror image's (test-time augmentation):
    a few tenths of a point more accuracy for half the speed.
    """

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", bf16: bool | None = None,
                 engine: str = DEFAULT_ENGINE, threads: int | None = None, flip: bool = False):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.engine = engine
        self.flip = flip
        self.device = torch.device(device)
        self.bf16 = False
        self.model: nn.Module | None = None
        self.session = None
        if engine == "torch":
            if threads:
                torch.set_num_threads(threads)
            model, self.meta = load_model(self.model_dir, device=device)
            self.model = inference_model(model)
            self.bf16 = bf16_supported(self.device) if bf16 is None else bf16
        else:
            self.meta = load_meta(self.model_dir)
            self.session = onnx_session(self.model_dir, int8=engine == "onnx-int8", threads=threads)
        self.vocabs: dict[str, list[str]] = self.meta["vocabs"]
        self.tasks = list(self.vocabs)
        self.temperatures = self.meta.get("temperatures", {})
        self.input_hw = tuple(self.meta.get("input_hw", (80, 60)))
        self._combos = self._hierarchy_index(self.meta.get("hierarchy", []))
        self._labels = {t: np.array([*v, UNKNOWN_LABEL], dtype=object) for t, v in self.vocabs.items()}

    def _hierarchy_index(self, hierarchy: list) -> tuple[list[str], np.ndarray] | None:
        if len(hierarchy) < 2:
            return None
        tasks, rows = hierarchy[0], hierarchy[1:]
        index = {t: {c: i for i, c in enumerate(self.vocabs[t])} for t in tasks}
        return tasks, np.array([[index[t][label] for t, label in zip(tasks, row)] for row in rows])

    def logits(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Raw logits per task for uint8 (N, H, W, 3) photos, from this tagger's engine."""
        if self.session is None:
            out = predict_logits(self.model, pixels, self.device, INFER_BATCH, bf16=self.bf16)
            return {t: v.numpy() for t, v in out.items()}
        chunks: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        for s in range(0, len(pixels), INFER_BATCH):
            x = pixels[s:s + INFER_BATCH].transpose(0, 3, 1, 2).astype(np.float32) / 255
            for t, v in zip(self.tasks, self.session.run(self.tasks, {"image": x})):
                chunks[t].append(v)
        return {t: np.concatenate(v) for t, v in chunks.items()}

    def probabilities(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated class probabilities per task for uint8 (N, H, W, 3) photos."""
        views = [pixels, np.ascontiguousarray(pixels[:, :, ::-1])] if self.flip else [pixels]
        probs = [{t: softmax(lg / self.temperatures.get(t, 1.0)) for t, lg in self.logits(view).items()}
                 for view in views]
        return {t: sum(p[t] for p in probs) / len(probs) for t in self.tasks}

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
        idx = np.arange(len(pixels))
        keys: list[str] = []
        columns: list[list] = []  # a column at a time, in numpy: per-photo Python work adds up at thousands a second
        for t in self.tasks:
            p, c, labels = probs[t], chosen[t], self._labels[t]
            conf = p[idx, c]
            keys += [t, f"{t}_confidence"]
            columns += [labels[np.where(conf >= min_confidence, c, len(labels) - 1)].tolist(),
                        [round(x, 4) for x in conf.tolist()]]
            if top_k > 1:
                top = np.argsort(-p, axis=1)[:, :top_k]
                keep = top != c[:, None]
                keep[keep.all(1), -1] = False  # the chosen class is not among the top: drop the last instead
                runners = top[keep].reshape(len(top), top.shape[1] - 1)
                for r in range(runners.shape[1]):
                    keys += [f"{t}_top{r + 2}", f"{t}_top{r + 2}_confidence"]
                    columns += [labels[runners[:, r]].tolist(), [round(x, 4) for x in p[idx, runners[:, r]].tolist()]]
        return [dict(zip(keys, values)) for values in zip(*columns)]

    def columns(self, top_k: int = 1) -> list[str]:
        cols = ["path", "id"]
        for t in self.tasks:
            cols += [t, f"{t}_confidence"]
            for r in range(2, top_k + 1):
                cols += [f"{t}_top{r}", f"{t}_top{r}_confidence"]
        return cols + ["error"]


def inference_model(model: nn.Module) -> nn.Module:
    """The model, in place, in eval mode and channels-last, each BatchNorm that directly follows a convolution
    folded into it: the same function, a fifth faster on CPU."""
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            if isinstance(seq[i - 1], nn.Conv2d) and isinstance(seq[i], nn.BatchNorm2d):
                seq[i - 1], seq[i] = fuse_conv_bn_eval(seq[i - 1], seq[i]), nn.Identity()
    return model.to(memory_format=torch.channels_last)


def onnx_session(model_dir: str | Path, int8: bool = False, threads: int | None = None):
    """An onnxruntime session on the folder's ONNX export, exporting it first if it is missing or stale."""
    import onnxruntime as ort

    from fashiontag.export import current_onnx
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    # Waiting threads sleep rather than spin, leaving the cores to the threads decoding the next photos.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(current_onnx(model_dir, int8)), opts, providers=["CPUExecutionProvider"])


def iter_image_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for image files. A missing path is yielded as is, so its row
    reports the error. Streams: a folder's files come in directory order, then its subfolders by name, so a
    folder of a million photos is never listed into memory."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from _walk(p)
        else:
            yield p


def _walk(folder: Path) -> Iterator[Path]:
    subfolders = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    subfolders.append(e.name)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                    yield Path(e.path)
    except OSError:  # an unreadable folder is skipped, as os.walk does
        return
    for name in sorted(subfolders):
        yield from _walk(folder / name)


def _load(path: Path, hw) -> tuple[np.ndarray | None, str]:
    try:
        return decode(str(path), hw), ""
    except ImageError as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read file ({e.strerror or e})"


def _load_batch(paths: list[Path], hw) -> tuple[np.ndarray, list[str]]:
    """The readable photos of a batch stacked in order, and one error per path ('' for a readable one)."""
    pixels = np.empty((len(paths), *hw, 3), np.uint8)
    errors, n = [], 0
    for path in paths:
        arr, err = _load(path, hw)
        errors.append(err)
        if arr is not None:
            pixels[n] = arr
            n += 1
    return pixels[:n], errors


def tag_paths(tagger: Tagger, paths: Iterable[str | Path], batch_size: int = 512, top_k: int = 1,
              min_confidence: float = 0.0, progress: bool = False, workers: int | None = None) -> Iterator[dict]:
    """Stream tag rows for image files and folders, in constant memory. Unreadable files give a row with `error`.

    Decoding threads work on the next batches while the model tags this one and the caller writes its rows.
    """
    files = iter_image_paths(paths)
    workers = workers or thread_split()[1]
    bar = tqdm(desc="tagging", unit="img", disable=not progress, file=sys.stderr)
    with ThreadPoolExecutor(workers, thread_name_prefix="fashiontag-decode") as pool:
        ahead: deque = deque()

        def read_ahead() -> None:  # one batch per decoding thread, plus one ready and waiting
            while len(ahead) <= workers and (batch := list(islice(files, batch_size))):
                ahead.append((batch, pool.submit(_load_batch, batch, tagger.input_hw)))

        read_ahead()
        while ahead:
            batch, job = ahead.popleft()
            read_ahead()
            pixels, errors = job.result()
            tags = iter(tagger.tags(pixels, top_k, min_confidence) if len(pixels) else ())
            for path, error in zip(batch, errors):
                yield {"path": str(path), "id": path.stem, **({} if error else next(tags)), "error": error}
            bar.update(len(batch))
    bar.close()


def thread_split(cores: int | None = None) -> tuple[int, int]:
    """Inference threads and decoding threads for tagging files: half the cores each. Decoding a photo costs
    about as much CPU as the CNN, and more threads than cores leave OpenMP threads spinning at barriers while
    a descheduled peer holds everyone up."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // 2), max(1, cores - cores // 2)


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
            top_k: int = 1, min_confidence: float = 0.0, batch_size: int = 512, progress: bool = True,
            engine: str = DEFAULT_ENGINE, flip: bool = False) -> dict:
    """The `fashiontag predict` command: tag files and folders into CSV or JSON lines (stdout without `out`)."""
    if fmt is None:
        fmt = "jsonl" if out and Path(out).suffix in (".jsonl", ".json") else "csv"
    infer_threads, decode_threads = thread_split()
    tagger = Tagger(model, engine=engine, threads=infer_threads, flip=flip)
    rows = tag_paths(tagger, paths, batch_size, top_k, min_confidence, progress, workers=decode_threads)
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
