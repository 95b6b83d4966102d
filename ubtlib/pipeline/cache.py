"""A content-addressed cache for the pipeline's stages (world, pre-trained model, ...).

An entry's key is a hash of everything that affects its result:

* the stage's configs (passed by the stage as keyword parts);
* the code it can reach, derived, never listed: the module that defines the stage's
  `compute` and, transitively, every ubtlib module it imports (function-level imports
  included, `if TYPE_CHECKING:` blocks not), each hashed as its AST with docstrings dropped,
  so a reworded comment or docstring keeps the key and a changed line of code misses it;
* the versions of the libraries that change numbers (`NUMERIC_LIBRARIES`) and the kernels
  torch computes with (`ubtlib.numerics.key`).

Entries are computed into a temporary folder and renamed into place, so a run killed mid-stage
never leaves anything that is read; a lock makes a second process wait for the first one's
entry instead of computing it again. Beside key.json each entry has a made.json saying how long
its own computation took (less the stages it computed on the way), for the build's profile;
it is not part of the key.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from ubtlib import numerics
from ubtlib.checks import UnreadableFile

T = TypeVar("T")
PACKAGE = pathlib.Path(__file__).resolve().parent.parent  # ubtlib/
# distributions whose version can move a number (pip names)
NUMERIC_LIBRARIES = ("torch", "torchvision", "open_clip_torch", "numpy", "pillow")


def cache_root() -> pathlib.Path:
    """$UBT_CACHE_DIR, else `.cache/` in the checkout, else ~/.cache/ubtbook."""
    if os.environ.get("UBT_CACHE_DIR"):
        return pathlib.Path(os.environ["UBT_CACHE_DIR"])
    checkout = PACKAGE.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache"
    return pathlib.Path.home() / ".cache" / "ubtbook"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources(package: pathlib.Path = PACKAGE) -> dict:
    """{dotted module name: source text} of every module in `package`."""
    return {_module_name(p): p.read_text() for p in sorted(package.rglob("*.py"))}


# The package's source as it was when this process imported it: a file edited while a long run
# is going must not give that run's (old-code) results the new code's key.
SOURCES = package_sources()


def is_package(module: str, sources: Mapping[str, str]) -> bool:
    """True when `module` is a package (an __init__.py) among `sources`."""
    return any(m.startswith(module + ".") for m in sources)


def _type_checking_only(tree: ast.AST) -> set:
    """ids of the import nodes under `if TYPE_CHECKING:` (annotations only, never run)."""
    skip = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


@functools.cache
def _import_statements(source: str) -> tuple:
    """(level, module, names) of every import in `source` that runs (not TYPE_CHECKING ones)."""
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.extend((0, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
    return tuple(found)


def imported_modules(module: str, sources: Mapping[str, str]) -> set:
    """The modules of `sources` that `module` imports anywhere in its code."""
    package = module if is_package(module, sources) else module.rpartition(".")[0]
    found = set()
    for level, name, names in _import_statements(sources[module]):
        if not names:  # `import a.b.c` runs a.b.c (and binds a)
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
            continue
        base = package.rsplit(".", level - 1)[0] if level > 1 else package
        base = (f"{base}.{name}" if name else base) if level else name
        for n in names:
            if f"{base}.{n}" in sources:
                found.add(f"{base}.{n}")  # a submodule
            elif base in sources:
                found.add(base)  # a name defined in (or re-exported by) `base`
    return found


def module_closure(module: str, sources: Mapping[str, str] = SOURCES) -> list:
    """`module` and every module of `sources` it reaches through imports, sorted."""
    if module not in sources:
        raise ValueError(f"module {module!r} is not in the package (known: {', '.join(sorted(sources))})")
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imported_modules(m, sources) - seen)
    return sorted(seen)


def _drop_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def normalized_source(source: str) -> str:
    """The code of `source` without comments, docstrings or layout (its AST, dumped)."""
    return ast.dump(_drop_docstrings(ast.parse(source)), annotate_fields=False, include_attributes=False)


@functools.cache
def _source_digest(source: str) -> str:
    return hashlib.sha256(normalized_source(source).encode()).hexdigest()


def key_modules(module: str, sources: Mapping[str, str] = SOURCES) -> list:
    """The modules whose code a stage defined in `module` depends on: its import closure, the
    packages above each of them (their own code runs on import; what they re-export is not
    followed) and `ubtlib._compat`, which the top package runs before anything else."""
    closure = module_closure(module, sources)
    parents = {m.rsplit(".", k)[0] for m in closure for k in range(1, m.count(".") + 1)}
    compat = {"ubtlib._compat"} & set(sources)
    return sorted(set(closure) | (parents & set(sources)) | compat)


def code_hash(module: str, sources: Mapping[str, str] | None = None) -> str:
    """Hash of the normalised code of the modules a stage defined in `module` depends on."""
    sources = SOURCES if sources is None else sources
    h = hashlib.sha256()
    for m in key_modules(module, sources):
        h.update(f"{m}:{_source_digest(sources[m])}\n".encode())
    return h.hexdigest()[:16]


@functools.cache
def library_versions() -> dict:
    """{distribution: version} of `NUMERIC_LIBRARIES` ("absent" where not installed)."""
    out = {"python": platform.python_version()}  # the stdlib's random drives CleanCLIP's EDA
    for name in NUMERIC_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def entry_digest(desc: dict) -> str:
    """The folder name of the entry whose key.json is `desc`."""
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]


def cache_key(stage: str, code_module: str, **parts) -> tuple[str, dict]:
    """(digest, description) of an entry: the stage, its code's hash, the libraries, the kernels,
    the parts."""
    desc = {
        "stage": stage,
        "code": code_hash(code_module),
        "code_module": code_module,
        "libraries": library_versions(),
        "numerics": numerics.key(),
        **_jsonable(parts),
    }
    return entry_digest(desc), desc


class CacheEntryError(RuntimeError):
    """A cache entry that exists but cannot be read (a damaged file)."""


def cached(
    stage: str,
    compute: Callable[[pathlib.Path], None],
    load: Callable[[pathlib.Path], T],
    *,
    code_module: str | None = None,
    **parts,
) -> T:
    """Return `load(folder)` for the entry keyed by (stage, the code `compute` reaches, parts).

    The code is that of the module defining `compute` (or `code_module`, for a compute defined
    outside ubtlib) and all it imports. On a miss `compute(tmp_folder)` writes the entry's
    files; the folder is renamed into place only after it returns, together with a key.json
    describing what made it. Two processes
    asking for the same entry: the second waits for the first and reads its entry.
    """
    digest, desc = cache_key(stage, code_module or compute.__module__, **parts)
    folder = cache_root() / stage / digest
    if not (folder / "key.json").exists():
        locks = cache_root() / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with _lock(locks / f"{stage}-{digest}.lock"):
            if not (folder / "key.json").exists():  # nobody finished it while we waited
                _compute_into(folder, digest, desc, compute)
        # an entry computing this one spent that time waiting or computing on this one's behalf
        if _INNER_SECONDS:
            _INNER_SECONDS[-1] += time.perf_counter() - start
    try:
        return load(folder)
    except (OSError, json.JSONDecodeError, UnreadableFile) as e:
        if isinstance(e, OSError) and not str(getattr(e, "filename", "")).startswith(str(folder)):
            raise  # not the entry's own file (a model config, a tokenizer): the entry is fine
        raise CacheEntryError(
            f"cache entry {folder} cannot be read ({e}): delete that folder and run again to recompute it"
        ) from None


@contextlib.contextmanager
def _lock(path: pathlib.Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# per entry now being computed (outermost first): the seconds it spent in the entries it needed
# on the way, computing them or waiting for another process's lock on them; its made.json
# counts only the rest. A nested compute that fails charges nothing: its error stops the caller.
_INNER_SECONDS: list = []


def _compute_into(folder: pathlib.Path, digest: str, desc: dict, compute) -> None:
    sweep_orphans(folder.parent)
    # the writer's host and process id are in the name, so a later run can tell an orphan from
    # work in progress
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest}.{_writer()}.", dir=folder.parent))
    try:
        _INNER_SECONDS.append(0.0)
        start = time.perf_counter()
        try:
            compute(tmp)
        finally:
            total, inner = time.perf_counter() - start, _INNER_SECONDS.pop()
        made = {
            "seconds": round(total - inner, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "threads": numerics.settings()["threads"],
            "cpu": numerics.cpu_model(),
        }
        (tmp / "made.json").write_text(json.dumps(made, indent=1, sort_keys=True))
        (tmp / "key.json").write_text(json.dumps(desc, indent=1, sort_keys=True))
        if folder.exists() and not (folder / "key.json").exists():
            shutil.rmtree(folder)  # a damaged entry (its key.json removed): never read, replaced
        try:
            os.rename(tmp, folder)
        except OSError:  # a writer on another host (no shared lock) finished first: keep theirs
            if not (folder / "key.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        mine_and_dead = (
            len(writer) == 2 and writer[0] == host and writer[1].isdigit() and not _alive(int(writer[1]))
        )
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
