"""The package's own errors, one family: whatever the user can fix says so in a sentence, and the CLI shows it.

This module imports nothing from fashiontag, so that every module may import it without a cycle."""

from __future__ import annotations


class FashiontagError(Exception):
    """An error the user can fix (a bad model folder, catalog, photo, database, flag): the CLI prints its message
    in one line and exits 2 (commands that report a partial failure, such as predict's unreadable photos, exit 1).

    Subclasses keep a built-in base where callers catch them as such (ModelError is also a ValueError)."""
