"""Files that appear whole or not at all, for every writer in the package (model.json, ONNX exports, tag lists,
reviewed tags, audits): written beside their destination under a temporary name, then renamed over it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(dest: str | Path) -> Iterator[Path]:
    """A temporary path beside dest (same file system, so the rename is atomic) that replaces dest when the block
    ends without an error: readers see the old file or the new one, never half of one. Whatever happens, the
    temporary file is gone afterwards. Named per process, so two processes writing one file do not mix."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(dest: str | Path, text: str) -> None:
    with replacing(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
