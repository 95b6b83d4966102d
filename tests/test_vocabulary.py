"""Training only the token-embedding rows a run uses is the same AdamW update as training the
whole table; a caption outside the rows is refused, and an evaluation during the run still
reads every row."""

import copy
import random

import pytest
import torch

from ubtlib.clip import model as modellib
from ubtlib.clip.train import TrainConfig, clip_loss, optimize
from ubtlib.clip.vocabulary import TrainedRows, trained_rows
from ubtlib.defenses.cleanclip import eda, synonym_tokens

CAPTIONS = ["a photo of a banana.", "a dog on a lawn.", "a red car parked on a street.", "a man smiling."]
UNSEEN = "a giraffe eating leaves."  # no word of it is in CAPTIONS


class Stop(Exception):
    pass


def _run(model, tokens, images, vocabulary, probe=None, steps=12, fail_at=None, unseen=True):
    """`steps` optimize steps on the batch (warm-up, then cosine, weight decay 0.1); `probe`
    tokens are encoded without gradients before each step (an evaluation during the run). Step
    `fail_at` trains on an unseen caption (`unseen`) or raises Stop."""
    cfg = TrainConfig(epochs=1, batch_size=len(tokens), lr=1e-2, warmup_steps=3, log_every=1)
    seen, done = [], [0]

    def loss_step():
        done[0] += 1
        if done[0] == fail_at:
            if not unseen:
                raise Stop
            return clip_loss(model, images, modellib.tokenize(tokenizer, [UNSEEN] * len(images)))
        if probe is not None:
            with torch.no_grad():
                seen.append(model.encode_text(probe).clone())
        return clip_loss(model, images, tokens)

    curve = optimize(model, loss_step, steps, cfg, torch.device("cpu"), progress=False, vocabulary=vocabulary)
    return curve, seen


torch.manual_seed(0)
MODEL, tokenizer = modellib.create(modellib.ModelConfig())


def _batch():
    g = torch.Generator().manual_seed(1)
    tokens = tokenizer([CAPTIONS[k % len(CAPTIONS)] for k in range(8)])
    return tokens, torch.rand(8, 3, 32, 32, generator=g)


def test_training_the_used_rows_gives_the_weights_of_training_the_whole_table():
    tokens, images = _batch()
    probe = tokenizer([UNSEEN, CAPTIONS[0]])
    whole, rows = copy.deepcopy(MODEL), copy.deepcopy(MODEL)
    embedding = rows.token_embedding
    curve_whole, seen_whole = _run(whole, tokens, images, None, probe)
    curve_rows, seen_rows = _run(rows, tokens, images, tokens, probe)
    assert rows.token_embedding is embedding  # the model's own module is back, trained
    assert [p["loss"] for p in curve_rows] == [p["loss"] for p in curve_whole]
    for a, b in zip(seen_rows, seen_whole):  # mid-run evaluations read unseen rows as they are
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    used = torch.unique(tokens)
    unused = torch.ones(len(embedding.weight), dtype=torch.bool)
    unused[used] = False
    start = MODEL.token_embedding.weight.detach()
    trained = whole.token_embedding.weight.detach()
    for name, p in whole.state_dict().items():
        q = rows.state_dict()[name]
        if name == "token_embedding.weight":
            assert torch.equal(q[used], p[used])
            assert not torch.equal(p[used], start[used])  # the used rows trained
            # unused rows got the steps' weight decay only: one product instead of one per step
            torch.testing.assert_close(q[unused], p[unused], rtol=1e-6, atol=0)
            assert (trained[unused].abs() < start[unused].abs()).float().mean() > 0.99
        else:
            assert torch.equal(q, p), name


def test_a_caption_outside_the_rows_is_refused_and_the_embedding_keeps_what_was_trained():
    tokens, images = _batch()
    model = copy.deepcopy(MODEL)
    embedding = model.token_embedding
    with pytest.raises(ValueError, match=r"token ids \[.*\] are not among the \d+ this training run"):
        _run(model, tokens, images, tokens, fail_at=4)
    assert model.token_embedding is embedding
    reference = copy.deepcopy(MODEL)
    with pytest.raises(Stop):
        _run(reference, tokens, images, None, fail_at=4, unseen=False)
    # the three steps taken before the refusal are in the model's own embedding
    torch.testing.assert_close(embedding.weight, reference.token_embedding.weight, rtol=1e-6, atol=0)


def test_a_vocabulary_outside_the_embedding_is_refused_before_training():
    tokens, images = _batch()
    model = copy.deepcopy(MODEL)
    with pytest.raises(ValueError, match=r"from 0 to 49408: accepted 0 to 49407"):
        _run(model, tokens, images, [tokens, torch.tensor([49408])])
    assert type(model.token_embedding) is torch.nn.Embedding
    assert torch.equal(model.token_embedding.weight, MODEL.token_embedding.weight)


def test_a_frozen_embedding_or_no_vocabulary_changes_nothing():
    model = copy.deepcopy(MODEL)
    with trained_rows(model, None) as rows:
        assert rows is None and type(model.token_embedding) is torch.nn.Embedding
    model.token_embedding.weight.requires_grad_(False)
    with trained_rows(model, torch.tensor([1, 2])) as rows:
        assert rows is None and type(model.token_embedding) is torch.nn.Embedding
    model.token_embedding.weight.requires_grad_(True)
    with trained_rows(model, torch.tensor([5, 1, 5])) as rows:
        assert isinstance(model.token_embedding, TrainedRows) and rows.used.tolist() == [1, 5]
        assert rows.weight.shape == (2, model.token_embedding.full.shape[1])


def test_cleanclips_augmented_captions_stay_in_the_vocabulary_it_trains(smoke_world):
    captions = list(dict.fromkeys(smoke_world.captions))
    vocabulary = set(torch.cat([tokenizer(captions), synonym_tokens(tokenizer)]).unique().tolist())
    rng = random.Random(0)
    augmented = [eda(c, rng, 0.3) for c in captions for _ in range(5)]
    assert any(a not in captions for a in augmented)
    assert set(tokenizer(augmented).unique().tolist()) <= vocabulary
