"""The defenses: UBT (split, overfitting, top-k detection, token-level unlearning), CleanCLIP
and ABL's loss-guided isolation."""

from ubtlib.defenses.abl import ABLConfig
from ubtlib.defenses.cleanclip import CleanCLIPConfig, cleanclip
from ubtlib.defenses.ubt import UBTConfig, find_poison, run_ubt

__all__ = ["ABLConfig", "CleanCLIPConfig", "UBTConfig", "cleanclip", "find_poison", "run_ubt"]
