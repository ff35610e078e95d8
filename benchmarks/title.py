"""Photo + title (issue 12): title baselines, the hashed n-gram text encoder, photo + title fusion, dominant colours
and speed, on the shipped model's split (train side to fit, test side to score). Run by hand, one part at a time
(each a few minutes on two CPU cores), each printing a markdown table:

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/title.py svm      # TF-IDF char 2-5 + LinearSVC, title only
    ... benchmarks/title.py text [--buckets 16384 65536 262144] [--dim 64]   # TextEncoder alone, per size
    ... benchmarks/title.py text --side val --buckets 32768 --dim 256 --pool sqrt --epochs 10   # and fused, on val
    ... benchmarks/title.py fusion [--fusion late gated]                    # shipped trunk, frozen, + title
    ... benchmarks/title.py colour                                           # dominant colours for baseColour
    ... benchmarks/title.py colour-fused                                     # ... beside the shipped model, on val
    ... benchmarks/title.py speed                                            # tokens/s, colours/s, fused photos/s
    ... benchmarks/title.py linear [--c 0.2 0.5 1.5 3 6]                     # the linear title part per C, on val
    ... benchmarks/title.py lengths                                          # how the parts are weighed, on val
    ... benchmarks/title.py cv                                               # linear title part vs baseline, 5-fold
    ... benchmarks/title.py paired [--side val]                              # shipped model vs baseline, paired

fusion: the shipped photo model's trunk stays frozen, its features are computed once (cached in /tmp), and the
text encoder, fusion and heads train on them with TitleDropout; 10% of the photos with a title are replaced by a
blank white photo so that title-only tagging is learnt too. Scored photo-only, title-only (blank photo), both, and
with degraded titles. Accuracy is argmax per task, without calibration or joint category decoding.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashiontag.data.catalog import KAGGLE_TASKS as TASKS
from fashiontag.data.colours import (
    colour_centroids,
    colour_features,
    kmeans_colours,
    nearest_class,
    product_masks,
    rgb_to_lab,
)
from fashiontag.data.text import TitleDropout, Tokenizer, drop_words, remove_words, truncate, words_of
from fashiontag.models import create_model
from fashiontag.models.checkpoint import load_model
from fashiontag.models.layers import Heads
from fashiontag.models.title import TextEncoder, TitleFusion, TitleLinear
from fashiontag.training.dataset import load_dataset
from fashiontag.training.temperatures import fit_fusion_weights
from fashiontag.training.title_linear import fit_title_linear

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "fashion-small"
SHIPPED = ROOT / "src" / "fashiontag" / "default_model"
FEATURES = Path("/tmp/fashiontag-shipped-trunk-features.npy")
BATCH = 256


def dataset():
    _, meta = load_model(SHIPPED)
    return load_dataset(DATA, split_path=SHIPPED / "split.json", vocabs=meta["vocabs"], progress=False)


def titles(ds, side):
    return [ds.catalog.titles[i] for i in ds.rows[side]]


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    known = y >= 0
    return 100 * float((pred[known] == y[known]).mean())


def print_table(rows: dict[str, dict[str, float]], title: str, digits: int = 1) -> None:
    tasks = [t for t in TASKS if any(t in r for r in rows.values())]
    print(f"\n{title}\n\n| | {' | '.join(tasks)} |\n|---|{'---|' * len(tasks)}")
    for name, r in rows.items():
        print(f"| {name} | {' | '.join(f'{r[t]:.{digits}f}' if t in r else '' for t in tasks)} |")


def baseline(train_titles: list[str], y_train: dict[str, np.ndarray], other_titles: list[str]
             ) -> dict[str, np.ndarray]:
    """Issue 25's title baseline, char 2-5-gram TF-IDF (within words) + LinearSVC C=0.5 per task, fitted on
    `train_titles` (rows whose label is unknown left out): its predictions for `other_titles`."""
    return {t: s.argmax(1) for t, s in baseline_scores(train_titles, y_train, other_titles).items()}


def baseline_scores(train_titles: list[str], y_train: dict[str, np.ndarray], other_titles: list[str]
                    ) -> dict[str, np.ndarray]:
    """The baseline's decision values for `other_titles`, (N, classes) per task, its classes the label ids 0..max
    of `y_train`; a class no training title has gets the lowest value less 10, so it is never chosen."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    xtr, xother = vec.fit_transform(train_titles), vec.transform(other_titles)
    scores = {}
    for t, y in y_train.items():
        svm = LinearSVC(C=0.5).fit(xtr[y >= 0], y[y >= 0])
        values = svm.decision_function(xother)
        values = values[:, None] * [-1, 1] if values.ndim == 1 else values  # two classes: one column, for the second
        full = np.full((len(other_titles), int(y.max()) + 1), values.min() - 10, dtype=np.float32)
        full[:, svm.classes_] = values
        scores[t] = full
    return scores


def svm(args):
    ds = dataset()
    pred = baseline(titles(ds, "train"), side_targets(ds, "train"), titles(ds, "test"))
    y = side_targets(ds, "test")
    print_table({"TF-IDF char 2-5 + LinearSVC": {t: accuracy(p, y[t]) for t, p in pred.items()}},
                "Title only, test side")


def fit(epoch_batches, modules: list[nn.Module], targets: dict[str, np.ndarray], n: int, epochs: int, lr: float,
        seed: int = 0):
    """Adam, the learning rate decaying linearly to 0, on the summed cross-entropy of every task.
    epoch_batches(rng) -> logits_of(batch indices) -> {task: logits}: each epoch can draw its own title
    degradations. Embedding tables get sparse gradients and SparseAdam: a batch touches a few thousand of their
    rows, and a dense Adam step over all of them made an epoch 5x slower."""
    embeddings = [m for module in modules for m in module.modules() if isinstance(m, nn.Embedding)]
    for m in embeddings:
        m.sparse = True
    sparse = {id(m.weight) for m in embeddings}
    dense = [p for module in modules for p in module.parameters() if p.requires_grad and id(p) not in sparse]
    opts = [torch.optim.SparseAdam([m.weight for m in embeddings], lr=lr), torch.optim.Adam(dense, lr=lr)]
    steps = epochs * -(-n // BATCH)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1 - step / steps) for o in opts]
    ys = {t: torch.from_numpy(y) for t, y in targets.items()}
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        order = rng.permutation(n)
        batches = epoch_batches(rng)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            out = batches(idx)
            loss = sum(nn.functional.cross_entropy(out[t], ys[t][idx], ignore_index=-1) for t in out)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o, s in zip(opts, scheds):
                o.step()
                s.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1}: loss {total / n:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)


def predict(logits_of, n: int) -> dict[str, np.ndarray]:
    with torch.no_grad():
        parts = [logits_of(np.arange(i, min(n, i + 1024))) for i in range(0, n, 1024)]
    return {t: torch.cat([p[t] for p in parts]).argmax(1).numpy() for t in parts[0]}


def side_targets(ds, side):
    return {t: y[ds.rows[side]] for t, y in ds.targets.items()}


def text(args):
    """The TextEncoder alone per size (and pooling), on args.side; on the validation side also fused with the
    shipped photo model's logits, the two parts weighed as calibration weighs them (fit_fusion_weights), fitted on
    one half of the side and scored on the other."""
    ds = dataset()
    heads = {t: len(v) for t, v in ds.vocabs.items()}
    side, rows = args.side, {}
    photo = photo_logits(ds, side) if side == "val" else None
    for buckets in args.buckets:
        torch.manual_seed(0)
        tok = Tokenizer(buckets=buckets)
        train_tokens, side_tokens = (torch.from_numpy(tok(titles(ds, s))) for s in ("train", side))
        encoder = TextEncoder(buckets, args.dim, args.hidden, args.pool)
        head = Heads(encoder.features, heads)
        name = f"TextEncoder {buckets} x {args.dim}, hidden {args.hidden}, {args.pool}"
        print(f"{name}: {sum(p.numel() for p in encoder.parameters()) / 1e6:.1f} M parameters")
        fit(lambda rng: lambda idx: head(encoder(train_tokens[idx])[0]), [encoder, head],
            side_targets(ds, "train"), len(train_tokens), args.epochs, args.lr)
        with torch.no_grad():
            logits = {t: torch.cat([head(encoder(side_tokens[i:i + 1024])[0])[t] for i in range(0, len(side_tokens),
                                                                                                1024)])
                      for t in heads}
        y = side_targets(ds, side)
        rows[name] = {t: accuracy(v.argmax(1).numpy(), y[t]) for t, v in logits.items()}
        if photo is not None:
            rows[f"{name}, fused with the photo"] = two_fold_fusion({"photo": photo, "title": logits}, y)
    print_table(rows, f"Title only, {side} side ({args.epochs} epochs)")


def photo_logits(ds, side) -> dict[str, torch.Tensor]:
    """The shipped photo model's logits (its own heads) for one side's photos."""
    model, _ = load_model(SHIPPED)
    feats = torch.from_numpy(trunk_features(ds)[ds.rows[side]])
    with torch.no_grad():
        return model.heads(feats)


def two_fold_fusion(parts: dict[str, dict[str, torch.Tensor]], y: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy of the parts' weighted sum per task ({part: {task: logits}}, one factor each, fit_fusion_weights),
    fitted on one half of the rows and scored on the other, both ways."""
    n = len(next(iter(y.values())))
    half = np.random.default_rng(0).permutation(n) < n // 2
    out = {}
    for t in next(iter(parts.values())):
        pred = np.zeros(n, dtype=int)
        for fit_on in (half, ~half):
            w = fit_fusion_weights({p: {t: part[t][fit_on]} for p, part in parts.items()}, {t: y[t][fit_on]})
            pred[~fit_on] = sum(w[p][t] * part[t][~fit_on] for p, part in parts.items()).argmax(1).numpy()
        out[t] = accuracy(pred, y[t])
    return out


def shipped_parts(ds, side: str, titles_of_side: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The shipped model's parts of the logits on one side's photos and the given titles, each as it is before the
    length slopes weigh it: its photo heads, its title encoder's heads and its linear title part (if any)."""
    model, _ = load_model(SHIPPED)
    tokens = torch.from_numpy(Tokenizer(**model_tokenizer())(titles_of_side))
    with torch.no_grad():
        photo = model.heads(torch.from_numpy(trunk_features(ds)[ds.rows[side]]))
        chunks = [tokens[i:i + 256] for i in range(0, len(tokens), 256)]
        parts = {"photo": photo, "title": _cat([model.title_logits(c) for c in chunks])}
        if model.linear is not None:
            parts["linear"] = _cat([model.linear(c) for c in chunks])
    return parts


def model_tokenizer() -> dict:
    _, meta = load_model(SHIPPED)
    return meta["arch_args"]["title"]["tokenizer"]


def _cat(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {t: torch.cat([c[t] for c in chunks]) for t in chunks[0]}


def linear(args):
    """The linear title part (issue 25) on the validation side: the baseline (its own char 2-5-grams), an SVM on the
    TF-IDF of the tokenizer's ids per C (training.title_linear, fitted on the train side), alone and fused with the
    shipped model's photo and encoder parts (two_fold_fusion, whole titles)."""
    ds = dataset()
    y, train_titles, val_titles = side_targets(ds, "val"), titles(ds, "train"), titles(ds, "val")
    rows = {"baseline: TF-IDF char 2-5 + LinearSVC C=0.5": {
        t: accuracy(p, y[t]) for t, p in baseline(train_titles, side_targets(ds, "train"), val_titles).items()}}
    parts = shipped_parts(ds, "val", val_titles)
    tok = Tokenizer(**model_tokenizer())
    val_tokens = torch.from_numpy(tok(val_titles))
    for c in args.c:
        start = time.perf_counter()
        part = TitleLinear(tok.buckets, {t: len(v) for t, v in ds.vocabs.items()})
        fit_title_linear(part, train_titles, side_targets(ds, "train"), tok, c, progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            scores = _cat([part(val_tokens[i:i + 256]) for i in range(0, len(val_tokens), 256)])
        rows[f"SVM on the tokenizer's ids, C={c:g} ({seconds:.0f} s)"] = {
            t: accuracy(v.argmax(1).numpy(), y[t]) for t, v in scores.items()}
        rows[f"fused: photo + encoder + SVM C={c:g}"] = two_fold_fusion(
            {"photo": parts["photo"], "title": parts["title"], "linear": scores}, y)
    print_table(rows, "Validation side: the linear title part", digits=2)


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> tuple[int, int, float]:
    """Two classifiers on the same products: how many only a gets right, only b, and McNemar's exact two-sided
    p-value (a binomial test on those products alone; the products both get right or wrong say nothing)."""
    from scipy.stats import binomtest
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    return only_a, only_b, binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0


def print_paired(rows: dict[str, tuple[np.ndarray, np.ndarray]], names: tuple[str, str], title: str) -> None:
    """Per task (rows: {task: (a right, b right)}): each one's accuracy, the products only one gets right, p."""
    a, b = names
    print(f"\n{title}\n\n| task | {a} | {b} | only {a} right | only {b} right | McNemar p |\n|---|---|---|---|---|---|")
    for t, (ra, rb) in rows.items():
        only_a, only_b, pvalue = mcnemar(ra, rb)
        print(f"| {t} | {100 * ra.mean():.2f} | {100 * rb.mean():.2f} | {only_a} | {only_b} | {pvalue:.3g} |")


def cv(args):
    """The model's linear title part against the baseline, title alone, where a validation side of 3,967 products
    cannot tell them apart (on gender they differ by a few products): 5-fold cross-validation over the training
    side's titles, both refitted on each fold's four fifths, with the model's tokenizer and C."""
    from sklearn.model_selection import KFold
    ds = dataset()
    _, meta = load_model(SHIPPED)
    c = (meta["arch_args"]["title"].get("linear") or {}).get("C", 3.0)
    tok = Tokenizer(**model_tokenizer())
    all_titles, y = titles(ds, "train"), side_targets(ds, "train")
    right = {t: ([], []) for t in ds.vocabs}
    for fold, (fit_on, score_on) in enumerate(KFold(5, shuffle=True, random_state=0).split(all_titles)):
        start = time.perf_counter()
        fit_titles, score_titles = [all_titles[i] for i in fit_on], [all_titles[i] for i in score_on]
        fit_y = {t: v[fit_on] for t, v in y.items()}
        base = baseline(fit_titles, fit_y, score_titles)
        part = TitleLinear(tok.buckets, {t: len(v) for t, v in ds.vocabs.items()})
        fit_title_linear(part, fit_titles, fit_y, tok, c, progress=False)
        tokens = torch.from_numpy(tok(score_titles))
        with torch.no_grad():
            scores = _cat([part(tokens[i:i + 256]) for i in range(0, len(tokens), 256)])
        for t in ds.vocabs:
            truth = y[t][score_on]
            known = truth >= 0
            right[t][0].append((scores[t].argmax(1).numpy() == truth)[known])
            right[t][1].append((base[t] == truth)[known])
        print(f"fold {fold + 1}/5: {time.perf_counter() - start:.0f} s", flush=True)
    print_paired({t: (np.concatenate(a), np.concatenate(b)) for t, (a, b) in right.items()},
                 (f"linear title part (C={c:g})", "baseline"),
                 f"Title alone, 5-fold cross-validation over the {len(all_titles):,} training titles")


def paired(args):
    """The shipped model with titles (joint decoding, as `fashiontag evaluate` scores it) against the baseline on
    args.side, product by product."""
    from fashiontag.inference.tagger import Tagger
    from fashiontag.training.evaluate import model_dataset
    tagger = Tagger.load(SHIPPED)
    ds = model_dataset(tagger, DATA, progress=False)  # its photos framed as the model frames them
    rows, side_titles = ds.rows[args.side], titles(ds, args.side)
    chosen = tagger.choose(tagger.probabilities(np.asarray(ds.cache.pixels[rows]), side_titles))
    base = baseline(titles(ds, "train"), side_targets(ds, "train"), side_titles)
    y = side_targets(ds, args.side)
    print_paired({t: ((chosen[t] == y[t])[y[t] >= 0], (base[t] == y[t])[y[t] >= 0]) for t in tagger.tasks},
                 ("photo + title", "baseline"), f"The shipped model against the title baseline, {args.side} side")


def lengths(args):
    """How the parts are weighed (issue 25), on the validation side: the shipped model's parts (photo, encoder,
    linear title part) weighed on one half and scored on the other, with whole titles and thinned as training thins
    them, fitted on whole titles only, on whole and thinned k:1, or 1:1 with each factor by the title's length."""
    _, meta = load_model(SHIPPED)
    ds = dataset()
    y, whole = side_targets(ds, "val"), titles(ds, "val")
    thin = TitleDropout(**{**meta["config"]["title_dropout"], "drop": 0.0})(whole, np.random.default_rng(0))
    tok = Tokenizer(**model_tokenizer())
    cases = {}
    for name, texts in (("whole", whole), ("thinned", thin)):
        count = (tok(texts) > 0).sum(1)
        cases[name] = (shipped_parts(ds, "val", texts), count)
    center = float(np.log(cases["whole"][1][cases["whole"][1] > 0]).mean())
    z = {name: torch.from_numpy((np.log(np.maximum(count, 1)) - center) * (count > 0)).float()
         for name, (_, count) in cases.items()}
    n = len(whole)
    half = np.random.default_rng(0).permutation(n) < n // 2
    rows = {}
    mixes = (("whole titles only", {"whole": 1}, False), ("whole and thinned 1:1", {"whole": 1, "thinned": 1}, False),
             ("whole and thinned 2:1", {"whole": 2, "thinned": 1}, False),
             ("whole and thinned 4:1", {"whole": 4, "thinned": 1}, False),
             ("whole and thinned 1:1, by the title's length", {"whole": 1, "thinned": 1}, True))
    for label, mix, slopes in mixes:
        pred = {name: {t: np.zeros(n, dtype=int) for t in y} for name in cases}
        for fit_on in (half, ~half):
            names = [name for name, k in mix.items() for _ in range(k)]
            parts = {p: {t: torch.cat([cases[name][0][p][t][fit_on] for name in names]) for t in y}
                     for p in cases["whole"][0]}
            lengths_fit = torch.cat([z[name][fit_on] for name in names]) if slopes else None
            w = fit_fusion_weights(parts, {t: np.concatenate([y[t][fit_on]] * len(names)) for t in y}, lengths_fit)
            for name, (scored, _) in cases.items():
                for t in y:
                    factor = {p: w[p][t] * ((w[f"{p} slope"][t] * z[name][~fit_on]).exp()[:, None] if slopes else 1)
                              for p in scored}
                    pred[name][t][~fit_on] = sum(factor[p] * scored[p][t][~fit_on] for p in scored).argmax(1).numpy()
        for name in cases:
            rows[f"{label}: {name} titles"] = {t: accuracy(pred[name][t], y[t]) for t in y}
    print_table(rows, "Validation side: weighing the parts", digits=2)


def trunk_features(ds) -> np.ndarray:
    """The shipped trunk's features for every catalog row (zeros where the photo is unusable), and the last row
    for a blank white photo; computed once."""
    if FEATURES.exists():
        return np.load(FEATURES)
    model, _ = load_model(SHIPPED)
    pixels = ds.cache.pixels
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), 512):
            x = torch.from_numpy(np.asarray(pixels[i:i + 512])).permute(0, 3, 1, 2).float() / 255
            out.append(model.trunk(x).numpy())
        out.append(model.trunk(torch.ones(1, 3, 80, 60)).numpy())
    feats = np.concatenate(out)
    np.save(FEATURES, feats)
    return feats


class FusedBatches:
    """logits_of for fit(): the train side's frozen photo features with degraded titles, drawn anew each epoch."""

    def __init__(self, model, feats, blank, names, tok, dropout: TitleDropout, photo_drop: float):
        self.model, self.feats, self.blank, self.names, self.tok = model, feats, blank, names, tok
        self.dropout, self.photo_drop = dropout, photo_drop

    def epoch(self, rng):
        tokens = torch.from_numpy(self.tok(self.dropout(self.names, rng)))
        # A photo goes blank only where its title stays: a product with neither teaches nothing.
        blank = torch.from_numpy((rng.random(len(tokens)) < self.photo_drop) & (tokens[:, 0] > 0).numpy())
        feats = torch.where(blank[:, None], self.blank, self.feats)
        return lambda idx: self.model.from_features(feats[idx], tokens[idx])


def fusion(args):
    ds = dataset()
    if args.subset:  # a random part of the train side: a quicker, rougher comparison
        ds.rows["train"] = np.sort(np.random.default_rng(0).permutation(ds.rows["train"])[:args.subset])
    feats = torch.from_numpy(trunk_features(ds))
    blank = feats[-1]
    photo_model, meta = load_model(SHIPPED)
    heads = {t: len(v) for t, v in ds.vocabs.items()}
    tok = Tokenizer(buckets=args.buckets)
    train_feats, test_feats = feats[ds.rows["train"]], feats[ds.rows["test"]]
    test_names, test = titles(ds, "test"), side_targets(ds, "test")
    strip = {"no colour words": words_of(ds.vocabs["baseColour"]), "no gender words": words_of(ds.vocabs["gender"])}
    rng = np.random.default_rng(1)
    modes = {"photo only": (test_feats, None), "title only (blank photo)": (blank.expand_as(test_feats), test_names),
             "photo + title": (test_feats, test_names),
             **{f"photo + title, {k}": (test_feats, [remove_words(n, w) for n in test_names]) for k, w in strip.items()},
             "photo + title, first 2 words": (test_feats, [truncate(n, 2) for n in test_names]),
             "photo + title, half the words": (test_feats, [drop_words(n, 0.5, rng) for n in test_names])}
    rows = {"shipped photo model": {t: accuracy(p, test[t]) for t, p in
                                    predict(lambda idx: photo_model.heads(test_feats[idx]), len(test_feats)).items()}}
    for fusion_kind in args.fusion:
        torch.manual_seed(0)
        model = TitleFusion(photo_model, heads, tokenizer=tok.config(), dim=args.dim, hidden=args.hidden,
                            fusion=fusion_kind)
        for p in model.trunk.parameters():
            p.requires_grad_(False)
        print(f"{fusion_kind} fusion, buckets {args.buckets}, dim {args.dim}")
        batches = FusedBatches(model, train_feats, blank, titles(ds, "train"), tok,
                               TitleDropout(args.title_drop, args.truncate, args.word_drop), args.photo_drop)
        fit(batches.epoch, [model], side_targets(ds, "train"),
            len(train_feats), args.epochs, args.lr)
        model.eval()
        for mode, (f, names) in modes.items():
            tokens = None if names is None else torch.from_numpy(tok(names))
            pred = predict(lambda idx: model.from_features(f[idx], None if tokens is None else tokens[idx]),
                           len(f))
            rows[f"{fusion_kind}: {mode}"] = {t: accuracy(pred[t], test[t]) for t in pred}
    print_table(rows, f"Photo + title, test side (frozen shipped trunk, {args.subset or 'all'} train photos, "
                      f"{args.epochs} epochs, title drop "
                      f"{args.title_drop}, photo drop {args.photo_drop})")


def colour(args):
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    ds = dataset()
    y = {s: ds.targets["baseColour"][ds.rows[s]] for s in ("train", "test")}
    start = time.perf_counter()
    photos = {s: np.asarray(ds.cache.pixels[ds.rows[s]]) for s in ("train", "test")}
    feats = {s: colour_features(p) for s, p in photos.items()}
    print(f"colour features: {sum(map(len, feats.values())) / (time.perf_counter() - start):,.0f} photos/s")
    scale = StandardScaler().fit(feats["train"])
    feats = {s: scale.transform(f) for s, f in feats.items()}
    known = y["train"] >= 0
    names = {s: titles(ds, s) for s in ("train", "test")}
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2).fit(names["train"])
    words = {s: vec.transform(n) for s, n in names.items()}
    labels = [ds.catalog.labels["baseColour"][i] for i in ds.rows["train"]]
    centroids = colour_centroids(photos["train"], labels)
    dominant = kmeans_colours(photos["test"])[0][:, 0]
    vocab = ds.vocabs["baseColour"]
    nearest = np.array([vocab.index(c) if c in vocab else -2 for c in
                        (nearest_class(lab, centroids) for lab in dominant)])
    rows = {"nearest learnt centroid (largest colour)": accuracy(nearest, y["test"]),
            "logistic regression, colour features": accuracy(
                LogisticRegression(max_iter=300).fit(feats["train"][known], y["train"][known]).predict(feats["test"]),
                y["test"])}
    for name, x in {"LinearSVC, title TF-IDF": words,
                    "LinearSVC, title TF-IDF + colour features": {
                        s: hstack([words[s], csr_matrix(feats[s] * args.colour_weight)]).tocsr() for s in words}}.items():
        rows[name] = accuracy(LinearSVC(C=0.5).fit(x["train"][known], y["train"][known]).predict(x["test"]), y["test"])
    print_table({k: {"baseColour": v} for k, v in rows.items()}, "baseColour, test side")


def lab_histogram(photos: np.ndarray, bins=(5, 6, 6)) -> np.ndarray:
    """(N, 180): the square root of the share of the product's pixels in each L x a x b bin."""
    mask, lab = product_masks(photos), rgb_to_lab(photos)
    cell = [np.clip(((lab[..., i] - lo) / span * n).astype(int), 0, n - 1)
            for i, (lo, span, n) in enumerate(zip((0, -80, -80), (100, 160, 160), bins))]
    index = (cell[0] * bins[1] + cell[1]) * bins[2] + cell[2]
    counts = np.stack([np.bincount(index[i][mask[i]], minlength=int(np.prod(bins))) for i in range(len(photos))])
    return np.sqrt(counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)


def colour_part(ds, photos: np.ndarray) -> np.ndarray:
    """A logistic regression from the dominant colours and the Lab histogram to baseColour, fitted on the training
    side's photos (where the two-fold fits on validation have 2,000), and its log-probabilities for `photos`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def features(p: np.ndarray) -> np.ndarray:
        return np.hstack([colour_features(p), lab_histogram(p)])

    rows = ds.rows["train"]
    y = ds.targets["baseColour"][rows]
    x = np.concatenate([features(np.asarray(ds.cache.pixels[rows[i:i + 4096]])) for i in range(0, len(rows), 4096)])
    scale = StandardScaler().fit(x)
    lr = LogisticRegression(max_iter=1000).fit(scale.transform(x[y >= 0]), y[y >= 0])
    out = np.full((len(photos), len(ds.vocabs["baseColour"])), -30.0, np.float32)  # classes training never saw
    out[:, lr.classes_] = lr.predict_log_proba(scale.transform(features(photos)))
    return out


def colour_fused(args):
    """Issue 25's "colour from the pixels" beside the shipped model: a logistic regression on the shipped model's
    baseColour log-probabilities (with titles, and photo alone), with and without the dominant colours
    (colour_features), a Lab histogram of the product's pixels or a colour part fitted on the training side
    (colour_part), fitted on one half of the validation side and scored on the other, both ways."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    ds = dataset()
    model, meta = load_model(SHIPPED)
    tok = Tokenizer(**meta["arch_args"]["title"]["tokenizer"])
    rows = ds.rows["val"]
    photos, names, y = np.asarray(ds.cache.pixels[rows]), titles(ds, "val"), ds.targets["baseColour"][rows]
    logits = {"photo + title": [], "photo alone": []}
    with torch.no_grad():
        for i in range(0, len(photos), BATCH):
            x = torch.from_numpy(photos[i:i + BATCH]).permute(0, 3, 1, 2).float() / 255
            logits["photo + title"].append(model(x, torch.from_numpy(tok(names[i:i + BATCH])))["baseColour"])
            logits["photo alone"].append(model(x, None)["baseColour"])
    pixels = {"dominant colours": colour_features(photos), "Lab histogram": lab_histogram(photos)}
    colours = colour_part(ds, photos)
    half = np.random.default_rng(0).permutation(len(y)) < len(y) // 2
    known = y >= 0

    def two_fold(x: np.ndarray) -> float:
        pred = np.full(len(y), -2)
        for fit_on in (half, ~half):
            scale = StandardScaler().fit(x[fit_on])
            lr = LogisticRegression(max_iter=500).fit(scale.transform(x[fit_on & known]), y[fit_on & known])
            pred[~fit_on] = lr.predict(scale.transform(x[~fit_on]))
        return accuracy(pred, y)

    def weighed(lp: np.ndarray) -> float:
        """The model's and the colour part's log-probabilities summed with a factor each (fit_fusion_weights, as
        fusion weighs a model's parts), two folds."""
        pred = np.full(len(y), -2)
        for fit_on in (half, ~half):
            w = fit_fusion_weights({"model": {"c": torch.from_numpy(lp[fit_on])},
                                    "colour": {"c": torch.from_numpy(colours[fit_on])}}, {"c": y[fit_on]})
            pred[~fit_on] = (w["model"]["c"] * lp[~fit_on] + w["colour"]["c"] * colours[~fit_on]).argmax(1)
        return accuracy(pred, y)

    table = {}
    for condition, parts in logits.items():
        lp = torch.cat(parts).log_softmax(1).numpy()
        table[f"{condition}: the model's own argmax"] = accuracy(lp.argmax(1), y)
        table[f"{condition}: logistic regression on its log-probabilities"] = two_fold(lp)
        for name, feats in pixels.items():
            table[f"{condition}: ... + {name}"] = two_fold(np.hstack([lp, feats]))
        table[f"{condition}: weighed with a colour part fitted on the training side"] = weighed(lp)
    print_table({k: {"baseColour": v} for k, v in table.items()}, "baseColour, validation side, two folds")


def speed(args):
    ds = dataset()
    names = ds.catalog.titles
    tok = Tokenizer(buckets=args.buckets)
    start = time.perf_counter()
    tok(names)
    print(f"tokenise (cold cache): {len(names) / (time.perf_counter() - start):,.0f} titles/s")
    photos = np.asarray(ds.cache.pixels[:4096])
    start = time.perf_counter()
    colour_features(photos)
    print(f"dominant colours: {len(photos) / (time.perf_counter() - start):,.0f} photos/s")
    _, meta = load_model(SHIPPED)
    heads = {t: len(v) for t, v in meta["vocabs"].items()}
    for fusion_kind in args.fusion:
        model = create_model(meta["arch"], heads, **meta["arch_args"],
                             title={"tokenizer": tok.config(), "dim": args.dim, "fusion": fusion_kind}).eval()
        for with_title in (False, True):
            n, start = 0, time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(photos), BATCH):
                    x = torch.from_numpy(photos[i:i + BATCH]).permute(0, 3, 1, 2).float() / 255
                    model(x, torch.from_numpy(tok(names[i:i + BATCH])) if with_title else None)
                    n += len(x)
            print(f"{fusion_kind} fused model, batch {BATCH}, {'with' if with_title else 'without'} titles "
                  f"(tokenising included): {n / (time.perf_counter() - start):,.0f} photos/s "
                  f"({torch.get_num_threads()} threads)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["svm", "text", "fusion", "colour", "colour-fused", "speed", "linear", "lengths",
                                    "cv", "paired"])
    p.add_argument("--c", type=float, nargs="+", default=[0.2, 0.5, 1.5, 3.0, 6.0], help="linear: the SVM's C")
    p.add_argument("--buckets", type=int, nargs="+", default=[2 ** 16])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--pool", choices=["mean", "sqrt"], default="mean")
    p.add_argument("--side", choices=["val", "test"], default="test",
                   help="text: score on this side (val: also fused with the shipped photo model); paired: "
                        "compare on this side")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--fusion", nargs="+", default=["late", "gated"])
    p.add_argument("--title-drop", type=float, default=0.3)
    p.add_argument("--truncate", type=float, default=0.15)
    p.add_argument("--word-drop", type=float, default=0.15)
    p.add_argument("--subset", type=int, default=0, help="fusion: train on this many train-side photos (0: all)")
    p.add_argument("--photo-drop", type=float, default=0.1)
    p.add_argument("--colour-weight", type=float, default=0.3, help="colour features' scale beside TF-IDF")
    args = p.parse_args()
    if args.part in ("fusion", "speed"):
        args.buckets = args.buckets[0]
    {"svm": svm, "text": text, "fusion": fusion, "colour": colour, "colour-fused": colour_fused,
     "speed": speed, "linear": linear, "lengths": lengths, "cv": cv, "paired": paired}[args.part](args)


if __name__ == "__main__":
    main()
