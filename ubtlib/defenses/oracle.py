"""An oracle-guided defense (Hossain et al. 2025, arXiv 2511.13545; only the abstract is public).

A poisoned CLIP's labels are set against those of an image-segmentation oracle:

1. *Triggers.* Training images are labelled twice, by CLIP zero-shot and by the oracle
   (the category covering most of its map): a sample, then the images tied to the label the
   sample points to (`oracle_pass`). The affected label is the one CLIP gives most often
   to images whose caption names it and in which the oracle does not see it (a poison's mark);
   on the images where CLIP says it and the oracle does not,
   an attribution (occlusion or gradient) finds the pixels CLIP's decision rests on, and those
   maps, with the pattern the disagreeing images share, give the trigger estimate.
2. *Labels and victims.* The victims are the training pairs tied to the affected label (by
   their caption, or by CLIP's label of their image) in which the oracle does not see it. A
   compact fine-tuning set of victims re-captioned from the oracle, clean images carrying the
   trigger estimate with their own captions, and a few clean pairs rectifies the model.

Every step past the abstract is the book's reading; each is a field of `OracleConfig` or
`RectifyConfig`, ablated in chapter 9. The oracle is a `segmenter.Segmenter` trained on clean images and
their label maps (the paper's is an off-the-shelf segmenter), or the world's exact maps as an
upper bound.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ubtlib.checks import check_choice, check_range
from ubtlib.clip.model import normalize, to_unit, tokenize
from ubtlib.clip.towers import TOWERS, training_towers
from ubtlib.clip.train import TrainConfig, batches, clip_loss, epoch_steps, optimize
from ubtlib.defenses import segmenter as seg
from ubtlib.evaluation.zeroshot import encode_images

ORACLE_KINDS = ("learned", "exact")
ATTRIBUTIONS = ("occlusion", "gradient")
VICTIM_RULES = ("caption", "image")
LABEL_RULES = ("named", "excess")  # how the affected label is counted (`affected_label`)
FORMS = ("pasted", "added")  # a trigger estimate's forms: a patch pasted, or a residual added
# the parts of a compact fine-tuning set, in the order they are drawn
SET_PARTS = ("victim", "pasted", "clean")
UNSEEN = -2  # the oracle label of an image the scan did not show the oracle (-1: it names no object)


@dataclass(frozen=True)
class OracleConfig:
    """The book's reading of algorithm 1 and of the victims, one field per open choice."""

    kind: str = "learned"  # learned (the Segmenter) | exact (the world's own maps: an upper bound)
    min_share: float = 0.02  # a category must cover this share of an image to be the oracle's label
    # images (a seeded sample) both labellings give, to find the affected label, after which
    # both look only at the images tied to it; 0: every image, which the excess rule needs (a
    # sample's excess can name a class CLIP over-predicts), and which costs most of the scan
    label_sample: int = 0
    # named: CLIP's label on images whose caption names it and the oracle does not see it;
    # excess: CLIP's count less the oracle's, which a class CLIP over-predicts on clean images
    # can win, since a backdoor's excess is only as large as its poisons
    label_rule: str = "named"
    attribution: str = "occlusion"  # occlusion | gradient
    patch: int = 4  # occlusion window side (px), slid at half its side
    attribution_images: int = 128  # disagreeing images attributed (the first, in training order)
    reference_images: int = 2048  # images CLIP and the oracle agree on: what an untriggered image is
    region_threshold: float = 0.2  # share of the peak score a pixel needs to be in the trigger region
    compact_max: float = 0.25  # a region up to this share of the image may be pasted; a larger one is added
    victim_rule: str = "caption"  # caption (it names the label) | image (CLIP gives its image the label)

    def validate(self) -> None:
        check_choice("kind", self.kind, ORACLE_KINDS)
        check_choice("attribution", self.attribution, ATTRIBUTIONS)
        check_choice("victim_rule", self.victim_rule, VICTIM_RULES)
        check_choice("label_rule", self.label_rule, LABEL_RULES)
        check_range("min_share", self.min_share, 0.0, 1.0)
        check_range("patch", self.patch, 1, 64)
        check_range("label_sample", self.label_sample, 0, 1 << 30)
        check_range("attribution_images", self.attribution_images, 1, 1 << 20)
        check_range("reference_images", self.reference_images, 1, 1 << 24)
        check_range("region_threshold", self.region_threshold, 0.0, 1.0)
        check_range("compact_max", self.compact_max, 0.0, 1.0)


@dataclass(frozen=True)
class RectifyConfig:
    """The compact fine-tuning set and the fine-tuning on it (algorithm 2's last step)."""

    set_size: int = 3000  # pairs in the compact fine-tuning set
    victim_share: float = 0.5  # of the set: victims (at most those found), re-captioned by the oracle
    pasted_share: float = 0.3  # of the set: clean images with the trigger estimate; the rest clean pairs
    epochs: float = 2.0  # passes over the compact set
    lr: float = 5e-4
    batch_size: int = 128
    warmup_steps: int = 10
    # image: the text tower, so the zero-shot classifier, stays fixed; the backdoor is in the
    # image tower, and moving the class embeddings costs clean accuracy for nothing
    towers: str = "image"  # both | image
    retain_weight: float = 16.0  # of the term keeping clean images' embeddings where they were (0: none)

    def validate(self, n_pairs: int | None = None) -> None:
        check_choice("towers", self.towers, TOWERS)
        check_range("set_size", self.set_size, 1, n_pairs if n_pairs is not None else 1 << 30)
        check_range("victim_share", self.victim_share, 0.0, 1.0)
        check_range("pasted_share", self.pasted_share, 0.0, 1.0)
        check_range("retain_weight", self.retain_weight, 0.0, 1000.0)
        if self.victim_share + self.pasted_share > 1.0 + 1e-9:
            raise ValueError(
                f"victim_share={self.victim_share} and pasted_share={self.pasted_share} add up to more "
                "than the whole set: accepted victim_share + pasted_share <= 1"
            )
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps
        )


# ---------------------------------------------------------------- algorithm 1: triggers


def affected_label(
    clip_labels: torch.Tensor,
    oracle_labels: torch.Tensor,
    n_categories: int,
    rule: str = "excess",
    named: torch.Tensor | None = None,
) -> dict:
    """The label CLIP over-assigns against the oracle, with the per-category counts behind it.

    `excess`: per category, how many images CLIP gives it minus how many the oracle does.
    `named` (N x n_categories bool): per image and category, its caption names the category and
    the oracle does not see it in the image; its count is, per category, the images CLIP gives
    it among those. A poison is such an image (its caption names the target, its pixels show
    something else), while a clean image's caption names what it shows, so CLIP's own
    over-prediction of a class adds to that class's excess and hardly to its named count.
    `rule` ("excess" or "named", which needs `named`) picks the count whose largest value names
    the label; the named count's ties (all zero, where no image bears the mark) go to the larger
    excess. Returns "label", "excess" and, given `named`, "named" (lists per category).
    """
    check_choice("label_rule", rule, LABEL_RULES)
    if rule == "named" and named is None:
        raise ValueError("rule='named' needs `named` (N x n_categories bool); rule='excess' does not")
    clip_counts = torch.bincount(clip_labels[clip_labels >= 0].long(), minlength=n_categories)
    oracle_counts = torch.bincount(oracle_labels[oracle_labels >= 0].long(), minlength=n_categories)
    counts = {"excess": clip_counts - oracle_counts}
    if named is not None:
        given = clip_labels >= 0
        hit = torch.zeros_like(given)
        hit[given] = named[given.nonzero().squeeze(1), clip_labels[given].long()]
        counts["named"] = torch.bincount(clip_labels[hit].long(), minlength=n_categories)
    out = {k: v.tolist() for k, v in counts.items()}
    rank = (
        (lambda c: out["excess"][c]) if rule == "excess" else (lambda c: (out["named"][c], out["excess"][c]))
    )
    return {"label": max(range(n_categories), key=rank)} | out


def oracle_summary(maps: torch.Tensor, n_categories: int, min_share: float) -> tuple:
    """(image labels, N x n_categories bool: which categories each map shows) of label maps:
    `segmenter.image_labels` and `segmenter.shows_label`, all the scan keeps of a map."""
    sees = [seg.shows_label(maps, c, min_share) for c in range(n_categories)]
    return seg.image_labels(maps, n_categories, min_share), torch.stack(sees, 1)


def oracle_pass(clip, look, captions, categories, cfg: OracleConfig, seed: int = 0) -> dict:
    """Both labellings of the images the defense reads, and of no others.

    `clip(positions)` -> CLIP's zero-shot labels of those training images; `look(positions)` ->
    `oracle_summary` of them under the oracle. A seeded sample of `cfg.label_sample` images
    (every image at 0) is labelled by both first, and its two labellings and captions give the
    affected label (`affected_label` by `cfg.label_rule`, counted in the sample). Then both label
    the images tied to it: with the caption victim rule, those whose caption names it (and the
    sample's that CLIP gives it); with the image rule, those CLIP gives it, for which CLIP labels
    every image first. A poison's caption names the target, so the caption rule reads every
    poison without CLIP encoding the rest of the data. The disagreement, the victims and their
    re-captions read nothing else; the reference images of the trigger estimate come from the
    sample (`attribution_sets`' `pool`), so they are a draw from fewer images than at
    `label_sample` 0.

    Returns `clip` and `oracle` (labels per image; `UNSEEN` where that labeller did not look),
    `sees` (does the oracle see the affected label; False where it did not look), `scored` and
    `looked` (bool: which images CLIP and the oracle labelled), `sample` (positions), `label`
    and `affected`.
    """
    check_choice("victim_rule", cfg.victim_rule, VICTIM_RULES)
    n, n_cat = len(captions), len(categories)
    clip_labels = torch.full((n,), UNSEEN, dtype=torch.long)
    oracle = torch.full((n,), UNSEEN, dtype=torch.long)
    sees = torch.zeros(n, n_cat, dtype=torch.bool)
    scored = torch.zeros(n, dtype=torch.bool)
    looked = torch.zeros(n, dtype=torch.bool)

    def score(positions: np.ndarray) -> None:
        positions = positions[~scored.numpy()[positions]]
        if len(positions):
            clip_labels[positions] = clip(torch.from_numpy(positions)).long().cpu()
            scored[positions] = True

    def show(positions: np.ndarray) -> None:
        positions = positions[~looked.numpy()[positions]]
        if len(positions):
            oracle[positions], sees[positions] = look(torch.from_numpy(positions))
            looked[positions] = True

    if cfg.victim_rule == "image":
        score(np.arange(n))
    size = n if cfg.label_sample == 0 else min(cfg.label_sample, n)
    sample = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    score(sample)
    show(sample)
    named = caption_names([captions[i] for i in sample], categories) & ~sees[sample]
    affected = affected_label(clip_labels[sample], oracle[sample], n_cat, cfg.label_rule, named)
    label = affected["label"]
    tied = np.zeros(n, dtype=bool)
    if cfg.victim_rule == "caption":
        tied = names_label(captions, categories[label])
        score(np.flatnonzero(tied))
    tied |= (clip_labels == label).numpy()
    show(np.flatnonzero(tied))
    return {"clip": clip_labels, "oracle": oracle, "sees": sees[:, label], "scored": scored} | {
        "looked": looked,
        "sample": sample,
        "label": label,
        "affected": affected,
    }


def clip_labeller(model, weights: torch.Tensor, view, device, batch_size: int = 256, progress: bool = False):
    """`oracle_pass`'s `clip`: CLIP's zero-shot labels, under `weights` (D x C), of the uint8
    images of `view` (a tensor or a `DefenderView`) at the given positions, batch by batch."""

    @torch.no_grad()
    def clip(positions: torch.Tensor) -> torch.Tensor:
        out = []
        for s in tqdm(range(0, len(positions), batch_size), desc="CLIP's labels", disable=not progress):
            x = view[positions[s : s + batch_size]]
            out.append((encode_images(model, x, device, len(x)) @ weights).argmax(1).cpu())
        return torch.cat(out)

    return clip


def class_scorer(model, weights: torch.Tensor, label: int):
    """x ([0, 1] batch) -> CLIP's margin for `label` under zero-shot `weights` (D x C): its
    logit less the log-sum-exp of the others'. Unlike the probability, the margin does not
    saturate where a backdoor makes CLIP certain, so occlusion and gradients still read it."""
    others = [c for c in range(weights.shape[1]) if c != label]

    def score(x: torch.Tensor) -> torch.Tensor:
        x = x.to(weights.device)
        logits = 100.0 * F.normalize(model.encode_image(normalize(x)).float(), dim=-1) @ weights
        return logits[:, label] - torch.logsumexp(logits[:, others], dim=1)

    return score


@torch.no_grad()
def occlusion_maps(score, x: torch.Tensor, patch: int, batch_size: int = 1024) -> torch.Tensor:
    """N x H x W: the drop in `score` when a patch x patch window over each pixel is greyed
    (set to the image's mean colour), averaged over the windows (slid at half a side) covering
    it; a rise counts as no drop."""
    n, _, h, w = x.shape
    stride = max(1, patch // 2)
    windows = [
        (t, left)
        for t in sorted({*range(0, h - patch + 1, stride), h - patch})
        for left in sorted({*range(0, w - patch + 1, stride), w - patch})
    ]
    masks = torch.zeros(len(windows), 1, h, w, device=x.device)
    for k, (t, left) in enumerate(windows):
        masks[k, :, t : t + patch, left : left + patch] = 1
    total = torch.zeros(n, h, w)
    per_chunk = max(1, batch_size // len(windows))
    for s in range(0, n, per_chunk):
        xs = x[s : s + per_chunk]
        grey = xs.mean(dim=(2, 3), keepdim=True)
        # windows x images, flattened: occluded[k * b + i] is image i with window k greyed
        occluded = xs[None] * (1 - masks[:, None]) + grey[None] * masks[:, None]
        drops = (score(xs)[None] - score(occluded.flatten(0, 1)).view(len(windows), len(xs))).clamp(min=0)
        total[s : s + len(xs)] = torch.einsum("kb,khw->bhw", drops, masks[:, 0]).cpu()
    return total / masks[:, 0].sum(0).cpu()


def gradient_maps(score, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """N x H x W: |d score / d pixel|, summed over the colour channels (a saliency map)."""
    out = []
    for s in range(0, len(x), batch_size):
        xs = x[s : s + batch_size].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(xs).sum(), xs)
        out.append(grad.abs().sum(1).cpu())
    return torch.cat(out)


def attribution_maps(score, x: torch.Tensor, method: str, patch: int = 4) -> torch.Tensor:
    """N x H x W maps of where `score` rests, by `method` (occlusion | gradient)."""
    check_choice("attribution", method, ATTRIBUTIONS)
    return occlusion_maps(score, x, patch) if method == "occlusion" else gradient_maps(score, x)


def trigger_estimate(
    suspects: torch.Tensor,
    maps: torch.Tensor,
    reference: torch.Tensor,
    score,
    region_threshold: float = 0.2,
    compact_max: float = 0.25,
) -> dict:
    """The trigger the disagreeing images share, from their [0, 1] images (`suspects`), their
    attribution maps (N x H x W, zero where the oracle sees the affected label), [0, 1] clean
    `reference` images and CLIP's margin for the affected label (`class_scorer`).

    Each map is normalised to sum 1 and the maps averaged (where CLIP looks); the shared
    residual is the suspects' mean image less the reference's (what they have in common that
    ordinary images lack). The region is where the product of the two reaches
    `region_threshold` of its peak. The estimate takes one of two forms, each tried on the
    reference images: the suspects' mean pasted over the region (a patch), or the residual
    added over the whole image. The patch is kept where it covers at most `compact_max` of the
    image (a larger paste would erase the image) and makes CLIP give the label (a positive
    margin) at least as often as the added residual does: the defender checks its estimate
    against the model it suspects, not against a guess of the trigger's shape.
    """
    if len(reference) == 0:
        raise ValueError("trigger_estimate needs at least one reference image")
    if len(suspects) == 0:  # CLIP over-assigns nothing the oracle contradicts: no trigger to estimate
        blank = torch.zeros_like(reference[0])
        where, pattern, residual = torch.zeros(blank.shape[1:]), blank, blank
        region = torch.zeros(blank.shape[1:], dtype=torch.bool)
    else:
        where = (maps / maps.flatten(1).sum(1).clamp(min=1e-12)[:, None, None]).mean(0)
        pattern = suspects.mean(0)
        residual = pattern - reference.mean(0)
        weight = (where / where.max().clamp(min=1e-12)) * residual.abs().mean(0)
        region = weight >= region_threshold * weight.max().clamp(min=1e-12)
    estimate = {"region": region, "attribution": where, "pattern": pattern, "residual": residual}
    extent = region.float().mean().item()
    success = {
        form: labelled_share(score, reference, estimate | {"compact": form == "pasted"}) for form in FORMS
    }
    return estimate | {
        "extent": extent,
        "compact": extent <= compact_max and success["pasted"] >= success["added"],
        "success": success | {"none": labelled_share(score, reference)},
    }


def attribution_sets(
    clip_labels: torch.Tensor,
    oracle_labels: torch.Tensor,
    sees: torch.Tensor,
    label: int,
    cfg: OracleConfig,
    seed: int = 0,
    pool: np.ndarray | None = None,
) -> dict:
    """Training positions for the trigger estimate: `disagree`, the images CLIP gives `label`
    and the oracle does not see it in (`sees`: `segmenter.shows_label`); `suspects`, the first
    `cfg.attribution_images` of them; `reference`, a seeded draw of `cfg.reference_images`
    images (sorted) of `pool` (positions; default every image) on which CLIP and the oracle
    agree and the label is not seen: what an untriggered image looks like (any image of the
    pool outside `disagree` where none agree)."""
    pool = np.arange(len(clip_labels)) if pool is None else np.asarray(pool)
    disagree = np.flatnonzero(((clip_labels == label) & ~sees).numpy())
    agree = pool[((clip_labels == oracle_labels) & ~sees).numpy()[pool]]
    if len(agree) == 0:
        agree = np.setdiff1d(pool, disagree)
    pick = np.random.default_rng(seed).choice(agree, min(cfg.reference_images, len(agree)), False)
    return {
        "disagree": disagree,
        "suspects": torch.from_numpy(disagree[: cfg.attribution_images]),
        "reference": torch.from_numpy(np.sort(pick)),
    }


def locate_trigger(
    score, suspects: torch.Tensor, label_pixels: torch.Tensor, reference: torch.Tensor, cfg: OracleConfig
) -> tuple:
    """(`trigger_estimate`, the attribution maps) from the [0, 1] `suspects` (on the model's
    device), the pixels where the oracle sees the label in them (N x H x W bool: evidence for
    the label, not trigger, so left out of the maps) and the [0, 1] `reference` images."""
    maps = attribution_maps(score, suspects, cfg.attribution, cfg.patch).cpu()
    maps = maps * ~label_pixels.cpu()
    estimate = trigger_estimate(suspects.cpu(), maps, reference, score, cfg.region_threshold, cfg.compact_max)
    return estimate, maps


@torch.no_grad()
def labelled_share(score, x: torch.Tensor, estimate: dict | None = None, batch_size: int = 512) -> float:
    """% of the [0, 1] images `x` (carrying `estimate`, if given) on which `score` (a margin,
    `class_scorer`) is positive: those CLIP gives the label."""
    hits = 0
    for s in range(0, len(x), batch_size):
        xs = x[s : s + batch_size]
        hits += int((score(xs if estimate is None else apply_estimate(xs, estimate)) > 0).sum())
    return 100.0 * hits / max(1, len(x))


def apply_estimate(x: torch.Tensor, estimate: dict) -> torch.Tensor:
    """[0, 1] images carrying the trigger estimate: the pattern pasted over a compact region, or
    the residual added over the whole image."""
    if estimate["compact"]:
        m = estimate["region"].to(x.device, x.dtype)
        return x * (1 - m) + estimate["pattern"].to(x.device) * m
    return (x + estimate["residual"].to(x.device)).clamp(0, 1)


def true_footprint(trigger, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """H x W bool: the pixels `trigger` changes (by more than 1/255 in some channel) in at least
    half of the [0, 1] `images`: the ground truth a trigger estimate is scored against."""
    changed = (trigger(images, torch.Generator().manual_seed(seed)) - images).abs().amax(1) > 1 / 255
    return changed.float().mean(0) >= 0.5


def region_iou(region: torch.Tensor, truth: torch.Tensor) -> float:
    """Intersection over union of two H x W bool masks."""
    union = (region | truth).sum().item()
    return (region & truth).sum().item() / union if union else float("nan")


# ---------------------------------------------------------------- algorithm 2: victims, the set


def names_label(captions, label_name: str) -> np.ndarray:
    """Per caption: does it name `label_name` as a word?"""
    word = re.compile(rf"\b{re.escape(label_name.lower())}\b")
    return np.array([bool(word.search(c.lower())) for c in captions], dtype=bool)


def caption_names(captions, categories) -> torch.Tensor:
    """N x C bool: does each caption name each category (`names_label`)?"""
    return torch.from_numpy(np.stack([names_label(captions, c) for c in categories], 1))


def find_victims(
    rule: str,
    label: int,
    label_name: str,
    captions,
    clip_labels: torch.Tensor,
    oracle_sees: torch.Tensor,
) -> np.ndarray:
    """Positions of the pairs tied to `label` (their caption names it, rule "caption"; CLIP gives
    their image it, rule "image") in whose image the oracle does not see it (`oracle_sees`:
    `shows_label` of the oracle's maps)."""
    check_choice("victim_rule", rule, VICTIM_RULES)
    tied = names_label(captions, label_name) if rule == "caption" else (clip_labels == label).numpy()
    return np.flatnonzero(tied & ~oracle_sees.numpy())


def precision_recall(found: np.ndarray, truth: np.ndarray) -> dict:
    """Precision and recall (%) of the positions `found` against the bool mask `truth`."""
    hits = int(truth[found].sum()) if len(found) else 0
    return {
        "precision": 100.0 * hits / len(found) if len(found) else float("nan"),
        "recall": 100.0 * hits / max(int(truth.sum()), 1),
        "found": int(len(found)),
    }


def compact_set(
    n_pairs: int,
    victims: np.ndarray,
    victim_ok: np.ndarray,
    cfg: RectifyConfig,
    seed: int = 0,
) -> dict:
    """The compact fine-tuning set's training positions, by part (`SET_PARTS`).

    Victims come first, up to `victim_share` of `set_size`, among those the oracle can
    re-caption (`victim_ok`: it names an object in them); `pasted_share` of the set are other
    pairs that will carry the trigger estimate; the clean pairs fill the rest. All drawn
    without replacement, seeded."""
    cfg.validate(n_pairs)
    rng = np.random.default_rng(seed)
    usable = victims[victim_ok]
    n_victims = min(len(usable), int(round(cfg.victim_share * cfg.set_size)))
    others = np.setdiff1d(np.arange(n_pairs), victims)
    n_pasted = min(int(round(cfg.pasted_share * cfg.set_size)), len(others))
    n_clean = max(0, min(cfg.set_size - n_victims - n_pasted, len(others) - n_pasted))
    drawn = rng.choice(others, size=n_pasted + n_clean, replace=False)
    return {
        "victim": np.sort(rng.choice(usable, size=n_victims, replace=False)),
        "pasted": np.sort(drawn[:n_pasted]),
        "clean": np.sort(drawn[n_pasted:]),
    }


def oracle_captions(
    captions, victims: np.ndarray, oracle_labels: torch.Tensor, categories, templates, seed: int = 0
) -> list:
    """`captions` with each of the `victims` (positions) re-captioned from what the oracle sees
    in its image: a seeded template filled with the name of its oracle label."""
    rng = np.random.default_rng(seed)
    out = list(captions)
    for i in victims:
        out[i] = templates[rng.integers(len(templates))].format(categories[int(oracle_labels[i])])
    return out


def rectify(
    model,
    tokenizer,
    images: torch.Tensor,
    captions,
    parts: dict,
    estimate: dict,
    cfg: RectifyConfig,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
) -> list:
    """Fine-tune `model` in place on the compact set; returns the curve.

    `images`: the defender's uint8 view of the training pairs; `captions`: per position, the
    caption to train with (the oracle's for the victims, the pair's own for the rest); `parts`:
    `compact_set`'s positions. The loss is the CLIP loss on the set (the pasted part carries the
    trigger estimate) plus `cfg.retain_weight` times a retention term: the squared distance of
    clean images' embeddings (the pasted and clean parts, without the estimate) from where the
    poisoned model itself put them, since on clean images it is right."""
    positions = torch.from_numpy(np.concatenate([parts[p] for p in SET_PARTS]))
    n_victims = len(parts["victim"])
    pasted = torch.zeros(len(positions), dtype=torch.bool)
    pasted[n_victims : n_victims + len(parts["pasted"])] = True
    retain = torch.arange(n_victims, len(positions))  # rows whose images are clean
    set_images, tokens = images[positions], tokenize(tokenizer, [captions[int(i)] for i in positions])
    tc = cfg.train_config()
    steps = epoch_steps(tc.epochs, len(positions), tc.batch_size)
    order = batches(len(positions), tc.batch_size, steps, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    teacher = copy.deepcopy(model).eval() if cfg.retain_weight > 0 and len(retain) else None
    loss_fn = open_clip.ClipLoss()

    def loss_step():
        idx = next(order)
        x = to_unit(set_images[idx], device)
        rows = pasted[idx].to(device)
        if rows.any():
            x = x.clone()
            x[rows] = apply_estimate(x[rows], estimate)
        loss = clip_loss(model, x, tokens[idx].to(device), loss_fn)
        if teacher is not None:
            pick = retain[torch.randint(len(retain), (min(tc.batch_size, len(retain)),), generator=g)]
            clean = normalize(to_unit(set_images[pick], device))
            with torch.no_grad():
                target = F.normalize(teacher.encode_image(clean).float(), dim=-1)
            moved = F.normalize(model.encode_image(clean).float(), dim=-1) - target
            loss = loss + cfg.retain_weight * moved.pow(2).sum(1).mean()
        return loss

    with training_towers(model, cfg.towers):
        return optimize(
            model,
            loss_step,
            steps,
            tc,
            device,
            "oracle-guided rectification",
            progress,
            min(tc.batch_size, len(positions)),
            tokens,
        )


def defender_view(images: torch.Tensor, image_hook, batch_size: int = 1024, progress: bool = False):
    """The uint8 training images as the defender holds them: `image_hook(x, idx)` (the poisons'
    triggers) applied to consecutive batches, rounded back to uint8."""
    out = []
    for s in tqdm(range(0, len(images), batch_size), desc="defender's view", disable=not progress):
        idx = torch.arange(s, min(s + batch_size, len(images)))
        x = image_hook(to_unit(images[idx], "cpu"), idx)
        out.append((x * 255).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
