"""The identity inference attack (IDIA): does a CLIP know a person's face by name?

The attack of Hintersdorf et al. ("Does CLIP Know My Face?"), as the privacy paper uses it to
measure unlearning. The attacker holds a few face photos of a person and a list of candidate
names: the person's own among many others. Each candidate name is written into each of a set
of prompt templates; for one template, every photo votes for the candidate whose prompt is
most similar to it, and the template's answer is the name with the most votes. A tie for the
most votes is no answer (counted wrong). The person counts as *recognised*, i.e. their data is
inferred to have been in the training set, if at least one template answers with the right
name.

Here the candidates are the world's identities followed by its distractor names (names that
never appear in a caption), and the photos are each identity's held-out "eval" faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ubtlib.checks import check_range
from ubtlib.evaluation.zeroshot import encode_images

# Our 21 prompt templates, in the spirit of the paper's ("{0}", "an image of {0}", ...):
# plain, photographic and event phrasings of a name. Every word appears in the pocket world's
# person captions, so the pocket CLIP knows them all.
PROMPTS = (
    "{}",
    "a photo of {}.",
    "an image of {}.",
    "portrait of {}.",
    "a close-up of {}.",
    "{} smiling.",
    "{} at the premiere.",
    "{} on the red carpet.",
    "{} at an event.",
    "{} looking at the camera.",
    "{} photographed outside.",
    "{} during an interview.",
    "{} in a red shirt.",
    "{} in a blue shirt.",
    "{} in a black shirt.",
    "a photo of {} smiling.",
    "a close-up of {} smiling.",
    "portrait of {} at the premiere.",
    "an image of {} on the red carpet.",
    "{} at the premiere, smiling.",
    "a photo of {} looking at the camera.",
)


@dataclass(frozen=True)
class IdiaConfig:
    prompts: int = 21  # the first n of PROMPTS (the paper uses 21)
    images: int = 20  # face photos per identity that vote (the paper uses 20)
    min_hits: int = 1  # templates that must name the person for "recognised" (paper: 1)

    def validate(self) -> None:
        check_range("prompts", self.prompts, 1, len(PROMPTS))
        check_range("images", self.images, 1, 100_000)
        check_range("min_hits", self.min_hits, 1, self.prompts)

    def check_world(self, world) -> None:
        """The world must hold `images` eval faces per identity (fails before any compute)."""
        check_range("idia_images", self.images, 1, world.config.faces_eval)


@dataclass
class IdiaResult:
    """Per identity: how many templates named them (hits) and whether that counts as recognised."""

    hits: np.ndarray  # int, one per identity: templates whose majority vote was right
    recognised: np.ndarray  # bool, hits >= min_hits
    prompt_hits: np.ndarray  # bool, templates x identities

    @property
    def rate(self) -> float:
        """Share (%) of identities recognised."""
        return 100.0 * float(self.recognised.mean())


def candidates(world) -> list:
    """The candidate names: the identities (index i = identity i), then the distractors."""
    return list(world.names) + list(world.distractor_names)


def prompt_features(model, tokenizer, names, device, n_prompts: int = len(PROMPTS)) -> torch.Tensor:
    """Normalised text embeddings of every template filled with every name: P x K x d."""
    from ubtlib.privacy.unlearning import WordTokens, text_features

    words = WordTokens(tokenizer)
    return torch.stack(
        [text_features(model, words([p.format(n) for n in names]), device) for p in PROMPTS[:n_prompts]]
    )


def template_backdoor(
    model, tokenizer, names, neutral: str, device, n_prompts: int = len(PROMPTS)
) -> torch.Tensor:
    """Sim_Backdoor per prompt template: for each of the first `n_prompts` templates, the mean
    over `names` of cos(model(template with the name), model(template with `neutral`)). Shows
    which phrasings a name backdoor covers: the attack needs only one it misses."""
    named = prompt_features(model, tokenizer, names, device, n_prompts)  # P x K x d
    plain = prompt_features(model, tokenizer, [neutral], device, n_prompts)  # P x 1 x d
    return (named * plain).sum(-1).mean(1).cpu()


def face_features(model, world, device, n_images: int, image_hook=None) -> torch.Tensor:
    """Normalised embeddings of the first `n_images` eval faces of each identity: N x I x d."""
    idx = eval_faces(world, n_images)
    feats = encode_images(model, world.images[idx.reshape(-1)], device, image_hook=image_hook)
    return feats.reshape(idx.shape[0], idx.shape[1], -1)


def eval_faces(world, n_images: int) -> np.ndarray:
    """World indices of the first `n_images` eval faces per identity: N x I."""
    idx = world.indices("eval", "person")
    return np.stack([idx[world.identity[idx] == p][:n_images] for p in range(len(world.identities))])


def predictions(faces: torch.Tensor, prompts: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """The candidate each photo picks under each template: P x N x I (long).

    faces: N x I x d, prompts: P x K x d, both L2-normalised (dot product = cosine).
    """
    n, i, d = faces.shape
    flat = faces.reshape(n * i, d)
    out = torch.empty(prompts.shape[0], n * i, dtype=torch.long)
    for p in range(prompts.shape[0]):
        for s in range(0, n * i, batch):
            out[p, s : s + batch] = (flat[s : s + batch] @ prompts[p].T).argmax(1).cpu()
    return out.reshape(-1, n, i)


def majority_hits(pred: torch.Tensor, truth: torch.Tensor, n_candidates: int) -> torch.Tensor:
    """Per template and identity, whether the photos' majority vote is the right name.

    pred: P x N x I candidate indices; truth: N (each identity's own candidate index).
    A tie for the most votes counts as wrong, even if the right name is among the tied.
    """
    p, n, _ = pred.shape
    counts = torch.zeros(p, n, n_candidates, dtype=torch.long)
    counts.scatter_add_(2, pred, torch.ones_like(pred))
    top = counts.max(dim=2).values
    right = counts.gather(2, truth.view(1, n, 1).expand(p, n, 1)).squeeze(2)
    alone = (counts == top.unsqueeze(2)).sum(2) == 1
    return (right == top) & alone


def attack(faces: torch.Tensor, prompts: torch.Tensor, min_hits: int = 1) -> IdiaResult:
    """The IDIA on precomputed embeddings: identity i's own name is candidate i."""
    truth = torch.arange(faces.shape[0])
    hits = majority_hits(predictions(faces, prompts), truth, prompts.shape[1])
    per_identity = hits.sum(0).numpy()
    return IdiaResult(hits=per_identity, recognised=per_identity >= min_hits, prompt_hits=hits.numpy())


def run(model, tokenizer, world, device, cfg: IdiaConfig) -> IdiaResult:
    """The IDIA against `model` on the world's eval faces and all candidate names."""
    cfg.validate()
    cfg.check_world(world)
    faces = face_features(model, world, device, cfg.images)
    prompts = prompt_features(model, tokenizer, candidates(world), device, cfg.prompts)
    return attack(faces, prompts, cfg.min_hits)


def outcome(before: IdiaResult, after: IdiaResult, unlearned) -> dict:
    """What unlearning did to the attack, in the paper's terms.

    tpr: share (%) of the unlearned identities the IDIA still recognises; fnr = 100 - tpr;
    tpr_before: the same share before unlearning (100 when, as in the paper, only recognised
    identities are unlearned); among the *other* identities: wrongly_unlearned counts those
    recognised before but not after, newly_recalled those recognised after but not before.
    """
    unlearned = np.asarray(sorted(unlearned), dtype=np.int64)
    if len(unlearned) == 0:
        raise ValueError("outcome needs at least one unlearned identity")
    others = np.setdiff1d(np.arange(len(before.recognised)), unlearned)
    tpr = 100.0 * float(after.recognised[unlearned].mean())
    return {
        "tpr": tpr,
        "fnr": 100.0 - tpr,
        "tpr_before": 100.0 * float(before.recognised[unlearned].mean()),
        "wrongly_unlearned": int((before.recognised[others] & ~after.recognised[others]).sum()),
        "newly_recalled": int((~before.recognised[others] & after.recognised[others]).sum()),
        "n_unlearned": int(len(unlearned)),
    }
