"""Databases for the review tests: SQLite files, and a throwaway PostgreSQL server started from Debian's binaries
(`make test-deps` installs them). Fixtures never install anything: without PostgreSQL its tests skip, saying why."""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager


def _pg_binary(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if not (_pg_binary("initdb") and _pg_binary("pg_ctl")):
        return "PostgreSQL's initdb/pg_ctl are missing: `make test-deps` installs Debian's postgresql"
    if importlib.util.find_spec("psycopg") is None:
        return "the psycopg driver is missing: pip install 'fashiontag[postgres]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and initdb refuses root: there is no 'postgres' user to run it as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    """A PostgreSQL server in a temporary folder on a free loopback port; yields a URL of its maintenance
    database. As root it runs as the 'postgres' user (PostgreSQL refuses to run as root)."""
    user = "postgres" if os.geteuid() == 0 else None
    folder = tempfile.mkdtemp(prefix="fashiontag-pg-")
    if user:
        shutil.chown(folder, user)
    run = dict(user=user, capture_output=True, text=True, timeout=120)
    port = _free_port()
    data = os.path.join(folder, "data")
    try:
        done = subprocess.run([_pg_binary("initdb"), "-D", data, "-A", "trust", "-U", "fashiontag", "--no-sync"],
                              **run)
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr[-500:]}")
        done = subprocess.run([_pg_binary("pg_ctl"), "-D", data, "-w", "-l", os.path.join(folder, "log"), "-o",
                               f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], **run)
        if done.returncode:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout[-300:]} {done.stderr[-300:]}")
        yield f"postgresql://fashiontag@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([_pg_binary("pg_ctl"), "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_postgres_db(server_url: str, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name
