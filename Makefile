# The two commands of the quick start: `make demo` and `make test`.
# Each sets up what it needs; a second run only re-installs when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser servers postgres bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools' "Editable installation" box warns that a folder named like the package may
	@# shadow it: here that folder is the package itself (this checkout, installed editable).
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[dev,fast,semantic]'
	touch $(STAMP)

# Real MCP servers none of us wrote, for the end-to-end tests: npm's reference servers in
# .tools/node_modules, PyPI's mcp-server-time and mcp-server-git in their own venv (.tools/py:
# they are built on another major version of the mcp package than the gateway).
TOOLS := .tools
$(TOOLS)/.installed: Makefile
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) \
		@modelcontextprotocol/server-everything @modelcontextprotocol/server-memory @modelcontextprotocol/server-filesystem
	$(PYTHON) -m venv $(TOOLS)/py
	$(TOOLS)/py/bin/pip install --quiet mcp-server-time mcp-server-git
	touch $@

servers: $(TOOLS)/.installed

# PostgreSQL from Debian's packages for the replica tests (they start a throwaway cluster on a
# Unix socket themselves and stop it after).
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql for the replica tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
		|| sudo sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null'; }

install: $(STAMP)

# Headless Chromium for the dashboard's browser tests (Debian's package: no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| sudo sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'; }

demo: $(STAMP)
	$(VENV)/bin/pml-gateway demo

# Two workers, each taking whole test files (module fixtures stay per file): 3.4 min on the 2-core
# machine. Every test picks free ports and its own temporary directories.
test: $(STAMP) browser servers postgres
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache build *.egg-info
