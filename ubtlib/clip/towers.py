"""Training one tower of a CLIP while the other stays fixed."""

from __future__ import annotations

import contextlib

import torch

TOWERS = ("both", "image")  # the towers a fine-tuning trains: both, or the image tower alone


@contextlib.contextmanager
def training_towers(model: torch.nn.Module, towers: str):
    """Within the block, only the parameters of `towers` train: with "image" every parameter
    outside `model.visual` is frozen (the text embeddings, so the zero-shot classifier, stay
    where they are), and unfrozen again on the way out, whatever happens inside."""
    if towers not in TOWERS:
        raise ValueError(f"towers={towers!r} is not accepted: choose one of {', '.join(map(repr, TOWERS))}")
    frozen = [
        p
        for n, p in model.named_parameters()
        if towers == "image" and not n.startswith("visual.") and p.requires_grad
    ]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
