"""Provenance, result files, glue and figure stamps: how a run's numbers reach the book.

Every chapter ends by calling `publish(chapter, profile, params, results)`: the numbers are
glued into the page (myst-nb) and saved with the parameters and provenance that made them to
`<chapter>.json` next to the executed notebook.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import platform
import subprocess
import sys

import torch

from ubtlib import numerics
from ubtlib.pipeline.cache import library_versions, write_json


def counted(n: int, noun: str) -> str:
    """ "1 image", "3 images": a count with its noun in the right number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def hardware(device: torch.device | str | None = None) -> str:
    """Where the numbers were computed, e.g. 'AMD EPYC, 2 threads, AVX2 kernels, MKL AUTO'."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    kernels = torch.backends.cpu.get_cpu_capability()
    mkl = numerics.mkl_branch().split(" on ")[0]  # the CPU is named once
    return (
        f"{numerics.cpu_model()}, {counted(torch.get_num_threads(), 'thread')}, {kernels} kernels, MKL {mkl}"
    )


def _git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when the library or notebooks have local changes."""
    checkout = pathlib.Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=checkout, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ubtlib", "notebooks"],
            capture_output=True,
            text=True,
            cwd=checkout,
            timeout=5,
        ).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(profile, device=None, seeds=None) -> dict:
    """Where and how a chapter's numbers were made; `seeds`: the repeats a chapter runs over
    (its tables' seeds), beside the profile's seed."""
    from ubtlib import __version__

    return {
        "profile": profile.name,
        "seed": profile.seed,
        **({"seeds": list(seeds)} if seeds is not None else {}),
        "hardware": hardware(device),
        "device": str(device) if device is not None else None,
        "versions": {"ubtlib": __version__, **library_versions(), "torch_build": torch.__version__},
        "numerics": numerics.settings(),
        "machine": numerics.machine(),
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "started_utc": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def stamp_text(prov: dict) -> str:
    seeds = f" · seeds={', '.join(map(str, prov['seeds']))}" if prov.get("seeds") else ""
    return f"profile={prov['profile']} · seed={prov['seed']}{seeds} · {prov['hardware']}"


def stamp(fig, prov: dict) -> None:
    """Write profile, seed and hardware into the bottom-right corner of a figure, below its
    axes: the subplots move up by one line of the stamp, so it never covers a tick label."""
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.25 / fig.get_size_inches()[1])
    fig.text(0.995, 0.005, stamp_text(prov), ha="right", va="bottom", fontsize=7, color="0.4")


def publish(
    chapter: str, profile, params: dict, results: dict, prov: dict, out_dir: str | os.PathLike = "."
) -> pathlib.Path:
    """Glue every scalar in `results` and save everything to `<out_dir>/<chapter>.json`.

    Scalars are glued under their own key (nested dicts as `outer_inner`), for use as
    {glue:text}`key:.1f` in the chapter's text.
    """
    finished = _now()
    # how long this run of the chapter took so far, its cached stages read rather than computed
    minutes = (
        datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(prov["started_utc"])
    ).total_seconds() / 60
    record = {
        "chapter": chapter,
        "parameters": params,
        "profile_config": dataclasses.asdict(profile),
        "provenance": {**prov, "finished_utc": finished, "run_minutes": minutes},
        "results": results,
    }
    path = pathlib.Path(out_dir) / f"{chapter}.json"
    write_json(path, record)
    if "ipykernel" in sys.modules:  # in a notebook: glue for the rendered page
        from myst_nb import glue

        for key, value in _flat(results):
            glue(key, value, display=False)
        from IPython.display import Markdown

        glue("stamp", Markdown(stamp_text(prov)), display=False)  # {glue:md}`stamp`
        glue("run_minutes", minutes, display=False)  # the teaching page's table of chapter times
    return path


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat(v, key + "_")
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            yield key, v
