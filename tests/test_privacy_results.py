"""The privacy chapters' tables, results and readings, on hand-built runs (no training)."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import ubtlib
from ubtlib.book import paper
from ubtlib.book import privacy_results as pr
from ubtlib.privacy import idia

PROFILE = ubtlib.configure("smoke")


def _name_rows() -> pd.DataFrame:
    """A name sweep: "human" at sizes 1 and 2 with and without the regularisation, "person" at 1."""
    base = dict(
        fnr=0.0,
        sim_clean_people=0.97,
        top5=80.0,
        top5_drop=1.0,
        wrongly_unlearned=0,
        newly_recalled=0,
        max_hits_removed=0,
        seconds=1.0,
        repeat=0,
    )
    runs = [
        ("human", True, 1, 0.0, 0.99, 49.0),
        ("human", True, 2, 50.0, 0.98, 48.0),
        ("human", False, 1, 0.0, 0.97, 47.0),
        ("human", False, 2, 25.0, 0.96, 46.0),
        ("person", True, 1, 0.0, 0.995, 49.5),
    ]
    rows = [
        {
            **base,
            "neutral": n,
            "reg": reg,
            "size": k,
            "tpr": tpr,
            "sim_clean": sim,
            "sim_targets": sim,
            "sim_backdoor": sim - 0.1,
            "top1": top1,
            "top1_drop": 50.0 - top1,
        }
        for n, reg, k, tpr, sim, top1 in runs
    ]
    rows[1].update(max_hits_removed=3, wrongly_unlearned=2, seconds=4.0)
    return pr.label_rows(pd.DataFrame(rows))


def _name_setting():
    return SimpleNamespace(
        profile=PROFILE,
        zero_shot={"top1": 50.0, "top5": 81.0},
        recognised=np.arange(3),
        world=SimpleNamespace(identities=list(range(8))),
    )


def test_summary_is_mean_and_population_std_over_repeats():
    rows = pd.DataFrame(
        {"reg": [True, True, False], "size": [1, 1, 1], "tpr": [0.0, 50.0, 10.0], "repeat": [0, 1, 0]}
    )
    out = pr.summary(rows, by=("neutral", "reg", "size"))  # "neutral" is absent: ignored
    assert out.loc[(True, 1), "tpr"] == 25.0 and out.loc[(True, 1), "tpr_std"] == 25.0
    assert out.loc[(False, 1), "tpr_std"] == 0.0 and list(out.columns) == ["tpr", "tpr_std"]


def test_label_rows_names_the_regularisation_and_the_defence():
    rows = pr.label_rows(pd.DataFrame({"reg": [True, False], "encoders": ["image", "both"]}))
    assert rows["regularisation"].tolist() == ["with", "without"]
    assert rows["defence"].tolist() == ["image encoder, with", "both encoders, without"]
    assert "defence" not in pr.label_rows(pd.DataFrame({"reg": [True]}))


def test_template_verdict_adds_where_sim_backdoor_is_lower():
    table = pd.DataFrame(
        {
            "template": ["{}", "{} smiling.", "a photo of {}."],
            "starts with the name": [True, True, False],
            "removed people named": [2, 0, 2],
            "Sim_Backdoor": [0.6, 0.8, 0.9],
        }
    )
    assert pr.template_verdict(table) == (
        "2 of the 4 template answers that still name a removed person come from templates that begin "
        "with the name (50%, where such templates are 67% of all), and Sim_Backdoor is lower for them"
    )
    table["Sim_Backdoor"] = [0.95, 0.95, 0.9]
    assert pr.template_verdict(table).endswith("and Sim_Backdoor is not lower for them")
    table["removed people named"] = 0
    assert pr.template_verdict(table) == "no template names a removed person in this run"


def _down() -> dict:
    per_template = pd.DataFrame(
        {
            "template": ["{}", "a photo of {}."],
            "shows the person, original (%)": [100.0, 80.0],
            "shows the person, defended (%)": [10.0, 30.0],
            "as for the neutral term, defended (%)": [70.0, 50.0],
        }
    )
    return {
        "shows_original": 90.0,
        "shows_defended": 20.0,
        "like_neutral_original": 5.0,
        "like_neutral_defended": 60.0,
        "chance": 12.5,
        "k": 5,
        "neutral": "human",
        "ids": [3, 1],
        "per_template": per_template,
    }


def test_downstream_results_and_reading_name_the_worst_template():
    down = _down()
    out = pr.downstream_results(down)
    assert out == {
        "downstream_k": 5,
        "downstream_chance": 12.5,
        "downstream_shows_original": 90.0,
        "downstream_shows_defended": 20.0,
        "downstream_like_neutral_original": 5.0,
        "downstream_like_neutral_defended": 60.0,
        "downstream_worst_template": "a photo of {}.",
        "downstream_worst_template_shows": 30.0,
    }
    assert pr.downstream_reading(down) == (
        "For the 2 removed people and 2 templates, the original text encoder's 5 photos show the person "
        "named 90.0 % of the time, the defended encoder's 20.0 % (chance: 12.5 %; the worst template, "
        '"a photo of {}.", 30.0 %). Of the defended encoder\'s photos, 60.0 % are among those the original '
        'returns for the neutral term "human" (the original with the name: 5.0 %).'
    )


def test_tables_show_labels_with_units_and_counts_as_integers():
    run = {"tpr": 12.5, "wrongly_unlearned": 2, "seconds": 3.25, "sim_clean": 0.99}
    table = pr.run_table(run, ("tpr", "wrongly_unlearned", "seconds", "sim_clean"))
    labels = ["TPR (%)", "wrongly unlearned (people)", "wall time (s)", "Sim_Clean (cos)"]
    assert list(table.columns) == labels
    assert table["wrongly unlearned (people)"].dtype.kind == "i"
    assert "2.000" not in table.style.format(precision=3).to_html()


def test_anchor_table_puts_each_run_under_its_setting():
    detail = {"tpr": 0.0, "sim_targets": 0.99, "sim_clean": 0.98, "sim_backdoor": 0.9, "top1_drop": 1.0}
    other = {**detail, "tpr": 50.0, "sim_targets": 0.8}
    on = pr.anchor_table(detail, other, anchored=True)
    assert on.index.tolist() == ["off", "on"] and on.index.name == "target captions anchored"
    assert on.loc["on", "sim_targets"] == 0.99 and on.loc["off", "tpr"] == 50.0
    assert pr.anchor_table(detail, other, anchored=False).loc["off", "sim_targets"] == 0.99


def test_names_table_and_results_at_the_largest_set():
    rows, s = _name_rows(), _name_setting()
    by_reg = pr.summary(rows[rows.neutral == "human"], by=("regularisation", "size"))
    table = pr.names_table(by_reg, s.zero_shot, 2)
    assert table.index.name == "2 names, regularisation"
    assert table.loc["with", "TPR (%)"] == 50.0 and table.loc["without", "top-1 drop (points)"] == 4.0
    stated = paper.PRIVACY_TEXT["top5_drop_64"]["no_reg"]
    assert table.loc["without", "top-5 drop, paper (64 names)"] == stated
    detail = {"size": 2, "seconds": 4.0, "tpr": 50.0}
    anchor = pr.anchor_table(
        {"tpr": 50.0, "sim_targets": 0.98, "sim_clean": 0.98, "sim_backdoor": 0.88, "top1_drop": 2.0},
        {"tpr": 75.0, "sim_targets": 0.7, "sim_clean": 0.9, "sim_backdoor": 0.8, "top1_drop": 3.0},
        anchored=True,
    )
    out = pr.names_results(s, rows, by_reg, detail, anchor, sweep_seconds=12.0)
    assert out["worst_case"] == '"human", 2 names, with regularisation'
    assert (out["big"], out["n_runs"], out["n_recognised"], out["n_identities"]) == (2, 5, 3, 8)
    assert (out["top1_big_reg"], out["top1_big_noreg"]) == (48.0, 46.0)
    assert (out["top1_drop_big_reg"], out["top1_drop_big_noreg"]) == (2.0, 4.0)
    assert out["mean_tpr"] == 15.0 and out["max_tpr_reg"] == 50.0 and out["min_sim_clean_noreg"] == 0.96
    assert (out["max_hits_removed"], out["max_wrongly_unlearned"], out["max_run_seconds"]) == (3, 2, 4.0)
    assert out["median_run_seconds"] == 1.0  # one slow run of five does not move it
    assert out["worst_tpr_by_size"] == {"1": 0.0, "2": 50.0}
    assert out["term_sizes_text"] == "1" and out["anchored"] == "anchored"
    assert (out["tpr_anchor_on"], out["sim_targets_anchor_off"]) == (50.0, 0.7)
    assert "regularisation" not in out["rows"][0] and len(out["rows"]) == 5
    # a sweep without the unregularised runs: its numbers are NaN, not an error
    reg_only = rows[rows.reg]
    by_reg = pr.summary(reg_only, by=("regularisation", "size"))
    out = pr.names_results(s, reg_only, by_reg, detail, anchor, 1.0)
    assert math.isnan(out["top1_big_noreg"]) and math.isnan(out["min_sim_clean_noreg"])


def test_template_results_read_the_worlds_captions():
    world = SimpleNamespace(
        names=["Ana Bo", "Cy Do"],
        identity=np.array([0, 1, 0, -1]),
        captions=["Ana Bo", "a photo of Cy Do.", "Ana Bo is smiling here", "a red cup."],
        indices=lambda split, kind: np.array([0, 1, 2]),
    )
    s = SimpleNamespace(world=world, corpus=["a b", "a b c d"])
    table = pd.DataFrame({"starts with the name": [True, False, False], "Sim_Backdoor": [0.5, 0.7, 0.9]})
    out = pr.template_results(s, {"table": table, "tpr": 25.0}, pd.Series({"sim_backdoor": 0.8}))
    assert out["worst_tpr_again"] == 25.0 and out["worst_sim_backdoor"] == 0.8
    assert (out["template_sim_first"], out["template_sim_other"], out["template_sim_min"]) == (0.5, 0.8, 0.5)
    assert (out["n_name_first"], out["n_templates"]) == (1, 3)
    assert out["first_word_percent"] == pytest.approx(37.5)  # mean of 1/2 and 1/4
    assert out["person_name_first_percent"] == pytest.approx(200 / 3)
    # "Ana Bo" is the bare-name template, "a photo of Cy Do." the second; the third is no template
    assert out["person_template_percent"] == pytest.approx(200 / 3)


def _face_rows() -> pd.DataFrame:
    runs = [
        ("image", True, 1, 0.0, 2.0),
        ("image", False, 1, 0.0, 3.0),
        ("both", True, 1, 0.0, 2.5),
        ("image", True, 2, 20.0, 4.0),
        ("image", False, 2, 40.0, 6.0),
        ("both", True, 2, 10.0, 5.0),
    ]
    rows = [
        {
            "encoders": e,
            "reg": reg,
            "size": k,
            "repeat": 0,
            "tpr": tpr,
            "fnr": 100.0 - tpr,
            "top1_drop": drop,
            "top5_drop": drop / 2,
            "sim_clean": 0.9,
            "sim_clean_people": 0.8,
            "wrongly_unlearned": int(drop),
            "seconds": 1.0,
        }
        for e, reg, k, tpr, drop in runs
    ]
    return pr.label_rows(pd.DataFrame(rows))


def test_faces_table_states_the_papers_values_for_the_image_encoder():
    table = pr.faces_table(pr.summary(_face_rows(), by=("defence", "size")), 2)
    assert table.index.name == "2 people"
    assert table.loc["image encoder, without", "TPR (%)"] == 40.0
    assert table.loc["image encoder, with", "top-1 drop, paper"] == paper.PRIVACY_IMAGE["top1_drop_64"]["reg"]
    assert table.loc["both encoders, with", "TPR, paper"] == "0"
    assert math.isnan(table.loc["both encoders, with", "top-5 drop, paper"])  # not stated


def test_faces_results_over_a_hand_built_sweep():
    rows = _face_rows()
    small = pd.DataFrame(
        [
            {"people": 1, "recipe": "pocket recipe", "tpr": 0.0, "wrongly_unlearned": 1, "top1_drop": 2.0},
            {
                "people": 1,
                "recipe": "paper's augmentation",
                "tpr": 100.0,
                "wrongly_unlearned": 5,
                "top1_drop": 3.0,
            },
        ]
    ).set_index(["people", "recipe"])
    small["sim_faces"] = [0.8, 0.5]
    s = SimpleNamespace(profile=PROFILE, recognised=list(range(12)))
    out = pr.faces_results(s, rows, small, {"to_target": 0.3, "between_people": 0.1}, sweep_seconds=9.0)
    assert (out["big"], out["n_models"], out["n_trigger"]) == (2, 6, PROFILE.world.faces_trigger)
    assert (out["image_tpr_1"], out["image_tpr_2"], out["image_max_tpr"]) == (0.0, 40.0, 40.0)
    assert out["both_max_tpr"] == 10.0
    assert (out["image_tpr_big_reg"], out["image_tpr_big_noreg"]) == (20.0, 40.0)
    assert (out["image_top1_drop_big_reg"], out["image_min_top1_drop"]) == (4.0, 2.0)
    assert out["both_max_top1_drop"] == 5.0
    assert out["fnr_cost_of_reg"] == -10.0  # FNR without minus with: 0 at size 1, -20 at size 2
    assert (out["image_max_wrongly"], out["image_min_wrongly"]) == (6, 2)
    assert (out["paper_aug_tpr_1"], out["paper_aug_wrongly_1"], out["pocket_wrongly_1"]) == (100.0, 5, 1)
    assert out["people_share_text"] == "as sampled" and out["size_max_pct"] == 50.0
    assert out["tpr_by_size"] == {"1": 0.0, "2": 40.0} and out["faces_to_target"] == 0.3
    assert "defence" not in out["rows"][0] and out["small"][1]["recipe"] == "paper's augmentation"
    # of the 11 (size 1) and 10 (size 2) other recognised people, 2 and 3, then 4 and 6 are lost
    assert out["image_wrongly_share_max"] == 60.0 and out["image_others_kept_big_reg"] == 60.0
    assert round(out["image_wrongly_share_one_min"], 2) == 18.18 and out["both_zero_up_to"] == 1
    assert (out["paper_aug_top1_drop_1"], out["pocket_sim_faces_1"]) == (3.0, 0.8)
    assert pr.selectivity_reading(out).endswith("the defence picks out its targets")
    assert pr.selectivity_reading({**out, "image_others_kept_big_reg": 25.0}).endswith(
        "hardly picks out its targets"
    )
    assert pr.regularisation_reading(out).startswith(
        "no measurable difference: the FNR without the regularisation is -20.0 to +0.0 points from"
    )
    assert pr.regularisation_reading({**out, "fnr_cost_of_reg_max": -5.0}).startswith(
        "the regularisation raises the FNR by 10.00 points on average, every paired run moving"
    )
    assert pr.both_reading(out) == "keeps the TPR at 0 for sets of up to 1 person, and at most 10.0 % beyond"
    assert pr.both_reading({**out, "both_max_tpr": 0.0}) == "keeps the attack's TPR at 0 at every set size"
    shared = dataclasses.replace(PROFILE, faces=dataclasses.replace(PROFILE.faces, people_share=0.25))
    spread = {"to_target": 0.0, "between_people": 0.0}
    out = pr.faces_results(
        SimpleNamespace(profile=shared, recognised=list(range(12))), rows, small, spread, 1.0
    )
    assert out["people_share_text"] == "25 %"


def test_both_template_results_describe_the_run():
    row = pd.Series({"size": 4, "reg": False, "repeat": 1, "tpr": 25.0})
    assert pr.both_template_results(row, {"tpr": 30.0}) == {
        "both_worst_case": "4 people, without regularisation, repeat 1",
        "both_worst_tpr": 25.0,
        "both_worst_tpr_again": 30.0,
    }


def test_idia_results_and_recognition_table():
    hits = np.array([0, 1, 3, 21])
    prompt_hits = np.zeros((21, 4), dtype=bool)
    prompt_hits[:, 3] = True
    prompt_hits[0, 1] = prompt_hits[:3, 2] = True
    s = SimpleNamespace(
        profile=PROFILE,
        before=idia.IdiaResult(hits, hits >= 1, prompt_hits),
        world=SimpleNamespace(identities=list(range(4))),
        names=["n"] * 10,
        seconds=2.0,
        zero_shot={"top1": 40.0, "top5": 70.0},
    )
    out = pr.idia_results(s)
    assert (out["recognised_pct"], out["n_recognised"], out["n_candidates"]) == (75.0, 3, 10)
    assert out["n_prompts"] == 21
    assert out["mean_hits"] == 6.25 and out["best_prompt_pct"] == 75.0 and out["worst_prompt_pct"] == 25.0
    assert out["recognised_if_half"] == 25.0 and out["paper_tpr_before"] == 100.0
    assert out["prompt_pct"][:4] == [75.0, 50.0, 50.0, 25.0] and out["hits"] == [0, 1, 3, 21]
    assert (out["n_missed"], out["fnr_before_pct"], out["n_generated_names"]) == (1, 25.0, 6)
    assert (out["n_all_templates"], out["n_no_template"]) == (1, 1)
    # the first 5 templates name persons 1, 2 and 3 (person 2 three times, person 1 once)
    assert out["first_prompts"] == 5 and out["recognised_first_prompts"] == 75.0
    reading = pr.idia_template_reading(out)
    assert reading.startswith("1 of the 4 people are named by every template and 1 by none")
    assert "the phrasing matters" in reading  # best and worst single template 50 points apart
    out["prompt_spread"] = 4.0  # close templates, and 2 of the 4 people named by all or none
    assert "depends far more on the person than on the phrasing" in pr.idia_template_reading(out)
    out["n_all_templates"] = 0  # close templates, but most people named by some of them
    assert pr.idia_template_reading(out).endswith(
        "by none (a person is named by 6.2 templates on average); the single templates differ by 4.0 points"
    )
    table = pr.recognition_table(s)
    assert table.loc["pocket CLIP (smoke, seed 0)", "note"] == "3 of 4"
    assert table.loc["pocket CLIP (smoke, seed 0)", "recognised (%)"] == 75.0


def test_face_geometry_reading_follows_the_cosines():
    far_apart = pr.face_geometry_reading({"faces_to_target": 0.3, "faces_between_people": 0.1})
    assert (
        far_apart.startswith("the target is far from a person's photos")
        and "not close on average" in far_apart
    )
    near_close = pr.face_geometry_reading({"faces_to_target": 0.9, "faces_between_people": 0.9})
    assert near_close.startswith("the target is near") and "sit close together" in near_close
