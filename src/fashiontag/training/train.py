"""Training: one readable loop. Runs alone or under torchrun (DistributedDataParallel: gloo on CPU, nccl on GPU).

`_train` reads top to bottom: the run's config and data, its photos, the model, the optimizer, the batch loss, the
resume state, then the epochs (each one `train_epoch`, then `validate` on rank 0), then calibration
(`finish_model`). The pieces follow in that order."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
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
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR, PHOTO_ONLY, framing_of, load_meta, write_meta
from fashiontag.models import KnownHeads, TitleFusion, create_model, family_args
from fashiontag.models.checkpoint import (
    flatten_optimizer,
    load_model,
    load_state,
    restore_optimizer,
    save_model,
    save_state,
)
from fashiontag.training.augment import colour_tasks, seller_augment, studio_augment
from fashiontag.training.calibrate import fit_calibration, weigh_fusion
from fashiontag.training.config import TrainConfig
from fashiontag.training.dataset import TrainingData, load_dataset
from fashiontag.training.logistic import fit_logistic
from fashiontag.training.runlock import run_lock
from fashiontag.training.taxonomy_map import map_lines, taxonomy_map
from fashiontag.training.temperatures import fit_class_thresholds
from fashiontag.training.title_linear import add_title_linear

COMPILE_MIN_STEPS = 2000
MIN_COUNT, MIN_COUNT_TRANSFER = 10, 3
FREEZE_BELOW = 2000
# The known maps' fit (fit_known_maps): L2 on their weights, so that classes the known heads separate perfectly on
# a few training photos get finite weights. 1e-2 had the best validation mean of 1e-3, 1e-2 and 1e-1 on the shop of
# benchmarks/few_shot.py (docs/results.md).
MAP_L2 = 1e-2
CENTROID_PHOTOS = 5000  # training photos the colour classes' centroids are taken from (a few seconds)


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
    cfg, state = run_config(cfg, out, resume)
    device, rank, world = start_process(cfg)
    bf16 = cfg.bf16 and bf16_supported(device)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cfg, data, fresh_heads = run_data(cfg, out, resume, main=rank == 0)
    run = Run(cfg, out, device, bf16, rank, world)

    photos, val = split_photos(run, data)
    # Distillation: the teachers' probabilities for each training photo, computed once (a teacher that sees photos
    # otherwise caches them in the user cache dir, as training_data does).
    soft = (teacher_probabilities(cfg.teachers, data, photos.rows, device, bf16, cfg.framing, None)
            if cfg.teachers else None)
    net = build_model(run, data, resume, fresh_heads)
    if run.main and not resume:
        report_epoch_time(run, net, photos)
    net.model = compiled(net.model, cfg, photos.steps_per_epoch)
    opt, lr_of_step = build_optimizer(cfg, net.raw, photos.steps_per_epoch)
    batch_loss = BatchLoss.of(cfg, data, device, soft)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    progress = restore_resume_state(run, state, net, opt, aug_gen) if state is not None else Progress()

    stop = StopRequest()
    previous = signal.signal(signal.SIGTERM, stop) if run.main and world == 1 else None
    started = time.time()
    try:
        while progress.epoch < cfg.epochs and progress.stale < cfg.patience:
            totals = train_epoch(run, net, opt, lr_of_step, batch_loss, photos, progress, aug_gen, stop)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            if run.main:
                score = validate(run, net, data, val, progress, totals, opt.param_groups[0]["lr"], started)
                if on_epoch is not None:
                    on_epoch(progress.epoch, score)
            if world > 1:
                progress.stale = from_rank0(progress.stale)  # early stopping is decided where validation runs
            save_resume_state(run, net, opt, aug_gen, progress, totals, step=0)
    except KeyboardInterrupt:
        if run.main:
            say_how_to_resume(out)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    if run.main:
        finish_model(out / "best", data, device, bf16, cfg.channels_last, time.time() - started, progress.history)
    if world > 1:
        dist.barrier()
    return out / "best"


# ---- The run: its config, process and data ----

@dataclass(frozen=True)
class Run:
    """What every part of a run reads: its settled config, its folder, this process's device, whether bf16
    autocast is on, and its rank among `world` processes (torchrun; 0 of 1 alone)."""
    cfg: TrainConfig
    out: Path
    device: torch.device
    bf16: bool
    rank: int
    world: int

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, validates and writes the run folder."""
        return self.rank == 0


def run_config(cfg: TrainConfig, out: Path, resume: bool) -> tuple[TrainConfig, tuple | None]:
    """The config the run trains with and, resuming, its resume state (checkpoint.load_state of last/). A resumed
    run takes the config.json it saved (only this call's `progress` kept)."""
    if resume:
        if not (out / "config.json").exists():
            raise FileNotFoundError(f"nothing to resume in {out}: no config.json")
        cfg = TrainConfig.load(out / "config.json").override(progress=cfg.progress)
    # The family's default arguments filled in: config.json and model.json record what the model is built with.
    # "known" (known_args) wraps the family rather than being one of its arguments: kept as it is.
    known = {"known": cfg.model_args["known"]} if "known" in cfg.model_args else {}
    args = family_args(cfg.model, {k: v for k, v in cfg.model_args.items() if k != "known"})
    cfg = cfg.override(model_args={**args, **known})
    state = load_state(out / "last") if resume else None
    if resume and state is None:
        raise FileNotFoundError(f"nothing to resume in {out}: no resume state in {out / 'last'} (the run stopped "
                                "before saving any); train again without --resume")
    return cfg, state


def start_process(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """This process's device, rank and world size: under torchrun it joins the process group, on its LOCAL_RANK's
    GPU; cfg.threads set torch's thread count."""
    # The GPU when there is one, else the CPU (CUDA_VISIBLE_DEVICES= keeps a run on the CPU). A config field
    # `device` once chose; nothing ever set it but to "auto", so it went (config.DROPPED).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), world) if world > 1 else (0, 1)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device, rank, world


def run_data(cfg: TrainConfig, out: Path, resume: bool, main: bool) -> tuple[TrainConfig, TrainingData, list[str]]:
    """The run's catalog as training sees it, its config with where it starts (starting_point) and its title branch
    (title_args) settled, and the tasks whose heads start afresh (a start model that knows other classes). Rank 0
    writes config.json and split.json and says what it trains on."""
    cfg, start_note = starting_point(cfg) if not resume else (cfg, "")
    if cfg.min_count is None:
        cfg, count_note = min_count_for(cfg)
        start_note = "\n".join(filter(None, [start_note, count_note]))
    cfg = cfg.override(framing=framing_for(cfg))
    data = training_data(cfg, cfg.split or out / "split.json", progress=cfg.progress and main)
    if start_note and main:
        tqdm.write(start_note)
    fresh_heads = []
    if cfg.init:
        data, kept = data.with_start_vocabs(load_meta(cfg.init)["vocabs"])
        fresh_heads = [t for t in data.vocabs if t not in kept]
    cfg = cfg.override(model_args=title_args(cfg, data.catalog.titles, resume))
    cfg = cfg.override(model_args=known_args(cfg, data, fresh_heads, resume, main))
    if cfg.freeze_trunk is None:
        cfg = cfg.override(freeze_trunk=freeze_for(cfg, len(data.rows["train"]), main))
    unknown = sorted(set(cfg.task_precision) - set(data.kinds))
    if unknown:
        raise ValueError(f"config field task_precision: {', '.join(unknown)} is not a task of this run "
                         f"({', '.join(data.kinds)})")
    if main:
        cfg.save(out / "config.json")
        save_split(data.split, out / "split.json")
        describe(data)
    return cfg, data, fresh_heads


def describe(data: TrainingData) -> None:
    """The catalog's first problems, its size, the split and the classes, as the run starts."""
    kinds = data.kinds
    for p in data.catalog.problems[:10]:
        tqdm.write(p)
    tqdm.write(f"{len(data.catalog):,} catalog rows; {data.cache.report()}")
    tqdm.write("train {:,} / val {:,} / test {:,} photos at {}x{} ({}); classes: {}".format(
        *(len(data.rows[s]) for s in ("train", "val", "test")), *data.hw, data.hw_note,
        ", ".join(f"{t} {len(v)}{' (multi-label)' if kinds[t] == MULTI else ''}"
                  for t, v in data.vocabs.items())))
    if data.taxonomy.hierarchy:
        tqdm.write(f"hierarchy, decoded jointly: {' > '.join(data.taxonomy.hierarchy)}")


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
    # cache_dir None: the user cache dir (FASHIONTAG_CACHE moves it). A config field `cache_dir` once chose another;
    # nothing ever set it, so it went (config.DROPPED).
    return load_dataset(spec, cfg.tasks or start_tasks, cfg.protocol, split_path=split_path,
                        min_count=cfg.min_count, seed=cfg.seed, cache_dir=None, progress=progress,
                        framing=framing_for(cfg), hw=hw or (tuple(start["input_hw"]) if start else None),
                        hierarchy=cfg.hierarchy, extra=cfg.extra)


def framing_for(cfg: TrainConfig) -> bool | float:
    """cfg.framing; if None, the start model's: a fine-tuned model, or a shop's from the shipped one, sees photos as
    its start did (a model from random weights: whole)."""
    if cfg.framing is not None:
        return cfg.framing
    return framing_of(load_meta(cfg.init)) if cfg.init else False


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


def min_count_for(cfg: TrainConfig) -> tuple[TrainConfig, str]:
    """cfg with min_count settled from where the run starts, and a line saying why. From random weights a class
    needs MIN_COUNT training photos to be learnt. A shop started from the shipped model keeps a class with
    MIN_COUNT_TRANSFER: the known heads and the trunk already tell most of its classes apart (a renaming is learnt
    from a few products), and the pooled Other names no real class (benchmarks/few_shot.py). Fine-tuning a model
    takes that model's min_count, so the catalog's classes stay the ones its heads know."""
    if not cfg.init:
        return cfg.override(min_count=MIN_COUNT), ""
    if cfg.start != "shipped" or (Path(cfg.data) / "styles.csv").is_file():
        return cfg.override(min_count=load_meta(cfg.init).get("config", {}).get("min_count") or MIN_COUNT), ""
    return cfg.override(min_count=MIN_COUNT_TRANSFER), (
        f"min_count {MIN_COUNT_TRANSFER}: from the shipped model a shop's class with {MIN_COUNT_TRANSFER} training "
        f"photos is kept, not pooled into Other (from random weights {MIN_COUNT}; --set min_count=N)")


def freeze_for(cfg: TrainConfig, photos: int, main: bool) -> bool:
    """Whether the trunk and title encoder stay as the start model has them (freeze_trunk), from the catalog's
    size: a shop started from the shipped model with its known heads and fewer than FREEZE_BELOW training photos
    trains its heads and maps only. Fine-tuned on so few photos the trunk drifts from the features the known heads
    were trained on: on 900 products (benchmarks/few_shot.py) frozen, photo + title, was right more often on
    every task the shipped model knows (category 92.5 -> 94.4, colour 84.0 -> 85.1) and trained faster."""
    freeze = cfg.start == "shipped" and "known" in cfg.model_args and photos < FREEZE_BELOW
    if freeze and main:
        tqdm.write(f"trunk and title encoder frozen: {photos:,} training photos, under {FREEZE_BELOW:,}, learn the "
                   "heads and the known heads' maps (--set freeze_trunk=false: the whole network)")
    return freeze


def title_args(cfg: TrainConfig, titles: list[str], resume: bool) -> dict:
    """cfg.model_args with the title branch settled. Started from a photo + title model (init), a run whose
    model_args name no title branch takes the start model's when the catalog has titles: fine-tuning keeps the
    model photo + title. The tokenizer's settings are written out in full: the model folder must reproduce its ids."""
    args = dict(cfg.model_args)
    start = load_meta(cfg.init)["arch_args"].get("title") if cfg.init and not resume else None
    if start is not None and "title" not in args:
        if any(titles):
            args["title"] = start  # with its linear title part, if any: fitted again at the end (finish_model)
        else:
            tqdm.write(f"{cfg.init} reads titles too, but this catalog has none (--title-column): its title branch "
                       "is left out")
    if "title" in args:
        args["title"] = {**args["title"], "tokenizer": Tokenizer(**args["title"].get("tokenizer", {})).config()}
    return args


def known_args(cfg: TrainConfig, data: TrainingData, fresh_heads: list[str], resume: bool, main: bool) -> dict:
    """cfg.model_args with the known heads settled (models/known_heads.py). Started from a model (init) whose
    tasks or classes are not the catalog's (fresh_heads), the start model's own heads come along, frozen, and the
    new heads read their calibrated outputs (cfg.known_heads; a shop's columns are mostly renamings and merges of
    what it tags): each single-label head those of the known task its taxonomy map on the training photos names.
    Fine-tuning a model that has known heads keeps them: its weights need the same shape."""
    args = dict(cfg.model_args)
    if resume or not cfg.init or "known" in args:
        return args
    start = load_meta(cfg.init)
    if not fresh_heads:
        if "known" in start["arch_args"]:
            args["known"] = start["arch_args"]["known"]
        return args
    why_not = ("known_heads is off" if not cfg.known_heads else
               "freeze_photo trains the title branch alone" if cfg.freeze_photo else
               "the start model has known heads of its own" if "known" in start["arch_args"] else "")
    if why_not:
        if main and cfg.known_heads:
            tqdm.write(f"no known heads: {why_not}")
        return args
    start_title, title = start["arch_args"].get("title"), args.get("title")
    args["known"] = {"tasks": {t: len(v) for t, v in start["vocabs"].items()},
                     "temperatures": start["temperatures"],
                     "photo_temperatures": start.get(PHOTO_ONLY, {}).get("temperatures", start["temperatures"]),
                     # The start model's title heads read this model's title encoder: both late fusion, the
                     # encoder started from the start model's (title_args).
                     "title": bool(start_title and title and start_title.get("fusion", "late") == "late"
                                   and title.get("fusion", "late") == "late"),
                     "linear": bool(start_title and start_title.get("linear")),
                     "length_slopes": (start_title or {}).get("length_slopes"),
                     "reads": {t: [m["known_task"]] for t, m in start_model_map(cfg.init, data).items()}}
    if args.get("title"):
        # The start model's linear title part and length slopes come along in the known heads; this model's own
        # parts get neither: their weights are fitted with the fusion weights, which known heads do not have.
        args["title"] = {k: v for k, v in args["title"].items() if k not in ("linear", "length_slopes")}
    if main:
        tqdm.write(f"known heads: {cfg.init}'s own {', '.join(start['vocabs'])}, frozen, feed this catalog's heads, "
                   "each " + ", ".join(f"{t} {k[0]}'s" for t, k in args["known"]["reads"].items())
                   + " (--set known_heads=false: without)")
    return args


# ---- The photos ----

@dataclass
class TrainPhotos:
    """The training photos that batches are drawn from, in RAM as uint8 (about 0.5 GB for the full catalog), with
    their labels and, for a photo + title model, their titles (each degraded afresh at each step: dropped, cut,
    words left out)."""
    rows: np.ndarray                 # their catalog rows (at most cfg.max_train)
    pixels: torch.Tensor
    y: dict[str, torch.Tensor]       # per task, the labels (-1: unknown)
    kinds: dict[str, str]            # per task, single- or multi-label
    titles: np.ndarray               # every catalog row's title
    tokenizer: Tokenizer | None      # None: a photo model
    degrade: TitleDropout
    steps_per_epoch: int             # this rank's steps; the last partial batch is dropped (BatchNorm dislikes tiny ones)

    def title_ids(self, idx: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The token ids of these photos' titles, degraded as rng draws."""
        return torch.from_numpy(self.tokenizer(self.degrade(list(self.titles[self.rows[idx.numpy()]]), rng)))


@dataclass
class ValPhotos:
    """The validation photos, labels and (photo + title) whole titles' token ids."""
    pixels: np.ndarray
    y: dict[str, np.ndarray]
    tokens: np.ndarray | None


def split_photos(run: Run, data: TrainingData) -> tuple[TrainPhotos, ValPhotos]:
    """The training photos (cfg.max_train of them at most, drawn with cfg.seed) and the validation photos."""
    cfg = run.cfg
    rows = data.rows["train"]
    if cfg.max_train and len(rows) > cfg.max_train:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.max_train, replace=False))
    tokenizer = tokenizer_of({"arch_args": cfg.model_args})
    titles = np.array(data.catalog.titles, dtype=object)
    photos = TrainPhotos(rows, torch.from_numpy(np.ascontiguousarray(data.cache.pixels[rows])),
                         {t: torch.from_numpy(v[rows]) for t, v in data.targets.items()}, data.kinds, titles,
                         tokenizer, TitleDropout(**cfg.title_dropout),
                         max(1, len(rows) // run.world // cfg.batch_size))
    val_rows = data.rows["val"]
    val = ValPhotos(data.cache.pixels[val_rows], {t: v[val_rows] for t, v in data.targets.items()},
                    tokenizer(list(titles[val_rows])) if tokenizer else None)
    return photos, val


def teacher_probabilities(teachers: tuple[str, ...], data: TrainingData, rows: np.ndarray, device: torch.device,
                          bf16: bool, framing: bool | float, cache_dir: str | None
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


# ---- The model ----

@dataclass
class Net:
    """The model as the loop uses it: `raw` holds the weights, `model` is what a step calls (raw, wrapped for DDP,
    maybe compiled), `ema` the weights' average (validated and saved instead, when on), `frozen` the parts that
    stay still (freeze_photo, freeze_trunk) and `title_expert` whether its steps read titles alone (photo part
    frozen, late fusion)."""
    raw: nn.Module
    model: nn.Module
    ema: AveragedModel | None
    frozen: list[nn.Module]
    title_expert: bool

    def train_mode(self) -> None:
        self.raw.train()
        for part in self.frozen:
            part.eval()  # batch-norm statistics stay as trained

    @property
    def evaluated(self) -> nn.Module:
        """What validation scores and best/ saves."""
        return self.ema.module if self.ema is not None else self.raw


def build_model(run: Run, data: TrainingData, resume: bool, fresh_heads: list[str]) -> Net:
    """cfg.model with a head per task, started as the config says (init, pretrained; a resumed run's weights come
    from its resume state instead), on the run's device."""
    cfg, device = run.cfg, run.device
    raw = create_model(cfg.model, {t: len(v) for t, v in data.vocabs.items()}, data.hw, **cfg.model_args)
    if cfg.photo_loss and (not isinstance(raw, TitleFusion) or cfg.freeze_photo):
        raise ValueError("photo_loss trains a photo + title model's photo part on the photo alone: it needs a "
                         "\"title\" entry in model_args (or a photo + title init) and freeze_photo off")
    if cfg.init and not resume and start_from(raw, cfg.init, fresh_heads):
        fit_known_maps(raw, data, cfg)  # on the CPU: the model is not on the run's device yet
    frozen = photo_part(raw) if cfg.freeze_photo else trunk_part(raw) if cfg.freeze_trunk else []
    title_expert = cfg.freeze_photo and raw.fusion == "late"
    for part in frozen:
        part.requires_grad_(False)
    if cfg.pretrained and not resume:
        if not hasattr(raw, "load_pretrained"):
            raise ValueError(f"model {cfg.model!r} has no pretrained weights")
        raw.load_pretrained()
    raw = raw.to(device)
    if cfg.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    ema = AveragedModel(raw, multi_avg_fn=ema_update(cfg.ema), use_buffers=True) if cfg.ema else None
    model: nn.Module = raw
    if run.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Net(raw, model, ema, frozen, title_expert)


def photo_part(model: nn.Module) -> list[nn.Module]:
    """What freeze_photo keeps still: a photo + title model's photo part."""
    if not isinstance(model, TitleFusion):
        raise ValueError("freeze_photo is for photo + title models: add a \"title\" entry to model_args")
    return model.photo_part()


def trunk_part(model: nn.Module) -> list[nn.Module]:
    """What freeze_trunk keeps still: the photo trunk and, photo + title, the title encoder (KnownHeads: its inner
    model's), so the features the heads and the known heads read stay the start model's."""
    inner = model.inner if isinstance(model, KnownHeads) else model
    return [inner.trunk] + ([inner.text] if isinstance(inner, TitleFusion) else [])


def start_from(model: nn.Module, folder: str, fresh_heads: list[str] = ()) -> bool:
    """Copy a model folder's weights into `model` wherever name and shape agree (fine-tuning, or a larger model
    grown from a smaller one), except the heads of `fresh_heads` (tasks whose classes are not the start model's:
    a head of the same size would still mean other classes); an architecture that shares almost nothing with it is
    an error. Returns whether the start model's heads became `model`'s known heads (their maps still to fit)."""
    from safetensors.torch import load_file

    from fashiontag.model_folder import WEIGHTS, model_folder
    source = load_file(str(model_folder(folder) / WEIGHTS))
    # A plain start model into a model with known heads: the wrapped model takes its weights by name, then its heads
    # become the known heads (once the trunk is known to fit: they read its features).
    takes_known = isinstance(model, KnownHeads) and not any(k.startswith("inner.") for k in source)
    target = model.inner if takes_known else model
    own = target.state_dict()
    own_classes = tuple(f"heads.{t}." for t in fresh_heads)
    taken = {k: v for k, v in source.items()
             if k in own and own[k].shape == v.shape and not any(h in k for h in own_classes)}
    if len(taken) < len(own) / 2:
        raise ValueError(f"{folder}: only {len(taken)} of this model's {len(own)} tensors match its weights; "
                         "start from a model of the same family and size")
    target.load_state_dict(taken, strict=False)
    known = model.load_known(source) if takes_known else 0
    fresh = len(own) - len(taken)
    tqdm.write(f"started from {folder}: {len(taken)} of {len(source)} tensors of the start model"
               + (f"; {fresh} of this model's {len(own)} start afresh" if fresh else "")
               + (f"; its {known} head tensors as frozen known heads" if known else ""))
    return bool(known)


def fit_known_maps(model: KnownHeads, data: TrainingData, cfg: TrainConfig, steps: int = 100, batch: int = 256
                   ) -> None:
    """Each task's map from the known log-probabilities fitted before training, on the training photos as the start
    model sees them (a logistic regression, L-BFGS): started at zero, the map moves a few hundredths per optimizer
    step and a shop's few hundred steps leave it short of what the known heads say."""
    rows = data.rows["train"]
    tokenizer = tokenizer_of({"arch_args": cfg.model_args})
    parts = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            part = rows[s:s + batch]
            x = torch_input(torch.from_numpy(np.ascontiguousarray(data.cache.pixels[part])), torch.device("cpu"),
                            False)
            tokens = (torch.from_numpy(tokenizer([data.catalog.titles[i] for i in part])) if tokenizer else None)
            parts.append(model.known_log_probabilities(model.inner.trunk(x), tokens))
    known = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    for t, layer in model.maps.items():
        weight, _ = fit_logistic(model.map_input(known, t), torch.from_numpy(data.targets[t][rows]), data.kinds[t],
                                 layer.weight.shape[0], MAP_L2, steps, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
    tqdm.write(f"known heads' maps fitted on {len(rows):,} training photos")


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


def report_epoch_time(run: Run, net: Net, photos: TrainPhotos) -> None:
    """Say how long an epoch will take, timed on the first batch (before compiling)."""
    cfg = run.cfg
    x = None if net.title_expert else torch_input(photos.pixels[:cfg.batch_size], run.device, cfg.channels_last)
    tokens = (torch.from_numpy(photos.tokenizer(list(photos.titles[photos.rows[:cfg.batch_size]]))).to(run.device)
              if photos.tokenizer else None)
    seconds = expected_epoch_seconds(net.raw, x, tokens, photos.steps_per_epoch, run.device, run.bf16)
    tqdm.write(f"expected epoch time: {duration(seconds)} ({photos.steps_per_epoch:,} steps of {cfg.batch_size} "
               f"{'titles' if net.title_expert else 'photos'}, timed before compiling)")


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


def compiled(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> nn.Module:
    """The model torch.compiled where cfg.compile says so (None: where it pays, runs of COMPILE_MIN_STEPS steps or
    more). Compiling costs about 45 s here and saves about 5 s an epoch of the full catalog (benchmarks/speed.py)."""
    if cfg.compile or (cfg.compile is None and steps_per_epoch * cfg.epochs >= COMPILE_MIN_STEPS):
        torch._dynamo.config.suppress_errors = True  # no C compiler, unsupported op: run eagerly, not fail
        return torch.compile(model)
    return model


# ---- The optimizer and its schedule ----

def build_optimizer(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
    """The optimizer over the parameters that learn (weight decay on weights, none on biases and norms' scales),
    and the learning rate of each step of the run (lr_at: warm-up, then the schedule), which the trunk and title
    encoder take times cfg.trunk_lr (each group's lr_scale; at 1 they share the rest's groups, as resume states
    saved before trunk_lr have them)."""
    trunk = {id(p) for part in trunk_part(model) for p in part.parameters()} if cfg.trunk_lr != 1 else set()
    groups = []
    for scale, params in ((1.0, [p for p in model.parameters() if id(p) not in trunk]),
                          (cfg.trunk_lr, [p for p in model.parameters() if id(p) in trunk])):
        params = [p for p in params if p.requires_grad]
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "rmsprop":
        opt: torch.optim.Optimizer = torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-7)  # Keras defaults
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use adamw or rmsprop")
    total, warmup = steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch)
    return opt, lambda step: lr_at(step, total, warmup, cfg)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- A batch and its loss ----

@dataclass
class Batch:
    """A training batch as the model sees it and the loss scores it."""
    idx: torch.Tensor                     # positions among the training photos (TrainPhotos.rows)
    x: torch.Tensor | None                # the photos, augmented and mixed; None for a title expert
    y: dict[str, torch.Tensor]            # per task, the labels (-1: unknown, a relit photo's colour included)
    colour_ok: torch.Tensor | None = None  # with seller photos: which photos keep their true colours
    lam: float = 1.0                      # mixup: each photo's share; its partner's is 1 - lam
    partner: torch.Tensor | None = None   # mixup: the photo each is mixed with; None: no mixup


def make_batch(run: Run, net: Net, photos: TrainPhotos, idx: torch.Tensor, aug_gen: torch.Generator, epoch: int,
               step: int) -> Batch:
    """The batch of these training photos: moved to the device, augmented (cfg.augment, cfg.seller_augment) and
    mixed (cfg.mixup). A title expert never looks at the photos: none are prepared for it."""
    cfg = run.cfg
    x = None if net.title_expert else torch_input(photos.pixels[idx], run.device, cfg.channels_last)
    batch = Batch(idx, x, {t: v[idx].to(run.device) for t, v in photos.y.items()})
    if cfg.augment and x is not None:
        batch.x, batch.colour_ok = augment(x, photos.pixels[idx].numpy(), aug_gen,
                                           cfg.seller_share if cfg.seller_augment else 0.0)
        batch.y = relit_colours_unknown(batch.y, batch.colour_ok)
    if cfg.mixup > 0 and x is not None:
        batch.lam = float(np.random.default_rng(epoch * 100003 + step).beta(cfg.mixup, cfg.mixup))
        batch.partner = torch.randperm(len(idx), generator=aug_gen).to(run.device)
        batch.x = batch.lam * batch.x + (1 - batch.lam) * batch.x[batch.partner]
    return batch


def augment(x: torch.Tensor, pixels: np.ndarray, gen: torch.Generator, seller: float
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's augmentation of a batch (see augment.py): `seller` is the share of photos made to look like a
    seller's (0: the studio recipe only); with sellers' photos, also which photos keep true colours."""
    if seller:
        return seller_augment(x, pixels, gen, share=seller)
    return studio_augment(x, gen), None


def relit_colours_unknown(y: dict[str, torch.Tensor], colour_ok: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The labels with a strongly relit photo's colour tasks unknown (-1): its colour is not the label."""
    for t in colour_tasks(y) if colour_ok is not None else ():
        ok = colour_ok if y[t].ndim == 1 else colour_ok[:, None]
        y[t] = torch.where(ok, y[t], torch.full_like(y[t], -1))
    return y


def forward(run: Run, net: Net, photos: TrainPhotos, batch: Batch, epoch: int, step: int
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The model's logits per task for the batch: from the photos, the photos and their (degraded) titles, or for a
    title expert the titles alone; with cfg.photo_loss also the photo part's alone (else None)."""
    with torch.autocast(run.device.type, torch.bfloat16, enabled=run.bf16):
        if photos.tokenizer is None:
            return net.model(batch.x), None
        ids = photos.title_ids(batch.idx, np.random.default_rng([run.cfg.seed, epoch, step])).to(run.device)
        # The photo model frozen: the title branch learns as a classifier of its own, and calibration weighs the
        # two (finish_model). Learnt on top of the photo model's logits for its own training photos, which it is
        # surer of than of any new photo, it came out too shy.
        if net.title_expert:
            return net.raw.title_logits(ids), None
        if run.cfg.photo_loss:
            return net.model(batch.x, ids, photo_alone=True)
        return net.model(batch.x, ids), None


@dataclass
class BatchLoss:
    """The loss of a batch: per task (task_losses; class_weights when cfg.class_weighting), with mixup against both
    photos' labels, with teachers (soft: their probabilities per training photo) partly against theirs
    (cfg.distill), then summed over tasks weighted by cfg.loss_weights."""
    cfg: TrainConfig
    kinds: dict[str, str]
    class_weights: dict[str, torch.Tensor | None]
    task_weights: dict[str, float]
    soft: dict[str, torch.Tensor] | None
    device: torch.device

    @classmethod
    def of(cls, cfg: TrainConfig, data: TrainingData, device: torch.device,
           soft: dict[str, torch.Tensor] | None) -> BatchLoss:
        class_weights: dict[str, torch.Tensor | None] = {}
        for t in data.vocabs:
            if cfg.class_weighting and data.kinds[t] == SINGLE:  # rare classes weigh more, by 1/sqrt(frequency)
                counts = torch.from_numpy(data.class_counts(t)).float().clamp(min=1)
                w = counts.rsqrt()
                class_weights[t] = (w / (w * counts).sum() * counts.sum()).to(device)
            else:
                class_weights[t] = None
        task_weights = {t: float(cfg.loss_weights.get(t, 1.0)) for t in data.vocabs}
        return cls(cfg, data.kinds, class_weights, task_weights, soft, device)

    def __call__(self, logits: dict[str, torch.Tensor], batch: Batch, teachers: bool = True) -> torch.Tensor:
        """The batch's loss; teachers False: against the labels only."""
        losses = self.labels(logits, batch.y)
        if batch.partner is not None:
            other = self.labels(logits, {t: v[batch.partner] for t, v in batch.y.items()})
            losses = {t: batch.lam * losses[t] + (1 - batch.lam) * other[t] for t in losses}
        if self.soft is not None and teachers:
            losses = self.distilled(losses, logits, batch)
        return sum(self.task_weights[t] * losses[t] for t in losses)

    def labels(self, logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return task_losses(logits, y, self.cfg, self.class_weights, self.kinds)

    def distilled(self, losses: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], batch: Batch
                  ) -> dict[str, torch.Tensor]:
        """Each task's loss mixed with the loss against the teachers' probabilities (mixed as the photos were)."""
        target = {t: v[batch.idx].to(self.device) for t, v in self.soft.items()}
        if batch.partner is not None:
            target = {t: batch.lam * v + (1 - batch.lam) * v[batch.partner] for t, v in target.items()}
        # A strongly relit photo's colour is not the teacher's either (it saw the photo as shot).
        keep = {t: batch.colour_ok.float() for t in colour_tasks(batch.y)} if batch.colour_ok is not None else {}
        share = self.cfg.distill
        return {t: (1 - share) * losses[t] + share * soft_loss(logits[t], target[t], self.kinds[t], keep.get(t))
                for t in losses}


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


# ---- One epoch ----

@dataclass
class EpochTotals:
    """An epoch's running totals: the loss summed over its steps, per task the scores summed and the rows scored,
    when it started (a resumed epoch counts its time before the interruption), and its steps."""
    loss_sum: float
    correct: dict[str, float]
    seen: dict[str, int]
    t0: float
    steps: int

    @classmethod
    def start(cls, tasks: list[str], steps: int, partial: dict | None = None) -> EpochTotals:
        """New totals, or those of an epoch stopped part-way (its resume state's partial_epoch)."""
        if partial:
            return cls(partial["loss_sum"], partial["correct"], partial["seen"], time.time() - partial["seconds"],
                       steps)
        return cls(0.0, {t: 0 for t in tasks}, {t: 0 for t in tasks}, time.time(), steps)

    def add(self, loss: float, logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor], kinds: dict[str, str]
            ) -> None:
        self.loss_sum += loss
        for t, lg in logits.items():
            total, n = scores(lg.detach(), y[t], kinds[t])
            self.correct[t] += total
            self.seen[t] += n

    def train_acc(self) -> dict[str, float]:
        return {t: self.correct[t] / max(self.seen[t], 1) for t in self.correct}

    def partial(self) -> dict:
        """What the resume state keeps, so that the interrupted epoch's history entry counts every step."""
        return {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen, "seconds": time.time() - self.t0}


def train_epoch(run: Run, net: Net, opt: torch.optim.Optimizer, lr_of_step: Callable[[int], float],
                batch_loss: BatchLoss, photos: TrainPhotos, progress: Progress, aug_gen: torch.Generator,
                stop: StopRequest) -> EpochTotals:
    """One epoch of this rank's share of the training photos, from progress.step_in_epoch (a resumed run's step):
    resume state saved every cfg.checkpoint_minutes, and on SIGTERM, which then stops the run as Ctrl-C would."""
    cfg, epoch, steps = run.cfg, progress.epoch, photos.steps_per_epoch
    perm = torch.randperm(len(photos.rows), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
    mine = perm[run.rank::run.world][: steps * cfg.batch_size]
    net.train_mode()
    totals = EpochTotals.start(list(photos.kinds), steps, progress.partial_epoch if progress.step_in_epoch else None)
    last_save = time.time()
    bar = tqdm(total=steps, initial=progress.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (cfg.progress and run.main), dynamic_ncols=True)
    for step in range(progress.step_in_epoch, steps):
        batch = make_batch(run, net, photos, mine[step * cfg.batch_size:(step + 1) * cfg.batch_size], aug_gen,
                           epoch, step)
        for g in opt.param_groups:
            g["lr"] = lr_of_step(epoch * steps + step) * g.get("lr_scale", 1.0)
        logits, alone = forward(run, net, photos, batch, epoch, step)
        if alone is None:
            loss = batch_loss(logits, batch)
        else:  # the teachers are photo models: they teach the photo part, not what the title adds to it
            loss = batch_loss(logits, batch, teachers=False) + cfg.photo_loss * batch_loss(alone, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if net.ema is not None:
            net.ema.update_parameters(net.raw)
        totals.add(loss.item(), logits, batch.y, photos.kinds)
        bar.update(1)
        bar.set_postfix({"loss": f"{totals.loss_sum / (step + 1):.3f}",
                         **{t[:6]: f"{a:.3f}" for t, a in totals.train_acc().items()}})
        if stop.requested or time.time() - last_save > cfg.checkpoint_minutes * 60:
            save_resume_state(run, net, opt, aug_gen, progress, totals, step=step + 1)
            last_save = time.time()
            if stop.requested:
                raise KeyboardInterrupt
    bar.close()
    return totals


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


# ---- Validation ----

def validate(run: Run, net: Net, data: TrainingData, val: ValPhotos, progress: Progress, totals: EpochTotals,
             lr: float, started: float) -> float:
    """After an epoch (rank 0): score the model on the validation photos, add the epoch to the history, save the
    model to best/ when its mean score is the best yet (else count a stale epoch), say so; returns the mean."""
    cfg, out = run.cfg, run.out
    val_logits = TorchEngine(net.evaluated, list(data.vocabs), str(run.device), run.bf16,
                             cfg.channels_last).logits_tensors(val.pixels, val.tokens)
    val_acc = accuracies(val_logits, val.y, data.kinds)
    score = float(np.nanmean(list(val_acc.values())))
    progress.history.append({"epoch": progress.epoch, "seconds": round(time.time() - totals.t0, 1), "lr": lr,
                             "train_loss": totals.loss_sum / max(1, totals.steps),
                             "train_acc": totals.train_acc(), "val_acc": val_acc})
    improved = score > progress.best_score
    if improved:
        progress.best_score, progress.stale = score, 0
        meta = model_meta(cfg, data, progress.history, val_acc, time.time() - started)
        save_model(out / "best", net.evaluated, meta, data.split)
    else:
        progress.stale += 1
    tqdm.write(f"epoch {progress.epoch}: val " + " ".join(f"{t} {a:.4f}" for t, a in val_acc.items())
               + f" | mean {score:.4f}{' (best, saved)' if improved else ''} | {time.time() - totals.t0:.0f}s")
    return score


def accuracies(logits: dict[str, torch.Tensor], targets: dict[str, np.ndarray], kinds: dict[str, str] | None = None
               ) -> dict[str, float]:
    """Per task, the mean score (see `scores`): accuracy, or sample-F1 for a multi-label task (kinds; default:
    every task single-label)."""
    acc = {}
    for t, lg in logits.items():
        total, n = scores(lg, torch.from_numpy(targets[t]), (kinds or {}).get(t, SINGLE))
        acc[t] = total / n if n else float("nan")
    return acc


def model_meta(cfg: TrainConfig, data: TrainingData, history: list, val_acc: dict, seconds: float) -> dict:
    return {"fashiontag_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "arch": cfg.model, "arch_args": cfg.model_args, "input_hw": list(data.hw),
            "preprocess": {"framing": cfg.framing}, "catalog": data.spec.columns(), "task_kinds": data.kinds,
            "vocabs": data.vocabs, "hierarchy": data.hierarchy(), "config": json.loads(json.dumps(cfg.__dict__)),
            "val_acc": val_acc, "history": history, "train_seconds": round(seconds, 1),
            "temperatures": {t: 1.0 for t in data.vocabs}}


# ---- Resume state ----

@dataclass
class Progress:
    """Where the run stands: the epoch (those done) and the step in it, the best mean validation score, the epochs
    since it improved, the history; resuming, the interrupted epoch's totals (EpochTotals.partial)."""
    epoch: int = 0
    step_in_epoch: int = 0
    best_score: float = -1.0
    stale: int = 0
    history: list = field(default_factory=list)
    partial_epoch: dict | None = None


def save_resume_state(run: Run, net: Net, opt: torch.optim.Optimizer, aug_gen: torch.Generator, progress: Progress,
                      totals: EpochTotals, step: int) -> None:
    """Rank 0 saves to last/ what a resumed run needs to go on from this step of progress.epoch: the weights (and
    their EMA), the optimizer, the random streams, the progress and the epoch's totals so far."""
    if not run.main:
        return
    tensors = {f"model/{k}": v for k, v in net.raw.state_dict().items()}
    if net.ema is not None:
        tensors.update({f"ema/{k}": v for k, v in net.ema.state_dict().items()})
    opt_tensors, param_groups = flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["aug_rng"] = aug_gen.get_state()
    tensors["torch_rng"] = torch.get_rng_state()  # dropout draws from it
    save_state(run.out / "last", tensors, {"epoch": progress.epoch, "step_in_epoch": step,
                                           "best_score": progress.best_score, "stale": progress.stale,
                                           "history": progress.history, "param_groups": param_groups,
                                           "partial_epoch": totals.partial()})


def restore_resume_state(run: Run, state: tuple, net: Net, opt: torch.optim.Optimizer, aug_gen: torch.Generator
                         ) -> Progress:
    """The saved weights, optimizer and random streams put back; returns the progress saved with them."""
    tensors, info = state
    net.raw.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    if net.ema is not None:
        net.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    restore_optimizer(opt, tensors, info["param_groups"])
    aug_gen.set_state(tensors["aug_rng"])
    torch.set_rng_state(tensors["torch_rng"])
    progress = Progress(info["epoch"], info["step_in_epoch"], info["best_score"], info["stale"], info["history"],
                        info.get("partial_epoch"))
    if run.main:
        tqdm.write(f"resuming {run.out} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}")
    return progress


class StopRequest:
    """The SIGTERM handler (a scheduler ending the job): the epoch saves resume state after its current step and
    stops as Ctrl-C would."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def from_rank0(value: int) -> int:
    """Rank 0's value, on every rank."""
    flag = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(flag, 0)
    return int(flag)


def say_how_to_resume(out: Path) -> None:
    # Ctrl-C stops mid-step: what resumes is the last state saved (each epoch, each checkpoint_minutes, SIGTERM).
    if (out / "last").exists():
        tqdm.write(f"interrupted: continue from the state last saved in {out / 'last'} with "
                   f"`fashiontag train --resume --out {out}`")
    else:
        tqdm.write("interrupted before any resume state was saved: train again without --resume")


# ---- The finished model ----

def finish_model(folder: Path, data: TrainingData, device: torch.device, bf16: bool, channels_last: bool,
                 seconds: float, history: list) -> None:
    """Calibrate the best model on the validation split and record the full history: the weights of the photo's and
    the title's parts per task (late fusion), a decision threshold per class of a multi-label task, then temperatures
    and auto-accept thresholds per input condition (refit.fit_calibration, as `fashiontag calibrate` fits them)."""
    rows = data.rows["val"]
    pixels = np.asarray(data.cache.pixels[rows])
    titles = [data.catalog.titles[i] for i in rows]
    targets = {t: v[rows] for t, v in data.targets.items()}
    if (load_meta(folder)["arch_args"].get("title") or {}).get("linear"):
        train = data.rows["train"]
        c = add_title_linear(folder, [data.catalog.titles[i] for i in train],
                             {t: v[train] for t, v in data.targets.items()})
        tqdm.write(f"linear title part: a linear SVM (C={c:g}) on the TF-IDF of {len(train)} training titles")
    weights = weigh_fusion(folder, Tagger.load(folder), pixels, titles, targets)
    if weights:
        tqdm.write(f"fusion weights ({', '.join(weights)}): " + ", ".join(
            f"{t} " + ", ".join(f"x{weights[part][t]:.2f}" for part in weights) for t in weights["photo"]))
    model, meta = load_model(folder, device=str(device))
    engine = TorchEngine(model, list(data.vocabs), str(device), bf16, channels_last)
    tokenizer = tokenizer_of(meta)
    logits = engine.logits_tensors(pixels, tokenizer(titles) if tokenizer else None)
    class_thresholds = {t: fit_class_thresholds(logits[t].float().sigmoid().numpy(), targets[t])
                        for t in logits if data.kinds[t] == MULTI}
    meta.update(history=history, train_seconds=round(seconds, 1), class_thresholds=class_thresholds,
                colour_centroids=colour_class_centroids(data))
    if isinstance(model, KnownHeads):
        meta["taxonomy_map"] = start_model_map(meta["config"]["init"], data, device)
        for line in map_lines(meta["taxonomy_map"]):
            tqdm.write(f"taxonomy map: {line}")
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


def start_model_map(start: str, data: TrainingData, device: torch.device = torch.device("cpu")) -> dict:
    """The taxonomy map of the catalog's single-label tasks on the training side, from the start model as it was
    (not the known heads on the trained trunk): it says what the shop's words mean in the start model's."""
    rows = data.rows["train"]
    labels = {t: (data.targets[t][rows], classes) for t, classes in data.vocabs.items() if data.kinds[t] == SINGLE}
    return taxonomy_map(Tagger.load(start, device=str(device)), np.ascontiguousarray(data.cache.pixels[rows]),
                        [data.catalog.titles[i] for i in rows], labels)


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
