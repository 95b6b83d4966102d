"""Contrastive training of a CLIP on image-caption pairs held in memory.

One loop serves pre-training and every later fine-tuning stage: images travel as uint8 and
become [0, 1] floats on the training device, where an optional `image_hook` (a trigger, an
augmentation) acts on the whole batch before normalisation. bf16 autocast on CUDA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm

from ubtlib.checks import check_range
from ubtlib.clip.model import autocast, normalize, to_unit
from ubtlib.clip.vocabulary import Tokens, trained_rows


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 6.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    log_every: int = 10  # steps between points of the training curve

    def validate(self) -> None:
        check_range("epochs", self.epochs, 0.01, 10_000)
        check_range("batch_size", self.batch_size, 2, 1 << 16)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("warmup_steps", self.warmup_steps, 0, 1 << 30)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on gains, biases and the logit scale (as open_clip trains)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    # the fused kernel updates each group in one pass instead of a loop over its tensors: the
    # same update to float rounding, element-wise (so the same at any thread count), and a
    # faster step where the optimizer is a large part of it (benchmarks/throughput.py)
    device = next((p.device for p in decay + no_decay), torch.device("cpu"))
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=device.type in ("cpu", "cuda"),
    )


def warmup_cosine(opt, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to zero (torch's own schedulers, chained)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return cosine
    warm = torch.optim.lr_scheduler.LinearLR(opt, 1.0 / warmup_steps, 1.0, warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], [warmup_steps])


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` index batches over shuffled epochs of range(n), dropping ragged ends."""
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for b in range(min(per_epoch, steps - done)):
            yield order[b * batch_size : (b + 1) * batch_size]
        done += per_epoch


def optimize(
    model: torch.nn.Module,
    loss_step: Callable[[], torch.Tensor],
    steps: int,
    cfg: TrainConfig,
    device: torch.device,
    desc: str = "training",
    progress: bool = True,
    pairs_per_step: int = 0,
    vocabulary: Optional[Tokens] = None,
) -> list:
    """Run `steps` AdamW steps (warm-up + cosine) on the loss that `loss_step()` returns.

    The one training loop of the library: pre-training, poisoned fine-tuning and every defense
    call it with their own `loss_step`, which draws its batch and computes its loss. bf16
    autocast on CUDA; CLIP's temperature stays capped at 100. Given `vocabulary` (the token
    tensors of every caption the losses encode, when they are known in advance), the token
    embedding trains only those rows, which is the same update (`vocabulary.trained_rows`).
    Returns the training curve, a list of {"step", "loss", "lr", "seconds"} every
    `cfg.log_every` steps, with "pairs" (the pairs drawn so far) when the caller says how many a
    step draws.
    """
    model.train()
    curve, start, running = [], time.perf_counter(), []
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=2.0)
    with trained_rows(model, vocabulary) as rows:
        opt = adamw(model, cfg.lr, cfg.weight_decay)  # over the parameter trained_rows swapped in
        sched = warmup_cosine(opt, cfg.warmup_steps, steps)
        for step in bar:
            with autocast(device):
                loss = loss_step()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rows is not None:
                rows.stepped(opt)
            sched.step()
            if hasattr(model, "logit_scale"):
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
            running.append(loss.item())
            if step % cfg.log_every == 0 or step == steps:
                curve.append(
                    {
                        "step": step,
                        "loss": float(np.mean(running)),
                        "lr": opt.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - start,
                        **({"pairs": step * pairs_per_step} if pairs_per_step else {}),
                    }
                )
                bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
                running = []
    model.eval()
    return curve


def epoch_steps(epochs: float, n: int, batch_size: int) -> int:
    return max(1, int(math.ceil(epochs * n / min(batch_size, n))))


def clip_loss(model, x: torch.Tensor, tokens: torch.Tensor, loss_fn=None) -> torch.Tensor:
    """open_clip's contrastive loss for a batch of [0, 1] images and their tokens."""
    out = model(normalize(x), tokens)
    return (loss_fn or open_clip.ClipLoss())(out["image_features"], out["text_features"], out["logit_scale"])


def train_clip(
    model: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
    image_hook: Optional[Callable] = None,
    desc: str = "training",
    progress: bool = True,
) -> list:
    """Train `model` with open_clip's ClipLoss on (images[i], tokens[i]) pairs.

    images: uint8 N x 3 x H x W; tokens: long N x context. `image_hook(x, idx)` may alter the
    [0, 1] batch x (its rows are the pairs `idx`), e.g. to apply a trigger. The curve's points
    also count the pairs seen.
    """
    cfg.validate()
    n = len(images)
    steps = epoch_steps(cfg.epochs, n, cfg.batch_size)
    order = batches(n, cfg.batch_size, steps, torch.Generator().manual_seed(seed))
    loss_fn = open_clip.ClipLoss()

    def loss_step():
        idx = next(order)
        x = to_unit(images[idx], device)
        if image_hook is not None:
            x = image_hook(x, idx)
        return clip_loss(model, x, tokens[idx].to(device, non_blocking=True), loss_fn)

    return optimize(model, loss_step, steps, cfg, device, desc, progress, min(cfg.batch_size, n), tokens)
