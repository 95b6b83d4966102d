"""The identity inference attack on hand-built cases: majority vote, ties, the at-least-one rule."""

import numpy as np
import pytest
import torch

import ubtlib
from ubtlib.privacy import idia

# 3 templates x 2 identities x 4 photos; 5 candidates (identity i's own name is candidate i)
PRED = torch.tensor(
    [
        [[0, 0, 1, 2], [0, 0, 0, 1]],  # template 0: identity 0 right (2 of 4, alone); 1 wrong
        [[0, 0, 1, 1], [1, 1, 2, 2]],  # template 1: both tie for the top, right name among them
        [[3, 3, 3, 0], [4, 4, 1, 1]],  # template 2: identity 0 wrong; identity 1 ties (wrong)
    ]
)


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
    faces = eye[pred[0]]  # the photos: one-hot on their pick
    prompts = torch.stack([eye for _ in range(pred.shape[0])])
    return faces, prompts


def test_attack_end_to_end_on_embeddings():
    faces, prompts = _features(PRED[:1])
    res = idia.attack(faces, prompts, min_hits=1)
    assert res.hits.tolist() == [1, 0]
    assert res.recognised.tolist() == [True, False]
    assert res.rate == 50.0


def test_three_candidates_five_photos_a_tie_is_no_answer():
    # one identity (truth: candidate 0), 5 photos voting among 3 candidates, one template each
    votes = torch.tensor(
        [
            [[0, 0, 0, 1, 2]],  # 3 votes for the right name: a majority, right
            [[0, 0, 1, 1, 2]],  # 0 and 1 tie with 2 votes each: no answer, wrong though 0 is tied
            [[1, 1, 1, 0, 0]],  # a majority for candidate 1: wrong
            [[2, 0, 1, 2, 0]],  # 0 and 2 tie again: wrong
            [[0, 2, 1, 0, 1]],  # 0 and 1 tie: wrong
        ]
    )
    hits = idia.majority_hits(votes, torch.tensor([0]), n_candidates=3)
    assert hits.squeeze(1).tolist() == [True, False, False, False, False]


def _one_hot_case():
    """2 identities x 3 photos, 3 candidates, 3 templates whose prompts permute the candidates.

    Photos are one-hot: identity 0's are e0, e0, e1 and identity 1's are e1, e1, e2. Template t
    embeds candidate c as e[perm_t[c]], so a photo e_j votes for the candidate c with perm_t[c] = j.
      template 0, perm (0, 1, 2): votes 0,0,1 (identity 0: right) and 1,1,2 (identity 1: right)
      template 1, perm (1, 0, 2): votes 1,1,0 (wrong) and 0,0,2 (wrong)
      template 2, perm (2, 1, 0): votes 2,2,1 (wrong) and 1,1,0 (identity 1: right)
    so identity 0 is named by one template of three and identity 1 by two.
    """
    eye = torch.eye(3)
    faces = torch.stack([eye[[0, 0, 1]], eye[[1, 1, 2]]])  # N x I x d
    prompts = torch.stack([eye[list(p)] for p in ((0, 1, 2), (1, 0, 2), (2, 1, 0))])  # P x K x d
    return faces, prompts


def test_recognised_if_at_least_one_template_names_the_person():
    faces, prompts = _one_hot_case()
    assert idia.predictions(faces, prompts).tolist() == [
        [[0, 0, 1], [1, 1, 2]],
        [[1, 1, 0], [0, 0, 2]],
        [[2, 2, 1], [1, 1, 0]],
    ]
    res = idia.attack(faces, prompts, min_hits=1)
    assert res.prompt_hits.tolist() == [[True, True], [False, False], [False, True]]
    assert res.hits.tolist() == [1, 2]
    assert res.recognised.tolist() == [True, True] and res.rate == 100.0
    # requiring two templates drops identity 0; requiring all three drops both
    assert idia.attack(faces, prompts, min_hits=2).recognised.tolist() == [False, True]
    assert idia.attack(faces, prompts, min_hits=3).rate == 0.0


def test_outcome_counts():
    before = idia.IdiaResult(
        hits=np.array([3, 2, 0, 1]),
        recognised=np.array([True, True, False, True]),
        prompt_hits=np.zeros((1, 4), bool),
    )
    after = idia.IdiaResult(
        hits=np.array([0, 2, 1, 0]),
        recognised=np.array([False, True, True, False]),
        prompt_hits=np.zeros((1, 4), bool),
    )
    out = idia.outcome(before, after, [0])
    assert out["tpr"] == 0.0 and out["fnr"] == 100.0 and out["tpr_before"] == 100.0
    assert out["wrongly_unlearned"] == 1  # identity 3: recognised before, not after
    assert out["newly_recalled"] == 1  # identity 2: recognised after only
    out = idia.outcome(before, after, [0, 1])
    assert out["tpr"] == 50.0
    with pytest.raises(ValueError, match="at least one"):
        idia.outcome(before, after, [])


def test_prompts_are_21_distinct_templates():
    assert len(idia.PROMPTS) == 21 == len(set(idia.PROMPTS))
    assert all(p.count("{}") == 1 for p in idia.PROMPTS)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"idia_images": 0}, r"idia_images=0 is out of range"),
        ({"idia_prompts": 22}, r"idia_prompts=22 is out of range"),
        ({"idia_min_hits": 0}, r"idia_min_hits=0 is out of range"),
    ],
)
def test_bad_config_fails_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        ubtlib.configure("smoke", **kw)


def test_images_cannot_exceed_the_worlds_eval_faces():
    with pytest.raises(ValueError, match=r"idia_images=5 is out of range: accepted 1 <= idia_images <= 4"):
        ubtlib.configure("smoke", idia_images=5)


def test_attack_on_the_smoke_model_runs(smoke, smoke_world):
    import dataclasses

    from ubtlib import pipeline

    m = pipeline.pretrained(smoke, progress=False)
    res = idia.run(m.model, m.tokenizer, smoke_world, torch.device("cpu"), smoke.idia)
    n = len(smoke_world.identities)
    assert res.hits.shape == (n,) and res.prompt_hits.shape == (smoke.idia.prompts, n)
    assert res.prompt_hits.sum(0).tolist() == res.hits.tolist()
    # the strictest rule (every template must name the person) sees the same votes, recognises fewer
    strict = dataclasses.replace(smoke.idia, min_hits=smoke.idia.prompts)
    res_strict = idia.run(m.model, m.tokenizer, smoke_world, torch.device("cpu"), strict)
    assert res_strict.hits.tolist() == res.hits.tolist()
    assert (res_strict.recognised <= res.recognised).all()
    assert res_strict.recognised.tolist() == (res.hits == smoke.idia.prompts).tolist()


def test_template_backdoor_is_the_mean_cosine_of_names_and_the_neutral_term(monkeypatch):
    # hand-built unit embeddings for 3 templates x 2 names (and the neutral term, e0, throughout)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = torch.tensor([1.0, 1.0]) / 2**0.5
    named = torch.stack(
        [
            torch.stack([e0, e1]),  # template 0: cosines 1 and 0, mean 0.5
            torch.stack([e0, e0]),  # template 1: both 1 (the backdoor covers it)
            torch.stack([diag, e1]),
        ]
    )  # template 2: 1/sqrt(2) and 0, mean 0.3536
    plain = torch.stack([e0.view(1, 2)] * 3)

    def features(model, tokenizer, names, device, n_prompts):
        assert n_prompts == 3
        return plain if names == ["human"] else named

    monkeypatch.setattr(idia, "prompt_features", features)
    sim = idia.template_backdoor(None, None, ["Kalo Maraston", "Vinike Rentoard"], "human", "cpu", 3)
    assert sim.tolist() == pytest.approx([0.5, 1.0, 0.5 / 2**0.5])


def test_template_backdoor_on_the_smoke_model(smoke):
    from ubtlib import pipeline

    m, cpu = pipeline.pretrained(smoke, progress=False), torch.device("cpu")
    names = ["Kalo Maraston", "Vinike Rentoard"]
    sim = idia.template_backdoor(m.model, m.tokenizer, names, "human", cpu, 3)
    assert sim.shape == (3,)
    assert (sim < 1 - 1e-4).all()  # a name is not the neutral term, before any unlearning
    same = idia.template_backdoor(m.model, m.tokenizer, ["human"], "human", cpu, 3)
    assert torch.allclose(same, torch.ones(3), atol=1e-5)
