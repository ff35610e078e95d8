import numpy as np
import pytest

from fashiontag.data.cache import build_cache
from fashiontag.data.catalog import CatalogError, read_catalog
from fashiontag.data.photos import ImageError, decode, dhash


def test_reader_keeps_comma_names_and_reports_malformed_rows(catalog):
    c = read_catalog(catalog.root)
    for pid in catalog.comma_name_ids:
        name = c.titles[c.ids.index(str(pid))]
        assert name.count(",") == 2, name
    assert len(c.problems) == len(catalog.malformed_lines)
    for line in catalog.malformed_lines:
        assert any(f"line {line}:" in p for p in c.problems), c.problems
    # an empty cell is unknown for its task only
    assert c.columns["season"][c.ids.index("1011")] == ""
    assert c.columns["gender"][c.ids.index("1011")] != ""


def test_missing_header_column_is_a_clear_error(tmp_path):
    (tmp_path / "styles.csv").write_text("id,gender\n1,Men\n")
    with pytest.raises(CatalogError, match="lacks column"):
        read_catalog(tmp_path)


def test_cache_skips_broken_photos_and_converts_odd_ones(catalog):
    c = read_catalog(catalog.root)
    cache = build_cache(c, progress=False)
    assert cache.pixels.shape == (len(c), 80, 60, 3) and cache.pixels.dtype == np.uint8
    assert set(cache.errors) == {str(i) for i in catalog.bad_images}
    assert "empty" in cache.errors["9002"] and "not found" in cache.errors["9001"]
    for pid in catalog.odd_images:
        i = c.ids.index(str(pid))
        assert cache.ok[i]
        # the drawn watch is blue: the centre pixel stays blue whatever the file's mode
        r, g, b = cache.pixels[i, 40, 30].astype(int)
        assert b > r + 60 or catalog.odd_images[pid] == "greyscale"
    assert "9001" in cache.report()


def test_cache_is_reused_and_keyed_by_content(catalog, tmp_path):
    c = read_catalog(catalog.root)
    first = build_cache(c, tmp_path, progress=False)
    files = sorted(tmp_path.glob("*.npy"))
    second = build_cache(c, tmp_path, progress=False)
    assert sorted(tmp_path.glob("*.npy")) == files and len(files) == 1
    assert np.array_equal(first.pixels, second.pixels)


def test_cache_refuses_to_live_inside_the_catalog(catalog):
    with pytest.raises(ValueError, match="outside"):
        build_cache(read_catalog(catalog.root), catalog.root / "cache", progress=False)


def test_letterbox_keeps_aspect_ratio(tmp_path):
    from PIL import Image
    img = Image.new("RGB", (60, 60), (0, 0, 0))
    path = tmp_path / "square.jpg"
    img.save(path)
    arr = decode(str(path))
    assert arr.shape == (80, 60, 3)
    assert arr[2, 30].min() > 240 and arr[40, 30].max() < 15  # white bands above, photo in the middle


def test_decode_errors_name_the_reason(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        decode(b"")
    with pytest.raises(ImageError, match="unreadable"):
        decode(b"not an image at all")


def test_dhash_survives_reencoding(tmp_path):
    from synthetic import draw
    img = draw("Tshirts", "Red", "Men")
    img.save(tmp_path / "a.jpg", quality=95)
    img.save(tmp_path / "b.jpg", quality=60)
    assert dhash(decode(str(tmp_path / "a.jpg"))) == dhash(decode(str(tmp_path / "b.jpg")))
    other = draw("Jeans", "Blue", "Women")
    other.save(tmp_path / "c.jpg")
    assert dhash(decode(str(tmp_path / "c.jpg"))) != dhash(decode(str(tmp_path / "a.jpg")))
