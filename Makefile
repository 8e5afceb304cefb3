# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install native clean gpu-check

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

# On a GPU box: build, pytest -m gpu, compute-sanitizer, fallback, profile and a training epoch, in one report
# (runs/gpu-check/gpu_check.txt and .json). See README, "Checking a GPU box".
gpu-check: native
	$(PY) scripts/gpu_check.py --out runs/gpu-check

clean:
	rm -rf $(VENV) runs demo-data .pytest_cache
