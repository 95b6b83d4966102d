"""Command line: re-execute chapters into the book and build it.

    python -m ubtlib chapters                        list the chapters
    python -m ubtlib run CHAPTER [-p NAME VALUE]...  execute one chapter (papermill)
    python -m ubtlib book [--profile P] [--rerun]    execute every chapter (those not executed from
                                                     the same inputs before), then build the HTML
    python -m ubtlib student                         the student edition (no solutions) of the built book
    python -m ubtlib cache ls | export FILE | import FILE
                                                     list the cached stages; share them (a class cache)
    python -m ubtlib paper STAGE ...                 a paper-profile stage on real weights and data
                                                     (finetune, evaluate, defend, privacy; see
                                                     `python -m ubtlib paper STAGE --help`)

A chapter runs from notebooks/<CHAPTER>.ipynb into <out>/<CHAPTER>.ipynb (default
book/chapters/), where it also writes <CHAPTER>.json with its numbers and provenance.
"""

from __future__ import annotations

import argparse
import ast
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


def run_chapter(
    chapter: str,
    parameters: dict,
    out_dir: pathlib.Path | None = None,
    progress: bool = True,
    cell_timeout: int | None = None,
) -> pathlib.Path:
    """Execute one chapter with papermill into `out_dir` (default: the book's); fails before
    compute on unknown parameters. Records its `chapter_inputs` beside it once it has run.

    `cell_timeout` (seconds per cell, None: no limit) makes a stuck kernel fail fast; the
    smoke tests set it, the book does not (Table 1's one cell runs for over an hour at pocket).
    """
    import papermill

    chapter = resolve_chapter(chapter)
    known = notebook_parameters(chapter)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise SystemExit(
            f"chapter {chapter!r} has no parameter {', '.join(map(repr, unknown))}: "
            f"accepted are {', '.join(sorted(known))}"
        )
    out_dir = pathlib.Path(out_dir or DEFAULT_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{chapter}.ipynb"
    inputs = chapter_inputs(chapter, parameters)
    # a run that fails or is stopped leaves a partial notebook: it must never pass for current
    inputs_file(out_dir, chapter).unlink(missing_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{chapter}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(out_dir),
        kernel_name="python3",
        progress_bar=progress,
        log_output=False,
        execution_timeout=cell_timeout,
    )
    print(f"{chapter}: executed in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    if chapter_inputs(chapter, parameters) == inputs:  # nothing was edited while it ran
        from ubtlib.pipeline.cache import write_json

        write_json(inputs_file(out_dir, chapter), inputs)
    return out


def inputs_file(out_dir: pathlib.Path, chapter: str) -> pathlib.Path:
    """Where an executed chapter keeps the `chapter_inputs` it ran with."""
    return pathlib.Path(out_dir) / f"{chapter}.inputs.json"


def _imports_of(notebook_text: str) -> str | None:
    """The import statements of a notebook's code cells, as one module's source (None where a
    cell does not parse as Python once its IPython lines are dropped)."""
    found = []
    for cell in json.loads(notebook_text)["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(src)
        except SyntaxError:
            return None
        found += [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(found)


def chapter_inputs(chapter: str, parameters: dict, notebooks: pathlib.Path | None = None) -> dict:
    """What an executed chapter's pages follow from: the notebook's text, the parameters it is
    given, the code of the ubtlib modules its imports reach (hashed as a stage's code is, so an
    edited comment keeps it; the files as they are now), every installed distribution's
    version, the kernels torch computes with and the GPUs it sees. The cached stages are
    functions of these, so equal inputs make the same pages."""
    import hashlib
    import importlib.metadata

    import torch

    from ubtlib import numerics
    from ubtlib.pipeline import cache

    text = ((notebooks or NOTEBOOKS) / f"{chapter}.ipynb").read_text()
    sources = cache.package_sources()
    imports = _imports_of(text)
    module = "ubtlib._chapter"  # the notebook's imports, seen as a module of the package
    code = (
        cache.code_hash(module, {**sources, module: imports})
        if imports is not None
        else hashlib.sha256("".join(sources.values()).encode()).hexdigest()[:16]  # every module
    )
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return json.loads(
        json.dumps(
            {
                "notebook": hashlib.sha256(text.encode()).hexdigest()[:16],
                "parameters": parameters,
                "code": code,
                "distributions": hashlib.sha256("\n".join(dists).encode()).hexdigest()[:16],
                "numerics": numerics.key(),
                "gpus": gpus,
            },
            sort_keys=True,
            default=str,
        )
    )


def is_current(
    chapter: str, parameters: dict, out_dir: pathlib.Path | None = None, notebooks: pathlib.Path | None = None
) -> bool:
    """True when `out_dir` (default: the book's) holds the chapter executed with today's
    `chapter_inputs`."""
    out_dir = pathlib.Path(out_dir or DEFAULT_OUT)
    if not all((out_dir / f"{chapter}{ext}").exists() for ext in (".ipynb", ".json")):
        return False
    try:
        saved = json.loads(inputs_file(out_dir, chapter).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return saved == chapter_inputs(chapter, parameters, notebooks)


def build_book(root: pathlib.Path = ROOT, student: bool = False) -> pathlib.Path:
    """Build the HTML book from scratch (warnings are errors, like CI): the instructor's
    edition into _build/html, or with `student` the same pages without any solution into
    _build/student/_build/html. Returns the HTML folder."""
    # the console script installed next to this interpreter (jupyter_book has no __main__)
    exe = pathlib.Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe), "build", "--all", "-W", "-n", "--keep-going"]
    html = root / "_build" / "html"
    if student:
        config = yaml.safe_load((root / "_config.yml").read_text())
        config["sphinx"]["config"]["hide_solutions"] = True
        out = root / "_build" / "student"
        out.mkdir(parents=True, exist_ok=True)
        (out / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd += ["--config", str(out / "_config.yml"), "--path-output", str(out)]
        html = out / "_build" / "html"
    subprocess.run([*cmd, str(root)], check=True)
    print(f"open {html / 'index.html'}")
    return html


def _parse_params(pairs) -> dict:
    # values are YAML, so -p seed 3 is an int and -p token_level false a boolean; YAML 1.1 reads
    # 1e-4 (no dot) as a string, so a string that is a number is taken as the number
    return {name: _number_or_value(yaml.safe_load(value)) for name, value in (pairs or [])}


def _number_or_value(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


PAIRS_HELP = (
    "a CleanCLIP-format CSV (image, caption[, is_backdoor]) or WebDataset shards "
    "(a .tar, a folder of them or a brace pattern; see `paper shards`)"
)


def _paper_parser(sub) -> None:
    """`paper` sub-commands: the paper profile's stages on real weights and data (paper_scale)."""
    paper = sub.add_parser("paper", help="a paper-profile stage on published weights and real data (GPU)")
    stages = paper.add_subparsers(dest="stage", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a profile override, e.g. -p finetune_lr 1e-5 (as for chapters)",
    )
    common.add_argument(
        "--pretrained",
        default=None,
        help="open_clip tag or .safetensors file of ViT-B-32 weights (default: openai for "
        "the UBT stages, laion400m_e32 for privacy)",
    )
    common.add_argument("--seed", type=int, default=None, help="default: the paper profile's (42)")
    common.add_argument("--device", default=None, help="cuda (default), cuda:N or cpu")
    common.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 8 on CUDA)")
    ft = stages.add_parser("finetune", parents=[common], help="poisoned fine-tuning on an image-caption CSV")
    ft.add_argument("--csv", required=True, help=PAIRS_HELP)
    ft.add_argument(
        "--attack",
        required=True,
        help="badnet, blended, sig, wanet or ssba (ssba also trains "
        "its encoder on the CSV's images and saves it beside --out)",
    )
    ft.add_argument("--out", required=True, help="the poisoned weights (.safetensors; a .json beside it)")
    ev = stages.add_parser("evaluate", parents=[common], help="zero-shot top-1/top-5, CA and ASR on ImageNet")
    ev.add_argument("--imagenet", required=True, help="folder of 1,000 class folders (WordNet ids or 0..999)")
    ev.add_argument(
        "--weights", default=None, help="our fine-tuned .safetensors (default: the published model)"
    )
    ev.add_argument("--attack", default=None, help="measure CA and ASR with this attack's trigger")
    ev.add_argument("--out", default=None, help="write the numbers to this .json")
    ev.add_argument(
        "--ssba-encoder", default=None, help="the SSBA-style encoder finetune wrote (attack ssba)"
    )
    de = stages.add_parser(
        "defend", parents=[common], help="UBT, CleanCLIP or the oracle-guided defense on a poisoned model"
    )
    de.add_argument(
        "--defense",
        required=True,
        help="ubt, ubt_no_token (UBT without token-level unlearning), cleanclip or oracle (oracle-guided)",
    )
    de.add_argument("--weights", required=True, help="the poisoned model (.safetensors from finetune)")
    de.add_argument("--csv", default=None, help="the poisoned training pairs (UBT): " + PAIRS_HELP)
    de.add_argument("--attack", default=None, help="the attack the CSV was poisoned with (UBT)")
    de.add_argument(
        "--clean-csv",
        default=None,
        help="the defender's clean pairs (CleanCLIP): " + PAIRS_HELP,
    )
    de.add_argument(
        "--ssba-encoder", default=None, help="the SSBA-style encoder finetune wrote (attack ssba)"
    )
    de.add_argument("--segmenter", default=None, help="the oracle's torchvision architecture (oracle)")
    de.add_argument(
        "--segmenter-weights", default=None, help="its weights: .safetensors, or torchvision's .pth (oracle)"
    )
    de.add_argument(
        "--segmenter-classes",
        default=None,
        help="its class names, background first, one per line (oracle; default: the 21 Pascal VOC labels)",
    )
    de.add_argument("--out", required=True, help="the defended weights (.safetensors; a .json beside it)")
    sh = stages.add_parser("shards", help="a CleanCLIP-format CSV as WebDataset shards, or shards as a CSV")
    sh.add_argument("--csv", default=None, help="write this CSV's pairs as shards in --out (a folder)")
    sh.add_argument(
        "--shards",
        default=None,
        help="write these shards (a .tar, a folder, a brace pattern) as the CSV --out",
    )
    sh.add_argument(
        "--out", required=True, help="the shards' folder, or the CSV (its images go in images/ beside it)"
    )
    sh.add_argument("--per-shard", type=int, default=10_000, help="pairs per shard (img2dataset's default)")
    pr = stages.add_parser("privacy", parents=[common], help="unlearning names / faces, judged by the IDIA")
    pr.add_argument("--encoder", required=True, help="text (Fig. 2), image (Fig. 3) or both")
    pr.add_argument("--people", required=True, help="one folder of photos per person (the IDIA's photos)")
    pr.add_argument("--distractors", required=True, help="candidate names beside the people, one per line")
    pr.add_argument("--imagenet-v2", required=True, help="ImageNet-V2 folder (0..999)")
    pr.add_argument("--captions", default=None, help="caption corpus for the name backdoors (text)")
    pr.add_argument("--eval-captions", default=None, help="captions for the similarity metrics (text)")
    pr.add_argument("--triggers", default=None, help="per-person folders of face crops to paste (image)")
    pr.add_argument("--clean", default=None, help="CSV of clean images to paste faces onto (image)")
    pr.add_argument(
        "--clean-eval", default=None, help="CSV of clean images for the similarity metrics (image)"
    )
    pr.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="people removed at once (default 1 2 4 ... 64)"
    )
    pr.add_argument("--repeats", type=int, default=None, help="default: the profile's (10)")
    pr.add_argument("--reg", choices=("both", "on", "off"), default="both", help="weight regularisation")
    pr.add_argument("--neutral", default=None, help="the term names are mapped to (default 'human')")
    pr.add_argument("--out", required=True, help="results, one row per run (.csv; the IDIA before in .json)")


def _run_paper(args) -> None:
    import dataclasses

    from ubtlib.paper_scale.data import DataError
    from ubtlib.pipeline.profiles import configure

    try:
        if args.stage == "shards":  # a conversion: no profile, no model
            _convert_pairs(args)
            return
        prof = configure("paper", seed=args.seed, device=args.device, **_parse_params(args.parameter))
        if args.pretrained:
            prof = dataclasses.replace(
                prof, paper_pretrained=args.pretrained, privacy_pretrained=args.pretrained
            )
        _paper_stage(prof, args)
    except (ValueError, FileNotFoundError, DataError) as e:  # bad input: say what, not where in the code
        raise SystemExit(f"python -m ubtlib paper {args.stage}: {e}") from None


def _convert_pairs(args) -> None:
    from ubtlib.paper_scale import shards

    if (args.csv is None) == (args.shards is None):
        raise ValueError("give one of --csv (to shards) or --shards (to a CSV)")
    if args.csv is not None:
        done = shards.write_shards(args.csv, args.out, args.per_shard)
    else:
        done = shards.write_csv(args.shards, args.out)
    print(json.dumps(done), flush=True)


def _paper_stage(prof, args) -> None:
    from ubtlib.clip.distributed import launched_processes
    from ubtlib.paper_scale import runs as paper_scale

    processes = launched_processes()
    if processes > 1 and args.stage not in ("finetune", "defend"):  # each process would run it whole
        raise ValueError(
            f"paper {args.stage} runs in one process, not under torchrun ({processes} processes); "
            "accepted under torchrun: paper finetune, paper defend (UBT, CleanCLIP)"
        )

    if args.stage == "finetune":
        paper_scale.finetune_run(prof, args.csv, args.attack, args.out, args.workers)
    elif args.stage == "evaluate":
        paper_scale.evaluate_run(
            prof, args.imagenet, args.attack, args.weights, args.out, args.workers, args.ssba_encoder
        )
    elif args.stage == "defend":
        from ubtlib.checks import check_choice
        from ubtlib.paper_scale.runs import PAPER_DEFENSES

        check_choice("defense", args.defense, PAPER_DEFENSES)  # before any file is read
        if args.defense != "cleanclip" and (args.csv is None or args.attack is None):
            raise SystemExit(f"--defense {args.defense} needs --csv and --attack")
        paper_scale.defend_run(
            prof,
            args.defense,
            args.weights,
            args.csv,
            args.attack,
            args.out,
            args.clean_csv,
            args.ssba_encoder,
            args.segmenter,
            args.segmenter_weights,
            args.segmenter_classes,
        )
    else:
        regs = {"both": (True, False), "on": (True,), "off": (False,)}[args.reg]
        paper_scale.privacy_run(
            prof,
            args.encoder,
            args.people,
            args.distractors,
            args.imagenet_v2,
            args.out,
            args.captions,
            args.eval_captions,
            args.triggers,
            args.clean,
            args.clean_eval,
            args.sizes,
            args.repeats,
            regs,
            args.neutral,
            args.workers,
        )


def _run_cache(args) -> None:
    from ubtlib.pipeline import sharing

    if args.cache_cmd == "ls":
        for e in sharing.entries():
            params = json.dumps(sharing.parameters(e["desc"]), sort_keys=True, default=str)
            status = "read here" if e["problem"] is None else f"not read here: {e['problem']}"
            print(f"{e['stage']:<16} {e['digest']}  {e['size'] / 2**20:8.1f} MB  {status}")
            print(f"    {params[:300]}{'...' if len(params) > 300 else ''}")
    elif args.cache_cmd == "export":
        r = sharing.export(args.file)
        print(
            f"wrote {r['exported']} entries ({r['bytes'] / 2**20:.1f} MB) to {args.file}; "
            f"{r['left_out']} entries this checkout does not read left out"
        )
    else:
        try:
            r = sharing.import_entries(args.file)
        except (OSError, ValueError) as e:
            raise SystemExit(str(e)) from None
        print(f"installed {len(r['installed'])} entries, {len(r['present'])} already here")
        for name, reason in r["refused"].items():
            print(f"refused {name}: {reason}", file=sys.stderr)
        if r["refused"]:
            raise SystemExit(f"{len(r['refused'])} entries refused (above); the others are installed")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m ubtlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("chapters", help="list the chapters and their parameters")
    run = sub.add_parser("run", help="execute one chapter into the book")
    run.add_argument("chapter")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    run.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    run.add_argument("--build", action="store_true", help="rebuild the HTML book afterwards")
    sub.add_parser("student", help="build the student edition (no solutions) from the executed chapters")
    book = sub.add_parser("book", help="execute every chapter, then build the HTML book")
    book.add_argument("--profile", default=None, help="smoke, pocket (default) or paper")
    book.add_argument(
        "--rerun", action="store_true", help="execute every chapter, also those whose inputs are unchanged"
    )
    book.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="passed to every chapter that has it",
    )
    cache = sub.add_parser("cache", help="list the cached stages, or export / import them (a class cache)")
    cache_cmd = cache.add_subparsers(dest="cache_cmd", required=True)
    cache_cmd.add_parser(
        "ls", help="every entry: stage, size, whether this checkout reads it, its parameters"
    )
    for name, text in (
        ("export", "write the entries this checkout reads to FILE (.tar.gz)"),
        ("import", "install the entries of FILE that this checkout reads"),
    ):
        cache_cmd.add_parser(name, help=text).add_argument("file", type=pathlib.Path)
    _paper_parser(sub)
    args = ap.parse_args(argv)

    if args.cmd == "cache":
        _run_cache(args)
    elif args.cmd == "student":
        build_book(student=True)
    elif args.cmd == "chapters":
        for c in chapters():
            print(c)
            for name, p in notebook_parameters(c).items():
                print(f"    {name}: {p['inferred_type_name']} = {p['default']}  {p['help']}")
    elif args.cmd == "paper":
        _run_paper(args)
    elif args.cmd == "run":
        run_chapter(args.chapter, _parse_params(args.parameter), args.out)
        if args.build:
            build_book()
    else:
        params = _parse_params(args.parameter)
        if args.profile:
            params["profile"] = args.profile
        execute_book(params, rerun=args.rerun)
        build_book()


def book_timings_file() -> pathlib.Path:
    """Where `book` keeps each chapter's seconds from the builds so far, per profile and other
    parameters (beside the cache, whose entries decide how long the next build takes)."""
    from ubtlib.pipeline.cache import cache_root

    return cache_root() / "book-timings.json"


def execute_book(params: dict, rerun: bool = False) -> dict:
    """Execute every chapter with the `params` it takes, saying before each which chapter of
    how many it is, the time so far and what the last build took for the chapters left;
    returns {chapter: seconds}, also saved in `book_timings_file`. A chapter already executed
    from the same inputs (`is_current`) is kept, unless `rerun`."""
    from ubtlib.pipeline.cache import write_json

    # a build with other parameters (more seeds, another attack) takes its own time
    build = " ".join(
        [params.get("profile", "pocket")] + [f"{k}={v}" for k, v in sorted(params.items()) if k != "profile"]
    )
    path = book_timings_file()
    try:  # a damaged timings file costs the estimate, never the build
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}
    saved = saved if isinstance(saved, dict) else {}
    last = saved.get(build, {})
    names, timings, begun = chapters(), {}, time.perf_counter()
    for i, c in enumerate(names, 1):
        so_far = time.perf_counter() - begun
        left = [last.get(n) for n in names[i - 1 :]]
        hint = (
            f"; the last {build} build took {_minutes(sum(left))} for this chapter and the rest "
            "(less where its stages are cached)"
            if all(t is not None for t in left)
            else ""
        )
        print(f"[book {i}/{len(names)}] {c}: {_minutes(so_far)} so far{hint}", flush=True)
        known = notebook_parameters(c)
        taken = {k: v for k, v in params.items() if k in known}
        start = time.perf_counter()
        if not rerun and is_current(c, taken):
            print(f"{c}: kept, executed from the same notebook, parameters, code, libraries and kernels")
            continue  # its time stays that of the run that made it
        run_chapter(c, taken)
        timings[c] = round(time.perf_counter() - start, 1)
        # saved after each chapter, so a build stopped half-way still informs the next one
        write_json(path, {**saved, build: {**last, **timings}})
    kept = len(names) - len(timings)
    print(
        f"[book] {len(timings)} chapters executed, {kept} kept, in {_minutes(time.perf_counter() - begun)}:",
        json.dumps(timings),
    )
    return timings


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
