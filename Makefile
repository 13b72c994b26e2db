# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nnal-installed
ARCH   := $(shell uname -m)
# nnunetv2 pulls torchvision; these pairs import together (x86_64: the CUDA build, which also runs on CPU)
ifeq ($(ARCH),aarch64)
TORCH  := torch==2.9.1 torchvision==0.24.1
else
TORCH  := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: setup demo test lint bench clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/nnal demo --output demo-output

# the report test renders the page in Debian's headless Chromium
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: setup chromium
	$(PY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/ruff check src tests benchmarks

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(VENV)/bin/nnal bench selection --scale hippocampus

clean:
	rm -rf demo-output .pytest_cache .ruff_cache
