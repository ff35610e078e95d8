"""A synthetic catalog in the Kaggle layout: drawn photos whose labels can be read off the pixels, plus every kind
of bad input the real world sends (malformed CSV rows, missing, empty, truncated and odd-mode images)."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

# articleType -> (subCategory, masterCategory, shape drawn)
ARTICLES = {
    "Tshirts": ("Topwear", "Apparel", "rect"),
    "Jeans": ("Bottomwear", "Apparel", "tall"),
    "Casual Shoes": ("Shoes", "Footwear", "wide"),
    "Watches": ("Watches", "Accessories", "circle"),
}
COLOURS = {"Red": (200, 30, 30), "Blue": (30, 60, 200), "Green": (30, 160, 60), "Black": (20, 20, 20)}
GENDERS = ["Men", "Women"]
SEASONS = ["Summer", "Winter"]


@dataclass
class SyntheticCatalog:
    root: Path
    good_ids: list[int] = field(default_factory=list)
    bad_images: dict[int, str] = field(default_factory=dict)   # id -> what is wrong with its file
    odd_images: dict[int, str] = field(default_factory=dict)   # id -> unusual but readable format
    malformed_lines: list[int] = field(default_factory=list)   # CSV line numbers that cannot be parsed
    comma_name_ids: list[int] = field(default_factory=list)
    relisted: dict[int, int] = field(default_factory=dict)     # id -> the id whose photo it re-lists


def draw(article: str, colour: str, gender: str, size=(60, 80), rng: random.Random | None = None) -> Image.Image:
    """The article's shape in its colour; with rng, jittered in place and size and sprinkled with a pattern, so that
    no two products share a photo (the split would rightly treat equal photos as one re-listed product)."""
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    shape = ARTICLES[article][2]
    box = {"rect": (10, 15, 50, 65), "tall": (20, 5, 40, 75), "wide": (3, 45, 57, 70), "circle": (10, 20, 50, 60)}[shape]
    if rng:
        dx, dy, grow = rng.randint(-3, 3), rng.randint(-4, 4), rng.randint(-2, 2)
        box = (box[0] + dx - grow, box[1] + dy - grow, box[2] + dx + grow, box[3] + dy + grow)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=fill)
    if rng:
        for _ in range(6):
            x, y = rng.randint(box[0], box[2] - 3), rng.randint(box[1], box[3] - 3)
            d.rectangle((x, y, x + 2, y + 2), fill=tuple(min(255, c + 90) for c in fill))
    # Gender is a small grey mark: top-left for Men, top-right for Women.
    d.rectangle((2, 2, 9, 9) if gender == "Men" else (50, 2, 57, 9), fill=(128, 128, 128))
    return img


def make_catalog(root: str | Path, n: int = 240, seed: int = 0, bad: bool = True, first_id: int = 1000) -> SyntheticCatalog:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cat = SyntheticCatalog(root)
    lines = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    for i in range(n):
        pid = first_id + i
        article, colour = rng.choice(list(ARTICLES)), rng.choice(list(COLOURS))
        gender, season = rng.choice(GENDERS), rng.choice(SEASONS)
        sub, master, _ = ARTICLES[article]
        usage = "Sports" if article == "Casual Shoes" else "Casual"
        name = f"Brand {gender} {colour} {article}"
        if i % 50 == 7:  # unquoted commas in the name, as in 22 rows of the real file
            name = f"Brand, {gender}, {colour} {article}"
            cat.comma_name_ids.append(pid)
        if i == 11:
            season = ""  # an empty cell: unknown for this task only
        lines.append(f"{pid},{gender},{master},{sub},{article},{colour},{season},2012,{usage},{name}")
        image = root / "images" / f"{pid}.jpg"
        if i >= n - n // 20:  # the last 5% re-list earlier products' photos under new ids
            original = first_id + i - (n - n // 20)
            lines[-1] = lines[original - first_id + 1].replace(str(original), str(pid), 1)
            image.write_bytes((root / "images" / f"{original}.jpg").read_bytes())
            cat.relisted[pid] = original
        else:
            draw(article, colour, gender, rng=rng).save(image, quality=90)
        cat.good_ids.append(pid)
    if bad:
        _add_bad_input(root, cat, lines, rng)
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return cat


def _add_bad_input(root: Path, cat: SyntheticCatalog, lines: list[str], rng: random.Random) -> None:
    img_dir = root / "images"
    row = "{pid},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Odd {pid}"
    bads = {9001: "missing", 9002: "empty", 9003: "truncated", 9004: "not an image"}
    for pid, why in bads.items():
        lines.append(row.format(pid=pid))
        cat.bad_images[pid] = why
    (img_dir / "9002.jpg").write_bytes(b"")
    buf = io.BytesIO()
    draw("Tshirts", "Red", "Men").save(buf, "JPEG")
    (img_dir / "9003.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img_dir / "9004.jpg").write_text("this is not a photo")

    odd = {9101: "greyscale", 9102: "rgba png", 9103: "palette gif", 9104: "cmyk", 9105: "odd size 100x100"}
    base = draw("Watches", "Blue", "Women")
    for pid, kind in odd.items():
        lines.append(f"{pid},Women,Accessories,Watches,Watches,Blue,Winter,2012,Casual,Odd {pid}")
        path = img_dir / f"{pid}.jpg"
        if kind == "greyscale":
            base.convert("L").save(path, "JPEG")
        elif kind == "rgba png":
            rgba = base.convert("RGBA")
            rgba.putalpha(200)
            rgba.save(path, "PNG")
        elif kind == "palette gif":
            base.convert("P").save(path, "GIF")
        elif kind == "cmyk":
            base.convert("CMYK").save(path, "JPEG")
        else:
            base.resize((100, 100)).save(path, "JPEG")
        cat.odd_images[pid] = kind
        cat.good_ids.append(pid)

    lines.append("notanumber,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Bad id")
    cat.malformed_lines.append(len(lines))
    lines.append("9201,Men,Apparel")
    cat.malformed_lines.append(len(lines))
