"""What the privacy chapters compute: the IDIA on the pocket CLIP and the unlearning sweeps.

A `Setting` holds what every run shares (the world, the original model, its IDIA verdicts,
its zero-shot accuracy, and embeddings that do not change); `forget_names` and
`forget_faces` unlearn one set of people and measure the result; `sweep_*` run the paper's
grid (set sizes 1, 2, 4, ..., nested; neutral terms; with and without weight regularisation;
repeats). Each run is cached, keyed by every parameter it uses and the code (not by the
sweep-only ones: a longer sweep reuses the runs of a shorter one): a chapter re-run reads it
back, and the face chapter's "both encoders" runs reuse the name chapter's text runs.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from ubtlib.checks import read_tensors
from tqdm.auto import tqdm

from ubtlib.privacy import idia
from ubtlib.pipeline.pretraining import pretrained
from ubtlib.pipeline.worlds import world
from ubtlib.privacy import unlearning as privacy
from ubtlib.clip import model as modellib
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.checks import check_range
from ubtlib.evaluation.zeroshot import classifier, encode_images, pocket_templates, topk_accuracy
from ubtlib.world.pocket import object_vocabulary

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile

METRICS = ("tpr", "fnr", "sim_backdoor", "sim_clean", "sim_targets", "sim_clean_people",
           "top1", "top5", "top1_drop", "top5_drop", "wrongly_unlearned", "newly_recalled", "seconds")


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
    cache: dict = field(default_factory=dict)   # embeddings computed once, on demand

    @property
    def recognised(self) -> np.ndarray:
        return np.flatnonzero(self.before.recognised)

    @property
    def corpus(self) -> list:
        """The caption corpus for planting name backdoors: the world's training captions."""
        return [self.world.captions[i] for i in self.world.indices("train")]

    def teacher_corpus(self) -> torch.Tensor:
        """The original model's unnormalised embeddings of the corpus (shared by all runs)."""
        if "corpus" not in self.cache:
            self.cache["corpus"] = privacy.text_features(
                self.model, privacy.WordTokens(self.tokenizer)(self.corpus), self.device, normalized=False)
        return self.cache["corpus"]

    def zero_shot_parts(self) -> tuple:
        """(held-out object embeddings, class weights, labels) of the original model."""
        if "zs" not in self.cache:
            w = self.world
            idx = w.indices("heldout", "object")
            self.cache["zs"] = (encode_images(self.model, w.images[idx], self.device),
                                classifier(self.model, self.tokenizer, w.categories, self.templates, self.device),
                                torch.from_numpy(w.label[idx]))
        return self.cache["zs"]

    @property
    def templates(self) -> list:
        return pocket_templates(object_vocabulary())


def setting(profile: Profile, progress: bool = True) -> Setting:
    """The pre-trained model, the IDIA against it and its zero-shot accuracy."""
    w = world(profile, progress=progress)
    profile.idia.check_world(w)
    base = pretrained(profile, progress=progress)
    device = modellib.pick_device(profile.device)
    start = time.perf_counter()
    names = idia.candidates(w)
    faces = idia.face_features(base.model, w, device, profile.idia.images)
    prompts = idia.prompt_features(base.model, base.tokenizer, names, device, profile.idia.prompts)
    before = idia.attack(faces, prompts, profile.idia.min_hits)
    s = Setting(profile, w, base.model, base.tokenizer, device, names, faces, prompts, before, {},
                time.perf_counter() - start)
    feats, weights, labels = s.zero_shot_parts()
    s.zero_shot = topk_accuracy(feats @ weights, labels)
    return s


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


# Config fields that only shape a sweep (how many repeats, which set sizes). One run is the same
# run whatever sweep it belongs to, so these stay out of its cache key and out of its computation.
_SWEEP_FIELDS = ("repeats", "max_set", "term_sizes", "term_repeats")


def _recipe(cfg):
    """`cfg` (NamesConfig or FacesConfig) with its sweep-only fields at their defaults: what one
    run uses. A longer sweep (more repeats, larger sets) then reuses the runs of a shorter one."""
    return dataclasses.replace(cfg, **{f.name: f.default for f in dataclasses.fields(cfg)
                                       if f.name in _SWEEP_FIELDS})


def _key(s: Setting) -> dict:
    p = s.profile
    return dict(world=p.world, model=p.model, pretrain=p.pretrain, seed=p.seed, idia=p.idia)


def _accuracy(s: Setting, image_feats: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict:
    """Zero-shot top-1 / top-5 (%) on held-out objects with changed image embeddings and/or
    class weights (None: the original model's), and the drop from the original."""
    feats0, weights0, labels = s.zero_shot_parts()
    acc = topk_accuracy((feats0 if image_feats is None else image_feats)
                        @ (weights0 if weights is None else weights), labels)
    return {**acc, "top1_drop": s.zero_shot["top1"] - acc["top1"],
            "top5_drop": s.zero_shot["top5"] - acc["top5"]}


def _ids(s: Setting, people) -> list:
    """Identity indices of `people`, given as names or indices; ValueError for an empty list,
    an unknown name or index, a repeat, or more people than the world has."""
    people = list(people)
    if people and all(isinstance(p, str) for p in people):
        return privacy.check_names(s.world, people)
    n = len(s.world.identities)
    bad = [p for p in people if isinstance(p, (str, bool)) or not 0 <= int(p) < n]
    if bad:
        raise ValueError(f"not identities of this world: {bad[:5]} (give names, or indices 0..{n - 1})")
    return privacy.check_names(s.world, [s.world.names[int(i)] for i in people])


# ---------------------------------------------------------------- names


def generic_captions(s: Setting, n: int) -> list:
    """Captions that name no one and were never trained on (held-out objects), at most n: the
    pocket stand-in for the paper's 10,000 MS-COCO captions, which rarely name anyone."""
    w = s.world
    idx = w.indices("heldout", "object")
    idx = np.sort(np.random.default_rng(s.profile.seed).permutation(idx)[:n])
    return [w.captions[i] for i in idx]


def people_captions(s: Setting, ids, n: int) -> list:
    """Never-trained captions of the people *not* being unlearned (eval and trigger photos),
    at most n: what unlearning does to everyone else's names."""
    w = s.world
    idx = np.flatnonzero((w.split != "train") & (w.kind == "person") & ~np.isin(w.identity, ids))
    idx = np.sort(np.random.default_rng(s.profile.seed).permutation(idx)[:n])
    return [w.captions[i] for i in idx]


def forget_names(s: Setting, people, neutral: str | None = None, beta: float | None = None,
                 repeat: int = 0, return_model: bool = False):
    """Unlearn the names of `people` (names or identity indices) from the text encoder and
    measure the result.

    Returns a dict of metrics (rates in %, similarities as cosines) with the student's IDIA
    prompt embeddings and zero-shot class weights (for the two-encoder defence); with
    return_model=True also the student CLIP (models are not cached: on a cache hit the same
    seeded run is trained again to return it)."""
    cfg = _recipe(s.profile.names)
    ids = _ids(s, people)
    neutral = privacy.check_term("neutral", cfg.neutral if neutral is None else neutral)
    beta = cfg.beta if beta is None else beta
    names = [s.world.names[i] for i in ids]
    out = {}

    def compute():
        student, log = privacy.unlearn_names(s.model, s.tokenizer, names, s.corpus, cfg, s.device,
                                             seed=_seed(s, repeat), neutral=neutral, beta=beta,
                                             teacher_clean=s.teacher_corpus())
        out["model"] = student
        prompts = idia.prompt_features(student, s.tokenizer, s.names, s.device, s.profile.idia.prompts)
        after = idia.attack(s.faces, prompts, s.profile.idia.min_hits)
        weights = classifier(student, s.tokenizer, s.world.categories, s.templates, s.device)
        sims = privacy.text_similarities(s.model, student, s.tokenizer, generic_captions(s, cfg.eval_captions),
                                         names, neutral, s.device, seed=_seed(s, repeat))
        people = privacy.text_similarities(s.model, student, s.tokenizer,
                                           people_captions(s, ids, cfg.eval_captions), names, neutral,
                                           s.device, seed=_seed(s, repeat))
        row = {**idia.outcome(s.before, after, ids), **sims, "sim_clean_people": people["sim_clean"],
               # of the 21 templates, the most that still name one of the removed people
               "max_hits_removed": int(after.hits[ids].max()),
               **_accuracy(s, weights=weights), "seconds": log["seconds"], "corpus": log["corpus"],
               "filtered": log["filtered"], "recognised_after": int(after.recognised.sum()),
               "curve": log["curve"]}
        return row, prompts, weights

    def save(folder):
        row, prompts, weights = compute()
        write_json(folder / "result.json", row)
        save_file({"prompts": prompts.half().cpu(), "weights": weights.cpu()}, str(folder / "features.safetensors"))

    def load(folder):
        t = read_tensors(folder / "features.safetensors")
        return json.loads((folder / "result.json").read_text()), t["prompts"].float(), t["weights"]

    row, prompts, weights = cached("forget_names", save, load, **_key(s), names=cfg,
                                   ids=sorted(ids), neutral=neutral, beta=beta, repeat=repeat)
    if return_model and "model" not in out:
        out["model"] = privacy.unlearn_names(s.model, s.tokenizer, names, s.corpus, cfg, s.device,
                                             seed=_seed(s, repeat), neutral=neutral, beta=beta,
                                             teacher_clean=s.teacher_corpus())[0]
    row = {**row, "size": len(ids), "neutral": neutral, "reg": beta > 0, "repeat": repeat,
           "prompts": prompts.to(s.device), "weights": weights.to(s.device)}
    return (row, out["model"]) if return_model else row


def _table_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("curve", "prompts", "weights")}


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
    jobs = [(r, n, reg, k) for r in range(repeats or cfg.repeats) for n in neutrals
            for reg in regs for k in sizes]
    rows = []
    for r, n, reg, k in tqdm(jobs, desc="unlearning names", disable=not progress, mininterval=2.0):
        row = forget_names(s, people_order(s, r)[:k], neutral=n, beta=cfg.beta if reg else 0.0, repeat=r)
        rows.append(_table_row(row))
    return pd.DataFrame(rows)


def by_template(s: Setting, row) -> dict:
    """One name-unlearning run of a sweep (`row`: its size, neutral term, reg and repeat), per
    IDIA template: how many of the removed people the template's majority vote still names,
    and Sim_Backdoor for that phrasing (idia.template_backdoor). The run's student is trained
    again with its seed; "tpr" is the IDIA's on it, to compare with the sweep's row."""
    cfg = s.profile.names
    ids = people_order(s, int(row["repeat"]))[:int(row["size"])]
    _, student = forget_names(s, ids, neutral=row["neutral"], beta=cfg.beta if row["reg"] else 0.0,
                              repeat=int(row["repeat"]), return_model=True)
    n_prompts = s.profile.idia.prompts
    prompts = idia.prompt_features(student, s.tokenizer, s.names, s.device, n_prompts)
    after = idia.attack(s.faces, prompts, s.profile.idia.min_hits)
    sim = idia.template_backdoor(student, s.tokenizer, [s.world.names[i] for i in ids], row["neutral"],
                                 s.device, n_prompts)
    table = _template_table(after, ids, n_prompts).assign(Sim_Backdoor=sim.numpy())
    return {"table": table, "tpr": idia.outcome(s.before, after, ids)["tpr"]}


def both_by_template(s: Setting, row) -> dict:
    """One two-encoder run of the face sweep (`row`: its size, reg and repeat), per IDIA
    template: how many of the removed people the template's majority vote still names. The
    image student is trained again with the run's seed and paired with the text student's
    prompts (forget_names, cached); "tpr" is the IDIA's on the pair, to compare with the row."""
    fcfg, ncfg = _recipe(s.profile.faces), _recipe(s.profile.names)
    size, reg, repeat = int(row["size"]), bool(row["reg"]), int(row["repeat"])
    ids = _ids(s, people_order(s, repeat)[:size])
    student = _face_student(s, ids, fcfg, reg, repeat)[0]
    faces_after = idia.face_features(student, s.world, s.device, s.profile.idia.images)
    text = forget_names(s, ids, beta=ncfg.beta if reg else 0.0, repeat=repeat)
    after = idia.attack(faces_after, text["prompts"], s.profile.idia.min_hits)
    return {"table": _template_table(after, ids, s.profile.idia.prompts),
            "tpr": idia.outcome(s.before, after, ids)["tpr"]}


def _template_table(after: idia.IdiaResult, ids, n_prompts: int) -> pd.DataFrame:
    """Per IDIA template: whether it begins with the name, and how many of `ids` its majority
    vote still names in the attack result `after`."""
    return pd.DataFrame({"template": idia.PROMPTS[:n_prompts],
                         "starts with the name": [p.startswith("{}") for p in idia.PROMPTS[:n_prompts]],
                         "removed people named": after.prompt_hits[:, ids].sum(1)})


def template_reading(table: pd.DataFrame) -> str:
    """A sentence on a per-template table (by_template, both_by_template): how many of the
    answers that still name a removed person come from templates that begin with the name,
    against the share of such templates."""
    first = table["starts with the name"]
    hits = int(table["removed people named"].sum())
    if hits == 0:
        return "no template names a removed person in this run"
    first_hits = int(table.loc[first, "removed people named"].sum())
    return (f"{first_hits} of the {hits} template answers that still name a removed person come from "
            f"templates that begin with the name ({first_hits / hits:.0%}, where such templates are "
            f"{float(first.mean()):.0%} of all)")


def downstream_retrieval(s: Setting, student, people, neutral: str, k: int = 5) -> dict:
    """The paper's Fig. 4 in the pocket world: a downstream system that keeps its own image side
    and swaps in the defended text encoder (the paper: Stable Diffusion, which uses CLIP's text
    encoder). No image generator runs here, so the "generator" is text-to-image retrieval: a
    prompt returns the k photos nearest to it among every identity's eval photos, embedded by
    the *original* image encoder.

    For each IDIA template and removed person (names or identity indices), three prompts: the
    template with the name through the original text encoder, the same through `student`, and
    the template with `neutral` through the original. Returns, as means over people (%):
    "shows_original" and "shows_defended", the share of the k photos that show the person
    (chance: one in the number of identities); "like_neutral_original" and
    "like_neutral_defended", the share of those photos that the neutral prompt also returns.
    "per_template" holds the same per template; "photos" the retrieved world indices
    (templates x people x k; one "person" for the neutral prompt) per prompt kind, for the figure.
    The photos are the first `idia_images` eval photos of each identity, the ones the IDIA votes with."""
    check_range("k", k, 1, s.faces.shape[0] * s.faces.shape[1])
    neutral = privacy.check_term("neutral", neutral)
    ids = _ids(s, people)
    w = s.world
    n_prompts = s.profile.idia.prompts
    names = [w.names[i] for i in ids]
    gallery = s.faces.reshape(-1, s.faces.shape[-1])           # s.faces: identities x photos x d
    owner = torch.arange(s.faces.shape[0]).repeat_interleave(s.faces.shape[1])
    world_index = torch.from_numpy(idia.eval_faces(w, s.faces.shape[1]).reshape(-1))

    def nearest(prompts):                                       # P x K x d -> P x K x k
        return (prompts @ gallery.T).topk(k, dim=-1).indices.cpu()

    found = {"original": nearest(s.prompts[:, ids]),            # the original's prompts, identities first
             "defended": nearest(idia.prompt_features(student, s.tokenizer, names, s.device, n_prompts)),
             "neutral": nearest(idia.prompt_features(s.model, s.tokenizer, [neutral], s.device, n_prompts))}
    person = torch.tensor(ids).view(1, -1, 1)
    shows = {kind: 100 * (owner[found[kind]] == person).float().mean(-1) for kind in ("original", "defended")}
    like = {kind: 100 * (found[kind].unsqueeze(-1) == found["neutral"].unsqueeze(-2)).any(-1).float().mean(-1)
            for kind in ("original", "defended")}
    per_template = pd.DataFrame({
        "template": idia.PROMPTS[:n_prompts],
        "shows the person, original (%)": shows["original"].mean(1).numpy(),
        "shows the person, defended (%)": shows["defended"].mean(1).numpy(),
        "as for the neutral term, defended (%)": like["defended"].mean(1).numpy()})
    return {"shows_original": shows["original"].mean().item(), "shows_defended": shows["defended"].mean().item(),
            "like_neutral_original": like["original"].mean().item(),
            "like_neutral_defended": like["defended"].mean().item(),
            "chance": 100.0 / s.faces.shape[0], "k": k, "neutral": neutral, "ids": ids,
            "per_template": per_template,
            "photos": {kind: world_index[t.reshape(-1)].reshape(t.shape) for kind, t in found.items()}}


# ---------------------------------------------------------------- faces


def face_sets(s: Setting, ids, n_images: int) -> dict:
    """World indices for face unlearning: per person their trigger photos; clean training
    images (no photo of the people); clean evaluation images that name no one (held-out
    objects, at most n_images); the other people's eval photos; the people's eval photos;
    every identity's training photos (their mean embedding is the target)."""
    w = s.world
    ids = np.asarray(ids)
    trig = w.indices("trigger", "person")
    train = w.indices("train")
    people = np.isin(w.identity, ids)
    evals = w.indices("eval", "person")
    rng = np.random.default_rng(s.profile.seed)
    return {"triggers": [trig[w.identity[trig] == p] for p in ids],
            "clean": train[~people[train]],
            "clean_eval": np.sort(rng.permutation(w.indices("heldout", "object"))[:n_images]),
            "others_eval": evals[~people[evals]][:n_images],
            "faces_eval": idia.eval_faces(w, s.profile.idia.images)[ids].reshape(-1),
            "target_faces": w.indices("train", "person")}


def face_target(s: Setting) -> torch.Tensor:
    """The mean unnormalised embedding of all identities' training photos (original model)."""
    if "target" not in s.cache:
        w = s.world
        s.cache["target"] = privacy.face_target(s.model, w.images[w.indices("train", "person")], s.device)
    return s.cache["target"]


def _face_student(s: Setting, ids, fcfg, reg: bool, repeat: int) -> tuple:
    """(student, log, face sets, target) of one seeded face-unlearning run: the same run again
    for the same arguments."""
    w = s.world
    sets = face_sets(s, ids, fcfg.eval_images)
    target = face_target(s)
    student, log = privacy.unlearn_faces(
        s.model, [w.images[t] for t in sets["triggers"]], w.images[sets["clean"]], target, fcfg,
        s.device, seed=_seed(s, repeat), beta=fcfg.beta if reg else 0.0,
        is_person=torch.from_numpy(w.kind[sets["clean"]] == "person"))
    return student, log, sets, target


def forget_faces(s: Setting, people, reg: bool = True, repeat: int = 0, both: bool = True,
                 faces_cfg=None) -> list:
    """Unlearn the faces of `people` (names or identity indices) from the image encoder and
    measure the result.

    With both=True, also pair the image student with the text student that unlearned the same
    names (forget_names with the profile's neutral term, read from the cache when the name
    chapter made it): the defence of both encoders. Returns one row per defended model
    (encoders "image", and "both"). `faces_cfg` replaces the profile's FacesConfig."""
    (faces_cfg or s.profile.faces).validate()
    fcfg, ncfg = _recipe(faces_cfg or s.profile.faces), _recipe(s.profile.names)
    ids = _ids(s, people)
    w = s.world

    def compute():
        student, log, sets, target = _face_student(s, ids, fcfg, reg, repeat)
        faces_after = idia.face_features(student, w, s.device, s.profile.idia.images)
        after = idia.attack(faces_after, s.prompts, s.profile.idia.min_hits)
        sims = privacy.image_similarities(
            s.model, student, w.images[sets["clean_eval"]], w.images[sets["faces_eval"]],
            w.images[sets["target_faces"]], target, fcfg, s.device, seed=_seed(s, repeat))
        others = w.images[sets["others_eval"]]
        people = {"sim_clean": torch.nn.functional.cosine_similarity(
            encode_images(s.model, others, s.device, unit=False),
            encode_images(student, others, s.device, unit=False)).mean().item()}
        feats = encode_images(student, w.images[w.indices("heldout", "object")], s.device)
        rows = [{"encoders": "image", **idia.outcome(s.before, after, ids), **sims,
                 "max_hits_removed": int(after.hits[ids].max()),
                 "sim_clean_people": people["sim_clean"], **_accuracy(s, image_feats=feats),
                 "seconds": log["seconds"], "recognised_after": int(after.recognised.sum()),
                 "curve": log["curve"]}]
        if both:
            text = forget_names(s, ids, beta=ncfg.beta if reg else 0.0, repeat=repeat)
            after_both = idia.attack(faces_after, text["prompts"], s.profile.idia.min_hits)
            rows.append({"encoders": "both", **idia.outcome(s.before, after_both, ids), **sims,
                         "max_hits_removed": int(after_both.hits[ids].max()),
                         "sim_clean_people": people["sim_clean"],
                         **{f"text_{k}": text[k] for k in ("sim_backdoor", "sim_clean", "sim_targets")},
                         **_accuracy(s, image_feats=feats, weights=text["weights"]),
                         "seconds": log["seconds"] + text["seconds"],
                         "recognised_after": int(after_both.recognised.sum())})
        return {"rows": rows}

    result = cached("forget_faces",
                    lambda folder: write_json(folder / "result.json", compute()),
                    lambda folder: json.loads((folder / "result.json").read_text()),
                    **_key(s), faces=fcfg, names=ncfg if both else None, ids=sorted(ids), reg=reg,
                    repeat=repeat, both=both)
    return [{**r, "size": len(ids), "reg": reg, "repeat": repeat} for r in result["rows"]]


def sweep_faces(s: Setting, regs=(True, False), sizes=None, repeats=None, both: bool = True,
                progress: bool = True) -> pd.DataFrame:
    """The Fig. 3 grid: one row per (repeat, regularisation, set size, encoders)."""
    cfg = s.profile.faces
    sizes = sizes or set_sizes(cfg.max_set)
    for k in sizes:
        privacy.check_set_size(s.world, k, "faces_max_set")
    jobs = [(r, reg, k) for r in range(repeats or cfg.repeats) for reg in regs for k in sizes]
    rows = []
    for r, reg, k in tqdm(jobs, desc="unlearning faces", disable=not progress, mininterval=2.0):
        rows += [_table_row(row) for row in forget_faces(s, people_order(s, r)[:k], reg=reg, repeat=r, both=both)]
    return pd.DataFrame(rows)


def faces_to_target(s: Setting) -> dict:
    """How spread out the original model's faces are: the mean cosine of the eval photos to the
    mean face (the target), and between the mean embeddings of two different people."""
    import torch.nn.functional as F
    w = s.world
    idx = idia.eval_faces(w, s.profile.idia.images)
    e = encode_images(s.model, w.images[idx.reshape(-1)], s.device, unit=False)
    to_target = F.cosine_similarity(e, face_target(s)[None]).mean().item()
    people = F.normalize(e.reshape(idx.shape[0], idx.shape[1], -1).mean(1), dim=-1)
    n = len(people)
    between = ((people @ people.T).sum() - n) / (n * (n - 1))
    return {"to_target": to_target, "between_people": between.item()}


def trigger_examples(s: Setting, ids, n: int = 8, seed: int = 0, cfg=None) -> torch.Tensor:
    """n clean training images with a trigger photo of one of `ids` pasted in (uint8), as the
    face unlearning sees them."""
    sets = face_sets(s, ids, 1)
    gen = torch.Generator().manual_seed(seed)
    faces = torch.cat([s.world.images[t] for t in sets["triggers"]])
    bg = s.world.images[sets["clean"][torch.randint(len(sets["clean"]), (n,), generator=gen)]]
    x = privacy.paste_faces(bg.float() / 255, faces[torch.randint(len(faces), (n,), generator=gen)].float() / 255,
                            cfg or s.profile.faces, gen)
    return (x * 255).round().to(torch.uint8)


# ---------------------------------------------------------------- summaries


def summary(rows: pd.DataFrame, by=("neutral", "reg", "size"), metrics=METRICS) -> pd.DataFrame:
    """Mean and standard deviation over repeats (population std: 0 for a single repeat)."""
    by = [b for b in by if b in rows.columns]
    metrics = [m for m in metrics if m in rows.columns]
    g = rows.groupby(by)[metrics]
    return g.mean().join(g.std(ddof=0), rsuffix="_std")
