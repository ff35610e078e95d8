"""Catalog audit (issue 24): labels planted wrong in the synthetic catalog come out on top, on the sides the model
never trained on and, cross-fitted, on its training side."""

import csv
import json
import shutil

import numpy as np
import pytest

from fashiontag.data.catalog import CatalogError
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import SINGLE
from fashiontag.training.audit import COLUMNS, audit
from fashiontag.training.crossfit import FOLDS, cross_fit
from fashiontag.training.evaluate import model_dataset
from synthetic import ARTICLES, COLOURS

N_FLIPS = 6


def flipped_copy(catalog, trained, root, sides: tuple[str, ...]):
    """A copy of the training catalog in `root` with N_FLIPS articleType and N_FLIPS baseColour labels changed on
    `sides` of the model's split, and one re-listed photo's copy relabelled; returns (root, {task: flipped ids}, the
    relabelled re-listing's ids)."""
    shutil.copytree(catalog.root / "images", root / "images")
    split = json.loads((trained / "split.json").read_text())
    chosen = {int(i) for side in sides for i in split[side]}
    dup_related = set(catalog.relisted) | set(catalog.relisted.values())
    candidates = sorted(i for i in catalog.good_ids if i in chosen and i not in dup_related
                        and i not in catalog.comma_name_ids)
    rng = np.random.default_rng(0)
    picked = rng.choice(candidates, 2 * N_FLIPS, replace=False).tolist()
    # the tiny model learns article and colour, not gender (drawn only as a stripe)
    flips = {"baseColour": set(map(str, picked[:N_FLIPS])), "articleType": set(map(str, picked[N_FLIPS:]))}
    relisted_id, original_id = next(iter(catalog.relisted.items()))
    lines = (catalog.root / "styles.csv").read_text().splitlines()
    for k, line in enumerate(lines[1:], 1):
        cells = line.split(",")
        if cells[0] in flips["baseColour"]:
            cells[5] = next(c for c in COLOURS if c != cells[5])
        elif cells[0] in flips["articleType"]:
            cells[4] = next(a for a in ARTICLES if a != cells[4] and ARTICLES[a][0] != cells[3])
        elif cells[0] == str(relisted_id):
            cells[5] = next(c for c in COLOURS if c != cells[5])
        lines[k] = ",".join(cells)
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root, flips, {str(relisted_id), str(original_id)}


@pytest.fixture(scope="module")
def flipped(catalog, trained, tmp_path_factory):
    """Flips on the sides the model never trained on (the default audit scores only those on its own catalog)."""
    return flipped_copy(catalog, trained, tmp_path_factory.mktemp("flipped"), ("val", "test"))


@pytest.fixture(scope="module")
def flipped_in_training(catalog, trained, tmp_path_factory):
    """Flips on the model's training side, which only cross-fitting can audit."""
    return flipped_copy(catalog, trained, tmp_path_factory.mktemp("flipped_train"), ("train",))


@pytest.fixture(scope="module")
def audited(flipped, trained):
    root, _, _ = flipped
    return audit(root, model=trained, progress=False)


@pytest.fixture(scope="module")
def audited_training_side(flipped_in_training, trained):
    return audit(flipped_in_training[0], model=trained, side="train", progress=False)


def assert_flips_rank_first(result, flips: dict[str, set[str]]) -> None:
    for task, ids in flips.items():
        s = result.scores[task]
        ranked = [result.ids[r] for r in s.rows[np.argsort(-s.score, kind="stable")]]
        assert len(set(ranked[:N_FLIPS]) & ids) >= N_FLIPS - 1, (task, ranked[:2 * N_FLIPS], ids)
        assert ids <= set(ranked[:2 * N_FLIPS]), (task, ranked[:2 * N_FLIPS], ids)
        flagged = {f.id: f for f in result.flags if f.task == task}
        assert ids <= set(flagged)
        assert all(flagged[i].suggested_label != flagged[i].catalog_label for i in ids)


def test_flipped_labels_rank_first_with_another_label_suggested(flipped, audited, trained):
    assert "validation and test" in audited.scope  # its own catalog: only what the model never trained on
    assert audited.crossfit is None
    train_ids = set(json.loads((trained / "split.json").read_text())["train"])
    assert not {audited.ids[r] for s in audited.scores.values() for r in s.rows} & train_ids
    assert_flips_rank_first(audited, flipped[1])


def test_cross_fitted_flips_on_the_training_side_rank_first(flipped_in_training, audited_training_side, trained):
    result = audited_training_side
    train_ids = set(json.loads((trained / "split.json").read_text())["train"])
    scored = {result.ids[r] for s in result.scores.values() for r in s.rows}
    assert scored <= train_ids and len(scored) > 0.9 * len(train_ids) and "cross-fitted" in result.scope
    assert_flips_rank_first(result, flipped_in_training[1])


def test_cross_fitting_never_scores_a_row_with_heads_that_saw_it(flipped_in_training, audited_training_side, trained):
    cf = audited_training_side.crossfit
    assert len(cf.fitted_on) == FOLDS and set(np.unique(cf.fold)) == set(range(FOLDS))
    hashes = model_dataset(Tagger.load(trained), flipped_in_training[0], progress=False).cache.hashes
    for k, learnt in enumerate(cf.fitted_on):
        scored = cf.rows[cf.fold == k]
        assert len(scored) and not set(scored.tolist()) & set(learnt.tolist())
        # nor the same photo re-listed under another id
        assert not {hashes[r] for r in scored} & {hashes[r] for r in learnt}
    for s in audited_training_side.scores.values():
        assert set(s.rows.tolist()) <= set(cf.rows.tolist())


def test_a_rows_out_of_fold_probabilities_do_not_depend_on_its_own_label():
    """Changing every label of fold 0 leaves fold 0's probabilities exactly as they were, and moves the others'."""
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    features = rng.normal(size=(n, 4)).astype(np.float32) + np.eye(3, 4, dtype=np.float32)[y] * 2
    hashes = np.arange(n, dtype=np.uint64)
    hashes[1] = hashes[0]  # one photo listed twice: both in one fold
    rows = np.arange(n) + 1000
    first = cross_fit(features, {"t": y}, {"t": 3}, {"t": SINGLE}, rows, hashes)
    assert first.fold[0] == first.fold[1]
    fold0 = first.fold == 0
    changed = np.where(fold0, (y + 1) % 3, y)
    second = cross_fit(features, {"t": changed}, {"t": 3}, {"t": SINGLE}, rows, hashes)
    assert np.array_equal(first.fold, second.fold)
    np.testing.assert_array_equal(first.probs["t"][fold0], second.probs["t"][fold0])
    assert np.abs(first.probs["t"][~fold0] - second.probs["t"][~fold0]).max() > 0.05
    right = (first.probs["t"].argmax(1) == y).mean()
    assert right > 0.8, right  # and the heads learnt something


def test_flags_grouped_by_product_most_likely_wrong_first(audited):
    firsts, seen = [], []
    for f in audited.flags:
        if not seen or seen[-1] != f.id:
            assert f.id not in seen, f"{f.id} appears in two places"
            seen.append(f.id)
            firsts.append(f.score)
    assert len(firsts) > 1 and firsts == sorted(firsts, reverse=True)


def test_identical_photos_with_different_labels_are_grouped(flipped, audited):
    _, _, pair = flipped
    group = next(g for g in audited.duplicates if set(g["ids"]) == pair)
    assert list(group["labels"]) == ["baseColour"]


def test_labels_their_own_title_contradicts_are_listed_from_the_whole_catalog(flipped, audited):
    _, flips, relisted = flipped  # the labels were changed, the titles ("Brand Men Red Tshirts") kept
    found = {(c["task"], c["id"]) for c in audited.titles}
    planted = {(t, i) for t, ids in flips.items() for i in ids}
    assert planted <= found and len(found - planted) == 1, found - planted
    (task, relabelled), = found - planted  # the re-listed photo whose copy got another colour
    assert task == "baseColour" and relabelled in relisted
    one = next(c for c in audited.titles if c["task"] == "articleType")
    assert one["suggested_label"] in one["title"] and one["catalog_label"] not in one["title"]
    assert one["score"] == one["runners_up"] == "" and one["path"].endswith(f"{one['id']}.jpg")
    assert "## Labels their own title contradicts: 13" in audited.to_markdown()


def test_tasks_the_model_lacks_are_one_clear_error(flipped, trained):
    with pytest.raises(ValueError, match="no task 'pattern'; its tasks: gender"):
        audit(flipped[0], model=trained, tasks=("gender", "pattern"), progress=False)
    with pytest.raises(ValueError, match="side 'training': use unseen, val, test, train, all"):
        audit(flipped[0], model=trained, side="training", progress=False)


def test_a_catalog_without_the_models_columns_or_classes_is_one_clear_error(flipped, trained, tmp_path):
    lines = (flipped[0] / "styles.csv").read_text().splitlines()
    (tmp_path / "images").symlink_to(flipped[0] / "images")
    rows = [line.split(",") for line in lines]
    for cells in rows[1:]:
        if len(cells) > 5:  # the synthetic file's malformed lines stay as they are
            cells[4] = "Kurta " + cells[4]  # a shop's own article types: none is the model's
    (tmp_path / "styles.csv").write_text("\n".join(",".join(cells) for cells in rows) + "\n")
    with pytest.raises(ValueError, match="none of its articleType labels are classes of the model"):
        audit(tmp_path, model=trained, tasks=("articleType",), progress=False)
    (tmp_path / "styles.csv").write_text("\n".join(",".join(cells[:4] + cells[5:]) for cells in rows) + "\n")
    with pytest.raises(CatalogError, match="styles.csv: header lacks column.s. articleType"):
        audit(tmp_path, model=trained, progress=False)


def test_cli_writes_the_flags_with_their_columns_in_order(flipped, trained, tmp_path):
    from typer.testing import CliRunner

    from fashiontag.cli import app
    out = tmp_path / "audit.csv"
    result = CliRunner().invoke(app, ["audit", "--data", str(flipped[0]), "--model", str(trained), "--tasks",
                                      "baseColour,articleType", "--side", "all", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "cross-fitted (the training side" in result.output
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS == ["id", "task", "catalog_label", "suggested_label", "score", "path", "title",
                                  "runners_up", "cleanlab_issue"]
    assert {r[1] for r in rows[1:]} <= {"baseColour", "articleType"} and float(rows[1][4]) >= float(rows[-1][4])
    assert flipped[1]["baseColour"] <= {r[0] for r in rows[1:] if r[1] == "baseColour"}
    assert "articleType" in result.output and "at score >= 0.95" in result.output
    assert "# Catalog audit" in (tmp_path / "audit.md").read_text()
    with open(tmp_path / "audit-titles.csv", newline="") as f:
        titles = list(csv.reader(f))
    assert titles[0] == COLUMNS and len(titles) == 1 + 2 * N_FLIPS + 1  # review loads it as it loads audit.csv
    assert f"labels their own title contradicts: {2 * N_FLIPS + 1}" in result.output
    bad = CliRunner().invoke(app, ["audit", "--data", str(flipped[0]), "--model", str(trained), "--tasks", "pattern",
                                   "--out", str(tmp_path / "x.csv"), "--no-progress"])
    assert bad.exit_code == 2 and "error: the model has no task 'pattern'" in bad.output
    assert not (tmp_path / "x.csv").exists()
