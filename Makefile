# Two commands do all the set-up: `make book` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: help book student test unit lint chapters lock clean clean-cache

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/'

# installs exactly the locked versions; ubtlib itself (editable) adds nothing to them
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

book: $(STAMP)  ## execute every chapter (pocket profile) and build the HTML book
	$(BIN)/python -m ubtlib book

student: $(STAMP)  ## the student edition (no solutions) of the book `make book` executed, in _build/student
	$(BIN)/python -m ubtlib student

lint: $(STAMP)  ## ruff check and ruff format --check on the repository (notebooks included)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(STAMP)  ## the unit tests: all but the chapter runs, the book build and the slow tests (under a minute)
	$(BIN)/python -m pytest -q -m "not book and not slow" tests

test: lint $(STAMP)  ## lint, unit tests, every chapter at the smoke profile, one clean book build
	$(BIN)/python -m pytest -q tests

chapters: $(STAMP)  ## list the chapters and their parameters
	$(BIN)/python -m ubtlib chapters

lock:  ## re-resolve pyproject.toml (under constraints.txt) in a clean venv and write requirements.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	{ sed -n '/^#/p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv

clean:  ## remove the built book and the executed chapters
	rm -rf _build book/chapters

clean-cache:  ## remove the cached pipeline stages (.cache)
	rm -rf .cache
