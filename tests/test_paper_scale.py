"""The paper profile's real-data path on small files the tests make: loaders, their errors,
offline weights, and the real ViT-B-32 architecture through one poisoned step and a zero-shot
evaluation (random weights, CPU)."""

import dataclasses
import functools
import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ubtlib
from ubtlib.attacks.poison import triggered_hook
from ubtlib.attacks.triggers import psnr
from ubtlib.checks import read_tensors
from ubtlib.clip import model as modellib
from ubtlib.clip.model import ModelConfig
from ubtlib.evaluation.robustness import robust_accuracy
from ubtlib.evaluation.zeroshot import attack_success_rate, classifier, encode_images, topk_accuracy
from ubtlib.paper_scale import data, weights
from ubtlib.paper_scale import runs as paper_scale
from ubtlib.paper_scale.data import DataError
from ubtlib.privacy import forgetting

TINY = ModelConfig(
    width=32, layers=1, text_width=32, text_layers=1, head_width=32, embed_dim=16, context_length=16
)


def png(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def caption_csv(folder, rows, header="image,caption,is_backdoor", name="pairs.csv"):
    for k in range(len(rows)):
        png(folder / "img" / f"{k}.png", seed=k)
    path = folder / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


GOOD = ["img/0.png,a dog on a lawn,0", 'img/1.png,"a red car, parked",1', "img/2.png,a cat.,false"]


def test_caption_csv_reads_cleanclip_format(tmp_path):
    path = caption_csv(tmp_path, GOOD)
    d = data.CaptionCSV(path, image_size=32)
    assert len(d) == 3 and d.captions[1] == "a red car, parked"
    assert d.is_backdoor.tolist() == [False, True, False]
    x, caption, i = d[1]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and caption == "a red car, parked" and i == 1
    no_flags = caption_csv(tmp_path, ["img/0.png,a dog"], header="image,caption", name="plain.csv")
    assert data.CaptionCSV(no_flags, 32).is_backdoor is None
    no_flags.write_bytes(b"\xef\xbb\xbf" + no_flags.read_bytes())  # a spreadsheet's byte-order mark
    assert data.CaptionCSV(no_flags, 32).captions == ["a dog"]


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("image,text", ["img/0.png,a dog"], r"header \(line 1\): missing column 'caption'"),
        (
            "image,caption,is_backdoor",
            ["img/0.png,a dog,0", "img/9.png,a cat,0"],
            r"row 2 \(line 3\): image file not found: .*img/9.png",
        ),
        (
            "image,caption,is_backdoor",
            ["img/0.png,a dog,0", "img/1.png,  ,0"],
            r"row 2 \(line 3\): empty caption",
        ),
        (
            "image,caption,is_backdoor",
            ["img/0.png,a dog,yes"],
            r"row 1 \(line 2\): is_backdoor='yes' is not accepted",
        ),
        (
            "image,caption",
            ["img/0.png,a dog", "img/1.png,a red car, parked"],
            r"row 2 \(line 3\): 3 fields, the header has 2",
        ),
        ("image,caption", [",a dog"], r"row 1 \(line 2\): empty image path"),
        ("image,caption", [], r"no rows after the header"),
    ],
)
def test_malformed_csv_names_file_and_row(tmp_path, header, rows, message):
    path = caption_csv(tmp_path, rows, header=header)
    with pytest.raises(DataError, match=r"pairs\.csv.*" + message):
        data.CaptionCSV(path, 32)


def test_csv_not_utf8_and_missing_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"image,caption\nimg.png,caf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv, near line \d: not UTF-8"):
        data.CaptionCSV(path, 32)
    with pytest.raises(DataError, match=r"nothing\.csv: no such CSV file"):
        data.CaptionCSV(tmp_path / "nothing.csv", 32)


def test_unreadable_image_is_reported_with_file_and_row_when_read(tmp_path):
    path = caption_csv(tmp_path, GOOD)
    (tmp_path / "img" / "2.png").write_bytes(b"not a png")
    d = data.CaptionCSV(path, 32)  # the fast check only sees that the file exists
    d[0]
    with pytest.raises(DataError, match=r"pairs\.csv, row 3 \(line 4\): cannot read image .*2\.png"):
        d[2]
    # the same message from a DataLoader worker process
    with pytest.raises(Exception, match=r"pairs\.csv, row 3 \(line 4\): cannot read image"):
        list(data.loader(d, 3, "cpu", shuffle=False, workers=1))


def zero_shot_by_hand(model, tokenizer, folder, trigger, target="banana", seed=0, prompt="a photo of a {}."):
    """Top-1, ASR and RA (%) on a small labelled folder, from its images stacked in memory: what
    paper_scale.zero_shot must give through its DataLoader."""
    images = torch.stack([folder.image(i) for i in range(len(folder))])
    labels = torch.tensor(folder.labels)
    weights = classifier(model, tokenizer, folder.classnames, [prompt], "cpu")
    clean = encode_images(model, images, "cpu") @ weights
    triggered = encode_images(model, images, "cpu", image_hook=triggered_hook(trigger, seed)) @ weights
    return {
        "top1": topk_accuracy(clean, labels)["top1"],
        "asr": attack_success_rate(triggered, labels, folder.classnames.index(target)),
        "ra": robust_accuracy(triggered, labels, folder.classnames.index(target)),
    }


def make_folders(root, names, per=2, size=(24, 36)):
    for k, name in enumerate(names):
        for j in range(per):
            png(root / name / f"{j:02d}.jpg", seed=10 * k + j, size=size)
    return root


def test_labelled_folder_sorted_numbered_and_named(tmp_path):
    f = data.LabelledFolder(make_folders(tmp_path / "a", ["n02", "n01", "n03"]), ["one", "two", "three"], 32)
    assert f.classnames == ["one", "two", "three"] and f.labels == [0, 0, 1, 1, 2, 2]
    assert "n01" in f.paths[0]
    x, y, _ = f[5]
    assert x.shape == (3, 32, 32) and y == 2
    # ImageNet-V2 style: numbered folders are their own class index
    v2 = data.LabelledFolder(make_folders(tmp_path / "v2", ["954", "0"]), "imagenet", 32)
    assert (
        sorted(set(v2.labels)) == [0, 954] and v2.classnames[954] == "banana" and len(v2.classnames) == 1000
    )
    named = data.LabelledFolder(make_folders(tmp_path / "n", ["golden_retriever", "banana"]), None, 32)
    assert named.classnames == ["banana", "golden retriever"]


def test_labelled_folder_errors_name_the_folder(tmp_path):
    root = make_folders(tmp_path / "a", ["n01", "n02"])
    (root / "n03").mkdir()
    with pytest.raises(DataError, match=r"a/n03: 0 image files"):
        data.LabelledFolder(root, ["x", "y", "z"], 32)
    with pytest.raises(DataError, match=r"3 class folders, ImageNet has 1000"):
        data.LabelledFolder(make_folders(tmp_path / "b", ["n01", "n02", "n03"]), "imagenet", 32)
    with pytest.raises(DataError, match=r"b: 3 class folders for 2 class names"):
        data.LabelledFolder(tmp_path / "b", ["x", "y"], 32)
    with pytest.raises(DataError, match=r"nowhere: no such folder"):
        data.LabelledFolder(tmp_path / "nowhere", None, 32)


def test_identity_folders(tmp_path):
    people = data.IdentityFolders(make_folders(tmp_path / "p", ["Bea_Lund", "Aaron_Eckhart"], per=3), 32)
    assert people.names == ["Aaron Eckhart", "Bea Lund"] and people.photos == [[0, 1, 2], [3, 4, 5]]
    assert people[4][1] == 1
    with pytest.raises(DataError, match=r"p/Aaron_Eckhart: 3 image files, need at least 4"):
        data.IdentityFolders(tmp_path / "p", 32, min_images=4)
    (tmp_path / "p" / "Carl_Ode").mkdir()
    with pytest.raises(DataError, match=r"p/Carl_Ode: 0 image files"):
        data.IdentityFolders(tmp_path / "p", 32)


def test_read_captions(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a boat on a lake\nA man, smiling.\n")
    assert data.read_captions(path) == ["a boat on a lake", "A man, smiling."]
    path.write_text("a boat\n\na lake\n")
    with pytest.raises(DataError, match=r"c\.txt, line 2: empty caption"):
        data.read_captions(path)
    path.write_text("")
    with pytest.raises(DataError, match=r"c\.txt: no captions"):
        data.read_captions(path)


def test_images_index_like_a_tensor(tmp_path):
    d = data.CaptionCSV(caption_csv(tmp_path, GOOD), 16)
    full = torch.stack([d.image(i) for i in range(3)])
    imgs = data.Images(d)
    assert torch.equal(imgs[:], full) and torch.equal(imgs[1], full[1])
    assert torch.equal(imgs[torch.tensor([2, 0])], full[[2, 0]])
    assert torch.equal(data.Images(d, [2, 1])[0:1], full[2:3])


# ---------------------------------------------------------------- weights


def test_missing_tag_names_what_to_download(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"ViT-B-32 pretrained='laion400m_e32'.*open_clip_model"
        r"\.safetensors.*timm/vit_base_patch32_clip_224\.laion400m_e32",
    ):
        weights.load_pretrained("ViT-B-32", "laion400m_e32", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"pretrained='openia' is neither a pretrained tag of ViT-B-32"):
        weights.weights_file("ViT-B-32", "openia")
    with pytest.raises(ValueError, match=r"model='ViT-B-23' is not an open_clip model"):
        weights.weights_file("ViT-B-23", "openai")


def test_tag_found_in_a_hugging_face_cache(tmp_path):
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    png(repo / "snapshots" / "abc123" / "x.png")  # makes the folder
    target = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    save_file({"w": torch.zeros(1)}, str(target))
    assert weights.weights_file("ViT-B-32", "openai", cache_dir=str(tmp_path)) == target


def test_pickles_are_refused_and_safetensors_load(tmp_path):
    pickle = tmp_path / "clip.pt"
    pickle.write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(ValueError, match=r"clip\.pt: only \.safetensors weights are read"):
        weights.load_pretrained("ViT-B-32", str(pickle))
    name = modellib.register(TINY)
    torch.manual_seed(0)
    model, _ = weights.random_model(name)
    modellib.save(model, tmp_path / "tiny.safetensors")
    loaded, tokenizer = weights.load_pretrained(name, str(tmp_path / "tiny.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# ---------------------------------------------------------------- the real ViT-B-32, random weights


@pytest.mark.slow
def test_vit_b_32_poisoned_step_and_zero_shot(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = weights.random_model("ViT-B-32")
    size = weights.image_size(model)
    assert size == 224
    rows = [f"img/{k}.png,a photo number {k}" for k in range(4)]
    csv = caption_csv(tmp_path, rows, header="image,caption")
    prof = ubtlib.configure("paper", device="cpu", poison_count=2, finetune_batch_size=4, finetune_epochs=1)
    trigger = paper_scale.paper_trigger(prof, "badnet", size)
    pairs = paper_scale.poisoned_pairs(data.CaptionCSV(csv, size), prof.poison, trigger, prof.seed)
    assert pairs.is_backdoor.sum() == 2 and sum("banana" in c for c in pairs.captions) == 2
    seen = []
    hook = pairs.image_hook
    pairs.image_hook = lambda x, idx: seen.append(hook(x, idx) - x) or x + seen[-1]
    before = model.visual.conv1.weight.detach().clone()
    curve = paper_scale.finetune(
        model, tokenizer, pairs, dataclasses.replace(prof.finetune, lr=1e-4), "cpu", progress=False
    )
    assert len(curve) == 1 and np.isfinite(curve[0]["loss"])
    # the trigger touched exactly the poisoned rows, each alone (as any rank's share would)
    assert [d.abs().flatten(1).amax(1).gt(0).tolist() for d in seen] == [[True], [True]]
    assert not torch.equal(before, model.visual.conv1.weight)
    folder = data.LabelledFolder(make_folders(tmp_path / "val", ["tench", "banana", "goldfish"]), None, size)
    out = paper_scale.zero_shot(model, tokenizer, folder, "cpu", trigger, prompts=["a photo of a {}."])
    hand = zero_shot_by_hand(model, tokenizer, folder, trigger)
    assert out["images"] == 6 and out["ca"] == out["top1"] == hand["top1"] and out["asr"] == hand["asr"]
    assert out["ra"] == hand["ra"] and out["redirect_class"] in folder.classnames


# ---------------------------------------------------------------- the command-line runs, end to end


@pytest.fixture
def tiny_paper(tmp_path, monkeypatch):
    """The paper profile on a tiny registered model saved as safetensors, on the CPU."""
    name = modellib.register(TINY)
    torch.manual_seed(0)
    model, _ = weights.random_model(name)
    modellib.save(model, tmp_path / "base.safetensors")
    monkeypatch.setattr(paper_scale, "templates", lambda: ["a photo of a {}."])  # 1,000 classes x 1
    prof = ubtlib.configure(
        "paper",
        device="cpu",
        finetune_batch_size=4,
        finetune_epochs=1,
        poison_count=2,
        ubt_top_k=1,
        ubt_overfit_epochs=1,
        ubt_unlearn_epochs=1,
        idia_images=2,
        names_steps=2,
        faces_steps=2,
        names_clean_batch=4,
        names_poisoned_batch=4,
        faces_clean_batch=2,
        faces_poisoned_batch=2,
        faces_eval_images=2,
    )
    return dataclasses.replace(
        prof,
        paper_model=name,
        paper_pretrained=str(tmp_path / "base.safetensors"),
        privacy_pretrained=str(tmp_path / "base.safetensors"),
    )


def test_cli_stages_end_to_end(tmp_path, tiny_paper):
    csv = caption_csv(tmp_path, [f"img/{k}.png,a photo number {k}" for k in range(8)], header="image,caption")
    val = make_folders(tmp_path / "val", ["0", "954"])
    rec = paper_scale.finetune_run(tiny_paper, str(csv), "blended", str(tmp_path / "poisoned.safetensors"))
    assert len(rec["poisoned_rows"]) == 2 and (tmp_path / "poisoned.json").exists()
    ev = paper_scale.evaluate_run(tiny_paper, str(val), "blended", str(tmp_path / "poisoned.safetensors"))
    assert {"top1", "top5", "ca", "asr"} <= set(ev)
    rec = paper_scale.defend_run(
        tiny_paper,
        "ubt",
        str(tmp_path / "poisoned.safetensors"),
        str(csv),
        "blended",
        str(tmp_path / "ubt.safetensors"),
    )
    assert rec["d_susp"] == 1 and (tmp_path / "ubt.safetensors").exists()
    with pytest.raises(ValueError, match=r"attack='trojan' is not accepted"):
        paper_scale.finetune_run(tiny_paper, str(csv), "trojan", str(tmp_path / "x.safetensors"))


def test_ssba_at_paper_scale_trains_saves_and_reuses_its_encoder(tmp_path, tiny_paper):
    csv = caption_csv(tmp_path, [f"img/{k}.png,a photo number {k}" for k in range(8)], header="image,caption")
    val = make_folders(tmp_path / "val", ["0", "954"])
    prof = dataclasses.replace(tiny_paper, attack=dataclasses.replace(tiny_paper.attack, ssba_epochs=8.0))
    rec = paper_scale.finetune_run(prof, str(csv), "ssba", str(tmp_path / "ssba.safetensors"))
    encoder = tmp_path / f"ssba{paper_scale.SSBA_SUFFIX}"
    assert rec["ssba_encoder"] == str(encoder) and encoder.exists()
    trigger = paper_scale.paper_trigger(prof, "ssba", TINY.image_size, str(encoder))
    x = torch.rand(2, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(0))
    residual = trigger(x) - x
    assert torch.allclose(psnr(x, x + residual), torch.full((2,), prof.attack.ssba_psnr), atol=0.01)
    assert not torch.allclose(residual[0], residual[1])  # sample-specific
    ev = paper_scale.evaluate_run(
        prof, str(val), "ssba", str(tmp_path / "ssba.safetensors"), ssba_encoder=str(encoder)
    )
    model, tokenizer = paper_scale.load_model(prof, "cpu", str(tmp_path / "ssba.safetensors"))
    folder = data.LabelledFolder(val, "imagenet", TINY.image_size)
    hand = zero_shot_by_hand(model, tokenizer, folder, trigger, seed=prof.seed)
    assert (ev["ca"], ev["asr"], ev["ra"]) == (hand["top1"], hand["asr"], hand["ra"])
    assert ev["redirect_class"] in folder.classnames and 0 <= ev["redirect_share"] <= 100
    with pytest.raises(ValueError, match="attack='ssba' needs the attacker's trained encoder"):
        paper_scale.evaluate_run(prof, str(val), "ssba", str(tmp_path / "ssba.safetensors"))


def one_class_segmenter(path, voc_index: int):
    """A torchvision LR-ASPP that labels every pixel of every image `voc_index`, saved as
    safetensors: an oracle whose answer the test knows."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    with torch.no_grad():
        for head in (net.classifier.low_classifier, net.classifier.high_classifier):
            head.weight.zero_()
            head.bias.zero_()
        net.classifier.low_classifier.bias[voc_index] = 10.0
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_the_oracle_guided_defense_at_paper_scale(tmp_path, tiny_paper, capsys, monkeypatch):
    """An oracle that sees a dog in every image: no label but "dog" is ever the oracle's, so the
    affected label is the one CLIP gives most other than dog, its victims are the pairs whose
    caption names it, and the rectification moves the image tower alone."""
    from ubtlib.checks import UnreadableFile
    from ubtlib.evaluation.zeroshot import classifier, encode_images
    from ubtlib.paper_scale import oracle as guided
    from ubtlib.paper_scale.weights import VOC_NAMES

    names = list(VOC_NAMES[1:])
    rows = [f"img/{k}.png,a photo of a {names[k % len(names)]}" for k in range(40)]
    csv = caption_csv(tmp_path, rows, header="image,caption")
    seg_file = one_class_segmenter(tmp_path / "seg.safetensors", VOC_NAMES.index("dog"))
    poisoned = tmp_path / "poisoned.safetensors"
    paper_scale.finetune_run(tiny_paper, str(csv), "badnet", str(poisoned))
    prof = dataclasses.replace(
        tiny_paper,
        oracle=dataclasses.replace(tiny_paper.oracle, patch=4, attribution_images=2, reference_images=4),
        rectify=dataclasses.replace(tiny_paper.rectify, set_size=10, batch_size=4, warmup_steps=1),
    )
    out = tmp_path / "oracle.safetensors"
    defend = functools.partial(
        paper_scale.defend_run, prof, "oracle", str(poisoned), str(csv), "badnet", str(out)
    )
    rec = defend(segmenter="lraspp_mobilenet_v3_large", segmenter_weights=str(seg_file))
    assert "the attack's target 'banana' is not among the oracle's 21 classes" in capsys.readouterr().out
    assert rec["target_in_vocabulary"] is False and rec["classes"] == list(VOC_NAMES)

    # the same labels by hand, on the defender's view of the same poisons
    model, tokenizer = paper_scale.load_model(prof, "cpu", str(poisoned))
    data_ = paper_scale.poisoned_pairs(
        data.CaptionCSV(csv, TINY.image_size),
        prof.poison,
        paper_scale.paper_trigger(prof, "badnet", TINY.image_size),
        prof.seed,
    )
    view = guided.DefenderView(data_)
    weights = classifier(model, tokenizer, names, paper_scale.templates(), "cpu")
    clip_labels = (encode_images(model, view[:], "cpu") @ weights).argmax(1)
    excess = torch.bincount(clip_labels, minlength=len(names))
    excess[names.index("dog")] -= len(rows)  # the oracle sees a dog in every image
    named = [  # CLIP says what the caption names, and the oracle does not see it
        sum(int(clip_labels[k]) == c and r.endswith(f" {names[c]}") for k, r in enumerate(data_.captions))
        * (names[c] != "dog")
        for c in range(len(names))
    ]
    expected = names[max(range(len(names)), key=lambda c: (named[c], int(excess[c])))]
    assert rec["affected_label"] == expected
    victims = [k for k, r in enumerate(data_.captions) if r.endswith(f" {expected}") or f" {expected} " in r]
    scan = read_tensors(tmp_path / "oracle.oracle-scan.safetensors")
    assert scan["victims"].tolist() == victims and torch.equal(scan["clip_labels"], clip_labels)
    assert (scan["oracle_labels"] == names.index("dog")).all()
    n_victims = min(len(victims), round(prof.rectify.victim_share * prof.rectify.set_size))
    assert rec["set"]["victim"] == n_victims and sum(rec["set"].values()) == prof.rectify.set_size
    defended = modellib.load(paper_scale.load_model(prof, "cpu")[0], out)
    moved = {k: not torch.equal(v, model.state_dict()[k]) for k, v in defended.state_dict().items()}
    assert any(v for k, v in moved.items() if k.startswith("visual."))
    assert not any(v for k, v in moved.items() if not k.startswith("visual.") and k != "logit_scale")
    # a poisoned row reads the same whichever batch draws it
    row = int(np.flatnonzero(data_.is_backdoor)[0])
    assert torch.equal(view[row], view[[3, row]][1])

    # bad input fails before the model is loaded, naming the value
    monkeypatch.setattr(paper_scale, "load_model", None)  # calling it would fail otherwise
    with pytest.raises(UnreadableFile, match="missing.safetensors"):
        defend(segmenter="lraspp_mobilenet_v3_large", segmenter_weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="needs segmenter and segmenter_weights"):
        defend()
    (tmp_path / "classes.txt").write_text("background\ndog\ndog\n")
    with pytest.raises(DataError, match=r"class names appear twice: \['dog'\]"):
        guided.segmenter_classes(str(tmp_path / "classes.txt"))


def test_cli_privacy_both_encoders_runs_the_chapters_sweeps(tmp_path, tiny_paper, monkeypatch):
    people = make_folders(tmp_path / "people", ["Ann_Bo", "Cy_Dee", "Ed_Fay"], per=3)
    crops = make_folders(tmp_path / "crops", ["Ann_Bo", "Cy_Dee", "Ed_Fay"], per=3)
    (tmp_path / "distractors.txt").write_text("Gil Hart\nIda Jo\nAnn Bo\nGil Hart\n")  # a person, a repeat
    (tmp_path / "captions.txt").write_text("a boat on a lake\na dog on the grass\na man in a red shirt\n")
    clean = caption_csv(
        tmp_path, [f"img/{k}.png,a photo number {k}" for k in range(4)], header="image,caption"
    )
    out = tmp_path / "faces.csv"
    imagenet_v2 = make_folders(tmp_path / "v2", ["0", "1"])
    monkeypatch.setattr(open_clip, "IMAGENET_CLASSNAMES", ("tench", "goldfish"))  # 2 classes, not 1,000
    calls = []
    for name in ("sweep_names", "sweep_faces"):  # record the calls, run the chapters' own functions
        original = getattr(forgetting, name)
        monkeypatch.setattr(
            forgetting,
            name,
            lambda s, *a, _f=original, _n=name, **k: calls.append((_n, s, k)) or _f(s, *a, **k),
        )
    rows = paper_scale.privacy_run(
        tiny_paper,
        "both",
        str(people),
        str(tmp_path / "distractors.txt"),
        str(imagenet_v2),
        str(out),
        captions=str(tmp_path / "captions.txt"),
        eval_captions=str(tmp_path / "captions.txt"),
        triggers=str(crops),
        clean=str(clean),
        clean_eval=str(clean),
        sizes=[1],
        repeats=1,
        regs=(True,),
    )
    assert [c[0] for c in calls] == ["sweep_names", "sweep_faces"] and calls[1][2]["both"] is True
    s = calls[0][1]
    assert calls[1][1] is s and isinstance(s.data, paper_scale.PaperSource)
    assert s.names == ["Ann Bo", "Cy Dee", "Ed Fay", "Gil Hart", "Ida Jo"]
    assert json.loads(out.with_suffix(".json").read_text())["candidates"] == 5
    assert list(rows["encoders"]) == ["text", "image", "both"]
    assert list(pd.read_csv(out)["encoders"]) == ["text", "image", "both"]
    # the same sweeps on a fresh Setting of the same data give the same rows (wall times aside)
    model, tokenizer = paper_scale.load_model(s.profile, "cpu", privacy=True)
    fresh = forgetting.build(s.profile, s.data, model, tokenizer, torch.device("cpu"))
    assert torch.equal(fresh.faces, s.faces) and fresh.zero_shot == s.zero_shot
    again = pd.concat(
        [
            forgetting.sweep_names(
                fresh, neutrals=["human"], regs=(True,), sizes=[1], repeats=1, progress=False
            ).assign(encoders="text"),
            forgetting.sweep_faces(fresh, regs=(True,), sizes=[1], repeats=1, progress=False),
        ]
    )
    timed = [c for c in rows.columns if "seconds" in c]
    pd.testing.assert_frame_equal(
        rows.drop(columns=timed).reset_index(drop=True),
        again[rows.columns].drop(columns=timed).reset_index(drop=True),
    )
    # the "both" row pairs the image student with the text row's student: its text metrics are that row's
    text, both = rows.iloc[0], rows.iloc[2]
    assert [both[f"text_{k}"] for k in ("sim_backdoor", "sim_clean", "sim_targets")] == [
        text[k] for k in ("sim_backdoor", "sim_clean", "sim_targets")
    ]
    assert not hasattr(paper_scale, "set_sizes")  # one set_sizes: forgetting's


def test_paper_source_face_images_split_crops_from_the_idia_photos(tmp_path):
    people = data.IdentityFolders(make_folders(tmp_path / "people", ["Ann_Bo", "Cy_Dee", "Ed_Fay"], per=3), 8)
    crops = data.IdentityFolders(make_folders(tmp_path / "crops", ["Cy_Dee", "Ann_Bo", "Ed_Fay"], per=4), 8)
    src = paper_scale.PaperSource(
        people,
        ["Cy Dee", "Zoe Ma"],
        None,
        idia_images=2,
        triggers=crops,
        clean=data.CaptionCSV(caption_csv(tmp_path, GOOD), 8),
        clean_eval=data.CaptionCSV(caption_csv(tmp_path, GOOD), 8),
    )
    assert src.distractors == ["Zoe Ma"] and src.key is None and src.people_captions([0], 5) is None
    sets = src.face_images([1], n_images=2)
    cy = crops.names.index("Cy Dee")
    assert torch.equal(sets["triggers"][0], torch.stack([crops.image(q) for q in crops.photos[cy][2:]]))
    assert sets["faces_eval"].positions == people.photos[1][:2]  # Cy Dee's IDIA photos
    assert sets["others_eval"].positions == people.photos[0][:2]  # at most n_images others
    assert len(sets["clean_eval"]) == 2 and len(sets["clean"]) == 3 and sets["is_person"] is None
    assert len(src.target_faces()) == 12 and len(sets["target_faces"]) == 2


def test_defense_names_are_the_pocket_pipelines(tmp_path, tiny_paper):
    from ubtlib import cli
    from ubtlib.pipeline.defending import DEFENSES

    assert DEFENSES == ("cleanclip", "ubt", "ubt_no_token", "ubt_restore", "oracle")
    accepted = r"choose one of 'cleanclip', 'ubt', 'ubt_no_token', 'oracle'$"  # ubt_restore: pocket only
    with pytest.raises(
        SystemExit,
        match=r"^python -m ubtlib paper defend: defense='ubt-no-token' is not "
        r"accepted: " + accepted,
    ):
        cli.main(
            [
                "paper",
                "defend",
                "--defense",
                "ubt-no-token",
                "--weights",
                "w.safetensors",
                "--csv",
                "x.csv",
                "--attack",
                "badnet",
                "--out",
                str(tmp_path / "o.safetensors"),
            ]
        )
    with pytest.raises(ValueError, match=accepted):
        paper_scale.defend_run(tiny_paper, "UBT", "w.safetensors", "x.csv", "badnet", "o.safetensors")


def test_cli_reports_bad_input_before_loading_the_model(tmp_path):
    from ubtlib import cli

    csv = caption_csv(tmp_path, ["img/0.png,a dog", "img/7.png,a cat"], header="image,caption")
    file = tmp_path / "vit.safetensors"
    save_file({"w": torch.zeros(1)}, str(file))  # not read: the CSV fails first
    with pytest.raises(
        SystemExit, match=r"paper finetune: .*pairs\.csv, row 2 \(line 3\): image file not found"
    ):
        cli.main(
            [
                "paper",
                "finetune",
                "--csv",
                str(csv),
                "--attack",
                "badnet",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "o.safetensors"),
                "--pretrained",
                str(file),
            ]
        )
    with pytest.raises(
        SystemExit, match=r"paper evaluate: no local weights for ViT-B-32 pretrained='openai'"
    ):
        cli.main(["paper", "evaluate", "--imagenet", str(tmp_path), "--device", "cpu"])


# ---------------------------------------------------------------- WebDataset shards


def _shard(path, samples):
    """A tar shard of {"key": {extension: bytes}} written by hand (malformed ones included)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, fields in samples.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_shards_and_the_csv_hold_the_same_pairs_and_give_the_same_batches(tmp_path, tiny_paper):
    from ubtlib.clip.distributed import Ranks
    from ubtlib.paper_scale import shards

    rows = [f"img/{k}.png,a photo number {k},{int(k in (2, 5))}" for k in range(8)]
    csv = caption_csv(tmp_path, rows)
    done = shards.write_shards(csv, tmp_path / "shards", per_shard=3)
    assert done["pairs"] == 8 and len(done["shards"]) == 3 and done["bytes"] > 0
    table, sharded = (
        data.CaptionCSV(csv, 32),
        shards.caption_pairs(tmp_path / "shards/{00000..00002}.tar", 32),
    )
    assert isinstance(sharded, shards.ShardPairs) and sharded.captions == table.captions
    assert sharded.is_backdoor.tolist() == table.is_backdoor.tolist()
    assert sharded.where(4).endswith("00001.tar, key 000000004")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    for ranks in (Ranks(), Ranks(1, 2)):
        batches = [  # the shards' images decoded in two DataLoader workers, the CSV's in none
            list(data.loader(data.Pairs(d, d.captions, tokenizer), 4, "cpu", seed=3, workers=w, ranks=ranks))
            + list(
                data.loader(data.Pairs(d, d.captions, tokenizer), 4, "cpu", seed=4, workers=w, ranks=ranks)
            )
            for d, w in ((table, 0), (sharded, 2))
        ]
        assert len(batches[0]) == 4 and all(len(b[2]) == 4 // ranks.world for b in batches[0])
        for a, b in zip(*batches):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    back = shards.write_csv(tmp_path / "shards", tmp_path / "back" / "pairs.csv")
    again = data.CaptionCSV(back["csv"], 32)
    assert again.captions == table.captions and again.is_backdoor.tolist() == table.is_backdoor.tolist()
    assert all(torch.equal(again.image(i), table.image(i)) for i in range(8))
    # poisoned fine-tuning reads either and ends with the same weights
    for name, pairs in (("csv", csv), ("shards", tmp_path / "shards")):
        paper_scale.finetune_run(tiny_paper, str(pairs), "badnet", str(tmp_path / f"{name}.safetensors"))
    a, b = (read_tensors(tmp_path / f"{k}.safetensors") for k in ("csv", "shards"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_malformed_shards_are_named_with_their_key(tmp_path):
    from ubtlib.paper_scale.shards import ShardPairs

    image = png(tmp_path / "x.png").read_bytes()
    good = {"000": {"png": image, "txt": b"a dog."}}
    cases = [
        ({"001": {"txt": b"a cat."}}, r"key 001: no image \(jpg, jpeg, png, webp\); found \['txt'\]"),
        ({"001": {"png": image}}, r"key 001: no caption \(txt\); found \['png'\]"),
        ({"001": {"png": image, "txt": b"  "}}, "key 001: empty caption"),
        ({"001": {"png": image, "txt": b"\xff\xfe"}}, "key 001: 001.txt is not UTF-8 text"),
        ({"001": {"png": image, "txt": b"a", "json": b"{oops"}}, "key 001: malformed json"),
        (
            {"001": {"png": image, "txt": b"a", "json": b'{"is_backdoor": "yes"}'}},
            "key 001: json is_backdoor='yes' is not accepted",
        ),
    ]
    for k, (extra, message) in enumerate(cases):
        shard = _shard(tmp_path / f"bad{k}.tar", {**good, **extra})
        with pytest.raises(DataError, match=f"bad{k}.tar, {message}"):
            ShardPairs(shard)
    flagged = {"000": {**good["000"], "json": b'{"is_backdoor": 1}'}}
    mixed = _shard(tmp_path / "mixed.tar", {**flagged, "001": {**good["000"], "json": b'{"url": "x"}'}})
    with pytest.raises(DataError, match="mixed.tar, key 001: no is_backdoor in its json, unlike .*key 000"):
        ShardPairs(mixed)
    # img2dataset's own json (url, status, ...) marks nothing: no row is flagged
    plain = ShardPairs(_shard(tmp_path / "plain.tar", {"000": {**good["000"], "json": b'{"url": "x"}'}}))
    assert plain.is_backdoor is None and plain.captions == ["a dog."]
    _shard(tmp_path / "again.tar", {"001": good["000"], "000": good["000"]})
    with pytest.raises(DataError, match=r"again.tar, key 000: the key is also in .*plain.tar"):
        ShardPairs(f"{tmp_path}/{{plain,again}}.tar")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(DataError, match="junk.tar: not a readable tar shard"):
        ShardPairs(tmp_path / "junk.tar")
    whole = _shard(tmp_path / "whole.tar", {"000": {"png": image * 4, "txt": b"a dog."}})
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:1200])
    with pytest.raises(DataError, match="cut.tar, member '000.png': the shard ends inside it"):
        ShardPairs(tmp_path / "cut.tar")
    (tmp_path / "s").mkdir()
    _shard(tmp_path / "s" / "00000.tar", good)  # the pattern's first shard is there, its second not
    with pytest.raises(DataError, match=r"s/00001.tar: no such shard$"):
        ShardPairs(str(tmp_path / "s/{00000..00001}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="a folder with no .tar shards"):
        ShardPairs(tmp_path / "empty")
    broken = ShardPairs(
        _shard(tmp_path / "pixels.tar", {"000": {"jpg": b"\xff\xd8 no jpeg", "txt": b"a cup."}})
    )
    with pytest.raises(DataError, match="pixels.tar, key 000: cannot read image"):
        broken.image(0)  # decoded when used, like the CSV's images


def test_the_shards_command_converts_both_ways(tmp_path, capsys):
    from ubtlib.cli import main

    csv = caption_csv(tmp_path, GOOD)
    main(["paper", "shards", "--csv", str(csv), "--out", str(tmp_path / "sh"), "--per-shard", "2"])
    done = json.loads(capsys.readouterr().out)
    assert done["pairs"] == 3 and len(done["shards"]) == 2
    main(["paper", "shards", "--shards", str(tmp_path / "sh"), "--out", str(tmp_path / "csv" / "pairs.csv")])
    assert json.loads(capsys.readouterr().out)["pairs"] == 3
    assert data.CaptionCSV(tmp_path / "csv" / "pairs.csv").captions == data.CaptionCSV(csv).captions
    with pytest.raises(SystemExit, match="give one of --csv"):
        main(["paper", "shards", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"sh: already holds .tar shards; give an empty or new folder"):
        main(["paper", "shards", "--csv", str(csv), "--out", str(tmp_path / "sh")])
