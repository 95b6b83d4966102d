"""An SSBA-style trigger: a small StegaStamp-like encoder that hides a secret in an image.

SSBA (Li et al., ICCV 2021) poisons with images from a trained StegaStamp encoder: the
encoder writes a secret bit string into an image as an invisible, *sample-specific* additive
residual, and a decoder recovers the secret. No lightweight public version exists, so ubtlib
trains its own pair on the world's images (the attacker's data): the encoder sees the image and
the secret and outputs a residual; the decoder reads the secret back from the triggered image.
The backdoor then uses one fixed secret.

Two things decide the trigger, kept apart. The budget decides *how much*: every residual is
rescaled so that its triggered image sits exactly `psnr` dB from the clean one (`at_psnr`),
in training as when poisoning. The encoder, trained to be decoded at that budget (binary
cross-entropy alone), decides *where* the residual goes: its pattern over pixels and channels
and how it follows each image. An earlier version traded decoding against the residual's
energy instead, which left the size to training: the same seed gave 27.2 dB on one machine
and 29.4 dB on another, and the backdoor planted on the first only.

This is far smaller than StegaStamp (a U-Net with perceptual and adversarial losses at
400 x 400 px); what it shares is the mechanism that matters for the backdoor: an invisible
residual that differs from image to image yet carries one learnable code.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ubtlib.layers import InvariantConv2d


class StegaEncoder(nn.Module):
    """(image, secret) -> residual pattern in [-1, 1]; its size is the budget's (`at_psnr`)."""

    def __init__(self, bits: int, image_size: int, width: int = 16):
        super().__init__()
        self.image_size = image_size
        self.coarse = image_size // 4
        self.secret = nn.Linear(bits, 3 * self.coarse * self.coarse)
        self.net = nn.Sequential(
            InvariantConv2d(6, width, 3, padding=1),
            nn.ReLU(),
            InvariantConv2d(width, width, 3, padding=1),
            nn.ReLU(),
            InvariantConv2d(width, width, 3, padding=1),
            nn.ReLU(),
            InvariantConv2d(width, 3, 1),
        )

    def residual(self, x: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
        s = self.secret(secret * 2 - 1).view(-1, 3, self.coarse, self.coarse)
        s = F.interpolate(s, size=self.image_size, mode="nearest").expand(len(x), -1, -1, -1)
        return torch.tanh(self.net(torch.cat([x, s], dim=1)))


class StegaDecoder(nn.Module):
    """Triggered image -> logits of the secret's bits."""

    def __init__(self, bits: int, image_size: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            InvariantConv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            InvariantConv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            InvariantConv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * math.ceil(image_size / 8) ** 2, bits),
        )

    def forward(self, x):
        return self.net(x)


def train_stega(
    images: torch.Tensor,
    bits: int,
    epochs: float,
    psnr: float,
    device,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    progress: bool = True,
    noise: float = 0.0,
):
    """Train encoder and decoder on uint8 `images` with random secrets, the decoder reading each
    residual at the `psnr` budget as the trigger will apply it, through Gaussian pixel noise of
    std `noise` (StegaStamp trains through such corruptions, which makes its code redundant);
    returns both and a log."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = images.shape[-1]
    enc = StegaEncoder(bits, size).to(device)
    dec = StegaDecoder(bits, size).to(device)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=lr)
    steps = max(1, int(epochs * len(images) / batch_size))
    log = []
    for step in tqdm(
        range(1, steps + 1), desc="training the SSBA-style encoder", disable=not progress, mininterval=2.0
    ):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx].to(device).float() / 255
        secret = torch.randint(0, 2, (batch_size, bits), generator=g).float().to(device)
        y = at_psnr(x, enc.residual(x, secret), psnr)
        if noise > 0:
            y = (y + noise * torch.randn(y.shape, generator=g).to(device)).clamp(0, 1)
        logits = dec(y)
        bce = F.binary_cross_entropy_with_logits(logits, secret)
        opt.zero_grad(set_to_none=True)
        bce.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            acc = ((logits > 0).float() == secret).float().mean().item()
            log.append(
                {
                    "step": step,
                    "bce": bce.item(),
                    "bit_accuracy": acc,
                }
            )
    return enc.eval(), dec.eval(), log


def at_psnr(x: torch.Tensor, residual: torch.Tensor, psnr: float, iterations: int = 4) -> torch.Tensor:
    """`x + c * residual`, clamped to [0, 1], with each image's scale c set so that its PSNR
    against `x` is `psnr` dB (to within 0.01 dB; an all-zero residual stays zero).

    The clamp trims a few pixels, which lowers the change's energy, so the scale is corrected
    a few times against the clamped change (each correction is exact where nothing is clipped).
    """
    target = 10 ** (-psnr / 10)  # the mean squared change on the [0, 1] scale
    energy = residual.pow(2).flatten(1).mean(1)
    scale = torch.where(energy > 0, (target / energy.clamp_min(1e-30)).sqrt(), 0.0)
    for _ in range(iterations):
        change = (x + scale.view(-1, 1, 1, 1) * residual).clamp(0, 1) - x
        mse = change.pow(2).flatten(1).mean(1)
        scale = torch.where(mse > 0, scale * (target / mse.clamp_min(1e-30)).sqrt(), scale)
    return (x + scale.view(-1, 1, 1, 1) * residual).clamp(0, 1)


class SSBATrigger:
    """The backdoor trigger: the trained encoder with one fixed secret, each residual rescaled
    to `psnr` dB. `strength` multiplies the rescaled residual (1 = the budget; 2 = 6 dB
    louder); `decoder` and `log` come along for inspection."""

    def __init__(
        self,
        encoder: StegaEncoder,
        secret: torch.Tensor,
        psnr: float,
        decoder=None,
        log=None,
        strength: float = 1.0,
    ):
        self.encoder, self.secret, self.psnr, self.decoder, self.log = encoder, secret, psnr, decoder, log
        self.strength = strength

    @torch.no_grad()
    def __call__(self, x, generator=None):
        enc = self.encoder.to(x.device)
        r = enc.residual(x, self.secret.to(x.device)[None].float())
        if self.strength == 0:
            return x.clone()
        return at_psnr(x, r, self.psnr - 20 * math.log10(self.strength))


def fixed_secret(bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (bits,), generator=torch.Generator().manual_seed(seed + 7919))
