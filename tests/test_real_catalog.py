"""On the real catalog (../shared/data/fashion-small), where it exists; skipped elsewhere with the reason."""

import numpy as np

from fashiontag.data.catalog import read_catalog
from helpers import tiny_config


def test_every_row_parses(real_data):
    c = read_catalog(real_data)
    lines = (real_data / "styles.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert c.problems == [] and len(c) == len(lines) == 40038
    assert sum("," in n for n in c.titles) == 22  # the rows whose names carry commas keep them
    assert c.ids == [line.split(",", 1)[0] for line in lines] and len(set(c.ids)) == len(c)
    assert c.titles[0] == "Turtle Check Men Navy Blue Shirt" and c.columns["usage"][0] == "Casual"


def test_short_training_beats_majority_on_every_task(real_data, tmp_path):
    from fashiontag.inference.engines import TorchEngine
    from fashiontag.models.checkpoint import load_model
    from fashiontag.training.dataset import load_dataset
    from fashiontag.training.train import accuracies, train
    cfg = tiny_config(real_data, tmp_path, model_args={"width": 32, "stem_stride": 2}, max_train=8000, epochs=3,
                      batch_size=128, lr=3e-3, min_count=10, ema=0.99, threads=0)
    best = train(cfg)
    model, meta = load_model(best)
    ds = load_dataset(real_data, split_path=best / "split.json", vocabs=meta["vocabs"], progress=False,
                      framing=meta["preprocess"]["framing"])
    rows = ds.rows["test"]
    acc = accuracies(TorchEngine(model, list(meta["vocabs"])).logits_tensors(ds.cache.pixels[rows]),
                     {t: v[rows] for t, v in ds.targets.items()})
    for t, a in acc.items():
        y = ds.targets[t][rows]
        majority = np.bincount(y[y >= 0]).max() / (y >= 0).sum()
        assert a > majority, f"{t}: {a:.3f} <= majority {majority:.3f}"


def test_the_shipped_model_tags_the_real_catalog_with_and_without_titles(real_data):
    from fashiontag.inference.tagger import Tagger
    from fashiontag.training.evaluate import model_dataset
    tagger = Tagger.load()
    ds = model_dataset(tagger, real_data, progress=False)
    rows = ds.rows["test"][:600]
    pixels = np.asarray(ds.cache.pixels[rows])
    titles = [ds.catalog.titles[i] for i in rows]
    with_titles, photo_only = (tagger.choose(tagger.probabilities(pixels, t)) for t in (titles, None))
    for t in ("gender", "articleType"):
        y = ds.targets[t][rows]
        known = y >= 0
        both, photo = ((c[t][known] == y[known]).mean() for c in (with_titles, photo_only))
        assert both > photo + 0.02 and photo > 0.8, (t, both, photo)
