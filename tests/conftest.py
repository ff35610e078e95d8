import os
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from synthetic import make_catalog

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-small"
TORCH_THREADS = torch.get_num_threads()
# `make test-fast` leaves out tests marked slow: those that start a browser, read the real catalog, a PostgreSQL
# server, a Ray instance or a real uvicorn, tune, train EfficientNet-Lite0, or run end to end (the files at the top
# of tests/), besides those marked one by one.
SLOW_FIXTURES = {"browser", "real_data", "postgres"}
SLOW_FILES = {"test_ray_backend.py", "test_tune.py", "test_connections.py", "test_real_catalog.py",
              "test_pipeline.py", "test_own_catalog.py", "test_photo_and_title.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "real_data" in item.fixturenames:
            item.add_marker(pytest.mark.real)
        on_postgres = getattr(item, "callspec", None) and item.callspec.params.get("db_url") == "postgresql"
        if SLOW_FIXTURES & set(item.fixturenames) or item.path.name in SLOW_FILES or on_postgres \
                or "efficientnet-lite0" in item.name:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never write to the user's cache; the real catalog's cache is shared across tests in one session."""
    os.environ["FASHIONTAG_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Trainings set torch's thread count for the whole process (tiny_config: one), session fixtures included;
    every test ends with the count the session started with."""
    yield
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("catalog"), n=400)


@pytest.fixture(scope="session")
def trained(catalog, tmp_path_factory):
    from fashiontag.training.train import train
    out = tmp_path_factory.mktemp("run")
    return train(tiny_config(catalog.root, out))


@pytest.fixture(scope="session")
def real_data():
    if not (REAL_DATA / "styles.csv").exists():
        pytest.skip(f"real catalog not found at {REAL_DATA.resolve()} (only on the project's machines)")
    return REAL_DATA.resolve()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the whole session (skipped, saying why, where it cannot start)."""
    from reviewdb import postgres_missing, postgres_server
    if reason := postgres_missing():
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty review database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.db'}"
    from reviewdb import fresh_postgres_db
    return fresh_postgres_db(request.getfixturevalue("postgres"), tmp_path.name.lower()[:60])


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright (skipped, saying why, where it is missing)."""
    from browser import chromium, chromium_missing
    if reason := chromium_missing():
        pytest.skip(reason)
    with chromium() as b:
        yield b
