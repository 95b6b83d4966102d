"""Two lanes for a chapter's independent rows on a CPU: this process computes the rows in order
while a helper process computes their stages from the last row back.

Each row (a defended model of Table 1, a setting of an ablation) is a chain of cached stages,
so the lanes never compute a stage twice: where both reach one, the second waits on the first
one's lock and reads what it wrote. The pocket CLIP's matrices are small, so one process with
two threads leaves much of the second core idle, and two processes with one thread each get
through more of the work (each stage's made.json records the threads it ran with, and
`benchmarks/build_profile.py` its seconds). The
book's kernels give the same numbers at any thread count (chapter 1 checks it), so the lanes
change how long a build takes, never its results. The helper only ever saves time: this
process computes every row itself, reading what the helper has finished, and a helper that
fails costs nothing but its share.

`UBT_LANES` sets the number of lanes: 2 (the default) or 1 (no helper). A row's wall time,
which Table 1 reports, is then measured at half the threads beside the other lane.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

ACCEPTED_LANES = (1, 2)


def lanes() -> int:
    """The lanes a build runs (`UBT_LANES`, default 2)."""
    value = os.environ.get("UBT_LANES", "2")
    if value not in {str(n) for n in ACCEPTED_LANES}:
        raise ValueError(f"UBT_LANES={value!r}: accepted {', '.join(map(str, ACCEPTED_LANES))}")
    return int(value)


def _helper(warm: Callable, calls: Sequence[tuple], threads: int, stop) -> None:
    torch.set_num_threads(threads)
    for args in reversed(calls):
        if stop.is_set():
            return
        warm(*args)


def _in_order(row: Callable, calls: Sequence[tuple], progress: bool, desc: str) -> list:
    # one bar over the rows, not one per stage: a chapter's page keeps what its cell printed
    return [row(*args, progress=False) for args in tqdm(calls, desc=desc, unit="row", disable=not progress)]


def computed(
    row: Callable, warm: Callable, calls: Sequence[tuple], device, progress: bool = True, desc: str = "rows"
) -> list:
    """[row(*args, progress=False) for args in calls], computed here in order (with one progress
    bar, `desc`, over the rows) while, on a CPU with at least two threads and `lanes()` 2, a
    helper process runs warm(*args) (the row's cached stages, without what row adds to them)
    from the last call back. Both processes run at half this one's threads; this one's are
    given back at the end."""
    threads = torch.get_num_threads()
    if lanes() < 2 or len(calls) < 2 or torch.device(device).type != "cpu" or threads < 2:
        return _in_order(row, calls, progress, desc)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: ubtlib's numerics first
    stop = context.Event()
    helper = context.Process(target=_helper, args=(warm, list(calls), threads // 2, stop), daemon=True)
    torch.set_num_threads(threads // 2)
    helper.start()
    try:
        rows = _in_order(row, calls, progress, desc)
    finally:
        # every row is done here: the helper can only be reading entries back, or still starting
        stop.set()
        helper.join(timeout=5)
        if helper.is_alive():
            helper.terminate()  # a lock it held is released with its process
            helper.join()
        torch.set_num_threads(threads)
    if helper.exitcode not in (0, -signal.SIGTERM):
        print(
            f"note: the helper lane stopped with exit code {helper.exitcode}; this process computed its share"
        )
    return rows
