"""ABL's isolation stage (Li et al., NeurIPS 2021), for the comparison of the UBT paper's Fig. 2.

Anti-Backdoor Learning observes that backdoor samples are learned faster than clean ones, so
early in training their loss is lower. It trains with local gradient ascent (LGA: the loss is
flipped whenever it falls below gamma, which holds clean samples near gamma while the
backdoor ones keep falling) and then isolates the lowest-loss samples. For CLIP the
per-sample loss is a pair's contrastive loss within its batch. Here the isolation training
starts from the clean pre-trained model on the poisoned data, like the attacker's
fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import open_clip
import torch
import torch.nn.functional as F

from ubtlib.checks import check_range
from ubtlib.clip.model import autocast, normalize, to_unit
from ubtlib.clip.train import TrainConfig, batches, clip_loss, epoch_steps, optimize


@dataclass(frozen=True)
class ABLConfig:
    epochs: float = 1.0  # isolation training on the poisoned data
    batch_size: int = 128
    lr: float = 1e-4
    gamma: float = 1.0  # LGA threshold on the batch's CLIP loss (ABL: 0.5 for CE)
    isolation_ratio: float = 0.01  # share of lowest-loss pairs isolated (ABL: 1 %)

    def validate(self) -> None:
        check_range("epochs", self.epochs, 0.0, 1000.0)
        check_range("batch_size", self.batch_size, 2, 1 << 16)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("gamma", self.gamma, 0.0, 100.0)
        if not 0 < self.isolation_ratio < 1:
            raise ValueError(
                f"isolation_ratio={self.isolation_ratio!r} is out of range: accepted 0 < isolation_ratio < 1"
            )


def lga_train(
    model,
    images,
    tokens,
    cfg: ABLConfig,
    device,
    image_hook: Optional[Callable] = None,
    seed: int = 0,
    progress: bool = True,
) -> list:
    """Train `model` in place with local gradient ascent: loss' = sign(loss - gamma) * loss."""
    cfg.validate()
    steps = epoch_steps(cfg.epochs, len(images), cfg.batch_size)
    order = batches(len(images), cfg.batch_size, steps, torch.Generator().manual_seed(seed))
    loss_fn = open_clip.ClipLoss()

    def loss_step():
        idx = next(order)
        x = to_unit(images[idx], device)
        if image_hook is not None:
            x = image_hook(x, idx)
        loss = clip_loss(model, x, tokens[idx].to(device), loss_fn)
        return torch.sign(loss - cfg.gamma) * loss

    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=0.1,
        warmup_steps=0,
        log_every=10,
    )
    per_step = min(cfg.batch_size, len(images))
    return optimize(
        model, loss_step, steps, train_cfg, device, "ABL: isolation training", progress, per_step, tokens
    )


@torch.no_grad()
def per_pair_loss(
    model, images, tokens, device, image_hook: Optional[Callable] = None, batch_size: int = 128, seed: int = 0
) -> torch.Tensor:
    """Each pair's contrastive loss (mean of its image->text and text->image cross-entropy)
    within a fixed random batch of `batch_size` pairs."""
    model.eval()
    n = len(images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n)
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        x = to_unit(images[idx], device)
        if image_hook is not None:
            x = image_hook(x, idx)
        with autocast(device):
            fi = model.encode_image(normalize(x), normalize=True).float()
            ft = model.encode_text(tokens[idx].to(device), normalize=True).float()
        logits = model.logit_scale.exp() * fi @ ft.T
        target = torch.arange(len(idx), device=logits.device)
        loss = 0.5 * (
            F.cross_entropy(logits, target, reduction="none")
            + F.cross_entropy(logits.T, target, reduction="none")
        )
        out[idx] = loss.cpu()
    return out


def isolate(losses: torch.Tensor, ratio: float) -> torch.Tensor:
    """Positions of the `ratio` share of pairs with the lowest loss."""
    k = max(1, int(round(len(losses) * ratio)))
    return torch.argsort(losses, stable=True)[:k]
