"""Zero-shot evaluation: prompt ensembles, top-k accuracy, name retrieval."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import open_clip
import torch
import torch.nn.functional as F

from ubtlib.clip.model import autocast, normalize, to_unit


def _as_text(template) -> str:
    return template("{}") if callable(template) else template


def pocket_templates(vocabulary: set) -> list:
    """The subset of CLIP's 80 ImageNet templates written only in words of `vocabulary`.

    A small model trained on the pocket world knows no word it never saw in a caption; prompts
    with unseen words ("a sculpture of", "origami") would only add noise to the ensemble.
    """
    chosen = []
    for t in open_clip.OPENAI_IMAGENET_TEMPLATES:
        words = _as_text(t).replace("{}", "").replace(".", " ").split()
        if all(w in vocabulary for w in words):
            chosen.append(_as_text(t))
    return chosen


@torch.no_grad()
def encode_images(
    model,
    images: torch.Tensor,
    device,
    batch_size: int = 256,
    image_hook: Optional[Callable] = None,
    unit: bool = True,
) -> torch.Tensor:
    """Image embeddings of uint8 images, L2-normalised unless `unit=False` (the privacy
    paper's losses use them raw); the hook acts on [0, 1] batches. The default batch keeps a
    pocket batch's activations within a CPU core's caches; larger ones run slower there."""
    model.eval()
    feats = []
    for s in range(0, len(images), batch_size):
        x = to_unit(images[s : s + batch_size], device)
        if image_hook is not None:
            x = image_hook(x, torch.arange(s, s + len(x)))
        with autocast(device):
            feats.append(model.encode_image(normalize(x)).float())
    feats = torch.cat(feats)
    return F.normalize(feats, dim=-1) if unit else feats


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], device, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    feats = []
    for s in range(0, len(texts), batch_size):
        with autocast(device):
            feats.append(model.encode_text(tokenizer(list(texts[s : s + batch_size])).to(device)).float())
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence, device) -> torch.Tensor:
    """Zero-shot weights (embed_dim x classes): per class, the renormalised mean of the
    normalised template embeddings (open_clip's helper)."""
    model.eval()
    with autocast(device):
        w = open_clip.build_zero_shot_classifier(
            model, tokenizer, list(classnames), list(templates), device=device
        )
    return w.float()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict:
    """Share (in %) of rows whose label is among the k highest logits."""
    labels = labels.to(logits.device)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    return {f"top{k}": 100.0 * (top[:, :k] == labels[:, None]).any(1).float().mean().item() for k in ks}


# Prompts for name retrieval: phrasings of the people captions, so the names are the only
# thing the prompts tell apart.
NAME_TEMPLATES = ("a photo of {}.", "{}", "an image of {}.", "portrait of {}.")


def zero_shot(model, tokenizer, world, device, split: str = "heldout", templates=None) -> dict:
    """Zero-shot classification of the world's object images in `split`.

    Returns top-1 / top-5 (%), per-class top-1 and the predictions. `templates` defaults to
    the CLIP ImageNet templates written in the pocket world's caption vocabulary.
    """
    from ubtlib.world.pocket import object_vocabulary

    templates = templates or pocket_templates(object_vocabulary())
    idx = world.indices(split, "object")
    labels = torch.from_numpy(world.label[idx])
    logits = encode_images(model, world.images[idx], device) @ classifier(
        model, tokenizer, world.categories, templates, device
    )
    pred = logits.argmax(1).cpu()
    per_class = {
        c: 100.0 * (pred[labels == k] == k).float().mean().item() for k, c in enumerate(world.categories)
    }
    return {
        **topk_accuracy(logits, labels),
        "per_class": per_class,
        "pred": pred.tolist(),
        "labels": labels.tolist(),
        "templates": list(templates),
    }


def name_retrieval(model, tokenizer, world, device, split: str = "eval") -> dict:
    """Top-1 / top-5 (%) of picking a face's own name among all the identities' names."""
    idx = world.indices(split, "person")
    labels = torch.from_numpy(world.identity[idx])
    logits = encode_images(model, world.images[idx], device) @ classifier(
        model, tokenizer, world.names, NAME_TEMPLATES, device
    )
    return {**topk_accuracy(logits, labels), "n_names": len(world.names), "n_images": len(idx)}


def attack_success_rate(logits: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """ASR (%): share of triggered images whose true class is not the target that are
    classified as the target (images of the target class itself are left out)."""
    labels = labels.to(logits.device)
    keep = labels != target
    if not keep.any():
        raise ValueError("attack_success_rate needs images whose class is not the target")
    return 100.0 * (logits[keep].argmax(1) == target).float().mean().item()
