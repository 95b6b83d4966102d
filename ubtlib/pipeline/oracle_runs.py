"""The oracle-guided defense's stages: the scan of a poisoned model against the learned oracle
(algorithm 1 and the victims) and the rectified model (algorithm 2's fine-tuning).

segmenter (`pipeline.segmenting`, once per world) -> oracle_scan (per poisoned model and
`OracleConfig`) -> oracle_defended (per `RectifyConfig`), each cached like every stage.
"""

from __future__ import annotations

import copy
import json
import time
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from ubtlib.attacks.poison import poison_templates
from ubtlib.checks import read_tensors
from ubtlib.clip import model as modellib
from ubtlib.clip.model import to_unit
from ubtlib.defenses import oracle as orc
from ubtlib.defenses import segmenter as seg
from ubtlib.evaluation.zeroshot import classifier, pocket_templates
from ubtlib.pipeline.cache import cached, write_json
from ubtlib.pipeline.poisoning import poisoned, poisoned_data, poisoned_key, trigger
from ubtlib.pipeline.pretraining import Trained, load_trained
from ubtlib.pipeline.segmenting import segmenter
from ubtlib.pipeline.worlds import world
from ubtlib.world.pocket import object_vocabulary

if TYPE_CHECKING:
    from ubtlib.pipeline.profiles import Profile

EXAMPLES = 8  # disagreeing images whose maps the scan keeps for the chapter's figures


def _scan_key(prof: Profile) -> dict:
    learned = prof.oracle.kind == "learned"
    return {**poisoned_key(prof), "oracle": prof.oracle, "segmenter": prof.segmenter if learned else None}


def defender_view(prof: Profile, progress: bool = True) -> torch.Tensor:
    """The training images as the defender holds them (the poisons carry their trigger)."""
    data = poisoned_data(prof, progress=progress)
    return orc.defender_view(data.images, data.image_hook, progress=progress)


def oracle_scan(prof: Profile, progress: bool = True) -> dict:
    """Algorithm 1 and the victims, on the poisoned model of `prof`'s attack.

    Returns the record (affected label, per-label excess, trigger estimate's extent and IoU
    with the true footprint, the victims' precision and recall against the poisons, timings)
    and the tensors: both labellings of every training pair, the victims' positions, the
    trigger estimate and the maps of a few disagreeing images.
    """
    cfg = prof.oracle
    cfg.validate()
    w = world(prof, progress=progress)
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)
    device = modellib.pick_device(prof.device)
    n_cat = len(w.categories)
    oracle = segmenter(prof, progress) if cfg.kind == "learned" else None

    def compute(folder):
        start = time.perf_counter()
        view = defender_view(prof, progress)
        model = attacked.model
        weights = classifier(
            model, attacked.tokenizer, w.categories, pocket_templates(object_vocabulary()), device
        )
        drawn = w.segments[torch.from_numpy(w.indices("train"))]  # what was drawn: never a trigger

        def maps_of(positions):
            return drawn[positions] if oracle is None else seg.segment(oracle.model, view[positions], device)

        def look(positions):
            return orc.oracle_summary(maps_of(positions), n_cat, cfg.min_share)

        clip = orc.clip_labeller(model, weights, view, device)
        found = orc.oracle_pass(clip, look, data.captions, w.categories, cfg, prof.seed)
        label, clip_labels, oracle_labels = found["label"], found["clip"], found["oracle"]
        sets = orc.attribution_sets(
            clip_labels, oracle_labels, found["sees"], label, cfg, prof.seed, found["sample"]
        )
        chosen = sets["suspects"]
        chosen_maps = maps_of(chosen)
        estimate, maps_a = orc.locate_trigger(
            orc.class_scorer(model, weights, label),
            to_unit(view[chosen], device),
            chosen_maps == 1 + label,
            to_unit(view[sets["reference"]], "cpu"),
            cfg,
        )
        victims = orc.find_victims(
            cfg.victim_rule, label, w.categories[label], data.captions, clip_labels, found["sees"]
        )
        seconds = time.perf_counter() - start
        # ground truth, for the record only: the defense above never read it
        heldout = to_unit(w.images[torch.from_numpy(w.indices("heldout")[:256])], "cpu")
        footprint = orc.true_footprint(trigger(prof, progress=progress), heldout, prof.seed)
        save_file(
            {
                "clip_labels": clip_labels.contiguous(),
                "oracle_labels": oracle_labels.contiguous(),
                "victims": torch.from_numpy(victims).contiguous(),
                "region": estimate["region"].to(torch.uint8).contiguous(),
                "attribution": estimate["attribution"].contiguous(),
                "pattern": estimate["pattern"].contiguous(),
                "residual": estimate["residual"].contiguous(),
                "footprint": footprint.to(torch.uint8).contiguous(),
                "example_positions": chosen[:EXAMPLES].contiguous(),
                "example_attributions": maps_a[:EXAMPLES].contiguous(),
                "example_maps": chosen_maps[:EXAMPLES].contiguous(),
            },
            str(folder / "scan.safetensors"),
        )
        write_json(
            folder / "record.json",
            {
                "seconds": seconds,
                "pairs_scored": int(found["scored"].sum()),
                "pairs_segmented": int(found["looked"].sum()),
                "label_sample": int(len(found["sample"])),
                "affected_label": w.categories[label],
                "label_rule": cfg.label_rule,
                "excess": dict(zip(w.categories, found["affected"]["excess"])),
                "named": dict(zip(w.categories, found["affected"]["named"])),
                "disagreeing": int(len(sets["disagree"])),
                "attributed": int(len(chosen)),
                "extent": estimate["extent"],
                "compact": bool(estimate["compact"]),
                "estimate_success": estimate["success"],
                "trigger_iou": orc.region_iou(estimate["region"], footprint),
                "footprint_share": footprint.float().mean().item(),
                "victims": orc.precision_recall(victims, data.is_backdoor),
                "victims_person": int((oracle_labels[torch.from_numpy(victims)] < 0).sum()),
                "oracle_label_agreement": 100.0  # on the sample: the tied images over-represent disagreement
                * (oracle_labels == seg.image_labels(drawn, n_cat))[found["sample"]].float().mean().item(),
                "attack": prof.attack.name,
                "device": str(device),
            },
        )

    def load(folder):
        tensors = read_tensors(folder / "scan.safetensors")
        tensors["region"] = tensors["region"].bool()
        tensors["footprint"] = tensors["footprint"].bool()
        return {"record": json.loads((folder / "record.json").read_text()), **tensors}

    return cached("oracle-scan", compute, load, **_scan_key(prof))


def oracle_estimate(scan: dict) -> dict:
    """The trigger estimate a scan holds, in `oracle.apply_estimate`'s form."""
    return {k: scan[k] for k in ("region", "pattern", "residual")} | {"compact": scan["record"]["compact"]}


def oracle_defended(prof: Profile, progress: bool = True) -> Trained:
    """The poisoned model rectified on the compact fine-tuning set its scan curates (a validated
    profile with its attack set: see `defending.defended`). The record's seconds are the scan's
    and the fine-tuning's; the learned oracle's own training, done once per world as an
    off-the-shelf segmenter's would be, is recorded beside them as `oracle_training_seconds`."""
    cfg = prof.rectify
    device = modellib.pick_device(prof.device)
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)
    w = world(prof, progress=progress)
    scan = oracle_scan(prof, progress)
    oracle = segmenter(prof, progress) if prof.oracle.kind == "learned" else None

    def compute(folder):
        start = time.perf_counter()
        view = defender_view(prof, progress)
        victims, oracle_labels = scan["victims"].numpy(), scan["oracle_labels"]
        ok = (oracle_labels[scan["victims"]] >= 0).numpy()  # the oracle names an object in them
        parts = orc.compact_set(len(view), victims, ok, cfg, prof.seed)
        captions = orc.oracle_captions(
            data.captions, parts["victim"], oracle_labels, w.categories, poison_templates("pocket"), prof.seed
        )
        model = copy.deepcopy(attacked.model)
        curve = orc.rectify(
            model,
            attacked.tokenizer,
            view,
            captions,
            parts,
            oracle_estimate(scan),
            cfg,
            device,
            prof.seed,
            progress,
        )
        rectify_seconds = time.perf_counter() - start
        truth = data.is_backdoor
        modellib.save(model, folder / "model.safetensors")
        write_json(
            folder / "record.json",
            {
                "seconds": scan["record"]["seconds"] + rectify_seconds,
                "scan_seconds": scan["record"]["seconds"],
                "rectify_seconds": rectify_seconds,
                "oracle_training_seconds": oracle.record["seconds"] if oracle is not None else 0.0,
                "pairs_trained": int(sum(len(p) for p in parts.values())),
                "pairs_scored": scan["record"]["pairs_scored"],
                "set": {p: int(len(parts[p])) for p in orc.SET_PARTS},
                "set_poisons": {p: int(truth[parts[p]].sum()) for p in orc.SET_PARTS},
                "curve": curve,
                "scan": scan["record"],
                "defense": "oracle",
                "attack": prof.attack.name,
                "device": str(device),
            },
        )

    return cached(
        "defended-oracle",
        compute,
        lambda folder: load_trained(prof, folder, device),
        **_scan_key(prof),
        rectify=cfg,
    )
