# Two entry points a newcomer needs: `make demo` and `make test`. Each creates .venv on first use.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

$(VENV_STAMP): requirements.txt
	python3 -m venv .venv
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(VENV_STAMP)

.PHONY: venv demo test bench clean
venv: $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) -m hinqa_jax run --config=configs/demo.py --workdir=runs/demo

test: $(VENV_STAMP)
	$(PY) -m pytest -q tests

bench: $(VENV_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf runs
