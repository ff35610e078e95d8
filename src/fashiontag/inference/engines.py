"""Where logits come from. An engine takes letterboxed uint8 photos (N, H, W, 3) and returns {task: float32 logits}
as numpy arrays; it owns its input conversion, threads and precision, and nothing else.

- torch: the PyTorch model, batch-norm folded, channels-last, bf16 where the CPU or GPU has it. Training,
  evaluation and distillation use it on live models too.
- onnx / onnx-int8: onnxruntime on the model's ONNX export (fp32, or statically quantized int8). They never
  import torch unless the export is missing, stale or damaged and has to be made again (onnx_export).

Nothing here imports training code, and torch is imported only inside the torch engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fashiontag.data.photos import nchw_float
from fashiontag.inference.onnx_export import ONNX_INPUT, ONNX_TOKENS, onnx_session
from fashiontag.model_folder import ModelFolder

if TYPE_CHECKING:
    import torch
    from torch import nn

ENGINES = ("torch", "onnx", "onnx-int8")
# Photos per forward pass: activations stay in cache; larger batches were slower on CPU.
INFER_BATCH = 128

class Engine(Protocol):
    name: str
    tasks: list[str]

    def logits(self, pixels: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: use {', '.join(ENGINES)}")
    return name


def load_engine(model: ModelFolder | str | Path | None = None, name: str = "torch", threads: int | None = None,
                bf16: bool | None = None, device: str = "cpu") -> Engine:
    """The engine `name` on a model folder (default: the shipped model). An ONNX engine's export is made first
    where the folder has none that is usable (onnx_export.onnx_session)."""
    if check_engine(name) == "torch":
        return TorchEngine.from_folder(model, device=device, bf16=bf16, threads=threads)
    return OnnxEngine.from_folder(model, int8=name == "onnx-int8", threads=threads)


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
    def from_folder(cls, model: ModelFolder | str | Path | None = None, device: str = "cpu",
                    bf16: bool | None = None, threads: int | None = None) -> "TorchEngine":
        """bf16 None: where the device supports it. threads: torch's intra-op threads (default: torch's)."""
        import torch

        from fashiontag.models.checkpoint import load_model
        folder = ModelFolder.open(model)
        net = load_model(folder, device=device)[0]
        dev = torch.device(device)
        return cls(fold_batch_norms(net), folder.tasks, device,
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
    def from_folder(cls, model: ModelFolder | str | Path | None = None, int8: bool = False,
                    threads: int | None = None) -> "OnnxEngine":
        """threads: onnxruntime's intra-op threads for this session (default: every core). The folder's export is
        made first where none is usable (onnx_export.onnx_session)."""
        folder = ModelFolder.open(model)
        return cls(onnx_session(folder, int8, threads), folder.tasks, "onnx-int8" if int8 else "onnx")

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
