"""Full-size photos through the fast decoders (issue 26): every kind of file tags as it does through Pillow alone,
a photo stored sideways is tagged upright, what a fast decoder rejects is read by Pillow, and a file nobody can
read gives its error."""

import random

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from fashiontag import Tagger
from fashiontag.data import photos
from fashiontag.data.photos import ImageError, decode, decode_with_pillow
from synthetic import draw

MAX_CONFIDENCE_DIFF = 1e-3
REENCODED_CONFIDENCE_DIFF = 0.02  # a turned photo saved again is not the same JPEG: its blocks fall elsewhere


@pytest.fixture(scope="module")
def tagger():
    return Tagger.load(engine="onnx")


def product(size=(600, 800)) -> Image.Image:
    """A drawn product upscaled to a shop's photo size; its grey mark sits in one corner, so a photo turned or
    mirrored by mistake is not the same photo."""
    return draw("Tshirts", "Red", "Men", rng=random.Random(3)).resize(size, Image.BICUBIC)


def with_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = Image.new("L", img.size, 0)
    alpha.paste(255, (img.width // 8, img.height // 8, img.width * 7 // 8, img.height * 7 // 8))
    rgba.putalpha(alpha)
    return rgba


def frames(img: Image.Image) -> list[Image.Image]:
    return [img, img.transpose(Image.Transpose.ROTATE_180), Image.new("RGB", img.size, (0, 90, 0))]


def odd_inputs(folder):
    """name -> file: plain files (the fast paths) and every odd kind a shop sends."""
    p = product()
    made = {
        "plain.jpg": lambda f: p.save(f, quality=90),
        "big.jpg": lambda f: product((1200, 1600)).save(f, quality=90),
        "grey.jpg": lambda f: p.convert("L").save(f),
        "cmyk.jpg": lambda f: p.convert("CMYK").save(f),
        "progressive.jpg": lambda f: product((1200, 1600)).save(f, progressive=True),
        "plain.png": lambda f: p.save(f),
        "grey.png": lambda f: p.convert("L").save(f),
        "grey16.png": lambda f: Image.fromarray(np.asarray(p.convert("L"), np.uint16) * 257).save(f),
        "palette.png": lambda f: p.convert("P", palette=Image.Palette.ADAPTIVE).save(f),
        "transparent.png": lambda f: with_alpha(p).save(f),
        "transparent-grey.png": lambda f: with_alpha(p).convert("LA").save(f),
        "transparent-palette.png": lambda f: p.convert("P").save(f, transparency=0),
        "transparent-colour.png": lambda f: p.save(f, transparency=(255, 255, 255)),
        "plain.webp": lambda f: p.save(f, quality=80),
        "lossless.webp": lambda f: p.save(f, lossless=True),
        "transparent.webp": lambda f: with_alpha(p).save(f, quality=80),
        "animated.webp": lambda f: p.save(f, save_all=True, append_images=frames(p)[1:], duration=100),
        "animated.gif": lambda f: p.save(f, save_all=True, append_images=frames(p)[1:], duration=100),
        "misnamed-png.jpg": lambda f: p.save(f, format="PNG"),
    }
    for name, save in made.items():
        save(folder / name)
    return {name: folder / name for name in made}


def assert_same_tags(tagger, got: np.ndarray, want: np.ndarray, what: str, tolerance=MAX_CONFIDENCE_DIFF) -> None:
    a, b = tagger.tag_pixels(np.stack([got, want]))
    assert a.labels() == b.labels(), what
    for task, tag in a.tags.items():
        assert tag.confidence == pytest.approx(b.tags[task].confidence, abs=tolerance), (what, task)


def test_every_kind_of_photo_tags_as_through_pillow(tmp_path):
    """The same pixels, so the same tags: a fast decoder that only came close (libwebp shrinking in YUV while it
    decoded was 0.13 levels off) changed labels on the catalog."""
    for name, path in odd_inputs(tmp_path).items():
        fast, pillow = decode(str(path)), decode_with_pillow(str(path))
        assert np.array_equal(fast, pillow), (name, np.abs(fast.astype(int) - pillow).mean())
        assert np.array_equal(decode(path.read_bytes()), fast), name  # bytes (the service) as the file


def test_plain_files_take_the_fast_decoders_and_odd_ones_pillow(tmp_path):
    """Which path each file takes: a fast decoder that is never used would pass the test above unseen."""
    fast = set()
    for name, path in odd_inputs(tmp_path).items():
        raw = path.read_bytes()
        reader = photos.FAST_READERS.get(photos._format(raw))
        if reader and reader(raw, (80, 60)) is not None:
            fast.add(name)
    assert fast == {"plain.jpg", "big.jpg", "grey.jpg", "progressive.jpg", "plain.png", "grey.png",
                    "transparent.png", "transparent-grey.png", "plain.webp", "lossless.webp", "transparent.webp",
                    "misnamed-png.jpg"}


# EXIF orientation o -> how to store the upright photo so that o turns it upright again
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".png"])
def test_a_photo_stored_sideways_is_tagged_as_its_upright_copy(tagger, tmp_path, suffix):
    upright = tmp_path / f"upright{suffix}"
    product((1200, 1600)).save(upright, quality=95)
    want = decode(str(upright))
    for orientation, stored in STORED.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}{suffix}"
        product((1200, 1600)).transpose(stored).save(path, quality=95, exif=exif)
        for read in (decode, decode_with_pillow):
            got = read(str(path))
            assert np.abs(got.astype(int) - want).mean() < 2, (orientation, read.__name__)
            assert_same_tags(tagger, got, want, f"orientation {orientation}", REENCODED_CONFIDENCE_DIFF)
        # the same pixels without their orientation are another photo: the check above can fail
        exif[0x0112] = 1
        product((1200, 1600)).transpose(stored).save(path, quality=95, exif=exif)
        assert np.abs(decode(str(path)).astype(int) - want).mean() > 10, orientation


def test_a_file_the_fast_decoder_rejects_is_read_by_pillow(tagger, tmp_path):
    """A JPEG with stray bytes before its scan: libjpeg warns, simplejpeg (strict) refuses, Pillow reads."""
    clean = tmp_path / "clean.jpg"
    product((1200, 1600)).save(clean, quality=90)
    data = clean.read_bytes()
    stray = tmp_path / "stray.jpg"
    scan = data.index(b"\xff\xda")
    stray.write_bytes(data[:scan] + b"\x00\x00\x00" + data[scan:])
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(stray.read_bytes())
    got = decode(str(stray))
    assert np.array_equal(got, decode_with_pillow(str(stray)))
    assert_same_tags(tagger, got, decode(str(clean)), "stray bytes")


def test_a_file_nobody_can_read_gives_its_error(tmp_path):
    clean = tmp_path / "clean.jpg"
    product((1200, 1600)).save(clean, quality=90)
    product().save(tmp_path / "clean.png")
    product().save(tmp_path / "clean.webp")
    cases = {"truncated.jpg": clean.read_bytes()[:5000], "text.jpg": b"not a photo at all",
             "truncated.png": (tmp_path / "clean.png").read_bytes()[:3000],
             "truncated.webp": (tmp_path / "clean.webp").read_bytes()[:300]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match="unreadable image") as err:
            decode(str(tmp_path / name))
        with pytest.raises(ImageError) as pillow_err:
            decode_with_pillow(str(tmp_path / name))
        assert str(err.value) == str(pillow_err.value), name  # the fast decoders leave the wording to Pillow
    with pytest.raises(ImageError, match=f"cannot identify image file '{tmp_path / 'text.jpg'}'"):
        decode(str(tmp_path / "text.jpg"))
    with pytest.raises(ImageError, match=f"^file not found: {tmp_path / 'missing.png'}$"):
        decode(str(tmp_path / "missing.png"))
    (tmp_path / "empty.webp").write_bytes(b"")
    with pytest.raises(ImageError, match="^empty file$"):
        decode(str(tmp_path / "empty.webp"))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_the_pixel_limit_holds_on_the_fast_path(tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    Image.new("L", (7000, 7000), 255).save(path)
    assert photos._format(path.read_bytes()) in photos.FAST_READERS
    with pytest.raises(ImageError, match="^too large: 7000x7000 is over the limit of 40,000,000 pixels$"):
        decode(str(path))
