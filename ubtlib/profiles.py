"""Named presets (smoke, pocket, paper) and the one place parameters are validated.

A profile bundles the configs of every stage. Chapters take a profile name, a seed and flat
overrides named `<stage>_<field>` (``pretrain_epochs=4``, ``world_n_identities=64``); an
unknown name or an out-of-range value fails before any compute, naming what is accepted.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


from .checks import check_choice, check_range  # noqa: F401  (re-exported)
from .model import ModelConfig
from .train import TrainConfig
from .world import WorldConfig

# The stages a profile configures, and the config class of each (override prefix -> class).
STAGES = {"world": WorldConfig, "model": ModelConfig, "pretrain": TrainConfig}


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int
    world: Optional[WorldConfig]
    model: Optional[ModelConfig]
    pretrain: Optional[TrainConfig]
    device: str = "auto"
    description: str = ""
    # the paper profile: real weights and data sets (supplied by the user, by path)
    paper_model: Optional[str] = None          # open_clip model name
    paper_pretrained: Optional[str] = None     # open_clip pretrained tag or a local file

    def validate(self) -> None:
        check_range("seed", self.seed, 0, 2**31 - 1)
        for stage in STAGES:
            cfg = getattr(self, stage)
            if cfg is not None:
                cfg.validate()
        if self.world is not None and self.model is not None and \
                self.world.image_size != self.model.image_size:
            raise ValueError(f"world_image_size={self.world.image_size} must equal "
                             f"model_image_size={self.model.image_size}")

    @property
    def is_pocket_world(self) -> bool:
        return self.world is not None


PROFILES = {
    "smoke": Profile(
        name="smoke", seed=0, description="tiny sizes for CI: every chapter in seconds, numbers meaningless",
        world=WorldConfig(objects_train=12, objects_heldout=4, n_identities=12, faces_train=6,
                          faces_eval=4, faces_trigger=2, n_distractor_names=20),
        model=ModelConfig(width=32, layers=1, head_width=32, embed_dim=32, context_length=24),
        pretrain=TrainConfig(epochs=1, batch_size=64, lr=1e-3, warmup_steps=2, log_every=1)),
    "pocket": Profile(
        name="pocket", seed=0, description="the embedded CPU default: the pocket world and a small CLIP",
        world=WorldConfig(),
        model=ModelConfig(context_length=24),
        pretrain=TrainConfig(epochs=8, batch_size=128, lr=2e-3, warmup_steps=50)),
    "paper": Profile(
        name="paper", seed=42, description="the papers' settings: ViT-B-32 weights and real data sets, on a GPU",
        world=None, model=None, pretrain=None, device="cuda",
        paper_model="ViT-B-32", paper_pretrained="openai"),
}


def accepted_overrides() -> list:
    return sorted(f"{stage}_{f.name}" for stage, cls in STAGES.items()
                  for f in dataclasses.fields(cls))


def configure(profile: str = "pocket", seed: Optional[int] = None, device: Optional[str] = None,
              **overrides) -> Profile:
    """The named profile with `seed`, `device` and `<stage>_<field>` overrides, validated.

    >>> configure("pocket", seed=3, pretrain_epochs=4).pretrain.epochs
    4
    """
    check_choice("profile", profile, tuple(PROFILES))
    base = PROFILES[profile]
    changes = {}
    if seed is not None:
        changes["seed"] = seed
    if device is not None:
        check_choice("device", device if not device.startswith("cuda:") else "cuda",
                     ("auto", "cpu", "cuda"))
        changes["device"] = device
    per_stage = {stage: {} for stage in STAGES}
    for key, value in overrides.items():
        if value is None:  # a notebook's "use the profile's default"
            continue
        stage, _, field = key.partition("_")
        if stage not in STAGES or field not in {f.name for f in dataclasses.fields(STAGES[stage])}:
            raise ValueError(f"unknown parameter {key!r}: accepted are seed, device and "
                             f"{', '.join(accepted_overrides())}")
        if getattr(base, stage) is None:
            raise ValueError(f"parameter {key!r} does not apply to profile {profile!r} "
                             f"(it has no {stage} stage)")
        per_stage[stage][field] = value
    for stage, fields in per_stage.items():
        if fields:
            changes[stage] = dataclasses.replace(getattr(base, stage), **fields)
    prof = dataclasses.replace(base, **changes)
    if prof.world is not None:  # the world follows the profile's seed
        prof = dataclasses.replace(prof, world=dataclasses.replace(prof.world, seed=prof.seed))
    prof.validate()
    return prof
