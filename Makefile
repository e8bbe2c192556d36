# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv with pinned dependencies on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

GPU_MARK := $(VENV)/.gpu
# A GPU venv (make setup-gpu) keeps onnxruntime-gpu: the CPU onnxruntime is left out of its
# requirements, since both install the import package `onnxruntime`.
BASE_REQS := $(if $(wildcard $(GPU_MARK)),$(VENV)/.requirements-without-onnxruntime.txt,requirements.txt)

.PHONY: demo test clean-venv setup-gpu gpu-check

$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	grep -v '^onnxruntime==' requirements.txt > $(VENV)/.requirements-without-onnxruntime.txt
	$(PY) -m pip install --quiet -r $(BASE_REQS) -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# GPU deployment: onnxruntime-gpu, TensorRT and torch-tensorrt into .venv (README, "GPU").
setup-gpu: $(STAMP)
	$(PY) -m pip uninstall --quiet -y onnxruntime
	$(PY) -m pip install --quiet -r requirements-gpu.txt
	touch $(GPU_MARK)

# The one-command GPU check: parity against CPU fp32, latency, the ViT-L configuration, the node.
gpu-check: $(STAMP)
	$(PY) -m flowclas_ros.tools.gpu_check --out gpu_check.json

DEMO_OUTPUT ?= demo_output

demo: $(STAMP)
	$(PY) -m flowclas_ros.tools.demo --out $(DEMO_OUTPUT) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
