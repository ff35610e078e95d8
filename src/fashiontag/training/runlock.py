"""One training at a time per run folder: an exclusive lock on OUT/.lock, held while the run lasts.

flock locks belong to the open file and die with the process, so a crashed run never leaves its folder locked.
The lock file holds the holder's pid, for the error message of whoever comes second."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from fashiontag.errors import FashiontagError


class RunFolderBusy(FashiontagError, RuntimeError):
    pass


@contextmanager
def run_lock(folder: str | Path):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunFolderBusy(f"{folder} is in use by another training (pid {holder}): "
                                "wait for it to finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
