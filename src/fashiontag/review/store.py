"""The review queue in a database (SQLAlchemy Core): every photo's tags, every reviewer's action, and undo.

Each action is one transaction, committed before the answer goes back: a reload, a restart or a killed server
loses nothing that a reviewer was told is saved. Each tag carries a version; a write names the version it was
based on and is refused (Conflict) when another reviewer wrote that tag since, so nobody overwrites anybody.

Tag status: `needs_review` (below its auto-accept threshold, nobody has looked), `auto` (at or above it, nobody
has looked), `accepted` (a person kept the label), `corrected` (a person chose another label). A tag drawn for an
audit (`audit`, fill_queue's audit_share) was at or above its threshold but is queued as `needs_review` all the same,
so that people measure the auto-accepted tags' precision as the queue runs (review/stats.py); it stays marked as an
audit after review.

A tag queued from a catalog audit (`fashiontag audit`'s audit.csv, queue.audit_item) carries the catalog's label
(`catalog_label`) beside the model's suggestion (`model_label`, never the catalog's): it always needs review, and
keeping the catalog's label is `corrected`, as any label other than the model's is: the model was wrong there.

A queue of a million tags is served a page at a time (`page`), filtered and sorted in the database by keyset
pagination: each photo keeps what its place in the list depends on (`needs`, `reviewed`, `margin`: the "least
certain first" key), written with its tags in the same transaction, and indexed with the photo id as tie-breaker.

Several reviewers: a reviewer holds a short lease on the photo in front of them (`lease`), and the pages served to
the others skip it. A small share of photos (`overlap`, drawn by path) is served to a second reviewer once a first
has decided it, blind (the model's proposal, not the first answer); the second answer is kept apart (`opinions`)
and the two are compared in `review stats` (agreement).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    create_engine,
    delete,
    event,
    exists,
    false,
    func,
    inspect,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fashiontag.errors import FashiontagError
from fashiontag.inference.decode import needs_review

# 2: tags.audit (a version-1 database gains it, false, when opened: _migrate). tags.catalog_label and photos.titled
# came later without a new version: nullable columns that a fashiontag from before neither reads nor needs to write
# (_add_nullable; titled NULL: queued before fashiontag recorded whether the photo was tagged with a title).
# 3: photos.needs/reviewed/margin (the page's keys, kept with the tags), overlap/second_due/first_reviewer (second
# looks), tags.margin, the leases and opinions tables and the keyset indexes (_migrate fills them in). A fashiontag
# of version 2 would write tags without these keys, so it is refused a version-3 queue.
SCHEMA_VERSION = 3
REVIEWED = ("accepted", "corrected")
UNTOUCHED = ("needs_review", "auto")
# A photo with no tag left to look at sorts after every margin a tag can have (margins lie within [-1, 1]).
NONE_LEFT = 2.0
# How long a photo in front of a reviewer stays theirs without a renewal (the page renews it every 30 s).
LEASE_SECONDS = 120
# The share of photos served to a second reviewer, blind, to measure agreement (review stats).
OVERLAP_SHARE = 0.05
STATUSES = ("needs", "all", "reviewed")
SORTS = ("uncertain", "confidence", "class", "queue")
MAX_PAGE = 500

metadata = MetaData()
schema_info = Table("schema_info", metadata, Column("version", Integer, nullable=False))
settings = Table("settings", metadata, Column("key", String(64), primary_key=True), Column("value", Text))
photos = Table("photos", metadata,
               Column("id", Integer, primary_key=True, autoincrement=True),
               Column("path", String(2048), nullable=False, unique=True),
               Column("item_id", String(512), nullable=False),
               Column("error", Text, nullable=False, default=""),
               # What the photo's place in the page's lists depends on, rewritten with its tags (_refresh_photos).
               Column("needs", Boolean, nullable=False, default=False, server_default=false()),
               Column("reviewed", Boolean, nullable=False, default=False, server_default=false()),
               Column("margin", Float, nullable=False, default=NONE_LEFT, server_default=str(NONE_LEFT)),
               Column("overlap", Boolean, nullable=False, default=False, server_default=false()),
               Column("second_due", Boolean, nullable=False, default=False, server_default=false()),
               Column("first_reviewer", String(128)),
               # Tagged with its title (a photo + title model judges it by the thresholds of that condition), or not.
               Column("titled", Boolean))
tags = Table("tags", metadata,
             Column("photo_id", Integer, ForeignKey("photos.id"), primary_key=True),
             Column("task", String(64), primary_key=True),
             Column("model_label", String(256), nullable=False),
             Column("confidence", Float, nullable=False),
             Column("runners_up", Text, nullable=False),  # JSON [[label, confidence], ...]
             Column("threshold", Float, nullable=False),
             Column("label", String(256), nullable=False),
             Column("status", String(16), nullable=False),
             Column("version", Integer, nullable=False),
             Column("reviewer", String(128)),
             Column("updated_at", String(32)),
             Column("audit", Boolean, nullable=False, default=False, server_default=false()),
             Column("catalog_label", String(256)),  # a catalog audit's tag: the catalog's label; else NULL
             Column("margin", Float, nullable=False, server_default="0"))  # tag_margin, fixed when queued
actions = Table("actions", metadata,
                Column("id", Integer, primary_key=True, autoincrement=True),
                Column("reviewer", String(128), nullable=False),
                Column("kind", String(16), nullable=False),  # review, bulk_accept, undo
                Column("at", String(32), nullable=False),
                Column("undone_by", Integer))
changes = Table("changes", metadata,
                Column("id", Integer, primary_key=True, autoincrement=True),
                Column("action_id", Integer, ForeignKey("actions.id"), nullable=False, index=True),
                Column("photo_id", Integer, nullable=False),
                Column("task", String(64), nullable=False),
                Column("before_label", String(256), nullable=False),
                Column("before_status", String(16), nullable=False),
                Column("after_label", String(256), nullable=False),
                Column("after_status", String(16), nullable=False),
                Column("after_version", Integer, nullable=False))
# The photo in front of a reviewer (one row per photo): the pages served to the other reviewers skip it until `until`.
leases = Table("leases", metadata,
               Column("photo_id", Integer, primary_key=True),
               Column("reviewer", String(128), nullable=False),
               Column("until", Float, nullable=False))  # seconds since the epoch
# A second reviewer's answers on an overlap photo, beside the first's (which the tags hold).
opinions = Table("opinions", metadata,
                 Column("photo_id", Integer, ForeignKey("photos.id"), primary_key=True),
                 Column("task", String(64), primary_key=True),
                 Column("reviewer", String(128), primary_key=True),
                 Column("label", String(256), nullable=False),
                 Column("action_id", Integer, nullable=False, index=True),
                 Column("at", String(32), nullable=False))
# The keyset orders of `page`, each ending in the photo id so that no two rows tie.
KEYSET_INDEXES = (Index("photos_margin", photos.c.margin, photos.c.id),
                  # reviewed photos have no tag left to look at, so they all sort last by margin: their own index
                  Index("photos_reviewed_margin", photos.c.reviewed, photos.c.margin, photos.c.id),
                  # "decided by": the photos a reviewer decided, found from their tags
                  Index("tags_reviewer", tags.c.reviewer, tags.c.photo_id),
                  Index("tags_task_margin", tags.c.task, tags.c.margin, tags.c.photo_id),
                  Index("tags_task_confidence", tags.c.task, tags.c.confidence, tags.c.photo_id),
                  Index("tags_task_label", tags.c.task, tags.c.label, tags.c.photo_id))
# Reviewer accounts (review/auth.py): added to older databases when they are opened; none means no sign-in.
users = Table("users", metadata,
              Column("name", String(128), primary_key=True),
              Column("role", String(16), nullable=False),  # reviewer, admin
              Column("password_hash", Text, nullable=False),
              Column("created_at", String(32), nullable=False))


# A database that cannot be reached or written now (server stopped, disk full, file gone, pool exhausted), as
# opposed to a request it refuses: worth retrying, and what the service's readiness reflects.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


class StoreError(FashiontagError, ValueError):
    """A database that cannot be used: a bad URL, no server, or a schema this version does not know."""


class StoreUnavailable(StoreError):
    """The database does not answer now (see UNAVAILABLE)."""


class NotFound(LookupError):
    pass


class InvalidChange(ValueError):
    """A change that names an unknown task or class, or no reviewer."""


class InvalidQuery(ValueError):
    """A page of the queue asked for with an unknown filter, sort or position."""


class UnseenCombination(InvalidChange):
    """Labels whose hierarchy combination the model never saw in training: allowed only when confirmed."""


class Conflict(RuntimeError):
    """Another reviewer wrote a tag since the version this change was based on; `photo` is its state now."""

    def __init__(self, message: str, photo_id: int):
        super().__init__(message)
        self.photo_id, self.photo = photo_id, None


def engine_for(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; plain postgresql:// goes through psycopg 3 (the driver we declare)."""
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, **({"connect_args": {"timeout": 30}} if parsed.get_backend_name() == "sqlite"
                                          else {"pool_pre_ping": True}))
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise StoreError(f"--db {url}: not a usable database URL ({e}); e.g. sqlite:///review.db or "
                         "postgresql://user@host/dbname") from None
    except ImportError as e:
        raise StoreError(f"--db {url}: its database driver is not installed ({e}); for PostgreSQL: "
                         "pip install 'fashiontag[postgres]'") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # A deferred transaction that reads and then writes fails at once ("database is locked") when another
        # writer committed meanwhile; taking the write lock at BEGIN makes concurrent writers wait their turn.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def reason(e: Exception) -> str:
    """The first line of the driver's own message: what went wrong, without SQLAlchemy's statement dump."""
    lines = str(getattr(e, "orig", None) or e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def unavailable_message(e: Exception) -> str:
    return f"review database unavailable: {reason(e)}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL: readers (the page's refreshes) do not block the writer; FULL sync: a committed action survives power loss.
    dbapi_connection.isolation_level = None  # the driver's own BEGIN would come before ours
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ReviewStore:
    """One review database. Thread-safe: every method takes its own connection from the engine's pool."""

    def __init__(self, url: str, create: bool = True):
        """create: make the database (SQLite) and its tables where missing; without it, a database that holds no
        review queue is a StoreError, and nothing is written."""
        self.url = url
        self._model: dict | None = None
        self.engine = engine_for(url)
        self.shown_url = self.engine.url.render_as_string(hide_password=True)
        database = self.engine.url.database
        if not create and self.engine.dialect.name == "sqlite" and database and database != ":memory:" and \
                not Path(database).is_file():
            self.engine.dispose()
            raise StoreError(f"--db {self.shown_url}: no such database file")
        try:
            with self.engine.begin() as conn:
                if create:
                    metadata.create_all(conn)
                elif not inspect(conn).has_table(schema_info.name):
                    raise StoreError(f"--db {self.shown_url}: no review queue here (not a fashiontag review "
                                     "database)")
                found = conn.execute(select(schema_info.c.version)).scalar()
                if found is None and create:
                    conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
                elif found is not None and found < SCHEMA_VERSION:
                    found = _migrate(conn, found)
                if found == SCHEMA_VERSION:
                    _add_nullable(conn, photos, "titled")
        except DatabaseError as e:  # no server, no such file or folder, or a file that is not a database
            self.engine.dispose()
            raise StoreError(f"--db {self.shown_url}: cannot open the database ({reason(e)})") from None
        except StoreError:
            self.engine.dispose()
            raise
        if found not in (None, SCHEMA_VERSION):
            raise StoreError(f"{self.shown_url}: review schema version {found}, but this fashiontag "
                             f"knows version {SCHEMA_VERSION}: use the fashiontag that wrote it")

    def close(self) -> None:
        self.engine.dispose()

    def check(self) -> None:
        """Raise StoreUnavailable unless the database answers now (the service's readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(schema_info.c.version)).scalar()
        except UNAVAILABLE as e:
            raise StoreUnavailable(unavailable_message(e)) from None

    # ------------------------------------------------------------------------------------------- the model

    def set_model(self, model: dict) -> None:
        """What the page and export need of the model that tagged the photos: version, tasks, classes, hierarchy,
        thresholds, id column. A queue holds one model's tags: another model is refused."""
        known = self.model()
        if known and known["version"] != model["version"]:
            raise StoreError(f"{self.shown_url} holds tags of model {known['version']}, not "
                             f"{model['version']}: use another --db for another model")
        if not known:
            with self.engine.begin() as conn:
                conn.execute(settings.insert().values(key="model", value=json.dumps(model)))
            self._model = model

    def model(self, conn: Connection | None = None) -> dict | None:
        if self._model is None:  # set once per queue (set_model), so read once
            if conn is None:
                with self.engine.connect() as own:
                    return self.model(own)
            value = conn.execute(select(settings.c.value).where(settings.c.key == "model")).scalar()
            self._model = json.loads(value) if value else None
        return self._model

    # ------------------------------------------------------------------------------ the photos' folders

    def add_roots(self, roots: list[str]) -> list[str]:
        """Record folders (resolved paths) that the queue's photos come from: the review routes serve photo files
        from inside these and nowhere else. Returns every folder recorded."""
        with self.engine.begin() as conn:
            value = conn.execute(select(settings.c.value).where(settings.c.key == "roots")).scalar()
            known = sorted(set(json.loads(value) if value else []) | set(roots))
            if value is None:
                conn.execute(settings.insert().values(key="roots", value=json.dumps(known)))
            else:
                conn.execute(update(settings).where(settings.c.key == "roots").values(value=json.dumps(known)))
        return known

    def roots(self) -> list[str] | None:
        """The folders add_roots recorded; None for a queue filled before fashiontag recorded them."""
        with self.engine.connect() as conn:
            value = conn.execute(select(settings.c.value).where(settings.c.key == "roots")).scalar()
        return json.loads(value) if value else None

    # ------------------------------------------------------------------------------------------ photos in

    def known_paths(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(photos.c.path)).scalars())

    def add_photos(self, items: list[dict], overlap_share: float = OVERLAP_SHARE) -> int:
        """items: {path, item_id, error[, titled], tags: {task: {label, confidence, runners_up, threshold[, audit][,
        catalog_label]}}}; a path already in the queue is skipped (its review goes on). A tag with a true `audit` or a
        catalog_label is queued as needing review whatever its confidence. overlap_share: the share of photos drawn
        (by path, so the same photos draw the same) for a second reviewer's blind look. Returns how many were
        added."""
        known = self.known_paths()
        new = [i for i in items if i["path"] not in known]
        with self.engine.begin() as conn:
            for item in new:
                rows = [{"task": t, "model_label": tag["label"], "confidence": tag["confidence"],
                         "runners_up": json.dumps(tag["runners_up"]), "threshold": tag["threshold"],
                         "label": tag["label"], "version": 1, "audit": bool(tag.get("audit")),
                         "catalog_label": tag.get("catalog_label"), "margin": tag_margin(tag),
                         "status": "needs_review" if tag.get("audit") or tag.get("catalog_label") or needs_review(
                             tag["label"], tag["confidence"], tag["threshold"]) else "auto"}
                        for t, tag in item["tags"].items()]
                keys = photo_keys({r["status"] for r in rows}, [r["margin"] for r in rows if r["status"] in
                                                                 UNTOUCHED])
                pid = conn.execute(photos.insert().values(
                    path=item["path"], item_id=item["item_id"], error=item["error"], titled=item.get("titled"), **keys,
                    overlap=bool(rows) and _draw(item["path"], "overlap") < overlap_share)).inserted_primary_key[0]
                if rows:
                    conn.execute(tags.insert(), [r | {"photo_id": pid} for r in rows])
        return len(new)

    # --------------------------------------------------------------------------------------------- reading

    def photos(self, photo_id: int | None = None, conn: Connection | None = None) -> list[dict]:
        """Every photo (or one) with its tags: {id, path, item_id, error, tags: {task: {...}}}, in queue order."""
        return self.photos_by_id(None if photo_id is None else [photo_id], conn)

    def photos_by_id(self, ids: list[int] | None, conn: Connection | None = None, viewer: str | None = None
                     ) -> list[dict]:
        """The photos of ids (None: every photo) with their tags, in queue order. A photo due for a second look,
        asked for by a viewer other than its first reviewer, comes as the model proposed it (`second_look`), with
        the viewer's own answers so far, and so does one the viewer gave a second look: the second answer must not
        lean on the first, and the second reviewer keeps seeing theirs."""
        if conn is None:
            with self.engine.connect() as own:
                return self.photos_by_id(ids, own, viewer)
        q_photos, q_tags = select(photos).order_by(photos.c.id), select(tags)
        if ids is not None:
            q_photos, q_tags = q_photos.where(photos.c.id.in_(ids)), q_tags.where(tags.c.photo_id.in_(ids))
        mine = select(opinions).where(opinions.c.reviewer == viewer)
        mine = conn.execute(mine.where(opinions.c.photo_id.in_(ids)) if ids is not None else mine).all() \
            if viewer else []
        out, blind = {}, set()
        for r in conn.execute(q_photos):
            out[r.id] = {"id": r.id, "path": r.path, "item_id": r.item_id, "error": r.error, "tags": {}}
            if viewer and r.first_reviewer != viewer and (r.second_due or any(o.photo_id == r.id for o in mine)):
                out[r.id]["second_look"] = True
                blind.add(r.id)
        order = {t: i for i, t in enumerate((self.model(conn) or {}).get("tasks", []))}
        for r in sorted(conn.execute(q_tags), key=lambda r: order.get(r.task, len(order))):
            tag = {"label": r.label, "status": r.status, "version": r.version, "reviewer": r.reviewer,
                   "updated_at": r.updated_at, "model_label": r.model_label, "confidence": r.confidence,
                   "threshold": r.threshold, "runners_up": json.loads(r.runners_up), "audit": bool(r.audit),
                   "catalog_label": r.catalog_label}
            if r.photo_id in blind:
                tag |= {"label": r.model_label, "status": "needs_review", "reviewer": None, "updated_at": None}
            out[r.photo_id]["tags"][r.task] = tag
        for r in mine:
            if r.photo_id in blind and r.task in out[r.photo_id]["tags"]:
                tag = out[r.photo_id]["tags"][r.task]
                tag |= {"label": r.label, "reviewer": viewer, "updated_at": r.at,
                        "status": "accepted" if r.label == tag["model_label"] else "corrected"}
        return list(out.values())

    def page(self, *, status: str = "needs", task: str | None = None, cls: str | None = None,
             decided_by: str | None = None, sort: str = "uncertain", after: str | None = None, limit: int = 50,
             viewer: str | None = None) -> dict:
        """One page of the queue, filtered and sorted in the database: {photos, next}; `next` (None at the end)
        is the `after` of the following page. Keyset pagination: a page starts after the sort key of the previous
        one's last photo, (key, photo id), so each page costs the same however deep, and pages cover every photo
        once even while others review (a photo whose key changed meanwhile may move past the reader or back).

        status: needs (a tag of `task`, or of any task, needs review), all, reviewed (see progress); task: sort
        and filter by that task's tag (photos without one are left out); cls: only photos whose `task` tag reads
        cls; decided_by: only photos where that reviewer decided a tag; sort: uncertain (the least certain first:
        the lowest margin of the photo's tags still to look at, or of `task`'s tag), confidence or class (of
        `task`, else the first task), queue (the order photos were queued). viewer: who asks; the photos another
        reviewer holds a live lease on are left out, the second looks due from this viewer are among those
        needing review, and come blind (photos_by_id)."""
        model = self.model() or {}
        key_task = self._check_page(model, status, task, cls, sort, limit)
        by_tag = key_task is not None
        key = {"uncertain": tags.c.margin if by_tag else photos.c.margin, "confidence": tags.c.confidence,
               "class": tags.c.label, "queue": None}[sort]
        pid = tags.c.photo_id if by_tag else photos.c.id
        q = select(pid.label("pid"), *([key.label("key")] if key is not None else []))
        q = (q.select_from(tags.join(photos, photos.c.id == tags.c.photo_id)).where(tags.c.task == key_task)
             if by_tag else q.select_from(photos).where(photos.c.error == ""))
        second = and_(photos.c.second_due, or_(photos.c.first_reviewer.is_(None), photos.c.first_reviewer != viewer)
                      ) if viewer else false()
        if status == "needs":
            q = q.where(or_(tags.c.status == "needs_review" if task else photos.c.needs, second))
        elif status == "reviewed":
            q = q.where(photos.c.reviewed)
        if cls is not None:
            q = q.where(tags.c.label == cls)
        if decided_by:
            # The reviewer's photos first (tags_reviewer), then sorted: tested photo by photo down the sort order
            # instead, a reviewer's photos, done and so last by margin, would come after every other one.
            decided = (select(tags.c.photo_id).where(tags.c.reviewer == decided_by, tags.c.status.in_(REVIEWED))
                       .distinct().cte("decided").prefix_with("MATERIALIZED", dialect="postgresql"))
            q = q.join(decided, decided.c.photo_id == photos.c.id)
        if viewer:
            q = q.where(~exists().where(leases.c.photo_id == photos.c.id, leases.c.reviewer != viewer,
                                        leases.c.until > time.time()))
        if after is not None:
            last = _cursor(after, key is not None)
            q = q.where(tuple_(key, pid) > tuple_(*last) if key is not None else pid > last[0])
        q = q.order_by(*([key] if key is not None else []), pid).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            shown = rows[:limit]
            by_id = {p["id"]: p for p in self.photos_by_id([r.pid for r in shown], conn, viewer)}
        end = shown[-1] if shown and len(rows) > limit else None
        return {"photos": [by_id[r.pid] for r in shown],
                "next": None if end is None else json.dumps([end.key, end.pid] if key is not None else [end.pid])}

    @staticmethod
    def _check_page(model: dict, status: str, task: str | None, cls: str | None, sort: str, limit: int
                    ) -> str | None:
        """Refuse (InvalidQuery) what page cannot list; returns the task whose tags the page sorts or filters by
        (None: the photos' own keys)."""
        tasks = list(model.get("tasks") or [])
        if status not in STATUSES:
            raise InvalidQuery(f"status {status!r}: one of {', '.join(STATUSES)}")
        if sort not in SORTS:
            raise InvalidQuery(f"sort {sort!r}: one of {', '.join(SORTS)}")
        if task is not None and task not in tasks:
            raise InvalidQuery(f"unknown task {task!r}: one of {', '.join(tasks)}")
        if cls is not None and (task is None or cls not in model["vocabs"][task]):
            raise InvalidQuery(f"class {cls!r}: " + ("a class filter needs a task" if task is None else
                                                     f"not a class of {task}"))
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery(f"limit {limit}: from 1 to {MAX_PAGE}")
        if task is None and sort in ("confidence", "class"):
            return tasks[0] if tasks else None
        return task

    def photo(self, photo_id: int, conn: Connection | None = None) -> dict:
        found = self.photos(photo_id, conn)
        if not found:
            raise NotFound(f"no photo {photo_id} in this review")
        return found[0]

    def progress(self) -> dict:
        """Photos reviewed, still needing review, and in all (tagged ones). A photo is reviewed once a person
        decided on any of its tags and none still needs review: a reviewer sets the unsure tags and leaves the
        sure ones (`auto`) as the model said, which is also how export takes them."""
        def count(flag):
            return func.coalesce(func.sum(case((flag, 1), else_=0)), 0)
        # From the photos' own keys (_refresh_photos): one pass over the photos, not their tags.
        with self.engine.connect() as conn:
            total, reviewed, needs = conn.execute(select(func.count(), count(photos.c.reviewed),
                                                         count(photos.c.needs)).where(photos.c.error == "")).one()
        return {"total": total, "reviewed": int(reviewed), "needs_review": int(needs)}

    def reviewers(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(actions.c.reviewer).distinct()).scalars())

    # --------------------------------------------------------------------------------------------- writing

    def review(self, photo_id: int, decisions: dict[str, dict], reviewer: str, confirm: bool = False) -> dict:
        """A person's decision on some tags of one photo, as one undoable action. decisions: {task: {label,
        version}}, version being the tag's version the person saw; the label equal to the model's is `accepted`,
        another is `corrected` (a catalog audit's tag kept at the catalog's label too). Returns {action, photo}."""
        reviewer = _reviewer(reviewer)
        model = self.model() or {}
        vocabs = model.get("vocabs", {})
        for task, d in decisions.items():
            if task not in vocabs:
                raise InvalidChange(f"unknown task {task!r}")
            if d.get("label") not in vocabs[task]:
                raise InvalidChange(f"{d.get('label')!r} is not a class of {task}")
        with self._writing() as conn:
            current = self.photos_by_id([photo_id], conn, viewer=reviewer)
            if not current:
                raise NotFound(f"no photo {photo_id} in this review")
            current = current[0]
            labels = {t: tag["label"] for t, tag in current["tags"].items()} | {
                t: d["label"] for t, d in decisions.items()}
            if not confirm and (combo := unseen_combination(model, labels)):
                raise UnseenCombination(f"{' + '.join(combo)} never occurs in the training catalog; confirm to "
                                        "keep it")
            conn.execute(delete(leases).where(leases.c.photo_id == photo_id, leases.c.reviewer == reviewer))
            if current.get("second_look"):
                action = self._second_look(conn, reviewer, photo_id, {t: d["label"] for t, d in decisions.items()})
            else:
                todo = {t: (d["label"], "accepted" if d["label"] == current["tags"][t]["model_label"]
                            else "corrected", d.get("version")) for t, d in decisions.items()}
                action = self._apply(conn, reviewer, "review", photo_id, todo)
            return {"action": action, "photo": self.photos_by_id([photo_id], conn, viewer=reviewer)[0]}

    def _second_look(self, conn: Connection, reviewer: str, photo_id: int, labels: dict[str, str]) -> int:
        """A second reviewer's answers on an overlap photo: kept beside the first's, the tags left as they are."""
        now = _now()
        action_id = conn.execute(actions.insert().values(reviewer=reviewer, kind="second_look", at=now)
                                 ).inserted_primary_key[0]
        conn.execute(delete(opinions).where(opinions.c.photo_id == photo_id, opinions.c.reviewer == reviewer,
                                            opinions.c.task.in_(list(labels))))  # an answer changed: the latest
        conn.execute(opinions.insert(), [{"photo_id": photo_id, "task": t, "reviewer": reviewer, "label": label,
                                          "action_id": action_id, "at": now} for t, label in labels.items()])
        _refresh_photos(conn, [photo_id])
        return action_id

    def bulk_accept(self, reviewer: str, photo_ids: list[int] | None = None) -> dict:
        """Accept, as one action, every photo (of photo_ids, else all) whose tags are all at or above their
        thresholds and untouched. Returns {action, accepted: [photo ids]}."""
        reviewer = _reviewer(reviewer)
        with self._writing() as conn:
            # Neither needing review nor reviewed: every tag is still `auto` (see photo_keys).
            sure = select(photos.c.id).where(~photos.c.needs, ~photos.c.reviewed, photos.c.error == "")
            if photo_ids is not None:
                sure = sure.where(photos.c.id.in_(photo_ids))
            state: dict[int, list] = {}
            for r in conn.execute(select(tags.c.photo_id, tags.c.task, tags.c.label, tags.c.status,
                                         tags.c.version).where(tags.c.photo_id.in_(sure.scalar_subquery()))):
                state.setdefault(r.photo_id, []).append(r)
            ready = sorted(pid for pid, rs in state.items() if all(r.status == "auto" for r in rs))
            action = None
            for pid in ready:
                todo = {r.task: (r.label, "accepted", r.version) for r in state[pid]}
                action = self._apply(conn, reviewer, "bulk_accept", pid, todo, action)
            return {"action": action, "accepted": ready}

    def accept_task(self, reviewer: str, task: str, versions: dict[int, int]) -> dict:
        """Review by task: accept, as one action, one task's tag of many photos as it reads now (versions: photo id
        -> the version of that tag the reviewer saw), leaving the photos' other tasks alone. A tag a person decided
        already (a tile fixed before) is left as it is; one written by someone else since the version seen refuses
        the whole action (Conflict). Returns {action, accepted: [photo ids]}."""
        reviewer = _reviewer(reviewer)
        if task not in ((self.model() or {}).get("vocabs") or {}):
            raise InvalidChange(f"unknown task {task!r}")
        with self._writing() as conn:
            found = {r.photo_id: r for r in conn.execute(
                select(tags.c.photo_id, tags.c.label, tags.c.model_label, tags.c.status, tags.c.version)
                .where(tags.c.task == task, tags.c.photo_id.in_(list(versions))))}
            if missing := sorted(set(versions) - set(found)):
                raise NotFound(f"no {task} tag on photo {missing[0]}")
            action = None
            accepted = []
            for pid in sorted(versions):
                r = found[pid]
                if r.status in REVIEWED and r.version == versions[pid]:
                    continue
                status = "accepted" if r.label == r.model_label else "corrected"
                action = self._apply(conn, reviewer, "task_accept", pid, {task: (r.label, status, versions[pid])},
                                     action)
                accepted.append(pid)
            return {"action": action, "accepted": accepted}

    def undo(self, reviewer: str, action_id: int | None = None) -> dict:
        """Undo one action (default: the reviewer's latest one not undone yet), as a new action. Refused
        (Conflict) when a tag it changed has been written since. Returns {action, undone, photos}."""
        reviewer = _reviewer(reviewer)
        with self._writing() as conn:
            q = select(actions).where(actions.c.undone_by.is_(None), actions.c.kind != "undo")
            q = q.where(actions.c.id == action_id) if action_id is not None else q.where(
                actions.c.reviewer == reviewer).order_by(actions.c.id.desc()).limit(1)
            target = conn.execute(q).first()
            if target is None:
                raise NotFound("nothing to undo" if action_id is None else f"no action {action_id} to undo")
            if target.kind == "second_look":
                return self._undo_second_look(conn, reviewer, target.id)
            undo_id = None
            by_photo: dict[int, dict] = {}
            # A tag may be taken back while it still reads as the action left it: undoing a later action of the
            # same reviewer first restores exactly that, under a newer version.
            for c in conn.execute(select(changes, tags.c.label, tags.c.status, tags.c.version).join(
                    tags, (tags.c.photo_id == changes.c.photo_id) & (tags.c.task == changes.c.task)).where(
                    changes.c.action_id == target.id)):
                if (c.label, c.status) != (c.after_label, c.after_status):
                    raise Conflict(f"{c.task} of photo {c.photo_id} was changed since action {target.id} "
                                   f"({c.after_label} -> {c.label}): it cannot be undone", c.photo_id)
                by_photo.setdefault(c.photo_id, {})[c.task] = (c.before_label, c.before_status, c.version)
            for pid, todo in by_photo.items():
                undo_id = self._apply(conn, reviewer, "undo", pid, todo, undo_id)
            conn.execute(update(actions).where(actions.c.id == target.id).values(undone_by=undo_id))
            return {"action": undo_id, "undone": target.id,
                    "photos": [self.photo(pid, conn) for pid in by_photo]}

    def _undo_second_look(self, conn: Connection, reviewer: str, target: int) -> dict:
        """Take a second look's answers back: the photo is due for a second look again."""
        undo_id = conn.execute(actions.insert().values(reviewer=reviewer, kind="undo", at=_now())
                               ).inserted_primary_key[0]
        pids = sorted(set(conn.execute(select(opinions.c.photo_id).where(opinions.c.action_id == target)).scalars()))
        conn.execute(delete(opinions).where(opinions.c.action_id == target))
        conn.execute(update(actions).where(actions.c.id == target).values(undone_by=undo_id))
        _refresh_photos(conn, pids)
        return {"action": undo_id, "undone": target, "photos": self.photos_by_id(pids, conn, viewer=reviewer)}

    # ------------------------------------------------------------------------------------- several reviewers

    def lease(self, reviewer: str, photo_ids: list[int], seconds: float = LEASE_SECONDS) -> dict:
        """Make photo_ids the ones in front of `reviewer` for `seconds` (renewing them; the reviewer's other leases
        end): the pages served to other reviewers skip them meanwhile. A photo another reviewer holds stays
        theirs. Returns {leased: [ids], held: {id: reviewer}, seconds}."""
        reviewer = _reviewer(reviewer)
        if not 0 < seconds <= 3600:
            raise InvalidChange(f"a lease of {seconds} s: from 1 s to an hour")
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    now = time.time()
                    conn.execute(delete(leases).where(or_(leases.c.reviewer == reviewer, leases.c.until <= now)))
                    held = dict(conn.execute(select(leases.c.photo_id, leases.c.reviewer)
                                             .where(leases.c.photo_id.in_(photo_ids))).all()) if photo_ids else {}
                    free = sorted(set(photo_ids) - set(held))
                    if free:
                        conn.execute(leases.insert(), [{"photo_id": i, "reviewer": reviewer, "until": now + seconds}
                                                       for i in free])
                return {"leased": free, "held": held, "seconds": seconds}
            except IntegrityError:  # PostgreSQL: another reviewer leased one of them since we looked; look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------- internals

    @contextmanager
    def _writing(self):
        """A write transaction; a Conflict raised inside gets the photo's state once the transaction has rolled
        back (reading it from another connection meanwhile would wait for this one's lock)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except Conflict as e:
            e.photo = self.photo(e.photo_id)
            raise

    def _apply(self, conn: Connection, reviewer: str, kind: str, photo_id: int,
               todo: dict[str, tuple[str, str, int | None]], action_id: int | None = None) -> int:
        """Write tags (task -> label, status, version it must still have) of one photo under an action (a new
        one unless action_id); a tag written by someone else since raises Conflict and the transaction rolls
        back."""
        if action_id is None:
            action_id = conn.execute(actions.insert().values(reviewer=reviewer, kind=kind, at=_now())
                                     ).inserted_primary_key[0]
        now = _now()
        for task, (label, status, version) in todo.items():
            before = conn.execute(select(tags.c.label, tags.c.status, tags.c.version).where(
                tags.c.photo_id == photo_id, tags.c.task == task)).first()
            if before is None:
                raise NotFound(f"photo {photo_id} has no tag {task}")
            if version is None:
                raise InvalidChange(f"{task}: the version the change is based on is missing")
            written = conn.execute(update(tags).where(tags.c.photo_id == photo_id, tags.c.task == task,
                                                      tags.c.version == version)
                                   .values(label=label, status=status, version=tags.c.version + 1,
                                           reviewer=reviewer, updated_at=now)).rowcount
            if written != 1:
                raise Conflict(f"{task} of photo {photo_id} was changed by someone else since (version "
                               f"{version}, now {before.version}): look again and redo", photo_id)
            conn.execute(changes.insert().values(action_id=action_id, photo_id=photo_id, task=task,
                                                 before_label=before.label, before_status=before.status,
                                                 after_label=label, after_status=status, after_version=version + 1))
        _refresh_photos(conn, [photo_id])
        return action_id


def tag_margin(tag: dict) -> float:
    """How far a tag lies above its threshold (below: negative), the "least certain first" key. A catalog audit's
    tag: the model's probability of the catalog's label, less one, so that the product whose catalog label the
    model finds least likely comes first, as the audit ranks them."""
    if tag.get("catalog_label"):
        chance = next((p for label, p in tag["runners_up"] if label == tag["catalog_label"]), 0.0)
        return float(chance) - 1.0
    return float(tag["confidence"]) - float(tag["threshold"])


def photo_keys(statuses: set[str], open_margins: list[float]) -> dict:
    """A photo's place in the page's lists from its tags: needs (a tag needs review), reviewed (a person decided
    a tag and none needs review: see progress), margin (the lowest of the tags still to look at)."""
    needs = "needs_review" in statuses
    return {"needs": needs, "reviewed": not needs and not statuses.isdisjoint(REVIEWED),
            "margin": min(open_margins, default=NONE_LEFT)}


def _refresh_photos(conn: Connection, photo_ids: list[int]) -> None:
    """Rewrite the page keys of photos from their tags, in the transaction that changed the tags. An overlap photo
    is due for a second look once reviewed until someone other than its first reviewer answered on every one of its
    tags; meanwhile its margin is that of all its tags, its place in the list as it was."""
    if not photo_ids:
        return
    rows: dict[int, list] = {}
    for r in conn.execute(select(tags.c.photo_id, tags.c.status, tags.c.margin, tags.c.reviewer)
                          .where(tags.c.photo_id.in_(photo_ids))):
        rows.setdefault(r.photo_id, []).append(r)
    overlap = set(conn.execute(select(photos.c.id).where(photos.c.id.in_(photo_ids), photos.c.overlap)).scalars())
    answers = conn.execute(select(opinions.c.photo_id, func.count().label("n")).where(opinions.c.photo_id.in_(
        photo_ids)).group_by(opinions.c.photo_id, opinions.c.reviewer)).all()
    answered = {r.photo_id for r in answers if r.n >= len(rows.get(r.photo_id, ()))}
    for pid in photo_ids:
        rs = rows.get(pid, [])
        keys = photo_keys({r.status for r in rs}, [r.margin for r in rs if r.status in UNTOUCHED])
        deciders = sorted(r.reviewer for r in rs if r.status in REVIEWED and r.reviewer)
        first = max(deciders, key=deciders.count) if keys["reviewed"] and deciders else None
        due = pid in overlap and keys["reviewed"] and pid not in answered
        if due:
            keys["margin"] = min((r.margin for r in rs), default=NONE_LEFT)
        conn.execute(update(photos).where(photos.c.id == pid).values(**keys, second_due=due, first_reviewer=first))


def _draw(path: str, purpose: str) -> float:
    """A number in [0, 1) fixed by a photo's path: the same photos draw the same, whatever the order."""
    digest = hashlib.sha256(f"{purpose}:{path}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _cursor(after: str, keyed: bool) -> list:
    """A page's `after` back from text: [key, photo id], or [photo id] for the queue order."""
    try:
        last = json.loads(after)
    except (json.JSONDecodeError, TypeError):
        last = None
    ok = isinstance(last, list) and len(last) == (2 if keyed else 1) and isinstance(last[-1], int) and (
        not keyed or isinstance(last[0], (str, int, float)) and not isinstance(last[0], bool))
    if not ok or (keyed and isinstance(last[0], float) and not math.isfinite(last[0])):
        raise InvalidQuery(f"after {after[:80]!r}: not a page position this list gave")
    return last


def _migrate(conn: Connection, found: int) -> int:
    """Bring an older schema up to SCHEMA_VERSION in the opening transaction; returns the version now."""
    if found == 1:  # 1 -> 2: tags.audit, false for every tag queued before audits
        _add_columns(conn, tags, ["audit"])
        found = 2
    if found == 2:  # 2 -> 3: the page keys, second looks, leases, and the keyset indexes
        _add_nullable(conn, tags, "catalog_label")
        _add_columns(conn, photos, ["needs", "reviewed", "margin", "overlap", "second_due", "first_reviewer"])
        _add_columns(conn, tags, ["margin"])
        for table in (leases, opinions):
            table.create(conn, checkfirst=True)
        for index in KEYSET_INDEXES:
            index.create(conn, checkfirst=True)
        # Queues from before paging are small: their margins are worked out here once, in Python, as when queued.
        for r in conn.execute(select(tags.c.photo_id, tags.c.task, tags.c.confidence, tags.c.threshold,
                                     tags.c.runners_up, tags.c.catalog_label)).all():
            conn.execute(update(tags).where(tags.c.photo_id == r.photo_id, tags.c.task == r.task).values(
                margin=tag_margin({"confidence": r.confidence, "threshold": r.threshold, "catalog_label":
                                   r.catalog_label, "runners_up": json.loads(r.runners_up)})))
        _refresh_photos(conn, list(conn.execute(select(photos.c.id)).scalars()))
        found = 3
    conn.execute(update(schema_info).values(version=found))
    return found


def _add_columns(conn: Connection, table: Table, names: list[str]) -> None:
    """Add columns of `table` (as declared above, with their server defaults) that an older database lacks."""
    have = {c["name"] for c in inspect(conn).get_columns(table.name)}
    for name in names:
        if name in have:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = column.server_default
        text = "" if default is None else " DEFAULT " + (
            str(default.arg) if isinstance(default.arg, str) else str(default.arg.compile(dialect=conn.dialect)))
        null = " NOT NULL" if not column.nullable and default is not None else ""
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}{null}{text}")


def _add_nullable(conn: Connection, table: Table, name: str) -> None:
    """Give a database made before a nullable column of `table` (as declared above) that column, NULL throughout."""
    if name in {c["name"] for c in inspect(conn).get_columns(table.name)}:
        return
    # Two servers opening one PostgreSQL queue at once: the second finds the column there once the first commits.
    exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
    kind = table.c[name].type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN{exists} {name} {kind}")


def unseen_combination(model: dict, labels: dict[str, str]) -> list[str] | None:
    """The hierarchy labels (finest first) when their combination is not one seen in training, else None. A level
    the photo holds no tag for (a catalog audit queues only the tasks it flagged) matches any label: the catalog
    keeps its own there."""
    hierarchy = model.get("hierarchy")
    if not hierarchy:
        return None
    combo = [labels.get(t) for t in hierarchy["tasks"]]
    if any(all(want is None or want == seen for want, seen in zip(combo, c)) for c in hierarchy["combinations"]):
        return None
    return [label for label in combo if label is not None]


def _reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InvalidChange("a reviewer name is needed: every action records who took it")
    return name[:128]
