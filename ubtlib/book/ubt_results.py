"""The UBT chapters' (2 to 5) results, tables and readings, from plain measured results.

Every function takes what the chapter measured (dicts from `experiments`, DataFrames) and
returns a dict to publish, a DataFrame to show or a Markdown sentence to glue. The readings are
computed, not written: they must hold for whatever a run measured, so each branch of a sentence
is chosen by the numbers (the unit tests run them on hand-built results).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ubtlib.book.paper import UBT_TABLE1
from ubtlib.evaluation.robustness import PLANTED_ASR, RA_MARGIN, REMOVED_ASR, verdict

FIRES_ASR = 80.0  # a No-defense ASR (%) from which chapter 2 says a backdoor fires
DETECTED_PRECISION = 90.0  # a top-k precision (%) from which chapter 3 counts an attack as found
DEFENSE_NAMES = {
    "none": "No defense",
    "cleanclip": "CleanCLIP",
    "ubt_no_token": "UBT w/o token-level",
    "ubt": "UBT",
    "ubt_restore": "UBT + restore (book)",
}  # the experiments' defense keys -> the paper's Table 1 row names (the last is the book's own)


def glue_readings(readings: Mapping[str, str]) -> None:
    """Glue each Markdown text under its name, for {glue:md}`name` in the chapter's text."""
    from IPython.display import Markdown
    from myst_nb import glue

    for name, text in readings.items():
        glue(name, Markdown(text), display=False)


def paper_rows(attacks: Sequence[str], defense: str = "No defense") -> dict:
    """attack -> {"ca", "asr"} of the paper's Table 1 for `defense`, for the attacks it has."""
    return {a: dict(zip(("ca", "asr"), UBT_TABLE1[a][defense])) for a in attacks if a in UBT_TABLE1}


# ------------------------------------------------------------------ chapter 1: how far numbers move


def spread_summary(rows: Sequence[dict]) -> dict:
    """From `experiments.kernel_spread`'s rows: whether every run with the book's kernels and
    seed 0 gave the first row's weights bit for bit, the top-1 range (points) over the seed-0
    runs of every kernel setting, and over the book's kernels' seeds."""
    book = [r for r in rows if r["setting"].startswith("book kernels")]
    seed0 = [r for r in rows if r["seed"] == 0]
    seeds = [r for r in book if r["threads"] == rows[0]["threads"]]
    spread = lambda rs: max(r["top1"] for r in rs) - min(r["top1"] for r in rs)  # noqa: E731
    return {
        "threads_identical": all(r["weights"] == rows[0]["weights"] for r in book if r["seed"] == 0),
        "thread_counts": sorted({r["threads"] for r in book if r["seed"] == 0}),
        "kernel_top1_range": spread(seed0),
        "seed_top1_range": spread(seeds),
        "n_seeds": len({r["seed"] for r in seeds}),
    }


def spread_reading(summary: Mapping) -> str:
    """Chapter 1's reading of the spread, for whichever way the runs came out."""
    counts = ", ".join(map(str, summary["thread_counts"]))
    threads = (
        f"With the book's kernels, {counts} threads gave bit-identical weights"
        if summary["threads_identical"]
        else f"Even with the book's kernels, {counts} threads gave different weights"
    )
    k, s = summary["kernel_top1_range"], summary["seed_top1_range"]
    seeds = f"the {s:.2f} points between {summary['n_seeds']} training seeds"
    if k == 0:
        return f"{threads}. Torch's own choice of kernels left the top-1 where it was here, against {seeds}."
    compare = "less than" if k < s else ("as much as" if k == s else "more than")
    moved = f"Torch's own choice of kernels moves the top-1 by up to {k:.2f} points"
    return f"{threads}. {moved}, {compare} {seeds}."


# ------------------------------------------------------------------ chapter 2: backdoor attacks


def no_defense_table(
    table: Mapping[str, dict],
    fit: Mapping[str, float],
    attacks: Sequence[str],
    base: Mapping[str, dict] | None = None,
) -> pd.DataFrame:
    """One row per attack (the index): the poisoned model's CA, ASR and RA, the trigger's base
    rate (the clean pre-trained model's ASR under it, where `base` has it), its ASR on its own
    poisons, the paper's No-defense CA and ASR (None where the paper has no row) and the
    fine-tuning time."""
    rows = []
    for a in attacks:
        paper = UBT_TABLE1.get(a, {}).get("No defense", (None, None))
        rows.append(
            {
                "attack": a,
                "CA (pocket)": table[a]["ca"],
                "ASR (pocket)": table[a]["asr"],
                "base rate": (base or {}).get(a, {}).get("asr"),
                "RA (pocket)": table[a].get("ra"),
                "ASR on its own poisons": fit[a],
                "CA (paper)": paper[0],
                "ASR (paper)": paper[1],
                "fine-tuning (s)": table[a]["finetune_seconds"],
            }
        )
    return pd.DataFrame(rows).set_index("attack")


def backdoor_results(
    before: dict,
    table: Mapping[str, dict],
    visibility: dict,
    footprint: dict,
    fit: dict,
    poison_count: int,
    n_train_pairs: int | None,
    base: Mapping[str, dict] | None = None,
) -> dict:
    """Chapter 2's published results: the pre-trained and poisoned models' CA and ASR (curves
    apart), the triggers' visibility and footprint, and the summary scalars its text quotes."""
    attacks = list(table)
    return {
        "pretrained_ca": before["ca"],
        "pretrained_asr_badnet": before["asr"],
        "poison_count": poison_count,
        "n_train_pairs": n_train_pairs,
        "attacks": {a: {k: v for k, v in table[a].items() if k != "curve"} for a in attacks},
        "visibility": visibility,
        "min_asr": min(table[a]["asr"] for a in attacks),
        "max_ca_drop": max(before["ca"] - table[a]["ca"] for a in attacks),
        "ssba_psnr": visibility["ssba"]["psnr_mean"],
        "curves": {a: table[a]["curve"] for a in attacks},
        "footprint": footprint,
        "poison_fit": fit,
        "base_rates": {a: b["asr"] for a, b in (base or {}).items()},
    }


def weak_attacks(table: Mapping[str, dict]) -> list:
    """The attacks whose No-defense ASR is below `FIRES_ASR`, in the table's order."""
    return [a for a in table if table[a]["asr"] < FIRES_ASR]


def fire_verdict(table: Mapping[str, dict]) -> str:
    """Whether every backdoor fires, or which fall short and how far."""
    weak = weak_attacks(table)
    return (
        "every backdoor fires (ASR of at least 80 %)"
        if not weak
        else "not every backdoor fires: "
        + ", ".join(f"{a} reaches {table[a]['asr']:.1f} %" for a in weak)
        + " (below 80 %)"
    )


def warp_reading(
    table: Mapping[str, dict], footprint: Mapping[str, dict], fit: Mapping[str, float], strong_warp: float
) -> str:
    """How the WaNet warp's footprint (and the WaNet poisons' fit) compares with the other
    triggers', and whether that explains a WaNet backdoor that did not take.

    footprint: `experiments.trigger_footprint` per trigger, with WaNet at `strong_warp` as
    "wanet_strong"; fit: `experiments.poison_fit` for the attacks run."""
    others = [a for a in footprint if a not in ("wanet", "wanet_strong")]
    warp, strong = footprint["wanet"], footprint["wanet_strong"]
    probe_floor = min(footprint[a]["probe"] for a in others)
    least_consistent = min(footprint[a]["consistency"] for a in others)
    reading = (
        f"Before any poisoning, a linear probe tells a warped image from its original "
        f"{warp['probe']:.1f} % of the time (50 % is chance), against {probe_floor:.1f} % or more "
        f"for the other four triggers. At s = {strong_warp:g} the warp changes the features by "
        f"{strong['shift']:.2f} of the distance between two clean images (the other four: "
        f"{min(footprint[a]['shift'] for a in others):.2f} to "
        f"{max(footprint[a]['shift'] for a in others):.2f}), and the consistency of that change "
        f"is {strong['consistency']:.2f} (the other four: at least {least_consistent:.2f}). "
    )
    wanet_weak = "wanet" in weak_attacks(table)
    if "wanet" in fit:
        rest = [fit[a] for a in fit if a != "wanet"]
        reading += (
            f"After poisoning, the model classifies {fit['wanet']:.1f} % of its own warped "
            "training images as banana"
            + (f" (the other triggers run here: at least {min(rest):.1f} %)" if rest else "")
            + (", so the fine-tune did not even memorise its poisons. " if fit["wanet"] < 50 else ". ")
        )
    if "wanet" not in table:
        reading += "WaNet was not poisoned in this run, so its ASR is not compared."
    elif wanet_weak and warp["probe"] < min(probe_floor, 55.0) and strong["consistency"] < least_consistent:
        reading += (
            "The warp leaves no trace that the pre-trained features share across images: even a "
            "visible warp moves each image its own way, with no common direction for a short "
            "fine-tune to tie to the target caption."
        )
    elif wanet_weak:
        reading += (
            "These measures do not single the warp out in this run, so they do not explain "
            "WaNet's low ASR on their own."
        )
    else:
        reading += "In this run WaNet's backdoor took, whatever its footprint."
    return reading


def wanet_row(table: Mapping[str, dict]) -> str:
    """What the No-defense row for WaNet stands for in this run."""
    if "wanet" not in table:
        return "WaNet was not run here."
    asr = table["wanet"]["asr"]
    if "wanet" in weak_attacks(table):
        return (
            f"With ASR {asr:.1f} %, the No-defense row for WaNet is a backdoor that did not take, "
            "and the defense chapters show what UBT does when there is little to remove."
        )
    return f"In this run WaNet reaches ASR {asr:.1f} %: its backdoor took."


def backdoor_readings(
    table: Mapping[str, dict], footprint: Mapping[str, dict], fit: Mapping[str, float], strong_warp: float
) -> dict:
    """Chapter 2's glued readings: {"verdict", "warp_reading", "wanet_row"} -> Markdown text."""
    return {
        "verdict": fire_verdict(table),
        "warp_reading": warp_reading(table, footprint, fit, strong_warp),
        "wanet_row": wanet_row(table),
    }


# ------------------------------------------------------------------ chapter 3: finding the poison


def detection_summary(rows: Mapping[str, dict]) -> pd.DataFrame:
    """One row per attack (the index): the split's, the overfitted top k's and ABL's separation
    of the poisons, and the poisons left in the retain pool (rows: `experiments.finding_the_poison`)."""
    return pd.DataFrame(
        {
            a: {
                "poisons": r["poisons"],
                "in D_susp": r["susp_poisons"],
                "|D_susp|": r["d_susp"],
                "split recall (%)": r["split_recall"],
                "split AUROC": r["split_auroc"],
                "top-k precision (%)": r["topk_precision"],
                "top-k recall (%)": r["topk_recall"],
                "overfitted AUROC in D_susp": r["topk_auroc"],
                "poisons in the retain pool": r["retain_poisons"],
                "retain pool": r["retain_pairs"],
                "ABL precision (%)": r["abl_precision"],
                "ABL recall (%)": r["abl_recall"],
                "ABL AUROC": r["abl_auroc"],
            }
            for a, r in rows.items()
        }
    ).T


def detection_results(
    rows: Mapping[str, dict], top_k: int, retain_candidates: int, susp_fraction: float
) -> dict:
    """Chapter 3's published results: each attack's scalar detection measures (per-pair lists
    apart) and the extremes over the attacks that its text quotes."""
    r = list(rows.values())
    return {
        "attacks": {a: {k: v for k, v in row.items() if not isinstance(v, list)} for a, row in rows.items()},
        "min_topk_precision": min(x["topk_precision"] for x in r),
        "min_split_recall": min(x["split_recall"] for x in r),
        # the poisons the split leaves in D_safe, per attack: the fewest and the most (%)
        "split_missed_min": 100 - max(x["split_recall"] for x in r),
        "split_missed_max": 100 - min(x["split_recall"] for x in r),
        "max_abl_precision": max(x["abl_precision"] for x in r),
        "max_retain_poisons": max(x["retain_poisons"] for x in r),
        "retain_pairs": max(x["retain_pairs"] for x in r),
        "top_k": top_k,
        "retain_candidates": retain_candidates,
        "susp_percent": 100 * susp_fraction,
    }


def missed_attacks(rows: Mapping[str, dict]) -> list:
    """The attacks whose top k is less than `DETECTED_PRECISION` poisoned."""
    return [a for a, r in rows.items() if r["topk_precision"] < DETECTED_PRECISION]


def missed_reason(attack: str, row: dict, asr: float) -> str:
    """Why the top k of `attack` missed: how it compares with a random draw from D_susp, and
    whether its backdoor was planted at all (`asr`: its No-defense ASR, chapter 2)."""
    base = 100 * row["susp_poisons"] / row["d_susp"]  # the poisoned share of a random draw from D_susp
    draw = (
        f"no better than a random draw from D_susp, which is {base:.1f} % poisoned"
        if row["topk_precision"] <= base
        else f"above a random draw from D_susp ({base:.1f} % poisoned)"
    )
    planted = (
        f"its backdoor was not planted (below {PLANTED_ASR:.0f} %), so there was "
        "little shortcut for the overfitting to strengthen"
        if asr < PLANTED_ASR
        else "the backdoor was planted, but the overfitting did not single it out"
    )
    return (
        f"For {attack}, the top k is {row['topk_precision']:.1f} % poisoned, {draw}; its No-defense ASR "
        f"is {asr:.1f} %: {planted}"
    )


def detection_verdict(rows: Mapping[str, dict], asr: Mapping[str, float]) -> str:
    """Whether UBT's top k separates the poisons for every attack and better than ABL; for
    each missed attack, why (asr: No-defense ASR of at least the `missed_attacks`)."""
    missed = missed_attacks(rows)
    abl_level = [a for a, r in rows.items() if r["abl_precision"] >= r["topk_precision"]]
    abl_part = (
        "ABL isolates at least as precisely for " + ", ".join(abl_level)
        if abl_level
        else "ABL isolates less precisely than UBT's top k for every attack"
    )
    if not missed:
        return (
            "UBT separates the poisons better than ABL for every attack, as the paper's Fig. 2 shows"
            if not abl_level
            else f"UBT's top k is at least 90 % poisoned for every attack, but {abl_part}"
        )
    return (
        "UBT does not reach the paper's separation for every attack. "
        + ". ".join(missed_reason(a, rows[a], asr[a]) for a in missed)
        + (". For every other attack the top k is at least 90 % poisoned" if len(missed) < len(rows) else "")
        + f"; {abl_part}"
    )


def abl_reading(rows: Mapping[str, dict], isolation_ratio: float) -> str:
    """Which way ABL's loss ranks the poisons over the attacks (AUROC 0.5 is chance; below it,
    poisons last), and why it ranks them last when that is so."""
    abl_auroc = [r["abl_auroc"] for r in rows.values()]
    lo, hi = min(abl_auroc), max(abl_auroc)
    split_auroc = min(r["split_auroc"] for r in rows.values())
    if hi < 0.5:
        return (
            f"ABL's loss ranks the poisons *behind* the clean pairs for every attack (AUROC {lo:.2f} "
            f"to {hi:.2f}, where 0.5 is chance), so isolating the lowest-loss "
            f"{100 * isolation_ratio:g} % finds almost none. Its isolation training starts "
            "from the clean pre-trained CLIP, to which a triggered image under a caption naming "
            f"another class is a mismatched pair (the split above ranks them with AUROC at least "
            f"{split_auroc:.2f}), harder to fit than a clean one. ABL assumes the opposite, that a "
            "backdoor is learned first, as it is when a network is trained from scratch."
        )
    if lo > 0.5:
        return (
            f"ABL's loss ranks the poisons ahead of the clean pairs for every attack (AUROC {lo:.2f} "
            f"to {hi:.2f}, where 0.5 is chance)."
        )
    return (
        f"ABL's loss ranks the poisons ahead of the clean pairs for some attacks and behind them "
        f"for others (AUROC {lo:.2f} to {hi:.2f}, where 0.5 is chance)."
    )


def detection_readings(rows: Mapping[str, dict], asr: Mapping[str, float], isolation_ratio: float) -> dict:
    """Chapter 3's glued readings: {"verdict", "abl_reading"} -> Markdown text."""
    return {"verdict": detection_verdict(rows, asr), "abl_reading": abl_reading(rows, isolation_ratio)}


# ------------------------------------------------------------------ chapter 4: unlearning


def ablation_table(ablations: Mapping[tuple, list]) -> pd.DataFrame:
    """One row per ablation run: attack, parameter, value, CA, ASR, top-k precision, seconds and
    pairs scored (ablations: (attack, field) -> `experiments.ablation` rows)."""
    return pd.DataFrame(
        [
            {
                "attack": a,
                "parameter": f,
                "value": r[f],
                "CA": r["ca"],
                "ASR": r["asr"],
                "precision": r.get("precision"),
                "seconds": r["seconds"],
                "pairs scored": r["pairs_scored"],
            }
            for (a, f), rows in ablations.items()
            for r in rows
        ]
    )


def ablation_value(flat: pd.DataFrame, field: str, value, metric: str) -> float:
    """`metric` of the first ablation row that set `field` to `value`; NaN where the grid skipped it."""
    return next(
        (
            r[metric]
            for r in flat.to_dict(orient="records")
            if r["parameter"] == field and r["value"] == value
        ),
        float("nan"),
    )


def unlearning_results(
    attack: str, curves: Mapping[str, list], alignment: dict, flat: pd.DataFrame, retain_candidates: int
) -> dict:
    """Chapter 4's published results: the unlearning curves' ends, the captions' alignment, the
    ablation rows and the ablation values its text quotes (NaN where the grid skipped them)."""
    double = 2 * retain_candidates
    quoted = (
        ("abl_tokens_asr", "caption_form", "tokens", "ASR"),
        ("abl_all_safe_asr", "retain_fraction", 1.0, "ASR"),
        ("abl_no_retain_asr", "retain_weight", 0.0, "ASR"),
        ("abl_no_retain_ca", "retain_weight", 0.0, "CA"),
        ("abl_eq3_asr", "unlearn_floor", -1.0, "ASR"),
        ("abl_eq3_ca", "unlearn_floor", -1.0, "CA"),
        ("abl_caps8_asr", "max_token_captions", 8, "ASR"),
        ("abl_caps8_ca", "max_token_captions", 8, "CA"),
        ("abl_cands2x_asr", "retain_candidates", double, "ASR"),
        ("abl_cands2x_ca", "retain_candidates", double, "CA"),
        ("abl_cands2x_seconds", "retain_candidates", double, "seconds"),
        ("abl_cands1x_seconds", "retain_candidates", retain_candidates, "seconds"),
        ("abl_cands2x_scored", "retain_candidates", double, "pairs scored"),
        ("abl_cands1x_scored", "retain_candidates", retain_candidates, "pairs scored"),
    )
    return {
        "attack": attack,
        "final": {name: pts[-1] for name, pts in curves.items()},
        "ablations": flat.to_dict(orient="records"),
        "ubt_asr": curves["UBT"][-1]["asr"],
        "ubt_ca": curves["UBT"][-1]["ca"],
        "no_token_asr": curves["UBT w/o token-level"][-1]["asr"],
        "start_asr": curves["UBT"][0]["asr"],
        "start_ca": curves["UBT"][0]["ca"],
        "align_token": alignment["token_level"],
        "align_full": alignment["full"],
        "align_forms": alignment["forms"],
        **{key: ablation_value(flat, field, value, metric) for key, field, value, metric in quoted},
        "retain_candidates": retain_candidates,
        "retain_candidates_2x": double,
    }


def token_verdict(ubt_asr: float, no_token_asr: float) -> str:
    """Which unlearning captions, token-level or full, leave the lower ASR (a point's margin)."""
    if ubt_asr < no_token_asr - 1:
        return (
            "token-level captions remove more of the backdoor than full captions, as in the paper's ablation"
        )
    if no_token_asr < ubt_asr - 1:
        return (
            "full captions remove more of the backdoor than token-level captions, the opposite of the "
            "paper's ablation"
        )
    return "token-level and full captions end within a point of each other"


def unlearning_readings(results: dict) -> dict:
    """Chapter 4's glued readings, from its published results: {"token_verdict"} -> Markdown text."""
    return {"token_verdict": token_verdict(results["ubt_asr"], results["no_token_asr"])}


def redirect_table(anatomy: Mapping[str, dict]) -> pd.DataFrame:
    """`experiments.redirect_anatomy` as one row per defense: CA, ASR, RA, the verdict, the
    triggered images' cosine to their clean selves and the classes they go to most."""
    rows = []
    for d, r in anatomy.items():
        rows.append(
            {
                "defense": DEFENSE_NAMES.get(d, d),
                "CA": r["ca"],
                "ASR": r["asr"],
                "RA": r["ra"],
                "verdict": "–" if d == "none" else verdict(r["ca"], r["asr"], r["ra"]),
                "cos(triggered, clean)": r["cos_to_clean"],
                "nearest classes (share of triggered images)": ", ".join(
                    f"{c} {v:.0f} %" for c, v in r["nearest"].items()
                ),
            }
        )
    return pd.DataFrame(rows).set_index("defense")


def redirect_reading(anatomy: Mapping[str, dict], target: str) -> str:
    """Chapter 4's reading of where the triggered images went, for whichever way it came out."""
    base = anatomy.get("none")
    parts = []
    for d, r in anatomy.items():
        if d == "none":
            continue
        name = DEFENSE_NAMES.get(d, d)
        (first, share), *_ = r["nearest"].items()
        v = verdict(r["ca"], r["asr"], r["ra"])
        moved = f"triggered images sit at cosine {r['cos_to_clean']:.2f} from their clean selves" + (
            f" (poisoned model: {base['cos_to_clean']:.2f})" if base else ""
        )
        if v == "redirected":
            parts.append(
                f"after {name} the backdoor is redirected, not removed: ASR {r['asr']:.1f} %, but RA "
                f"{r['ra']:.1f} % against CA {r['ca']:.1f} %; {moved}, and {share:.0f} % of them go to "
                f"{first}. Eq. 3 only pushes them away from the {target} captions, and the trigger still "
                "moves them, now towards whichever class lay nearest"
            )
        elif v == "removed":
            parts.append(
                f"after {name} the backdoor is removed: ASR {r['asr']:.1f} %, RA {r['ra']:.1f} % against "
                f"CA {r['ca']:.1f} %; {moved}"
            )
        else:
            parts.append(f"after {name} the backdoor is not removed: ASR {r['asr']:.1f} %; {moved}")
    return "; ".join(parts) + "." if parts else ""


# ------------------------------------------------------------------ chapter 5: Table 1


def table1_rows(rows: Sequence[dict]) -> pd.DataFrame:
    """`experiments.table1`'s rows as a DataFrame, with the paper's defense names."""
    df = pd.DataFrame(rows)
    df["defense"] = df["defense"].map(DEFENSE_NAMES)
    return df


def table1_aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (attack, defense), in the rows' order: mean and std over seeds of CA, ASR and RA, the
    redirect (the class most seeds redirect to, its mean share), the mean wall time and pairs
    trained on, and the paper's CA and ASR (None where it has none)."""
    agg = (
        rows.groupby(["attack", "defense"], sort=False)
        .agg(
            CA=("ca", "mean"),
            CA_std=("ca", "std"),
            ASR=("asr", "mean"),
            ASR_std=("asr", "std"),
            RA=("ra", "mean"),
            RA_std=("ra", "std"),
            redirect_class=("redirect_class", lambda c: c.mode().iloc[0]),
            redirect_share=("redirect_share", "mean"),
            redirect_clean_share=("redirect_clean_share", "mean"),
            seconds=("seconds", "mean"),
            pairs_trained=("pairs_trained", "mean"),
        )
        .reset_index()
    )
    paper = [UBT_TABLE1.get(a, {}).get(d, (None, None)) for a, d in zip(agg.attack, agg.defense)]
    agg["paper CA"] = [p[0] for p in paper]
    agg["paper ASR"] = [p[1] for p in paper]
    return agg


def table1_display(agg: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 analogue as shown: "mean ± std" of CA, ASR and RA (std 0 for one seed), the
    redirect, the paper's CA and ASR and the cost columns, indexed by (attack, defense)."""
    table = agg.assign(
        **{
            "CA (pocket)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(agg.CA, agg.CA_std.fillna(0))],
            "ASR (pocket)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(agg.ASR, agg.ASR_std.fillna(0))],
            "RA (pocket)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(agg.RA, agg.RA_std.fillna(0))],
            "redirect": [
                f"{c} {s:.0f} % (clean {k:.0f} %)"
                for c, s, k in zip(agg.redirect_class, agg.redirect_share, agg.redirect_clean_share)
            ],
        }
    )[
        [
            "attack",
            "defense",
            "CA (pocket)",
            "ASR (pocket)",
            "RA (pocket)",
            "redirect",
            "paper CA",
            "paper ASR",
            "seconds",
            "pairs_trained",
        ]
    ]
    return table.set_index(["attack", "defense"])


def _by_attack(agg: pd.DataFrame, defense: str) -> pd.DataFrame:
    return agg[agg.defense == defense].set_index("attack")


def table1_results(rows: pd.DataFrame, agg: pd.DataFrame, n_seeds: int) -> dict:
    """Chapter 5's published results: every run and the aggregated table, with the summary
    scalars its text quotes (ASR of the UBT variants with and without SSBA, their largest CA
    drop against No defense, UBT's and CleanCLIP's mean wall time and the runs' total)."""
    ubt, no_token = _by_attack(agg, "UBT"), _by_attack(agg, "UBT w/o token-level")
    nodef, cc = _by_attack(agg, "No defense"), _by_attack(agg, "CleanCLIP")

    def max_asr_non_ssba(t):  # SSBA-style is held to a looser bar (3 %) than the others (1 %)
        rest = t.drop(index="ssba", errors="ignore")
        return float(rest.ASR.max()) if len(rest) else None

    return {
        "rows": rows.to_dict(orient="records"),
        "table": agg.to_dict(orient="records"),
        "ubt_max_asr_non_ssba": max_asr_non_ssba(ubt),
        "ubt_asr_ssba": float(ubt.ASR.get("ssba", float("nan"))),
        "ubt_max_ca_drop": float((nodef.CA - ubt.CA).max()),
        "ubt_seconds": float(ubt.seconds.mean()),
        "cleanclip_seconds": float(cc.seconds.mean()),
        "time_ratio": float(ubt.seconds.mean() / cc.seconds.mean()),
        "no_token_max_asr_non_ssba": max_asr_non_ssba(no_token),
        "no_token_asr_ssba": float(no_token.ASR.get("ssba", float("nan"))),
        "no_token_max_ca_drop": float((nodef.CA - no_token.CA).max()),
        "n_seeds": n_seeds,
        # what the table cost to compute: every defense run's own wall time, summed
        "cleanclip_runs": int((rows.defense == "CleanCLIP").sum()),
        "ubt_runs": int((rows.defense == "UBT").sum()),
        "cleanclip_total_min": float(rows.seconds[rows.defense == "CleanCLIP"].sum() / 60),
        "ubt_total_min": float(rows.seconds[rows.defense == "UBT"].sum() / 60),
        "defenses": defense_summary(agg),
    }


def defense_summary(agg: pd.DataFrame) -> dict:
    """Per defense other than No defense, over the planted attacks: the largest ASR, the largest
    gap CA - RA, the largest CA drop against No defense, the mean wall time and its ratio to
    CleanCLIP's (NaN where a quantity has no planted attack or no CleanCLIP row, so that every
    key is glued whatever the run measured); keyed by the
    experiments' defense names (``ubt_restore``), so they glue as ``defenses_ubt_restore_max_asr``."""
    key = {name: k for k, name in DEFENSE_NAMES.items()}
    took, nodef = planted(agg), _by_attack(agg, "No defense")
    fired = [a for a in took.index if took[a]]
    nan = float("nan")
    cc = float(agg[agg.defense == "CleanCLIP"].seconds.mean()) if (agg.defense == "CleanCLIP").any() else nan
    out = {}
    for d in dict.fromkeys(agg.defense):
        if d == "No defense":
            continue
        t = _by_attack(agg, d).reindex(fired)
        seconds = float(agg[agg.defense == d].seconds.mean())
        out[key.get(d, d)] = {
            "max_asr": float(t.ASR.max()) if fired else nan,
            "max_ra_gap": float((t.CA - t.RA).max()) if fired else nan,
            "max_ca_drop": float((nodef.CA.reindex(fired) - t.CA).max()) if fired else nan,
            "seconds": seconds,
            "time_ratio_cleanclip": seconds / cc,
        }
    return out


def planted(agg: pd.DataFrame) -> pd.Series:
    """Per attack: whether its No-defense mean ASR reaches `PLANTED_ASR` (a backdoor to remove)."""
    return _by_attack(agg, "No defense").ASR >= PLANTED_ASR


def removal_verdict(variant: str, agg: pd.DataFrame) -> str:
    """What the defense `variant` did to each planted backdoor, by the book's one definition
    (`robustness.verdict` on the seed means): removed, redirected (to which class, how
    strongly) or not removed."""
    t, took = _by_attack(agg, variant), planted(agg)
    fired = [a for a in t.index if took.get(a, False)]
    if not fired:
        return f"no backdoor was planted, so {variant} had none to remove"
    said = {a: verdict(t.CA[a], t.ASR[a], t.RA[a]) for a in fired}
    if all(v == "removed" for v in said.values()):
        return (
            f"{variant} removes every planted backdoor: ASR at most {REMOVED_ASR:.0f} % and RA within "
            f"{RA_MARGIN:.0f} points of CA for {', '.join(fired)}"
        )
    parts = []
    for a in fired:
        if said[a] == "removed":
            parts.append(f"{a}: removed (RA {t.RA[a]:.1f} % against CA {t.CA[a]:.1f} %)")
        elif said[a] == "redirected":
            parts.append(
                f"{a}: redirected, not removed (ASR {t.ASR[a]:.1f} %, but RA {t.RA[a]:.1f} % against CA "
                f"{t.CA[a]:.1f} %; {t.redirect_share[a]:.0f} % of triggered images go to "
                f"{t.redirect_class[a]}, {t.redirect_clean_share[a]:.0f} % without the trigger)"
            )
        else:
            parts.append(f"{a}: not removed (ASR {t.ASR[a]:.1f} %)")
    return f"{variant}: " + "; ".join(parts)


def table1_readings(agg: pd.DataFrame) -> dict:
    """Chapter 5's glued readings: {"ubt_verdict", "no_token_verdict", "restore_verdict",
    "not_planted"} -> Markdown text (the restoring variant's where the table has it)."""
    took = planted(agg)
    restore = DEFENSE_NAMES["ubt_restore"]
    return {
        "ubt_verdict": removal_verdict("UBT", agg),
        "no_token_verdict": removal_verdict("UBT w/o token-level", agg),
        "restore_verdict": removal_verdict(restore, agg) if (agg.defense == restore).any() else "not run",
        "not_planted": ", ".join(a for a in took.index if not took[a]) or "none",
    }
