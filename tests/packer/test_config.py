import json

import pytest

from packer.config import ConfigError, PackingConfig


def test_defaults_are_valid_and_fit_one_image_per_sequence():
    config = PackingConfig()
    assert config.max_tokens_per_image == 576 <= config.seq_len


def test_max_res_whose_images_exceed_seq_len_is_rejected_naming_the_field():
    with pytest.raises(ConfigError) as error:
        PackingConfig(seq_len=256, max_res=384)
    assert error.value.field == "max_res"
    assert "lower max_res to at most 256" in str(error.value)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"res_mode": "diagonal"}, "res_mode"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"min_res": 8}, "min_res"),
        ({"max_res": 32}, "max_res"),
        ({"carry_over": "yes"}, "carry_over"),
        ({"seq_len": 1.5}, "seq_len"),
        ({"token_drop": "resolution", "drop_rate": 0.1, "drop_min_rate": 0.2}, "drop_min_rate"),
        ({"pack_window": 2**31 - 1}, "pack_window"),
        ({"max_images_per_seq": 10**6}, "max_images_per_seq"),
        ({"res_sigma": float("nan")}, "res_sigma"),
        ({"drop_beta_a": float("inf")}, "drop_beta_a"),
        ({"res_mu": 10**400}, "res_mu"),
    ],
)
def test_each_invalid_value_names_its_field(changes, field):
    with pytest.raises(ConfigError) as error:
        PackingConfig().replace(**changes)
    assert error.value.field == field


def test_unknown_field_is_an_error_naming_it():
    with pytest.raises(ConfigError) as error:
        PackingConfig.from_dict({"seq_length": 512})
    assert error.value.field == "seq_length"


def test_cli_overrides_coerce_to_field_types():
    config = PackingConfig().with_overrides(
        ["seq_len=512", "max_res=256", "carry_over=false", "drop_rate=0.25", "packing=next_fit"]
    )
    assert (config.seq_len, config.max_res, config.carry_over) == (512, 256, False)
    assert config.drop_rate == 0.25 and config.packing == "next_fit"
    with pytest.raises(ConfigError, match="seq_len"):
        PackingConfig().with_overrides(["seq_len=abc"])


def test_json_round_trip_is_exact():
    config = PackingConfig(seq_len=512, max_res=256, token_drop="beta", drop_rate=0.5)
    assert PackingConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["token_drop"] == "beta"
