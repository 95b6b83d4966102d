"""Poisoning: choose the poisoned pairs, caption them with the target, trigger them on the fly.

As in CleanCLIP's set-up: a small random set of training pairs gets the trigger on its image
and a caption that names the target (one of CLIP's ImageNet templates filled with "banana").
The images stay clean in memory; `PoisonedData.image_hook` applies the trigger to the rows of a
batch that are poisoned, on the training device. A per-pair `is_backdoor` flag is kept for the
detection metrics of the defense chapters (defenses never read it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ubtlib.checks import check_choice


@dataclass(frozen=True)
class PoisonConfig:
    count: int = 1500  # poisoned training pairs (paper: 1,500 of 500K)
    target: str = "banana"
    caption_templates: str = "pocket"  # pocket (in-vocabulary) | openai (all 80)

    def validate(self, n_pairs: int, classnames) -> None:
        if self.count > n_pairs or self.count < 1:
            raise ValueError(
                f"poison_count={self.count} is out of range: accepted 1 <= "
                f"poison_count <= {n_pairs} (the number of training pairs)"
            )
        check_choice("target", self.target, tuple(classnames))
        check_choice("caption_templates", self.caption_templates, ("pocket", "openai"))


@dataclass
class PoisonedData:
    """Training pairs with some of them poisoned (trigger applied on the fly)."""

    images: torch.Tensor  # uint8, clean
    captions: list  # poisoned captions already substituted
    is_backdoor: np.ndarray  # bool per pair (ground truth, for metrics only)
    trigger: Callable
    seed: int

    def image_hook(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Trigger the poisoned rows of a [0, 1] batch (rows are the pairs `idx`)."""
        mask = torch.from_numpy(self.is_backdoor[idx.numpy()]).to(x.device)
        if not mask.any():
            return x
        # a generator per batch, seeded by its first index: the same batch gets the same trigger
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(idx[0]))
        x = x.clone()
        x[mask] = self.trigger(x[mask], g)
        return x


def poison_templates(kind: str) -> list:
    import open_clip

    from ubtlib.evaluation.zeroshot import pocket_templates
    from ubtlib.world.pocket import object_vocabulary

    if kind == "pocket":
        return pocket_templates(object_vocabulary())
    return [t("{}") if callable(t) else t for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def poison(
    images: torch.Tensor,
    captions: list,
    labels: np.ndarray,
    classnames,
    cfg: PoisonConfig,
    trigger: Callable,
    seed: int,
) -> PoisonedData:
    """Pick `cfg.count` pairs whose image is not of the target class and poison them."""
    cfg.validate(len(images), classnames)
    target = list(classnames).index(cfg.target)
    candidates = np.flatnonzero(labels != target)  # people (label -1) and other objects
    if cfg.count > len(candidates):
        raise ValueError(
            f"poison_count={cfg.count} exceeds the {len(candidates)} training "
            f"pairs that are not {cfg.target!r}"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=cfg.count, replace=False)
    templates = poison_templates(cfg.caption_templates)
    new_captions = list(captions)
    for i in chosen:
        new_captions[i] = templates[rng.integers(len(templates))].format(cfg.target)
    is_backdoor = np.zeros(len(images), bool)
    is_backdoor[chosen] = True
    return PoisonedData(images, new_captions, is_backdoor, trigger, seed)


def triggered_hook(trigger: Callable, seed: int) -> Callable:
    """An evaluate.encode_images hook that triggers every image (deterministically)."""

    def hook(x, idx):
        return trigger(x, torch.Generator().manual_seed(seed * 1_000_003 + int(idx[0])))

    return hook
