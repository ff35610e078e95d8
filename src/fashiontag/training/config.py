"""One typed training configuration with defaults; CLI flags override fields, and each run saves the result."""

from __future__ import annotations

import json
import math
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fashiontag.inference.thresholds import DEFAULT_PRECISION, precision_targets

# "notebook": the original notebook's filtering and three tasks.
PROTOCOLS = ("all", "notebook")
SCHEDULES = ("cosine", "constant")
STARTS = ("auto", "scratch", "shipped", "imagenet")
# Each number's range, checked when a config is made: `--epochs 0` or `--set lr=-1` used to work for a minute
# (the photo cache built, the model made) and then fail or train on nothing.
RANGES = {
    "epochs": (lambda v: v >= 1, "1 or more"),
    "batch_size": (lambda v: v >= 1, "1 or more"),
    "patience": (lambda v: v >= 1, "1 or more"),
    "trunk_lr": (lambda v: v > 0, "above 0"),
    "lr": (lambda v: v > 0, "above 0"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "warmup_epochs": (lambda v: v >= 0, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "from 0 to below 1"),
    "mixup": (lambda v: v >= 0, "0 (off) or more"),
    "ema": (lambda v: 0 <= v < 1, "0 (off) or more and below 1"),
    "distill": (lambda v: 0 <= v <= 1, "from 0 to 1"),
    "photo_loss": (lambda v: v >= 0, "0 (off) or more"),
    "seller_share": (lambda v: 0 < v <= 1, "above 0 and at most 1"),
    "framing": (lambda v: v is None or isinstance(v, bool) or 0 < v < 1, "true, false or a share above 0 and below 1"),
    "min_count": (lambda v: v is None or v >= 0, "0 or more"),
    "max_train": (lambda v: v >= 0, "0 (all) or more"),
    "threads": (lambda v: v >= 0, "0 (torch's default) or more"),
    "checkpoint_minutes": (lambda v: v >= 0, "0 or more"),  # 0: resume state after every batch
}


# Fields dropped because nothing ever set them (not the CLI's flags, tests, benchmarks, the tuner or the shipped
# model's config): each held one value, now written where it is used. A config.json saved before still loads:
# `load` leaves them out, and warns where one held another value (a hand-edited file), since it no longer applies.
DROPPED = {
    "device": "auto",   # train.start_process: the GPU when there is one, else the CPU
    "cache_dir": "",    # train.training_data: the user cache dir, which FASHIONTAG_CACHE moves
}


def protocol_name(protocol: str) -> str:
    """The protocol, checked."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    return protocol


@dataclass
class TrainConfig:
    data: str = ""                     # catalog: a CSV/TSV/JSON Lines file, or a folder with styles.csv + images/
    id_column: str = ""                # the product id's column (default "id")
    image_column: str = ""             # the photo's column (default: the photo of id X is images/X.<ext>)
    title_column: str = ""             # product titles (default productDisplayName where present)
    label_separator: str = "|"         # between the values of a multi-label cell (casual|party)
    hierarchy: tuple[str, ...] = ()    # declared "child>parent" chains; default: the Kaggle one, else found
    image_size: str = ""               # model input "HxW"; default: the catalog's typical photo size, capped
    extra: tuple[str, ...] = ()        # reviewed-tags files (`fashiontag review export`) to train on as well
    out: str = "runs/default"          # run folder: best/ (the model), last/ (resume state), split.json
    model: str = "rescnn"              # a name from fashiontag.models
    model_args: dict = field(default_factory=dict)  # over the family's default_args (models.family_args)
    pretrained: bool = False           # start from the family's ImageNet weights (efficientnet-lite0)
    tasks: tuple[str, ...] = ()        # task columns; default: Kaggle's seven, else every label-like column
    protocol: str = "all"              # "all" tasks and classes, or "notebook": the original notebook's filtering
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adamw"           # adamw, or rmsprop as in the notebook
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "cosine"           # after warm-up: "cosine" decay or "constant"
    label_smoothing: float = 0.1
    loss_weights: dict = field(default_factory=dict)  # task -> weight; missing tasks weigh 1
    class_weighting: bool = False      # weight rare classes up by 1/sqrt(frequency)
    augment: bool = True               # flips and small shifts/scales (and with seller_augment, much more)
    # The seller-photo recipe (issue 15; docs/ROBUSTNESS.md): the shipped model was fine-tuned from the studio one
    # with it and that model as teacher. Off by default: from scratch it costs clean accuracy (README, "Seller photos").
    seller_augment: bool = False       # also what sellers' photos do: zoom, tilt, backgrounds, light, blur
    seller_share: float = 0.7          # with seller_augment, the share of photos changed so; the rest stay studio
    framing: bool | float | None = None  # crop photos to their product first (framing.py), in training and use:
                                         # every photo (true) or where it spans less than this share both ways;
                                         # None: as the start model (init) does, else never
    mixup: float = 0.0                 # mixup alpha; 0 turns it off
    init: str = ""                     # a model folder to start from (fine-tuning); empty: as `start` says
    # Where training starts without init (train.starting_point): auto (the shipped model for a shop's own catalog,
    # random weights for the Kaggle layout, which the shipped model was trained on), scratch, shipped, imagenet.
    start: str = "auto"
    # Started from a model whose tasks or classes are not the catalog's: keep its own heads, frozen, and feed their
    # calibrated outputs to the catalog's heads (train.known_args; a shop's columns are mostly renamings and merges).
    known_heads: bool = True
    freeze_photo: bool = False         # photo + title: train the title branch only, the photo model's part as init has it
    # The trunk and title encoder as init has them: only the heads (and known heads' maps) learn; None: train.freeze_for.
    freeze_trunk: bool | None = None
    # The trunk's and title encoder's learning rate as a share of lr: below 1, a fine-tuned start model's features
    # move less from those its known heads were trained on.
    trunk_lr: float = 1.0
    title_dropout: dict = field(default_factory=dict)  # text.TitleDropout's drop, truncate, word_drop (photo + title)
    teachers: tuple[str, ...] = ()     # model folders whose averaged predictions become soft targets (distillation)
    distill: float = 0.5               # weight of the teachers' soft targets; the labels get 1 - distill
    # Photo + title trained end to end: weight of a second loss on the photo part alone (no title), so the photo
    # keeps what it knows for photos that come without one; the teachers then teach that part only.
    photo_loss: float = 0.0
    # Auto-accept thresholds (thresholds.py): per task, the lowest confidence whose validation precision reaches
    # the task's target in task_precision, else `precision`.
    precision: float = DEFAULT_PRECISION
    task_precision: dict = field(default_factory=dict)
    ema: float = 0.999                 # weight EMA decay; 0 turns it off
    patience: int = 8                  # early stopping: epochs without a better validation score
    min_count: int | None = None       # classes with fewer training photos go to "Other"; None: train.min_count_for
    max_train: int = 0                 # use at most this many training photos (0: all); for quick runs
    seed: int = 0
    split: str = ""                    # reuse this split file instead of making one
    bf16: bool = True                  # bf16 autocast where the CPU or GPU supports it
    channels_last: bool = True
    compile: bool | None = None        # torch.compile the model; None: where it pays (runs of 2,000 steps or more)
    threads: int = 0                   # torch intra-op threads; 0 leaves torch's default
    checkpoint_minutes: float = 2.0    # also save resume state this often inside an epoch
    progress: bool = True

    def __post_init__(self):
        """Every value is checked against its field's type, however the config was made; errors name the field."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), hints[f.name]))
        self.protocol = protocol_name(self.protocol)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"config field schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.start not in STARTS:
            raise ValueError(f"config field start: {self.start!r} is not one of {', '.join(STARTS)}")
        for name, (fits, allowed) in RANGES.items():
            if not fits(getattr(self, name)):
                raise ValueError(f"config field {name}: {getattr(self, name)!r} is not {allowed}")
        # Tasks left to the data are checked against it when training starts (train._train).
        unknown = sorted(set(self.task_precision) - set(self.tasks)) if self.tasks else []
        if unknown:
            raise ValueError(f"config field task_precision: {', '.join(unknown)} is not a task of this run")
        precision_targets(asdict(self), list(self.task_precision))  # every target a number above 0 and at most 1

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """A saved config.json; fields since dropped (DROPPED) are left out."""
        d = json.loads(Path(path).read_text())
        for name, value in DROPPED.items():
            saved = d.pop(name, value)
            if saved != value:
                warnings.warn(f"{path}: config field {name} is no longer read (see config.DROPPED); its value "
                              f"{saved!r} is ignored", stacklevel=2)
        return cls.from_dict(d)

    def override(self, **changes) -> "TrainConfig":
        """A copy with the given fields changed; None means "leave as is" (a CLI flag not given)."""
        d = asdict(self)
        d.update({k: v for k, v in changes.items() if v is not None})
        return self.from_dict(d)


def _checked(name: str, value, annotation):
    """value, converted where JSON cannot say it (an int for a float, a list for a tuple), if it fits annotation."""
    error = ValueError(f"config field {name}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")
    if isinstance(annotation, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _checked(name, value, option)
            except ValueError:
                pass
        raise error
    if annotation is type(None):
        if value is None:
            return None
        raise error
    origin = typing.get_origin(annotation)
    if origin is tuple:  # tuple[str, ...]; a single string is a tuple of one
        item = typing.get_args(annotation)[0]
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, item) for v in items):
            raise error
        return tuple(items)
    # bool is an int to Python, but `epochs=true` is a mistake, not 1.
    if isinstance(value, bool) and annotation is not bool:
        raise error
    if annotation is float and isinstance(value, int):
        return float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):  # JSON reads NaN, Infinity
        raise ValueError(f"config field {name}: {value!r} is not a finite number")
    if not isinstance(value, origin or annotation):
        raise error
    return value


def _type_name(annotation) -> str:
    return str(annotation) if typing.get_args(annotation) else annotation.__name__
