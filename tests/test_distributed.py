"""Paper-scale training over several processes: torchrun with gloo on the CPU, a tiny open_clip
model and a CSV the tests write, against one process with the same global batch."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from ubtlib.checks import read_tensors
from ubtlib.clip.distributed import Ranks, SharedOrder

# the tiny paper-scale run both ways (argv: base weights, CSV, out, the model's config as JSON):
# 8 pairs, global batch 4, 6 steps, a loss point per step
DRIVER = """
import dataclasses, json, sys
import ubtlib
from ubtlib.clip import model as modellib
from ubtlib.clip.model import ModelConfig
from ubtlib.paper_scale import runs

name = modellib.register(ModelConfig(**json.loads(sys.argv[4])))
prof = ubtlib.configure("paper", device="cpu", finetune_batch_size=4, finetune_epochs=3,
                        finetune_log_every=1, finetune_lr=1e-3, finetune_warmup_steps=1, poison_count=2)
prof = dataclasses.replace(prof, paper_model=name, paper_pretrained=sys.argv[1])
runs.finetune_run(prof, sys.argv[2], "blended", sys.argv[3])
"""


# the paper-scale defenses both ways (argv: defense, base weights, CSV, out, the model's config):
# 16 pairs, 4 of them poisoned; every batch splits over 2 processes
DEFEND = """
import dataclasses, json, sys
import ubtlib
from ubtlib.clip import model as modellib
from ubtlib.clip.model import ModelConfig
from ubtlib.paper_scale import runs

name = modellib.register(ModelConfig(**json.loads(sys.argv[5])))
prof = ubtlib.configure("paper", device="cpu", poison_count=4, ubt_susp_fraction=0.5, ubt_top_k=4,
                        ubt_overfit_batch_size=4, ubt_overfit_epochs=2, ubt_overfit_lr=1e-3,
                        ubt_unlearn_batch_size=2, ubt_unlearn_epochs=2, ubt_unlearn_lr=1e-3,
                        cleanclip_clean_pairs=8, cleanclip_batch_size=4, cleanclip_epochs=3,
                        cleanclip_lr=1e-3, cleanclip_warmup_steps=1)
prof = dataclasses.replace(prof, paper_model=name, paper_pretrained=sys.argv[2])
runs.templates = lambda: ["a photo of a {}."]
runs.defend_run(prof, sys.argv[1], sys.argv[2], sys.argv[3], "blended", sys.argv[4], clean_csv=sys.argv[3])
"""


def _run(args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def torchrun(n: int, script, *args, cwd):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                 str(script), *map(str, args)], cwd)  # fmt: skip


def test_every_rank_draws_its_share_of_the_same_global_batches():
    one = list(SharedOrder(10, 4, seed=3))
    halves = [list(SharedOrder(10, 4, seed=3, ranks=Ranks(r, 2))) for r in (0, 1)]
    assert len(one) == 2 and all(len(b) == 4 for b in one)  # the ragged end is dropped
    assert [a + b for a, b in zip(*halves)] == one
    order = SharedOrder(10, 4, seed=3)
    assert list(order) == one and list(order) != one  # a new permutation each epoch, seeded
    with pytest.raises(ValueError, match="batch_size=6 does not split over 4 processes"):
        SharedOrder(10, 6, seed=0, ranks=Ranks(0, 4))
    with pytest.raises(
        ValueError, match="the 3 pairs, fewer than batch_size=4, make one batch that does not split"
    ):
        SharedOrder(3, 4, seed=0, ranks=Ranks(0, 2))


def test_only_training_stages_run_under_torchrun_and_their_batches_are_checked_first(tmp_path, monkeypatch):
    from ubtlib.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="paper evaluate runs in one process, not under torchrun"):
        main(["paper", "evaluate", "--imagenet", str(tmp_path)])
    monkeypatch.setattr("ubtlib.paper_scale.runs.check_model", lambda profile, weights=None: 32)
    with pytest.raises(SystemExit, match="defense='oracle' runs in one process, not under torchrun"):
        main(["paper", "defend", "--defense", "oracle", "--weights", "w.safetensors", "--csv", "x.csv",
              "--attack", "badnet", "--out", "o.safetensors"])  # fmt: skip
    monkeypatch.setattr("ubtlib.clip.distributed.start", lambda device: (Ranks(0, 4), torch.device("cpu")))
    monkeypatch.setattr("ubtlib.paper_scale.runs.caption_pairs", lambda csv, size: None)
    loaded = []
    monkeypatch.setattr("ubtlib.paper_scale.runs.load_model", lambda *a: loaded.append(a))
    with pytest.raises(SystemExit, match="finetune_batch_size=6 does not split over 4 processes"):
        main(["paper", "finetune", "--csv", "x.csv", "--attack", "badnet", "--out", "o.safetensors",
              "-p", "finetune_batch_size", "6"])  # fmt: skip
    with pytest.raises(SystemExit, match="ubt_unlearn_batch_size=6 does not split over 4 processes"):
        main(["paper", "defend", "--defense", "ubt", "--weights", "w.safetensors", "--csv", "x.csv",
              "--attack", "badnet", "--out", "o.safetensors",
              "-p", "ubt_unlearn_batch_size", "6"])  # fmt: skip
    with pytest.raises(SystemExit, match="cleanclip_batch_size=6 does not split over 4 processes"):
        main(["paper", "defend", "--defense", "cleanclip", "--weights", "w.safetensors", "--clean-csv",
              "x.csv", "--out", "o.safetensors", "-p", "cleanclip_batch_size", "6"])  # fmt: skip
    assert not loaded  # before the model is loaded


@pytest.mark.slow
def test_two_gloo_processes_train_as_one(tmp_path):
    import dataclasses

    from test_paper_scale import TINY, caption_csv

    from ubtlib.clip import model as modellib
    from ubtlib.paper_scale import weights

    torch.manual_seed(0)
    model, _ = weights.random_model(modellib.register(TINY))
    modellib.save(model, tmp_path / "base.safetensors")
    csv = caption_csv(tmp_path, [f"img/{k}.png,a photo number {k}" for k in range(8)], header="image,caption")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    base = tmp_path / "base.safetensors"
    tiny = json.dumps(dataclasses.asdict(TINY))
    single = _run([sys.executable, str(script), base, csv, tmp_path / "one.safetensors", tiny], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun(2, script, base, csv, tmp_path / "two.safetensors", tiny, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (read_tensors(tmp_path / f"{k}.safetensors") for k in ("one", "two"))
    weight_gap, key_bias = _weight_gaps(one, two)
    assert key_bias <= 6 * 1e-3  # at most lr per step
    curves = [json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two")]
    losses = [np.array([p["loss"] for p in c["curve"]]) for c in curves]
    assert len(losses[0]) == 6 and curves[1]["provenance"]["processes"] == 2
    assert curves[0]["poisoned_rows"] == curves[1]["poisoned_rows"]
    loss_gap = np.abs(losses[0] - losses[1]).max()
    print(f"max |weight| gap {weight_gap:.1e} (key biases {key_bias:.1e}), |loss| {loss_gap:.1e}")
    assert weight_gap <= 1e-5 and loss_gap <= 1e-5
    assert not (tmp_path / "two.ssba-encoder.safetensors").exists()


def _weight_gaps(one: dict, two: dict) -> tuple:
    """(largest |gap| over the weights but attention's key biases, largest over those)."""
    gaps = {k: (one[k] - two[k]).abs() for k in one}
    # attention's key biases shift every logit of a softmax row alike: the loss does not depend on
    # them, their gradient is rounding noise in both runs, and Adam scales that noise to the lr
    key_bias = max(g.view(3, -1)[1].max().item() for k, g in gaps.items() if k.endswith("attn.in_proj_bias"))
    for k, g in gaps.items():
        if k.endswith("attn.in_proj_bias"):
            g.view(3, -1)[1] = 0
    return max(g.max().item() for g in gaps.values()), key_bias


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["ubt", "cleanclip"])
def test_two_gloo_processes_defend_as_one(tmp_path, defense):
    import dataclasses

    from test_paper_scale import TINY, caption_csv

    from ubtlib.clip import model as modellib
    from ubtlib.paper_scale import weights

    torch.manual_seed(0)
    model, _ = weights.random_model(modellib.register(TINY))
    base = tmp_path / "base.safetensors"
    modellib.save(model, base)
    rows = [f"img/{k}.png,a photo number {k},{int(k % 4 == 1)}" for k in range(16)]
    csv = caption_csv(tmp_path, rows)
    script = tmp_path / "defend.py"
    script.write_text(textwrap.dedent(DEFEND))
    tiny = json.dumps(dataclasses.asdict(TINY))
    single = _run(
        [sys.executable, str(script), defense, base, csv, tmp_path / "one.safetensors", tiny], tmp_path
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun(2, script, defense, base, csv, tmp_path / "two.safetensors", tiny, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    start, one, two = (read_tensors(tmp_path / f"{k}.safetensors") for k in ("base", "one", "two"))
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    weight_gap, key_bias = _weight_gaps(one, two)
    records = [json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two")]
    assert records[1]["provenance"]["processes"] == 2
    if defense == "ubt":  # the same split and detection on every rank
        assert records[0]["top_k"] == records[1]["top_k"] and records[0]["d_susp"] == 8
    print(
        f"{defense}: weights moved up to {moved:.1e}; 1 vs 2 processes {weight_gap:.1e} "
        f"(key biases {key_bias:.1e})"
    )
    assert moved > 1e-3 and weight_gap <= 1e-5


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            """
            import ubtlib
            import torch.distributed as dist
            from ubtlib.clip import distributed

            ranks, _ = distributed.start("cpu")
            if ranks.rank == 1:
                raise ValueError("img/7.png (row 8) cannot be decoded")
            dist.barrier()  # rank 0 waits here for a rank that is gone
            """
        )
    )
    start = time.perf_counter()
    job = torchrun(2, script, cwd=tmp_path)
    assert job.returncode != 0 and time.perf_counter() - start < 60
    assert "ValueError: img/7.png (row 8) cannot be decoded" in job.stderr
