"""The UBT chapters' results, tables and readings (ubtlib.book.ubt_results), on hand-built results."""

import math

import pandas as pd
import pytest

from ubtlib.book import ubt_results as ur

FIVE = ["badnet", "blended", "sig", "wanet", "ssba"]


# ------------------------------------------------------------------ chapter 2


def no_defense(asr: dict, ca: float = 60.0) -> dict:
    """experiments.no_defense-like rows: attack -> CA, ASR, fine-tuning time and curve."""
    return {
        a: {"ca": ca - i, "asr": v, "finetune_seconds": 10.0 + i, "curve": [{"step": 0}]}
        for i, (a, v) in enumerate(asr.items())
    }


def footprint(wanet_probe: float = 51.0, strong_consistency: float = 0.1) -> dict:
    fp = {
        a: {"probe": 90.0 + i, "shift": 0.2 + i / 10, "consistency": 0.8 + i / 100}
        for i, a in enumerate(["badnet", "blended", "sig", "ssba"])
    }
    fp["wanet"] = {"probe": wanet_probe, "shift": 0.01, "consistency": 0.05}
    fp["wanet_strong"] = {"probe": 60.0, "shift": 0.5, "consistency": strong_consistency}
    return fp


ALL_PLANT = {"badnet": 99.0, "blended": 98.0, "sig": 97.0, "wanet": 95.0, "ssba": 90.0}
BASE = {a: {"ca": 61.0, "asr": 2.0 + i} for i, a in enumerate(FIVE)}


def readings(asr: dict, fit: dict | None = None, fp: dict | None = None, pretrained_ca: float = 58.0) -> dict:
    table = no_defense(asr)
    fit = {a: 99.0 for a in table} | (fit or {})
    return ur.backdoor_readings(pretrained_ca, table, fp or footprint(), fit, BASE)


def test_every_backdoor_planted():
    r = readings(ALL_PLANT)
    assert r["verdict"] == "every backdoor run here is planted (No-defense ASR of at least 50 %)"
    assert r["planting_reading"] == (
        "Every backdoor run here was planted, including the triggers with the faintest footprint: "
        "WaNet, which a probe finds 51.0 % of the time, and WaNet, whose change has consistency 0.05."
    )


def test_wanet_only_fails_to_plant():
    r = readings({**ALL_PLANT, "wanet": 3.0}, fit={"wanet": 20.0})
    assert r["verdict"] == (
        "not every backdoor is planted: WaNet reaches 3.0 % (base rate 5.0 %), below the 50 % from "
        "which the book counts a backdoor as planted"
    )
    reading = r["planting_reading"]
    assert reading.startswith(
        "**WaNet** was not planted: its No-defense ASR is 3.0 %, against a base rate of 5.0 %."
    )
    assert "(the planted triggers: a probe at 90.0 % or more, consistency at least 0.80)" in reading
    assert "carry less common trace of it than of any planted trigger" in reading
    assert "Even at ten times the warp the consistency is only 0.10" in reading
    assert "calls only 20.0 % of its own triggered training images banana" in reading
    assert "SSBA" not in reading
    # a probe that does find the warp: the footprint no longer explains it
    found = readings({**ALL_PLANT, "wanet": 3.0}, fp=footprint(wanet_probe=95.0))["planting_reading"]
    assert "its footprint lies within the planted triggers' range" in found
    assert "it memorised its poisons without learning a trigger" in found


def test_ssba_only_fails_to_plant():
    r = readings({**ALL_PLANT, "ssba": 16.6}, fit={"ssba": 30.0})
    assert r["verdict"].startswith(
        "not every backdoor is planted: SSBA-style reaches 16.6 % (base rate 6.0 %)"
    )
    reading = r["planting_reading"]
    assert reading.startswith("**SSBA-style** was not planted: its No-defense ASR is 16.6 %")
    # compared with the planted triggers only, WaNet among them, not with the other four
    assert "(the planted triggers: a probe at 51.0 % or more, consistency at least 0.05)" in reading
    assert "its footprint lies within the planted triggers' range" in reading
    assert "WaNet" not in reading and "ten times the warp" not in reading
    assert "calls only 30.0 %" in reading


def test_wanet_and_ssba_fail_to_plant():
    r = readings({**ALL_PLANT, "wanet": 3.0, "ssba": 40.0})
    assert r["verdict"] == (
        "not every backdoor is planted: WaNet reaches 3.0 % (base rate 5.0 %), SSBA-style reaches "
        "40.0 % (base rate 6.0 %), below the 50 % from which the book counts a backdoor as planted"
    )
    wanet, ssba = r["planting_reading"].split("\n\n")
    assert wanet.startswith("**WaNet**") and ssba.startswith("**SSBA-style**")
    # each is compared with the three that did plant
    assert "(the planted triggers: a probe at 90.0 % or more, consistency at least 0.80)" in wanet
    assert "(the planted triggers: a probe at 90.0 % or more, consistency at least 0.80)" in ssba


def test_no_backdoor_planted():
    r = readings({a: 1.0 for a in FIVE})
    parts = r["planting_reading"].split("\n\n")
    assert len(parts) == 5 and all("no trigger planted in this run" in p for p in parts)


def test_clean_accuracy_reading_says_why_it_rose():
    table = no_defense({"badnet": 99.0, "blended": 98.0}, ca=60.0)  # CA 60 and 59
    rose = ur.clean_accuracy_reading(58.0, table)
    assert rose.startswith("No poisoned model lost clean accuracy: every CA rose above the pre-trained")
    assert "58.00 %, by 1.00 to 2.00 points, because the poisoned fine-tune is mostly more training" in rose
    mixed = ur.clean_accuracy_reading(59.5, table)
    assert mixed.startswith("Clean accuracy is at most 0.50 points below the pre-trained model's 59.50 %")
    assert ", and it rose for BadNet: the poisoned fine-tune is mostly" in mixed
    assert (
        ur.clean_accuracy_reading(61.0, table)
        == "Clean accuracy is at most 2.00 points below the pre-trained model's 61.00 %."
    )


def test_no_defense_table_and_results():
    table = no_defense({"badnet": 99.0, "wanet": 3.0})
    df = ur.no_defense_table(table, {"badnet": 98.0, "wanet": 10.0}, ["badnet", "wanet"])
    assert list(df.index) == ["badnet", "wanet"]
    assert df.loc["badnet", "CA (paper, %)"] == 62.61 and df.loc["badnet", "ASR (paper, %)"] == 80.92
    assert pd.isna(df.loc["wanet", "CA (paper, %)"])  # the paper has no WaNet row
    assert df.loc["wanet", "CA (pocket, %)"] == 59.0 and df.loc["wanet", "fine-tuning (s)"] == 11.0
    vis = {"ssba": {"psnr_mean": 33.0}}
    res = ur.backdoor_results(61.5, table, vis, {}, {}, 1500, 29120)
    assert res["min_asr"] == 3.0 and res["max_ca_drop"] == 2.5 and res["ssba_psnr"] == 33.0
    assert round(res["poison_percent"], 2) == 5.15 and round(res["paper_rate_multiple"], 1) == 17.2
    assert "curve" not in res["attacks"]["badnet"] and res["curves"]["wanet"] == [{"step": 0}]
    assert ur.paper_rows(["badnet", "wanet"]) == {"badnet": {"ca": 62.61, "asr": 80.92}}


# ------------------------------------------------------------------ chapter 3


def detection(
    precision: float = 98.0, abl_precision: float = 5.0, abl_auroc: float = 0.3, split_recall: float = 99.0
) -> dict:
    """One attack's experiments.finding_the_poison-like row (D_susp 20 % poisoned)."""
    return {
        "poisons": 100,
        "susp_poisons": 50,
        "d_susp": 250,
        "split_recall": split_recall,
        "split_auroc": 0.9,
        "topk_precision": precision,
        "topk_recall": 40.0,
        "topk_auroc": 0.95,
        "retain_poisons": 2,
        "retain_pairs": 400,
        "abl_precision": abl_precision,
        "abl_recall": 3.0,
        "abl_auroc": abl_auroc,
        "susp": [1, 2],
    }


PLANTED = {a: 95.0 for a in FIVE}


def test_every_attack_found_better_than_abl():
    rows = {a: detection() for a in FIVE}
    assert ur.missed_attacks(rows) == []
    assert ur.detection_verdict(rows, PLANTED) == (
        "For every planted backdoor (BadNet, Blended, SIG, WaNet, SSBA-style), UBT's top k is 98 % "
        "poisoned, and more precise than ABL's isolation, as the separation in the paper's Fig. 2 suggests."
    )
    rows["sig"] = detection(abl_precision=98.0)
    assert ur.detection_verdict(rows, PLANTED) == (
        "For every planted backdoor (BadNet, Blended, SIG, WaNet, SSBA-style), UBT's top k is 98 % "
        "poisoned. ABL isolates at least as precisely as UBT's top k for SIG."
    )


def test_wanet_only_not_planted():
    rows = {a: detection() for a in FIVE} | {"wanet": detection(precision=10.0)}
    verdict = ur.detection_verdict(rows, PLANTED | {"wanet": 5.0})
    assert verdict.startswith("For every planted backdoor (BadNet, Blended, SIG, SSBA-style), UBT's top k")
    assert verdict.endswith(
        "WaNet was not planted (No-defense ASR 5.0 %); its top k is 10.0 % poisoned, below a "
        "random draw from D_susp (20.0 % poisoned)."
    )


def test_ssba_only_not_planted_yet_found():
    rows = {a: detection() for a in FIVE}
    verdict = ur.detection_verdict(rows, PLANTED | {"ssba": 16.6})
    assert "(BadNet, Blended, SIG, WaNet)" in verdict
    assert (
        "SSBA-style was not planted (No-defense ASR 16.6 %); its top k is 98.0 % poisoned, above a "
        "random draw from D_susp (20.0 % poisoned): the overfitting still ranks its poisons first"
    ) in verdict


def test_planted_but_missed_and_worse_than_random():
    row = detection(precision=5.0) | {"topk_auroc": 0.35}
    rows = {a: detection() for a in FIVE} | {"ssba": row}
    verdict = ur.detection_verdict(rows, PLANTED)
    assert verdict.startswith(
        "SSBA-style was planted (No-defense ASR 95.0 %), but its top k is only 5.0 % poisoned, below a "
        "random draw from D_susp (20.0 % poisoned; AUROC 0.35: the overfitted model ranks these "
        "poisons behind the clean pairs): the overfitting did not single its poisons out. For the "
        "other planted backdoors (BadNet, Blended, SIG, WaNet) the top k is 98 % poisoned."
    )
    assert "about what a random draw" in ur.against_random_draw(detection(precision=22.0))


def test_wanet_and_ssba_not_planted_and_none_planted():
    rows = {a: detection() for a in FIVE} | {"wanet": detection(precision=10.0)}
    verdict = ur.detection_verdict(rows, PLANTED | {"wanet": 5.0, "ssba": 30.0})
    assert verdict.index("WaNet was not planted") < verdict.index("SSBA-style was not planted")
    assert "(BadNet, Blended, SIG)" in verdict
    verdict = ur.detection_verdict({"wanet": detection(precision=10.0, abl_precision=10.0)}, {"wanet": 5.0})
    assert verdict.startswith("No backdoor was planted in this run")
    assert "ABL isolates" not in verdict  # compared on planted backdoors only


def test_abl_reading_directions():
    behind = ur.abl_reading({"a": detection(abl_auroc=0.2), "b": detection(abl_auroc=0.4)}, 0.01)
    assert behind.startswith(
        "ABL's loss ranks the poisons *behind* the clean pairs for every attack (AUROC "
        "0.20 to 0.40, where 0.5 is chance), so isolating the lowest-loss 1 % finds "
        "few of them (what it isolates is at most 5.0 % poisons)."
    )
    assert "AUROC at least 0.90" in behind
    ahead = ur.abl_reading({"a": detection(abl_auroc=0.6), "b": detection(abl_auroc=0.8)}, 0.01)
    assert ahead == (
        "ABL's loss ranks the poisons ahead of the clean pairs for every attack (AUROC 0.60 to "
        "0.80, where 0.5 is chance)."
    )
    alone = ur.abl_reading({"ssba": detection(abl_auroc=0.02)}, 0.01)  # one attack: no range, its name
    assert alone.startswith(
        "ABL's loss ranks the poisons *behind* the clean pairs for SSBA-style (AUROC 0.02, "
    )
    mixed = ur.abl_reading({"a": detection(abl_auroc=0.3), "b": detection(abl_auroc=0.8)}, 0.01)
    assert mixed.startswith("ABL's loss ranks the poisons ahead of the clean pairs for some attacks and")
    readings = ur.detection_readings({"a": detection(), "b": detection(40.0)}, {"a": 90.0, "b": 1.0}, 0.01)
    assert set(readings) == {"verdict", "abl_reading", "planted_precision", "all_precision"}
    assert (readings["planted_precision"], readings["all_precision"]) == ("98 %", "40 to 98 %")


def test_detection_results_and_summary():
    rows = {"badnet": detection(split_recall=99.0), "sig": detection(precision=80.0, split_recall=95.5)}
    res = ur.detection_results(rows, 500, 4096, 0.1)
    assert res["min_topk_precision"] == 80.0 and res["min_split_recall"] == 95.5
    assert res["split_missed_min"] == 1.0 and res["split_missed_max"] == 4.5
    assert res["susp_percent"] == 10.0 and res["top_k"] == 500 and res["retain_pairs"] == 400
    assert "susp" not in res["attacks"]["badnet"]  # per-pair lists are not published
    assert res["planted_min_topk_precision"] == 80.0  # no ASR given: every attack counts
    planted = ur.detection_results(rows, 500, 4096, 0.1, {"badnet": 99.0, "sig": 1.0})
    assert planted["planted_min_topk_precision"] == 98.0 and planted["min_topk_precision"] == 80.0
    assert math.isnan(
        ur.detection_results(rows, 500, 4096, 0.1, {"badnet": 1.0, "sig": 1.0})["planted_max_retain_poisons"]
    )
    summary = ur.detection_summary(rows)
    assert (
        summary.loc["SIG", "top-k precision (%)"] == 80.0 and summary.loc["BadNet", "|D_susp| (pairs)"] == 250
    )
    assert summary["poisons"].dtype.kind == "i"
    none = ur.abl_reading({"a": detection(abl_auroc=0.2, abl_precision=0.0)}, 0.01)
    assert "finds none of them." in none


# ------------------------------------------------------------------ chapter 4


def test_token_verdict():
    assert ur.token_verdict(1.0, 5.0).startswith("token-level captions remove more of the backdoor")
    assert ur.token_verdict(5.0, 1.0).endswith("the opposite of the paper's ablation")
    assert ur.token_verdict(2.0, 2.5) == "token-level and full captions end within a point of each other"
    assert ur.unlearning_readings({"ubt_asr": 2.0, "no_token_asr": 9.0})["token_verdict"].endswith(
        "as in the paper's ablation"
    )


def test_unlearning_results():
    run = {"ca": 50.0, "asr": 1.0, "precision": 90.0, "seconds": 3.0, "pairs_scored": 100}
    ablations = {
        ("blended", "caption_form"): [
            {"caption_form": "tokens", **run, "asr": 7.0},
            {"caption_form": "template", **run},
        ],
        ("blended", "retain_candidates"): [
            {"retain_candidates": 4096, **run},
            {"retain_candidates": 8192, **run, "seconds": 5.0},
        ],
    }
    flat = ur.ablation_table(ablations)
    assert list(flat.columns) == [
        "attack",
        "parameter",
        "value",
        "seed",
        "defense",
        "CA",
        "ASR",
        "RA",
        "precision",
        "seconds",
        "pairs scored",
    ]
    assert len(flat) == 4 and flat.iloc[0].tolist()[:3] == ["blended", "caption_form", "tokens"]
    assert (flat.iloc[0]["CA"], flat.iloc[0]["ASR"]) == (50.0, 7.0)
    curves = {
        "UBT": [{"ca": 60.0, "asr": 99.0}, {"ca": 58.0, "asr": 1.5}],
        "UBT w/o token-level": [{"ca": 60.0, "asr": 99.0}, {"ca": 57.0, "asr": 4.0}],
    }
    alignment = {"token_level": 0.9, "full": 0.8, "forms": {"tokens": 0.5, "template": 0.9}}
    res = ur.unlearning_results("blended", curves, alignment, flat, 4096)
    assert (res["start_asr"], res["ubt_asr"], res["ubt_ca"], res["no_token_asr"]) == (99.0, 1.5, 58.0, 4.0)
    assert res["abl_tokens_asr"] == 7.0
    assert res["abl_cands2x_seconds"] == 5.0 and res["abl_cands1x_seconds"] == 3.0
    assert math.isnan(res["abl_eq3_asr"])  # not in the grid: NaN, not a missing key
    assert res["retain_candidates_2x"] == 8192 and res["final"]["UBT"] == {"ca": 58.0, "asr": 1.5}


def ablation_runs(field: str, per_value: dict) -> dict:
    """(attack, field) -> ablation rows; per_value: value -> [(CA, ASR) per seed]."""
    rows = [
        {
            field: v,
            "seed": seed,
            "ca": ca,
            "asr": asr,
            "ra": ca - 5,
            "precision": 90.0,
            "seconds": 10.0 + seed,
            "pairs_scored": 1,
        }
        for v, runs in per_value.items()
        for seed, (ca, asr) in enumerate(runs)
    ]
    return {("blended", field): rows}


def test_ablation_summary_is_mean_and_std_over_seeds():
    flat = ur.ablation_table(
        ablation_runs(
            "caption_form", {"tokens": [(50.0, 10.0), (52.0, 30.0)], "template": [(51.0, 1.0), (51.0, 3.0)]}
        )
    )
    summary = ur.ablation_summary(flat).set_index("value")
    # the sample std (ddof 1), as Table 1's: of 10 and 30, 14.14
    assert summary.loc["tokens", "ASR"] == 20.0 and summary.loc["tokens", "ASR std"] == pytest.approx(
        200**0.5
    )
    assert summary.loc["template", "CA std"] == 0.0 and summary.loc["template", "seeds"] == 2
    assert ur.ablation_value(flat, "caption_form", "tokens", "ASR") == 20.0
    shown = ur.ablation_display(ur.ablation_summary(flat))
    row = shown.loc[("Blended", "ubt_caption_form", "tokens")]
    assert row["ASR (%)"] == "20.00 ± 14.14" and row["ASR, worst seed (%)"] == "30.00"
    assert row["CA (%)"] == "51.00 ± 1.41" and row["wall time (s)"] == "10.5 ± 0.7"
    assert math.isnan(ur.ablation_value(flat, "unlearn_floor", -1.0, "ASR"))


def test_departure_readings_follow_the_evidence():
    def reading(per_value, field="skip_function_words", default=True):
        return ur.departure_reading(
            ur.ablation_summary(ur.ablation_table(ablation_runs(field, per_value))), field, default
        )

    what = "**passing over function words, punctuation and common words when keeping a token**"
    supports = reading({False: [(50.0, 60.0), (50.0, 70.0)], True: [(50.0, 1.0), (50.0, 3.0)]})
    assert supports.startswith(f"{what} (`ubt_skip_function_words`): ASR 2.00 ± 1.41 %")
    assert "against 65.00 ± 7.07 % with the paper's rule (off), over 2 seeds" in supports
    assert "at the worst of the 2 seeds 3.00 % against 70.00 %" in supports
    assert supports.endswith(": the evidence supports the pocket default.")
    # one seed in three fails: the mean is within the spread, the worst seed decides
    one_fails = reading(
        {False: [(50.0, 85.0), (50.0, 0.2), (50.0, 0.4)], True: [(50.0, 0.1), (50.0, 0.2), (50.0, 0.4)]}
    )
    assert "at the worst of the 3 seeds 0.40 % against 85.00 %" in one_fails
    assert one_fails.endswith("the evidence supports the pocket default.")
    tie = reading({False: [(50.0, 0.5), (50.0, 2.0)], True: [(50.0, 1.0), (50.0, 1.5)]})
    assert tie.endswith("by the book's rule the default should be the paper's.")
    against = reading({False: [(50.0, 0.1), (50.0, 0.3)], True: [(50.0, 40.0), (50.0, 50.0)]})
    assert "goes against the pocket default" in against
    # the paper gives no value: a tie keeps the pocket default, for the profile's reason
    susp = reading({0.05: [(50.0, 0.2), (50.0, 0.4)], 0.1: [(50.0, 0.3), (50.0, 0.5)]}, "susp_fraction", 0.1)
    assert "with the paper profile's (0.05)" in susp and susp.endswith("for the reason the profile states.")
    # the pocket default is the paper's value: set against the book's alternative
    form = {"tokens": [(50.0, 0.6), (50.0, 0.9)], "template": [(50.0, 0.2), (50.0, 0.4)]}
    kept = reading(form, "caption_form", "tokens")
    assert "ASR 0.75 ± 0.21 % with the pocket default, the paper's literal reading (tokens), against " in kept
    assert "with template" in kept and kept.endswith("so the pocket world keeps the paper's value.")
    departs = reading(
        {"tokens": [(50.0, 30.0), (50.0, 40.0)], "template": form["template"]}, "caption_form", "tokens"
    )
    assert departs.endswith("so the book's rule would depart to it.")
    # a CA-judged departure: higher is better, and its worst seed is the lowest
    ca = reading({0.0: [(30.0, 0.0), (32.0, 0.0)], 1.0: [(55.0, 1.0), (56.0, 1.0)]}, "retain_weight", 1.0)
    assert ca.startswith(
        "**a clean-retention term while unlearning** (`ubt_retain_weight`): CA 55.50 ± 0.71 %"
    )
    assert "with the paper's, no such term (0)" in ca and "worst of the 2 seeds 55.00 % against 30.00 %" in ca
    assert ca.endswith("supports the pocket default.")
    wall = reading({5.0: [(50.0, 1.0)] * 2, 1.0: [(50.0, 1.0)] * 2}, "overfit_epochs", 1.0)
    assert "wall time 10.50 ± 0.71 s" in wall and "seconds" not in wall and "(5)" in wall
    assert "not run with both values" in reading({True: [(50.0, 1.0)]})


def test_departure_tally_counts_each_verdict():
    import types

    runs = ablation_runs(
        "skip_function_words", {False: [(50.0, 60.0), (50.0, 70.0)], True: [(50.0, 1.0), (50.0, 3.0)]}
    ) | ablation_runs("susp_fraction", {0.05: [(50.0, 0.2), (50.0, 0.4)], 0.1: [(50.0, 0.3), (50.0, 0.5)]})
    summary = ur.ablation_summary(ur.ablation_table(runs))
    paper = {f: d.paper for f, d in ur.DEPARTURES.items()}  # the paper's values are not departures
    cfg = types.SimpleNamespace(**(paper | {"skip_function_words": True, "susp_fraction": 0.1}))
    assert ur.departure_tally(summary, cfg) == (
        "Of the 2 pocket defaults that depart from the paper and were ablated over the seeds, the "
        "evidence supports 1, goes against 0 and decides neither way for 1."
    )
    assert ur.departure_tally(summary, types.SimpleNamespace(**paper)).startswith("No departure")


# ------------------------------------------------------------------ chapter 5


def table1(asr: dict, ra: dict | None = None) -> list:
    """experiments.table1-like rows over seeds 0 and 1: asr: attack -> defense -> (seed 0, seed 1);
    ra: (attack, defense) -> RA of both seeds where it is not CA - 2 (a removal)."""
    rows = []
    for seed in (0, 1):
        for a, per_defense in asr.items():
            for d, values in per_defense.items():
                ca = 60.0 + 2 * seed - (d != "none")
                robust = (ra or {}).get((a, d), ca - 2.0)
                rows.append(
                    {
                        "seed": seed,
                        "attack": a,
                        "defense": d,
                        "ca": ca,
                        "asr": values[seed],
                        "ra": robust,
                        "redirect_class": "banana" if values[seed] > 50 else "clock",
                        "redirect_share": max(values[seed], 100.0 - robust),
                        "redirect_clean_share": 5.0,
                        "seconds": 10.0 * (1 + seed) if d != "none" else 0.0,
                        "pairs_trained": 100 * (d != "none"),
                    }
                )
    return rows


def clean_removal(none=(95.0, 97.0)) -> dict:
    return {"none": none, "cleanclip": (20.0, 30.0), "ubt_no_token": (0.5, 0.5), "ubt": (0.0, 0.2)}


def test_cost_reading_says_where_ubts_time_goes():
    rows = table1({"badnet": clean_removal() | {"ubt_restore": (0.1, 0.1)}})
    for r in rows:
        if r["defense"].startswith("ubt"):
            r["seconds"] = 2.0 + (r["defense"] == "ubt_restore")
            r |= {"seconds_split": 0.5, "seconds_detect": 1.0, "seconds_unlearn": 0.5}
        elif r["defense"] == "cleanclip":
            r["seconds"] = 10.0
    text = ur.cost_reading(ur.table1_rows(rows))
    assert text.startswith(
        "Against CleanCLIP's 10.0 s on average: UBT 2.0 s (0.200), UBT w/o token-level 2.0 s (0.200), "
        "UBT + restore (book) 3.0 s (0.300). Of UBT's 2.0 s, the split"
    )
    assert (
        "takes 0.5 s, the overfitting with the top k and the token relevance 1.0 s and the unlearning 0.5 s"
        in text
    )
    assert "75 % of UBT's time" in text
    assert text.endswith(
        "UBT w/o token-level takes +0.0 s against UBT, UBT + restore (book) takes +1.0 s against UBT."
    )
    for r in rows:
        r["seconds"] = 2.0 if r["defense"].startswith("ubt") else r["seconds"]
    assert ur.cost_reading(ur.table1_rows(rows)).endswith(
        "what holds their ratio to CleanCLIP is UBT's detection."
    )
    no_cc = ur.table1_rows([r for r in rows if r["defense"] != "cleanclip"])
    assert ur.cost_reading(no_cc).startswith("There is no CleanCLIP")


def test_table1_aggregate_values():
    rows = ur.table1_rows(table1({"badnet": clean_removal(), "wanet": clean_removal(none=(2.0, 4.0))}))
    assert list(dict.fromkeys(rows.defense)) == ["No defense", "CleanCLIP", "UBT w/o token-level", "UBT"]
    agg = ur.table1_aggregate(rows)
    badnet = agg[(agg.attack == "badnet") & (agg.defense == "CleanCLIP")].iloc[0]
    assert badnet.CA == 60.0 and badnet.CA_std == pytest.approx(math.sqrt(2))
    assert badnet.ASR == 25.0 and badnet.ASR_std == pytest.approx(math.sqrt(50))
    assert badnet.seconds == 15.0 and badnet["paper CA"] == 58.95 and badnet["paper ASR"] == 14.6
    assert pd.isna(agg[agg.attack == "wanet"]["paper CA"]).all()
    shown = ur.table1_display(agg)
    assert shown.loc[("BadNet", "CleanCLIP"), "ASR (pocket, %)"] == "25.00 ± 7.07"
    assert shown.loc[("BadNet", "No defense"), "CA (pocket, %)"] == "61.00 ± 1.41"
    # the poisoned model costs the defender nothing: n/a, not 0
    assert shown.loc[("BadNet", "No defense"), ["wall time (s)", "pairs trained"]].isna().all()
    assert shown.loc[("BadNet", "CleanCLIP"), "wall time (s)"] > 0
    one_seed = ur.table1_display(ur.table1_aggregate(rows[rows.seed == 0]))
    assert one_seed.loc[("BadNet", "UBT"), "ASR (pocket, %)"] == "0.00"  # one seed has no spread to show


def test_table1_results():
    rows = ur.table1_rows(table1({"badnet": clean_removal(), "ssba": clean_removal() | {"ubt": (4.0, 2.0)}}))
    res = ur.table1_results(rows, ur.table1_aggregate(rows), 2)
    assert res["ubt_max_asr_non_ssba"] == pytest.approx(0.1) and res["ubt_asr_ssba"] == 3.0
    assert res["ubt_max_ca_drop"] == 1.0 and res["ubt_seconds"] == 15.0 and res["time_ratio"] == 1.0
    assert res["cleanclip_runs"] == 4 and res["ubt_total_min"] == 1.0 and res["n_seeds"] == 2
    assert len(res["rows"]) == 16 and len(res["table"]) == 8
    only_ssba = ur.table1_rows(table1({"ssba": clean_removal()}))
    assert ur.table1_results(only_ssba, ur.table1_aggregate(only_ssba), 2)["ubt_max_asr_non_ssba"] is None


def test_table1_readings_every_planted_backdoor_removed():
    r = ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1({a: clean_removal() for a in FIVE}))))
    every = "removes every planted backdoor: ASR at most 5 % and RA within 10 points of CA for "
    assert r == {
        "ubt_verdict": "UBT " + every + "BadNet, Blended, SIG, WaNet, SSBA-style",
        "no_token_verdict": "UBT w/o token-level " + every + "BadNet, Blended, SIG, WaNet, SSBA-style",
        "restore_verdict": "not run",
        "cleanclip_verdict": "CleanCLIP: "
        + "; ".join(
            f"{a}: not removed (ASR 25.0 %)" for a in ("BadNet", "Blended", "SIG", "WaNet", "SSBA-style")
        ),
        "oracle_verdict": "not run",
        "not_planted": "none",
        "oracle_bounds": "It was not run.",
        "restore_bounds": "It was not run.",
        "ca_cost_reading": r["ca_cost_reading"],  # its own test below
    }
    assert r["ca_cost_reading"] == (
        "UBT's CA ends at worst 1.00 points below the poisoned model's; UBT w/o token-level's CA ends "
        "at worst 1.00 points below the poisoned model's."
    )


def test_ca_differences_never_print_a_negative_drop():
    assert ur.below(1.2) == "1.20 points below" and ur.below(-0.8) == "0.80 points above"
    rose = ur.ca_cost_reading({"UBT": -0.5, "UBT w/o token-level": 1.25})
    assert rose.startswith("UBT's CA ends at worst 0.50 points above the poisoned model's; UBT w/o")
    assert "1.25 points below" in rose and "not yet converged" in rose and "-0" not in rose
    assert "converged" not in ur.ca_cost_reading({"UBT": 0.5})


def test_bounds_reading_judges_the_planted_attacks_only():
    asr = {a: clean_removal() | {"ubt_restore": (0.5, 1.5)} for a in ("badnet", "wanet")}
    asr["wanet"] = asr["wanet"] | {"none": (2.0, 4.0), "ubt_restore": (9.0, 9.0)}  # not planted: not judged
    ra = {("badnet", "ubt_restore"): 30.0}
    agg = ur.table1_aggregate(ur.table1_rows(table1(asr, ra=ra)))
    assert ur.bounds_reading(agg, "ubt_restore", beside="ubt") == (
        "Over the planted attacks, UBT + restore (book)'s largest ASR is 1.00 %, its largest gap "
        "between CA and RA 30.0 points (UBT's: 2.0), its CA at worst 1.00 points below No defense's, "
        "and it takes 1.000 of CleanCLIP's wall time."
    )
    based = ur.bounds_reading(agg, "ubt_restore", base={"badnet": {"asr": 3.0}, "wanet": {"asr": 2.0}})
    assert based.endswith(
        "wall time. Its ASR stays below every trigger's base rate, the clean pre-trained "
        "model's own ASR under it (at most 1.00 %, BadNet, against 3.00 %): what is left is the "
        "trigger hiding part of the object, not the backdoor."
    )
    none_planted = {"wanet": asr["wanet"]}
    agg = ur.table1_aggregate(ur.table1_rows(table1(none_planted)))
    assert ur.bounds_reading(agg, "ubt_restore") == (
        "No backdoor was planted in this run, so there is nothing to judge it on; it takes 1.000 of "
        "CleanCLIP's wall time."
    )
    assert ur.bounds_reading(agg, "oracle") == "It was not run."


def test_table1_readings_redirected_is_not_removed():
    # ASR 0 after UBT, but the triggered images now go elsewhere: RA far below CA
    asr = {a: clean_removal() for a in ("badnet", "sig")}
    r = ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1(asr, ra={("badnet", "ubt"): 10.0}))))
    assert r["ubt_verdict"] == (
        "UBT: BadNet: redirected, not removed (ASR 0.1 %, but RA 10.0 % against CA 60.0 %; 90 % of "
        "triggered images go to clock, 5 % without the trigger); SIG: removed (RA 58.0 % against CA 60.0 %)"
    )
    assert r["no_token_verdict"].startswith("UBT w/o token-level removes every planted backdoor")


def test_table1_readings_wanet_not_planted():
    # WaNet's backdoor did not take: its high ASR after UBT is no backdoor left in place
    asr = {a: clean_removal() for a in FIVE} | {"wanet": clean_removal(none=(2.0, 4.0)) | {"ubt": (9.0, 9.0)}}
    r = ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1(asr))))
    assert r["not_planted"] == "WaNet (3.0 %)"
    assert r["ubt_verdict"].startswith("UBT removes every planted backdoor")


def test_table1_readings_ssba_left_and_both_not_planted():
    asr = {a: clean_removal() for a in FIVE}
    asr |= {
        "ssba": clean_removal() | {"ubt": (4.0, 2.0), "ubt_no_token": (2.0, 2.0)},
        "badnet": clean_removal() | {"ubt": (2.0, 2.0)},
    }
    r = ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1(asr))))
    # one bar for every attack: 5 %
    assert r["ubt_verdict"].startswith("UBT removes every planted backdoor")
    asr["ssba"] = clean_removal() | {"ubt": (8.0, 4.0)}
    assert ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1(asr))))["ubt_verdict"] == (
        "UBT: BadNet: removed (RA 58.0 % against CA 60.0 %); Blended: removed (RA 58.0 % against CA 60.0 %); "
        "SIG: removed (RA 58.0 % against CA 60.0 %); WaNet: removed (RA 58.0 % against CA 60.0 %); "
        "SSBA-style: not removed (ASR 6.0 %)"
    )
    not_planted = {a: clean_removal() for a in FIVE}
    not_planted |= {a: clean_removal(none=(10.0, 20.0)) for a in ("wanet", "ssba")}
    agg = ur.table1_aggregate(ur.table1_rows(table1(not_planted)))
    assert ur.table1_readings(agg)["not_planted"] == "WaNet (15.0 %), SSBA-style (15.0 %)"


def test_restore_reading_says_why():
    asr = {a: clean_removal() | {"ubt_restore": (0.5, 0.5)} for a in ("badnet", "sig")}
    agg = ur.table1_aggregate(ur.table1_rows(table1(asr, ra={(a, "ubt_restore"): 30.0 for a in asr})))
    pulled = [{"attack": a, "poisons_pulled": 100, "true_class_share": 20.0} for a in asr]
    text = ur.restore_reading(agg, pulled)
    assert text.startswith(
        "Over the planted attacks the restoring variant's RA is 30.0 % on average (UBT's: 58.0 %)"
    )
    assert "gives 20.0 % of the pulled poisons their true class" in text
    assert text.endswith(
        "How strongly it pulls is `ubt_restore_weight`, ablated in chapter 4."
    )  # no ceiling known
    # the clean model reaches RA 55 on the triggered images: the variant stays far below it
    clean = {a: {"ca": 60.0, "ra": 55.0} for a in asr}
    assert "stays up to 25.0 points below it: it pulls too weakly" in ur.restore_reading(agg, pulled, clean)
    # the variant at the clean model's RA, which the trigger itself keeps 12 points below CA on SIG
    at_ceiling = ur.table1_aggregate(ur.table1_rows(table1(asr, ra={(a, "ubt_restore"): 47.0 for a in asr})))
    clean = {"badnet": {"ca": 62.0, "ra": 47.0}, "sig": {"ca": 62.0, "ra": 48.0}}
    text = ur.restore_reading(at_ceiling, pulled, clean)
    assert "comes within 1.0 points of it on every planted attack" in text
    assert "Its CA" not in text  # the clean model's CA (62) is above the poisoned model's (61) here
    clean = {"badnet": {"ca": 59.5, "ra": 47.0}, "sig": {"ca": 59.5, "ra": 48.0}}
    assert (
        "Its CA (60.0 % on average) lies between the clean model's (59.5 %) and the poisoned model's (61.0 %)"
        in ur.restore_reading(at_ceiling, pulled, clean)
    )
    assert (
        "at redirected for BadNet, SIG, is the trigger itself (they lose that much even on the clean model)"
        in text
    )
    based = {a: {"ca": 59.5, "ra": 47.0, "asr": 3.0} for a in asr}
    assert (
        "Its ASR stays below every trigger's base rate, the clean pre-trained model's own ASR under it "
        "(at most 0.50 %, BadNet, against 3.00 %): what is left is the trigger"
        in ur.restore_reading(at_ceiling, pulled, based)
    )
    based["sig"]["asr"] = 0.25
    assert "for SIG (0.50 % against 0.25 %): part of the backdoor is left there." in ur.restore_reading(
        at_ceiling, pulled, based
    )
    fine = ur.table1_aggregate(ur.table1_rows(table1(asr)))  # RA 2 below CA
    assert ur.restore_reading(fine, pulled, clean).endswith(
        "That is enough to give the images back their class."
    )
    assert ur.restore_reading(ur.table1_aggregate(ur.table1_rows(table1({"sig": clean_removal()}))), []) == (
        "The restoring variant was not run."
    )


def test_redirect_class_over_seeds_names_each_seeds_class_where_they_differ():
    rows = table1({"badnet": clean_removal()})
    for r, c in zip((r for r in rows if r["defense"] == "ubt"), ("tree", "clock")):
        r["redirect_class"] = c
    agg = ur.table1_aggregate(ur.table1_rows(rows))
    ubt = agg[agg.defense == "UBT"].iloc[0]
    assert ubt.redirect_class == "tree / clock"
    assert agg[agg.defense == "CleanCLIP"].iloc[0].redirect_class == "clock"  # both seeds agree
    assert ur._one_class("tree / clock") == "one class per seed (tree / clock)"


def test_table1_display_has_the_base_rate():
    agg = ur.table1_aggregate(ur.table1_rows(table1({"badnet": clean_removal()})))
    shown = ur.table1_display(agg, {"badnet": {"asr": 1.5}})
    assert shown["base rate (ASR %, clean model)"].tolist() == [1.5] * 4
    assert shown["pairs trained"].dtype.kind == "i"
    assert ur.table1_display(agg)["base rate (ASR %, clean model)"].isna().all()


def test_defense_summary_over_planted_attacks():
    asr = {"badnet": clean_removal() | {"ubt_restore": (0.0, 1.0)}, "wanet": clean_removal(none=(2.0, 4.0))}
    agg = ur.table1_aggregate(ur.table1_rows(table1(asr, ra={("badnet", "ubt"): 10.0})))
    s = ur.defense_summary(agg)
    assert set(s) == {"cleanclip", "ubt_no_token", "ubt", "ubt_restore"}
    assert s["ubt"]["max_ra_gap"] == 50.0 and s["ubt_restore"]["max_ra_gap"] == 2.0  # wanet not counted
    assert s["ubt_restore"]["max_asr"] == 0.5 and s["ubt"]["max_ca_drop"] == 1.0
    assert s["ubt_restore"]["time_ratio_cleanclip"] == 1.0


def spread_rows(book_weights=("a", "a", "a"), kernel_top1=(40.0, 41.5), seed_top1=(39.0, 43.0)):
    rows = [
        {"setting": f"book kernels, {t} threads", "threads": t, "seed": 0, "top1": 40.0, "weights": w}
        for t, w in zip((2, 1, 4), book_weights)
    ]
    rows += [
        {"setting": f"kernels {k}", "threads": 2, "seed": 0, "top1": v, "weights": k}
        for k, v in enumerate(kernel_top1)
    ]
    rows += [
        {"setting": f"book kernels, seed {s}", "threads": 2, "seed": s, "top1": v, "weights": str(s)}
        for s, v in zip((1, 2), seed_top1)
    ]
    return rows


def test_spread_reading_for_each_outcome():
    s = ur.spread_summary(spread_rows())
    assert s["threads_identical"] and s["thread_counts"] == [1, 2, 4] and s["n_seeds"] == 3
    assert s["kernel_top1_range"] == 1.5 and s["seed_top1_range"] == 4.0
    assert ur.spread_reading(s) == (
        "With the book's kernels, 1, 2 and 4 threads gave bit-identical weights. The other settings that "
        "ran (kernels 0, kernels 1) moved the one-epoch top-1 by up to 1.50 points, less than the 4.00 "
        "points between 3 training seeds."
    )
    s = ur.spread_summary(spread_rows(book_weights=("a", "b", "a"), kernel_top1=(30.0, 45.0)))
    assert not s["threads_identical"]
    assert ur.spread_reading(s).startswith(
        "Even with the book's kernels, 1, 2 and 4 threads gave different weights"
    )
    assert "more than the 4.00 points" in ur.spread_reading(s)
    s = ur.spread_summary(spread_rows(kernel_top1=(40.0, 40.0)))
    assert ur.spread_reading(s).endswith(
        "left the one-epoch top-1 where it was here, against the 4.00 points between 3 training seeds."
    )
    only_book = [r for r in spread_rows() if r["setting"].startswith("book kernels")]
    assert ur.spread_reading(ur.spread_summary(only_book)) == (
        "With the book's kernels, 1, 2 and 4 threads gave bit-identical weights (after one epoch each), "
        "against the 4.00 points between 3 training seeds."
    )
    # a setting the CPU could not run has no numbers: left out of the ranges, named in the reading
    rows = spread_rows() + [
        {"setting": "AVX-512 kernels", "threads": 2, "seed": 0, "skipped": "no AVX-512", "top1": None}
    ]
    s = ur.spread_summary(rows)
    assert s["skipped"] == ["AVX-512 kernels"] and s["kernel_top1_range"] == 1.5
    assert ur.spread_reading(s).endswith(
        "training seeds. (AVX-512 kernels: not run, this CPU lacks their instructions.)"
    )


def test_redirect_reading_removed_redirected_untouched():
    row = lambda ca, asr, ra, cos, near: {
        "ca": ca,
        "asr": asr,
        "ra": ra,
        "cos_to_clean": cos,
        "nearest": near,
    }  # noqa: E731
    anatomy = {
        "none": row(62.0, 99.0, 1.0, 0.40, {"banana": 99.0, "cup": 0.5, "clock": 0.5}),
        "ubt": row(61.7, 0.0, 10.8, 0.55, {"clock": 38.0, "cup": 20.0, "apple": 5.0}),
        "ubt_restore": row(61.0, 0.5, 55.0, 0.90, {"cup": 8.0, "clock": 7.0, "apple": 6.0}),
    }
    text = ur.redirect_reading(anatomy, "banana")
    assert text.startswith("After UBT the backdoor is redirected, not removed: ASR 0.0 %, but RA 10.8 %")
    assert "38 % of them go to clock" in text and "(poisoned model: 0.40)" in text
    assert ". After UBT + restore (book) the backdoor is removed: ASR 0.5 %, RA 55.0 %" in text
    untouched = {"ubt": row(62.0, 90.0, 5.0, 0.4, {"banana": 90.0})}
    assert ur.redirect_reading(untouched, "banana") == (
        "After UBT the backdoor is not removed: ASR 90.0 %; "
        "triggered images sit at cosine 0.40 from their clean selves."
    )
    table = ur.redirect_table(anatomy)
    assert list(table.verdict) == ["–", "redirected", "removed"]


def test_defense_summary_glues_when_nothing_was_planted():
    agg = ur.table1_aggregate(ur.table1_rows(table1({"wanet": clean_removal(none=(2.0, 4.0))})))
    s = ur.defense_summary(agg)["ubt"]
    assert math.isnan(s["max_asr"]) and math.isnan(s["max_ra_gap"]) and math.isnan(s["max_ca_drop"])
    assert all(type(v) is float for v in s.values())  # plain floats: glue formats them
