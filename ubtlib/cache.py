"""A content-addressed cache for the pipeline's stages (world, pre-trained model, ...).

An entry's key is a hash of everything that affects its result: the stage's configs, the
source code of the modules that compute it, and the torch / open_clip versions. A changed
parameter or a changed line of code therefore misses the cache instead of serving a stale
result. Entries are written to a temporary folder and renamed into place, so an interrupted
run never leaves a half-written entry behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import socket
import tempfile
import time
from typing import Callable, TypeVar

import open_clip
import torch

T = TypeVar("T")
_PACKAGE = pathlib.Path(__file__).resolve().parent


def cache_root() -> pathlib.Path:
    """$UBT_CACHE_DIR, else `.cache/` in the checkout, else ~/.cache/ubtbook."""
    if os.environ.get("UBT_CACHE_DIR"):
        return pathlib.Path(os.environ["UBT_CACHE_DIR"])
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache"
    return pathlib.Path.home() / ".cache" / "ubtbook"


# The package's source as it was when this process imported it: a file edited while a long run
# is going must not give that run's (old-code) results the new code's key.
_SOURCE = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in _PACKAGE.glob("*.py")}


def source_hash(*modules: str) -> str:
    """Hash of the named ubtlib modules' source (e.g. "world", "train"), as imported."""
    h = hashlib.sha256()
    for m in sorted(modules):
        h.update(_SOURCE[m].encode())
    return h.hexdigest()[:16]


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def cache_key(stage: str, modules: tuple, **parts) -> tuple[str, dict]:
    desc = {"stage": stage, "code": source_hash(*modules), "torch": torch.__version__,
            "open_clip": open_clip.__version__, **_jsonable(parts)}
    digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
    return digest, desc


def cached(stage: str, modules: tuple, compute: Callable[[pathlib.Path], None],
           load: Callable[[pathlib.Path], T], **parts) -> T:
    """Return `load(folder)` for the entry keyed by (stage, modules' code, parts).

    On a miss `compute(tmp_folder)` writes the entry's files; the folder is renamed into place
    only after it returns, together with a key.json describing what made it.
    """
    digest, desc = cache_key(stage, modules, **parts)
    folder = cache_root() / stage / digest
    if (folder / "key.json").exists():
        return load(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(folder.parent)
    # the writer's host and process id are in the name, so a later run can tell an orphan from
    # work in progress
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest}.{_writer()}.", dir=folder.parent))
    try:
        compute(tmp)
        (tmp / "key.json").write_text(json.dumps(desc, indent=1, sort_keys=True))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (folder / "key.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load(folder)


def _writer() -> str:
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())
    return f"{host}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_orphans(stage_folder: pathlib.Path, max_age_s: float = 7 * 86400.0) -> list:
    """Delete the temporary folders of runs that were killed before they finished: those written
    on this host by a process that is gone, and any older than `max_age_s` (a writer on another
    host, sharing the cache, cannot be checked). Nothing is ever read from them (entries appear
    by rename only); this only frees the disk."""
    host = _writer().rsplit("-", 1)[0]
    removed = []
    for p in stage_folder.iterdir():
        if not (p.name.startswith(".") and p.is_dir()):
            continue
        parts = p.name.split(".")  # "", digest, host-pid, random suffix
        writer = parts[2].rsplit("-", 1) if len(parts) >= 4 else []
        mine_and_dead = (len(writer) == 2 and writer[0] == host and writer[1].isdigit()
                         and not _alive(int(writer[1])))
        if mine_and_dead or time.time() - p.stat().st_mtime > max_age_s:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def write_json(path: pathlib.Path, obj) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(_jsonable(obj), f, indent=1, sort_keys=True)
    os.replace(tmp, path)
