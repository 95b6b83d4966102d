import torch
import torch.nn.functional as F

from ubtlib import pipeline
from ubtlib.clip import model as modellib
from ubtlib.clip import train
from ubtlib.evaluation import zeroshot as evaluate
from ubtlib.world.pocket import object_vocabulary


def test_topk_accuracy_on_a_hand_built_case():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4], [0.2, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 2, 0])
    acc = evaluate.topk_accuracy(logits, labels, ks=(1, 2))
    assert acc["top1"] == 25.0  # only row 0
    assert acc["top2"] == 75.0  # rows 0, 1 (0.3 is second), 2 (0.4 is second); not row 3


def test_pocket_templates_are_in_vocabulary():
    tmpl = evaluate.pocket_templates(object_vocabulary())
    assert "a photo of a {}." in tmpl and len(tmpl) >= 10
    assert not any("sculpture" in t or "origami" in t for t in tmpl)


def test_classifier_is_the_normalised_template_mean(smoke):
    m, tok = modellib.create(smoke.model)
    w = evaluate.classifier(m, tok, ["banana", "apple"], ["a photo of a {}.", "a {}."], "cpu")
    assert w.shape == (smoke.model.embed_dim, 2)
    by_hand = F.normalize(
        evaluate.encode_texts(m, tok, ["a photo of a banana.", "a banana."], "cpu").mean(0), dim=-1
    )
    assert torch.allclose(w[:, 0], by_hand, atol=1e-5)


def test_zero_shot_and_name_retrieval_on_a_tiny_model(smoke, smoke_world):
    clip = pipeline.pretrained(smoke, progress=False)
    zs = evaluate.zero_shot(clip.model, clip.tokenizer, smoke_world, "cpu")
    assert 0 <= zs["top1"] <= zs["top5"] <= 100
    assert len(zs["pred"]) == len(smoke_world.indices("heldout", "object"))
    names = evaluate.name_retrieval(clip.model, clip.tokenizer, smoke_world, "cpu")
    assert names["n_names"] == smoke.world.n_identities and 0 <= names["top1"] <= names["top5"]


def test_training_learns_a_separable_toy_task():
    """Noisy red vs blue squares with varied captions: ClipLoss must reach perfect zero-shot.

    (Identical images with identical captions make a degenerate batch that stays collapsed;
    real data never looks like that, so the toy has per-image noise and varied wording.)
    """
    torch.manual_seed(0)
    cfg = modellib.ModelConfig(
        width=32, layers=1, text_width=32, text_layers=1, head_width=32, embed_dim=16, context_length=16
    )
    m, tok = modellib.create(cfg)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 3, 32, 32, generator=g) * 60).to(torch.uint8)
    images[:32, 0] += 190  # red
    images[32:, 2] += 190  # blue
    openings = ["a photo of", "look at", "here is", "my", "the", "an image of"]
    captions = [f"{openings[i % 6]} a {'red' if i < 32 else 'blue'} square number {i}." for i in range(64)]
    curve = train.train_clip(
        m,
        images,
        tok(captions),
        train.TrainConfig(epochs=40, batch_size=16, lr=2e-3, warmup_steps=5, log_every=20),
        torch.device("cpu"),
        progress=False,
    )
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.3
    w = evaluate.classifier(m, tok, ["red", "blue"], ["a photo of a {} square."], "cpu")
    logits = evaluate.encode_images(m, images, "cpu") @ w
    labels = torch.tensor([0] * 32 + [1] * 32)
    assert evaluate.topk_accuracy(logits, labels, ks=(1,))["top1"] == 100.0


def test_same_seed_same_model(smoke, tmp_path, monkeypatch):
    """Pre-training twice from scratch (two empty caches) gives identical weights."""
    runs = []
    for name in ("a", "b"):
        monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path / name))
        runs.append(pipeline.pretrained(smoke, progress=False))
    assert [p["loss"] for p in runs[0].record["curve"]] == [p["loss"] for p in runs[1].record["curve"]]
    for (k, va), (_, vb) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items()):
        assert torch.equal(va, vb), k


def test_a_second_run_reuses_the_cached_model(smoke):
    a = pipeline.pretrained(smoke, progress=False)
    b = pipeline.pretrained(smoke, progress=False)
    assert a.record == b.record  # record.json (with its timing) came back from the cache
