"""Make ``import open_clip`` work with the CPU build of torch.

torchvision 0.28.0 on PyPI is built for CUDA. Next to the CPU build of torch 2.13.0 its C
extension cannot load, and torchvision's import then dies registering fake kernels for
``torchvision::nms`` ("operator torchvision::nms does not exist"), which takes open_clip and
timm down with it. Declaring the two operator schemas first lets the import go through;
transforms and models work, the C++ ops themselves (nms, image decoding) do not, and this
project uses neither (images are read with PIL).

We only declare them when the extension really fails to load: where it loads (a matching
CUDA or CPU build), it registers the real operators itself.
"""

from __future__ import annotations

import importlib.util
import pathlib

import torch

_done = False


def patch_torchvision() -> None:
    global _done
    if _done:
        return
    _done = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    libs = sorted(pathlib.Path(spec.origin).parent.glob("_C*.so")) + sorted(
        pathlib.Path(spec.origin).parent.glob("_C*.pyd")
    )
    if libs:
        try:
            torch.ops.load_library(str(libs[0]))
            return  # the real operators are registered
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # keep a reference: the definitions vanish when the Library object is collected
    globals()["_torchvision_lib"] = lib
