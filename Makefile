# Every target sets up .venv/ itself first (seconds when it is already there).
PY := .venv/bin/python

.PHONY: setup test test-fast demo sweep raccoon lint bundle gpu-wheels gpu-check clean

setup:
	@tools/setup_env.sh

# Every test, the slow ones included (15 minutes on a 2-core machine, 864 tests); README and CI.
test: setup
	$(PY) -m pytest -q -m "slow or not slow"

# The default selection (not slow; about 2 minutes).
test-fast: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) tools/demo.py --out output/demo

# The paper's experiment on the demo's generated set (docs/sweep.md): C = 1, 4, 8 at the demo's
# widths (d = 16, 6, 3), 3 runs each, as many at once as there are cores; designed for at most
# 15 minutes on a 2-core machine. Run again, it trains only what is not done.
SWEEP_DATA := output/sweep/data
sweep: setup
	$(PY) tools/make_synthetic_dataset.py --out $(SWEEP_DATA)
	$(PY) tools/sweep.py --config-file configs/demo/faster_rcnn_R_demo.yaml \
		--cardinalities 1 4 8 --runs 3 --out output/sweep \
		--register synthetic_train $(SWEEP_DATA)/annotations/train.json $(SWEEP_DATA)/train \
		--register synthetic_val $(SWEEP_DATA)/annotations/val.json $(SWEEP_DATA)/val

# The real-image path (needs ../shared/data/raccoon): docs/raccoon.md
raccoon: setup
	tools/raccoon.sh ../shared/data/raccoon output/raccoon

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) tools/check_layers.py

# Offline wheelhouse for another machine: make bundle BUNDLE_PYTHON=3.12
BUNDLE_PYTHON ?= 3.12
bundle: setup
	$(PY) tools/build_bundle.py --python-version $(BUNDLE_PYTHON) --out dist/wheelhouse-py$(BUNDLE_PYTHON)

# The slim wheelhouse that travels to a lent GPU machine (git-ignored .whl/, under 40 MiB): what
# that machine lacks, for Python 3.12; tools/gpu_check.sh installs from it there.
gpu-wheels: setup
	rm -rf .whl
	$(PY) tools/build_bundle.py --python-version 3.12 --slim --out .whl

# On the GPU machine (its own Python 3.12 and torch; no .venv): tools/gpu_check.sh, <= 8 minutes.
gpu-check:
	tools/gpu_check.sh

clean:
	rm -rf .venv .cache output dist build *.egg-info
