# The two commands of the quick start: `make demo` and `make test`.
# Each sets up what it needs; a second run only re-installs when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the dashboard's browser tests (Debian's package: no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| sudo sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'; }

demo: $(STAMP)
	$(VENV)/bin/pml-gateway demo

test: $(STAMP) browser
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
