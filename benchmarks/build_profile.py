"""Where a build's time goes: every cache entry this checkout reads, with its own compute time.

After a `make book` from an empty cache, the cache holds exactly the stages a first build
computes. Each entry's made.json says how long its own computation took (less the stages it
computed on the way); this lists them by stage with the pairs they trained (the pair passes of
the entry's training curves, where it records them), pairs/s and share of the total, the
chapters' wall times from `book`, and saves it all as JSON.

    python benchmarks/build_profile.py                       # the checkout's cache
    python benchmarks/build_profile.py --cache DIR --out profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib

from ubtlib import cli
from ubtlib.pipeline import sharing
from ubtlib.pipeline.cache import cache_root, write_json


def pair_passes(folder: pathlib.Path) -> int:
    """Pairs trained by an entry: the last point's "pairs" of each training curve in its JSON."""
    total = 0
    for f in folder.glob("*.json"):
        if f.name in ("key.json", "made.json"):
            continue
        record = json.loads(f.read_text())
        if isinstance(record, dict):
            for name, curve in record.items():
                if name.endswith("curve") and isinstance(curve, list) and curve and "pairs" in curve[-1]:
                    total += int(curve[-1]["pairs"])
    return total


def profile(root: pathlib.Path) -> dict:
    """{"stages": [one row per stage], "total_s", "untimed", "chapters": {profile: {chapter: s}}}."""
    rows = collections.defaultdict(lambda: {"entries": 0, "seconds": 0.0, "pairs": 0})
    untimed = []
    for e in sharing.entries(root):
        if e["problem"] is not None:
            continue  # another code version's entry: not this build's work
        made = e["folder"] / "made.json"
        if not made.exists():
            untimed.append(f"{e['stage']}/{e['digest']}")
            continue
        row = rows[e["stage"]]
        row["entries"] += 1
        row["seconds"] += json.loads(made.read_text())["seconds"]
        row["pairs"] += pair_passes(e["folder"])
    total = sum(r["seconds"] for r in rows.values())
    stages = [
        {
            "stage": stage,
            **r,
            "seconds": round(r["seconds"], 1),
            "pairs_per_s": round(r["pairs"] / r["seconds"], 1) if r["pairs"] and r["seconds"] else None,
            "share_pct": round(100 * r["seconds"] / total, 1) if total else 0.0,
        }
        for stage, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"])
    ]
    timings = root / cli.book_timings_file().name
    chapters = json.loads(timings.read_text()) if timings.exists() else {}
    return {"stages": stages, "total_s": round(total, 1), "untimed": untimed, "chapters": chapters}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=pathlib.Path, default=None, help="default: the checkout's cache")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("build-profile.json"))
    args = ap.parse_args()
    result = profile(args.cache or cache_root())
    print(f"{'stage':<22}{'entries':>8}{'seconds':>10}{'pairs':>11}{'pairs/s':>9}{'share':>8}")
    for r in result["stages"]:
        rate = "" if r["pairs_per_s"] is None else f"{r['pairs_per_s']:.0f}"
        print(
            f"{r['stage']:<22}{r['entries']:>8}{r['seconds']:>10.0f}{r['pairs']:>11}{rate:>9}"
            f"{r['share_pct']:>7.1f}%"
        )
    print(f"{'all stages':<22}{'':>8}{result['total_s']:>10.0f}")
    if result["untimed"]:
        print(f"{len(result['untimed'])} entries have no made.json (computed before it was recorded)")
    for prof, chapters in result["chapters"].items():
        print(f"chapters ({prof}):", ", ".join(f"{c} {s:.0f} s" for c, s in chapters.items()))
    write_json(args.out, result)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
