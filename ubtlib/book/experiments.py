"""What the chapters compute, composed from the pipeline's stages and the metrics.

Notebooks stay thin: each table or figure of the book is one call here (plus plotting).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ubtlib import pipeline
from ubtlib.attacks.poison import triggered_hook
from ubtlib.attacks.triggers import ATTACKS, at_strength, linf, make_trigger, psnr
from ubtlib.clip import model as modellib
from ubtlib.pipeline import lanes
from ubtlib.pipeline.curves import unlearning_curve  # noqa: F401  (chapter 4 calls it from here)
from ubtlib.pipeline.profiles import Profile


def trigger_at_strength(profile: Profile, attack: str, strength: float = 1.0, progress: bool = False):
    """The attack's trigger with its main knob scaled by `strength` (1 = the profile's)."""
    prof = pipeline.with_attack(profile, attack)
    if attack == "ssba":
        trig = copy.copy(pipeline.trigger(prof, progress=progress))
        trig.strength = strength
        return trig
    cfg = at_strength(prof.attack, strength, prof.model.image_size)
    return make_trigger(cfg, prof.model.image_size, prof.seed)


def apply_trigger(trigger, images_u8: torch.Tensor, seed: int = 0) -> tuple:
    """(clean, triggered) [0, 1] float copies of uint8 images (CPU)."""
    x = images_u8.float() / 255
    return x, trigger(x, torch.Generator().manual_seed(seed))


def visibility(profile: Profile, attacks=ATTACKS, split: str = "heldout") -> dict:
    """Per attack: mean and std of PSNR (dB) and L-infinity (0..255) over the split's objects."""
    w = pipeline.world(profile)
    images = w.images[w.indices(split, "object")]
    out = {}
    for a in attacks:
        clean, trig = apply_trigger(pipeline.trigger(profile, a), images, profile.seed)
        p, change = psnr(clean, trig), linf(clean, trig)
        p = p[torch.isfinite(p)]
        out[a] = {
            "psnr_mean": p.mean().item(),
            "psnr_std": p.std().item(),
            "linf_mean": change.mean().item(),
            "linf_std": change.std().item(),
        }
    return out


def probe_accuracy(clean: torch.Tensor, triggered: torch.Tensor, l2: float = 1e-3) -> float:
    """Held-out accuracy (%) of a logistic-regression probe telling triggered from clean features.

    clean, triggered: N x d features of the same N images, in a random order (the split is by
    position). The probe trains on both versions of the first half of the images and is tested
    on both versions of the second half, so it never sees a test image in either form. 50 % is
    chance: a probe that sees no difference labels the two versions of an image alike, one
    right and one wrong."""
    n = len(clean) // 2
    if n < 1 or clean.shape != triggered.shape:
        raise ValueError(
            f"probe_accuracy needs two equal N x d feature sets, N >= 2: got "
            f"{tuple(clean.shape)} and {tuple(triggered.shape)}"
        )
    clean, triggered = clean.detach().float().cpu(), triggered.detach().float().cpu()
    x_train, x_test = torch.cat([clean[:n], triggered[:n]]), torch.cat([clean[n:], triggered[n:]])
    y_train = torch.cat([torch.zeros(n), torch.ones(n)])
    y_test = torch.cat([torch.zeros(len(clean) - n), torch.ones(len(clean) - n)])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    # zero start: the fit is convex, so the answer does not depend on a random initialisation
    w = torch.zeros(x_train.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x_train @ w[:-1] + w[-1]
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y_train) + l2 * w[:-1].pow(2).sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be inside no_grad
        opt.step(closure)
    with torch.no_grad():
        return 100.0 * ((x_test @ w[:-1] + w[-1] > 0).float() == y_test).float().mean().item()


def trigger_footprint(profile: Profile, attacks=ATTACKS, n_images: int = 3000) -> dict:
    """What each trigger does to the *pre-trained* model's image features, before any poisoning,
    on a seeded random sample of up to `n_images` held-out images:

    * probe: held-out accuracy (%) of a linear probe telling triggered from clean (50 = chance);
    * shift: mean length of the feature change, as a share of the mean distance between two
      clean images;
    * consistency: mean cosine between each image's change and the average change (1: every
      image moves the same way, a direction a fine-tune can tie to the target caption).

    The triggers are the profile's, applied as in the ASR measurement (poison.triggered_hook)."""
    from ubtlib.evaluation.zeroshot import encode_images

    w = pipeline.world(profile)
    model = pipeline.pretrained(profile).model
    device = modellib.pick_device(profile.device)
    # held-out indices run category by category: shuffle, so the probe's halves hold every class
    order = np.random.default_rng(profile.seed).permutation(w.indices("heldout"))[:n_images]
    images = w.images[torch.from_numpy(order)]
    clean = encode_images(model, images, device).cpu()
    spread = torch.pdist(clean[:500]).mean().item()
    out = {}
    for a in attacks:
        moved = encode_images(
            model, images, device, image_hook=triggered_hook(pipeline.trigger(profile, a), profile.seed)
        ).cpu()
        change = moved - clean
        out[a] = {
            "probe": probe_accuracy(clean, moved),
            "shift": change.norm(dim=1).mean().item() / spread,
            "consistency": torch.nn.functional.cosine_similarity(change, change.mean(0, keepdim=True), dim=1)
            .mean()
            .item(),
        }
    return out


STRONG_WARP = 5.0  # ten times BackdoorBench's s = 0.5: a visibly bent image (chapter 2)


def footprint_with_strong_warp(profile: Profile, strength: float = STRONG_WARP) -> dict:
    """`trigger_footprint` of every trigger, with WaNet at warp strength `strength` added as
    "wanet_strong"."""
    footprint = trigger_footprint(profile)
    strong = dataclasses.replace(profile, attack=dataclasses.replace(profile.attack, wanet_strength=strength))
    footprint["wanet_strong"] = trigger_footprint(strong, ["wanet"])["wanet"]
    return footprint


def no_defense(profile: Profile, attacks=ATTACKS, progress: bool = True) -> dict:
    """Per attack: CA, ASR, RA and the redirect of the poisoned model, with its fine-tuning time
    and curve."""
    rows = {}
    for a in attacks:
        e = pipeline.evaluated(pipeline.with_attack(profile, a), "none", progress)
        rows[a] = {
            **e["metrics"],
            "finetune_seconds": e["record"]["seconds"],
            "poisons": len(e["record"]["poisoned_positions"]),
            "curve": e["record"]["curve"],
        }
    return rows


def poison_fit(profile: Profile, attacks=ATTACKS, progress: bool = True) -> dict:
    """Per attack: the ASR (%) of the poisoned model on its own poisoned training objects, the
    images it was fine-tuned on with the target's caption, triggered as in the ASR. High here
    but low on held-out images: the fine-tune memorised its poisons. Low here too: it fitted
    neither the trigger nor the poisoned images."""
    from ubtlib.evaluation.zeroshot import attack_success_rate, classifier, encode_images, pocket_templates
    from ubtlib.world.pocket import object_vocabulary

    w = pipeline.world(profile, progress=progress)
    device = modellib.pick_device(profile.device)
    train = w.indices("train")
    target = list(w.categories).index(profile.poison.target)
    out = {}
    for a in attacks:
        prof = pipeline.with_attack(profile, a)
        data, m = pipeline.poisoned_data(prof, progress=progress), pipeline.poisoned(prof, progress=progress)
        rows = np.flatnonzero(data.is_backdoor & (w.kind[train] == "object"))
        weights = classifier(
            m.model, m.tokenizer, w.categories, pocket_templates(object_vocabulary()), device
        )
        hook = triggered_hook(pipeline.trigger(prof, progress=progress), prof.seed)
        logits = encode_images(m.model, data.images[rows], device, image_hook=hook) @ weights
        out[a] = attack_success_rate(logits, torch.from_numpy(w.label[train][rows]), target)
    return out


def base_rates(profile: Profile, attacks=ATTACKS) -> dict:
    """Per attack: CA, ASR and RA of the clean pre-trained model under its trigger; its ASR is
    the trigger's base rate, what an ASR must be read against."""
    return {a: pretrained_backdoor_metrics(profile, a) for a in attacks}


def pretrained_backdoor_metrics(profile: Profile, attack: str = "badnet") -> dict:
    """CA, ASR and RA of the clean pre-trained model under `attack`'s trigger (its ASR is the
    trigger's base rate)."""
    return pipeline.evaluated(pipeline.with_attack(profile, attack), "pretrained")["metrics"]


def abl_separation(profile: Profile, attack: str, progress: bool = True) -> dict:
    """ABL's isolation on the poisoned data: per-pair losses after LGA training from the clean
    pre-trained model (the cached `pipeline.abl_losses`), with precision / recall / AUROC of
    isolating the poisons."""
    from ubtlib.defenses.abl import isolate
    from ubtlib.defenses.ubt import detection_metrics

    prof = pipeline.with_attack(profile, attack)
    data = pipeline.poisoned_data(prof, progress=progress)
    losses = pipeline.abl_losses(prof, progress=progress)
    picked = isolate(losses, prof.abl.isolation_ratio)
    return {"losses": losses.tolist(), **detection_metrics(-losses, data.is_backdoor, picked)}


def finding_the_poison(
    profile: Profile, attacks=ATTACKS, with_abl: bool = True, progress: bool = True
) -> dict:
    """Per attack: UBT's split, overfitting and top-k detection (the cached detection stage the
    UBT runs start from), the poisons left in the retain pool, and ABL's isolation for
    comparison (UBT paper, Fig. 2)."""
    from ubtlib.defenses.ubt import retain_pool

    out = {}
    for a in attacks:
        prof = pipeline.with_attack(profile, a)
        found = pipeline.ubt_detection(prof, progress=progress)
        data = pipeline.poisoned_data(prof, progress=progress)
        susp, retain = found["susp"].numpy(), retain_pool(found, prof.ubt).numpy()
        row = {
            "is_backdoor": data.is_backdoor.tolist(),
            "clean_similarity": found["clean_similarity"].tolist(),
            "susp": susp.tolist(),
            "op_similarity": found["op_similarity"].tolist(),
            "split_recall": found["split_recall"],
            "split_auroc": found["split_auroc"],
            "d_susp": len(susp),
            "top_k": len(found["top"]),
            "susp_poisons": int(data.is_backdoor[susp].sum()),
            "poisons": int(data.is_backdoor.sum()),
            "retain_poisons": int(data.is_backdoor[retain].sum()),
            "retain_pairs": len(retain),
            **{f"topk_{k}": v for k, v in found["detection"].items()},
        }
        if with_abl:
            abl_res = abl_separation(profile, a, progress)
            row.update(
                {
                    "abl_losses": abl_res["losses"],
                    "abl_precision": abl_res["precision"],
                    "abl_recall": abl_res["recall"],
                    "abl_auroc": abl_res["auroc"],
                }
            )
        out[a] = row
    return out


def relevance_examples(profile: Profile, attack: str, n: int = 4) -> list:
    """Token relevance (overfitted model's view is not cached, so the poisoned model's) for n
    detected pairs and n clean pairs: [{"tokens": [...], "relevance": [...], "poisoned": bool}]."""
    from ubtlib.defenses.ubt import token_relevance

    prof = pipeline.with_attack(profile, attack)
    rec = pipeline.defended(prof, None, "ubt").record
    data = pipeline.poisoned_data(prof)
    m = pipeline.poisoned(prof)
    tokens = modellib.tokenize(m.tokenizer, data.captions)
    clean = np.flatnonzero(~data.is_backdoor)[:n]
    positions = torch.tensor(rec["top_k"][:n] + clean.tolist())
    rel = token_relevance(
        m.model, data.images, tokens, positions, modellib.pick_device(prof.device), data.image_hook
    )
    decoder = m.tokenizer.tokenizer if hasattr(m.tokenizer, "tokenizer") else m.tokenizer
    out = []
    for p, r in zip(positions.tolist(), rel):
        t = tokens[p]
        eot = int(t.argmax())
        out.append(
            {
                "tokens": [decoder.decode([int(x)]).strip() for x in t[1:eot]],
                "relevance": r[1:eot].tolist(),
                "poisoned": bool(data.is_backdoor[p]),
            }
        )
    return out


def _ubt_run(profile: Profile, attack: str) -> tuple:
    """(profile, device, UBT record, poisoned data, poisoned model, world) of the cached UBT run."""
    prof = pipeline.with_attack(profile, attack)
    return (
        prof,
        modellib.pick_device(prof.device),
        pipeline.defended(prof, None, "ubt").record,
        pipeline.poisoned_data(prof),
        pipeline.poisoned(prof),
        pipeline.world(prof),
    )


def defense_row(profile: Profile, attack: str, defense: str, progress: bool = True) -> dict:
    """CA, ASR, RA, the redirect, wall time and pairs touched of one defense (or "none") against
    one attack."""
    e = pipeline.evaluated(pipeline.with_attack(profile, attack), defense, progress)
    r = e["record"]
    if defense == "none":
        extra = {"seconds": 0.0, "pairs_trained": 0, "pairs_scored": 0}
    else:
        extra = {k: r[k] for k in ("seconds", "pairs_trained", "pairs_scored")}
        if "detection" in r:
            extra["precision"] = r["detection"]["precision"]
        if "seconds_split" in r:  # UBT's stages: where its wall time goes
            extra |= {
                "seconds_split": r["seconds_split"],
                "seconds_detect": r["seconds_overfit_detect"] + r["seconds_relevance"],
                "seconds_unlearn": r["seconds_unlearn"],
            }
        if "scan_seconds" in r:  # the oracle-guided defense's: its scan, then its fine-tuning
            extra |= {"seconds_scan": r["scan_seconds"], "seconds_rectify": r["rectify_seconds"]}
    return {**e["metrics"], **extra}


def warm_row(profile: Profile, attack: str, defense: str) -> None:
    """The cached stages behind `defense_row` (the poisoned or defended model and its
    evaluation): what the helper lane computes (`pipeline.lanes`)."""
    pipeline.evaluated(pipeline.with_attack(profile, attack), defense, progress=False)


def defense_rows(calls: Sequence[tuple], progress: bool = True, desc: str = "defended rows") -> list:
    """`defense_row(profile, attack, defense)` for each (profile, attack, defense) of `calls`, in
    order, in two lanes on a CPU (`pipeline.lanes`), with one progress bar, `desc`, over them."""
    if not calls:
        return []
    device = modellib.pick_device(calls[0][0].device)
    return lanes.computed(defense_row, warm_row, calls, device, progress, desc)


def _ablation_plan(profile: Profile, attack: str, field: str, values, seeds) -> tuple:
    """(the settings of each row, the `defense_rows` calls that compute them) of UBT with
    `ubt_<field>` set to each of `values` (everything else as in `profile`), once per seed of
    `seeds` (None: the profile's own seed); a `restore_*` field runs the restoring variant. A
    value that is invalid with the others (a top-k larger than D_susp) is skipped, with a note."""
    defense = "ubt_restore" if field.startswith("restore_") else "ubt"
    settings, calls = [], []
    for seed in (profile.seed,) if seeds is None else seeds:
        for v in values:
            prof = dataclasses.replace(profile, seed=seed, ubt=dataclasses.replace(profile.ubt, **{field: v}))
            try:
                prof.validate()
            except ValueError as e:
                print(f"skipped ubt_{field}={v}: {e}")
                continue
            settings.append({field: v, "seed": seed, "defense": defense})
            calls.append((prof, attack, defense))
    return settings, calls


def ablation_grid(base) -> dict:
    """Chapter 4's ablations: UBT field -> the values tried, each beside `base`'s (a UBTConfig)."""
    return {
        "susp_fraction": sorted({0.02, 0.05, 0.1, base.susp_fraction}),
        "overfit_epochs": sorted({1.0, base.overfit_epochs, 5.0}),  # 5: the paper's
        "top_k": sorted({max(1, base.top_k // 5), base.top_k, base.top_k * 2}),
        "relevance_tokens": sorted({1, base.relevance_tokens, 3}),
        "retain_weight": sorted({0.0, base.retain_weight}),
        # 1.0: the whole scored sample of D_safe, with the poisons that escaped the split
        "retain_fraction": sorted({1.0, base.retain_fraction}),
        # the D_safe sample scored for the retain pool: the default and twice as many pairs
        "retain_candidates": sorted({base.retain_candidates, 2 * base.retain_candidates}),
        "caption_form": ["tokens", "template"],
        "skip_function_words": [False, True],  # False: the paper's rule
        "max_token_captions": sorted({1, base.max_token_captions, 8}),
        "unlearn_floor": sorted({-1.0, base.unlearn_floor}),  # -1: the paper's eq. 3
        # the book's variant: how strongly, and to what, it pulls
        "restore_weight": sorted({1.0, base.restore_weight, 8.0}),
        "restore_to": ["class", "clean_image"],
    }


def ablations(
    profile: Profile, attacks, grid: dict | None = None, seeds=None, over_seeds=None, progress: bool = True
) -> dict:
    """(attack, field) -> the rows of UBT with that field at each of its values (`_ablation_plan`),
    for every attack and every field of `grid` (None: `ablation_grid` of the profile's UBT
    settings); the fields in `over_seeds` (None: all) run once per seed of `seeds`, the others
    at the profile's seed only."""
    grid = ablation_grid(profile.ubt) if grid is None else grid
    plans = {
        (a, field): _ablation_plan(
            profile, a, field, values, seeds if over_seeds is None or field in over_seeds else None
        )
        for a in attacks
        for field, values in grid.items()
    }
    # one pass over every row, so that the two lanes share the whole grid
    rows = iter(defense_rows([c for _, calls in plans.values() for c in calls], progress, "ablation runs"))
    return {key: [{**s, **next(rows)} for s in settings] for key, (settings, _) in plans.items()}


TABLE1_DEFENSES = ("none", "cleanclip", "ubt_no_token", "ubt", "ubt_restore", "oracle")


def table1(
    profile: Profile, attacks=ATTACKS, seeds=(0, 1, 2), defenses=TABLE1_DEFENSES, progress: bool = True
) -> list:
    """Every (seed, attack, defense) row of the Table 1 analogue. The seeds vary the poison
    choice, the triggers' randomness, the fine-tuning and the defenses; the world and the
    pre-trained model stay those of `profile`, like the paper's single pre-trained CLIP."""
    calls = [(dataclasses.replace(profile, seed=s), a, d) for s in seeds for a in attacks for d in defenses]
    rows = defense_rows(calls, progress, "Table 1 rows")
    return [{"seed": p.seed, "attack": a, "defense": d, **r} for (p, a, d), r in zip(calls, rows)]


def caption_alignment(profile: Profile, attack: str) -> dict:
    """How close UBT's unlearning captions sit to the zero-shot classifier's target weight in the
    poisoned model: mean cosine with the target class's prompt-ensemble embedding (what ASR is
    measured against) of the detected pairs' full captions and of their kept tokens in each
    caption form (alone, or set into the prompt template)."""
    from ubtlib.defenses.ubt import CAPTION_FORMS
    from ubtlib.evaluation.zeroshot import classifier, encode_texts, pocket_templates
    from ubtlib.world.pocket import object_vocabulary

    prof, device, rec, data, m, world = _ubt_run(profile, attack)
    target = list(world.categories).index(prof.poison.target)
    weight = classifier(
        m.model, m.tokenizer, world.categories, pocket_templates(object_vocabulary()), device
    )[:, target]
    full = [data.captions[i] for i in rec["top_k"]]
    cos = lambda texts: (encode_texts(m.model, m.tokenizer, texts, device) @ weight).mean().item()
    used = set(rec["distinct_token_captions"])  # the captions the cap on the product kept
    kept = [k for k, c in zip(rec["kept_tokens"], rec["token_captions"]) if c in used]
    forms = {form: cos([fmt.format(k) for k in kept]) for form, fmt in CAPTION_FORMS.items()}
    return {
        "full": cos(full),
        "forms": forms,
        "token_level": forms[prof.ubt.caption_form],  # the form the run unlearned with
        "token_captions": sorted(used),
    }


# The settings `kernel_spread` compares: (label, environment, threads, training seed). The
# first three use the book's portable kernels; the next are what torch picks by itself on an
# AVX-512 machine, and MKL's COMPATIBLE branch (documented as vendor-neutral; measured not to
# make Intel and AMD agree, see ubtlib.numerics); the last two change only the seed.
KERNEL_SETTINGS = (
    ("book kernels, 2 threads", {}, 2, 0),
    ("book kernels, 1 thread", {}, 1, 0),
    ("book kernels, 4 threads", {}, 4, 0),
    (
        "AVX-512 kernels",
        {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "ALL"},
        2,
        0,
    ),
    ("MKL's COMPATIBLE branch", {"MKL_CBWR": "COMPATIBLE"}, 2, 0),
    ("book kernels, seed 1", {}, 2, 1),
    ("book kernels, seed 2", {}, 2, 2),
)


def kernel_spread(profile: Profile, epochs: float = 1.0, progress: bool = True) -> list:
    """The same short pre-training (`epochs` of the profile's recipe) under each of
    `KERNEL_SETTINGS`, each in a fresh process: zero-shot top-1, a digest of the weights, the
    kernels that ran and the time. Identical digests mean bit-identical models. A setting this
    CPU cannot run (AVX-512 kernels on a CPU without AVX-512 die of an illegal instruction) gets
    a row with its reason in "skipped" and no numbers. Cached."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from tqdm.auto import tqdm

    from ubtlib import numerics
    from ubtlib.pipeline.cache import cached, write_json

    pipeline.world(profile, progress=progress)  # drawn once here, read by every probe

    configs = json.dumps({k: dataclasses.asdict(getattr(profile, k)) for k in ("world", "model", "pretrain")})

    def compute(folder):
        rows = []
        for label, env, threads, seed in tqdm(KERNEL_SETTINGS, desc="kernel spread", disable=not progress):
            run_env = {**os.environ, **numerics.PORTABLE, **env}
            argv = [
                sys.executable,
                "-m",
                "ubtlib.book.kernel_probe",
                configs,
                str(seed),
                str(epochs),
                str(threads),
            ]
            out = subprocess.run(argv, env=run_env, capture_output=True, text=True)
            row = {"setting": label, "threads": threads, "seed": seed, "skipped": None}
            if out.returncode == -signal.SIGILL and env:
                row["skipped"] = "this CPU lacks the instructions these kernels use (illegal instruction)"
                rows.append(row)
                continue
            if out.returncode:
                raise RuntimeError(
                    f"kernel probe {label!r} failed (exit {out.returncode}):\n{out.stderr[-2000:]}"
                )
            rows.append({**row, **json.loads(out.stdout.splitlines()[-1])})
        write_json(folder / "spread.json", rows)

    return cached(
        "kernel-spread",
        compute,
        lambda folder: json.loads((folder / "spread.json").read_text()),
        code_module="ubtlib.book.kernel_probe",
        world=profile.world,
        model=profile.model,
        pretrain=profile.pretrain,
        epochs=epochs,
        settings=KERNEL_SETTINGS,
    )


def redirect_anatomy(profile: Profile, attack: str, defenses=("none", "ubt", "ubt_restore")) -> dict:
    """Where a triggered image's embedding sits after each defense, on the held-out non-target
    objects: its mean cosine to the same image's embedding without the trigger (1: the trigger
    no longer moves it), and the three classes its zero-shot weight lies nearest to most often
    (share of images, %), beside CA, ASR and RA."""
    from ubtlib.evaluation.robustness import backdoor_encodings, metrics_from_encodings

    prof = pipeline.with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    w = pipeline.world(prof)
    hook = triggered_hook(pipeline.trigger(prof), prof.seed)
    out = {}
    for d in defenses:
        m = pipeline.poisoned(prof) if d == "none" else pipeline.defended(prof, None, d)
        encodings = backdoor_encodings(m.model, m.tokenizer, w, hook, device)
        weights, clean, triggered, labels = encodings
        keep = labels != list(w.categories).index(prof.poison.target)
        clean, triggered = clean[keep], triggered[keep]
        counts = torch.bincount((triggered @ weights).argmax(1).cpu(), minlength=len(w.categories))
        top = counts.argsort(descending=True)[:3]
        metrics = metrics_from_encodings(encodings, w.categories, prof.poison.target)
        out[d] = {
            "cos_to_clean": (clean * triggered).sum(-1).mean().item(),
            "nearest": {w.categories[int(k)]: 100.0 * counts[k].item() / len(clean) for k in top},
            **{k: metrics[k] for k in ("ca", "asr", "ra")},
        }
    return out


def restore_targets(profile: Profile, attack: str) -> dict:
    """Whom the restoring variant pulled (from its cached run): of the detected poisons it
    pulled, the share whose clean class (the clean pre-trained model's zero-shot class of the
    triggered image, which its pull target carries) is the object's true class, and how many
    detected images it left out (called by the target's name)."""
    prof = pipeline.with_attack(profile, attack)
    rec = pipeline.defended(prof, None, "ubt_restore", progress=False).record
    data = pipeline.poisoned_data(prof, progress=False)
    w = pipeline.world(prof, progress=False)
    labels = w.label[w.indices("train")]
    top = np.asarray(rec["top_k"])
    if rec["restore_classes"] is None:  # restore_weight 0: nothing was pulled
        return {"detected": len(top), "left_out": 0, "poisons_pulled": 0, "true_class_share": float("nan")}
    # one unlearning pair per token-level caption of an image, each with the image's clean
    # class; a pair is left out where its caption names that class, so an image counts as
    # pulled when any of its pairs is
    classes_of = dict(zip(rec["unlearning_images"], rec["restore_classes"]))
    kept = {i for i, left_out in zip(rec["unlearning_images"], rec["restore_left_out"]) if not left_out}
    pulled = [(i, classes_of[i]) for i in classes_of if i in kept]
    poisons = [(i, c) for i, c in pulled if data.is_backdoor[i] and labels[i] >= 0]
    right = sum(c == w.categories[labels[i]] for i, c in poisons)
    return {
        "detected": len(top),
        "left_out": len(classes_of) - len(pulled),
        "poisons_pulled": len(poisons),
        "true_class_share": 100 * right / len(poisons) if poisons else float("nan"),
    }


# ---------------------------------------------------------------- the oracle-guided defense (chapter 9)


def oracle_scans(profile: Profile, attacks=ATTACKS, progress: bool = True) -> dict:
    """attack -> the oracle scan's record of its poisoned model (affected label, victims, trigger
    estimate; `pipeline.oracle_runs.oracle_scan`)."""
    from ubtlib.pipeline import oracle_runs

    return {a: oracle_runs.oracle_scan(pipeline.with_attack(profile, a), progress)["record"] for a in attacks}


def disagreement_examples(profile: Profile, attack: str, n: int = 4) -> dict:
    """A few disagreeing training images of `attack`'s scan, as the defender holds them, with
    CLIP's and the oracle's labels, the oracle's maps, the attribution maps and the trigger
    estimate (its region, and a clean held-out image carrying it)."""
    from ubtlib.defenses.oracle import apply_estimate
    from ubtlib.pipeline import oracle_runs

    prof = pipeline.with_attack(profile, attack)
    scan = oracle_runs.oracle_scan(prof, progress=False)
    pos = scan["example_positions"][:n]
    view = oracle_runs.defender_view(prof, progress=False)
    w = pipeline.world(prof, progress=False)
    clean = w.images[torch.from_numpy(w.indices("heldout")[:n])].float() / 255
    name = lambda c: w.categories[int(c)] if int(c) >= 0 else "no object"  # noqa: E731
    return {
        "images": view[pos],
        "clip_labels": [name(scan["clip_labels"][i]) for i in pos],
        "oracle_labels": [name(scan["oracle_labels"][i]) for i in pos],
        "oracle_maps": scan["example_maps"][:n],
        "attributions": scan["example_attributions"][:n],
        "region": scan["region"],
        "footprint": scan["footprint"],
        "pasted": (apply_estimate(clean, oracle_runs.oracle_estimate(scan)) * 255).round().to(torch.uint8),
        "record": scan["record"],
    }


def segmenter_examples(profile: Profile, n: int = 6) -> dict:
    """Held-out images with their exact and learned label maps, and the learned oracle's record."""
    from ubtlib.defenses.segmenter import segment
    from ubtlib.pipeline.segmenting import segmenter

    w = pipeline.world(profile, progress=False)
    oracle = segmenter(profile, progress=False)
    held = w.indices("heldout")
    idx = torch.from_numpy(held[np.linspace(0, len(held) - 1, n).astype(int)])
    return {
        "images": w.images[idx],
        "exact": w.segments[idx],
        "learned": segment(oracle.model, w.images[idx], modellib.pick_device(profile.device)),
        "record": oracle.record,
    }


def oracle_ablation_grid(profile: Profile) -> dict:
    """Chapter 9's ablations: setting -> the values tried (the profile's own among them)."""
    size, pairs, retain = profile.rectify.set_size, profile.world.n_train_pairs, profile.rectify.retain_weight
    return {
        "oracle_kind": ["learned", "exact"],  # exact: the drawn maps, the oracle's upper bound
        "oracle_label_rule": ["named", "excess"],
        "oracle_label_sample": sorted({0, profile.oracle.label_sample, min(4096, pairs // 4)}),
        "oracle_attribution": ["occlusion", "gradient"],
        "oracle_victim_rule": ["caption", "image"],
        "rectify_set_size": sorted({max(1, size // 3), size, min(2 * size, pairs)}),
        "rectify_towers": ["both", "image"],
        # none, the default and twice it: what the term buys in CA, and what it costs in ASR
        "rectify_retain_weight": sorted({0.0, retain, 2 * retain}),
    }


def oracle_ablation(profile: Profile, attack: str, setting: str, values, progress: bool = True) -> list:
    """The oracle-guided defense with `setting` (an `oracle_*` or `rectify_*` override, e.g.
    ``oracle_kind``) set to each of `values`: per value, its scan's record and its defended row."""
    from ubtlib.pipeline import oracle_runs
    from ubtlib.pipeline.profiles import STAGES

    stage, _, field = setting.partition("_")
    if stage not in ("oracle", "rectify") or field not in {f.name for f in dataclasses.fields(STAGES[stage])}:
        raise ValueError(f"setting={setting!r} is not an oracle_* or rectify_* parameter")
    rows = []
    for v in values:
        prof = dataclasses.replace(
            profile, **{stage: dataclasses.replace(getattr(profile, stage), **{field: v})}
        )
        prof.validate()
        scan = oracle_runs.oracle_scan(pipeline.with_attack(prof, attack), progress)["record"]
        rows.append({setting: v, "scan": scan, **defense_row(prof, attack, "oracle", progress)})
    return rows
