"""The learned oracle of the oracle-guided defense: a small segmentation network trained on
clean images and their label maps, and what is read off a label map (an image's object,
whether a category shows, the agreement of two labellings).

Its own module, so that the oracle's cache key is that of this code alone: a change to the
defense's algorithms (`defenses.oracle`) does not retrain it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ubtlib.checks import check_range
from ubtlib.clip.model import to_unit
from ubtlib.clip.train import TrainConfig, epoch_steps, optimize


@dataclass(frozen=True)
class SegmenterConfig:
    """The learned oracle: a small fully convolutional net trained on clean images and maps."""

    width: int = 16  # channels at full resolution (twice as many at half, four times at a quarter)
    images: int = 8000  # clean training images (and their label maps) it learns from
    epochs: float = 12.0
    lr: float = 5e-3
    batch_size: int = 32
    # the loss weight of background pixels (the others weigh 1): background covers most of
    # every image, and at full weight the net learns to call everything background first
    background_weight: float = 0.2

    def validate(self, n_images: int | None = None) -> None:
        check_range("width", self.width, 4, 512)
        check_range("images", self.images, 1, n_images if n_images is not None else 1 << 30)
        check_range("epochs", self.epochs, 0.01, 1000)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("batch_size", self.batch_size, 2, 1 << 16)
        check_range("background_weight", self.background_weight, 0.0, 1.0)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=1e-4, warmup_steps=20
        )


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Segmenter(nn.Module):
    """A small U-Net: two stride-2 stages (the second with dilated residual convolutions and a
    global-pool context, since one object fills a pocket image), each upsampled and joined with
    the stage above it (a skip) before the per-pixel head. Takes [0, 1] images; returns
    N x classes x H x W logits."""

    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.down1 = _block(3, w)  # full resolution
        self.down2 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))  # half
        self.down3 = _block(2 * w, 4 * w, stride=2)  # a quarter
        self.context = nn.ModuleList([_block(4 * w, 4 * w, dilation=d) for d in (1, 2)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * w, 4 * w, 1), nn.ReLU(inplace=True))
        self.up2 = _block(6 * w, 2 * w)
        self.up1 = _block(3 * w, w)
        self.head = nn.Conv2d(w, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.down1(x - 0.5)
        s2 = self.down2(s1)
        h = self.down3(s2)
        for layer in self.context:
            h = h + layer(h)
        h = h + self.pool(h)
        h = self.up2(torch.cat([F.interpolate(h, size=s2.shape[-2:], mode="bilinear"), s2], 1))
        h = self.up1(torch.cat([F.interpolate(h, size=s1.shape[-2:], mode="bilinear"), s1], 1))
        return self.head(h)


def train_segmenter(
    images: torch.Tensor,
    maps: torch.Tensor,
    n_classes: int,
    cfg: SegmenterConfig,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
) -> tuple:
    """(segmenter, curve): a `Segmenter` trained with per-pixel cross-entropy (background
    down-weighted) on uint8 images (N x 3 x H x W) and their label maps (N x H x W), with random
    horizontal flips; the library's one training loop (`clip.train.optimize`)."""
    cfg.validate(len(images))
    if maps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"label maps {tuple(maps.shape)} do not fit images {tuple(images.shape)}")
    torch.manual_seed(seed)
    model = Segmenter(n_classes, cfg.width).to(device)
    tc = cfg.train_config()
    steps = epoch_steps(tc.epochs, len(images), tc.batch_size)
    g = torch.Generator().manual_seed(seed)
    weight = torch.ones(n_classes, device=device)
    weight[0] = cfg.background_weight

    def loss_step():
        idx = torch.randint(len(images), (min(tc.batch_size, len(images)),), generator=g)
        x, y = to_unit(images[idx], device), maps[idx].to(device).long()
        flip = torch.rand(len(idx), generator=g).to(device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        return F.cross_entropy(model(x), y, weight=weight)

    curve = optimize(model, loss_step, steps, tc, device, "segmenter", progress, tc.batch_size)
    return model, curve


@torch.no_grad()
def segment(segmenter: nn.Module, images: torch.Tensor, device, batch_size: int = 128) -> torch.Tensor:
    """The segmenter's N x H x W label maps (uint8) of uint8 images.

    The segmenter is put in channels-last layout (it stays so; the layout changes no weight),
    and the images go in batches of `batch_size`: on a CPU, oneDNN's convolutions run several
    times faster so than on large NCHW batches, for the same maps up to float rounding."""
    segmenter.eval().to(memory_format=torch.channels_last)
    out = [
        segmenter(to_unit(images[s : s + batch_size], device).contiguous(memory_format=torch.channels_last))
        .argmax(1)
        .to(torch.uint8)
        .cpu()
        for s in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, *images.shape[2:], dtype=torch.uint8)


def image_labels(segments: torch.Tensor, n_categories: int, min_share: float = 0.02) -> torch.Tensor:
    """Each label map's object: the category (0 .. n_categories - 1) covering the most pixels,
    or -1 where no category covers `min_share` of the image (a person, or only background).

    `segments`: N x H x W integer maps in the world's classes (`pocket.segment_names`: 0 is
    background, 1 + c the category c, n_categories + 1 a person).
    """
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share={min_share} is out of range: accepted 0 <= min_share <= 1")
    n, pixels = len(segments), segments[0].numel() if len(segments) else 1
    flat = segments.reshape(n, -1).long()
    counts = torch.zeros(n, n_categories + 2, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    objects = counts[:, 1 : n_categories + 1]
    best, label = objects.max(dim=1)
    return torch.where(best >= min_share * pixels, label, torch.full_like(label, -1))


def mean_iou(predicted: torch.Tensor, truth: torch.Tensor, n_classes: int) -> dict:
    """Per-class IoU and their mean over the classes present in `truth` or `predicted`."""
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted maps {tuple(predicted.shape)} and true maps {tuple(truth.shape)} differ")
    p, t = predicted.reshape(-1).long(), truth.reshape(-1).long()
    joint = torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    inter = joint.diag().double()
    union = joint.sum(0).double() + joint.sum(1).double() - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp(min=1), torch.nan)
    return {"per_class": iou.tolist(), "miou": float(iou[present].mean()) if present.any() else float("nan")}


def shows_label(segments: torch.Tensor, label: int, min_share: float = 0.02) -> torch.Tensor:
    """Per label map: does category `label` cover at least `min_share` of it? (Whether the
    oracle sees the label at all, whatever else covers more of the image.)"""
    return (segments == 1 + label).flatten(1).float().mean(1) >= min_share
