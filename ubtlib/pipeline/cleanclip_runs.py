"""CleanCLIP's stage: the poisoned model fine-tuned on the defender's own clean pairs."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import numpy as np

from ubtlib.clip import model as modellib
from ubtlib.defenses.cleanclip import cleanclip
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.poisoning import poisoned, poisoned_data, poisoned_key
from ubtlib.pipeline.pretraining import Trained, load_trained

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


def cleanclip_defended(prof: Profile, progress: bool = True) -> Trained:
    """The poisoned model after CleanCLIP (a validated profile with its attack set: see
    `defending.defended`)."""
    device = modellib.pick_device(prof.device)
    cfg = prof.cleanclip
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)

    def compute(folder):
        # the defender's own clean pairs: a random subset of the pairs that are not poisoned
        rng = np.random.default_rng(prof.seed)
        clean = np.flatnonzero(~data.is_backdoor)
        pick = np.sort(rng.choice(clean, size=min(cfg.clean_pairs, len(clean)), replace=False))
        model = copy.deepcopy(attacked.model)
        start = time.perf_counter()
        curve = cleanclip(
            model,
            data.images[pick],
            [data.captions[i] for i in pick],
            attacked.tokenizer,
            cfg,
            device,
            seed=prof.seed,
            progress=progress,
        )
        record = {
            "seconds": time.perf_counter() - start,
            "pairs_trained": len(pick),
            "pairs_scored": 0,
            "curve": curve,
            "defense": "cleanclip",
            "attack": prof.attack.name,
            "device": str(device),
        }
        modellib.save(model, folder / "model.safetensors")
        write_json(folder / "record.json", record)

    return cached(
        "defended-cleanclip",
        compute,
        lambda folder: load_trained(prof, folder, device),
        **poisoned_key(prof),
        defense=cfg,
    )
