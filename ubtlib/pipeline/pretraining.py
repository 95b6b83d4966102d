"""The pre-training stage: the pocket CLIP trained on the world's training pairs."""

from __future__ import annotations

import json
import pathlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ubtlib.clip import model as modellib
from ubtlib.clip.train import train_clip
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.worlds import world

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


@dataclass
class Trained:
    """A model with its tokenizer and the record of how it was made."""

    model: torch.nn.Module
    tokenizer: object
    record: dict


def load_trained(profile: Profile, folder: pathlib.Path, device) -> Trained:
    """The model and record a training stage wrote to `folder` (model.safetensors, record.json)."""
    model, tokenizer = modellib.create(profile.model, device=device)
    modellib.load(model, folder / "model.safetensors").to(device).eval()
    return Trained(model, tokenizer, json.loads((folder / "record.json").read_text()))


def pretrained(profile: Profile, progress: bool = True) -> Trained:
    """The pocket CLIP pre-trained on the world's training pairs with open_clip's ClipLoss.

    Seeded by the world's seed (so repeats of the attack and defense stages with other seeds
    share one pre-trained model, as the papers do). Cached by world, model and training
    configs, seed and code; weights are safetensors.
    """
    if profile.model is None:
        raise ValueError(
            f"profile {profile.name!r} uses published weights "
            f"({profile.paper_model}, {profile.paper_pretrained}), not a pocket CLIP"
        )
    device = modellib.pick_device(profile.device)
    w = world(profile, progress=progress)
    seed = profile.world.seed  # pre-training follows the world; repeats of later stages share it

    def compute(folder):
        torch.manual_seed(seed)
        model, tokenizer = modellib.create(profile.model, device=device)
        idx = w.indices("train")
        tokens = modellib.tokenize(tokenizer, [w.captions[i] for i in idx])
        start = time.perf_counter()
        curve = train_clip(
            model,
            w.images[idx],
            tokens,
            profile.pretrain,
            device,
            seed=seed,
            desc="pre-training the pocket CLIP",
            progress=progress,
        )
        modellib.save(model, folder / "model.safetensors")
        write_json(
            folder / "record.json",
            {
                "curve": curve,
                "seconds": time.perf_counter() - start,
                "pairs": len(idx),
                "device": str(device),
                "threads": torch.get_num_threads(),
                "params": sum(p.numel() for p in model.parameters()),
            },
        )

    return cached(
        "pretrained",
        compute,
        lambda folder: load_trained(profile, folder, device),
        world=profile.world,
        model=profile.model,
        pretrain=profile.pretrain,
        seed=seed,
    )
