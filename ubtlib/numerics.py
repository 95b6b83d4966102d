"""The numerics settings that make a seed give the same numbers on every x86 machine.

On one machine, a seeded run is already bit-identical from run to run. Across machines it was
not: torch picks its vectorised kernels (ATen), its BLAS code path (MKL) and its convolution
code (oneDNN) for the CPU it finds, and AVX-512 and AVX2 kernels round differently. Across
thread counts, two kernels of the pocket CLIP summed per thread; `ubtlib.clip.model` replaces
both (`SplitAffineLayerNorm`, `PatchEmbedding`).

`apply()` runs when ubtlib is imported, before torch is. It sets, unless the environment
already says otherwise, the AVX2 code path for all three kernel libraries, and MKL's strict
reproducible mode, whose products do not depend on the thread count. AVX2 is on every x86-64
CPU made since about 2015; on an older CPU or on ARM the kernels differ and `settings()`
records which ones ran. The cost, measured with `benchmarks/throughput.py`, is in the book's
introduction.
"""

from __future__ import annotations

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
    }


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
    return {name: s[name] for name in (*PORTABLE, "cpu_capability", "torch_imported_before_ubtlib")}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cores": os.cpu_count(),
        "architecture": platform.machine(),
        "torch_build": torch_build(),
    }
