# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install native clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# dalimix's DALI plugin, compiled against the installed DALI into ~/.cache/dalimix (a no-op once cached;
# without a compiler it says so and dalimix uses stock DALI operators).
native: $(STAMP)
	$(PY) -m dalimix.native.build || true

install: $(STAMP)

demo: native
	$(PY) scripts/demo.py --out runs/demo

test: native
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs demo-data .pytest_cache
