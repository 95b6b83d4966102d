"""The cached stages a chapter calls: world -> pre-trained -> poisoned model (later: defended).

Each stage computes its result or finds it in the cache (see cache.py), so a chapter run alone
builds everything it depends on, and chapters run one after another share the work.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import model as modellib
from .cache import cached, write_json
from .poison import PoisonedData, poison
from .profiles import Profile
from .ssba import SSBATrigger, StegaDecoder, StegaEncoder, fixed_secret, train_stega
from .train import train_clip
from .triggers import make_trigger
from .world import Identity, World, make_world


def world(profile: Profile, progress: bool = True) -> World:
    """The profile's pocket world (drawn once per config, then read from the cache)."""
    if profile.world is None:
        raise ValueError(f"profile {profile.name!r} has no pocket world: it reads real data sets "
                         "by path (see the 'Scaling up' page)")
    cfg = profile.world

    def compute(folder):
        w = make_world(cfg, progress=progress)
        save_file({"images": w.images}, str(folder / "images.safetensors"))
        write_json(folder / "meta.json", {
            "captions": w.captions, "kind": w.kind.tolist(), "label": w.label.tolist(),
            "identity": w.identity.tolist(), "split": w.split.tolist(),
            "categories": list(w.categories), "identities": w.identities,
            "distractor_names": w.distractor_names})

    def load(folder):
        meta = json.loads((folder / "meta.json").read_text())
        return World(config=cfg, images=load_file(str(folder / "images.safetensors"))["images"],
                     captions=meta["captions"], kind=np.array(meta["kind"]),
                     label=np.array(meta["label"], np.int64),
                     identity=np.array(meta["identity"], np.int64), split=np.array(meta["split"]),
                     categories=tuple(meta["categories"]),
                     identities=[Identity(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in p.items()}) for p in meta["identities"]],
                     distractor_names=meta["distractor_names"])

    return cached("world", ("world",), compute, load, world=cfg)


@dataclass
class Trained:
    """A model with its tokenizer and the record of how it was made."""
    model: torch.nn.Module
    tokenizer: object
    record: dict


def pretrained(profile: Profile, progress: bool = True) -> Trained:
    """The pocket CLIP pre-trained on the world's training pairs with open_clip's ClipLoss.

    Seeded by the world's seed (so repeats of the attack and defense stages with other seeds
    share one pre-trained model, as the papers do). Cached by world, model and training
    configs, seed and code; weights are safetensors.
    """
    if profile.model is None:
        raise ValueError(f"profile {profile.name!r} uses published weights "
                         f"({profile.paper_model}, {profile.paper_pretrained}), not a pocket CLIP")
    device = modellib.pick_device(profile.device)
    w = world(profile, progress=progress)

    seed = profile.world.seed  # pre-training follows the world; repeats of later stages share it

    def compute(folder):
        torch.manual_seed(seed)
        model, tokenizer = modellib.create(profile.model, device=device)
        idx = w.indices("train")
        tokens = tokenizer([w.captions[i] for i in idx])
        start = time.perf_counter()
        curve = train_clip(model, w.images[idx], tokens, profile.pretrain, device, seed=seed,
                           desc="pre-training the pocket CLIP", progress=progress)
        modellib.save(model, folder / "model.safetensors")
        write_json(folder / "record.json", {
            "curve": curve, "seconds": time.perf_counter() - start, "pairs": len(idx),
            "device": str(device), "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters())})

    def load(folder):
        model, tokenizer = modellib.create(profile.model, device=device)
        modellib.load(model, folder / "model.safetensors").to(device).eval()
        return Trained(model, tokenizer, json.loads((folder / "record.json").read_text()))

    return cached("pretrained", ("world", "model", "train"), compute, load,
                  world=profile.world, model=profile.model, pretrain=profile.pretrain, seed=seed)


def with_attack(profile: Profile, attack: str | None) -> Profile:
    """`profile` with its attack switched to `attack` (validated); unchanged for None."""
    if attack is None or attack == profile.attack.name:
        return profile
    prof = dataclasses.replace(profile, attack=dataclasses.replace(profile.attack, name=attack))
    prof.validate()
    return prof


def _ssba(profile: Profile, progress: bool = True) -> SSBATrigger:
    """The SSBA-style encoder / decoder pair, trained on the world's training images."""
    cfg, device = profile.attack, modellib.pick_device(profile.device)
    w = world(profile, progress=progress)
    size = profile.model.image_size

    def compute(folder):
        enc, dec, log = train_stega(w.images[w.indices("train")], cfg.ssba_bits, cfg.ssba_epochs,
                                    cfg.ssba_invisibility, device, seed=profile.seed, progress=progress,
                                    max_residual=cfg.ssba_max_residual)
        save_file({k: v.cpu() for k, v in enc.state_dict().items()}, str(folder / "encoder.safetensors"))
        save_file({k: v.cpu() for k, v in dec.state_dict().items()}, str(folder / "decoder.safetensors"))
        write_json(folder / "log.json", log)

    def load(folder):
        enc = StegaEncoder(cfg.ssba_bits, size, max_residual=cfg.ssba_max_residual)
        dec = StegaDecoder(cfg.ssba_bits, size)
        enc.load_state_dict(load_file(str(folder / "encoder.safetensors")))
        dec.load_state_dict(load_file(str(folder / "decoder.safetensors")))
        return SSBATrigger(enc.eval(), fixed_secret(cfg.ssba_bits, profile.seed), dec.eval(),
                           json.loads((folder / "log.json").read_text()))

    return cached("ssba", ("ssba", "world"), load=load, compute=compute, world=profile.world,
                  bits=cfg.ssba_bits, epochs=cfg.ssba_epochs, invisibility=cfg.ssba_invisibility,
                  max_residual=cfg.ssba_max_residual,
                  seed=profile.seed)


def trigger(profile: Profile, attack: str | None = None, progress: bool = True):
    """The trigger callable (x in [0, 1], generator) -> x' of the profile's attack."""
    prof = with_attack(profile, attack)
    ssba = _ssba(prof, progress) if prof.attack.name == "ssba" else None
    return make_trigger(prof.attack, prof.model.image_size, prof.seed, ssba)


def poisoned_data(profile: Profile, attack: str | None = None, progress: bool = True) -> PoisonedData:
    """The world's training pairs with the attack's poisons (deterministic in the profile)."""
    prof = with_attack(profile, attack)
    if prof.poison is None:
        raise ValueError(f"profile {prof.name!r} has no poisoning stage")
    w = world(prof, progress=progress)
    idx = w.indices("train")
    return poison(w.images[idx], [w.captions[i] for i in idx], w.label[idx], w.categories,
                  prof.poison, trigger(prof, progress=progress), prof.seed)


def poisoned(profile: Profile, attack: str | None = None, progress: bool = True) -> Trained:
    """The pre-trained pocket CLIP fine-tuned on poisoned data (the attacker's model).

    The record holds the training curve, the time taken and the poisoned pairs' positions in
    the training split (ground truth for the detection metrics of later chapters).
    """
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    base = pretrained(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)

    def compute(folder):
        model = copy.deepcopy(base.model)
        start = time.perf_counter()
        curve = train_clip(model, data.images, base.tokenizer(data.captions), prof.finetune, device,
                           seed=prof.seed, image_hook=data.image_hook,
                           desc=f"poisoned fine-tuning ({prof.attack.name})", progress=progress)
        modellib.save(model, folder / "model.safetensors")
        write_json(folder / "record.json", {
            "curve": curve, "seconds": time.perf_counter() - start, "pairs": len(data.images),
            "poisoned_positions": np.flatnonzero(data.is_backdoor).tolist(),
            "device": str(device), "attack": prof.attack.name})

    def load(folder):
        model, tokenizer = modellib.create(prof.model, device=device)
        modellib.load(model, folder / "model.safetensors").to(device).eval()
        return Trained(model, tokenizer, json.loads((folder / "record.json").read_text()))

    return cached("poisoned", _POISONED_CODE, compute, load, **_poisoned_key(prof))


# what a poisoned model depends on: the stages after it (detection, defenses) extend both
_POISONED_CODE = ("world", "model", "train", "triggers", "ssba", "poison")


def _poisoned_key(prof: Profile) -> dict:
    return dict(world=prof.world, model=prof.model, pretrain=prof.pretrain, attack=prof.attack,
                poison=prof.poison, finetune=prof.finetune, seed=prof.seed)


def abl_losses(profile: Profile, attack: str | None = None, progress: bool = True) -> torch.Tensor:
    """ABL's per-pair losses on the profile's poisoned data, after LGA training from the clean
    pre-trained model (abl.py): the scores its isolation ranks. Cached like a defense, so a
    chapter re-run does not train ABL again."""
    from . import abl
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    prof.abl.validate()
    data = poisoned_data(prof, progress=progress)
    # the isolation ratio only reads the losses: leave it out of the key (and of the computation,
    # so the key cannot go stale)
    training = dataclasses.replace(prof.abl, isolation_ratio=abl.ABLConfig.isolation_ratio)

    def compute(folder):
        clean = pretrained(prof, progress=progress)
        tokens = clean.tokenizer(data.captions)
        model = copy.deepcopy(clean.model)
        abl.lga_train(model, data.images, tokens, training, device, data.image_hook, prof.seed, progress)
        losses = abl.per_pair_loss(model, data.images, tokens, device, data.image_hook, seed=prof.seed)
        save_file({"losses": losses.float().cpu().contiguous()}, str(folder / "losses.safetensors"))

    def load(folder):
        return load_file(str(folder / "losses.safetensors"))["losses"]

    # the poisoned data's key, less the fine-tuning: ABL trains from the clean model
    key = {k: v for k, v in _poisoned_key(prof).items() if k != "finetune"}
    return cached("abl", _POISONED_CODE + ("abl",), compute, load, **key, abl=training)


DEFENSES = ("cleanclip", "ubt", "ubt_no_token")
_FOUND_TENSORS = ("susp", "safe", "retain_candidates", "candidate_gain", "top", "relevance",
                  "clean_similarity", "op_similarity")


def ubt_detection(profile: Profile, attack: str | None = None, progress: bool = True) -> dict:
    """UBT's split, overfitting, top-k detection and token relevance (`ubt.find_poison`) on the
    profile's poisoned data: one cached stage that both UBT variants, and every run differing
    only in how it unlearns, start from. The seconds it took are in the result."""
    from .ubt import DETECTION_FIELDS, UBTConfig, find_poison
    prof = with_attack(profile, attack)
    device = modellib.pick_device(prof.device)
    prof.ubt.validate(prof.world.n_train_pairs)
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)

    def compute(folder):
        clean = pretrained(prof, progress=progress)
        # only the fields in the key reach the computation, so the key cannot go stale
        detection_cfg = UBTConfig(**{f: getattr(prof.ubt, f) for f in DETECTION_FIELDS})
        found = find_poison(attacked.model, clean.model, data, attacked.tokenizer(data.captions),
                            detection_cfg, device, seed=prof.seed, progress=progress)
        found["device"] = str(device)
        save_file({k: found.pop(k).contiguous() for k in _FOUND_TENSORS}, str(folder / "found.safetensors"))
        write_json(folder / "found.json", found)

    def load(folder):
        return {**json.loads((folder / "found.json").read_text()),
                **load_file(str(folder / "found.safetensors"))}

    return cached("ubt-detection", _POISONED_CODE + ("ubt",), compute, load, **_poisoned_key(prof),
                  detection={f: getattr(prof.ubt, f) for f in DETECTION_FIELDS})


def defended(profile: Profile, attack: str | None = None, defense: str = "ubt",
             progress: bool = True) -> Trained:
    """The attacker's poisoned model after `defense` (cleanclip | ubt | ubt_no_token).

    Cached like every stage; the record holds the defense's wall time (measured when it was
    computed), the pairs it touched and, for UBT, the split / detection / unlearning outputs.
    """
    from .cleanclip import cleanclip
    from .ubt import run_ubt
    from .checks import check_choice
    check_choice("defense", defense, DEFENSES)
    if attack == "none":
        raise ValueError(f"defense={defense!r} needs a poisoned model, but attack='none' is the "
                         "clean pre-trained model, which was never poisoned: choose one of "
                         "'badnet', 'blended', 'sig', 'wanet', 'ssba'")
    prof = with_attack(profile, attack)
    if prof.world is None or prof.poison is None or prof.finetune is None:
        raise ValueError(f"defense={defense!r} needs a poisoned model, but profile {prof.name!r} "
                         "has no pocket world to poison (real data sets load by path)")
    device = modellib.pick_device(prof.device)
    cfg = prof.cleanclip if defense == "cleanclip" else prof.ubt
    cfg.validate(prof.world.n_train_pairs)  # bad k or fraction: fail before any compute
    attacked = poisoned(prof, progress=progress)
    data = poisoned_data(prof, progress=progress)

    def compute(folder):
        if defense == "cleanclip":
            # the defender's own clean pairs: a random subset of the pairs that are not poisoned
            rng = np.random.default_rng(prof.seed)
            clean = np.flatnonzero(~data.is_backdoor)
            pick = np.sort(rng.choice(clean, size=min(cfg.clean_pairs, len(clean)), replace=False))
            model = copy.deepcopy(attacked.model)
            start = time.perf_counter()
            curve = cleanclip(model, data.images[pick], [data.captions[i] for i in pick],
                              attacked.tokenizer, cfg, device, seed=prof.seed, progress=progress)
            record = {"seconds": time.perf_counter() - start, "pairs_trained": len(pick),
                      "pairs_scored": 0, "curve": curve}
        else:
            found = ubt_detection(prof, progress=progress)  # shared by both UBT variants
            model, record = run_ubt(attacked.model, None, data, attacked.tokenizer, cfg, device,
                                    token_level=defense == "ubt", seed=prof.seed, progress=progress,
                                    found=found)
        record.update(defense=defense, attack=prof.attack.name, device=str(device))
        modellib.save(model, folder / "model.safetensors")
        write_json(folder / "record.json", record)

    def load(folder):
        model, tokenizer = modellib.create(prof.model, device=device)
        modellib.load(model, folder / "model.safetensors").to(device).eval()
        return Trained(model, tokenizer, json.loads((folder / "record.json").read_text()))

    code = _POISONED_CODE + ("cleanclip" if defense == "cleanclip" else "ubt",)
    return cached(f"defended-{defense}", code, compute, load, **_poisoned_key(prof), defense=cfg)
