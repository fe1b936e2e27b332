# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create .venv with the CPU build of torch (constraints-cpu.txt); GPU users install their own
# torch and then `pip install -e .` instead.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where the CPU-only torch wheels live (≈ 190 MB download, ≈ 750 MB installed, no CUDA packages).
# PyPI's Linux torch is the CUDA build (several GB with its nvidia-* packages); `torch==2.13.0` from
# this index resolves to 2.13.0+cpu. Set TORCH_INDEX= (empty) to use only pip's configured indexes.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: demo test test-slow install check-wheel

$(VENV)/.installed: setup.py constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -c constraints-cpu.txt $(TORCH_INDEX_ARG) torch  # its dependencies come next
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The main job on the embedded default: offline teacher + shipped tiny model served on loopback,
# sampling over HTTP, C3PO training, evaluation (prints S_in / S_near / S_out / S_overall).
demo: $(VENV)/.installed
	rm -rf runs/tinyworld/heart-emoji-maddie
	$(PY) -m rlvf.pipeline --config configs/tinyworld-c3po.yaml

# pytest exits 5 when it collects no tests: that is a broken suite, reported and failed here.
test: $(VENV)/.installed
	@$(PY) -m pytest -q -m "not slow and not cuda"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow"

# The wheel a user installs, outside the checkout: every module and data file must be in it.
check-wheel: $(VENV)/.installed
	PYTHON=$(PY) bash .ci/check_wheel.sh
