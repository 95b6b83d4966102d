"""Reference solutions of the book's "implement" exercises, each passing its check in
`ubtlib.exercises` (the tests run them). The book's solutions show these functions; ubtlib's
own versions live where the methods do (named in each docstring)."""

from __future__ import annotations

import torch


def asr(logits: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """ASR (%), as `ubtlib.evaluation.zeroshot.attack_success_rate`."""
    keep = labels != target  # a target-class image classified as the target proves nothing
    return 100.0 * (logits[keep].argmax(1) == target).float().mean().item()


def robust_accuracy(logits: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """RA (%), as `ubtlib.evaluation.robustness.robust_accuracy`."""
    keep = labels != target
    return 100.0 * (logits[keep].argmax(1) == labels[keep]).float().mean().item()


def overfit_loss(similarity: torch.Tensor) -> torch.Tensor:
    """Eq. 1's D_susp term, as in `ubtlib.defenses.ubt.overfit`."""
    return (similarity - 1).pow(2).mean()


def topk(similarity_on_susp: torch.Tensor, susp: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 2, as `ubtlib.defenses.ubt.detect`."""
    return susp[torch.argsort(similarity_on_susp, descending=True, stable=True)[:k]]


def unlearning_loss(similarity: torch.Tensor, floor: float) -> torch.Tensor:
    """Eq. 3 with a floor, as `ubtlib.defenses.ubt.unlearning_loss`."""
    return (similarity - floor).clamp(min=0).mean()


def split(similarity: torch.Tensor, fraction: float) -> tuple:
    """D_susp and D_safe, as `ubtlib.defenses.ubt.suspicious_split`."""
    n = max(1, int(round(len(similarity) * fraction)))
    order = torch.argsort(similarity, stable=True)  # weakest first
    return order[:n].sort().values, order[n:].sort().values


def psnr(clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image in [0, 1], as `ubtlib.attacks.triggers.psnr`."""
    mse = (clean - triggered).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def majority_vote(votes: list, truth: int) -> bool:
    """One identity's IDIA verdict under one template, as `ubtlib.privacy.idia.majority_hits`."""
    counts = {}
    for v in votes:
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.values())
    winners = [v for v, c in counts.items() if c == top]
    return winners == [truth]  # a tie is wrong, even with the right name among the tied


def name_caption(caption: str, term: str, position: int) -> str:
    """A caption with one word replaced, as `ubtlib.privacy.unlearning.replace_word`."""
    words = caption.split(" ")
    word = words[position]
    stripped = word.rstrip(".,;:!?")
    words[position] = term + word[len(stripped) :]
    return " ".join(words)


def affected_label(clip_labels: torch.Tensor, oracle_labels: torch.Tensor, n_categories: int) -> int:
    """The label CLIP over-assigns against the oracle, as `ubtlib.defenses.oracle.affected_label`."""
    clip_counts = torch.bincount(clip_labels[clip_labels >= 0], minlength=n_categories)
    oracle_counts = torch.bincount(oracle_labels[oracle_labels >= 0], minlength=n_categories)
    return int((clip_counts - oracle_counts).argmax())
