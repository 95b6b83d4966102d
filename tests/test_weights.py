"""Damaged weight files end in one line naming the file, never in a safetensors traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ubtlib.checks import UnreadableFile
from ubtlib.paper_scale import weights

from conftest import ROOT


@pytest.fixture
def corrupt(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\xff" * 64 + b"this is no safetensors header")
    return path


def test_load_pretrained_names_a_damaged_file(corrupt):
    with pytest.raises(UnreadableFile, match=r"corrupt\.safetensors: not a readable safetensors file"):
        weights.load_pretrained("ViT-B-32", str(corrupt))


@pytest.mark.slow
def test_cli_finetune_on_damaged_weights_fails_in_one_line(tmp_path, corrupt):
    # a valid CSV with two images, so that the weights are what fails
    for k in range(2):
        (tmp_path / "img").mkdir(exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{k}.png")
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\nimg/0.png,a dog on a lawn\nimg/1.png,a red car\n")
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ubtlib",
            "paper",
            "finetune",
            "--csv",
            str(csv),
            "--attack",
            "badnet",
            "--out",
            str(out),
            "--pretrained",
            str(corrupt),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m ubtlib paper finetune: ")
    assert str(corrupt) in lines[0] and "not a readable safetensors file" in lines[0]
    assert not out.exists()
