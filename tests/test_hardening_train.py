"""Training never breaks quietly (issue 10): empty tasks, calibration, the run folder's lock, resume."""

import json

import pytest

from helpers import tiny_config
from synthetic import make_catalog


@pytest.fixture(scope="module")
def no_usage_catalog(tmp_path_factory):
    """A small clean catalog whose usage column is empty in every row."""
    cat = make_catalog(tmp_path_factory.mktemp("no-usage"), n=120, bad=False)
    styles = cat.root / "styles.csv"
    lines = styles.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[8] = ""
    styles.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    return cat


def test_task_without_labels_is_left_out_with_a_warning(no_usage_catalog, tmp_path, capsys):
    from fashiontag.train import train
    best = train(tiny_config(no_usage_catalog.root, tmp_path / "run", epochs=1))
    meta = json.loads((best / "model.json").read_text())
    assert "usage" not in meta["vocabs"] and "gender" in meta["vocabs"]
    assert "warning: task usage left out" in capsys.readouterr().err


def test_no_task_with_labels_is_a_clear_error(no_usage_catalog):
    from fashiontag.dataset import load_dataset
    with pytest.raises(ValueError, match="no task has two classes with 100000 training photos"):
        load_dataset(no_usage_catalog.root, min_count=100000, progress=False)


def test_notebook_protocol_keeps_its_three_tasks(no_usage_catalog):
    from fashiontag.dataset import SEED_TASKS, load_dataset
    data = load_dataset(no_usage_catalog.root, protocol="notebook", min_count=2, progress=False)
    assert set(data.vocabs) == set(SEED_TASKS)
