"""The pooled-token towers compute open_clip's features, gradients and training to float
rounding, and leave architectures they do not cover alone."""

import copy

import open_clip
import pytest
import torch

from ubtlib.clip import model as modellib
from ubtlib.clip import pooled
from ubtlib.clip.train import adamw
from ubtlib.defenses import ubt

CAPTIONS = [
    "a photo of a banana.",
    "a dog.",
    "a small red car parked on a street next to a large grey building in the rain at night with a dog",
    "",
]


def _batch(tokenizer, n=8, size=32):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    tokens = tokenizer([CAPTIONS[k % len(CAPTIONS)] for k in range(n)])
    return images, tokens


def _pair():
    """An open_clip pocket CLIP and a copy with the pooled-token towers (same weights)."""
    torch.manual_seed(0)
    fast, tokenizer = modellib.create(modellib.ModelConfig())
    plain = pooled.open_clip_forwards(copy.deepcopy(fast))
    assert type(plain) is open_clip.CLIP and type(plain.visual) is open_clip.transformer.VisionTransformer
    return plain, fast, tokenizer


def test_the_pocket_clip_skips_unread_tokens_and_a_caption_at_full_length_still_fits():
    plain, fast, tokenizer = _pair()
    assert type(fast) is pooled.PooledTextCLIP and type(fast.visual) is pooled.PooledVisionTransformer
    images, tokens = _batch(tokenizer)
    assert tokens[2].argmax() == tokens.shape[1] - 1  # the long caption is cut: its end token is last
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(fast, mode)()
        with torch.no_grad():
            a, b = plain(images, tokens), fast(images, tokens)
            short = fast.encode_text(tokens[:2])  # two short captions: 8 positions of 24 computed
        for k in ("image_features", "text_features"):
            assert a[k].shape == b[k].shape
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(short, plain.encode_text(tokens[:2]).detach(), rtol=1e-5, atol=1e-5)


def test_gradients_and_training_steps_match_open_clips_forward():
    plain, fast, tokenizer = _pair()
    images, tokens = _batch(tokenizer)
    loss_fn = open_clip.ClipLoss()
    curves = {}
    for name, model in (("plain", plain), ("fast", fast)):
        model.train()
        opt = adamw(model, 1e-3, 0.1)
        curves[name] = []
        for _ in range(5):
            out = model(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not curves[name]:
                grads = {n: p.grad.clone() for n, p in model.named_parameters()}
                curves[name + " grads"] = grads
            opt.step()
            curves[name].append(loss.item())
    for n, g in curves["plain grads"].items():
        torch.testing.assert_close(curves["fast grads"][n], g, rtol=1e-4, atol=1e-6, msg=n)
    assert max(abs(a - b) for a, b in zip(curves["plain"], curves["fast"])) < 1e-5
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        if n.endswith("attn.in_proj_bias"):
            # the key bias adds the same score to every key of a query, so softmax removes it and
            # its gradient is rounding noise, which Adam divides by its own size; drop it
            d = len(p) // 3
            p, q = torch.cat([p[:d], p[2 * d :]]), torch.cat([q[:d], q[2 * d :]])
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5, msg=n)


def test_every_token_restores_open_clips_forward_for_token_relevance():
    plain, fast, tokenizer = _pair()
    images, tokens = _batch(tokenizer)
    plain.eval(), fast.eval()
    fast.transformer.every_token = True
    with torch.no_grad():
        assert torch.equal(fast.encode_text(tokens), plain.encode_text(tokens))
    fast.transformer.every_token = False
    with ubt.attention_probabilities(fast.transformer) as probs, torch.no_grad():
        fast.encode_text(tokens)
    assert [p.shape[-2:] for p in probs] == [(tokens.shape[1],) * 2] * len(fast.transformer.resblocks)
    assert not fast.transformer.every_token  # and off again afterwards
    r = ubt.token_relevance(fast, (images * 255).to(torch.uint8), tokens, torch.arange(4), "cpu")
    assert r.shape == (4, tokens.shape[1])


@pytest.mark.parametrize(
    "vision, text",
    [
        ({"pool_type": "avg"}, {}),  # mean of the patch tokens: every token is read
        ({"attentional_pool": True}, {}),
        ({}, {"pool_type": "last"}),
    ],
)
def test_architectures_whose_pooling_reads_other_tokens_keep_open_clips_forward(vision, text):
    vision_cfg = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, **vision}
    text_cfg = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, **text}
    model = pooled.install(open_clip.CLIP(32, vision_cfg, text_cfg))
    assert (type(model.visual) is pooled.PooledVisionTransformer) == (not vision)
    assert (type(model) is pooled.PooledTextCLIP) == (not text)
