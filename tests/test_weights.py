"""Damaged weight files end in one line naming the file, never in a safetensors traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
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


# ---------------------------------------------------------------- the paper-scale segmentation oracle


@pytest.fixture(scope="module")
def lraspp_files(tmp_path_factory):
    """A randomly initialised torchvision LR-ASPP (the smallest of `SEGMENTERS`), saved as
    safetensors and as a plain torch state dict, and a pickle holding a whole module."""
    from safetensors.torch import save_file
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    folder = tmp_path_factory.mktemp("segmenter")
    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "lraspp.safetensors"))
    torch.save(state, folder / "lraspp.pth")
    torch.save(net, folder / "whole_module.pth")  # a full pickle: must never be unpickled
    return folder, net


def test_a_torchvision_segmenter_loads_from_safetensors_and_a_state_dict(lraspp_files):
    from ubtlib.defenses.segmenter import segment, shows_label
    from ubtlib.paper_scale.weights import load_segmenter

    folder, net = lraspp_files
    images = (torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    maps = []
    for name in ("lraspp.safetensors", "lraspp.pth"):
        model = load_segmenter("lraspp_mobilenet_v3_large", folder / name)
        assert torch.equal(
            model.net.state_dict()["classifier.low_classifier.weight"],
            net.state_dict()["classifier.low_classifier.weight"],
        )
        maps.append(segment(model, images, "cpu"))
    assert maps[0].shape == (3, 64, 64) and torch.equal(maps[0], maps[1])
    assert int(maps[0].max()) < 21 and shows_label(maps[0], 0, 0.0).all()


def test_a_bad_segmenter_file_fails_naming_it(lraspp_files):
    from ubtlib.checks import UnreadableFile
    from ubtlib.paper_scale.weights import load_segmenter

    folder, _ = lraspp_files
    with pytest.raises(UnreadableFile, match="whole_module.pth: not readable as tensors with torch.load"):
        load_segmenter("lraspp_mobilenet_v3_large", folder / "whole_module.pth")
    with pytest.raises(UnreadableFile, match="missing.safetensors: no such file"):
        load_segmenter("lraspp_mobilenet_v3_large", folder / "missing.safetensors")
    with pytest.raises(UnreadableFile, match="missing.pth: no such file"):
        load_segmenter("lraspp_mobilenet_v3_large", folder / "missing.pth")
    with pytest.raises(ValueError, match="not weights of torchvision's deeplabv3_mobilenet_v3_large with 21"):
        load_segmenter("deeplabv3_mobilenet_v3_large", folder / "lraspp.safetensors")
    with pytest.raises(
        ValueError, match="segmenter='unet' is not accepted: choose one of 'deeplabv3_resnet50'"
    ):
        load_segmenter("unet", folder / "lraspp.safetensors")
