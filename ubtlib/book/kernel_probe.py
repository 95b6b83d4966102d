"""One short pre-training in a process of its own, for `experiments.kernel_spread`.

The kernel settings are read when torch starts, so each setting needs a fresh process: the
caller sets the environment and runs ``python -m ubtlib.book.kernel_probe CONFIGS SEED EPOCHS
THREADS``, CONFIGS being a JSON object of the world, model and pre-training configs; this prints
one JSON line: the zero-shot top-1 after training, a digest of the weights, the kernels that ran
and the seconds. It takes the configs rather than a profile name so that its code (part of the
kernel spread's cache key) is the training code alone, not every stage a profile configures.
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
from ubtlib.clip.train import TrainConfig, train_clip
from ubtlib.evaluation.zeroshot import zero_shot
from ubtlib.pipeline.worlds import drawn_world
from ubtlib.world.pocket import WorldConfig


def probe(configs: dict, seed: int, epochs: float, threads: int) -> dict:
    """`epochs` of pre-training on `threads` threads; `configs` holds the "world", "model" and
    "pretrain" configs as dicts (`dataclasses.asdict`)."""
    torch.set_num_threads(threads)
    w = drawn_world(WorldConfig(**configs["world"]), progress=False)
    torch.manual_seed(seed)
    model, tokenizer = modellib.create(modellib.ModelConfig(**configs["model"]))
    idx = w.indices("train")
    cfg = dataclasses.replace(TrainConfig(**configs["pretrain"]), epochs=epochs)
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
    configs, seed, epochs, threads = (
        json.loads(sys.argv[1]),
        int(sys.argv[2]),
        float(sys.argv[3]),
        int(sys.argv[4]),
    )
    print(json.dumps(probe(configs, seed, epochs, threads)))
