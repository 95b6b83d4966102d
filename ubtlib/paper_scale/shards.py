"""Image-caption pairs in WebDataset shards, the tar layout img2dataset writes and open_clip
trains on, as an input beside CleanCLIP's CSV; and the conversion both ways.

In a shard, the members sharing a key (the name up to its first dot) are one pair: an image
(`jpg`, `jpeg`, `png` or `webp`), its caption (`txt`) and optionally a `json` whose
`is_backdoor` marks a row to poison, as the CSV's column does.

The stages here need what a stream does not give: UBT scores every pair and then re-reads the
ones it picked, the poisons are chosen by row, and training follows `SharedOrder`, the seeded
global order every rank shares. So `ShardPairs` reads every shard's tar headers and captions
once, before any compute (no image is decoded), and then reads each image by its offset when it
is used: the pairs behave as the CSV's rows, in shard order then member order, and the same
pairs give the same batches from either. DataLoader workers and ranks split them as they split
the CSV's. The `webdataset` package writes the shards (`write_shards`) and expands their
brace patterns.
"""

from __future__ import annotations

import csv as csvlib
import io
import json
import pathlib
import tarfile
import time
from typing import Union

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand

from ubtlib.paper_scale.data import CaptionCSV, DataError, ImageFiles, read_image

SHARD_IMAGES = ("jpg", "jpeg", "png", "webp")  # the image extensions a key may carry


def shard_files(pattern: Union[str, pathlib.Path]) -> list:
    """The shards a pattern names: one .tar, a folder of them (sorted), or a brace pattern
    ("data/{00000..00099}.tar", webdataset's and img2dataset's form), in that order."""
    text = str(pattern)
    path = pathlib.Path(text)
    if path.is_dir():
        found = sorted(path.glob("*.tar"))
        if not found:
            raise DataError(f"{path}: a folder with no .tar shards")
        return found
    found = [pathlib.Path(p) for p in braceexpand(text)]
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: no such shard" + (f" ({len(missing)} missing)" if len(missing) > 1 else "")
        )
    return found


def _shard_samples(shard: pathlib.Path) -> list:
    """(key, {extension: TarInfo}) of a shard's members, in member order."""
    size = shard.stat().st_size
    keys: dict = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > size:
                    raise DataError(f"{shard}, member {m.name!r}: the shard ends inside it (truncated)")
                folder, _, name = m.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if not dot:
                    raise DataError(f"{shard}, member {m.name!r}: no extension, so no field of a sample")
                fields = keys.setdefault(f"{folder}/{stem}" if folder else stem, {})
                if ext.lower() in fields:
                    raise DataError(f"{shard}, member {m.name!r}: a second {ext} for its key")
                fields[ext.lower()] = m
    except tarfile.TarError as e:
        raise DataError(f"{shard}: not a readable tar shard ({e})") from None
    return list(keys.items())


class ShardPairs(ImageFiles):
    """WebDataset shards as image-caption pairs, like a `CaptionCSV` (items: uint8 image,
    caption, position; `captions`, `is_backdoor`). Errors name the shard and the key."""

    def __init__(self, pattern: Union[str, pathlib.Path], image_size: int = 224):
        super().__init__([], [], image_size)  # checks image_size before any shard is read
        self.shards = shard_files(pattern)
        self.members, self.keys, captions, flags, seen = [], [], [], [], {}
        for shard in self.shards:
            with open(shard, "rb") as f:
                for key, fields in _shard_samples(shard):
                    where = f"{shard}, key {key}"
                    if key in seen:
                        raise DataError(f"{where}: the key is also in {seen[key]}; keys must be unique")
                    seen[key] = shard
                    ext = next((e for e in SHARD_IMAGES if e in fields), None)
                    if ext is None:
                        raise DataError(
                            f"{where}: no image ({', '.join(SHARD_IMAGES)}); found {sorted(fields)}"
                        )
                    if "txt" not in fields:
                        raise DataError(f"{where}: no caption (txt); found {sorted(fields)}")
                    caption = self._text(f, fields["txt"], where).strip()
                    if not caption:
                        raise DataError(f"{where}: empty caption")
                    meta = self._text(f, fields["json"], where) if "json" in fields else None
                    flags.append(None if meta is None else self._flag(meta, where))
                    self.members.append((shard, fields[ext].offset_data, fields[ext].size, ext))
                    self.keys.append(key)
                    captions.append(caption)
        if not captions:
            raise DataError(f"{pattern}: the shards hold no samples")
        flagged = [f is not None for f in flags]
        if any(flagged) and not all(flagged):  # a poisoned set marks every row, as the CSV's column
            first = flagged.index(not flagged[0])
            raise DataError(
                f"{self.where(first)}: {'no' if flagged[0] else 'an'} is_backdoor in its json, unlike "
                f"{self.where(0)}: mark every key or none"
            )
        self.paths, self.labels, self.captions = [str(m[0]) for m in self.members], captions, captions
        self.is_backdoor = np.array(flags, bool) if all(flagged) else None

    @staticmethod
    def _text(f, member: tarfile.TarInfo, where: str) -> str:
        f.seek(member.offset_data)
        try:
            return f.read(member.size).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: {member.name} is not UTF-8 text ({e.reason})") from None

    @staticmethod
    def _flag(text: str, where: str):
        """The json's is_backdoor, or None where it has none (img2dataset's own json: url,
        status, ...)."""
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed json ({e})") from None
        if not isinstance(meta, dict) or "is_backdoor" not in meta:
            return None
        value = meta["is_backdoor"]
        if not isinstance(value, bool) and value not in (0, 1):
            raise DataError(f"{where}: json is_backdoor={value!r} is not accepted: use true / false or 0 / 1")
        return bool(value)

    def where(self, i: int) -> str:
        return f"{self.members[i][0]}, key {self.keys[i]}"

    def image_bytes(self, i: int) -> bytes:
        """The encoded image of pair i, as stored in its shard."""
        shard, offset, size, _ = self.members[i]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def image(self, i: int) -> torch.Tensor:
        return read_image(io.BytesIO(self.image_bytes(i)), self.image_size, self.where(i))


def caption_pairs(path: Union[str, pathlib.Path], image_size: int = 224):
    """The image-caption pairs at `path`: a CleanCLIP-format `.csv` (`CaptionCSV`), else
    WebDataset shards (`ShardPairs`: a .tar, a folder of them or a brace pattern)."""
    if str(path).lower().endswith(".csv"):
        return CaptionCSV(path, image_size)
    return ShardPairs(path, image_size)


def write_shards(
    csv: Union[str, pathlib.Path], out: Union[str, pathlib.Path], per_shard: int = 10_000
) -> dict:
    """Write a CleanCLIP-format CSV's pairs as WebDataset shards `out`/00000.tar, ... of
    `per_shard` pairs, keys numbered by row; each image file's bytes go in unchanged (so it
    decodes to the same pixels), its caption as `txt` and, where the CSV has the column,
    `is_backdoor` in a `json`. Returns what it wrote, with the seconds and bytes."""
    if per_shard < 1:
        raise ValueError(f"per_shard={per_shard} is out of range: accepted >= 1")
    data = CaptionCSV(csv)  # checks every row and file first
    exts = [pathlib.Path(p).suffix.lower().lstrip(".") for p in data.paths]
    odd = next((i for i, e in enumerate(exts) if e not in SHARD_IMAGES), None)
    if odd is not None:
        raise DataError(f"{data.where(odd)}: a .{exts[odd]} image; shards hold {', '.join(SHARD_IMAGES)}")
    out = pathlib.Path(out)
    if out.is_dir() and any(out.glob("*.tar")):  # old shards would be read back with the new
        raise DataError(f"{out}: already holds .tar shards; give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as writer:
        for i, (path, caption, ext) in enumerate(zip(data.paths, data.captions, exts)):
            sample = {"__key__": f"{i:09d}", ext: pathlib.Path(path).read_bytes(), "txt": caption}
            if data.is_backdoor is not None:
                sample["json"] = {"is_backdoor": bool(data.is_backdoor[i])}
            writer.write(sample)
    shards = sorted(out.glob("*.tar"))
    return {
        "pairs": len(data),
        "shards": [str(s) for s in shards],
        "bytes": sum(s.stat().st_size for s in shards),
        "seconds": time.perf_counter() - start,
    }


def write_csv(pattern: Union[str, pathlib.Path], csv: Union[str, pathlib.Path]) -> dict:
    """Write WebDataset shards back as a CleanCLIP-format CSV: each image's bytes as a file in
    the folder `images/` beside the CSV, named by its key, with an `is_backdoor` column where
    the shards carry it. Returns what it wrote, with the seconds and bytes."""
    pairs = ShardPairs(pattern)  # checks every shard and key first
    csv = pathlib.Path(csv)
    folder = csv.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    start, written = time.perf_counter(), 0
    flagged = pairs.is_backdoor is not None
    with open(csv, "w", newline="", encoding="utf-8") as f:
        rows = csvlib.writer(f)
        rows.writerow(["image", "caption"] + (["is_backdoor"] if flagged else []))
        for i, key in enumerate(pairs.keys):
            name = f"images/{key.replace('/', '_')}.{pairs.members[i][3]}"
            data = pairs.image_bytes(i)
            (csv.parent / name).write_bytes(data)
            written += len(data)
            rows.writerow([name, pairs.captions[i]] + ([int(pairs.is_backdoor[i])] if flagged else []))
    return {"pairs": len(pairs), "csv": str(csv), "bytes": written, "seconds": time.perf_counter() - start}
