"""What the privacy chapters compute: the IDIA on the pocket CLIP and the unlearning sweeps.

A `Setting` holds what every run shares (the world, the original model, its IDIA verdicts
and accuracy); `forget_names` and `forget_faces` unlearn one set of people and measure the
result; `sweep_*` run the paper's grid (set sizes 1, 2, 4, ..., nested; neutral terms; with
and without weight regularisation; repeats). Each run's numbers are cached, keyed by every
parameter and the code, so a chapter re-run reads them back.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import idia, pipeline, privacy
from . import model as modellib
from .cache import cached, write_json
from .checks import check_choice
from .evaluate import zero_shot
from .profiles import Profile

# cache keys include these modules' source: a code change recomputes the runs
_MODULES = ("world", "model", "train", "evaluate", "idia", "privacy", "forgetting")
METRICS = ("tpr", "fnr", "sim_backdoor", "sim_clean", "sim_targets", "top1", "top5",
           "wrongly_unlearned", "newly_recalled", "seconds")


@dataclass
class Setting:
    profile: Profile
    world: object
    model: torch.nn.Module           # the original (teacher) CLIP
    tokenizer: object
    device: torch.device
    names: list                      # candidate names: identities first, then distractors
    faces: torch.Tensor              # IDIA photos' embeddings by the original model, N x I x d
    prompts: torch.Tensor            # IDIA prompts' embeddings by the original model, P x K x d
    before: idia.IdiaResult          # the IDIA against the original model
    zero_shot: dict                  # the original model's zero-shot top-1 / top-5 (%)
    seconds: float                   # time the IDIA took

    @property
    def recognised(self) -> np.ndarray:
        return np.flatnonzero(self.before.recognised)


def setting(profile: Profile, progress: bool = True) -> Setting:
    """The pre-trained model, the IDIA against it and its zero-shot accuracy."""
    profile.idia.check_world(pipeline.world(profile, progress=progress))
    w = pipeline.world(profile, progress=progress)
    base = pipeline.pretrained(profile, progress=progress)
    device = modellib.pick_device(profile.device)
    start = time.perf_counter()
    names = idia.candidates(w)
    faces = idia.face_features(base.model, w, device, profile.idia.images)
    prompts = idia.prompt_features(base.model, base.tokenizer, names, device, profile.idia.prompts)
    before = idia.attack(faces, prompts, profile.idia.min_hits)
    seconds = time.perf_counter() - start
    zs = zero_shot(base.model, base.tokenizer, w, device)
    return Setting(profile, w, base.model, base.tokenizer, device, names, faces, prompts, before,
                   {"top1": zs["top1"], "top5": zs["top5"]}, seconds)


def set_sizes(max_set: int) -> list:
    """1, 2, 4, ... up to max_set (and max_set itself if it is not a power of two)."""
    sizes = [1 << k for k in range(max_set.bit_length()) if 1 << k <= max_set]
    return sizes + ([max_set] if sizes[-1] != max_set else [])


def people_order(s: Setting, repeat: int) -> np.ndarray:
    """A random order of the identities for one repeat: recognised ones first, as the paper
    unlearns only people the IDIA recognises; the others follow, used only when too few are
    recognised (tiny profiles). Prefixes of it are the nested sets X_1 in X_2 in ..."""
    rng = np.random.default_rng([s.profile.seed, repeat])
    known = s.recognised
    unknown = np.setdiff1d(np.arange(len(s.world.identities)), known)
    return np.concatenate([rng.permutation(known), rng.permutation(unknown)]).astype(int)


def _seed(s: Setting, repeat: int) -> int:
    return s.profile.seed * 1000 + repeat


def _key(s: Setting) -> dict:
    p = s.profile
    return dict(world=p.world, model=p.model, pretrain=p.pretrain, seed=p.seed, idia=p.idia)


def _accuracy(model, s: Setting) -> dict:
    zs = zero_shot(model, s.tokenizer, s.world, s.device)
    return {"top1": zs["top1"], "top5": zs["top5"],
            "top1_drop": s.zero_shot["top1"] - zs["top1"], "top5_drop": s.zero_shot["top5"] - zs["top5"]}


def _json_cached(stage: str, compute, **key):
    """A dict computed once per key (see cache.cached), stored as JSON."""
    import json

    def save(folder):
        write_json(folder / "result.json", compute())

    return cached(stage, _MODULES, save, lambda f: json.loads((f / "result.json").read_text()), **key)


# ---------------------------------------------------------------- names


def eval_captions(s: Setting, n: int) -> list:
    """Clean captions the model was not trained on (held-out objects, eval and trigger faces),
    at most n of them, for the similarity metrics (the paper: 10,000 MS-COCO captions)."""
    w = s.world
    idx = np.flatnonzero(w.split != "train")
    rng = np.random.default_rng(s.profile.seed)
    idx = np.sort(rng.permutation(idx)[:n])
    return [w.captions[i] for i in idx]


def forget_names(s: Setting, ids, neutral: str | None = None, beta: float | None = None,
                 repeat: int = 0, cache: bool = True, return_model: bool = False):
    """Unlearn the names of identities `ids` from the text encoder and measure the result.

    Returns a dict of metrics (see METRICS; similarity metrics as cosines, rates in %), and the
    student CLIP as well with return_model=True (never cached)."""
    cfg = s.profile.names
    names = [s.world.names[i] for i in ids]
    privacy.check_names(s.world, names)
    neutral = privacy.check_term("neutral", cfg.neutral if neutral is None else neutral)
    beta = cfg.beta if beta is None else beta
    out = {}

    def compute():
        corpus = [s.world.captions[i] for i in s.world.indices("train")]
        student, log = privacy.unlearn_names(s.model, s.tokenizer, names, corpus, cfg, s.device,
                                             seed=_seed(s, repeat), neutral=neutral, beta=beta)
        out["model"] = student
        after = idia.attack(s.faces, idia.prompt_features(student, s.tokenizer, s.names, s.device,
                                                          s.profile.idia.prompts), s.profile.idia.min_hits)
        sims = privacy.text_similarities(s.model, student, s.tokenizer,
                                         eval_captions(s, cfg.eval_captions), names, neutral,
                                         s.device, seed=_seed(s, repeat))
        return {**idia.outcome(s.before, after, ids), **sims, **_accuracy(student, s),
                "seconds": log["seconds"], "corpus": log["corpus"], "filtered": log["filtered"],
                "recognised_after": int(after.recognised.sum()), "curve": log["curve"]}

    if return_model or not cache:
        row = compute()
    else:
        row = _json_cached("forget_names", compute, **_key(s), names=cfg, ids=sorted(map(int, ids)),
                           neutral=neutral, beta=beta, repeat=repeat)
    row = {**row, "size": len(ids), "neutral": neutral, "reg": beta > 0, "repeat": repeat}
    return (row, out["model"]) if return_model else row


def sweep_names(s: Setting, neutrals=("human",), regs=(True, False), sizes=None, repeats=None,
                progress: bool = True) -> pd.DataFrame:
    """The Fig. 2 grid: one row per (repeat, neutral term, regularisation, set size)."""
    cfg = s.profile.names
    neutrals = [privacy.check_term("neutral", n) for n in neutrals]
    if not neutrals:
        raise ValueError("neutrals=[] is empty: give at least one neutral term (e.g. 'human')")
    sizes = sizes or set_sizes(cfg.max_set)
    for k in sizes:
        privacy.check_set_size(s.world, k, "names_max_set")
    rows = []
    jobs = [(r, n, reg, k) for r in range(repeats or cfg.repeats) for n in neutrals
            for reg in regs for k in sizes]
    from tqdm.auto import tqdm
    for r, n, reg, k in tqdm(jobs, desc="unlearning names", disable=not progress, mininterval=2.0):
        ids = people_order(s, r)[:k]
        row = forget_names(s, ids, neutral=n, beta=cfg.beta if reg else 0.0, repeat=r)
        rows.append({k2: v for k2, v in row.items() if k2 != "curve"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- faces


def face_sets(s: Setting, ids, n_images: int) -> dict:
    """World indices for face unlearning: per person their trigger photos; clean training
    images (no photo of the people); clean evaluation images (held-out objects and the other
    people's eval faces, at most n_images); the people's eval faces; every identity's
    training faces (their mean embedding is the target)."""
    w = s.world
    ids = np.asarray(ids)
    trig = w.indices("trigger", "person")
    train = w.indices("train")
    people = np.isin(w.identity, ids)
    evals = w.indices("eval", "person")
    clean_eval = np.concatenate([w.indices("heldout", "object"), evals[~people[evals]]])
    rng = np.random.default_rng(s.profile.seed)
    return {"triggers": [trig[w.identity[trig] == p] for p in ids],
            "clean": train[~people[train]],
            "clean_eval": np.sort(rng.permutation(clean_eval)[:n_images]),
            "faces_eval": idia.eval_faces(w, s.profile.idia.images)[ids].reshape(-1),
            "target_faces": w.indices("train", "person")}


def face_target(s: Setting) -> torch.Tensor:
    """The mean unnormalised embedding of all identities' training faces (the original model)."""
    w = s.world
    return privacy.face_target(s.model, w.images[w.indices("train", "person")], s.device)


def forget_faces(s: Setting, ids, reg: bool = True, repeat: int = 0, both: bool = True,
                 cache: bool = True) -> list:
    """Unlearn the faces of identities `ids` from the image encoder (and, with both=True, also
    their names from the text encoder, for the defence of both encoders). Returns one row per
    defended model: encoders "image" and, with both=True, "both"."""
    fcfg, ncfg = s.profile.faces, s.profile.names
    privacy.check_names(s.world, [s.world.names[i] for i in ids])
    w = s.world

    def compute():
        sets = face_sets(s, ids, fcfg.eval_images)
        target = face_target(s)
        student, log = privacy.unlearn_faces(
            s.model, [w.images[t] for t in sets["triggers"]], w.images[sets["clean"]], target, fcfg,
            s.device, seed=_seed(s, repeat), beta=fcfg.beta if reg else 0.0)
        faces_after = idia.face_features(student, w, s.device, s.profile.idia.images)
        after = idia.attack(faces_after, s.prompts, s.profile.idia.min_hits)
        sims = privacy.image_similarities(
            s.model, student, w.images[sets["clean_eval"]], w.images[sets["faces_eval"]],
            w.images[sets["target_faces"]], target, fcfg, s.device, seed=_seed(s, repeat))
        rows = [{"encoders": "image", **idia.outcome(s.before, after, ids), **sims,
                 **_accuracy(student, s), "seconds": log["seconds"],
                 "recognised_after": int(after.recognised.sum()), "curve": log["curve"]}]
        if both:
            names = [w.names[i] for i in ids]
            text, tlog = privacy.unlearn_names(
                s.model, s.tokenizer, names, [w.captions[i] for i in w.indices("train")], ncfg,
                s.device, seed=_seed(s, repeat), beta=ncfg.beta if reg else 0.0)
            prompts = idia.prompt_features(text, s.tokenizer, s.names, s.device, s.profile.idia.prompts)
            after_both = idia.attack(faces_after, prompts, s.profile.idia.min_hits)
            tsims = privacy.text_similarities(s.model, text, s.tokenizer,
                                              eval_captions(s, ncfg.eval_captions), names,
                                              ncfg.neutral, s.device, seed=_seed(s, repeat))
            rows.append({"encoders": "both", **idia.outcome(s.before, after_both, ids), **sims,
                         **{f"text_{k}": v for k, v in tsims.items()},
                         **_accuracy(privacy.combine(text, student), s),
                         "seconds": log["seconds"] + tlog["seconds"],
                         "recognised_after": int(after_both.recognised.sum())})
        return {"rows": rows}

    if cache:
        result = _json_cached("forget_faces", compute, **_key(s), faces=fcfg,
                              names=ncfg if both else None, ids=sorted(map(int, ids)), reg=reg,
                              repeat=repeat, both=both)
    else:
        result = compute()
    return [{**r, "size": len(ids), "reg": reg, "repeat": repeat} for r in result["rows"]]


def sweep_faces(s: Setting, regs=(True, False), sizes=None, repeats=None, both: bool = True,
                progress: bool = True) -> pd.DataFrame:
    """The Fig. 3 grid: one row per (repeat, regularisation, set size, encoders)."""
    cfg = s.profile.faces
    sizes = sizes or set_sizes(cfg.max_set)
    for k in sizes:
        privacy.check_set_size(s.world, k, "faces_max_set")
    jobs = [(r, reg, k) for r in range(repeats or cfg.repeats) for reg in regs for k in sizes]
    from tqdm.auto import tqdm
    rows = []
    for r, reg, k in tqdm(jobs, desc="unlearning faces", disable=not progress, mininterval=2.0):
        for row in forget_faces(s, people_order(s, r)[:k], reg=reg, repeat=r, both=both):
            rows.append({k2: v for k2, v in row.items() if k2 != "curve"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- summaries


def summary(rows: pd.DataFrame, by=("neutral", "reg", "size"), metrics=METRICS) -> pd.DataFrame:
    """Mean and standard deviation over repeats (std 0 for a single repeat)."""
    by = [b for b in by if b in rows.columns]
    metrics = [m for m in metrics if m in rows.columns]
    g = rows.groupby(by)[metrics]
    return g.mean().join(g.std(ddof=0), rsuffix="_std")


def check_encoders(encoders) -> list:
    encoders = list(encoders)
    for e in encoders:
        check_choice("encoders", e, ("image", "both"))
    return encoders


def trigger_examples(s: Setting, ids, n: int = 8, seed: int = 0) -> torch.Tensor:
    """n clean training images with a trigger face of one of `ids` pasted in (uint8), as the
    face unlearning sees them."""
    sets = face_sets(s, ids, 1)
    gen = torch.Generator().manual_seed(seed)
    faces = torch.cat([s.world.images[t] for t in sets["triggers"]])
    bg = s.world.images[sets["clean"][torch.randint(len(sets["clean"]), (n,), generator=gen)]]
    x = privacy.paste_faces(bg.float() / 255, faces[torch.randint(len(faces), (n,), generator=gen)].float() / 255,
                            s.profile.faces, gen)
    return (x * 255).round().to(torch.uint8)
