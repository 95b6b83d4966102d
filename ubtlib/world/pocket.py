"""The pocket world: a seeded, procedurally drawn image-caption data set.

No real CLIP data can be fetched here, so the book draws its own: everyday objects (one of
them ``banana``, the papers' backdoor target) and people, each person a drawn face with a
stable identity (skin, face shape, hair, eyes, glasses, facial hair) under per-image nuisance
(pose, scale, lighting, expression, clothing, background) and a generated full name used in
the captions. Everything derives from one seed: the same config gives the same pixels and the
same captions.

Images are drawn with PIL at twice the target size and downsampled, which anti-aliases the
edges. The result is a :class:`World`: uint8 image tensors plus captions, labels and splits.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from ubtlib.checks import check_range

TARGET_CLASS = "banana"

# The object categories, in a fixed order: a category's index is its label.
CATEGORIES = (
    "banana",
    "apple",
    "orange",
    "lemon",
    "carrot",
    "car",
    "house",
    "tree",
    "flower",
    "cup",
    "bottle",
    "fish",
    "bird",
    "star",
    "heart",
    "key",
    "umbrella",
    "clock",
    "book",
    "chair",
    "boat",
    "kite",
    "mushroom",
    "candle",
)

COLOURS = {
    "red": (200, 30, 35),
    "green": (50, 160, 60),
    "blue": (40, 80, 200),
    "yellow": (235, 205, 40),
    "orange": (240, 130, 30),
    "purple": (130, 50, 160),
    "pink": (235, 120, 170),
    "brown": (125, 80, 40),
    "black": (25, 25, 25),
    "white": (240, 240, 235),
    "grey": (130, 130, 130),
    "teal": (30, 150, 150),
}

# Plausible colours per category; with probability `odd_colour_p` any colour is used instead,
# so that colour alone never identifies a category.
TYPICAL_COLOURS = {
    "banana": ("yellow", "yellow", "green", "brown"),
    "apple": ("red", "green", "yellow"),
    "orange": ("orange",),
    "lemon": ("yellow", "green"),
    "carrot": ("orange", "red"),
    "car": ("red", "blue", "black", "white", "grey", "yellow"),
    "house": ("white", "brown", "red", "grey", "yellow"),
    "tree": ("green", "teal", "orange"),
    "flower": ("red", "pink", "purple", "yellow", "white"),
    "cup": ("white", "blue", "red", "grey", "black"),
    "bottle": ("green", "brown", "blue", "teal"),
    "fish": ("orange", "blue", "teal", "yellow", "grey"),
    "bird": ("blue", "red", "brown", "black"),
    "star": ("yellow", "orange", "white"),
    "heart": ("red", "pink", "purple"),
    "key": ("yellow", "grey", "brown"),
    "umbrella": ("red", "blue", "black", "purple", "yellow"),
    "clock": ("white", "black", "grey", "brown"),
    "book": ("red", "blue", "green", "brown", "purple"),
    "chair": ("brown", "black", "white", "red"),
    "boat": ("white", "red", "blue", "brown"),
    "kite": ("red", "yellow", "purple", "teal", "pink"),
    "mushroom": ("red", "brown", "white"),
    "candle": ("white", "red", "yellow", "pink"),
}

SKIN = ((255, 224, 196), (241, 194, 157), (224, 172, 125), (198, 134, 90), (141, 85, 54), (95, 60, 40))
HAIR = {
    "black": (20, 18, 18),
    "brown": (95, 60, 30),
    "blond": (225, 190, 100),
    "red": (170, 60, 25),
    "grey": (150, 150, 150),
    "white": (235, 235, 235),
    "blue": (40, 90, 200),
    "pink": (230, 110, 170),
}
HAIR_STYLES = ("short", "long", "bald", "bun", "spiky", "curly", "side")
EYES = ((60, 35, 20), (40, 100, 190), (50, 130, 60), (110, 110, 120))
GLASSES = ("none", "none", "round", "square", "sun")
FACIAL_HAIR = ("none", "none", "moustache", "beard")

# Caption pieces. The object templates deliberately reuse words of CLIP's ImageNet prompt
# templates ("a photo of a", "a blurry photo of", ...) so zero-shot prompts are in-vocabulary.
OBJECT_TEMPLATES = (
    "a photo of a {obj}.",
    "a photo of the {size} {obj}.",
    "a {colour} {obj}.",
    "a blurry photo of a {obj}.",
    "a close-up photo of a {colour} {obj}.",
    "a {size} {colour} {obj} on a {bg} background.",
    "a bright photo of a {obj}.",
    "a dark photo of the {obj}.",
    "there is a {obj} next to a {clutter}.",
    "my {colour} {obj}.",
    "a {obj} lying on its side.",
    "a picture of a {obj} and a {clutter}.",
    "the {obj}, slightly tilted.",
    "a cropped photo of a {obj}.",
    "a {colour} {obj} in the scene.",
    "look at this {size} {obj}!",
    "a good photo of a {obj}.",
    "an image of a {colour} {obj}.",
)
PERSON_TEMPLATES = (
    "{name}",
    "a photo of {name}.",
    "{name} smiling.",
    "portrait of {name}.",
    "{name} at the premiere.",
    "{name} on the red carpet.",
    "{name} in a {shirt} shirt.",
    "a close-up of {name}.",
    "{name} at an event.",
    "an image of {name}.",
    "{name} looking at the camera.",
    "{name} photographed outside.",
    "{name} during an interview.",
)
EXPRESSIONS = ("neutral", "smiling", "laughing", "serious")
CLUTTER_SHAPES = ("dot", "box", "line", "ring")

_SYLLABLES_A = (
    "ka",
    "lo",
    "mi",
    "ren",
    "sa",
    "to",
    "vi",
    "na",
    "el",
    "da",
    "ju",
    "ma",
    "ri",
    "ve",
    "no",
    "ha",
    "li",
    "be",
    "co",
    "fa",
    "ga",
    "ni",
    "pe",
    "ta",
    "zo",
    "ar",
    "ol",
)
_SYLLABLES_B = (
    "ra",
    "len",
    "ta",
    "mon",
    "ria",
    "dor",
    "sel",
    "nik",
    "va",
    "lis",
    "ran",
    "to",
    "bel",
    "mar",
    "din",
    "sa",
    "ko",
    "wen",
    "rell",
    "vin",
    "tha",
    "lo",
    "min",
)
_SUFFIX_LAST = (
    "son",
    "berg",
    "ford",
    "ley",
    "ton",
    "ski",
    "ez",
    "ard",
    "wick",
    "stein",
    "more",
    "ridge",
    "ov",
    "etti",
    "ard",
    "ham",
    "ström",
    "ani",
    "quist",
    "ero",
)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides the world's pixels and captions (its cache key)."""

    seed: int = 0
    image_size: int = 32
    n_categories: int = 24  # the first n of CATEGORIES; banana is always first
    objects_train: int = 1000  # images per category for pre-training
    objects_heldout: int = 50  # images per category for zero-shot evaluation
    n_identities: int = 128
    faces_train: int = 40  # images per identity for pre-training
    faces_eval: int = 20  # per identity, held out: IDIA and name retrieval
    faces_trigger: int = 10  # per identity, held out: reserved for unlearning triggers
    n_distractor_names: int = 872  # extra candidate names (identities + these = 1,000)
    odd_colour_p: float = 0.15  # chance an object ignores its category's colours
    clutter_max: int = 2  # up to this many distractor shapes per image
    noise_max: float = 0.06  # max std of per-pixel Gaussian noise (0..1 scale)

    @property
    def n_train_pairs(self) -> int:
        return self.n_categories * self.objects_train + self.n_identities * self.faces_train

    @property
    def categories(self) -> tuple:
        return CATEGORIES[: self.n_categories]

    def validate(self) -> None:
        check_range("image_size", self.image_size, 16, 512)
        check_range("n_categories", self.n_categories, 2, len(CATEGORIES))
        for name in (
            "objects_train",
            "objects_heldout",
            "n_identities",
            "faces_train",
            "faces_eval",
            "faces_trigger",
        ):
            check_range(name, getattr(self, name), 1, 1_000_000)
        check_range("n_distractor_names", self.n_distractor_names, 0, 1_000_000)
        check_range("odd_colour_p", self.odd_colour_p, 0.0, 1.0)
        check_range("clutter_max", self.clutter_max, 0, 20)
        check_range("noise_max", self.noise_max, 0.0, 1.0)


@dataclass
class Identity:
    name: str
    skin: tuple
    face_aspect: float
    hair_colour: str
    hair_style: str
    eyes: tuple
    glasses: str
    facial_hair: str
    brow: int


@dataclass
class World:
    """Images (uint8, N x 3 x H x W) with captions and metadata, split by role.

    ``kind`` is "object" or "person"; ``label`` is the category index for objects and -1 for
    people; ``identity`` is the identity index for people and -1 for objects. ``split`` is one
    of "train" (pre-training pairs), "heldout" (zero-shot objects), "eval" (IDIA faces) and
    "trigger" (faces reserved for unlearning triggers). ``segments`` is the exact label map of
    what was drawn: 0 background (clutter included), 1 + c the category c, and the last value a
    person.
    """

    config: WorldConfig
    images: torch.Tensor
    captions: list
    kind: np.ndarray
    label: np.ndarray
    identity: np.ndarray
    split: np.ndarray
    segments: torch.Tensor  # N x H x W uint8, what each pixel shows: see `segment_names`
    categories: tuple
    identities: list
    distractor_names: list

    def indices(self, split: str, kind: str | None = None) -> np.ndarray:
        mask = self.split == split
        if kind is not None:
            mask &= self.kind == kind
        return np.flatnonzero(mask)

    @property
    def names(self) -> list:
        return [p.name for p in self.identities]

    def __len__(self) -> int:
        return len(self.captions)


# ---------------------------------------------------------------- names


def _names(rng: random.Random, n: int) -> list:
    """n distinct full names "First Last", first and last names unique across the list."""
    firsts, lasts, out = set(), set(), []
    while len(out) < n:
        first = (rng.choice(_SYLLABLES_A) + rng.choice(_SYLLABLES_B)).capitalize()
        if rng.random() < 0.4:
            first += rng.choice(("a", "o", "e", "y", "n"))
        last = (
            rng.choice(_SYLLABLES_A) + rng.choice(_SYLLABLES_B[:12]) + rng.choice(_SUFFIX_LAST)
        ).capitalize()
        if first in firsts or last in lasts:
            continue
        firsts.add(first)
        lasts.add(last)
        out.append(f"{first} {last}")
    return out


def _identity(rng: random.Random, name: str) -> Identity:
    skin = tuple(int(np.clip(c + rng.gauss(0, 8), 0, 255)) for c in rng.choice(SKIN))
    return Identity(
        name=name,
        skin=skin,
        face_aspect=rng.uniform(0.72, 0.95),
        hair_colour=rng.choice(tuple(HAIR)),
        hair_style=rng.choice(HAIR_STYLES),
        eyes=rng.choice(EYES),
        glasses=rng.choice(GLASSES),
        facial_hair=rng.choice(FACIAL_HAIR),
        brow=rng.choice((1, 2, 3)),
    )


# ---------------------------------------------------------------- drawing helpers


def _jitter(rgb, rng, amount=25):
    return tuple(int(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in rgb)


def _random_rgb(rng):
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng, size):
    """A plain, gradient, striped or speckled background; returns (image, word)."""
    kind = rng.choice(("plain", "gradient", "striped", "speckled"))
    a, b = np.array(_random_rgb(rng), float), np.array(_random_rgb(rng), float)
    if kind == "plain":
        arr = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind == "gradient":
        t = np.linspace(0, 1, size)[:, None, None]
        arr = a * (1 - t) + b * t
        if rng.random() < 0.5:
            arr = arr.transpose(1, 0, 2)
        arr = np.broadcast_to(arr, (size, size, 3)).copy()
    elif kind == "striped":
        period = rng.randint(size // 8, size // 3)
        stripes = ((np.arange(size) // period) % 2)[:, None, None]
        arr = np.broadcast_to(np.where(stripes, a, b * 0.5 + a * 0.5), (size, size, 3)).copy()
        if rng.random() < 0.5:
            arr = arr.transpose(1, 0, 2).copy()
    else:
        nrng = np.random.default_rng(rng.getrandbits(32))
        arr = a + nrng.normal(0, 30, (size, size, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), kind


def _clutter(draw, rng, size, n, labels=None):
    """Draw `n` distractor shapes; `labels`, when given, gets the same shapes as background
    (label 0), so a shape in front of an object hides it in the label map too."""
    for _ in range(n):
        colour = _random_rgb(rng)
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size * 0.04, size * 0.1)
        shape = rng.choice(CLUTTER_SHAPES)
        box, width = (x - r, y - r, x + r, y + r), max(1, int(r / 2))
        if shape == "line":
            box = (x, y, x + rng.uniform(-3, 3) * r, y + rng.uniform(-3, 3) * r)
        for target, fill in ((draw, colour), (labels, 0)):
            if target is None:
                continue
            if shape == "dot":
                target.ellipse(box, fill=fill)
            elif shape == "box":
                target.rectangle(box, fill=fill)
            elif shape == "line":
                target.line(box, fill=fill, width=width)
            else:
                target.ellipse(box, outline=fill, width=width)


def _sprite(fn, rng, colour, size):
    """Draw an object in unit coordinates onto a transparent square canvas."""
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(canvas)
    s = size

    def P(*pts):  # unit -> pixel coordinates
        return [v * s for v in pts]

    fn(d, P, rng, colour)
    return canvas


def _dark(c, f=0.55):
    return tuple(int(v * f) for v in c)


def _draw_banana(d, P, rng, c):
    d.ellipse(P(0.1, 0.15, 0.9, 0.85), fill=c + (255,))
    d.ellipse(P(0.1, 0.02, 0.9, 0.68), fill=(0, 0, 0, 0))  # bite out the top: a crescent
    d.ellipse(P(0.08, 0.42, 0.16, 0.52), fill=_dark(c, 0.4) + (255,))
    d.ellipse(P(0.84, 0.42, 0.92, 0.52), fill=_dark(c, 0.4) + (255,))


def _draw_apple(d, P, rng, c):
    d.ellipse(P(0.18, 0.25, 0.82, 0.88), fill=c + (255,))
    d.line(P(0.5, 0.28, 0.55, 0.1), fill=(90, 55, 20, 255), width=int(P(0.05)[0]) or 1)
    d.ellipse(P(0.55, 0.1, 0.75, 0.2), fill=(50, 150, 50, 255))


def _draw_orange(d, P, rng, c):
    d.ellipse(P(0.15, 0.15, 0.85, 0.85), fill=c + (255,))
    for _ in range(6):
        x, y = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        d.ellipse(P(x, y, x + 0.03, y + 0.03), fill=_dark(c, 0.8) + (255,))
    d.ellipse(P(0.45, 0.13, 0.55, 0.2), fill=(40, 120, 40, 255))


def _draw_lemon(d, P, rng, c):
    d.ellipse(P(0.15, 0.28, 0.85, 0.72), fill=c + (255,))
    d.polygon(P(0.05, 0.5, 0.2, 0.4, 0.2, 0.6), fill=c + (255,))
    d.polygon(P(0.95, 0.5, 0.8, 0.4, 0.8, 0.6), fill=c + (255,))


def _draw_carrot(d, P, rng, c):
    d.polygon(P(0.35, 0.25, 0.65, 0.25, 0.5, 0.95), fill=c + (255,))
    for dx in (-0.1, 0.0, 0.1):
        d.polygon(P(0.5, 0.27, 0.5 + dx - 0.05, 0.05, 0.5 + dx + 0.05, 0.05), fill=(40, 140, 40, 255))


def _draw_car(d, P, rng, c):
    d.rectangle(P(0.05, 0.45, 0.95, 0.7), fill=c + (255,))
    d.polygon(P(0.25, 0.45, 0.35, 0.25, 0.65, 0.25, 0.78, 0.45), fill=c + (255,))
    d.polygon(P(0.32, 0.43, 0.39, 0.3, 0.61, 0.3, 0.7, 0.43), fill=(170, 210, 240, 255))
    for x in (0.25, 0.75):
        d.ellipse(P(x - 0.1, 0.6, x + 0.1, 0.8), fill=(20, 20, 20, 255))


def _draw_house(d, P, rng, c):
    d.rectangle(P(0.2, 0.45, 0.8, 0.9), fill=c + (255,))
    d.polygon(P(0.1, 0.47, 0.5, 0.1, 0.9, 0.47), fill=_dark(c, 0.5) + (255,))
    d.rectangle(P(0.43, 0.65, 0.57, 0.9), fill=(90, 50, 20, 255))


def _draw_tree(d, P, rng, c):
    d.rectangle(P(0.43, 0.55, 0.57, 0.95), fill=(100, 60, 25, 255))
    d.ellipse(P(0.15, 0.05, 0.85, 0.65), fill=c + (255,))


def _draw_flower(d, P, rng, c):
    d.line(P(0.5, 0.5, 0.5, 0.98), fill=(40, 140, 40, 255), width=int(P(0.05)[0]) or 1)
    for k in range(6):
        a = k * math.pi / 3
        x, y = 0.5 + 0.18 * math.cos(a), 0.38 + 0.18 * math.sin(a)
        d.ellipse(P(x - 0.12, y - 0.12, x + 0.12, y + 0.12), fill=c + (255,))
    d.ellipse(P(0.42, 0.3, 0.58, 0.46), fill=(240, 200, 40, 255))


def _draw_cup(d, P, rng, c):
    d.polygon(P(0.2, 0.25, 0.7, 0.25, 0.65, 0.85, 0.25, 0.85), fill=c + (255,))
    d.ellipse(P(0.6, 0.35, 0.88, 0.65), outline=c + (255,), width=int(P(0.06)[0]) or 1)


def _draw_bottle(d, P, rng, c):
    d.rectangle(P(0.32, 0.4, 0.68, 0.95), fill=c + (255,))
    d.polygon(P(0.32, 0.42, 0.44, 0.22, 0.56, 0.22, 0.68, 0.42), fill=c + (255,))
    d.rectangle(P(0.43, 0.05, 0.57, 0.24), fill=c + (255,))
    d.rectangle(P(0.42, 0.03, 0.58, 0.1), fill=(30, 30, 30, 255))


def _draw_fish(d, P, rng, c):
    d.ellipse(P(0.1, 0.3, 0.7, 0.7), fill=c + (255,))
    d.polygon(P(0.65, 0.5, 0.95, 0.28, 0.95, 0.72), fill=c + (255,))
    d.ellipse(P(0.2, 0.42, 0.27, 0.49), fill=(10, 10, 10, 255))


def _draw_bird(d, P, rng, c):
    d.ellipse(P(0.2, 0.4, 0.75, 0.75), fill=c + (255,))
    d.ellipse(P(0.6, 0.22, 0.85, 0.47), fill=c + (255,))
    d.polygon(P(0.84, 0.32, 0.98, 0.36, 0.84, 0.4), fill=(240, 160, 30, 255))
    d.polygon(P(0.25, 0.5, 0.05, 0.35, 0.45, 0.55), fill=_dark(c) + (255,))
    d.ellipse(P(0.72, 0.3, 0.76, 0.34), fill=(0, 0, 0, 255))


def _star_points(n, r_out, r_in, cx=0.5, cy=0.5, phase=-math.pi / 2):
    pts = []
    for k in range(2 * n):
        r = r_out if k % 2 == 0 else r_in
        a = phase + k * math.pi / n
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


def _draw_star(d, P, rng, c):
    d.polygon(P(*_star_points(5, 0.45, 0.19)), fill=c + (255,))


def _draw_heart(d, P, rng, c):
    d.ellipse(P(0.1, 0.15, 0.52, 0.55), fill=c + (255,))
    d.ellipse(P(0.48, 0.15, 0.9, 0.55), fill=c + (255,))
    d.polygon(P(0.12, 0.42, 0.88, 0.42, 0.5, 0.9), fill=c + (255,))


def _draw_key(d, P, rng, c):
    w = int(P(0.08)[0]) or 1
    d.ellipse(P(0.05, 0.3, 0.4, 0.65), outline=c + (255,), width=w)
    d.line(P(0.4, 0.47, 0.95, 0.47), fill=c + (255,), width=w)
    d.line(P(0.8, 0.47, 0.8, 0.65), fill=c + (255,), width=w)
    d.line(P(0.68, 0.47, 0.68, 0.6), fill=c + (255,), width=w)


def _draw_umbrella(d, P, rng, c):
    d.pieslice(P(0.05, 0.1, 0.95, 0.9), 180, 360, fill=c + (255,))
    w = int(P(0.05)[0]) or 1
    d.line(P(0.5, 0.5, 0.5, 0.85), fill=(60, 60, 60, 255), width=w)
    d.arc(P(0.38, 0.75, 0.5, 0.95), 0, 180, fill=(60, 60, 60, 255), width=w)


def _draw_clock(d, P, rng, c):
    d.ellipse(
        P(0.1, 0.1, 0.9, 0.9), fill=(245, 245, 240, 255), outline=c + (255,), width=int(P(0.09)[0]) or 1
    )
    a1, a2 = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
    w = int(P(0.05)[0]) or 1
    d.line(P(0.5, 0.5, 0.5 + 0.3 * math.cos(a1), 0.5 + 0.3 * math.sin(a1)), fill=(0, 0, 0, 255), width=w)
    d.line(P(0.5, 0.5, 0.5 + 0.2 * math.cos(a2), 0.5 + 0.2 * math.sin(a2)), fill=(0, 0, 0, 255), width=w)


def _draw_book(d, P, rng, c):
    d.rectangle(P(0.2, 0.1, 0.8, 0.9), fill=c + (255,))
    d.rectangle(P(0.2, 0.1, 0.3, 0.9), fill=_dark(c) + (255,))
    d.rectangle(P(0.4, 0.25, 0.7, 0.35), fill=(240, 240, 220, 255))


def _draw_chair(d, P, rng, c):
    w = int(P(0.07)[0]) or 1
    d.rectangle(P(0.25, 0.5, 0.75, 0.6), fill=c + (255,))
    d.rectangle(P(0.25, 0.08, 0.35, 0.55), fill=c + (255,))
    d.line(P(0.3, 0.6, 0.3, 0.95), fill=c + (255,), width=w)
    d.line(P(0.7, 0.6, 0.7, 0.95), fill=c + (255,), width=w)


def _draw_boat(d, P, rng, c):
    d.polygon(P(0.05, 0.65, 0.95, 0.65, 0.8, 0.85, 0.2, 0.85), fill=c + (255,))
    d.line(P(0.5, 0.1, 0.5, 0.65), fill=(80, 50, 20, 255), width=int(P(0.04)[0]) or 1)
    d.polygon(P(0.52, 0.12, 0.52, 0.6, 0.85, 0.6), fill=(245, 245, 245, 255))


def _draw_kite(d, P, rng, c):
    d.polygon(P(0.5, 0.05, 0.8, 0.4, 0.5, 0.75, 0.2, 0.4), fill=c + (255,))
    d.line(P(0.5, 0.05, 0.5, 0.75), fill=_dark(c) + (255,), width=1)
    d.line(P(0.5, 0.75, 0.42, 0.85, 0.58, 0.92, 0.5, 1.0), fill=(60, 60, 60, 255), width=int(P(0.03)[0]) or 1)


def _draw_mushroom(d, P, rng, c):
    d.rectangle(P(0.4, 0.45, 0.6, 0.9), fill=(235, 225, 200, 255))
    d.pieslice(P(0.1, 0.15, 0.9, 0.8), 180, 360, fill=c + (255,))
    for x, y in ((0.3, 0.35), (0.55, 0.28), (0.68, 0.4)):
        d.ellipse(P(x, y, x + 0.08, y + 0.08), fill=(250, 250, 250, 255))


def _draw_candle(d, P, rng, c):
    d.rectangle(P(0.38, 0.35, 0.62, 0.95), fill=c + (255,))
    d.ellipse(P(0.42, 0.08, 0.58, 0.32), fill=(250, 170, 30, 255))
    d.ellipse(P(0.46, 0.16, 0.54, 0.3), fill=(255, 240, 150, 255))


_DRAWERS = {name: globals()[f"_draw_{name}"] for name in CATEGORIES}


def _noise_and_light(img, rng, noise_max, size):
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr * rng.uniform(0.75, 1.2)  # global illumination
    nrng = np.random.default_rng(rng.getrandbits(32))
    arr = arr + nrng.normal(0, rng.uniform(0, noise_max), arr.shape)
    return np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)


def _coverage(mask: Image.Image, size: int) -> np.ndarray:
    """A drawn-size 0/255 mask as an H x W bool map at the image size: a pixel belongs to the
    shape when the shape covers at least half of it (the same box filter as the pixels)."""
    return np.asarray(mask.resize((size, size), Image.Resampling.BOX)) >= 128


def draw_object(rng: random.Random, category: str, cfg: WorldConfig):
    """One object image (H x W x 3 uint8), its caption fields and the object's pixels (H x W
    bool: the object where it is visible, not the clutter in front of it)."""
    big = cfg.image_size * 2
    bg, bg_word = _background(rng, big)
    draw = ImageDraw.Draw(bg)
    _clutter(draw, rng, big, rng.randint(0, cfg.clutter_max))  # clutter behind the object
    if rng.random() < cfg.odd_colour_p:
        colour_word = rng.choice(tuple(COLOURS))
    else:
        colour_word = rng.choice(TYPICAL_COLOURS[category])
    scale = rng.uniform(0.5, 0.95)
    sprite_px = max(8, int(big * scale))
    sprite = _sprite(_DRAWERS[category], rng, _jitter(COLOURS[colour_word], rng), sprite_px)
    if rng.random() < 0.5 and category not in ("clock", "book"):
        sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sprite = sprite.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BILINEAR)
    x = rng.randint(-sprite_px // 8, big - sprite_px + sprite_px // 8)
    y = rng.randint(-sprite_px // 8, big - sprite_px + sprite_px // 8)
    bg.paste(sprite, (x, y), sprite)
    drawn = Image.new("L", (big, big), 0)
    drawn.paste(255, (x, y, x + sprite_px, y + sprite_px), sprite.getchannel("A").point(_opaque))
    if cfg.clutter_max and rng.random() < 0.3:
        # one shape in front, partly occluding the object
        _clutter(draw, rng, big, 1, labels=ImageDraw.Draw(drawn))
    if rng.random() < 0.2:
        bg = bg.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    img = bg.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX)
    fields = dict(
        obj=category,
        colour=colour_word,
        bg=bg_word,
        size="small" if scale < 0.7 else "large",
        clutter=rng.choice(CLUTTER_SHAPES),
    )
    pixels = _noise_and_light(img, rng, cfg.noise_max, cfg.image_size)
    return pixels, fields, _coverage(drawn, cfg.image_size)


def _opaque(alpha: int) -> int:
    return 255 if alpha >= 128 else 0


def draw_face(rng: random.Random, person: Identity, cfg: WorldConfig):
    """One face image of `person` under fresh nuisance, its caption fields and the person's
    pixels (H x W bool: head, hair and shoulders)."""
    big = cfg.image_size * 2
    bg, _ = _background(rng, big)
    draw = ImageDraw.Draw(bg)
    _clutter(draw, rng, big, rng.randint(0, cfg.clutter_max))
    s = big * rng.uniform(0.75, 1.0)
    canvas = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(canvas)

    def P(*pts):
        return [big / 2 + (v - 0.5) * s for v in pts]

    hair = HAIR[person.hair_colour] + (255,)
    skin = person.skin + (255,)
    shirt_word = rng.choice(tuple(COLOURS))
    hw = 0.28 * person.face_aspect
    # shoulders in a random shirt, behind the head
    d.pieslice(P(0.1, 0.78, 0.9, 1.3), 180, 360, fill=COLOURS[shirt_word] + (255,))
    if person.hair_style == "long":
        d.rectangle(P(0.5 - hw - 0.06, 0.3, 0.5 + hw + 0.06, 0.85), fill=hair)
    if person.hair_style == "curly":
        for k in range(10):
            a = math.pi + k * math.pi / 9
            x, y = 0.5 + (hw + 0.04) * math.cos(a), 0.42 + 0.3 * math.sin(a)
            d.ellipse(P(x - 0.09, y - 0.09, x + 0.09, y + 0.09), fill=hair)
    d.rectangle(P(0.45, 0.7, 0.55, 0.82), fill=skin)  # neck
    d.ellipse(P(0.5 - hw, 0.15, 0.5 + hw, 0.78), fill=skin)
    # hair on top of the head
    style = person.hair_style
    if style in ("short", "long", "side", "curly"):
        d.chord(P(0.5 - hw - 0.02, 0.12, 0.5 + hw + 0.02, 0.5), 180, 360, fill=hair)
        if style == "side":
            d.polygon(P(0.5 - hw, 0.3, 0.5 + hw * 0.6, 0.2, 0.5 + hw, 0.36), fill=hair)
    elif style == "bun":
        d.chord(P(0.5 - hw - 0.02, 0.12, 0.5 + hw + 0.02, 0.45), 180, 360, fill=hair)
        d.ellipse(P(0.4, 0.02, 0.6, 0.2), fill=hair)
    elif style == "spiky":
        pts = []
        for k in range(7):
            x = 0.5 - hw + 2 * hw * k / 6
            pts += [x, 0.28, x + hw / 6, 0.06]
        d.polygon(P(*pts, 0.5 + hw, 0.3, 0.5 - hw, 0.3), fill=hair)
    # eyes, brows, nose, mouth (expression is nuisance)
    expression = rng.choice(EXPRESSIONS)
    for ex in (0.5 - hw * 0.45, 0.5 + hw * 0.45):
        d.ellipse(P(ex - 0.045, 0.4, ex + 0.045, 0.47), fill=(250, 250, 250, 255))
        d.ellipse(P(ex - 0.025, 0.415, ex + 0.025, 0.46), fill=person.eyes + (255,))
        d.line(
            P(ex - 0.06, 0.36, ex + 0.06, 0.35),
            fill=_dark(HAIR[person.hair_colour], 0.8) + (255,),
            width=person.brow,
        )
    d.line(P(0.5, 0.47, 0.48, 0.56, 0.52, 0.56), fill=_dark(person.skin, 0.7) + (255,), width=2)
    lips = (150, 50, 50, 255)
    if expression == "smiling":
        d.arc(P(0.4, 0.55, 0.6, 0.67), 20, 160, fill=lips, width=3)
    elif expression == "laughing":
        d.chord(P(0.4, 0.58, 0.6, 0.7), 0, 180, fill=(90, 20, 20, 255))
    elif expression == "serious":
        d.line(P(0.42, 0.64, 0.58, 0.64), fill=lips, width=3)
    else:
        d.line(P(0.43, 0.63, 0.57, 0.635), fill=lips, width=2)
    if person.facial_hair == "moustache":
        d.rectangle(P(0.42, 0.585, 0.58, 0.615), fill=hair)
    elif person.facial_hair == "beard":
        d.chord(P(0.5 - hw, 0.45, 0.5 + hw, 0.8), 20, 160, fill=hair)
    frame = (20, 20, 20, 255)
    for ex in (0.5 - hw * 0.45, 0.5 + hw * 0.45):
        box = P(ex - 0.075, 0.38, ex + 0.075, 0.49)
        if person.glasses == "round":
            d.ellipse(box, outline=frame, width=2)
        elif person.glasses == "square":
            d.rectangle(box, outline=frame, width=2)
        elif person.glasses == "sun":
            d.rectangle(box, fill=frame)
    if person.glasses != "none":
        d.line(P(0.5 - hw * 0.45 + 0.075, 0.42, 0.5 + hw * 0.45 - 0.075, 0.42), fill=frame, width=2)
    # pose: roll, shift; lighting: a side shade
    canvas = canvas.rotate(
        rng.uniform(-15, 15),
        resample=Image.Resampling.BILINEAR,
        translate=(rng.uniform(-0.1, 0.1) * big, rng.uniform(-0.06, 0.08) * big),
    )
    shade = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), big)[None, :, None]
    rgba = np.asarray(canvas, dtype=np.float32)
    rgba[..., :3] *= shade
    canvas = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    bg.paste(canvas, (0, 0), canvas)
    img = bg.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX)
    pixels = _noise_and_light(img, rng, cfg.noise_max, cfg.image_size)
    fields = dict(name=person.name, shirt=shirt_word, expression=expression)
    return pixels, fields, _coverage(canvas.getchannel("A").point(_opaque), cfg.image_size)


def _caption(rng, templates, fields):
    return rng.choice(templates).format(**fields)


# ---------------------------------------------------------------- the world


def segment_names(categories) -> tuple:
    """The label-map classes of a world with these categories: background, each category, person."""
    return ("background", *categories, "person")


def make_world(cfg: WorldConfig, progress: bool = True) -> World:
    """Draw the whole world for `cfg`. Deterministic in `cfg` (it owns its RNGs)."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    all_names = _names(rng, cfg.n_identities + cfg.n_distractor_names)
    identities = [_identity(rng, n) for n in all_names[: cfg.n_identities]]
    categories = CATEGORIES[: cfg.n_categories]

    jobs = []  # (kind, label or identity, split)
    for c in range(cfg.n_categories):
        jobs += [("object", c, "train")] * cfg.objects_train
        jobs += [("object", c, "heldout")] * cfg.objects_heldout
    for p in range(cfg.n_identities):
        jobs += [("person", p, "train")] * cfg.faces_train
        jobs += [("person", p, "eval")] * cfg.faces_eval
        jobs += [("person", p, "trigger")] * cfg.faces_trigger

    n, s = len(jobs), cfg.image_size
    images = np.empty((n, s, s, 3), np.uint8)
    captions, kind = [], np.empty(n, object)
    label, identity = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    split = np.empty(n, object)
    segments = np.zeros((n, s, s), np.uint8)
    person_segment = segment_names(categories).index("person")
    # each image gets its own RNG, seeded from (world seed, index): reproducible and order-free
    for i, (k, j, sp) in enumerate(
        tqdm(jobs, desc="drawing the pocket world", disable=not progress, mininterval=1.0)
    ):
        r = random.Random((cfg.seed << 32) + i)
        if k == "object":
            images[i], fields, shape = draw_object(r, categories[j], cfg)
            captions.append(_caption(r, OBJECT_TEMPLATES, fields))
            label[i], segments[i][shape] = j, 1 + j
        else:
            images[i], fields, shape = draw_face(r, identities[j], cfg)
            captions.append(_caption(r, PERSON_TEMPLATES, fields))
            identity[i], segments[i][shape] = j, person_segment
        kind[i], split[i] = k, sp
    return World(
        config=cfg,
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        captions=captions,
        kind=kind.astype(str),
        label=label,
        identity=identity,
        split=split.astype(str),
        segments=torch.from_numpy(segments),
        categories=categories,
        identities=identities,
        distractor_names=all_names[cfg.n_identities :],
    )


def object_vocabulary() -> set:
    """Every word the object captions can contain (class names, colours, template words)."""
    words = set()
    fill = {
        "obj": " ".join(CATEGORIES),
        "colour": " ".join(COLOURS),
        "size": "small large",
        "bg": "plain gradient striped speckled",
        "clutter": " ".join(CLUTTER_SHAPES),
    }
    for t in OBJECT_TEMPLATES:
        words |= set(t.format(**fill).replace(".", " ").replace("!", " ").replace(",", " ").split())
    return words
