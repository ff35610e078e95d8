# The two commands that do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-fast test-deps screenshot install clean

# What running needs; the tests' extras (Ray, PostgreSQL's driver, Playwright, moto) come with `make test`.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

# Trains the default recipe on $FASHIONTAG_DATA (or DATA=...), evaluates it, prints where the report is.
run: $(STAMP)
	$(VENV)/bin/fashiontag run $(if $(DATA),--data $(DATA))

test: $(TEST_STAMP) test-deps
	$(PY) -m pytest -q -rs

# The inner loop: the tests that need no browser, database server, Ray instance, real catalog or end-to-end run
# (tests/conftest.py marks those slow).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -rs -m "not slow and not real"

# System packages the tests use: Debian's chromium for the browser tests, Debian's postgresql for the review
# store's PostgreSQL tests (they start their own throwaway server; the service apt-get may start is not used).
# Without apt-get (or root) nothing fails here: those tests skip and say why.
test-deps:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium: the browser tests will be skipped"; \
	fi
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
			&& command -v apt-get >/dev/null; then \
		echo "installing postgresql for the review store tests (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
			|| echo "could not install postgresql: the PostgreSQL tests will be skipped"; \
	fi

# Refreshes docs/screenshot-web.png and docs/screenshot-review.png: the shipped model on real photos (needs ../shared/data/fashion-small).
screenshot: $(TEST_STAMP) test-deps
	$(PY) tests/browser.py
	$(PY) tests/browser.py --review

clean:
	rm -rf $(VENV) runs reports .pytest_cache
