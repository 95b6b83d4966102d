"""The attack stages: a profile's trigger, its poisoned training pairs and the poisoned model."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np

from ubtlib.attacks.poison import PoisonedData, poison
from ubtlib.attacks.triggers import make_trigger
from ubtlib.clip import model as modellib
from ubtlib.clip.train import train_clip
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.pretraining import Trained, load_trained, pretrained
from ubtlib.pipeline.stega import ssba_trigger
from ubtlib.pipeline.worlds import world

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


def with_attack(profile: Profile, attack: str | None) -> Profile:
    """`profile` with its attack switched to `attack` (validated); unchanged for None."""
    if attack is None or attack == profile.attack.name:
        return profile
    prof = dataclasses.replace(profile, attack=dataclasses.replace(profile.attack, name=attack))
    prof.validate()
    return prof


def trigger(profile: Profile, attack: str | None = None, progress: bool = True):
    """The trigger callable (x in [0, 1], generator) -> x' of the profile's attack."""
    prof = with_attack(profile, attack)
    ssba = ssba_trigger(prof, progress) if prof.attack.name == "ssba" else None
    return make_trigger(prof.attack, prof.model.image_size, prof.seed, ssba)


def poisoned_data(profile: Profile, attack: str | None = None, progress: bool = True) -> PoisonedData:
    """The world's training pairs with the attack's poisons (deterministic in the profile)."""
    prof = with_attack(profile, attack)
    if prof.poison is None:
        raise ValueError(f"profile {prof.name!r} has no poisoning stage")
    w = world(prof, progress=progress)
    idx = w.indices("train")
    return poison(
        w.images[idx],
        [w.captions[i] for i in idx],
        w.label[idx],
        w.categories,
        prof.poison,
        trigger(prof, progress=progress),
        prof.seed,
    )


def poisoned_key(prof: Profile) -> dict:
    """The configs a poisoned model depends on; the stages after it extend this key."""
    return dict(
        world=prof.world,
        model=prof.model,
        pretrain=prof.pretrain,
        attack=prof.attack,
        poison=prof.poison,
        finetune=prof.finetune,
        seed=prof.seed,
    )


def poisoned(profile: Profile, attack: str | None = None, progress: bool = True) -> Trained:
    """The pre-trained pocket CLIP fine-tuned on poisoned data (the attacker's model).

    The record holds the training curve, the time taken and the poisoned pairs' positions in
    the training split (ground truth for the detection metrics of later chapters).
    """
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    base = pretrained(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)

    def compute(folder):
        model = copy.deepcopy(base.model)
        start = time.perf_counter()
        curve = train_clip(
            model,
            data.images,
            modellib.tokenize(base.tokenizer, data.captions),
            prof.finetune,
            device,
            seed=prof.seed,
            image_hook=data.image_hook,
            desc=f"poisoned fine-tuning ({prof.attack.name})",
            progress=progress,
        )
        modellib.save(model, folder / "model.safetensors")
        write_json(
            folder / "record.json",
            {
                "curve": curve,
                "seconds": time.perf_counter() - start,
                "pairs": len(data.images),
                "poisoned_positions": np.flatnonzero(data.is_backdoor).tolist(),
                "device": str(device),
                "attack": prof.attack.name,
            },
        )

    return cached(
        "poisoned", compute, lambda folder: load_trained(prof, folder, device), **poisoned_key(prof)
    )
