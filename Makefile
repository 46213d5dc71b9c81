# The two commands: `make run` (main job on the default model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[export,onnxruntime,medical,dev]"
	touch $@

run: setup
	$(PY) -m sammed_edge.export.segment

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out build *.egg-info
