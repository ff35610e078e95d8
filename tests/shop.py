"""A synthetic shop catalog unlike Kaggle's: string SKUs, a `photo` column of nested relative paths in PNG, WebP and
JPEG, photos of several sizes up to 1,600 pixels, and its own tasks: department, category (a hierarchy under
department), colour, pattern and a multi-label occasion. Every label can be read off the pixels."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

# category -> (department, shape: box as shares of the photo)
CATEGORIES = {"dress": ("women", (0.3, 0.1, 0.7, 0.9)), "skirt": ("women", (0.15, 0.5, 0.85, 0.9)),
              "shirt": ("men", (0.2, 0.2, 0.8, 0.7)), "tie": ("men", (0.45, 0.05, 0.55, 0.95))}
COLOURS = {"red": (200, 30, 30), "navy": (20, 30, 120), "olive": (110, 130, 30)}
PATTERNS = ("plain", "striped")
SIZES = [(1600, 1200), (900, 700), (480, 360)]  # height x width
FORMATS = {".png": "PNG", ".webp": "WEBP", ".jpg": "JPEG"}
SHOP_TASKS = ("department", "category", "colour", "pattern", "occasion")


@dataclass
class ShopCatalog:
    file: Path
    skus: list[str]


def occasions(colour: str, pattern: str) -> list[str]:
    """Striped is for work, plain for casual; red adds party: a multi-label column whose sets follow the pixels."""
    return (["work"] if pattern == "striped" else ["casual"]) + (["party"] if colour == "red" else [])


def draw_product(category: str, colour: str, pattern: str, hw: tuple[int, int], rng: random.Random) -> Image.Image:
    h, w = hw
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = CATEGORIES[category][1]
    # Jittered in place and size and sprinkled with marks, so that no two products share a photo (the split
    # rightly keeps equal photos on one side).
    dx, dy, grow = rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04)
    box = (int((x0 + dx - grow) * w), int((y0 + dy - grow) * h), int((x1 + dx + grow) * w), int((y1 + dy + grow) * h))
    d.rectangle(box, fill=COLOURS[colour])
    if pattern == "striped":
        step = max(4, (box[3] - box[1]) // 8)
        for y in range(box[1], box[3], step):
            d.rectangle((box[0], y, box[2], y + step // 3), fill=(240, 240, 240))
    mark = max(2, w // 25)
    for _ in range(6):
        x, y = rng.randint(0, w - mark), rng.randint(0, h - mark)
        d.rectangle((x, y, x + mark, y + mark), fill=(rng.randint(150, 230),) * 3)
    return img


def make_shop_catalog(root: str | Path, n: int = 160, seed: int = 0) -> ShopCatalog:
    root = Path(root)
    rng = random.Random(seed)
    lines = ["sku,title,photo,department,category,colour,pattern,occasion,price"]
    skus = []
    for i in range(n):
        category, colour, pattern = rng.choice(list(CATEGORIES)), rng.choice(list(COLOURS)), rng.choice(PATTERNS)
        department = CATEGORIES[category][0]
        sku = f"SKU-{i:05d}-{colour[:3].upper()}"
        suffix = list(FORMATS)[i % len(FORMATS)]
        photo = Path("photos") / department / category / f"{sku}{suffix}"
        (root / photo).parent.mkdir(parents=True, exist_ok=True)
        draw_product(category, colour, pattern, SIZES[i % len(SIZES)], rng).save(root / photo, FORMATS[suffix])
        title = f"{colour.title()} {pattern} {category} for {department}"
        lines.append(f"{sku},{title},{photo},{department},{category},{colour},{pattern},"
                     f"{'|'.join(occasions(colour, pattern))},{rng.randint(10, 300)}.99")
        skus.append(sku)
    file = root / "shop.csv"
    file.write_text("\n".join(lines) + "\n")
    return ShopCatalog(file, skus)
