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
	$(PIP) install -e ".[export,onnxruntime,openvino,medical,kernels,demo,browser,serve,ray,dev]"
	touch $@

BUNDLE ?= out/lite_medsam_clicks-onnx-fp32

# The main job: build the verified default bundle (LiteMedSAM fine-tuned for clicks, onnx-fp32), then segment 20
# dev-set masks with it.
run: setup
	$(PY) export/build.py --target onnx-fp32 --out $(BUNDLE)
	$(VENV)/bin/sammed-edge info $(BUNDLE)
	$(VENV)/bin/sammed-edge evaluate --bundle $(BUNDLE) --modes box --limit 20 --out out/evaluate/quick

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out build *.egg-info
