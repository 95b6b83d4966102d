"""One short pre-training in a process of its own, for `experiments.kernel_spread`.

The kernel settings are read when torch starts, so each setting needs a fresh process: the
caller sets the environment and runs ``python -m ubtlib.book.kernel_probe PROFILE SEED EPOCHS
THREADS``; this prints one JSON line: the zero-shot top-1 after training, a digest of the
weights, the kernels that ran and the seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time

import torch

from ubtlib import numerics
from ubtlib.clip import model as modellib
from ubtlib.clip.train import train_clip
from ubtlib.evaluation.zeroshot import zero_shot
from ubtlib.pipeline.profiles import configure
from ubtlib.pipeline.worlds import world


def probe(profile_name: str, seed: int, epochs: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    profile = configure(profile_name)
    w = world(profile, progress=False)
    torch.manual_seed(seed)
    model, tokenizer = modellib.create(profile.model)
    idx = w.indices("train")
    cfg = dataclasses.replace(profile.pretrain, epochs=epochs)
    start = time.perf_counter()
    train_clip(
        model, w.images[idx], tokenizer([w.captions[i] for i in idx]), cfg, "cpu", seed, progress=False
    )
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for _, v in sorted(model.state_dict().items()):
        digest.update(v.detach().contiguous().numpy().tobytes())
    return {
        "top1": zero_shot(model, tokenizer, w, "cpu")["top1"],
        "weights": digest.hexdigest()[:16],
        "seconds": seconds,
        "pairs_per_second": len(idx) * epochs / seconds,
        **{k: v for k, v in numerics.settings().items() if k != "torch_imported_before_ubtlib"},
    }


if __name__ == "__main__":
    name, seed, epochs, threads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(probe(name, seed, epochs, threads)))
