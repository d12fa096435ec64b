# The README's two commands: `make book` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BOOK_FLAGS := -W -n --keep-going

.PHONY: setup book test clean

setup: $(STAMP)

# Re-install only when the pins change. theano-pymc 1.1.2 needs numpy < 1.24, which
# rules out Python >= 3.12 (no numpy 1.23 wheels): fail early with a clear message.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v in ((3, 10), (3, 11)) else "mgpu_lab needs Python 3.10 or 3.11 (theano-pymc 1.1.2 runs only with numpy 1.23), but $(PYTHON) is %d.%d: run make PYTHON=python3.11 ..." % v)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

book: setup
	$(VENV)/bin/jupyter-book build . $(BOOK_FLAGS)
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"

test: setup
	$(PY) -m pytest

clean:
	rm -rf _build results .pytest_cache .hypothesis
