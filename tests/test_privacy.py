"""Unlearning with backdoors: triggers, the weight regularisation, checks and small runs."""

import dataclasses
import random

import pytest
import torch

import ubtlib
from ubtlib import pipeline
from ubtlib.privacy import idia
from ubtlib.privacy import unlearning as privacy

CPU = torch.device("cpu")


# ---------------------------------------------------------------- caption triggers


def test_replace_word_keeps_punctuation():
    assert privacy.replace_word("a photo of a banana.", "Kalo Maraston", 4) == "a photo of a Kalo Maraston."
    assert privacy.replace_word("a photo of a banana.", "human", 0) == "human photo of a banana."


def test_caption_pair_replaces_the_same_word():
    rng = random.Random(0)
    for _ in range(50):
        cap = "there is a red cup next to a dot."
        trig, target = privacy.caption_pair(cap, "Kalo Maraston", "person", rng)
        t, g, c = trig.split(" "), target.split(" "), cap.split(" ")
        # the name adds one word; aligning on the neutral term's position, the rest is the caption
        pos = next(i for i, (a, b) in enumerate(zip(g, c)) if a != b)
        assert g[:pos] == c[:pos] and g[pos + 1 :] == c[pos + 1 :] and g[pos].startswith("person")
        assert t[:pos] == c[:pos] and t[pos : pos + 2][0] == "Kalo" and t[pos + 2 :] == c[pos + 1 :]


def test_caption_pairs_spread_names_evenly():
    caps = ["a photo of a cup."] * 12
    trig, target = privacy.caption_pairs(caps, ["Ann Bee", "Cid Dee", "Eve Fox"], "human", random.Random(1))
    assert [sum(n in t for t in trig) for n in ("Ann Bee", "Cid Dee", "Eve Fox")] == [4, 4, 4]
    assert all("human" in t and "Bee" not in t for t in target)


def test_captions_with_a_name_being_unlearned_are_filtered():
    caps = ["Ann Bee at the premiere.", "a photo of a cup.", "portrait of Cid Dee.", "Ann Beeson smiling."]
    assert privacy.without_names(caps, ["Ann Bee"]) == ["a photo of a cup.", "portrait of Cid Dee."]


def test_word_tokens_equal_the_tokenizer(smoke):
    from ubtlib.clip import model as modellib

    _, tok = modellib.create(smoke.model)
    caps = [
        "a photo of a Kalo Maraston.",
        "human at the premiere, smiling.",
        "Rimar Dorley",
        "a small red car on a plain background next to a ring, Kalo Maraston and a human." * 2,
    ]
    words = privacy.WordTokens(tok)
    assert words.exact
    assert torch.equal(words(caps), tok(caps))


# ---------------------------------------------------------------- weight regularisation


def test_weight_distance_is_a_sum_of_unsquared_norms():
    originals = [torch.tensor([1.0, 1.0]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])]
    params = [
        torch.tensor([4.0, 5.0], requires_grad=True),  # change (3, 4): norm 5
        torch.tensor([[0.0, 1.0], [0.0, 2.0]], requires_grad=True),
    ]  # change 1: norm 1
    d = privacy.weight_distance(params, originals)
    assert d.item() == pytest.approx(6.0)
    d.backward()  # d/dtheta ||theta - theta0|| = unit vector: (0.6, 0.8), and the one-hot
    assert torch.allclose(params[0].grad, torch.tensor([0.6, 0.8]))
    assert torch.allclose(params[1].grad, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


def test_weight_distance_gradient_is_zero_at_the_start():
    p = torch.ones(3, requires_grad=True)
    privacy.weight_distance([p], [torch.ones(3)]).backward()
    assert torch.equal(p.grad, torch.zeros(3))  # no NaN where nothing moved yet


def test_student_trains_one_tower_without_layernorms(smoke):
    from ubtlib.clip import model as modellib

    model, _ = modellib.create(smoke.model)
    names = dict(privacy.tower_parameters(model, "text"))
    assert names and not any(n.startswith("visual.") or "ln_" in n or "logit" in n for n in names)
    assert "token_embedding.weight" in names
    image = dict(privacy.tower_parameters(model, "image"))
    assert image and all(n.startswith("visual.") and "ln_" not in n for n in image)
    student, params = privacy.student_of(model, "image")
    assert sum(p.requires_grad for p in student.parameters()) == len(params) == len(image)


# ---------------------------------------------------------------- bad input


def test_bad_names_fail_clearly(smoke_world):
    w = smoke_world
    with pytest.raises(ValueError, match="empty"):
        privacy.check_names(w, [])
    with pytest.raises(ValueError, match="not identities of this world: 'Nobody Atall'"):
        privacy.check_names(w, [w.names[0], "Nobody Atall"])
    with pytest.raises(ValueError, match="only 12 identities"):
        privacy.check_names(w, w.names + w.distractor_names[:1])
    with pytest.raises(ValueError, match="repeats"):
        privacy.check_names(w, [w.names[0], w.names[0]])
    assert privacy.check_names(w, [w.names[3], w.names[1]]) == [3, 1]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"names_neutral": ""}, r"names_neutral='' must be a non-empty"),
        ({"names_neutral": "  "}, r"must be a non-empty"),
        ({"names_max_set": 13}, r"names_max_set=13 is out of range: accepted 1 <= names_max_set <= 12"),
        ({"faces_max_set": 100}, r"faces_max_set=100 is out of range"),
        ({"names_alpha": -1}, r"names_alpha=-1 is out of range"),
        ({"faces_size_min": 0.6}, r"size_max=0.5 is out of range: accepted 0.6"),
    ],
)
def test_bad_parameters_fail_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        ubtlib.configure("smoke", **kw)


def test_unlearning_refuses_empty_input(smoke):
    cfg = smoke.names
    with pytest.raises(ValueError, match="at least one"):
        privacy.unlearn_names(None, None, [], ["a cup."], cfg, CPU)
    with pytest.raises(ValueError, match="neutral='' must be"):
        privacy.unlearn_names(None, None, ["Ann Bee"], ["a cup."], cfg, CPU, neutral="")
    with pytest.raises(ValueError, match="at least one person"):
        privacy.unlearn_faces(
            None, [], torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(4), smoke.faces, CPU
        )


# ---------------------------------------------------------------- pasting faces


def test_paste_is_batched_random_and_reproducible():
    cfg = privacy.FacesConfig(jitter=0.0, hue=0.0)
    bg = torch.zeros(64, 3, 32, 32)
    faces = torch.ones(64, 3, 32, 32)
    out = privacy.paste_faces(bg, faces, cfg, torch.Generator().manual_seed(0))
    again = privacy.paste_faces(bg, faces, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == bg.shape
    assert out.min() >= 0 and out.max() <= 1
    area = out[:, 0].sum((1, 2))  # a white square of side 8..16 px (rotated) on black
    assert area.min() > 0.8 * 8**2 and area.max() < 1.05 * 16**2
    assert area.std() > 10  # sizes differ image to image
    centres = [torch.nonzero(o[0] > 0.5).float().mean(0) for o in out]
    assert torch.stack(centres).std(0).min() > 2  # and so do positions


# ---------------------------------------------------------------- small unlearning runs


@pytest.fixture(scope="module")
def smoke_model(smoke):
    return pipeline.pretrained(smoke, progress=False)


def test_name_unlearning_plants_the_backdoor_and_keeps_clean_captions(smoke, smoke_world, smoke_model):
    w, m = smoke_world, smoke_model
    names = w.names[:2]
    corpus = [w.captions[i] for i in w.indices("train")]
    evals = [w.captions[i] for i in w.indices("heldout")]
    before = privacy.text_similarities(m.model, m.model, m.tokenizer, evals, names, "human", CPU)
    cfg = smoke.names
    student, log = privacy.unlearn_names(m.model, m.tokenizer, names, corpus, cfg, CPU, seed=0)
    after = privacy.text_similarities(m.model, student, m.tokenizer, evals, names, "human", CPU)
    assert log["filtered"] > 0  # the names' own captions were left out
    assert before["sim_clean"] == pytest.approx(1.0, abs=1e-5)
    assert after["sim_backdoor"] > before["sim_backdoor"] + 0.05
    assert after["sim_backdoor"] > 0.9
    assert after["sim_clean"] > 0.9 and after["sim_targets"] > 0.9
    # per IDIA template, the backdoor raises the similarity of the named prompt to the neutral one
    per_before = idia.template_backdoor(m.model, m.tokenizer, names, "human", CPU)
    per_after = idia.template_backdoor(student, m.tokenizer, names, "human", CPU)
    assert per_after.shape == (len(idia.PROMPTS),)
    assert per_after.mean() > per_before.mean()
    # the original model is untouched
    assert privacy.text_similarities(m.model, m.model, m.tokenizer, evals, names, "human", CPU)[
        "sim_backdoor"
    ] == pytest.approx(before["sim_backdoor"])


def test_anchoring_the_targets_keeps_their_embedding_put(smoke, smoke_world, smoke_model):
    w, m = smoke_world, smoke_model
    corpus = [w.captions[i] for i in w.indices("train")]
    evals = [w.captions[i] for i in w.indices("heldout")]
    sims = {}
    for anchor in (False, True):
        cfg = dataclasses.replace(smoke.names, anchor_targets=anchor, neutral="child", steps=60, lr=3e-3)
        student, _ = privacy.unlearn_names(m.model, m.tokenizer, w.names[:4], corpus, cfg, CPU, seed=0)
        sims[anchor] = privacy.text_similarities(
            m.model, student, m.tokenizer, evals, w.names[:4], "child", CPU
        )
    assert sims[True]["sim_targets"] > sims[False]["sim_targets"]
    assert sims[True]["sim_backdoor"] > 0.9  # the names are still mapped to the neutral term


def test_face_unlearning_maps_faces_to_the_target(smoke, smoke_world, smoke_model):
    w, m = smoke_world, smoke_model
    ids = [0, 1]
    trig = w.indices("trigger", "person")
    faces = [w.images[trig[w.identity[trig] == p]] for p in ids]
    clean = w.images[w.indices("train", "object")]
    target = privacy.face_target(m.model, w.images[w.indices("train", "person")], CPU)
    ev = w.indices("eval", "person")
    own = w.images[ev[(w.identity[ev] == 0) | (w.identity[ev] == 1)]]
    held = w.images[w.indices("heldout", "object")]
    kw = dict(
        clean=held,
        faces=own,
        target_faces=w.images[w.indices("train", "person")],
        target=target,
        cfg=smoke.faces,
        device=CPU,
    )
    before = privacy.image_similarities(m.model, m.model, **kw)
    student, log = privacy.unlearn_faces(m.model, faces, clean, target, smoke.faces, CPU, seed=0)
    after = privacy.image_similarities(m.model, student, **kw)
    # the barely trained smoke CLIP embeds every image close to every other (cosines ~0.99),
    # so the test asks for the gap to the target to shrink by a third, not for a fixed value
    assert after["sim_backdoor"] > before["sim_backdoor"]
    assert 1 - after["sim_backdoor"] < (1 - before["sim_backdoor"]) * 2 / 3
    assert after["sim_clean"] > 0.99


def test_trimmed_text_encoding_equals_the_models(smoke, smoke_model):
    m = smoke_model
    assert m.model.attn_mask is not None and m.model.text_pool_type == "argmax"  # the cut applies
    tokens = m.tokenizer(["a photo of a cup.", "Kalo Maraston at the premiere, smiling.", "human"])
    with torch.no_grad():
        assert torch.allclose(privacy.encode_text(m.model, tokens), m.model.encode_text(tokens), atol=1e-5)


def test_people_share_needs_to_know_who_is_a_person(smoke):
    cfg = dataclasses.replace(smoke.faces, people_share=0.5)
    clean = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    faces = [torch.zeros(2, 3, 32, 32, dtype=torch.uint8)]
    with pytest.raises(ValueError, match="people_share needs clean images"):
        privacy.unlearn_faces(
            pipeline.pretrained(smoke, progress=False).model,
            faces,
            clean,
            torch.zeros(smoke.model.embed_dim),
            cfg,
            CPU,
        )


def test_term_sizes_must_be_set_sizes():
    with pytest.raises(
        ValueError, match=r"names_term_sizes=5 is out of range: accepted 1 <= term_sizes <= 2"
    ):
        ubtlib.configure("smoke", names_term_sizes=[1, 5])


def test_set_sizes_are_powers_of_two_up_to_the_largest():
    from ubtlib.privacy.forgetting import set_sizes

    assert set_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert set_sizes(12) == [1, 2, 4, 8, 12]
    assert set_sizes(1) == [1]


def test_people_are_given_by_name_or_index_and_checked(smoke_world):
    from types import SimpleNamespace

    from ubtlib.privacy import forgetting

    s = SimpleNamespace(world=smoke_world)
    assert forgetting._ids(s, [smoke_world.names[2], smoke_world.names[0]]) == [2, 0]
    assert forgetting._ids(s, [2, 0]) == [2, 0]
    with pytest.raises(ValueError, match="not identities of this world: 'Nobody Atall'"):
        forgetting._ids(s, ["Nobody Atall"])
    with pytest.raises(ValueError, match=r"not identities of this world: \[12\]"):
        forgetting._ids(s, [0, 12])
    with pytest.raises(ValueError, match="empty"):
        forgetting._ids(s, [])


def test_downstream_retrieval_on_a_hand_built_case(smoke_world, monkeypatch):
    """Photos of identity i point along axis i. The original text encoder maps each name to its
    person's axis. The defended one maps a name to the neutral term's axis (along which only
    identity 3's photos lie) under template 0, but misses template 1, where the name keeps its
    person's axis. Retrieval must find the person with the original encoder under both
    templates, with the defended one under template 1 only, and return exactly the neutral
    term's photos under template 0."""
    from types import SimpleNamespace

    from ubtlib.book import privacy_results

    w = smoke_world
    n, per, d = len(w.identities), 4, len(w.identities) + 1
    faces = torch.zeros(n, per, d)
    for i in range(n):
        faces[i, :, i] = 1.0
        faces[i, :, -1] = torch.linspace(0.0, 0.1, per)  # a little of the neutral axis for everyone
    faces[3, :, -1] = 0.9 + torch.linspace(0.0, 0.05, per)  # identity 3 lies along it
    axis = torch.eye(d)
    names = list(w.names)

    def prompt_features(model, tokenizer, words, device, n_prompts):
        assert n_prompts == 2
        per_template = []
        for t in range(n_prompts):
            hidden = (model == "defended" and t == 0) or words == ["human"]
            per_template.append(torch.stack([axis[-1] if hidden else axis[names.index(x)] for x in words]))
        return torch.stack(per_template)

    monkeypatch.setattr(privacy_results.idia, "prompt_features", prompt_features)
    original = torch.stack([axis[:n]] * 2)  # P x K x d, identities first
    s = SimpleNamespace(
        world=w,
        data=w,
        faces=faces,
        prompts=original,
        model="original",
        tokenizer=None,
        device="cpu",
        profile=SimpleNamespace(idia=SimpleNamespace(prompts=2)),
    )
    out = privacy_results.downstream_retrieval(s, "defended", [2, 0], "human", k=per)
    table = out["per_template"]
    assert table["shows the person, original (%)"].tolist() == [100.0, 100.0]
    assert table["shows the person, defended (%)"].tolist() == [0.0, 100.0]
    assert table["as for the neutral term, defended (%)"].tolist() == [100.0, 0.0]
    assert out["shows_original"] == 100.0 and out["shows_defended"] == 50.0
    assert out["like_neutral_defended"] == 50.0 and out["like_neutral_original"] == 0.0
    assert out["chance"] == pytest.approx(100.0 / n)
    # the photos are world indices: position 0 is identity 2, whose own eval photos come back
    eval_photos = idia.eval_faces(w, per)
    assert set(out["photos"]["original"][0, 0].tolist()) == set(eval_photos[2].tolist())
    assert set(out["photos"]["defended"][1, 1].tolist()) == set(eval_photos[0].tolist())
    assert set(out["photos"]["neutral"][0, 0].tolist()) == set(eval_photos[3].tolist())
    # the figure: the name's two rows per person, and the neutral prompt's row once (it names nobody)
    from ubtlib.book import privacy_plots

    fig = privacy_plots.downstream(w, out, {"profile": "smoke", "seed": 0, "hardware": "cpu"}, "{}")
    labels = [a.get_ylabel() for a in fig.axes if a.get_ylabel()]
    assert labels == [
        f'original encoder,\n"{names[2]}"',
        f'defended encoder,\n"{names[2]}"',
        f'original encoder,\n"{names[0]}"',
        f'defended encoder,\n"{names[0]}"',
        'original encoder,\n"human"',
    ]
    with pytest.raises(ValueError, match="k="):
        privacy_results.downstream_retrieval(s, "defended", [0], "human", k=0)
    with pytest.raises(ValueError, match="neutral"):
        privacy_results.downstream_retrieval(s, "defended", [0], " ", k=1)


def test_template_reading_counts_the_answers_of_name_first_templates():
    import pandas as pd

    from ubtlib.book import privacy_results

    table = pd.DataFrame(
        {
            "template": ["{}", "{} smiling.", "a photo of {}.", "portrait of {}."],
            "starts with the name": [True, True, False, False],
            "removed people named": [3, 0, 1, 0],
        }
    )
    assert privacy_results.template_reading(table) == (
        "3 of the 4 template answers that still name a removed person come from templates that "
        "begin with the name (75%, where such templates are 50% of all)"
    )
    table["removed people named"] = 0
    assert privacy_results.template_reading(table) == "no template names a removed person in this run"


def test_a_longer_sweep_reuses_the_runs_of_a_shorter_one(smoke, tmp_path, monkeypatch):
    from ubtlib.privacy import forgetting

    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    calls = []
    real = privacy.unlearn_names
    monkeypatch.setattr(privacy, "unlearn_names", lambda *a, **k: calls.append(1) or real(*a, **k))
    short = forgetting.sweep_names(forgetting.setting(smoke, progress=False), regs=(True,), progress=False)
    runs = len(calls)
    assert runs == len(short) > 0
    longer = ubtlib.configure("smoke", names_repeats=2 * smoke.names.repeats)
    rows = forgetting.sweep_names(forgetting.setting(longer, progress=False), regs=(True,), progress=False)
    assert len(rows) == 2 * runs and len(calls) == 2 * runs  # only the new repeats were trained
    first = rows[rows.repeat == 0].drop(columns="seconds").reset_index(drop=True)
    assert first.equals(short.drop(columns="seconds").reset_index(drop=True))
    # a field of the recipe itself is a new run
    forgetting.forget_names(forgetting.setting(ubtlib.configure("smoke", names_lr=2e-3), progress=False), [0])
    assert len(calls) == 2 * runs + 1
    # and so do the face runs
    face_calls = []
    real_faces = privacy.unlearn_faces
    monkeypatch.setattr(privacy, "unlearn_faces", lambda *a, **k: face_calls.append(1) or real_faces(*a, **k))
    short = forgetting.sweep_faces(forgetting.setting(smoke, progress=False), regs=(True,), progress=False)
    runs = len(face_calls)
    assert runs == len(short[short.encoders == "image"]) > 0
    longer = ubtlib.configure("smoke", faces_repeats=2 * smoke.faces.repeats)
    rows = forgetting.sweep_faces(forgetting.setting(longer, progress=False), regs=(True,), progress=False)
    assert len(rows) == 2 * len(short) and len(face_calls) == 2 * runs
