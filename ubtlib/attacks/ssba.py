"""An SSBA-style trigger: a small StegaStamp-like encoder that hides a secret in an image.

SSBA (Li et al., ICCV 2021) poisons with images from a trained StegaStamp encoder: the
encoder writes a secret bit string into an image as an invisible, *sample-specific* additive
residual, and a decoder recovers the secret. No lightweight public version exists, so ubtlib
trains its own pair on the world's images (the attacker's data): the encoder sees the image and
the secret and outputs a bounded residual; the decoder reads the secret back from the
triggered image. The loss trades decoding (binary cross-entropy) against the residual's
energy, and the residual is bounded per pixel (pocket default 0.1, about 25/255), so it stays
invisible (PSNR about 27 dB on pocket images). The backdoor then uses one fixed secret.

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


class StegaEncoder(nn.Module):
    """(image, secret) -> residual, bounded by `max_residual` on the [0, 1] scale."""

    def __init__(self, bits: int, image_size: int, width: int = 16, max_residual: float = 10 / 255):
        super().__init__()
        self.image_size, self.max_residual = image_size, max_residual
        self.coarse = image_size // 4
        self.secret = nn.Linear(bits, 3 * self.coarse * self.coarse)
        self.net = nn.Sequential(
            nn.Conv2d(6, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 1),
        )

    def residual(self, x: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
        s = self.secret(secret * 2 - 1).view(-1, 3, self.coarse, self.coarse)
        s = F.interpolate(s, size=self.image_size, mode="nearest").expand(len(x), -1, -1, -1)
        return self.max_residual * torch.tanh(self.net(torch.cat([x, s], dim=1)))

    def forward(self, x: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
        return (x + self.residual(x, secret)).clamp(0, 1)


class StegaDecoder(nn.Module):
    """Triggered image -> logits of the secret's bits."""

    def __init__(self, bits: int, image_size: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
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
    invisibility: float,
    device,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    progress: bool = True,
    max_residual: float = 10 / 255,
):
    """Train encoder and decoder on uint8 `images` with random secrets; returns both and a log."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = images.shape[-1]
    enc = StegaEncoder(bits, size, max_residual=max_residual).to(device)
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
        r = enc.residual(x, secret)
        logits = dec((x + r).clamp(0, 1))
        bce = F.binary_cross_entropy_with_logits(logits, secret)
        energy = r.pow(2).mean()
        # as StegaStamp: learn to decode first, then ramp the invisibility term in over the
        # second half (with it on from the start the residual collapses to zero)
        ramp = min(1.0, max(0.0, 2 * step / steps - 1))
        loss = bce + ramp * invisibility * energy
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            acc = ((logits > 0).float() == secret).float().mean().item()
            log.append(
                {
                    "step": step,
                    "bce": bce.item(),
                    "bit_accuracy": acc,
                    "psnr": (10 * torch.log10(1 / energy.clamp_min(1e-12))).item(),
                }
            )
    return enc.eval(), dec.eval(), log


class SSBATrigger:
    """The backdoor trigger: the trained encoder with one fixed secret. `strength` scales the
    residual (1 = as trained); `decoder` and `log` come along for inspection."""

    def __init__(
        self, encoder: StegaEncoder, secret: torch.Tensor, decoder=None, log=None, strength: float = 1.0
    ):
        self.encoder, self.secret, self.decoder, self.log = encoder, secret, decoder, log
        self.strength = strength

    @torch.no_grad()
    def __call__(self, x, generator=None):
        enc = self.encoder.to(x.device)
        r = enc.residual(x, self.secret.to(x.device)[None].float())
        return (x + self.strength * r).clamp(0, 1)


def fixed_secret(bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (bits,), generator=torch.Generator().manual_seed(seed + 7919))
