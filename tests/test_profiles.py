import pytest

import ubtlib


def test_profiles_exist_and_validate():
    for name in ("smoke", "pocket", "paper"):
        prof = ubtlib.configure(name)
        assert prof.name == name


def test_overrides_apply_and_world_follows_seed():
    prof = ubtlib.configure("pocket", seed=3, pretrain_epochs=4, world_n_identities=100)
    assert prof.pretrain.epochs == 4 and prof.world.n_identities == 100
    assert prof.seed == 3 and prof.world.seed == 3


def test_none_means_profile_default():
    assert ubtlib.configure("pocket", pretrain_epochs=None).pretrain == ubtlib.PROFILES["pocket"].pretrain


def test_unknown_profile_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"profile='pockett'.*'smoke', 'pocket', 'paper'"):
        ubtlib.configure("pockett")


def test_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown parameter 'pretrain_epoch'.*pretrain_epochs"):
        ubtlib.configure("pocket", pretrain_epoch=3)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"pretrain_epochs": -1}, r"epochs=-1 is out of range"),
        ({"pretrain_lr": 5.0}, r"lr=5.0 is out of range"),
        ({"seed": -2}, r"seed=-2 is out of range"),
        ({"model_patch_size": 5}, r"patch_size=5 must divide image_size=32"),
        ({"world_n_categories": 30}, r"n_categories=30 is out of range: accepted 2 <= n_categories <= 24"),
        ({"world_image_size": 48}, r"world_image_size=48 must equal model_image_size=32"),
        ({"device": "tpu"}, r"device='tpu'"),
        ({"pretrain_batch_size": "big"}, r"batch_size='big' must be a number"),
    ],
)
def test_out_of_range_values_fail_with_a_clear_message(kw, match):
    with pytest.raises(ValueError, match=match):
        ubtlib.configure("pocket", **kw)


def test_paper_profile_has_no_pocket_stages():
    with pytest.raises(ValueError, match="does not apply to profile 'paper'"):
        ubtlib.configure("paper", pretrain_epochs=2)
