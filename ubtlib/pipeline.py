"""The cached stages a chapter calls: world -> pre-trained model (later: poisoned, defended).

Each stage computes its result or finds it in the cache (see cache.py), so a chapter run alone
builds everything it depends on, and chapters run one after another share the work.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import model as modellib
from .cache import cached, write_json
from .profiles import Profile
from .train import train_clip
from .world import Identity, World, make_world


def world(profile: Profile, progress: bool = True) -> World:
    """The profile's pocket world (drawn once per config, then read from the cache)."""
    if profile.world is None:
        raise ValueError(f"profile {profile.name!r} has no pocket world: it reads real data sets "
                         "by path (see the 'Scaling up' page)")
    cfg = profile.world

    def compute(folder):
        w = make_world(cfg, progress=progress)
        save_file({"images": w.images}, str(folder / "images.safetensors"))
        write_json(folder / "meta.json", {
            "captions": w.captions, "kind": w.kind.tolist(), "label": w.label.tolist(),
            "identity": w.identity.tolist(), "split": w.split.tolist(),
            "categories": list(w.categories), "identities": w.identities,
            "distractor_names": w.distractor_names})

    def load(folder):
        meta = json.loads((folder / "meta.json").read_text())
        return World(config=cfg, images=load_file(str(folder / "images.safetensors"))["images"],
                     captions=meta["captions"], kind=np.array(meta["kind"]),
                     label=np.array(meta["label"], np.int64),
                     identity=np.array(meta["identity"], np.int64), split=np.array(meta["split"]),
                     categories=tuple(meta["categories"]),
                     identities=[Identity(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in p.items()}) for p in meta["identities"]],
                     distractor_names=meta["distractor_names"])

    return cached("world", ("world",), compute, load, world=cfg)


@dataclass
class Trained:
    """A model with its tokenizer and the record of how it was made."""
    model: torch.nn.Module
    tokenizer: object
    record: dict


def pretrained(profile: Profile, progress: bool = True) -> Trained:
    """The pocket CLIP pre-trained on the world's training pairs with open_clip's ClipLoss.

    Cached by world, model and training configs, seed and code; weights are safetensors.
    """
    if profile.model is None:
        raise ValueError(f"profile {profile.name!r} uses published weights "
                         f"({profile.paper_model}, {profile.paper_pretrained}), not a pocket CLIP")
    device = modellib.pick_device(profile.device)
    w = world(profile, progress=progress)

    def compute(folder):
        torch.manual_seed(profile.seed)
        model, tokenizer = modellib.create(profile.model, device=device)
        idx = w.indices("train")
        tokens = tokenizer([w.captions[i] for i in idx])
        start = time.perf_counter()
        curve = train_clip(model, w.images[idx], tokens, profile.pretrain, device, seed=profile.seed,
                           desc="pre-training the pocket CLIP", progress=progress)
        modellib.save(model, folder / "model.safetensors")
        write_json(folder / "record.json", {
            "curve": curve, "seconds": time.perf_counter() - start, "pairs": len(idx),
            "device": str(device), "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters())})

    def load(folder):
        model, tokenizer = modellib.create(profile.model, device=device)
        modellib.load(model, folder / "model.safetensors").to(device).eval()
        return Trained(model, tokenizer, json.loads((folder / "record.json").read_text()))

    return cached("pretrained", ("world", "model", "train"), compute, load,
                  world=profile.world, model=profile.model, pretrain=profile.pretrain,
                  seed=profile.seed)
