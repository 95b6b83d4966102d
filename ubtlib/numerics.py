"""The numerics settings that make a seed give the same numbers on every machine of one kind.

On one machine, a seeded run is already bit-identical from run to run. Across machines it was
not: torch picks its vectorised kernels (ATen), its BLAS code path (MKL) and its convolution
code (oneDNN) for the CPU it finds, and AVX-512 and AVX2 kernels round differently. Across
thread counts, torch's layer norm and convolution kernels sum per thread; `ubtlib.layers`
replaces them in the pocket CLIP and the SSBA-style encoder.

`apply()` runs when ubtlib is imported, before torch is. It sets, unless the environment
already says otherwise, the AVX2 code path for all three kernel libraries, and MKL's strict
reproducible mode, whose products do not depend on the thread count. AVX2 is on every x86-64
CPU made since about 2015; on an older CPU or on ARM the kernels differ and `settings()`
records which ones ran. MKL honours its AVX2 branch on Intel CPUs only: on AMD it runs its own
AUTO branch, so an Intel and an AMD machine agree to float rounding, not bit for bit
(`mkl_branch`, part of every cache key). MKL's vendor-neutral `MKL_CBWR=COMPATIBLE` branch does
not close the gap: measured, one epoch of pre-training with it gave different weights on an
Intel Xeon and an AMD EPYC (something besides MKL's branch differs between the two; the book
has not isolated which kernel), at a third to three fifths less training speed, so the book
leaves it off; chapter 1 runs it for comparison.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys

# Environment variables read once, when torch's kernel libraries start.
PORTABLE = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels
    "MKL_CBWR": "AVX2,STRICT",  # MKL: the AVX2 path; STRICT: the same sums at any thread count
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's kernels
}

# True when torch was imported (and may have run a kernel) before `apply`: then the settings may
# not be in force, which `settings()` reports (the effective capability is read from torch).
_torch_was_first = "torch" in sys.modules


def apply() -> None:
    """Set `PORTABLE` in the environment where it is unset (an exported value wins)."""
    for name, value in PORTABLE.items():
        os.environ.setdefault(name, value)


def settings() -> dict:
    """The numerics a run had: the kernel settings, the effective ATen capability, threads."""
    import torch

    return {
        **{name: os.environ.get(name) for name in PORTABLE},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch_imported_before_ubtlib": _torch_was_first,
        "mkl_branch": mkl_branch(),
    }


def mkl_branch() -> str:
    """The MKL code path that runs. MKL honours only AUTO and COMPATIBLE on non-Intel CPUs
    and takes AUTO for anything else there, which follows the CPU model. COMPATIBLE is named
    with the CPU's maker: with it an Intel and an AMD build still gave different weights
    (see the module doc), so their results must not share a key."""
    requested = (os.environ.get("MKL_CBWR") or "AUTO").split(",")[0].strip().upper()
    if requested == "COMPATIBLE":
        return f"COMPATIBLE on {cpu_vendor()}"
    if requested != "AUTO" and cpu_vendor() == "GenuineIntel":
        return requested
    return f"AUTO on {cpu_model()}"


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...; from /proc/cpuinfo on Linux)."""
    return _cpuinfo("vendor_id") or platform.machine()


def in_force() -> bool:
    """True when this process computes with the book's portable kernels."""
    s = settings()
    return (
        s["cpu_capability"] == "AVX2"
        and all(s[n] == v for n, v in PORTABLE.items())
        and not s["torch_imported_before_ubtlib"]
    )


def key() -> dict:
    """What of the numerics changes a cached result (thread count does not: see the module doc)."""
    s = settings()
    return {
        name: s[name] for name in (*PORTABLE, "cpu_capability", "mkl_branch", "torch_imported_before_ubtlib")
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform reports."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(field: str) -> str | None:
    return _cpu_fields().get(field)


@functools.cache
def _cpu_fields() -> dict:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def torch_build() -> dict:
    """The BLAS and oneDNN versions torch was built with (from `torch.__config__.show()`)."""
    import torch

    shown = torch.__config__.show()
    found = {}
    for label, pattern in (
        ("blas", r"BLAS_INFO=(\w+)"),
        ("mkl", r"Math Kernel Library Version ([\w.\-]+)"),
        ("onednn", r"MKL-DNN v([\w.]+)"),
        ("openmp", r"OpenMP (\d+)"),
    ):
        match = re.search(pattern, shown)
        found[label] = match.group(1) if match else None
    return found


def machine() -> dict:
    """The machine a run computed on: CPU model, cores, architecture and torch's build."""
    return {
        "cpu": cpu_model(),
        "vendor": cpu_vendor(),
        "cores": os.cpu_count(),
        "architecture": platform.machine(),
        "torch_build": torch_build(),
    }
