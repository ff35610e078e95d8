"""Decode a catalog's photos once into a memory-mapped uint8 array, outside the data folder.

The cache is keyed by the catalog's content and the input size, so later epochs and runs never decode JPEG again,
and an edited catalog gets a fresh cache. Its metadata holds a checksum per 1,000 photos, checked whenever the cache
is opened: a truncated, overwritten or otherwise damaged cache is rebuilt, never trained on.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fashiontag.data.catalog import Catalog
from fashiontag.data.framing import VERSION as FRAMING_VERSION
from fashiontag.data.photos import HASH_VERSION, ImageError, decode, dhash
from fashiontag.model_folder import INPUT_HW, default_cache_dir

CHUNK = 1000  # photos per checksum


@dataclass
class ImageCache:
    pixels: np.ndarray          # (N, H, W, 3) uint8, memory-mapped, one row per catalog row
    ok: np.ndarray              # (N,) bool: the row's photo decoded
    hashes: np.ndarray          # (N,) uint64 difference hash of each photo
    errors: dict[str, str]      # product id -> why its photo could not be used

    def report(self, n_named: int = 5) -> str:
        if not self.errors:
            return f"all {len(self.ok):,} photos readable"
        named = "; ".join(f"{pid}: {why}" for pid, why in list(self.errors.items())[:n_named])
        return f"{len(self.errors):,} of {len(self.ok):,} photos unusable and skipped (e.g. {named})"


def build_cache(catalog: Catalog, cache_dir: str | Path | None = None, hw: tuple[int, int] = INPUT_HW,
                progress: bool = True, workers: int | None = None, framing: bool | float = False) -> ImageCache:
    """The catalog's photos decoded as the model takes them (letterboxed to hw, framed as `framing` says:
    framing.frame's `when`)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if cache_dir.resolve().is_relative_to(catalog.root.resolve()):
        raise ValueError(f"cache dir {cache_dir} is inside the catalog folder; caches go outside it")
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = f"{catalog.content_key()}-{hw[0]}x{hw[1]}-h{HASH_VERSION}{_framing_key(framing)}"
    pix_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    n = len(catalog)
    if pix_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            pixels = np.load(pix_path, mmap_mode="r")
            damage = _damage(pixels, meta, (n, *hw, 3))
            if damage is None:
                return ImageCache(pixels, np.array(meta["ok"], bool), np.array(meta["hashes"], np.uint64),
                                  meta["errors"])
        # Any failure to read what is on disk is damage: numpy's .npy header parser alone raises ValueError,
        # SyntaxError or tokenize.TokenError on bytes written over, and "mmap length is greater than file size"
        # when cut short. Rebuilding is always safe; one run refusing means every later run refuses too.
        except Exception as e:  # noqa: BLE001
            damage = f"damaged, cannot be read ({type(e).__name__}: {e})"
        print(f"image cache {pix_path}: {damage}; rebuilding it", file=sys.stderr)

    if progress:
        print(f"building the photo cache: {n:,} photos at {hw[0]}x{hw[1]}, {n * hw[0] * hw[1] * 3 / 1e6:,.0f} MB "
              f"in {cache_dir}", file=sys.stderr)
    tmp = pix_path.with_suffix(f".tmp{os.getpid()}.npy")
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *hw, 3))
    ok = np.zeros(n, bool)
    hashes = np.zeros(n, np.uint64)
    errors: dict[str, str] = {}

    def load(i: int):
        try:
            return i, decode(str(catalog.photos[i]), hw, framing), None
        except ImageError as e:
            return i, None, str(e)

    # The decoders (photos.decode) release the GIL, so threads use every core without copying arrays between
    # processes.
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        for i, arr, err in tqdm(pool.map(load, range(n), chunksize=64), total=n, disable=not progress,
                                desc="decoding photos", unit="img"):
            if err is None:
                pixels[i] = arr
                ok[i] = True
                hashes[i] = dhash(arr)
            else:
                errors[catalog.ids[i]] = err
    pixels.flush()
    meta = {"ok": ok.tolist(), "hashes": [int(h) for h in hashes], "errors": errors,
            "checksums": {"crc32_per_photos": CHUNK, "values": _checksums(pixels)}}
    del pixels
    os.replace(tmp, pix_path)
    tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return ImageCache(np.load(pix_path, mmap_mode="r"), ok, hashes, errors)


def _framing_key(framing: bool | float) -> str:
    """The cache file's name part for a framing: none for whole photos, as caches made before it were named."""
    if framing is False:
        return ""
    return ("-framed" if framing is True else f"-framed{framing:g}") + f"-v{FRAMING_VERSION}"


def _checksums(pixels: np.ndarray) -> list[int]:
    """CRC-32 of each run of CHUNK photos. Not a cryptographic hash: it guards against accidents (a file cut short or
    written over), and it checks the real 576 MB cache in a few hundred ms where hashlib's blake2b takes 2 s."""
    return [zlib.crc32(pixels[s:s + CHUNK]) for s in range(0, len(pixels), CHUNK)]


def _damage(pixels: np.ndarray, meta: dict, shape: tuple) -> str | None:
    """What is wrong with an opened cache, or None."""
    if pixels.shape != shape or pixels.dtype != np.uint8:
        return f"holds {pixels.dtype} {pixels.shape}, expected uint8 {shape}"
    stored = meta.get("checksums", {})
    if stored.get("crc32_per_photos") != CHUNK:
        return "has no checksums (written by an older fashiontag)"
    for i, (a, b) in enumerate(zip(_checksums(pixels), stored["values"])):
        if a != b:
            last = min((i + 1) * CHUNK, len(pixels)) - 1
            return f"checksum mismatch in photos {i * CHUNK:,}-{last:,}: written over or damaged"
    return None
