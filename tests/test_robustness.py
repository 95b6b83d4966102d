"""RA, the redirect and the verdict on hand-built logits whose answers are known."""

import pytest
import torch

from ubtlib.evaluation import robustness
from ubtlib.evaluation.zeroshot import attack_success_rate

CLASSES = ["apple", "banana", "clock", "cup"]
BANANA, CLOCK = 1, 2


def one_hot(pred):
    return torch.nn.functional.one_hot(torch.tensor(pred), len(CLASSES)).float()


# 8 images: two per class; the clean model gets all of them right
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
CLEAN = one_hot(LABELS.tolist())


def test_a_trigger_that_does_nothing_keeps_ra_at_the_clean_accuracy():
    assert robustness.robust_accuracy(CLEAN, LABELS, BANANA) == 100.0
    r = robustness.redirect(CLEAN, CLEAN, LABELS, BANANA, CLASSES)
    # each non-target class receives its own two images of six: a third, with or without the trigger
    assert r["redirect_share"] == pytest.approx(100 / 3) and r["redirect_clean_share"] == pytest.approx(
        100 / 3
    )


def test_a_backdoor_sends_everything_to_the_target():
    triggered = one_hot([BANANA] * 8)
    assert attack_success_rate(triggered, LABELS, BANANA) == 100.0
    assert robustness.robust_accuracy(triggered, LABELS, BANANA) == 0.0
    r = robustness.redirect(triggered, CLEAN, LABELS, BANANA, CLASSES)
    assert r == {"redirect_class": "banana", "redirect_share": 100.0, "redirect_clean_share": 0.0}


def test_a_trigger_redirected_to_a_second_class():
    # the banana images themselves are left out; every other triggered image goes to clock
    triggered = one_hot([CLOCK, CLOCK, BANANA, BANANA, CLOCK, CLOCK, CLOCK, CLOCK])
    assert attack_success_rate(triggered, LABELS, BANANA) == 0.0
    # only the clock images are right: 2 of the 6 non-target images
    assert robustness.robust_accuracy(triggered, LABELS, BANANA) == pytest.approx(100 / 3)
    r = robustness.redirect(triggered, CLEAN, LABELS, BANANA, CLASSES)
    assert r["redirect_class"] == "clock" and r["redirect_share"] == 100.0
    assert r["redirect_clean_share"] == pytest.approx(100 / 3)


def test_only_target_images_is_an_error():
    with pytest.raises(ValueError, match="not the target"):
        robustness.robust_accuracy(one_hot([1, 1]), torch.tensor([1, 1]), BANANA)


@pytest.mark.parametrize(
    "ca,asr,ra,planted,expected",
    [
        (62.0, 0.0, 58.0, True, "removed"),
        (62.0, 0.0, 10.8, True, "redirected"),
        (62.0, 5.0, 52.0, True, "removed"),  # both bounds are inclusive
        (62.0, 5.1, 60.0, True, "not removed"),
        (62.0, 99.0, 1.0, True, "not removed"),
        (62.0, 1.0, 61.0, False, "not planted"),
    ],
)
def test_verdict(ca, asr, ra, planted, expected):
    assert robustness.verdict(ca, asr, ra, planted) == expected


def test_verdict_sentence_names_the_redirect_and_its_clean_share():
    row = {"ca": 61.7, "asr": 0.0, "ra": 10.8, "redirect_class": "clock", "redirect_share": 38.1}
    text = robustness.verdict_sentence({**row, "redirect_clean_share": 5.2}, "banana")
    assert text.startswith("redirected") and "clock" in text and "38.1 %" in text and "5.2 %" in text
    text = robustness.verdict_sentence({**row, "ra": 58.0, "redirect_clean_share": 5.2}, "banana")
    assert text.startswith("removed")
    assert robustness.verdict_sentence({**row, "asr": 40.0, "redirect_clean_share": 0}, "banana").startswith(
        "not removed: ASR 40.0 % of triggered images still go to banana"
    )
