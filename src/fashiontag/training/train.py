"""Training: one readable loop. Runs alone or under torchrun (DistributedDataParallel: gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from fashiontag import __version__
from fashiontag.data.cache import build_cache
from fashiontag.data.catalog import CatalogSpec
from fashiontag.data.colours import colour_centroids
from fashiontag.data.split import load_split, save_split
from fashiontag.data.taxonomy import MULTI, SINGLE, parse_image_size
from fashiontag.data.text import TitleDropout, Tokenizer, tokenizer_of
from fashiontag.inference.engines import TorchEngine, bf16_supported, torch_input
from fashiontag.inference.tagger import PHOTO_ONLY, Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta, write_meta
from fashiontag.models import TitleFusion, create_model, family_args
from fashiontag.models.checkpoint import (
    flatten_optimizer,
    load_model,
    load_state,
    restore_optimizer,
    save_model,
    save_state,
)
from fashiontag.training.augment import colour_tasks, seller_augment, studio_augment
from fashiontag.training.calibrate import fit_calibration
from fashiontag.training.config import TrainConfig
from fashiontag.training.dataset import TrainingData, load_dataset
from fashiontag.training.runlock import run_lock
from fashiontag.training.temperatures import fit_class_thresholds, fit_title_scales

COMPILE_MIN_STEPS = 2000
CENTROID_PHOTOS = 5000  # training photos the colour classes' centroids are taken from (a few seconds)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def augment(x: torch.Tensor, pixels: np.ndarray, gen: torch.Generator, seller: float
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's augmentation of a batch (see augment.py): `seller` is the share of photos made to look like a
    seller's (0: the studio recipe only); with sellers' photos, also which photos keep true colours."""
    if seller:
        return seller_augment(x, pixels, gen, share=seller)
    return studio_augment(x, gen), None


def task_losses(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor], cfg: TrainConfig,
                class_weights: dict[str, torch.Tensor | None], kinds: dict[str, str]) -> dict[str, torch.Tensor]:
    """Per task, rows whose label is unknown (-1) left out: cross-entropy for single-label tasks, for multi-label
    ones binary cross-entropy summed over the classes."""
    losses = {}
    for t, logits in out.items():
        if kinds[t] == MULTI:
            known = y[t][:, 0] >= 0
            per_row = F.binary_cross_entropy_with_logits(logits.float(), y[t].clamp(min=0).float(),
                                                         reduction="none").sum(1)
            losses[t] = (per_row * known).sum() / known.sum().clamp(min=1)
        else:
            known = (y[t] >= 0).sum().clamp(min=1)
            losses[t] = F.cross_entropy(logits.float(), y[t], weight=class_weights[t], ignore_index=-1,
                                        label_smoothing=cfg.label_smoothing, reduction="sum") / known
    return losses


def soft_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, keep: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Loss against a teacher's probabilities, averaged over the batch (over the rows in `keep` when given):
    cross-entropy for a single-label task, binary cross-entropy per class for a multi-label one."""
    if kind == MULTI:
        per_row = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(1)
    else:
        per_row = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
    if keep is None:
        return per_row.mean()
    return (per_row * keep).sum() / keep.sum().clamp(min=1)


def scores(logits: torch.Tensor, y: torch.Tensor, kind: str) -> tuple[float, int]:
    """(sum, rows) of the per-row score over rows with a known label: 1 for a right class (single-label), the F1 of
    the predicted set at probability 0.5 (multi-label; an empty set rightly predicted empty scores 1)."""
    if kind == MULTI:
        known = y[:, 0] >= 0
        pred, true = (logits[known] > 0), (y[known] > 0)
        both = (pred & true).sum(1).float()
        either = (pred.sum(1) + true.sum(1)).float()
        f1 = torch.where(either > 0, 2 * both / either.clamp(min=1), torch.ones_like(both))
        return float(f1.sum()), int(known.sum())
    known = y >= 0
    return float((logits.argmax(1)[known] == y[known]).sum()), int(known.sum())


def teacher_probabilities(teachers: tuple[str, ...], data: TrainingData, rows: np.ndarray, device: torch.device,
                          bf16: bool, framing: bool, cache_dir: str | None
                          ) -> dict[str, torch.Tensor]:
    """The teachers' calibrated probabilities per task for these catalog rows, averaged over teachers and flips.

    Each teacher sees the photos prepared as it was trained (its own size and framing), so a model trained on
    seller photos with framing can learn from one trained without. A teacher must have the same vocabularies, and
    must not have trained on this run's validation or test photos."""
    held_out = set(data.split["val"]) | set(data.split["test"])
    total: dict[str, torch.Tensor] = {}
    for folder in teachers:
        if load_meta(folder)["vocabs"] != data.vocabs:
            raise ValueError(f"teacher {folder} has other class vocabularies than this run: train it on the same split")
        split_file = Path(folder) / "split.json"
        if split_file.exists() and held_out & set(load_split(split_file)["train"]):
            raise ValueError(f"teacher {folder} trained on photos of this run's validation or test split")
        teacher = Tagger.load(folder, engine="torch", flip=True, bf16=bf16, device=str(device))
        seen_as = teacher.photo_input
        cache = data.cache
        if (seen_as.hw, seen_as.framing) != (data.hw, framing):
            cache = build_cache(data.catalog, cache_dir, hw=seen_as.hw, framing=seen_as.framing, progress=False)
        for t, p in teacher.probabilities(np.ascontiguousarray(cache.pixels[rows])).items():
            p = torch.from_numpy(p) / len(teachers)
            total[t] = total[t] + p if t in total else p
    return total


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def accuracies(logits: dict[str, torch.Tensor], targets: dict[str, np.ndarray], kinds: dict[str, str] | None = None
               ) -> dict[str, float]:
    """Per task, the mean score (see `scores`): accuracy, or sample-F1 for a multi-label task (kinds; default:
    every task single-label)."""
    acc = {}
    for t, lg in logits.items():
        total, n = scores(lg, torch.from_numpy(targets[t]), (kinds or {}).get(t, SINGLE))
        acc[t] = total / n if n else float("nan")
    return acc


def expected_epoch_seconds(model: nn.Module, x: torch.Tensor | None, tokens: torch.Tensor | None, steps: int,
                           device: torch.device, bf16: bool, timed: int = 3) -> float:
    """A training step as the loop takes it (photos, photos and titles, or titles alone for a title expert: x None)
    timed on a copy of the model, times the steps of an epoch. A warm-up step pays for allocations and kernel choices
    first; then the median of `timed` steps, since a busy machine's steps vary by half. A title expert's steps never
    touch a photo, so its title branch alone is timed."""
    with torch.random.fork_rng():  # the run's own random stream stays as it would be without this
        trial = copy.deepcopy(model).train()
        seconds = []
        for _ in range(1 + timed):
            start = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = (trial.title_logits(tokens) if x is None else trial(x) if tokens is None else trial(x, tokens))
            sum(v.float().mean() for v in out.values()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[1:])) * steps


def duration(seconds: float) -> str:
    """12 s, 3.4 min or 2.1 h: a time as a person reads it."""
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def ema_update(decay: float):
    """AveragedModel's multi_avg_fn: an EMA whose decay warms up as (1+n)/(10+n), so early averages are not dragged
    back to the random init; one foreach kernel over all tensors rather than a Python loop over them."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # BatchNorm's step counters: nothing to average
            torch._foreach_copy_(averaged, current)
    return update


def _setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(cfg: TrainConfig, *, resume: bool = False, on_epoch=None) -> Path:
    """Train cfg.model on cfg.data; returns the folder of the best model (cfg.out/best).

    on_epoch(epoch, mean_val_score), if given, is called on rank 0 after each validation; an exception it raises
    (e.g. optuna.TrialPruned) stops training and propagates. A second training on the same folder is refused
    (RunFolderBusy)."""
    # Under torchrun, rank 0 holds the lock for all ranks of its run.
    with run_lock(cfg.out) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():
        return _train(cfg, resume, on_epoch)


def _train(cfg: TrainConfig, resume: bool, on_epoch) -> Path:
    out = Path(cfg.out)
    if resume:
        if not (out / "config.json").exists():
            raise FileNotFoundError(f"nothing to resume in {out}: no config.json")
        cfg = TrainConfig.load(out / "config.json").override(progress=cfg.progress)
    # The family's default arguments filled in: config.json and model.json record what the model is built with.
    cfg = cfg.override(model_args=family_args(cfg.model, cfg.model_args))
    state = load_state(out / "last") if resume else None
    if resume and state is None:
        raise FileNotFoundError(f"nothing to resume in {out}: no resume state in {out / 'last'} (the run stopped "
                                "before saving any); train again without --resume")
    device = pick_device(cfg.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    rank, world = _setup_distributed(device)
    main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.bf16 and bf16_supported(device)
    torch.manual_seed(cfg.seed)

    out.mkdir(parents=True, exist_ok=True)
    split_file = out / "split.json"
    cfg, start_note = starting_point(cfg) if not resume else (cfg, "")
    data = training_data(cfg, cfg.split or split_file, progress=cfg.progress and main)
    if start_note and main:
        tqdm.write(start_note)
    fresh_heads = []
    if cfg.init:
        data, kept = data.with_start_vocabs(load_meta(cfg.init)["vocabs"])
        fresh_heads = [t for t in data.vocabs if t not in kept]
    cfg = cfg.override(model_args=title_args(cfg, data.catalog.titles, resume))
    kinds = data.kinds
    unknown = sorted(set(cfg.task_precision) - set(kinds))
    if unknown:
        raise ValueError(f"config field task_precision: {', '.join(unknown)} is not a task of this run "
                         f"({', '.join(kinds)})")
    if main:
        cfg.save(out / "config.json")
        save_split(data.split, split_file)
        for p in data.catalog.problems[:10]:
            tqdm.write(p)
        tqdm.write(f"{len(data.catalog):,} catalog rows; {data.cache.report()}")
        tqdm.write("train {:,} / val {:,} / test {:,} photos at {}x{} ({}); classes: {}".format(
            *(len(data.rows[s]) for s in ("train", "val", "test")), *data.hw, data.hw_note,
            ", ".join(f"{t} {len(v)}{' (multi-label)' if kinds[t] == MULTI else ''}"
                      for t, v in data.vocabs.items())))
        if data.taxonomy.hierarchy:
            tqdm.write(f"hierarchy, decoded jointly: {' > '.join(data.taxonomy.hierarchy)}")

    train_rows = data.rows["train"]
    if cfg.max_train and len(train_rows) > cfg.max_train:
        train_rows = np.sort(np.random.default_rng(cfg.seed).choice(train_rows, cfg.max_train, replace=False))
    # The training photos live in RAM as uint8 (about 0.5 GB for the full catalog); batches index into it.
    train_pixels = torch.from_numpy(np.ascontiguousarray(data.cache.pixels[train_rows]))
    train_y = {t: torch.from_numpy(v[train_rows]) for t, v in data.targets.items()}
    val_pixels = data.cache.pixels[data.rows["val"]]
    val_y = {t: v[data.rows["val"]] for t, v in data.targets.items()}
    # Photo + title: each training title degraded afresh (dropped, cut, words left out), validation's kept whole.
    tokenizer = tokenizer_of({"arch_args": cfg.model_args})
    titles = np.array(data.catalog.titles, dtype=object)
    degrade = TitleDropout(**cfg.title_dropout)
    val_tokens = tokenizer(list(titles[data.rows["val"]])) if tokenizer else None

    soft = (teacher_probabilities(cfg.teachers, data, train_rows, device, bf16, cfg.framing, cfg.cache_dir or None)
            if cfg.teachers else None)

    heads = {t: len(v) for t, v in data.vocabs.items()}
    raw_model = create_model(cfg.model, heads, data.hw, **cfg.model_args)
    if cfg.init and not resume:
        start_from(raw_model, cfg.init, fresh_heads)
    frozen = photo_part(raw_model) if cfg.freeze_photo else []
    title_expert = bool(frozen) and raw_model.fusion == "late"
    for part in frozen:
        part.requires_grad_(False)
    if cfg.pretrained and not resume:
        if not hasattr(raw_model, "load_pretrained"):
            raise ValueError(f"model {cfg.model!r} has no pretrained weights")
        raw_model.load_pretrained()
    raw_model = raw_model.to(device)
    if cfg.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    ema = AveragedModel(raw_model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True) if cfg.ema else None
    model: nn.Module = raw_model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # The last partial batch is dropped: BatchNorm dislikes tiny ones.
    steps_per_epoch = max(1, len(train_rows) // world // cfg.batch_size)
    if main and not resume:
        x = None if title_expert else torch_input(train_pixels[:cfg.batch_size], device, cfg.channels_last)
        tokens = (torch.from_numpy(tokenizer(list(titles[train_rows[:cfg.batch_size]]))).to(device)
                  if tokenizer else None)
        seconds = expected_epoch_seconds(raw_model, x, tokens, steps_per_epoch, device, bf16)
        tqdm.write(f"expected epoch time: {duration(seconds)} ({steps_per_epoch:,} steps of {cfg.batch_size} "
                   f"{'titles' if title_expert else 'photos'}, timed before compiling)")
    # Compiling costs about 45 s here and saves about 5 s an epoch of the full catalog (benchmarks/speed.py).
    if cfg.compile or (cfg.compile is None and steps_per_epoch * cfg.epochs >= COMPILE_MIN_STEPS):
        torch._dynamo.config.suppress_errors = True  # no C compiler, unsupported op: run eagerly, not fail
        model = torch.compile(model)
    decay, no_decay = [], []
    for p in (p for p in raw_model.parameters() if p.requires_grad):
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "rmsprop":
        opt: torch.optim.Optimizer = torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-7)  # Keras defaults
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use adamw or rmsprop")

    class_weights: dict[str, torch.Tensor | None] = {}
    for t in heads:
        if cfg.class_weighting and kinds[t] == SINGLE:
            counts = torch.from_numpy(data.class_counts(t)).float().clamp(min=1)
            w = counts.rsqrt()
            class_weights[t] = (w / (w * counts).sum() * counts.sum()).to(device)
        else:
            class_weights[t] = None
    loss_w = {t: float(cfg.loss_weights.get(t, 1.0)) for t in heads}

    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)

    epoch, step_in_epoch, best_score, stale, history, partial_epoch = 0, 0, -1.0, 0, [], None
    if state is not None:
        tensors, info = state
        raw_model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
        restore_optimizer(opt, tensors, info["param_groups"])
        aug_gen.set_state(tensors["aug_rng"])
        torch.set_rng_state(tensors["torch_rng"])
        epoch, step_in_epoch, best_score, stale, history = (info["epoch"], info["step_in_epoch"], info["best_score"],
                                                            info["stale"], info["history"])
        partial_epoch = info.get("partial_epoch")
        if main:
            tqdm.write(f"resuming {out} at epoch {epoch + 1}, step {step_in_epoch}")

    def save_resume_state(ep: int, st: int) -> None:
        if not main:
            return
        tensors = {f"model/{k}": v for k, v in raw_model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
        opt_tensors, param_groups = flatten_optimizer(opt)
        tensors.update(opt_tensors)
        tensors["aug_rng"] = aug_gen.get_state()
        tensors["torch_rng"] = torch.get_rng_state()  # dropout draws from it
        # The interrupted epoch's running totals, so that its history entry counts every step.
        partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": time.time() - t0}
        save_state(out / "last", tensors, {"epoch": ep, "step_in_epoch": st, "best_score": best_score,
                                           "stale": stale, "history": history, "param_groups": param_groups,
                                           "partial_epoch": partial})

    interrupted = {"flag": False}

    def on_signal(signum, frame):
        interrupted["flag"] = True

    previous = signal.signal(signal.SIGTERM, on_signal) if main and world == 1 else None
    started = time.time()
    try:
        while epoch < cfg.epochs and stale < cfg.patience:
            perm = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            mine = perm[rank::world][: steps_per_epoch * cfg.batch_size]
            raw_model.train()
            for part in frozen:
                part.eval()  # batch-norm statistics stay as trained
            correct = {t: 0 for t in heads}
            seen = {t: 0 for t in heads}
            loss_sum, last_save, t0 = 0.0, time.time(), time.time()
            if step_in_epoch and partial_epoch:
                loss_sum, correct, seen = partial_epoch["loss_sum"], partial_epoch["correct"], partial_epoch["seen"]
                t0 -= partial_epoch["seconds"]
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=not (cfg.progress and main), dynamic_ncols=True)
            for step in range(step_in_epoch, steps_per_epoch):
                idx = mine[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                # A title expert never looks at the photos: none are prepared for it.
                x = None if title_expert else torch_input(train_pixels[idx], device, cfg.channels_last)
                y = {t: v[idx].to(device) for t, v in train_y.items()}
                colour_ok = None
                if cfg.augment and x is not None:
                    x, colour_ok = augment(x, train_pixels[idx].numpy(), aug_gen,
                                           cfg.seller_share if cfg.seller_augment else 0.0)
                    for t in colour_tasks(y) if colour_ok is not None else ():
                        # Strongly relit: its colour is not the label.
                        ok = colour_ok if y[t].ndim == 1 else colour_ok[:, None]
                        y[t] = torch.where(ok, y[t], torch.full_like(y[t], -1))
                lam, partner = 1.0, None
                if cfg.mixup > 0 and x is not None:
                    lam = float(np.random.default_rng(epoch * 100003 + step).beta(cfg.mixup, cfg.mixup))
                    partner = torch.randperm(len(idx), generator=aug_gen).to(device)
                    x = lam * x + (1 - lam) * x[partner]
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch * steps_per_epoch + step, total_steps, warmup, cfg)
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    if tokenizer is None:
                        logits = model(x)
                    else:
                        rng = np.random.default_rng([cfg.seed, epoch, step])  # the same titles on resume
                        ids = torch.from_numpy(tokenizer(degrade(list(titles[train_rows[idx.numpy()]]), rng)))
                        # The photo model frozen: the title branch learns as a classifier of its own, and
                        # calibration weighs the two (finish_model). Learnt on top of the photo model's logits for
                        # its own training photos, which it is surer of than of any new photo, it came out too shy.
                        logits = (raw_model.title_logits(ids.to(device)) if title_expert
                                  else model(x, ids.to(device)))
                losses = task_losses(logits, y, cfg, class_weights, kinds)
                if partner is not None:
                    other = task_losses(logits, {t: v[partner] for t, v in y.items()}, cfg, class_weights, kinds)
                    losses = {t: lam * losses[t] + (1 - lam) * other[t] for t in losses}
                if soft is not None:
                    target = {t: v[idx].to(device) for t, v in soft.items()}
                    if partner is not None:
                        target = {t: lam * v + (1 - lam) * v[partner] for t, v in target.items()}
                    # A strongly relit photo's colour is not the teacher's either (it saw the photo as shot).
                    keep = {t: colour_ok.float() for t in colour_tasks(y)} if colour_ok is not None else {}
                    losses = {t: (1 - cfg.distill) * losses[t]
                              + cfg.distill * soft_loss(logits[t], target[t], kinds[t], keep.get(t))
                              for t in losses}
                loss = sum(loss_w[t] * losses[t] for t in losses)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update_parameters(raw_model)
                loss_sum += loss.item()
                for t, lg in logits.items():
                    total, n = scores(lg.detach(), y[t], kinds[t])
                    correct[t] += total
                    seen[t] += n
                bar.update(1)
                bar.set_postfix({"loss": f"{loss_sum / (step + 1):.3f}",
                                 **{t[:6]: f"{correct[t] / max(seen[t], 1):.3f}" for t in heads}})
                if interrupted["flag"] or time.time() - last_save > cfg.checkpoint_minutes * 60:
                    save_resume_state(epoch, step + 1)
                    last_save = time.time()
                    if interrupted["flag"]:
                        raise KeyboardInterrupt
            bar.close()
            step_in_epoch = 0
            epoch += 1

            if main:
                eval_model = ema.module if ema is not None else raw_model
                val_logits = TorchEngine(eval_model, list(heads), str(device), bf16,
                                         cfg.channels_last).logits_tensors(val_pixels, val_tokens)
                val_acc = accuracies(val_logits, val_y, kinds)
                score = float(np.nanmean(list(val_acc.values())))
                history.append({"epoch": epoch, "seconds": round(time.time() - t0, 1),
                                "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / max(1, steps_per_epoch),
                                "train_acc": {t: correct[t] / max(seen[t], 1) for t in heads}, "val_acc": val_acc})
                improved = score > best_score
                if improved:
                    best_score, stale = score, 0
                    meta = model_meta(cfg, data, history, val_acc, time.time() - started)
                    save_model(out / "best", eval_model, meta, data.split)
                else:
                    stale += 1
                tqdm.write(f"epoch {epoch}: val " + " ".join(f"{t} {a:.4f}" for t, a in val_acc.items())
                           + f" | mean {score:.4f}{' (best, saved)' if improved else ''} | {time.time() - t0:.0f}s")
                if on_epoch is not None:
                    on_epoch(epoch, score)
            if world > 1:
                flag = torch.tensor([stale], dtype=torch.int64)
                dist.broadcast(flag, 0)
                stale = int(flag)
            save_resume_state(epoch, 0)
    except KeyboardInterrupt:
        # Ctrl-C stops mid-step: what resumes is the last state saved (each epoch, each checkpoint_minutes, SIGTERM).
        if main and (out / "last").exists():
            tqdm.write(f"interrupted: continue from the state last saved in {out / 'last'} with "
                       f"`fashiontag train --resume --out {out}`")
        elif main:
            tqdm.write("interrupted before any resume state was saved: train again without --resume")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    if main:
        finish_model(out / "best", data, device, bf16, cfg.channels_last, time.time() - started, history)
    if world > 1:
        dist.barrier()
    return out / "best"


def training_data(cfg: TrainConfig, split_path: str | Path | None, progress: bool) -> TrainingData:
    """The catalog of cfg as training sees it: columns, tasks, hierarchy, photo size, split (from split_path when
    it exists, else made) and vocabularies."""
    spec = CatalogSpec(cfg.data, cfg.id_column, cfg.image_column, cfg.title_column, cfg.label_separator)
    hw = parse_image_size(cfg.image_size) if cfg.image_size else None
    # Started from a model, training takes its input size: a trunk's layers depend on the size (rescnn pools
    # larger inputs after its stem), so its weights fit no other. A fine-tuning (a model folder named, not the
    # shipped model as a shop's starting point) also takes its tasks unless told otherwise.
    start = load_meta(cfg.init) if cfg.init else {}
    start_tasks = tuple(start.get("vocabs", ())) if cfg.start != "shipped" else ()
    if start and hw and list(hw) != start["input_hw"]:
        raise ValueError(f"image size {cfg.image_size} differs from {cfg.init}'s input, "
                         f"{'x'.join(map(str, start['input_hw']))}: drop --image-size to start from it, or start "
                         "from scratch (--from scratch)")
    return load_dataset(spec, cfg.tasks or start_tasks, cfg.protocol, split_path=split_path,
                        min_count=cfg.min_count, seed=cfg.seed, cache_dir=cfg.cache_dir or None, progress=progress,
                        framing=cfg.framing, hw=hw or (tuple(start["input_hw"]) if start else None),
                        hierarchy=cfg.hierarchy, extra=cfg.extra)


def starting_point(cfg: TrainConfig) -> tuple[TrainConfig, str]:
    """cfg with where training starts settled (init, pretrained), from cfg.start when no init is given, and a line
    saying where and why.

    auto: the shipped model's trunk (and title encoder) for a shop's own catalog, where its 32,000 fashion
    products are worth most; random weights for the Kaggle layout, the catalog it was trained on, whose new split
    would put photos it learnt from on the new run's validation and test sides. A start model that does not fit
    the requested family and input size is an error when asked for by name, a note under auto."""
    if cfg.init or cfg.start == "scratch":
        return cfg, ""
    if cfg.start == "imagenet":
        if cfg.model != "efficientnet-lite0":
            raise ValueError("--from imagenet starts from EfficientNet-Lite0's ImageNet weights: add --model "
                             "efficientnet-lite0")
        return cfg.override(pretrained=True), "starting from EfficientNet-Lite0's ImageNet weights"
    shipped = load_meta(DEFAULT_MODEL_DIR)
    trunk = {k: v for k, v in shipped["arch_args"].items() if k != "title"}
    unfit = None
    own = {k: v for k, v in cfg.model_args.items() if k != "title"}
    if cfg.model != shipped["arch"] or own != trunk:
        unfit = f"it is a {shipped['arch']} {trunk}, this run a {cfg.model} {own}"
    elif cfg.image_size and list(parse_image_size(cfg.image_size)) != shipped["input_hw"]:
        unfit = f"it takes {'x'.join(map(str, shipped['input_hw']))} photos, this run {cfg.image_size}"
    if cfg.start == "shipped":
        if unfit:
            raise ValueError(f"--from shipped: the shipped model's trunk does not fit this model ({unfit}); drop "
                             "--model / model_args, or use --from scratch")
    elif unfit or (Path(cfg.data) / "styles.csv").is_file():
        why = unfit or "this is the Kaggle layout the shipped model was trained on (--from shipped to start from it)"
        return cfg, f"starting from random weights, not the shipped model: {why}"
    return cfg.override(init=str(DEFAULT_MODEL_DIR), start="shipped"), (
        f"starting from the shipped model ({DEFAULT_MODEL_DIR}) at its input size, "
        f"{'x'.join(map(str, shipped['input_hw']))}: its trunk (and title encoder, for a catalog with titles), with "
        "this catalog's own heads where its tasks or classes differ (--from scratch: random weights)")


def title_args(cfg: TrainConfig, titles: list[str], resume: bool) -> dict:
    """cfg.model_args with the title branch settled. Started from a photo + title model (init), a run whose
    model_args name no title branch takes the start model's when the catalog has titles: fine-tuning keeps the
    model photo + title. The tokenizer's settings are written out in full: the model folder must reproduce its ids."""
    args = dict(cfg.model_args)
    start = load_meta(cfg.init)["arch_args"].get("title") if cfg.init and not resume else None
    if start is not None and "title" not in args:
        if any(titles):
            args["title"] = start
        else:
            tqdm.write(f"{cfg.init} reads titles too, but this catalog has none (--title-column): its title branch "
                       "is left out")
    if "title" in args:
        args["title"] = {**args["title"], "tokenizer": Tokenizer(**args["title"].get("tokenizer", {})).config()}
    return args


def photo_part(model: nn.Module) -> list[nn.Module]:
    """What freeze_photo keeps still: a photo + title model's photo part."""
    if not isinstance(model, TitleFusion):
        raise ValueError("freeze_photo is for photo + title models: add a \"title\" entry to model_args")
    return model.photo_part()


def start_from(model: nn.Module, folder: str, fresh_heads: list[str] = ()) -> None:
    """Copy a model folder's weights into `model` wherever name and shape agree (fine-tuning, or a larger model
    grown from a smaller one), except the heads of `fresh_heads` (tasks whose classes are not the start model's:
    a head of the same size would still mean other classes); an architecture that shares almost nothing with it is
    an error."""
    from safetensors.torch import load_file

    from fashiontag.model_folder import WEIGHTS, model_folder
    source = load_file(str(model_folder(folder) / WEIGHTS))
    own = model.state_dict()
    own_classes = tuple(f"heads.{t}." for t in fresh_heads)
    taken = {k: v for k, v in source.items()
             if k in own and own[k].shape == v.shape and not any(h in k for h in own_classes)}
    if len(taken) < len(own) / 2:
        raise ValueError(f"{folder}: only {len(taken)} of this model's {len(own)} tensors match its weights; "
                         "start from a model of the same family and size")
    model.load_state_dict(taken, strict=False)
    fresh = len(own) - len(taken)
    tqdm.write(f"started from {folder}: {len(taken)} of {len(source)} tensors of the start model"
               + (f"; {fresh} of this model's {len(own)} start afresh" if fresh else ""))


def model_meta(cfg: TrainConfig, data: TrainingData, history: list, val_acc: dict, seconds: float) -> dict:
    return {"fashiontag_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "arch": cfg.model, "arch_args": cfg.model_args, "input_hw": list(data.hw),
            "preprocess": {"framing": cfg.framing}, "catalog": data.spec.columns(), "task_kinds": data.kinds,
            "vocabs": data.vocabs, "hierarchy": data.hierarchy(), "config": json.loads(json.dumps(cfg.__dict__)),
            "val_acc": val_acc, "history": history, "train_seconds": round(seconds, 1),
            "temperatures": {t: 1.0 for t in data.vocabs}}


def finish_model(folder: Path, data: TrainingData, device: torch.device, bf16: bool, channels_last: bool,
                 seconds: float, history: list) -> None:
    """Calibrate the best model on the validation split and record the full history: the title part's weight per
    task (late fusion), a decision threshold per class of a multi-label task, then temperatures and auto-accept
    thresholds per input condition (refit.fit_calibration, as `fashiontag calibrate` fits them)."""
    model, meta = load_model(folder, device=str(device))
    rows = data.rows["val"]
    engine = TorchEngine(model, list(data.vocabs), str(device), bf16, channels_last)
    tokenizer = tokenizer_of(meta)
    pixels = np.asarray(data.cache.pixels[rows])
    titles = [data.catalog.titles[i] for i in rows]
    tokens = tokenizer(titles) if tokenizer else None
    logits = engine.logits_tensors(pixels, tokens)
    targets = {t: v[rows] for t, v in data.targets.items()}
    if isinstance(model, TitleFusion) and model.fusion == "late":
        photo = engine.logits_tensors(pixels)
        scales = fit_title_scales(photo, {t: logits[t] - photo[t] for t in logits}, targets)
        model.scale_titles(scales)
        logits = {t: photo[t] + scales[t] * (logits[t] - photo[t]) for t in logits}
        meta["title_scales"] = scales
        tqdm.write("title weights: " + ", ".join(f"{t} x{s:.2f}" for t, s in scales.items()))
    class_thresholds = {t: fit_class_thresholds(logits[t].float().sigmoid().numpy(), targets[t])
                        for t in logits if data.kinds[t] == MULTI}
    meta.update(history=history, train_seconds=round(seconds, 1), class_thresholds=class_thresholds,
                colour_centroids=colour_class_centroids(data))
    save_model(folder, model, meta, data.split)
    meta.update(fit_calibration(Tagger.load(folder), pixels, titles, targets, meta["config"]))
    write_meta(folder, meta)
    ece = meta["calibration_val"]
    tqdm.write("calibrated: " + ", ".join(
        [f"{t} T={meta['temperatures'][t]:.2f} ECE {_ece(ece[t]['before'])}->{_ece(ece[t]['after'])}" for t in ece]
        + [f"{t} class thresholds {min(v):.2f}-{max(v):.2f}" for t, v in class_thresholds.items()]))
    for condition, record in (("", meta), (" (photo alone)", meta.get(PHOTO_ONLY))):
        if record:
            tqdm.write(f"auto-accept{condition}: " + ", ".join(
                f"{t} {c['coverage']:.0%} at >= {c['threshold']:.3f}" for t, c in record["thresholds_val"].items()))


def colour_class_centroids(data: TrainingData, photos: int = CENTROID_PHOTOS) -> dict[str, dict[str, list[float]]]:
    """Per single-label colour task, each class's Lab centroid (colours.py) from up to `photos` training photos:
    what the dominant colours shown beside the colour tag are named after."""
    rows = data.rows["train"][:: max(1, len(data.rows["train"]) // photos)]
    out = {}
    for t in colour_tasks(data.vocabs):
        if data.kinds[t] == SINGLE:
            y = data.targets[t][rows]
            labels = [data.vocabs[t][i] if i >= 0 else "" for i in y]
            out[t] = {c: [round(float(v), 2) for v in lab]
                      for c, lab in colour_centroids(np.asarray(data.cache.pixels[rows]), labels).items()}
    return out


def _ece(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
