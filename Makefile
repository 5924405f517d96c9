# The two commands: `make demo` and `make test`. Both create .venv on first use and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test flower-audit clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: pip takes the local CPU build instead of a multi-GB CUDA one.
	$(PY) -m pip install -q torch==2.13.0
	# Packages used only for the files they ship (weights, images); their declared dependencies
	# would pull torchvision or a CUDA torch, so they are installed without them.
	$(PY) -m pip install -q --no-deps gan-face-generate==1.1.1 foolbox==3.3.4 stlpips-pytorch==0.0.2
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gifd demo --out runs/demo

# The Flower example: a simulated federation whose server audits what each client leaks.
flower-audit: $(STAMP)
	FLWR_TELEMETRY_ENABLED=0 $(PY) examples/flower_audit/run.py --out runs/flower-audit

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
