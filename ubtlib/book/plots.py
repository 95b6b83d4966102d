"""Figures shared by the chapters. Each returns a matplotlib Figure, stamped with provenance."""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Patch

from ubtlib.book.report import stamp
from ubtlib.book.ubt_results import ATTACK_NAMES


def _attack_names(attacks) -> list:
    return [ATTACK_NAMES.get(a, a) for a in attacks]


def gallery(images, captions, prov: dict, ncols: int = 8, title: str | None = None, width: float = 1.6):
    """A grid of uint8 images (N x 3 x H x W) with their captions underneath."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * width, nrows * (width + 0.45)), squeeze=False)
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
    sns.barplot(x=names, y=[per_class[n] for n in names], hue=names, palette=colours, legend=False, ax=ax)
    ax.set_xlabel("class (sorted by accuracy)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    if highlight in per_class:
        ax.legend(
            handles=[
                Patch(color="C3", label=f"{highlight} (the attacks' target)"),
                Patch(color="C0", label="other classes"),
            ],
            fontsize=8,
            loc="upper right",
        )
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
    sns.heatmap(
        m,
        xticklabels=classes,
        yticklabels=classes,
        cmap="Blues",
        vmin=0,
        vmax=100,
        cbar_kws={"label": "% of the row's images"},
        ax=ax,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(labelsize=7)
    ax.set_title(title)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def trigger_gallery(rows: dict, prov: dict, amplify: bool = True):
    """rows: {attack: (clean, triggered)} [0, 1] batches (N x 3 x H x W). For each attack and
    image: clean, triggered, and the difference stretched to full range so it can be seen."""
    attacks = list(rows)
    n = len(next(iter(rows.values()))[0])
    fig, axes = plt.subplots(len(attacks), 3 * n, figsize=(3 * n * 1.25, len(attacks) * 1.45), squeeze=False)
    for r, a in enumerate(attacks):
        clean, trig = rows[a]
        for i in range(n):
            diff = (trig[i] - clean[i]).abs()
            if amplify:
                diff = diff / diff.max().clamp_min(1e-8)
            for c, (img, label) in enumerate(
                ((clean[i], "clean"), (trig[i], "triggered"), (diff, "|difference|, stretched"))
            ):
                ax = axes[r, 3 * i + c]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(label, fontsize=7)
                if 3 * i + c == 0:
                    ax.set_ylabel(a, fontsize=9)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def visibility_bars(vis: dict, prov: dict, psnr_bar: float | None = 27.0):
    """PSNR and L-infinity per attack (mean with std error bars)."""
    attacks = _attack_names(vis)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.bar(
        attacks,
        [v["psnr_mean"] for v in vis.values()],
        yerr=[v["psnr_std"] for v in vis.values()],
        color="C0",
        capsize=3,
    )
    if psnr_bar:
        a1.axhline(psnr_bar, color="C3", ls="--", lw=1, label=f"{psnr_bar:.0f} dB")
        top = max([v["psnr_mean"] + v["psnr_std"] for v in vis.values()] + [psnr_bar])
        a1.set_ylim(0, top * 1.3)  # headroom for the legend above the bars
        a1.legend(fontsize=8, loc="upper right")
    a1.set_title("PSNR against the clean image (higher: less visible)", fontsize=9)
    a1.set_ylabel("PSNR (dB)")
    a2.bar(
        attacks,
        [v["linf_mean"] for v in vis.values()],
        yerr=[v["linf_std"] for v in vis.values()],
        color="C1",
        capsize=3,
    )
    a2.set_title("largest change of any pixel", fontsize=9)
    a2.set_ylabel("L-infinity (0 to 255)")
    for ax in (a1, a2):
        ax.set_xlabel("attack")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def ca_asr_bars(ours: dict, paper: dict, prov: dict, pretrained_ca: float | None = None, title: str = ""):
    """Grouped bars of CA and ASR per attack, ours beside the paper's ("n/a" where it has none)."""
    attacks = list(ours)
    x = np.arange(len(attacks))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, label in ((axes[0], "ca", "CA (%)"), (axes[1], "asr", "ASR (%)")):
        ax.bar(x - 0.2, [ours[a][key] for a in attacks], 0.4, label="pocket (ours)", color="C0")
        pv = [paper.get(a, {}).get(key, np.nan) for a in attacks]
        ax.bar(x + 0.2, pv, 0.4, label="paper", color="0.6")
        for xi, v in zip(x, pv):
            if np.isnan(v):
                ax.text(xi + 0.2, 2, "n/a", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
        ax.set_xticks(x, _attack_names(attacks))
        ax.set_xlabel("attack")
        ax.set_ylabel(label)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    if pretrained_ca is not None:
        axes[0].axhline(pretrained_ca, color="C0", ls="--", lw=1, label="pocket, pre-trained")
    # one legend for both panels, under the title: inside a panel it hides bars
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.93))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    stamp(fig, prov)
    return fig


def ubt_framework(prov: dict | None = None):
    """The UBT framework (the paper's Fig. 1) as a box-and-arrow diagram."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 3.4))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 3.4)
    ax.axis("off")
    boxes = {
        "data": (0.1, 1.3, "poisoned\ntraining pairs", "0.85"),
        "split": (2.0, 1.3, "1. split by a clean\nmodel's similarity\n→ D_susp, D_safe", "#cfe2f3"),
        "overfit": (
            4.1,
            1.3,
            "2. overfit the poisoned\nmodel: (S−1)² on D_susp\n+ CLIP loss on D_safe",
            "#cfe2f3",
        ),
        "topk": (6.2, 1.3, "3. rank D_susp by the\noverfitted model's S\n→ top-k pairs", "#cfe2f3"),
        "unlearn": (
            8.3,
            1.3,
            "4. token-level unlearning:\nrelevant tokens × images,\nminimise S → clean model",
            "#d9ead3",
        ),
    }
    for key, (x, y, text, colour) in boxes.items():
        ax.add_patch(
            FancyBboxPatch(
                (x, y), 1.8 if key != "unlearn" else 2.5, 1.1, boxstyle="round,pad=0.05", fc=colour, ec="0.3"
            )
        )
        ax.text(x + (0.9 if key != "unlearn" else 1.25), y + 0.55, text, ha="center", va="center", fontsize=8)
    for x0, x1 in ((1.9, 2.0), (3.8, 4.1), (5.9, 6.2), (8.0, 8.3)):
        ax.add_patch(
            FancyArrowPatch((x0, 1.85), (x1, 1.85), arrowstyle="-|>", mutation_scale=12, color="0.2")
        )
    ax.text(3.0, 2.75, "clean pre-trained CLIP", ha="center", fontsize=8, color="C0")
    ax.add_patch(FancyArrowPatch((3.0, 2.6), (3.0, 2.45), arrowstyle="-|>", mutation_scale=10, color="C0"))
    ax.text(5.6, 0.55, "poisoned CLIP (the attacker's)", ha="center", fontsize=8, color="C3")
    ax.add_patch(FancyArrowPatch((5.0, 0.75), (5.0, 1.25), arrowstyle="-|>", mutation_scale=10, color="C3"))
    ax.add_patch(
        FancyArrowPatch(
            (6.4, 0.75),
            (9.4, 1.25),
            arrowstyle="-|>",
            mutation_scale=10,
            color="C3",
            connectionstyle="arc3,rad=0.15",
        )
    )
    ax.text(7.1, 2.75, "relevance from the overfitted model", ha="center", fontsize=8, color="0.3")
    ax.add_patch(
        FancyArrowPatch(
            (7.1, 2.6),
            (9.2, 2.45),
            arrowstyle="-|>",
            mutation_scale=10,
            color="0.3",
            connectionstyle="arc3,rad=-0.2",
        )
    )
    ax.set_title("UBT: unlearning backdoor threats (after the paper's Fig. 1)")
    if prov:
        stamp(fig, prov)
    return fig


def separation(rows: dict, prov: dict, with_abl: bool = True):
    """The Fig. 2 analogue: per attack, how clean and poisoned pairs distribute under the clean
    model (the split), the overfitted model (within D_susp) and ABL (per-pair loss)."""
    attacks = list(rows)
    ncols = 3 if with_abl else 2
    fig, axes = plt.subplots(
        len(attacks), ncols, figsize=(4 * ncols, 2.1 * len(attacks) + 0.4), squeeze=False
    )
    for r, a in enumerate(attacks):
        row = rows[a]
        bd = np.array(row["is_backdoor"], bool)
        susp = np.array(row["susp"])
        panels = [
            (
                np.array(row["clean_similarity"]),
                bd,
                "clean model, all pairs",
                "S(I, T) under the clean model",
            ),
            (
                np.array(row["op_similarity"]),
                bd[susp],
                "overfitted model, D_susp",
                "S(I, T) after overfitting",
            ),
        ]
        if with_abl:
            panels.append((np.array(row["abl_losses"]), bd, "ABL, all pairs", "per-pair loss after LGA"))
        for c, (values, truth, title, xlabel) in enumerate(panels):
            ax = axes[r, c]
            bins = np.linspace(values.min(), values.max(), 40)
            ax.hist(values[~truth], bins=bins, color="C0", alpha=0.6, density=True, label="clean")
            ax.hist(values[truth], bins=bins, color="C3", alpha=0.7, density=True, label="poisoned")
            if r == 0:
                ax.set_title(title, fontsize=9)
            if r == len(attacks) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{ATTACK_NAMES.get(a, a)}\ndensity", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def token_relevance(examples: list, prov: dict):
    """One row per caption: its tokens with relevance bars (detected pairs red, clean blue)."""
    fig, axes = plt.subplots(len(examples), 1, figsize=(8, 0.9 * len(examples) + 0.6), squeeze=False)
    for ax, ex in zip(axes[:, 0], examples):
        colour = "C3" if ex["poisoned"] else "C0"
        ax.bar(range(len(ex["tokens"])), ex["relevance"], color=colour)
        ax.set_xticks(range(len(ex["tokens"])), ex["tokens"], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 1], ["0", "1"], fontsize=6)
        ax.set_ylabel("poisoned" if ex["poisoned"] else "clean", fontsize=7, rotation=0, ha="right")
    axes[0, 0].set_title("Token relevance for S(I, T) (Chefer et al.), per caption")
    axes[-1, 0].set_xlabel("caption token (bar: its share of the caption's relevance, 0 to 1)", fontsize=8)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def unlearning_curves(curves: dict, prov: dict, title: str = ""):
    """CA and ASR against unlearning steps, one line per variant."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
    for i, (name, pts) in enumerate(curves.items()):
        steps = [p["step"] for p in pts]
        a1.plot(steps, [p["ca"] for p in pts], marker="o", ms=3, color=f"C{i}", label=name)
        a2.plot(steps, [p["asr"] for p in pts], marker="o", ms=3, color=f"C{i}", label=name)
    a1.set_ylabel("CA (%)")
    a2.set_ylabel("ASR (%)")
    for ax in (a1, a2):
        ax.set_xlabel("unlearning step")
        ax.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def ablation_bars(summary, prov: dict):
    """CA, ASR and RA per ablated value (mean over seeds, std as error bars), one panel per
    parameter (summary: `ubt_results.ablation_summary`)."""
    params = list(dict.fromkeys(summary["parameter"]))
    ncols = min(len(params), 4)  # wrap into rows: a dozen panels in one row would be unreadable
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.1 * nrows + 0.3), squeeze=False)
    for ax in axes.flat[len(params) :]:
        ax.set_visible(False)
    several = summary["attack"].nunique() > 1
    for ax, p in zip(axes.flat, params):
        sub = summary[summary["parameter"] == p]
        labels = [
            (f"{a}\n" if several else "")
            + (f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))
            for a, v in zip(sub["attack"], sub["value"])
        ]
        x = np.arange(len(sub))
        for i, (metric, color) in enumerate((("CA", "C0"), ("ASR", "C3"), ("RA", "C2"))):
            err = sub[f"{metric} std"].fillna(0).to_numpy()
            ax.bar(x + (i - 1) * 0.27, sub[metric], 0.27, yerr=err, capsize=2, label=metric, color=color)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(f"{p.replace('_', ' ')}\n(-p ubt_{p})", fontsize=8)
        ax.set_xlabel("value", fontsize=7)
        ax.set_ylabel("%", fontsize=7)
        ax.set_ylim(0, 100)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    stamp(fig, prov)
    return fig


def table1_bars(agg, prov: dict):
    """The Table 1 analogue as grouped bars of CA, ASR and RA (mean, std error bars) per attack."""
    attacks = list(dict.fromkeys(agg["attack"]))
    defenses = list(dict.fromkeys(agg["defense"]))
    x = np.arange(len(attacks))
    w = 0.8 / len(defenses)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    titles = {
        "CA": "CA: clean images' own class",
        "ASR": "ASR: triggered images to the target",
        "RA": "RA: triggered images' own class",
    }
    for ax, key in zip(axes, ("CA", "ASR", "RA")):
        for i, d in enumerate(defenses):
            sub = agg[agg["defense"] == d].set_index("attack").reindex(attacks)
            ax.bar(
                x + (i - (len(defenses) - 1) / 2) * w,
                sub[key],
                w,
                yerr=sub[f"{key}_std"].fillna(0),
                capsize=2,
                label=d,
                color=f"C{i}",
            )
        ax.set_xticks(x, _attack_names(attacks))
        ax.set_xlabel("attack")
        ax.set_title(titles[key], fontsize=9)
        ax.set_ylabel(f"{key} (%)")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    # one legend above the panels: inside one it hides bars
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    stamp(fig, prov)
    return fig


def oracle_framework(prov: dict | None = None):
    """The oracle-guided defense as the book reads the abstract: a box-and-arrow diagram."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 2.9))
    ax.set_xlim(0, 11)
    ax.set_ylim(0.2, 3.2)
    ax.axis("off")
    boxes = (
        ("training pairs\nas the defender\nholds them", "0.85"),
        ("label every image twice:\nCLIP zero-shot and the\nsegmentation oracle", "#cfe2f3"),
        (
            "1. affected label: the one\nCLIP gives under captions\nnaming it, the oracle not;"
            "\nattribute the disagreements\n→ trigger estimate",
            "#cfe2f3",
        ),
        ("2. victims: pairs tied to\nthe label in which the\noracle does not see it", "#cfe2f3"),
        (
            "compact set: victims\nre-captioned, estimate\npasted on clean, clean\n→ fine-tune: rectified",
            "#d9ead3",
        ),
    )
    width, step = 1.95, 2.2
    for k, (text, colour) in enumerate(boxes):
        x = 0.05 + k * step
        ax.add_patch(FancyBboxPatch((x, 1.2), width, 1.3, boxstyle="round,pad=0.05", fc=colour, ec="0.3"))
        ax.text(x + width / 2, 1.85, text, ha="center", va="center", fontsize=7.5)
        if k:
            ax.add_patch(
                FancyArrowPatch((x - 0.2, 1.85), (x - 0.05, 1.85), arrowstyle="-|>", mutation_scale=12)
            )
    ax.text(
        1.3 + step,
        3.0,
        "segmentation oracle (learned, or the exact maps)",
        ha="center",
        fontsize=8,
        color="C2",
    )
    ax.add_patch(
        FancyArrowPatch((1.0 + step, 2.9), (1.0 + step, 2.6), arrowstyle="-|>", mutation_scale=10, color="C2")
    )
    ax.text(5.5, 0.45, "poisoned CLIP (the attacker's)", ha="center", fontsize=8, color="C3")
    for k in (1, 2, 4):
        ax.add_patch(
            FancyArrowPatch(
                (5.5, 0.65),
                (0.05 + k * step + width / 2, 1.15),
                arrowstyle="-|>",
                mutation_scale=10,
                color="C3",
            )
        )
    if prov:
        stamp(fig, prov)
    return fig


def _label_map(ax, segments, n_classes: int):
    ax.imshow(segments.numpy(), cmap="tab20", vmin=0, vmax=max(n_classes - 1, 1), interpolation="nearest")


def segmenter_examples(ex: dict, classes, prov: dict):
    """Held-out images (top), their exact label maps and the learned oracle's (below)."""
    n = len(ex["images"])
    fig, axes = plt.subplots(3, n, figsize=(1.5 * n, 4.9), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(ex["images"][j].permute(1, 2, 0).numpy(), interpolation="nearest")
        _label_map(axes[1, j], ex["exact"][j], len(classes))
        _label_map(axes[2, j], ex["learned"][j], len(classes))
        shown = [int(c) for c in ex["exact"][j].unique() if int(c) != 0]
        axes[0, j].set_title(", ".join(classes[c] for c in shown) or "background", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, name in zip(axes[:, 0], ("image", "exact map", "learned oracle")):
        ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def disagreement_examples(examples: dict, classes, prov: dict):
    """Per attack (a row): disagreeing training images with CLIP's and the oracle's labels, the
    oracle's map of one, the attribution of one, the trigger estimate's region (true footprint
    in outline) and a clean image carrying the estimate."""
    attacks = list(examples)
    n = min(len(e["images"]) for e in examples.values())
    cols = n + 4
    fig, axes = plt.subplots(len(attacks), cols, figsize=(1.45 * cols, 1.75 * len(attacks)), squeeze=False)
    for i, a in enumerate(attacks):
        e = examples[a]
        for j in range(n):
            axes[i, j].imshow(e["images"][j].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[i, j].set_title(
                f"CLIP: {e['clip_labels'][j]}\noracle: {e['oracle_labels'][j]}", fontsize=6.5
            )
        _label_map(axes[i, n], e["oracle_maps"][0], len(classes))
        axes[i, n].set_title("oracle's map (1st)", fontsize=6.5)
        axes[i, n + 1].imshow(e["attributions"][0].numpy(), cmap="magma", interpolation="nearest")
        axes[i, n + 1].set_title("attribution (1st)", fontsize=6.5)
        axes[i, n + 2].imshow(e["region"].numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        axes[i, n + 2].contour(
            e["footprint"].numpy().astype(float), levels=[0.5], colors="C3", linewidths=0.8
        )
        axes[i, n + 2].set_title(f"estimate (IoU {e['record']['trigger_iou']:.2f})", fontsize=6.5)
        axes[i, n + 3].imshow(e["pasted"][0].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[i, n + 3].set_title("clean + estimate", fontsize=6.5)
        axes[i, 0].set_ylabel(ATTACK_NAMES.get(a, a), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    stamp(fig, prov)
    return fig
