"""The attacks: five triggers applied as batched tensor operations on the training device, the
SSBA-style steganographic encoder, and the poisoned training pairs."""

from ubtlib.attacks.poison import PoisonConfig, PoisonedData, poison
from ubtlib.attacks.triggers import ATTACKS, AttackConfig, make_trigger

__all__ = ["ATTACKS", "AttackConfig", "PoisonConfig", "PoisonedData", "make_trigger", "poison"]
