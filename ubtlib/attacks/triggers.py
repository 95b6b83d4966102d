"""Backdoor triggers as batched tensor operations on the training device.

Every trigger maps a batch of [0, 1] images (B x 3 x H x W, on any device) to triggered images
of the same shape, inside the data path (train.train_clip's `image_hook`, evaluate's
`image_hook`); nothing poisoned is ever written to disk. Defaults follow the reference values in
the public implementations (CleanCLIP, BackdoorBench), scaled from 224 px to the image size:

* BadNet: a square patch at a random position (or the bottom-right corner): either one fixed
  black-and-white pattern drawn from the seed (the classic BadNet patch), or the per-channel
  image mean plus N(0, 1) noise drawn anew for every image (CleanCLIP's "random" patch).
* Blended: a fixed uniform-noise pattern mixed in with weight alpha (0.2).
* SIG: a horizontal sinusoid delta * sin(2 pi j f / W), added and clipped (delta 40/255, f 6).
* WaNet: a fixed smooth warping field from k x k random control points, strength s.
* SSBA-style: a sample-specific invisible additive residual from a small StegaStamp-like
  encoder that ubtlib trains (see ssba.py); the original uses a trained StegaStamp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ubtlib.checks import check_choice, check_range

ATTACKS = ("badnet", "blended", "sig", "wanet", "ssba")


@dataclass(frozen=True)
class AttackConfig:
    """Trigger parameters (sizes in pixels of the model's input image). The trigger's own
    randomness (Blended's pattern, WaNet's field, SSBA's secret) follows the profile's seed."""

    name: str = "badnet"  # one of ATTACKS
    # BadNet defaults: BackdoorBench's classic 32-px patch (fixed pattern, bottom-right corner);
    # CleanCLIP's per-image noise at a random position plants nothing in the pocket world
    badnet_size: int = 3  # patch side; CleanCLIP: 16 of 224 px
    badnet_position: str = "corner"  # corner (bottom-right) | random (per image)
    badnet_pattern: str = "fixed"  # fixed (one seeded pattern) | noise (CleanCLIP: per image)
    blended_alpha: float = 0.2
    sig_delta: float = 40 / 255  # amplitude on the [0, 1] scale
    sig_frequency: float = 6.0  # periods across the image width
    wanet_k: int = 4  # control points per side
    wanet_strength: float = 0.5
    ssba_bits: int = 16  # length of the secret the encoder hides
    ssba_epochs: float = 2.0  # training of the encoder / decoder pair
    ssba_psnr: float = 27.0  # each triggered image lies exactly this far (PSNR, dB) from its clean one
    ssba_noise: float = 0.1  # std of the pixel noise the decoder reads through while training, [0, 1] scale

    def validate(self, image_size: int) -> None:
        check_choice("attack", self.name, ATTACKS)
        check_choice("badnet_position", self.badnet_position, ("corner", "random"))
        check_choice("badnet_pattern", self.badnet_pattern, ("fixed", "noise"))
        check_range("badnet_size", self.badnet_size, 1, image_size)
        check_range("blended_alpha", self.blended_alpha, 0.0, 1.0)
        check_range("sig_delta", self.sig_delta, 0.0, 1.0)
        check_range("sig_frequency", self.sig_frequency, 0.0, image_size / 2)
        check_range("wanet_k", self.wanet_k, 2, image_size)
        check_range("wanet_strength", self.wanet_strength, 0.0, 10.0)
        check_range("ssba_bits", self.ssba_bits, 1, 256)
        check_range("ssba_epochs", self.ssba_epochs, 0.0, 1000.0)
        check_range("ssba_psnr", self.ssba_psnr, 10.0, 80.0)
        check_range("ssba_noise", self.ssba_noise, 0.0, 1.0)


class BadNet:
    def __init__(self, size: int, position: str = "random", pattern: str = "fixed", seed: int = 0):
        self.size, self.position, self.pattern = size, position, pattern
        g = torch.Generator().manual_seed(seed)
        self.fixed = (torch.rand(1, 3, size, size, generator=g) > 0.5).float()

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.size
        if self.pattern == "fixed":
            patch = self.fixed.to(x.device).expand(b, -1, -1, -1)
        else:  # CleanCLIP's patch: the image's per-channel mean plus unit Gaussian noise, per image
            noise = torch.randn(b, c, s, s, generator=generator, device="cpu").to(x.device)
            patch = (x.mean(dim=(2, 3), keepdim=True) + noise).clamp(0, 1)
        if self.position == "corner":
            top = torch.full((b,), h - s)
            left = torch.full((b,), w - s)
        else:
            top = torch.randint(0, h - s + 1, (b,), generator=generator)
            left = torch.randint(0, w - s + 1, (b,), generator=generator)
        # batched placement: out[b, :, top[b] + i, left[b] + j] = patch[b, :, i, j]
        rows = (top[:, None] + torch.arange(s))[:, :, None].to(x.device)  # B x s x 1
        cols = (left[:, None] + torch.arange(s))[:, None, :].to(x.device)  # B x 1 x s
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = x.clone()
        out.permute(0, 2, 3, 1)[batch, rows, cols] = patch.permute(0, 2, 3, 1)
        return out


class Blended:
    def __init__(self, image_size: int, alpha: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.pattern = torch.rand(1, 3, image_size, image_size, generator=g)
        self.alpha = alpha

    def __call__(self, x, generator=None):
        return (1 - self.alpha) * x + self.alpha * self.pattern.to(x.device)


class SIG:
    def __init__(self, image_size: int, delta: float, frequency: float):
        j = torch.arange(image_size, dtype=torch.float32)
        self.signal = (delta * torch.sin(2 * math.pi * j * frequency / image_size)).view(1, 1, 1, -1)

    def __call__(self, x, generator=None):
        return (x + self.signal.to(x.device)).clamp(0, 1)


class WaNet:
    """Warp with a fixed smooth field: k x k random offsets, upsampled bicubically."""

    def __init__(self, image_size: int, k: int, strength: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=image_size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, image_size)
        gy, gx = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((gx, gy), dim=-1)[None]
        self.grid = (identity + strength * noise / image_size).clamp(-1, 1)

    def __call__(self, x, generator=None):
        grid = self.grid.to(x.device).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def make_trigger(cfg: AttackConfig, image_size: int, seed: int, ssba_trigger=None):
    """The trigger callable for attack `cfg.name` (SSBA needs its trained encoder)."""
    cfg.validate(image_size)
    if cfg.name == "badnet":
        return BadNet(cfg.badnet_size, cfg.badnet_position, cfg.badnet_pattern, seed)
    if cfg.name == "blended":
        return Blended(image_size, cfg.blended_alpha, seed)
    if cfg.name == "sig":
        return SIG(image_size, cfg.sig_delta, cfg.sig_frequency)
    if cfg.name == "wanet":
        return WaNet(image_size, cfg.wanet_k, cfg.wanet_strength, seed)
    if ssba_trigger is None:
        raise ValueError("attack='ssba' needs its trained encoder: use pipeline.trigger(profile)")
    return ssba_trigger


def psnr(clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0, 1] images (inf where identical)."""
    mse = (clean - triggered).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def linf(clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
    """Per-image largest absolute pixel change, on the 0..255 scale."""
    return 255 * (clean - triggered).abs().flatten(1).max(1).values


# The knob that "strength" scales for each attack (SSBA scales its residual instead).
STRENGTH_KNOB = {
    "badnet": "badnet_size",
    "blended": "blended_alpha",
    "sig": "sig_delta",
    "wanet": "wanet_strength",
    "ssba": None,
}


def at_strength(cfg: AttackConfig, factor: float, image_size: int) -> AttackConfig:
    """`cfg` with its attack's main knob multiplied by `factor` (kept in its valid range)."""
    import dataclasses

    check_range("strength", factor, 0.0, 10.0)
    knob = STRENGTH_KNOB[cfg.name]
    if knob is None:
        return cfg
    value = getattr(cfg, knob) * factor
    if knob == "badnet_size":
        value = int(min(max(1, round(value)), image_size))
    elif knob in ("blended_alpha", "sig_delta"):
        value = min(value, 1.0)
    return dataclasses.replace(cfg, **{knob: value})
