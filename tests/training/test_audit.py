"""Catalog audit (issue 24): labels planted wrong in the synthetic catalog come out on top."""

import csv
import json
import shutil

import numpy as np
import pytest

from fashiontag.data.catalog import CatalogError
from fashiontag.training.audit import COLUMNS, audit
from synthetic import ARTICLES, COLOURS

N_FLIPS = 6


@pytest.fixture(scope="module")
def flipped(catalog, trained, tmp_path_factory):
    """A copy of the training catalog with N_FLIPS articleType and N_FLIPS baseColour labels changed on the sides the
    model never trained on (only those are audited on its own catalog), and one re-listed photo's copy relabelled;
    returns (root, {task: flipped ids}, the relabelled re-listing's ids)."""
    root = tmp_path_factory.mktemp("flipped")
    shutil.copytree(catalog.root / "images", root / "images")
    split = json.loads((trained / "split.json").read_text())
    unseen = {int(i) for side in ("val", "test") for i in split[side]}
    dup_related = set(catalog.relisted) | set(catalog.relisted.values())
    candidates = sorted(i for i in catalog.good_ids if i in unseen and i not in dup_related
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
def audited(flipped, trained):
    root, _, _ = flipped
    return audit(root, model=trained, progress=False)


def test_flipped_labels_rank_first_with_another_label_suggested(flipped, audited, trained):
    _, flips, _ = flipped
    assert "validation and test" in audited.scope  # its own catalog: only what the model never trained on
    train_ids = set(json.loads((trained / "split.json").read_text())["train"])
    for task, ids in flips.items():
        s = audited.scores[task]
        ranked = [audited.ids[r] for r in s.rows[np.argsort(-s.score, kind="stable")]]
        assert not set(ranked) & train_ids
        assert len(set(ranked[:N_FLIPS]) & ids) >= N_FLIPS - 1, (task, ranked[:2 * N_FLIPS], ids)
        assert ids <= set(ranked[:2 * N_FLIPS]), (task, ranked[:2 * N_FLIPS], ids)
        flagged = {f.id: f for f in audited.flags if f.task == task}
        assert ids <= set(flagged)
        assert all(flagged[i].suggested_label != flagged[i].catalog_label for i in ids)


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


def test_tasks_the_model_lacks_are_one_clear_error(flipped, trained):
    with pytest.raises(ValueError, match="no task 'pattern'; its tasks: gender"):
        audit(flipped[0], model=trained, tasks=("gender", "pattern"), progress=False)
    with pytest.raises(ValueError, match="side 'train': use unseen, val or test"):
        audit(flipped[0], model=trained, side="train", progress=False)


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
                                      "baseColour,articleType", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS == ["id", "task", "catalog_label", "suggested_label", "score", "path", "title",
                                  "runners_up", "cleanlab_issue"]
    assert {r[1] for r in rows[1:]} <= {"baseColour", "articleType"} and float(rows[1][4]) >= float(rows[-1][4])
    assert flipped[1]["baseColour"] <= {r[0] for r in rows[1:] if r[1] == "baseColour"}
    assert "articleType" in result.output and "at score >= 0.95" in result.output
    assert "# Catalog audit" in (tmp_path / "audit.md").read_text()
    bad = CliRunner().invoke(app, ["audit", "--data", str(flipped[0]), "--model", str(trained), "--tasks", "pattern",
                                   "--out", str(tmp_path / "x.csv"), "--no-progress"])
    assert bad.exit_code == 2 and "error: the model has no task 'pattern'" in bad.output
    assert not (tmp_path / "x.csv").exists()
