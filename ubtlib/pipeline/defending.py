"""The defended model: one entry point for every defense the pocket chapters run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ubtlib.checks import check_choice
from ubtlib.pipeline.cleanclip_runs import cleanclip_defended
from ubtlib.pipeline.oracle_runs import oracle_defended
from ubtlib.pipeline.poisoning import with_attack
from ubtlib.pipeline.pretraining import Trained
from ubtlib.pipeline.ubt_runs import UBT_VARIANTS, ubt_defended

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile

# the one spelling of each defense, in the pocket chapters and the paper commands alike
# ("ubt_restore", the book's restoring variant of UBT, and "oracle", the oracle-guided defense
# of chapter 9, run in the pocket chapters only)
DEFENSES = ("cleanclip", *UBT_VARIANTS, "oracle")


def defended(
    profile: Profile, attack: str | None = None, defense: str = "ubt", progress: bool = True
) -> Trained:
    """The attacker's poisoned model after `defense` (cleanclip | ubt | ubt_no_token | ubt_restore |
    oracle).

    Cached like every stage; the record holds the defense's wall time (measured when it was
    computed), the pairs it touched and, for UBT, the split / detection / unlearning outputs.
    """
    check_choice("defense", defense, DEFENSES)
    if attack == "none":
        raise ValueError(
            f"defense={defense!r} needs a poisoned model, but attack='none' is the "
            "clean pre-trained model, which was never poisoned: choose one of "
            "'badnet', 'blended', 'sig', 'wanet', 'ssba'"
        )
    prof = with_attack(profile, attack)
    if prof.world is None or prof.poison is None or prof.finetune is None:
        raise ValueError(
            f"defense={defense!r} needs a poisoned model, but profile {prof.name!r} "
            "has no pocket world to poison (real data sets load by path)"
        )
    if defense == "oracle":
        return oracle_defended(prof, progress)
    cfg = prof.cleanclip if defense == "cleanclip" else prof.ubt
    cfg.validate(prof.world.n_train_pairs)  # bad k or fraction: fail before any compute
    if defense == "cleanclip":
        return cleanclip_defended(prof, progress)
    return ubt_defended(prof, defense, progress=progress)
