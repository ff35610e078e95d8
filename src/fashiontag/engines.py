"""Where logits come from. An engine takes letterboxed uint8 photos (N, H, W, 3) and returns {task: float32 logits}
as numpy arrays; it owns its input conversion, threads and precision, and nothing else.

- torch: the PyTorch model, batch-norm folded, channels-last, bf16 where the CPU or GPU has it. Training,
  evaluation and distillation use it on live models too.
- onnx / onnx-int8: onnxruntime on the model's ONNX export (fp32, or statically quantized int8). They never
  import torch unless the export is missing, stale or damaged and has to be made again.

Nothing here imports training code, and torch is imported only inside the torch engine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fashiontag.model_meta import ModelError, default_cache_dir, model_folder, model_version

if TYPE_CHECKING:
    import torch
    from torch import nn

ENGINES = ("torch", "onnx", "onnx-int8")
# Photos per forward pass: activations stay in cache; larger batches were slower on CPU.
INFER_BATCH = 128
ONNX_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
ONNX_INPUT, ONNX_TOKENS = "image", "tokens"
# The key under which an export records model_version() of the folder it was made from.
ONNX_VERSION_KEY = "fashiontag_weights_sha256"
# Beside each export, its own SHA-256 (`sha256sum` format): onnxruntime loads a file with bytes written over inside
# its weights without a word and computes NaN from them, so an export is trusted only if its bytes are those written.
DIGEST_SUFFIX = ".sha256"


class Engine(Protocol):
    name: str
    tasks: list[str]

    def logits(self, pixels: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: use {', '.join(ENGINES)}")
    return name


def load_engine(model: str | Path | None = None, name: str = "torch", threads: int | None = None,
                bf16: bool | None = None, device: str = "cpu") -> Engine:
    """The engine `name` on a model folder (default: the shipped model)."""
    if check_engine(name) == "torch":
        return TorchEngine.from_folder(model, device=device, bf16=bf16, threads=threads)
    return OnnxEngine.from_folder(model, int8=name == "onnx-int8", threads=threads)


def nchw_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) to the float32 (N, 3, H, W) in [0, 1] that every model and export takes."""
    return pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255


def torch_input(pixels: "torch.Tensor", device: "torch.device", channels_last: bool = True) -> "torch.Tensor":
    """The same conversion on a uint8 tensor, on the device (training batches)."""
    import torch
    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def bf16_supported(device: "torch.device") -> bool:
    import torch
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class TorchEngine:
    """A torch model (live, e.g. during training, or loaded from a folder) behind the engine interface."""

    name = "torch"

    def __init__(self, model: "nn.Module", tasks: list[str], device: str = "cpu", bf16: bool = False,
                 channels_last: bool = True, batch_size: int = INFER_BATCH, threads: int | None = None):
        self.model, self.tasks, self.device = model, list(tasks), device
        self.bf16, self.channels_last, self.batch_size, self.threads = bf16, channels_last, batch_size, threads

    @classmethod
    def from_folder(cls, model: str | Path | None = None, device: str = "cpu", bf16: bool | None = None,
                    threads: int | None = None) -> "TorchEngine":
        """bf16 None: where the device supports it. threads: torch's intra-op threads (default: torch's)."""
        import torch

        from fashiontag.checkpoint import load_model
        net, meta = load_model(model, device=device)
        dev = torch.device(device)
        return cls(fold_batch_norms(net), list(meta["vocabs"]), device,
                   bf16_supported(dev) if bf16 is None else bf16, threads=threads)

    def logits(self, pixels: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return {t: v.numpy() for t, v in self.logits_tensors(pixels, tokens).items()}

    def logits_tensors(self, pixels: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, "torch.Tensor"]:
        """Logits as CPU float tensors, for training code that goes on in torch. tokens: the titles' token rows
        (text.Tokenizer), for a model that takes titles; None: no titles."""
        import torch
        # OpenMP's thread count belongs to the calling thread: a service's inference thread must set its own.
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        device = torch.device(self.device)
        self.model.eval()
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        with torch.no_grad():
            for s in range(0, len(pixels), self.batch_size):
                x = torch_input(torch.from_numpy(np.ascontiguousarray(pixels[s:s + self.batch_size])), device,
                                self.channels_last)
                with torch.autocast(device.type, torch.bfloat16, enabled=self.bf16):
                    if getattr(self.model, "takes_titles", False):
                        ids = None if tokens is None else torch.from_numpy(tokens[s:s + self.batch_size]).to(device)
                        out = self.model(x, ids)
                    else:
                        out = self.model(x)
                for t in self.tasks:
                    chunks[t].append(out[t].float().cpu())
        return {t: torch.cat(v) if v else torch.zeros(0, 0) for t, v in chunks.items()}


def fold_batch_norms(model: "nn.Module") -> "nn.Module":
    """The model, in place, in eval mode and channels-last, each BatchNorm that directly follows a convolution
    folded into it: the same function, a fifth faster on CPU."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            if isinstance(seq[i - 1], nn.Conv2d) and isinstance(seq[i], nn.BatchNorm2d):
                seq[i - 1], seq[i] = fuse_conv_bn_eval(seq[i - 1], seq[i]), nn.Identity()
    return model.to(memory_format=torch.channels_last)


class OnnxEngine:
    """onnxruntime on a model folder's ONNX export."""

    def __init__(self, session, tasks: list[str], name: str = "onnx", batch_size: int = INFER_BATCH):
        self.session, self.tasks, self.name, self.batch_size = session, list(tasks), name, batch_size

    @classmethod
    def from_folder(cls, model: str | Path | None = None, int8: bool = False,
                    threads: int | None = None) -> "OnnxEngine":
        """threads: onnxruntime's intra-op threads for this session (default: every core)."""
        from fashiontag.model_meta import load_meta
        folder = model_folder(model)
        tasks = list(load_meta(folder)["vocabs"])
        session, passed_over = _current_session(folder, int8, threads)
        if session is None:
            home = folder if os.access(folder, os.W_OK) else _spare_dir(folder)
            why = "; ".join(passed_over) or "none made yet"
            try:
                from fashiontag.export import export_onnx  # imports torch: only when no export can be used
                export_onnx(folder, home / ONNX_NAME, quantize=int8)
            except ImportError as e:
                raise ModelError(f"no usable ONNX export of {folder} ({why}), and making one needs torch and onnx, "
                                 f"which cannot be imported here ({e}): run `fashiontag export --model {folder}` "
                                 "where they can, or install them") from None
            except OSError as e:
                raise ModelError(f"no usable ONNX export of {folder} ({why}), and a new one cannot be written to "
                                 f"{home}: {e.strerror or e}") from None
            session, passed_over = _current_session(folder, int8, threads)
            if session is None:
                raise ModelError(f"the ONNX export of {folder} just made cannot be used: {'; '.join(passed_over)}")
        return cls(session, tasks, "onnx-int8" if int8 else "onnx")

    def logits(self, pixels: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
        chunks: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        takes = {i.name: i for i in self.session.get_inputs()}
        for s in range(0, len(pixels), self.batch_size):
            feed = {ONNX_INPUT: nchw_float(pixels[s:s + self.batch_size])}
            if ONNX_TOKENS in takes:  # a row of zeros is "no title"
                feed[ONNX_TOKENS] = (tokens[s:s + self.batch_size] if tokens is not None else
                                     np.zeros((len(feed[ONNX_INPUT]), takes[ONNX_TOKENS].shape[1]), np.int64))
            outputs = self.session.run(self.tasks, feed)
            for t, v in zip(self.tasks, outputs):
                chunks[t].append(v)
        return {t: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for t, v in chunks.items()}


def _spare_dir(folder: Path) -> Path:
    """Where exports of a read-only model folder go."""
    return default_cache_dir() / "onnx" / model_version(folder)[:16]


def onnx_candidates(folder: Path, int8: bool) -> list[Path]:
    name = INT8_NAME if int8 else ONNX_NAME
    return [folder / name, _spare_dir(folder) / name]


def digest_path(export: Path) -> Path:
    """Where an export's SHA-256 is recorded (written by export.py with the export)."""
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


def _current_session(folder: Path, int8: bool, threads: int | None):
    """A session on an intact export made from exactly this folder's weights and model.json, or None; and why
    each export found was passed over."""
    import onnxruntime as ort
    version = model_version(folder)
    passed_over = []
    for path in onnx_candidates(folder, int8):
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
        if session.get_modelmeta().custom_metadata_map.get(ONNX_VERSION_KEY) == version:
            return session, []
        passed_over.append(f"{path} was exported from other weights or another model.json")
    return None, passed_over
