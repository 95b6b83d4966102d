import dataclasses

import pytest
import torch

import ubtlib
from ubtlib.world.pocket import CATEGORIES, TARGET_CLASS, WorldConfig, make_world

TINY = WorldConfig(
    objects_train=3,
    objects_heldout=2,
    n_identities=5,
    faces_train=3,
    faces_eval=2,
    faces_trigger=1,
    n_distractor_names=7,
)


def test_same_seed_same_world():
    a, b = make_world(TINY, progress=False), make_world(TINY, progress=False)
    assert torch.equal(a.images, b.images)
    assert a.captions == b.captions
    assert a.names == b.names and a.distractor_names == b.distractor_names


def test_other_seed_other_world():
    a = make_world(TINY, progress=False)
    b = make_world(dataclasses.replace(TINY, seed=1), progress=False)
    assert not torch.equal(a.images, b.images)
    assert a.names != b.names


def test_shapes_splits_and_counts():
    w = make_world(TINY, progress=False)
    n_obj = TINY.n_categories * (TINY.objects_train + TINY.objects_heldout)
    n_faces = TINY.n_identities * (TINY.faces_train + TINY.faces_eval + TINY.faces_trigger)
    assert w.images.shape == (n_obj + n_faces, 3, 32, 32) and w.images.dtype == torch.uint8
    assert len(w.indices("heldout", "object")) == TINY.n_categories * TINY.objects_heldout
    assert len(w.indices("eval", "person")) == TINY.n_identities * TINY.faces_eval
    assert len(w.indices("trigger", "person")) == TINY.n_identities * TINY.faces_trigger
    # each face's identity name is in its caption; objects' captions name their category
    for i in w.indices("train", "person"):
        assert w.names[w.identity[i]] in w.captions[i]
    for i in w.indices("train", "object"):
        assert w.categories[w.label[i]] in w.captions[i]


def test_identities_are_stable_and_names_unique():
    w = make_world(TINY, progress=False)
    names = w.names + w.distractor_names
    assert len(set(names)) == len(names)
    firsts = [n.split()[0] for n in w.names]
    assert len(set(firsts)) == len(firsts)
    # the same identity's faces differ image to image (nuisance), but share identity features
    idx = w.indices("train", "person")[w.identity[w.indices("train", "person")] == 0]
    assert not torch.equal(w.images[idx[0]], w.images[idx[1]])


def test_pocket_world_is_big_enough():
    cfg = ubtlib.configure("pocket").world
    assert cfg.n_categories >= 20 and CATEGORIES[0] == TARGET_CLASS == "banana"
    assert cfg.n_identities >= 100
    assert cfg.faces_eval >= 20  # the IDIA votes over 20 images per identity


@pytest.mark.parametrize(
    "field,value", [("n_categories", 99), ("objects_train", 0), ("odd_colour_p", 1.5), ("image_size", 4)]
)
def test_bad_world_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        make_world(dataclasses.replace(TINY, **{field: value}), progress=False)


def test_label_map_is_what_was_drawn(monkeypatch):
    """On a black background without noise or light, the object's pixels are the lit ones."""
    import random

    import numpy as np
    from PIL import Image

    from ubtlib.world import pocket

    monkeypatch.setattr(pocket, "_background", lambda rng, size: (Image.new("RGB", (size, size)), "plain"))
    monkeypatch.setattr(pocket, "_noise_and_light", lambda img, rng, noise, size: np.asarray(img))
    cfg = dataclasses.replace(TINY, clutter_max=0)
    for i, category in enumerate(("banana", "house", "key", "umbrella")):
        pixels, _, shape = pocket.draw_object(random.Random(i), category, cfg)
        lit, bright = pixels.max(axis=2) > 0, pixels.max(axis=2) > 40
        assert shape.any() and (shape & ~lit).sum() == 0  # nothing labelled that was not drawn
        # what is left unlabelled is faint: edges the shape covers less than half, or blur
        assert (bright & ~shape).sum() <= 0.15 * bright.sum()


def test_clutter_in_front_is_background_in_the_label_map():
    import random

    import numpy as np
    from PIL import Image, ImageDraw

    from ubtlib.world import pocket

    image, labels = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    rng = random.Random(5)
    pocket._clutter(ImageDraw.Draw(image), rng, 64, 6, labels=ImageDraw.Draw(labels))
    again = Image.new("RGB", (64, 64))
    pocket._clutter(ImageDraw.Draw(again), random.Random(5), 64, 6)  # the labels take no draws
    assert np.array_equal(np.asarray(image), np.asarray(again))
    drawn = np.asarray(image).max(axis=2) > 0
    assert drawn.any() and np.array_equal(np.asarray(labels) == 0, drawn)


def test_world_label_maps():
    w = make_world(TINY, progress=False)
    from ubtlib.world.pocket import segment_names

    names = segment_names(w.categories)
    assert w.segments.shape == (len(w), 32, 32) and names[0] == "background" and names[-1] == "person"
    for i in range(len(w)):
        present = set(w.segments[i].unique().tolist()) - {0}
        expected = names.index("person") if w.kind[i] == "person" else 1 + w.label[i]
        assert present == {expected}, (i, present, expected)
