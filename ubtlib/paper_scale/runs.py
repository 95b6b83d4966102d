"""The paper profile: both papers' experiments on published weights and real data, on a GPU.

Every stage is the pocket chapters' own code, fed from disk instead of the pocket world:

* poisoned fine-tuning is `train.optimize` with a loss_step that draws batches from a
  DataLoader and triggers the poisoned rows on the device (`PoisonedData.image_hook`, as in
  the pocket world), poisons chosen by `poison.poison`;
* zero-shot CA / ASR and top-1 / top-5 use `evaluate`'s classifier and metrics, images
  streamed batch by batch;
* UBT (`ubt.run_ubt`) and CleanCLIP (`cleanclip.cleanclip`) index image tensors, which
  `data.Images` reads from disk on demand;
* the privacy paper's sweeps are the privacy chapters' `forgetting.sweep_names` /
  `sweep_faces` (and so `forget_names` / `forget_faces`), reading the data sets through a
  `PaperSource` instead of the pocket world.

The command line (`python -m ubtlib paper ...`, see cli.py) calls the `*_run` functions, which
read paths, write safetensors weights and JSON / CSV results.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import open_clip
import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import Subset

from ubtlib.attacks.poison import PoisonConfig, PoisonedData, poison, poison_templates, triggered_hook
from ubtlib.attacks.ssba import SSBATrigger, StegaEncoder, fixed_secret, train_stega
from ubtlib.attacks.triggers import ATTACKS, make_trigger
from ubtlib.book.report import provenance
from ubtlib.checks import check_choice, check_range, read_tensors
from ubtlib.clip import distributed
from ubtlib.clip import model as modellib
from ubtlib.clip.train import TrainConfig, clip_loss, epoch_steps, optimize
from ubtlib.defenses.cleanclip import cleanclip
from ubtlib.defenses.ubt import run_ubt
from ubtlib.evaluation.robustness import redirect, robust_accuracy
from ubtlib.evaluation.zeroshot import attack_success_rate, classifier, encode_images, topk_accuracy
from ubtlib.paper_scale import oracle as guided
from ubtlib.paper_scale.data import (
    CaptionCSV,
    IdentityFolders,
    Images,
    LabelledFolder,
    Pairs,
    endless,
    loader,
    read_captions,
    trigger_rows,
)
from ubtlib.paper_scale.shards import caption_pairs
from ubtlib.paper_scale.weights import load_pretrained, load_segmenter, weights_file
from ubtlib.pipeline.cache import write_json
from ubtlib.pipeline.defending import DEFENSES
from ubtlib.pipeline.profiles import Profile
from ubtlib.privacy import forgetting
from ubtlib.privacy import unlearning as privacy

PAPER_ATTACKS = ATTACKS
# the pocket pipeline's names; the book's restoring variant ("ubt_restore") runs in the pocket
# chapters only (it needs the clean model's zero-shot classes of the detected images)
PAPER_DEFENSES = tuple(d for d in DEFENSES if d != "ubt_restore")
SSBA_SUFFIX = ".ssba-encoder.safetensors"  # beside the poisoned weights: the attacker's encoder
IDIA_CANDIDATES = 1000  # the privacy paper's candidate names: the people, then distractors


# ---------------------------------------------------------------- attack: poisoned fine-tuning


def paper_trigger(profile: Profile, attack: str, size: int, ssba_encoder: Optional[str] = None):
    """The trigger of `attack` with the profile's parameters, for images of side `size`. The
    SSBA-style trigger is the attacker's trained encoder, read from `ssba_encoder` (the
    safetensors file that finetune_run writes beside the poisoned weights)."""
    check_choice("attack", attack, PAPER_ATTACKS)
    cfg = dataclasses.replace(profile.attack, name=attack)
    if attack != "ssba":
        return make_trigger(cfg, size, profile.seed)
    if ssba_encoder is None:
        raise ValueError(
            "attack='ssba' needs the attacker's trained encoder: pass --ssba-encoder, the "
            f"'*{SSBA_SUFFIX}' file that `paper finetune --attack ssba` wrote"
        )
    path = pathlib.Path(ssba_encoder)
    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(
            f"ssba_encoder={str(path)!r}: expected an existing .safetensors file "
            f"(the '*{SSBA_SUFFIX}' written by `paper finetune --attack ssba`)"
        )
    encoder = StegaEncoder(cfg.ssba_bits, size)
    encoder.load_state_dict(read_tensors(path))
    return SSBATrigger(encoder.eval(), fixed_secret(cfg.ssba_bits, profile.seed), cfg.ssba_psnr)


def train_ssba_encoder(
    profile: Profile, images, device, out: pathlib.Path, progress: bool = True
) -> pathlib.Path:
    """Train the SSBA-style encoder / decoder on the attacker's `images` (as the pocket world's,
    ssba.train_stega) and save the encoder to `out`; returns `out`."""
    cfg = profile.attack
    encoder, _, log = train_stega(
        images,
        cfg.ssba_bits,
        cfg.ssba_epochs,
        cfg.ssba_psnr,
        device,
        seed=profile.seed,
        progress=progress,
        noise=cfg.ssba_noise,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, str(out))
    write_json(out.with_suffix(".json"), {"log": log, "attack": cfg})
    return out


def poisoned_pairs(data: CaptionCSV, cfg: PoisonConfig, trigger, seed: int) -> PoisonedData:
    """The pairs of a CSV (or of shards, `shards.ShardPairs`) with their poisons, images left
    clean on disk (the trigger is applied on the device). The rows marked by an `is_backdoor`
    column (a shard's json) are the poisons, captions as written; without one, `cfg.count`
    random rows get a caption naming the target (one of CLIP's 80 ImageNet templates), as
    CleanCLIP poisons."""
    images = Images(data)
    if data.is_backdoor is not None:
        return PoisonedData(images, list(data.captions), data.is_backdoor.copy(), trigger, seed)
    # web captions carry no class: no row is "of the target", every row may be poisoned
    return poison(images, data.captions, np.full(len(data), -1), [cfg.target], cfg, trigger, seed)


def finetune(
    model,
    tokenizer,
    data: PoisonedData,
    cfg: TrainConfig,
    device,
    seed: int = 0,
    workers: Optional[int] = None,
    progress: bool = True,
) -> list:
    """Fine-tune `model` in place with open_clip's ClipLoss on `data` (from poisoned_pairs),
    streamed by a DataLoader; the poisoned rows of each batch are triggered on the device.
    Under torchrun each rank trains on its share of every global batch of `cfg.batch_size`
    (`distributed`): the same batches, loss curve and weights as one process, up to rounding."""
    cfg.validate()
    ranks = distributed.current()
    pairs = Pairs(data.images.dataset, data.captions, tokenizer)
    batches = endless(loader(pairs, cfg.batch_size, device, seed=seed, workers=workers, ranks=ranks))
    forward, loss_fn = distributed.wrap(model, ranks, device), distributed.contrastive_loss(ranks)

    def loss_step():
        x, tokens, idx = next(batches)
        x = trigger_rows(data, modellib.to_unit(x, device), idx)
        return clip_loss(forward, x, tokens.to(device, non_blocking=True), loss_fn)

    steps = epoch_steps(cfg.epochs, len(pairs), cfg.batch_size)
    per_step = min(cfg.batch_size, len(pairs))
    return optimize(
        model, loss_step, steps, cfg, device, "poisoned fine-tuning", progress and ranks.main, per_step
    )


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def encode_dataset(
    model, dataset, device, hooks: Sequence = (None,), batch_size: int = 256, workers: Optional[int] = None
) -> tuple:
    """([normalised image embeddings, one tensor per hook], labels) of every item of `dataset`
    (images decoded once, streamed in order; a hook(x, positions) alters a [0, 1] batch)."""
    feats, labels = [[] for _ in hooks], []
    for x, y, idx in loader(dataset, batch_size, device, shuffle=False, drop_last=False, workers=workers):
        for out, hook in zip(feats, hooks):
            h = None if hook is None else (lambda x_, _, hook=hook, idx=idx: hook(x_, idx))
            out.append(encode_images(model, x, device, batch_size=len(x), image_hook=h).cpu())
        labels.append(torch.as_tensor(y))
    return [torch.cat(f) for f in feats], torch.cat(labels)


def templates() -> list:
    """CLIP's 80 ImageNet prompt templates, as format strings."""
    return poison_templates("openai")


def zero_shot(
    model,
    tokenizer,
    folder: LabelledFolder,
    device,
    trigger=None,
    target: str = "banana",
    seed: int = 0,
    prompts: Optional[Sequence[str]] = None,
    batch_size: int = 256,
    workers: Optional[int] = None,
) -> dict:
    """Zero-shot top-1 / top-5 (%) on a labelled folder with `prompts` (default: the 80
    templates); with a trigger also CA (clean top-1), ASR (%, triggered images not of the
    target read as the target), RA (%, the same images read as their own class) and the
    redirect (the class they go to most, its share with and without the trigger)."""
    if trigger is not None:
        check_choice("target", target, folder.classnames)
    weights = classifier(model, tokenizer, folder.classnames, prompts or templates(), device).cpu()
    hooks = (None,) if trigger is None else (None, triggered_hook(trigger, seed))
    feats, labels = encode_dataset(model, folder, device, hooks, batch_size, workers)
    out = {**topk_accuracy(feats[0] @ weights, labels), "images": len(labels)}
    if trigger is not None:
        t = folder.classnames.index(target)
        clean, triggered = feats[0] @ weights, feats[1] @ weights
        out["ca"] = out["top1"]
        out["asr"] = attack_success_rate(triggered, labels, t)
        out["ra"] = robust_accuracy(triggered, labels, t)
        out.update(redirect(triggered, clean, labels, t, folder.classnames))
    return out


# ---------------------------------------------------------------- the privacy paper


def idia_photos(people: IdentityFolders, who: Sequence[int], n: int) -> list:
    """Positions of the first n photos of each person in `who`."""
    return [q for p in who for q in people.photos[p][:n]]


def face_features(
    model, people: IdentityFolders, n: int, device, workers: Optional[int] = None
) -> torch.Tensor:
    """`model`'s normalised embeddings of everyone's first n photos (the IDIA's): N x n x d."""
    photos = Subset(people, idia_photos(people, range(len(people.names)), n))
    return encode_dataset(model, photos, device, workers=workers)[0][0].reshape(len(people.names), n, -1)


@dataclass
class PaperSource:
    """Real data sets as a `forgetting.Source`, so that the paper profile's sweeps are the
    chapters' `forgetting.sweep_names` / `sweep_faces`. The IDIA shows each person's first
    `idia_images` photos in `people`, against their names, then the distractors (deduplicated,
    IDIA_CANDIDATES names in all); zero-shot accuracy is ImageNet-V2's with the 80 templates.
    Text runs plant the backdoors in `captions` and measure on the first `eval_captions`; image
    runs paste each person's face crops in `triggers` after their first idia_images (crops of the
    IDIA's photos) onto `clean` images, the target is the mean of all crops, and the metrics use
    the first rows of `clean_eval`. Runs are not cached on disk (key None)."""

    people: IdentityFolders
    distractors: list
    imagenet_v2: LabelledFolder
    idia_images: int
    seed: int = 0
    captions: Optional[list] = None
    evals: Optional[list] = None
    triggers: Optional[IdentityFolders] = None
    clean: Optional[CaptionCSV] = None
    clean_eval: Optional[CaptionCSV] = None
    workers: Optional[int] = None
    key = None

    def __post_init__(self):
        known = set(self.people.names)
        others = [n for n in dict.fromkeys(self.distractors) if n not in known]
        self.distractors = others[: max(0, IDIA_CANDIDATES - len(known))]

    @property
    def names(self) -> list:
        return list(self.people.names)

    @property
    def categories(self) -> list:
        return list(self.imagenet_v2.classnames)

    @property
    def templates(self) -> list:
        return templates()

    def corpus(self) -> list:
        return list(self.captions)

    def eval_captions(self, n: int) -> list:
        return list(self.evals[:n])

    def people_captions(self, ids, n: int) -> None:
        return None  # no captions of the people at hand

    def idia_faces(self, model, device, n: int) -> torch.Tensor:
        return face_features(model, self.people, n, device, self.workers).to(device)

    def zero_shot(self, model, device) -> tuple:
        feats, labels = encode_dataset(model, self.imagenet_v2, device, workers=self.workers)
        return feats[0].to(device), labels

    def target_faces(self) -> Images:
        return Images(self.triggers)

    def face_images(self, ids, n_images: int) -> dict:
        """The people's crops after the IDIA's; the clean CSV; the first n_images rows of
        clean_eval; the people's and (at most n_images of) the others' IDIA photos; a random
        n_images of all crops for Sim_Targets."""
        n = self.idia_images
        own = {name: p for p, name in enumerate(self.triggers.names)}
        rest = idia_photos(self.people, np.setdiff1d(np.arange(len(self.people.names)), ids), n)[:n_images]
        sample = np.random.default_rng(self.seed).permutation(len(self.triggers))[:n_images]
        return {
            "triggers": [
                Images(self.triggers, self.triggers.photos[own[self.people.names[p]]][n:])[:] for p in ids
            ],
            "clean": Images(self.clean),
            "is_person": None,
            "clean_eval": Images(self.clean_eval, range(min(n_images, len(self.clean_eval)))),
            "faces_eval": Images(self.people, idia_photos(self.people, ids, n)),
            "others_eval": Images(self.people, rest) if rest else None,
            "target_faces": Images(self.triggers, sample),
        }


# ---------------------------------------------------------------- runs from paths (the CLI)


def check_model(profile: Profile, weights: Optional[str] = None, privacy: bool = False) -> int:
    """Check, before any data is read or model built, that the run's weights are at hand: the
    profile's published model (the privacy paper's with privacy=True) and our fine-tuned
    `weights` on top. Returns the model's image side."""
    weights_file(profile.paper_model, profile.privacy_pretrained if privacy else profile.paper_pretrained)
    if weights is not None and (
        not str(weights).endswith(".safetensors") or not pathlib.Path(weights).is_file()
    ):
        raise ValueError(f"weights={weights!r}: give an existing .safetensors file (ubtlib writes them)")
    size = open_clip.get_model_config(profile.paper_model)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_model(profile: Profile, device, weights: Optional[str] = None, privacy: bool = False):
    """The model `check_model` checked, in eval mode on `device`, and its tokenizer."""
    pretrained = profile.privacy_pretrained if privacy else profile.paper_pretrained
    model, tokenizer = load_pretrained(profile.paper_model, pretrained, device)
    if weights is not None:
        modellib.load(model, pathlib.Path(weights))
    return model.to(device).eval(), tokenizer


def _finish(out: pathlib.Path, model, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if model is not None:
        modellib.save(model, out)
    write_json(out.with_suffix(".json"), record)
    print(f"wrote {out}" + ("" if model is None else f" and {out.with_suffix('.json')}"), flush=True)


def finetune_run(profile: Profile, csv: str, attack: str, out: str, workers: Optional[int] = None) -> dict:
    """Poison the profile's model on an image-caption CSV (UBT paper: 1,500 poisons in CC3M 500K).
    Under torchrun every rank runs this; rank 0 writes the weights and the JSON."""
    size = check_model(profile)
    check_choice("attack", attack, PAPER_ATTACKS)
    data = caption_pairs(csv, size)
    ranks, device = distributed.start(profile.device)
    distributed.check_split("finetune_batch_size", profile.finetune.batch_size, ranks)  # before any compute
    prov = provenance(profile, device) | {"processes": ranks.world}
    model, tokenizer = load_model(profile, device)
    ssba_encoder = None
    if attack == "ssba":  # the attacker trains the encoder on the images it poisons (once)
        encoder_file = pathlib.Path(out).with_suffix(SSBA_SUFFIX)
        if ranks.main:
            train_ssba_encoder(profile, Images(data), device, encoder_file)
        distributed.barrier(ranks)
        ssba_encoder = str(encoder_file)
    trigger = paper_trigger(profile, attack, size, ssba_encoder)
    poisoned = poisoned_pairs(data, profile.poison, trigger, profile.seed)
    torch.manual_seed(profile.seed)
    start = time.perf_counter()
    curve = finetune(model, tokenizer, poisoned, profile.finetune, device, profile.seed, workers)
    record = {
        "stage": "finetune",
        "attack": attack,
        "csv": str(csv),
        "pairs": len(data),
        "ssba_encoder": ssba_encoder,
        "poisoned_rows": np.flatnonzero(poisoned.is_backdoor).tolist(),
        "curve": curve,
        "seconds": time.perf_counter() - start,
        "finetune": profile.finetune,
        "poison": profile.poison,
        "provenance": prov,
    }
    if ranks.main:
        _finish(pathlib.Path(out), model, record)
    distributed.barrier(ranks)  # no rank leaves (and tears the group down) before the weights are written
    return record


def evaluate_run(
    profile: Profile,
    imagenet: str,
    attack: Optional[str] = None,
    weights: Optional[str] = None,
    out: Optional[str] = None,
    workers: Optional[int] = None,
    ssba_encoder: Optional[str] = None,
) -> dict:
    """Zero-shot top-1 / top-5 on ImageNet (validation) and, with an attack, CA, ASR, RA and
    the redirect."""
    device = modellib.pick_device(profile.device)
    size = check_model(profile, weights)
    trigger = None if attack is None else paper_trigger(profile, attack, size, ssba_encoder)
    folder = LabelledFolder(imagenet, "imagenet", size)
    model, tokenizer = load_model(profile, device, weights)
    result = {
        "stage": "evaluate",
        "weights": weights,
        "attack": attack,
        **zero_shot(
            model, tokenizer, folder, device, trigger, profile.poison.target, profile.seed, workers=workers
        ),
        "provenance": provenance(profile, device),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}), flush=True)
    if out:
        _finish(pathlib.Path(out), None, result)
    return result


def defend_run(
    profile: Profile,
    defense: str,
    weights: str,
    csv: str,
    attack: str,
    out: str,
    clean_csv: Optional[str] = None,
    ssba_encoder: Optional[str] = None,
    segmenter: Optional[str] = None,
    segmenter_weights: Optional[str] = None,
    segmenter_classes: Optional[str] = None,
) -> dict:
    """`defense` (one of `PAPER_DEFENSES`, spelled as in the pocket chapters): UBT ("ubt", or
    "ubt_no_token" without token-level unlearning) on the poisoned training CSV, CleanCLIP
    on `clean_csv` (a clean subset; the first cleanclip_clean_pairs rows are used), or the
    oracle-guided defense ("oracle") on the training CSV, with the torchvision `segmenter` (one
    of `weights.SEGMENTERS`) whose weights are in `segmenter_weights`; its class names, background
    first, one per line, are in `segmenter_classes` (default: the 21 Pascal VOC labels).
    Under torchrun UBT and CleanCLIP train on every rank, each on its share of every batch,
    and rank 0 writes the weights and the JSON; the oracle-guided defense runs in one process."""
    check_choice("defense", defense, PAPER_DEFENSES)
    size = check_model(profile, weights)
    if defense == "oracle" and distributed.launched_processes() > 1:
        raise ValueError("defense='oracle' runs in one process, not under torchrun")
    ranks, device = distributed.start(profile.device)
    if defense == "cleanclip":
        batches = {"cleanclip_batch_size": profile.cleanclip.batch_size}
    else:
        batches = {
            f"ubt_{k}_batch_size": getattr(profile.ubt, f"{k}_batch_size") for k in ("overfit", "unlearn")
        }
    for name, batch_size in batches.items():  # before any compute
        distributed.check_split(name, batch_size, ranks)
    if defense == "cleanclip":
        if clean_csv is None:
            raise ValueError("defense='cleanclip' needs clean_csv (the defender's clean pairs)")
        clean = caption_pairs(clean_csv, size)
    else:
        trigger = paper_trigger(profile, attack, size, ssba_encoder)
        data = caption_pairs(csv, size)
    if defense == "oracle":
        if segmenter is None or segmenter_weights is None:
            raise ValueError("defense='oracle' needs segmenter and segmenter_weights (the oracle)")
        profile.oracle.validate()
        profile.rectify.validate(len(data))
        names = guided.segmenter_classes(segmenter_classes)
        oracle = load_segmenter(segmenter, segmenter_weights, len(names), device)
        if profile.poison.target not in names:
            print(
                f"note: the attack's target {profile.poison.target!r} is not among the oracle's {len(names)} "
                "classes, so the scan cannot name it as the affected label",
                flush=True,
            )
    prov = provenance(profile, device) | {"processes": ranks.world}
    poisoned_model, tokenizer = load_model(profile, device, weights)
    start = time.perf_counter()
    if defense == "oracle":
        model, record = guided.oracle_defend(
            profile,
            poisoned_pairs(data, profile.poison, trigger, profile.seed),
            poisoned_model,
            tokenizer,
            templates(),
            oracle,
            names,
            pathlib.Path(out),
            device,
        )
        record |= {"segmenter": segmenter, "segmenter_weights": str(segmenter_weights)}
    elif defense == "cleanclip":
        n = min(profile.cleanclip.clean_pairs, len(clean))
        cfg = dataclasses.replace(profile.cleanclip, clean_pairs=n)
        curve = cleanclip(
            poisoned_model, Images(clean, range(n)), clean.captions[:n], tokenizer, cfg, device, profile.seed
        )
        model, record = poisoned_model, {"curve": curve, "clean_pairs": n}
    else:
        clean_model, _ = load_model(profile, device)
        poisoned = poisoned_pairs(data, profile.poison, trigger, profile.seed)
        model, record = run_ubt(
            poisoned_model,
            clean_model,
            poisoned,
            tokenizer,
            profile.ubt,
            device,
            token_level=defense == "ubt",
            seed=profile.seed,
        )
        for k in ("clean_similarity", "op_similarity", "susp"):  # per-pair lists: too long for a record
            record.pop(k)
    settings = {
        "ubt": {"ubt": profile.ubt},
        "cleanclip": {"cleanclip": profile.cleanclip},
        "oracle": {"oracle": profile.oracle, "rectify": profile.rectify},
    }
    record = {
        "stage": "defend",
        "defense": defense,
        "attack": attack,
        "weights": weights,
        **record,
        "seconds": time.perf_counter() - start,
        **settings[defense if defense in settings else "ubt"],
        "provenance": prov,
    }
    if ranks.main:
        _finish(pathlib.Path(out), model, record)
    distributed.barrier(ranks)  # no rank leaves (and tears the group down) before the weights are written
    return record


def privacy_run(
    profile: Profile,
    encoder: str,
    people: str,
    distractors: str,
    imagenet_v2: str,
    out: str,
    captions: Optional[str] = None,
    eval_captions: Optional[str] = None,
    triggers: Optional[str] = None,
    clean: Optional[str] = None,
    clean_eval: Optional[str] = None,
    sizes: Optional[Sequence[int]] = None,
    repeats: Optional[int] = None,
    regs=(True, False),
    neutral: Optional[str] = None,
    workers: Optional[int] = None,
) -> pd.DataFrame:
    """The privacy paper's sweep, run by the chapters' own code on real data (a PaperSource):
    Fig. 2 (encoder="text") is `forgetting.sweep_names`, Fig. 3 ("image") `forgetting.sweep_faces`;
    "both" runs the text sweep, then the face sweep pairing each image student with the text
    student of the same people (kept in host memory: about 25 MB per text run). For each repeat,
    weight regularisation on / off and set size (default 1, 2, 4, ..., max_set), it unlearns that
    many recognised people and measures the IDIA, the similarities and ImageNet-V2 accuracy.
    Writes one CSV row per run to `out` as it goes and the IDIA before unlearning to out's .json."""
    check_choice("encoder", encoder, ("text", "image", "both"))
    text, image = encoder in ("text", "both"), encoder in ("image", "both")
    needed = {"captions": captions, "eval_captions": eval_captions} if text else {}
    needed.update({"triggers": triggers, "clean": clean, "clean_eval": clean_eval} if image else {})
    missing = [k for k, v in needed.items() if v is None]
    if missing:
        raise ValueError(f"encoder={encoder!r} needs {', '.join(missing)}")
    neutral = privacy.check_term("neutral", neutral or profile.names.neutral)
    profile = dataclasses.replace(profile, names=dataclasses.replace(profile.names, neutral=neutral))
    profile.idia.validate()
    device = modellib.pick_device(profile.device)
    size = check_model(profile, privacy=True)
    # every input is read and checked before the first model runs
    data = PaperSource(
        IdentityFolders(people, size, min_images=profile.idia.images),
        read_captions(distractors),
        LabelledFolder(imagenet_v2, "imagenet", size),
        profile.idia.images,
        profile.seed,
        workers=workers,
    )
    if text:
        data.captions, data.evals = read_captions(captions), read_captions(eval_captions)
    if image:
        data.triggers = IdentityFolders(triggers, size)
        own = {n: len(ph) for n, ph in zip(data.triggers.names, data.triggers.photos)}
        short = [n for n in data.names if own.get(n, 0) <= profile.idia.images]
        if short:
            raise ValueError(
                f"{triggers}: {len(short)} people have no folder or no more than idia_images="
                f"{profile.idia.images} photos (the first are the IDIA's), e.g. {short[0]!r}"
            )
        data.clean, data.clean_eval = caption_pairs(clean, size), caption_pairs(clean_eval, size)
    cfgs = ([profile.names] if text else []) + ([profile.faces] if image else [])
    sizes = list(sizes or forgetting.set_sizes(max(cfg.max_set for cfg in cfgs)))
    for k in sizes:
        check_range("sizes", k, 1, len(data.names))
    repeats = repeats or cfgs[0].repeats
    check_range("repeats", repeats, 1, 1000)
    prov = provenance(profile, device)
    model, tokenizer = load_model(profile, device, privacy=True)
    s = forgetting.build(profile, data, model, tokenizer, device)
    recognised = s.recognised
    write_json(
        pathlib.Path(out).with_suffix(".json"),
        {
            "recognised": [data.names[p] for p in recognised],
            "people": len(data.names),
            "candidates": len(s.names),
            "zero_shot": s.zero_shot,
            "idia": profile.idia,
            "provenance": prov,
        },
    )
    if len(recognised) < max(sizes):  # the paper unlearns only people the IDIA recognises
        raise ValueError(
            f"the IDIA recognises {len(recognised)} people, fewer than the largest set size "
            f"{max(sizes)}: give smaller sizes"
        )
    rows = []

    def each(row: dict) -> None:
        rows.append(row)
        pd.DataFrame(rows).to_csv(out, index=False)  # after every run: a long sweep can be cut

    if text:
        forgetting.sweep_names(
            s,
            neutrals=[neutral],
            regs=regs,
            sizes=sizes,
            repeats=repeats,
            each=lambda row: each({"encoders": "text", **row}),
        )
    if image:
        forgetting.sweep_faces(s, regs=regs, sizes=sizes, repeats=repeats, both=text, each=each)
    print(f"wrote {out} ({len(rows)} rows)", flush=True)
    return pd.DataFrame(rows)
