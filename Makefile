# The two commands a newcomer runs (see README):
#   make report   set up .venv, then run the main job on the embedded default data set
#   make test     set up .venv, then run the notebooks' inline tests and the pytest suites
# Both are idempotent and non-interactive, and so is
#   make docs     set up .venv, then build the docs site from the notebooks into docs/_build/html (Sphinx, no Quarto)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install report test docs export clean-nbs check

# every extra (dev pulls them all), with the builds this repository is tested with (constraints.txt: the exact torch)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --progress-bar off -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

report: install
	$(BIN)/gmvae-nb main --out reports/default

# the notebook cells flagged shared_data read the real starter files beside the repository: run where they are
test: install
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2 $(if $(wildcard ../shared/data),--flags shared_data)
	$(BIN)/python -m pytest

# nbs/*.ipynb through nbdev's processors (not executed) and the API pages into docs/_build/html/index.html; warnings are errors
docs: install
	OMP_NUM_THREADS=1 $(BIN)/sphinx-build -E -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	@echo "docs site: docs/_build/html/index.html"

export: install
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

# nbdev-export leaves no diff and the notebooks are clean
check: export
	git diff --exit-code -- gmvae_nb nbs
