"""Reviewer accounts, sign-in sessions and the rule for exposing the review service (README: "Running the review
service for a team").

Accounts live in the review database (`users`: name, role, an argon2id hash of the password). With no account the
service is open as it always was, but only on loopback (`check_exposure`). With one or more, every /review/api
route needs a signed-in session: a signed cookie (HttpOnly, SameSite=Strict, Secure behind TLS) naming the user,
its expiry and a CSRF token that every state-changing request must send back in the X-CSRF-Token header (double
submit: the same token sits in a cookie the page's script can read). Actions are recorded under the session's user.
Roles: `reviewer` reviews and undoes their own actions; `admin` may also undo anyone's (and manages accounts with
`fashiontag review users`, which works on the database directly).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from fashiontag.errors import FashiontagError
from fashiontag.review.store import ReviewStore, _now, actions, settings, users
from fashiontag.serve.hosts import is_loopback

ROLES = ("reviewer", "admin")
SESSION_COOKIE = "fashiontag_session"
CSRF_COOKIE = "fashiontag_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
MIN_PASSWORD = 8
FAILURES_ALLOWED, FAILURE_WINDOW = 5, 300.0  # failed sign-ins per name before it is refused for the window

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password of anyone")  # verified against for unknown names: same timing


class AuthError(FashiontagError, ValueError):
    """An account that cannot be added or removed, or a service that must not start as asked."""


def ensure_users(store: ReviewStore) -> None:
    """The users table, added where the database predates accounts (ReviewStore opened without create)."""
    users.create(store.engine, checkfirst=True)


def _check_name(name: str) -> str:
    name = unicodedata.normalize("NFC", (name or "").strip())
    if not name or len(name) > 128 or any(unicodedata.category(c)[0] == "C" for c in name):
        raise AuthError(f"account name {name[:40]!r}: 1 to 128 printable characters")
    return name


def add_user(store: ReviewStore, name: str, password: str, role: str = "reviewer") -> str:
    name = _check_name(name)
    if role not in ROLES:
        raise AuthError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(password or "") < MIN_PASSWORD:
        raise AuthError(f"the password needs {MIN_PASSWORD} characters or more")
    ensure_users(store)
    try:
        with store.engine.begin() as conn:
            conn.execute(users.insert().values(name=name, role=role, password_hash=_hasher.hash(password),
                                               created_at=_now()))
    except IntegrityError:
        raise AuthError(f"there is already an account {name!r} (remove it first to replace it)") from None
    return name


def remove_user(store: ReviewStore, name: str) -> bool:
    ensure_users(store)
    with store.engine.begin() as conn:
        return conn.execute(delete(users).where(users.c.name == name.strip())).rowcount > 0


def list_users(store: ReviewStore) -> list[dict]:
    ensure_users(store)
    with store.engine.connect() as conn:
        return [{"name": r.name, "role": r.role, "created_at": r.created_at}
                for r in conn.execute(select(users).order_by(users.c.name))]


def has_users(store: ReviewStore) -> bool:
    with store.engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(users)).scalar())


def get_user(store: ReviewStore, name: str) -> dict | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.name == name)).first()
    return None if row is None else {"name": row.name, "role": row.role, "hash": row.password_hash}


def verify(store: ReviewStore, name: str, password: str) -> dict | None:
    """The account when the password is its own, else None (unknown names take as long as wrong passwords)."""
    user = get_user(store, (name or "").strip())
    try:
        _hasher.verify(user["hash"] if user else _DUMMY_HASH, password or "")
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user["hash"]):
        with store.engine.begin() as conn:
            conn.execute(update(users).where(users.c.name == user["name"]).values(
                password_hash=_hasher.hash(password)))
    return user


def action_owner(store: ReviewStore, action_id: int) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(actions.c.reviewer).where(actions.c.id == action_id)).scalar()


def check_exposure(store: ReviewStore, host: str, no_auth: bool = False) -> str | None:
    """The rule for `fashiontag review --host`: on loopback, or with accounts, fine (None); beyond loopback with no
    account, an AuthError unless no_auth, and then the warning to print."""
    if is_loopback(host) or has_users(store):
        return None
    if not no_auth:
        raise AuthError(f"--host {host} reaches beyond this machine, and the review database has no accounts: anyone "
                        "who reaches the port could read every photo and change every tag. Add accounts first "
                        "(`fashiontag review users add NAME --role admin --db URL`), or pass --no-auth to serve it "
                        "open anyway")
    return (f"warning: serving the review on {host} with no accounts (--no-auth): anyone who reaches the port can "
            "read every photo and change every tag under any name")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed session tokens: {user, expiry, CSRF token, a fingerprint of the password hash} and an HMAC under a
    secret kept in the database (sessions survive restarts and hold across several server processes). Removing an
    account or changing its password ends its sessions."""

    def __init__(self, store: ReviewStore):
        self.store = store
        self._secret: bytes | None = None
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def secret(self) -> bytes:
        if self._secret is None:
            with self.store.engine.begin() as conn:
                value = conn.execute(select(settings.c.value).where(settings.c.key == "session_secret")).scalar()
                if value is None:
                    value = secrets.token_hex(32)
                    conn.execute(settings.insert().values(key="session_secret", value=value))
            self._secret = bytes.fromhex(value)
        return self._secret

    @staticmethod
    def _fingerprint(user: dict) -> str:
        return hashlib.sha256(user["hash"].encode()).hexdigest()[:16]

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret(), payload.encode(), hashlib.sha256).digest())

    def issue(self, user: dict) -> tuple[str, str]:
        """A session token and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        payload = _b64(json.dumps({"u": user["name"], "e": int(time.time()) + SESSION_SECONDS, "c": csrf,
                                   "f": self._fingerprint(user)}).encode())
        return f"{payload}.{self._sign(payload)}", csrf

    def read(self, token: str | None) -> tuple[dict, str] | None:
        """The signed-in user and the session's CSRF token, or None (no, forged, expired or stale token)."""
        if not token or "." not in token or len(token) > 4096:
            return None
        payload, sig = token.rsplit(".", 1)
        if not hmac.compare_digest(sig, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if data.get("e", 0) < time.time():
            return None
        user = get_user(self.store, data.get("u", ""))
        if user is None or not hmac.compare_digest(self._fingerprint(user), data.get("f", "")):
            return None
        return user, data.get("c", "")

    def throttled(self, name: str) -> bool:
        """Whether `name` had FAILURES_ALLOWED failed sign-ins within the last FAILURE_WINDOW seconds."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < FAILURE_WINDOW]
            self._failures[name] = recent
            return len(recent) >= FAILURES_ALLOWED

    def failed(self, name: str) -> None:
        with self._lock:
            if len(self._failures) > 10000:  # bounded: a flood of made-up names cannot grow it forever
                self._failures.clear()
            self._failures.setdefault(name, []).append(time.monotonic())
