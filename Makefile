# Two commands do all the set-up: `make book` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test chapters clean clean-cache

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

book: $(STAMP)  ## execute every chapter (pocket profile) and build the HTML book
	$(BIN)/python -m ubtlib book

test: $(STAMP)  ## unit tests, every chapter at the smoke profile, one clean book build
	$(BIN)/python -m pytest -q tests

chapters: $(STAMP)  ## list the chapters and their parameters
	$(BIN)/python -m ubtlib chapters

clean:
	rm -rf _build book/chapters

clean-cache:
	rm -rf .cache
