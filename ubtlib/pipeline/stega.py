"""The SSBA-style stage: the attacker's steganographic encoder / decoder pair."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from ubtlib.attacks.ssba import SSBATrigger, StegaDecoder, StegaEncoder, fixed_secret, train_stega
from ubtlib.checks import read_tensors
from ubtlib.clip import model as modellib
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.worlds import world

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


def ssba_trigger(profile: Profile, progress: bool = True) -> SSBATrigger:
    """The SSBA-style trigger: the encoder / decoder pair, trained on the world's training
    images under the profile's PSNR budget (cached), with the profile's secret."""
    cfg, device = profile.attack, modellib.pick_device(profile.device)
    w = world(profile, progress=progress)
    size = profile.model.image_size

    def compute(folder):
        enc, dec, log = train_stega(
            w.images[w.indices("train")],
            cfg.ssba_bits,
            cfg.ssba_epochs,
            cfg.ssba_psnr,
            device,
            seed=profile.seed,
            progress=progress,
            noise=cfg.ssba_noise,
        )
        save_file({k: v.cpu() for k, v in enc.state_dict().items()}, str(folder / "encoder.safetensors"))
        save_file({k: v.cpu() for k, v in dec.state_dict().items()}, str(folder / "decoder.safetensors"))
        write_json(folder / "log.json", log)

    def load(folder):
        enc = StegaEncoder(cfg.ssba_bits, size)
        dec = StegaDecoder(cfg.ssba_bits, size)
        enc.load_state_dict(read_tensors(folder / "encoder.safetensors"))
        dec.load_state_dict(read_tensors(folder / "decoder.safetensors"))
        return SSBATrigger(
            enc.eval(),
            fixed_secret(cfg.ssba_bits, profile.seed),
            cfg.ssba_psnr,
            dec.eval(),
            json.loads((folder / "log.json").read_text()),
        )

    return cached(
        "ssba",
        compute,
        load,
        world=profile.world,
        bits=cfg.ssba_bits,
        epochs=cfg.ssba_epochs,
        psnr=cfg.ssba_psnr,
        noise=cfg.ssba_noise,
        seed=profile.seed,
    )
