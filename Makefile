# Two entry points: `make demo` builds an example recipe, `make test` runs the suite.
# Both create .venv on first use. torch is pinned to the CPU wheel here: a looser
# requirement makes pip fetch a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test install lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,tensorflow]" "$(TORCH)"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/mlpack build recipes/cnn.yaml
	$(BIN)/mlpack inspect artifacts/tiny-cnn

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

clean:
	rm -rf artifacts .pytest_cache
