import json

from fashiontag.explore import explore


def test_explore_reports_classes_problems_and_duplicates(catalog, tmp_path):
    s = explore(catalog.root, tmp_path, progress=False)
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
