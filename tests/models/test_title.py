"""Titles as model input: deterministic hashed tokens, degradations, and the photo + title model (torch and ONNX)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fashiontag.data.text import TitleDropout, Tokenizer, drop_words, normalise, remove_words, truncate, words_of
from fashiontag.models import create_model

HEADS = {"gender": 5, "baseColour": 7}
TITLE = {"dim": 16, "tokenizer": {"buckets": 512, "max_len": 48}}
TITLES = ["Puma Men Blue Running Shoes", "Ｎｉｋｅ Women's  NAVY-Blue Top", "", "Titan Women Silver Watch"]


def test_normalise_folds_case_width_and_punctuation():
    assert normalise("Ｎｉｋｅ Women's  NAVY-Blue Top!") == "nike women s navy blue top"


def test_tokens_are_deterministic_across_processes_and_padded_with_zero():
    tok = Tokenizer(**TITLE["tokenizer"])
    x = tok(TITLES)
    assert x.dtype == np.int64 and x.shape == (4, 48)
    assert (x[2] == 0).all() and (x[0] > 0).sum() > 10 and x.max() < 512
    # A fresh interpreter has another str-hash salt: the ids must not change.
    code = ("import sys; from fashiontag.data.text import Tokenizer; "
            "sys.stdout.write(' '.join(map(str, Tokenizer(buckets=512, max_len=48)(['Puma Men Blue Running Shoes'])[0])))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.split() == [str(v) for v in x[0]]


def test_long_titles_are_cut_at_max_len_keeping_the_words():
    tok = Tokenizer(buckets=512, max_len=8, chars=(0, 0), word_ngrams=1)
    x = tok(["a b c d e f g h i j k"])
    assert (x > 0).all() and list(x[0]) == tok.ids("a b c d e f g h")


def test_a_huge_title_is_cut_before_it_is_tokenised():
    """Issue 20 #15: a 10 MB title took 9 s and 1.2 GB before its ids were cut to max_len."""
    import time
    import tracemalloc
    tok = Tokenizer()
    title = "Puma Men Blue Running Shoes " * 40
    assert list(tok([title])[0]) == list(tok([title + "x" * 10_000_000])[0])  # max_len ids come before the cut
    for huge in ("x" * 10_000_000, "Puma Men " * 1_000_000):
        tracemalloc.start()
        started = time.perf_counter()
        row = tok([huge])[0]
        seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert (row > 0).all() and seconds < 1.0 and peak < 20_000_000
    assert all(len(ids) <= tok.max_len for ids in tok._cache.values())  # a long word is not cached in full


def test_degradations():
    rng = np.random.default_rng(0)
    assert truncate("Puma Men Blue Running Shoes", 2) == "Puma Men"
    assert drop_words("Puma Men Blue Running Shoes", 0.0, rng) == "Puma Men Blue Running Shoes"
    assert drop_words("Puma Men Blue Running Shoes", 1.0, rng) == ""
    colours, genders = words_of(["Navy Blue", "Off White"]), words_of(["Men", "Women"])
    assert remove_words("Nike Women's Navy-Blue Top", colours | genders) == "nike s top"
    out = TitleDropout(drop=0.3, truncate=0.2, word_drop=0.1)(["Puma Men Blue Running Shoes"] * 2000, rng)
    assert 0.25 < np.mean([t == "" for t in out]) < 0.35
    assert 0.15 < np.mean([0 < len(t.split()) < 5 for t in out]) < 0.6


@pytest.mark.parametrize("fusion", ["late", "gated"])
def test_fused_model_with_and_without_title(fusion):
    torch.manual_seed(0)
    model = create_model("rescnn", HEADS, width=8, title={**TITLE, "fusion": fusion}).eval()
    x = torch.rand(4, 3, 80, 60)
    tokens = torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES))
    with torch.no_grad():
        none, blank, both = model(x), model(x, torch.zeros_like(tokens)), model(x, tokens)
    for t, n in HEADS.items():
        assert none[t].shape == (4, n)
        torch.testing.assert_close(none[t], blank[t])  # all padding is "no title"
        torch.testing.assert_close(both[t][2], none[t][2])  # the empty title in the batch


def test_late_fusion_starts_as_the_photo_model():
    torch.manual_seed(0)
    photo = create_model("rescnn", HEADS, width=8).eval()
    from fashiontag.models.title import TitleFusion
    fused = TitleFusion(photo, HEADS, **TITLE).eval()
    x = torch.rand(3, 3, 80, 60)
    tokens = torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES[:3]))
    with torch.no_grad():
        want, got = photo(x), fused(x, tokens)
    for t in HEADS:
        torch.testing.assert_close(got[t], want[t])


def test_fused_model_round_trips_through_safetensors(tmp_path):
    model = create_model("rescnn", HEADS, width=8, title=TITLE).eval()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    again = create_model("rescnn", HEADS, width=8, title=TITLE).eval()
    again.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x, tokens = torch.rand(2, 3, 80, 60), torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES[:2]))
    with torch.no_grad():
        torch.testing.assert_close(model(x, tokens), again(x, tokens))


class _TwoInputs(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, tokens):
        return tuple(self.model(image, tokens).values())


@pytest.mark.slow
@pytest.mark.parametrize("fusion, pool", [("late", "mean"), ("gated", "mean"), ("late", "sqrt")])
def test_onnx_export_takes_pixels_and_tokens(fusion, pool, tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    model = create_model("rescnn", HEADS, width=8, title={**TITLE, "fusion": fusion, "pool": pool}).eval()
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_TwoInputs(model), (torch.rand(2, 3, 80, 60), torch.ones(2, 48, dtype=torch.int64)),
                                    dynamo=True, input_names=["image", "tokens"], output_names=list(HEADS),
                                    dynamic_shapes=({0: batch}, {0: batch}), verbose=False)
    program.save(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    tok = Tokenizer(**TITLE["tokenizer"])
    for titles in (TITLES, TITLES[:1], [""] * 3):
        x = np.random.default_rng(len(titles)).random((len(titles), 3, 80, 60), dtype=np.float32)
        tokens = tok(titles)
        got = session.run(list(HEADS), {"image": x, "tokens": tokens})
        with torch.no_grad():
            want = model(torch.from_numpy(x), torch.from_numpy(tokens))
        for t, g in zip(HEADS, got):
            assert np.abs(g - want[t].numpy()).max() < 1e-4, t


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        create_model("rescnn", HEADS, width=8, title={**TITLE, "pool": "max"})


def test_fusion_weights_temper_a_sure_photo_part_and_weigh_both_parts_in_the_model():
    from fashiontag.training.temperatures import fit_fusion_weights
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (2000,), generator=gen)
    onehot = nn.functional.one_hot(y, 5).float()
    # The photo right 60% of the time but sure of itself; the title right 90%, modestly sure.
    photo_right, title_right = torch.rand(2000, generator=gen) < 0.6, torch.rand(2000, generator=gen) < 0.9
    noise = nn.functional.one_hot(torch.randint(0, 5, (2000,), generator=gen), 5).float()
    photo = 8 * torch.where(photo_right[:, None], onehot, noise)
    title = 2 * torch.where(title_right[:, None], onehot, noise)
    weights = fit_fusion_weights({"gender": photo}, {"gender": title}, {"gender": y.numpy()})
    a, b = weights["photo"]["gender"], weights["title"]["gender"]
    assert a < 0.5 and b > 0.5  # the over-sure photo is tempered, the title not
    loss = lambda a, b: float(nn.functional.cross_entropy(a * photo + b * title, y))  # noqa: E731
    assert loss(a, b) < loss(1.0, b) and loss(a, b) < loss(a, 1.0)

    model = create_model("seed-cnn", HEADS, title=TITLE).eval()
    x, tokens = torch.rand(2, 3, 80, 60), torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES[:2]))
    with torch.no_grad():
        for head in model.title_heads.values():
            nn.init.normal_(head.weight)
        before_photo, before = model(x), model(x, tokens)
        model.weigh_parts({"gender": 0.5, "baseColour": 2.0}, {"gender": 3.0, "baseColour": 1.0})
        after_photo, after = model(x), model(x, tokens)
    for t, (a, b) in {"gender": (0.5, 3.0), "baseColour": (2.0, 1.0)}.items():
        torch.testing.assert_close(after_photo[t], a * before_photo[t])
        torch.testing.assert_close(after[t], a * before_photo[t] + b * (before[t] - before_photo[t]))
