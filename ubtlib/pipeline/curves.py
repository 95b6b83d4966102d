"""The unlearning-curve stage: CA, ASR and RA after every step of UBT's unlearning (chapter 4's
figure). It re-runs the paper's unlearning from the cached detection, with the same captions and
seed as the cached defense, and evaluates the model at each step; cached like every stage, so a
rebuild does not run the unlearning again. Its own module, so that its key covers only the code
it reaches."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ubtlib.attacks.poison import triggered_hook
from ubtlib.clip import model as modellib
from ubtlib.defenses.ubt import run_ubt
from ubtlib.evaluation.robustness import backdoor_metrics
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.poisoning import poisoned, poisoned_data, poisoned_key, trigger, with_attack
from ubtlib.pipeline.ubt_runs import ubt_detection
from ubtlib.pipeline.worlds import world

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


def unlearning_curve(
    profile: Profile, attack: str | None = None, token_level: bool = True, progress: bool = True
) -> list:
    """[{"step", "ca", "asr", "ra", ...}] of the paper's UBT (`token_level`) or UBT without
    token-level unlearning, from step 0 (the poisoned model) to the last unlearning step."""
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    cfg = prof.ubt.paper_variant()  # no restoring term, whatever the book's variant is set to

    def compute(folder):
        found = ubt_detection(prof, progress=progress)
        data, attacked, w = (
            poisoned_data(prof, progress=progress),
            poisoned(prof, progress=progress),
            world(prof),
        )
        hook = triggered_hook(trigger(prof, progress=progress), prof.seed)
        points = []

        def on_step(model, step):
            metrics = backdoor_metrics(model, attacked.tokenizer, w, hook, prof.poison.target, device)
            points.append({"step": step, **metrics})

        run_ubt(
            attacked.model,
            None,
            data,
            attacked.tokenizer,
            cfg,
            device,
            token_level,
            seed=prof.seed,
            progress=False,
            found=found,
            on_step=on_step,
        )
        write_json(folder / "curve.json", points)

    return cached(
        "ubt-unlearning-curve",
        compute,
        lambda folder: json.loads((folder / "curve.json").read_text()),
        **poisoned_key(prof),
        defense=cfg,
        token_level=token_level,
    )
