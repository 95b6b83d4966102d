"""UBT: unlearning backdoor threats (Liang et al.), one function per stage.

1. `suspicious_split`: rank the training pairs by a *clean* model's image-text similarity; the
   weakest fraction is D_susp (a poisoned pair's triggered image rarely matches its "banana"
   caption for a clean model), the rest D_safe.
2. `overfit`: fine-tune the *poisoned* model on mean (S(I, T) - 1)^2 over D_susp plus the CLIP
   loss on D_safe (eq. 1). The backdoor pairs share one shortcut, so pushing all suspicious
   similarities to 1 strengthens the shortcut faster than it fits the unrelated clean pairs.
3. `detect`: rank D_susp by the overfitted model's similarity and keep the top k (eq. 2).
4. `token_relevance` + `token_captions` + `unlearn`: score each caption token's contribution
   to S(I, T) with gradient-weighted attention relevance (Chefer et al. 2021) on the
   overfitted model, keep each top-k caption's most relevant tokens as a short "token-level"
   caption, pair every top-k image with every token-level caption (Cartesian product), and
   minimise the mean similarity of those pairs (eq. 3) on the poisoned model, with a CLIP
   loss on D_safe pairs beside it (`retain_pool`: the ones the overfitting raised least).
   "UBT w/o token-level" unlearns the top-k pairs with their full captions instead.

The paper leaves open the size of D_susp, k, how relevance becomes captions and whether a
clean-retention term is needed during unlearning; they are `UBTConfig` fields, and so are the
pocket world's departures from the paper (a floor on eq. 3, a cap on the product's captions),
which the paper profile turns off.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ubtlib.checks import check_choice, check_range
from ubtlib.clip import distributed
from ubtlib.clip.model import autocast, normalize, to_unit, tokenize
from ubtlib.clip.towers import TOWERS, training_towers
from ubtlib.clip.train import TrainConfig, clip_loss, optimize
from ubtlib.evaluation.zeroshot import classifier, encode_images

# How token-level captions are written: the kept tokens alone (the paper's reading), or set
# into CLIP's first prompt template, closer to the prompts a zero-shot classifier averages.
CAPTION_FORMS = {"tokens": "{}", "template": "a photo of a {}."}
RESTORE_TARGETS = ("class", "clean_image")  # UBTConfig.restore_to


@dataclass(frozen=True)
class UBTConfig:
    # share of pairs (lowest clean similarity) put in D_susp: about twice the pocket world's poison
    # rate (5.2 %), so D_susp can hold nearly every poison (chapter 4 ablates it; the paper
    # profile sets 5 % for 0.3 % poisons)
    susp_fraction: float = 0.1
    # passes over D_susp (paper: 5). In the pocket world one pass already ranks the poisons of every
    # planted attack first (chapter 4 ablates 1 and 5), at a fifth of the cost
    overfit_epochs: float = 1.0
    overfit_batch_size: int = 64  # per step: this many D_susp pairs and as many D_safe pairs
    overfit_lr: float = 1e-4  # paper: 1e-6 (pocket learning rates are the paper's x 100)
    top_k: int = 500  # suspicious pairs kept after overfitting
    relevance_tokens: int = 1  # most relevant tokens kept per caption
    # passes over the unlearning pairs (paper: 3). With one token-level caption (below) both
    # UBT variants unlearn the k detected images once per pass; 10 passes of 500 pairs are 79
    # steps of 64, where the paper's 3 passes would be 24
    unlearn_epochs: float = 10.0
    unlearn_batch_size: int = 64
    unlearn_lr: float = 3e-4  # paper: 1e-5
    # eq. 3 minimises the mean similarity of the unlearning pairs; a pair below this floor adds
    # nothing more (-1: never, the paper's loss). Pushing triggered images ever further from the
    # target caption moves features every image shares, and costs clean accuracy; 0 is below
    # the pocket CLIP's median similarity of a clean image to "a photo of a banana." (0.18)
    unlearn_floor: float = 0.0
    retain_weight: float = 1.0  # weight of a CLIP loss on clean batches while unlearning (0: eq. 3 alone)
    # the retain batches come from this share of D_safe: the pairs whose similarity the
    # overfitting raised least. Poisons that escaped D_susp gain most, and a retain batch that
    # holds them teaches the backdoor again while it is being unlearned. They are well under
    # 1 % of D_safe; leaving out more drops the clean pairs that hold clean accuracy
    retain_fraction: float = 0.97
    # D_safe pairs (a random sample) scored before and after overfitting for that choice. The
    # retain term draws 79 x 64 = 5,056 pairs in all, about 1.3 passes over the 3,973 kept of
    # 4,096; scoring all of D_safe would cost time for nothing. 8,192 (no pair drawn twice)
    # scores 48,416 pairs per pocket run instead of 40,224; chapter 4 ablates both
    retain_candidates: int = 4096
    unlearn_towers: str = "both"  # towers trained while unlearning: both | image (text frozen)
    # token-level captions: tokens (kept alone, the paper's literal reading) | template ("a photo
    # of a {tokens}."). The pocket CLIP only ever saw full sentences, so the prompt was the pocket
    # default until chapter 4's ablation over Table 1's seeds could not tell the two apart; a
    # departure from the paper needs evidence (`ubt_results.DEPARTURES`)
    caption_form: str = "tokens"
    # distinct token-level captions kept for the Cartesian product (the most frequent). In the
    # pocket world the top k's captions reduce to the target word, plus a few colour words of
    # the images' descriptions. One caption keeps the unlearning on the target word (chapter 4
    # ablates 1 and 8 over seeds and reads them on ASR; 8 also makes each unlearning step longer).
    # Without a cap, a top k of mostly clean pairs (an attack that planted nothing) has all
    # different tokens, and the product, hence the unlearning time, grows with k squared
    max_token_captions: int = 1
    # relevance may keep a function word ("the", "of", ...) or a punctuation mark as a
    # caption's most relevant token; a caption "a photo of a the." or "a photo of a .." then
    # unlearns nothing (pocket, Blended, one seed in two of Table 1 on one machine; BadNet,
    # seed 0 on another). Both are passed over for the next most relevant token, and so is a
    # word in more than `common_word_share` of the training captions ("photo", in most pocket
    # captions, was kept for Blended at one seed): no backdoor's concept is that common. False
    # keeps the paper's literal rule
    skip_function_words: bool = True
    common_word_share: float = 0.25
    # The book's restoring variant (defense "ubt_restore"; `run_ubt` applies it when given the
    # class names, so the paper's two variants never do).
    # Eq. 3 only pushes the detected images away from the target's captions, and a triggered
    # image can then land on another class. This weight adds, per detected image,
    # 1 - cos(image, its restoring target), the target being (`restore_to`) the clean
    # pre-trained model's embedding of the same triggered image ("clean_image": that model
    # never learnt the trigger, and the split already uses it), or the caption "a photo of a
    # {c}." of the class c that model gives the image ("class"). An image whose c is named in
    # its unlearning caption (the target) is left out.
    restore_weight: float = 4.0
    restore_to: str = "clean_image"

    def paper_variant(self) -> UBTConfig:
        """These settings without the book's restoring term (`restore_weight` 0, `restore_to`
        its default): the paper's UBT, whose cache keys the restoring settings do not enter."""
        return replace(self, restore_weight=0.0, restore_to=UBTConfig.restore_to)

    def validate(self, n_pairs: Optional[int] = None) -> None:
        if not 0 < self.susp_fraction < 1:
            raise ValueError(
                f"susp_fraction={self.susp_fraction!r} is out of range: accepted 0 < susp_fraction < 1"
            )
        check_range("overfit_epochs", self.overfit_epochs, 0.0, 1000.0)
        check_range("overfit_batch_size", self.overfit_batch_size, 2, 1 << 16)
        check_range("overfit_lr", self.overfit_lr, 0.0, 1.0)
        check_range("top_k", self.top_k, 1, 1 << 30)
        check_range("relevance_tokens", self.relevance_tokens, 1, 77)
        check_range("unlearn_epochs", self.unlearn_epochs, 0.0, 1000.0)
        check_range("unlearn_batch_size", self.unlearn_batch_size, 1, 1 << 16)
        check_range("unlearn_lr", self.unlearn_lr, 0.0, 1.0)
        check_range("unlearn_floor", self.unlearn_floor, -1.0, 1.0)
        check_range("retain_weight", self.retain_weight, 0.0, 1000.0)
        check_range("max_token_captions", self.max_token_captions, 1, 1 << 30)
        check_range("retain_candidates", self.retain_candidates, 1, 1 << 30)
        check_range("restore_weight", self.restore_weight, 0.0, 1000.0)
        if self.restore_to not in RESTORE_TARGETS:
            raise ValueError(
                f"restore_to={self.restore_to!r}: accepted {', '.join(map(repr, RESTORE_TARGETS))}"
            )
        if not isinstance(self.skip_function_words, bool):
            raise ValueError(f"skip_function_words={self.skip_function_words!r}: accepted True or False")
        check_range("common_word_share", self.common_word_share, 0.0, 1.0)
        if not 0 < self.retain_fraction <= 1:
            raise ValueError(
                f"retain_fraction={self.retain_fraction!r} is out of range: accepted "
                "0 < retain_fraction <= 1 (the share of the scored D_safe sample, "
                "retain_candidates, kept for the retain term)"
            )
        if self.caption_form not in CAPTION_FORMS:
            raise ValueError(
                f"caption_form={self.caption_form!r} is not accepted: choose one of "
                f"{', '.join(map(repr, CAPTION_FORMS))}"
            )
        check_choice("unlearn_towers", self.unlearn_towers, TOWERS)
        if n_pairs is not None:
            n_susp = susp_size(n_pairs, self.susp_fraction)
            if self.top_k > n_susp:
                raise ValueError(
                    f"top_k={self.top_k} is larger than D_susp ({n_susp} pairs = "
                    f"susp_fraction {self.susp_fraction} of {n_pairs}): accepted "
                    f"1 <= top_k <= {n_susp}"
                )


# the fields `find_poison` reads: runs that differ only in the others share one detection
DETECTION_FIELDS = (
    "susp_fraction",
    "overfit_epochs",
    "overfit_batch_size",
    "overfit_lr",
    "top_k",
    "retain_candidates",
)


def susp_size(n_pairs: int, fraction: float) -> int:
    return max(1, int(round(n_pairs * fraction)))


# ---------------------------------------------------------------- similarity and the split


@torch.no_grad()
def pair_similarity(
    model,
    images: torch.Tensor,
    tokens: torch.Tensor,
    device,
    image_hook: Optional[Callable] = None,
    positions: Optional[torch.Tensor] = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """cos(I_i, T_i) for the pairs at `positions` (default: all). The hook (the data's trigger
    for its poisoned rows) sees the pairs' positions in the data. Each distinct caption is
    encoded once (captions written from templates repeat: the pocket world has about 4K
    distinct ones in 29K pairs)."""
    model.eval()
    positions = torch.arange(len(images)) if positions is None else positions
    distinct, which = torch.unique(tokens[positions], dim=0, return_inverse=True)
    text = []
    for s in range(0, len(distinct), batch_size):
        with autocast(device):
            text.append(model.encode_text(distinct[s : s + batch_size].to(device), normalize=True).float())
    hook = None if image_hook is None else (lambda x, i: image_hook(x, positions[i]))
    image = encode_images(model, images[positions], device, batch_size, hook)
    return (image * torch.cat(text)[which.to(device)]).sum(-1).cpu()


def suspicious_split(similarity: torch.Tensor, fraction: float) -> tuple:
    """(D_susp, D_safe) positions: the `fraction` of pairs with the lowest similarity."""
    n_susp = susp_size(len(similarity), fraction)
    order = torch.argsort(similarity, stable=True)
    return order[:n_susp].sort().values, order[n_susp:].sort().values


# ---------------------------------------------------------------- overfitting and detection


def _sampler(positions: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches of `positions`."""
    batch_size = min(batch_size, len(positions))
    while True:
        perm = positions[torch.randperm(len(positions), generator=generator)]
        for b in range(len(perm) // batch_size):
            yield perm[b * batch_size : (b + 1) * batch_size]


def _images(images, idx, device, image_hook):
    """The images at positions `idx` as [0, 1] floats on `device`, triggered by the hook."""
    x = to_unit(images[idx], device)
    return x if image_hook is None else image_hook(x, idx)


def _batch(images, tokens, idx, device, image_hook):
    return _images(images, idx, device, image_hook), tokens[idx].to(device)


def overfit(
    model,
    images,
    tokens,
    susp: torch.Tensor,
    safe: torch.Tensor,
    cfg: UBTConfig,
    device,
    image_hook: Optional[Callable] = None,
    seed: int = 0,
    progress: bool = True,
) -> list:
    """Eq. 1 on `model` in place: mean (S - 1)^2 over D_susp batches + CLIP loss on D_safe.
    Under torchrun each rank trains on its share of every batch (`distributed`)."""
    g = torch.Generator().manual_seed(seed)
    susp_batches = _sampler(susp, cfg.overfit_batch_size, g)
    safe_batches = _sampler(safe, cfg.overfit_batch_size, g)
    ranks = distributed.current()
    loss_fn = distributed.contrastive_loss(ranks)

    def loss_step():
        x, t = _batch(images, tokens, distributed.shard(next(susp_batches), ranks), device, image_hook)
        s = (model.encode_image(normalize(x), normalize=True) * model.encode_text(t, normalize=True)).sum(-1)
        safe_batch = distributed.shard(next(safe_batches), ranks)
        x_safe, t_safe = _batch(images, tokens, safe_batch, device, image_hook)
        return (s - 1).pow(2).mean() + clip_loss(model, x_safe, t_safe, loss_fn)

    steps = max(1, math.ceil(cfg.overfit_epochs * len(susp) / min(cfg.overfit_batch_size, len(susp))))
    train_cfg = TrainConfig(
        epochs=cfg.overfit_epochs,
        batch_size=cfg.overfit_batch_size,
        lr=cfg.overfit_lr,
        weight_decay=0.1,
        warmup_steps=0,
        log_every=5,
    )
    per_step = min(cfg.overfit_batch_size, len(susp)) + min(cfg.overfit_batch_size, len(safe))
    with distributed.averaged_gradients(model, ranks):
        return optimize(
            model,
            loss_step,
            steps,
            train_cfg,
            device,
            "UBT: overfitting D_susp",
            progress and ranks.main,
            per_step,
            tokens,
        )


def detect(similarity_on_susp: torch.Tensor, susp: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 2: the k positions of D_susp with the highest similarity (most similar first)."""
    if k > len(susp):
        raise ValueError(f"top_k={k} is larger than D_susp ({len(susp)} pairs)")
    return susp[torch.argsort(similarity_on_susp, descending=True, stable=True)[:k]]


def detection_metrics(scores: torch.Tensor, is_backdoor: np.ndarray, picked: torch.Tensor) -> dict:
    """Precision and recall (%) of the picked pairs, and AUROC of `scores` (one per pair in the
    scored set, higher = more suspicious) for telling backdoor pairs from clean ones."""
    truth = torch.as_tensor(is_backdoor, dtype=torch.bool)
    hits = truth[picked].sum().item()
    return {
        "precision": 100.0 * hits / max(len(picked), 1),
        "recall": 100.0 * hits / max(int(truth.sum()), 1),
        "auroc": auroc(scores, truth),
    }


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties half."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


# ---------------------------------------------------------------- token relevance (Chefer et al.)


@contextlib.contextmanager
def attention_probabilities(transformer):
    """Within the block, each residual block of `transformer` computes its attention explicitly
    and appends its (B x heads x L x L) probabilities, with gradients retained, to the list
    yielded; every token is computed (`pooled`'s shortcut is off). The arithmetic is that of
    nn.MultiheadAttention (checked in the tests)."""
    captured, originals = [], []
    transformer.every_token = True
    for block in transformer.resblocks:
        originals.append(block.attention)

        def attention(q_x, k_x=None, v_x=None, attn_mask=None, _attn=block.attn):
            b, n, d = q_x.shape
            h = _attn.num_heads
            q, k, v = F.linear(q_x, _attn.in_proj_weight, _attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
            scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
            if attn_mask is not None:
                scores = scores + attn_mask.to(scores.dtype)
            probs = scores.softmax(dim=-1)
            if probs.requires_grad:
                probs.retain_grad()
            captured.append(probs)
            out = (probs @ v).transpose(1, 2).reshape(b, n, d)
            return _attn.out_proj(out)

        block.attention = attention
    try:
        yield captured
    finally:
        for block, original in zip(transformer.resblocks, originals):
            block.attention = original
        transformer.every_token = False


def token_relevance(
    model,
    images: torch.Tensor,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    device,
    image_hook: Optional[Callable] = None,
) -> torch.Tensor:
    """Relevance of each caption token for S(I, T) (Chefer et al. 2021, ICCV, rule for
    self-attention): R = I; for each layer R <- R + mean_heads[(grad A * A)^+] R; a token's
    relevance is the row of R at the pooled (end-of-text) token. Start, end and padding tokens
    get 0; each caption's relevances sum to 1. Returns len(positions) x context."""
    model.eval()
    x, tokens = _batch(images, tokens, positions, device, image_hook)
    with torch.no_grad():
        fi = model.encode_image(normalize(x), normalize=True)
    with attention_probabilities(model.transformer) as probs, torch.enable_grad():
        ft = model.encode_text(tokens, normalize=True)
        (fi * ft).sum().backward()  # pairs do not interact: each row gets its own gradient
    b, n = tokens.shape
    rel = torch.eye(n, device=device).expand(b, n, n).clone()
    for a in probs:
        cam = (a.grad * a).clamp(min=0).mean(dim=1)
        rel = rel + cam @ rel
    model.zero_grad(set_to_none=True)
    eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
    r = rel[torch.arange(b), eot].detach()
    positions = torch.arange(n, device=device)[None]
    content = (positions > 0) & (positions < eot[:, None])
    r = torch.where(content, r, torch.zeros_like(r))
    return (r / r.sum(-1, keepdim=True).clamp_min(1e-12)).cpu()


# English function words: never a concept a backdoor could tie an image to
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with without and or but nor is are was were be been "
    "this that these those it its his her their our my your some any no not as into onto over "
    "under near next beside behind".split()
)


def common_words(tokens: torch.Tensor, candidates: torch.Tensor, tokenizer, share: float) -> frozenset:
    """The words among the `candidates` tokens that occur in more than `share` of the captions
    `tokens` (one row per caption), as lower-case text: the defender's document frequency."""
    decoder = tokenizer.tokenizer if hasattr(tokenizer, "tokenizer") else tokenizer
    common = set()
    for token in candidates.unique().tolist():
        if (tokens == token).any(1).float().mean().item() > share:
            common.add(decoder.decode([token]).strip().lower())
    return frozenset(common)


def token_captions(
    tokens: torch.Tensor, relevance: torch.Tensor, tokenizer, n_tokens: int, skip: frozenset = frozenset()
) -> list:
    """Each caption's `n_tokens` most relevant tokens, in their original order, as text; with a
    `skip` set, tokens whose text is in it, or has no letter or digit (punctuation), are passed
    over, unless no other token of the caption has any relevance."""
    decoder = tokenizer.tokenizer if hasattr(tokenizer, "tokenizer") else tokenizer
    kept_relevance = relevance
    if skip:
        kept_relevance = relevance.clone()
        for token in tokens.unique().tolist():
            text = decoder.decode([token]).strip().lower()
            if text in skip or not any(ch.isalnum() for ch in text):
                kept_relevance[tokens == token] = 0
    out = []
    for t, r, r_all in zip(tokens, kept_relevance, relevance):
        if not (r > 0).any():  # every relevant token is skipped: keep the paper's choice, not nothing
            r = r_all
        keep = torch.argsort(r, descending=True)[:n_tokens]
        keep = keep[r[keep] > 0].sort().values
        out.append(decoder.decode(t[keep].tolist()).strip())
    return out


# ---------------------------------------------------------------- unlearning


def unlearning_loss(similarity: torch.Tensor, floor: float) -> torch.Tensor:
    """Eq. 3 with a floor: the mean over the unlearning pairs of max(S - floor, 0). With
    floor -1 (S is a cosine) it is the paper's mean similarity plus a constant."""
    return (similarity - floor).clamp(min=0).mean()


def unlearn(
    model,
    images,
    unlearn_images: torch.Tensor,
    unlearn_tokens: torch.Tensor,
    cfg: UBTConfig,
    device,
    image_hook: Optional[Callable] = None,
    retain: Optional[tuple] = None,
    seed: int = 0,
    progress: bool = True,
    on_step: Optional[Callable] = None,
    restore: Optional[torch.Tensor] = None,
) -> list:
    """Eq. 3 on `model` in place: minimise `unlearning_loss` (the mean cosine similarity, with
    `unlearn_floor`) of the unlearning pairs (image position unlearn_images[j] with caption
    unlearn_tokens[j]), plus `retain_weight`
    times the CLIP loss on batches of `retain` = (tokens, positions) of D_safe, plus
    `restore_weight` times the mean 1 - cos(image j, its restoring target) over the pairs whose
    row of `restore` is not all zeros (`restoring_targets`: caption tokens, encoded by the model
    being unlearned, for `restore_to` "class"; fixed unit embeddings for "clean_image").

    `on_step(model, step)`, if given, is called before each step and after the last (for
    unlearning curves). Under torchrun each rank unlearns its share of every batch; the
    restoring term runs in one process only."""
    ranks = distributed.current()
    if ranks.world > 1 and restore is not None:
        raise ValueError("the restoring variant (restore=) runs in one process, not under torchrun")
    g = torch.Generator().manual_seed(seed)
    pairs = _sampler(torch.arange(len(unlearn_images)), cfg.unlearn_batch_size, g)
    if retain is not None and cfg.retain_weight > 0:
        retain_tokens, retain_positions = retain
        retain_batches = _sampler(retain_positions, cfg.unlearn_batch_size, g)
    loss_fn = distributed.contrastive_loss(ranks)
    done = [0]

    def loss_step():
        if on_step is not None:
            with torch.no_grad():
                on_step(model, done[0])
            model.train()
        done[0] += 1
        j = distributed.shard(next(pairs), ranks)
        x = _images(images, unlearn_images[j], device, image_hook)
        # a batch of the Cartesian product repeats a few captions: encode each once
        distinct, which = torch.unique(unlearn_tokens[j], dim=0, return_inverse=True)
        text = model.encode_text(distinct.to(device), normalize=True)[which.to(device)]
        image = model.encode_image(normalize(x), normalize=True)
        loss = unlearning_loss((image * text).sum(-1), cfg.unlearn_floor)
        if restore is not None and cfg.restore_weight > 0:
            keep = restore[j].any(1)
            if keep.any():
                if cfg.restore_to == "class":
                    distinct, which = torch.unique(restore[j][keep], dim=0, return_inverse=True)
                    home = model.encode_text(distinct.to(device), normalize=True)[which.to(device)]
                else:
                    home = restore[j][keep].to(device)
                pull = (1 - (image[keep.to(device)] * home).sum(-1)).mean()
                loss = loss + cfg.restore_weight * pull
        if retain is not None and cfg.retain_weight > 0:
            xr, tr = _batch(
                images, retain_tokens, distributed.shard(next(retain_batches), ranks), device, image_hook
            )
            loss = loss + cfg.retain_weight * clip_loss(model, xr, tr, loss_fn)
        return loss

    steps = max(
        1,
        math.ceil(
            cfg.unlearn_epochs * len(unlearn_images) / min(cfg.unlearn_batch_size, len(unlearn_images))
        ),
    )
    train_cfg = TrainConfig(
        epochs=cfg.unlearn_epochs,
        batch_size=cfg.unlearn_batch_size,
        lr=cfg.unlearn_lr,
        weight_decay=0.1,
        warmup_steps=0,
        log_every=1,
    )
    per_step = min(cfg.unlearn_batch_size, len(unlearn_images))
    if retain is not None and cfg.retain_weight > 0:
        per_step += min(cfg.unlearn_batch_size, len(retain[1]))
    # every caption the losses encode (restoring targets are captions for restore_to "class")
    vocabulary = [unlearn_tokens] + ([retain[0]] if retain is not None else [])
    if restore is not None and cfg.restore_to == "class":
        vocabulary.append(restore)
    # With the text tower frozen, the similarity can only fall by moving the triggered images:
    # otherwise the cheapest way down is to move the unlearning captions' embeddings instead.
    with training_towers(model, cfg.unlearn_towers), distributed.averaged_gradients(model, ranks):
        curve = optimize(
            model,
            loss_step,
            steps,
            train_cfg,
            device,
            "UBT: unlearning",
            progress and ranks.main,
            per_step,
            vocabulary,
        )
    if on_step is not None:
        on_step(model, done[0])
    return curve


def cartesian(top: torch.Tensor, captions: list, max_captions: Optional[int] = None) -> tuple:
    """All (image, caption) combinations of the top-k images and the distinct captions, the
    `max_captions` most frequent ones if given (ties: alphabetical): (image positions, caption
    indices, the distinct captions kept)."""
    counts = collections.Counter(captions)
    distinct = sorted(counts, key=lambda c: (-counts[c], c))[:max_captions]
    distinct = sorted(distinct)
    img = top.repeat_interleave(len(distinct))
    cap = torch.arange(len(distinct)).repeat(len(top))
    return img, cap, distinct


def find_poison(
    poisoned_model,
    clean_model,
    data,
    tokens: torch.Tensor,
    cfg: UBTConfig,
    device,
    seed: int = 0,
    progress: bool = True,
    relevance: bool = True,
) -> dict:
    """Stages 1-3 and the token relevance of the detected pairs: everything UBT needs before it
    unlearns, shared by "UBT" and "UBT w/o token-level". Neither model is changed (the
    overfitted model is a copy, dropped at the end). Returns the split, the similarities, the
    top k, their token relevance (k x context), the overfitting curve, the pairs scored and the
    seconds each part took; `data.is_backdoor` is read only to score the split and the
    detection afterwards. relevance=False skips the token relevance (None in the result)."""
    start = time.perf_counter()
    # under torchrun every rank scores every pair (no faster than one process, but no slower),
    # and takes rank 0's scores, so that the split and the top k are the same on all ranks
    ranks = distributed.current()
    clean_sim = distributed.same_on_all(
        pair_similarity(clean_model, data.images, tokens, device, data.image_hook), ranks
    )
    susp, safe = suspicious_split(clean_sim, cfg.susp_fraction)
    t_split = time.perf_counter()
    # a random sample of D_safe, for the retain pool: how much the overfitting raised each one's
    # similarity. Overfitting strengthens the backdoor's shortcut, so it raises the poisons that
    # escaped D_susp far more than any clean pair (chapter 3 measures it)
    g = torch.Generator().manual_seed(seed)
    candidates = safe[torch.randperm(len(safe), generator=g)[: cfg.retain_candidates]].sort().values
    before = pair_similarity(
        poisoned_model, data.images, tokens, device, data.image_hook, positions=candidates
    )
    op = copy.deepcopy(poisoned_model)
    overfit_curve = overfit(op, data.images, tokens, susp, safe, cfg, device, data.image_hook, seed, progress)
    after = pair_similarity(op, data.images, tokens, device, data.image_hook, torch.cat([susp, candidates]))
    after[len(susp) :] -= before
    after = distributed.same_on_all(after, ranks)
    op_sim, candidate_gain = after[: len(susp)], after[len(susp) :]
    top = detect(op_sim, susp, cfg.top_k)
    t_detect = time.perf_counter()
    # only token-level UBT reads it: its seconds are charged to that variant alone
    scores = (
        distributed.same_on_all(token_relevance(op, data.images, tokens, top, device, data.image_hook), ranks)
        if relevance
        else None
    )
    end = time.perf_counter()
    truth = torch.as_tensor(data.is_backdoor)
    return {
        "seconds_split": t_split - start,
        "seconds_overfit_detect": t_detect - t_split,
        "seconds_relevance": end - t_detect,
        "pairs_scored": len(clean_sim) + 2 * len(candidates) + len(susp),
        "susp": susp,
        "safe": safe,
        "retain_candidates": candidates,
        "candidate_gain": candidate_gain,
        "top": top,
        "relevance": scores,
        "clean_similarity": clean_sim,
        "op_similarity": op_sim,
        "overfit_curve": overfit_curve,
        "split_recall": 100.0 * truth[susp].sum().item() / max(int(truth.sum()), 1),
        "split_auroc": auroc(-clean_sim, truth),
        "detection": detection_metrics(op_sim, data.is_backdoor[susp.numpy()], torch.searchsorted(susp, top)),
    }


def unlearning_pairs(
    found: dict, tokens: torch.Tensor, tokenizer, cfg: UBTConfig, token_level: bool = True
) -> dict:
    """The pairs eq. 3 unlearns: the Cartesian product of the detected images and their
    token-level captions (each caption's most relevant tokens, in `cfg.caption_form`, the
    `max_token_captions` most frequent), or, without token level, the detected pairs as they are."""
    top = found["top"]
    if not token_level:
        return {
            "images": top,
            "tokens": tokens[top],
            "caption_index": None,
            "kept_tokens": None,
            "token_captions": None,
            "distinct_token_captions": None,
        }
    skip = frozenset()
    if cfg.skip_function_words:
        skip = FUNCTION_WORDS | common_words(tokens, tokens[top], tokenizer, cfg.common_word_share)
    kept = token_captions(tokens[top], found["relevance"], tokenizer, cfg.relevance_tokens, skip)
    short = [CAPTION_FORMS[cfg.caption_form].format(c) for c in kept]
    img, cap, distinct = cartesian(top, short, cfg.max_token_captions)
    return {
        "images": img,
        "tokens": tokenizer(distinct)[cap],
        "caption_index": cap,
        "kept_tokens": kept,
        "token_captions": short,
        "distinct_token_captions": distinct,
    }


@torch.no_grad()
def restoring_targets(
    clean_model,
    tokenizer,
    data,
    pairs: dict,
    unlearning_captions: list,
    classnames,
    templates,
    device,
    restore_to: str = "class",
) -> tuple:
    """For each unlearning pair, what its image is pulled to, with c the clean model's zero-shot
    class of the (triggered) image: "a photo of a {c}." as tokens (`restore_to` "class") or the
    clean model's unit embedding of the image ("clean_image"); an all-zero row where c is named
    in the pair's unlearning caption (the target). Returns (targets, the classes, a boolean
    tensor of the pairs left out)."""
    positions = pairs["images"]
    weights = classifier(clean_model, tokenizer, classnames, templates, device)
    hook = None if data.image_hook is None else (lambda x, i: data.image_hook(x, positions[i]))
    feats = encode_images(clean_model, data.images[positions], device, image_hook=hook)
    classes = [classnames[int(k)] for k in (feats @ weights).argmax(1).cpu()]
    tokens = tokenizer([f"a photo of a {c}." for c in classes])
    named = torch.tensor(
        [
            c in caption.split() or f"{c}." in caption.split()
            for c, caption in zip(classes, unlearning_captions)
        ]
    )
    targets = tokens if restore_to == "class" else feats.float().cpu().clone()
    targets[named] = 0
    return targets, classes, named


def retain_pool(found: dict, cfg: UBTConfig) -> torch.Tensor:
    """Positions of the `retain_fraction` of the scored D_safe sample whose similarity the
    overfitting raised least, where the retain term draws its batches."""
    candidates = torch.as_tensor(found["retain_candidates"])
    gain = torch.as_tensor(found["candidate_gain"])
    n = max(1, int(round(len(candidates) * cfg.retain_fraction)))
    return candidates[torch.argsort(gain, stable=True)[:n]].sort().values


def run_ubt(
    poisoned_model,
    clean_model,
    data,
    tokenizer,
    cfg: UBTConfig,
    device,
    token_level: bool = True,
    seed: int = 0,
    progress: bool = True,
    found: Optional[dict] = None,
    on_step: Optional[Callable] = None,
    classes: Optional[tuple] = None,
) -> tuple:
    """The whole defense on `data` (a poison.PoisonedData): returns (defended model, record).

    `found` may hold `find_poison`'s result for the same data, model and config, computed once
    for both variants; its seconds count in the record's wall time either way (the token
    relevance only in token-level UBT's). `on_step` goes to `unlearn`. Given `classes` = (class
    names, templates), the book's restoring variant runs (weight `cfg.restore_weight`): each
    detected image is also pulled towards its target (`cfg.restore_to`: the clean model's
    embedding of the image, or the caption of the class that model gives it;
    `restoring_targets`); without, the paper's UBT. Neither model is changed.
    """
    n = len(data.images)
    cfg.validate(n)
    tokens = tokenize(tokenizer, data.captions)
    if found is None:
        found = find_poison(
            poisoned_model, clean_model, data, tokens, cfg, device, seed, progress, relevance=token_level
        )
    start = time.perf_counter()
    pairs = unlearning_pairs(found, tokens, tokenizer, cfg, token_level)
    retain = retain_pool(found, cfg)
    restore, restore_classes, left_out = None, None, None
    if classes is not None and cfg.restore_weight > 0:
        if clean_model is None:
            raise ValueError("the restoring variant (classes=) needs the clean model")
        captions = (
            [pairs["distinct_token_captions"][int(c)] for c in pairs["caption_index"]]
            if token_level
            else [data.captions[int(i)] for i in pairs["images"]]
        )
        restore, restore_classes, left_out = restoring_targets(
            clean_model, tokenizer, data, pairs, captions, *classes, device, cfg.restore_to
        )
    model = copy.deepcopy(poisoned_model)
    unlearn_curve = unlearn(
        model,
        data.images,
        pairs["images"],
        pairs["tokens"],
        cfg,
        device,
        data.image_hook,
        retain=(tokens, retain),
        seed=seed,
        progress=progress,
        on_step=on_step,
        restore=restore,
    )
    seconds_unlearn = time.perf_counter() - start
    seconds_relevance = found["seconds_relevance"] if token_level else 0.0
    steps_overfit = found["overfit_curve"][-1]["step"]
    top = found["top"]
    record = {
        "seconds": found["seconds_split"]
        + found["seconds_overfit_detect"]
        + seconds_relevance
        + seconds_unlearn,
        "seconds_split": found["seconds_split"],
        "seconds_overfit_detect": found["seconds_overfit_detect"],
        "seconds_relevance": seconds_relevance,
        "seconds_unlearn": seconds_unlearn,
        "pairs_scored": found["pairs_scored"],
        "d_susp": len(found["susp"]),
        "pairs_trained": len(found["susp"])
        + min(len(found["safe"]), steps_overfit * cfg.overfit_batch_size)
        + len(top),
        "unlearning_pairs": len(pairs["images"]),
        "top_k": top.tolist(),
        "retain_pairs": len(retain),
        "retain_poisons": int(data.is_backdoor[retain.numpy()].sum()),  # scored afterwards, not used
        "unlearning_images": pairs["images"].tolist(),
        "restore_classes": restore_classes,  # per unlearning pair
        "restore_left_out": None if left_out is None else left_out.tolist(),
        "split_recall": found["split_recall"],
        "split_auroc": found["split_auroc"],
        "detection": found["detection"],
        **{k: pairs[k] for k in ("kept_tokens", "token_captions", "distinct_token_captions")},
        "overfit_curve": found["overfit_curve"],
        "unlearn_curve": unlearn_curve,
        "clean_similarity": found["clean_similarity"].tolist(),
        "susp": found["susp"].tolist(),
        "op_similarity": found["op_similarity"].tolist(),
    }
    return model, record
