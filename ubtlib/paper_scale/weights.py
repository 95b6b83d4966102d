"""Published open_clip models (ViT-B-32 `openai`, `laion400m_e32`, ...) with their weights, offline.

The paper profile starts from released CLIP weights. They come from a local safetensors file
or from the Hugging Face cache, where open_clip's own download would have put them; nothing is
downloaded and no pickle is ever loaded (a pickle can run code when it is read). When the
weights are missing, the error names the file to download and where to put it.

Kept apart from model.py on purpose: the pipeline's cache keys hash model.py's source, and the
pocket chapters' cached models should not be recomputed for code they never run.
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ubtlib.checks import read_tensors
from ubtlib.clip import pooled


def check_model_name(name: str) -> str:
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(name.lower()[:4])]
        raise ValueError(
            f"model={name!r} is not an open_clip model: choose one of "
            f"open_clip.list_models(){', e.g. ' + ', '.join(close[:8]) if close else ''}"
        )
    return name


def image_size(model) -> int:
    """The side of the square images `model` takes (224 for ViT-B-32)."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def random_model(name: str, device="cpu"):
    """open_clip architecture `name` at its real size, randomly initialised, with the
    pooled-token towers (`ubtlib.clip.pooled`), and its tokenizer (for tests and benchmarks;
    open_clip logs that it loaded no weights, which is the point)."""
    model = open_clip.create_model(check_model_name(name), device=device, output_dict=True)
    return pooled.install(model), open_clip.get_tokenizer(name)


def weights_file(name: str, pretrained: str, cache_dir: Optional[str] = None) -> pathlib.Path:
    """The local safetensors file behind `pretrained`: a path, or an open_clip tag of model
    `name` found in the Hugging Face cache (read from disk only). Fails before any model is
    built, naming what to download and where to put it; refuses anything but safetensors."""
    check_model_name(name)
    tag = open_clip.get_pretrained_cfg(name, pretrained)  # {} when `pretrained` is no tag
    if not tag:
        path = pathlib.Path(pretrained).expanduser()
        if not path.suffix and os.sep not in pretrained:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ValueError(
                f"pretrained={pretrained!r} is neither a pretrained tag of {name} "
                f"(tags: {tags}) nor a .safetensors file"
            )
        if not path.is_file():
            raise FileNotFoundError(f"pretrained={pretrained!r}: no such file")
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path}: only .safetensors weights are read; a {path.suffix or 'suffix-less'} "
                "file may be a pickle, which can run code when loaded. Use the "
                "open_clip_model.safetensors of open_clip's Hugging Face repositories"
            )
        return path
    if tag["mean"] != OPENAI_DATASET_MEAN or tag["std"] != OPENAI_DATASET_STD:
        raise ValueError(
            f"{name} {pretrained!r} expects images normalised with mean {tag['mean']} and "
            f"std {tag['std']}; ubtlib normalises with CLIP's (OpenAI's): choose another tag"
        )
    repo, filename = os.path.split(tag.get("hf_hub", ""))
    if not repo:
        raise FileNotFoundError(
            f"{name} {pretrained!r}: open_clip publishes these weights only as a "
            f"pickle ({tag.get('url')}), which ubtlib does not load; convert it to "
            "safetensors on a machine you trust and pass that file's path"
        )
    # open_clip's default checkpoint name, or the safetensors twin of the file the tag names
    filename = (
        HF_SAFE_WEIGHTS_NAME
        if filename in ("", HF_WEIGHTS_NAME)
        else filename.rsplit(".", 1)[0] + ".safetensors"
    )
    from huggingface_hub import constants, try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    if isinstance(found, str):
        return pathlib.Path(found)
    raise FileNotFoundError(
        f"no local weights for {name} pretrained={pretrained!r} (ubtlib never downloads): get "
        f"{filename} from the Hugging Face repository {repo} (on a machine with network: "
        f"`hf download {repo} {filename}`), then copy that machine's Hugging Face cache to "
        f"{cache_dir or constants.HF_HUB_CACHE} here, or pass the file's path as pretrained"
    )


def load_pretrained(
    name: str,
    pretrained: str,
    device="cpu",
    cache_dir: Optional[str] = None,
    quick_gelu: Optional[bool] = None,
):
    """open_clip model `name` with published weights (eval mode) and the pooled-token towers
    (`ubtlib.clip.pooled`), and its tokenizer, offline.

    `pretrained` is an open_clip tag ("openai", "laion400m_e32", ...) looked up in the Hugging
    Face cache (or `cache_dir`), or a local .safetensors file. QuickGELU follows the tag (the
    OpenAI and LAION-400M ViT-B-32 weights use it); with a file, say quick_gelu=True for those.
    """
    path = weights_file(name, pretrained, cache_dir)
    if quick_gelu is None:
        quick_gelu = open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False)
    # read before building the model: a damaged file fails at once, naming the file
    state = read_tensors(path)
    model = open_clip.create_model(name, device="cpu", output_dict=True, force_quick_gelu=quick_gelu)
    try:
        model.load_state_dict(open_clip_state(model, state), strict=True)
    except RuntimeError as e:  # a strict load: say which file and which model
        raise ValueError(f"{path}: not weights of open_clip model {name}: {e}") from None
    return pooled.install(model).to(device).eval(), open_clip.get_tokenizer(name)


def open_clip_state(model, state: dict) -> dict:
    """A state dict as open_clip's own checkpoint loader would adapt it to `model` (third-party
    and older layouts, a scalar logit_scale, a different number of positions), from tensors
    already read: open_clip's loader would read the file a second time, bypassing read_tensors."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    if next(iter(state), "").startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        ours = getattr(model, key, None)
        if key in state and ours is not None and ours.ndim != state[key].ndim:
            state[key] = state[key].reshape(ours.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


# torchvision's segmentation models, built with no download; their published weights are trained
# on a COCO subset with the 21 Pascal VOC labels (background + 20)
SEGMENTERS = (
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50",
    "lraspp_mobilenet_v3_large",
)
# the 21 labels in order (torchvision's `_VOC_CATEGORIES`), spelled as a caption would say them
VOC_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
)
VOC_CLASSES = len(VOC_NAMES)


class TorchvisionSegmenter(torch.nn.Module):
    """A torchvision segmentation model as the oracle reads it: [0, 1] images in, N x classes x
    H x W logits out (ImageNet normalisation inside, the "out" head only)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)["out"]


def _segmentation_state(path: pathlib.Path) -> dict:
    """The tensors of a safetensors file, or of a torch file read with `weights_only=True`
    (torch's restricted unpickler: tensors and plain containers, never code)."""
    from ubtlib.checks import UnreadableFile

    if path.suffix == ".safetensors":
        return read_tensors(path)
    if not path.is_file():
        raise UnreadableFile(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for a damaged file
        raise UnreadableFile(
            f"{path}: not readable as tensors with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); save its state_dict alone, or convert it to .safetensors"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # torchvision's training checkpoints
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnreadableFile(f"{path}: holds no state dict of tensors")
    return state


def load_segmenter(arch: str, path: str | os.PathLike, n_classes: int = VOC_CLASSES, device="cpu"):
    """torchvision segmentation model `arch` (one of `SEGMENTERS`) with the weights in `path`
    (.safetensors, or torchvision's .pth read with `torch.load(weights_only=True)`), in eval
    mode, wrapped as a `TorchvisionSegmenter`. The file is read before the model is built, and
    a state dict of another architecture fails naming both."""
    from torchvision.models import segmentation

    if arch not in SEGMENTERS:
        raise ValueError(
            f"segmenter={arch!r} is not accepted: choose one of {', '.join(map(repr, SEGMENTERS))}"
        )
    path = pathlib.Path(path).expanduser()
    state = _segmentation_state(path)
    aux = any(k.startswith("aux_classifier.") for k in state)
    net = getattr(segmentation, arch)(
        weights=None, weights_backbone=None, num_classes=n_classes, **({"aux_loss": True} if aux else {})
    )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] + (
            " " + str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else ""
        )
        raise ValueError(
            f"{path}: not weights of torchvision's {arch} with {n_classes} classes ({first[:300]})"
        ) from None
    return TorchvisionSegmenter(net).to(device).eval()
