"""ubtlib: the library behind the UBT book.

Backdoors in CLIP-style contrastive learning, on a procedurally drawn pocket world or on real
weights and data: world -> pre-trained model -> (poisoned -> defended) -> metrics.
"""

import os

# Nothing is fetched from a model hub at run time: fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ubtlib import numerics  # noqa: E402

numerics.apply()  # before torch starts its kernel libraries (see numerics)

from ubtlib._compat import patch_torchvision  # noqa: E402

patch_torchvision()  # before anything imports open_clip (see _compat)

__version__ = "0.1.0"

# the public names a chapter or a user script reads as `from ubtlib import ...`
from ubtlib import pipeline  # noqa: E402
from ubtlib.book.chapter import Chapter, setup  # noqa: E402
from ubtlib.pipeline.profiles import PROFILES, Profile, configure  # noqa: E402

__all__ = ["PROFILES", "Chapter", "Profile", "configure", "pipeline", "setup"]
