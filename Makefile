# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nnal-installed
VIEWER := $(VENV)/.nnal-annotate-installed
ARCH   := $(shell uname -m)
# nnunetv2 pulls torchvision; these pairs import together (x86_64: the CUDA build, which also runs on CPU)
ifeq ($(ARCH),aarch64)
TORCH  := torch==2.9.1 torchvision==0.24.1
else
TORCH  := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: setup demo test lint bench nnunet-range clean chromium xvfb

setup: $(STAMP)

# grid: Ray, an optional extra for users, which the grid tests need
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,grid]'
	touch $(STAMP)

# the optional extra of `nnal annotate` (napari, Qt): the tests need it, the demo does not
$(VIEWER): $(STAMP)
	$(PY) -m pip install -q -e '.[test,grid,annotate]'
	touch $(VIEWER)

demo: setup
	$(VENV)/bin/nnal demo --output demo-output

# the report test renders the page in Debian's headless Chromium
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# the annotate view test runs napari on Qt's offscreen platform, which takes OpenGL from an X server: Xvfb with
# Mesa's software GL (the test starts its own), and the libraries Qt's wheels link against
xvfb:
	command -v Xvfb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq xvfb libgl1 libglx-mesa0 \
		libgl1-mesa-dri libegl1 libx11-6 libfontconfig1 libfreetype6 libglib2.0-0 libdbus-1-3 libxkbcommon0 >/dev/null)

test: setup $(VIEWER) chromium xvfb
	$(PY) -m pytest -q -p no:cacheprovider --durations=30
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/nnal bench selection --scale hippocampus

# real nnU-Net rounds on the lowest and the highest nnunetv2 that pyproject.toml allows (minutes; needs PyPI)
nnunet-range: setup
	VENV=$(VENV) tools/check_nnunet_range.sh

clean:
	rm -rf demo-output .pytest_cache .ruff_cache
