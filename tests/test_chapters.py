"""Every chapter executed at the smoke profile through papermill, then one clean book build."""

import html as html_lib
import json
import platform
import re
import shutil

import nbformat
import pytest

from ubtlib import cli

from conftest import ROOT

CHAPTERS = cli.chapters()
# a smoke cell takes seconds; a kernel that hangs should fail the run, not use up CI's 90 minutes
SMOKE_CELL_TIMEOUT = 300


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """A copy of the book's sources in a temporary folder, to execute and build into."""
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("chapters", "_build"))
    (root / "ubtlib").mkdir()
    shutil.copy(ROOT / "ubtlib" / "solutions.py", root / "ubtlib")  # the solutions include it
    return root


def test_there_are_chapters():
    assert "01_pocket_world" in CHAPTERS


@pytest.mark.book
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_at_smoke(chapter, book):
    out = cli.run_chapter(
        chapter,
        {"profile": "smoke"},
        book / "book" / "chapters",
        progress=False,
        cell_timeout=SMOKE_CELL_TIMEOUT,
    )
    nb = nbformat.read(out, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["papermill"]["parameters"]["profile"] == "smoke"
    record = json.loads((out.parent / f"{chapter}.json").read_text())
    assert record["provenance"]["profile"] == "smoke"
    assert record["parameters"]["profile"] == "smoke" and record["results"]
    prov = record["provenance"]
    assert {"ubtlib", "python", "torch", "torchvision", "open_clip_torch", "numpy", "pillow"} <= set(
        prov["versions"]
    )
    if platform.machine() == "x86_64":  # the portable kernels (ubtlib.numerics)
        assert prov["numerics"]["cpu_capability"] == "AVX2"
    assert prov["numerics"]["threads"] >= 1
    assert {"ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"} <= set(prov["numerics"])
    assert prov["machine"]["cpu"] and prov["machine"]["torch_build"]["blas"]
    assert 0 < prov["run_minutes"] < 10  # the run's own time, for the teaching page's table
    # `make book` keeps it until its notebook, parameters, code, libraries or kernels change
    assert cli.is_current(chapter, {"profile": "smoke"}, out.parent)


def test_unknown_chapter_parameter_is_refused_before_running(book):
    with pytest.raises(SystemExit, match="has no parameter 'sed'.*seed"):
        cli.run_chapter(CHAPTERS[0], {"sed": 3}, book / "book" / "chapters", progress=False)


@pytest.mark.book
def test_bad_parameter_value_fails_the_chapter(book, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="profile='pockett'"):
        cli.run_chapter(CHAPTERS[0], {"profile": "pockett"}, tmp_path, progress=False)


@pytest.mark.book
def test_clean_book_build_has_no_warnings(book):
    """jupyter-book build --all -W, as `make book` does, on the chapters executed above; run
    alone (or after a chapter failed), it first executes at smoke every chapter that has not
    published its results (its .json) into the book."""
    chapters = book / "book" / "chapters"
    for chapter in CHAPTERS:
        if not (chapters / f"{chapter}.json").exists():
            cli.run_chapter(
                chapter, {"profile": "smoke"}, chapters, progress=False, cell_timeout=SMOKE_CELL_TIMEOUT
            )
    cli.build_book(book)  # raises CalledProcessError on any warning (-W)
    html = (book / "_build" / "html" / "book" / "chapters" / "01_pocket_world.html").read_text()
    assert "zero-shot" in html and "<img" in html
    assert (book / "_build" / "html" / "index.html").exists()
    # the instructor's edition has the exercises and their solutions, collapsed
    ch2 = (book / "_build" / "html" / "book" / "chapters" / "02_backdoor_attacks.html").read_text()
    assert 'class="solution dropdown admonition"' in ch2
    assert "The attack success rate" in _text(ch2) and "keep = labels != target" in _text(ch2)


def _text(page: str) -> str:
    """A page's text, tags dropped and entities decoded (code is split into spans)."""
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", page))
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


@pytest.mark.book
def test_student_edition_has_the_exercises_and_no_solution(book):
    chapters = book / "book" / "chapters"
    for chapter in CHAPTERS:
        if not (chapters / f"{chapter}.json").exists():
            cli.run_chapter(
                chapter, {"profile": "smoke"}, chapters, progress=False, cell_timeout=SMOKE_CELL_TIMEOUT
            )
    html = cli.build_book(book, student=True)
    pages = {p.name: p.read_text() for p in (html / "book" / "chapters").glob("*.html")}
    exercises = sum(page.count('class="exercise admonition"') for page in pages.values())
    assert exercises >= 20, f"{exercises} exercises in the student edition"
    for name, page in pages.items():
        assert "solution" not in page and "Solution to" not in _text(page), f"{name} shows a solution"
    assert "keep = labels != target" not in _text(pages["02_backdoor_attacks.html"])
    instructor = {
        p.name: _text(p.read_text()) for p in (book / "_build" / "html" / "book" / "chapters").glob("*.html")
    }
    probes = solution_probes()
    assert len(probes) >= 10
    for chapter, probe in probes:
        assert probe in instructor[f"{chapter}.html"], (
            f"{chapter}: {probe!r} missing from the instructor's edition"
        )
        assert probe not in _text(pages[f"{chapter}.html"]), f"{chapter}: {probe!r} in the student edition"


def solution_probes() -> list:
    """(chapter, a stretch of a solution's own text) for every solution that has text of its
    own before its first glued value or code."""
    probes = []
    for chapter in CHAPTERS:
        nb = nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4)
        for cell in nb.cells:
            for body in re.findall(r"::::\{solution\}[^\n]*\n(.*?)\n::::", cell.source, re.S):
                text = " ".join(line for line in body.splitlines() if not line.startswith(":"))
                text = re.split(r"\{glue|```", text)[0].replace("`", "").replace("*", "").strip()
                if len(text) >= 25:
                    probes.append((chapter, " ".join(text.split())[:40]))
    return probes


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_parameter_line_parses(chapter):
    """papermill must see every parameter (it skips lines it cannot parse, e.g. with '=' in a
    comment, and `ubtlib run` would then refuse that parameter)."""
    nb = nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    declared = [
        line.split(":")[0].split("=")[0].strip()
        for line in cell.source.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parsed = cli.notebook_parameters(chapter)
    assert list(parsed) == declared
    assert all(p["help"] for p in parsed.values()), "every parameter has a comment"
    assert "profile" in parsed and "seed" in parsed
