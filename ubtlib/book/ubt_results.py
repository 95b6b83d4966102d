"""The UBT chapters' (2 to 5) results, tables and readings, from plain measured results.

Every function takes what the chapter measured (dicts from `experiments`, DataFrames) and
returns a dict to publish, a DataFrame to show or a Markdown sentence to glue. The readings are
computed, not written: they must hold for whatever a run measured, so each branch of a sentence
is chosen by the numbers (the unit tests run them on hand-built results).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from ubtlib.book.paper import UBT_POISONS, UBT_TABLE1, UBT_TRAIN_PAIRS
from ubtlib.book.report import counted
from ubtlib.evaluation.robustness import PLANTED_ASR, RA_MARGIN, REMOVED_ASR, verdict

DETECTED_PRECISION = 90.0  # a top-k precision (%) from which chapter 3 counts an attack as found
DEFENSE_NAMES = {
    "none": "No defense",
    "cleanclip": "CleanCLIP",
    "ubt_no_token": "UBT w/o token-level",
    "ubt": "UBT",
    "ubt_restore": "UBT + restore (book)",
    "oracle": "Oracle-guided (book's reading)",
}  # the experiments' defense keys -> the paper's Table 1 row names (the last two are the book's)
ATTACK_NAMES = {
    "badnet": "BadNet",
    "blended": "Blended",
    "sig": "SIG",
    "wanet": "WaNet",
    "ssba": "SSBA-style",
}


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
    runs of every kernel setting, and over the book's kernels' seeds; the settings this CPU
    could not run are listed in "skipped"."""
    skipped = [r["setting"] for r in rows if r.get("skipped")]
    rows = [r for r in rows if not r.get("skipped")]
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
        "skipped": skipped,
        "others": [r["setting"] for r in seed0 if not r["setting"].startswith("book kernels")],
    }


def spread_reading(summary: Mapping) -> str:
    """Chapter 1's reading of the spread, for whichever way the runs came out."""
    counts = [str(t) for t in summary["thread_counts"]]
    counts = " and ".join([", ".join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)
    threads = (
        f"With the book's kernels, {counts} threads gave bit-identical weights"
        if summary["threads_identical"]
        else f"Even with the book's kernels, {counts} threads gave different weights"
    )
    k, s = summary["kernel_top1_range"], summary["seed_top1_range"]
    seeds = f"the {s:.2f} points between {summary['n_seeds']} training seeds"
    skipped = summary.get("skipped") or []
    not_run = f" ({' and '.join(skipped)}: not run, this CPU lacks their instructions.)" if skipped else ""
    others = summary.get("others") or []
    if not others:
        return f"{threads} (after one epoch each), against {seeds}.{not_run}"
    named = f"The other setting{'s' if len(others) > 1 else ''} that ran ({', '.join(others)})"
    if k == 0:
        return f"{threads}. {named} left the one-epoch top-1 where it was here, against {seeds}.{not_run}"
    compare = "less than" if k < s else ("as much as" if k == s else "more than")
    return (
        f"{threads}. {named} moved the one-epoch top-1 by up to {k:.2f} points, {compare} {seeds}.{not_run}"
    )


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
                "CA (pocket, %)": table[a]["ca"],
                "ASR (pocket, %)": table[a]["asr"],
                "base rate (ASR %, clean model)": (base or {}).get(a, {}).get("asr"),
                "RA (pocket, %)": table[a].get("ra"),
                "ASR on its own poisons (%)": fit[a],
                "CA (paper, %)": paper[0],
                "ASR (paper, %)": paper[1],
                "fine-tuning (s)": table[a]["finetune_seconds"],
            }
        )
    return pd.DataFrame(rows).set_index("attack")


def backdoor_results(
    pretrained_ca: float,
    table: Mapping[str, dict],
    visibility: dict,
    footprint: dict,
    fit: dict,
    poison_count: int,
    n_train_pairs: int | None,
    base: Mapping[str, dict] | None = None,
) -> dict:
    """Chapter 2's published results: the pre-trained model's CA, the poisoned models' CA and
    ASR (curves apart), the triggers' base rates, visibility and footprint, and the summary
    scalars its text quotes."""
    attacks = list(table)
    return {
        "pretrained_ca": pretrained_ca,
        "poison_count": poison_count,
        "n_train_pairs": n_train_pairs,
        # the poison rate against the paper's (None where the profile has no pocket world)
        "poison_percent": 100 * poison_count / n_train_pairs if n_train_pairs else None,
        "paper_rate_multiple": (poison_count / n_train_pairs) / (UBT_POISONS / UBT_TRAIN_PAIRS)
        if n_train_pairs
        else None,
        "attacks": {a: {k: v for k, v in table[a].items() if k != "curve"} for a in attacks},
        "visibility": visibility,
        "min_asr": min(table[a]["asr"] for a in attacks),
        "max_ca_drop": max(pretrained_ca - table[a]["ca"] for a in attacks),
        "ssba_psnr": visibility["ssba"]["psnr_mean"],
        "curves": {a: table[a]["curve"] for a in attacks},
        "footprint": footprint,
        "poison_fit": fit,
        "base_rates": {a: b["asr"] for a, b in (base or {}).items()},
    }


def clean_accuracy_reading(pretrained_ca: float, table: Mapping[str, dict]) -> str:
    """How the poisoned models' CA compares with the pre-trained model's, and why it can rise."""
    drops = {a: pretrained_ca - table[a]["ca"] for a in table}
    worst = max(drops.values())
    rose = [a for a, d in drops.items() if d < 0]
    why = (
        "the poisoned fine-tune is mostly more training on clean pairs, from which the pocket CLIP, "
        "far from converged, still learns"
    )
    if worst <= 0:
        low, high = -max(drops.values()), -min(drops.values())
        return (
            f"No poisoned model lost clean accuracy: every CA rose above the pre-trained model's "
            f"{pretrained_ca:.2f} %, by {low:.2f} to {high:.2f} points, because {why}."
        )
    text = f"Clean accuracy is at most {worst:.2f} points below the pre-trained model's {pretrained_ca:.2f} %"
    if rose:
        text += f", and it rose for {', '.join(ATTACK_NAMES.get(a, a) for a in rose)}: {why}"
    return text + "."


def planted_attacks(table: Mapping[str, dict]) -> list:
    """The attacks whose No-defense ASR reaches `PLANTED_ASR`, the book's one threshold."""
    return planted_among(table, {a: row["asr"] for a, row in table.items()})


def planted_among(attacks, asr: Mapping[str, float]) -> list:
    """The `attacks`, in their order, whose No-defense ASR in `asr` reaches `PLANTED_ASR` (an
    attack `asr` lacks counts as not planted)."""
    return [a for a in attacks if asr.get(a, float("nan")) >= PLANTED_ASR]


def unplanted_attacks(table: Mapping[str, dict]) -> list:
    """The attacks whose No-defense ASR stays below `PLANTED_ASR`, in the table's order."""
    return [a for a in table if table[a]["asr"] < PLANTED_ASR]


def _with_base(a: str, table: Mapping[str, dict], base: Mapping[str, float]) -> str:
    rate = f" (base rate {base[a]:.1f} %)" if a in base else ""
    return f"{ATTACK_NAMES.get(a, a)} reaches {table[a]['asr']:.1f} %{rate}"


def planting_verdict(table: Mapping[str, dict], base: Mapping[str, float] | None = None) -> str:
    """Whether every backdoor was planted, or which were not, each with its base rate."""
    missing = unplanted_attacks(table)
    if not missing:
        return f"every backdoor run here is planted (No-defense ASR of at least {PLANTED_ASR:.0f} %)"
    return (
        "not every backdoor is planted: "
        + ", ".join(_with_base(a, table, base or {}) for a in missing)
        + f", below the {PLANTED_ASR:.0f} % from which the book counts a backdoor as planted"
    )


def not_planted_reason(
    attack: str,
    table: Mapping[str, dict],
    footprint: Mapping[str, dict],
    fit: Mapping[str, float],
    base: Mapping[str, float],
) -> str:
    """Why `attack` did not plant, as far as this run's measures tell: its footprint in the
    pre-trained features against the planted triggers', and whether the fine-tune fitted its
    own poisons."""
    name = ATTACK_NAMES.get(attack, attack)
    rate = f", against a base rate of {base[attack]:.1f} %" if attack in base else ""
    out = [f"**{name}** was not planted: its No-defense ASR is {table[attack]['asr']:.1f} %{rate}."]
    peers = [a for a in planted_attacks(table) if a in footprint]
    if attack in footprint:
        own = footprint[attack]
        sentence = (
            f"Before any poisoning, a linear probe tells its triggered images from clean ones "
            f"{own['probe']:.1f} % of the time (50 % is chance), and its change points the same way "
            f"across images with consistency {own['consistency']:.2f}"
        )
        if peers:
            probe_floor = min(footprint[a]["probe"] for a in peers)
            consistency_floor = min(footprint[a]["consistency"] for a in peers)
            sentence += (
                f" (the planted triggers: a probe at {probe_floor:.1f} % or more, consistency at "
                f"least {consistency_floor:.2f})"
            )
            if own["probe"] < probe_floor and own["consistency"] < consistency_floor:
                sentence += (
                    ": the pre-trained features carry less common trace of it than of any planted "
                    "trigger, so a short fine-tune has less to tie to the target caption."
                )
            else:
                sentence += (
                    ": its footprint lies within the planted triggers' range, so the footprint alone "
                    "does not explain why it did not plant."
                )
        else:
            sentence += "; no trigger planted in this run, so there is no planted footprint to compare with."
        out.append(sentence)
        if attack == "wanet" and "wanet_strong" in footprint:
            out.append(
                "Even at ten times the warp the consistency is only "
                f"{footprint['wanet_strong']['consistency']:.2f}: the warp moves each image its own way."
            )
    if attack in fit:
        if fit[attack] < PLANTED_ASR:
            out.append(
                f"The poisoned model calls only {fit[attack]:.1f} % of its own triggered training "
                "images banana: the fine-tune did not even fit its poisons."
            )
        else:
            out.append(
                f"The poisoned model calls {fit[attack]:.1f} % of its own triggered training images "
                "banana: it memorised its poisons without learning a trigger that carries to new images."
            )
    return " ".join(out)


def planting_reading(
    table: Mapping[str, dict],
    footprint: Mapping[str, dict],
    fit: Mapping[str, float],
    base: Mapping[str, float] | None = None,
) -> str:
    """Chapter 2's reading of which backdoors planted: for each that did not, its own computed
    explanation (`not_planted_reason`); when all did, the faintest footprint among them."""
    base = base or {}
    missing = unplanted_attacks(table)
    if missing:
        return "\n\n".join(not_planted_reason(a, table, footprint, fit, base) for a in missing)
    shown = [a for a in table if a in footprint]
    if not shown:
        return "Every backdoor run here was planted."
    faint = min(shown, key=lambda a: footprint[a]["probe"])
    loose = min(shown, key=lambda a: footprint[a]["consistency"])
    return (
        "Every backdoor run here was planted, including the triggers with the faintest footprint: "
        f"{ATTACK_NAMES.get(faint, faint)}, which a probe finds {footprint[faint]['probe']:.1f} % of the "
        f"time, and {ATTACK_NAMES.get(loose, loose)}, whose change has consistency "
        f"{footprint[loose]['consistency']:.2f}."
    )


def backdoor_readings(
    pretrained_ca: float,
    table: Mapping[str, dict],
    footprint: Mapping[str, dict],
    fit: Mapping[str, float],
    base: Mapping[str, dict] | None = None,
) -> dict:
    """Chapter 2's glued readings: {"verdict", "ca_reading", "planting_reading"} -> Markdown
    text (base: `experiments.base_rates`)."""
    rates = {a: b["asr"] for a, b in (base or {}).items()}
    return {
        "verdict": planting_verdict(table, rates),
        "ca_reading": clean_accuracy_reading(pretrained_ca, table),
        "planting_reading": planting_reading(table, footprint, fit, rates),
    }


# ------------------------------------------------------------------ chapter 3: finding the poison


def detection_summary(rows: Mapping[str, dict]) -> pd.DataFrame:
    """One row per attack (the index, by display name): the split's, the overfitted top k's and
    ABL's separation of the poisons, and the poisons left in the retain pool (rows:
    `experiments.finding_the_poison`). Counts are integers."""
    table = pd.DataFrame.from_dict(
        {
            ATTACK_NAMES.get(a, a): {
                "poisons": r["poisons"],
                "in D_susp": r["susp_poisons"],
                "|D_susp| (pairs)": r["d_susp"],
                "split recall (%)": r["split_recall"],
                "split AUROC": r["split_auroc"],
                "top-k precision (%)": r["topk_precision"],
                "top-k recall in D_susp (%)": r["topk_recall"],
                "overfitted AUROC in D_susp": r["topk_auroc"],
                "poisons in the retain pool": r["retain_poisons"],
                "retain pool (pairs)": r["retain_pairs"],
                "ABL precision (%)": r["abl_precision"],
                "ABL recall (%)": r["abl_recall"],
                "ABL AUROC": r["abl_auroc"],
            }
            for a, r in rows.items()
        },
        orient="index",
    )
    counts = ["poisons", "in D_susp", "|D_susp| (pairs)", "poisons in the retain pool", "retain pool (pairs)"]
    return table.astype({c: int for c in counts})


def detection_results(
    rows: Mapping[str, dict],
    top_k: int,
    retain_candidates: int,
    susp_fraction: float,
    asr: Mapping[str, float] | None = None,
) -> dict:
    """Chapter 3's published results: each attack's scalar detection measures (per-pair lists
    apart) and the extremes over the attacks that its text quotes, over all attacks and
    ("planted_*") over those whose No-defense ASR (`asr`) planted a backdoor (NaN: none did)."""
    r = list(rows.values())
    took = [rows[a] for a in (rows if asr is None else planted_among(rows, asr))]
    extreme = lambda f, key: f(x[key] for x in took) if took else float("nan")  # noqa: E731
    return {
        "planted_min_topk_precision": extreme(min, "topk_precision"),
        "planted_max_topk_precision": extreme(max, "topk_precision"),
        "planted_max_abl_precision": extreme(max, "abl_precision"),
        "planted_max_retain_poisons": extreme(max, "retain_poisons"),
        "attacks": {a: {k: v for k, v in row.items() if not isinstance(v, list)} for a, row in rows.items()},
        "min_topk_precision": min(x["topk_precision"] for x in r),
        "max_topk_precision": max(x["topk_precision"] for x in r),
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


def against_random_draw(row: Mapping) -> str:
    """How a top k's precision compares with a random draw from D_susp (within 5 points: about)."""
    share = 100 * row["susp_poisons"] / row["d_susp"]  # the poisoned share of a random draw from D_susp
    p = row["topk_precision"]
    if p > share + 5:
        return f"above a random draw from D_susp ({share:.1f} % poisoned)"
    if p >= share - 5:
        return f"about what a random draw from D_susp gives ({share:.1f} % poisoned)"
    behind = (
        f"; AUROC {row['topk_auroc']:.2f}: the overfitted model ranks these poisons behind the clean pairs"
        if row["topk_auroc"] < 0.5
        else ""
    )
    return f"below a random draw from D_susp ({share:.1f} % poisoned{behind})"


def detection_verdict(rows: Mapping[str, dict], asr: Mapping[str, float]) -> str:
    """Whether UBT's top k separates the poisons of every planted backdoor, and better than
    ABL; why a planted one was missed; what the top k holds for each backdoor that was not
    planted (asr: every attack's No-defense ASR)."""
    names = lambda attacks: ", ".join(ATTACK_NAMES.get(a, a) for a in attacks)  # noqa: E731
    took = planted_among(rows, asr)
    missed = [a for a in missed_attacks(rows) if a in took]
    abl_level = [a for a in took if rows[a]["abl_precision"] >= rows[a]["topk_precision"]]
    parts = []
    if not took:
        parts.append(
            f"No backdoor was planted in this run (No-defense ASR below {PLANTED_ASR:.0f} % for every "
            "attack), so there was no shortcut for the overfitting to strengthen"
        )
    elif not missed:
        parts.append(
            f"For every planted backdoor ({names(took)}), UBT's top k is "
            f"{_precision_range([rows[a] for a in took])} poisoned"
            + (
                ", and more precise than ABL's isolation, as the separation in the paper's Fig. 2 suggests"
                if not abl_level
                else ""
            )
        )
    else:
        for a in missed:
            r = rows[a]
            parts.append(
                f"{ATTACK_NAMES.get(a, a)} was planted (No-defense ASR {asr[a]:.1f} %), but its top k is "
                f"only {r['topk_precision']:.1f} % poisoned, {against_random_draw(r)}: the overfitting "
                "did not single its poisons out"
            )
        found = [a for a in took if a not in missed]
        if found:
            parts.append(
                f"For the other planted backdoors ({names(found)}) the top k is "
                f"{_precision_range([rows[a] for a in found])} poisoned"
            )
    if abl_level:
        parts.append(f"ABL isolates at least as precisely as UBT's top k for {names(abl_level)}")
    for a in (a for a in rows if a not in took):
        r = rows[a]
        text = (
            f"{ATTACK_NAMES.get(a, a)} was not planted (No-defense ASR {asr[a]:.1f} %); its top k is "
            f"{r['topk_precision']:.1f} % poisoned, {against_random_draw(r)}"
        )
        if r["topk_precision"] >= DETECTED_PRECISION:
            text += (
                ": the overfitting still ranks its poisons first, since they share a trigger the "
                "poisoned model learned, if too weakly to carry held-out images to the target"
            )
        parts.append(text)
    return ". ".join(parts) + "."


def _precision_range(rows: Sequence[Mapping]) -> str:
    """ "98 %" or "92 to 100 %": the top k's precision over `rows`."""
    lo, hi = (f(r["topk_precision"] for r in rows) for f in (min, max))
    return f"{lo:.0f} %" if round(lo) == round(hi) else f"{lo:.0f} to {hi:.0f} %"


def abl_reading(rows: Mapping[str, dict], isolation_ratio: float) -> str:
    """Which way ABL's loss ranks the poisons over the attacks (AUROC 0.5 is chance; below it,
    poisons last), and why it ranks them last when that is so."""
    abl_auroc = [r["abl_auroc"] for r in rows.values()]
    lo, hi = min(abl_auroc), max(abl_auroc)
    span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f} to {hi:.2f}"
    only = next(iter(rows))
    every = "for every attack" if len(rows) > 1 else f"for {ATTACK_NAMES.get(only, only)}"
    split_auroc = min(r["split_auroc"] for r in rows.values())
    if hi < 0.5:
        return (
            f"ABL's loss ranks the poisons *behind* the clean pairs {every} (AUROC {span}, where 0.5 "
            "is chance), so isolating the lowest-loss "
            f"{100 * isolation_ratio:g} % finds {_abl_finds(rows)}. Its isolation training starts "
            "from the clean pre-trained CLIP, to which a triggered image under a caption naming "
            f"another class is a mismatched pair (the split above ranks them with AUROC at least "
            f"{split_auroc:.2f}), harder to fit than a clean one. ABL assumes the opposite, that a "
            "backdoor is learned first, as it is when a network is trained from scratch."
        )
    if lo > 0.5:
        return (
            f"ABL's loss ranks the poisons ahead of the clean pairs {every} (AUROC {span}, where 0.5 "
            "is chance)."
        )
    return (
        f"ABL's loss ranks the poisons ahead of the clean pairs for some attacks and behind them "
        f"for others (AUROC {lo:.2f} to {hi:.2f}, where 0.5 is chance)."
    )


def _abl_finds(rows: Mapping[str, dict]) -> str:
    best = max(r["abl_precision"] for r in rows.values())
    return "none of them" if best == 0 else f"few of them (what it isolates is at most {best:.1f} % poisons)"


def detection_readings(rows: Mapping[str, dict], asr: Mapping[str, float], isolation_ratio: float) -> dict:
    """Chapter 3's glued readings: {"verdict", "abl_reading", "planted_precision",
    "all_precision"} -> Markdown text (a precision range reads "100 %" where it is one value)."""
    planted = [rows[a] for a in planted_among(rows, asr)]
    return {
        "verdict": detection_verdict(rows, asr),
        "abl_reading": abl_reading(rows, isolation_ratio),
        "planted_precision": _precision_range(planted) if planted else "n/a (none planted)",
        "all_precision": _precision_range(list(rows.values())),
    }


# ------------------------------------------------------------------ chapter 4: unlearning


def ablation_table(ablations: Mapping[tuple, list]) -> pd.DataFrame:
    """One row per ablation run: attack, parameter, value, seed, defense, CA, ASR, RA, top-k
    precision, seconds and pairs scored (ablations: (attack, field) -> `experiments.ablation` rows)."""
    return pd.DataFrame(
        [
            {
                "attack": a,
                "parameter": f,
                "value": r[f],
                "seed": r.get("seed", 0),
                "defense": r.get("defense", "ubt"),
                "CA": r["ca"],
                "ASR": r["asr"],
                "RA": r.get("ra"),
                "precision": r.get("precision"),
                "seconds": r["seconds"],
                "pairs scored": r["pairs_scored"],
            }
            for (a, f), rows in ablations.items()
            for r in rows
        ]
    )


ABLATION_METRICS = ("CA", "ASR", "RA", "precision", "seconds")
LOWER_BETTER = ("ASR", "seconds")  # the metrics a defense wants low; the others it wants high
METRIC_NAMES = {"seconds": "wall time"}


def _with_value(df: pd.DataFrame, value) -> pd.DataFrame:
    """The rows whose "value" equals `value` (values of several types share the column)."""
    return df[df["value"].map(lambda v: v == value)]


def ablation_summary(flat: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and worst seed of each (attack, parameter, value): columns "<metric>",
    "<metric> std" and "<metric> worst" for `ABLATION_METRICS` (worst: the largest ASR or wall
    time, the smallest CA, RA or precision), and "seeds" (how many)."""
    rows = []
    for (a, f), sub in flat.groupby(["attack", "parameter"], sort=False):
        for v in list(dict.fromkeys(sub["value"])):
            runs = _with_value(sub, v)
            row = {"attack": a, "parameter": f, "value": v, "seeds": len(runs)}
            for m in ABLATION_METRICS:
                x = pd.to_numeric(runs[m], errors="coerce")
                # the sample std (ddof 1), as Table 1's: the same runs print the same spread
                row[m], row[f"{m} std"] = x.mean(), (x.std(ddof=1) if len(x) > 1 else float("nan"))
                row[f"{m} worst"] = x.max() if m in LOWER_BETTER else x.min()
            rows.append(row)
    return pd.DataFrame(rows)


def ablation_display(summary: pd.DataFrame) -> pd.DataFrame:
    """`ablation_summary` as chapter 4 shows it: the attack's name, the parameter as the CLI
    spells it, "mean ± std" per metric (the mean alone for one seed), ASR's worst seed, with
    units in the column names."""

    def both(m: str, digits: int = 2) -> list:
        return [
            "n/a" if pd.isna(v) else f"{v:.{digits}f}" + ("" if pd.isna(e) else f" ± {e:.{digits}f}")
            for v, e in zip(summary[m], summary[f"{m} std"])
        ]

    return pd.DataFrame(
        {
            "attack": summary.attack.map(lambda a: ATTACK_NAMES.get(a, a)),
            "parameter": "ubt_" + summary.parameter,
            "value": summary.value.map(str),
            "seeds": summary.seeds,
            "CA (%)": both("CA"),
            "ASR (%)": both("ASR"),
            "ASR, worst seed (%)": summary["ASR worst"].map(lambda v: f"{v:.2f}"),
            "RA (%)": both("RA"),
            "top-k precision (%)": both("precision", 1),
            "wall time (s)": both("seconds", 1),
        }
    ).set_index(["attack", "parameter", "value"])


def ablation_value(flat: pd.DataFrame, field: str, value, metric: str) -> float:
    """`metric` of the ablation runs that set `field` to `value`, averaged over seeds (over
    the first attack that ran it); NaN where the grid skipped it."""
    runs = _with_value(flat[flat["parameter"] == field], value)
    if runs.empty:
        return float("nan")
    runs = runs[runs["attack"] == runs["attack"].iloc[0]]
    return float(pd.to_numeric(runs[metric], errors="coerce").mean())


class Departure(NamedTuple):
    """A pocket choice chapter 4 justifies against a value of the paper's (or, where the paper
    gives none, of the paper profile's)."""

    what: str
    paper: object  # the value the pocket default is set against
    whose: str  # whose value that is, in words
    metric: str  # the metric that decides it
    paper_gives: bool = True  # False: the paper leaves it open, `paper` is the paper profile's
    alternative: object = None  # where the pocket default is the paper's: the value it was set against


# The book's rule: a pocket value departs from the paper's only where the ablation over seeds
# says it does better, on the mean beyond the seeds' spread or at the worst seed.
DEPARTURES = {
    "caption_form": Departure(
        "how kept tokens become a caption",
        "tokens",
        "the paper's literal reading",
        "ASR",
        alternative="template",
    ),
    "skip_function_words": Departure(
        "passing over function words, punctuation and common words when keeping a token",
        False,
        "the paper's rule",
        "ASR",
    ),
    "susp_fraction": Departure("the size of D_susp", 0.05, "the paper profile's", "ASR", paper_gives=False),
    "overfit_epochs": Departure("the overfitting epochs", 5.0, "the paper's", "seconds"),
    "retain_weight": Departure(
        "a clean-retention term while unlearning", 0.0, "the paper's, no such term", "CA"
    ),
    "retain_fraction": Departure(
        "leaving the pairs the overfitting raised most out of that term",
        1.0,
        "the whole scored sample",
        "ASR",
    ),
    "unlearn_floor": Departure("a floor on eq. 3", -1.0, "the paper's loss, no floor", "CA"),
    "max_token_captions": Departure(
        "one token-level caption in the Cartesian product",
        8,
        "8 captions, towards the paper's full product",
        "ASR",
    ),
}


def _shown(value) -> str:
    """A setting's value as the text says it: "on" / "off", 5 rather than 5.0, a word unquoted."""
    if isinstance(value, (bool, np.bool_)):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _stat(row: Mapping, metric: str) -> str:
    std = row[f"{metric} std"]
    unit = " s" if metric == "seconds" else " %"
    return f"{row[metric]:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}") + unit


def _better(ours: Mapping, theirs: Mapping, metric: str) -> str:
    """ "ours", "theirs" or "" (cannot tell): the mean's gap against the larger spread (at
    least 1 point, or 1 s), then the worst seed's gap against 1 point (1 s)."""
    sign = 1 if metric in LOWER_BETTER else -1
    spread = max(0.0 if pd.isna(r[f"{metric} std"]) else r[f"{metric} std"] for r in (ours, theirs))
    for gap, bar in (
        (theirs[metric] - ours[metric], max(spread, 1.0)),
        (theirs[f"{metric} worst"] - ours[f"{metric} worst"], 1.0),
    ):
        if sign * gap > bar:
            return "ours"
        if sign * gap < -bar:
            return "theirs"
    return ""


def _departure_pair(summary: pd.DataFrame, field: str, default):
    """(the default's summary row, the other value's, the other value) of one departure; None
    where the ablation did not run both."""
    d = DEPARTURES[field]
    other = d.alternative if default == d.paper else d.paper
    sub = summary[summary["parameter"] == field]
    ours, theirs = _with_value(sub, default), _with_value(sub, other)
    return None if ours.empty or theirs.empty else (ours.iloc[0], theirs.iloc[0], other)


def departure_tally(summary: pd.DataFrame, ubt_cfg) -> str:
    """How the ablations over seeds judge the pocket defaults that differ from the paper, in one
    sentence: how many the evidence supports, goes against or cannot decide."""
    said = []
    for f, d in DEPARTURES.items():
        default = getattr(ubt_cfg, f)
        pair = _departure_pair(summary, f, default) if default != d.paper else None
        if pair is not None:
            said.append(_better(pair[0], pair[1], d.metric))
    if not said:
        return "No departure from the paper was ablated with both values in this run."
    n = len(said)
    return (
        f"Of the {counted(n, 'pocket default')} that depart from the paper and were ablated over the "
        f"seeds, the evidence supports {said.count('ours')}, goes against {said.count('theirs')} and "
        f"decides neither way for {said.count('')}."
    )


def departure_reading(summary: pd.DataFrame, field: str, default) -> str:
    """One departure's computed reason: the pocket default against the paper's value (or, where
    the default is the paper's, against the alternative) on the metric that decides it, as mean
    ± std over seeds and at the worst seed, and what the book's rule (`DEPARTURES`) makes of it."""
    d = DEPARTURES[field]
    pair = _departure_pair(summary, field, default)
    if pair is None:
        return f"**{d.what}** (`ubt_{field}`): not run with both values here."
    ours, theirs, other = pair
    metric, name = d.metric, METRIC_NAMES.get(d.metric, d.metric)
    unit = " s" if metric == "seconds" else " %"
    better = _better(ours, theirs, metric)
    if default == d.paper:
        judged = {
            "ours": "the paper's value does better, so the pocket world keeps it",
            "theirs": "the alternative does better here, so the book's rule would depart to it",
            "": "neither the mean nor the worst seed tells them apart, so the pocket world keeps "
            "the paper's value",
        }[better]
        label = f"with the pocket default, {d.whose} ({_shown(default)}), against {{}} with {_shown(other)}"
    else:
        judged = {
            "ours": "the evidence supports the pocket default",
            "theirs": "the evidence goes against the pocket default: the other value does better here",
            "": "neither the mean nor the worst seed tells them apart; "
            + (
                "the paper gives no value, so the pocket default stays for the reason the profile states"
                if not d.paper_gives
                else "by the book's rule the default should be the paper's"
            ),
        }[better]
        label = f"with the pocket default ({_shown(default)}) against {{}} with {d.whose} ({_shown(other)})"
    n = int(ours["seeds"])
    worst = (
        f"; at the worst of the {n} seeds {ours[f'{metric} worst']:.2f}{unit} against "
        f"{theirs[f'{metric} worst']:.2f}{unit}"
        if n > 1
        else ""
    )
    context = "; ".join(
        f"{m} {_stat(ours, m)} against {_stat(theirs, m)}" for m in ("CA", "ASR", "RA") if m != metric
    )
    return (
        f"**{d.what}** (`ubt_{field}`): {name} {_stat(ours, metric)} "
        + label.format(_stat(theirs, metric))
        + f", over {n} seed{'s' if n != 1 else ''}{worst} ({context}): {judged}."
    )


def departure_readings(summary: pd.DataFrame, ubt_cfg) -> str:
    """Chapter 4's reasons for the pocket departures, one computed sentence each, as a list."""
    return "\n".join(
        f"- {departure_reading(summary, f, getattr(ubt_cfg, f))}"
        for f in DEPARTURES
        if f in set(summary["parameter"])
    )


def unlearning_results(
    attack: str, curves: Mapping[str, list], alignment: dict, flat: pd.DataFrame, retain_candidates: int
) -> dict:
    """Chapter 4's published results: the unlearning curves' ends, the captions' alignment, the
    ablation rows and the ablation values its text quotes (NaN where the grid skipped them)."""
    double = 2 * retain_candidates
    quoted = (
        ("abl_tokens_asr", "caption_form", "tokens", "ASR"),
        ("abl_template_asr", "caption_form", "template", "ASR"),
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


def quoted_settings(cfg) -> dict:
    """The settings chapter 4's text quotes, under the names it glues them by: the verdict's
    thresholds and the values of the pocket departures (`cfg`: the run's UBTConfig)."""
    return {
        "planted_asr": PLANTED_ASR,
        "removed_asr": REMOVED_ASR,
        "ra_margin": RA_MARGIN,
        "restore_weight": cfg.restore_weight,
        "overfit_epochs": cfg.overfit_epochs,
        "retain_pct": 100 * cfg.retain_fraction,
        "common_word_pct": 100 * cfg.common_word_share,
    }


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
                f"After {name} the backdoor is redirected, not removed: ASR {r['asr']:.1f} %, but RA "
                f"{r['ra']:.1f} % against CA {r['ca']:.1f} %; {moved}, and {share:.0f} % of them go to "
                f"{first}. Eq. 3 only pushes them away from the {target} captions, and the trigger still "
                "moves them, now towards whichever class lay nearest"
            )
        elif v == "removed":
            parts.append(
                f"After {name} the backdoor is removed: ASR {r['asr']:.1f} %, RA {r['ra']:.1f} % against "
                f"CA {r['ca']:.1f} %; {moved}"
            )
        else:
            parts.append(f"After {name} the backdoor is not removed: ASR {r['asr']:.1f} %; {moved}")
    return " ".join(f"{p}." for p in parts)  # a paragraph or a bullet of its own: sentences


# ------------------------------------------------------------------ chapter 5: Table 1


def table1_rows(rows: Sequence[dict]) -> pd.DataFrame:
    """`experiments.table1`'s rows as a DataFrame, with the paper's defense names."""
    df = pd.DataFrame(rows)
    df["defense"] = df["defense"].map(DEFENSE_NAMES)
    return df


def _seed_classes(classes: pd.Series) -> str:
    """The class the triggered images went to most, over seeds: one name where every seed agrees,
    else each seed's in seed order ("tree / clock / mushroom")."""
    return " / ".join(dict.fromkeys(classes))


def table1_aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (attack, defense), in the rows' order: mean and std over seeds of CA, ASR and RA, the
    redirect (the class each seed's triggered images go to most, one name where the seeds agree,
    and the mean of those largest shares), the mean wall time and pairs
    trained on (and the oracle-guided defense's scan seconds, where the rows have them), and the
    paper's CA and ASR (None where it has none)."""
    scan = {"seconds_scan": ("seconds_scan", "mean")} if "seconds_scan" in rows else {}
    agg = (
        rows.groupby(["attack", "defense"], sort=False)
        .agg(
            **scan,
            CA=("ca", "mean"),
            CA_std=("ca", "std"),
            ASR=("asr", "mean"),
            ASR_std=("asr", "std"),
            RA=("ra", "mean"),
            RA_std=("ra", "std"),
            redirect_class=("redirect_class", _seed_classes),
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


def table1_display(agg: pd.DataFrame, base: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """The Table 1 analogue as shown: "mean ± std" of CA, ASR and RA (the mean alone for one
    seed, which has no spread), the trigger's base rate (the clean pre-trained model's ASR,
    `experiments.base_rates`; n/a where not given), the redirect, the paper's CA and ASR and the
    cost columns, indexed by (attack, defense); attacks by their names, No defense's costs n/a."""
    table = agg.assign(
        **{
            f"{m} (pocket, %)": [_mean_std(v, s) for v, s in zip(agg[m], agg[f"{m}_std"])]
            for m in ("CA", "ASR", "RA")
        },
        **{
            "base rate": [(base or {}).get(a, {}).get("asr") for a in agg.attack],
            "redirect": [
                f"{c} {s:.0f} % (clean {k:.0f} %)"
                for c, s, k in zip(agg.redirect_class, agg.redirect_share, agg.redirect_clean_share)
            ],
        },
    )[
        [
            "attack",
            "defense",
            "CA (pocket, %)",
            "ASR (pocket, %)",
            "base rate",
            "RA (pocket, %)",
            "redirect",
            "paper CA",
            "paper ASR",
            "seconds",
            "pairs_trained",
        ]
    ].rename(
        columns={
            "seconds": "wall time (s)",
            "pairs_trained": "pairs trained",
            "base rate": "base rate (ASR %, clean model)",
            "paper CA": "paper CA (%)",
            "paper ASR": "paper ASR (%)",
        }
    )
    table["pairs trained"] = table["pairs trained"].round().astype("Int64")
    # the poisoned model itself costs the defender nothing: n/a, not 0
    table.loc[table.defense == "No defense", ["wall time (s)", "pairs trained"]] = pd.NA
    table["attack"] = table.attack.map(lambda a: ATTACK_NAMES.get(a, a))
    return table.set_index(["attack", "defense"])


def _mean_std(mean: float, std: float) -> str:
    """ "61.00 ± 1.41", or "61.00" where there is no spread to give (one seed: std NaN)."""
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def below(points: float) -> str:
    """A CA difference in words: "1.20 points below", or "0.80 points above" for a negative
    drop (the clean accuracy rose), so that no page prints a negative drop."""
    return f"{points:.2f} points below" if points >= 0 else f"{-points:.2f} points above"


def ca_cost_reading(table: Mapping[str, float]) -> str:
    """Each defense's worst CA against No defense over the attacks ({defense name: largest drop}),
    in words; where a CA rose, why: a defense's clean batches are more training
    on clean pairs for a model the poisoned fine-tuning left short of converged."""
    parts = [f"{d}'s CA ends at worst {below(x)} the poisoned model's" for d, x in table.items()]
    text = "; ".join(parts) + "."
    if any(x < 0 for x in table.values()):
        text += (
            " A CA above the poisoned model's is not a paradox: the defense trains on clean pairs "
            "as it unlearns, which is more training for a model that is not yet converged."
        )
    return text[0].upper() + text[1:]


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


def _one_class(classes: str) -> str:
    """`_seed_classes`' text in a sentence: "clock", or "one class per seed (tree / clock / ...)"."""
    return f"one class per seed ({classes})" if " / " in classes else classes


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
            f"{RA_MARGIN:.0f} points of CA for {', '.join(ATTACK_NAMES.get(a, a) for a in fired)}"
        )
    parts = []
    for a in fired:
        name = ATTACK_NAMES.get(a, a)
        if said[a] == "removed":
            parts.append(f"{name}: removed (RA {t.RA[a]:.1f} % against CA {t.CA[a]:.1f} %)")
        elif said[a] == "redirected":
            parts.append(
                f"{name}: redirected, not removed (ASR {t.ASR[a]:.1f} %, but RA {t.RA[a]:.1f} % against CA "
                f"{t.CA[a]:.1f} %; {t.redirect_share[a]:.0f} % of triggered images go to "
                f"{_one_class(t.redirect_class[a])}, {t.redirect_clean_share[a]:.0f} % without the trigger)"
            )
        else:
            parts.append(f"{name}: not removed (ASR {t.ASR[a]:.1f} %)")
    return f"{variant}: " + "; ".join(parts)


def bounds_reading(
    agg: pd.DataFrame, defense: str, beside: str | None = None, base: Mapping[str, dict] | None = None
) -> str:
    """`defense`'s (an experiments name, ``oracle``) worst ASR, CA - RA gap and CA drop over the
    planted attacks (with `beside`'s gap, where given), its ASR against each trigger's base rate
    (`base`: attack -> `experiments.base_rates` row, where given) and its wall time against
    CleanCLIP's; where no backdoor was planted, only the time, since there is nothing to judge."""
    summary = defense_summary(agg)
    if defense not in summary:
        return "It was not run."
    d = summary[defense]
    cost = (
        f"it takes {d['time_ratio_cleanclip']:.3f} of CleanCLIP's wall time"
        if np.isfinite(d["time_ratio_cleanclip"])
        else f"it takes {d['seconds']:.0f} s (CleanCLIP was not run)"
    )
    if not np.isfinite(d["max_asr"]):
        return f"No backdoor was planted in this run, so there is nothing to judge it on; {cost}."
    other = (
        f" ({DEFENSE_NAMES.get(beside, beside)}'s: {summary[beside]['max_ra_gap']:.1f})"
        if beside in summary
        else ""
    )
    name = DEFENSE_NAMES.get(defense, defense)
    fired = [a for a, p in planted(agg).items() if p]
    against = (
        " " + _asr_against_base(_by_attack(agg, name).ASR, {a: base[a]["asr"] for a in fired})
        if base and all(a in base for a in fired)
        else ""
    )
    return (
        f"Over the planted attacks, {name}'s largest ASR is {d['max_asr']:.2f} %, its largest gap between "
        f"CA and RA {d['max_ra_gap']:.1f} points{other}, its CA at worst {below(d['max_ca_drop'])} No "
        f"defense's, and {cost}.{against}"
    )


def cost_reading(rows: pd.DataFrame) -> str:
    """Each UBT variant's mean wall time against CleanCLIP's, and where UBT's goes: the split
    (the clean model scores every pair), the overfitting with the top k and token relevance,
    and the unlearning (`table1_rows` with the stage seconds `experiments.defense_row` adds)."""
    if (
        "seconds_split" not in rows
        or not (rows.defense == "CleanCLIP").any()
        or not (rows.defense == "UBT").any()
    ):
        return "There is no CleanCLIP and UBT run in this table to compare costs with."
    cc = rows.seconds[rows.defense == "CleanCLIP"].mean()
    variants = [
        d for d in ("UBT", "UBT w/o token-level", DEFENSE_NAMES["ubt_restore"]) if (rows.defense == d).any()
    ]
    mean = {d: rows.seconds[rows.defense == d].mean() for d in variants}
    each = ", ".join(f"{d} {mean[d]:.1f} s ({mean[d] / cc:.3f})" for d in variants)
    ubt = rows[rows.defense == "UBT"]
    total = ubt.seconds.mean()
    split, detect, unlearn = (ubt[c].mean() for c in ("seconds_split", "seconds_detect", "seconds_unlearn"))
    return (
        f"Against CleanCLIP's {cc:.1f} s on average: {each}. Of UBT's {total:.1f} s, the split (the clean "
        f"model scores every training pair) takes {split:.1f} s, the overfitting with the top k and the "
        f"token relevance {detect:.1f} s and the unlearning {unlearn:.1f} s. The variants share the first "
        f"two, {100 * (split + detect) / total:.0f} % of UBT's time, and differ only in what they unlearn"
        + (
            ", so they cost about the same: what holds their ratio to CleanCLIP is UBT's detection."
            if max(mean.values()) <= 1.1 * min(mean.values())
            else "; "
            + ", ".join(f"{d} takes {mean[d] - total:+.1f} s against UBT" for d in variants if d != "UBT")
            + "."
        )
    )


def table1_readings(agg: pd.DataFrame, base: Mapping[str, dict] | None = None) -> dict:
    """Chapter 5's glued readings: {"ca_cost_reading", "ubt_verdict", "no_token_verdict", "restore_verdict",
    "cleanclip_verdict", "oracle_verdict", "not_planted", "oracle_bounds", "restore_bounds"} ->
    Markdown text (each defense's "not run" where the table lacks it)."""
    took, nodef = planted(agg), _by_attack(agg, "No defense")
    restore = DEFENSE_NAMES["ubt_restore"]
    drops = {
        d: float((nodef.CA - _by_attack(agg, d).CA).max())
        for d in ("UBT", "UBT w/o token-level")
        if (agg.defense == d).any()
    }
    return {
        "ca_cost_reading": ca_cost_reading(drops) if drops else "UBT was not run.",
        "oracle_bounds": bounds_reading(agg, "oracle", base=base),
        "restore_bounds": bounds_reading(agg, "ubt_restore", beside="ubt"),
        "ubt_verdict": removal_verdict("UBT", agg),
        "no_token_verdict": removal_verdict("UBT w/o token-level", agg),
        "restore_verdict": removal_verdict(restore, agg) if (agg.defense == restore).any() else "not run",
        "cleanclip_verdict": removal_verdict("CleanCLIP", agg)
        if (agg.defense == "CleanCLIP").any()
        else "not run",
        "oracle_verdict": removal_verdict(DEFENSE_NAMES["oracle"], agg)
        if (agg.defense == DEFENSE_NAMES["oracle"]).any()
        else "not run",
        "not_planted": ", ".join(
            f"{ATTACK_NAMES.get(a, a)} ({nodef.ASR[a]:.1f} %)" for a in took.index if not took[a]
        )
        or "none",
    }


def _asr_against_base(asr: pd.Series, base: Mapping[str, float]) -> str:
    """A defended model's ASR per attack against each trigger's base rate (the clean pre-trained
    model's ASR under it), in words: below it, what is left is the trigger, not the backdoor."""
    above = [a for a in base if asr[a] > base[a]]
    worst = max(base, key=lambda a: asr[a])
    if not above:
        return (
            f"Its ASR stays below every trigger's base rate, the clean pre-trained model's own ASR "
            f"under it (at most {asr[worst]:.2f} %, {ATTACK_NAMES.get(worst, worst)}, against "
            f"{base[worst]:.2f} %): what is left is the trigger hiding part of the object, not the backdoor."
        )
    return (
        "Its ASR is above the trigger's base rate, the clean pre-trained model's own ASR under it, for "
        + ", ".join(f"{ATTACK_NAMES.get(a, a)} ({asr[a]:.2f} % against {base[a]:.2f} %)" for a in above)
        + ": part of the backdoor is left there."
    )


def restore_reading(agg: pd.DataFrame, targets: Sequence[dict], clean: Mapping | None = None) -> str:
    """Why the restoring variant does or does not give the images back their class: its RA
    against UBT's and CA over the planted attacks, against the clean pre-trained model's own RA
    on the same triggered images (`clean`: attack -> its `experiments.base_rates` row), the
    most a defense can give back where the trigger hides part of the object; and how often the
    clean model's class of a pulled poison is the object's true class (targets:
    `experiments.restore_targets` rows, one per seed and attack)."""
    restore = DEFENSE_NAMES["ubt_restore"]
    if not (agg.defense == restore).any():
        return "The restoring variant was not run."
    took = planted(agg)
    fired = [a for a in took.index if took[a]]
    if not fired:
        return "No backdoor was planted, so the restoring variant had nothing to restore."
    r, u = _by_attack(agg, restore).reindex(fired), _by_attack(agg, "UBT").reindex(fired)
    gap = float((r.CA - r.RA).max())
    text = (
        f"Over the planted attacks the restoring variant's RA is {r.RA.mean():.1f} % on average "
        f"(UBT's: {u.RA.mean():.1f} %), at most {gap:.1f} points below its CA. "
    )
    if clean and all("asr" in clean.get(a, {}) for a in fired):
        text += _asr_against_base(r.ASR, {a: clean[a]["asr"] for a in fired}) + " "
    rows = [t for t in targets if t["attack"] in fired and t["poisons_pulled"]]
    if rows:
        share = sum(t["true_class_share"] * t["poisons_pulled"] for t in rows) / sum(
            t["poisons_pulled"] for t in rows
        )
        text += (
            f"The clean pre-trained model, whose view of each detected image the variant pulls "
            f"towards, gives {share:.1f} % of the pulled poisons their true class. "
        )
    if gap <= RA_MARGIN:
        return text + "That is enough to give the images back their class."
    if not clean or any(a not in clean for a in fired):
        return text + "How strongly it pulls is `ubt_restore_weight`, ablated in chapter 4."
    ceiling = pd.Series({a: clean[a]["ra"] for a in fired})
    own_gap = pd.Series({a: clean[a]["ca"] - clean[a]["ra"] for a in fired})
    short = float((ceiling - r.RA).max())
    hidden = [ATTACK_NAMES.get(a, a) for a in fired if own_gap[a] > RA_MARGIN]
    clean_ca = float(np.mean([clean[a]["ca"] for a in fired]))
    poisoned_ca = float(_by_attack(agg, "No defense").reindex(fired).CA.mean())
    if clean_ca < poisoned_ca and clean_ca - 0.5 <= r.CA.mean() < poisoned_ca:
        given_up = min(100.0, 100.0 * (poisoned_ca - r.CA.mean()) / (poisoned_ca - clean_ca))
        text += (
            f"Its CA ({r.CA.mean():.1f} % on average) lies between the clean model's "
            f"({clean_ca:.1f} %) and the poisoned model's ({poisoned_ca:.1f} %): pulling towards the "
            f"clean model's view also gives up {given_up:.0f} % of the clean accuracy the "
            "poisoned fine-tuning had added (its CA falls back towards the clean model's). "
        )
    text += (
        f"The clean pre-trained model itself, which never saw a poison, reaches RA "
        f"{ceiling.mean():.1f} % on the same triggered images on average, up to {own_gap.max():.1f} "
        "points below its own CA: the trigger covers part of the object, so that RA is about the "
        "most a defense can give back. "
    )
    if short <= RA_MARGIN / 2:
        return text + (
            f"The variant comes within {max(short, 0.0):.1f} points of it on every planted attack: "
            + (
                f"what keeps RA more than {RA_MARGIN:.0f} points below CA, and so the verdict above at "
                f"redirected for {', '.join(hidden)}, is the trigger itself "
                f"({'it loses' if len(hidden) == 1 else 'they lose'} that much even on "
                "the clean model), not a backdoor left in the model."
                if hidden
                else "the rest of the gap is clean accuracy the variant keeps from the fine-tuning, "
                "which the triggered images do not share."
            )
        )
    return text + (
        f"The variant stays up to {short:.1f} points below it: it pulls too weakly or reaches too "
        "few of the triggered images (`ubt_restore_weight`, ablated in chapter 4)."
    )
