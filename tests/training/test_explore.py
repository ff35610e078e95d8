import json

from fashiontag.training.explore import explore


def test_explore_reports_classes_problems_and_duplicates(catalog, tmp_path):
    s = explore(catalog.root, out=tmp_path, progress=False)
    assert s["rows"] == 409
    assert len(s["malformed_rows"]) == len(catalog.malformed_lines)
    assert set(map(int, s["unusable_photos"])) == set(catalog.bad_images)
    # every re-listed photo sits in a duplicate group with its original
    groups = [set(g) for g in s["duplicate_group_ids"]]
    assert s["duplicate_groups"] == len(groups) >= len(catalog.relisted)
    for pid, original in catalog.relisted.items():
        assert any({str(pid), str(original)} <= g for g in groups)
    assert s["class_counts"]["season"]["(empty)"] >= 1
    md = (tmp_path / "explore.md").read_text()
    assert "## articleType" in md and (tmp_path / "class_distributions.png").stat().st_size > 1000
    assert json.loads((tmp_path / "explore.json").read_text())["rows"] == 409


def test_a_forgotten_image_column_is_an_error_naming_the_path_tried_and_the_photo_column(tmp_path):
    from typer.testing import CliRunner

    from fashiontag.cli import app
    from shop import make_shop_catalog
    shop = make_shop_catalog(tmp_path / "shop", n=12)
    result = CliRunner().invoke(app, ["explore", "--data", str(shop.file), "--id-column", "sku",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 1, result.output
    tried = shop.file.parent / "images" / f"{shop.skus[0]}.jpg"
    assert (f"error: 12 of 12 photos cannot be used (e.g. {shop.skus[0]}: file not found: {tried}); column photo "
            "holds photo files: pass --image-column photo") in result.output
    assert "pass --image-column photo" in (tmp_path / "report" / "explore.md").read_text()  # the report says it too
    fixed = CliRunner().invoke(app, ["explore", "--data", str(shop.file), "--id-column", "sku", "--image-column",
                                     "photo", "--out", str(tmp_path / "report")])
    assert fixed.exit_code == 0, fixed.output


def test_the_taxonomy_map_reads_each_column_as_the_known_models_task(catalog, trained, tmp_path):
    s = explore(catalog.root, out=tmp_path, progress=False, map_to=trained)
    columns = s["taxonomy_map"]["columns"]
    assert columns["baseColour"]["known_task"] == "baseColour" and columns["baseColour"]["score"] > 0.5
    # In the synthetic catalog Footwear, Shoes and Casual Shoes are the same products, so the column may be read as
    # any of the three category tasks (which one depends on how well the tiny model's heads trained on this CPU),
    # but Footwear must come out as its one counterpart there.
    master = columns["masterCategory"]
    assert master["known_task"] in ("masterCategory", "subCategory", "articleType") and master["score"] > 0.5
    assert master["classes"]["Footwear"] in (["Footwear"], ["Shoes"], ["Casual Shoes"])
    assert "## Taxonomy map" in (tmp_path / "explore.md").read_text()
    assert "taxonomy_map" not in explore(catalog.root, out=tmp_path, progress=False, map_to=None)
