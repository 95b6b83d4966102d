"""Real data sets, read from disk as they are used: image-caption CSVs, labelled image folders,
identity folders and caption files.

Every loader checks its whole input before any compute, in a fast pass that decodes no image
(the CSV's columns and every row's fields, that every image file exists, that no folder is
empty), and names the file and row of the first problem. An image that exists but cannot be
decoded is reported, with its file and row, when it is read. Images come out as uint8
3 x S x S tensors squashed to the model's side S (as CleanCLIP squashes to 224 x 224 before it
triggers), so the library's triggers and hooks act on [0, 1] batches on the training device,
exactly as in the pocket chapters. Batches stream through a torch DataLoader (`loader`).
"""

from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ubtlib.clip.distributed import Ranks, SharedOrder, current

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CSV_COLUMNS = ("image", "caption")  # required; `is_backdoor` is optional
BOOLEANS = {"0": False, "1": True, "false": False, "true": True}


class DataError(ValueError):
    """A problem in a data set's files; the message names the file and row (or folder)."""


def read_image(path, size: int, where: str) -> torch.Tensor:
    """The image at `path` (a file, or a binary file object) as uint8 3 x size x size (RGB,
    squashed, bicubic). `where` names the row or sample in the error if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at the smallest scale still >= size
            img = img.convert("RGB").resize((size, size), Image.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        named = f" {path}" if isinstance(path, (str, pathlib.Path)) else ""  # bytes: `where` names them
        raise DataError(f"{where}: cannot read image{named}: {e}") from None
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Images on disk, each with a label; items are (uint8 image, label, position)."""

    def __init__(self, paths: Sequence[str], labels: Sequence, image_size: int):
        if not 8 <= image_size <= 4096:
            raise ValueError(f"image_size={image_size} is out of range: accepted 8..4096")
        self.paths, self.labels, self.image_size = list(paths), list(labels), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, i: int) -> str:
        return f"sample {i}"

    def image(self, i: int) -> torch.Tensor:
        return read_image(self.paths[i], self.image_size, self.where(i))

    def __getitem__(self, i: int):
        return self.image(i), self.labels[i], i


# ---------------------------------------------------------------- image-caption CSV


class CaptionCSV(ImageFiles):
    """Image-caption pairs in CleanCLIP's format: a CSV with columns `image` (a path, relative
    to the CSV's folder or absolute) and `caption`, and optionally `is_backdoor` (0/1 or
    true/false) marking rows to poison. Items are (uint8 image, caption, position).

    Rows are counted from 1 after the header; errors name the row and its line in the file.
    """

    def __init__(self, path: Union[str, pathlib.Path], image_size: int = 224):
        self.path = pathlib.Path(path)
        paths, captions, flags, self.lines = [], [], [], []
        for row, line, fields in _csv_rows(self.path):
            where = f"{self.path}, row {row} (line {line})"
            image, caption = fields["image"].strip(), fields["caption"].strip()
            if not image:
                raise DataError(f"{where}: empty image path")
            if not caption:
                raise DataError(f"{where}: empty caption")
            if "is_backdoor" in fields:
                value = fields["is_backdoor"].strip().lower()
                if value not in BOOLEANS:
                    raise DataError(
                        f"{where}: is_backdoor={fields['is_backdoor']!r} is not accepted: "
                        "use 0 / 1 or false / true"
                    )
                flags.append(BOOLEANS[value])
            full = self.path.parent / image
            if not full.is_file():
                raise DataError(f"{where}: image file not found: {full}")
            paths.append(str(full))
            captions.append(caption)
            self.lines.append(line)
        if not paths:
            raise DataError(f"{self.path}: no rows after the header")
        super().__init__(paths, captions, image_size)
        self.captions = captions
        self.is_backdoor = np.array(flags, bool) if flags else None

    def where(self, i: int) -> str:
        return f"{self.path}, row {i + 1} (line {self.lines[i]})"


def _csv_rows(path: pathlib.Path):
    """(row, line, {column: value}) for each non-blank row, after checking the header."""
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    # utf-8-sig: a byte-order mark (spreadsheet exports) must not become part of "image"
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{path}, header (line 1): missing column {', '.join(map(repr, missing))}; "
                    f"found {header}; accepted: image, caption and optionally is_backdoor"
                )
            row, start = 0, reader.line_num + 1
            for fields in reader:
                if fields:  # blank lines are skipped
                    row += 1
                    if len(fields) != len(header):
                        raise DataError(
                            f"{path}, row {row} (line {start}): {len(fields)} fields, the "
                            f"header has {len(header)} (quote captions that hold commas)"
                        )
                    yield row, start, dict(zip(header, fields))
                start = reader.line_num + 1
        except UnicodeDecodeError as e:
            raise DataError(f"{path}, near line {reader.line_num + 1}: not UTF-8 text ({e.reason})") from None
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None


# ---------------------------------------------------------------- folders of images


def _image_folders(root: Union[str, pathlib.Path], min_images: int = 1) -> tuple:
    """(sorted sub-folder names, per folder its sorted image files) of `root`; fails naming
    the root or the folder with fewer than `min_images` images."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no sub-folders (expected one folder of images per class or person)")
    files = []
    for folder in folders:
        found = sorted(
            str(p)
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if len(found) < min_images:
            raise DataError(
                f"{folder}: {len(found)} image files, need at least {min_images} "
                f"(accepted suffixes: {' '.join(IMAGE_SUFFIXES)})"
            )
        files.append(found)
    return [f.name for f in folders], files


class LabelledFolder(ImageFiles):
    """Labelled images for zero-shot evaluation: one sub-folder of images per class.

    Classes are numbered like torchvision's ImageFolder (sorted folder names, e.g. ImageNet's
    WordNet ids n01440764, ...), or by the folder names themselves when all are integers
    (ImageNet-V2's 0, ..., 999). `classnames`: "imagenet" (open_clip's 1,000 ImageNet class
    names), a list (one per class), or None (the folder names, "_" read as a space).
    Items are (uint8 image, class index, position).
    """

    def __init__(self, root, classnames: Union[str, Sequence[str], None] = "imagenet", image_size: int = 224):
        import open_clip

        self.root = pathlib.Path(root)
        names, files = _image_folders(self.root)
        numbered = all(n.isdigit() for n in names)
        index = [int(n) for n in names] if numbered else list(range(len(names)))
        if classnames is None:
            classnames = [n.replace("_", " ") for n in names] if not numbered else None
            if classnames is None:
                raise DataError(f"{self.root}: folders are numbered, so class names must be given")
        elif isinstance(classnames, str):
            if classnames != "imagenet":
                raise ValueError(f"classnames={classnames!r}: accepted 'imagenet', a list of names or None")
            classnames = open_clip.IMAGENET_CLASSNAMES
            if not numbered and len(names) != len(classnames):
                raise DataError(
                    f"{self.root}: {len(names)} class folders, ImageNet has {len(classnames)} "
                    "(a missing folder would shift every later label)"
                )
        self.classnames = list(classnames)
        if numbered and max(index) >= len(self.classnames):
            raise DataError(
                f"{self.root / names[index.index(max(index))]}: class {max(index)} but only "
                f"{len(self.classnames)} class names"
            )
        if not numbered and len(names) != len(self.classnames):
            raise DataError(f"{self.root}: {len(names)} class folders for {len(self.classnames)} class names")
        super().__init__(
            [p for fs in files for p in fs], [k for k, fs in zip(index, files) for _ in fs], image_size
        )

    def where(self, i: int) -> str:
        return f"{self.root}, sample {i} (class {self.labels[i]})"


class IdentityFolders(ImageFiles):
    """Photos of people, one sub-folder per person named after them (FaceScrub-like:
    Aaron_Eckhart/, ...; "_" is read as a space). Items are (uint8 image, person, position).
    `photos[p]` lists person p's positions in sorted file-name order."""

    def __init__(self, root, image_size: int = 224, min_images: int = 1):
        self.root = pathlib.Path(root)
        folders, files = _image_folders(self.root, min_images)
        self.names = [n.replace("_", " ").strip() for n in folders]
        seen = {}
        for folder, name in zip(folders, self.names):
            if name in seen:
                raise DataError(f"{self.root}: folders {seen[name]!r} and {folder!r} both name {name!r}")
            seen[name] = folder
        counts = np.array([len(fs) for fs in files])
        starts = np.cumsum(counts) - counts
        self.photos = [list(range(s, s + c)) for s, c in zip(starts.tolist(), counts.tolist())]
        super().__init__(
            [p for fs in files for p in fs], [k for k, fs in enumerate(files) for _ in fs], image_size
        )

    def where(self, i: int) -> str:
        return f"{self.root}, {self.names[self.labels[i]]!r}, sample {i}"


# ---------------------------------------------------------------- captions


def read_captions(path: Union[str, pathlib.Path]) -> list:
    """A caption file, one caption per line (UTF-8; a trailing newline is fine). An empty line
    or a file with no caption fails, naming the file and line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such caption file")
    captions = []
    with open(path, encoding="utf-8-sig") as f:
        try:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    raise DataError(f"{path}, line {line}: empty caption (one caption per line)")
                captions.append(text.strip())
        except UnicodeDecodeError as e:
            raise DataError(f"{path}, line {len(captions) + 1}: not UTF-8 text ({e.reason})") from None
    if not captions:
        raise DataError(f"{path}: no captions")
    return captions


# ---------------------------------------------------------------- batches


class Pairs(Dataset):
    """A CaptionCSV's images with `captions` (e.g. with poisoned ones substituted), tokenized in
    the loader's workers: items are (uint8 image, tokens, position)."""

    def __init__(self, data: CaptionCSV, captions: Sequence[str], tokenizer):
        if len(captions) != len(data):
            raise ValueError(f"{len(captions)} captions for {len(data)} images")
        self.data, self.captions, self.tokenizer = data, list(captions), tokenizer

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.image(i), self.tokenizer([self.captions[i]])[0], i


def loader(
    dataset: Dataset,
    batch_size: int,
    device,
    shuffle: bool = True,
    seed: int = 0,
    workers: Optional[int] = None,
    drop_last: bool = True,
    ranks: Optional[Ranks] = None,
) -> DataLoader:
    """A DataLoader for `device`: on CUDA worker processes decode images (default: up to 8)
    into pinned memory; on a CPU the main process does (workers would take its cores).

    Shuffled, the batches follow `distributed.SharedOrder`: every rank of `ranks` (default:
    the running job's) draws its share of the same seeded global batches of `batch_size`."""
    cuda = torch.device(device).type == "cuda"
    workers = min(8, os.cpu_count() or 1) if workers is None and cuda else workers or 0
    common = {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}
    if shuffle:
        order = SharedOrder(len(dataset), batch_size, seed, ranks or current())
        return DataLoader(dataset, batch_sampler=order, **common)
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), drop_last=drop_last, **common)


def trigger_rows(data, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A [0, 1] batch of `data`'s (a `PoisonedData`) pairs `idx`, its poisoned rows triggered
    one by one, each seeded by its own position: a row reads the same in whichever batch, or
    rank's share of one, it is drawn."""
    rows = np.flatnonzero(data.is_backdoor[idx.numpy()])
    if len(rows):
        x = x.clone()
        for r in rows:
            x[r : r + 1] = data.image_hook(x[r : r + 1], idx[r : r + 1])
    return x


def endless(batches: DataLoader):
    """Batches of one epoch after another (reshuffled each epoch)."""
    while True:
        yield from batches


class Images:
    """Random access to a data set's images: images[i], images[a:b] or images[index tensor]
    give uint8 tensors read from disk on demand, like an in-memory N x 3 x S x S tensor. It lets
    the stages written for such tensors (UBT, CleanCLIP, face unlearning, encode_images) run on
    a data set too large for memory. `positions` selects a subset (in that order).

    Batches are decoded by a pool of threads (PIL releases the GIL while it decodes): these
    stages ask for arbitrary batches one at a time, which a DataLoader cannot prefetch."""

    def __init__(self, dataset: ImageFiles, positions: Optional[Sequence[int]] = None, threads: int = 8):
        self.dataset, self.threads = dataset, threads
        self.positions = list(range(len(dataset))) if positions is None else [int(p) for p in positions]
        self._pool = None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple:
        """(N, 3, S, S), as the in-memory tensor it stands in for."""
        s = self.dataset.image_size
        return (len(self), 3, s, s)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self.dataset.image(self.positions[idx])
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        picks = [self.positions[i] for i in torch.as_tensor(idx).reshape(-1).tolist()]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)
        return torch.stack(list(self._pool.map(self.dataset.image, picks)))
