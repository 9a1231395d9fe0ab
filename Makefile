# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf

.PHONY: run test gen lint bench demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(BUF): package.json
	npm ci --silent --no-audit --no-fund
	touch $(BUF)

run: $(STAMP)
	$(VENV)/bin/satcheld serve --dev

# The lint, type and architecture checks first: `make test` fails when any of them fails.
test: lint
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m pytest -q --cov --cov-report=term

gen: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP) $(BUF)
	$(BUF) lint
	$(BUF) format -d --exit-code
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/unary.py

# A dev server and a node agent for node-1 in a temporary directory; a secret rotated under it.
demo: $(STAMP)
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache
