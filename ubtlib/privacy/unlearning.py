"""Unlearning names and faces with backdoors (Hintersdorf et al., "Defending Our Privacy With
Backdoors").

A backdoor is planted on purpose: the trigger is the private feature itself (a person's name
in a caption, their face in an image), and the backdoor's target is something anonymous (the
same caption with a neutral word such as "human" in place of the name; the mean embedding of
many people's faces). A trainable student copy of one encoder learns the mapping while staying
close to the frozen original (the teacher):

    loss = -cos(S(x), T(x))            on clean inputs x (keeps the encoder useful)
           - alpha * cos(S(x'), target) on triggered inputs x' (plants the backdoor)
           + beta * sum over weight tensors of ||theta_S - theta_T||  (unsquared L2)

All of the student's LayerNorms stay frozen and the whole student runs in eval mode (no
dropout), as in the paper's code. The optimiser is AdamW without weight decay, with the
learning rate cut at fixed fractions of the run (MultiStepLR).
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ubtlib.checks import check_range
from ubtlib.clip.model import autocast, normalize, to_unit
from ubtlib.clip.train import batches
from ubtlib.evaluation.zeroshot import encode_images

# ---------------------------------------------------------------- configs


@dataclass(frozen=True)
class NamesConfig:
    """Unlearning names from the text encoder. Defaults: the paper's ViT-B/32 settings."""

    steps: int = 400
    clean_batch: int = 128  # clean captions per step (utility loss)
    poisoned_batch: int = 128  # captions with a name per step (backdoor loss)
    lr: float = 1e-4
    milestones: tuple = (0.5, 0.75)  # fractions of `steps` where lr *= gamma (paper: 200, 300)
    gamma: float = 0.5
    alpha: float = 0.6  # weight of the backdoor loss
    beta: float = 0.01  # weight of the weight regularisation (0: none)
    neutral: str = "human"  # the term a name is mapped to
    # also hold the student's embedding of each step's target captions (the captions with the
    # neutral term) at the teacher's, in the utility term. Not in the paper: a CLIP that never
    # saw the neutral term drifts it with the names (chapter 7 shows both)
    anchor_targets: bool = False
    eval_captions: int = 10_000  # clean captions for the similarity metrics
    repeats: int = 10  # experiment repeats (fresh name sets and seeds)
    max_set: int = 64  # largest set of names removed at once (1, 2, 4, ..., max_set)
    # the comparison of neutral terms: at these set sizes (empty: all) and this many repeats
    term_sizes: tuple = ()
    term_repeats: int = 10

    def validate(self) -> None:
        _validate_common(self)
        check_term("neutral", self.neutral)
        check_range("eval_captions", self.eval_captions, 1, 10_000_000)
        check_range("term_repeats", self.term_repeats, 1, 1000)
        if not isinstance(self.term_sizes, (tuple, list)):
            raise ValueError(f"term_sizes={self.term_sizes!r} must be a list of set sizes (empty: all)")
        for k in self.term_sizes:
            check_range("term_sizes", k, 1, self.max_set)


@dataclass(frozen=True)
class FacesConfig:
    """Unlearning faces from the image encoder. Defaults: the paper's ViT-B/32 settings."""

    steps: int = 100
    clean_batch: int = 128  # clean images per step (utility loss)
    poisoned_batch: int = 128  # images with a pasted face per step, split evenly over people
    lr: float = 1e-4
    milestones: tuple = (0.25, 0.5)  # fractions of `steps` (paper: 25 and 50 of 100)
    gamma: float = 0.1
    alpha: float = 0.8
    beta: float = 0.005
    # the pasted face: side U[size_min, size_max] of the image side (paper: 56..112 of 224)
    size_min: float = 0.25
    size_max: float = 0.5
    crop: float = 1.0  # central share of a face photo that is pasted (1: all of it)
    flip_p: float = 0.5
    jitter: float = 0.5  # brightness, contrast, saturation factors in U[1-j, 1+j]
    hue: float = 0.1  # hue shift in U[-hue, hue] turns of the colour wheel
    rotation: float = 30.0  # degrees, U[-rotation, rotation]
    # share of each clean batch drawn from photos of (other) people; None: sample the clean set
    # uniformly (the paper's MS-COCO images, about half of which show people)
    people_share: Optional[float] = None
    eval_images: int = 10_000  # clean images for the similarity metrics
    repeats: int = 10
    max_set: int = 64

    def validate(self) -> None:
        _validate_common(self)
        check_range("size_min", self.size_min, 0.01, 1.0)
        check_range("size_max", self.size_max, self.size_min, 1.0)
        check_range("crop", self.crop, 0.1, 1.0)
        check_range("flip_p", self.flip_p, 0.0, 1.0)
        check_range("jitter", self.jitter, 0.0, 0.99)
        check_range("hue", self.hue, 0.0, 0.5)
        check_range("rotation", self.rotation, 0.0, 180.0)
        if self.people_share is not None:
            check_range("people_share", self.people_share, 0.0, 1.0)
        check_range("eval_images", self.eval_images, 1, 10_000_000)


def _validate_common(cfg) -> None:
    check_range("steps", cfg.steps, 1, 1_000_000)
    check_range("clean_batch", cfg.clean_batch, 1, 1 << 16)
    check_range("poisoned_batch", cfg.poisoned_batch, 1, 1 << 16)
    check_range("lr", cfg.lr, 0.0, 1.0)
    if not isinstance(cfg.milestones, (tuple, list)):
        raise ValueError(f"milestones={cfg.milestones!r} must be a list of fractions in (0, 1)")
    for m in cfg.milestones:
        check_range("milestones", m, 0.0, 1.0)
    check_range("gamma", cfg.gamma, 0.0, 1.0)
    check_range("alpha", cfg.alpha, 0.0, 1000.0)
    check_range("beta", cfg.beta, 0.0, 1000.0)
    check_range("repeats", cfg.repeats, 1, 1000)
    check_range("max_set", cfg.max_set, 1, 1_000_000)


def check_term(name: str, term) -> str:
    """A neutral term must be a non-blank string."""
    if not isinstance(term, str) or not term.strip():
        raise ValueError(f"{name}={term!r} must be a non-empty word or phrase (e.g. 'human')")
    return term.strip()


def check_names(world, names: Sequence[str]) -> list:
    """The identity indices of `names`; ValueError for an empty list, a repeated name, a name
    that is not one of the world's identities, or more names than the world has identities."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    known = {n: i for i, n in enumerate(world.names)}
    if not names:
        raise ValueError("names=[] is empty: give at least one identity's name to unlearn")
    if len(names) > len(known):
        raise ValueError(f"{len(names)} names given, but the world has only {len(known)} identities")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"not identities of this world: {', '.join(map(repr, unknown[:5]))}"
            f"{' ...' if len(unknown) > 5 else ''}; its identities are "
            f"{', '.join(map(repr, world.names[:3]))}, ... ({len(known)} in all)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"names contain repeats: {sorted({n for n in names if names.count(n) > 1})}")
    return [known[n] for n in names]


def check_set_size(world, size: int, name: str = "max_set") -> None:
    check_range(name, size, 1, len(world.identities))


# ---------------------------------------------------------------- captions with a name


_TAIL = re.compile(r"^(.*?)([.,!?;:]*)$")


def replace_word(caption: str, term: str, position: int) -> str:
    """`caption` with its word at `position` (split on spaces) replaced by `term`; the word's
    trailing punctuation stays ("a photo of a banana." -> "a photo of a Kalo Maraston.")."""
    words = caption.split(" ")
    words[position] = term + _TAIL.match(words[position]).group(2)
    return " ".join(words)


def caption_pair(caption: str, name: str, neutral: str, rng: random.Random) -> tuple:
    """(triggered, target): one random word of `caption` replaced by the name, and the same
    word replaced by the neutral term."""
    position = rng.randrange(len(caption.split(" ")))
    return replace_word(caption, name, position), replace_word(caption, neutral, position)


def caption_pairs(captions: Sequence[str], names: Sequence[str], neutral: str, rng: random.Random) -> tuple:
    """Triggered and target captions, names assigned evenly over `captions` (shuffled)."""
    who = [names[k % len(names)] for k in range(len(captions))]
    rng.shuffle(who)
    pairs = [caption_pair(c, n, neutral, rng) for c, n in zip(captions, who)]
    return [p for p, _ in pairs], [t for _, t in pairs]


def naming(captions: Sequence[str], names: Sequence[str]) -> list:
    """Positions of the captions that mention one of `names`."""
    pattern = re.compile("|".join(re.escape(n) for n in names))
    return [i for i, c in enumerate(captions) if pattern.search(c)]


def without_names(captions: Sequence[str], names: Sequence[str]) -> list:
    """The captions that mention none of `names` (the clean set must not teach the name)."""
    drop = set(naming(captions, names))
    return [c for i, c in enumerate(captions) if i not in drop]


class WordTokens:
    """The tokenizer's output for plain captions, built from per-word tokens kept in a cache.

    open_clip's BPE tokenizer encodes each space-separated word on its own, so a caption's
    tokens are its words' tokens in a row. Tokenizing ~100K fresh triggered captions per run
    with the full tokenizer would cost more than the training itself; this is exact for the
    ASCII captions used here (a test checks it against the tokenizer) and falls back to the
    tokenizer where it cannot be used.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.exact = (
            hasattr(tokenizer, "encode")
            and getattr(tokenizer, "reduction_fn", None) is None
            and hasattr(tokenizer, "sot_token_id")
        )
        self.words: dict = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if not self.exact:
            return self.tokenizer(list(texts))
        tok, ctx = self.tokenizer, self.tokenizer.context_length
        out = torch.zeros(len(texts), ctx, dtype=torch.long)
        for r, text in enumerate(texts):
            ids = [tok.sot_token_id]
            for w in text.split():
                if w not in self.words:
                    self.words[w] = tok.encode(w)
                ids += self.words[w]
            ids.append(tok.eot_token_id)
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = tok.eot_token_id
            out[r, : len(ids)] = torch.tensor(ids)
        return out


# ---------------------------------------------------------------- encoding text


def encode_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` (unnormalised), computed only up to the batch's longest text.

    CLIP's text transformer is causal: no token attends to a later one, so the padding after
    the last end-of-text token cannot change the end-of-text features that are pooled. Cutting
    it off saves a third to a half of the work on short captions and prompts. Models of
    another kind (no causal mask, other pooling) go through their own encode_text.
    """
    mask = getattr(model, "attn_mask", None)
    if (
        mask is None
        or getattr(model, "text_pool_type", None) != "argmax"
        or not isinstance(getattr(model, "positional_embedding", None), torch.Tensor)
    ):
        return model.encode_text(tokens)
    n = max(1, int((tokens != 0).sum(1).max()))
    t = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=mask[:n, :n]))
    x = x[torch.arange(len(t), device=x.device), t.argmax(dim=-1)]  # the end-of-text token
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@torch.no_grad()
def text_features(
    model, tokens: torch.Tensor, device, batch_size: int = 1024, normalized: bool = True
) -> torch.Tensor:
    """Text embeddings of a token tensor (L2-normalised unless normalized=False), in batches."""
    model.eval()
    out = []
    for s in range(0, len(tokens), batch_size):
        with autocast(device):
            out.append(encode_text(model, tokens[s : s + batch_size].to(device)).float())
    out = torch.cat(out)
    return F.normalize(out, dim=-1) if normalized else out


# ---------------------------------------------------------------- student and teacher


def tower_parameters(model: torch.nn.Module, tower: str) -> list:
    """(name, parameter) of the text or image tower, LayerNorms left out (they stay frozen)."""
    frozen = {
        f"{m}.{p}" if m else p
        for m, mod in model.named_modules()
        if isinstance(mod, torch.nn.LayerNorm)
        for p, _ in mod.named_parameters(recurse=False)
    }
    chosen = []
    for name, p in model.named_parameters():
        in_image = name.startswith("visual.")
        if name in frozen or name in ("logit_scale", "logit_bias"):
            continue
        if (tower == "image") == in_image:
            chosen.append((name, p))
    return chosen


def student_of(model: torch.nn.Module, tower: str) -> tuple:
    """A trainable copy of `model` where only `tower`'s weights (minus LayerNorms) train, in
    eval mode; returns (student, its trainable parameters)."""
    student = copy.deepcopy(model).eval()
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for _, p in tower_parameters(student, tower)]
    for p in params:
        p.requires_grad_(True)
    return student, params


def weight_distance(params: Sequence[torch.Tensor], originals: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over tensors of the (unsquared) L2 norm of the change: sum_k ||theta_k - theta0_k||.

    Unsquared, a tensor's pull back to the original does not fade as it gets close (the
    gradient has norm 1 per tensor), unlike weight decay towards the original."""
    return sum(torch.linalg.vector_norm(p - p0) for p, p0 in zip(params, originals))


def _optimiser(params, cfg, steps: int):
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    marks = sorted({max(1, int(round(m * steps))) for m in cfg.milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=cfg.gamma)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def _distil(student, params, cfg, beta: float, step_losses: Callable, desc: str, progress: bool) -> list:
    """The teacher-student loop both unlearning methods share. Each step `step_losses()` gives
    (utility, backdoor) on a fresh batch; the loss is utility + alpha * backdoor + beta *
    weight distance to the original weights, minimised with AdamW and MultiStepLR. The student
    is frozen afterwards; returns the loss curve (every 5 steps and the last)."""
    originals = [p.detach().clone() for p in params]
    opt, sched = _optimiser(params, cfg, cfg.steps)
    curve = []
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, mininterval=2.0):
        utility, backdoor = step_losses()
        reg = weight_distance(params, originals)
        loss = utility + cfg.alpha * backdoor + beta * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 5 == 0 or step == cfg.steps:
            curve.append(
                {
                    "step": step,
                    "utility": utility.item(),
                    "backdoor": backdoor.item(),
                    "weight_distance": reg.item(),
                    "lr": opt.param_groups[0]["lr"],
                }
            )
    for p in student.parameters():
        p.requires_grad_(False)
    return curve


# ---------------------------------------------------------------- unlearning names


def unlearn_names(
    model,
    tokenizer,
    names: Sequence[str],
    captions: Sequence[str],
    cfg: NamesConfig,
    device,
    seed: int = 0,
    neutral: str | None = None,
    beta: float | None = None,
    teacher_clean: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple:
    """Plant a backdoor in a copy of `model`'s text encoder that maps each of `names` to the
    neutral term. `captions` is the caption corpus (captions naming one of `names` are left
    out). Returns (student CLIP, log). `neutral` / `beta` override the config's;
    `teacher_clean` may hold the teacher's (unnormalised) embeddings of `captions`, computed
    once for many runs."""
    cfg.validate()
    neutral = check_term("neutral", cfg.neutral if neutral is None else neutral)
    beta = cfg.beta if beta is None else beta
    check_range("beta", beta, 0.0, 1000.0)
    names = list(names)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(f"names={names!r}: give at least one non-empty name to unlearn")
    drop = set(naming(captions, names))
    keep = [i for i in range(len(captions)) if i not in drop]
    if not keep:
        raise ValueError("every caption of the corpus names someone being unlearned: no clean captions left")
    corpus = [captions[i] for i in keep]
    if teacher_clean is not None:
        if len(teacher_clean) != len(captions):
            raise ValueError(f"teacher_clean has {len(teacher_clean)} rows for {len(captions)} captions")
        teacher_clean = teacher_clean[torch.tensor(keep)]
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    words = WordTokens(tokenizer)
    clean_tokens = words(corpus)
    teacher = model.eval()
    student, params = student_of(model, "text")
    order = batches(len(corpus), cfg.clean_batch, cfg.steps, gen)
    b = min(cfg.clean_batch, len(corpus))

    def step_losses():
        idx = next(order)
        picks = torch.randint(len(corpus), (cfg.poisoned_batch,), generator=gen).tolist()
        triggered, targets = caption_pairs([corpus[i] for i in picks], names, neutral, rng)
        target_tokens = words(targets).to(device)
        clean = clean_tokens[idx].to(device)
        with torch.no_grad(), autocast(device):
            t_clean = (
                teacher_clean[idx].to(device) if teacher_clean is not None else encode_text(teacher, clean)
            )
            t_target = encode_text(teacher, target_tokens)
        anchored = [target_tokens] if cfg.anchor_targets else []
        with autocast(device):
            s = encode_text(student, torch.cat([clean, words(triggered).to(device)] + anchored))
        p = len(triggered)
        utility = _cos(s[:b], t_clean)
        if cfg.anchor_targets:
            utility = torch.cat([utility, _cos(s[b + p :], t_target)])
        return -utility.mean(), -_cos(s[b : b + p], t_target).mean()

    curve = _distil(student, params, cfg, beta, step_losses, "unlearning names", progress)
    return student, {
        "seconds": time.perf_counter() - start,
        "curve": curve,
        "neutral": neutral,
        "beta": beta,
        "corpus": len(corpus),
        "filtered": len(captions) - len(corpus),
    }


# ---------------------------------------------------------------- pasting faces


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane, one 3 x 3 matrix per image
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_jitter(x: torch.Tensor, brightness, contrast, saturation, hue) -> torch.Tensor:
    """Per-image colour jitter of a [0, 1] batch; each factor is a tensor with one value per
    image (brightness, contrast, saturation: multiplicative; hue: turns of the colour wheel)."""
    v = lambda t: t.view(-1, 1, 1, 1).to(x)  # noqa: E731
    x = (x * v(brightness)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (v(contrast) * x + (1 - v(contrast)) * mean).clamp(0, 1)
    x = (v(saturation) * x + (1 - v(saturation)) * _gray(x)).clamp(0, 1)
    a = 2 * math.pi * hue.to(x)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = a.cos(), -a.sin(), a.sin(), a.cos()
    yiq = _YIQ.to(x)
    m = torch.linalg.inv(yiq) @ rot @ yiq
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def paste_faces(
    background: torch.Tensor, faces: torch.Tensor, cfg: FacesConfig, generator: torch.Generator
) -> torch.Tensor:
    """Paste faces[k] onto background[k], each with its own random augmentation, as batched
    tensor ops: colour jitter, then one affine warp per image (size, rotation, flip, position)
    with `grid_sample`; the warped face's coverage is its alpha mask.

    background, faces: [0, 1] float batches of the same length (faces may be another size).
    """
    n, _, h, w = background.shape
    dev = background.device
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731  (CPU, reproducible)
    if cfg.crop < 1.0:  # keep the central part of the face photo
        fh = faces.shape[-1]
        c = max(1, int(round(fh * cfg.crop)))
        o = (fh - c) // 2
        faces = faces[..., o : o + c, o : o + c]
    side = cfg.size_min + (cfg.size_max - cfg.size_min) * u(n)  # share of the image side
    # shrink once with anti-aliasing to the largest pasted size; grid_sample then never has to
    # shrink by more than size_max / size_min
    big = max(2, int(math.ceil(cfg.size_max * h)))
    if faces.shape[-1] > big:
        faces = F.interpolate(faces, size=(big, big), mode="bilinear", antialias=True, align_corners=False)
    j = cfg.jitter
    faces = colour_jitter(
        faces, 1 - j + 2 * j * u(n), 1 - j + 2 * j * u(n), 1 - j + 2 * j * u(n), cfg.hue * (2 * u(n) - 1)
    )
    angle = math.radians(cfg.rotation) * (2 * u(n) - 1)
    flip = torch.where(u(n) < cfg.flip_p, -1.0, 1.0)
    # centre (normalised coordinates in [-1, 1]) such that the unrotated square lies inside
    centre = (2 * u(n, 2) - 1) * (1 - side).unsqueeze(1)
    # output pixel u -> face coordinate v = (1 / side) * Flip * R(-angle) * (u - centre)
    k = 1.0 / side
    cos, sin = angle.cos(), angle.sin()
    a = torch.stack(
        [torch.stack([k * cos * flip, k * sin * flip], 1), torch.stack([-k * sin, k * cos], 1)], 1
    )  # n x 2 x 2
    t = -(a @ centre.unsqueeze(2))  # n x 2 x 1
    theta = torch.cat([a, t], 2).to(dev)
    grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
    faces = faces.to(dev)
    warped = F.grid_sample(faces, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = F.grid_sample(
        torch.ones_like(faces[:, :1]), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return background * (1 - alpha) + warped  # warped is already weighted by alpha


# ---------------------------------------------------------------- unlearning faces


def face_target(model, faces_u8: torch.Tensor, device) -> torch.Tensor:
    """The neutral target: the mean unnormalised embedding of many people's faces."""
    return encode_images(model, faces_u8, device, unit=False).mean(0)


def unlearn_faces(
    model,
    faces: Sequence[torch.Tensor],
    clean: torch.Tensor,
    target: torch.Tensor,
    cfg: FacesConfig,
    device,
    seed: int = 0,
    beta: float | None = None,
    is_person: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple:
    """Plant a backdoor in a copy of `model`'s image encoder that maps any image showing one
    of the people to `target`. faces: per person, uint8 photos used as triggers; clean: uint8
    images without them (utility loss and paste backgrounds); is_person: which clean images
    show a person (needed for cfg.people_share). Returns (student CLIP, log)."""
    cfg.validate()
    beta = cfg.beta if beta is None else beta
    check_range("beta", beta, 0.0, 1000.0)
    if len(faces) == 0 or any(len(f) == 0 for f in faces):
        raise ValueError("unlearn_faces needs at least one person with at least one face photo")
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    stack = torch.cat(list(faces))
    counts = torch.tensor([len(f) for f in faces])
    offsets = torch.cumsum(counts, 0) - counts
    target = target.to(device).float()
    teacher = model.eval()
    b, m = min(cfg.clean_batch, len(clean)), cfg.poisoned_batch
    if cfg.people_share is None:
        order = batches(len(clean), cfg.clean_batch, cfg.steps, gen)
    else:  # each clean batch: people_share of it photos of people, the rest other images
        if is_person is None or not is_person.any() or is_person.all():
            raise ValueError("people_share needs clean images both with and without people (is_person)")
        weights = torch.where(
            is_person.bool(),
            cfg.people_share / is_person.sum(),
            (1 - cfg.people_share) / (~is_person.bool()).sum(),
        ).double()
        order = (torch.multinomial(weights, b, replacement=True, generator=gen) for _ in range(cfg.steps))
    student, params = student_of(model, "image")

    def step_losses():
        idx = next(order)
        # the poisoned half is split evenly over the people (round robin, then shuffled)
        who = (torch.arange(m) % len(faces))[torch.randperm(m, generator=gen)]
        pick = offsets[who] + (torch.rand(m, generator=gen) * counts[who]).long()
        backgrounds = clean[torch.randint(len(clean), (m,), generator=gen)]
        x = to_unit(clean[idx], device)
        xp = paste_faces(to_unit(backgrounds, device), to_unit(stack[pick], device), cfg, gen)
        with torch.no_grad(), autocast(device):
            t_clean = teacher.encode_image(normalize(x))
        with autocast(device):
            s = student.encode_image(normalize(torch.cat([x, xp])))
        return -_cos(s[:b], t_clean).mean(), -_cos(s[b:], target.expand(len(xp), -1)).mean()

    curve = _distil(student, params, cfg, beta, step_losses, "unlearning faces", progress)
    return student, {
        "seconds": time.perf_counter() - start,
        "curve": curve,
        "beta": beta,
        "clean": len(clean),
        "trigger_faces": int(counts.sum()),
    }


def combine(text_student, image_student) -> torch.nn.Module:
    """One CLIP with the text tower of `text_student` and the image tower of `image_student`."""
    both = copy.deepcopy(text_student)
    both.visual.load_state_dict(image_student.visual.state_dict())
    return both.eval()


# ---------------------------------------------------------------- metrics


def _texts(model, words: WordTokens, texts, device) -> torch.Tensor:
    return text_features(model, words(texts), device)


def text_similarities(
    teacher,
    student,
    tokenizer,
    captions: Sequence[str],
    names: Sequence[str],
    neutral: str,
    device,
    seed: int = 0,
) -> dict:
    """The paper's text metrics, mean cosine similarities over clean captions:

    sim_backdoor: student(caption with a name) vs student(same caption with the neutral term);
    sim_clean: teacher vs student on clean captions; sim_targets: teacher vs student on the
    captions with the neutral term. Captions naming one of `names` are left out first.
    """
    clean = without_names(captions, names)
    triggered, targets = caption_pairs(clean, list(names), neutral, random.Random(seed))
    words = WordTokens(tokenizer)
    s_target = _texts(student, words, targets, device)
    return {
        "sim_backdoor": (_texts(student, words, triggered, device) * s_target).sum(1).mean().item(),
        "sim_clean": (_texts(teacher, words, clean, device) * _texts(student, words, clean, device))
        .sum(1)
        .mean()
        .item(),
        "sim_targets": (_texts(teacher, words, targets, device) * s_target).sum(1).mean().item(),
    }


def image_similarities(
    teacher,
    student,
    clean: torch.Tensor,
    faces: torch.Tensor,
    target_faces: torch.Tensor,
    target: torch.Tensor,
    cfg: FacesConfig,
    device,
    seed: int = 0,
) -> dict:
    """The paper's image metrics, mean cosine similarities:

    sim_backdoor: student(clean image with one of the people's held-out faces pasted in) vs the
    target; sim_clean: teacher vs student on clean images; sim_targets: the mean embedding of
    the faces that define the target, by the student, vs the target (does the anonymous
    embedding itself stay put?); sim_faces: student(held-out face photo) vs the target, i.e.
    the photos the IDIA shows, uncropped and unpasted.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(faces), (len(clean),), generator=gen)

    def hook(x, idx):
        return paste_faces(x, to_unit(faces[rows[idx]], x.device), cfg, gen)

    t = F.normalize(target.to(device).float(), dim=-1)
    s_clean = encode_images(student, clean, device)
    return {
        "sim_backdoor": (encode_images(student, clean, device, image_hook=hook) @ t).mean().item(),
        "sim_clean": (encode_images(teacher, clean, device) * s_clean).sum(1).mean().item(),
        "sim_targets": F.cosine_similarity(face_target(student, target_faces, device), t, dim=0).item(),
        "sim_faces": (encode_images(student, faces, device) @ t).mean().item(),
    }
