"""ABL's isolation stage: per-pair losses after LGA training from the clean pre-trained model."""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from ubtlib.checks import read_tensors
from ubtlib.clip import model as modellib
from ubtlib.defenses import abl
from ubtlib.pipeline.cache import cached
from ubtlib.pipeline.poisoning import poisoned_data, poisoned_key, with_attack
from ubtlib.pipeline.pretraining import pretrained

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


def abl_losses(profile: Profile, attack: str | None = None, progress: bool = True) -> torch.Tensor:
    """ABL's per-pair losses on the profile's poisoned data, after LGA training from the clean
    pre-trained model (defenses.abl): the scores its isolation ranks. Cached like a defense, so a
    chapter re-run does not train ABL again."""
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    prof.abl.validate()
    data = poisoned_data(prof, progress=progress)
    # the isolation ratio only reads the losses: leave it out of the key (and of the computation,
    # so the key cannot go stale)
    training = dataclasses.replace(prof.abl, isolation_ratio=abl.ABLConfig.isolation_ratio)

    def compute(folder):
        clean = pretrained(prof, progress=progress)
        tokens = modellib.tokenize(clean.tokenizer, data.captions)
        model = copy.deepcopy(clean.model)
        abl.lga_train(model, data.images, tokens, training, device, data.image_hook, prof.seed, progress)
        losses = abl.per_pair_loss(model, data.images, tokens, device, data.image_hook, seed=prof.seed)
        save_file({"losses": losses.float().cpu().contiguous()}, str(folder / "losses.safetensors"))

    def load(folder):
        return read_tensors(folder / "losses.safetensors")["losses"]

    # the poisoned data's key, less the fine-tuning: ABL trains from the clean model
    key = {k: v for k, v in poisoned_key(prof).items() if k != "finetune"}
    return cached("abl", compute, load, **key, abl=training)
