"""Model folders (model.safetensors + model.json) and training resume state; never pickle, written atomically.

A folder is written beside its destination under a temporary name and swapped in with renames, so a crash
leaves either the old folder or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fashiontag.model_folder import INPUT_HW, META, VOCABS_KEY, WEIGHTS, ModelError, ModelFolder, readable_folder
from fashiontag.models import create_model


def write_folder_atomically(dest: Path, files: dict[str, bytes | dict[str, torch.Tensor]],
                            metadata: dict[str, str] | None = None) -> None:
    """files: name -> bytes, or a tensor dict saved as safetensors (with `metadata` in its header)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file({k: v.detach().cpu().contiguous() for k, v in content.items()}, str(tmp / name), metadata)
        else:
            (tmp / name).write_bytes(content)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def save_model(dest: str | Path, model: nn.Module, meta: dict, split: dict | None = None) -> None:
    files: dict = {WEIGHTS: model.state_dict(), META: json.dumps(meta, indent=1).encode()}
    if split is not None:
        files["split.json"] = json.dumps(split).encode()
    write_folder_atomically(Path(dest), files, {VOCABS_KEY: json.dumps(meta["vocabs"])})


def load_model(path: str | Path | ModelFolder | None = None, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from its folder (default: the shipped one): the architecture from model.json, weights
    from safetensors, after model.json has been checked against them (ModelFolder.open)."""
    folder = ModelFolder.open(path)
    path, meta = folder.path, folder.record
    heads = {t: len(classes) for t, classes in meta["vocabs"].items()}
    model = create_model(meta["arch"], heads, meta.get("input_hw", INPUT_HW), **meta.get("arch_args", {}))
    try:
        weights = load_file(str(path / WEIGHTS), device=device)
    except SafetensorError as e:  # damage that the header check (model_meta.weight_header) cannot see
        raise ModelError(f"{path / WEIGHTS}: damaged, cannot be loaded ({e})") from None
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def save_state(dest: str | Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    write_folder_atomically(Path(dest), {"state.safetensors": tensors, "state.json": json.dumps(info).encode()})


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    path = readable_folder(Path(path))
    if not (path / "state.json").is_file():
        return None
    return load_file(str(path / "state.safetensors")), json.loads((path / "state.json").read_text())


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"opt/{i}/{k}": (v if torch.is_tensor(v) else torch.tensor(v))
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt/"):
            _, i, k = key.split("/", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": param_groups})
