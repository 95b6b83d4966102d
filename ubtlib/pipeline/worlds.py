"""The world stage: a profile's pocket world, drawn once per config, then read from the cache."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from safetensors.torch import save_file

from ubtlib.checks import read_tensors
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.world.pocket import Identity, World, WorldConfig, make_world

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


def world(profile: Profile, progress: bool = True) -> World:
    """The profile's pocket world (drawn once per config, then read from the cache)."""
    if profile.world is None:
        raise ValueError(
            f"profile {profile.name!r} has no pocket world: it reads real data sets "
            "by path (see the 'Scaling up' page)"
        )
    return drawn_world(profile.world, progress)


def drawn_world(cfg: WorldConfig, progress: bool = True) -> World:
    """The pocket world `cfg` describes, drawn once, then read from the cache (for code that has
    the world's config and no profile, such as the kernel probe)."""

    def compute(folder):
        w = make_world(cfg, progress=progress)
        save_file({"images": w.images, "segments": w.segments}, str(folder / "images.safetensors"))
        write_json(
            folder / "meta.json",
            {
                "captions": w.captions,
                "kind": w.kind.tolist(),
                "label": w.label.tolist(),
                "identity": w.identity.tolist(),
                "split": w.split.tolist(),
                "categories": list(w.categories),
                "identities": w.identities,
                "distractor_names": w.distractor_names,
            },
        )

    def load(folder):
        meta = json.loads((folder / "meta.json").read_text())
        tensors = read_tensors(folder / "images.safetensors")
        return World(
            config=cfg,
            images=tensors["images"],
            segments=tensors["segments"],
            captions=meta["captions"],
            kind=np.array(meta["kind"]),
            label=np.array(meta["label"], np.int64),
            identity=np.array(meta["identity"], np.int64),
            split=np.array(meta["split"]),
            categories=tuple(meta["categories"]),
            identities=[
                Identity(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})
                for p in meta["identities"]
            ],
            distractor_names=meta["distractor_names"],
        )

    return cached("world", compute, load, world=cfg)
