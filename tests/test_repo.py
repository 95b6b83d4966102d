"""The repository's own rules: notebooks stored clean and short, one parameters cell each,
and the files a contributor looks for first."""

import ast

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_CELL_LINES = 25  # a chapter's code cell: a few calls into ubtlib, not an analysis
MAX_CODE_LINES = 550  # all chapters' code cells together


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    dirty = [
        k for k, c in enumerate(code_cells(path)) if c.get("outputs") or c.get("execution_count") is not None
    ]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs or execution counts (strip them)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_first_with_a_profile(path):
    cells = code_cells(path)
    tagged = [k for k, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: code cells tagged 'parameters': {tagged}; want exactly the first"
    body = ast.parse(cells[0].source).body
    assigned = [node for node in body if isinstance(node, (ast.Assign, ast.AnnAssign))]
    names = [
        t.id
        for node in assigned
        for t in getattr(node, "targets", [getattr(node, "target", None)])
        if isinstance(t, ast.Name)
    ]
    assert "profile" in names, f"{path.name}: the parameters cell sets {names}, not profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_cells_are_short(path):
    lines = [len(c.source.splitlines()) for c in code_cells(path)]
    long = {k: n for k, n in enumerate(lines) if n > MAX_CELL_LINES}
    assert not long, f"{path.name}: code cells over {MAX_CELL_LINES} lines (cell: lines): {long}"


def test_notebooks_code_in_total_is_short():
    lines = {p.name: sum(len(c.source.splitlines()) for c in code_cells(p)) for p in NOTEBOOKS}
    assert sum(lines.values()) <= MAX_CODE_LINES, f"{sum(lines.values())} code lines in all: {lines}"


@pytest.mark.parametrize("name", ["LICENSE", "CONTRIBUTING.md", "README.md"])
def test_top_level_documents_exist(name):
    assert (ROOT / name).is_file() and (ROOT / name).read_text().strip()


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "2026 The UBT book team" in text


def locked_versions():
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(p) == 2 for p in pins), "requirements.lock: every line is `name==version`"
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_lock_pins_every_dependency_within_its_range():
    import tomllib

    locked = locked_versions()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"requirements.lock has no pin for {req.name}"
        assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} not in {spec}"
    # the ones that move numbers, and torchvision at the version that keeps the CPU torch
    assert {"numpy", "pillow", "open-clip-torch", "safetensors"} <= set(locked)
    assert str(locked["torchvision"]) == "0.28.0" and locked["torch"].base_version == "2.13.0"


def test_make_and_conda_install_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r $(LOCK)" in makefile and "LOCK   := requirements.lock" in makefile
    assert "-r requirements.lock" in (ROOT / "environment.yml").read_text()
