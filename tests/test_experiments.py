import dataclasses
import math
import types

import pytest
import torch

from ubtlib.book import experiments


def test_probe_accuracy_is_chance_for_no_change_and_perfect_for_a_fixed_offset():
    clean = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    # a probe sees the two versions of each test image alike: one right, one wrong
    assert experiments.probe_accuracy(clean, clean.clone()) == 50.0
    offset = torch.zeros(16)
    offset[3] = 10.0  # one feature moved by ten standard deviations, for every image: separable
    assert experiments.probe_accuracy(clean, clean + offset) == 100.0
    # moved by two: the best threshold (at one) is right for Phi(1) = 84 % of images
    offset[3] = 2.0
    assert 76.0 < experiments.probe_accuracy(clean, clean + offset) < 92.0


def test_probe_accuracy_is_measured_on_images_it_did_not_fit():
    # unrelated noise as the "triggered" version: a probe can fit its training half (64
    # features, 100 training images per class) but must fall to chance on the other half
    g = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(200, 64, generator=g), torch.randn(200, 64, generator=g)
    assert 38.0 < experiments.probe_accuracy(clean, noise) < 62.0


def test_probe_accuracy_rejects_mismatched_features():
    with pytest.raises(ValueError, match="two equal"):
        experiments.probe_accuracy(torch.zeros(10, 4), torch.zeros(10, 5))


def test_trigger_footprint_on_hand_built_features(smoke, monkeypatch):
    """Features built so that every number has a written-out answer.

    Clean image k is the one-hot e_k in n + 2 dimensions: any two clean images are sqrt(2)
    apart, so `shift` is a change's length over sqrt(2). The "triggers" (named by the attack)
    move the features as follows:
      badnet:  every image by 10 * e_n            -> probe 100, shift 10/sqrt(2), consistency 1
      blended: not at all                         -> probe 50 (chance), shift 0, consistency 0
      sig:     even images by 10 * e_n, odd ones by 10 * e_(n+1), two orthogonal moves
               -> probe 100, shift 10/sqrt(2), consistency cos(e_n, (e_n + e_(n+1))/2) = 1/sqrt(2)
    """
    from ubtlib import pipeline
    from ubtlib.evaluation import zeroshot as evaluate

    def encode(model, images, device, image_hook=None, **kw):
        n = len(images)
        assert n % 2 == 0
        x = torch.eye(n, n + 2)
        if image_hook == "badnet":
            x[:, n] += 10.0
        elif image_hook == "sig":
            x[0::2, n] += 10.0
            x[1::2, n + 1] += 10.0
        return x

    monkeypatch.setattr(pipeline, "pretrained", lambda profile, **kw: types.SimpleNamespace(model=None))
    monkeypatch.setattr(pipeline, "trigger", lambda profile, attack: attack)
    monkeypatch.setattr(experiments, "triggered_hook", lambda trigger, seed: trigger)
    monkeypatch.setattr(evaluate, "encode_images", encode)
    out = experiments.trigger_footprint(smoke, ("badnet", "blended", "sig"), n_images=64)
    assert list(out) == ["badnet", "blended", "sig"]
    assert out["badnet"] == pytest.approx({"probe": 100.0, "shift": 10 / math.sqrt(2), "consistency": 1.0})
    assert out["blended"] == pytest.approx({"probe": 50.0, "shift": 0.0, "consistency": 0.0})
    assert out["sig"] == pytest.approx(
        {"probe": 100.0, "shift": 10 / math.sqrt(2), "consistency": 1 / math.sqrt(2)}
    )


def test_poison_fit_scores_the_models_own_poisoned_objects(smoke, monkeypatch):
    import numpy as np

    from ubtlib import pipeline
    from ubtlib.evaluation import zeroshot as evaluate

    w = pipeline.world(smoke, progress=False)
    data = pipeline.poisoned_data(smoke, "badnet", progress=False)
    train = w.indices("train")
    poisoned_objects = data.is_backdoor & (w.kind[train] == "object")
    seen = {}

    def encode(model, images, device, image_hook=None, **kw):
        seen["images"] = images
        x = image_hook(images.float() / 255, torch.arange(len(images)))  # the trigger is applied
        seen["triggered"] = bool((x != images.float() / 255).any())
        # every other image lands on the target (column 0 of an identity classifier), the rest on class 1
        out = torch.zeros(len(images), len(w.categories))
        out[torch.arange(len(images)), torch.arange(len(images)) % 2] = 1.0
        return out

    monkeypatch.setattr(evaluate, "encode_images", encode)
    monkeypatch.setattr(evaluate, "classifier", lambda *a, **k: torch.eye(len(w.categories)))
    fit = experiments.poison_fit(smoke, ("badnet",), progress=False)["badnet"]
    assert len(seen["images"]) == poisoned_objects.sum() and seen["triggered"]
    assert torch.equal(seen["images"], data.images[np.flatnonzero(poisoned_objects)])
    assert fit == pytest.approx(100 * np.mean(np.arange(poisoned_objects.sum()) % 2 == 0))


def test_ablations_repeat_only_the_fields_asked_over_the_seeds(smoke, monkeypatch):
    calls = []
    monkeypatch.setattr(
        experiments,
        "defense_row",
        lambda prof, attack, defense, progress=True: (
            calls.append((prof.seed, defense)) or {"ca": 1.0, "asr": 0.0}
        ),
    )
    grid = {"top_k": [5, 10], "caption_form": ["tokens", "template"], "restore_weight": [1.0]}
    out = experiments.ablations(
        smoke, ["badnet"], grid, seeds=[0, 1, 2], over_seeds={"caption_form", "restore_weight"}
    )
    assert [r["seed"] for r in out[("badnet", "top_k")]] == [smoke.seed, smoke.seed]
    assert sorted({r["seed"] for r in out[("badnet", "caption_form")]}) == [0, 1, 2]
    assert {r["defense"] for r in out[("badnet", "restore_weight")]} == {"ubt_restore"}
    assert len(calls) == 2 + 6 + 3


def test_a_models_evaluation_is_computed_once_and_read_by_every_chapter(smoke, monkeypatch):
    from ubtlib import pipeline
    from ubtlib.attacks.poison import triggered_hook
    from ubtlib.evaluation.robustness import backdoor_metrics
    from ubtlib.pipeline import evaluating

    # another description: new evaluation entries (the key is the whole profile), the same models
    prof = dataclasses.replace(smoke, description="a profile no other test evaluates")
    calls = []
    monkeypatch.setattr(
        evaluating, "backdoor_metrics", lambda *a, **k: calls.append(1) or backdoor_metrics(*a, **k)
    )
    row = experiments.defense_row(prof, "badnet", "none", progress=False)
    assert experiments.defense_row(prof, "badnet", "none", progress=False) == row
    no_defense = experiments.no_defense(prof, ["badnet"], progress=False)["badnet"]
    assert len(calls) == 1 and {k: no_defense[k] for k in ("ca", "asr", "ra")} == {
        k: row[k] for k in ("ca", "asr", "ra")
    }
    base = experiments.base_rates(prof, ["badnet"])["badnet"]
    assert experiments.pretrained_backdoor_metrics(prof, "badnet") == base and len(calls) == 2
    # what the entry holds is what evaluating the model itself gives
    p = pipeline.with_attack(prof, "badnet")
    m = pipeline.poisoned(p, progress=False)
    hook = triggered_hook(pipeline.trigger(p), p.seed)
    direct = backdoor_metrics(m.model, m.tokenizer, pipeline.world(p), hook, p.poison.target, "cpu")
    assert {k: direct[k] for k in ("ca", "asr", "ra")} == {k: row[k] for k in ("ca", "asr", "ra")}
    assert row["seconds"] == 0.0 and no_defense["finetune_seconds"] == m.record["seconds"]
    with pytest.raises(ValueError, match="model='clean'.*'pretrained', 'none', 'cleanclip'"):
        pipeline.evaluated(p, "clean")


def test_redirect_anatomy_reads_the_same_metrics_as_the_table_from_one_encoding(smoke, monkeypatch):
    from ubtlib.evaluation import robustness

    calls = []
    encode = robustness.encode_images
    monkeypatch.setattr(robustness, "encode_images", lambda *a, **k: calls.append(1) or encode(*a, **k))
    anatomy = experiments.redirect_anatomy(smoke, "badnet", ("none", "ubt"))
    assert len(calls) == 4  # clean and triggered, once per model
    for d in ("none", "ubt"):
        row = experiments.defense_row(smoke, "badnet", d, progress=False)
        assert {k: anatomy[d][k] for k in ("ca", "asr", "ra")} == {k: row[k] for k in ("ca", "asr", "ra")}
        assert 0 < sum(anatomy[d]["nearest"].values()) <= 100.0 + 1e-9
        assert -1.0 <= anatomy[d]["cos_to_clean"] <= 1.0


def test_kernel_spread_skips_a_setting_the_cpu_cannot_run(smoke, tmp_path, monkeypatch):
    import signal
    import subprocess

    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path))
    settings = (
        ("book kernels, 1 thread", {}, 1, 0),
        ("AVX-512 kernels", {"ATEN_CPU_CAPABILITY": "avx512"}, 1, 0),
    )
    monkeypatch.setattr(experiments, "KERNEL_SETTINGS", settings)
    probe = '{"top1": 40.0, "weights": "ab", "cpu_capability": "AVX2", "mkl_branch": "AUTO", "seconds": 1.0}'

    def fake_run(argv, env, **kw):
        died = env.get("ATEN_CPU_CAPABILITY") == "avx512"
        return subprocess.CompletedProcess(
            argv, -signal.SIGILL if died else 0, "" if died else probe + "\n", ""
        )

    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = experiments.kernel_spread(smoke, epochs=0.1, progress=False)
    assert rows[0]["skipped"] is None and rows[0]["top1"] == 40.0
    assert rows[1]["setting"] == "AVX-512 kernels" and "illegal instruction" in rows[1]["skipped"]

    # any other failure, and a failure of the book's own kernels, stops the build with the probe's error
    monkeypatch.setenv("UBT_CACHE_DIR", str(tmp_path / "other"))
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda argv, env, **kw: subprocess.CompletedProcess(argv, -signal.SIGILL, "", "boom"),
    )
    with pytest.raises(RuntimeError, match="kernel probe 'book kernels, 1 thread' failed"):
        experiments.kernel_spread(smoke, epochs=0.1, progress=False)


def test_unlearning_curve_is_a_cached_stage_of_the_paper_variant(smoke, monkeypatch):
    from ubtlib.pipeline import curves

    runs = []

    def fake_run_ubt(model, clean_model, data, tokenizer, cfg, device, token_level, **kw):
        runs.append((cfg.restore_weight, token_level))
        for step in range(3):
            kw["on_step"](model, step)

    monkeypatch.setattr(curves, "run_ubt", fake_run_ubt)
    restoring = dataclasses.replace(smoke, ubt=dataclasses.replace(smoke.ubt, restore_weight=2.0))
    points = experiments.unlearning_curve(restoring, "badnet", token_level=False)
    assert [p["step"] for p in points] == [0, 1, 2] and {"ca", "asr", "ra"} <= set(points[0])
    assert runs == [(0.0, False)]  # the paper's variant, without the restoring term
    assert experiments.unlearning_curve(smoke, "badnet", token_level=False) == points  # one entry for both
    assert runs == [(0.0, False)]  # read back, not run again
