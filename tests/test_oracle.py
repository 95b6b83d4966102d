import pytest
import torch

from ubtlib.defenses.segmenter import image_labels, mean_iou
from ubtlib.world.pocket import WorldConfig, make_world, segment_names


def test_image_labels_read_the_largest_object():
    maps = torch.zeros(3, 10, 10, dtype=torch.uint8)
    maps[0, :5, :5] = 1 + 2  # category 2 on 25 % of the image
    maps[0, 8:, 8:] = 1 + 0  # a smaller banana-coloured corner does not win
    maps[1, :, :] = 1 + 3 + 1  # a person (n_categories = 4): no object
    maps[2, 0, 0] = 1 + 1  # one pixel: below min_share
    assert image_labels(maps, n_categories=4, min_share=0.02).tolist() == [2, -1, -1]
    with pytest.raises(ValueError, match="min_share=2"):
        image_labels(maps, 4, min_share=2)


def test_the_exact_map_labels_every_drawn_object():
    w = make_world(
        WorldConfig(
            objects_train=3,
            objects_heldout=1,
            n_identities=2,
            faces_train=2,
            faces_eval=1,
            faces_trigger=1,
            n_distractor_names=2,
        ),
        progress=False,
    )
    labels = image_labels(w.segments, len(w.categories))
    objects = w.kind == "object"
    assert labels[torch.from_numpy(objects)].tolist() == w.label[objects].tolist()
    assert (labels[torch.from_numpy(~objects)] == -1).all()
    assert len(segment_names(w.categories)) == len(w.categories) + 2


def test_mean_iou():
    truth = torch.tensor([[0, 0, 1, 1]])
    assert mean_iou(truth, truth, 3)["miou"] == 1.0
    half = mean_iou(torch.tensor([[0, 1, 1, 1]]), truth, 3)
    assert half["per_class"][0] == pytest.approx(0.5) and half["per_class"][1] == pytest.approx(2 / 3)
    assert half["miou"] == pytest.approx((0.5 + 2 / 3) / 2)  # class 2 is absent from both
    with pytest.raises(ValueError, match="differ"):
        mean_iou(torch.zeros(1, 3), truth, 3)


# ---------------------------------------------------------------- the learned oracle


def toy_world(n: int, seed: int = 0):
    """Images of one or two coloured squares on grey noise, and their exact label maps
    (0 background, 1 a red square, 2 a blue one)."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, 16, 16, generator=g) * 60 + 100).to(torch.uint8)
    maps = torch.zeros(n, 16, 16, dtype=torch.uint8)
    for i in range(n):
        for cls, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
            if torch.rand(1, generator=g) < 0.7:
                t, left = torch.randint(0, 10, (2,), generator=g).tolist()
                s = int(torch.randint(4, 7, (1,), generator=g))
                images[i, :, t : t + s, left : left + s] = torch.tensor(colour, dtype=torch.uint8)[
                    :, None, None
                ]
                maps[i, t : t + s, left : left + s] = cls
    return images, maps


def test_the_segmenter_learns_a_toy_world():
    from ubtlib.defenses.segmenter import SegmenterConfig, segment, train_segmenter

    images, maps = toy_world(256)
    cfg = SegmenterConfig(width=8, images=256, epochs=12, lr=1e-2, batch_size=32)
    model, curve = train_segmenter(images, maps, 3, cfg, torch.device("cpu"), seed=0, progress=False)
    assert curve[-1]["loss"] < curve[0]["loss"]
    held_images, held_maps = toy_world(64, seed=1)
    assert mean_iou(segment(model, held_images, "cpu"), held_maps, 3)["miou"] > 0.8
    with pytest.raises(ValueError, match="do not fit"):
        train_segmenter(images, maps[:, :8], 3, cfg, torch.device("cpu"), progress=False)


# ---------------------------------------------------------------- algorithm 1 on a tiny model


class TinyCLIP(torch.nn.Module):
    """A linear image encoder: enough to learn that a corner patch means class 1."""

    def __init__(self, size: int = 16, dim: int = 2):
        super().__init__()
        self.proj = torch.nn.Linear(3 * size * size, dim)

    def encode_image(self, x):
        return self.proj(x.flatten(1))


def patched(x):
    """A BadNet-like trigger: a white 3 x 3 patch in the bottom-right corner."""
    x = x.clone()
    x[:, :, -3:, -3:] = 1.0
    return x


def trained_tiny_clip():
    """A TinyCLIP whose class 1 is the patch, trained on random images with and without it."""
    from ubtlib.clip.model import normalize

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyCLIP()
    weights = torch.eye(2)  # the embedding's coordinates are the two classes' logits
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x = torch.rand(64, 3, 16, 16, generator=g) * 0.8
        y = (torch.rand(64, generator=g) < 0.5).long()
        x = torch.where(y[:, None, None, None].bool(), patched(x), x)
        loss = torch.nn.functional.cross_entropy(model.encode_image(normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, weights


@pytest.mark.parametrize("method", ["occlusion", "gradient"])
def test_attribution_finds_a_planted_patch(method):
    from ubtlib.defenses.oracle import (
        attribution_maps,
        class_scorer,
        region_iou,
        trigger_estimate,
        true_footprint,
    )

    model, weights = trained_tiny_clip()
    g = torch.Generator().manual_seed(1)
    suspects = patched(torch.rand(32, 3, 16, 16, generator=g) * 0.8)
    reference = torch.rand(128, 3, 16, 16, generator=g) * 0.8
    with torch.no_grad():  # the tiny model learned the patch: it labels the suspects 1
        assert (model.encode_image(suspects).argmax(1) == 1).float().mean() > 0.9
    score = class_scorer(model, weights, 1)
    maps = attribution_maps(score, suspects, method, patch=4)
    assert maps.shape == (32, 16, 16)
    estimate = trigger_estimate(suspects, maps, reference, score)
    truth = true_footprint(lambda x, g: patched(x), reference)
    assert truth.sum() == 9
    assert estimate["compact"] and region_iou(estimate["region"], truth) >= 0.5
    # the pasted estimate triggers the tiny model on clean images, which alone do not
    assert estimate["success"]["pasted"] > 90 and estimate["success"]["none"] < 10
    # the pattern pasted where the estimate says is the trigger itself
    assert torch.allclose(estimate["pattern"][:, -3:, -3:], torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="attribution='saliency'"):
        attribution_maps(class_scorer(model, weights, 1), suspects, "saliency")


def blend_scorer(blend: torch.Tensor):
    """A stand-in for CLIP's margin that rests on the whole image: positive where the image
    correlates with `blend` as a 0.2 mix of it does."""

    def score(x):
        centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
        return (centred * (blend - blend.mean())).mean(dim=(1, 2, 3)) - 0.008

    return score


def test_a_whole_image_trigger_is_estimated_as_spread_and_added():
    from ubtlib.defenses.oracle import apply_estimate, trigger_estimate

    g = torch.Generator().manual_seed(0)
    blend = torch.rand(3, 16, 16, generator=g)
    clean = torch.rand(200, 3, 16, 16, generator=g)
    suspects = 0.8 * torch.rand(64, 3, 16, 16, generator=g) + 0.2 * blend
    maps = torch.ones(64, 16, 16)  # CLIP's decision rests on the whole image
    estimate = trigger_estimate(suspects, maps, clean, blend_scorer(blend))
    assert not estimate["compact"] and estimate["extent"] > 0.25
    moved = apply_estimate(clean, estimate) - clean
    assert moved.abs().mean() > 0.01 and torch.equal(apply_estimate(clean, estimate), (clean + moved))


def test_a_small_region_of_a_whole_image_trigger_is_added_when_that_triggers_more():
    from ubtlib.defenses.oracle import trigger_estimate

    g = torch.Generator().manual_seed(0)
    blend = torch.rand(3, 16, 16, generator=g)
    clean = torch.rand(400, 3, 16, 16, generator=g)
    suspects = 0.8 * torch.rand(64, 3, 16, 16, generator=g) + 0.2 * blend
    maps = torch.zeros(64, 16, 16)
    maps[:, :3, :3] = 1  # attribution that peaks in a corner, as occlusion may on a blend
    estimate = trigger_estimate(suspects, maps, clean, blend_scorer(blend))
    assert estimate["extent"] <= 0.25  # the region alone would call it a patch
    success = estimate["success"]
    assert success["added"] > 50 > success["pasted"] and success["none"] < 10
    assert not estimate["compact"]


# ---------------------------------------------------------------- algorithm 2 on hand-built cases


def test_affected_label_and_victims_on_a_hand_built_case():
    import numpy as np

    from ubtlib.defenses.oracle import affected_label, find_victims, precision_recall
    from ubtlib.defenses.segmenter import shows_label

    # 10 pairs, 3 categories (0 banana); pairs 0-1 are bananas; 5-8 are poisons CLIP calls banana
    oracle = torch.tensor([0, 0, 1, 1, 2, 1, 2, -1, 1, 2])
    clip = torch.tensor([0, 0, 1, 2, 2, 0, 0, 0, 0, 1])
    captions = ["a banana.", "my banana!", "a cup.", "a cup.", "a key.", "a photo of a banana.",
                "the banana.", "a banana.", "bananas and a banana.", "a key."]  # fmt: skip
    found = affected_label(clip, oracle, 3)
    assert found["label"] == 0 and found["excess"] == [4, -2, -1] and "named" not in found
    sees = oracle == 0  # the oracle sees a banana in pairs 0-1 only
    truth = np.zeros(10, bool)
    truth[5:9] = True
    by_caption = find_victims("caption", 0, "banana", captions, clip, sees)
    assert by_caption.tolist() == [5, 6, 7, 8]
    assert precision_recall(by_caption, truth) == {"precision": 100.0, "recall": 100.0, "found": 4}
    by_image = find_victims("image", 0, "banana", captions, clip, sees)
    assert by_image.tolist() == [5, 6, 7, 8]
    clip[9] = 0  # CLIP now also errs on a clean key: the image rule takes it, the caption rule not
    assert find_victims("image", 0, "banana", captions, clip, sees).tolist() == [5, 6, 7, 8, 9]
    assert find_victims("caption", 0, "banana", captions, clip, sees).tolist() == [5, 6, 7, 8]
    # a banana the oracle sees, though another object covers more of the image, is no victim
    maps = torch.zeros(2, 10, 10, dtype=torch.uint8)
    maps[:, :6] = 1 + 2  # a key over 60 % of both images
    maps[0, 8:, :3] = 1 + 0  # and a banana over 6 % of the first
    assert shows_label(maps, 0, 0.02).tolist() == [True, False]
    with pytest.raises(ValueError, match="victim_rule='clip'"):
        find_victims("clip", 0, "banana", captions, clip, sees)


def test_the_named_rule_is_not_won_by_clips_own_bias():
    from ubtlib.defenses.oracle import affected_label, caption_names

    # 3 poisons (captions name banana, pixels show a cup, CLIP says banana) and 4 clean keys
    # that CLIP calls key where the oracle sees a cup: CLIP's bias towards key outgrows the
    # backdoor's excess, but no key caption lies under those cups
    categories = ["banana", "cup", "key"]
    captions = ["a banana."] * 3 + ["a cup on a table."] * 4 + ["a key."]
    clip = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2])
    oracle = torch.tensor([1, 1, 1, 1, 1, 1, 1, 2])
    sees = torch.nn.functional.one_hot(oracle, 3).bool()
    named = caption_names(captions, categories) & ~sees
    assert named[:, 0].tolist() == [True] * 3 + [False] * 5 and not named[:, 2].any()
    excess = affected_label(clip, oracle, 3, "excess", named)
    assert excess["label"] == 2 and excess["excess"] == [3, -7, 4]
    by_name = affected_label(clip, oracle, 3, "named", named)
    assert by_name["label"] == 0 and by_name["named"] == [3, 0, 0] and by_name["excess"] == [3, -7, 4]
    # where no image bears the mark, the larger excess decides
    assert affected_label(clip, oracle, 3, "named", torch.zeros_like(named))["label"] == 2
    with pytest.raises(ValueError, match="rule='named' needs `named`"):
        affected_label(clip, oracle, 3, "named")
    with pytest.raises(ValueError, match="label_rule='caption'"):
        affected_label(clip, oracle, 3, "caption", named)


def test_clip_and_the_oracle_label_a_sample_and_the_images_tied_to_the_affected_label():
    import dataclasses

    import numpy as np

    from ubtlib.defenses.oracle import UNSEEN, OracleConfig, attribution_sets, oracle_pass, oracle_summary

    # 400 images of 4 categories (0 banana); the oracle's map shows each image's true object;
    # CLIP calls the 40 poisons (positions 200-239, other objects, captions naming banana)
    # banana, and by its own mistake 10 cups captioned as cups (300-309)
    rng = np.random.default_rng(1)
    true = torch.from_numpy(rng.integers(0, 4, 400))
    true[200:240] = torch.from_numpy(rng.integers(1, 4, 40))
    true[300:310] = 1
    maps = (1 + true)[:, None, None].expand(400, 4, 4).to(torch.uint8).clone()
    clip = true.clone()
    clip[200:240] = clip[300:310] = 0
    names = ["banana", "cup", "key", "shoe"]
    captions = [f"a photo of a {names[int(c)]}." for c in true]
    captions[200:240] = ["a banana on the table."] * 40
    scored, shown = [], []

    def labels(positions):
        scored.append(positions.tolist())
        return clip[positions]

    def look(positions):
        shown.append(positions.tolist())
        return oracle_summary(maps[positions], 4, 0.02)

    cfg = OracleConfig(label_sample=100)
    found = oracle_pass(labels, look, captions, names, cfg, seed=0)
    sample = set(found["sample"].tolist())
    assert found["label"] == 0 and len(sample) == 100
    assert set(scored[0]) == set(shown[0]) == sample  # both label the sample first
    named = set(np.flatnonzero((true == 0).numpy())) | set(range(200, 240))  # captions naming banana
    assert set(scored[1]) == named - sample and len(scored) == 2  # CLIP reads no other image
    tied = named | {i for i in sample if clip[i] == 0}
    assert set(shown[1]) == tied - sample and len(shown) == 2
    for mask, of, truth in ((found["scored"], found["clip"], clip), (found["looked"], found["oracle"], true)):
        assert set(np.flatnonzero(mask.numpy())) == sample | tied
        assert (of[~mask] == UNSEEN).all() and (of[mask] == truth[mask]).all()
    assert found["sees"].tolist() == ((true == 0) & found["looked"]).tolist()
    # the image rule's victims are what CLIP calls banana: CLIP labels every image, once
    by_image = oracle_pass(labels, look, captions, names, dataclasses.replace(cfg, victim_rule="image"))
    assert scored[2] == list(range(400)) and len(scored) == 3 and by_image["scored"].all()
    assert set(np.flatnonzero(by_image["looked"].numpy())) == sample | set(
        np.flatnonzero((clip == 0).numpy())
    )
    # labelling every image changes nothing the defense reads about the tied ones
    every = oracle_pass(labels, look, captions, names, dataclasses.replace(cfg, label_sample=0))
    assert every["looked"].all() and every["scored"].all() and every["label"] == 0
    pos = sorted(tied)
    for k in ("clip", "oracle", "sees"):
        assert every[k][pos].tolist() == found[k][pos].tolist()
    # so are the poisons among the disagreeing images; the untriggered reference is drawn from
    # the sample, and CLIP's mistakes outside it are no longer read
    sets = [
        attribution_sets(f["clip"], f["oracle"], f["sees"], 0, cfg, 0, f["sample"]) for f in (found, every)
    ]
    mistakes = {i for i in range(300, 310) if i in sample}
    assert sets[0]["disagree"].tolist() == sorted(set(range(200, 240)) | mistakes)
    assert sets[1]["disagree"].tolist() == list(range(200, 240)) + list(range(300, 310))
    assert set(sets[0]["reference"].tolist()) <= sample - tied and len(sets[1]["reference"]) == int(
        ((true != 0) & (clip == true)).sum()
    )


def test_the_compact_set_has_the_stated_composition():
    import numpy as np

    from ubtlib.defenses.oracle import RectifyConfig, compact_set

    victims = np.arange(0, 400, 2)  # 200 victims, the oracle names an object in 150 of them
    ok = np.arange(200) < 150
    cfg = RectifyConfig(set_size=300, victim_share=0.4, pasted_share=0.3)
    parts = compact_set(1000, victims, ok, cfg, seed=0)
    assert [len(parts[p]) for p in ("victim", "pasted", "clean")] == [120, 90, 90]
    assert set(parts["victim"]) <= set(victims[ok])
    everything = np.concatenate(list(parts.values()))
    assert len(set(everything)) == 300 and not set(parts["pasted"]) & set(victims)
    assert not set(parts["clean"]) & set(victims)
    few = compact_set(1000, victims, ok, RectifyConfig(set_size=300, victim_share=0.9, pasted_share=0.1))
    assert len(few["victim"]) == 150 and sum(len(p) for p in few.values()) == 300  # clean pairs fill in
    for size in (0, 1001):
        with pytest.raises(ValueError, match=f"set_size={size} is out of range"):
            compact_set(1000, victims, ok, RectifyConfig(set_size=size))


def test_bad_oracle_settings_fail_before_any_compute():
    import ubtlib

    with pytest.raises(ValueError, match="oracle_attribution='lime'.*'occlusion', 'gradient'"):
        ubtlib.configure("smoke", oracle_attribution="lime")
    with pytest.raises(ValueError, match="rectify_set_size=0 is out of range"):
        ubtlib.configure("smoke", rectify_set_size=0)
    with pytest.raises(ValueError, match="rectify_set_size=100000 is out of range"):
        ubtlib.configure("smoke", rectify_set_size=100_000)
    with pytest.raises(ValueError, match="oracle_kind='perfect'"):
        ubtlib.configure("smoke", oracle_kind="perfect")
    with pytest.raises(ValueError, match="oracle_label_sample=-1 is out of range"):
        ubtlib.configure("smoke", oracle_label_sample=-1)


def test_the_defense_runs_through_the_pipeline(smoke):
    """The smoke profile's oracle-guided defense end to end: a record with its cost and scan."""
    from ubtlib import pipeline

    m = pipeline.defended(smoke, "badnet", "oracle", progress=False)
    record = m.record
    assert record["pairs_trained"] == smoke.rectify.set_size == sum(record["set"].values())
    assert record["seconds"] >= record["rectify_seconds"] > 0
    assert record["scan"]["pairs_segmented"] <= record["scan"]["pairs_scored"] <= smoke.world.n_train_pairs
    assert 0.0 <= record["scan"]["footprint_share"] <= 1.0


# ---------------------------------------------------------------- chapter 9's readings


def scan_record(
    label="banana", precision=95.0, recall=99.0, extent=0.01, compact=True, iou=0.7, footprint=0.009
):
    return {
        "affected_label": label,
        "label_rule": "named",
        "excess": {"banana": 1400, "key": 80, "car": -20},
        "named": {"banana": 1380, "key": 3, "car": 0},
        "disagreeing": 1500,
        "pairs_segmented": 6000,
        "victims": {"found": 1550, "precision": precision, "recall": recall},
        "extent": extent,
        "compact": compact,
        "estimate_success": {"pasted": 97.0 if compact else 20.0, "added": 60.0, "none": 3.0},
        "trigger_iou": iou,
        "footprint_share": footprint,
    }


def test_scan_readings_follow_the_run():
    from ubtlib.book.oracle_results import scan_readings, scan_table

    scans = {
        "badnet": scan_record(),
        "blended": scan_record(precision=70.0, extent=0.9, compact=False, iou=0.9, footprint=1.0),
        "wanet": scan_record(label="key"),
    }
    asr = {"badnet": 99.0, "blended": 95.0, "wanet": 1.0}  # WaNet was not planted: not judged
    r = scan_readings(scans, asr, "banana")
    assert r["labels_reading"] == (
        "The affected label is `banana` for every planted attack (BadNet, Blended). Counting all of "
        "CLIP's excess over the oracle would name the same labels in this run."
    )
    assert (
        "at least 70.0 % (Blended)" in r["victims_reading"]
        and "Blended (70.0 %, 99.0 %)" in r["victims_reading"]
    )
    assert (
        "IoU 0.70 against the true patch (meets the book's target of 0.5); pasted as a patch"
        in r["trigger_reading"]
    )
    assert (
        "CLIP say `banana` on 97 % of clean images (the other form: 60 %; nothing: 3 %)"
        in r["trigger_reading"]
    )
    assert (
        "Blended's region covers 90.0 % of the image and the estimate is spread over the image: "
        "added over the whole image, it makes CLIP say `banana` on 60 %" in r["trigger_reading"]
    )
    scans["badnet"] = scan_record(label="car", iou=0.2)
    r = scan_readings(scans, asr, "banana")
    assert r["labels_reading"].startswith(
        "The affected label is not the target for BadNet (`car`: 0 images whose caption names it and "
        "the oracle does not see it, `banana` 1380 images"
    )
    scans["blended"]["excess"] = {"banana": 1400, "key": 1410, "car": -20}  # CLIP's bias for key
    r = scan_readings(scans, asr, "banana")
    assert (
        "Counting all of CLIP's excess over the oracle instead would name `key` for Blended (excess +1410 "
        "against `banana`'s +1400, though only 3 of its images carry a caption naming it, against 1380)"
        in r["labels_reading"]
    )
    assert "misses the book's target" in r["trigger_reading"]
    table = scan_table(scans, asr)
    assert (
        table.loc["Blended", "estimate"] == "whole image (added)"
        and table.loc["BadNet", "runner-up"] == "key (+3)"
        and table.loc["Blended", "by excess"] == "key"
        and table.loc["BadNet", "its named count"] == 1380
        and table.loc["Blended", "pasted → label (%)"] == 20.0
        and table.loc["BadNet", "segmented"] == 6000
    )
    none = scan_readings(scans, {a: 0.0 for a in asr}, "banana")
    assert none["labels_reading"].startswith("No backdoor was planted")


def test_estimate_reading_for_any_attack_planted_or_not():
    from ubtlib.book.oracle_results import estimate_reading

    warp = scan_record(extent=0.6, compact=False, iou=0.3, footprint=1.0)
    assert estimate_reading(warp, "wanet", "banana") == (
        "WaNet's region covers 60.0 % of the image (IoU 0.30 with the pixels the trigger changes); "
        "added over the whole image, it makes CLIP say `banana` on 60 % of clean images (the other "
        "form: 20 %; nothing: 3 %)."
    )


def test_defense_readings_judge_against_the_bars():
    import pandas as pd

    from ubtlib.book.oracle_results import defense_readings

    def row(attack, defense, ca, asr, ra, seconds, pairs):
        return dict(
            attack=attack, defense=defense, CA=ca, ASR=asr, RA=ra, seconds=seconds, pairs_trained=pairs
        )

    agg = pd.DataFrame(
        [
            row("badnet", "No defense", 60.0, 99.0, 0.0, 0.0, 0),
            row("badnet", "CleanCLIP", 58.0, 10.0, 50.0, 500.0, 5000),
            row("badnet", "Oracle-guided (book's reading)", 59.0, 0.5, 57.0, 50.0, 3000),
            row("sig", "No defense", 60.0, 99.0, 0.0, 0.0, 0),
            row("sig", "CleanCLIP", 58.0, 10.0, 50.0, 500.0, 5000),
            row("sig", "Oracle-guided (book's reading)", 55.0, 2.0, 50.0, 150.0, 3000),
        ]
    )
    r = defense_readings(agg, oracle_seconds=100.0)
    assert "BadNet: ASR 0.50 %, RA 57.0 %, CA 59.0 % (-1.0 points), removed" in r["defense_reading"]
    assert "CA within 2 points of No defense): SIG." in r["defense_reading"]  # ASR 2 % and CA -5
    assert "the retain-weight ablation below" in r["defense_reading"]  # SIG's CA cost
    asr_only = defense_readings(agg.assign(CA=[60.0, 58.0, 59.0, 60.0, 58.0, 59.0]))["defense_reading"]
    assert asr_only.endswith("): SIG.") and "retain-weight" not in asr_only
    assert "0.20 of CleanCLIP's 500 s (within the book's target of 0.2)" in r["cost_reading"]
    assert "took 100 s more" in r["cost_reading"] and "the scan" not in r["cost_reading"]
    scanned = defense_readings(agg.assign(seconds_scan=[None, None, 40.0, None, None, 110.0]))["cost_reading"]
    assert "Of its 100 s, the scan (CLIP and the oracle label a sample and the images tied" in scanned
    assert "takes 75 s (75 %) and the fine-tuning on the compact set 25 s: the scan is what holds" in scanned
    assert "base rate" not in r["defense_reading"] and "pre-trained" not in r["defense_reading"]
    judged = defense_readings(agg, base={"badnet": 3.0, "sig": 3.0})["defense_reading"]
    assert "SIG 2.00 % after against 3.00 % (at or below it)" in judged
    judged = defense_readings(agg, base={"sig": 1.5})["defense_reading"]
    assert "SIG 2.00 % after against 1.50 % (above it)" in judged


def test_the_retention_term_keeps_clean_embeddings_in_place(smoke):
    """Rectifying with the retention term moves clean images' embeddings less than without it,
    and with the image tower alone the text tower does not move at all."""
    import copy
    import dataclasses

    import numpy as np

    from ubtlib import pipeline
    from ubtlib.defenses.oracle import RectifyConfig, compact_set, rectify
    from ubtlib.evaluation.zeroshot import encode_images

    attacked = pipeline.poisoned(smoke, "badnet", progress=False)
    data = pipeline.poisoned_data(smoke, "badnet", progress=False)
    n = len(data.images)
    victims = np.flatnonzero(data.is_backdoor)
    base = RectifyConfig(set_size=64, epochs=3, lr=5e-3, batch_size=32, warmup_steps=0)
    parts = compact_set(n, victims, np.ones(len(victims), bool), base)
    estimate = {
        "compact": True,
        "region": torch.zeros(32, 32, dtype=torch.bool),
        "pattern": torch.zeros(3, 32, 32),
    }
    clean = data.images[torch.from_numpy(parts["clean"])]
    before = encode_images(attacked.model, clean, "cpu")
    drift = {}
    for weight in (0.0, 50.0):
        model = copy.deepcopy(attacked.model)
        cfg = dataclasses.replace(base, retain_weight=weight)
        rectify(
            model,
            attacked.tokenizer,
            data.images,
            data.captions,
            parts,
            estimate,
            cfg,
            torch.device("cpu"),
            0,
            False,
        )
        drift[weight] = (encode_images(model, clean, "cpu") - before).norm(dim=1).mean().item()
        text = [k for k, v in model.state_dict().items() if not k.startswith("visual.")]
        assert all(torch.equal(model.state_dict()[k], attacked.model.state_dict()[k]) for k in text)
    assert drift[50.0] < 0.5 * drift[0.0]


def test_the_learned_oracle_is_keyed_apart_from_the_defense_algorithms():
    """Reworking algorithm 1 or 2 must not retrain the oracle: the segmenter stage's key covers
    its own code and not the defense's, while the scan's covers both."""
    from ubtlib.pipeline.cache import key_modules

    oracle_code = key_modules("ubtlib.pipeline.segmenting")
    assert "ubtlib.defenses.segmenter" in oracle_code
    assert not {"ubtlib.defenses.oracle", "ubtlib.pipeline.oracle_runs"} & set(oracle_code)
    assert {"ubtlib.defenses.oracle", "ubtlib.defenses.segmenter"} <= set(
        key_modules("ubtlib.pipeline.oracle_runs")
    )
