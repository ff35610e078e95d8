"""Issue 10, inference side: tampered model folders, predict and the file system, the command line as a new user
meets it, and evaluate's choice of photos. Each test failed on the code before the fix."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.inference.predict import predict
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import ModelError
from fashiontag.training.evaluate import evaluate
from helpers import nan_model


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashiontag", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


# ------------------------------------------------------------------------------------------- tampered model folders

def _tamper(trained, tmp_path, change) -> str:
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    return str(folder)


def _reverse(meta):
    meta["vocabs"]["articleType"] = meta["vocabs"]["articleType"][::-1]


def _shorten(meta):
    meta["vocabs"]["articleType"] = meta["vocabs"]["articleType"][:-1]


TAMPERED = {
    "temperature NaN": (lambda m: m["temperatures"].update(season=float("nan")), "temperature of task 'season'"),
    "temperature 0": (lambda m: m["temperatures"].update(gender=0), "temperature of task 'gender'"),
    "permuted vocabulary": (_reverse, "reordered or edited"),
    "shortened vocabulary": (_shorten, "head in model.safetensors has"),
    "input size 0x0": (lambda m: m.update(input_hw=[0, 0]), "input_hw"),
    "task without a head": (lambda m: m["vocabs"].update(colour=["red", "blue"]), "do not match the weights"),
    "hierarchy naming a missing class": (lambda m: m["hierarchy"].append(["Spacesuit", "Topwear", "Apparel"]),
                                         "hierarchy row"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_model_folder_fails_with_one_clear_line(trained, catalog, tmp_path, case):
    change, words = TAMPERED[case]
    folder = _tamper(trained, tmp_path, change)
    with pytest.raises(ModelError, match=words):
        Tagger.load(folder)
    result = CliRunner().invoke(app, ["predict", str(catalog.root / "images" / "1000.jpg"), "--model", folder])
    assert result.exit_code == 2 and result.output.startswith("error: ") and words in result.output
    assert "path,id" not in result.output  # not a row was written


def test_tampered_model_fails_predict_evaluate_and_serve_without_a_traceback(trained, catalog, tmp_path):
    folder = _tamper(trained, tmp_path, _reverse)
    for args in (["predict", str(catalog.root / "images" / "1000.jpg"), "--model", folder],
                 ["evaluate", "--data", str(catalog.root), "--model", folder, "--out", str(tmp_path / "r")],
                 ["serve", "--model", folder, "--port", "1"]):
        proc = _cli(*args)
        assert proc.returncode == 2 and "error: " in proc.stderr and "reordered" in proc.stderr, args
        assert "Traceback" not in proc.stderr


def test_a_truncated_weights_file_fails_predict_evaluate_and_serve_in_one_line(trained, catalog, tmp_path):
    """Issue 20 #8: a model.safetensors cut short gave a SafetensorError traceback."""
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelError, match="model.safetensors: damaged: .* bytes where its header describes .* "
                                         r"\(cut short\)"):
        Tagger.load(folder)
    for args in (["predict", str(catalog.root / "images" / "1000.jpg"), "--model", str(folder)],
                 ["evaluate", "--data", str(catalog.root), "--model", str(folder), "--out", str(tmp_path / "r")],
                 ["serve", "--model", str(folder), "--port", "1"]):
        proc = _cli(*args)
        assert proc.returncode == 2 and f"error: {weights}: damaged" in proc.stderr and "cut short" in proc.stderr
        assert "Traceback" not in proc.stderr and "SafetensorError" not in proc.stderr, args


def test_a_model_giving_nan_tags_no_photo(trained, catalog, tmp_path):
    """Issue 20 #2: NaN outputs were written as tags with confidence nan, needs_review False, one label for all."""
    folder = nan_model(trained, tmp_path / "model")
    out = tmp_path / "tags.csv"
    counts = predict([str(catalog.root / "images")], out=str(out), model=str(folder), min_confidence=0.5)
    rows = list(csv.DictReader(out.open()))
    assert counts["rows"] == len(rows) > 300 and counts["errors"] == len(rows)
    assert all(r["error"] for r in rows) and not any(r["gender"] or r["gender_confidence"] for r in rows)
    assert sum("NaN or infinite" in r["error"] for r in rows) > 300  # the unreadable photos keep their own error
    proc = _cli("predict", str(catalog.root / "images" / "1000.jpg"), "--model", str(folder))
    [row] = csv.DictReader(proc.stdout.splitlines())
    assert proc.returncode == 1 and row["gender_confidence"] == "" and "NaN or infinite" in row["error"]


# ---------------------------------------------------------------------------------------- predict, file system

@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: permissions cannot make one unreadable")
def test_unreadable_folder_is_reported_and_the_rest_tagged(trained, catalog, tmp_path):
    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    shutil.copy(catalog.root / "images" / "1000.jpg", photos / "a.jpg")
    shutil.copy(catalog.root / "images" / "1001.jpg", photos / "locked" / "b.jpg")
    (photos / "locked").chmod(0)
    try:
        proc = _cli("predict", str(photos), "--model", str(trained))
    finally:
        (photos / "locked").chmod(0o755)
    assert proc.returncode == 1 and "locked: folder cannot be read" in proc.stderr
    assert [r["id"] for r in csv.DictReader(proc.stdout.splitlines())] == ["a"]


def test_unreadable_folder_is_reported_even_as_root(trained, catalog, tmp_path, monkeypatch):
    """The same, with the folder's listing failing as it does for a user without the permission."""
    import fashiontag.inference.predict as predict_mod
    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    shutil.copy(catalog.root / "images" / "1000.jpg", photos / "a.jpg")
    shutil.copy(catalog.root / "images" / "1001.jpg", photos / "locked" / "b.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(predict_mod.os, "scandir", scandir)
    out = tmp_path / "tags.csv"
    counts = predict([str(photos)], out=str(out), model=str(trained))
    assert counts["unreadable_folders"] == 1 and counts["rows"] == 1
    assert [r["id"] for r in csv.DictReader(out.open())] == ["a"]


@pytest.mark.parametrize("out, fmt, words", [
    ("{tmp}", None, "is a folder"),
    ("{tmp}/tags.xml", None, "unknown extension '.xml'"),
    ("{tmp}/tags.json", None, "unknown extension '.json'"),
    ("{tmp}/tags.csv", "xml", "unknown format 'xml'"),
    ("{tmp}/tags.csv", "jsonl", "does not match"),
    ("{tmp}/no/such/folder/tags.csv", None, "does not exist"),
])
def test_bad_output_targets_are_refused_before_tagging_and_leave_nothing(trained, catalog, tmp_path, out, fmt,
                                                                        words):
    target = tmp_path / "target"
    target.mkdir()
    out = out.format(tmp=target)
    args = ["predict", str(catalog.root / "images"), "--model", str(trained), "--out", out]
    result = CliRunner().invoke(app, args + (["--format", fmt] if fmt else []))
    assert result.exit_code == 2 and words in result.output
    assert "tagged" not in result.output  # refused before any photo was read
    assert list(target.iterdir()) == []  # no .partial file left behind


def test_output_format_follows_the_extension(trained, catalog, tmp_path):
    photo = str(catalog.root / "images" / "1000.jpg")
    for name in ("tags.tsv", "tags.jsonl", "tags.csv"):
        assert predict([photo], out=str(tmp_path / name), model=str(trained))["rows"] == 1
    assert (tmp_path / "tags.tsv").read_text().startswith("path\tid\tgender\t")
    assert json.loads((tmp_path / "tags.jsonl").read_text())["id"] == "1000"
    assert (tmp_path / "tags.csv").read_text().startswith("path,id,gender,")


def test_format_given_names_the_format_of_an_out_without_extension(trained, catalog, tmp_path):
    """Issue 20 #17: `--format csv --out tags` was told to use --format, which it had."""
    photo = str(catalog.root / "images" / "1000.jpg")
    result = CliRunner().invoke(app, ["predict", photo, "--model", str(trained), "--format", "tsv", "--out",
                                      str(tmp_path / "tags")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tags").read_text().startswith("path\tid\tgender\t")
    result = CliRunner().invoke(app, ["predict", photo, "--model", str(trained), "--out", str(tmp_path / "tags")])
    assert result.exit_code == 2 and "unknown extension '(none)'; name the file .csv, .tsv, .jsonl, or give --format" \
        in result.output


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_a_file_name_that_is_not_utf8_is_written_escaped_and_the_rest_tagged(trained, catalog, tmp_path, fmt):
    """Issue 20 #7: one Latin-1 name (read as a lone surrogate) stopped the run, and nothing was written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, pid in ((b"caf\xe9.jpg", 1000), (b"plain.jpg", 1001), (b"caf\xe9-broken.jpg", None)):
        target = os.path.join(os.fsencode(photos), name)
        if pid is None:
            open(target, "wb").write(b"not a photo")
        else:
            shutil.copy(catalog.root / "images" / f"{pid}.jpg", target)
    out = tmp_path / f"tags.{fmt}"
    counts = predict([str(photos)], out=str(out), model=str(trained))
    assert counts["rows"] == 3 and counts["errors"] == 1
    text = out.read_text(encoding="utf-8")  # valid UTF-8, every row there
    rows = ([json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else
            list(csv.DictReader(text.splitlines(), delimiter="\t" if fmt == "tsv" else ",")))
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"caf\\xe9", "plain", "caf\\xe9-broken"}
    assert by_id["caf\\xe9"]["path"] == f"{photos}/caf\\xe9.jpg" and by_id["caf\\xe9"]["gender"]
    assert by_id["caf\\xe9"]["error"] == "" and "unreadable image" in by_id["caf\\xe9-broken"]["error"]
    escaped = by_id["caf\\xe9"]["path"].encode().decode("unicode_escape").encode("latin-1")
    assert os.path.exists(escaped)  # the escapes give the name's bytes back


def test_sigterm_leaves_no_partial_file(trained, catalog, tmp_path):
    """Issue 20 #13: predict stopped with SIGTERM left .tags.csv.partial behind."""
    import signal
    import time
    out = tmp_path / "tags.csv"
    proc = subprocess.Popen([sys.executable, "-m", "fashiontag", "predict", *[str(catalog.root / "images")] * 50,
                             "--model", str(trained), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".tags.csv.*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    time.sleep(1)  # into the tagging
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_output(trained, catalog, tmp_path, monkeypatch):
    """Issue 20 #13: a full disk (ENOSPC) was an OSError traceback. /dev/full answers every write so."""
    import builtins
    monkeypatch.setattr("fashiontag.inference.predict.open", lambda path, *args, **kw: builtins.open("/dev/full", *args, **kw),
                        raising=False)
    out = tmp_path / "tags.csv"
    result = CliRunner().invoke(app, ["predict", str(catalog.root / "images"), "--model", str(trained), "--out",
                                      str(out), "--no-progress"])
    assert result.exit_code == 2 and f"error: cannot write {out}: No space left on device" in result.output
    assert list(tmp_path.iterdir()) == []


def test_missing_paths_and_nothing_to_tag_exit_non_zero(trained, catalog, tmp_path):
    photo = str(catalog.root / "images" / "1000.jpg")
    proc = _cli("predict", photo, str(tmp_path / "nope.jpg"), "--model", str(trained))
    assert proc.returncode == 1 and "nope.jpg: no such file or folder" in proc.stderr
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    # the good photo's row is written all the same
    assert [r["error"] for r in rows] == ["", f"file not found: {tmp_path / 'nope.jpg'}"]
    (tmp_path / "empty").mkdir()
    proc = _cli("predict", str(tmp_path / "empty"), "--model", str(trained))
    assert proc.returncode == 1 and "nothing to tag" in proc.stderr


def test_two_files_with_one_id_are_warned_about(trained, catalog, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(catalog.root / "images" / "1000.jpg", photos / "x.jpg")
    shutil.copy(catalog.root / "images" / "1001.jpg", photos / "x.png")
    proc = _cli("predict", str(photos), "--model", str(trained))
    assert proc.returncode == 0 and "share the id 'x'" in proc.stderr


def test_min_confidence_keeps_the_guess_and_adds_needs_review_columns(trained, catalog, tmp_path):
    images = str(catalog.root / "images")
    predict([images], out=str(tmp_path / "plain.csv"), model=str(trained), min_confidence=0.0)
    predict([images], out=str(tmp_path / "strict.csv"), model=str(trained), min_confidence=0.9)
    plain = {r["path"]: r for r in csv.DictReader((tmp_path / "plain.csv").open())}
    strict = list(csv.DictReader((tmp_path / "strict.csv").open()))
    assert "gender_needs_review" in strict[0] and "gender_needs_review" not in next(iter(plain.values()))
    flags = []
    for row in strict:
        if row["error"]:
            continue
        assert row["articleType"] == plain[row["path"]]["articleType"] != "unknown"
        flags.append(row["articleType_needs_review"] == str(float(row["articleType_confidence"]) < 0.9))
    assert flags and all(flags)


def test_progress_bar_has_a_total(trained, catalog, capsys):
    predict([str(catalog.root / "images")], out=None, model=str(trained), progress=True)
    bar = capsys.readouterr().err
    n = len(list((catalog.root / "images").iterdir()))
    assert f"{n}/{n}" in bar


def test_cli_version_and_help_show_defaults():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip().endswith(__import__("fashiontag").__version__)
    proc = _cli("predict", "--help")
    assert "default: the shipped model" in proc.stdout and "<bool>" not in proc.stdout


# ------------------------------------------------------------------------------------------------------- evaluate

def test_evaluate_on_its_own_catalog_scores_the_unseen_photos(trained, catalog, tmp_path):
    split = json.loads((trained / "split.json").read_text())
    unseen = evaluate(catalog.root, model=trained, out=tmp_path / "u", progress=False, plot=False)
    test = evaluate(catalog.root, model=trained, out=tmp_path / "t", side="test", progress=False, plot=False)
    everything = evaluate(catalog.root, model=trained, out=tmp_path / "a", side="all", progress=False, plot=False)
    # the synthetic catalog's bad photos are in no side of the split
    assert test["n"] < unseen["n"] == len(split["val"]) + len(split["test"]) < everything["n"]
    assert "unseen" in unseen["side"]


def test_evaluate_on_a_shop_catalog_whose_ids_collide_scores_every_photo(trained, tmp_path):
    from synthetic import make_catalog
    split = json.loads((trained / "split.json").read_text())
    shop = make_catalog(tmp_path / "shop", n=80, seed=9, bad=False, first_id=1380)
    in_split = {i for side in ("train", "val", "test") for i in split[side]}
    assert 10 < len(set(map(str, shop.good_ids)) & in_split) < 40  # a quarter of the shop's ids collide with training ids
    summary = evaluate(shop.root, model=trained, out=tmp_path / "report", side="test", progress=False, plot=False)
    assert summary["n"] == 80 and "whole catalog" in summary["side"]


def test_bad_side_is_a_clean_error(trained, catalog, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--data", str(catalog.root), "--model", str(trained),
                                      "--side", "tset", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown side 'tset'" in result.output
