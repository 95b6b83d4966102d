"""Command line: re-execute chapters into the book and build it.

    python -m ubtlib chapters                        list the chapters
    python -m ubtlib run CHAPTER [-p NAME VALUE]...  execute one chapter (papermill)
    python -m ubtlib book [--profile P]              execute every chapter, then build the HTML

A chapter runs from notebooks/<CHAPTER>.ipynb into <out>/<CHAPTER>.ipynb (default
book/chapters/), where it also writes <CHAPTER>.json with its numbers and provenance.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_OUT = ROOT / "book" / "chapters"


def chapters() -> list:
    """Chapter names in reading order (the notebooks' file names sort in order)."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def notebook_parameters(chapter: str) -> dict:
    """The chapter's parameters with their defaults and comments (papermill inspection)."""
    import papermill
    return papermill.inspect_notebook(str(NOTEBOOKS / f"{chapter}.ipynb"))


def resolve_chapter(name: str) -> str:
    names = chapters()
    if name in names:
        return name
    matches = [c for c in names if c.split("_", 1)[-1] == name or c.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    raise SystemExit(f"unknown chapter {name!r}: choose one of {', '.join(names)}")


def run_chapter(chapter: str, parameters: dict, out_dir: pathlib.Path = DEFAULT_OUT,
                progress: bool = True) -> pathlib.Path:
    """Execute one chapter with papermill; fails before compute on unknown parameters."""
    import papermill
    chapter = resolve_chapter(chapter)
    known = notebook_parameters(chapter)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise SystemExit(f"chapter {chapter!r} has no parameter {', '.join(map(repr, unknown))}: "
                         f"accepted are {', '.join(sorted(known))}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{chapter}.ipynb"
    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOKS / f"{chapter}.ipynb"), str(out), parameters=parameters,
                               cwd=str(out_dir), kernel_name="python3", progress_bar=progress,
                               log_output=False)
    print(f"{chapter}: executed in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return out


def build_book(root: pathlib.Path = ROOT) -> None:
    """Build the HTML book from scratch (warnings are errors, like CI)."""
    # the console script installed next to this interpreter (jupyter_book has no __main__)
    exe = pathlib.Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe), "build", "--all", "-W", "-n", "--keep-going", str(root)]
    subprocess.run(cmd, check=True)
    print(f"open {root / '_build' / 'html' / 'index.html'}")


def _parse_params(pairs) -> dict:
    # values are YAML, so -p seed 3 is an int and -p token_level false a boolean
    return {name: yaml.safe_load(value) for name, value in (pairs or [])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ubtlib", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("chapters", help="list the chapters and their parameters")
    run = sub.add_parser("run", help="execute one chapter into the book")
    run.add_argument("chapter")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    run.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    run.add_argument("--build", action="store_true", help="rebuild the HTML book afterwards")
    book = sub.add_parser("book", help="execute every chapter, then build the HTML book")
    book.add_argument("--profile", default=None, help="smoke, pocket (default) or paper")
    book.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                      help="passed to every chapter that has it")
    args = ap.parse_args(argv)

    if args.cmd == "chapters":
        for c in chapters():
            print(c)
            for name, p in notebook_parameters(c).items():
                print(f"    {name}: {p['inferred_type_name']} = {p['default']}  {p['help']}")
    elif args.cmd == "run":
        run_chapter(args.chapter, _parse_params(args.parameter), args.out)
        if args.build:
            build_book()
    else:
        params = _parse_params(args.parameter)
        if args.profile:
            params["profile"] = args.profile
        timings = {}
        for c in chapters():
            known = notebook_parameters(c)
            start = time.perf_counter()
            run_chapter(c, {k: v for k, v in params.items() if k in known})
            timings[c] = round(time.perf_counter() - start, 1)
        build_book()
        print("chapter seconds:", json.dumps(timings))
