"""The cache: derived code keys, hits and misses, and the faults a shared cache meets."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ubtlib.pipeline import cache

STAGE_MODULES = {  # each training stage, by the module that defines its compute
    "world": "ubtlib.pipeline.worlds",
    "pretrained": "ubtlib.pipeline.pretraining",
    "ssba": "ubtlib.pipeline.stega",
    "poisoned": "ubtlib.pipeline.poisoning",
    "abl": "ubtlib.pipeline.isolation",
    "ubt": "ubtlib.pipeline.ubt_runs",
    "cleanclip": "ubtlib.pipeline.cleanclip_runs",
    "segmenter": "ubtlib.pipeline.segmenting",
    "oracle": "ubtlib.pipeline.oracle_runs",
    "evaluation": "ubtlib.pipeline.evaluating",
    "forget": "ubtlib.privacy.forgetting",
}


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    return tmp_path


def _stage(calls, value, **parts):
    def compute(folder):
        calls.append(value)
        (folder / "value.json").write_text(json.dumps(value))

    return cache.cached(
        "demo",
        compute,
        lambda f: json.loads((f / "value.json").read_text()),
        code_module="ubtlib.pipeline.cache",
        **parts,
    )


def _edited(module: str, old: str, new: str) -> dict:
    """The package's sources with one edit in `module` (the edit must apply)."""
    sources = dict(cache.SOURCES)
    assert old in sources[module], f"{old!r} not in {module}"
    sources[module] = sources[module].replace(old, new, 1)
    return sources


def _hashes(sources) -> dict:
    return {stage: cache.code_hash(m, sources) for stage, m in STAGE_MODULES.items()}


# ---------------------------------------------------------------- derived keys


def test_a_module_reached_only_through_another_is_in_the_key():
    """poison.py builds the poisoned captions with evaluation.zeroshot.pocket_templates: an
    edit there must miss the poisoned stage (a hand-written module list missed it)."""
    assert "ubtlib.evaluation.zeroshot" in cache.module_closure("ubtlib.pipeline.poisoning")
    sources = _edited(
        "ubtlib.evaluation.zeroshot",
        "def pocket_templates(",
        "def _unused():\n    return 1\n\n\ndef pocket_templates(",
    )
    before, after = _hashes(cache.SOURCES), _hashes(sources)
    assert after["poisoned"] != before["poisoned"]
    assert after["world"] == before["world"] and after["pretrained"] == before["pretrained"]


def test_comments_and_docstrings_do_not_change_any_key():
    before = _hashes(cache.SOURCES)
    for module in ("ubtlib.defenses.ubt", "ubtlib.world.pocket", "ubtlib.clip.train"):
        src = cache.SOURCES[module]
        sources = dict(cache.SOURCES)
        # a reworded module docstring, a new comment line and re-wrapped layout
        sources[module] = '"""Reworded."""\n# a new comment\n' + src.split('"""', 2)[2]
        assert _hashes(sources) == before, module


def test_a_changed_line_of_code_misses_every_stage_that_reaches_it():
    before = _hashes(cache.SOURCES)
    after = _hashes(_edited("ubtlib.clip.train", "def ", "X_NEW = 1\n\n\ndef "))
    reach = {s for s, m in STAGE_MODULES.items() if "ubtlib.clip.train" in cache.module_closure(m)}
    assert reach >= {"pretrained", "poisoned", "abl", "ubt", "cleanclip", "oracle", "evaluation", "forget"}
    assert {s for s in STAGE_MODULES if after[s] != before[s]} == reach  # ssba, world: not reached


def test_no_training_stage_reaches_the_books_analysis_modules():
    analysis = [m for m in cache.SOURCES if m.startswith("ubtlib.book.") or m == "ubtlib.cli"]
    assert analysis
    before = _hashes(cache.SOURCES)
    for module in analysis:
        for stage, m in STAGE_MODULES.items():
            assert module not in cache.module_closure(m), (stage, module)
        sources = dict(cache.SOURCES)
        sources[module] = sources[module] + "\n\ndef _an_edited_reading():\n    return 2\n"
        assert _hashes(sources) == before, module


def test_type_checking_imports_and_unknown_modules():
    sources = {
        "pkg": "",
        "pkg.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
        "def f():\n    from pkg.c import g\n    return g()\n",
        "pkg.b": "import pkg.c\n",
        "pkg.c": "def g():\n    return 1\n",
    }
    assert cache.module_closure("pkg.a", sources) == ["pkg.a", "pkg.c"]  # function-level import kept
    assert cache.module_closure("pkg.b", sources) == ["pkg.b", "pkg.c"]
    with pytest.raises(ValueError, match="'pkg.zz' is not in the package"):
        cache.module_closure("pkg.zz", sources)


def test_key_records_code_libraries_and_parts():
    digest, desc = cache.cache_key("demo", "ubtlib.pipeline.worlds", a=1)
    assert desc["code"] == cache.code_hash("ubtlib.pipeline.worlds")
    assert set(desc["libraries"]) == {"python", *cache.NUMERIC_LIBRARIES} and desc["a"] == 1
    assert cache.cache_key("demo", "ubtlib.pipeline.pretraining", a=1)[0] != digest
    assert cache.cache_key("demo", "ubtlib.pipeline.worlds", a=2)[0] != digest


# ---------------------------------------------------------------- hits, misses, faults


def test_hit_reuses_and_changed_parameter_recomputes(tmp_cache):
    calls = []
    assert _stage(calls, 1, a=1) == 1
    assert _stage(calls, 2, a=1) == 1  # same key: served from the cache, not recomputed
    assert _stage(calls, 3, a=2) == 3  # changed parameter: recomputed
    assert calls == [1, 3]


def test_failed_compute_leaves_nothing_behind(tmp_cache):
    def boom(folder):
        (folder / "partial").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.cached("demo", boom, lambda f: None, code_module="ubtlib.pipeline.cache", a=9)
    assert not any(p.name.startswith(".") or (p / "partial").exists() for p in (tmp_cache / "demo").iterdir())
    calls = []
    assert _stage(calls, 5, a=9) == 5 and calls == [5]


_SLOW_STAGE = textwrap.dedent("""
    import json, os, sys, time
    from ubtlib.pipeline import cache
    def compute(folder):
        with open(os.environ["UBT_TEST_LOG"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        (folder / "part.json").write_text("{}")
        time.sleep(float(sys.argv[1]))
        (folder / "value.json").write_text(json.dumps(os.getpid()))
    print(cache.cached("slow", compute, lambda f: json.loads((f / "value.json").read_text()),
                       code_module="ubtlib.pipeline.cache", a=1))
""")


def _slow(tmp_cache, seconds):
    env = {**os.environ, "UBT_CACHE_DIR": str(tmp_cache), "UBT_TEST_LOG": str(tmp_cache / "log")}
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_STAGE, str(seconds)], env=env, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_processes_on_one_stage_both_finish_with_one_entry(tmp_cache):
    first, second = _slow(tmp_cache, 1), _slow(tmp_cache, 1)
    outs = [p.communicate(timeout=120)[0].strip() for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert outs[0] == outs[1]  # both read the one entry
    assert len((tmp_cache / "log").read_text().split()) == 1  # computed once: the second waited
    entries = [p for p in (tmp_cache / "slow").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and not [p for p in (tmp_cache / "slow").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_run_killed_mid_stage_leaves_nothing_that_is_read(tmp_cache):
    victim = _slow(tmp_cache, 60)
    deadline = time.time() + 60
    while not (tmp_cache / "log").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # inside compute, a part written
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not [p for p in (tmp_cache / "slow").iterdir() if not p.name.startswith(".")]
    calls = []

    def compute(folder):  # the same stage and key as the killed run's
        calls.append(1)
        (folder / "value.json").write_text(json.dumps(os.getpid()))

    value = cache.cached(
        "slow",
        compute,
        lambda f: json.loads((f / "value.json").read_text()),
        code_module="ubtlib.pipeline.cache",
        a=1,
    )
    assert value == os.getpid() and calls == [1]  # recomputed by the new run, not read
    assert not [p for p in (tmp_cache / "slow").iterdir() if p.name.startswith(".")]  # orphan swept


def test_a_damaged_entry_gives_one_line_naming_it(tmp_cache):
    import torch
    from safetensors.torch import save_file

    from ubtlib.checks import read_tensors

    def compute(folder):
        save_file({"x": torch.zeros(3)}, str(folder / "x.safetensors"))

    def load(folder):
        return read_tensors(folder / "x.safetensors")["x"]

    assert cache.cached("tensors", compute, load, code_module="ubtlib.pipeline.cache").sum() == 0
    (entry,) = [p for p in (tmp_cache / "tensors").iterdir() if not p.name.startswith(".")]
    (entry / "x.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(cache.CacheEntryError) as err:
        cache.cached("tensors", compute, load, code_module="ubtlib.pipeline.cache")
    message = str(err.value)
    assert "\n" not in message and str(entry) in message and "delete that folder" in message


def test_orphans_of_killed_runs_are_swept_and_live_work_is_kept(tmp_cache):
    stage = tmp_cache / "demo"
    stage.mkdir()
    me = cache._writer()
    host = me.rsplit("-", 1)[0]
    dead_pid = 2**22 + 12345  # above Linux's largest pid: no such process
    orphan = stage / f".0123abcd.{host}-{dead_pid}.x1y2"
    live = stage / f".4567ef01.{me}.z3w4"
    elsewhere = stage / f".89abcdef.otherhost-{dead_pid}.q5r6"  # another host's: cannot be checked
    old = stage / ".fedcba98.otherhost-7.s7t8"
    for p in (orphan, live, elsewhere, old):
        p.mkdir()
    os.utime(old, (0, 0))  # written in 1970
    _stage([], 1, a=1)  # a miss sweeps the stage folder before it writes
    assert not orphan.exists() and not old.exists()
    assert sorted(p for p in stage.iterdir() if p.name.startswith(".")) == sorted([live, elsewhere])


def test_write_json_is_atomic(tmp_path):
    cache.write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left over


def test_stages_import_concrete_modules_not_package_re_exports():
    """A package's __init__ re-exports its modules for users; a stage that imported it would
    depend on all of them, so stage code imports the module that defines a name."""
    for stage, module in STAGE_MODULES.items():
        packages = [m for m in cache.module_closure(module) if cache.is_package(m, cache.SOURCES)]
        assert not packages, (stage, packages)


def test_key_covers_parent_packages_and_the_compat_patch_but_not_their_re_exports():
    keyed = cache.key_modules("ubtlib.pipeline.worlds")
    assert {"ubtlib", "ubtlib.pipeline", "ubtlib.world", "ubtlib._compat"} <= set(keyed)
    assert "ubtlib.book.chapter" not in keyed  # re-exported by ubtlib/__init__, never followed
    before = cache.code_hash("ubtlib.pipeline.worlds")
    edited = _edited("ubtlib._compat", "def ", "X_NEW = 1\n\n\ndef ")
    assert cache.code_hash("ubtlib.pipeline.worlds", edited) != before


def test_a_folder_left_without_its_key_is_replaced(tmp_cache):
    calls = []
    _stage(calls, 1, a=5)
    (entry,) = [p for p in (tmp_cache / "demo").iterdir() if not p.name.startswith(".")]
    (entry / "key.json").unlink()  # damaged by hand: not an entry any more
    assert _stage(calls, 2, a=5) == 2 and calls == [1, 2]


def test_made_json_records_each_entrys_own_seconds_less_the_stages_it_computed(tmp_cache):
    def inner(folder):
        time.sleep(0.3)
        (folder / "v.json").write_text("1")

    def outer(folder):
        cache.cached("inner", inner, lambda f: None, code_module="ubtlib.pipeline.cache", n=1)
        time.sleep(0.1)
        (folder / "v.json").write_text("2")

    cache.cached("outer", outer, lambda f: None, code_module="ubtlib.pipeline.cache", n=1)
    (inner_entry,) = (tmp_cache / "inner").iterdir()
    (outer_entry,) = (tmp_cache / "outer").iterdir()
    inner_made = json.loads((inner_entry / "made.json").read_text())
    outer_made = json.loads((outer_entry / "made.json").read_text())
    assert 0.3 <= inner_made["seconds"] < 0.6
    assert 0.1 <= outer_made["seconds"] < 0.3  # the inner entry's 0.3 s are its own, not the outer's
    assert {"finished", "threads", "cpu"} <= set(outer_made)
    # a hit computes nothing and leaves made.json as it was
    cache.cached("outer", outer, lambda f: None, code_module="ubtlib.pipeline.cache", n=1)
    assert json.loads((outer_entry / "made.json").read_text()) == outer_made


def test_made_json_leaves_out_the_wait_for_another_process_computing_a_needed_entry(tmp_cache):
    other = textwrap.dedent(
        """
        import time
        from ubtlib.pipeline import cache
        def inner(folder):
            time.sleep(1.0)
            (folder / "v.json").write_text("1")
        cache.cached("inner", inner, lambda f: None, code_module="ubtlib.pipeline.cache", n=1)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", other], env={**os.environ, "UBT_CACHE_DIR": str(tmp_cache)}
    )
    deadline = time.time() + 30
    while not any((tmp_cache / "inner").glob(".*")) and time.time() < deadline:  # its work in progress
        time.sleep(0.02)
    calls = []

    def outer(folder):
        cache.cached(
            "inner", lambda f: calls.append(1), lambda f: None, code_module="ubtlib.pipeline.cache", n=1
        )
        (folder / "v.json").write_text("2")

    cache.cached("outer", outer, lambda f: None, code_module="ubtlib.pipeline.cache", n=1)
    assert proc.wait(30) == 0 and calls == []  # the other process computed the inner entry
    (outer_entry,) = (tmp_cache / "outer").iterdir()
    assert json.loads((outer_entry / "made.json").read_text())["seconds"] < 0.3
