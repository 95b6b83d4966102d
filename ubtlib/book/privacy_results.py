"""What the privacy chapters read from their runs: per-template tables, downstream retrieval,
summaries over repeats, and the tables, results and reading sentences the chapters show.

`ubtlib.privacy.forgetting` defines the cached runs; this module only reads them (or trains one
seeded run again to look inside it). It is outside the runs' import closure, so a reworded
reading or a new table here keeps every run's cache key.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ubtlib.book import paper
from ubtlib.checks import check_range
from ubtlib.evaluation.zeroshot import encode_images
from ubtlib.privacy import idia
from ubtlib.privacy import unlearning as privacy
from ubtlib.privacy.forgetting import (
    Setting,
    _face_student,
    _ids,
    _recipe,
    face_sets,
    face_target,
    forget_faces,
    forget_names,
    people_order,
)

METRICS = (
    "tpr",
    "fnr",
    "sim_backdoor",
    "sim_clean",
    "sim_targets",
    "sim_clean_people",
    "top1",
    "top5",
    "top1_drop",
    "top5_drop",
    "wrongly_unlearned",
    "newly_recalled",
    "seconds",
)
NAN = float("nan")


# ---------------------------------------------------------------- summaries


def summary(rows: pd.DataFrame, by=("neutral", "reg", "size"), metrics=METRICS) -> pd.DataFrame:
    """Mean and standard deviation over repeats (population std: 0 for a single repeat)."""
    by = [b for b in by if b in rows.columns]
    metrics = [m for m in metrics if m in rows.columns]
    g = rows.groupby(by)[metrics]
    return g.mean().join(g.std(ddof=0).add_suffix("_std"))


def label_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` of a sweep with a "regularisation" column ("with" / "without") and, for face sweeps
    (an "encoders" column), a "defence" one ("image encoder, with", "both encoders, without")."""
    rows = rows.assign(regularisation=np.where(rows["reg"], "with", "without"))
    if "encoders" in rows:
        rows["defence"] = (
            rows["encoders"]
            + " encoder"
            + np.where(rows["encoders"] == "both", "s", "")
            + ", "
            + rows["regularisation"]
        )
    return rows


def _records(rows: pd.DataFrame) -> list:
    """The sweep's rows as saved: without the display labels of label_rows."""
    return rows.drop(columns=["regularisation", "defence"], errors="ignore").to_dict(orient="records")


def _at(frame: pd.DataFrame, key, column: str) -> float:
    """frame.loc[key, column] as a float; NaN when the row is missing (a sweep without it)."""
    return float(frame.loc[key, column]) if key in frame.index else NAN


# ---------------------------------------------------------------- per template


def _template_table(after: idia.IdiaResult, ids, n_prompts: int) -> pd.DataFrame:
    """Per IDIA template: whether it begins with the name, and how many of `ids` its majority
    vote still names in the attack result `after`."""
    return pd.DataFrame(
        {
            "template": idia.PROMPTS[:n_prompts],
            "starts with the name": [p.startswith("{}") for p in idia.PROMPTS[:n_prompts]],
            "removed people named": after.prompt_hits[:, ids].sum(1),
        }
    )


def by_template(s: Setting, row) -> dict:
    """One name-unlearning run of a sweep (`row`: its size, neutral term, reg and repeat), per
    IDIA template: how many of the removed people the template's majority vote still names,
    and Sim_Backdoor for that phrasing (idia.template_backdoor). The run's student is trained
    again with its seed; "tpr" is the IDIA's on it, to compare with the sweep's row."""
    cfg = s.profile.names
    ids = people_order(s, int(row["repeat"]))[: int(row["size"])]
    _, student = forget_names(
        s,
        ids,
        neutral=row["neutral"],
        beta=cfg.beta if row["reg"] else 0.0,
        repeat=int(row["repeat"]),
        return_model=True,
    )
    n_prompts = s.profile.idia.prompts
    prompts = idia.prompt_features(student, s.tokenizer, s.names, s.device, n_prompts)
    after = idia.attack(s.faces, prompts, s.profile.idia.min_hits)
    sim = idia.template_backdoor(
        student, s.tokenizer, [s.world.names[i] for i in ids], row["neutral"], s.device, n_prompts
    )
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
    return {
        "table": _template_table(after, ids, s.profile.idia.prompts),
        "tpr": idia.outcome(s.before, after, ids)["tpr"],
    }


def template_reading(table: pd.DataFrame) -> str:
    """A sentence on a per-template table (by_template, both_by_template): how many of the
    answers that still name a removed person come from templates that begin with the name,
    against the share of such templates."""
    first = table["starts with the name"]
    hits = int(table["removed people named"].sum())
    if hits == 0:
        return "no template names a removed person in this run"
    first_hits = int(table.loc[first, "removed people named"].sum())
    return (
        f"{first_hits} of the {hits} template answers that still name a removed person come from "
        f"templates that begin with the name ({first_hits / hits:.0%}, where such templates are "
        f"{float(first.mean()):.0%} of all)"
    )


def template_verdict(table: pd.DataFrame) -> str:
    """template_reading of a by_template table, and whether Sim_Backdoor is lower for the
    templates that begin with the name (when any template still names a removed person)."""
    first = table["starts with the name"]
    verdict = template_reading(table)
    if table["removed people named"].sum():
        lower = table.loc[first, "Sim_Backdoor"].mean() < table.loc[~first, "Sim_Backdoor"].mean()
        verdict += f", and Sim_Backdoor is {'lower' if lower else 'not lower'} for them"
    return verdict


def template_results(s: Setting, again: dict, row) -> dict:
    """The name chapter's numbers on its worst run `row`, trained again per template (`again`:
    by_template's), and on how the world's captions phrase names: the share (%) of corpus
    captions whose first word a random replacement hits, of person captions that begin with
    the name, and of person captions that are one of the attack's templates filled with it."""
    table, w = again["table"], s.world
    first = table["starts with the name"]
    people = w.indices("train", "person")
    return {
        "worst_tpr_again": again["tpr"],
        "worst_sim_backdoor": float(row.sim_backdoor),
        "template_sim_first": float(table.loc[first, "Sim_Backdoor"].mean()),
        "template_sim_other": float(table.loc[~first, "Sim_Backdoor"].mean()),
        "template_sim_min": float(table["Sim_Backdoor"].min()),
        "n_name_first": int(first.sum()),
        "n_templates": len(table),
        # a random word is replaced by the name: the first with chance 1 / (words in the caption)
        "first_word_percent": 100 * float(np.mean([1 / len(c.split(" ")) for c in s.corpus])),
        "person_name_first_percent": 100
        * float(np.mean([w.captions[i].startswith(w.names[w.identity[i]]) for i in people])),
        "person_template_percent": 100
        * float(
            np.mean(
                [
                    w.captions[i] in {p.format(w.names[w.identity[i]]) for p in idia.PROMPTS[: len(table)]}
                    for i in people
                ]
            )
        ),
    }


# ---------------------------------------------------------------- the name chapter


def caption_examples(s: Setting, ids, neutral: str, n: int = 6) -> pd.DataFrame:
    """n training captions that name none of `ids`, each with the trigger (one random word
    replaced by one of their names) and its target (the same word replaced by `neutral`)."""
    rng = random.Random(s.profile.seed)
    names = [s.world.names[i] for i in ids]
    shown = rng.sample(privacy.without_names(s.corpus, names), n)
    trig, target = privacy.caption_pairs(shown, names, neutral, rng)
    return pd.DataFrame(
        {"clean caption": shown, "with the trigger (the name)": trig, "target (neutral term)": target}
    )


# how a run's metric keys are shown in a table: the name the text uses, with its unit
METRIC_LABELS = {
    "tpr": "TPR (%)",
    "fnr": "FNR (%)",
    "sim_backdoor": "Sim_Backdoor (cos)",
    "sim_clean": "Sim_Clean (cos)",
    "sim_clean_people": "Sim_Clean, other people (cos)",
    "sim_targets": "Sim_Targets (cos)",
    "sim_faces": "Sim_Faces (cos)",
    "top1": "top-1 (%)",
    "top5": "top-5 (%)",
    "top1_drop": "top-1 drop (points)",
    "wrongly_unlearned": "wrongly unlearned (people)",
    "newly_recalled": "newly recalled (people)",
    "seconds": "wall time (s)",
}


def labelled(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its metric columns named as the text names them, with units (display only:
    the chapter's JSON keeps the keys)."""
    return table.rename(columns=METRIC_LABELS)


def run_table(run: dict, metrics) -> pd.DataFrame:
    """One unlearning run's `metrics` as a one-row table, labelled, counts kept as integers."""
    return labelled(pd.DataFrame([{m: run[m] for m in metrics}], index=["this run"]))


def anchor_table(detail: dict, other: dict, anchored: bool) -> pd.DataFrame:
    """The same set unlearned with the target captions anchored and not: `detail` is the run
    with the profile's setting (`anchored`), `other` the one with it flipped. Indexed "off",
    "on"."""
    runs = {("on" if anchored else "off"): detail, ("off" if anchored else "on"): other}
    metrics = ("tpr", "sim_targets", "sim_clean", "sim_backdoor", "top1_drop")
    table = pd.DataFrame({k: {m: r[m] for m in metrics} for k, r in runs.items()}).T.sort_index()
    table.index.name = "target captions anchored"
    return table


def name_picks(s: Setting, student, ids, n: int = 5) -> pd.DataFrame:
    """For the first n of `ids`: how many of their photos the "a photo of {name}." template picks
    their name for, with the original text encoder and with `student`, and the name `student`
    picks most."""
    faces = s.faces[list(ids[:n])]
    after = idia.prompt_features(student, s.tokenizer, s.names, s.device, 2)
    rows = []
    for k, p in enumerate(ids[:n]):
        before, now = (faces[k] @ s.prompts[1].T).argmax(1), (faces[k] @ after[1].T).argmax(1)
        rows.append(
            {
                "person": s.world.names[p],
                "photos naming them, before": int((before == p).sum()),
                "after": int((now == p).sum()),
                "most picked name after": s.names[int(now.mode().values)],
            }
        )
    return pd.DataFrame(rows).set_index("person")


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
    gallery = s.faces.reshape(-1, s.faces.shape[-1])  # s.faces: identities x photos x d
    owner = torch.arange(s.faces.shape[0]).repeat_interleave(s.faces.shape[1])
    world_index = torch.from_numpy(idia.eval_faces(w, s.faces.shape[1]).reshape(-1))

    def nearest(prompts):  # P x K x d -> P x K x k
        return (prompts @ gallery.T).topk(k, dim=-1).indices.cpu()

    found = {
        "original": nearest(s.prompts[:, ids]),  # the original's prompts, identities first
        "defended": nearest(idia.prompt_features(student, s.tokenizer, names, s.device, n_prompts)),
        "neutral": nearest(idia.prompt_features(s.model, s.tokenizer, [neutral], s.device, n_prompts)),
    }
    person = torch.tensor(ids).view(1, -1, 1)
    shows = {kind: 100 * (owner[found[kind]] == person).float().mean(-1) for kind in ("original", "defended")}
    like = {
        kind: 100 * (found[kind].unsqueeze(-1) == found["neutral"].unsqueeze(-2)).any(-1).float().mean(-1)
        for kind in ("original", "defended")
    }
    per_template = pd.DataFrame(
        {
            "template": idia.PROMPTS[:n_prompts],
            "shows the person, original (%)": shows["original"].mean(1).numpy(),
            "shows the person, defended (%)": shows["defended"].mean(1).numpy(),
            "as for the neutral term, defended (%)": like["defended"].mean(1).numpy(),
        }
    )
    return {
        "shows_original": shows["original"].mean().item(),
        "shows_defended": shows["defended"].mean().item(),
        "like_neutral_original": like["original"].mean().item(),
        "like_neutral_defended": like["defended"].mean().item(),
        "chance": 100.0 / s.faces.shape[0],
        "k": k,
        "neutral": neutral,
        "ids": ids,
        "per_template": per_template,
        "photos": {kind: world_index[t.reshape(-1)].reshape(t.shape) for kind, t in found.items()},
    }


def _worst_template(down: dict) -> pd.Series:
    """The per-template row whose defended prompts show the removed person most often."""
    table = down["per_template"]
    return table.loc[table["shows the person, defended (%)"].idxmax()]


def downstream_results(down: dict) -> dict:
    """downstream_retrieval's numbers as the chapter saves them (`downstream_*`)."""
    worst = _worst_template(down)
    return {
        "downstream_k": down["k"],
        "downstream_chance": down["chance"],
        **{
            f"downstream_{m}": down[m]
            for m in ("shows_original", "shows_defended", "like_neutral_original", "like_neutral_defended")
        },
        "downstream_worst_template": worst["template"],
        "downstream_worst_template_shows": float(worst["shows the person, defended (%)"]),
    }


def downstream_reading(down: dict) -> str:
    """A sentence on downstream_retrieval's result: how often the original and the defended
    text encoder's photos show the removed person, and how many of the defended one's are the
    neutral term's."""
    worst = _worst_template(down)
    return (
        f"For the {len(down['ids'])} removed people and {len(down['per_template'])} templates, the "
        f"original text encoder's {down['k']} photos show the person named "
        f"{down['shows_original']:.1f} % of the time, the defended encoder's "
        f"{down['shows_defended']:.1f} % (chance: "
        f'{down["chance"]:.1f} %; the worst template, "{worst["template"]}", '
        f"{worst['shows the person, defended (%)']:.1f} %). Of the defended encoder's photos, "
        f"{down['like_neutral_defended']:.1f} % are among those the original returns for the neutral "
        f'term "{down["neutral"]}" (the original with the name: '
        f"{down['like_neutral_original']:.1f} %)."
    )


def _at_size(summ: pd.DataFrame, group: str, size: int) -> pd.DataFrame:
    """The rows of a summary (indexed by (group, size)) at one set size, indexed by group."""
    t = summ.reset_index()
    return t[t["size"] == size].set_index(group)


def names_table(by_reg: pd.DataFrame, zero_shot: dict, big: int) -> pd.DataFrame:
    """The name sweep at `big` names, with and without the regularisation (`by_reg`: summary by
    regularisation and size), beside the paper's values; drops in points from `zero_shot`."""
    t = _at_size(by_reg, "regularisation", big)
    drop = {
        r: {
            k: paper.PRIVACY_TEXT[f"{k}_drop_64"]["reg" if r == "with" else "no_reg"]
            for k in ("top1", "top5")
        }
        for r in t.index
    }
    table = pd.DataFrame(
        {
            "TPR (%)": t["tpr"],
            "TPR, paper": 0.0,
            "Sim_Clean": t["sim_clean"],
            "Sim_Targets": t["sim_targets"],
            "Sim_Backdoor": t["sim_backdoor"],
            "paper: similarities": "> 0.99",
            "top-1 drop (points)": zero_shot["top1"] - t["top1"],
            "top-1 drop, paper (64 names)": [drop[r]["top1"] for r in t.index],
            "top-5 drop (points)": zero_shot["top5"] - t["top5"],
            "top-5 drop, paper (64 names)": [drop[r]["top5"] for r in t.index],
        }
    )
    table.index.name = f"{big} names, regularisation"
    return table


def similarity_reading(r: Mapping, paper_floor: float = 0.99) -> str:
    """Which of the name sweep's three similarity minima (from `names_results`) stay
    above the paper's stated floor, and which do not."""
    names = {
        "Sim_Backdoor": "min_sim_backdoor",
        "Sim_Clean": "min_sim_clean",
        "Sim_Targets": "min_sim_targets",
    }
    below = [f"{n} ({r[k]:.3f})" for n, k in names.items() if r[k] < paper_floor]
    if not below:
        return f"all three stay above the paper's {paper_floor:g} here too"
    return f"here {', '.join(below)} {'falls' if len(below) == 1 else 'fall'} below it"


def names_results(
    s: Setting,
    rows: pd.DataFrame,
    by_reg: pd.DataFrame,
    detail: dict,
    anchor: pd.DataFrame,
    sweep_seconds: float,
) -> dict:
    """The name chapter's numbers over its sweep `rows` (label_rows'), its summary by
    regularisation `by_reg`, the detailed run `detail` and the anchor_table `anchor`."""
    cfg, zs = s.profile.names, s.zero_shot
    big = int(rows["size"].max())
    t = _at_size(by_reg, "regularisation", big)
    w_row = rows.loc[rows.tpr.idxmax()]
    reg, noreg = rows[rows.reg], rows[~rows.reg]
    return {
        "worst_case": f'"{w_row.neutral}", {int(w_row["size"])} names, '
        f"{'with' if w_row.reg else 'without'} regularisation",
        "min_sim_clean_people": float(rows.sim_clean_people.min()),
        "max_abs_top1_change": float(rows.top1_drop.abs().max()),
        "max_hits_removed": int(rows.max_hits_removed.max()),
        "top1_big_reg": _at(t, "with", "top1"),
        "top1_big_noreg": _at(t, "without", "top1"),
        **{
            k: getattr(cfg, k)
            for k in (
                "repeats",
                "term_repeats",
                "steps",
                "lr",
                "alpha",
                "beta",
                "clean_batch",
                "poisoned_batch",
            )
        },
        "term_sizes_text": ", ".join(map(str, cfg.term_sizes)) if cfg.term_sizes else "every set size",
        "detail_size": detail["size"],
        "detail_neutral": cfg.neutral,
        "detail_seconds": detail["seconds"],
        "detail_tpr": detail["tpr"],
        "max_run_seconds": float(rows.seconds.max()),
        "median_run_seconds": float(rows.seconds.median()),
        "n_runs": len(rows),
        "sweep_seconds": sweep_seconds,
        "n_recognised": int(len(s.recognised)),
        "n_identities": len(s.world.identities),
        "max_tpr": float(rows.tpr.max()),
        "max_tpr_reg": float(reg.tpr.max()),
        "mean_tpr": float(rows.tpr.mean()),
        "min_sim_clean": float(rows.sim_clean.min()),
        "min_sim_targets": float(rows.sim_targets.min()),
        "min_sim_backdoor": float(rows.sim_backdoor.min()),
        "mean_sim_backdoor": float(rows.sim_backdoor.mean()),
        "min_sim_clean_reg": float(reg.sim_clean.min()),
        "min_sim_clean_noreg": float(noreg.sim_clean.min()) if len(noreg) else NAN,
        "top1_before": zs["top1"],
        "top5_before": zs["top5"],
        "max_top1_drop": float(rows.top1_drop.max()),
        "max_top1_drop_reg": float(reg.top1_drop.max()),
        "max_wrongly_unlearned": int(rows.wrongly_unlearned.max()),
        "max_newly_recalled": int(rows.newly_recalled.max()),
        # the same counts with one name removed: how much the attack's votes shift at all
        "max_wrongly_unlearned_one": int(rows[rows["size"] == rows["size"].min()].wrongly_unlearned.max()),
        "max_newly_recalled_one": int(rows[rows["size"] == rows["size"].min()].newly_recalled.max()),
        "n_other_terms": int(rows.neutral.nunique()) - 1,
        "big": big,
        "top1_drop_big_reg": zs["top1"] - _at(t, "with", "top1"),
        "top1_drop_big_noreg": zs["top1"] - _at(t, "without", "top1"),
        "paper_top1_drop_reg": paper.PRIVACY_TEXT["top1_drop_64"]["reg"],
        "paper_top1_drop_noreg": paper.PRIVACY_TEXT["top1_drop_64"]["no_reg"],
        "worst_tpr_by_size": {str(k): float(v) for k, v in rows.groupby("size")["tpr"].max().items()},
        "rows": _records(rows),
        "anchored": "anchored" if cfg.anchor_targets else "not anchored",
        **{f"{m}_anchor_{k}": float(anchor.loc[k, m]) for k in anchor.index for m in ("tpr", "sim_targets")},
    }


# ---------------------------------------------------------------- the face chapter


def trigger_examples(s: Setting, ids, n: int = 8, seed: int = 0, cfg=None) -> torch.Tensor:
    """n clean training images with a trigger photo of one of `ids` pasted in (uint8), as the
    face unlearning sees them."""
    sets = face_sets(s, ids, 1)
    gen = torch.Generator().manual_seed(seed)
    faces = torch.cat([s.world.images[t] for t in sets["triggers"]])
    bg = s.world.images[sets["clean"][torch.randint(len(sets["clean"]), (n,), generator=gen)]]
    pasted = faces[torch.randint(len(faces), (n,), generator=gen)]
    x = privacy.paste_faces(bg.float() / 255, pasted.float() / 255, cfg or s.profile.faces, gen)
    return (x * 255).round().to(torch.uint8)


def faces_to_target(s: Setting) -> dict:
    """How spread out the original model's faces are: the mean cosine of the eval photos to the
    mean face (the target), and between the mean embeddings of two different people."""
    w = s.world
    idx = idia.eval_faces(w, s.profile.idia.images)
    e = encode_images(s.model, w.images[idx.reshape(-1)], s.device, unit=False)
    to_target = F.cosine_similarity(e, face_target(s)[None]).mean().item()
    people = F.normalize(e.reshape(idx.shape[0], idx.shape[1], -1).mean(1), dim=-1)
    n = len(people)
    between = ((people @ people.T).sum() - n) / (n * (n - 1))
    return {"to_target": to_target, "between_people": between.item()}


def recipe_runs(s: Setting, recipes: dict, people: int = 1) -> pd.DataFrame:
    """The image encoder alone unlearning the first `people` of repeat 0 with each of `recipes`
    ({label: FacesConfig}): one row of metrics per recipe, indexed by (people, recipe)."""
    ids = people_order(s, 0)[:people]
    rows = []
    for label, cfg in recipes.items():
        row = forget_faces(s, ids, both=False, faces_cfg=cfg)[0]
        rows.append(
            {
                "people": people,
                "recipe": label,
                **{
                    m: row[m]
                    for m in (
                        "tpr",
                        "sim_backdoor",
                        "sim_clean",
                        "sim_clean_people",
                        "sim_faces",
                        "top1_drop",
                        "wrongly_unlearned",
                        "seconds",
                    )
                },
            }
        )
    return pd.DataFrame(rows).set_index(["people", "recipe"])


def faces_table(summ: pd.DataFrame, big: int) -> pd.DataFrame:
    """The face sweep at `big` people per defence (`summ`: summary by defence and size), beside
    the paper's values (None where it states none)."""
    t = _at_size(summ, "defence", big)

    def stated(key: str) -> list:
        return [
            paper.PRIVACY_IMAGE[key]["reg" if d.endswith("with") else "no_reg"]
            if d.startswith("image")
            else None
            for d in t.index
        ]

    table = pd.DataFrame(
        {
            "TPR (%)": t["tpr"],
            "TPR, paper": [
                "0" if d.startswith("both") else "rises with the set size, value not stated" for d in t.index
            ],
            "top-1 drop (points)": t["top1_drop"],
            "top-1 drop, paper": stated("top1_drop_64"),
            "top-5 drop (points)": t["top5_drop"],
            "top-5 drop, paper": stated("top5_drop_64"),
            "Sim_Clean": t["sim_clean"],
            "Sim_Clean, other people": t["sim_clean_people"],
            "wrongly unlearned": t["wrongly_unlearned"],
        }
    )
    table.index.name = f"{big} people"
    return table


def both_template_results(row, again: dict) -> dict:
    """The face chapter's numbers on its worst two-encoder run `row`, rerun per template
    (`again`: both_by_template's)."""
    return {
        "both_worst_case": f"{int(row['size'])} people, {'with' if row.reg else 'without'} "
        f"regularisation, repeat {int(row['repeat'])}",
        "both_worst_tpr": float(row.tpr),
        "both_worst_tpr_again": again["tpr"],
    }


def selectivity_reading(r: Mapping) -> str:
    """Whether chapter 8's image defence picks out the people it removes (from `faces_results`):
    at the largest set, the removed people's TPR against the share of the other recognised
    people the attack still recognises; within 10 points: about as often."""
    tpr, kept, big = r["image_tpr_big_reg"], r["image_others_kept_big_reg"], r["big"]
    if kept - tpr < 10:
        return (
            f"at {big} people the attack recognises the removed ({tpr:.1f} %) about as often as the other "
            f"people it recognised before ({kept:.1f} %): the defence hardly picks out its targets"
        )
    return (
        f"at {big} people the attack recognises {tpr:.1f} % of the removed and still {kept:.1f} % of "
        "the other people it recognised before: the defence picks out its targets"
    )


def regularisation_reading(r: Mapping) -> str:
    """The image defence's FNR with the weight regularisation against without, per paired run
    (from `faces_results`): a difference only where every pair moves the same way."""
    lo, hi, mean = r["fnr_cost_of_reg_min"], r["fnr_cost_of_reg_max"], r["fnr_cost_of_reg"]
    # the gaps are FNR without less FNR with: positive where the regularisation lowers the FNR
    if not (lo > 0 or hi < 0):
        return (
            f"no measurable difference: the FNR without the regularisation is {lo:+.1f} to {hi:+.1f} "
            f"points from the FNR with it, run by run ({mean:+.2f} points on average; positive: the "
            "regularisation lowers the FNR)"
        )
    way = "lowers" if mean > 0 else "raises"
    return (
        f"the regularisation {way} the FNR by {abs(mean):.2f} points on average, every paired run "
        f"moving the same way ({abs(lo):.1f} to {abs(hi):.1f} points)"
    )


def both_reading(r: Mapping) -> str:
    """How far defending both encoders takes the attack in chapter 8's sweep (`faces_results`)."""
    zero, worst = r["both_zero_up_to"], r["both_max_tpr"]
    if worst == 0:
        return "keeps the attack's TPR at 0 at every set size"
    if zero:
        people = "person" if zero == 1 else "people"
        return f"keeps the TPR at 0 for sets of up to {zero} {people}, and at most {worst:.1f} % beyond"
    return f"brings the TPR to at most {worst:.1f} %"


def face_geometry_reading(r: Mapping) -> str:
    """What chapter 8's two face cosines say (from `faces_results`): how far the target lies
    from a person's photos, and whether people's mean embeddings sit close together (the
    paper's second hypothesis) or not; 0.5 divides near from far."""
    far = r["faces_to_target"] < 0.5
    close = r["faces_between_people"] >= 0.5
    step = (
        "the target is far from a person's photos, so each removed person's photos must travel far"
        if far
        else "the target is near a person's photos already"
    )
    if close:
        return f"{step}, and people's mean embeddings sit close together, as in the paper's second hypothesis"
    return (
        f"{step}, while people's mean embeddings are not close on average: the drag is more likely the "
        "shared features (skin, hair, glasses, beard) that the step moves than faces sitting together"
    )


def faces_results(
    s: Setting, rows: pd.DataFrame, small: pd.DataFrame, spread: dict, sweep_seconds: float
) -> dict:
    """The face chapter's numbers over its sweep `rows` (label_rows'), the recipe_runs `small`
    (with a "pocket recipe" and a "paper's augmentation" row) and faces_to_target's `spread`."""
    cfg, prof = s.profile.faces, s.profile
    img, both = rows[rows.encoders == "image"], rows[rows.encoders == "both"]
    big = int(rows["size"].max())
    at_big = img[img["size"] == big]
    by_run = ["size", "repeat"]
    reg_gap = img[~img.reg].set_index(by_run).fnr - img[img.reg].set_index(by_run).fnr
    # the other people the attack recognised before, still recognised after a run (%): a
    # defence that picks out its targets keeps these near 100 while the removed fall to 0
    others = len(s.recognised) - img["size"]
    others_kept = 100 * (others - img.wrongly_unlearned) / others
    wrongly_share = 100 * img.wrongly_unlearned / others
    one = img["size"] == img["size"].min()
    both_tpr = both.groupby("size").tpr.max() if len(both) else pd.Series(dtype=float)
    zero_sizes = [int(k) for k in both_tpr.index if (both_tpr.loc[:k] == 0).all()]  # sizes sorted
    r = lambda recipe, k: float(small.loc[(1, recipe), k])  # noqa: E731
    return {
        **{
            k: getattr(cfg, k)
            for k in (
                "repeats",
                "steps",
                "lr",
                "alpha",
                "beta",
                "clean_batch",
                "poisoned_batch",
                "rotation",
                "jitter",
                "hue",
            )
        },
        "size_min_pct": 100 * cfg.size_min,
        "size_max_pct": 100 * cfg.size_max,
        "people_share_text": "as sampled" if cfg.people_share is None else f"{100 * cfg.people_share:.0f} %",
        "n_trigger": int(prof.world.faces_trigger) if prof.world else None,
        "n_models": len(rows),
        "sweep_seconds": sweep_seconds,
        "big": big,
        "image_tpr_1": float(img[img["size"] == 1].tpr.max()),
        "image_tpr_2": float(img[img["size"] == 2].tpr.max()) if (img["size"] == 2).any() else NAN,
        "image_max_tpr": float(img.tpr.max()),
        "both_max_tpr": float(both.tpr.max()) if len(both) else NAN,
        "image_tpr_big_reg": float(at_big[at_big.reg].tpr.mean()),
        "image_tpr_big_noreg": float(at_big[~at_big.reg].tpr.mean()),
        "image_top1_drop_big_reg": float(at_big[at_big.reg].top1_drop.mean()),
        "image_top1_drop_big_noreg": float(at_big[~at_big.reg].top1_drop.mean()),
        "image_max_top1_drop": float(img.top1_drop.max()),
        "image_min_top1_drop": float(img.top1_drop.min()),
        "image_min_sim_clean": float(img.sim_clean.min()),
        "image_min_sim_clean_people": float(img.sim_clean_people.min()),
        "image_max_wrongly": int(img.wrongly_unlearned.max()),
        "image_min_wrongly": int(img.wrongly_unlearned.min()),
        "both_max_top1_drop": float(both.top1_drop.max()) if len(both) else NAN,
        "fnr_cost_of_reg": float(reg_gap.mean()) if len(reg_gap) else NAN,
        "fnr_cost_of_reg_min": float(reg_gap.min()) if len(reg_gap) else NAN,
        "fnr_cost_of_reg_max": float(reg_gap.max()) if len(reg_gap) else NAN,
        "image_others_kept_big_reg": float(others_kept[(img["size"] == big) & img.reg].mean()),
        "image_wrongly_share_max": float(wrongly_share.max()),
        "image_wrongly_share_one_min": float(wrongly_share[one].min()),
        "image_wrongly_share_one_max": float(wrongly_share[one].max()),
        "n_recognised": len(s.recognised),
        # the largest set size up to which every two-encoder run left the attack at TPR 0
        "both_zero_up_to": max(zero_sizes, default=0),
        "paper_aug_top1_drop_1": r("paper's augmentation", "top1_drop"),
        "pocket_top1_drop_1": r("pocket recipe", "top1_drop"),
        "paper_aug_sim_faces_1": r("paper's augmentation", "sim_faces"),
        "pocket_sim_faces_1": r("pocket recipe", "sim_faces"),
        "object_share_pct": 100
        * prof.world.n_categories
        * prof.world.objects_train
        / prof.world.n_train_pairs
        if prof.world
        else NAN,
        "paper_fnr_cost_of_reg": paper.PRIVACY_IMAGE["fnr_cost_of_reg"],
        "paper_top1_drop_reg": paper.PRIVACY_IMAGE["top1_drop_64"]["reg"],
        "paper_top1_drop_noreg": paper.PRIVACY_IMAGE["top1_drop_64"]["no_reg"],
        "max_image_seconds": float(img.seconds.max()),
        "median_image_seconds": float(img.seconds.median()),
        "paper_aug_tpr_1": float(small.loc[(1, "paper's augmentation"), "tpr"]),
        "paper_aug_wrongly_1": int(small.loc[(1, "paper's augmentation"), "wrongly_unlearned"]),
        "pocket_wrongly_1": int(small.loc[(1, "pocket recipe"), "wrongly_unlearned"]),
        "faces_to_target": spread["to_target"],
        "faces_between_people": spread["between_people"],
        "tpr_by_size": {str(k): float(v) for k, v in img.groupby("size")["tpr"].max().items()},
        "rows": _records(rows),
        "small": small.reset_index().to_dict(orient="records"),
    }


# ---------------------------------------------------------------- the IDIA chapter


def recognition_table(s: Setting) -> pd.DataFrame:
    """How many people the IDIA recognises in the pocket CLIP, beside the paper (which states
    no overall rate)."""
    p, res, n = s.profile, s.before, len(s.world.identities)
    return pd.DataFrame(
        [
            {
                "model": "OpenCLIP ViT-B/32, LAION-400M (paper)",
                "people attacked": "FaceScrub celebrities",
                "recognised (%)": None,
                "note": "the paper reports no overall rate; it unlearns only recognised people "
                "(TPR 100 % before)",
            },
            {
                "model": f"pocket CLIP ({p.name}, seed {p.seed})",
                "people attacked": f"all {n}",
                "recognised (%)": res.rate,
                "note": f"{int(res.recognised.sum())} of {n}",
            },
        ]
    ).set_index("model")


def idia_template_reading(r: dict) -> str:
    """Whether recognition in chapter 6's run depends more on the person or on the template's
    phrasing (from `idia_results`): on the phrasing where the single templates lie more than 10
    points apart; on the person where they do not and most people are named by all or none."""
    counts = (
        f"{r['n_all_templates']} of the {r['n_identities']} people are named by every template and "
        f"{r['n_no_template']} by none (a person is named by {r['mean_hits']:.1f} templates on average)"
    )
    spread = r["prompt_spread"]
    if spread > 10:
        return f"{counts}, and the single templates differ by {spread:.1f} points: the phrasing matters"
    if r["n_all_templates"] + r["n_no_template"] >= r["n_identities"] / 2:  # most all-or-nothing
        return (
            f"{counts}, while the single templates differ by only {spread:.1f} points: whether "
            "a person is recognised depends far more on the person than on the phrasing"
        )
    return f"{counts}; the single templates differ by {spread:.1f} points"


def idia_results(s: Setting) -> dict:
    """The IDIA chapter's numbers: the share (%) of people recognised, hits per person, the
    share (%) of people each template names ("prompt_pct"), the attack's settings and time."""
    res, cfg = s.before, s.profile.idia
    prompt_rate = 100 * res.prompt_hits.mean(1)
    n = len(s.world.identities)
    first = min(5, cfg.prompts)  # the exercise's smaller attack: only the first templates
    return {
        "recognised_pct": res.rate,
        "n_recognised": int(res.recognised.sum()),
        # every pocket person was trained on: each one not recognised is a miss of the attack
        "n_missed": n - int(res.recognised.sum()),
        "fnr_before_pct": 100 - res.rate,
        "n_identities": n,
        "n_candidates": len(s.names),
        "n_generated_names": len(s.names) - n,
        "n_all_templates": int((res.hits == cfg.prompts).sum()),
        "n_no_template": int((res.hits == 0).sum()),
        "prompt_spread": float(prompt_rate.max() - prompt_rate.min()),
        "first_prompts": first,
        "recognised_first_prompts": float(100 * (res.prompt_hits[:first].sum(0) >= cfg.min_hits).mean()),
        "n_prompts": cfg.prompts,
        "n_images": cfg.images,
        "min_hits": cfg.min_hits,
        "mean_hits": float(res.hits.mean()),
        "best_prompt_pct": float(prompt_rate.max()),
        "worst_prompt_pct": float(prompt_rate.min()),
        "idia_seconds": s.seconds,
        "recognised_if_half": float(100 * (res.hits >= (cfg.prompts + 1) // 2).mean()),
        "zs_top1": s.zero_shot["top1"],
        "zs_top5": s.zero_shot["top5"],
        "paper_tpr_before": paper.PRIVACY_TPR_BEFORE,
        "hits": res.hits.tolist(),
        "prompt_pct": prompt_rate.tolist(),
    }
