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
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    false,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fashiontag.errors import FashiontagError
from fashiontag.inference.decode import needs_review

# 2: tags.audit (a version-1 database gains it, false, when opened: _migrate). tags.catalog_label came later without
# a new version: a nullable column that a fashiontag from before neither reads nor needs to write (_add_catalog_label).
SCHEMA_VERSION = 2
REVIEWED = ("accepted", "corrected")
UNTOUCHED = ("needs_review", "auto")

metadata = MetaData()
schema_info = Table("schema_info", metadata, Column("version", Integer, nullable=False))
settings = Table("settings", metadata, Column("key", String(64), primary_key=True), Column("value", Text))
photos = Table("photos", metadata,
               Column("id", Integer, primary_key=True, autoincrement=True),
               Column("path", String(2048), nullable=False, unique=True),
               Column("item_id", String(512), nullable=False),
               Column("error", Text, nullable=False, default=""))
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
             Column("catalog_label", String(256)))  # a catalog audit's tag: the catalog's label; else NULL
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
                if found == SCHEMA_VERSION:  # a newer schema is refused below, untouched
                    _add_catalog_label(conn)
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

    def add_photos(self, items: list[dict]) -> int:
        """items: {path, item_id, error, tags: {task: {label, confidence, runners_up, threshold[, audit][,
        catalog_label]}}}; a path already in the queue is skipped (its review goes on). A tag with a true `audit` or a
        catalog_label is queued as needing review whatever its confidence. Returns how many were added."""
        known = self.known_paths()
        new = [i for i in items if i["path"] not in known]
        with self.engine.begin() as conn:
            for item in new:
                pid = conn.execute(photos.insert().values(path=item["path"], item_id=item["item_id"],
                                                          error=item["error"])).inserted_primary_key[0]
                rows = [{"photo_id": pid, "task": t, "model_label": tag["label"], "confidence": tag["confidence"],
                         "runners_up": json.dumps(tag["runners_up"]), "threshold": tag["threshold"],
                         "label": tag["label"], "version": 1, "audit": bool(tag.get("audit")),
                         "catalog_label": tag.get("catalog_label"),
                         "status": "needs_review" if tag.get("audit") or tag.get("catalog_label") or needs_review(
                             tag["label"], tag["confidence"], tag["threshold"]) else "auto"}
                        for t, tag in item["tags"].items()]
                if rows:
                    conn.execute(tags.insert(), rows)
        return len(new)

    # --------------------------------------------------------------------------------------------- reading

    def photos(self, photo_id: int | None = None, conn: Connection | None = None) -> list[dict]:
        """Every photo (or one) with its tags: {id, path, item_id, error, tags: {task: {...}}}, in queue order."""
        if conn is None:
            with self.engine.connect() as own:
                return self.photos(photo_id, own)
        q_photos, q_tags = select(photos).order_by(photos.c.id), select(tags)
        if photo_id is not None:
            q_photos, q_tags = q_photos.where(photos.c.id == photo_id), q_tags.where(tags.c.photo_id == photo_id)
        out = {r.id: {"id": r.id, "path": r.path, "item_id": r.item_id, "error": r.error, "tags": {}}
               for r in conn.execute(q_photos)}
        order = {t: i for i, t in enumerate((self.model(conn) or {}).get("tasks", []))}
        for r in sorted(conn.execute(q_tags), key=lambda r: order.get(r.task, len(order))):
            out[r.photo_id]["tags"][r.task] = {
                "label": r.label, "status": r.status, "version": r.version, "reviewer": r.reviewer,
                "updated_at": r.updated_at, "model_label": r.model_label, "confidence": r.confidence,
                "threshold": r.threshold, "runners_up": json.loads(r.runners_up), "audit": bool(r.audit),
                "catalog_label": r.catalog_label}
        return list(out.values())

    def photo(self, photo_id: int, conn: Connection | None = None) -> dict:
        found = self.photos(photo_id, conn)
        if not found:
            raise NotFound(f"no photo {photo_id} in this review")
        return found[0]

    def progress(self) -> dict:
        """Photos reviewed, still needing review, and in all (tagged ones). A photo is reviewed once a person
        decided on any of its tags and none still needs review: a reviewer sets the unsure tags and leaves the
        sure ones (`auto`) as the model said, which is also how export takes them."""
        state: dict[int, set] = {}
        with self.engine.connect() as conn:
            for pid, status in conn.execute(select(tags.c.photo_id, tags.c.status)):
                state.setdefault(pid, set()).add(status)
        return {"total": len(state),
                "reviewed": sum("needs_review" not in s and not s.isdisjoint(REVIEWED) for s in state.values()),
                "needs_review": sum("needs_review" in s for s in state.values())}

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
            current = self.photo(photo_id, conn)
            labels = {t: tag["label"] for t, tag in current["tags"].items()} | {
                t: d["label"] for t, d in decisions.items()}
            if not confirm and (combo := unseen_combination(model, labels)):
                raise UnseenCombination(f"{' + '.join(combo)} never occurs in the training catalog; confirm to "
                                        "keep it")
            todo = {t: (d["label"], "accepted" if d["label"] == current["tags"][t]["model_label"] else "corrected",
                        d.get("version")) for t, d in decisions.items()}
            action = self._apply(conn, reviewer, "review", photo_id, todo)
            return {"action": action, "photo": self.photo(photo_id, conn)}

    def bulk_accept(self, reviewer: str, photo_ids: list[int] | None = None) -> dict:
        """Accept, as one action, every photo (of photo_ids, else all) whose tags are all at or above their
        thresholds and untouched. Returns {action, accepted: [photo ids]}."""
        reviewer = _reviewer(reviewer)
        with self._writing() as conn:
            state: dict[int, list] = {}
            for r in conn.execute(select(tags.c.photo_id, tags.c.task, tags.c.label, tags.c.status,
                                         tags.c.version)):
                if photo_ids is None or r.photo_id in photo_ids:
                    state.setdefault(r.photo_id, []).append(r)
            ready = sorted(pid for pid, rs in state.items() if all(r.status == "auto" for r in rs))
            action = None
            for pid in ready:
                todo = {r.task: (r.label, "accepted", r.version) for r in state[pid]}
                action = self._apply(conn, reviewer, "bulk_accept", pid, todo, action)
            return {"action": action, "accepted": ready}

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
        return action_id


def _migrate(conn: Connection, found: int) -> int:
    """Bring an older schema up to SCHEMA_VERSION in the opening transaction; returns the version now."""
    if found == 1:  # 1 -> 2: tags.audit, false for every tag queued before audits
        if "audit" not in {c["name"] for c in inspect(conn).get_columns(tags.name)}:
            conn.exec_driver_sql(f"ALTER TABLE {tags.name} ADD COLUMN audit BOOLEAN NOT NULL DEFAULT "
                                 f"{'0' if conn.dialect.name == 'sqlite' else 'false'}")
        found = 2
    conn.execute(update(schema_info).values(version=found))
    return found


def _add_catalog_label(conn: Connection) -> None:
    """Give a database made before catalog audits its tags.catalog_label (NULL: no tag came from an audit)."""
    if "catalog_label" in {c["name"] for c in inspect(conn).get_columns(tags.name)}:
        return
    # Two servers opening one PostgreSQL queue at once: the second finds the column there once the first commits.
    exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(f"ALTER TABLE {tags.name} ADD COLUMN{exists} catalog_label VARCHAR(256)")


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
