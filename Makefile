# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
# The virtual environment lives outside the checkout, keyed by a hash of the dependency spec,
# so a clean clone (CI) reuses it instead of reinstalling several GB of wheels.
PYTHON ?= python3
# Only the dependency lists count: editing pytest or ruff settings must not trigger a reinstall.
SPEC_HASH := $(shell $(PYTHON) -c "import tomllib,json;p=tomllib.load(open('pyproject.toml','rb'))['project'];print(json.dumps([p['dependencies'],p.get('optional-dependencies')],sort_keys=True))" | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/raydbb/venv-$(SPEC_HASH)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv clean

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned to the builds in the local wheel cache, so pip does not pick another.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)
	@# Re-point the editable install at this checkout (the venv is shared between clones).
	@$(PY) -m pip install -q --no-deps -e . >$(VENV)/last-install.log 2>&1 || { cat $(VENV)/last-install.log; exit 1; }

demo: venv
	$(VENV)/bin/raydbb demo --out $(OUT)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check raydbb tests benchmarks jobs

bench: venv
	$(PY) -m benchmarks.run_quick

clean:
	rm -rf runs .pytest_cache
