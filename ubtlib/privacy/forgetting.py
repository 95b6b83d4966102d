"""What the privacy chapters compute: the IDIA on the pocket CLIP and the unlearning sweeps.

A `Setting` holds what every run shares (the world, the original model, its IDIA verdicts,
its zero-shot accuracy, and embeddings that do not change); `forget_names` and
`forget_faces` unlearn one set of people and measure the result; `sweep_*` run the paper's
grid (set sizes 1, 2, 4, ..., nested; neutral terms; with and without weight regularisation;
repeats). Each run is cached, keyed by every parameter it uses and the code (not by the
sweep-only ones: a longer sweep reuses the runs of a shorter one): a chapter re-run reads it
back, and the face chapter's "both encoders" runs reuse the name chapter's text runs.

The runs read their data through a `Source`: `setting` builds one on the pocket world
(`WorldSource`); the paper profile (`paper_scale.runs.PaperSource`) builds one on real data sets
and runs these same functions (`build`), kept in memory instead of cached.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ubtlib.checks import check_range, read_tensors
from ubtlib.clip import model as modellib
from ubtlib.evaluation.zeroshot import classifier, encode_images, pocket_templates, topk_accuracy
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.pretraining import pretrained
from ubtlib.pipeline.worlds import world
from ubtlib.privacy import idia
from ubtlib.privacy import unlearning as privacy
from ubtlib.world.pocket import object_vocabulary

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile


class Source(Protocol):
    """What the unlearning runs read: the pocket world (`WorldSource`) or real data sets on disk
    (`paper_scale.runs.PaperSource`). Images are uint8 N x 3 x S x S tensors, or anything that
    indexes like one (`paper_scale.data.Images`); identity i is `names[i]`."""

    names: list  # the people's names
    distractors: list  # candidate names that are no one's (the IDIA's other candidates)
    categories: list  # zero-shot class names
    templates: list  # zero-shot prompt templates
    key: dict | None  # identifies the data in the run cache; None: runs are kept in memory only

    def corpus(self) -> list:
        """Captions to plant the name backdoors in."""

    def eval_captions(self, n: int) -> list:
        """At most n clean captions that name no one, for the text similarities."""

    def people_captions(self, ids, n: int) -> list | None:
        """At most n captions of the people *not* in `ids` (Sim_Clean on people); None: none."""

    def idia_faces(self, model, device, n: int) -> torch.Tensor:
        """`model`'s normalised embeddings of each person's first n IDIA photos: N x n x d."""

    def zero_shot(self, model, device) -> tuple:
        """(`model`'s normalised embeddings of the zero-shot images, on `device`; their labels)."""

    def target_faces(self):
        """Many people's photos whose mean embedding is the face unlearning's target."""

    def face_images(self, ids, n_images: int) -> dict:
        """The images one face-unlearning run of `ids` uses: "triggers" (per person, the photos
        pasted in), "clean" (images without them) with "is_person" (which show a person, or
        None), "clean_eval" (at most n_images clean images), "faces_eval" (the people's IDIA
        photos), "others_eval" (at most n_images photos of the other people, or None) and
        "target_faces" (photos to measure the target with)."""


@dataclass
class WorldSource:
    """The pocket world as a `Source`, as the chapters read it."""

    world: object
    profile: Profile

    @property
    def names(self) -> list:
        return list(self.world.names)

    @property
    def distractors(self) -> list:
        return list(self.world.distractor_names)

    @property
    def categories(self) -> list:
        return list(self.world.categories)

    @property
    def templates(self) -> list:
        return pocket_templates(object_vocabulary())

    @property
    def key(self) -> dict:
        p = self.profile
        return dict(world=p.world, model=p.model, pretrain=p.pretrain, seed=p.seed, idia=p.idia)

    def corpus(self) -> list:
        """The world's training captions."""
        return [self.world.captions[i] for i in self.world.indices("train")]

    def eval_captions(self, n: int) -> list:
        """Captions of held-out objects, never trained on: the pocket stand-in for the paper's
        10,000 MS-COCO captions, which rarely name anyone."""
        w = self.world
        idx = w.indices("heldout", "object")
        idx = np.sort(np.random.default_rng(self.profile.seed).permutation(idx)[:n])
        return [w.captions[i] for i in idx]

    def people_captions(self, ids, n: int) -> list:
        """Never-trained captions of the other people (their eval and trigger photos)."""
        w = self.world
        idx = np.flatnonzero((w.split != "train") & (w.kind == "person") & ~np.isin(w.identity, ids))
        idx = np.sort(np.random.default_rng(self.profile.seed).permutation(idx)[:n])
        return [w.captions[i] for i in idx]

    def idia_faces(self, model, device, n: int) -> torch.Tensor:
        return idia.face_features(model, self.world, device, n)

    def zero_shot(self, model, device) -> tuple:
        """Held-out objects."""
        idx = self.world.indices("heldout", "object")
        return encode_images(model, self.world.images[idx], device), torch.from_numpy(self.world.label[idx])

    def target_faces(self) -> torch.Tensor:
        """Every identity's training photos."""
        return self.world.images[self.world.indices("train", "person")]

    def face_indices(self, ids, n_images: int) -> dict:
        """World indices of `face_images` (the sets are described there)."""
        w = self.world
        ids = np.asarray(ids)
        trig = w.indices("trigger", "person")
        train = w.indices("train")
        people = np.isin(w.identity, ids)
        evals = w.indices("eval", "person")
        rng = np.random.default_rng(self.profile.seed)
        return {
            "triggers": [trig[w.identity[trig] == p] for p in ids],
            "clean": train[~people[train]],
            "clean_eval": np.sort(rng.permutation(w.indices("heldout", "object"))[:n_images]),
            "others_eval": evals[~people[evals]][:n_images],
            "faces_eval": idia.eval_faces(w, self.profile.idia.images)[ids].reshape(-1),
            "target_faces": w.indices("train", "person"),
        }

    def face_images(self, ids, n_images: int) -> dict:
        """Per person their trigger photos; clean training images (no photo of the people);
        held-out objects; the other people's eval photos; every identity's training photos."""
        sets = self.face_indices(ids, n_images)
        images = self.world.images
        return {
            "triggers": [images[t] for t in sets["triggers"]],
            "clean": images[sets["clean"]],
            "is_person": torch.from_numpy(self.world.kind[sets["clean"]] == "person"),
            **{k: images[sets[k]] for k in ("clean_eval", "faces_eval", "others_eval", "target_faces")},
        }


@dataclass
class Setting:
    profile: Profile
    data: Source
    model: torch.nn.Module  # the original (teacher) CLIP
    tokenizer: object
    device: torch.device
    names: list  # candidate names: identities first, then distractors
    faces: torch.Tensor  # IDIA photos' embeddings by the original model, N x I x d
    prompts: torch.Tensor  # IDIA prompts' embeddings by the original model, P x K x d
    before: idia.IdiaResult  # the IDIA against the original model
    zero_shot: dict  # the original model's zero-shot top-1 / top-5 (%)
    seconds: float  # time the IDIA took
    cache: dict = field(default_factory=dict)  # embeddings computed once, on demand

    @property
    def world(self):
        """The pocket world (None for data on disk)."""
        return getattr(self.data, "world", None)

    @property
    def recognised(self) -> np.ndarray:
        return np.flatnonzero(self.before.recognised)

    @property
    def corpus(self) -> list:
        """The caption corpus for planting name backdoors."""
        if "corpus_text" not in self.cache:
            self.cache["corpus_text"] = self.data.corpus()
        return self.cache["corpus_text"]

    def teacher_corpus(self) -> torch.Tensor:
        """The original model's unnormalised embeddings of the corpus (shared by all runs)."""
        if "corpus" not in self.cache:
            self.cache["corpus"] = privacy.text_features(
                self.model, privacy.WordTokens(self.tokenizer)(self.corpus), self.device, normalized=False
            )
        return self.cache["corpus"]

    def zero_shot_parts(self) -> tuple:
        """(zero-shot image embeddings, class weights, labels) of the original model."""
        if "zs" not in self.cache:
            feats, labels = self.data.zero_shot(self.model, self.device)
            self.cache["zs"] = (
                feats,
                classifier(self.model, self.tokenizer, self.data.categories, self.templates, self.device),
                labels,
            )
        return self.cache["zs"]

    @property
    def templates(self) -> list:
        return self.data.templates


def build(profile: Profile, data: Source, model, tokenizer, device) -> Setting:
    """The IDIA against `model` (the people's photos of `data` against their names and the
    distractors) and its zero-shot accuracy: what every unlearning run of `data` shares."""
    start = time.perf_counter()
    names = list(data.names) + list(data.distractors)
    faces = data.idia_faces(model, device, profile.idia.images)
    prompts = idia.prompt_features(model, tokenizer, names, device, profile.idia.prompts)
    before = idia.attack(faces, prompts, profile.idia.min_hits)
    s = Setting(
        profile,
        data,
        model,
        tokenizer,
        device,
        names,
        faces,
        prompts,
        before,
        {},
        time.perf_counter() - start,
    )
    feats, weights, labels = s.zero_shot_parts()
    s.zero_shot = topk_accuracy(feats @ weights, labels)
    return s


def setting(profile: Profile, progress: bool = True) -> Setting:
    """The pocket world's pre-trained model, the IDIA against it and its zero-shot accuracy."""
    w = world(profile, progress=progress)
    profile.idia.check_world(w)
    base = pretrained(profile, progress=progress)
    device = modellib.pick_device(profile.device)
    return build(profile, WorldSource(w, profile), base.model, base.tokenizer, device)


def set_sizes(max_set: int) -> list:
    """1, 2, 4, ... up to max_set, and max_set itself if it is not a power of two (the paper's
    1, 2, 4, ..., 64; a largest set of 12 gives 1, 2, 4, 8, 12)."""
    check_range("max_set", max_set, 1, 1_000_000)
    sizes = [1 << k for k in range(max_set.bit_length()) if 1 << k <= max_set]
    return sizes + ([max_set] if sizes[-1] != max_set else [])


def people_order(s: Setting, repeat: int) -> np.ndarray:
    """A random order of the identities for one repeat: recognised ones first, as the paper
    unlearns only people the IDIA recognises; the others follow, used only when too few are
    recognised (tiny profiles). Prefixes of it are the nested sets X_1 in X_2 in ..."""
    rng = np.random.default_rng([s.profile.seed, repeat])
    known = s.recognised
    unknown = np.setdiff1d(np.arange(len(s.data.names)), known)
    return np.concatenate([rng.permutation(known), rng.permutation(unknown)]).astype(int)


def _seed(s: Setting, repeat: int) -> int:
    return s.profile.seed * 1000 + repeat


# Config fields that only shape a sweep (how many repeats, which set sizes). One run is the same
# run whatever sweep it belongs to, so these stay out of its cache key and out of its computation.
_SWEEP_FIELDS = ("repeats", "max_set", "term_sizes", "term_repeats")


def _recipe(cfg):
    """`cfg` (NamesConfig or FacesConfig) with its sweep-only fields at their defaults: what one
    run uses. A longer sweep (more repeats, larger sets) then reuses the runs of a shorter one."""
    return dataclasses.replace(
        cfg, **{f.name: f.default for f in dataclasses.fields(cfg) if f.name in _SWEEP_FIELDS}
    )


def _run(s: Setting, stage: str, save: Callable, load: Callable, compute: Callable, **parts):
    """One run's result: `cached(stage, save, load, ...)` keyed by the source's key and `parts`;
    for a source without a key (data on disk), `compute()` once per Setting, kept in s.cache."""
    if s.data.key is not None:
        return cached(stage, save, load, **s.data.key, **parts)
    memo = s.cache.setdefault(stage, {})
    key = json.dumps(parts, sort_keys=True, default=repr)
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _accuracy(
    s: Setting, image_feats: torch.Tensor | None = None, weights: torch.Tensor | None = None
) -> dict:
    """Zero-shot top-1 / top-5 (%) on the source's zero-shot images with changed image embeddings and/or
    class weights (None: the original model's), and the drop from the original."""
    feats0, weights0, labels = s.zero_shot_parts()
    acc = topk_accuracy(
        (feats0 if image_feats is None else image_feats) @ (weights0 if weights is None else weights), labels
    )
    return {
        **acc,
        "top1_drop": s.zero_shot["top1"] - acc["top1"],
        "top5_drop": s.zero_shot["top5"] - acc["top5"],
    }


def _ids(s: Setting, people) -> list:
    """Identity indices of `people`, given as names or indices; ValueError for an empty list,
    an unknown name or index, a repeat, or more people than the world has."""
    people = list(people)
    known = s.data if s.world is None else s.world  # whatever holds the people's `names`
    if people and all(isinstance(p, str) for p in people):
        return privacy.check_names(known, people)
    n = len(known.names)
    bad = [p for p in people if isinstance(p, (str, bool)) or not 0 <= int(p) < n]
    if bad:
        raise ValueError(f"not identities of this world: {bad[:5]} (give names, or indices 0..{n - 1})")
    return privacy.check_names(known, [known.names[int(i)] for i in people])


# ---------------------------------------------------------------- names


def generic_captions(s: Setting, n: int) -> list:
    """At most n never-trained captions that name no one (Source.eval_captions)."""
    return s.data.eval_captions(n)


def people_captions(s: Setting, ids, n: int) -> list | None:
    """At most n never-trained captions of the people *not* being unlearned: what unlearning
    does to everyone else's names (None: the source has none)."""
    return s.data.people_captions(ids, n)


def forget_names(
    s: Setting,
    people,
    neutral: str | None = None,
    beta: float | None = None,
    repeat: int = 0,
    return_model: bool = False,
):
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
    names = [s.data.names[i] for i in ids]
    out = {}

    def train() -> tuple:
        return privacy.unlearn_names(
            s.model,
            s.tokenizer,
            names,
            s.corpus,
            cfg,
            s.device,
            seed=_seed(s, repeat),
            neutral=neutral,
            beta=beta,
            teacher_clean=s.teacher_corpus(),
        )

    def compute():
        student, log = train()
        out["model"] = student
        prompts = idia.prompt_features(student, s.tokenizer, s.names, s.device, s.profile.idia.prompts)
        after = idia.attack(s.faces, prompts, s.profile.idia.min_hits)
        weights = classifier(student, s.tokenizer, s.data.categories, s.templates, s.device)
        sims = privacy.text_similarities(
            s.model,
            student,
            s.tokenizer,
            generic_captions(s, cfg.eval_captions),
            names,
            neutral,
            s.device,
            seed=_seed(s, repeat),
        )
        others = people_captions(s, ids, cfg.eval_captions)
        if others is not None:
            sims["sim_clean_people"] = privacy.text_similarities(
                s.model, student, s.tokenizer, others, names, neutral, s.device, seed=_seed(s, repeat)
            )["sim_clean"]
        row = {
            **idia.outcome(s.before, after, ids),
            **sims,
            # of the 21 templates, the most that still name one of the removed people
            "max_hits_removed": int(after.hits[ids].max()),
            **_accuracy(s, weights=weights),
            "seconds": log["seconds"],
            "corpus": log["corpus"],
            "filtered": log["filtered"],
            "recognised_after": int(after.recognised.sum()),
            "curve": log["curve"],
        }
        return row, prompts, weights

    def save(folder):
        row, prompts, weights = compute()
        write_json(folder / "result.json", row)
        save_file(
            {"prompts": prompts.half().cpu(), "weights": weights.cpu()}, str(folder / "features.safetensors")
        )

    def load(folder):
        t = read_tensors(folder / "features.safetensors")
        return json.loads((folder / "result.json").read_text()), t["prompts"].float(), t["weights"]

    def kept():  # what save stores, kept in memory
        row, prompts, weights = compute()
        return row, prompts.half().cpu(), weights.cpu()

    row, prompts, weights = _run(
        s,
        "forget_names",
        save,
        load,
        kept,
        names=cfg,
        ids=sorted(ids),
        neutral=neutral,
        beta=beta,
        repeat=repeat,
    )
    if return_model and "model" not in out:
        out["model"] = train()[0]
    row = {
        **row,
        "size": len(ids),
        "neutral": neutral,
        "reg": beta > 0,
        "repeat": repeat,
        "prompts": prompts.float().to(s.device),
        "weights": weights.to(s.device),
    }
    return (row, out["model"]) if return_model else row


def _table_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("curve", "prompts", "weights")}


def sweep_names(
    s: Setting,
    neutrals=("human",),
    regs=(True, False),
    sizes=None,
    repeats=None,
    progress: bool = True,
    each: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """The Fig. 2 grid: one row per (repeat, neutral term, regularisation, set size); `each` is
    called with every row as it comes (e.g. to save a long sweep as it goes)."""
    cfg = s.profile.names
    neutrals = [privacy.check_term("neutral", n) for n in neutrals]
    if not neutrals:
        raise ValueError("neutrals=[] is empty: give at least one neutral term (e.g. 'human')")
    sizes = sizes or set_sizes(cfg.max_set)
    for k in sizes:
        check_range("names_max_set", k, 1, len(s.data.names))
    jobs = [
        (r, n, reg, k) for r in range(repeats or cfg.repeats) for n in neutrals for reg in regs for k in sizes
    ]
    rows = []
    for r, n, reg, k in tqdm(jobs, desc="unlearning names", disable=not progress, mininterval=2.0):
        row = forget_names(s, people_order(s, r)[:k], neutral=n, beta=cfg.beta if reg else 0.0, repeat=r)
        rows.append(_table_row(row))
        if each is not None:
            each(rows[-1])
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- faces


def face_sets(s: Setting, ids, n_images: int) -> dict:
    """World indices of the pocket world's images for face unlearning (WorldSource.face_indices)."""
    return s.data.face_indices(ids, n_images)


def face_target(s: Setting) -> torch.Tensor:
    """The mean unnormalised embedding of the source's target faces (pocket: all identities'
    training photos) by the original model."""
    if "target" not in s.cache:
        s.cache["target"] = privacy.face_target(s.model, s.data.target_faces(), s.device)
    return s.cache["target"]


def _face_student(s: Setting, ids, fcfg, reg: bool, repeat: int) -> tuple:
    """(student, log, face images (Source.face_images), target) of one seeded face-unlearning
    run: the same run again for the same arguments."""
    sets = s.data.face_images(ids, fcfg.eval_images)
    target = face_target(s)
    student, log = privacy.unlearn_faces(
        s.model,
        sets["triggers"],
        sets["clean"],
        target,
        fcfg,
        s.device,
        seed=_seed(s, repeat),
        beta=fcfg.beta if reg else 0.0,
        is_person=sets["is_person"],
    )
    return student, log, sets, target


def forget_faces(
    s: Setting, people, reg: bool = True, repeat: int = 0, both: bool = True, faces_cfg=None
) -> list:
    """Unlearn the faces of `people` (names or identity indices) from the image encoder and
    measure the result.

    With both=True, also pair the image student with the text student that unlearned the same
    names (forget_names with the profile's neutral term, read from the cache when the name
    chapter made it): the defence of both encoders. Returns one row per defended model
    (encoders "image", and "both"). `faces_cfg` replaces the profile's FacesConfig."""
    (faces_cfg or s.profile.faces).validate()
    fcfg, ncfg = _recipe(faces_cfg or s.profile.faces), _recipe(s.profile.names)
    ids = _ids(s, people)

    def compute():
        student, log, sets, target = _face_student(s, ids, fcfg, reg, repeat)
        faces_after = s.data.idia_faces(student, s.device, s.profile.idia.images)
        after = idia.attack(faces_after, s.prompts, s.profile.idia.min_hits)
        sims = privacy.image_similarities(
            s.model,
            student,
            sets["clean_eval"],
            sets["faces_eval"],
            sets["target_faces"],
            target,
            fcfg,
            s.device,
            seed=_seed(s, repeat),
        )
        others = sets["others_eval"]
        people = (
            {}
            if others is None
            else {
                "sim_clean_people": torch.nn.functional.cosine_similarity(
                    encode_images(s.model, others, s.device, unit=False),
                    encode_images(student, others, s.device, unit=False),
                )
                .mean()
                .item()
            }
        )
        feats = s.data.zero_shot(student, s.device)[0]
        rows = [
            {
                "encoders": "image",
                **idia.outcome(s.before, after, ids),
                **sims,
                "max_hits_removed": int(after.hits[ids].max()),
                **people,
                **_accuracy(s, image_feats=feats),
                "seconds": log["seconds"],
                "recognised_after": int(after.recognised.sum()),
                "curve": log["curve"],
            }
        ]
        if both:
            text = forget_names(s, ids, beta=ncfg.beta if reg else 0.0, repeat=repeat)
            after_both = idia.attack(faces_after, text["prompts"], s.profile.idia.min_hits)
            rows.append(
                {
                    "encoders": "both",
                    **idia.outcome(s.before, after_both, ids),
                    **sims,
                    "max_hits_removed": int(after_both.hits[ids].max()),
                    **people,
                    **{f"text_{k}": text[k] for k in ("sim_backdoor", "sim_clean", "sim_targets")},
                    **_accuracy(s, image_feats=feats, weights=text["weights"]),
                    "seconds": log["seconds"] + text["seconds"],
                    "recognised_after": int(after_both.recognised.sum()),
                }
            )
        return {"rows": rows}

    result = _run(
        s,
        "forget_faces",
        lambda folder: write_json(folder / "result.json", compute()),
        lambda folder: json.loads((folder / "result.json").read_text()),
        compute,
        faces=fcfg,
        names=ncfg if both else None,
        ids=sorted(ids),
        reg=reg,
        repeat=repeat,
        both=both,
    )
    return [{**r, "size": len(ids), "reg": reg, "repeat": repeat} for r in result["rows"]]


def sweep_faces(
    s: Setting,
    regs=(True, False),
    sizes=None,
    repeats=None,
    both: bool = True,
    progress: bool = True,
    each: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """The Fig. 3 grid: one row per (repeat, regularisation, set size, encoders); `each` is
    called with every row as it comes."""
    cfg = s.profile.faces
    sizes = sizes or set_sizes(cfg.max_set)
    for k in sizes:
        check_range("faces_max_set", k, 1, len(s.data.names))
    jobs = [(r, reg, k) for r in range(repeats or cfg.repeats) for reg in regs for k in sizes]
    rows = []
    for r, reg, k in tqdm(jobs, desc="unlearning faces", disable=not progress, mininterval=2.0):
        for row in forget_faces(s, people_order(s, r)[:k], reg=reg, repeat=r, both=both):
            rows.append(_table_row(row))
            if each is not None:
                each(rows[-1])
    return pd.DataFrame(rows)
