import pytest
import torch
from safetensors.torch import save_file

from ubtlib.checks import UnreadableFile
from ubtlib.clip import model as modellib
from ubtlib.clip.model import ModelConfig

TINY = ModelConfig(
    width=32, layers=1, text_width=32, text_layers=1, head_width=32, embed_dim=16, context_length=16
)


def test_register_is_idempotent_and_builds_open_clip():
    import open_clip

    assert modellib.register(TINY) == modellib.register(TINY) == TINY.name
    m, tok = modellib.create(TINY)
    assert isinstance(m, open_clip.CLIP)
    assert tok(["a photo of a banana."]).shape == (1, 16)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    a, tok = modellib.create(TINY)
    modellib.save(a, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    b, _ = modellib.create(TINY)
    x, t = torch.rand(2, 3, 32, 32), tok(["a red apple.", "a banana."])
    assert not torch.allclose(a.encode_image(x), b.encode_image(x))
    modellib.load(b, tmp_path / "w.safetensors")
    assert torch.equal(a.encode_image(x), b.encode_image(x))
    assert torch.equal(a.encode_text(t), b.encode_text(t))


def test_load_refuses_mismatched_weights(tmp_path):
    m, _ = modellib.create(TINY)
    save_file({"not_a_weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        modellib.load(m, tmp_path / "bad.safetensors")


def test_load_refuses_a_pickle(tmp_path):
    m, _ = modellib.create(TINY)
    torch.save(m.state_dict(), tmp_path / "w.pt")  # a pickle: never loaded
    with pytest.raises(UnreadableFile, match=r"w\.pt: not a readable safetensors file"):
        modellib.load(m, tmp_path / "w.pt")
    with pytest.raises(UnreadableFile, match=r"missing\.safetensors: no such file"):
        modellib.load(m, tmp_path / "missing.safetensors")


def test_cpu_autocast_is_a_no_op():
    with modellib.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_tokenize_tokenizes_each_distinct_caption_once_and_gives_the_tokenizers_tensor():
    _, tokenizer = modellib.create(modellib.ModelConfig())
    captions = ["a photo of a dog.", "a red car.", "a photo of a dog.", "", "a red car.", "a dog."]
    seen = []

    def counting(texts):
        seen.append(list(texts))
        return tokenizer(texts)

    tokens = modellib.tokenize(counting, captions)
    assert torch.equal(tokens, tokenizer(captions))
    assert seen == [["a photo of a dog.", "a red car.", "", "a dog."]]
    assert torch.equal(modellib.tokenize(tokenizer, captions[:2]), tokenizer(captions[:2]))
