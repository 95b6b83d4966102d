"""The portable numerics: the kernel settings ubtlib sets, and the pocket CLIP's layers whose
gradients do not depend on the thread count."""

import json
import os
import platform
import subprocess
import sys

import open_clip
import pytest
import torch

from ubtlib import layers, numerics
from ubtlib.clip import model as modellib
from ubtlib.pipeline import cache


def _in_fresh_python(code: str, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**{k: v for k, v in os.environ.items() if k not in numerics.PORTABLE}, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


SETTINGS = "import json, ubtlib; from ubtlib import numerics; print(json.dumps(numerics.settings()))"


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX2 kernels are x86's")
def test_importing_ubtlib_selects_the_portable_kernels():
    s = _in_fresh_python(SETTINGS)
    assert s["cpu_capability"] == "AVX2" and not s["torch_imported_before_ubtlib"]
    assert {k: s[k] for k in numerics.PORTABLE} == numerics.PORTABLE


@pytest.mark.slow
def test_an_exported_setting_wins_and_is_recorded():
    s = _in_fresh_python(SETTINGS, ATEN_CPU_CAPABILITY="default")
    assert s["ATEN_CPU_CAPABILITY"] == "default" and s["cpu_capability"] == "DEFAULT"


@pytest.mark.slow
def test_torch_imported_first_is_reported():
    s = _in_fresh_python("import torch; torch.ones(3).sum(); " + SETTINGS)
    assert s["torch_imported_before_ubtlib"]


def test_the_kernels_are_part_of_every_cache_key(monkeypatch):
    digest, desc = cache.cache_key("stage", "ubtlib.pipeline.worlds", a=1)
    assert desc["numerics"] == numerics.key()
    monkeypatch.setattr(numerics, "key", lambda: {**desc["numerics"], "cpu_capability": "AVX512"})
    assert cache.cache_key("stage", "ubtlib.pipeline.worlds", a=1)[0] != digest


def test_machine_names_the_cpu_and_torchs_libraries():
    m = numerics.machine()
    assert m["cpu"] and m["cores"] >= 1
    assert m["torch_build"]["blas"] and set(m["torch_build"]) == {"blas", "mkl", "onednn", "openmp"}


def _grads(model, images, tokens, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.zero_grad()
        out = model(images, tokens)
        open_clip.ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"]).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    finally:
        torch.set_num_threads(before)


def test_pocket_clip_layers_compute_what_open_clips_do():
    torch.manual_seed(0)
    cfg = modellib.ModelConfig()
    ours, _ = modellib.create(cfg)
    assert isinstance(ours.visual.conv1, layers.PatchEmbedding)
    assert isinstance(ours.ln_final, layers.SplitAffineLayerNorm)
    x = torch.rand(4, 3, 32, 32)
    conv = torch.nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
    conv.weight.data.copy_(ours.visual.conv1.weight)
    assert torch.allclose(ours.visual.conv1(x), conv(x), atol=1e-5)
    norm = torch.nn.LayerNorm(cfg.text_width)
    norm.weight.data.normal_(), norm.bias.data.normal_()
    ours.ln_final.load_state_dict(norm.state_dict())
    h = torch.randn(4, 7, cfg.text_width)
    assert torch.allclose(ours.ln_final(h), norm(h), atol=1e-5)


def test_pocket_clip_gradients_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    model, tokenizer = modellib.create(modellib.ModelConfig())
    images = torch.rand(128, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = tokenizer([f"a photo of a {c} thing" for c in ["red", "blue", "green", "big"] * 32])
    one, four = _grads(model, images, tokens, 1), _grads(model, images, tokens, 4)
    changed = [n for n in one if not torch.equal(one[n], four[n])]
    assert not changed, f"gradients that change with the thread count: {changed}"


@pytest.mark.parametrize("stride, padding, kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 1)])
def test_invariant_convolution_computes_what_torchs_does(stride, padding, kernel):
    torch.manual_seed(0)
    ours = layers.InvariantConv2d(4, 6, kernel, stride=stride, padding=padding)
    ref = torch.nn.Conv2d(4, 6, kernel, stride=stride, padding=padding)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 12, 12, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert torch.allclose(y, y_ref, atol=1e-5)
    g = torch.randn_like(y)
    (y * g).sum().backward(), (y_ref * g).sum().backward()
    for a, b in ((ours.weight.grad, ref.weight.grad), (ours.bias.grad, ref.bias.grad), (x.grad, x_ref.grad)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_ssba_encoder_training_does_not_depend_on_the_thread_count():
    from ubtlib.attacks.ssba import train_stega

    images = torch.randint(
        0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    before = torch.get_num_threads()
    trained = {}
    try:
        for threads in (1, 4):
            torch.set_num_threads(threads)
            enc, dec, _ = train_stega(images, 8, 2.0, 27.0, "cpu", batch_size=32, progress=False, noise=0.1)
            trained[threads] = {**enc.state_dict(), **{f"dec.{k}": v for k, v in dec.state_dict().items()}}
    finally:
        torch.set_num_threads(before)
    changed = [n for n in trained[1] if not torch.equal(trained[1][n], trained[4][n])]
    assert not changed, f"SSBA-style weights that change with the thread count: {changed}"


def test_the_mkl_branch_follows_the_cpu_maker(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX2,STRICT")
    monkeypatch.setattr(numerics, "cpu_vendor", lambda: "GenuineIntel")
    assert numerics.mkl_branch() == "AVX2"
    monkeypatch.setattr(numerics, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(numerics, "cpu_model", lambda: "AMD EPYC 9R45")
    assert numerics.mkl_branch() == "AUTO on AMD EPYC 9R45"
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # measured to differ between the makers: keyed apart
    assert numerics.mkl_branch() == "COMPATIBLE on AuthenticAMD"
    monkeypatch.setattr(numerics, "cpu_vendor", lambda: "GenuineIntel")
    assert numerics.mkl_branch() == "COMPATIBLE on GenuineIntel"
