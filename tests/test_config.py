"""The plugin layer: YAML lookup, model lookup, config priority."""

import pytest
from recbole.model.sequential_recommender.stamp import STAMP

from recbole_hyena.config import Config
from recbole_hyena.model import HyenaRec
from recbole_hyena.utils import get_model, properties_dir


def test_plugin_yaml_files_are_found():
    folder = properties_dir()
    assert (folder / "overall.yaml").is_file()
    assert (folder / "model" / "HyenaRec.yaml").is_file()
    config = Config(model="HyenaRec", dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["filter_order"] == 64 and config["hyena_order"] == 2
    assert config["hidden_size"] == 64 and config["hidden_dropout_prob"] == 0.2
    assert config["valid_metric"] == "Recall@10" and config["topk"] == [10, 20]
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}


def test_user_values_override_the_property_files():
    config = Config(model="HyenaRec", dataset="ml-1m", config_dict={"filter_order": 16})
    assert config["filter_order"] == 16
    assert config["MAX_ITEM_LIST_LENGTH"] == 200  # from properties/dataset/ml-1m.yaml


def test_get_model_prefers_the_plugin_then_recbole():
    assert get_model("HyenaRec") is HyenaRec
    assert get_model("STAMP") is STAMP
    with pytest.raises(ValueError, match="NoSuchModel"):
        get_model("NoSuchModel")


def test_zoo_model_gets_recbole_defaults_and_the_paper_protocol():
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["n_heads"] == 2  # RecBole's SASRec.yaml
    assert config["metrics"] == ["NDCG", "Recall"]


@pytest.mark.parametrize("model", ["HSTU", "HyTRec"])
def test_models_that_read_time_gaps_keep_raw_timestamps_on_ml_100k(model):
    """RecBole's ml-100k.yaml min-max scales every float field, timestamps included, which would
    squeeze a whole history's gaps below one second."""
    config = Config(model=model, dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["normalize_all"] is False
