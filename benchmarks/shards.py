"""What WebDataset shards cost against the CSV they are written from: conversion time, disk,
the index pass, and decoding speed from either (`python -m ubtlib paper shards`).

    python benchmarks/shards.py --pairs 5000 --side 256 --out /tmp/shards-bench

It writes `pairs` JPEG files of `side` px (smooth noise, so they compress like photos rather
than like noise), their CSV, the shards and the CSV back, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import time

import numpy as np
from PIL import Image

import ubtlib  # noqa: F401  (torchvision's import order; see notes/environment.md)
from ubtlib.paper_scale import shards
from ubtlib.paper_scale.data import CaptionCSV


def photos(folder: pathlib.Path, n: int, side: int, seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        coarse = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
        img.save(folder / "img" / f"{k}.jpg", quality=90)
        rows.append(f"img/{k}.jpg,a photo number {k},{int(k % 333 == 0)}")
    csv = folder / "pairs.csv"
    csv.write_text("image,caption,is_backdoor\n" + "\n".join(rows) + "\n")
    return csv


def decode_rate(pairs, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        pairs.image(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/shards-bench")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    csv = photos(out / "csv", args.pairs, args.side)
    image_bytes = sum(p.stat().st_size for p in (out / "csv" / "img").iterdir())
    written = shards.write_shards(csv, out / "shards", args.per_shard)
    start = time.perf_counter()
    sharded = shards.ShardPairs(out / "shards", 224)
    index_s = time.perf_counter() - start
    back = shards.write_csv(out / "shards", out / "back" / "pairs.csv")
    n = min(args.pairs, 1000)
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "image_bytes": image_bytes,
                "shard_bytes": written["bytes"],
                "overhead_bytes_per_pair": (written["bytes"] - image_bytes) / args.pairs,
                "to_shards_s": written["seconds"],
                "index_s": index_s,
                "to_csv_s": back["seconds"],
                "decode_per_s_csv": decode_rate(CaptionCSV(csv, 224), n),
                "decode_per_s_shards": decode_rate(sharded, n),
            }
        )
    )


if __name__ == "__main__":
    main()
