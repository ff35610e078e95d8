"""Contact sheets of an audit's highest-scored flags, for looking at them (issue 24's manual look).

    .venv/bin/fashiontag audit --data ../shared/data/fashion-small --out reports/audit.csv
    .venv/bin/python benchmarks/audit_sheets.py reports/audit.csv --tasks articleType baseColour --top 100

Writes <task>_<k>.png (20 flags a sheet: the photo, its rank and id, the catalog's label, the suggestion and the
title) beside the audit file. The verdicts of one such look are in docs/audit-top100.csv (see docs/results.md).
"""

from __future__ import annotations

import argparse
import csv
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PER_SHEET, COLUMNS, CELL = 20, 5, (260, 250)


def sheets(audit: Path, tasks: list[str], top: int) -> list[Path]:
    rows = list(csv.DictReader(audit.open(newline="", encoding="utf-8")))
    font, written = ImageFont.load_default(), []
    for task in tasks:
        flags = sorted((r for r in rows if r["task"] == task), key=lambda r: -float(r["score"]))[:top]
        for s in range(0, len(flags), PER_SHEET):
            sheet = Image.new("RGB", (COLUMNS * CELL[0], PER_SHEET // COLUMNS * CELL[1]), "white")
            draw = ImageDraw.Draw(sheet)
            for k, r in enumerate(flags[s:s + PER_SHEET]):
                x, y = (k % COLUMNS) * CELL[0], (k // COLUMNS) * CELL[1]
                path = Path(r["path"]) if Path(r["path"]).is_absolute() else audit.parent / r["path"]
                try:
                    with Image.open(path) as im:
                        photo = im.convert("RGB")
                    photo.thumbnail((150, 200))
                    sheet.paste(photo, (x + 5, y + 5))
                except OSError as e:
                    draw.text((x + 5, y + 5), f"{path.name}: {e}"[:40], fill="red", font=font)
                draw.text((x + 160, y + 5), f"#{s + k + 1}\n{r['id']}", fill="black", font=font)
                lines = [f"cat: {r['catalog_label']}", f"sug: {r['suggested_label']}", *textwrap.wrap(r["title"], 40)[:2]]
                for j, line in enumerate(lines):
                    draw.text((x + 5, y + 208 + j * 11), line[:42], fill="blue" if j < 2 else "black", font=font)
            out = audit.parent / f"{task}_{s // PER_SHEET + 1}.png"
            sheet.save(out)
            written.append(out)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audit", type=Path)
    ap.add_argument("--tasks", nargs="+", default=["articleType", "baseColour"])
    ap.add_argument("--top", type=int, default=100)
    args = ap.parse_args()
    for path in sheets(args.audit, args.tasks, args.top):
        print(path)


if __name__ == "__main__":
    main()
