# Two entry points a newcomer needs: `make demo` and `make test`. Each creates .venv on first use.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

$(VENV_STAMP): requirements.txt
	python3 -m venv .venv
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .  # editable: `from hinqa_jax import ...` from any directory
	touch $(VENV_STAMP)

AOT_PY := .venv-aot/bin/python
AOT_STAMP := .venv-aot/.installed

$(AOT_STAMP): requirements-aot.txt
	python3 -m venv .venv-aot
	$(AOT_PY) -m pip install --upgrade --quiet pip
	$(AOT_PY) -m pip install --quiet -r requirements-aot.txt
	touch $(AOT_STAMP)

.PHONY: venv demo test aot bench bench-accel curation clean
venv: $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) -m hinqa_jax run --config=configs/demo.py --workdir=runs/demo

# Two workers (more cores: up to 4); the slow tests are mostly single-threaded XLA compiles. Tests
# marked `alone` measure memory and run afterwards with nothing beside them.
test: $(VENV_STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist worksteal -m "not alone" --ignore=tests/aot tests
	$(PY) -m pytest -q -m alone --ignore=tests/aot tests

# The real TPU (libtpu) and GPU (XLA:GPU, deviceless) compilers in their own venv: the train step,
# generate and the loss head compiled for a TPU v5e slice and an H100 node (tests/aot), no hardware.
aot: $(AOT_STAMP)
	HINQA_AOT=1 $(AOT_PY) -m pytest -q -n 2 --dist worksteal tests/aot

# Parse recall, keep precision/recall and accuracy of curation on the labelled dev set, and its mistakes.
curation: $(VENV_STAMP)
	PYTHONPATH=. $(PY) tests/test_gen_curation_dev.py

bench: $(VENV_STAMP)
	$(PY) bench/run_all.py

# One H100/H200 with jax[cuda], flax, optax, orbax-checkpoint, ml-collections, safetensors installed (no venv made): < 8 min.
PYTHON ?= python3
bench-accel:
	$(PYTHON) bench/accelerator.py --out bench/accelerator.json

clean:
	rm -rf runs
