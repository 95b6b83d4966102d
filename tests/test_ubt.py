import copy
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ubtlib
from ubtlib import pipeline
from ubtlib.clip.model import normalize, to_unit
from ubtlib.defenses import ubt
from ubtlib.defenses.cleanclip import cleanclip_loss, eda  # the package exports the function cleanclip


def test_split_takes_the_weakest_fraction():
    sim = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])
    susp, safe = ubt.suspicious_split(sim, 0.3)
    assert susp.tolist() == [1, 3, 7] and sorted(safe.tolist() + susp.tolist()) == list(range(10))


def test_detect_takes_the_k_most_similar_of_the_suspicious():
    susp = torch.tensor([2, 5, 7, 9])
    assert ubt.detect(torch.tensor([0.1, 0.9, 0.5, 0.7]), susp, 2).tolist() == [5, 9]
    with pytest.raises(ValueError, match="top_k=5 is larger than D_susp"):
        ubt.detect(torch.zeros(4), susp, 5)


def test_detection_metrics_and_auroc_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.1])
    truth = np.array([True, False, True, False])
    m = ubt.detection_metrics(scores, truth, torch.tensor([0, 1]))
    assert m["precision"] == 50.0 and m["recall"] == 50.0
    assert m["auroc"] == pytest.approx(0.75)  # pairs (pos, neg): 0.9>0.8, 0.9>0.1, 0.3<0.8, 0.3>0.1
    assert ubt.auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"ubt_top_k": 4000}, r"ubt_top_k=4000 is larger than D_susp \(2912 pairs"),
        ({"ubt_susp_fraction": 1.0}, r"susp_fraction=1.0 is out of range: accepted 0 < susp_fraction < 1"),
        ({"ubt_susp_fraction": 0.0}, r"susp_fraction=0.0 is out of range"),
    ],
)
def test_bad_defense_parameters_fail_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        ubtlib.configure("pocket", **kw)


def test_defense_of_a_profile_without_poisoning_is_refused():
    with pytest.raises(ValueError, match="needs a poisoned model, but attack='none'"):
        pipeline.defended(ubtlib.configure("smoke"), "none", "ubt")
    with pytest.raises(ValueError, match="needs a poisoned model, but profile 'paper'"):
        pipeline.defended(ubtlib.configure("paper"), "badnet", "ubt")
    with pytest.raises(ValueError, match="defense='retrain' is not accepted"):
        pipeline.defended(ubtlib.configure("smoke"), "badnet", "retrain")


def test_explicit_attention_reproduces_open_clip(smoke):
    clip = pipeline.pretrained(smoke, progress=False)
    tokens = clip.tokenizer(["a photo of a banana.", "a red apple on a plain background."])
    plain = clip.model.encode_text(tokens)
    with ubt.attention_probabilities(clip.model.transformer) as probs:
        explicit = clip.model.encode_text(tokens)
    assert torch.allclose(plain, explicit, atol=1e-5)
    assert len(probs) == smoke.model.text_layers
    assert torch.allclose(probs[0].sum(-1), torch.ones_like(probs[0].sum(-1)), atol=1e-5)


def test_token_relevance_shape_sums_and_special_tokens(smoke, smoke_world):
    clip = pipeline.pretrained(smoke, progress=False)
    caps = ["a photo of a banana.", "portrait of someone smiling."]
    tokens = clip.tokenizer(caps)
    images = smoke_world.images[:2]
    rel = ubt.token_relevance(clip.model, images, tokens, torch.arange(2), "cpu")
    assert rel.shape == tokens.shape
    assert torch.allclose(rel.sum(-1), torch.ones(2), atol=1e-5)
    eot = tokens.argmax(-1)
    for b in range(2):
        assert rel[b, 0] == 0 and (rel[b, eot[b] :] == 0).all() and (rel[b, 1 : eot[b]] >= 0).all()


def _relevance(smoke, caption: str, weights: dict) -> tuple:
    """(tokenizer, tokens, relevance) of one caption; weights: token position -> relevance,
    negative positions counted from the end-of-text token."""
    tok = pipeline.pretrained(smoke, progress=False).tokenizer
    tokens = tok([caption])
    n = int(tokens.argmax(-1))
    rel = torch.zeros_like(tokens, dtype=torch.float)
    for position, value in weights.items():
        rel[0, n + position if position < 0 else position] = value
    return tok, tokens, rel


def test_token_captions_keep_the_most_relevant_tokens_in_order(smoke):
    tok, tokens, rel = _relevance(
        smoke, "a photo of a banana.", {-2: 0.6, 2: 0.3, 1: 0.1}
    )  # banana, photo, a
    assert ubt.token_captions(tokens, rel, tok, 1) == ["banana"]
    assert ubt.token_captions(tokens, rel, tok, 2) == ["photo banana"]


def test_token_captions_pass_over_function_words(smoke):
    tok, tokens, rel = _relevance(
        smoke, "a photo of the banana.", {-3: 0.5, -2: 0.3, 1: 0.2}
    )  # the, banana, a
    assert ubt.token_captions(tokens, rel, tok, 1) == ["the"]
    assert ubt.token_captions(tokens, rel, tok, 1, ubt.FUNCTION_WORDS) == ["banana"]
    assert ubt.token_captions(tokens, rel, tok, 3, ubt.FUNCTION_WORDS) == ["banana"]
    # a punctuation mark as the most relevant token ("a photo of a .." unlearns nothing)
    tok, tokens, rel = _relevance(smoke, "a photo of a banana.", {-1: 0.6, -2: 0.3})  # ., banana
    assert ubt.token_captions(tokens, rel, tok, 1) == ["."]
    assert ubt.token_captions(tokens, rel, tok, 1, ubt.FUNCTION_WORDS) == ["banana"]
    tok, tokens, rel = _relevance(smoke, "a photo of a banana.", {-1: 0.6})  # all on the "."
    assert ubt.token_captions(tokens, rel, tok, 1, ubt.FUNCTION_WORDS) == ["."]  # never an empty caption


def test_common_words_pass_over_a_word_in_most_captions(smoke):
    tok = pipeline.pretrained(smoke, progress=False).tokenizer
    captions = ["a photo of a banana.", "a photo of a kite.", "a red kite.", "a blue cup."]
    tokens = tok(captions)
    assert {"photo", "a"} <= ubt.common_words(tokens, tokens[:1], tok, 0.4)  # in 2 and 4 of the 4
    assert "banana" not in ubt.common_words(tokens, tokens[:1], tok, 0.25)  # in 1 of the 4: not more
    assert "photo" not in ubt.common_words(tokens, tokens[:1], tok, 0.5)
    assert "kite" not in ubt.common_words(tokens, tokens[:1], tok, 0.0)  # only the candidates' words
    _, one, rel = _relevance(smoke, "a photo of a banana.", {2: 0.6, -2: 0.3})  # photo, banana
    skip = ubt.FUNCTION_WORDS | ubt.common_words(tokens, one, tok, 0.25)
    assert ubt.token_captions(one, rel, tok, 1, ubt.FUNCTION_WORDS) == ["photo"]
    assert ubt.token_captions(one, rel, tok, 1, skip) == ["banana"]


def test_cartesian_pairs_every_image_with_every_distinct_caption():
    img, cap, distinct = ubt.cartesian(torch.tensor([4, 9]), ["banana", "banana", "photo banana"])
    assert distinct == ["banana", "photo banana"]
    assert list(zip(img.tolist(), cap.tolist())) == [(4, 0), (4, 1), (9, 0), (9, 1)]


def test_cartesian_keeps_the_most_frequent_captions_when_capped():
    captions = ["banana"] * 3 + ["kite"] * 2 + ["bird", "star"]
    img, cap, distinct = ubt.cartesian(torch.tensor([1, 2, 3]), captions, max_captions=3)
    assert distinct == ["banana", "bird", "kite"]  # bird beats star on the alphabetical tie
    assert len(img) == len(cap) == 9 and set(cap.tolist()) == {0, 1, 2}
    assert ubt.cartesian(torch.tensor([1]), captions)[2] == ["banana", "bird", "kite", "star"]
    with pytest.raises(ValueError, match="max_token_captions=0 is out of range"):
        ubtlib.configure("smoke", ubt_max_token_captions=0)


def test_retain_pool_leaves_out_the_pairs_overfitting_raised_most():
    found = {
        "retain_candidates": torch.tensor([10, 11, 12, 13]),
        "candidate_gain": torch.tensor([0.5, 0.0, 0.1, 0.9]),
    }
    assert ubt.retain_pool(found, ubt.UBTConfig(retain_fraction=0.5)).tolist() == [11, 12]
    assert ubt.retain_pool(found, ubt.UBTConfig(retain_fraction=1.0)).tolist() == [10, 11, 12, 13]
    with pytest.raises(ValueError, match="retain_fraction=0 is out of range"):
        ubtlib.configure("smoke", ubt_retain_fraction=0)
    with pytest.raises(ValueError, match="retain_candidates=0 is out of range"):
        ubtlib.configure("smoke", ubt_retain_candidates=0)


def test_both_ubt_variants_start_from_one_cached_detection(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    calls = []
    from ubtlib.pipeline import ubt_runs  # the stage that calls the detection

    real = ubt.find_poison
    monkeypatch.setattr(ubt_runs, "find_poison", lambda *a, **k: calls.append(1) or real(*a, **k))
    full = pipeline.defended(smoke, "badnet", "ubt", progress=False).record
    bare = pipeline.defended(smoke, "badnet", "ubt_no_token", progress=False).record
    assert len(calls) == 1  # the second variant read the first one's detection
    assert full["top_k"] == bare["top_k"] and full["seconds_split"] == bare["seconds_split"]
    found = pipeline.ubt_detection(smoke, "badnet", progress=False)
    shared = found["seconds_split"] + found["seconds_overfit_detect"]
    # the shared stage's time counts in each variant's wall time, the relevance in UBT's alone
    assert full["seconds"] - full["seconds_unlearn"] == pytest.approx(shared + found["seconds_relevance"])
    assert bare["seconds"] - bare["seconds_unlearn"] == pytest.approx(shared)
    assert found["seconds_relevance"] > 0 and bare["seconds_unlearn"] > 0
    # a run that differs only in how it unlearns reuses the detection too; a new k does not
    pipeline.defended(ubtlib.configure("smoke", ubt_retain_weight=0.5), "badnet", "ubt", progress=False)
    assert len(calls) == 1
    pipeline.defended(ubtlib.configure("smoke", ubt_top_k=5), "badnet", "ubt", progress=False)
    assert len(calls) == 2
    # the retain candidates are part of the detection: a new sample size is a new detection
    small = pipeline.ubt_detection(
        ubtlib.configure("smoke", ubt_retain_candidates=16), "badnet", progress=False
    )
    assert len(calls) == 3
    candidates, safe = small["retain_candidates"], small["safe"]
    assert len(candidates) == 16 and bool(torch.isin(candidates, safe).all())
    assert small["pairs_scored"] == len(small["clean_similarity"]) + 2 * 16 + len(small["susp"])


def test_overfitting_raises_and_unlearning_lowers_the_similarity(smoke):
    """On the smoke model with planted poisons: eq. 1 raises D_susp's similarity, eq. 3
    lowers the unlearning pairs'."""
    import copy

    clip = pipeline.poisoned(smoke, "blended", progress=False)
    data = pipeline.poisoned_data(smoke, "blended", progress=False)
    tokens = clip.tokenizer(data.captions)
    planted = torch.from_numpy(np.flatnonzero(data.is_backdoor))
    safe = torch.from_numpy(np.flatnonzero(~data.is_backdoor))
    cfg = ubt.UBTConfig(
        overfit_epochs=20,
        overfit_lr=1e-3,
        top_k=5,
        unlearn_epochs=20,
        unlearn_lr=1e-3,
        retain_weight=0.0,
        unlearn_floor=-1.0,
    )  # the paper's eq. 3
    model = copy.deepcopy(clip.model)
    sim = lambda m: ubt.pair_similarity(m, data.images, tokens, "cpu", data.image_hook, planted).mean()
    before = sim(model)
    ubt.overfit(model, data.images, tokens, planted, safe, cfg, "cpu", data.image_hook, progress=False)
    after = sim(model)
    assert after > before + 0.1
    ubt.unlearn(model, data.images, planted, tokens[planted], cfg, "cpu", data.image_hook, progress=False)
    assert sim(model) < after - 0.1


def test_cleanclip_loss_on_a_hand_computed_case():
    fi = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    ft = fi.clone()
    scale = torch.tensor(2.0)
    # identical, orthogonal pairs: every CE term is -log(e^2 / (e^2 + e^0))
    term = -math.log(math.exp(2) / (math.exp(2) + 1))
    loss = cleanclip_loss(fi, ft, fi, ft, scale, inmodal_weight=1.0)
    assert loss.item() == pytest.approx(2 * term, rel=1e-6)
    assert cleanclip_loss(fi, ft, fi, ft, scale, 0.0).item() == pytest.approx(term, rel=1e-6)
    # a swapped augmented view makes the in-modal term -log(e^0 / (e^0 + e^2)) per modality
    swapped = fi.flip(0)
    worse = -math.log(1 / (1 + math.exp(2)))
    swapped_loss = cleanclip_loss(fi, ft, swapped, swapped, scale).item()
    assert swapped_loss == pytest.approx(term + worse, rel=1e-6)


def test_eda_makes_one_small_edit():
    rng = random.Random(0)
    caption = "a blurry photo of a small banana on a plain background."
    outs = {eda(caption, rng) for _ in range(50)}
    assert len(outs) > 5
    words = caption.split()
    for o in outs:  # insertion adds one word; deletion drops each word with probability 0.1
        assert len(words) // 2 <= len(o.split()) <= len(words) + 1


def test_image_only_unlearning_leaves_the_text_tower_untouched(smoke):
    import copy

    clip = pipeline.poisoned(smoke, "blended", progress=False)
    data = pipeline.poisoned_data(smoke, "blended", progress=False)
    tokens = clip.tokenizer(data.captions)
    planted = torch.from_numpy(np.flatnonzero(data.is_backdoor))
    cfg = ubt.UBTConfig(top_k=5, unlearn_epochs=5, unlearn_lr=1e-3, retain_weight=0.0, unlearn_towers="image")
    model = copy.deepcopy(clip.model)
    ubt.unlearn(model, data.images, planted, tokens[planted], cfg, "cpu", data.image_hook, progress=False)
    before, after = dict(clip.model.named_parameters()), dict(model.named_parameters())
    text = [n for n in after if not n.startswith("visual.")]
    assert text and all(torch.equal(before[n], after[n]) for n in text)
    assert any(not torch.equal(before[n], after[n]) for n in after if n.startswith("visual."))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards
    with pytest.raises(ValueError, match="unlearn_towers='text' is not accepted"):
        ubtlib.configure("smoke", ubt_unlearn_towers="text")


def test_caption_form_sets_kept_tokens_into_a_template(smoke):
    data = pipeline.poisoned_data(smoke, "blended", progress=False)
    clip = pipeline.poisoned(smoke, "blended", progress=False)
    cfg = ubt.UBTConfig(
        susp_fraction=0.2, overfit_epochs=1, top_k=3, unlearn_epochs=1, caption_form="template"
    )
    _, rec = ubt.run_ubt(
        clip.model,
        pipeline.pretrained(smoke, progress=False).model,
        data,
        clip.tokenizer,
        cfg,
        "cpu",
        progress=False,
    )
    assert rec["token_captions"]
    assert rec["token_captions"] == [f"a photo of a {k}." for k in rec["kept_tokens"]]
    assert all(k and not k.startswith("a photo") for k in rec["kept_tokens"])
    with pytest.raises(
        ValueError, match="caption_form='words' is not accepted: choose one of 'tokens', 'template'"
    ):
        ubtlib.configure("smoke", ubt_caption_form="words")


def test_pair_similarity_encodes_each_caption_once_and_matches_the_pairwise_cosine(smoke):
    clip = pipeline.poisoned(smoke, "blended", progress=False)
    data = pipeline.poisoned_data(smoke, "blended", progress=False)
    tokens = clip.tokenizer(data.captions)
    positions = torch.arange(0, len(data.images), 3)
    calls = []
    real = clip.model.encode_text
    clip.model.encode_text = lambda t, **k: calls.append(len(t)) or real(t, **k)
    try:
        got = ubt.pair_similarity(
            clip.model, data.images, tokens, "cpu", data.image_hook, positions, batch_size=16
        )
    finally:
        del clip.model.encode_text
    assert sum(calls) == len(torch.unique(tokens[positions], dim=0)) < len(positions)
    x = data.image_hook(to_unit(data.images[positions], "cpu"), positions)
    with torch.no_grad():
        want = (
            clip.model.encode_image(normalize(x), normalize=True)
            * clip.model.encode_text(tokens[positions], normalize=True)
        ).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_unlearning_loss_floor_stops_the_pairs_below_it():
    s = torch.tensor([0.5, -0.2, 0.1], requires_grad=True)
    loss = ubt.unlearning_loss(s, 0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.2) and s.grad.tolist() == pytest.approx([1 / 3, 0.0, 1 / 3])
    s.grad = None
    ubt.unlearning_loss(s, -1.0).backward()  # the paper's eq. 3: every pair pulls
    assert s.grad.tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="unlearn_floor=2 is out of range"):
        ubtlib.configure("smoke", ubt_unlearn_floor=2)


def test_unlearn_uses_the_configured_floor(smoke, monkeypatch):
    clip = pipeline.poisoned(smoke, "blended", progress=False)
    data = pipeline.poisoned_data(smoke, "blended", progress=False)
    tokens = clip.tokenizer(data.captions)
    planted = torch.from_numpy(np.flatnonzero(data.is_backdoor))
    floors = []
    real = ubt.unlearning_loss
    monkeypatch.setattr(ubt, "unlearning_loss", lambda s, floor: floors.append(floor) or real(s, floor))
    cfg = ubt.UBTConfig(top_k=5, unlearn_epochs=1, retain_weight=0.0, unlearn_floor=0.25)
    ubt.unlearn(
        copy.deepcopy(clip.model),
        data.images,
        planted,
        tokens[planted],
        cfg,
        "cpu",
        data.image_hook,
        progress=False,
    )
    assert floors and set(floors) == {0.25}


def test_abl_losses_are_cached_by_their_config(smoke, tmp_path, monkeypatch):
    from ubtlib.book import experiments
    from ubtlib.defenses import abl

    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    calls = []
    real = abl.lga_train
    monkeypatch.setattr(abl, "lga_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = experiments.abl_separation(smoke, "badnet", progress=False)
    experiments.abl_separation(smoke, "badnet", progress=False)
    assert len(calls) == 1  # the second read the cached losses
    data = pipeline.poisoned_data(smoke, "badnet", progress=False)
    assert len(first["losses"]) == len(data.images)
    # a new isolation ratio reuses the losses; a new LGA threshold trains again
    wider = experiments.abl_separation(
        ubtlib.configure("smoke", abl_isolation_ratio=0.5), "badnet", progress=False
    )
    assert len(calls) == 1 and wider["losses"] == first["losses"]
    assert wider["recall"] >= first["recall"]  # isolating more of the same ranking finds no fewer
    experiments.abl_separation(ubtlib.configure("smoke", abl_gamma=0.5), "badnet", progress=False)
    assert len(calls) == 2


def test_restoring_variant_reuses_the_detection_and_pulls_images_to_the_clean_models_class(
    smoke, tmp_path, monkeypatch
):
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    paper = pipeline.defended(smoke, "badnet", "ubt", progress=False)
    restored = pipeline.defended(smoke, "badnet", "ubt_restore", progress=False)
    assert paper.record["restore_classes"] is None  # the paper's UBT runs without the term
    classes = restored.record["restore_classes"]
    world = pipeline.world(smoke)
    assert len(classes) == restored.record["unlearning_pairs"] and set(classes) <= set(world.categories)
    assert restored.record["top_k"] == paper.record["top_k"]  # one detection for both
    changed = [
        n
        for n, p in restored.model.named_parameters()
        if not torch.equal(p, dict(paper.model.named_parameters())[n])
    ]
    assert changed, "the restoring term changed nothing"


def test_restoring_targets_leave_out_images_whose_class_the_unlearning_caption_names(smoke):
    clip = pipeline.pretrained(smoke, progress=False)
    data = pipeline.poisoned_data(pipeline.with_attack(smoke, "badnet"), progress=False)
    world = pipeline.world(smoke)

    def targets_for(captions, restore_to="class"):
        return ubt.restoring_targets(
            clip.model,
            clip.tokenizer,
            data,
            {"images": torch.arange(4)},
            captions,
            world.categories,
            ["a photo of a {}."],
            "cpu",
            restore_to,
        )

    _, classes, left_out = targets_for(["a photo of a banana."] * 4)
    assert left_out.tolist() == [c == "banana" for c in classes]  # only a pull to the target is left out
    named = [f"a photo of a {c}." for c in classes]
    for restore_to in ubt.RESTORE_TARGETS:
        targets, again, left_out = targets_for(named, restore_to)
        # every caption names its own class: all left out
        assert again == classes and left_out.all() and not targets.any()
    embeddings, _, left_out = targets_for(["a photo of a banana."] * 4, "clean_image")
    expected = (~left_out).float()  # unit embeddings, zero rows for the images left out
    assert embeddings.dtype == torch.float32 and torch.allclose(embeddings.norm(dim=1), expected, atol=1e-5)
