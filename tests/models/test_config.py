import pytest

from pc2.models.config import ConfigError, PC2Config, parse_overrides


def test_overrides_parse_json_values_and_fall_back_to_strings():
    got = parse_overrides(["lr=0.001", "use_pcap=false", "codivide_scale=linear", "epochs=3"])
    assert got == {"lr": 0.001, "use_pcap": False, "codivide_scale": "linear", "epochs": 3}
    cfg = PC2Config.from_dict(got)
    assert cfg.lr == 0.001 and cfg.use_pcap is False and cfg.codivide_scale == "linear"


def test_override_without_equals_sign_is_a_config_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["lr"])


def test_unknown_keys_and_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="bogus"):
        PC2Config.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="codivide_scale"):
        PC2Config(codivide_scale="cubic")
    with pytest.raises(ConfigError, match="clean_threshold"):
        PC2Config(clean_threshold=1.0)
    with pytest.raises(ConfigError, match="pcap_grounding_tau"):
        PC2Config(pcap_grounding_tau=0.0)
