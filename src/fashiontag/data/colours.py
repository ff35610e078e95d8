"""Dominant colours of the product in a photo, and the nearest class of a shop's colour vocabulary.

The studio background is removed the way framing.py finds it (the median colour of a thin border ring, when
that ring is one plain, light, nearly neutral colour; a photo without one is all product). The product's pixels
are clustered with k-means in CIE Lab, where distance follows perceived colour difference (delta E 1976), so
"navy" and "black" do not merge while two shades of a shirt's red do. Numpy only; photos are processed in
batches, every step vectorised over the batch.

Colour classes are learnt, not tabled: colour_centroids(photos, labels) puts one Lab centroid per class from
training photos, so "Mustard" or a shop's own "Petrol" works as well as "Red".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fashiontag.data.framing import BACKGROUND_MAX_CHROMA, BACKGROUND_MIN_BRIGHTNESS, RING, TOLERANCE, UNIFORM_SHARE

K = 3              # colours per photo: a garment, its print or trim, a third for shoes' soles and bags' straps
ITERATIONS = 8     # k-means steps; on 1,200 pixels in 3 dimensions it has settled by then
STRIDE = 2         # every second pixel each way: the colours of a model-sized photo do not change, 4x less work
MERGE_DELTA_E = 10.0   # clusters closer than this are one colour told twice (k-means splits a plain product)
MIN_PRODUCT = 0.01     # fewer product pixels than this share of a model-sized photo are too few to cluster
BATCH = 256

# sRGB (D65) -> linear -> XYZ -> Lab, the standard constants.
_LINEAR = np.where((v := np.arange(256) / 255) <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)
_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) sRGB -> float32 (..., 3) CIE Lab (L 0..100)."""
    xyz = _LINEAR[np.asarray(rgb, dtype=np.uint8)] @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def hex_to_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)], np.uint8)


def product_masks(photos: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> bool (N, H, W): True on the product. A photo without a plain, light border, or with
    almost nothing on it, is all product (framing.find_product's rules, on arrays)."""
    n, h, w, _ = photos.shape
    r = max(1, round(RING * min(h, w)))
    ring = np.concatenate([photos[:, :r].reshape(n, -1, 3), photos[:, -r:].reshape(n, -1, 3),
                           photos[:, r:-r, :r].reshape(n, -1, 3), photos[:, r:-r, -r:].reshape(n, -1, 3)], 1)
    background = np.median(ring, axis=1).astype(np.int16)                                    # (N, 3)
    differs = np.abs(photos.astype(np.int16) - background[:, None, None]).max(-1) > TOLERANCE  # (N, H, W)
    ring_differs = (np.abs(ring.astype(np.int16) - background[:, None]).max(-1) > TOLERANCE).mean(1)
    plain = ((background.mean(1) >= BACKGROUND_MIN_BRIGHTNESS)
             & (background.max(1) - background.min(1) <= BACKGROUND_MAX_CHROMA)
             & (ring_differs <= 1 - UNIFORM_SHARE)
             & (differs.mean((1, 2)) >= MIN_PRODUCT))
    return np.where(plain[:, None, None], differs, True)


def kmeans_colours(photos: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) -> per photo k clusters of product pixels, largest first: Lab centres (N, k, 3), mean
    sRGB (N, k, 3) uint8 and share of the product's area (N, k; an unused cluster has share 0)."""
    out = [_kmeans(photos[i:i + BATCH], k) for i in range(0, len(photos), BATCH)]
    return tuple(np.concatenate(parts) for parts in zip(*out))


def _kmeans(photos: np.ndarray, k: int):
    rgb = photos[:, ::STRIDE, ::STRIDE].reshape(len(photos), -1, 3)
    weight = product_masks(photos)[:, ::STRIDE, ::STRIDE].reshape(len(photos), -1).astype(np.float32)
    lab = rgb_to_lab(rgb)
    rows = np.arange(len(photos))
    # Deterministic farthest-point start: the product's mean, then each time the product pixel farthest from the
    # centres so far, so a small second colour (a logo, a sole) gets a centre of its own.
    centres = [(lab * weight[..., None]).sum(1) / weight.sum(1, keepdims=True)]
    for _ in range(k - 1):
        nearest = np.min([((lab - c[:, None]) ** 2).sum(-1) for c in centres], 0)
        centres.append(lab[rows, np.where(weight > 0, nearest, -1).argmax(1)])
    centres = np.stack(centres, 1)                                                # (N, k, 3)
    for _ in range(ITERATIONS):
        member = _assign(lab, centres, weight)
        total = member.sum(1)[..., None]                                           # (N, k, 1)
        centres = np.where(total > 0, member.transpose(0, 2, 1) @ lab / np.maximum(total, 1e-9), centres)
    member = _assign(lab, centres, weight)
    total = member.sum(1)
    share = total / np.maximum(total.sum(1, keepdims=True), 1e-9)
    mean_rgb = member.transpose(0, 2, 1) @ rgb.astype(np.float32) / np.maximum(total[..., None], 1e-9)
    order = np.argsort(-share, 1)
    return (np.take_along_axis(centres, order[..., None], 1).astype(np.float32),
            np.take_along_axis(np.rint(mean_rgb), order[..., None], 1).astype(np.uint8),
            np.take_along_axis(share, order, 1).astype(np.float32))


def _assign(lab: np.ndarray, centres: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(N, P, k) weights: each product pixel's weight on its nearest centre, 0 elsewhere."""
    # |pixel - centre|^2 less |pixel|^2, which is the same for every centre: two batched matrix products.
    nearest = ((centres ** 2).sum(-1)[:, None] - 2 * lab @ centres.transpose(0, 2, 1)).argmin(-1)  # (N, P)
    return (nearest[..., None] == np.arange(centres.shape[1], dtype=np.int64)).astype(np.float32) * weight[..., None]


def dominant_colours(photo: np.ndarray, k: int = K) -> list[tuple[str, float]]:
    """uint8 (H, W, 3) -> [(hex, share of the product's area)], largest first; clusters within MERGE_DELTA_E of a
    larger one count as it."""
    centres, rgb, share = (a[0] for a in kmeans_colours(photo[None], k))
    kept: list[int] = []
    shares: dict[int, float] = {}
    for i in np.flatnonzero(share > 0):
        near = [j for j in kept if np.linalg.norm(centres[i] - centres[j]) < MERGE_DELTA_E]
        if near:
            shares[near[0]] += float(share[i])
        else:
            kept.append(i)
            shares[i] = float(share[i])
    return sorted((("#%02x%02x%02x" % tuple(rgb[i]), shares[i]) for i in kept), key=lambda c: -c[1])


def colour_features(photos: np.ndarray, k: int = K) -> np.ndarray:
    """float32 (N, 4k): per cluster, largest first, L, a, b and share: a fixed-size description of a photo's
    colours for a classifier."""
    centres, _, share = kmeans_colours(photos, k)
    return np.concatenate([centres, share[..., None]], -1).reshape(len(photos), -1)


def colour_centroids(photos: np.ndarray, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """One Lab centroid per colour class: the median of its photos' largest product colour. Photos labelled ""
    (unknown) are skipped. photos uint8 (N, H, W, 3), labels one class name per photo."""
    dominant = kmeans_colours(photos, K)[0][:, 0]
    labels = np.asarray(labels)
    return {c: np.median(dominant[labels == c], 0) for c in sorted(set(labels.tolist()) - {""})}


def nearest_class(colour: str | np.ndarray, centroids: dict[str, np.ndarray]) -> str:
    """The class whose centroid is nearest (delta E) to `colour`: a hex string ("#b22222") or a Lab triple."""
    lab = rgb_to_lab(hex_to_rgb(colour)) if isinstance(colour, str) else np.asarray(colour, np.float32)
    names = list(centroids)
    return names[int(np.linalg.norm(np.stack([centroids[c] for c in names]) - lab, axis=1).argmin())]
