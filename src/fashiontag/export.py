"""ONNX export of a model folder, optionally quantized to int8, for onnxruntime and other ONNX runtimes.

The graph takes what every fashiontag model takes: `image`, float32 (N, 3, 80, 60) with values in [0, 1], the
batch axis dynamic. It returns one output per task, named after the task: the logits, before temperature
scaling (the temperatures, vocabularies and hierarchy stay in model.json). The file records the model version
(model_meta.model_version) it came from, and its own SHA-256 is written beside it (model.onnx.sha256), so the onnx
engines notice a stale or damaged export rather than use it.
"""

from __future__ import annotations

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

from fashiontag.checkpoint import load_model
from fashiontag.engines import (INT8_NAME, ONNX_INPUT, ONNX_NAME, ONNX_TOKENS, ONNX_VERSION_KEY, digest_path,
                                file_sha256, nchw_float)
from fashiontag.images import PhotoInput
from fashiontag.model_meta import model_folder, model_version
from fashiontag.predict import _load, iter_image_paths

OPSET = 18
CALIBRATION_PHOTOS = 256


class _TupleOutputs(nn.Module):
    """The model with its {task: logits} dict returned as a tuple in task order, one named ONNX output each."""

    def __init__(self, model: nn.Module, tasks: list[str]):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, image, tokens=None):
        out = self.model(image) if tokens is None else self.model(image, tokens)
        return tuple(out[t] for t in self.tasks)


def export_onnx(model_dir: str | Path, out: str | Path | None = None, quantize: bool = False,
                calibration: Iterable[str | Path] | None = None) -> Path:
    """Write model.onnx (into the model folder unless `out` names the file) and return its path.

    With quantize, also write the int8 model beside it (model.int8.onnx, or <out stem>.int8.onnx) and return that
    path instead: static QDQ quantization, calibrated on `calibration` photos (files or folders), by default
    photos of the catalog the model was trained on.
    """
    import onnx

    folder = model_folder(model_dir)
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
        batch = torch.export.Dim("batch")
        inputs, names, dims = (torch.rand(2, 3, h, w),), [ONNX_INPUT], ({0: batch},)
        if getattr(model, "takes_titles", False):  # token rows beside the photos; a row of zeros is "no title"
            max_len = meta["arch_args"]["title"]["tokenizer"]["max_len"]
            inputs, names, dims = inputs + (torch.randint(0, 2, (2, max_len)),), names + [ONNX_TOKENS], dims + (
                {0: batch},)
        try:
            program = torch.onnx.export(_TupleOutputs(model, tasks).eval(), inputs, dynamo=True,
                                        input_names=names, output_names=tasks, opset_version=OPSET,
                                        dynamic_shapes=dims, verbose=False)
        finally:
            quiet.setLevel(level)
    graph = program.model_proto
    graph.producer_name = "fashiontag"
    graph.doc_string = (f"fashiontag {meta['arch']} {json.dumps(meta.get('arch_args', {}))}: input '{ONNX_INPUT}' "
                        f"float32 (N, 3, {h}, {w}) in [0, 1]; outputs: logits per task ({', '.join(tasks)})")
    onnx.helper.set_model_props(graph, {ONNX_VERSION_KEY: model_version(folder),
                                        "fashiontag_vocabs": json.dumps(meta["vocabs"])})
    _save_atomically(graph, dest)
    if not quantize:
        return dest
    int8 = dest.with_name(INT8_NAME) if dest.name == ONNX_NAME else dest.with_name(f"{dest.stem}.int8.onnx")
    return quantize_onnx(dest, int8, calibration_photos(meta, calibration))


def _save_atomically(graph, dest: Path) -> None:
    """Readers of dest see the old file or the new one, never half of one; its SHA-256 goes beside it
    (engines.digest_path). Between the two renames a reader sees a digest that does not match, and exports again."""
    import onnx
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    digest, tmp_digest = digest_path(dest), digest_path(tmp)
    try:
        onnx.save(graph, str(tmp))
        tmp_digest.write_text(f"{file_sha256(tmp)}  {dest.name}\n")
        os.replace(tmp, dest)
        os.replace(tmp_digest, digest)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)


def calibration_photos(meta: dict, sources: Iterable[str | Path] | None, n: int = CALIBRATION_PHOTOS) -> np.ndarray:
    """Up to n decoded photos, uint8 (N, H, W, 3): from `sources`, else from the model's training catalog."""
    if sources is None:
        data = meta.get("config", {}).get("data", "")
        root = Path(data) if Path(data).is_dir() else Path(data).parent  # a Kaggle folder, or a catalog file's
        if not data or not root.is_dir():
            raise FileNotFoundError(f"int8 quantization calibrates on photos, and the model's training catalog "
                                    f"({data or 'not recorded'}) is not here: pass some, as in "
                                    "`fashiontag export --int8 --calibration DIR`")
        sources = [root / "images" if (root / "images").is_dir() else root]
    photo_input = PhotoInput.of(meta)
    loaded = (_load(p, photo_input)[0] for p in islice(iter_image_paths(sources), 4 * n))  # a few may be unreadable
    arrays = list(islice((a for a in loaded if a is not None), n))
    if not arrays:
        raise FileNotFoundError("no readable calibration photos")
    return np.stack(arrays)


def quantize_onnx(src: Path, dest: Path, photos: np.ndarray) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on photos; keeps src's metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    token_input = [i for i in onnx.load(str(src), load_external_data=False).graph.input if i.name == ONNX_TOKENS]

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = nchw_float(photos)
            feeds = [{ONNX_INPUT: x[s:s + 32]} for s in range(0, len(x), 32)]
            for feed in feeds if token_input else ():  # calibrated on photos alone: the text branch is a look-up
                feed[ONNX_TOKENS] = np.zeros((len(feed[ONNX_INPUT]),
                                              token_input[0].type.tensor_type.shape.dim[1].dim_value), np.int64)
            self.batches = iter(feeds)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="fashiontag-int8-") as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        # reduce_range (7-bit weights) because of the CPU, not the model: on x86 without VNNI (AVX2, e.g. AMD EPYC
        # Zen 3) onnxruntime's u8 x s8 kernels sum pairs of products in int16 (vpmaddubsw), which saturates past
        # 32767: 255*127*2 does, 255*64*2 does not. Per-channel scales put each channel's largest weight at +-127,
        # so with 8-bit weights the int8 model agreed with fp32 on only 46-83% of photos per task there, while the
        # same file simulated in float (graph optimizations off) agreed on 98-100%. 7-bit weights agree on 98-100%
        # and keep the fast u8s8 kernels (u8 weights avoid the overflow too, but ran 30% slower). An export can run
        # on any CPU, so it must not rely on the exporting one having VNNI.
        quantize_static(str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        graph = onnx.load(str(quantized))
    source = onnx.load(str(src), load_external_data=False)
    onnx.helper.set_model_props(graph, {p.key: p.value for p in source.metadata_props})
    graph.producer_name, graph.doc_string = source.producer_name, source.doc_string + " (int8, QDQ)"
    _save_atomically(graph, dest)
    return dest
