"""The long-user metrics reported beside the usual ones."""

import pytest
import torch

from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.utils import get_model, get_trainer


@pytest.fixture(scope="module")
def setup():
    config = Config(
        model="HyenaRec",
        dataset="ml-100k",
        config_dict={"use_gpu": False, "MAX_ITEM_LIST_LENGTH": 20, "history_mask": False},
    )
    train, valid, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("HyenaRec")(config, train._dataset).eval()
    return config, model, test


def evaluate(config, model, test, quantile):
    config["long_user_quantile"] = quantile
    trainer = get_trainer(config["MODEL_TYPE"], "HyenaRec")(config, model)
    return trainer.evaluate(test, load_best_model=False)


def test_long_user_recall_matches_a_direct_computation(setup):
    config, model, test = setup
    result = evaluate(config, model, test, 0.9)
    hits, lengths = [], []
    data = test._dataset
    counts = dict(
        zip(
            data.inter_feat["user_id"][data.user_row_start].tolist(),
            data.user_row_end - data.user_row_start,
        )
    )
    with torch.no_grad():
        for interaction, _, _, positive_i in test:
            scores = model.full_sort_predict(interaction)
            scores[:, 0] = -torch.inf
            top10 = scores.topk(10, dim=1).indices
            hits.append((top10 == positive_i.unsqueeze(1)).any(dim=1).float())
            lengths.append(torch.tensor([counts[u] for u in interaction["user_id"].tolist()]))
    hits, lengths = torch.cat(hits), torch.cat(lengths).float()
    is_long = lengths >= torch.quantile(lengths, 0.9)
    assert 0.08 < is_long.float().mean() < 0.12
    assert result["recall@10"] == pytest.approx(hits.mean().item(), abs=1e-4)
    assert result["long_recall@10"] == pytest.approx(hits[is_long].mean().item(), abs=1e-4)


def test_every_user_counts_as_long_at_a_zero_quantile_and_none_turns_it_off(setup):
    config, model, test = setup
    everyone = evaluate(config, model, test, 1e-9)
    assert everyone["long_ndcg@10"] == everyone["ndcg@10"]
    assert not any(key.startswith("long_") for key in evaluate(config, model, test, None))
    with pytest.raises(ValueError, match="long_user_quantile"):
        evaluate(config, model, test, 1.5)
