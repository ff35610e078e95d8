"""`fashiontag calibrate`: fit auto-accept thresholds onto a model folder that was trained without them.

Training chooses them itself (train.finish_model); this is for models made before, such as the shipped one. Only
model.json changes: the weights, and the vocabularies their header records, stay as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fashiontag.evaluate import model_dataset
from fashiontag.model_meta import load_meta, write_meta
from fashiontag.tagger import Tagger
from fashiontag.thresholds import fit_on_photos


def calibrate(model: str | Path, data: str | Path, precision: float | None = None,
              task_precision: dict[str, float] | None = None, cache_dir: str | None = None,
              progress: bool = True) -> dict:
    """Choose each task's threshold on the validation side of the model's split of `data`, write them into the
    folder's model.json, and re-export its model.onnx when it has one (the export records the model version,
    which model.json is part of). Targets: task_precision per task, else precision, else the model's config's.
    Returns model.json's threshold record (thresholds, threshold_precision, thresholds_val)."""
    tagger = Tagger.load(model)
    unknown = sorted(set(task_precision or {}) - set(tagger.tasks))
    if unknown:
        raise ValueError(f"--task-precision names tasks the model does not have: {', '.join(unknown)}; its tasks: "
                         f"{', '.join(tagger.tasks)}")
    config = dict(tagger.meta.get("config", {}))
    config.update({k: v for k, v in (("precision", precision), ("task_precision", task_precision)) if v is not None})
    ds = model_dataset(tagger, data, cache_dir, progress)
    rows = ds.rows["val"]
    if len(rows) == 0:
        raise ValueError(f"{data}: none of the model's validation photos is in this catalog; pass the catalog it "
                         "was trained on")
    # Judged as the tags will be given: a photo + title model with each product's title (others ignore it).
    record = fit_on_photos(tagger, np.asarray(ds.cache.pixels[rows]), [ds.catalog.titles[i] for i in rows],
                           {t: ds.targets[t][rows] for t in tagger.tasks}, config)
    folder = tagger.model_dir
    write_meta(folder, {**load_meta(folder), **record})
    if (folder / "model.onnx").exists():
        from fashiontag.export import export_onnx
        export_onnx(folder)
    return record
