"""The exercises' checks (ubtlib.exercises) pass the reference solutions and name common mistakes."""

import pytest
import torch

from ubtlib import exercises, solutions


@pytest.mark.parametrize("name", sorted(exercises.CHECKS))
def test_every_reference_solution_passes_its_check(name):
    assert exercises.CHECKS[name](getattr(solutions, name)).endswith("cases pass")


def test_every_solution_has_a_check():
    public = {n for n in dir(solutions) if not n.startswith("_") and callable(getattr(solutions, n))}
    assert public - {"annotations"} - set(exercises.CHECKS) <= {"torch"}


def counts_target_images(logits, labels, target):
    return 100.0 * (logits.argmax(1) == target).float().mean().item()


def accuracy_not_asr(logits, labels, target):
    keep = labels != target
    return 100.0 * (logits[keep].argmax(1) == labels[keep]).float().mean().item()


@pytest.mark.parametrize(
    "check, wrong, words",
    [
        (exercises.check_asr, counts_target_images, "you counted the images whose true class is the target"),
        (exercises.check_asr, lambda *a: solutions.asr(*a) / 100, "not a fraction"),
        (exercises.check_asr, accuracy_not_asr, "accuracy on triggered images"),
        (
            exercises.check_robust_accuracy,
            lambda logits, y, t: 100.0 * (logits.argmax(1) == y).float().mean().item(),
            "you counted the target-class images",
        ),
        (exercises.check_overfit_loss, lambda s: ((s - 1) ** 2).sum(), "mean over the pairs, not the sum"),
        (exercises.check_overfit_loss, lambda s: (1 - s).mean(), "square the gap"),
        (
            exercises.check_topk,
            lambda s, susp, k: torch.argsort(s, descending=True)[:k],
            "not indices into D_susp",
        ),
        (exercises.check_topk, lambda s, susp, k: susp[torch.argsort(s)[:k]], "keep the *most* similar"),
        (exercises.check_unlearning_loss, lambda s, f: s.mean(), "clamp S - floor at 0"),
        (exercises.check_split, lambda s, f: solutions.split(-s, f), "the *weakest* pairs"),
        (
            exercises.check_psnr,
            lambda c, t: 20 * torch.log10(1 / (c - t).pow(2).flatten(1).mean(1)),
            "10, not 20",
        ),
        (
            exercises.check_majority_vote,
            lambda v, t: max(set(v), key=v.count) == t or v.count(t) == max(map(v.count, v)),
            "a tie for the most votes counts as wrong",
        ),
        (
            exercises.check_name_caption,
            lambda c, term, p: " ".join(c.split(" ")[:p] + [term] + c.split(" ")[p + 1 :]).rstrip("."),
            "keep the word's trailing punctuation",
        ),
        (
            exercises.check_affected_label,
            lambda c, o, n: int(torch.bincount(c, minlength=n).argmax()),
            "not CLIP's counts alone",
        ),
        (
            exercises.check_affected_label,
            lambda c, o, n: int(
                (torch.bincount(c, minlength=n) - torch.bincount(o.clamp(min=0), minlength=n)).argmax()
            ),
            "leave it out of the oracle's counts",
        ),
    ],
)
def test_a_known_mistake_is_named(check, wrong, words):
    with pytest.raises(exercises.ExerciseError, match=words.replace("*", r"\*")):
        check(wrong)


def test_an_unknown_mistake_still_says_what_was_expected():
    with pytest.raises(exercises.ExerciseError, match="expected 50.0"):
        exercises.check_asr(lambda *a: 42.0)


def test_a_non_function_or_a_function_that_raises_gets_a_message():
    with pytest.raises(exercises.ExerciseError, match="takes your function itself, got 3"):
        exercises.check_asr(3)

    def broken(logits, labels, target):
        return logits[labels.nonexistent]

    with pytest.raises(exercises.ExerciseError, match="your function raised AttributeError"):
        exercises.check_asr(broken)
