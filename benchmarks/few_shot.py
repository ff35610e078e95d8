"""A shop's first model from a few hundred labelled products (issue 27): the learning curve of the plain command.

Shops are simulated from the real catalog's products the shipped model never trained on (the validation and test
sides of its split, about 7,900; anything else leaks): each draw takes n of them as the shop's labelled catalog
and 1,000 others as its new arrivals. The shop speaks its own words: gender -> audience, masterCategory ->
department, articleType -> category, baseColour -> colour, values lower-cased, and some merged (its "sneakers"
are two articleTypes, its "kids" two genders). Each shop trains with the README's plain command (`fashiontag train
--data shop.csv --id-column sku --image-column photo [--title-column name]`), from the shipped model (the
default; photo only and photo + title), `--from scratch` and `--from imagenet` (EfficientNet-Lite0, photo only);
scored on the new arrivals with `fashiontag evaluate`. One column is new to fashiontag: `brand`, the title's first
word where it is one of the 20 most common (empty otherwise), a task the shipped model never learnt: read from the
photo alone it shows transfer to a new attribute (photo + title models read it in the title). From a model, the
shop's heads also read the shipped model's own frozen heads (known heads, the default; `--known-heads on off`
trains both ways, `known_heads=false` being the other). The mean validation score of each run is printed beside its
test figures: it, not the test side, chooses the default. Besides accuracy, "strict" accuracy counts a right
pooled `Other` as wrong (it names no real class), so a recipe that pools more classes is not rewarded for it.
A TF-IDF (character 2-5-grams) + linear SVM on the same titles is the baseline. Run by hand (minutes per shop):

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/few_shot.py --n 900 --draws 1
    ... benchmarks/few_shot.py --n 100 300 1000 3000 --draws 3 --from shipped scratch imagenet \
        --log curve.jsonl                                    # the whole curve (hours on two cores)

Runs go draw by draw (every n of draw 0 first), each result appended to --log as it comes, so an interrupted curve
keeps what it measured; `--table curve.jsonl` prints the mean and spread over draws of a log.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from itertools import product
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from fashiontag.data.vocab import OTHER
from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta
from fashiontag.training.config import TrainConfig
from fashiontag.training.evaluate import evaluate
from fashiontag.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "fashion-small").resolve()
COLUMNS = {"gender": "audience", "masterCategory": "department", "articleType": "category", "baseColour": "colour"}
MERGED = {"casual shoes": "sneakers", "sports shoes": "sneakers", "boys": "kids", "girls": "kids"}
NEW_ARRIVALS = 1000
BRANDS = 20
# EfficientNet-Lite0 trains at about 90 photos/s on two CPU cores: above this many labelled products a run takes
# longer than the whole rest of a draw.
IMAGENET_MAX_N = 1000


def unseen_products() -> list[dict]:
    """The catalog rows on the shipped model's validation and test sides, with a photo."""
    split = json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())
    unseen = set(split["val"]) | set(split["test"])
    with (DATA / "styles.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["id"] in unseen]
    return [r for r in rows if (DATA / "images" / f"{r['id']}.jpg").is_file()]


def brand(row: dict) -> str:
    words = row["productDisplayName"].split()
    return words[0].lower() if words else ""


def top_brands(products: list[dict]) -> set[str]:
    return {b for b, _ in Counter(brand(r) for r in products if brand(r)).most_common(BRANDS)}


def shop_row(row: dict, brands: set[str]) -> dict:
    out = {"sku": f"SKU-{row['id']}", "photo": str(DATA / "images" / f"{row['id']}.jpg"),
           "name": row["productDisplayName"], "brand": brand(row) if brand(row) in brands else ""}
    for kaggle, own in COLUMNS.items():
        value = row[kaggle].strip().lower()
        out[own] = MERGED.get(value, value)
    return out


TASKS = (*COLUMNS.values(), "brand")


def write_shop(rows: list[dict], brands: set[str], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["sku", "photo", "name", *TASKS])
        w.writeheader()
        w.writerows(shop_row(r, brands) for r in rows)
    return path


def svm_baseline(labelled: list[dict], arrivals: list[dict], brands: set[str]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    x = vec.fit_transform([r["productDisplayName"] for r in labelled])
    x_new = vec.transform([r["productDisplayName"] for r in arrivals])
    scores = {}
    for own in TASKS:
        y = np.array([shop_row(r, brands)[own] for r in labelled])
        y_new = np.array([shop_row(r, brands)[own] for r in arrivals])
        known, known_new = y != "", y_new != ""  # brand: only the top brands are labelled
        predicted = LinearSVC().fit(x[known], y[known]).predict(x_new[known_new])
        scores[own] = 100 * float(np.mean(predicted == y_new[known_new]))
    return scores


def run(n: int, draw: int, work: Path, starts: list[str], known: list[str], log: Path | None,
        min_count: int | None = None, freeze_trunk: bool | None = None, trunk_lr: float | None = None) -> list[dict]:
    products = unseen_products()
    brands = top_brands(products)
    order = np.random.default_rng(draw).permutation(len(products))
    labelled = [products[i] for i in order[:n]]
    arrivals = [products[i] for i in order[n:n + NEW_ARRIVALS]]
    shop = write_shop(labelled, brands, work / "shop.csv")
    new = write_shop(arrivals, brands, work / "arrivals.csv")
    results = [record({"n": n, "draw": draw, "model": "TF-IDF + SVM, title", "seconds": None,
                       **svm_baseline(labelled, arrivals, brands)}, log)]
    for start in starts:
        if start == "imagenet" and n > IMAGENET_MAX_N:
            continue
        fresh = start in ("scratch", "imagenet")
        # From scratch or ImageNet a model has no title branch unless model_args build one: photo only.
        for title, with_known in product(("",) if fresh else ("", "name"), ("off",) if fresh else known):
            out = work / f"{start}-{title or 'photo'}-{with_known}"
            cfg = TrainConfig(data=str(shop), id_column="sku", image_column="photo", title_column=title,
                              tasks=TASKS, out=str(out), start=start, seed=draw, progress=False,
                              known_heads=with_known == "on", min_count=min_count, freeze_trunk=freeze_trunk,
                              **({} if trunk_lr is None else {"trunk_lr": trunk_lr}),
                              model="efficientnet-lite0" if start == "imagenet" else TrainConfig.model)
            began = time.time()
            best = train(cfg)
            seconds = time.time() - began
            summary = evaluate(new, model=best, out=work / "report", progress=False, plot=False)
            heads = (", known heads" if with_known == "on" and not fresh else "") + (
                f", min_count {min_count}" if min_count is not None else "") + (
                f", freeze_trunk {'on' if freeze_trunk else 'off'}" if freeze_trunk is not None else "") + (
                f", trunk_lr {trunk_lr:g}" if trunk_lr is not None else "")
            results.append(record({
                "n": n, "draw": draw, "model": f"from {start}{heads}, photo{' + title' if title else ''}",
                "seconds": round(seconds), "val": 100 * float(np.mean(list(load_meta(best)["val_acc"].values()))),
                **{t: 100 * m["accuracy"] for t, m in summary["tasks"].items()},
                **{f"{t} strict": 100 * strict_accuracy(m) for t, m in summary["tasks"].items()}}, log))
    return results


def strict_accuracy(metrics: dict) -> float:
    """Accuracy with a right "Other" counted wrong: the pooled class names no real class (such a tag always needs
    review), so a model that pools more classes is not rewarded for it."""
    other = metrics["per_class"].get(OTHER)
    right_other = other["recall"] * other["support"] if other else 0.0
    return metrics["accuracy"] - right_other / metrics["n"]


def record(result: dict, log: Path | None) -> dict:
    print(result, flush=True)
    if log:
        with log.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def table(rows: list[dict], strict: bool = False) -> str:
    """Per n and model, the mean over draws of each task's accuracy (strict: a right Other counted wrong), with the
    spread (min-max) where there are several draws, the mean training time and the number of draws."""
    by_draw: dict[tuple, dict[int, dict]] = {}
    for r in rows:  # a draw's baseline comes once however many runs of that draw logged it
        by_draw.setdefault((r["n"], r["model"]), {})[r["draw"]] = r
    groups = {key: list(runs.values()) for key, runs in by_draw.items()}
    lines = [f"| n | model | {' | '.join(TASKS)} | training | draws |", f"|---|---|{'---|' * len(TASKS)}---|---|"]
    for (n, model), runs in sorted(groups.items(), key=lambda kv: kv[0][0]):
        cells = []
        for t in TASKS:
            key = f"{t} strict" if strict and runs[0].get("seconds") is not None else t  # the SVM has no Other
            values = [r[key] for r in runs if r.get(key) is not None]
            spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.1f}{spread}" if values else "")
        seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
        lines.append(f"| {n:,} | {model} | {' | '.join(cells)} | "
                     f"{f'{np.mean(seconds):.0f} s' if seconds else ''} | {len(runs)} |")
    return "\n".join(lines)


def tables(rows: list[dict]) -> str:
    return (f"Accuracy:\n\n{table(rows)}\n\nStrict accuracy (a right pooled Other counted wrong):\n\n"
            f"{table(rows, strict=True)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[900], help="labelled products per shop")
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--from", dest="starts", nargs="+", default=["shipped", "scratch"],
                        choices=["shipped", "scratch", "imagenet"])
    parser.add_argument("--known-heads", dest="known", nargs="+", choices=["on", "off"], default=["on"],
                        help="from a model: with the start model's heads as inputs (on, the default), without, or both")
    parser.add_argument("--min-count", type=int, help="min_count for every run (default: training's own choice)")
    parser.add_argument("--freeze-trunk", choices=["on", "off"],
                        help="freeze_trunk for every run (default: training's own choice, train.freeze_for)")
    parser.add_argument("--trunk-lr", type=float,
                        help="trunk_lr for every run: the trunk's share of the learning rate (default: training's)")
    parser.add_argument("--log", type=Path, help="append each result to this JSON Lines file as it comes")
    parser.add_argument("--table", type=Path, metavar="LOG", help="only print the table of a --log file")
    args = parser.parse_args()
    if args.table:
        print(tables([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    rows = []
    for draw in range(args.draws):
        for n in args.n:
            with TemporaryDirectory() as tmp:
                rows += run(n, draw, Path(tmp), args.starts, args.known, args.log, args.min_count,
                            None if args.freeze_trunk is None else args.freeze_trunk == "on", args.trunk_lr)
    print("\n" + tables(rows))


if __name__ == "__main__":
    main()
