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


ALL_FIRE = {"badnet": 99.0, "blended": 98.0, "sig": 97.0, "wanet": 95.0, "ssba": 90.0}


def test_every_backdoor_fires():
    table = no_defense(ALL_FIRE)
    r = ur.backdoor_readings(table, footprint(), {a: 99.0 for a in table}, 5.0)
    assert r["verdict"] == "every backdoor fires (ASR of at least 80 %)"
    assert r["wanet_row"] == "In this run WaNet reaches ASR 95.0 %: its backdoor took."
    assert r["warp_reading"].endswith("In this run WaNet's backdoor took, whatever its footprint.")


def test_wanet_only_fails_to_plant():
    table = no_defense({**ALL_FIRE, "wanet": 3.0})
    fit = {a: 99.0 for a in table} | {"wanet": 20.0}
    r = ur.backdoor_readings(table, footprint(), fit, 5.0)
    assert r["verdict"] == "not every backdoor fires: wanet reaches 3.0 % (below 80 %)"
    assert r["wanet_row"].startswith("With ASR 3.0 %, the No-defense row for WaNet is a backdoor that did")
    reading = r["warp_reading"]
    assert "from its original 51.0 % of the time (50 % is chance), against 90.0 % or more" in reading
    assert "At s = 5 the warp changes the features by 0.50 of the distance" in reading
    assert "(the other four: 0.20 to 0.50)" in reading
    assert "is 0.10 (the other four: at least 0.80)" in reading
    assert (
        "classifies 20.0 % of its own warped training images as banana (the other triggers run here: "
        "at least 99.0 %), so the fine-tune did not even memorise its poisons."
    ) in reading
    assert reading.endswith("no common direction for a short fine-tune to tie to the target caption.")
    # a probe that does find the warp: the footprint no longer explains the low ASR
    reading = ur.warp_reading(table, footprint(wanet_probe=80.0), fit, 5.0)
    assert reading.endswith("so they do not explain WaNet's low ASR on their own.")


def test_ssba_only_fails_to_plant():
    table = no_defense({**ALL_FIRE, "ssba": 40.0})
    r = ur.backdoor_readings(table, footprint(), {a: 99.0 for a in table}, 5.0)
    assert r["verdict"] == "not every backdoor fires: ssba reaches 40.0 % (below 80 %)"
    assert r["wanet_row"] == "In this run WaNet reaches ASR 95.0 %: its backdoor took."
    assert "so the fine-tune did not even memorise" not in r["warp_reading"]
    assert r["warp_reading"].endswith("In this run WaNet's backdoor took, whatever its footprint.")


def test_wanet_and_ssba_fail_to_plant():
    table = no_defense({**ALL_FIRE, "wanet": 3.0, "ssba": 40.0})
    assert ur.weak_attacks(table) == ["wanet", "ssba"]
    assert ur.fire_verdict(table) == (
        "not every backdoor fires: wanet reaches 3.0 %, ssba reaches 40.0 % (below 80 %)"
    )
    assert ur.wanet_row(table).startswith("With ASR 3.0 %")


def test_wanet_not_run():
    table = no_defense({"badnet": 99.0})
    r = ur.backdoor_readings(table, footprint(), {"badnet": 99.0}, 5.0)
    assert r["wanet_row"] == "WaNet was not run here."
    assert r["warp_reading"].endswith("WaNet was not poisoned in this run, so its ASR is not compared.")
    assert "After poisoning" not in r["warp_reading"]


def test_no_defense_table_and_results():
    table = no_defense({"badnet": 99.0, "wanet": 3.0})
    df = ur.no_defense_table(table, {"badnet": 98.0, "wanet": 10.0}, ["badnet", "wanet"])
    assert list(df.index) == ["badnet", "wanet"]
    assert df.loc["badnet", "CA (paper)"] == 62.61 and df.loc["badnet", "ASR (paper)"] == 80.92
    assert pd.isna(df.loc["wanet", "CA (paper)"])  # the paper has no WaNet row
    assert df.loc["wanet", "CA (pocket)"] == 59.0 and df.loc["wanet", "fine-tuning (s)"] == 11.0
    vis = {"ssba": {"psnr_mean": 33.0}}
    res = ur.backdoor_results({"ca": 61.5, "asr": 2.0}, table, vis, {}, {}, 1500, 29120)
    assert res["min_asr"] == 3.0 and res["max_ca_drop"] == 2.5 and res["ssba_psnr"] == 33.0
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


def test_every_attack_found_better_than_abl():
    rows = {a: detection() for a in FIVE}
    assert ur.missed_attacks(rows) == []
    assert ur.detection_verdict(rows, {}) == (
        "UBT separates the poisons better than ABL for every attack, as the paper's Fig. 2 shows"
    )
    rows["sig"] = detection(abl_precision=98.0)
    assert ur.detection_verdict(rows, {}) == (
        "UBT's top k is at least 90 % poisoned for every attack, but "
        "ABL isolates at least as precisely for sig"
    )


def test_wanet_only_missed():
    rows = {a: detection() for a in FIVE} | {"wanet": detection(precision=10.0)}
    verdict = ur.detection_verdict(rows, {"wanet": 5.0})
    assert verdict == (
        "UBT does not reach the paper's separation for every attack. For wanet, the top k is "
        "10.0 % poisoned, no better than a random draw from D_susp, which is 20.0 % poisoned; "
        "its No-defense ASR is 5.0 %: its backdoor was not planted (below 50 %), so there was "
        "little shortcut for the overfitting to strengthen. For every other attack the top k "
        "is at least 90 % poisoned; ABL isolates less precisely than UBT's top k for every "
        "attack"
    )


def test_ssba_only_missed_though_planted():
    rows = {a: detection() for a in FIVE} | {"ssba": detection(precision=60.0)}
    verdict = ur.detection_verdict(rows, {"ssba": 70.0})
    assert (
        "For ssba, the top k is 60.0 % poisoned, above a random draw from D_susp (20.0 % poisoned)" in verdict
    )
    assert (
        "its No-defense ASR is 70.0 %: the backdoor was planted, but the overfitting did not single it out"
    ) in verdict
    assert "For wanet" not in verdict


def test_wanet_and_ssba_missed_and_all_missed():
    rows = {a: detection() for a in FIVE}
    rows |= {"wanet": detection(precision=10.0), "ssba": detection(precision=60.0)}
    verdict = ur.detection_verdict(rows, {"wanet": 5.0, "ssba": 70.0})
    assert verdict.index("For wanet") < verdict.index("For ssba")
    assert ". For every other attack the top k is at least 90 % poisoned" in verdict
    rows = {"wanet": detection(precision=10.0, abl_precision=10.0)}
    verdict = ur.detection_verdict(rows, {"wanet": 5.0})
    assert "For every other attack" not in verdict
    assert verdict.endswith("; ABL isolates at least as precisely for wanet")


def test_abl_reading_directions():
    behind = ur.abl_reading({"a": detection(abl_auroc=0.2), "b": detection(abl_auroc=0.4)}, 0.01)
    assert behind.startswith(
        "ABL's loss ranks the poisons *behind* the clean pairs for every attack (AUROC "
        "0.20 to 0.40, where 0.5 is chance), so isolating the lowest-loss 1 % finds "
        "almost none."
    )
    assert "AUROC at least 0.90" in behind
    ahead = ur.abl_reading({"a": detection(abl_auroc=0.6), "b": detection(abl_auroc=0.8)}, 0.01)
    assert ahead == (
        "ABL's loss ranks the poisons ahead of the clean pairs for every attack (AUROC 0.60 to "
        "0.80, where 0.5 is chance)."
    )
    mixed = ur.abl_reading({"a": detection(abl_auroc=0.3), "b": detection(abl_auroc=0.8)}, 0.01)
    assert mixed.startswith("ABL's loss ranks the poisons ahead of the clean pairs for some attacks and")
    assert set(ur.detection_readings({"a": detection()}, {}, 0.01)) == {"verdict", "abl_reading"}


def test_detection_results_and_summary():
    rows = {"badnet": detection(split_recall=99.0), "sig": detection(precision=80.0, split_recall=95.5)}
    res = ur.detection_results(rows, 500, 4096, 0.1)
    assert res["min_topk_precision"] == 80.0 and res["min_split_recall"] == 95.5
    assert res["split_missed_min"] == 1.0 and res["split_missed_max"] == 4.5
    assert res["susp_percent"] == 10.0 and res["top_k"] == 500 and res["retain_pairs"] == 400
    assert "susp" not in res["attacks"]["badnet"]  # per-pair lists are not published
    summary = ur.detection_summary(rows)
    assert summary.loc["sig", "top-k precision (%)"] == 80.0 and summary.loc["badnet", "|D_susp|"] == 250


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
        "CA",
        "ASR",
        "precision",
        "seconds",
        "pairs scored",
    ]
    assert len(flat) == 4 and flat.iloc[0].tolist()[:5] == ["blended", "caption_form", "tokens", 50.0, 7.0]
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
    assert shown.loc[("badnet", "CleanCLIP"), "ASR (pocket)"] == "25.00 ± 7.07"
    assert shown.loc[("badnet", "No defense"), "CA (pocket)"] == "61.00 ± 1.41"
    one_seed = ur.table1_display(ur.table1_aggregate(rows[rows.seed == 0]))
    assert one_seed.loc[("badnet", "UBT"), "ASR (pocket)"] == "0.00 ± 0.00"  # no std for one seed: 0


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
        "ubt_verdict": "UBT " + every + ", ".join(FIVE),
        "no_token_verdict": "UBT w/o token-level " + every + ", ".join(FIVE),
        "restore_verdict": "not run",
        "not_planted": "none",
    }


def test_table1_readings_redirected_is_not_removed():
    # ASR 0 after UBT, but the triggered images now go elsewhere: RA far below CA
    asr = {a: clean_removal() for a in ("badnet", "sig")}
    r = ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1(asr, ra={("badnet", "ubt"): 10.0}))))
    assert r["ubt_verdict"] == (
        "UBT: badnet: redirected, not removed (ASR 0.1 %, but RA 10.0 % against CA 60.0 %; 90 % of "
        "triggered images go to clock, 5 % without the trigger); sig: removed (RA 58.0 % against CA 60.0 %)"
    )
    assert r["no_token_verdict"].startswith("UBT w/o token-level removes every planted backdoor")


def test_table1_readings_wanet_not_planted():
    # WaNet's backdoor did not take: its high ASR after UBT is no backdoor left in place
    asr = {a: clean_removal() for a in FIVE} | {"wanet": clean_removal(none=(2.0, 4.0)) | {"ubt": (9.0, 9.0)}}
    r = ur.table1_readings(ur.table1_aggregate(ur.table1_rows(table1(asr))))
    assert r["not_planted"] == "wanet"
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
        "UBT: badnet: removed (RA 58.0 % against CA 60.0 %); blended: removed (RA 58.0 % against CA 60.0 %); "
        "sig: removed (RA 58.0 % against CA 60.0 %); wanet: removed (RA 58.0 % against CA 60.0 %); "
        "ssba: not removed (ASR 6.0 %)"
    )
    not_planted = {a: clean_removal() for a in FIVE}
    not_planted |= {a: clean_removal(none=(10.0, 20.0)) for a in ("wanet", "ssba")}
    agg = ur.table1_aggregate(ur.table1_rows(table1(not_planted)))
    assert ur.table1_readings(agg)["not_planted"] == "wanet, ssba"


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
        "With the book's kernels, 1, 2, 4 threads gave bit-identical weights. Torch's own choice of "
        "kernels moves the top-1 by up to 1.50 points, less than the 4.00 points between 3 training seeds."
    )
    s = ur.spread_summary(spread_rows(book_weights=("a", "b", "a"), kernel_top1=(30.0, 45.0)))
    assert not s["threads_identical"]
    assert ur.spread_reading(s).startswith(
        "Even with the book's kernels, 1, 2, 4 threads gave different weights"
    )
    assert "more than the 4.00 points" in ur.spread_reading(s)
    s = ur.spread_summary(spread_rows(kernel_top1=(40.0, 40.0)))
    assert ur.spread_reading(s).endswith(
        "left the top-1 where it was here, against the 4.00 points between 3 training seeds."
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
    assert text.startswith("after UBT the backdoor is redirected, not removed: ASR 0.0 %, but RA 10.8 %")
    assert "38 % of them go to clock" in text and "(poisoned model: 0.40)" in text
    assert "after UBT + restore (book) the backdoor is removed: ASR 0.5 %, RA 55.0 %" in text
    untouched = {"ubt": row(62.0, 90.0, 5.0, 0.4, {"banana": 90.0})}
    assert ur.redirect_reading(untouched, "banana") == (
        "after UBT the backdoor is not removed: ASR 90.0 %; "
        "triggered images sit at cosine 0.40 from their clean selves."
    )
    table = ur.redirect_table(anatomy)
    assert list(table.verdict) == ["–", "redirected", "removed"]


def test_defense_summary_glues_when_nothing_was_planted():
    agg = ur.table1_aggregate(ur.table1_rows(table1({"wanet": clean_removal(none=(2.0, 4.0))})))
    s = ur.defense_summary(agg)["ubt"]
    assert math.isnan(s["max_asr"]) and math.isnan(s["max_ra_gap"]) and math.isnan(s["max_ca_drop"])
    assert all(type(v) is float for v in s.values())  # plain floats: glue formats them
