"""Input checks shared by every config and reader: fail early, name the value and what is accepted."""

from __future__ import annotations

import os
import pathlib


def check_range(name, value, low, high):
    """Raise ValueError unless low <= value <= high (names the value and the range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number in [{low}, {high}]")
    if not (low <= value <= high):
        raise ValueError(f"{name}={value!r} is out of range: accepted {low} <= {name} <= {high}")


def check_choice(name, value, accepted):
    """Raise ValueError unless value is one of `accepted` (names both)."""
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not accepted: choose one of {', '.join(map(repr, accepted))}")


class UnreadableFile(ValueError):
    """A weights or tensor file that is missing, damaged or not safetensors (names the file)."""


def read_tensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """The tensors of a safetensors file; a damaged file raises `UnreadableFile` naming it.

    The one reader of tensor files in ubtlib: safetensors never unpickles, so a file from
    anywhere can be opened without running code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise UnreadableFile(f"{path}: no such file")
    try:
        return load_file(str(path), device=device)
    except SafetensorError as e:
        raise UnreadableFile(f"{path}: not a readable safetensors file ({e})") from None
