"""Figures shared by the chapters. Each returns a matplotlib Figure, stamped with provenance."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .report import stamp


def gallery(images, captions, prov: dict, ncols: int = 8, title: str | None = None, width: float = 1.6):
    """A grid of uint8 images (N x 3 x H x W) with their captions underneath."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * width, nrows * (width + 0.45)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(cap, 22)[:3]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def training_curve(curve: list, prov: dict, title: str = "Pre-training"):
    """Contrastive loss against training pairs seen."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([p["pairs"] for p in curve], [p["loss"] for p in curve], color="C0")
    ax.set_xlabel("training pairs seen")
    ax.set_ylabel("CLIP loss (batch mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def per_class_accuracy(per_class: dict, prov: dict, highlight: str = "banana", title: str = ""):
    """A bar per class, sorted, with the highlighted class (the backdoor target) in red."""
    names = sorted(per_class, key=per_class.get, reverse=True)
    colours = ["C3" if n == highlight else "C0" for n in names]
    fig, ax = plt.subplots(figsize=(8, 3))
    sns.barplot(x=names, y=[per_class[n] for n in names], hue=names, palette=colours,
                legend=False, ax=ax)
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.set_title(title)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def confusion(labels, preds, classes, prov: dict, title: str = ""):
    """Row-normalised confusion matrix (%)."""
    k = len(classes)
    m = np.zeros((k, k))
    for t, p in zip(labels, preds):
        m[t, p] += 1
    m = 100 * m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(m, xticklabels=classes, yticklabels=classes, cmap="Blues", vmin=0, vmax=100,
                cbar_kws={"label": "% of the row's images"}, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(labelsize=7)
    ax.set_title(title)
    fig.tight_layout()
    stamp(fig, prov)
    return fig
