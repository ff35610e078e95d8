
import codecs
import json

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


# Nothing about a catalog breaks quietly (issue 10): the reader loses no row to stray quotes, byte-order marks, huge
# fields or Latin-1, and a damaged image cache is rebuilt, never trained on.

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def row(pid: int, name: str = "") -> str:
    return f"{pid},Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,{name or f'Brand Shirt {pid}'}"


def write(tmp_path, rows: list[str], encoding: str = "utf-8", prefix: bytes = b""):
    (tmp_path / "styles.csv").write_bytes(prefix + "\n".join([HEADER] + rows + [""]).encode(encoding))
    return tmp_path


def test_a_stray_quote_merges_no_rows_and_is_reported(tmp_path):
    rows = [row(i) for i in range(1, 401)]
    rows[19] = row(20, '"Quoted Brand Shirt')  # line 21: the quote never closes
    c = read_catalog(write(tmp_path, rows))
    assert c.ids == [str(i) for i in range(1, 401)]
    assert c.titles[19] == "Quoted Brand Shirt" and c.titles[20] == "Brand Shirt 21"
    assert len(c.problems) == 1 and "line 21: a quote opened here runs on to line 401" in c.problems[0]


def test_a_field_with_a_line_break_is_reported(tmp_path):
    c = read_catalog(write(tmp_path, [row(1), row(2, '"Two\nLines"'), row(3)]))
    assert c.ids == ["1", "2", "3"]
    assert any("line 3: a quote opened here runs on to line 4" in p for p in c.problems)
    assert any("line 4: 1 fields, expected 10; skipped" in p for p in c.problems)


def test_a_byte_order_mark_is_accepted(tmp_path):
    c = read_catalog(write(tmp_path, [row(1), row(2)], prefix="\ufeff".encode()))
    assert c.ids == ["1", "2"] and c.problems == []


def test_a_field_over_the_csv_limit_is_reported_not_raised(tmp_path):
    c = read_catalog(write(tmp_path, [row(1), row(2, "x" * 200_000), row(3)]))
    assert c.ids == ["1", "3"]
    assert len(c.problems) == 1 and "line 3: field larger than field limit" in c.problems[0]


def test_a_suspiciously_long_field_is_reported_by_line(tmp_path):
    c = read_catalog(write(tmp_path, [row(1), row(2), row(3, "y" * 5000)]))
    assert c.ids == ["1", "2", "3"]
    assert c.problems == ["styles.csv line 4: productDisplayName is 5,000 characters long; kept, but check the row"]


def test_a_latin1_file_is_decoded_and_says_so(tmp_path):
    c = read_catalog(write(tmp_path, [row(1), row(2, "Café Crème Shirt"), row(3)], encoding="latin-1"))
    assert c.titles[1] == "Café Crème Shirt"
    assert c.problems == ["styles.csv is not UTF-8 from line 3 (byte 0xe9) on; read as cp1252 (Latin-1)"]


@pytest.mark.parametrize("encoding, prefix", [("utf-16", b""), ("utf-16-le", b""), ("utf-16-be", b""),
                                              ("utf-32", b""), ("utf-16-le", b"\xff\xfe")])
def test_a_utf16_or_utf32_file_is_read_as_such(tmp_path, encoding, prefix):
    """Issue 20 #16: a UTF-16 catalog was read as cp1252 and refused with column names full of NUL bytes."""
    c = read_catalog(write(tmp_path, [row(1), row(2, "Café Crème Shirt"), row(3)], encoding, prefix))
    assert c.ids == ["1", "2", "3"] and c.titles[1] == "Café Crème Shirt" and c.problems == []
    assert c.columns["gender"] == ["Men"] * 3


def test_broken_utf16_is_refused_naming_the_encoding(tmp_path):
    (tmp_path / "styles.csv").write_bytes(codecs.BOM_UTF16_LE + "\n".join([HEADER, row(1)]).encode("utf-16-le")
                                          + b"\x00\xdc")  # a low surrogate with no high one before it
    with pytest.raises(CatalogError, match="looks like UTF-16 but is not valid UTF-16 at line 2"):
        read_catalog(tmp_path)


def test_a_stray_nul_in_a_utf8_file_is_no_reason_to_read_it_as_utf16(tmp_path):
    c = read_catalog(write(tmp_path, [row(1), row(2, "Odd\x00Shirt"), row(3)]))
    assert c.ids == ["1", "2", "3"] and c.titles[1] == "Odd\x00Shirt"


def test_a_file_in_no_known_encoding_is_refused_with_the_line(tmp_path):
    write(tmp_path, [row(1), row(2, "Caf\x81 Shirt")], encoding="latin-1")  # 0x81: no character in cp1252
    with pytest.raises(CatalogError, match=r"neither UTF-8 \(at line 3 \(byte 0x81\)\) nor cp1252"):
        read_catalog(tmp_path)


@pytest.fixture
def cached(catalog, tmp_path):
    """A fresh image cache of the synthetic catalog in its own folder: (catalog, folder, pixels file, pixels)."""
    from fashiontag.data.cache import build_cache
    c = read_catalog(catalog.root)
    pixels = np.array(build_cache(c, tmp_path, progress=False).pixels)
    return c, tmp_path, next(tmp_path.glob("*.npy")), pixels


def reopen(c, folder, capsys):
    from fashiontag.data.cache import build_cache
    cache = build_cache(c, folder, progress=False)
    return cache, capsys.readouterr().err


def test_a_cache_written_over_is_rebuilt_not_trained_on(cached, capsys):
    c, folder, npy, pixels = cached
    size = npy.stat().st_size
    with open(npy, "r+b") as f:  # same size, other contents
        f.seek(size // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    assert npy.stat().st_size == size
    cache, err = reopen(c, folder, capsys)
    assert "checksum mismatch in photos 0-" in err and "rebuilding" in err
    assert np.array_equal(cache.pixels, pixels)
    assert reopen(c, folder, capsys)[1] == ""  # the rebuilt cache passes


def test_a_truncated_cache_is_rebuilt(cached, capsys):
    c, folder, npy, pixels = cached
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size // 3)
    cache, err = reopen(c, folder, capsys)
    assert "cannot be read" in err and "mmap length is greater than file size" in err and "rebuilding" in err
    assert np.array_equal(cache.pixels, pixels)


@pytest.mark.parametrize("seed", range(3))
def test_a_cache_whose_npy_header_is_written_over_is_rebuilt(cached, capsys, seed):
    """Issue 20 #9: bytes 10-20 (inside the header's dict) made numpy raise tokenize.TokenError, which the rebuild
    path did not catch, so every later run failed until the file was deleted by hand."""
    c, folder, npy, pixels = cached
    with open(npy, "r+b") as f:
        f.seek(10)
        f.write(np.random.default_rng(seed).integers(0, 256, 11, dtype=np.uint8).tobytes())
    cache, err = reopen(c, folder, capsys)
    assert "damaged, cannot be read" in err and "rebuilding" in err
    assert np.array_equal(cache.pixels, pixels)
    assert reopen(c, folder, capsys)[1] == ""


def test_a_cache_without_checksums_is_rebuilt(cached, capsys):
    c, folder, npy, pixels = cached
    meta_path = npy.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    del meta["checksums"]
    meta_path.write_text(json.dumps(meta))
    cache, err = reopen(c, folder, capsys)
    assert "has no checksums" in err
    assert "checksums" in json.loads(meta_path.read_text()) and np.array_equal(cache.pixels, pixels)
