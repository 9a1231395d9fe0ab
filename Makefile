# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf

.PHONY: run test gen lint bench clean

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

test: $(STAMP) $(BUF)
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$$PATH" $(PY) -m pytest -q

gen: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(BUF)
	$(BUF) lint
	$(BUF) format -d --exit-code

bench: $(STAMP)
	$(PY) bench/unary.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache
