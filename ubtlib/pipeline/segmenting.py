"""The learned oracle as a cached stage: a `Segmenter` trained once per world on clean training
images and their exact label maps, with its held-out scores."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ubtlib.clip import model as modellib
from ubtlib.defenses import segmenter as seg
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.worlds import world
from ubtlib.world.pocket import segment_names

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


@dataclass
class Oracle:
    """The learned oracle and the record of its training and held-out scores."""

    model: torch.nn.Module
    record: dict


def segmenter(prof: Profile, progress: bool = True) -> Oracle:
    """The learned oracle: a `Segmenter` trained on clean training images of the world and their
    exact label maps; its record holds the held-out mIoU (objects and faces) and per-class IoU."""
    w = world(prof, progress=progress)
    device = modellib.pick_device(prof.device)
    cfg, classes = prof.segmenter, segment_names(w.categories)

    def compute(folder):
        train = w.indices("train")
        cfg.validate(len(train))
        pick = np.sort(np.random.default_rng(prof.world.seed).choice(train, cfg.images, replace=False))
        start = time.perf_counter()
        model, curve = seg.train_segmenter(
            w.images[pick], w.segments[pick], len(classes), cfg, device, prof.world.seed, progress
        )
        seconds = time.perf_counter() - start
        held = np.concatenate([w.indices("heldout"), w.indices("eval")])
        predicted = seg.segment(model, w.images[held], device)
        iou = seg.mean_iou(predicted, w.segments[held], len(classes))
        n_cat = len(w.categories)
        truth_labels = seg.image_labels(w.segments[held], n_cat)
        label_agreement = (seg.image_labels(predicted, n_cat) == truth_labels).float().mean().item()
        modellib.save(model, folder / "model.safetensors")
        write_json(
            folder / "record.json",
            {
                "seconds": seconds,
                "curve": curve,
                "images": int(cfg.images),
                "heldout_images": int(len(held)),
                "miou": iou["miou"],
                "per_class_iou": dict(zip(classes, iou["per_class"])),
                "label_agreement": 100.0 * label_agreement,
                "device": str(device),
            },
        )

    def load(folder):
        model = seg.Segmenter(len(classes), cfg.width)
        modellib.load(model, folder / "model.safetensors")
        return Oracle(model.to(device).eval(), json.loads((folder / "record.json").read_text()))

    return cached("segmenter", compute, load, world=prof.world, segmenter=cfg, seed=prof.world.seed)
