"""Contrastive training of a CLIP on image-caption pairs held in memory.

One loop serves pre-training and every later fine-tuning stage: images travel as uint8 and
become [0, 1] floats on the training device, where an optional `image_hook` (a trigger, an
augmentation) acts on the whole batch before normalisation. bf16 autocast on CUDA.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm

from .model import autocast, normalize, to_unit
from .checks import check_range


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 6.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    log_every: int = 10          # steps between points of the training curve

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
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


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
            yield order[b * batch_size:(b + 1) * batch_size]
        done += per_epoch


def train_clip(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
               cfg: TrainConfig, device: torch.device, seed: int = 0,
               image_hook: Optional[Callable] = None, desc: str = "training",
               progress: bool = True) -> list:
    """Train `model` with open_clip's ClipLoss on (images[i], tokens[i]) pairs.

    images: uint8 N x 3 x H x W; tokens: long N x context. `image_hook(x, idx)` may alter the
    [0, 1] batch x (its rows are the pairs `idx`). Returns the training curve: a list of
    {"step", "pairs", "loss", "lr", "seconds"} every `cfg.log_every` steps.
    """
    cfg.validate()
    n = len(images)
    steps = max(1, int(math.ceil(cfg.epochs * n / min(cfg.batch_size, n))))
    gen = torch.Generator().manual_seed(seed)
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, steps)
    loss_fn = open_clip.ClipLoss()
    model.train()
    curve, start, running = [], time.perf_counter(), []
    bar = tqdm(batches(n, cfg.batch_size, steps, gen), total=steps, desc=desc, disable=not progress,
               mininterval=2.0)
    for step, idx in enumerate(bar, 1):
        x = to_unit(images[idx], device)
        if image_hook is not None:
            x = image_hook(x, idx)
        t = tokens[idx].to(device, non_blocking=True)
        with autocast(device):
            out = model(normalize(x), t)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP's temperature is capped at 100
            model.logit_scale.clamp_(0, math.log(100))
        running.append(loss.item())
        if step % cfg.log_every == 0 or step == steps:
            curve.append({"step": step, "pairs": step * len(idx), "loss": float(np.mean(running)),
                          "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            running = []
    model.eval()
    return curve
