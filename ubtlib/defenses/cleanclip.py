"""CleanCLIP (Bansal et al., ICCV 2023): fine-tune on clean pairs with an in-modal loss.

Loss = L_CLIP + L_inmodal, both weight 1, where L_inmodal = 1/2 [CE(images vs their augmented
views) + CE(captions vs their augmented versions)] at the model's logit scale. Images are
augmented with AutoAugment (ImageNet policy, torchvision), captions with EDA (synonym
replacement, random insertion, random swap, random deletion; each 0.1; one augmented
sentence). AdamW, linear warm-up then cosine decay. The defender is assumed to own a clean
subset of pairs; the in-modal term makes each modality's features self-consistent, which
weakens the cross-modal shortcut a backdoor relies on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ubtlib.checks import check_range
from ubtlib.clip import distributed
from ubtlib.clip.model import normalize, to_unit, tokenize
from ubtlib.clip.train import TrainConfig, batches, epoch_steps, optimize

# WordNet is not available offline; EDA's synonym replacement uses this table of the pocket
# captions' words instead (a word missing here is left as it is).
SYNONYMS = {
    "photo": ["picture", "image", "shot"],
    "picture": ["photo", "image"],
    "image": ["photo", "picture"],
    "small": ["little", "tiny"],
    "large": ["big", "huge"],
    "big": ["large"],
    "little": ["small"],
    "bright": ["light", "sunny"],
    "dark": ["dim", "shadowy"],
    "blurry": ["fuzzy", "unclear"],
    "good": ["nice", "fine"],
    "close-up": ["detailed"],
    "cropped": ["trimmed", "cut"],
    "look": ["see", "view"],
    "lying": ["resting"],
    "slightly": ["a bit", "somewhat"],
    "tilted": ["slanted", "angled"],
    "scene": ["picture", "view"],
    "background": ["backdrop"],
    "smiling": ["grinning", "happy"],
    "portrait": ["headshot", "photo"],
    "event": ["gathering"],
    "outside": ["outdoors"],
    "interview": ["conversation"],
    "premiere": ["opening", "launch"],
    "camera": ["lens"],
    "shirt": ["top"],
    "plain": ["simple"],
    "striped": ["lined"],
    "speckled": ["spotted", "dotted"],
    "gradient": ["fade"],
    "grey": ["gray"],
}
_STOP = {"a", "an", "the", "of", "on", "in", "at", "and", "to", "is", "my", "its", "this", "there"}


def eda(caption: str, rng: random.Random, alpha: float = 0.1) -> str:
    """One EDA-augmented sentence: one of the four operations, chosen at random, applied to
    max(1, alpha * words) words (synonym replacement, random insertion of a synonym, random
    swap, or deletion of each word with probability alpha)."""
    words = caption.split()
    if not words:
        return caption
    n = max(1, int(alpha * len(words)))
    op = rng.choice(("replace", "insert", "swap", "delete"))
    if op == "replace":
        options = [i for i, w in enumerate(words) if w.strip(".,!").lower() in SYNONYMS]
        for i in rng.sample(options, min(n, len(options))):
            words[i] = rng.choice(SYNONYMS[words[i].strip(".,!").lower()])
    elif op == "insert":
        options = [w.strip(".,!").lower() for w in words if w.strip(".,!").lower() in SYNONYMS]
        for _ in range(n if options else 0):
            words.insert(rng.randrange(len(words) + 1), rng.choice(SYNONYMS[rng.choice(options)]))
    elif op == "swap":
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    else:
        kept = [w for w in words if rng.random() > alpha]
        words = kept or [rng.choice(words)]
    return " ".join(words)


def synonym_tokens(tokenizer) -> torch.Tensor:
    """The tokens of every synonym EDA can put in. EDA only moves, drops and repeats a caption's
    words or puts in synonyms, and CLIP's BPE encodes each word alone, so with the caption's own
    tokens these are all the tokens an augmented caption can hold."""
    return tokenizer(sorted({s for words in SYNONYMS.values() for s in words}))


@dataclass(frozen=True)
class CleanCLIPConfig:
    clean_pairs: int = 5824  # the defender's clean subset (paper: 100K, 20 % of the 500K)
    epochs: float = 10.0  # paper: 10
    batch_size: int = 64  # paper: 64
    lr: float = 1e-3  # paper: 1e-5 (pocket learning rates are the paper's x 100)
    warmup_steps: int = 50  # paper: 50
    inmodal_weight: float = 1.0
    eda_alpha: float = 0.1

    def validate(self, n_pairs: int | None = None) -> None:
        check_range("clean_pairs", self.clean_pairs, 2, n_pairs or 1 << 40)
        check_range("epochs", self.epochs, 0.0, 1000.0)
        check_range("batch_size", self.batch_size, 2, 1 << 16)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("inmodal_weight", self.inmodal_weight, 0.0, 100.0)
        check_range("eda_alpha", self.eda_alpha, 0.0, 1.0)


def cleanclip_loss(fi, ft, fi_aug, ft_aug, scale, inmodal_weight: float = 1.0) -> torch.Tensor:
    """L_CLIP(fi, ft) + inmodal_weight * 1/2 [CE(fi vs fi_aug) + CE(ft vs ft_aug)], on
    normalised features, all logits at `scale` (the model's exp(logit_scale))."""
    target = torch.arange(len(fi), device=fi.device)
    clip = 0.5 * (F.cross_entropy(scale * fi @ ft.T, target) + F.cross_entropy(scale * ft @ fi.T, target))
    inmodal = 0.5 * (
        F.cross_entropy(scale * fi @ fi_aug.T, target) + F.cross_entropy(scale * ft @ ft_aug.T, target)
    )
    return clip + inmodal_weight * inmodal


def cleanclip(
    model,
    images: torch.Tensor,
    captions: list,
    tokenizer,
    cfg: CleanCLIPConfig,
    device,
    seed: int = 0,
    progress: bool = True,
) -> list:
    """Fine-tune `model` in place on clean (uint8 image, caption) pairs with CleanCLIP's loss.
    Under torchrun each rank trains on its share of every batch, and the loss gathers every
    rank's features (`distributed`)."""
    cfg.validate(len(images))
    ranks = distributed.current()
    rng = random.Random(seed)
    torch.manual_seed(seed)  # AutoAugment draws from torch's global generator
    augment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    tokens = tokenize(tokenizer, captions)
    steps = epoch_steps(cfg.epochs, len(images), cfg.batch_size)
    order = batches(len(images), cfg.batch_size, steps, torch.Generator().manual_seed(seed))

    def loss_step():
        idx = next(order)
        # AutoAugment draws one policy per call: call it per image so each gets its own. Every
        # rank augments the whole batch, so that both generators advance as in one process
        x_aug = distributed.shard(torch.stack([augment(img) for img in images[idx]]), ranks)
        t_aug = distributed.shard(
            tokenizer([eda(captions[i], rng, cfg.eda_alpha) for i in idx.tolist()]), ranks
        )
        idx = distributed.shard(idx, ranks)
        x, x_aug = to_unit(images[idx], device), to_unit(x_aug, device)
        t, t_aug = tokens[idx].to(device), t_aug.to(device)
        fi = model.encode_image(normalize(torch.cat([x, x_aug])), normalize=True)
        ft = model.encode_text(torch.cat([t, t_aug]), normalize=True)
        b = len(idx)
        fi, ft, fi_aug, ft_aug = (distributed.gather(f, ranks) for f in (fi[:b], ft[:b], fi[b:], ft[b:]))
        return cleanclip_loss(fi, ft, fi_aug, ft_aug, model.logit_scale.exp(), cfg.inmodal_weight)

    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=0.1,
        warmup_steps=cfg.warmup_steps,
        log_every=10,
    )
    per_step = min(cfg.batch_size, len(images))
    with distributed.averaged_gradients(model, ranks):
        return optimize(
            model,
            loss_step,
            steps,
            train_cfg,
            device,
            "CleanCLIP",
            progress and ranks.main,
            per_step,
            [tokens, synonym_tokens(tokenizer)],
        )
