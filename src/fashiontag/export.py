"""ONNX export of a model folder, optionally quantized to int8, for onnxruntime and other ONNX runtimes.

The graph takes what every fashiontag model takes: `image`, float32 (N, 3, 80, 60) with values in [0, 1], the
batch axis dynamic. It returns one output per task, named after the task: the logits, before temperature
scaling (the temperatures, vocabularies and hierarchy stay in model.json). The file records the SHA-256 of the
weights it came from, so a stale export is noticed rather than used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
import warnings
from itertools import islice
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from fashiontag.checkpoint import META, WEIGHTS, load_model, readable_folder

ONNX_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
INPUT_NAME = "image"
OPSET = 18
CALIBRATION_PHOTOS = 256


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 of the folder's weights and model.json: what an export must match to be current."""
    folder = readable_folder(Path(model_dir))
    h = hashlib.sha256()
    for name in (WEIGHTS, META):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def onnx_digest(path: str | Path) -> str | None:
    """The weights digest stamped into an exported file, or None for a file not written by export_onnx."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == "fashiontag_weights_sha256"), None)


class _TupleOutputs(nn.Module):
    """The model with its {task: logits} dict returned as a tuple in task order, one named ONNX output each."""

    def __init__(self, model: nn.Module, tasks: list[str]):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, image):
        out = self.model(image)
        return tuple(out[t] for t in self.tasks)


def export_onnx(model_dir: str | Path, out: str | Path | None = None, quantize: bool = False,
                calibration: Iterable[str | Path] | None = None) -> Path:
    """Write model.onnx (into the model folder unless `out` names the file) and return its path.

    With quantize, also write the int8 model beside it (model.int8.onnx, or <out stem>.int8.onnx) and return that
    path instead: static QDQ quantization, calibrated on `calibration` photos (files or folders), by default
    photos of the catalog the model was trained on.
    """
    import onnx

    folder = readable_folder(Path(model_dir))
    model, meta = load_model(folder)
    tasks = list(meta["vocabs"])
    h, w = meta.get("input_hw", (80, 60))
    dest = Path(out) if out else folder / ONNX_NAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")  # it warns of every optional op library not installed
    level = quiet.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices from inside torch.export
        quiet.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(_TupleOutputs(model, tasks).eval(), (torch.rand(2, 3, h, w),), dynamo=True,
                                        input_names=[INPUT_NAME], output_names=tasks, opset_version=OPSET,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        finally:
            quiet.setLevel(level)
    graph = program.model_proto
    graph.producer_name = "fashiontag"
    graph.doc_string = (f"fashiontag {meta['arch']} {json.dumps(meta.get('arch_args', {}))}: input '{INPUT_NAME}' "
                        f"float32 (N, 3, {h}, {w}) in [0, 1]; outputs: logits per task ({', '.join(tasks)})")
    onnx.helper.set_model_props(graph, {"fashiontag_weights_sha256": weights_digest(folder),
                                        "fashiontag_vocabs": json.dumps(meta["vocabs"])})
    _save_atomically(graph, dest)
    if not quantize:
        return dest
    int8 = dest.with_name(INT8_NAME) if dest.name == ONNX_NAME else dest.with_name(f"{dest.stem}.int8.onnx")
    return quantize_onnx(dest, int8, calibration_photos(meta, calibration, (h, w)))


def current_onnx(model_dir: str | Path, int8: bool = False) -> Path:
    """The folder's ONNX export (int8: the quantized one), exported now if missing or made from other weights:
    into the model folder where it is writable, else into the user cache folder."""
    from fashiontag.cache import default_cache_dir
    folder = readable_folder(Path(model_dir))
    digest = weights_digest(folder)
    name = INT8_NAME if int8 else ONNX_NAME
    spare = default_cache_dir() / "onnx" / digest[:16]
    for candidate in (folder / name, spare / name):
        if candidate.is_file() and onnx_digest(candidate) == digest:
            return candidate
    home = folder if os.access(folder, os.W_OK) else spare
    return export_onnx(folder, home / ONNX_NAME, quantize=int8)


def _save_atomically(graph, dest: Path) -> None:
    """Readers of dest see the old file or the new one, never half of one."""
    import onnx
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        onnx.save(graph, str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def calibration_photos(meta: dict, sources: Iterable[str | Path] | None, hw: tuple[int, int],
                       n: int = CALIBRATION_PHOTOS) -> np.ndarray:
    """Up to n decoded photos, uint8 (N, H, W, 3): from `sources`, else from the model's training catalog."""
    from fashiontag.predict import _load, iter_image_paths
    if sources is None:
        data = meta.get("config", {}).get("data", "")
        if not data or not (Path(data) / "images").is_dir():
            raise FileNotFoundError(f"int8 quantization calibrates on photos, and the model's training catalog "
                                    f"({data or 'not recorded'}) is not here: pass some, as in "
                                    "`fashiontag export --int8 --calibration DIR`")
        sources = [Path(data) / "images"]
    loaded = (_load(p, hw)[0] for p in islice(iter_image_paths(sources), 4 * n))  # a few may be unreadable
    arrays = list(islice((a for a in loaded if a is not None), n))
    if not arrays:
        raise FileNotFoundError("no readable calibration photos")
    return np.stack(arrays)


def quantize_onnx(src: Path, dest: Path, photos: np.ndarray) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on photos; keeps src's metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = photos.transpose(0, 3, 1, 2).astype(np.float32) / 255
            self.batches = iter([{INPUT_NAME: x[s:s + 32]} for s in range(0, len(x), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="fashiontag-int8-") as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        graph = onnx.load(str(quantized))
    source = onnx.load(str(src), load_external_data=False)
    onnx.helper.set_model_props(graph, {p.key: p.value for p in source.metadata_props})
    graph.producer_name, graph.doc_string = source.producer_name, source.doc_string + " (int8, QDQ)"
    _save_atomically(graph, dest)
    return dest
