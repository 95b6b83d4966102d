"""A chapter's one setup call: its parameters, validated, with the profile, device and provenance.

A chapter notebook declares its parameters once, in its `parameters` cell; `setup` reads their
names from that cell, takes their values from the notebook's namespace (papermill's injected
values included), validates all of them before any compute and returns a `Chapter`, whose
`publish` saves and glues the results with those parameters and the provenance.
"""

from __future__ import annotations

import ast
import pathlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import nbformat
import torch

from ubtlib import numerics
from ubtlib.attacks.triggers import ATTACKS
from ubtlib.book import report
from ubtlib.checks import check_choice, check_range
from ubtlib.clip.model import pick_device
from ubtlib.pipeline.profiles import STAGES, Profile, configure

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
PROFILE_PARAMETERS = ("profile", "seed", "device")


@dataclass
class Chapter:
    """What a chapter's cells share: its name, profile, device, provenance and parameters."""

    name: str
    profile: Profile
    device: torch.device
    provenance: dict
    params: dict  # every parameter of the notebook, as this run set it

    def publish(self, results: dict) -> pathlib.Path:
        """Save `results` with the parameters and provenance to `<chapter>.json`; glue scalars."""
        return report.publish(self.name, self.profile, self.params, results, self.provenance)

    @property
    def stamp(self) -> str:
        return report.stamp_text(self.provenance)


def parameter_names(chapter: str, notebooks: pathlib.Path = NOTEBOOKS) -> list:
    """The names the chapter's `parameters` cell assigns, in order."""
    path = pathlib.Path(notebooks) / f"{chapter}.ipynb"
    if not path.is_file():
        known = sorted(p.stem for p in pathlib.Path(notebooks).glob("*.ipynb"))
        raise ValueError(f"chapter={chapter!r} has no notebook {path}: choose one of {', '.join(known)}")
    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    names = []
    for node in ast.parse(cells[0].source).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        )
        if not isinstance(target, ast.Name):  # it would be neither validated nor recorded
            raise ValueError(
                f"{path}: line {node.lineno} of the parameters cell is not one "
                "`name: type = default  # help` assignment"
            )
        names.append(target.id)
    return names


def is_profile_override(name: str) -> bool:
    """True for `<stage>_<field>` names (``ubt_top_k``), which configure the profile."""
    return name.partition("_")[0] in STAGES and "_" in name


def check_chapter_parameter(name: str, value) -> None:
    """Validate a parameter that is not a profile override (attack lists, seeds)."""
    if name == "attack":
        check_choice("attack", value, ATTACKS)
    elif name == "attacks":
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"attacks={value!r} must be a non-empty list of {', '.join(ATTACKS)}")
        for a in value:
            check_choice("attacks entry", a, ATTACKS)
    elif name == "seeds" and value is not None:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"seeds={value!r} must be a non-empty list of seeds (or None: the profile's)")
        for s in value:
            check_range("seeds entry", s, 0, 2**31 - 1)


def setup(chapter: str, namespace: Mapping, notebooks: pathlib.Path = NOTEBOOKS) -> Chapter:
    """The chapter's parameters (names from its own parameters cell, values from `namespace`,
    usually the notebook's `globals()`), validated before any compute, with the configured
    profile, the device and the provenance; prints the stamp.

    >>> ch = setup("05_table1", globals())  # doctest: +SKIP
    """
    names = parameter_names(chapter, notebooks)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise ValueError(
            f"chapter {chapter!r}: parameters {', '.join(missing)} are not set; run the "
            "notebook's parameters cell first"
        )
    params = {n: namespace[n] for n in names}
    profile = configure(
        **{n: v for n, v in params.items() if n in PROFILE_PARAMETERS or is_profile_override(n)}
    )
    for n, v in params.items():
        if not (n in PROFILE_PARAMETERS or is_profile_override(n)):
            check_chapter_parameter(n, v)
    if params.get("seeds", "unset") is None:  # None: the profile's repeats
        params["seeds"] = list(profile.table_seeds)
    device = pick_device(profile.device)
    if device.type == "cpu" and not numerics.in_force():
        warnings.warn(
            f"this process does not compute with the book's portable kernels ({numerics.settings()}): "
            "its numbers may differ from the book's by float rounding. Import ubtlib before torch and "
            f"leave {', '.join(numerics.PORTABLE)} unset (see ubtlib.numerics)",
            stacklevel=2,
        )
    chapter_run = Chapter(
        chapter, profile, device, report.provenance(profile, device, params.get("seeds")), params
    )
    print(chapter_run.stamp)
    return chapter_run
