"""ONNX export of a model folder, optionally quantized to int8, for onnxruntime and other ONNX runtimes.

The graph takes what every fashiontag model takes: `image`, float32 (N, 3, H, W) at the model's input size with values in [0, 1], the
batch axis dynamic. It returns one output per task, named after the task: the logits, before temperature
scaling (the temperatures, vocabularies and hierarchy stay in model.json). The file records the model version
(model_folder.model_version) it came from, and its own SHA-256 is written beside it (model.onnx.sha256), so the onnx
engines notice a stale or damaged export rather than use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from itertools import islice
from pathlib import Path
from typing import Iterable

import numpy as np

from fashiontag.atomic import replacing, write_text
from fashiontag.data.photos import PhotoInput, iter_image_paths, load_or_error, nchw_float
from fashiontag.model_folder import INPUT_HW, ModelError, ModelFolder, default_cache_dir

ONNX_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
ONNX_INPUT, ONNX_TOKENS = "image", "tokens"
# The key under which an export records model_version() of the folder it was made from.
ONNX_VERSION_KEY = "fashiontag_weights_sha256"
# Beside each export, its own SHA-256 (`sha256sum` format): onnxruntime loads a file with bytes written over inside
# its weights without a word and computes NaN from them, so an export is trusted only if its bytes are those written.
DIGEST_SUFFIX = ".sha256"
OPSET = 18
CALIBRATION_PHOTOS = 256


def export_onnx(model_dir: str | Path | ModelFolder, *, out: str | Path | None = None, quantize: bool = False,
                calibration: Iterable[str | Path] | None = None) -> Path:
    """Write model.onnx (into the model folder unless `out` names the file) and return its path.

    With quantize, also write the int8 model beside it (model.int8.onnx, or <out stem>.int8.onnx) and return that
    path instead: static QDQ quantization, calibrated on `calibration` photos (files or folders), by default
    photos of the catalog the model was trained on.
    """
    import onnx
    import torch

    from fashiontag.models.checkpoint import load_model

    opened = ModelFolder.open(model_dir)
    folder = opened.path
    model, meta = load_model(opened)
    tasks = list(meta["vocabs"])
    h, w = meta.get("input_hw", INPUT_HW)
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
            program = torch.onnx.export(_tuple_outputs(model, tasks).eval(), inputs, dynamo=True,
                                        input_names=names, output_names=tasks, opset_version=OPSET,
                                        dynamic_shapes=dims, verbose=False)
        finally:
            quiet.setLevel(level)
    graph = program.model_proto
    graph.producer_name = "fashiontag"
    graph.doc_string = (f"fashiontag {meta['arch']} {json.dumps(meta.get('arch_args', {}))}: input '{ONNX_INPUT}' "
                        f"float32 (N, 3, {h}, {w}) in [0, 1]; outputs: logits per task ({', '.join(tasks)})")
    onnx.helper.set_model_props(graph, {ONNX_VERSION_KEY: opened.version,
                                        "fashiontag_vocabs": json.dumps(meta["vocabs"])})
    _save_atomically(graph, dest)
    if not quantize:
        return dest
    int8 = dest.with_name(INT8_NAME) if dest.name == ONNX_NAME else dest.with_name(f"{dest.stem}.int8.onnx")
    return quantize_onnx(dest, int8, calibration_photos(meta, calibration))


def _save_atomically(graph, dest: Path) -> None:
    """Readers of dest see the old file or the new one, never half of one; its SHA-256 goes beside it
    (digest_path). Between the two renames a reader sees a digest that does not match, and exports again."""
    import onnx
    with replacing(dest) as tmp:
        onnx.save(graph, str(tmp))
        digest = file_sha256(tmp)
    write_text(digest_path(dest), f"{digest}  {dest.name}\n")


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
    loaded = (load_or_error(p, photo_input)[0] for p in islice(iter_image_paths(sources), 4 * n))  # a few may be unreadable
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


def _tuple_outputs(model, tasks: list[str]):
    """The model with its {task: logits} dict returned as a tuple in task order, one named ONNX output each."""
    from torch import nn

    class TupleOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image, tokens=None):
            out = self.model(image) if tokens is None else self.model(image, tokens)
            return tuple(out[t] for t in tasks)

    return TupleOutputs()


def onnx_session(model: ModelFolder, int8: bool = False, threads: int | None = None):
    """An onnxruntime session on an intact export of exactly this folder's weights and model.json, made first (in
    the folder, or in the cache for a read-only one) when none is usable. Making one imports torch; without it, a
    ModelError says what to run."""
    folder = model.path
    session, passed_over = _current_session(model, int8, threads)
    if session is not None:
        return session
    home = folder if os.access(folder, os.W_OK) else _spare_dir(model.version)
    why = "; ".join(passed_over) or "none made yet"
    try:
        export_onnx(model, out=home / ONNX_NAME, quantize=int8)
    except ImportError as e:
        raise ModelError(f"no usable ONNX export of {folder} ({why}), and making one needs torch and onnx, "
                         f"which cannot be imported here ({e}): run `fashiontag export --model {folder}` "
                         "where they can, or install them") from None
    except OSError as e:
        raise ModelError(f"no usable ONNX export of {folder} ({why}), and a new one cannot be written to "
                         f"{home}: {e.strerror or e}") from None
    session, passed_over = _current_session(model, int8, threads)
    if session is None:
        raise ModelError(f"the ONNX export of {folder} just made cannot be used: {'; '.join(passed_over)}")
    return session


def _spare_dir(version: str) -> Path:
    """Where exports of a read-only model folder go."""
    return default_cache_dir() / "onnx" / version[:16]


def onnx_candidates(model: ModelFolder, int8: bool) -> list[Path]:
    name = INT8_NAME if int8 else ONNX_NAME
    return [model.path / name, _spare_dir(model.version) / name]


def digest_path(export: Path) -> Path:
    """Where an export's SHA-256 is recorded (written with the export)."""
    return export.with_name(export.name + DIGEST_SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def export_damage(path: Path) -> str | None:
    """Why the export at path is not the file its export wrote, or None when it is."""
    record = digest_path(path)
    try:
        recorded = record.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return f"{path} has no readable {record.name} (its SHA-256, recorded by `fashiontag export`)"
    if file_sha256(path) != recorded:
        return f"{path} is damaged: its SHA-256 is not the one recorded in {record.name} at export"
    return None


def _current_session(model: ModelFolder, int8: bool, threads: int | None):
    """A session on an intact export made from exactly this folder's weights and model.json, or None; and why
    each export found was passed over."""
    import onnxruntime as ort
    passed_over = []
    for path in onnx_candidates(model, int8):
        if not path.is_file():
            continue
        damage = export_damage(path)
        if damage:
            passed_over.append(damage)
            continue
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        # Waiting threads sleep rather than spin, leaving the cores to the threads decoding the next photos.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a foreign file is just not current: it gets re-exported
            passed_over.append(f"{path} cannot be loaded ({type(e).__name__})")
            continue
        if session.get_modelmeta().custom_metadata_map.get(ONNX_VERSION_KEY) == model.version:
            return session, []
        passed_over.append(f"{path} was exported from other weights or another model.json")
    return None, passed_over
