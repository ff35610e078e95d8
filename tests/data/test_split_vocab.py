import numpy as np

from fashiontag.data.split import duplicate_groups, make_split
from fashiontag.data.vocab import OTHER, UNKNOWN, build_vocab, encode


def test_vocab_merges_rare_classes_into_other():
    labels = ["a"] * 5 + ["b"] * 3 + ["c", "d"] + [""]
    assert build_vocab(labels, min_count=3) == ["a", "b"]  # c+d = 2 < 3: dropped, not a tiny Other
    assert build_vocab(labels, min_count=2) == ["a", "b", OTHER]
    assert encode(["a", "c", ""], ["a", "b", OTHER]) == [0, 2, UNKNOWN]
    assert encode(["c"], ["a", "b"]) == [UNKNOWN]


def test_duplicate_groups_join_close_hashes_only():
    h = np.array([0b1111, 0b1111, 0b1110, 0xFFFF_0000_0000_0000], dtype=np.uint64)
    assert len(set(duplicate_groups(h, 0)[:2])) == 1
    g0 = duplicate_groups(h, 0)
    assert g0[0] == g0[1] != g0[2]
    g1 = duplicate_groups(h, 1)
    assert g1[0] == g1[1] == g1[2] != g1[3]


def test_split_is_deterministic_stratified_and_keeps_duplicates_together():
    rng = np.random.default_rng(0)
    n = 2000
    ids = list(range(n))
    strata = list(rng.choice(["x", "y", "z"], n, p=[0.6, 0.3, 0.1]))
    groups = np.arange(n) // 4  # every 4 consecutive ids are one re-listed photo
    a = make_split(ids, strata, groups, seed=1)
    b = make_split(ids, strata, groups, seed=1)
    assert a == b
    assert a != make_split(ids, strata, groups, seed=2)
    side = {i: s for s in ("train", "val", "test") for i in a[s]}
    assert len(side) == n
    for g in range(n // 4):
        assert len({side[str(i)] for i in range(4 * g, 4 * g + 4)}) == 1
    assert abs(len(a["test"]) / n - 0.1) < 0.02
    test_share = np.mean([strata[int(i)] == "z" for i in a["test"]])
    assert abs(test_share - 0.1) < 0.04


def test_relisted_photos_land_on_the_same_side(catalog):
    from fashiontag.training.dataset import load_dataset
    ds = load_dataset(catalog.root, progress=False)
    side = {pid: s for s in ("train", "val", "test") for pid in ds.split[s]}
    assert catalog.relisted
    for pid, original in catalog.relisted.items():
        assert side[str(pid)] == side[str(original)]
    assert len(ds.rows["test"]) > 20 and len(ds.rows["val"]) > 20
