import json

import pytest

from ubtlib import cache


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    return tmp_path


def _stage(calls, value, **parts):
    def compute(folder):
        calls.append(value)
        (folder / "value.json").write_text(json.dumps(value))
    return cache.cached("demo", ("cache",), compute, lambda f: json.loads((f / "value.json").read_text()),
                        **parts)


def test_hit_reuses_and_changed_parameter_recomputes(tmp_cache):
    calls = []
    assert _stage(calls, 1, a=1) == 1
    assert _stage(calls, 2, a=1) == 1  # same key: served from the cache, not recomputed
    assert _stage(calls, 3, a=2) == 3  # changed parameter: recomputed
    assert calls == [1, 3]


def test_key_covers_code_and_versions(tmp_cache):
    digest, desc = cache.cache_key("demo", ("cache",), a=1)
    assert desc["code"] == cache.source_hash("cache") and "torch" in desc and "open_clip" in desc
    assert cache.cache_key("demo", ("cache", "world"), a=1)[0] != digest  # other code, other key


def test_failed_compute_leaves_nothing_behind(tmp_cache):
    def boom(folder):
        (folder / "partial").write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        cache.cached("demo", ("cache",), boom, lambda f: None, a=9)
    assert not any(p.name.startswith(".") or (p / "partial").exists()
                   for p in (tmp_cache / "demo").iterdir())
    calls = []
    assert _stage(calls, 5, a=9) == 5 and calls == [5]


def test_orphans_of_killed_runs_are_swept_and_live_work_is_kept(tmp_cache):
    import os
    stage = tmp_cache / "demo"
    stage.mkdir()
    me = cache._writer()
    host = me.rsplit("-", 1)[0]
    dead_pid = 2**22 + 12345  # above Linux's largest pid: no such process
    orphan = stage / f".0123abcd.{host}-{dead_pid}.x1y2"
    live = stage / f".4567ef01.{me}.z3w4"
    elsewhere = stage / f".89abcdef.otherhost-{dead_pid}.q5r6"  # another host's: cannot be checked
    old = stage / f".fedcba98.otherhost-7.s7t8"
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
