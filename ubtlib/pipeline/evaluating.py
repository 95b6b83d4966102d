"""A model's backdoor metrics, cached per model: chapters that show the same model (chapter 4's
ablations and Table 1 share their default rows, chapter 9 sets its defense beside Table 1's,
four chapters read the base rates) read one evaluation instead of loading and encoding again.

The key is the whole profile (which fixes the model, its attack and the evaluation's trigger)
and the model's name; the code is everything this module reaches, every stage that trains a
model included.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ubtlib.attacks.poison import triggered_hook
from ubtlib.checks import check_choice
from ubtlib.clip import model as modellib
from ubtlib.evaluation.robustness import backdoor_metrics
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.defending import DEFENSES, defended
from ubtlib.pipeline.poisoning import poisoned, trigger
from ubtlib.pipeline.pretraining import pretrained
from ubtlib.pipeline.worlds import world

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile

# pretrained: the clean pre-trained model (its ASR is the trigger's base rate); none: the
# poisoned model; then each defense's defended model
MODELS = ("pretrained", "none", *DEFENSES)


def evaluated(prof: Profile, model: str = "none", progress: bool = True) -> dict:
    """{"metrics": CA, ASR, RA (%) and the redirect (`backdoor_metrics`) of `model` under the
    trigger of `prof`'s attack (a profile with its attack set, `with_attack`), "record": the
    model's own record (how it was made: wall time, pairs, curve)}."""
    check_choice("model", model, MODELS)

    def compute(folder):
        if model == "pretrained":
            m = pretrained(prof, progress=progress)
        elif model == "none":
            m = poisoned(prof, progress=progress)
        else:
            m = defended(prof, None, model, progress=progress)
        hook = triggered_hook(trigger(prof, progress=progress), prof.seed)
        device = modellib.pick_device(prof.device)
        metrics = backdoor_metrics(
            m.model, m.tokenizer, world(prof, progress=progress), hook, prof.poison.target, device
        )
        write_json(folder / "evaluation.json", {"metrics": metrics, "record": m.record})

    return cached(
        "evaluation",
        compute,
        lambda folder: json.loads((folder / "evaluation.json").read_text()),
        profile=prof,
        model=model,
    )
