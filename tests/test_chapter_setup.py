"""ubtlib.setup: a chapter's parameters read from its own parameters cell, validated up front."""

import json
import pathlib

import nbformat
import pytest

import ubtlib
from ubtlib.book.chapter import is_profile_override, parameter_names

PARAMETERS = """profile: str = "smoke"  # smoke | pocket | paper
seed: int = 0  # the world
attacks: list = ["badnet", "sig"]  # any of the five
seeds: list = None  # None: the profile's
ubt_top_k: int = None  # None: the profile's
"""


@pytest.fixture
def notebooks(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(PARAMETERS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), cell, nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "09_demo.ipynb")
    return tmp_path


def _namespace(**changes):
    ns = {
        "profile": "smoke",
        "seed": 0,
        "attacks": ["badnet", "sig"],
        "seeds": None,
        "ubt_top_k": None,
        "unrelated": 3,
    }
    return {**ns, **changes}


def test_names_come_from_the_parameters_cell(notebooks):
    assert parameter_names("09_demo", notebooks) == ["profile", "seed", "attacks", "seeds", "ubt_top_k"]
    assert is_profile_override("ubt_top_k") and not is_profile_override("attacks")


def test_setup_configures_the_profile_and_records_every_parameter(notebooks, capsys):
    ch = ubtlib.setup("09_demo", _namespace(seed=3, ubt_top_k=7), notebooks)
    assert ch.profile.name == "smoke" and ch.profile.seed == 3 and ch.profile.ubt.top_k == 7
    assert ch.params == {
        "profile": "smoke",
        "seed": 3,
        "attacks": ["badnet", "sig"],
        "seeds": list(ch.profile.table_seeds),
        "ubt_top_k": 7,
    }  # not `unrelated`
    assert ch.device.type == "cpu" and ch.provenance["seed"] == 3
    assert capsys.readouterr().out.strip() == ch.stamp


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"attacks": ["badnet", "badnett"]},
            "attacks entry='badnett' is not accepted: choose one of 'badnet'",
        ),
        ({"attacks": []}, "attacks=\\[\\] must be a non-empty list"),
        ({"seeds": [0, -1]}, "seeds entry=-1 is out of range"),
        ({"ubt_top_k": 0}, "top_k=0"),
        ({"profile": "pockett"}, "profile='pockett' is not accepted"),
    ],
)
def test_bad_values_fail_before_any_compute(notebooks, changes, message):
    with pytest.raises(ValueError, match=message):
        ubtlib.setup("09_demo", _namespace(**changes), notebooks)


def test_unset_parameter_and_unknown_chapter(notebooks):
    ns = _namespace()
    del ns["attacks"]
    with pytest.raises(ValueError, match="parameters attacks are not set"):
        ubtlib.setup("09_demo", ns, notebooks)
    with pytest.raises(ValueError, match="chapter='10_none' has no notebook .*choose one of 09_demo"):
        ubtlib.setup("10_none", _namespace(), notebooks)


def test_a_parameter_line_that_is_no_single_assignment_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('profile: str = "smoke"  # a profile\nseed = other = 0  # two names\n')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "09_bad.ipynb")
    with pytest.raises(ValueError, match="line 2 of the parameters cell is not one"):
        parameter_names("09_bad", tmp_path)


def test_the_book_says_where_it_is_and_what_the_last_build_took(tmp_path, monkeypatch, capsys):
    from ubtlib import cli

    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "chapters", lambda: ["01_a", "02_b"])
    monkeypatch.setattr(cli, "notebook_parameters", lambda c: {"profile": {}, "seed": {}})
    ran = []
    monkeypatch.setattr(cli, "run_chapter", lambda c, params: ran.append((c, params)))
    first = cli.execute_book({"profile": "smoke", "other": 1})
    assert ran == [
        ("01_a", {"profile": "smoke"}),
        ("02_b", {"profile": "smoke"}),
    ]  # only what a chapter takes
    out = capsys.readouterr().out
    assert "[book 1/2] 01_a: 0 s so far\n" in out and "[book 2/2] 02_b" in out
    assert "the last" not in out  # no earlier build: no estimate
    assert json.loads(cli.book_timings_file().read_text()) == {"smoke other=1": first}
    cli.execute_book({"profile": "smoke"})  # other parameters: no estimate from that build
    assert "the last" not in capsys.readouterr().out
    cli.execute_book({"profile": "smoke"})
    assert "the last smoke build took 0 s for this chapter and the rest" in capsys.readouterr().out
    cli.book_timings_file().write_text("{not json")  # a damaged file costs the estimate only
    cli.execute_book({"profile": "smoke"})
    assert "the last" not in capsys.readouterr().out


def test_cli_parameters_read_as_yaml_with_exponents_as_numbers():
    from ubtlib import cli

    parsed = cli._parse_params([("names_lr", "1e-4"), ("seed", "3"), ("seeds", "[0, 1]"), ("attack", "sig")])
    assert parsed == {"names_lr": 1e-4, "seed": 3, "seeds": [0, 1], "attack": "sig"}
    assert cli._parse_params([("token_level", "false")]) == {"token_level": False}


def test_chapter_inputs_follow_what_the_pages_follow_from(notebooks, monkeypatch):
    from ubtlib import cli
    from ubtlib.pipeline import cache

    nb = nbformat.read(notebooks / "09_demo.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("%matplotlib inline\nfrom ubtlib.book import report"))
    nbformat.write(nb, notebooks / "09_demo.ipynb")
    inputs = lambda **params: cli.chapter_inputs("09_demo", params, notebooks)  # noqa: E731
    first = inputs(profile="smoke")
    assert first == inputs(profile="smoke")  # stable
    assert first != inputs(profile="pocket")
    sources = cache.package_sources()

    def with_report(extra):
        changed = {**sources, "ubtlib.book.report": sources["ubtlib.book.report"] + extra}
        monkeypatch.setattr(cache, "package_sources", lambda: changed)
        return inputs(profile="smoke")

    assert with_report("\n# a reworded comment\n") == first
    assert with_report("\nEXTRA = 1\n") != first  # code the notebook's imports reach
    monkeypatch.setattr(cache, "package_sources", lambda: sources)
    nb.cells.append(nbformat.v4.new_markdown_cell("A new paragraph."))
    nbformat.write(nb, notebooks / "09_demo.ipynb")
    assert inputs(profile="smoke") != first


def test_the_book_keeps_a_chapter_executed_from_the_same_inputs(notebooks, tmp_path, monkeypatch, capsys):
    from ubtlib import cli

    out = tmp_path / "chapters"
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(cli, "DEFAULT_OUT", out)
    monkeypatch.setattr(cli, "chapters", lambda: ["09_demo"])
    monkeypatch.setattr(cli, "notebook_parameters", lambda c: {"profile": {}})
    ran = []

    def fake_execute(source, target, **kw):  # what papermill leaves: the executed notebook
        ran.append(kw["parameters"])
        (out / "09_demo.json").write_text("{}")
        pathlib.Path(target).write_text(pathlib.Path(source).read_text())

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    cli.execute_book({"profile": "smoke"})
    assert ran == [{"profile": "smoke"}] and cli.is_current("09_demo", {"profile": "smoke"})
    cli.execute_book({"profile": "smoke"})
    assert len(ran) == 1 and "09_demo: kept" in capsys.readouterr().out
    cli.execute_book({"profile": "smoke"}, rerun=True)
    assert len(ran) == 2
    cli.execute_book({"profile": "pocket"})  # other parameters
    assert ran[-1] == {"profile": "pocket"}
    (out / "09_demo.json").unlink()  # an output gone: executed again
    cli.execute_book({"profile": "pocket"})
    assert len(ran) == 4

    def failing(source, target, **kw):
        pathlib.Path(target).write_text("partial")
        raise RuntimeError("the kernel died")

    monkeypatch.setattr(papermill, "execute_notebook", failing)
    with pytest.raises(RuntimeError):
        cli.execute_book({"profile": "pocket"}, rerun=True)
    assert not cli.is_current("09_demo", {"profile": "pocket"})  # a partial run never passes
