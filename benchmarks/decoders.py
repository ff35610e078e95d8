"""The decoders issue 26 considered, bare: CPU ms per photo to decode (no letterbox), one thread, best of 3
interleaved rounds over the first 200 photos of each format benchmarks/decode.py makes (run it first). A candidate
whose package is not installed is skipped with a line (pyspng and OpenCV are not fashiontag's: install them beside
it to compare). pyvips runs with one thread (VIPS_CONCURRENCY=1), so its CPU time is one core's.

    .venv/bin/python benchmarks/decoders.py

What data/photos.py uses and why is in docs/results.md ("Full-size photos").
"""

from __future__ import annotations

import importlib
import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("VIPS_CONCURRENCY", "1")
BENCH = Path.home() / ".cache" / "fashiontag" / "bench" / "decode-4000"
SHRINK = 5  # 600x800 -> 120x160: what Pillow's resize to 80x60 box-filters to first (reducing_gap 2)


def pillow(raw: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def candidates() -> dict[str, dict[str, object]]:
    """format -> name -> decode(bytes), for the packages that are installed."""
    found: dict[str, dict[str, object]] = {"jpeg": {}, "webp": {"Pillow": pillow}, "png": {"Pillow": pillow}}

    def have(name: str):
        try:
            return importlib.import_module(name)
        except ImportError:
            print(f"({name} not installed: skipped)")
            return None

    if simplejpeg := have("simplejpeg"):
        found["jpeg"]["simplejpeg at 1/8"] = lambda raw: simplejpeg.decode_jpeg(raw, "RGB", min_height=200,
                                                                                min_width=150)
    if imagecodecs := have("imagecodecs"):
        found["webp"]["imagecodecs (libwebp)"] = imagecodecs.webp_decode
        found["png"]["imagecodecs png (libpng)"] = imagecodecs.png_decode
        found["png"]["imagecodecs spng (libspng)"] = imagecodecs.spng_decode
    if webp := have("webp"):
        from fashiontag.data import photos
        found["webp"]["pywebp at full size"] = lambda raw: webp.WebPData.from_buffer(raw).decode(
            webp.WebPColorMode.RGB)
        found["webp"]["pywebp at full size into one array (photos.py)"] = lambda raw: photos._read_webp(raw, (80, 60))
    if pyvips := have("pyvips"):
        pyvips.cache_set_max(0)
        found["jpeg"]["pyvips shrink 8"] = lambda raw: pyvips.Image.new_from_buffer(raw, "", shrink=8).numpy()
        found["webp"][f"pyvips scale 1/{SHRINK}"] = lambda raw: pyvips.Image.new_from_buffer(
            raw, "", scale=1 / SHRINK).numpy()
        found["png"]["pyvips (libspng)"] = lambda raw: pyvips.Image.new_from_buffer(raw, "").numpy()
    if pyspng := have("pyspng"):
        found["png"]["pyspng (libspng; holds the GIL)"] = pyspng.load
    if cv2 := have("cv2"):
        cv2.setNumThreads(1)
        for fmt in ("webp", "png"):
            found[fmt]["OpenCV imdecode"] = lambda raw: cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return found


def bare_ms(decoders: dict[str, object], files: list[bytes], rounds: int = 3) -> dict[str, float]:
    """name -> best round's CPU ms per photo; rounds interleave the decoders, so a busy spell on a shared machine
    does not fall on one of them alone."""
    best = dict.fromkeys(decoders, float("inf"))
    for decode in decoders.values():
        decode(files[0])  # imports and first-call set-up are not per photo
    for _ in range(rounds):
        for name, decode in decoders.items():
            t0 = time.process_time()
            for raw in files:
                decode(raw)
            best[name] = min(best[name], (time.process_time() - t0) / len(files) * 1e3)
    return best


def main() -> None:
    labels = {"jpeg": "1200x1600 JPEG", "webp": "600x800 WebP", "png": "600x800 PNG"}
    rows = []
    for fmt, decoders in candidates().items():
        folder = BENCH / fmt
        if not folder.is_dir():
            raise SystemExit(f"{folder} is missing: run benchmarks/decode.py first, it makes the photos")
        files = [p.read_bytes() for p in sorted(folder.iterdir())[:200]]
        rows += [f"| {labels[fmt]} | {name} | {ms:.2f} |" for name, ms in bare_ms(decoders, files).items()]
    print(f"\n{os.cpu_count()} cores; CPU ms per photo, one thread, best of 3 interleaved rounds over 200 photos\n")
    print("| photos | decoder | ms per photo |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
