"""The cached stages a chapter calls, in the order the data moves:

world -> pretrained -> (ssba trigger) -> poisoned_data -> poisoned -> ubt_detection / abl_losses
-> defended -> evaluated. Each stage computes its result or finds it in the cache (cache.py), so
a chapter run alone builds everything it depends on, and chapters run one after another share
the work.
Each stage's compute lives in its own module, so its cache key covers only the code it reaches.
"""

from ubtlib.pipeline.defending import DEFENSES, defended
from ubtlib.pipeline.evaluating import evaluated
from ubtlib.pipeline.isolation import abl_losses
from ubtlib.pipeline.poisoning import poisoned, poisoned_data, poisoned_key, trigger, with_attack
from ubtlib.pipeline.pretraining import Trained, pretrained
from ubtlib.pipeline.stega import ssba_trigger
from ubtlib.pipeline.ubt_runs import ubt_detection
from ubtlib.pipeline.worlds import world

__all__ = [
    "DEFENSES",
    "Trained",
    "abl_losses",
    "defended",
    "evaluated",
    "poisoned",
    "poisoned_data",
    "poisoned_key",
    "pretrained",
    "ssba_trigger",
    "trigger",
    "ubt_detection",
    "with_attack",
    "world",
]
