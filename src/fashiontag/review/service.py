"""`fashiontag review`: queue the photos, then serve the review page beside the tagging API."""


from __future__ import annotations

from pathlib import Path

from fashiontag.review.queue import AUDIT_SHARE, default_db, fill_queue
from fashiontag.review.store import ReviewStore


def start_review(paths: list[str], *, db: str | None = None, model: str | Path | None = None,
                 min_confidence: float | None = None, host: str = "127.0.0.1", port: int = 8000,
                 engine: str = "onnx", serve: bool = True, announce=print, roots: tuple[str, ...] = (),
                 no_auth: bool = False, allowed_hosts: tuple[str, ...] = (), cookie_secure: bool | None = None,
                 audit_share: float = AUDIT_SHARE, **serve_options) -> dict:
    """`fashiontag review`: add the photos under `paths` (or a predict output) to the queue in `db` (default: SQLite
    beside them), then serve the review page until Ctrl-C (unless not serve). roots: see fill_queue. Serving beyond
    loopback needs accounts in the database, or no_auth (auth.check_exposure: refused before anything is queued);
    allowed_hosts: Host names answered besides loopback's and `host` (serve.hosts.serve_hosts); cookie_secure: see
    create_app. audit_share: see fill_queue. Returns fill_queue's counts."""
    store = ReviewStore(db or default_db(paths))
    try:
        if serve:
            from fashiontag.review.auth import check_exposure
            if warning := check_exposure(store, host, no_auth):
                announce(warning)
        counts = fill_queue(store, paths, model, min_confidence, engine, roots, audit_share)
        announce(f"queue {store.shown_url}: {counts['added']:,} photos added, {counts['queued']:,} "
                 f"in all; {counts['errors']:,} could not be read, {counts['missing']:,} paths missing, "
                 f"{counts['skipped']:,} skipped (named above); {counts['audits']:,} sure tags queued as audits")
        if serve:
            from fashiontag.serve.app import serve as run_server
            announce(f"review page: http://{host}:{port}/")
            run_server(host=host, port=port, model=model, engine=engine, review=store,
                       allowed_host=tuple(allowed_hosts), cookie_secure=cookie_secure, **serve_options)
    finally:
        store.close()
    return counts
