"""The Python API (`from fashiontag import Tagger`) and the inference core's boundaries: what it imports, what it
accepts, and how it refuses what is not a photo."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fashiontag import PhotoResult, Tagger
from fashiontag.data.photos import ImageError
from fashiontag.model_folder import DEFAULT_MODEL_DIR, model_version


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_inference_never_imports_training():
    proc = _run("import sys, fashiontag.serve, fashiontag.inference.tagger, fashiontag.inference.predict, fashiontag.inference.engines\n"
                "print(sorted(m for m in sys.modules if m.startswith(('fashiontag.training.train', 'fashiontag.training.dataset', "
                "'fashiontag.data.split', 'fashiontag.data.cache', 'sklearn'))))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_tagging_with_onnx_from_the_cli_does_not_import_torch(catalog):
    photo = catalog.root / "images" / "1000.jpg"
    proc = _run("import sys\nfrom fashiontag.cli import app\n"
                f"app(['predict', {str(photo)!r}, '--engine', 'onnx'], standalone_mode=False)\n"
                "print('torch' in sys.modules, file=sys.stderr)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith(f"{photo},1000,")
    assert proc.stderr.strip().splitlines()[-1] == "False"


def test_the_shipped_onnx_export_is_current():
    """The package ships model.onnx beside the shipped weights so that onnx starts fast; it must be their export."""
    import onnxruntime as ort

    from fashiontag.inference.onnx_export import ONNX_VERSION_KEY, export_damage
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map[ONNX_VERSION_KEY] == model_version(DEFAULT_MODEL_DIR)
    assert export_damage(DEFAULT_MODEL_DIR / "model.onnx") is None  # and its recorded SHA-256 ships with it


@pytest.fixture(scope="module")
def tagger():
    return Tagger.load()  # the shipped model


@pytest.fixture(scope="module")
def shirt_png():
    """A large lossless photo, so that every way of handing it over gives the same pixels to letterbox."""
    rng = np.random.default_rng(3)
    img = np.full((2400, 1800, 3), 255, np.uint8)
    img[300:2100, 400:1400] = (200, 30, 40)  # a red block on white, with some texture
    img[300:2100, 400:1400] += rng.integers(0, 20, (1800, 1000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return img, buf.getvalue()


def test_path_bytes_pil_and_full_size_array_get_the_same_tags(tagger, shirt_png, tmp_path):
    array, data = shirt_png
    path = tmp_path / "shirt.png"
    path.write_bytes(data)
    results = [tagger(path), tagger(str(path)), tagger(data), tagger(Image.open(io.BytesIO(data))), tagger(array)]
    assert all(isinstance(r, PhotoResult) and r.ok for r in results)
    first = results[0]
    assert set(first.tags) == set(tagger.tasks) and first.source == str(path)
    for r in results[1:]:
        assert r.labels() == first.labels()
        for t in tagger.tasks:
            assert r[t].confidence == pytest.approx(first[t].confidence, abs=1e-6)


def test_a_list_tags_in_order_and_a_bad_photo_does_not_stop_the_rest(tagger, shirt_png, tmp_path, catalog):
    array, data = shirt_png
    results = tagger([data, tmp_path / "missing.jpg", catalog.root / "images" / "9002.jpg", array], top_k=3)
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error == f"file not found: {tmp_path / 'missing.jpg'}" and results[2].error == "empty file"
    assert results[0].labels() == results[3].labels()
    tag = results[0]["articleType"]
    assert len(tag.runners_up) == 2 and tag.runners_up[0][0] != tag.label
    assert tag.runners_up[0][1] >= tag.runners_up[1][1]
    as_dict = results[0].to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain JSON types
    assert as_dict["tags"]["articleType"]["top"][0]["label"] == tag.label
    with pytest.raises(KeyError, match="file not found"):
        results[1]["gender"]


def test_one_unreadable_photo_raises(tagger, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="unreadable"):
        tagger(tmp_path / "broken.jpg")
    with pytest.raises(ImageError) as missing:
        tagger(tmp_path / "shirt.jpg")
    assert str(missing.value) == f"file not found: {tmp_path / 'shirt.jpg'}"  # which file, in a loop over many


def test_a_result_names_the_tasks_says_whether_it_needs_review_and_shows_which(tagger, shirt_png):
    _, data = shirt_png
    with pytest.raises(KeyError, match="no task 'Gender'; the model's tasks are gender, masterCategory, "):
        tagger(data)["Gender"]
    plain, strict = tagger(data, min_confidence=0.0), tagger(data, min_confidence=1.0)
    assert not plain.needs_review and strict.needs_review
    assert "needs review" not in repr(plain)
    assert repr(strict).count("(needs review)") == len(tagger.tasks)
    lenient = tagger(data, min_confidence=plain["gender"].confidence)  # exactly at the threshold: accepted
    assert not lenient["gender"].needs_review
    assert "gender='" + plain["gender"].label + f"' {plain['gender'].confidence:.2f}," in repr(lenient)
    assert PhotoResult(source="x.jpg", error="empty file").needs_review  # not tagged: a person must look


@pytest.mark.parametrize("bad, words", [
    (np.zeros((80, 60, 3), np.float32), "uint8"),
    (np.zeros((80, 60), np.uint8), r"\(height, width, 3\)"),
    (np.zeros((80, 60, 4), np.uint8), r"\(height, width, 3\)"),
    (np.zeros((0, 60, 3), np.uint8), r"\(height, width, 3\)"),
    (12345, "cannot read a photo from int"),
])
def test_what_is_not_a_photo_is_a_clear_value_error(tagger, bad, words):
    with pytest.raises(ValueError, match=words):
        tagger(bad)


def test_tag_pixels_refuses_photos_that_are_not_letterboxed(tagger):
    with pytest.raises(ValueError, match="letterboxed"):
        tagger.tag_pixels(np.zeros((1, 3200, 2400, 3), np.uint8))
    assert len(tagger(np.zeros((2, 3200, 2400, 3), np.uint8))) == 2  # a batch array of any size is fine


def test_needs_review_keeps_the_guess(tagger, shirt_png):
    _, data = shirt_png
    plain, strict = tagger(data, min_confidence=0.0), tagger(data, min_confidence=1.0)
    assert strict.labels() == plain.labels()
    assert all(strict[t].needs_review for t in tagger.tasks) and not any(plain[t].needs_review for t in tagger.tasks)
    row = strict.to_row(review=True)
    assert row["gender_needs_review"] is True and row["gender"] == plain["gender"].label
    with pytest.raises(ValueError, match="min_confidence"):
        tagger(data, min_confidence=1.5)


class _Broken:
    """A damaged model: its logits are NaN for the photos at nan_rows, and +inf for one class at inf_rows."""

    def __init__(self, engine, nan_rows=(), inf_rows=()):
        self.engine, self.name, self.tasks = engine, engine.name, engine.tasks
        self.nan_rows, self.inf_rows = list(nan_rows), list(inf_rows)

    def logits(self, pixels, tokens=None):
        out = self.engine.logits(pixels, tokens)
        out["gender"][self.nan_rows] = np.nan
        out["season"][self.inf_rows, 0] = np.inf
        return out


def test_non_finite_model_outputs_are_an_error_for_the_photo_never_a_tag(tagger, shirt_png):
    """Issue 20 #2: NaN logits came out as tags with confidence nan, one label for every photo, needs_review False."""
    array, data = shirt_png
    broken = Tagger(_Broken(tagger.engine, nan_rows=[1], inf_rows=[2]), tagger.meta, tagger.model_dir)
    results = broken([data, data, data, data], top_k=2)
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].labels() == results[3].labels() == tagger(data).labels()
    for r in results[1:3]:
        assert "NaN or infinite" in r.error and r.tags == {} and r.needs_review
        assert r.to_dict() == {"source": None, "error": r.error} and r.to_row(review=True) == {}
    alone = Tagger(_Broken(tagger.engine, nan_rows=[0]), tagger.meta, tagger.model_dir)(data)
    assert not alone.ok and "NaN" in alone.error  # one photo alone: a result with its error, not an ImageError
    probs = broken.probabilities(np.stack([broken.prepare(data)] * 3))
    assert np.isnan(probs["gender"][1]).all() and np.isnan(probs["season"][2]).all()
    assert np.isfinite(probs["gender"][[0, 2]]).all()


def test_a_huge_title_costs_no_more_than_a_short_one(tagger, shirt_png):
    """Issue 20 #15: title="x" * 10_000_000 took 9.3 s and 1.2 GB before the title was cut to 160 ids."""
    import time
    _, data = shirt_png
    tagger(data, title="x")  # warm
    started = time.perf_counter()
    result = tagger(data, title="x" * 10_000_000)
    assert result.ok and time.perf_counter() - started < 2.0


def test_info_describes_the_model(tagger):
    info = tagger.info()
    assert info["version"] == model_version(DEFAULT_MODEL_DIR)[:12]
    assert info["tasks"] == tagger.tasks and info["hierarchy"]["tasks"] == ["articleType", "subCategory",
                                                                            "masterCategory"]
    json.dumps(info, allow_nan=False)
