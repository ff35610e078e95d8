"""Product photos: finding them (files and folders walked in constant memory), reading any kind (file, bytes, PIL
image, array) into the model's fixed-size RGB input or an error that says why, and a perceptual hash to find
re-listed photos. Every path into a model (predict, the service, review, Ray, training's cache) reads photos here.

A shop's photos are 600-2,000 px and the model looks at 80x60, so plain JPEG, WebP and PNG files are decoded by
faster decoders than Pillow's (benchmarks/decode.py): JPEG by libjpeg-turbo at a reduced DCT scale (simplejpeg),
WebP by libwebp into one array (pywebp), PNG by libpng (imagecodecs). All three release the GIL, so predict's
decoding threads run beside inference, and training's photo cache reads through here too, so a model sees the same
pixels in training and in use. All three give Pillow's pixels exactly. Anything else (CMYK JPEG, 16-bit, palette
or transparent-colour PNG, animated WebP, GIF, ...) and any file a fast decoder rejects goes through Pillow, as
every photo did before: same pixels, same error messages."""

from __future__ import annotations

import io
import os
import struct
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import simplejpeg
import webp
from PIL import ExifTags, Image
from tqdm import tqdm

from fashiontag.data.framing import frame
from fashiontag.errors import FashiontagError
from fashiontag.model_folder import INPUT_HW, framing_of

# Decompression bombs: no product photo needs more than this many pixels.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
TOO_LARGE = "too large: {} is over the limit of " + f"{MAX_PIXELS:,} pixels"
BACKGROUND = (255, 255, 255)  # catalog photos sit on white, so padding and transparency become white
COUNT_BUDGET_S = 2.0  # counting a folder's photos for the progress bar's total, if it takes no longer than this
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ImageError(FashiontagError):
    pass


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become the white catalog background."""
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        span = max(float(arr.max() - arr.min()), 1e-6)
        img = Image.fromarray(((arr - arr.min()) * (255.0 / span)).astype(np.uint8))
    return img.convert("RGB")


# EXIF orientation -> the transpose that makes the photo upright (as PIL.ImageOps.exif_transpose does)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def upright(img: Image.Image) -> Image.Image:
    """The photo as its EXIF orientation says it is seen. Unlike ImageOps.exif_transpose, a photo without one is
    not copied: for a 600x800 photo that copy took longer than shrinking it to the model's size."""
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return img.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else img


def letterbox(img: Image.Image, hw: tuple[int, int] = INPUT_HW, framing: bool | float = False) -> np.ndarray:
    """Scale to fit inside hw keeping the aspect ratio, centre on the background: (H, W, 3) uint8.

    Letterboxing rather than stretching keeps shapes true, so a 60x60 photo of a watch is not squashed. With
    framing (framing.frame's `when`), the photo is first cropped to its product and padded with its own background
    colour.
    """
    h, w = hw
    img = to_rgb(upright(img))
    background = BACKGROUND
    if framing:
        img, found = frame(img, framing)
        background = found or BACKGROUND
    if img.size != (w, h):
        scale = min(w / img.width, h / img.height)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        resized = img.resize(size, Image.BILINEAR, reducing_gap=2.0)
        img = Image.new("RGB", (w, h), background)
        img.paste(resized, ((w - size[0]) // 2, (h - size[1]) // 2))
    return np.array(img, dtype=np.uint8)  # a writable copy: torch warns about read-only arrays


def decode(data: bytes | str, hw: tuple[int, int] = INPUT_HW, framing: bool | float = False) -> np.ndarray:
    """Bytes or a file path to a letterboxed (H, W, 3) uint8 array; raises ImageError with the reason.

    A plain JPEG, WebP or PNG goes through its fast decoder; anything else, and a file a fast decoder rejects,
    through Pillow, which also words the error of a file that cannot be read at all."""
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    else:
        try:
            with open(data, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise ImageError(f"file not found: {data}") from None
        except OSError:  # a folder, no permission: Pillow says so in its words, naming the file
            return decode_with_pillow(data, hw, framing)
    if not raw:
        raise ImageError("empty file")
    reader = FAST_READERS.get(_format(raw))
    img = reader(raw, hw) if reader else None
    if img is None:
        return decode_with_pillow(data, hw, framing)
    return letterbox(img, hw, framing)


def decode_with_pillow(data: bytes | str, hw: tuple[int, int] = INPUT_HW, framing: bool | float = False) -> np.ndarray:
    """decode() through Pillow alone: any format, any mode. The fallback, and the reference the fast decoders are
    measured against (tests/data/test_photos.py, benchmarks/decode.py)."""
    try:
        if isinstance(data, (bytes, bytearray)):
            src = io.BytesIO(data)
            size = len(data)
        else:
            src = data
            size = os.path.getsize(data)
        if size == 0:
            raise ImageError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                if img.width < 1 or img.height < 1:
                    raise ImageError("zero-pixel image")
                _check_pixels(img.width, img.height)
                img.draft("RGB", (hw[1] * 2, hw[0] * 2))  # JPEG: decode at reduced scale when the photo is big
                img.load()
                return letterbox(img, hw, framing)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"file not found: {data}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(TOO_LARGE.format("the photo")) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files; all mean "unreadable"
        raise ImageError(f"unreadable image ({type(e).__name__}: {e})") from None


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(TOO_LARGE.format(f"{width}x{height}"))


def _format(raw: bytes) -> str | None:
    """The container, from the file's first bytes (never its name: shops misname files)."""
    if raw[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return None


def _read_jpeg(raw: bytes, hw: tuple[int, int]) -> Image.Image | None:
    """A YCbCr, RGB or grey JPEG decoded at the DCT scale Pillow's draft picks (the largest power of two that keeps
    twice the model's size), so the pixels are Pillow's; None for CMYK and damaged data."""
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(raw)
        if colourspace in ("CMYK", "YCCK") or width < 1 or height < 1:
            return None
        _check_pixels(width, height)
        orientation = 1
        if b"Exif" in raw[:65536]:  # APP1 comes first; Pillow reads the header only (~0.05 ms)
            with Image.open(io.BytesIO(raw)) as head:
                orientation = head.getexif().get(ExifTags.Base.Orientation, 1)
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - Pillow's fallback reads it again and says what is wrong
        return None
    ratio = min(width // (hw[1] * 2), height // (hw[0] * 2))
    scale = next((s for s in (8, 4, 2) if ratio >= s), 1)
    try:
        rgb = simplejpeg.decode_jpeg(raw, "RGB", min_height=-(-height // scale), min_width=-(-width // scale))
    except Exception:  # noqa: BLE001 - any complaint (truncated, corrupt data): Pillow decides and words it
        return None
    img = Image.fromarray(rgb)
    return img.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else img


def _read_png(raw: bytes, hw: tuple[int, int]) -> Image.Image | None:
    """An 8-bit grey, RGB or RGBA PNG (alpha composited on white later, in to_rgb); None for 16-bit, palette and
    transparent-colour files, animations and files with EXIF (orientation), which Pillow reads."""
    if len(raw) < 33 or raw[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", raw[16:26])
    if depth != 8 or colour not in (0, 2, 4, 6) or width < 1 or height < 1:
        return None
    chunks = _png_chunks(raw)
    if chunks & {b"tRNS", b"acTL", b"eXIf"} or (chunks & {b"tEXt", b"zTXt", b"iTXt"}
                                                and b"Raw profile type exif" in raw):  # EXIF as ImageMagick writes it
        return None
    _check_pixels(width, height)
    try:
        pixels = imagecodecs.png_decode(raw)
        return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    except Exception:  # noqa: BLE001 - Pillow decides and words it
        return None


def _png_chunks(raw: bytes) -> set[bytes]:
    """The types of a PNG's chunks, walked by their lengths (a few dozen steps, the data never read)."""
    kinds, at = set(), 8
    while at + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[at:at + 8])
        kinds.add(kind)
        at += 12 + length
    return kinds


WEBP_ANIMATED, WEBP_EXIF = 0x02, 0x08  # VP8X flags


def _read_webp(raw: bytes, hw: tuple[int, int]) -> Image.Image | None:
    """A still WebP, lossy or lossless, with or without alpha, decoded by libwebp at full size straight into one
    array (Pillow's decoder goes through its animation decoder and a mode conversion: twice the time). Not shrunk
    while decoding: libwebp's scaler averages in YUV before converting, which moved pixels 0.13 levels from
    Pillow's path and changed labels; at full size the pixels are Pillow's exactly (benchmarks/decode.py). None for
    animations (Pillow takes the first frame), files with EXIF (orientation) and damaged data."""
    if len(raw) < 30 or (raw[12:16] == b"VP8X" and raw[20] & (WEBP_ANIMATED | WEBP_EXIF)):
        return None
    ffi, lib = webp.ffi, webp.lib
    config = ffi.new("WebPDecoderConfig *")
    if not lib.WebPInitDecoderConfig(config) or \
            lib.WebPGetFeatures(raw, len(raw), ffi.addressof(config, "input")) != lib.VP8_STATUS_OK:
        return None
    width, height = config.input.width, config.input.height
    if width < 1 or height < 1:
        return None
    _check_pixels(width, height)
    alpha = bool(config.input.has_alpha)
    pixels = np.empty((height, width, 4 if alpha else 3), np.uint8)
    out = config.output
    out.colorspace = lib.MODE_RGBA if alpha else lib.MODE_RGB
    out.is_external_memory = 1
    out.u.RGBA.rgba = ffi.cast("uint8_t *", ffi.from_buffer(pixels))
    out.u.RGBA.stride, out.u.RGBA.size = pixels.strides[0], pixels.size
    if lib.WebPDecode(raw, len(raw), config) != lib.VP8_STATUS_OK:
        return None  # Pillow decides and words it
    return Image.fromarray(pixels)


# The fast decoder of each format; benchmarks/decode.py empties it to measure Pillow alone.
FAST_READERS = {"jpeg": _read_jpeg, "png": _read_png, "webp": _read_webp}


def load_photo(source, hw: tuple[int, int] = INPUT_HW, framing: bool | float = False) -> np.ndarray:
    """A path, bytes, PIL image or (H, W, 3) uint8 array of any size to the letterboxed (H, W, 3) model input.

    Raises ImageError for a photo that cannot be read (the message says why) and ValueError for an argument that is
    not a photo at all (wrong type, dtype or shape): a wrong array must never be tagged silently."""
    if isinstance(source, (str, Path)):
        return decode(str(source), hw, framing)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode(bytes(source), hw, framing)
    if isinstance(source, Image.Image):
        if source.width < 1 or source.height < 1:
            raise ImageError("zero-pixel image")
        return letterbox(source, hw, framing)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ValueError(f"a photo array must be uint8 (0-255), got {source.dtype}: convert it, e.g. "
                             "(x * 255).round().astype(np.uint8) for floats in [0, 1]")
        if source.ndim != 3 or source.shape[2] != 3 or 0 in source.shape:
            raise ValueError(f"a photo array must be (height, width, 3) RGB, got shape {source.shape}")
        return letterbox(Image.fromarray(source), hw, framing)
    raise ValueError(f"cannot read a photo from {type(source).__name__}: give a path, bytes, a PIL image or an "
                     "(H, W, 3) uint8 array")


@dataclass(frozen=True)
class PhotoInput:
    """What a model takes: the letterbox size and whether photos are framed first. Derived from the model's own
    description (model.json), so every path into a model (CLI, API, service, evaluation) prepares photos alike."""
    hw: tuple[int, int] = INPUT_HW
    framing: bool | float = False  # framing.frame's `when`

    @classmethod
    def of(cls, meta: dict) -> PhotoInput:
        return cls(tuple(meta.get("input_hw", INPUT_HW)), framing_of(meta))

    def load(self, source) -> np.ndarray:
        """See load_photo."""
        return load_photo(source, self.hw, self.framing)


@dataclass
class Problems:
    """What predict reports besides rows: paths that do not exist and folders that could not be read."""
    missing: list[str] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)
    duplicate_ids: int = 0
    quiet: bool = False

    def warn(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(f"warning: {message}", file=sys.stderr)


def iter_image_paths(paths: Iterable[str | Path], problems: Problems | None = None) -> Iterator[Path]:
    """Files as given; folders walked recursively for image files. A missing path is yielded as is, so its row
    reports the error. Streams: a folder's files come in directory order, then its subfolders by name, so a
    folder of a million photos is never listed into memory."""
    problems = problems or Problems()
    for p in map(Path, paths):
        if p.is_dir():
            yield from _walk(p, problems)
        else:
            if not p.exists():
                problems.missing.append(str(p))
                problems.warn(f"{p}: no such file or folder")
            yield p


def _walk(folder: Path, problems: Problems) -> Iterator[Path]:
    subfolders, stems = [], {}
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    subfolders.append(e.name)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                    stem = os.path.splitext(e.name)[0]
                    if stem in stems:  # x.png and x.webp: two rows with one id
                        problems.duplicate_ids += 1
                        problems.warn(f"{e.path} and {stems[stem]} share the id {stem!r}")
                    stems[stem] = e.path
                    yield Path(e.path)
    except OSError as e:
        problems.unreadable_folders.append(str(folder))
        problems.warn(f"{folder}: folder cannot be read ({e.strerror or e}); its photos are not tagged")
        return
    for name in sorted(subfolders):
        yield from _walk(folder / name, problems)


def count_images(paths: list[str], budget_s: float = COUNT_BUDGET_S) -> int | None:
    """How many photos iter_image_paths will yield, or None if counting takes longer than budget_s."""
    deadline = time.monotonic() + budget_s
    n = 0
    for _ in iter_image_paths(paths, Problems(quiet=True)):
        n += 1
        if n % 1000 == 0 and time.monotonic() > deadline:
            return None
    return n


def load_or_error(path: Path, photo_input: PhotoInput) -> tuple[np.ndarray | None, str]:
    """The photo as the model takes it and '', or None and why it cannot be read."""
    try:
        return photo_input.load(path), ""
    except ImageError as e:
        return None, str(e)


def load_batch(paths: list[Path], photo_input: PhotoInput) -> tuple[np.ndarray, list[str]]:
    """The readable photos of a batch stacked in order, and one error per path ('' for a readable one)."""
    pixels = np.empty((len(paths), *photo_input.hw, 3), np.uint8)
    errors, n = [], 0
    for path in paths:
        arr, err = load_or_error(path, photo_input)
        errors.append(err)
        if arr is not None:
            pixels[n] = arr
            n += 1
    return pixels[:n], errors


def nchw_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) to the float32 (N, 3, H, W) in [0, 1] that every model and export takes."""
    return pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255


HASH_VERSION = 2  # part of the cache key: a changed hash must not reuse old caches


def dhash(rgb: np.ndarray) -> int:
    """64-bit difference hash: robust to re-encoding and small resizes, so re-listed photos share it.

    A bit is set only where brightness rises by more than a few levels: on the flat white background a plain
    `>` would flip with every re-encoding's noise.
    """
    grey = Image.fromarray(rgb).convert("L").resize((9, 8), Image.BOX)
    px = np.asarray(grey, dtype=np.int16)
    bits = (px[:, 1:] - px[:, :-1] > 4).flatten()
    return int(np.packbits(bits).view(">u8")[0])
