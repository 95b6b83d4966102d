"""UBT's stages: the shared detection (split, overfitting, top-k, token relevance) and the
defended models of both variants (with and without token-level unlearning)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from ubtlib.checks import read_tensors
from ubtlib.clip import model as modellib
from ubtlib.defenses.ubt import DETECTION_FIELDS, UBTConfig, find_poison, run_ubt
from ubtlib.evaluation.zeroshot import pocket_templates
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.poisoning import poisoned, poisoned_data, poisoned_key, with_attack
from ubtlib.pipeline.pretraining import Trained, load_trained, pretrained
from ubtlib.pipeline.worlds import world
from ubtlib.world.pocket import object_vocabulary

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile

_FOUND_TENSORS = (
    "susp",
    "safe",
    "retain_candidates",
    "candidate_gain",
    "top",
    "relevance",
    "clean_similarity",
    "op_similarity",
)


def ubt_detection(profile: Profile, attack: str | None = None, progress: bool = True) -> dict:
    """UBT's split, overfitting, top-k detection and token relevance (`ubt.find_poison`) on the
    profile's poisoned data: one cached stage that both UBT variants, and every run differing
    only in how it unlearns, start from. The seconds it took are in the result."""
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    prof.ubt.validate(prof.world.n_train_pairs)
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)
    detection = {f: getattr(prof.ubt, f) for f in DETECTION_FIELDS}

    def compute(folder):
        clean = pretrained(prof, progress=progress)
        # only the fields in the key reach the computation, so the key cannot go stale
        found = find_poison(
            attacked.model,
            clean.model,
            data,
            modellib.tokenize(attacked.tokenizer, data.captions),
            UBTConfig(**detection),
            device,
            seed=prof.seed,
            progress=progress,
        )
        found["device"] = str(device)
        save_file({k: found.pop(k).contiguous() for k in _FOUND_TENSORS}, str(folder / "found.safetensors"))
        write_json(folder / "found.json", found)

    def load(folder):
        return {
            **json.loads((folder / "found.json").read_text()),
            **read_tensors(folder / "found.safetensors"),
        }

    return cached("ubt-detection", compute, load, **poisoned_key(prof), detection=detection)


# the UBT variants: token-level unlearning or not; the book's restoring variant is token-level
UBT_VARIANTS = ("ubt", "ubt_no_token", "ubt_restore")


def ubt_defended(prof: Profile, defense: str = "ubt", progress: bool = True) -> Trained:
    """The poisoned model after UBT's unlearning (`defense` one of `UBT_VARIANTS`), from the
    cached detection (a validated profile with its attack set: see `defending.defended`).
    The paper's two variants run with no restoring term (`restore_weight` 0 and `restore_to`
    its default, so that the restoring settings do not enter their keys); "ubt_restore" with the
    profile's."""
    device = modellib.pick_device(prof.device)
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)
    restoring = defense == "ubt_restore"
    cfg = prof.ubt if restoring else prof.ubt.paper_variant()

    def compute(folder):
        found = ubt_detection(prof, progress=progress)  # shared by every UBT variant
        classes = None
        if restoring:
            w = world(prof, progress=progress)
            classes = (list(w.categories), pocket_templates(object_vocabulary()))
        model, record = run_ubt(
            attacked.model,
            pretrained(prof, progress=progress).model if restoring else None,
            data,
            attacked.tokenizer,
            cfg,
            device,
            token_level=defense != "ubt_no_token",
            seed=prof.seed,
            progress=progress,
            found=found,
            classes=classes,
        )
        record.update(defense=defense, attack=prof.attack.name, device=str(device))
        modellib.save(model, folder / "model.safetensors")
        write_json(folder / "record.json", record)

    return cached(
        f"defended-{defense}",
        compute,
        lambda folder: load_trained(prof, folder, device),
        **poisoned_key(prof),
        defense=cfg,
    )
