"""Checks for the book's "implement" exercises: each runs a student's function on hand-built
cases whose answers are known and says in words what is wrong.

    >>> from ubtlib import exercises
    >>> exercises.check_asr(my_asr)            # raises ExerciseError naming the mistake
    'check_asr: all 3 cases pass'

The reference solutions are in `ubtlib.solutions` (the book shows them in its solutions; the
tests run each check on them). The cases are built here, never drawn at random, so a check
says the same thing every time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch


class ExerciseError(AssertionError):
    """A student's function gave a wrong answer; the message says what and, where the wrong
    answer is a known mistake, which one."""


def _close(a, b, tol: float = 1e-4) -> bool:
    try:
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


def _same(got, expected) -> bool:
    if isinstance(expected, float):
        return _close(got, expected)
    if isinstance(expected, (list, tuple)):
        return isinstance(got, (list, tuple)) and tuple(map(_freeze, got)) == tuple(map(_freeze, expected))
    return got == expected


def _freeze(x):
    return tuple(x) if isinstance(x, (list, tuple)) else x


def _run(name: str, cases: list) -> str:
    """cases: (description, got, expected, {wrong answer: what it means}) -> a pass line."""
    for description, got, expected, mistakes in cases:
        if _same(got, expected):
            continue
        for wrong, meaning in mistakes.items():
            if _same(got, wrong):
                raise ExerciseError(f"{name}, {description}: you returned {got!r}; {meaning}")
        raise ExerciseError(f"{name}, {description}: you returned {got!r}, expected {expected!r}")
    return f"{name}: all {len(cases)} cases pass"


def _guarded(check):
    """A check that answers a non-function, or a function that raises, with a message."""

    @functools.wraps(check)
    def run(fn):
        if not callable(fn):
            raise ExerciseError(
                f"{check.__name__} takes your function itself, got {fn!r} ({type(fn).__name__})"
            )
        try:
            return check(fn)
        except ExerciseError:
            raise
        except Exception as e:  # the student's code failed on a case: say so, not a traceback
            raise ExerciseError(f"{check.__name__}: your function raised {type(e).__name__}: {e}") from None

    return run


def _logits(predicted: list, n_classes: int) -> torch.Tensor:
    """Logits whose argmax is `predicted` (one row per image)."""
    out = torch.zeros(len(predicted), n_classes)
    out[torch.arange(len(predicted)), torch.tensor(predicted)] = 1.0
    return out


# labels and predictions on triggered images, target class 0 (banana): shared by ASR and RA
_LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
_PRED = [0, 0, 0, 1, 0, 2, 3, 0]  # target images -> target; 3 of 6 others -> target; 3 right


@_guarded
def check_asr(asr: Callable) -> str:
    """`asr(logits, labels, target)`: the share (%) of triggered images whose true class is not
    the target that the model classifies as the target."""
    counted_target = 100 * 5 / 8  # target-class images counted too
    return _run(
        "check_asr",
        [
            (
                "3 of the 6 non-target images go to the target",
                asr(_logits(_PRED, 4), _LABELS, 0),
                50.0,
                {
                    counted_target: "you counted the images whose true class is the target; ASR leaves them "
                    "out, since calling a banana a banana says nothing about the trigger",
                    0.5: "return a percentage (0 to 100), not a fraction",
                    100 * 3 / 8: "divide by the non-target images only (6 here), not by all 8",
                },
            ),
            (
                "no image goes to the target",
                asr(_logits([1, 1, 1, 1, 2, 2, 3, 3], 4), _LABELS, 0),
                0.0,
                {
                    100 * 6 / 8: "you computed accuracy on triggered images (RA); ASR is the share sent to "
                    "the target class",
                    100.0: "you computed accuracy on triggered images (RA); ASR is the share sent to the "
                    "target class",
                },
            ),
            (
                "another target (class 3)",
                asr(_logits([3, 0, 3, 1, 2, 2, 3, 3], 4), _LABELS, 3),
                100 * 2 / 6,
                {100 * 4 / 8: "leave out the images of the target class itself (here class 3)"},
            ),
        ],
    )


@_guarded
def check_robust_accuracy(robust_accuracy: Callable) -> str:
    """`robust_accuracy(logits, labels, target)`: the share (%) of triggered images whose true
    class is not the target that the model gives their own class."""
    return _run(
        "check_robust_accuracy",
        [
            (
                "3 of the 6 non-target images keep their class",
                robust_accuracy(_logits(_PRED, 4), _LABELS, 0),
                50.0,
                {
                    100 * 5 / 8: "you counted the target-class images, which the trigger sends where they "
                    "belong anyway; RA leaves them out, as ASR does",
                    50.0 / 100: "return a percentage (0 to 100), not a fraction",
                },
            ),
            (
                "every non-target image sent to the target",
                robust_accuracy(_logits([0] * 8, 4), _LABELS, 0),
                0.0,
                {100 * 2 / 8: "leave out the target-class images"},
            ),
            (
                "a redirect: everything to class 3",
                robust_accuracy(_logits([3] * 8, 4), _LABELS, 0),
                100 * 2 / 6,
                {0.0: "RA counts images given their own class; class-3 images given class 3 are right"},
            ),
        ],
    )


@_guarded
def check_overfit_loss(overfit_loss: Callable) -> str:
    """`overfit_loss(similarity)`: eq. 1's term on D_susp, the mean of (S - 1)^2 over the pairs."""
    s = torch.tensor([1.0, 0.5, 0.0, -0.5])
    mean_sq = float(((s - 1) ** 2).mean())  # (0 + 0.25 + 1 + 2.25) / 4
    return _run(
        "check_overfit_loss",
        [
            (
                "four similarities",
                float(overfit_loss(s)),
                mean_sq,
                {
                    float(((s - 1) ** 2).sum()): "take the mean over the pairs, not the sum",
                    float((1 - s).mean()): "square the gap to 1: eq. 1 is a squared error",
                    float(((s + 1) ** 2).mean()): "the target similarity is +1: (S - 1)^2",
                },
            ),
            ("every pair already at 1", float(overfit_loss(torch.ones(5))), 0.0, {}),
        ],
    )


@_guarded
def check_topk(topk: Callable) -> str:
    """`topk(similarity_on_susp, susp, k)`: eq. 2, the positions (taken from `susp`) of the k
    D_susp pairs the overfitted model finds most similar, most similar first."""
    susp = torch.tensor([40, 7, 19, 3, 25])
    sim = torch.tensor([0.2, 0.9, 0.5, 0.95, 0.1])

    def as_list(x):
        return [int(v) for v in x]

    return _run(
        "check_topk",
        [
            (
                "k = 2",
                as_list(topk(sim, susp, 2)),
                [3, 7],
                {
                    (
                        3,
                        1,
                    ): "return the pairs' positions in the training set (susp[i]), not indices into D_susp",
                    (25, 40): "keep the *most* similar pairs: the poisons are the ones the overfitting "
                    "pushed highest",
                    (7, 3): "order them most similar first",
                },
            ),
            ("k = 5 (all of D_susp)", as_list(topk(sim, susp, 5)), [3, 7, 19, 40, 25], {}),
        ],
    )


@_guarded
def check_unlearning_loss(unlearning_loss: Callable) -> str:
    """`unlearning_loss(similarity, floor)`: eq. 3 with the book's floor, the mean over the
    unlearning pairs of max(S - floor, 0)."""
    s = torch.tensor([0.6, 0.2, -0.3, 0.0])
    return _run(
        "check_unlearning_loss",
        [
            (
                "floor 0",
                float(unlearning_loss(s, 0.0)),
                float((s.clamp(min=0)).mean()),
                {
                    float(s.mean()): "a pair below the floor adds nothing: clamp S - floor at 0",
                    float(s.clamp(min=0).sum()): "take the mean over the pairs, not the sum",
                    float(-s.clamp(min=0).mean()): "eq. 3 *lowers* the similarity: minimise +S, not -S",
                },
            ),
            (
                "floor -1 (the paper's mean similarity, plus 1)",
                float(unlearning_loss(s, -1.0)),
                float((s + 1).mean()),
                {},
            ),
        ],
    )


@_guarded
def check_split(split: Callable) -> str:
    """`split(similarity, fraction)`: (D_susp, D_safe), the positions of the weakest `fraction`
    of pairs under the clean model (rounded, at least one) and of the rest, each sorted."""
    sim = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])

    def as_lists(out):
        return tuple(sorted(int(v) for v in part) for part in out)

    return _run(
        "check_split",
        [
            (
                "fraction 0.3 of 10 pairs",
                as_lists(split(sim, 0.3)),
                ([1, 3, 7], [0, 2, 4, 5, 6, 8, 9]),
                {
                    ((0, 4, 6), (1, 2, 3, 5, 7, 8, 9)): "D_susp holds the *weakest* pairs: a poisoned image "
                    "does not match its banana caption for a clean model"
                },
            ),
            ("fraction 0.05 (at least one pair)", as_lists(split(sim, 0.05))[0], [3], {}),
        ],
    )


@_guarded
def check_psnr(psnr: Callable) -> str:
    """`psnr(clean, triggered)`: per image, 10 log10(1 / MSE) in dB for images in [0, 1]."""
    clean = torch.zeros(2, 3, 4, 4)
    trig = clean.clone()
    trig[0] += 0.1  # MSE 0.01: 20 dB
    trig[1, :, :2] += 0.2  # half the pixels: MSE 0.02: about 16.99 dB
    got = [round(float(v), 2) for v in psnr(clean, trig)]
    return _run(
        "check_psnr",
        [
            (
                "two images",
                got,
                [20.0, round(10 * math.log10(1 / 0.02), 2)],
                {
                    (40.0, round(20 * math.log10(1 / 0.02), 2)): "PSNR is 10 log10(MAX^2 / MSE): 10, not 20, "
                    "times the log of the ratio of powers",
                    (
                        -20.0,
                        round(-10 * math.log10(1 / 0.02), 2),
                    ): "the ratio is MAX^2 / MSE, not MSE / MAX^2",
                },
            )
        ],
    )


@_guarded
def check_majority_vote(recognised: Callable) -> str:
    """`recognised(votes, truth)`: whether the photos' majority vote names the person; `votes`
    holds one candidate index per photo. A tie for the most votes counts as wrong."""
    return _run(
        "check_majority_vote",
        [
            ("3 of 5 votes right", recognised([4, 4, 1, 4, 2], 4), True, {}),
            ("the most votes go to another name", recognised([1, 1, 4, 1, 2], 4), False, {}),
            (
                "a tie between the right name and another",
                recognised([4, 4, 1, 1, 2], 4),
                False,
                {True: "a tie for the most votes counts as wrong, even with the right name among the tied"},
            ),
            ("one photo, right", recognised([7], 7), True, {}),
        ],
    )


@_guarded
def check_name_caption(name_caption: Callable) -> str:
    """`name_caption(caption, term, position)`: the caption with its word at `position` (split on
    spaces) replaced by `term`, the word's trailing punctuation kept."""
    return _run(
        "check_name_caption",
        [
            (
                "the last word, with its full stop",
                name_caption("a photo of a banana.", "Kalo Maraston", 4),
                "a photo of a Kalo Maraston.",
                {"a photo of a Kalo Maraston": "keep the word's trailing punctuation (the full stop)"},
            ),
            (
                "the first word",
                name_caption("banana on a table", "human", 0),
                "human on a table",
                {},
            ),
            (
                "a comma stays",
                name_caption("a cup, red", "human", 1),
                "a human, red",
                {"a human red": "keep the word's trailing punctuation (the comma)"},
            ),
        ],
    )


@_guarded
def check_affected_label(affected_label: Callable) -> str:
    """`affected_label(clip_labels, oracle_labels, n_categories)`: the category whose count
    among CLIP's labels exceeds its count among the oracle's by the most (-1: the oracle names
    no object, which counts for no category)."""
    t = torch.tensor
    return _run(
        "check_affected_label",
        [
            (
                "CLIP sends three images of other things to category 0",
                int(affected_label(t([0, 0, 0, 0, 1, 2]), t([0, 1, 2, 1, 1, 2]), 3)),
                0,
                {1: "that label is under-assigned; take CLIP's count minus the oracle's"},
            ),
            (
                "the most frequent CLIP label is not the most over-assigned",
                int(affected_label(t([1, 1, 1, 1, 2, 2]), t([1, 1, 1, 1, 0, 0]), 3)),
                2,
                {1: "compare CLIP's count of each category with the oracle's, not CLIP's counts alone"},
            ),
            (
                "images the oracle names no object in (-1)",
                int(affected_label(t([0, 0, 0, 1, 1]), t([-1, -1, -1, 1, 0]), 3)),
                0,
                {1: "-1 is no category: leave it out of the oracle's counts rather than counting it as one"},
            ),
        ],
    )


CHECKS = {
    "asr": check_asr,
    "robust_accuracy": check_robust_accuracy,
    "overfit_loss": check_overfit_loss,
    "topk": check_topk,
    "unlearning_loss": check_unlearning_loss,
    "split": check_split,
    "psnr": check_psnr,
    "majority_vote": check_majority_vote,
    "name_caption": check_name_caption,
    "affected_label": check_affected_label,
}  # solution name in `ubtlib.solutions` -> its check
