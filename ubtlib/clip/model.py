"""The pocket CLIP: an open_clip model from a registered config; safetensors save / load.

The architecture is open_clip's own CLIP (ViT image tower, transformer text tower); this
module only writes the size into an open_clip model config, so that
`open_clip.create_model(name)` and `open_clip.get_tokenizer(name)` build it like any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import tempfile
from dataclasses import dataclass

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

from ubtlib.checks import check_range, read_tensors
from ubtlib.clip import pooled
from ubtlib.layers import PatchEmbedding, SplitAffineLayerNorm


@dataclass(frozen=True)
class ModelConfig:
    """A small ViT CLIP. Both towers use heads of `head_width` channels (width / head_width
    heads); the text tower is thinner, since pocket captions are short and plain."""

    image_size: int = 32
    patch_size: int = 8
    width: int = 96  # vision transformer width
    layers: int = 3  # vision transformer depth
    text_width: int = 64
    text_layers: int = 2
    head_width: int = 32
    embed_dim: int = 96
    context_length: int = 24  # pocket captions take at most 15 tokens

    def validate(self) -> None:
        check_range("image_size", self.image_size, 8, 1024)
        check_range("patch_size", self.patch_size, 1, self.image_size)
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")
        check_range("layers", self.layers, 1, 48)
        check_range("text_layers", self.text_layers, 1, 48)
        for name in ("width", "text_width"):
            if getattr(self, name) % self.head_width:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be a multiple of head_width={self.head_width}"
                )
        check_range("context_length", self.context_length, 8, 77)

    def open_clip_config(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.layers,
                "width": self.width,
                "head_width": self.head_width,
                "patch_size": self.patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": self.text_width // self.head_width,
                "layers": self.text_layers,
            },
        }

    @property
    def name(self) -> str:
        """The open_clip model name this config is registered under."""
        digest = hashlib.sha256(json.dumps(self.open_clip_config(), sort_keys=True).encode())
        return f"pocket-vit-{digest.hexdigest()[:8]}"


def register(cfg: ModelConfig) -> str:
    """Register `cfg` with open_clip (idempotent) and return its model name."""
    cfg.validate()
    if cfg.name not in open_clip.list_models():
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ubt-model-config-"))
        (folder / f"{cfg.name}.json").write_text(json.dumps(cfg.open_clip_config()))
        open_clip.add_model_config(folder)
    return cfg.name


def create(cfg: ModelConfig, device="cpu"):
    """A randomly initialised pocket CLIP and its tokenizer (open_clip's BPE); its layer norms
    train to the same weights at any thread count (`ubtlib.layers`), and its towers compute
    only the tokens their features read (`pooled`)."""
    name = register(cfg)
    # open_clip warns that no pretrained weights were loaded: expected for a model we train
    quiet = logging.Filter()
    quiet.filter = lambda record: "No pretrained weights loaded" not in record.getMessage()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(name, device=device, output_dict=True)
    finally:
        logging.getLogger().removeFilter(quiet)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.__class__ = SplitAffineLayerNorm  # same layout and parameters, see its docstring
    conv = model.visual.conv1
    assert conv.kernel_size == conv.stride == (cfg.patch_size,) * 2 and conv.bias is None
    conv.__class__ = PatchEmbedding
    return pooled.install(model), open_clip.get_tokenizer(name)


def tokenize(tokenizer, captions: list) -> torch.Tensor:
    """`tokenizer(captions)`, tokenizing each distinct caption once: captions written from
    templates repeat (the pocket world's 29K training pairs have about 4K distinct ones), and
    open_clip's tokenizer cleans every string it is given in Python."""
    distinct = list(dict.fromkeys(captions))
    if len(distinct) == len(captions):
        return tokenizer(list(captions))
    row = {c: i for i, c in enumerate(distinct)}
    return tokenizer(distinct)[torch.tensor([row[c] for c in captions], dtype=torch.long)]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> the model's input (CLIP's mean / std).

    Kept apart from `to_unit` so that triggers can act on [0, 1] images in between.
    """
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def to_unit(images_u8: torch.Tensor, device) -> torch.Tensor:
    """uint8 N x 3 x H x W (CPU) -> float [0, 1] on `device`."""
    return images_u8.to(device, non_blocking=True).float().div_(255)


def save(model: torch.nn.Module, path: pathlib.Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def load(model: torch.nn.Module, path: pathlib.Path) -> torch.nn.Module:
    """Load safetensors weights into `model` (never unpickles; all keys must match)."""
    state = read_tensors(path)
    model.load_state_dict(state, strict=True)
    return model


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} but CUDA is not available: use 'cpu' or 'auto'")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise ValueError(f"device={requested!r}: accepted 'auto', 'cpu', 'cuda', 'cuda:N'")
    return torch.device(requested)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op context on CPU."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
