"""A shop's own catalog end to end: its columns, string SKUs, nested photos of any size and format, a hierarchy found
in the data and a multi-label task; trained, evaluated, explored, tagged from the CLI, the Python API and the HTTP
API, exported to ONNX; and one clear error for each bad description."""

import csv
import io
import json
import random

import pytest
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.data.catalog import KAGGLE_TASKS, CatalogError, CatalogSpec, read_catalog
from fashiontag.data.taxonomy import parse_image_size
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import MULTI, SINGLE, load_meta
from helpers import tiny_config
from shop import CATEGORIES, SHOP_TASKS, draw_product, make_shop_catalog, occasions

COLUMNS = ["--id-column", "sku", "--image-column", "photo", "--title-column", "title"]


def no_kaggle_column(text: str) -> bool:
    return not any(t in text for t in KAGGLE_TASKS)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop_catalog(tmp_path_factory.mktemp("shop"), n=240)


@pytest.fixture(scope="module")
def shop_model(shop, tmp_path_factory):
    """Trained from the command line, as the README shows, with the test suite's tiny schedule."""
    folder = tmp_path_factory.mktemp("shoprun")
    config = folder / "tiny.json"
    tiny_config("", "", epochs=16).save(config)
    result = CliRunner().invoke(app, ["train", "--data", str(shop.file), *COLUMNS, "--tasks", ",".join(SHOP_TASKS),
                                      "--out", str(folder / "run"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "hierarchy, decoded jointly: category > department" in result.output
    return folder / "run" / "best"


def test_the_reader_takes_string_skus_nested_photos_and_sniffs_the_delimiter(shop, tmp_path):
    c = read_catalog(shop.file, "sku", "photo", "title")
    assert c.ids == shop.skus and not c.problems and not c.kaggle
    assert {p.suffix for p in c.photos} == {".png", ".webp", ".jpg"} and all(p.is_file() for p in c.photos)
    assert c.titles[0].endswith(f"for {c.columns['department'][0]}")
    # the same catalog as TSV and as JSON Lines (with the multi-label cell as a list)
    rows = list(csv.DictReader(shop.file.open()))
    tsv = shop.file.with_suffix(".tsv")
    tsv.write_text("\n".join("\t".join(r) for r in [rows[0].keys()] + [r.values() for r in rows]) + "\n")
    jsonl = shop.file.with_suffix(".jsonl")
    jsonl.write_text("\n".join(json.dumps({**r, "occasion": r["occasion"].split("|")}) for r in rows) + "\n")
    for other in (tsv, jsonl):
        o = read_catalog(other, "sku", "photo", "title")
        assert o.ids == c.ids and o.columns == c.columns and o.photos == c.photos, other


def test_explore_says_what_it_found(shop, tmp_path):
    result = CliRunner().invoke(app, ["explore", "--data", str(shop.file), *COLUMNS, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "explore.json").read_text())
    assert s["columns"] == {"title": "text", "photo": "photo", "department": SINGLE, "category": SINGLE,
                            "colour": SINGLE, "pattern": SINGLE, "occasion": MULTI, "price": "number"}
    assert s["tasks"] == list(SHOP_TASKS)
    assert s["class_counts"]["occasion"].keys() == {"casual", "work", "party"}
    assert {"child": "category", "parent": "department", "share": 1.0} in s["hierarchies"]
    assert s["photo_sizes"]["max_hw"] == [1600, 1200] and s["input_size"]["hw"] == [160, 124]
    assert s["repeated_ids"] == 0 and s["unusable_photos"] == {}
    # The report speaks the shop's words; only its taxonomy map names the shipped model's tasks they map to.
    before, rest = (tmp_path / "explore.md").read_text().split("## Taxonomy map")
    taxonomy, after = rest.split("![class distributions]")
    assert no_kaggle_column(before + after)
    assert all(f"| {column} |" in taxonomy for column in ("department", "category", "colour", "pattern"))
    assert "taxonomy map: department ~ " in result.output


def test_the_model_records_the_shops_tasks_kinds_hierarchy_and_size(shop_model):
    meta = load_meta(shop_model)
    assert list(meta["vocabs"]) == list(SHOP_TASKS)
    assert meta["task_kinds"]["occasion"] == MULTI and meta["task_kinds"]["category"] == SINGLE
    assert meta["hierarchy"][0] == ["category", "department"]
    assert meta["input_hw"] == [160, 124]  # the median photo, 900x700, with its longer side at 160
    assert meta["catalog"] == {"id_column": "sku", "image_column": "photo", "title_column": "title", "separator": "|"}
    assert len(meta["class_thresholds"]["occasion"]) == len(meta["vocabs"]["occasion"])


def test_evaluate_scores_single_and_multi_label_tasks(shop, shop_model, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--data", str(shop.file), "--model", str(shop_model),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "metrics.json").read_text())["tasks"]
    assert list(m) == list(SHOP_TASKS)
    for t in ("department", "category", "colour"):
        assert m[t]["accuracy"] > m[t]["majority_baseline"] + 0.1, (t, m[t]["accuracy"])
    assert m["occasion"]["kind"] == MULTI and m["occasion"]["sample_f1"] > 0.6
    assert set(m["occasion"]["per_class"]) == {"casual", "work", "party"}
    assert "precision" in m["occasion"]["per_class"]["party"]
    assert no_kaggle_column((tmp_path / "report.md").read_text())


def test_tags_from_the_cli_the_python_api_the_http_api_and_onnx(shop, shop_model, tmp_path):
    photos = shop.file.parent / "photos"
    out = tmp_path / "tags.csv"
    result = CliRunner().invoke(app, ["predict", str(photos), "--model", str(shop_model), "--out", str(out),
                                      "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 240 and no_kaggle_column(",".join(rows[0]))
    assert [c for c in rows[0] if c in SHOP_TASKS] == list(SHOP_TASKS)
    for r in rows:  # the hierarchy holds, and an occasion set is one the catalog could hold
        assert CATEGORIES[r["category"]][0] == r["department"]
        assert set(filter(None, r["occasion"].split("|"))) <= {"casual", "work", "party"}  # may be empty

    tagger = Tagger.load(shop_model, bf16=False)
    first = sorted(photos.rglob("*.png"))[0]
    result = tagger(first)
    assert list(result.tags) == list(SHOP_TASKS)
    occasion = result["occasion"].to_dict()
    assert [v["label"] for v in occasion["labels"]] == result["occasion"].label.split("|")
    right = sum(set(tagger(p)["occasion"].label.split("|")) == set(occasions(*_colour_pattern(shop, p)))
                for p in sorted(photos.rglob("*"))[:60] if p.is_file())
    assert right > 30

    from fastapi.testclient import TestClient

    from fashiontag.serve import create_app
    with TestClient(create_app(shop_model)) as client:
        r = client.post("/v1/tag", files=[("files", (first.name, first.read_bytes(), "image/png"))])
        assert r.status_code == 200, r.text
        tags = r.json()["results"][0]["tags"]
        assert list(tags) == list(SHOP_TASKS) and "labels" in tags["occasion"]
        assert client.get("/v1/model").json()["tasks"] == list(SHOP_TASKS)
        assert no_kaggle_column(r.text)

    result = CliRunner().invoke(app, ["export", "--model", str(shop_model)])
    assert result.exit_code == 0, result.output
    onnx = Tagger.load(shop_model, engine="onnx")
    for p in sorted(photos.rglob("*.webp"))[:5]:
        assert tagger(p).labels() == onnx(p).labels()


def _colour_pattern(shop, path):
    row = next(r for r in csv.DictReader(shop.file.open()) if r["sku"] == path.stem)
    return row["colour"], row["pattern"]


@pytest.mark.parametrize("flags, message", [
    (["--image-column", "picture"], "image column 'picture' does not exist"),
    (["--image-column", "photo", "--tasks", "department,fabric"], "task column 'fabric' does not exist"),
    (["--image-column", "photo", "--tasks", "department,brand"], "task column 'brand' has 1 class"),
    (["--image-column", "photo", "--tasks", "department,colour", "--hierarchy", "colour>department"],
     r"colour>department: \d+\.\d% of the rows break it"),
    (["--image-column", "photo", "--image-size", "big"], "write it as HEIGHTxWIDTH"),
    (["--image-column", "photo", "--tasks", "department,name"], r"task column 'name' looks like free text, not a "
     r"task: nearly every value is unique \(240 distinct in 240 rows\).*leave it out of --tasks"),
])
def test_a_bad_description_gets_one_clear_error(shop, tmp_path, flags, message):
    one_brand = tmp_path / "shop.csv"  # with a brand column of one value, and a name unique to each product
    one_brand.write_text("".join(line.rstrip("\n") + (",brand,name\n" if i == 0 else f",Acme,Item number {i}\n")
                                 for i, line in enumerate(io.StringIO(shop.file.read_text()))))
    (tmp_path / "photos").symlink_to(shop.file.parent / "photos")
    result = CliRunner().invoke(app, ["train", "--data", str(one_brand), "--id-column", "sku", *flags,
                                      "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 2
    assert __import__("re").search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_forgotten_image_column_is_named_not_blamed_on_the_labels(shop, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(shop.file), "--id-column", "sku", "--no-progress",
                                      "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 2
    tried = shop.file.parent / "images" / f"{shop.skus[0]}.jpg"
    assert result.output.strip().splitlines()[-1] == (
        f"error: shop.csv: 240 of 240 photos cannot be used (e.g. {shop.skus[0]}: file not found: {tried}); column "
        "photo holds photo files: pass --image-column photo")


def test_a_folder_a_forgotten_id_column_and_a_predict_without_the_models_columns_get_the_fix(tmp_path):
    small = make_shop_catalog(tmp_path / "small", n=6, seed=3)
    result = CliRunner().invoke(app, ["explore", "--data", str(small.file.parent), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{small.file.parent} is a folder without styles.csv; did you mean {small.file}?" in result.output
    assert "kaggle" not in result.output.lower()  # the download blurb is for those without a catalog

    result = CliRunner().invoke(app, ["explore", "--data", str(small.file), "--out", str(tmp_path)])
    assert result.exit_code == 2
    # six rows: their titles and prices happen to be distinct too
    assert (f"{small.file}: id column 'id' does not exist: name the id column with --id-column (a distinct value on "
            "every row: sku, title, price); its columns are sku, title, photo,") in result.output

    # The README's example with the shipped model, whose catalog columns are the Kaggle layout's.
    command = ["predict", "--data", str(small.file), "--title-column", "title", "--out", str(tmp_path / "tags.csv")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "name the id column with --id-column" in result.output
    result = CliRunner().invoke(app, command + ["--id-column", "sku", "--image-column", "photo"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "tags.csv").open()))
    assert [r["id"] for r in rows] == small.skus and not any(r["error"] for r in rows)
    assert rows[0]["title"] == read_catalog(small.file, "sku", "photo", "title").titles[0]


def test_rare_classes_pooled_into_other_are_counted(tmp_path, capsys):
    """How many classes and products Other takes is said, not left to the vocabulary to show."""
    import numpy as np
    from PIL import Image

    from fashiontag.training.dataset import load_dataset
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    kinds = ["coat", "scarf"] * 25 + [f"rare-{i}" for i in range(12)]
    for i in range(len(kinds)):  # noise: no two photos alike, so no duplicate group holds them together
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / f"p{i}.png")
    (tmp_path / "c.csv").write_text("id,kind\n" + "".join(f"p{i},{k}\n" for i, k in enumerate(kinds)))
    data = load_dataset(str(tmp_path / "c.csv"), ("kind",), min_count=3, progress=False)
    assert data.vocabs["kind"] == ["coat", "scarf", "Other"] or data.vocabs["kind"] == ["scarf", "coat", "Other"]
    assert ("note: task kind: 12 classes with fewer than 3 training photos (min_count), 12 products of the catalog, "
            "pooled into Other") in capsys.readouterr().err


def test_parse_image_size():
    assert parse_image_size("160x120") == (160, 120) and parse_image_size(" 64 X 48 ") == (64, 48)
    for bad in ("160", "160x", "0x10", "x120", "4000x3000"):
        with pytest.raises(ValueError):
            parse_image_size(bad)


def test_a_photo_reference_may_be_an_id_like_name_or_an_absolute_path(tmp_path):
    from PIL import Image
    (tmp_path / "images").mkdir()
    Image.new("RGB", (30, 40), "red").save(tmp_path / "images" / "A-1.webp")
    Image.new("RGB", (30, 40), "blue").save(tmp_path / "elsewhere.png")
    (tmp_path / "c.csv").write_text(f"ref,pic,kind\nA-1,A-1,x\nB-2,{tmp_path / 'elsewhere.png'},y\n")
    c = CatalogSpec(str(tmp_path / "c.csv"), id_column="ref", image_column="pic").read()
    assert c.photos == [tmp_path / "images" / "A-1.webp", tmp_path / "elsewhere.png"]
    by_id = read_catalog(tmp_path / "c.csv", id_column="ref")
    assert by_id.photos[0] == tmp_path / "images" / "A-1.webp"
    with pytest.raises(CatalogError, match="id column 'sku' does not exist"):
        read_catalog(tmp_path / "c.csv", id_column="sku")


def test_reviewed_rows_train_and_never_validate_or_test(shop, shop_model, tmp_path):
    from fashiontag.training.dataset import load_dataset
    split = json.loads((shop_model / "split.json").read_text())
    new_photo = tmp_path / "new.png"
    draw_product("tie", "navy", "plain", (300, 200), random.Random(7)).save(new_photo)
    on_test, on_train = split["test"][0], split["train"][0]
    reviewed = tmp_path / "reviewed.csv"
    reviewed.write_text("sku,category,department,path\n"
                        f"SKU-NEW-1,tie,men,{new_photo}\n{on_test},tie,men,\n{on_train},dress,women,\n")
    spec = CatalogSpec(str(shop.file), "sku", "photo", "title")
    ds = load_dataset(spec, SHOP_TASKS, split_path=shop_model / "split.json", extra=(str(reviewed),), min_count=2,
                      progress=False)
    train_ids = {ds.catalog.ids[i] for i in ds.rows["train"]}
    assert "SKU-NEW-1" in train_ids and on_test not in train_ids and on_test in ds.split["test"]
    row = ds.catalog.ids.index(on_train)
    assert ds.catalog.columns["category"][row] == "dress"  # the reviewed label replaces the catalog's
    assert ds.catalog.photos[ds.catalog.ids.index("SKU-NEW-1")] == new_photo
    assert ds.split["reviewed"] == sorted(["SKU-NEW-1", on_train])
