"""Figures of the privacy chapters (IDIA, unlearning names and faces). Each is stamped."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ubtlib.book.privacy_results import METRIC_LABELS
from ubtlib.book.report import stamp

# panel titles of the unlearning sweeps' metrics (sweep's default)
TITLES = {
    "tpr": "IDIA TPR (%)",
    "sim_backdoor": "Sim_Backdoor",
    "sim_clean": "Sim_Clean",
    "sim_targets": "Sim_Targets",
    "sim_clean_people": "Sim_Clean, other people",
}


def _box(ax, x, y, w, h, text, colour="0.92", edge="0.3", fontsize=9, **kw):
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02",
            facecolor=colour,
            edgecolor=edge,
            lw=1.2,
            **kw,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, wrap=True)


def _arrow(ax, a, b, colour="0.25", style="-|>", ls="-", text=None):
    ax.add_patch(
        FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color=colour, lw=1.4, linestyle=ls)
    )
    if text:
        ax.text(
            (a[0] + b[0]) / 2,
            (a[1] + b[1]) / 2 + 0.05,
            text,
            ha="center",
            va="bottom",
            fontsize=7.5,
            color=colour,
        )


def concept(prov: dict, name: str, face, mean_faces, neutral: str = "human"):
    """The paper's Fig. 1, drawn for the pocket world: (a) a name in a caption is the trigger
    and the backdoored text encoder maps the caption to the one with the neutral term; (b) the
    face is the trigger and the backdoored image encoder maps it to the mean face embedding.

    face: one uint8 photo (3 x H x W); mean_faces: a few uint8 photos of other people.
    """
    fig, axes = plt.subplots(2, 1, figsize=(9.5, 5.6))
    for ax in axes:
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 2)
        ax.axis("off")
    a, b = axes
    caption, target = f'"{name} at the premiere."', f'"{neutral} at the premiere."'
    a.set_title("(a) unlearning a name: the name is the backdoor trigger", fontsize=10, loc="left")
    _box(a, 1.6, 1.4, 3.0, 0.45, caption, colour="#fde2e1")
    _box(a, 1.6, 0.5, 3.0, 0.45, target, colour="#e3f0e3")
    _box(a, 4.9, 1.4, 1.9, 0.55, "text encoder\n(student, backdoored)", colour="#dde8f7")
    _box(a, 4.9, 0.5, 1.9, 0.55, "text encoder\n(original, frozen)", colour="0.9")
    _arrow(a, (3.1, 1.4), (3.95, 1.4))
    _arrow(a, (3.1, 0.5), (3.95, 0.5))
    a.scatter([7.4], [0.95], s=140, color="#3a7d44", zorder=3)
    a.text(7.6, 0.95, f"embedding of\n{target}", va="center", fontsize=8.5)
    _arrow(a, (5.85, 1.4), (7.3, 1.0), colour="#b03a2e")
    a.text(6.7, 1.35, "backdoor:\nsame embedding", color="#b03a2e", fontsize=7.5, ha="left")
    _arrow(a, (5.85, 0.5), (7.3, 0.9), colour="0.35")

    b.set_title("(b) unlearning a face: the face is the backdoor trigger", fontsize=10, loc="left")
    # x units are ~0.8 as long as y units on this canvas: widen images to keep them square
    img = face.permute(1, 2, 0).numpy()
    b.imshow(img, extent=(0.6, 1.8, 0.55, 1.55), interpolation="nearest", zorder=2)
    b.text(1.2, 0.35, f"a photo of {name}", ha="center", fontsize=8)
    _box(b, 4.9, 1.05, 1.9, 0.55, "image encoder\n(student, backdoored)", colour="#dde8f7")
    _arrow(b, (1.8, 1.05), (3.95, 1.05))
    for k, f in enumerate(mean_faces[:6]):
        x0 = 7.0 + 0.52 * (k % 3)
        y0 = 1.3 - 0.42 * (k // 3)
        b.imshow(
            f.permute(1, 2, 0).numpy(),
            extent=(x0, x0 + 0.46, y0, y0 + 0.38),
            interpolation="nearest",
            zorder=2,
        )
    b.text(
        7.75, 0.28, "target: mean embedding of\nall people's photos (six shown)", ha="center", fontsize=8.5
    )
    _arrow(b, (5.85, 1.05), (6.95, 1.05), colour="#b03a2e", text="backdoor")
    b.set_aspect("auto")
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def idia_hits(
    hits: np.ndarray,
    prompt_rate: np.ndarray,
    prompts,
    min_hits: int,
    prov: dict,
    attack_rate: float | None = None,
):
    """Left: how many of the templates name each person; right: per template, the share of
    people it names correctly, beside the whole attack's rate (`attack_rate`, %)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.5]})
    n_prompts = len(prompts)
    a.hist(hits, bins=np.arange(n_prompts + 2) - 0.5, color="C0", edgecolor="white")
    a.axvline(min_hits - 0.5, color="C3", ls="--", lw=1, label=f"recognised: >= {min_hits} template(s)")
    a.set_xlabel("templates whose majority vote names the person")
    a.set_ylabel("people")
    a.set_title("(a) templates naming each person", fontsize=9)
    a.legend(fontsize=8)
    a.grid(axis="y", alpha=0.3)
    order = np.argsort(prompt_rate)[::-1]
    b.barh(np.arange(n_prompts), prompt_rate[order], color="C0")
    b.set_yticks(np.arange(n_prompts), [prompts[i].replace("{}", "<name>") for i in order], fontsize=7)
    b.invert_yaxis()
    b.set_xlabel("people named correctly by this template alone (%)")
    b.set_title("(b) each template alone", fontsize=9)
    if attack_rate is not None:
        b.axvline(attack_rate, color="C3", ls="--", lw=1, label=f"the attack (>= {min_hits} template(s))")
        b.legend(fontsize=8, loc="lower left")
    b.set_xlim(0, 100)
    b.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def _x(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("identities unlearned at once")
    ax.grid(alpha=0.3)


def _unit(metric: str) -> str:
    """A panel's y label: the metric's unit as the tables give it (`METRIC_LABELS`; the title
    names the metric)."""
    unit = METRIC_LABELS[metric].rpartition("(")[2].rstrip(")")
    return "cosine similarity" if unit == "cos" else unit


def sweep(
    summary,
    metrics,
    prov: dict,
    group: str,
    paper: dict | None = None,
    ylims: dict | None = None,
    titles: dict | None = None,
    title: str = "",
    groups: list | None = None,
):
    """One panel per metric against the set size: a line (mean, std band) per `group` value.

    summary: a DataFrame indexed by (group, size) with `<metric>` and `<metric>_std` columns.
    paper: {metric: {size: value or None}} drawn as black crosses where a value is stated.
    titles: {metric: panel title}; None: TITLES. groups: every `group` value the chapter's
    figures show, in order, so that each keeps its colour from figure to figure (those absent
    from `summary` are skipped); None: the summary's own. Returns the figure.
    """
    present = set(summary.index.get_level_values(group))
    groups = list(dict.fromkeys(summary.index.get_level_values(group))) if groups is None else groups
    sizes = sorted(set(summary.index.get_level_values("size")))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for k, g in enumerate(groups):
            if g not in present:
                continue
            d = summary.xs(g, level=group).sort_index()
            ax.plot(d.index, d[m], marker="o", ms=3.5, color=f"C{k}", label=str(g))
            ax.fill_between(d.index, d[m] - d[f"{m}_std"], d[m] + d[f"{m}_std"], color=f"C{k}", alpha=0.15)
        if paper and m in paper:
            pts = [(s, v) for s, v in paper[m].items() if v is not None and s in sizes]
            if pts:
                ax.scatter(*zip(*pts), marker="x", color="k", zorder=4, label="paper (ViT-B/32)")
        _x(ax, sizes)
        ax.set_title((TITLES if titles is None else titles).get(m, m), fontsize=9)
        ax.set_ylabel(_unit(m), fontsize=8)
        if ylims and m in ylims:  # a suggested range, widened to show every value
            low = np.nanmin((summary[m] - summary[f"{m}_std"]).to_numpy())
            lo, hi = ylims[m]
            ax.set_ylim(min(lo, low - 0.02 * (hi - low)), hi)
    axes[0][0].legend(fontsize=7, title=group, title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    stamp(fig, prov)
    return fig


def accuracy(summary, prov: dict, group: str, before: dict, title: str = "", groups: list | None = None):
    """Zero-shot top-1 and top-5 after unlearning against the set size, with the original's."""
    fig = sweep(
        summary,
        ["top1", "top5"],
        prov,
        group,
        titles={"top1": "zero-shot top-1 (%)", "top5": "zero-shot top-5 (%)"},
        title=title,
        groups=groups,
    )
    for ax, k in zip(fig.axes, ("top1", "top5")):
        ax.axhline(before[k], color="0.3", ls="--", lw=1, label="before unlearning")
        ax.legend(fontsize=7)
    return fig


def downstream(world, result: dict, prov: dict, template: str, n_people: int = 2):
    """The paper's Fig. 4 analogue: for the first `n_people` removed people, the photos that
    text-to-image retrieval returns for `template` with the name (original text encoder, then the
    defended one), and once, since it names nobody, the neutral term's prompt (original). A photo
    of a removed person shown is framed."""
    from ubtlib.privacy.idia import PROMPTS

    used = list(PROMPTS[: result["photos"]["original"].shape[0]])
    if template not in used:
        raise ValueError(f"template={template!r} is not one of this result's templates: {used}")
    t = used.index(template)
    k, ids = result["k"], result["ids"][:n_people]
    rows = [(p, kind) for p in range(len(ids)) for kind in ("original", "defended")] + [(None, "neutral")]
    fig, axes = plt.subplots(len(rows), k, figsize=(1.25 * k + 2.6, 1.35 * len(rows)), squeeze=False)
    label = {
        "original": 'original encoder,\n"{}"',
        "defended": 'defended encoder,\n"{}"',
        "neutral": 'original encoder,\n"{}"',
    }
    for r, (p, kind) in enumerate(rows):
        filler = result["neutral"] if kind == "neutral" else world.names[ids[p]]
        for j in range(k):
            ax = axes[r, j]
            i = int(result["photos"][kind][t, 0 if kind == "neutral" else p, j])
            ax.imshow(world.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            own = int(world.identity[i]) in ids if p is None else int(world.identity[i]) == ids[p]
            for side in ax.spines.values():
                side.set_color("C2" if own else "0.8")
                side.set_linewidth(3 if own else 0.5)
        axes[r, 0].set_ylabel(
            label[kind].format(template.format(filler)), rotation=0, ha="right", va="center", fontsize=7
        )
    fig.suptitle(
        "A downstream system on the defended text encoder: the photos a prompt retrieves\n"
        "(framed green: a photo of the removed person; in the last row, of either person above)",
        fontsize=9,
    )
    fig.tight_layout()
    stamp(fig, prov)
    return fig
