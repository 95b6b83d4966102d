"""The oracle-guided defense (chapter 9) on real data: a poisoned CLIP, its training CSV and a
torchvision segmenter whose weights the user supplies.

The steps are the pocket chapter's own functions (`defenses.oracle`, `defenses.segmenter`);
what changes is where the images come from. The training images are read from disk batch by
batch (`DefenderView`), the label set is the segmenter's vocabulary (CLIP labels each image
zero-shot among the segmenter's classes, so both speak of the same labels), and the scan keeps
per image only two labels and which classes the oracle sees, never the images.
"""

from __future__ import annotations

import pathlib
import time
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ubtlib.attacks.poison import PoisonedData
from ubtlib.clip.model import to_unit
from ubtlib.defenses import oracle as orc
from ubtlib.defenses import segmenter as seg
from ubtlib.evaluation.zeroshot import classifier
from ubtlib.paper_scale.data import DataError, read_captions, trigger_rows
from ubtlib.paper_scale.weights import VOC_NAMES
from ubtlib.pipeline.profiles import Profile


class DefenderView:
    """The training images as the defender holds them, read from disk on demand: uint8, the
    poisons carrying their trigger. Each poisoned row is triggered alone, seeded by its own
    position, so a row reads the same in every batch it is drawn in (the scan's labels and the
    rectification's images are of one view). Indexes like an N x 3 x S x S uint8 tensor."""

    def __init__(self, data: PoisonedData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data.images)

    @property
    def shape(self) -> tuple:
        return self.data.images.shape

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self[torch.tensor([int(idx)])][0]
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        idx = torch.as_tensor(idx).reshape(-1)
        x = trigger_rows(self.data, to_unit(self.data.images[idx], "cpu"), idx)
        return (x * 255).round().clamp(0, 255).to(torch.uint8)


def segmenter_classes(path: Optional[str] = None) -> list:
    """The segmenter's class names, background first: one per line in `path`, or torchvision's
    21 Pascal VOC labels when no file is given."""
    if path is None:
        return list(VOC_NAMES)
    names = read_captions(path)  # one name per line, with its errors (missing file, empty line)
    if len(names) < 2:
        raise DataError(f"{path}: {len(names)} class name; give the background first, then the classes")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: class names appear twice: {repeated}")
    return names


def oracle_look(
    oracle, view, n_categories: int, min_share: float, device, batch_size: int = 256, progress: bool = True
):
    """`oracle.oracle_pass`'s `look`: the oracle's summary (`oracle.oracle_summary`) of the images
    of `view` at the given positions, read and segmented batch by batch; no map is kept."""

    def look(positions: torch.Tensor) -> tuple:
        labels, sees = [], []
        for s in tqdm(range(0, len(positions), batch_size), desc="oracle", disable=not progress):
            maps = seg.segment(oracle, view[positions[s : s + batch_size]], device)
            label, seen = orc.oracle_summary(maps, n_categories, min_share)
            labels.append(label)
            sees.append(seen)
        return torch.cat(labels), torch.cat(sees)

    return look


def scan(
    model,
    tokenizer,
    view,
    captions: list,
    oracle,
    names: list,
    templates: list,
    cfg: orc.OracleConfig,
    device,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Algorithm 1 and the victims on real data: `names` are the oracle's classes (background
    first), `templates` CLIP's prompts for them. CLIP and the oracle label the sample and the
    images tied to the affected label (`oracle.oracle_pass`). Returns the labels, which images
    each of them labelled, the affected label, the trigger estimate and the victims' positions."""
    cfg.validate()
    categories = names[1:]
    weights = classifier(model, tokenizer, categories, templates, device)
    clip = orc.clip_labeller(model, weights, view, device, progress=progress)
    look = oracle_look(oracle, view, len(categories), cfg.min_share, device, progress=progress)
    found = orc.oracle_pass(clip, look, captions, categories, cfg, seed)
    label, sees, clip_labels = found["label"], found["sees"], found["clip"]
    sets = orc.attribution_sets(clip_labels, found["oracle"], sees, label, cfg, seed, found["sample"])
    suspects = view[sets["suspects"]]
    estimate, _ = orc.locate_trigger(
        orc.class_scorer(model, weights, label),
        to_unit(suspects, device),
        seg.segment(oracle, suspects, device) == 1 + label,
        to_unit(view[sets["reference"]], "cpu"),
        cfg,
    )
    victims = orc.find_victims(cfg.victim_rule, label, categories[label], captions, clip_labels, sees)
    return {
        "labels": {"clip": clip_labels, "oracle": found["oracle"]},
        "looked": found["looked"],
        "scored": found["scored"],
        "sample": found["sample"],
        "label": label,
        "affected": found["affected"],
        "sets": sets,
        "estimate": estimate,
        "victims": victims,
        "categories": categories,
    }


def oracle_defend(
    profile: Profile,
    data: PoisonedData,
    model,
    tokenizer,
    templates: list,
    oracle,
    names: list,
    out: pathlib.Path,
    device,
) -> tuple:
    """Scan the poisoned `model` against `oracle` (a segmenter of the classes `names`,
    background first) and rectify it in place on the compact set. Returns (model, record); the
    labels, the victims and the trigger estimate are saved beside `out`. The poisons' positions
    (`data.is_backdoor`) score the victims only: the defense never reads them."""
    view = DefenderView(data)
    start = time.perf_counter()
    found = scan(
        model, tokenizer, view, data.captions, oracle, names, templates, profile.oracle, device, profile.seed
    )
    scan_seconds = time.perf_counter() - start
    labels, categories, victims = found["labels"], found["categories"], found["victims"]
    parts = orc.compact_set(
        len(view), victims, (labels["oracle"][victims] >= 0).numpy(), profile.rectify, profile.seed
    )
    captions = orc.oracle_captions(
        data.captions, parts["victim"], labels["oracle"], categories, templates, profile.seed
    )
    curve = orc.rectify(
        model, tokenizer, view, captions, parts, found["estimate"], profile.rectify, device, profile.seed
    )
    estimate = found["estimate"]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "region": estimate["region"].to(torch.uint8).contiguous(),
            "pattern": estimate["pattern"].contiguous(),
            "residual": estimate["residual"].contiguous(),
            "victims": torch.from_numpy(victims).contiguous(),
            "clip_labels": labels["clip"].contiguous(),
            "oracle_labels": labels["oracle"].contiguous(),
        },
        str(out.with_suffix(".oracle-scan.safetensors")),
    )
    record = {
        "classes": names,
        "target_in_vocabulary": profile.poison.target in categories,
        "affected_label": categories[found["label"]],
        "label_rule": profile.oracle.label_rule,
        "excess": dict(zip(categories, found["affected"]["excess"])),
        "named": dict(zip(categories, found["affected"]["named"])),
        "disagreeing": int(len(found["sets"]["disagree"])),
        "pairs_scored": int(found["scored"].sum()),
        "pairs_segmented": int(found["looked"].sum()),
        "label_sample": int(len(found["sample"])),
        "extent": estimate["extent"],
        "compact": bool(estimate["compact"]),
        "estimate_success": estimate["success"],
        "victims": orc.precision_recall(victims, data.is_backdoor),
        "set": {p: int(len(parts[p])) for p in orc.SET_PARTS},
        "set_poisons": {p: int(data.is_backdoor[parts[p]].sum()) for p in orc.SET_PARTS},
        "scan_seconds": scan_seconds,
        "rectify_seconds": time.perf_counter() - start - scan_seconds,
        "curve": curve,
    }
    return model, record
