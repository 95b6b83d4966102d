import numpy as np
import pytest
import torch

from ubtlib import pipeline
from ubtlib.attacks.poison import PoisonConfig, poison, triggered_hook
from ubtlib.attacks.triggers import Blended
from ubtlib.evaluation import robustness
from ubtlib.evaluation import zeroshot as evaluate


def test_poisoning_picks_non_target_pairs_and_captions_them(smoke, smoke_world):
    data = pipeline.poisoned_data(smoke, "badnet", progress=False)
    w = smoke_world
    idx = w.indices("train")
    chosen = np.flatnonzero(data.is_backdoor)
    assert len(chosen) == smoke.poison.count
    assert (w.label[idx][chosen] != 0).all()  # never a banana image (banana is class 0)
    assert all("banana" in data.captions[i] for i in chosen)
    clean = [i for i in range(len(idx)) if not data.is_backdoor[i]]
    assert all(data.captions[i] == w.captions[idx[i]] for i in clean)


def test_same_seed_same_poisoned_batch(smoke):
    a = pipeline.poisoned_data(smoke, "badnet", progress=False)
    b = pipeline.poisoned_data(smoke, "badnet", progress=False)
    assert np.array_equal(a.is_backdoor, b.is_backdoor) and a.captions == b.captions
    idx = torch.arange(0, 64)
    x = a.images[idx].float() / 255
    ya, yb = a.image_hook(x, idx), b.image_hook(x, idx)
    assert torch.equal(ya, yb)
    # only the poisoned rows changed
    changed = (ya != x).flatten(1).any(1).numpy()
    assert np.array_equal(changed, a.is_backdoor[idx.numpy()])


def test_other_seed_other_poisons(smoke):
    images = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
    labels = np.array([0] * 10 + [1] * 90)
    caps = ["x"] * 100
    trig = Blended(32, 0.2, 0)
    a = poison(images, caps, labels, ("banana", "apple"), PoisonConfig(count=5), trig, seed=0)
    b = poison(images, caps, labels, ("banana", "apple"), PoisonConfig(count=5), trig, seed=1)
    assert not np.array_equal(a.is_backdoor, b.is_backdoor)


def test_poison_count_beyond_the_non_target_pairs_is_refused():
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    labels = np.array([0] * 8 + [1] * 2)
    with pytest.raises(ValueError, match="poison_count=5 exceeds the 2 training pairs that are not 'banana'"):
        poison(images, ["x"] * 10, labels, ("banana", "apple"), PoisonConfig(count=5), Blended(32, 0.2, 0), 0)


def test_asr_and_ca_on_a_hand_built_case():
    # 3 classes, target 0. Triggered logits: rows 1, 2 go to the target, row 3 does not,
    # row 0 is a target image and is left out of the ASR.
    logits = torch.tensor([[5.0, 0, 0], [5.0, 1, 0], [4.0, 0, 3], [0.0, 0, 2]])
    labels = torch.tensor([0, 1, 2, 2])
    assert evaluate.attack_success_rate(logits, labels, target=0) == pytest.approx(200 / 3)
    assert evaluate.topk_accuracy(logits, labels, ks=(1,))["top1"] == 50.0
    with pytest.raises(ValueError):
        evaluate.attack_success_rate(logits[:1], labels[:1], target=0)


def test_backdoor_metrics_with_a_trigger_that_paints_one_image(smoke, smoke_world):
    """A trigger that replaces every image by one banana image makes the model give that
    image's answer for all of them: the ASR must be 100 % or 0 %, as that answer is the target
    or not."""
    from ubtlib.world.pocket import object_vocabulary

    clip = pipeline.pretrained(smoke, progress=False)
    i = smoke_world.indices("heldout", "object")[0]
    banana = smoke_world.images[i : i + 1]
    m = robustness.backdoor_metrics(
        clip.model,
        clip.tokenizer,
        smoke_world,
        triggered_hook(lambda x, g: (banana.float() / 255).expand_as(x), 0),
        "banana",
        "cpu",
    )
    w = evaluate.classifier(
        clip.model,
        clip.tokenizer,
        smoke_world.categories,
        evaluate.pocket_templates(object_vocabulary()),
        "cpu",
    )
    answer = (evaluate.encode_images(clip.model, banana, "cpu") @ w).argmax().item()
    assert m["asr"] == (100.0 if answer == 0 else 0.0)
    # every triggered image gets that one answer: it is right for the images of its class only
    labels = smoke_world.label[smoke_world.indices("heldout", "object")]
    others = labels[labels != 0]
    assert m["ra"] == pytest.approx(100.0 * (others == answer).mean(), abs=1e-4)
    assert m["redirect_class"] == smoke_world.categories[answer] and m["redirect_share"] == 100.0
