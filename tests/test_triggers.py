import math

import pytest
import torch

import ubtlib
from ubtlib.attacks import ssba
from ubtlib.attacks.triggers import (
    ATTACKS,
    SIG,
    AttackConfig,
    BadNet,
    Blended,
    WaNet,
    at_strength,
    linf,
    make_trigger,
    psnr,
)


def batch(n=6, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_badnet_changes_only_its_patch():
    x = batch()
    y = BadNet(3, "random")(x, torch.Generator().manual_seed(1))
    for i in range(len(x)):
        changed = (y[i] != x[i]).any(0).nonzero()
        rows, cols = changed[:, 0], changed[:, 1]
        # everything that changed lies in one 3 x 3 square
        assert rows.max() - rows.min() <= 2 and cols.max() - cols.min() <= 2
        assert len(changed) <= 9
    corner = BadNet(4, "corner")(x)
    assert torch.equal(corner[:, :, :28, :], x[:, :, :28, :])
    assert torch.equal(corner[:, :, :, :28], x[:, :, :, :28])


def test_badnet_fixed_pattern_is_shared_and_noise_pattern_is_per_image():
    x = torch.full((4, 3, 32, 32), 0.5)
    fixed = BadNet(3, "corner", "fixed", seed=0)(x)[:, :, -3:, -3:]
    assert torch.equal(fixed, fixed[:1].expand_as(fixed))
    assert set(fixed.unique().tolist()) <= {0.0, 1.0}
    noise = BadNet(3, "corner", "noise")(x, torch.Generator().manual_seed(0))[:, :, -3:, -3:]
    assert not torch.equal(noise[0], noise[1])


def test_badnet_positions_vary_per_image():
    y = BadNet(3, "random")(batch(16), torch.Generator().manual_seed(0))
    tops = {int((y[i] != batch(16)[i]).any(0).nonzero()[:, 0].min()) for i in range(16)}
    assert len(tops) > 3


def test_blended_is_the_convex_combination():
    x, b = batch(), Blended(32, 0.2, seed=0)
    assert torch.allclose(b(x), 0.8 * x + 0.2 * b.pattern, atol=1e-7)
    assert torch.allclose(Blended(32, 0.0, 0)(x), x)
    assert torch.allclose(Blended(32, 1.0, 0)(x), b.pattern.expand_as(x))
    assert torch.equal(Blended(32, 0.2, 0).pattern, Blended(32, 0.2, 0).pattern)  # fixed pattern


def test_sig_is_a_horizontal_sinusoid_with_the_right_period():
    x = torch.full((1, 3, 32, 32), 0.5)  # mid-grey: no clipping
    d = SIG(32, 40 / 255, frequency=4)(x) - x
    assert torch.allclose(d, d[:, :, :1, :].expand_as(d))  # constant down each column
    period = 32 // 4
    assert torch.allclose(d[..., :-period], d[..., period:], atol=1e-6)
    assert math.isclose(d.max().item(), 40 / 255, rel_tol=0.02)


def test_wanet_at_strength_zero_is_the_identity():
    x = batch()
    assert torch.allclose(WaNet(32, 4, 0.0, seed=0)(x), x, atol=1e-5)
    y = WaNet(32, 4, 0.5, seed=0)(x)
    assert not torch.allclose(y, x, atol=1e-3)
    assert torch.equal(y, WaNet(32, 4, 0.5, seed=0)(x))  # a fixed field


def test_psnr_and_linf():
    x = torch.zeros(1, 3, 4, 4)
    y = x.clone()
    y[0, 0, 0, 0] = 1.0
    assert math.isclose(psnr(x, y).item(), 10 * math.log10(48), rel_tol=1e-5)
    assert linf(x, y).item() == 255


def test_strength_scales_the_main_knob():
    cfg = AttackConfig(name="blended", blended_alpha=0.2)
    assert at_strength(cfg, 2.0, 32).blended_alpha == pytest.approx(0.4)
    assert at_strength(AttackConfig(name="badnet", badnet_size=3), 10.0, 32).badnet_size == 30


@pytest.fixture(scope="module")
def stega(smoke_world):
    """A StegaStamp-like pair trained briefly on the smoke world's images."""
    images = smoke_world.images[smoke_world.indices("train")]
    return ssba.train_stega(images, bits=8, epochs=40, psnr=27.0, device="cpu", seed=0, progress=False) + (
        images,
    )


def test_at_psnr_meets_the_budget_where_the_clamp_clips():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[:4] = x[:4].round()  # images at 0 and 1 everywhere: half of any change is clipped away
    r = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for target in (20.0, 27.0, 35.0):
        y = ssba.at_psnr(x, r, target)
        assert y.min() >= 0 and y.max() <= 1
        assert torch.allclose(psnr(x, y), torch.full((8,), target), atol=0.01)
    assert torch.equal(ssba.at_psnr(x, torch.zeros_like(r), 27.0), x)


def test_ssba_strength_moves_the_psnr_by_its_decibels(stega):
    enc, _, _, images = stega
    x = images[:16].float() / 255
    trig = ssba.SSBATrigger(enc, ssba.fixed_secret(8, 0), psnr=30.0, strength=2.0)
    assert torch.allclose(psnr(x, trig(x)), torch.full((16,), 30.0 - 20 * math.log10(2)), atol=0.02)


def test_ssba_residual_is_small_sample_specific_and_decodable(stega):
    enc, dec, log, images = stega
    secret = ssba.fixed_secret(8, 0)
    trig = ssba.SSBATrigger(enc, secret, psnr=27.0)
    x = images[:64].float() / 255
    y = trig(x)
    r = y - x
    assert torch.allclose(psnr(x, y), torch.full((64,), 27.0), atol=0.01)  # the budget, met per image
    assert not torch.allclose(r[0], r[1], atol=1e-3)  # sample-specific
    with torch.no_grad():
        bits = (dec(y) > 0).long()
    assert (bits == secret).float().mean() >= 0.9  # the decoder recovers the secret
    with torch.no_grad():
        clean_bits = (dec(x) > 0).long()
    assert (clean_bits == secret).float().mean() < (bits == secret).float().mean()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"attack_name": "trojan"}, r"attack='trojan' is not accepted: choose one of 'badnet', 'blended'"),
        (
            {"poison_count": 10**7},
            r"poison_count=10000000 is out of range: accepted 1 <= poison_count <= \d+",
        ),
        ({"poison_count": 0}, r"poison_count=0 is out of range"),
        (
            {"attack_blended_alpha": 1.2},
            r"attack_blended_alpha=1.2 is out of range: accepted 0.0 <= blended_alpha <= 1.0",
        ),
        ({"attack_blended_alpha": -0.1}, r"attack_blended_alpha=-0.1 is out of range"),
        (
            {"attack_badnet_size": 33},
            r"attack_badnet_size=33 is out of range: accepted 1 <= badnet_size <= 32",
        ),
    ],
)
def test_bad_attack_input_fails_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        ubtlib.configure("pocket", **kw)


def test_unknown_attack_in_make_trigger():
    with pytest.raises(ValueError, match="attack='x'"):
        make_trigger(AttackConfig(name="x"), 32, 0)


def test_every_attack_has_a_trigger(smoke):
    from ubtlib import pipeline

    x = batch(2)
    for a in ATTACKS:
        y = pipeline.trigger(smoke, a, progress=False)(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not torch.equal(x, y)
