"""Chapter 9's tables and computed readings: the oracle-guided defense's scans and defended rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ubtlib.book.ubt_results import ATTACK_NAMES, DEFENSE_NAMES
from ubtlib.evaluation.robustness import PLANTED_ASR, verdict

# the targets the book set its reading of an abstract-only paper for the pocket profile (the
# paper publishes no numbers); the readings say where a run meets them and, where not, why
VICTIM_PRECISION, VICTIM_RECALL = 90.0, 80.0  # % of the victims found / of the poisons
PATCH_IOU = 0.5  # the BadNet trigger estimate's IoU with the patch
MAX_ASR, MAX_ASR_SSBA = 1.0, 3.0  # after rectification (%)
CA_MARGIN = 2.0  # points of CA the rectification may cost against No defense
TIME_SHARE = 0.2  # of CleanCLIP's wall time


def _name(a: str) -> str:
    return ATTACK_NAMES.get(a, a)


def scan_table(scans: Mapping[str, dict], asr: Mapping[str, float]) -> pd.DataFrame:
    """Per attack: its No-defense ASR, the affected label with its count under the scan's
    label rule and the runner-up's (in the scan's sample), the label the other rule would name,
    the images the oracle segmented, the victims' count, precision and
    recall against the poisons, and the trigger estimate (extent, patch or whole image, the
    share of clean images CLIP gives the label when they carry each form of it and when they
    carry nothing, IoU with the pixels the trigger really changes)."""
    rows = []
    for a, r in scans.items():
        rule, other = r["label_rule"], "excess" if r["label_rule"] == "named" else "named"
        ranked = sorted(r[rule].items(), key=lambda kv: -kv[1])
        rows.append(
            {
                "attack": _name(a),
                "No-defense ASR": asr[a],
                "affected label": r["affected_label"],
                f"its {rule} count": ranked[0][1],  # counted in the scan's sample (`label_sample`)
                "runner-up": f"{ranked[1][0]} ({ranked[1][1]:+d})",
                f"by {other}": max(r[other], key=r[other].get),
                "segmented": r["pairs_segmented"],
                "disagreeing": r["disagreeing"],
                "victims": r["victims"]["found"],
                "precision (%)": r["victims"]["precision"],
                "recall (%)": r["victims"]["recall"],
                "estimate extent (%)": 100.0 * r["extent"],
                "estimate": "patch (pasted)" if r["compact"] else "whole image (added)",
                "pasted → label (%)": r["estimate_success"]["pasted"],
                "added → label (%)": r["estimate_success"]["added"],
                "clean → label (%)": r["estimate_success"]["none"],
                "trigger extent (%)": 100.0 * r["footprint_share"],
                "IoU": r["trigger_iou"],
            }
        )
    return pd.DataFrame(rows).set_index("attack")


def _other(scan: dict) -> str:
    return "excess" if scan["label_rule"] == "named" else "named"


def _count(scan: dict, label: str) -> str:
    """A label's count under the scan's rule, in words."""
    if scan["label_rule"] == "excess":
        return f"CLIP gives it {scan['excess'].get(label, 0):+d} images over the oracle"
    return f"{scan['named'].get(label, 0)} images whose caption names it and the oracle does not see it"


def _planted(asr: Mapping[str, float]) -> list:
    return [a for a, v in asr.items() if v >= PLANTED_ASR]


def scan_readings(scans: Mapping[str, dict], asr: Mapping[str, float], target: str) -> dict:
    """{"labels_reading", "victims_reading", "trigger_reading"}: Markdown computed from the run."""
    fired = [a for a in _planted(asr) if a in scans]
    out = {}
    if not fired:
        none = "No backdoor was planted in this run, so there was nothing for the oracle to find."
        return {"labels_reading": none, "victims_reading": none, "trigger_reading": none}
    wrong = [a for a in fired if scans[a]["affected_label"] != target]
    # the other rule's picks, for the sentence on what the rule choice does in this run
    other = {a: max(scans[a][_other(scans[a])], key=scans[a][_other(scans[a])].get) for a in fired}
    if not wrong:
        text = f"The affected label is `{target}` for every planted attack ({', '.join(map(_name, fired))})."
    else:
        text = (
            "The affected label is not the target for "
            + ", ".join(
                f"{_name(a)} (`{label}`: {_count(scans[a], label)}, `{target}` {_count(scans[a], target)})"
                for a, label in ((a, scans[a]["affected_label"]) for a in wrong)
            )
            + f"; for the other planted attacks it is `{target}`."
        )
    missed = [a for a in fired if other[a] != target]
    if any(scans[a]["label_rule"] == "named" for a in fired):
        text += (
            " Counting all of CLIP's excess over the oracle instead would name "
            + "; ".join(
                f"`{other[a]}` for {_name(a)} (excess {scans[a]['excess'][other[a]]:+d} against `{target}`'s "
                f"{scans[a]['excess'].get(target, 0):+d}, though only {scans[a]['named'][other[a]]} of its "
                f"images carry a caption naming it, against {scans[a]['named'].get(target, 0)})"
                for a in missed
            )
            + ": a class CLIP over-predicts on clean images outgrows the backdoor's excess there."
            if missed
            else " Counting all of CLIP's excess over the oracle would name the same labels in this run."
        )
    out["labels_reading"] = text
    prec = {a: scans[a]["victims"]["precision"] for a in fired}
    rec = {a: scans[a]["victims"]["recall"] for a in fired}
    low = [a for a in fired if not (prec[a] >= VICTIM_PRECISION and rec[a] >= VICTIM_RECALL)]
    lo_p, lo_r = min(prec, key=lambda a: np.nan_to_num(prec[a])), min(rec, key=rec.get)
    text = (
        f"Over the planted attacks the victims' precision is at least {prec[lo_p]:.1f} % ({_name(lo_p)}) "
        f"and their recall at least {rec[lo_r]:.1f} % ({_name(lo_r)}). "
    )
    text += (
        f"That meets the book's target ({VICTIM_PRECISION:.0f} % and {VICTIM_RECALL:.0f} %) for every one."
        if not low
        else f"Below the book's target ({VICTIM_PRECISION:.0f} % precision, {VICTIM_RECALL:.0f} % recall): "
        + ", ".join(f"{_name(a)} ({prec[a]:.1f} %, {rec[a]:.1f} %)" for a in low)
        + "."
    )
    out["victims_reading"] = text
    parts = []
    for a in fired:
        r = scans[a]
        check = _estimate_check(r, target)
        if r["footprint_share"] <= 0.25:  # a local trigger: scored by its overlap
            ok = "meets" if r["trigger_iou"] >= PATCH_IOU else "misses"
            parts.append(
                f"{_name(a)}'s region covers {100 * r['extent']:.1f} % of the image with IoU "
                f"{r['trigger_iou']:.2f} against the true patch ({ok} the book's target of {PATCH_IOU}); "
                f"{check}"
            )
        else:  # a whole-image trigger: is the estimate spread too?
            how = "spread over the image" if not r["compact"] else "a patch, though the trigger is not"
            parts.append(
                f"{_name(a)}'s region covers {100 * r['extent']:.1f} % of the image and the estimate is "
                f"{how}: {check}"
            )
    out["trigger_reading"] = "; ".join(parts) + "."
    return out


def _estimate_check(scan: Mapping, target: str) -> str:
    """The trigger estimate's form and what it does to clean images, in words."""
    success, compact = scan["estimate_success"], scan["compact"]
    form = "pasted as a patch" if compact else "added over the whole image"
    return (
        f"{form}, it makes CLIP say `{target}` on {success['pasted' if compact else 'added']:.0f} % "
        f"of clean images (the other form: {success['added' if compact else 'pasted']:.0f} %; "
        f"nothing: {success['none']:.0f} %)"
    )


def estimate_reading(scan: Mapping, attack: str, target: str) -> str:
    """One attack's trigger estimate in words, planted or not: its region's extent and IoU with
    the pixels the trigger changes, and what the estimate does to clean images."""
    return (
        f"{_name(attack)}'s region covers {100 * scan['extent']:.1f} % of the image (IoU "
        f"{scan['trigger_iou']:.2f} with the pixels the trigger changes); {_estimate_check(scan, target)}."
    )


def defense_readings(
    agg: pd.DataFrame, oracle_seconds: float = 0.0, base: Mapping[str, float] | None = None
) -> dict:
    """{"defense_reading", "cost_reading"}: the rectified models against the book's targets and
    against CleanCLIP's, from chapter 5's aggregate (`ubt_results.table1_aggregate`);
    `oracle_seconds`: what training the learned oracle took (0 for the exact maps); `base`: per
    attack, the clean pre-trained model's ASR under its trigger, against which an ASR above the
    target is read."""
    base = base or {}
    ours, none = DEFENSE_NAMES["oracle"], DEFENSE_NAMES["none"]
    by = {d: agg[agg.defense == d].set_index("attack") for d in dict.fromkeys(agg.defense)}
    fired = [a for a in by[none].index if by[none].ASR[a] >= PLANTED_ASR]
    if not fired:
        return {
            "defense_reading": "No backdoor was planted in this run: the rectification had none to remove.",
            "cost_reading": "",
        }
    o, n = by[ours], by[none]
    parts, misses = [], []
    for a in fired:
        bar = MAX_ASR_SSBA if a == "ssba" else MAX_ASR
        drop = n.CA[a] - o.CA[a]
        said = verdict(o.CA[a], o.ASR[a], o.RA[a])
        parts.append(
            f"{_name(a)}: ASR {o.ASR[a]:.2f} %, RA {o.RA[a]:.1f} %, CA {o.CA[a]:.1f} % "
            f"({-drop:+.1f} points), {said}"
        )
        if o.ASR[a] > bar or drop > CA_MARGIN:
            misses.append(a)
    text = "After rectification, " + "; ".join(parts) + ". "
    text += (
        f"Every planted attack meets the targets the book set this reading (ASR at most {MAX_ASR:.0f} %, "
        f"SSBA-style {MAX_ASR_SSBA:.0f} %, CA within {CA_MARGIN:.0f} points of No defense)."
        if not misses
        else f"Not within the targets the book set this reading (ASR at most {MAX_ASR:.0f} %, SSBA-style "
        f"{MAX_ASR_SSBA:.0f} %, CA within {CA_MARGIN:.0f} points of No defense): "
        f"{', '.join(map(_name, misses))}."
    )
    if any(n.CA[a] - o.CA[a] > CA_MARGIN for a in misses):
        text += (
            " The rectification's CA cost is held back by the term that keeps clean images' embeddings "
            "where the poisoned model put them; the retain-weight ablation below shows what a larger "
            "weight gives back in CA and what it costs in ASR."
        )
    above = [a for a in misses if a in base and o.ASR[a] > (MAX_ASR_SSBA if a == "ssba" else MAX_ASR)]
    if above:  # an ASR is only as low as the trigger lets a clean model be
        text += " Against the clean pre-trained model's ASR under the same trigger: " + ", ".join(
            f"{_name(a)} {o.ASR[a]:.2f} % after against {base[a]:.2f} % "
            f"({'at or below' if o.ASR[a] <= base[a] else 'above'} it)"
            for a in above
        )
        text += (
            ". Where the rectified model is at or below that rate, the rest of its ASR is the trigger "
            "itself hiding the object, not a backdoor left over."
        )
    out = {"defense_reading": text}
    cc = DEFENSE_NAMES["cleanclip"]
    if cc in by:
        share = o.seconds.mean() / by[cc].seconds.mean()
        pairs = o.pairs_trained.mean() / by[cc].pairs_trained.mean()
        out["cost_reading"] = (
            f"The oracle-guided defense takes {o.seconds.mean():.0f} s per attack on average, "
            f"{share:.2f} of CleanCLIP's {by[cc].seconds.mean():.0f} s "
            f"({'within' if share <= TIME_SHARE else 'above'} the book's target of {TIME_SHARE:.1f}), and "
            f"trains on {pairs:.2f} as many pairs."
            + _where_time_goes(o)
            + (
                f" Training the learned oracle, once for the whole world, took {oracle_seconds:.0f} s more."
                if oracle_seconds
                else ""
            )
        )
    else:
        out["cost_reading"] = "CleanCLIP was not run, so there is no cost to compare with."
    return out


def _where_time_goes(rows: pd.DataFrame) -> str:
    """Where the oracle-guided defense's time goes (" Of its N s, the scan ... takes X s ..."):
    its scan against its fine-tuning, where the aggregate has the scan's seconds."""
    if "seconds_scan" not in rows or rows.seconds_scan.isna().all():
        return ""
    scan, total = rows.seconds_scan.mean(), rows.seconds.mean()
    return (
        f" Of its {total:.0f} s, the scan (CLIP and the oracle label a sample and the images tied to the "
        f"affected label, then the attribution and the trigger estimate) takes {scan:.0f} s "
        f"({100 * scan / total:.0f} %) and the fine-tuning on the compact set {total - scan:.0f} s: "
        + ("the scan" if scan >= total / 2 else "the fine-tuning")
        + " is what holds its cost."
    )


def ablation_table(rows: Sequence[dict], setting: str) -> pd.DataFrame:
    """`experiments.oracle_ablation`'s rows: the setting's value, what the scan found and what the
    rectified model scores."""
    return pd.DataFrame(
        [
            {
                setting: r[setting],
                "affected label": r["scan"]["affected_label"],
                "victim precision (%)": r["scan"]["victims"]["precision"],
                "victim recall (%)": r["scan"]["victims"]["recall"],
                "IoU": r["scan"]["trigger_iou"],
                "estimate extent (%)": 100.0 * r["scan"]["extent"],
                "CA": r["ca"],
                "ASR": r["asr"],
                "RA": r["ra"],
                "wall time (s)": r["seconds"],
                "pairs trained": r["pairs_trained"],
            }
            for r in rows
        ]
    ).set_index(setting)


def ablation_reading(ablations: Mapping[tuple, Sequence[dict]]) -> str:
    """One sentence per (attack, setting): each value's victim precision and recall, CA, ASR and RA."""
    lines = []
    for (attack, setting), rows in ablations.items():
        said = "; ".join(
            f"{r[setting]}: precision {r['scan']['victims']['precision']:.1f} %, recall "
            f"{r['scan']['victims']['recall']:.1f} %, CA {r['ca']:.1f} %, "
            f"ASR {r['asr']:.2f} %, RA {r['ra']:.1f} %"
            for r in rows
        )
        lines.append(f"- {_name(attack)}, `{setting}`: {said}.")
    return "\n".join(lines) or "No ablation was run."
