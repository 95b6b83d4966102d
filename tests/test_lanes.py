"""Two lanes: the rows come back in order, and no stage is computed by both processes."""

import json
import os
import time

import pytest

from ubtlib.pipeline import cache, lanes


def _stage(x: int) -> int:
    def compute(folder):
        time.sleep(1.0)
        with open(os.path.join(os.environ["UBT_CACHE_DIR"], "computed.log"), "a") as log:
            log.write(f"{x}\n")
        (folder / "value.json").write_text(json.dumps({"x": x, "pid": os.getpid()}))

    return cache.cached(
        "lanes-test",
        compute,
        lambda f: json.loads((f / "value.json").read_text()),
        code_module="ubtlib.pipeline.lanes",
        x=x,
    )


def row(x: int, progress: bool = True) -> dict:
    return {"x2": 2 * _stage(x)["x"], "pid": _stage(x)["pid"]}


def warm(x: int) -> None:
    _stage(x)


def test_two_lanes_share_the_rows_and_compute_each_stage_once(tmp_path, monkeypatch):
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(lanes.torch, "get_num_threads", lambda: 2)
    threads = []
    monkeypatch.setattr(lanes.torch, "set_num_threads", threads.append)
    calls = [(x,) for x in range(8)]
    rows = lanes.computed(row, warm, calls, "cpu")
    assert [r["x2"] for r in rows] == [2 * x for x in range(8)]
    computed = sorted(int(x) for x in (tmp_path / "computed.log").read_text().split())
    assert computed == list(range(8))  # each stage once, whichever lane made it
    writers = {r["pid"] for r in rows}
    assert os.getpid() in writers and len(writers) == 2  # the helper made the last ones
    assert rows[-1]["pid"] != os.getpid() and threads == [1, 2]  # half the threads, then given back


def test_one_lane_runs_every_row_here(tmp_path, monkeypatch):
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("UBT_LANES", "1")
    rows = lanes.computed(row, warm, [(1,), (2,)], "cpu")
    assert [r["pid"] for r in rows] == [os.getpid()] * 2
    monkeypatch.setenv("UBT_LANES", "3")
    with pytest.raises(ValueError, match="UBT_LANES='3': accepted 1, 2"):
        lanes.computed(row, warm, [(1,), (2,)], "cpu")
