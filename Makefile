# The README's commands: `make book`, `make lab`, `make test` (the unit tier and the quick
# integration tests, a few minutes) and `make test-all` (everything: the book, the student
# edition, Chromium, JupyterLab, wheels; what .ci/run runs). All set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BOOK_FLAGS := -W -n --keep-going
# make lab LAB_ARGS="--ip=0.0.0.0 --port=8888": extra options for `jupyter lab` (a
# classroom server: see the teacher's guide first). By default it listens on 127.0.0.1.
LAB_ARGS ?=
# After `make wheels`, setup installs from wheels/ only, without the network.
PIP_FROM := $(if $(wildcard wheels/*.whl),--no-index --find-links wheels,)

.PHONY: setup book test test-all student timings critical time-to-target ring16 lab wheels clean hub students assignments

setup: $(STAMP)

# Re-install only when the pins change. theano-pymc 1.1.2 needs numpy < 1.24, which
# rules out Python >= 3.12 (no numpy 1.23 wheels): fail early with a clear message.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v in ((3, 10), (3, 11)) else "mgpu_lab needs Python 3.10 or 3.11 (theano-pymc 1.1.2 runs only with numpy 1.23), but $(PYTHON) is %d.%d: run make PYTHON=python3.11 ..." % v)'
	@command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || { echo "mgpu_lab needs a C++ compiler for Theano (g++; clang++ on macOS) and found none: sudo apt-get install g++ (Debian/Ubuntu), sudo dnf install gcc-c++ (Fedora), xcode-select --install (macOS)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_FROM) --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FROM) -r requirements.txt
	$(PY) -m pip install --quiet $(PIP_FROM) --no-deps -e .
	@touch $(STAMP)

book: setup
	$(VENV)/bin/jupyter-book build . $(BOOK_FLAGS)
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"

# Tiers (pyproject.toml's markers, tests/README.md): unmarked = unit; integration (pools,
# MPI; the long ones also slow); book; browser; install.
TEST_QUICK := -m "not (slow or book or browser or install or hub)"
test: setup
	$(PY) -m pytest $(TEST_QUICK)

# Every tier; the hub tests need the class server's proxy, installed as make hub does (npm).
test-all: setup
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(CHP); else echo "npm is missing: the hub tests will be skipped (sudo apt-get install npm)"; fi
	$(PY) -m pytest --durations=40

# The student edition: the web book and one notebook per chapter, without any solution,
# derived from the book's executed chapters in _build (nothing is executed again).
student: book
	$(PY) book/_ext/student_edition.py _build/student _build
	@echo "Student edition: file://$(CURDIR)/_build/student/html/index.html and _build/student/notebooks/"

# Seconds each chapter takes as a notebook, cold and warm Theano cache (teacher's guide).
timings: setup
	$(PY) book/_ext/lab_timings.py data/lab_timings.json

# The critical batch, measured (a few minutes on 2 cores): steps to a target validation loss
# at batch 2..1024 with SGD's rate tuned per batch, the noise scale B_simple, the fitted
# B_crit; rewrites data/critical_batch.json with its provenance (data/README.md).
critical: setup
	$(PY) -m mgpu_lab critical-sweep --out data/critical_batch.json

# Time to target on 1 and 2 local devices at two batch sizes, measured beside its prediction
# (S from data/critical_batch.json's fit x the cost model's step on this machine; under a
# minute): rewrites data/time_to_target.json with its provenance (chapter 13 reads it).
time-to-target: setup
	$(PY) -m mgpu_lab.measure.tta_bench

# The 16-bit ring against float32 on the pool (about half a minute): bytes per step and the
# parameters' difference after 20 steps of the digits CNN; rewrites data/ring16.json with
# its provenance (data/README.md; chapter 10 reads it).
ring16: setup
	$(PY) -m mgpu_lab.measure.ring16 data/ring16.json

# JupyterLab opened at the chapters (book/): they open as notebooks (jupyter/start-lab.sh).
lab: setup
	jupyter/start-lab.sh $(LAB_ARGS)

# Every wheel requirements.txt needs on this platform (OS, CPU, Python version), plus pip
# and setuptools, in wheels/ (git-ignored): copy it to laptops for an offline make setup.
wheels: setup
	rm -rf wheels.tmp
	$(PY) -m pip wheel --quiet -r requirements.txt -w wheels.tmp
	$(PY) -m pip download --quiet --no-deps -d wheels.tmp pip "setuptools>=61"
	rm -rf wheels && mv wheels.tmp wheels
	@du -sh wheels

# A class server (run as root): JupyterHub with one system account and one JupyterLab per
# student (jupyter/hub_config.py). make hub HUB_ARGS="--ip 0.0.0.0 --ssl-cert C --ssl-key K"
# (jupyter/hub_start.py --help lists the options); make students CLASS=class.txt first.
HUB_ARGS ?=
CHP_VERSION := 5.3.0
CHP := $(VENV)/hub-proxy/node_modules/.bin/configurable-http-proxy

$(CHP):
	@command -v npm >/dev/null 2>&1 || { echo "make hub needs npm for configurable-http-proxy: sudo apt-get install npm (Debian/Ubuntu)" >&2; exit 1; }
	npm install --silent --no-fund --no-audit --prefix $(VENV)/hub-proxy configurable-http-proxy@$(CHP_VERSION)

hub: setup $(CHP)
	$(PY) jupyter/hub_start.py $(HUB_ARGS)

# The class's accounts from a class list, one user name per line (jupyter/hub_students.py).
students: setup
	@test -n "$(CLASS)" || { echo "make students CLASS=class.txt: a file with one user name per line" >&2; exit 1; }
	$(PY) jupyter/hub_students.py add $(CLASS)

# An nbgrader course from the book's exercises, one assignment per chapter (_build/course).
assignments: setup
	$(PY) book/_ext/assignments.py _build/course

clean:
	rm -rf _build results .pytest_cache .hypothesis
