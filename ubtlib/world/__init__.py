"""The pocket world: procedurally drawn objects and people with captions, split for training,
zero-shot evaluation and the privacy chapters. Everything follows one seed."""

from ubtlib.world.pocket import CATEGORIES, TARGET_CLASS, Identity, World, WorldConfig, make_world

__all__ = ["CATEGORIES", "TARGET_CLASS", "Identity", "World", "WorldConfig", "make_world"]
