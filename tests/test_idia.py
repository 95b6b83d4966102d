"""The identity inference attack on hand-built cases: majority vote, ties, the at-least-one rule."""
import numpy as np
import pytest
import torch

import ubtlib
from ubtlib.privacy import idia

# 3 templates x 2 identities x 4 photos; 5 candidates (identity i's own name is candidate i)
PRED = torch.tensor([
    [[0, 0, 1, 2], [0, 0, 0, 1]],   # template 0: identity 0 right (2 of 4, alone); 1 wrong
    [[0, 0, 1, 1], [1, 1, 2, 2]],   # template 1: both tie for the top, right name among them
    [[3, 3, 3, 0], [4, 4, 1, 1]],   # template 2: identity 0 wrong; identity 1 ties (wrong)
])


def test_majority_vote_and_tie_rule():
    hits = idia.majority_hits(PRED, torch.tensor([0, 1]), n_candidates=5)
    assert hits.tolist() == [[True, False], [False, False], [False, False]]


def test_a_plain_majority_over_a_tie_of_others_counts():
    # 2 votes for the right name beat 1 + 1 for two others
    hits = idia.majority_hits(torch.tensor([[[2, 2, 0, 1]]]), torch.tensor([2]), n_candidates=3)
    assert hits.item()


def _features(pred, k=5):
    """Unit embeddings under which each photo's nearest candidate is `pred` for every template."""
    eye = torch.eye(k)
    faces = eye[pred[0]]                              # the photos: one-hot on their pick
    prompts = torch.stack([eye for _ in range(pred.shape[0])])
    return faces, prompts


def test_attack_end_to_end_on_embeddings():
    faces, prompts = _features(PRED[:1])
    res = idia.attack(faces, prompts, min_hits=1)
    assert res.hits.tolist() == [1, 0]
    assert res.recognised.tolist() == [True, False]
    assert res.rate == 50.0


def test_recognised_if_at_least_one_template_names_the_person():
    # per-template predictions differ: build the prediction tensor directly and count
    hits = idia.majority_hits(PRED, torch.tensor([0, 1]), 5)
    per_identity = hits.sum(0)
    assert per_identity.tolist() == [1, 0]      # identity 0: one template of three suffices
    # requiring two templates would not recognise identity 0
    assert (per_identity >= 2).tolist() == [False, False]


def test_outcome_counts():
    before = idia.IdiaResult(hits=np.array([3, 2, 0, 1]), recognised=np.array([True, True, False, True]),
                             prompt_hits=np.zeros((1, 4), bool))
    after = idia.IdiaResult(hits=np.array([0, 2, 1, 0]), recognised=np.array([False, True, True, False]),
                            prompt_hits=np.zeros((1, 4), bool))
    out = idia.outcome(before, after, [0])
    assert out["tpr"] == 0.0 and out["fnr"] == 100.0 and out["tpr_before"] == 100.0
    assert out["wrongly_unlearned"] == 1     # identity 3: recognised before, not after
    assert out["newly_recalled"] == 1        # identity 2: recognised after only
    out = idia.outcome(before, after, [0, 1])
    assert out["tpr"] == 50.0
    with pytest.raises(ValueError, match="at least one"):
        idia.outcome(before, after, [])


def test_prompts_are_21_distinct_templates():
    assert len(idia.PROMPTS) == 21 == len(set(idia.PROMPTS))
    assert all(p.count("{}") == 1 for p in idia.PROMPTS)


@pytest.mark.parametrize("kw,match", [
    ({"idia_images": 0}, r"idia_images=0 is out of range"),
    ({"idia_prompts": 22}, r"idia_prompts=22 is out of range"),
    ({"idia_min_hits": 0}, r"idia_min_hits=0 is out of range"),
])
def test_bad_config_fails_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        ubtlib.configure("smoke", **kw)


def test_images_cannot_exceed_the_worlds_eval_faces():
    with pytest.raises(ValueError, match=r"idia_images=5 is out of range: accepted 1 <= idia_images <= 4"):
        ubtlib.configure("smoke", idia_images=5)


def test_attack_on_the_smoke_model_runs(smoke, smoke_world):
    from ubtlib import pipeline
    m = pipeline.pretrained(smoke, progress=False)
    res = idia.run(m.model, m.tokenizer, smoke_world, torch.device("cpu"), smoke.idia)
    n = len(smoke_world.identities)
    assert res.hits.shape == (n,) and res.prompt_hits.shape == (smoke.idia.prompts, n)
    assert ((res.hits >= smoke.idia.min_hits) == res.recognised).all()


def test_template_backdoor_compares_each_template_with_the_name_and_the_neutral_term(smoke):
    from ubtlib import pipeline
    from ubtlib.privacy import unlearning as privacy
    m, cpu = pipeline.pretrained(smoke, progress=False), torch.device("cpu")
    names = ["Kalo Maraston", "Vinike Rentoard"]
    sim = idia.template_backdoor(m.model, m.tokenizer, names, "human", cpu, 3)
    assert sim.shape == (3,)
    words = privacy.WordTokens(m.tokenizer)
    for p in range(3):
        named = privacy.text_features(m.model, words([idia.PROMPTS[p].format(n) for n in names]), cpu)
        plain = privacy.text_features(m.model, words([idia.PROMPTS[p].format("human")]), cpu)
        assert sim[p].item() == pytest.approx((named @ plain[0]).mean().item(), abs=1e-5)
    assert (sim < 1 - 1e-4).all()  # a name is not the neutral term, before any unlearning
    same = idia.template_backdoor(m.model, m.tokenizer, ["human"], "human", cpu, 3)
    assert torch.allclose(same, torch.ones(3), atol=1e-5)
