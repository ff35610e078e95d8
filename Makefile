# The two commands that do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Trains the default recipe on $FASHIONTAG_DATA (or DATA=...), evaluates it, prints where the report is.
run: $(STAMP)
	$(VENV)/bin/fashiontag run $(if $(DATA),--data $(DATA))

test: $(STAMP)
	$(PY) -m pytest -q -rs

clean:
	rm -rf $(VENV) runs reports .pytest_cache
