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
        fused, alone = model(x, tokens, photo_alone=True)  # training's photo_loss: both from one pass of the trunk
    for t, n in HEADS.items():
        assert none[t].shape == (4, n)
        torch.testing.assert_close(none[t], blank[t])  # all padding is "no title"
        torch.testing.assert_close(both[t][2], none[t][2])  # the empty title in the batch
        torch.testing.assert_close(fused[t], both[t])
        torch.testing.assert_close(alone[t], none[t])


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
@pytest.mark.parametrize("fusion, pool, linear", [("late", "mean", False), ("gated", "mean", False),
                                                  ("late", "sqrt", True)])
def test_onnx_export_takes_pixels_and_tokens(fusion, pool, linear, tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    title = {**TITLE, "fusion": fusion, "pool": pool,
             **({"linear": {"C": 1.0}, "length_slopes": {"center": 3.0, "photo": {"gender": -0.3},
                                                         "linear": {"baseColour": 0.5}}} if linear else {})}
    model = create_model("rescnn", HEADS, width=8, title=title).eval()
    if linear:
        fit_linear_on_synthetic_titles(model)
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
    weights = fit_fusion_weights({"photo": {"gender": photo}, "title": {"gender": title}}, {"gender": y.numpy()})
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


@pytest.mark.parametrize("seed", [57, 175, 709])
def test_fusion_weights_on_a_few_photos_the_parts_separate_stay_finite_and_lower_the_loss(seed):
    """Forty validation photos, three parts of random strength and sure-ness: on these draws the loss falls without
    end as factors grow, and L-BFGS once stepped past what a float holds (57, 709: a RuntimeError, as in CI on a
    tiny catalog) or gave up on a NaN (175: every factor silently 1.0)."""
    from fashiontag.training.temperatures import MAX_FACTOR, MAX_SLOPE, fit_fusion_weights
    gen = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 5, (1,), generator=gen))
    y = torch.randint(0, k, (40,), generator=gen)
    parts = {}
    for name in ["photo", "title", "linear"]:
        spread, margin = float(torch.rand(1, generator=gen)) * 3, float(torch.rand(1, generator=gen)) * 4
        logits = torch.randn(40, k, generator=gen) * spread
        logits[torch.arange(40), y] += margin
        parts[name] = {"t": logits}
    lengths = torch.randn(40, generator=gen) * 0.3
    weights = fit_fusion_weights(parts, {"t": y.numpy()}, lengths)

    def loss(factor, slope):
        return float(nn.functional.cross_entropy(sum(factor(p) * torch.exp(slope(p) * lengths)[:, None] * parts[p]["t"]
                                                     for p in parts), y))
    fitted = loss(lambda p: weights[p]["t"], lambda p: weights[f"{p} slope"]["t"])
    assert all(0 <= weights[p]["t"] <= MAX_FACTOR and abs(weights[f"{p} slope"]["t"]) <= MAX_SLOPE for p in parts)
    assert fitted < 0.9 * loss(lambda p: 1.0, lambda p: 0.0)


def synthetic_titles(n: int = 300, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    """Titles whose words say the labels, some of them twice (an id counted more than once), with noise words;
    every fifth title empty, its labels unknown for gender."""
    rng = np.random.default_rng(seed)
    genders, colours = ["men", "women", "boys", "girls", "unisex"], ["red", "blue", "green", "black", "white", "pink",
                                                                      "grey"]
    y = {"gender": rng.integers(0, 5, n), "baseColour": rng.integers(0, 7, n)}
    noise = ["cotton", "slim", "fit", "casual", "shirt", "shoes", "watch", "classic"]
    titles = []
    for i in range(n):
        words = [genders[y["gender"][i]], colours[y["baseColour"][i]]] * int(rng.integers(1, 3))
        words += list(rng.choice(noise, 3))
        titles.append(" ".join(rng.permutation(words)) if i % 5 else "")
    y["gender"][::5] = -1
    return titles, y


def fit_linear_on_synthetic_titles(model):
    from fashiontag.training.title_linear import fit_title_linear
    titles, y = synthetic_titles()
    fit_title_linear(model.linear, titles, y, Tokenizer(**TITLE["tokenizer"]), c=1.0, progress=False)


def test_the_linear_title_part_is_the_svm_it_was_fitted_as():
    """The model's scores from the (N, L) ids, duplicates and padding included, equal the decision function of the
    LinearSVC fitted on the sparse TF-IDF rows, for the titles it was fitted on and for new ones; no title, no score."""
    from sklearn.svm import LinearSVC

    from fashiontag.training.title_linear import idf_of, tfidf
    model = create_model("rescnn", HEADS, width=8, title={**TITLE, "linear": {"C": 1.0}}).eval()
    tok = Tokenizer(**TITLE["tokenizer"])
    x = torch.rand(3, 3, 80, 60)
    with torch.no_grad():
        unfitted = model(x, torch.from_numpy(tok(TITLES[:3])))
        for t, lg in model(x).items():  # all zero when built: it adds nothing yet
            torch.testing.assert_close(unfitted[t], lg)
    fit_linear_on_synthetic_titles(model)
    titles, y = synthetic_titles()
    tokens = tok(titles)
    assert any(len(set(r[r > 0])) < (r > 0).sum() for r in tokens)  # some ids repeat within a title
    features = tfidf(tokens, idf_of(tokens, tok.buckets))
    new = tok(["women pink slim watch", "red men shoes men", "", "unheard of words"])
    new_features = tfidf(new, idf_of(tokens, tok.buckets))
    for t in HEADS:
        rows = (tokens > 0).any(1) & (y[t] >= 0)
        svm = LinearSVC(C=1.0).fit(features[rows], y[t][rows])
        with torch.no_grad():
            got, got_new = model.linear(torch.from_numpy(tokens))[t], model.linear(torch.from_numpy(new))[t]
        for ids, feats, scores in ((tokens, features, got), (new, new_features, got_new)):
            titled = (ids > 0).any(1)
            want = svm.decision_function(feats[titled])
            # int8 weights: each moves by at most half its class's scale, times the row's TF-IDF values
            start = list(HEADS).index(t) and sum(list(HEADS.values())[:list(HEADS).index(t)])
            half_step = model.linear.scale[start:start + HEADS[t]].numpy()[svm.classes_] / 2
            bound = np.asarray(feats[titled].sum(1)) * half_step + 1e-5
            assert (np.abs(scores.numpy()[titled][:, svm.classes_] - want) <= bound).all(), t
            assert bound.max() < 0.05 * np.abs(want).max(), t  # small beside the scores
            assert (scores.numpy()[~titled] == 0).all()
        assert (got.argmax(1).numpy()[rows] == y[t][rows]).mean() > 0.95  # the words say the labels


def test_the_linear_part_is_weighed_with_the_others_and_survives_bf16_autocast():
    model = create_model("rescnn", HEADS, width=8, title={**TITLE, "linear": {"C": 1.0}}).eval()
    fit_linear_on_synthetic_titles(model)
    tokens = torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES))
    with torch.no_grad():
        before = model.linear(tokens)
        with torch.autocast("cpu", torch.bfloat16):
            autocast = model.linear(tokens)
        model.weigh_parts({}, {}, {"gender": 0.5})
        after = model.linear(tokens)
    for t in HEADS:
        assert autocast[t].dtype == torch.float32
        torch.testing.assert_close(autocast[t], before[t])
    torch.testing.assert_close(after["gender"], 0.5 * before["gender"])
    torch.testing.assert_close(after["baseColour"], before["baseColour"])


@pytest.mark.parametrize("part", [{"linear": {"C": 1.0}}, {"length_slopes": {"center": 2.0}}])
def test_a_linear_title_part_and_length_slopes_need_late_fusion(part):
    with pytest.raises(ValueError, match="need late fusion"):
        create_model("rescnn", HEADS, width=8, title={**TITLE, "fusion": "gated", **part})


def test_length_slopes_weigh_each_part_by_the_title_length():
    """Each part times exp(slope x (ln ids - center)): 1 for a title of the center's length and for no title."""
    slopes = {"center": 3.0, "photo": {"gender": -0.5}, "title": {"gender": 0.25, "baseColour": 1.0}}
    plain = create_model("rescnn", HEADS, width=8, title=TITLE).eval()
    weighed = create_model("rescnn", HEADS, width=8, title={**TITLE, "length_slopes": slopes}).eval()
    weighed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for head in plain.title_heads.values():
            nn.init.normal_(head.weight)
        weighed.load_state_dict(plain.state_dict())
        tokens = torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES))
        x = torch.rand(len(TITLES), 3, 80, 60)
        photo, both, got = plain(x), plain(x, tokens), weighed(x, tokens)
    z = ((tokens > 0).sum(1, keepdim=True).clamp(min=1).float().log() - 3.0) * (tokens > 0).any(1, keepdim=True)
    for t in HEADS:
        a = torch.exp(slopes["photo"].get(t, 0.0) * z)
        b = torch.exp(slopes["title"].get(t, 0.0) * z)
        torch.testing.assert_close(got[t], a * photo[t] + b * (both[t] - photo[t]))
    torch.testing.assert_close(got["gender"][2], photo["gender"][2])  # no title: the photo as it is


def test_known_heads_of_a_photo_and_title_model_give_its_own_logits():
    """A shop's known heads read the start model's photo heads, title heads, linear title part and length slopes:
    their log-probabilities are the start model's own, temperature-scaled, with a title and without one."""
    torch.manual_seed(0)
    slopes = {"center": 3.0, "photo": {"gender": -0.4}, "title": {"baseColour": 0.3}, "linear": {"gender": 0.6}}
    title = {**TITLE, "linear": {"C": 1.0}, "length_slopes": slopes}
    start = create_model("rescnn", HEADS, width=8, title=title).eval()
    with torch.no_grad():
        for head in start.title_heads.values():
            nn.init.normal_(head.weight)
    fit_linear_on_synthetic_titles(start)
    temperatures = {"gender": 0.7, "baseColour": 1.3}
    shop = create_model("rescnn", {"audience": 3}, width=8, title=TITLE,
                        known={"tasks": HEADS, "temperatures": temperatures, "title": True, "linear": True,
                               "length_slopes": slopes}).eval()
    shop.inner.load_state_dict(start.state_dict(), strict=False)  # the trunk and title encoder, as training does
    assert shop.load_known(start.state_dict()) == 2 * len(HEADS) + len(HEADS) + len(dict(start.linear.named_buffers()))
    x, tokens = torch.rand(len(TITLES), 3, 80, 60), torch.from_numpy(Tokenizer(**TITLE["tokenizer"])(TITLES))
    with torch.no_grad():
        features = shop.inner.trunk(x)
        for given in (tokens, None):
            got, want = shop.known_log_probabilities(features, given), start(x, given)
            for t in HEADS:
                scaled = torch.log_softmax(want[t] / temperatures[t], 1).clamp(min=-9.0)
                torch.testing.assert_close(got[t], scaled, atol=1e-4, rtol=1e-4)
