"""ONNX export and the onnxruntime engines: the same numbers as PyTorch, the same labels, and streaming tagging."""

import csv
import shutil
from itertools import islice, repeat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.data.photos import PhotoInput, iter_image_paths, load_batch
from fashiontag.inference.engines import OnnxEngine
from fashiontag.inference.onnx_export import ONNX_VERSION_KEY, digest_path, export_damage, export_onnx, file_sha256
from fashiontag.inference.predict import predict, tag_paths
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import ModelError, model_version
from fashiontag.models.checkpoint import load_model
from helpers import write_over_onnx


@pytest.fixture()
def model_copy(trained, tmp_path):
    """A private copy of the trained model: exports land in it, not in the session's shared folder."""
    dest = tmp_path / "model"
    shutil.copytree(trained, dest)
    return dest


def _photos(catalog, n=64):
    return load_batch(list(islice(iter_image_paths([catalog.root / "images"]), n)), PhotoInput())[0]


def _torch_probs(model, meta, x: np.ndarray) -> dict:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return {t: (v / meta["temperatures"][t]).softmax(1).numpy() for t, v in out.items()}


def _onnx_probs(session, meta, x: np.ndarray) -> dict:
    tasks = list(meta["vocabs"])
    out = session.run(tasks, {"image": x})
    return {t: torch.from_numpy(v / meta["temperatures"][t]).softmax(1).numpy() for t, v in zip(tasks, out)}


def test_onnx_export_matches_pytorch_on_every_head(trained, catalog, tmp_path):
    path = export_onnx(trained, out=tmp_path / "tagger.onnx")
    proto = onnx.load(str(path))
    model, meta = load_model(trained)
    assert [o.name for o in proto.graph.output] == list(meta["vocabs"])
    assert [i.name for i in proto.graph.input] == ["image"]
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map[ONNX_VERSION_KEY] == model_version(trained)
    photos = _photos(catalog).transpose(0, 3, 1, 2).astype(np.float32) / 255
    rng = np.random.default_rng(0)
    for x in (rng.random((1, 3, 80, 60), dtype=np.float32), rng.random((7, 3, 80, 60), dtype=np.float32), photos):
        want, got = _torch_probs(model, meta, x), _onnx_probs(session, meta, x)
        for t in want:
            assert got[t].shape == want[t].shape
            assert np.abs(got[t] - want[t]).max() < 1e-4, t
    assert not (trained / "model.onnx").exists()  # `out` was honoured


def test_predict_with_onnx_engine_gives_the_torch_labels(model_copy, catalog, tmp_path, monkeypatch):
    monkeypatch.setattr("fashiontag.inference.engines.bf16_supported", lambda device: False)  # compare with fp32 torch
    images = str(catalog.root / "images")
    predict([images], out=str(tmp_path / "torch.csv"), model=str(model_copy), top_k=2, progress=False)
    result = CliRunner().invoke(app, ["predict", images, "--model", str(model_copy), "--engine", "onnx",
                                      "--out", str(tmp_path / "onnx.csv"), "--top-k", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (model_copy / "model.onnx").exists()  # exported on the fly, into the (writable) model folder
    a = {r["path"]: r for r in csv.DictReader((tmp_path / "torch.csv").open())}
    b = {r["path"]: r for r in csv.DictReader((tmp_path / "onnx.csv").open())}
    assert a.keys() == b.keys() and len(a) > 300
    tasks = Tagger.load(model_copy).tasks
    for path, row in a.items():
        assert row["error"] == b[path]["error"]
        for t in tasks:
            assert (row[t], row[f"{t}_top2"]) == (b[path][t], b[path][f"{t}_top2"]), (path, t)
            if row[t]:
                assert abs(float(row[f"{t}_confidence"]) - float(b[path][f"{t}_confidence"])) <= 2e-4


def test_int8_export_loads_and_runs(model_copy, catalog):
    result = CliRunner().invoke(app, ["export", "--model", str(model_copy), "--int8"])
    assert result.exit_code == 0, result.output
    assert (model_copy / "model.onnx").exists() and (model_copy / "model.int8.onnx").exists()
    photos = _photos(catalog)
    int8, fp32 = Tagger.load(model_copy, engine="onnx-int8"), Tagger.load(model_copy, engine="onnx")
    probs = int8.probabilities(photos)
    for t, p in probs.items():
        assert p.shape == (len(photos), len(int8.vocabs[t])) and np.allclose(p.sum(1), 1, atol=1e-4)
    # quantization is approximate, but on these easy photos it must mostly agree with full precision
    a, b = int8.choose(probs), fp32.choose(fp32.probabilities(photos))
    assert np.mean([np.mean(a[t] == b[t]) for t in a]) > 0.8
    assert [len(r["gender"].runners_up) for r in int8.tag_pixels(photos[:3], top_k=2)] == [1, 1, 1]


def _version_of(path) -> str:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map[
        ONNX_VERSION_KEY]


def test_stale_or_unwritable_exports_are_redone(model_copy, monkeypatch, tmp_path):
    OnnxEngine.from_folder(model_copy)
    path = model_copy / "model.onnx"
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {ONNX_VERSION_KEY: "other weights"})
    onnx.save(graph, str(path))
    digest_path(path).write_text(file_sha256(path))  # intact, as an export of other weights is: only stale
    monkeypatch.setenv("FASHIONTAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("fashiontag.inference.onnx_export.os.access", lambda p, mode: False)  # a read-only model folder
    OnnxEngine.from_folder(model_copy)
    fresh = next((tmp_path / "cache").rglob("model.onnx"))
    assert _version_of(fresh) == model_version(model_copy) and _version_of(path) == "other weights"
    mtime = fresh.stat().st_mtime_ns
    OnnxEngine.from_folder(model_copy)
    assert fresh.stat().st_mtime_ns == mtime  # found again, not exported again


def test_every_export_records_its_sha256_beside_it(model_copy, tmp_path):
    path = export_onnx(model_copy, out=tmp_path / "out" / "tagger.onnx")
    assert digest_path(path).read_text() == f"{file_sha256(path)}  tagger.onnx\n"  # `sha256sum -c` reads it
    assert export_damage(path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["tagger.onnx", "tagger.onnx.sha256"]  # no temp files


def test_a_damaged_export_is_made_again_for_the_tagger_and_predict(model_copy, catalog, tmp_path, monkeypatch):
    monkeypatch.setattr("fashiontag.inference.engines.bf16_supported", lambda device: False)  # compare with fp32 torch
    path = export_onnx(model_copy)
    photos = _photos(catalog)
    want = Tagger.load(model_copy).probabilities(photos)
    write_over_onnx(path)
    assert "is damaged" in export_damage(path)
    got = Tagger.load(model_copy, engine="onnx").probabilities(photos)
    for t in want:
        assert np.abs(got[t] - want[t]).max() < 1e-4, t
    assert export_damage(path) is None  # made again in place: the folder is writable

    write_over_onnx(path)
    result = CliRunner().invoke(app, ["predict", str(catalog.root / "images"), "--model", str(model_copy), "--engine",
                                      "onnx", "--out", str(tmp_path / "tags.csv"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [r for r in csv.DictReader((tmp_path / "tags.csv").open()) if not r["error"]]
    assert len(rows) > 300 and all(np.isfinite(float(r["gender_confidence"])) for r in rows)
    assert len({r["articleType"] for r in rows}) > 1 and export_damage(path) is None


def test_a_damaged_export_that_cannot_be_made_again_is_refused_in_one_line(model_copy, catalog, tmp_path,
                                                                           monkeypatch):
    path = export_onnx(model_copy)
    write_over_onnx(path)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as where torch is not installed
    with pytest.raises(ModelError, match="model.onnx is damaged: its SHA-256 is not the one recorded") as e:
        Tagger.load(model_copy, engine="onnx")
    assert "needs torch and onnx" in str(e.value) and "fashiontag export --model" in str(e.value)
    out = tmp_path / "out" / "tags.csv"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["predict", str(catalog.root / "images" / "1000.jpg"), "--model",
                                      str(model_copy), "--engine", "onnx", "--out", str(out)])
    assert result.exit_code == 2 and result.output.startswith("error: no usable ONNX export")
    assert "is damaged" in result.output and "Traceback" not in result.output
    assert list(out.parent.iterdir()) == []  # no rows, no .partial file


def test_tagging_streams_in_constant_memory(trained, catalog):
    """An endless stream of paths: rows come out as photos go in, so a million files never sit in memory."""
    tagger = Tagger.load(trained)
    photo, missing = catalog.root / "images" / "1000.jpg", catalog.root / "images" / "nope.jpg"
    paths = (p for pair in repeat((photo, missing)) for p in pair)
    rows = list(islice(tag_paths(tagger, paths, batch_size=64, workers=2), 1000))
    assert [r["id"] for r in rows[:2]] == ["1000", "nope"]
    assert all(r["error"] == "" for r in rows[::2]) and all("not found" in r["error"] for r in rows[1::2])
    assert len({r["articleType"] for r in rows[::2]}) == 1
