"""Sharing cache entries between checkouts: list them, export them, import them (a class cache).

A course starts from the instructor's cache. `export` writes every entry of this cache that
this checkout would read, those whose key matches its code, library versions and kernels, into
a tarball with a manifest; entries of older code, other versions or other kernels are left
out. `import_entries` checks each entry of such a tarball against the importing checkout and
installs the ones it would read, refusing the others by name and reason. An entry holds JSON
and safetensors files only, so nothing from a tarball is ever unpickled or run; its folder
name must be the hash of its key.json.

No stage imports this module, so editing it recomputes nothing.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import zlib

from ubtlib import numerics
from ubtlib.pipeline.cache import SOURCES, cache_root, code_hash, entry_digest, library_versions

ENTRY_SUFFIXES = (".json", ".safetensors")  # the only files an entry may hold
FORMAT = 1
# key.json fields that say how an entry was made rather than with which parameters
_MADE_BY = ("stage", "code", "code_module", "libraries", "numerics")


def parameters(desc: dict) -> dict:
    """What an entry was computed with, less how (code, libraries, kernels)."""
    return {k: v for k, v in desc.items() if k not in _MADE_BY}


def entry_problem(desc: dict, digest: str) -> str | None:
    """Why this checkout would not read an entry with key `desc` under `digest`; None if it would."""
    if entry_digest(desc) != digest:
        return "its key.json does not hash to its folder name (altered or damaged)"
    module = desc.get("code_module")
    if module not in SOURCES:
        return f"its code module {module!r} is not in this checkout"
    if code_hash(module) != desc.get("code"):
        return f"its code ({module} and the ubtlib modules it imports) differs from this checkout's"
    here = library_versions()
    theirs = desc.get("libraries", {})
    moved = [f"{k} {theirs.get(k)} (here {v})" for k, v in here.items() if theirs.get(k) != v]
    if moved:
        return "it was computed with " + ", ".join(moved)
    kernels = numerics.key()
    moved = [
        f"{k}={desc.get('numerics', {}).get(k)!r} (here {v!r})"
        for k, v in kernels.items()
        if desc.get("numerics", {}).get(k) != v
    ]
    if moved:
        return "it was computed with other kernels: " + ", ".join(moved)
    return None


def entries(root: pathlib.Path | None = None) -> list:
    """Every complete entry under `root` (default: the cache): stage, digest, size in bytes,
    its key.json, its folder and why this checkout would not read it (None: current)."""
    root = pathlib.Path(root or cache_root())
    found = []
    for stage in (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.exists()
        else []
    ):
        for folder in sorted(p for p in stage.iterdir() if p.is_dir() and not p.name.startswith(".")):
            key = folder / "key.json"
            if not key.exists():
                continue
            try:
                desc = json.loads(key.read_text())
            except (OSError, json.JSONDecodeError) as e:
                found.append(
                    {
                        "stage": stage.name,
                        "digest": folder.name,
                        "size": 0,
                        "desc": {},
                        "folder": folder,
                        "problem": f"its key.json cannot be read ({e})",
                    }
                )
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            found.append(
                {
                    "stage": stage.name,
                    "digest": folder.name,
                    "size": size,
                    "desc": desc,
                    "folder": folder,
                    "problem": entry_problem(desc, folder.name),
                }
            )
    return found


def export(path: pathlib.Path, root: pathlib.Path | None = None) -> dict:
    """Write the current entries of the cache (those this checkout reads) to the tarball
    `path`, with a manifest of their keys and the library versions; returns counts."""
    everything = entries(root)
    current = [e for e in everything if e["problem"] is None]
    path = pathlib.Path(path)
    manifest = {
        "format": FORMAT,
        "libraries": library_versions(),
        "numerics": numerics.key(),
        "machine": numerics.cpu_model(),
        "entries": [{"stage": e["stage"], "digest": e["digest"], "size": e["size"]} for e in current],
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for e in current:
                for f in sorted(e["folder"].iterdir()):
                    if f.is_file() and f.suffix in ENTRY_SUFFIXES:
                        tar.add(f, arcname=f"{e['stage']}/{e['digest']}/{f.name}")
        os.replace(tmp, path)  # a reader never sees half a tarball
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {
        "exported": len(current),
        "left_out": len(everything) - len(current),
        "bytes": path.stat().st_size,
    }


def _members(tar: tarfile.TarFile, path: pathlib.Path) -> dict:
    """(stage, digest) -> {file name: member}, after checking every member's name and type."""
    by_entry = {}
    for m in tar.getmembers():
        if m.name == "manifest.json":
            continue
        parts = m.name.split("/")
        if not m.isfile() or len(parts) != 3 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"{path}: {m.name!r} is not a cache entry's file (stage/digest/file)")
        if not parts[2].endswith(ENTRY_SUFFIXES):
            raise ValueError(f"{path}: {m.name!r} is neither JSON nor safetensors; refusing the tarball")
        by_entry.setdefault((parts[0], parts[1]), {})[parts[2]] = m
    return by_entry


def import_entries(path: pathlib.Path, root: pathlib.Path | None = None) -> dict:
    """Install the entries of the tarball `path` that this checkout would read; returns
    {"installed": [...], "present": [...], "refused": {"stage/digest": reason}}. Entries
    already in the cache are never touched."""
    path, root = pathlib.Path(path), pathlib.Path(root or cache_root())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such class-cache file")
    try:
        with tarfile.open(path, "r:*") as tar:
            return _install(tar, path, root)
    except (tarfile.TarError, EOFError, zlib.error) as e:  # not a tarball, cut short, or damaged
        raise ValueError(
            f"{path}: not a complete class-cache tarball ({e}); every entry installed before the "
            "damage is complete, the rest were not installed"
        ) from None


def _install(tar: tarfile.TarFile, path: pathlib.Path, root: pathlib.Path) -> dict:
    try:
        manifest = json.load(tar.extractfile("manifest.json"))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(
            f"{path}: no readable manifest.json ({e}); was it written by `cache export`?"
        ) from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, this checkout reads {FORMAT}")
    by_entry = _members(tar, path)
    result = {"installed": [], "present": [], "refused": {}}

    def place(item) -> int:  # where the entry's first file lies in the tarball
        return min((m.offset for m in by_entry.get((item["stage"], item["digest"]), {}).values()), default=-1)

    # entries and their files in the order they lie in the tarball: a compressed tarball reads
    # forward only, and every step back would decompress it again from its start
    for item in sorted(manifest.get("entries", []), key=place):
        stage, digest = item["stage"], item["digest"]
        name = f"{stage}/{digest}"
        files = by_entry.get((stage, digest), {})
        if "key.json" not in files:
            result["refused"][name] = "the tarball has no key.json for it"
            continue
        data = {f: tar.extractfile(m).read() for f, m in sorted(files.items(), key=lambda fm: fm[1].offset)}
        key = data.pop("key.json")
        desc = json.loads(key)
        problem = entry_problem(desc, digest)
        if problem:
            result["refused"][name] = problem
            continue
        folder = root / stage / digest
        if (folder / "key.json").exists():
            result["present"].append(name)
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest}.import.", dir=folder.parent))
        try:
            for fname, content in data.items():
                (tmp / fname).write_bytes(content)
            (tmp / "key.json").write_bytes(key)  # last: the entry is complete
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "key.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result["installed"].append(name)
    return result
