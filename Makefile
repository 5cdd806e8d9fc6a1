# edgetl — every target sets up what it needs, so each works first on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
EDGE_VENV ?= .venv-edge
LEGACY_VENV ?= .venv-legacy
QAT_VENV ?= .venv-qat
IMX500_VENV ?= .venv-imx500
BIN    := $(VENV)/bin
DEMO   ?= build/demo
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: setup setup-edge setup-qat setup-imx500 test test-slow test-all demo lint format bench quality accelerators web-runtime web-check pi-check clean-pi-check clean help

help:
	@echo "make setup-imx500  the IMX500 (Raspberry Pi AI Camera) converter's venv ($(IMX500_VENV), 2.3 GB) and Java 17"
	@echo "make setup   workstation venv ($(VENV)): TensorFlow (CPU wheel), tfds, ai-edge-litert, dev tools"
	@echo "make test    the test suite (offline, CPU) but its slow tier: a few minutes"
	@echo "make test-slow  the slow tier: multi-worker, QAT, several trainings, kills (CI runs it too)"
	@echo "make demo    generate -> train -> export INT8 -> validate -> classify, offline"
	@echo "make bench   write benchmark JSON to build/bench/ (BENCH_ARGS='--skip-training --skip-scale --scale-sizes 3000,30000 --runs N --shared DIR')"
	@echo "make quality INT8 accuracy per export policy on k folds of ../shared photos (QUALITY_ARGS='--k 3 --retrain', or '--leave-out tulip --policies default --out build/quality-four')"
	@echo "make accelerators  the README recipe exported for accelerator, edgetpu, ethos-u; each file judged by its compiler (ACCELERATOR_ARGS='--run RUN')"
	@echo "make web-runtime  MediaPipe's web runtime (@mediapipe/tasks-vision, npm) into build/web/ for edgetl serve"
	@echo "make web-check  the README recipe's shipped model in headless Chromium: file and fake-camera paths vs Keras and MediaPipe Python (build/web-check/)"
	@echo "make pi-check edgetl on emulated 64- and 32-bit Raspberry Pi OS vs x86 (root, Debian; build/pi-check/)"
	@echo "make lint    ruff"

# The stamp depends on pyproject.toml: editing dependencies refreshes the venv.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[train-cpu,dev,accelerators]'
	touch $@

# A device-like venv: `pip install .[edge]` only, so TensorFlow cannot be imported there.
$(EDGE_VENV)/.installed: pyproject.toml $(shell find edge toolchain -name "*.py")
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install $(PIP_FLAGS) '.[edge]'
	touch $@

# The legacy device runtime: tflite-runtime 2.14 needs numpy<2 (and Python <= 3.11).
$(LEGACY_VENV)/.installed: pyproject.toml $(shell find edge toolchain -name "*.py")
	test -x $(LEGACY_VENV)/bin/python || $(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/python -m pip install $(PIP_FLAGS) '.[edge-legacy]'
	touch $@

# `edgetl export --qat` fine-tunes in this venv (see pyproject.toml's qat extras for why).
$(QAT_VENV)/.installed: pyproject.toml
	test -x $(QAT_VENV)/bin/python || $(PYTHON) -m venv $(QAT_VENV)
	$(QAT_VENV)/bin/python -m pip install $(PIP_FLAGS) '.[qat-cpu]'
	touch $@

# `edgetl export --target imx500` converts in this venv: Sony's converter pins TensorFlow
# 2.15 / Keras 2 (2.3 GB), and its backend runs Java 17, installed from Debian when missing.
$(IMX500_VENV)/.installed:
	command -v java >/dev/null || (apt-get update -q && apt-get install -y -q openjdk-17-jre-headless)
	test -x $(IMX500_VENV)/bin/python || $(PYTHON) -m venv $(IMX500_VENV)
	$(IMX500_VENV)/bin/python -m pip install $(PIP_FLAGS) 'imx500-converter[tf]==3.19.2' 'model-compression-toolkit==2.5.1'
	touch $@

setup-imx500: $(IMX500_VENV)/.installed

setup: $(VENV)/.installed

setup-qat: $(QAT_VENV)/.installed

setup-edge: $(EDGE_VENV)/.installed $(LEGACY_VENV)/.installed

# Both device venvs are TensorFlow-free; export's runtime check and the tests run in them.
RUNTIME_PYTHONS = $(CURDIR)/$(EDGE_VENV)/bin/python:$(CURDIR)/$(LEGACY_VENV)/bin/python

TEST_VENVS = $(VENV)/.installed $(EDGE_VENV)/.installed $(LEGACY_VENV)/.installed $(QAT_VENV)/.installed
PYTEST = EDGETL_QAT_PYTHON=$(CURDIR)/$(QAT_VENV)/bin/python \
	EDGETL_EDGE_PYTHON=$(CURDIR)/$(EDGE_VENV)/bin/python \
	EDGETL_LEGACY_PYTHON=$(CURDIR)/$(LEGACY_VENV)/bin/python \
	EDGETL_RUNTIME_PYTHONS=$(RUNTIME_PYTHONS) $(BIN)/python -m pytest -q --durations=5

# Every behaviour but the slow tier (pyproject.toml's `slow` marker): what a change runs.
test: $(TEST_VENVS)
	$(PYTEST) -m "not slow" $(TEST_ARGS)

# The slow tier: several trainings, multi-worker clusters, real QAT, kills mid-training.
# CI runs it after `make test`; `make test-all` is both in one session.
test-slow: $(TEST_VENVS)
	$(PYTEST) -m slow $(TEST_ARGS)

test-all: $(TEST_VENVS)
	$(PYTEST) $(TEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check edge toolchain tests
	$(BIN)/ruff format --check edge toolchain tests

format: $(VENV)/.installed
	$(BIN)/ruff format edge toolchain tests
	$(BIN)/ruff check --fix edge toolchain tests

demo: $(VENV)/.installed
	@echo "== 1/5 train (generated data, MobileNetV2 alpha 0.35 at 80 px, from scratch)"
	$(BIN)/edgetl train --data synthetic --out $(DEMO) --force --image-size 80 --alpha 0.35 \
		--weights none --epochs 1 --fine-tune-epochs 10 --fine-tune-learning-rate 0.003
	@echo "== 2/5 export INT8, held to the default accuracy budget (<= 1 pt of top-1, >= 0.95 agreement)"
	$(BIN)/edgetl export $(DEMO) --force
	@echo "== 3/5 validate what ships, as CI would (the same budget as a gate)"
	$(BIN)/edgetl validate $(DEMO) --max-drop 1 --min-agreement 0.95
	@echo "== 4/5 classify a folder on the device runner"
	$(BIN)/edgetl classify $$(ls $(DEMO)/model_int8*.tflite) --source $(DEMO)/synthetic_data \
		--output $(DEMO)/predictions.csv --quiet
	@echo "== 5/5 runner speed"
	$(BIN)/edgetl bench $$(ls $(DEMO)/model_int8*.tflite) --runs 200 --source $(DEMO)/synthetic_data \
		--json $(DEMO)/bench.json
	@$(BIN)/python tests/tools/demo_summary.py $(DEMO)

bench: $(VENV)/.installed
	$(BIN)/python tests/tools/benchmark.py --out build/bench $(BENCH_ARGS)

# Slow (about 10 min per fold on a 2-core CPU the first time; trained folds are reused).
quality: $(VENV)/.installed $(QAT_VENV)/.installed
	EDGETL_QAT_PYTHON=$(CURDIR)/$(QAT_VENV)/bin/python $(BIN)/python tests/tools/quality.py --out build/quality $(QUALITY_ARGS)

# The README recipe exported for every accelerator target, each file judged by its
# compiler (Vela installs with `make setup`; Coral's compiler where on the PATH).
accelerators: $(VENV)/.installed $(IMX500_VENV)/.installed
	EDGETL_IMX500_PYTHON=$(abspath $(IMX500_VENV))/bin/python $(BIN)/python tests/tools/accelerators.py --out build/accelerators $(ACCELERATOR_ARGS)

# MediaPipe's web runtime for `edgetl serve`, from npm (the page loads nothing from the internet).
MEDIAPIPE_WEB ?= 1.1.0
WEB_RUNTIME = build/web/tasks-vision-$(MEDIAPIPE_WEB)
$(WEB_RUNTIME)/vision_bundle.mjs:
	@command -v npm >/dev/null || { echo "make web-runtime needs npm: sudo apt-get install npm"; exit 3; }
	mkdir -p build/web/npm
	cd build/web/npm && npm pack --silent @mediapipe/tasks-vision@$(MEDIAPIPE_WEB) >/dev/null
	rm -rf $(WEB_RUNTIME).partial && mkdir -p $(WEB_RUNTIME).partial
	tar xzf build/web/npm/mediapipe-tasks-vision-$(MEDIAPIPE_WEB).tgz -C $(WEB_RUNTIME).partial --strip-components=1
	rm -rf $(WEB_RUNTIME) && mv $(WEB_RUNTIME).partial $(WEB_RUNTIME)

web-runtime: $(WEB_RUNTIME)/vision_bundle.mjs

# Opt-in: trains the README recipe once (build/web-check/run), installs headless Chromium
# from Debian when missing (root), and drives the page over the test split.
web-check: $(VENV)/.installed web-runtime
	$(BIN)/python tests/tools/web_check.py --out build/web-check --runtime $(WEB_RUNTIME) $(WEB_CHECK_ARGS)

# Opt-in, as root: Debian Bookworm arm64/armhf root file systems under QEMU (cached in
# build/pi-check/, ~1.3 GB), edgetl installed there as the README tells a Pi user.
pi-check: $(VENV)/.installed $(EDGE_VENV)/.installed $(LEGACY_VENV)/.installed
	$(BIN)/python tests/tools/pi_check.py --out build/pi-check $(PI_CHECK_ARGS)

# The root file systems hold bind mounts of /dev while a check runs: never `rm -rf` them.
clean-pi-check: $(VENV)/.installed
	$(BIN)/python tests/tools/pi_check.py --out build/pi-check --clean

clean:
	rm -rf build/demo build/bench build/runs build/quality build/quality-four
