"""Named presets (smoke, pocket, paper) and the one place parameters are validated.

A profile bundles the configs of every stage. Chapters take a profile name, a seed and flat
overrides named `<stage>_<field>` (``pretrain_epochs=4``, ``world_n_identities=64``); an
unknown name or an out-of-range value fails before any compute, naming what is accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ubtlib.attacks.poison import PoisonConfig
from ubtlib.attacks.triggers import AttackConfig
from ubtlib.checks import check_choice, check_range  # noqa: F401  (re-exported)
from ubtlib.clip.model import ModelConfig
from ubtlib.clip.train import TrainConfig
from ubtlib.defenses.abl import ABLConfig
from ubtlib.defenses.cleanclip import CleanCLIPConfig
from ubtlib.defenses.oracle import OracleConfig, RectifyConfig
from ubtlib.defenses.segmenter import SegmenterConfig
from ubtlib.defenses.ubt import UBTConfig
from ubtlib.privacy.idia import IdiaConfig
from ubtlib.privacy.unlearning import FacesConfig, NamesConfig
from ubtlib.world.pocket import WorldConfig

# The stages a profile configures, and the config class of each (override prefix -> class).
STAGES = {
    "world": WorldConfig,
    "model": ModelConfig,
    "pretrain": TrainConfig,
    "attack": AttackConfig,
    "poison": PoisonConfig,
    "finetune": TrainConfig,
    "ubt": UBTConfig,
    "cleanclip": CleanCLIPConfig,
    "abl": ABLConfig,
    "segmenter": SegmenterConfig,
    "oracle": OracleConfig,
    "rectify": RectifyConfig,
    "idia": IdiaConfig,
    "names": NamesConfig,
    "faces": FacesConfig,
}


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int
    world: Optional[WorldConfig]
    model: Optional[ModelConfig]
    pretrain: Optional[TrainConfig]
    attack: AttackConfig = AttackConfig()
    poison: Optional[PoisonConfig] = None
    finetune: Optional[TrainConfig] = None  # poisoned fine-tuning
    ubt: UBTConfig = UBTConfig()
    cleanclip: CleanCLIPConfig = CleanCLIPConfig()
    abl: ABLConfig = ABLConfig()
    # the oracle-guided defense: its learned oracle, its scan and its rectification (chapter 9)
    segmenter: SegmenterConfig = SegmenterConfig()
    oracle: OracleConfig = OracleConfig()
    rectify: RectifyConfig = RectifyConfig()
    table_seeds: tuple = (0, 1, 2)  # repeats behind the mean +/- std of Table 1
    idia: IdiaConfig = IdiaConfig()  # identity inference attack (privacy chapters)
    names: NamesConfig = NamesConfig()  # unlearning names from the text encoder
    faces: FacesConfig = FacesConfig()  # unlearning faces from the image encoder
    device: str = "auto"
    description: str = ""
    # the paper profile: real weights and data sets (supplied by the user, by path)
    paper_model: Optional[str] = None  # open_clip model name
    paper_pretrained: Optional[str] = None  # open_clip pretrained tag or a local file (UBT paper)
    privacy_pretrained: Optional[str] = None  # the same for the privacy paper

    def validate(self) -> None:
        check_range("seed", self.seed, 0, 2**31 - 1)
        for stage in ("world", "model", "pretrain", "finetune"):
            cfg = getattr(self, stage)
            if cfg is not None:
                cfg.validate()
        image_size = self.model.image_size if self.model is not None else 224
        self.attack.validate(image_size)
        if self.world is not None:
            if self.model is not None and self.world.image_size != self.model.image_size:
                raise ValueError(
                    f"world_image_size={self.world.image_size} must equal "
                    f"model_image_size={self.model.image_size}"
                )
            if self.poison is not None:
                self.poison.validate(self.world.n_train_pairs, self.world.categories)
            self.ubt.validate(self.world.n_train_pairs)
            self.cleanclip.validate(self.world.n_train_pairs)
            self.segmenter.validate(self.world.n_train_pairs)
            self.rectify.validate(self.world.n_train_pairs)
        self.oracle.validate()
        self.abl.validate()
        for cfg in (self.idia, self.names, self.faces):
            cfg.validate()
        if self.world is not None:  # the privacy stages draw people and photos from the world
            check_range("idia_images", self.idia.images, 1, self.world.faces_eval)
            for stage in ("names", "faces"):
                check_range(f"{stage}_max_set", getattr(self, stage).max_set, 1, self.world.n_identities)

    @property
    def is_pocket_world(self) -> bool:
        return self.world is not None


PROFILES = {
    "smoke": Profile(
        name="smoke",
        seed=0,
        description="tiny sizes for CI: every chapter in seconds, numbers meaningless",
        world=WorldConfig(
            objects_train=12,
            objects_heldout=4,
            n_identities=12,
            faces_train=6,
            faces_eval=4,
            faces_trigger=2,
            n_distractor_names=20,
        ),
        model=ModelConfig(width=32, layers=1, text_width=32, text_layers=1, head_width=32, embed_dim=32),
        pretrain=TrainConfig(epochs=1, batch_size=64, lr=1e-3, warmup_steps=2, log_every=1),
        attack=AttackConfig(ssba_epochs=0.5),
        poison=PoisonConfig(count=20),
        finetune=TrainConfig(epochs=1, batch_size=64, lr=1e-4, warmup_steps=2, log_every=1),
        ubt=UBTConfig(susp_fraction=0.1, overfit_epochs=2, top_k=10, unlearn_epochs=1),
        cleanclip=CleanCLIPConfig(clean_pairs=64, epochs=1, batch_size=32, warmup_steps=2),
        abl=ABLConfig(epochs=0.2, batch_size=64),
        segmenter=SegmenterConfig(width=8, images=128, epochs=1, batch_size=32),
        oracle=OracleConfig(attribution_images=8, reference_images=64),
        rectify=RectifyConfig(set_size=64, epochs=1, batch_size=32, warmup_steps=2),
        table_seeds=(0,),
        idia=IdiaConfig(images=4),
        names=NamesConfig(
            steps=40,
            clean_batch=32,
            poisoned_batch=32,
            lr=1e-3,
            eval_captions=200,
            repeats=1,
            max_set=2,
            term_sizes=(1,),
            term_repeats=1,
            anchor_targets=True,
        ),
        faces=FacesConfig(
            steps=20, clean_batch=32, poisoned_batch=32, lr=1e-3, eval_images=200, repeats=1, max_set=2
        ),
    ),
    "pocket": Profile(
        name="pocket",
        seed=0,
        description="the embedded CPU default: the pocket world and a small CLIP",
        world=WorldConfig(),
        model=ModelConfig(),
        pretrain=TrainConfig(epochs=7, batch_size=128, lr=2e-3, warmup_steps=50),
        # 1,500 poisons = 5.2 % of the pairs: the paper's 0.3 % plants no backdoor here (chapter 2)
        attack=AttackConfig(),
        poison=PoisonConfig(count=1500),
        finetune=TrainConfig(epochs=2.5, batch_size=128, lr=1e-3, warmup_steps=20),
        # the oracle finds the affected label on a seeded sample: the named rule's count (poisons
        # whose caption names the label) stands far above any other label's in a seventh of the
        # set, and labelling every image is most of the defense's time (chapter 9 ablates both);
        # the occlusion of 64 disagreeing images estimates the trigger as well as 128 do, at
        # half of what then is the scan's largest part
        oracle=OracleConfig(label_sample=4096, attribution_images=64),
        # privacy chapters: the paper's recipes, adapted to a small CLIP and a CPU budget (the
        # chapters 07 and 08 explain each change and show the paper's setting beside it)
        idia=IdiaConfig(),
        # anchor_targets: the pocket CLIP never saw a neutral term, so without it Sim_Targets drifts
        # beta halved (the paper's value for the image encoder): with 8x fewer, larger steps, 0.01
        # held a 64-name student too near the teacher (TPR 8-9 % at 64 names; 2-5 % at 0.005)
        names=NamesConfig(
            steps=50,
            lr=3e-3,
            beta=0.005,
            repeats=2,
            term_sizes=(1, 8, 64),
            term_repeats=1,
            anchor_targets=True,
        ),
        faces=FacesConfig(
            clean_batch=64,
            poisoned_batch=64,
            size_min=0.5,
            size_max=1.0,
            jitter=0.0,
            hue=0.0,
            people_share=0.5,
            repeats=2,
        ),
    ),
    "paper": Profile(
        name="paper",
        seed=42,
        description="the papers' settings: ViT-B-32 weights and real data sets, on a GPU",
        world=None,
        model=None,
        pretrain=None,
        device="cuda",
        # CleanCLIP's triggers at 224 px: a 16 x 16 noise patch at a random position; 100-bit
        # StegaStamp secrets
        attack=AttackConfig(badnet_size=16, badnet_position="random", badnet_pattern="noise", ssba_bits=100),
        # 1,500 poisons (0.3 % of CC3M 500K), captions from all 80 ImageNet templates with "banana"
        poison=PoisonConfig(count=1500, caption_templates="openai"),
        # the UBT paper's poisoned fine-tuning: batch 128, lr 1e-6, 3 epochs
        finetune=TrainConfig(epochs=3, batch_size=128, lr=1e-6, warmup_steps=0),
        # UBT: overfit batch 64, lr 1e-6, 5 epochs; unlearn batch 64, lr 1e-5, 3 epochs (UBTConfig's
        # epochs and batch sizes are the paper's; D_susp's size and k are the book's choices)
        ubt=UBTConfig(
            susp_fraction=0.05,
            overfit_lr=1e-6,
            overfit_epochs=5,
            overfit_batch_size=64,
            unlearn_lr=1e-5,
            unlearn_epochs=3,
            unlearn_batch_size=64,
            skip_function_words=False,  # the paper keeps the most relevant token, whichever
            # the paper's full Cartesian product, and a retain term over a sample of D_safe
            max_token_captions=1 << 20,
            retain_fraction=1.0,
            # the retain pool is a random 65,536 of D_safe: scoring all 475K twice
            # more would cost a fifth of UBT's time, for a term drawing a few thousand
            retain_candidates=1 << 16,
            unlearn_floor=-1.0,
        ),
        # CleanCLIP: 100K clean pairs, 10 epochs, lr 1e-5, batch 64, 50 warm-up steps
        cleanclip=CleanCLIPConfig(clean_pairs=100_000, epochs=10, lr=1e-5, batch_size=64, warmup_steps=50),
        # the oracle-guided defense (the book's reading): occlusion windows of ViT-B/32's own
        # patch (4 px windows at 224 px would cost 12,000 forward passes an image), and
        # CleanCLIP's fine-tuning rate and batch for published weights
        oracle=OracleConfig(patch=32),
        rectify=RectifyConfig(lr=1e-5, batch_size=64, warmup_steps=50),
        # the privacy paper: IDIA with 21 prompts and 20 photos per person (1,000 candidate
        # names); text: 400 steps, lr 1e-4, MultiStepLR [200, 300] x 0.5, alpha 0.6, beta 0.01,
        # 128 + 128 captions; image: 100 steps, lr 1e-4, MultiStepLR [25, 50] x 0.1, alpha 0.8,
        # beta 0.005, faces of 56..112 of 224 px; 10 repeats of 1, 2, ..., 64 people
        idia=IdiaConfig(prompts=21, images=20),
        names=NamesConfig(
            steps=400,
            lr=1e-4,
            milestones=(0.5, 0.75),
            gamma=0.5,
            alpha=0.6,
            beta=0.01,
            clean_batch=128,
            poisoned_batch=128,
            repeats=10,
            max_set=64,
        ),
        faces=FacesConfig(
            steps=100,
            lr=1e-4,
            milestones=(0.25, 0.5),
            gamma=0.1,
            alpha=0.8,
            beta=0.005,
            clean_batch=128,
            poisoned_batch=128,
            size_min=0.25,
            size_max=0.5,
            repeats=10,
            max_set=64,
        ),
        paper_model="ViT-B-32",
        paper_pretrained="openai",
        privacy_pretrained="laion400m_e32",
    ),
}


def accepted_overrides() -> list:
    return sorted(f"{stage}_{f.name}" for stage, cls in STAGES.items() for f in dataclasses.fields(cls))


def configure(
    profile: str = "pocket", seed: Optional[int] = None, device: Optional[str] = None, **overrides
) -> Profile:
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
        check_choice("device", device if not device.startswith("cuda:") else "cuda", ("auto", "cpu", "cuda"))
        changes["device"] = device
    per_stage = {stage: {} for stage in STAGES}
    for key, value in overrides.items():
        if value is None:  # a notebook's "use the profile's default"
            continue
        stage, _, field = key.partition("_")
        if stage not in STAGES or field not in {f.name for f in dataclasses.fields(STAGES[stage])}:
            raise ValueError(
                f"unknown parameter {key!r}: accepted are seed, device and {', '.join(accepted_overrides())}"
            )
        if getattr(base, stage) is None or (stage in ("world", "model", "pretrain") and base.world is None):
            raise ValueError(
                f"parameter {key!r} does not apply to profile {profile!r} (it has no {stage} stage)"
            )
        per_stage[stage][field] = value
    for stage, fields in per_stage.items():
        if fields:
            changes[stage] = dataclasses.replace(getattr(base, stage), **fields)
    prof = dataclasses.replace(base, **changes)
    if prof.world is not None:  # the world follows the profile's seed
        prof = dataclasses.replace(prof, world=dataclasses.replace(prof.world, seed=prof.seed))
    try:
        prof.validate()
    except ValueError as e:  # name the value as the user wrote it (attack_blended_alpha=...)
        for key in overrides:
            field = key.partition("_")[2]
            if str(e).startswith(f"{field}="):
                raise ValueError(f"{key.partition('_')[0]}_{e}") from None
        raise
    return prof
